#!/usr/bin/env bash
# The container image and the compose stack, built and run on a machine with no image registry
# (docs/deployment.md, "Container"). As root, on Debian:
#
#   1. installs Docker's engine (docker.io), docker-compose and mmdebstrap when missing and starts
#      a dockerd of its own if none answers (overlay2, else vfs; no iptables, no default bridge);
#   2. makes the base images from Debian's packages (mmdebstrap | docker import): recsys-base
#      (python3, the Dockerfile's BASE_IMAGE) and recsys-ci-base (postgresql-15, redis-server,
#      the stand-ins of docker/ci/compose.ci.yaml); kept between runs;
#   3. builds the Dockerfile (the torch wheel and CA bundle of this machine, if any, go in
#      docker/build-extra/ for the build stage only) and checks the image: non-root user,
#      HEALTHCHECK, no compiler and no pip in the final stage (and hadolint, if installed, is clean);
#   4. starts compose.yaml with the demo profile (postgres + redis healthy -> migrate -> demo-data
#      imports the bundled data and trains popular + ease; recsys serves), waits for /readyz with
#      both models and checks one recommendation, then takes the stack down with its volumes.
#
# Takes 10-20 minutes on a 2-core machine (the first run makes the base images), so it is not a
# step of .ci/run. KEEP=1 leaves the stack and the daemon running.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
start=$(date +%s)
step() { echo "ci_container: [$(( $(date +%s) - start ))s] $*"; }
DOCKER_ROOT=${DOCKER_ROOT:-/var/lib/recsys-ci-docker}
PROJECT=recsys-ci
COMPOSE=(docker-compose -p "$PROJECT" -f compose.yaml -f docker/ci/compose.ci.yaml --profile demo)
started_dockerd=""

cleanup() {
    rm -rf "$root/docker/build-extra/wheels" "$root/docker/build-extra/ca-bundle.crt"
    if [ -z "${KEEP:-}" ]; then
        "${COMPOSE[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
        if [ -n "$started_dockerd" ]; then
            kill "$started_dockerd" 2>/dev/null || true
            wait "$started_dockerd" 2>/dev/null || true
            umount /run/recsys-ci-docker/netns/default 2>/dev/null || true # dockerd leaves it
        fi
    fi
}
trap cleanup EXIT

step "tools"
need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v docker-compose >/dev/null || need+=(docker-compose)
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
if [ ${#need[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q "${need[@]}" >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
    step "starting dockerd (data in $DOCKER_ROOT)"
    mkdir -p "$DOCKER_ROOT"
    driver=overlay2
    grep -qw overlay /proc/filesystems || driver=vfs
    dockerd --storage-driver="$driver" --iptables=false --ip6tables=false --bridge=none \
        --data-root="$DOCKER_ROOT" --exec-root=/run/recsys-ci-docker \
        >"$DOCKER_ROOT.log" 2>&1 &
    started_dockerd=$!
    for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
    docker info >/dev/null 2>&1 || { tail -20 "$DOCKER_ROOT.log"; exit 1; }
fi

base_image() { # NAME PACKAGES: a Debian bookworm image from Debian's packages, made once
    if ! docker image inspect "$1" >/dev/null 2>&1; then
        step "making $1 with mmdebstrap ($2)"
        mmdebstrap --quiet --variant=minbase --include="$2" bookworm - | docker import - "$1"
    fi
}
base_image recsys-base:bookworm python3,python3-venv,ca-certificates
base_image recsys-ci-base:bookworm postgresql-15,redis-server

if command -v hadolint >/dev/null; then hadolint Dockerfile; fi
step "building the image"
rm -rf docker/build-extra/wheels && mkdir -p docker/build-extra/wheels
ls /opt/wheels/torch-*.whl >/dev/null 2>&1 && cp /opt/wheels/torch-*.whl docker/build-extra/wheels/
[ -n "${PIP_CERT:-}" ] && [ -f "$PIP_CERT" ] && cp "$PIP_CERT" docker/build-extra/ca-bundle.crt
DOCKER_BUILDKIT=0 docker build -q --network host --build-arg BASE_IMAGE=recsys-base:bookworm \
    -t recsys:ci . >/dev/null
docker image ls recsys:ci --format 'ci_container: recsys:ci {{.Size}}'

step "checking the image"
user=$(docker image inspect recsys:ci --format '{{.Config.User}}')
health=$(docker image inspect recsys:ci --format '{{json .Config.Healthcheck.Test}}')
[ "$user" = 10001:10001 ] || { echo "image runs as '$user', not recsys (10001)" >&2; exit 1; }
[ "$(docker run --rm --network none --entrypoint id recsys:ci -un)" = recsys ]
[ "$health" != null ] || { echo "image has no HEALTHCHECK" >&2; exit 1; }
if docker run --rm --network none --entrypoint sh recsys:ci -c \
    'command -v gcc || command -v cc || command -v pip || python -m pip --version' 2>/dev/null; then
    echo "the final image has a compiler or pip" >&2
    exit 1
fi
docker run --rm --network none recsys:ci --version

step "compose up (demo profile)"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export RECSYS_IMAGE=recsys:ci RECSYS_PORT=$port RECSYS_DEMO_STRATEGIES="popular ease"
"${COMPOSE[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
"${COMPOSE[@]}" up -d --no-build
seed=$("${COMPOSE[@]}" ps -q demo-data)
step "waiting for demo-data (import + train)"
rc=$(docker wait "$seed")
[ "$rc" = 0 ] || { "${COMPOSE[@]}" logs --tail 40 migrate demo-data; exit 1; }

step "waiting for /readyz with both models"
if ! python3 - "$port" <<'EOF'; then
import json, sys, time, urllib.error, urllib.request

base = f"http://127.0.0.1:{sys.argv[1]}"
deadline = time.monotonic() + 300
while True:
    try:
        with urllib.request.urlopen(base + "/readyz", timeout=5) as r:
            ready = json.load(r)
        if {"popular", "ease"} <= set(ready.get("models", {})):
            print("ci_container: /readyz", json.dumps(ready))
            break
    except (urllib.error.URLError, OSError, ValueError):
        pass
    if time.monotonic() > deadline:
        sys.exit("ci_container: /readyz did not list popular and ease within 300 s")
    time.sleep(1)
with urllib.request.urlopen(base + "/v1/users/12347/recommendations?n=3", timeout=30) as r:
    body = json.load(r)
print("ci_container: recommendation", json.dumps(body)[:300])
assert len(body["items"]) == 3 and not body["degraded"], body
with urllib.request.urlopen(base + "/metrics", timeout=30) as r:  # what Prometheus scrapes
    metrics = r.read().decode()
assert "recsys_ready 1.0" in metrics and "recsys_requests_total{" in metrics, metrics[:2000]
EOF
    "${COMPOSE[@]}" ps
    "${COMPOSE[@]}" logs --tail 40 recsys
    exit 1
fi
"${COMPOSE[@]}" ps
cid=$("${COMPOSE[@]}" ps -q recsys)
for _ in $(seq 120); do # the HEALTHCHECK's first run comes within its 15 s interval
    health=$(docker inspect --format '{{.State.Health.Status}}' "$cid")
    [ "$health" = starting ] || break
    sleep 1
done
step "recsys container health: $health"
[ "$health" = healthy ]
step "ok"
