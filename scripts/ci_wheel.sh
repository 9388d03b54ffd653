#!/usr/bin/env bash
# CI: the wheel serves without the source checkout (docs/deployment.md, "Wheel").
#
# Builds the wheel, installs it into a fresh virtual environment under /tmp (torch==2.13.0 first,
# which resolves to the local CPU build in seconds), then, from a folder outside the checkout and
# with nothing of the checkout on the path: `recsys db upgrade`, `recsys import online-retail`
# (the demo data bundled in the wheel), `recsys train popular ease`, `recsys serve`; checks
# /readyz and one recommendation that is not degraded, and stops the server.
# Usage: scripts/ci_wheel.sh  (PY: the Python that builds, default .venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
step() { echo "ci_wheel: [$(( $(date +%s) - start ))s] $*"; }
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
work=$(mktemp -d /tmp/recsys-ci-wheel.XXXXXX)
server=""
root=$PWD
# pip builds in the tree: remove the build outputs it leaves, unless they were there before.
leftovers=()
for d in build recsys.egg-info; do [ -e "$d" ] || leftovers+=("$root/$d"); done
cleanup() {
    rm -rf "${leftovers[@]}"
    if [ -n "$server" ] && kill -0 "$server" 2>/dev/null; then
        kill "$server"
        wait "$server" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

step "building the wheel"
"$PY" -m pip wheel -q --no-deps -w "$work/dist" . >"$work/build.log" 2>&1 ||
    { cat "$work/build.log"; exit 1; }
wheel=$(ls "$work"/dist/recsys-*.whl)
echo "ci_wheel: $(basename "$wheel") ($(du -h "$wheel" | cut -f1))"

step "installing it into a fresh venv"
python3 -m venv "$work/venv"
bin="$work/venv/bin"
for what in torch==2.13.0 "$wheel"; do
    # --no-compile: byte-compiling every module of torch and the rest costs more than it saves
    "$bin/pip" install -q --no-compile "$what" >"$work/pip.log" 2>&1 ||
        { grep -v "^WARNING: Location" "$work/pip.log"; exit 1; }
done

# Outside the checkout, nothing of it importable: only the installed package.
cd "$work"
unset PYTHONPATH
export RECSYS_INSTANCE_PATH="$work/instance"
where=$("$bin/python" -c 'import os, recsys; print(os.path.dirname(recsys.__file__))')
case "$where" in
    "$work/venv/"*) ;;
    *) echo "ci_wheel: recsys imported from $where, not the fresh venv" >&2; exit 1 ;;
esac

step "db upgrade, import, train"
"$bin/recsys" db upgrade
"$bin/recsys" import online-retail --json >"$work/import.json" # the bundled copy
"$bin/python" -c 'import json, sys; r = json.load(open(sys.argv[1])); n = r["written"]["events_new"]; assert n > 100000, r; print(f"ci_wheel: imported {n} events")' "$work/import.json"
"$bin/recsys" train popular ease --holdout 0 --quiet

step "serving"
port=$("$bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$bin/recsys" serve --bind "127.0.0.1:$port" >"$work/serve.log" 2>&1 &
server=$!

# Ready within 120 s (a bounded loop in a script, not a test), then one recommendation.
if ! "$bin/python" - "$port" "$server" <<'EOF'; then
import json, os, sys, time, urllib.error, urllib.request

port, pid = sys.argv[1], int(sys.argv[2])
base = f"http://127.0.0.1:{port}"
deadline = time.monotonic() + 120
while True:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        sys.exit("ci_wheel: the server exited")
    try:
        with urllib.request.urlopen(base + "/readyz", timeout=5) as r:
            print("ci_wheel: /readyz", r.status, r.read().decode())
            break
    except (urllib.error.URLError, OSError):
        if time.monotonic() > deadline:
            sys.exit("ci_wheel: /readyz did not answer 200 within 120 s")
        time.sleep(0.5)
with urllib.request.urlopen(base + "/v1/users/12347/recommendations?n=3", timeout=30) as r:
    body = json.load(r)
print("ci_wheel: recommendation", json.dumps(body)[:300])
assert r.status == 200 and len(body["items"]) == 3 and not body["degraded"], body
EOF
    echo "--- server log"; tail -30 "$work/serve.log"; exit 1
fi
echo "ci_wheel: ok in $(( $(date +%s) - start ))s"
