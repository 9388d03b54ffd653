#!/usr/bin/env bash
# Make sure Spark training can run (recsys train als --engine spark, tests/offline/test_spark.py): Java 17
# and the PostgreSQL JDBC driver from Debian's packages (installed only if missing; needs root,
# as on CI machines), and the `spark` extra (pyspark) in the project's virtualenv.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"

missing=()
command -v java >/dev/null 2>&1 || missing+=(openjdk-17-jre-headless)
[ -f /usr/share/java/postgresql.jar ] || missing+=(libpostgresql-jdbc-java)
if [ ${#missing[@]} -gt 0 ]; then
  echo "ensure_spark: installing ${missing[*]} from Debian packages"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
java -version 2>&1 | head -n1

if [ ! -x "$VENV/bin/python" ]; then
  echo "ensure_spark: no virtualenv at $VENV yet (make install); pyspark not installed"
  exit 0
fi
if ! "$VENV/bin/python" -c "import pyspark" >/dev/null 2>&1; then
  echo "ensure_spark: installing the spark extra (pyspark) into $VENV"
  "$VENV/bin/pip" install -q -e '.[dev,spark]'
fi
echo "ensure_spark: pyspark $("$VENV/bin/python" -c 'import pyspark; print(pyspark.__version__)'), Java and the JDBC driver are ready"
