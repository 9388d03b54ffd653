#!/usr/bin/env bash
# Run the tests N times while every core is kept busy, to catch tests that depend on timing (a
# busy 2-core machine is what CI may be). Uses `stress-ng --cpu 0` when installed (apt install
# stress-ng), otherwise one Python busy loop per core.
#
#   scripts/stress_tests.sh [RUNS] [pytest args...]     (default: 20 runs of the whole suite)
#   scripts/stress_tests.sh 20 tests/ops/test_polling.py tests/ops/test_gworker.py
#   LANES=3 scripts/stress_tests.sh 20                  (3 suites at once, each on its own
#                                                        PostgreSQL database and Redis db)
#
# With LANES=k the runs are shared among k concurrent lanes. Each lane uses its own database
# (recsys_stress_<lane>, created when missing, on the server of RECSYS_TEST_DATABASE_URL) and
# Redis db (STRESS_REDIS_BASE + lane, default 10 + lane), so the lanes never share state; every
# run then competes with stress-ng *and* the other lanes, more load than one lane.
#
# Prints one line per run (passed/failed, seconds) and a summary; logs go to $OUT_DIR
# (default: a new temporary folder). Exits non-zero if any run failed.
set -u
cd "$(dirname "$0")/.."
RUNS=${1:-20}
shift || true
OUT_DIR=${OUT_DIR:-$(mktemp -d -t recsys-stress-XXXX)}
mkdir -p "$OUT_DIR"
PY=${PY:-.venv/bin/python}
NCPU=$(nproc)
LANES=${LANES:-1}
PG_BASE=${RECSYS_TEST_DATABASE_URL:-postgresql+psycopg://postgres@127.0.0.1:5432/test}
REDIS_BASE=${RECSYS_TEST_REDIS_URL:-redis://127.0.0.1:6379/15}
STRESS_REDIS_BASE=${STRESS_REDIS_BASE:-10}

if command -v stress-ng >/dev/null 2>&1; then
  stress-ng --cpu 0 --quiet &
  LOAD_PIDS=$!
  LOAD="stress-ng --cpu 0 ($NCPU workers)"
else
  LOAD_PIDS=""
  for _ in $(seq "$NCPU"); do
    "$PY" -c "while True: pass" &
    LOAD_PIDS="$LOAD_PIDS $!"
  done
  LOAD="$NCPU Python busy loops"
fi
trap 'kill $LOAD_PIDS 2>/dev/null; wait 2>/dev/null' EXIT
[ "$LANES" -gt 1 ] && LOAD="$LOAD and $LANES concurrent suites"

lane_env() { # lane number -> exports RECSYS_TEST_DATABASE_URL / RECSYS_TEST_REDIS_URL
  local lane=$1
  if [ "$LANES" -eq 1 ]; then
    export RECSYS_TEST_DATABASE_URL=$PG_BASE RECSYS_TEST_REDIS_URL=$REDIS_BASE
    return
  fi
  export RECSYS_TEST_DATABASE_URL="${PG_BASE%/*}/recsys_stress_$lane"
  "$PY" -c 'import sys; sys.path.insert(0, "bench"); from serve_bench import ensure_database
ensure_database(sys.argv[1])' "$RECSYS_TEST_DATABASE_URL"
  export RECSYS_TEST_REDIS_URL="${REDIS_BASE%/*}/$((STRESS_REDIS_BASE + lane))"
}

run_lane() { # lane -> runs lane, lane+LANES, ... ; writes one result line per run
  local lane=$1 i t0 verdict
  shift
  lane_env "$lane"
  for ((i = lane; i <= RUNS; i += LANES)); do
    t0=$(date +%s)
    if "$PY" -m pytest -q -p no:cacheprovider "$@" >"$OUT_DIR/run-$i.log" 2>&1; then
      verdict=passed
    else
      verdict=FAILED
    fi
    echo "run $i (lane $lane): $verdict in $(($(date +%s) - t0)) s: $(tail -n 1 "$OUT_DIR/run-$i.log")" |
      tee -a "$OUT_DIR/results"
  done
}

echo "load: $LOAD; $RUNS runs of pytest ${*:-(whole suite)}; logs in $OUT_DIR"
: >"$OUT_DIR/results"
LANE_PIDS=""
for lane in $(seq "$LANES"); do
  run_lane "$lane" "$@" &
  LANE_PIDS="$LANE_PIDS $!"
done
wait $LANE_PIDS
failed=$(grep -c ": FAILED in" "$OUT_DIR/results")
echo "summary: $((RUNS - failed))/$RUNS runs passed under $LOAD on $(uname -n) ($NCPU cores)"
[ "$failed" -eq 0 ]
