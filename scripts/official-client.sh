#!/usr/bin/env bash
# Installs the official Backend.AI client (PyPI backend.ai-client 23.9.10) into a virtualenv of its
# own and prints the absolute path of its `backend.ai` executable on stdout (nothing else).
# yarl must stay below 1.17: newer yarl breaks the client's request signer (client-protocol.md).
# Progress and pip output go to stderr. Idempotent: an existing working venv is reused.
set -euo pipefail
root=${BAI_CI_ROOT:-/tmp/bai-ci}
venv="$root/official-venv"
exe="$venv/bin/backend.ai"
python=${BAI_OFFICIAL_PYTHON:-python3}

ready() {
  [ -x "$exe" ] && "$venv/bin/python" -c \
    'import importlib.metadata as m, sys; sys.exit(m.version("backend.ai-client") != "23.9.10")' \
    2>/dev/null
}

if ! ready; then
  mkdir -p "$root"
  echo "installing backend.ai-client 23.9.10 into $venv" >&2
  rm -rf "$venv"
  "$python" -m venv "$venv" >&2
  "$venv/bin/pip" install -q --disable-pip-version-check 'backend.ai-client==23.9.10' 'yarl<1.17' >&2
  ready || { echo "official client install failed" >&2; exit 1; }
fi
# the lock-free "print the path" contract: scripts/test.sh captures stdout
cd "$(dirname "$exe")" && echo "$(pwd -P)/backend.ai"
