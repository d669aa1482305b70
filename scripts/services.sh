#!/usr/bin/env bash
# Install (from Debian's packages) what the test suite needs — PostgreSQL, Redis, docker.io,
# debootstrap, iproute2 — and start the services on loopback only:
# PostgreSQL and Redis, each on its own port with its data under $BAI_CI_ROOT.
# Usage: scripts/services.sh start|stop|env
# `start` prints the environment to export (also written to $BAI_CI_ROOT/services.env).
set -euo pipefail

ROOT=${BAI_CI_ROOT:-/tmp/bai-ci}
PG_PORT=${BAI_PG_PORT:-55432}
REDIS_PORT=${BAI_REDIS_PORT:-56379}
PG_DIR=$ROOT/pg
ENV_FILE=$ROOT/services.env

need_root() { [ "$(id -u)" = 0 ] || { echo "services.sh: run as root (installs Debian packages)" >&2; exit 1; }; }

install_packages() {
  local missing=()
  command -v redis-server >/dev/null || missing+=(redis-server)
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
  if [ "${BAI_SKIP_DOCKER:-0}" != 1 ]; then
    command -v dockerd >/dev/null || missing+=(docker.io)
    command -v debootstrap >/dev/null || missing+=(debootstrap)
  fi
  command -v ip >/dev/null || missing+=(iproute2)
  if [ ${#missing[@]} -gt 0 ]; then
    need_root
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

pg_bin() { ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1; }

start_pg() {
  local bin; bin=$(pg_bin)
  mkdir -p "$ROOT"
  if [ ! -f "$PG_DIR/PG_VERSION" ]; then
    rm -rf "$PG_DIR"; mkdir -p "$PG_DIR"; chown postgres:postgres "$PG_DIR"
    su postgres -s /bin/sh -c "$bin/initdb -D $PG_DIR -A trust -U postgres" >/dev/null
  fi
  if ! su postgres -s /bin/sh -c "$bin/pg_ctl -D $PG_DIR status" >/dev/null 2>&1; then
    su postgres -s /bin/sh -c "$bin/pg_ctl -D $PG_DIR -l $PG_DIR/log -w -o '-p $PG_PORT -k /tmp -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c max_connections=300' start" >/dev/null
  fi
  for db in bai_test bai_bench; do
    su postgres -s /bin/sh -c "psql -h 127.0.0.1 -p $PG_PORT -U postgres -tAc \"SELECT 1 FROM pg_database WHERE datname='$db'\"" | grep -q 1 \
      || su postgres -s /bin/sh -c "psql -h 127.0.0.1 -p $PG_PORT -U postgres -qc 'CREATE DATABASE $db'"
  done
}

start_redis() {
  if ! redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; then
    redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no --daemonize yes \
      --logfile "$ROOT/redis.log" --dir "$ROOT" >/dev/null
    for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
  fi
}

write_env() {
  cat > "$ENV_FILE" <<ENV
export BAI_TEST_PG_DSN=postgresql+asyncpg://postgres@127.0.0.1:$PG_PORT/bai_test
export BAI_BENCH_PG_DSN=postgresql+asyncpg://postgres@127.0.0.1:$PG_PORT/bai_bench
export BAI_TEST_REDIS_URL=redis://127.0.0.1:$REDIS_PORT/0
ENV
  cat "$ENV_FILE"
}

case "${1:-start}" in
  start) install_packages; start_pg; start_redis; write_env ;;
  env) cat "$ENV_FILE" ;;
  stop)
    su postgres -s /bin/sh -c "$(pg_bin)/pg_ctl -D $PG_DIR -m fast stop" >/dev/null 2>&1 || true
    redis-cli -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true ;;
  *) echo "usage: $0 start|stop|env" >&2; exit 2 ;;
esac
