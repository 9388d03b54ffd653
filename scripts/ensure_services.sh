#!/usr/bin/env bash
# Make sure PostgreSQL and Redis answer on 127.0.0.1. Starts them if installed but down;
# installs them from Debian's packages if missing (needs root, as on CI machines).
set -euo pipefail

PG_HOST=127.0.0.1 PG_PORT=5432 REDIS_PORT=6379
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"

pg_up()    { pg_isready -q -h "$PG_HOST" -p "$PG_PORT" 2>/dev/null; }
redis_up() { redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG; }

if ! command -v pg_ctlcluster >/dev/null 2>&1 || ! command -v redis-server >/dev/null 2>&1; then
  echo "ensure_services: installing postgresql and redis-server from Debian packages"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql redis-server >/dev/null
fi

if ! pg_up; then
  echo "ensure_services: starting PostgreSQL"
  ver=$(ls /etc/postgresql | sort -V | tail -n1)
  $SUDO pg_ctlcluster --skip-systemctl-redirect "$ver" main start || true
  for _ in $(seq 30); do pg_up && break; sleep 1; done
fi
pg_up || { echo "ensure_services: PostgreSQL is not reachable on $PG_HOST:$PG_PORT" >&2; exit 1; }
# The test database and trust auth are what the machine ships; create the database if absent.
psql -h "$PG_HOST" -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname='test'" | grep -q 1 \
  || psql -h "$PG_HOST" -U postgres -c "CREATE DATABASE test" >/dev/null

if ! redis_up; then
  echo "ensure_services: starting Redis"
  mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
  $SUDO redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$REDIS_PORT" --save "" \
    --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log
  for _ in $(seq 30); do redis_up && break; sleep 0.5; done
fi
redis_up || { echo "ensure_services: Redis is not reachable on 127.0.0.1:$REDIS_PORT" >&2; exit 1; }
echo "ensure_services: PostgreSQL and Redis are up"
