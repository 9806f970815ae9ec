#!/usr/bin/env bash
# Start a throwaway PostgreSQL server on a free loopback port for the tests, and stop it on exit.
# Sourced by .ci/run: exports SENDGRID_PIPELINE_TEST_POSTGRES_DSN and sets an EXIT trap.
# Debian's `postgresql` package is installed when missing (root only). initdb refuses root, so
# as root the server runs as the `postgres` user the package creates.

pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
if [ -z "$pg_bin" ] && [ "$(id -u)" -eq 0 ]; then
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql
    pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
fi
if [ -z "$pg_bin" ]; then
    echo "ci: PostgreSQL is not installed and this is not root; the PostgreSQL tests will fail" >&2
    return 0 2>/dev/null || exit 0
fi

pg_root=$(mktemp -d)
pg_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
as_owner=()
if [ "$(id -u)" -eq 0 ]; then
    chown postgres "$pg_root"
    as_owner=(runuser -u postgres --)
fi
"${as_owner[@]}" "$pg_bin/initdb" --pgdata "$pg_root/data" --username sendgrid --auth trust \
    --encoding UTF8 --no-locale >"$pg_root/initdb.log" 2>&1 || { cat "$pg_root/initdb.log" >&2; exit 1; }
"${as_owner[@]}" "$pg_bin/pg_ctl" --pgdata "$pg_root/data" --wait --log "$pg_root/server.log" \
    -o "-p $pg_port -k $pg_root -c listen_addresses=127.0.0.1" start >/dev/null \
    || { cat "$pg_root/server.log" >&2; exit 1; }

stop_postgres() {
    "${as_owner[@]}" "$pg_bin/pg_ctl" --pgdata "$pg_root/data" --mode fast --wait stop >/dev/null 2>&1
    rm -rf "$pg_root"
}
trap stop_postgres EXIT
export SENDGRID_PIPELINE_TEST_POSTGRES_DSN="postgresql://sendgrid@127.0.0.1:$pg_port/postgres"
echo "ci: PostgreSQL $(basename "$(dirname "$pg_bin")") on 127.0.0.1:$pg_port"
