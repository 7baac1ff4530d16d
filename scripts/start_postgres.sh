#!/usr/bin/env bash
# Start a throwaway PostgreSQL server on localhost for the store's tests and print its SQLAlchemy URL.
#
#   export DISTILLGYM_TEST_PG_URL=$(scripts/start_postgres.sh)
#
# Installs Debian's `postgresql` package if no server binaries are found (apt-get update first),
# then runs initdb + pg_ctl as the `postgres` user (root-safe) with a data directory under
# $PGDATA_DIR (default /tmp/distillgym-pg), trust auth on 127.0.0.1 only, port $PGPORT (default
# 54329). If a server already answers on that port it is reused. Logs go to stderr; stdout holds
# only the URL.
set -euo pipefail

PGPORT="${PGPORT:-54329}"
PGDATA_DIR="${PGDATA_DIR:-/tmp/distillgym-pg}"
DB_NAME="${PG_DB_NAME:-distillgym_test}"
log() { echo "start_postgres: $*" >&2; }

find_bindir() {
  local d
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    [ -x "$d/initdb" ] && { echo "$d"; return 0; }
  done
  return 1
}

BINDIR="$(find_bindir || true)"
if [ -z "$BINDIR" ]; then
  log "installing postgresql (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq postgresql >&2
  BINDIR="$(find_bindir)"
fi

as_pg() {
  if [ "$(id -u)" = "0" ]; then
    if command -v runuser >/dev/null; then runuser -u postgres -- "$@"; else su postgres -s /bin/sh -c "$(printf '%q ' "$@")"; fi
  else
    "$@"
  fi
}
if [ "$(id -u)" = "0" ] && ! id postgres >/dev/null 2>&1; then
  useradd --system --home-dir "$PGDATA_DIR" --shell /bin/sh postgres
fi
PGUSER_NAME="$( [ "$(id -u)" = "0" ] && echo postgres || id -un )"

if ! "$BINDIR/pg_isready" -q -h 127.0.0.1 -p "$PGPORT"; then
  if [ ! -f "$PGDATA_DIR/PG_VERSION" ]; then
    log "initdb in $PGDATA_DIR"
    mkdir -p "$PGDATA_DIR"
    [ "$(id -u)" = "0" ] && chown postgres: "$PGDATA_DIR"
    chmod 700 "$PGDATA_DIR"
    as_pg "$BINDIR/initdb" -D "$PGDATA_DIR" -U "$PGUSER_NAME" --auth=trust -E UTF8 >&2
  fi
  log "starting server on 127.0.0.1:$PGPORT"
  as_pg "$BINDIR/pg_ctl" -D "$PGDATA_DIR" -l "$PGDATA_DIR/server.log" -w -t 60 \
    -o "-h 127.0.0.1 -p $PGPORT -k $PGDATA_DIR -c fsync=off -c full_page_writes=off -c max_connections=200" start >&2
fi

if ! as_pg "$BINDIR/psql" -h 127.0.0.1 -p "$PGPORT" -U "$PGUSER_NAME" -d postgres -tAc \
    "SELECT 1 FROM pg_database WHERE datname='$DB_NAME'" | grep -q 1; then
  as_pg "$BINDIR/createdb" -h 127.0.0.1 -p "$PGPORT" -U "$PGUSER_NAME" "$DB_NAME"
fi
echo "postgresql+psycopg://$PGUSER_NAME@127.0.0.1:$PGPORT/$DB_NAME"
