#!/bin/sh
# A stand-in for the postgres image's entry point (docker/ci/compose.ci.yaml): a cluster in
# /var/lib/postgresql/data (UTF8, like the image: psycopg returns bytes from a SQL_ASCII database)
# with POSTGRES_USER / POSTGRES_PASSWORD / POSTGRES_DB, password
# authentication over TCP, then the server in the foreground as the postgres user.
set -eu
PGDATA=/var/lib/postgresql/data
BIN=/usr/lib/postgresql/15/bin
mkdir -p "$PGDATA" /var/run/postgresql
chown -R postgres:postgres "$PGDATA" /var/run/postgresql
as_pg() { runuser -u postgres -- "$@"; }
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    printf '%s\n' "$POSTGRES_PASSWORD" > /tmp/pwfile
    chown postgres /tmp/pwfile
    as_pg "$BIN/initdb" -D "$PGDATA" -U "$POSTGRES_USER" --pwfile=/tmp/pwfile \
        --encoding=UTF8 --locale=C.UTF-8 \
        --auth-host=scram-sha-256 --auth-local=trust
    rm -f /tmp/pwfile
    echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
    as_pg "$BIN/pg_ctl" -D "$PGDATA" -w -o "-c listen_addresses=''" start
    as_pg "$BIN/psql" -U "$POSTGRES_USER" -d postgres -c "CREATE DATABASE \"$POSTGRES_DB\""
    as_pg "$BIN/pg_ctl" -D "$PGDATA" -w stop
fi
exec runuser -u postgres -- "$BIN/postgres" -D "$PGDATA" -c listen_addresses='*'
