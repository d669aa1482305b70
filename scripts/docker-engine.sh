#!/usr/bin/env bash
# A private Docker engine for bai's docker runtime (tests, CI, single machines without one).
#
#   scripts/docker-engine.sh start   start Debian's dockerd (if not already answering) and print
#                                    export DOCKER_HOST=unix://$BAI_DOCKER_ROOT/docker.sock
#   scripts/docker-engine.sh env     print the same line (fails when the engine does not answer)
#   scripts/docker-engine.sh status  exit 0 when the engine answers
#   scripts/docker-engine.sh stop    stop the engine started here (its containers stop with it)
#
# Everything lives under $BAI_DOCKER_ROOT (default /tmp/bai-docker): socket docker.sock, data root
# data/, exec root exec/ (dockerd starts its own containerd there), pid file and dockerd.log.
# It installs nothing: it needs `dockerd` from Debian's docker.io package
# (apt-get install -y docker.io) and must run as root.
#
# Flags and why: --iptables=false --ip-masq=false --bridge=none: the engine never touches the host's
# firewall or creates a docker0 interface (containers run with NetworkMode=none unless a session asks
# for network). The storage driver is dockerd's own choice (overlay2 here); set
# BAI_DOCKER_STORAGE_DRIVER=vfs where the data root sits on a filesystem overlay2 cannot use.
# Extra flags: BAI_DOCKERD_FLAGS. Use the engine with:  eval "$(scripts/docker-engine.sh start)"
set -euo pipefail

ROOT="${BAI_DOCKER_ROOT:-/tmp/bai-docker}"
SOCK="$ROOT/docker.sock"
PIDFILE="$ROOT/docker.pid"
LOG="$ROOT/dockerd.log"
HOST="unix://$SOCK"

die() { echo "docker-engine: $*" >&2; exit 1; }

answers() {
    # /_ping answers "OK" once the engine is up (Docker and Podman alike).
    [ -S "$SOCK" ] || return 1
    if command -v curl >/dev/null 2>&1; then
        [ "$(curl -s --max-time 2 --unix-socket "$SOCK" http://localhost/_ping 2>/dev/null)" = "OK" ]
    else
        python3 - "$SOCK" <<'EOF'
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(2)
try:
    s.connect(sys.argv[1])
    s.sendall(b"GET /_ping HTTP/1.0\r\nHost: localhost\r\n\r\n")
    data = s.recv(4096)
except OSError:
    sys.exit(1)
sys.exit(0 if data.rstrip().endswith(b"OK") else 1)
EOF
    fi
}

engine_pid() {
    [ -f "$PIDFILE" ] || return 1
    local pid
    pid="$(cat "$PIDFILE")"
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

start() {
    if answers; then
        echo "export DOCKER_HOST=$HOST"
        return 0
    fi
    command -v dockerd >/dev/null 2>&1 || die "dockerd not found: install Debian's docker.io (apt-get install -y docker.io)"
    [ "$(id -u)" = 0 ] || die "dockerd must run as root"
    if pid="$(engine_pid)"; then
        die "dockerd (pid $pid) runs but does not answer on $SOCK; see $LOG or run: $0 stop"
    fi
    mkdir -p "$ROOT/data" "$ROOT/exec"
    rm -f "$SOCK" "$PIDFILE"
    local flags=(
        --host "$HOST"
        --data-root "$ROOT/data"
        --exec-root "$ROOT/exec"
        --pidfile "$PIDFILE"
        --iptables=false --ip-masq=false --bridge=none
    )
    if [ -n "${BAI_DOCKER_STORAGE_DRIVER:-}" ]; then
        flags+=(--storage-driver "$BAI_DOCKER_STORAGE_DRIVER")
    fi
    # shellcheck disable=SC2206
    flags+=(${BAI_DOCKERD_FLAGS:-})
    # setsid: the engine outlives this shell and the caller's process group.
    setsid dockerd "${flags[@]}" </dev/null >"$LOG" 2>&1 &
    local i
    for i in $(seq 1 120); do
        if answers; then
            echo "export DOCKER_HOST=$HOST"
            return 0
        fi
        if ! kill -0 $! 2>/dev/null; then
            tail -n 20 "$LOG" >&2 || true
            die "dockerd exited while starting (log: $LOG)"
        fi
        sleep 0.5
    done
    tail -n 20 "$LOG" >&2 || true
    die "dockerd did not answer on $SOCK within 60 s (log: $LOG)"
}

stop() {
    local pid i
    if ! pid="$(engine_pid)"; then
        echo "docker-engine: not running" >&2
        return 0
    fi
    kill -TERM "$pid"
    for i in $(seq 1 60); do
        kill -0 "$pid" 2>/dev/null || { echo "docker-engine: stopped" >&2; return 0; }
        sleep 0.5
    done
    die "dockerd (pid $pid) did not stop within 30 s"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    env) answers || die "no engine answers on $SOCK (run: $0 start)"; echo "export DOCKER_HOST=$HOST" ;;
    status) answers ;;
    *) echo "usage: $0 start|stop|env|status" >&2; exit 2 ;;
esac
