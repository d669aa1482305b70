#!/usr/bin/env bash
# README command 2: install everything the tests need and run them.
# System packages (PostgreSQL, Redis, docker.io, debootstrap, chromium) come from Debian's registry; the
# services are started on loopback under $BAI_CI_ROOT; the test image is built from Debian
# packages; Python packages go into ./.venv. Extra arguments are passed to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
export BAI_CI_ROOT=${BAI_CI_ROOT:-/tmp/bai-ci}
mkdir -p "$BAI_CI_ROOT"

echo "== what the product needs (scripts/install.sh: the sandbox's Debian packages)"
scripts/install.sh

echo "== services (PostgreSQL, Redis)"
scripts/services.sh start >/dev/null
# shellcheck disable=SC1091
source "$BAI_CI_ROOT/services.env"

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

echo "== python environment (.venv)"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e '.[test]'

if [ -x scripts/docker-engine.sh ] && [ "${BAI_SKIP_DOCKER:-0}" != 1 ]; then
  echo "== docker engine and the test image"
  eval "$(scripts/docker-engine.sh start)"
  export BAI_TEST_DOCKER_HOST=$DOCKER_HOST
  scripts/build-images.sh
fi

if [ -x scripts/official-client.sh ] && [ "${BAI_SKIP_OFFICIAL:-0}" != 1 ]; then
  echo "== official backend.ai-client 23.9.10 (its own venv)"
  export BAI_OFFICIAL_CLIENT=$(scripts/official-client.sh)
fi

echo "== tests"
set +e
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
rc=$?
set -e
# pytest's "no tests ran" (5) is a failure for us
[ $rc -eq 5 ] && echo "pytest ran no tests: failing" >&2
exit $rc
