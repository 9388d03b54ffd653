# recsys: the service's image (docs/deployment.md, "Container").
#
#   docker build -t recsys .                                   # torch CPU build
#   docker build -t recsys:cuda --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
#   docker run -p 8000:8000 -e RECSYS_DATABASE_URL=... -e RECSYS_REDIS_URL=... recsys
#
# BuildKit (Docker's default builder since 23.0; DOCKER_BUILDKIT=1 before). Stages: `wheels`
# gathers a wheelhouse of torch and every dependency (built from the package index, or the
# one given in docker/build-extra/wheels) with pip in an environment of its own; `app` builds
# the recsys wheel; `runtime` installs both from there into /opt/recsys through bind mounts, so
# the final image gets the environment once, never had pip in it, and has no compiler, no
# wheels and no source tree. Its dependency layer is rebuilt only when pyproject.toml or the
# wheelhouse change. The base is a build argument so a machine that cannot pull from a
# registry can build on a locally made Debian image (scripts/ci_container.sh).
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS wheels
ARG TORCH_VERSION=2.13.0
# The PyTorch wheel index: CPU build by default; a CUDA build with e.g. .../whl/cu128.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
# docker/build-extra/ is empty in the repository. A build behind a TLS-intercepting proxy puts
# its CA bundle there (ca-bundle.crt); a build with no package index puts a complete wheelhouse
# in wheels/ (torch and every dependency; the build then uses only those). Only the build
# stages see them.
COPY docker/build-extra/ /build-extra/
# The package's metadata: its dependencies.
COPY pyproject.toml README.md LICENSE /src/
# hnswlib has no wheel on PyPI: building it needs a C++ compiler, in this stage only.
# hadolint ignore=DL3008
RUN set -eux; \
    if [ -f /build-extra/ca-bundle.crt ]; then \
        printf '[global]\ncert = /build-extra/ca-bundle.crt\n' > /etc/pip.conf; \
    fi; \
    python3 -m venv /opt/pip; \
    if ls /build-extra/wheels/*.whl >/dev/null 2>&1; then \
        mv /build-extra/wheels /wheels; \
    else \
        command -v g++ >/dev/null || { apt-get update \
            && apt-get install -y --no-install-recommends g++ && rm -rf /var/lib/apt/lists/*; }; \
        /opt/pip/bin/pip wheel --wheel-dir /wheels --index-url "${TORCH_INDEX_URL}" \
            "torch==${TORCH_VERSION}"; \
        /opt/pip/bin/pip wheel --wheel-dir /wheels --find-links /wheels /src setuptools wheel; \
        rm /wheels/recsys-*.whl; \
    fi

FROM wheels AS app
ENV PIP_NO_INDEX=1 PIP_FIND_LINKS=/wheels
COPY recsys/ /src/recsys/
COPY strategies/ /src/strategies/
COPY features/ /src/features/
COPY migrations/ /src/migrations/
RUN /opt/pip/bin/pip wheel --no-deps --wheel-dir /dist /src

FROM ${BASE_IMAGE} AS runtime
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_NO_INDEX=1 PIP_FIND_LINKS=/wheels
RUN groupadd --system --gid 10001 recsys \
    && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /var/lib/recsys recsys
# The dependencies (one layer, cached across source changes), then the service (a small one);
# pip runs from the wheels stage's environment (--python), mounted for these commands only.
# torch==X is met by X+cpu (or X+cuNNN), so installing the recsys wheel keeps that build.
RUN --mount=type=bind,from=wheels,source=/opt/pip,target=/opt/pip \
    --mount=type=bind,from=wheels,source=/wheels,target=/wheels \
    --mount=type=bind,from=wheels,source=/src,target=/src,rw \
    set -eux; \
    python3 -m venv --without-pip /opt/recsys; \
    /opt/pip/bin/pip --python /opt/recsys/bin/python install /src; \
    /opt/pip/bin/pip --python /opt/recsys/bin/python uninstall --yes recsys
RUN --mount=type=bind,from=wheels,source=/opt/pip,target=/opt/pip \
    --mount=type=bind,from=wheels,source=/wheels,target=/wheels \
    --mount=type=bind,from=app,source=/dist,target=/dist \
    set -eux; \
    /opt/pip/bin/pip --python /opt/recsys/bin/python install --no-deps /dist/recsys-*.whl; \
    /opt/recsys/bin/python -c "import torch, recsys.app; print('torch', torch.__version__)"
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
