# recsys: the service's image (docs/deployment.md, "Container").
#
#   docker build -t recsys .                                   # torch CPU build
#   docker build -t recsys:cuda --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
#   docker run -p 8000:8000 -e RECSYS_DATABASE_URL=... -e RECSYS_REDIS_URL=... recsys
#
# Two stages: `build` makes a virtual environment (torch, then the recsys wheel and its
# dependencies) and `runtime` copies only that environment onto a clean base: no compiler, no
# pip, no source tree in the final image. The base is a build argument so a machine that
# cannot pull from a registry can build on a locally made Debian image (scripts/ci_container.sh).
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
ARG TORCH_VERSION=2.13.0
# The PyTorch wheel index: CPU build by default; a CUDA build with e.g. .../whl/cu128.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
# docker/build-extra/ is empty in the repository. A build behind a TLS-intercepting proxy puts
# its CA bundle there (ca-bundle.crt); a build without the PyTorch index puts the torch wheel in
# wheels/. Only this stage sees them.
COPY docker/build-extra/ /build-extra/
RUN set -eux; \
    if [ -f /build-extra/ca-bundle.crt ]; then \
        printf '[global]\ncert = /build-extra/ca-bundle.crt\n' > /etc/pip.conf; \
    fi; \
    python3 -m venv /opt/recsys; \
    if ls /build-extra/wheels/torch-*.whl >/dev/null 2>&1; then \
        /opt/recsys/bin/pip install --find-links /build-extra/wheels "torch==${TORCH_VERSION}"; \
    else \
        /opt/recsys/bin/pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"; \
    fi
# The package's sources and metadata: .dockerignore lets only those into the build context.
COPY pyproject.toml README.md LICENSE /src/
COPY recsys/ /src/recsys/
COPY strategies/ /src/strategies/
COPY features/ /src/features/
COPY migrations/ /src/migrations/
# torch==X is already met by X+cpu (or X+cuNNN), so installing the wheel keeps that build.
RUN set -eux; \
    /opt/recsys/bin/pip wheel --no-deps --wheel-dir /tmp/dist /src; \
    /opt/recsys/bin/pip install /tmp/dist/recsys-*.whl; \
    /opt/recsys/bin/python -c "import torch, recsys.app; print('torch', torch.__version__)"; \
    /opt/recsys/bin/pip uninstall --yes pip

FROM ${BASE_IMAGE} AS runtime
RUN groupadd --system --gid 10001 recsys \
    && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /var/lib/recsys recsys
COPY --from=build /opt/recsys /opt/recsys
# RECSYS_INSTANCE_PATH: the SQLite file (when no RECSYS_DATABASE_URL) and the model files
# (RECSYS_MODEL_DIR, default <instance>/models); a volume, so models outlive the container.
ENV PATH=/opt/recsys/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    RECSYS_BIND=0.0.0.0:8000 \
    RECSYS_INSTANCE_PATH=/var/lib/recsys
# Numeric, so a runtime can check it is not root (Kubernetes runAsNonRoot).
USER 10001:10001
WORKDIR /var/lib/recsys
VOLUME ["/var/lib/recsys"]
EXPOSE 8000
# Liveness (/healthz answers while the process serves); readiness (/readyz: database and
# models) is for load balancers and compose's start order.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; port = os.environ.get('RECSYS_BIND', ':8000').rsplit(':', 1)[1]; u.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4)"]
ENTRYPOINT ["recsys"]
CMD ["serve"]
