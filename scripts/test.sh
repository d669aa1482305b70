#!/usr/bin/env bash
# README command 2: install everything the tests need and run them.
# System packages (PostgreSQL, Redis, docker.io, debootstrap, chromium) come from Debian's registry; the
# services are started on loopback under $BAI_CI_ROOT; the test image is built from Debian
# packages; Python packages go into ./.venv. Extra arguments are passed to pytest.
# What needs no Debian package runs beside the apt steps, each with its own log under
# $BAI_CI_ROOT/setup (shown once it ended): the project's venv, the official client's venv,
# and the test image's build once the engine is there. Each is waited for before the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
export BAI_CI_ROOT=${BAI_CI_ROOT:-/tmp/bai-ci}
logs=$BAI_CI_ROOT/setup
mkdir -p "$logs"

declare -A step_pid=()
# step NAME COMMAND...: run COMMAND in the background, its output to $logs/NAME.log
step() {
  local name=$1; shift
  "$@" >"$logs/$name.log" 2>&1 &
  step_pid[$name]=$!
}
# finish NAME: wait for step NAME, show its log; its exit status
finish() {
  local rc=0
  wait "${step_pid[$1]}" || rc=$?
  unset "step_pid[$1]"
  cat "$logs/$1.log"
  return $rc
}
trap 'for p in "${step_pid[@]}"; do kill "$p" 2>/dev/null || true; done' EXIT

python_env() {
  [ -x .venv/bin/python ] || python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
}
echo "== python environment (.venv), beside the steps below"
step venv python_env

official_client() { scripts/official-client.sh >"$logs/official.exe"; }  # prints its path
if [ -x scripts/official-client.sh ] && [ "${BAI_SKIP_OFFICIAL:-0}" != 1 ]; then
  echo "== official backend.ai-client 23.9.10 (its own venv), beside the steps below"
  step official official_client
fi

echo "== what the product needs (scripts/install.sh: the sandbox's Debian packages)"
scripts/install.sh

echo "== services (PostgreSQL, Redis)"
scripts/services.sh start >/dev/null
# shellcheck disable=SC1091
source "$BAI_CI_ROOT/services.env"

if [ -x scripts/docker-engine.sh ] && [ "${BAI_SKIP_DOCKER:-0}" != 1 ]; then
  echo "== docker engine, and the test image beside the steps below"
  eval "$(scripts/docker-engine.sh start)"
  export BAI_TEST_DOCKER_HOST=$DOCKER_HOST
  # the build needs only the standard library: python3 while .venv is being made
  step images env BAI_PYTHON=python3 scripts/build-images.sh
fi

echo "== the browser the dashboard tests drive (Debian's chromium, only when missing)"
# Tolerant like install.sh: without it the browser tests skip, naming the gap.
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 \
      || { apt-get update -qq >/dev/null 2>&1 || true
           apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 \
             || echo "test.sh: could not install chromium; the browser tests skip" >&2; }
  else
    echo "test.sh: chromium missing (needs root and apt-get); the browser tests skip" >&2
  fi
fi

echo "== python environment (.venv): waiting"
finish venv
if [ -n "${step_pid[images]:-}" ]; then
  echo "== the test image: waiting"
  finish images
fi
if [ -n "${step_pid[official]:-}" ]; then
  echo "== official backend.ai-client: waiting"
  # without it (the install failed) the official-client tests skip, as they always did
  BAI_OFFICIAL_CLIENT=
  finish official && BAI_OFFICIAL_CLIENT=$(cat "$logs/official.exe")
  export BAI_OFFICIAL_CLIENT
fi

echo "== tests"
set +e
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
rc=$?
set -e
# pytest's "no tests ran" (5) is a failure for us
[ $rc -eq 5 ] && echo "pytest ran no tests: failing" >&2
exit $rc
