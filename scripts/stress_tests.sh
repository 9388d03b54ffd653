#!/usr/bin/env bash
# Run the tests N times in a row while every core is kept busy, to catch tests that depend on
# timing (a busy 2-core machine is what CI may be). Uses `stress-ng --cpu 0` when installed
# (apt install stress-ng), otherwise one Python busy loop per core.
#
#   scripts/stress_tests.sh [RUNS] [pytest args...]     (default: 20 runs of the whole suite)
#   scripts/stress_tests.sh 20 tests/test_polling.py tests/test_gworker.py
#
# Prints one line per run (passed/failed, seconds) and a summary; logs go to $OUT_DIR
# (default: a new temporary folder). Exits non-zero if any run failed.
set -u
cd "$(dirname "$0")/.."
RUNS=${1:-20}
shift || true
OUT_DIR=${OUT_DIR:-$(mktemp -d -t recsys-stress-XXXX)}
PY=${PY:-.venv/bin/python}
NCPU=$(nproc)

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

echo "load: $LOAD; $RUNS runs of pytest ${*:-(whole suite)}; logs in $OUT_DIR"
failed=0
for i in $(seq "$RUNS"); do
  t0=$(date +%s)
  if "$PY" -m pytest -q -p no:cacheprovider "$@" >"$OUT_DIR/run-$i.log" 2>&1; then
    verdict=passed
  else
    verdict=FAILED
    failed=$((failed + 1))
  fi
  echo "run $i: $verdict in $(($(date +%s) - t0)) s: $(tail -n 1 "$OUT_DIR/run-$i.log")"
done
echo "summary: $((RUNS - failed))/$RUNS runs passed under $LOAD on $(uname -n) ($NCPU cores)"
[ "$failed" -eq 0 ]
