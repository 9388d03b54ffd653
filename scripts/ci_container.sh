#!/usr/bin/env bash
# CI: the container image and the compose stack, built and run on a machine with no image
# registry (docs/deployment.md, "Container"). As root, on Debian:
#
#   1. installs Docker's engine (docker.io), docker-compose and mmdebstrap when missing and starts
#      a dockerd of its own if none answers (overlay2, else vfs; no iptables, no default bridge),
#      waiting for it by polling; on exit the stack and that daemon are taken down, whatever
#      happened;
#   2. makes one Debian base image with mmdebstrap (python3, python3-venv, postgresql-15,
#      redis-server; no docs, unsafe-io): recsys-base:bookworm, the Dockerfile's BASE_IMAGE and
#      the PostgreSQL and Redis stand-ins of docker/ci/compose.ci.yaml; kept between runs;
#   3. builds the Dockerfile offline: a wheelhouse of the project's dependencies at the versions
#      of this checkout's venv ($BIN), made once per pyproject.toml + venv (pip's cache, the
#      torch CPU wheel of $PIP_FIND_LINKS) under $WHEEL_CACHE, goes in docker/build-extra/wheels
#      for the build stages only; then checks the image: non-root user, HEALTHCHECK, no
#      compiler and no pip in the final stage;
#   4. starts compose.yaml with the demo profile (postgres + redis healthy -> migrate -> demo-data
#      imports the bundled data, its first CI_DEMO_ROWS lines (default 80,000 of 541,909; 0: all),
#      and trains popular + ease; recsys serves), waits for /readyz with
#      both models, checks one recommendation and /metrics, the container's health, then takes
#      the stack down with its volumes.
#
# Each step prints its start time. KEEP=1 leaves the stack and the daemon running.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
start=$(date +%s)
step() { echo "ci_container: [$(($(date +%s) - start))s] $*"; }
BIN=${BIN:-.venv/bin}
DOCKER_ROOT=${DOCKER_ROOT:-/var/lib/recsys-ci-docker}
EXEC_ROOT=/run/recsys-ci-docker-$(echo "$DOCKER_ROOT" | md5sum | cut -c1-8)
export DOCKER_HOST=unix://$EXEC_ROOT.sock
WHEEL_CACHE=${WHEEL_CACHE:-/var/cache/recsys-ci/wheels}
BASE=recsys-base:bookworm
PROJECT=recsys-ci
COMPOSE=(docker-compose -p "$PROJECT" -f compose.yaml -f docker/ci/compose.ci.yaml --profile demo)
started_dockerd=""

cleanup() {
    rc=$?
    if [ -n "${base_pid:-}" ]; then # interrupted while making the base: stop it, keep no half
        pkill -P "$base_pid" 2>/dev/null || true
        wait "$base_pid" 2>/dev/null || true
        docker image rm -f "$BASE" >/dev/null 2>&1 || true
    fi
    rm -rf "$root/docker/build-extra/wheels" "$root/docker/build-extra/ca-bundle.crt"
    [ -z "${RECSYS_CI_DATA:-}" ] || rm -rf "$RECSYS_CI_DATA"
    if [ -z "${KEEP:-}" ]; then
        if [ -n "$started_dockerd" ] || docker info >/dev/null 2>&1; then
            "${COMPOSE[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
        fi
        if [ -n "$started_dockerd" ]; then
            kill "$started_dockerd" 2>/dev/null || true
            wait "$started_dockerd" 2>/dev/null || true
            umount "$EXEC_ROOT/netns/default" 2>/dev/null || true # dockerd leaves it
        fi
    fi
    step "exit $rc"
}
trap cleanup EXIT

apt_install() { # PACKAGES...: from Debian, retrying a failed index update once
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null || { sleep 5 && apt-get update -q >/dev/null; } || true
    apt-get install -y -q --no-install-recommends "$@" >/dev/null
}

step "tools"
need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v docker-compose >/dev/null || need+=(docker-compose)
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
[ ${#need[@]} -eq 0 ] || apt_install "${need[@]}"

if ! docker info >/dev/null 2>&1; then
    step "starting dockerd (data in $DOCKER_ROOT)"
    mkdir -p "$DOCKER_ROOT"
    driver=overlay2
    grep -qw overlay /proc/filesystems || driver=vfs
    dockerd --storage-driver="$driver" --iptables=false --ip6tables=false --bridge=none \
        --data-root="$DOCKER_ROOT" --exec-root="$EXEC_ROOT" --pidfile="$EXEC_ROOT.pid" \
        --host="$DOCKER_HOST" >"$DOCKER_ROOT.log" 2>&1 &
    started_dockerd=$!
    until docker info >/dev/null 2>&1; do
        kill -0 "$started_dockerd" 2>/dev/null || { tail -20 "$DOCKER_ROOT.log"; exit 1; }
        [ $(($(date +%s) - start)) -lt 600 ] || { tail -20 "$DOCKER_ROOT.log"; exit 1; }
        sleep 0.2
    done
fi

base_pid=""
if ! docker image inspect "$BASE" >/dev/null 2>&1; then
    step "making $BASE with mmdebstrap (in the background, while the wheelhouse is made)"
    # No main cluster at install (docker/ci/postgres.sh makes its own), no docs, no fsync.
    (mmdebstrap --quiet --variant=essential \
        --include=python3,python3-venv,postgresql-15,redis-server \
        --aptopt='Acquire::Languages "none"' --aptopt='APT::Install-Recommends "false"' \
        --dpkgopt=force-unsafe-io --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        --setup-hook='mkdir -p "$1/etc/postgresql-common"' \
        --setup-hook='echo "create_main_cluster = false" > "$1/etc/postgresql-common/createcluster.conf"' \
        bookworm - 2>"$DOCKER_ROOT.mmdebstrap.log" | docker import - "$BASE" >/dev/null) &
    base_pid=$!
fi

step "wheelhouse"
# The dependencies at this venv's versions; made once per (pyproject.toml, pip freeze).
# async-timeout: redis-py needs it below Python 3.11.3 (bookworm's 3.11.2), maybe not here.
extra=(setuptools wheel async-timeout)
constraints=$("$BIN/pip" freeze --exclude-editable | grep -v '^recsys[= @]' || true)
key=$( (cat pyproject.toml && echo "$constraints ${extra[*]}") | sha256sum | cut -c1-16)
if [ ! -f "$WHEEL_CACHE/$key/.complete" ]; then
    tmp=$(mktemp -d)
    echo "$constraints" >"$tmp/constraints.txt"
    mkdir -p "$tmp/wheels"
    "$BIN/pip" wheel -q --wheel-dir "$tmp/wheels" -c "$tmp/constraints.txt" . "${extra[@]}"
    rm -f "$tmp/wheels"/recsys-*.whl
    rm -rf "$WHEEL_CACHE/$key" && mkdir -p "$WHEEL_CACHE"
    mv "$tmp/wheels" "$WHEEL_CACHE/$key" && rm -rf "$tmp"
    touch "$WHEEL_CACHE/$key/.complete"
fi
rm -rf docker/build-extra/wheels && mkdir -p docker/build-extra/wheels
cp -l "$WHEEL_CACHE/$key"/*.whl docker/build-extra/wheels/ 2>/dev/null ||
    cp "$WHEEL_CACHE/$key"/*.whl docker/build-extra/wheels/

if [ -n "$base_pid" ]; then
    step "waiting for $BASE"
    if ! wait "$base_pid"; then
        base_pid=""
        docker image rm -f "$BASE" >/dev/null 2>&1 || true # no half-made base for the next run
        tail -20 "$DOCKER_ROOT.mmdebstrap.log"
        exit 1
    fi
    base_pid=""
fi

step "building the image"
# BuildKit (the Dockerfile's bind mounts): Debian's docker CLI has it built in, a newer one
# first on PATH may want the buildx plugin instead.
cli=docker
[ -x /usr/bin/docker ] && cli=/usr/bin/docker
if ! DOCKER_BUILDKIT=1 "$cli" build --progress=plain --network none \
    --build-arg BASE_IMAGE="$BASE" -t recsys:ci . >"$DOCKER_ROOT.build.log" 2>&1; then
    tail -40 "$DOCKER_ROOT.build.log"
    exit 1
fi
grep -E '^#[0-9]+ (DONE|CACHED)' "$DOCKER_ROOT.build.log" | sort -t' ' -k3 -rn | head -5 || true
docker image ls recsys:ci --format 'ci_container: recsys:ci {{.Size}}'

step "checking the image"
user=$(docker image inspect recsys:ci --format '{{.Config.User}}')
health=$(docker image inspect recsys:ci --format '{{json .Config.Healthcheck.Test}}')
[ "$user" = 10001:10001 ] || { echo "image runs as '$user', not recsys (10001)" >&2; exit 1; }
[ "$health" != null ] || { echo "image has no HEALTHCHECK" >&2; exit 1; }
# One container: the user's name, no compiler, no pip, the CLI answers.
docker run --rm --network none --entrypoint sh recsys:ci -c '
    [ "$(id -un)" = recsys ] || { echo "not the recsys user" >&2; exit 1; }
    for tool in gcc cc g++ pip pip3; do
        ! command -v $tool || { echo "the final image has $tool" >&2; exit 1; }
    done
    ! python -m pip --version 2>/dev/null || { echo "the final image has pip" >&2; exit 1; }
    recsys --version'

step "compose up (demo profile)"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export RECSYS_IMAGE=recsys:ci POSTGRES_IMAGE=$BASE REDIS_IMAGE=$BASE RECSYS_PORT=$port
export RECSYS_DEMO_STRATEGIES="popular ease"
# The demo import, CI_DEMO_ROWS lines of the bundled file (its first weeks; 0: all 541,909):
# the full import is most of this step's time on a loaded 2-core machine.
CI_DEMO_ROWS=${CI_DEMO_ROWS:-80000}
if [ "$CI_DEMO_ROWS" -gt 0 ]; then
    RECSYS_CI_DATA=$(mktemp -d) && chmod 755 "$RECSYS_CI_DATA"
    zcat recsys/data/online_retail.csv.gz | head -n $((CI_DEMO_ROWS + 1)) | gzip -1 \
        >"$RECSYS_CI_DATA/online_retail.csv.gz" || true
    chmod 644 "$RECSYS_CI_DATA/online_retail.csv.gz"
    export RECSYS_CI_DATA RECSYS_DEMO_FILE=/ci-data/online_retail.csv.gz
fi
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
    time.sleep(0.5)
with urllib.request.urlopen(base + "/v1/users/12347/recommendations?n=3", timeout=30) as r:
    body = json.load(r)
print("ci_container: recommendation", json.dumps(body)[:300])
assert len(body["items"]) == 3 and not body["degraded"], body
# What Prometheus scrapes. recsys_ready is the least ready worker's: /readyz above answered from
# one worker, and a worker that started before demo-data trained may still be loading the models.
while True:
    with urllib.request.urlopen(base + "/metrics", timeout=30) as r:
        metrics = r.read().decode()
    if "recsys_ready 1.0" in metrics or time.monotonic() > deadline:
        break
    time.sleep(0.5)
assert "recsys_ready 1.0" in metrics and "recsys_requests_total{" in metrics, metrics[:2000]
EOF
    "${COMPOSE[@]}" ps
    "${COMPOSE[@]}" logs --tail 40 recsys
    exit 1
fi
cid=$("${COMPOSE[@]}" ps -q recsys)
# The HEALTHCHECK's first run comes within its interval; poll the status, do not wait it out.
until [ "$(docker inspect --format '{{.State.Health.Status}}' "$cid")" != starting ]; do
    [ $(($(date +%s) - start)) -lt 1200 ] || break
    sleep 0.5
done
health=$(docker inspect --format '{{.State.Health.Status}}' "$cid")
step "recsys container health: $health"
[ "$health" = healthy ]
step "ok"
