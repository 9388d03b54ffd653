# recsys: the service's image (docs/deployment.md, "Container").
#
#   docker build -t recsys .                                   # torch CPU build
#   docker build -t recsys:cuda --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
#   docker run -p 8000:8000 -e RECSYS_DATABASE_URL=... -e RECSYS_REDIS_URL=... recsys
#
# Three stages: `deps` makes a virtual environment with torch and the project's dependencies
# (a layer rebuilt only when pyproject.toml or the given wheels change), `build` installs the
# recsys wheel itself into /opt/recsys-app, and `runtime` copies only those two onto a clean
# base: no compiler, no pip, no source tree in the final image. pip runs from a separate
# environment (`pip --python`), so the copied one never had pip. The base is a build argument
# so a machine that cannot pull from a registry can build on a locally made Debian image
# (scripts/ci_container.sh).
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS deps
ARG TORCH_VERSION=2.13.0
# The PyTorch wheel index: CPU build by default; a CUDA build with e.g. .../whl/cu128.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
# docker/build-extra/ is empty in the repository. A build behind a TLS-intercepting proxy puts
# its CA bundle there (ca-bundle.crt); a build with no package index puts a complete wheelhouse
# in wheels/ (torch and every dependency; the build then uses only those). Only the build
# stages see them.
COPY docker/build-extra/ /build-extra/
# The package's metadata only: its dependencies, installed here, outlive a source change.
COPY pyproject.toml README.md LICENSE /src/
# hnswlib has no wheel on PyPI: building it needs a C++ compiler, in this stage only (a given
# wheelhouse carries it built).
# hadolint ignore=DL3008
RUN set -eux; \
    if [ -f /build-extra/ca-bundle.crt ]; then \
        printf '[global]\ncert = /build-extra/ca-bundle.crt\n' > /etc/pip.conf; \
    fi; \
    python3 -m venv /opt/pip; \
    python3 -m venv --without-pip /opt/recsys; \
    pip="/opt/pip/bin/pip --python /opt/recsys/bin/python"; \
    if ls /build-extra/wheels/*.whl >/dev/null 2>&1; then \
        export PIP_NO_INDEX=1 PIP_FIND_LINKS=/build-extra/wheels; \
        $pip install "torch==${TORCH_VERSION}"; \
    else \
        $pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"; \
        if ! command -v g++ >/dev/null; then \
            apt-get update; \
            apt-get install -y --no-install-recommends g++; \
            rm -rf /var/lib/apt/lists/*; \
        fi; \
    fi; \
    $pip install /src; \
    $pip uninstall --yes recsys; \
    site=$(/opt/recsys/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))'); \
    echo /opt/recsys-app > "$site/recsys-app.pth"

FROM deps AS build
COPY recsys/ /src/recsys/
COPY strategies/ /src/strategies/
COPY features/ /src/features/
COPY migrations/ /src/migrations/
# The recsys wheel, on its own (--target, found through recsys-app.pth); its requirements are
# met by /opt/recsys (torch==X is met by X+cpu or X+cuNNN, so that build stays).
RUN set -eux; \
    if ls /build-extra/wheels/*.whl >/dev/null 2>&1; then \
        export PIP_NO_INDEX=1 PIP_FIND_LINKS=/build-extra/wheels; \
    fi; \
    /opt/pip/bin/pip wheel --no-deps --wheel-dir /tmp/dist /src; \
    /opt/pip/bin/pip --python /opt/recsys/bin/python install --no-deps --target /opt/recsys-app \
        /tmp/dist/recsys-*.whl; \
    /opt/recsys/bin/python -c "import torch, recsys.app; print('torch', torch.__version__)"; \
    /opt/recsys-app/bin/recsys --version

FROM ${BASE_IMAGE} AS runtime
RUN groupadd --system --gid 10001 recsys \
    && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /var/lib/recsys recsys
# Two layers: the dependencies (unchanged by a source change, so cached) and the service.
COPY --from=deps /opt/recsys /opt/recsys
COPY --from=build /opt/recsys-app /opt/recsys-app
# RECSYS_INSTANCE_PATH: the SQLite file (when no RECSYS_DATABASE_URL) and the model files
# (RECSYS_MODEL_DIR, default <instance>/models); a volume, so models outlive the container.
ENV PATH=/opt/recsys-app/bin:/opt/recsys/bin:$PATH \
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
