#!/usr/bin/env bash
# Installs the official Backend.AI client (PyPI backend.ai-client 23.9.10) into a virtualenv of its
# own and prints the absolute path of its `backend.ai` executable on stdout (nothing else).
# - The client requires Python 3.11 exactly (Requires-Python >=3.11,<3.12).
# - yarl must stay below 1.17: newer yarl breaks the client's request signer (client-protocol.md).
# - Where the shared reference capture is beside the checkout, its venv-freeze.txt pins every
#   dependency to the versions the protocol was observed with.
# Progress and pip output go to stderr. Idempotent: an existing working venv is reused.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
root=${BAI_CI_ROOT:-/tmp/bai-ci}
venv="$root/official-venv"
exe="$venv/bin/backend.ai"
freeze="$here/../shared/reference/client-capture/venv-freeze.txt"

ready() {
  [ -x "$exe" ] && "$venv/bin/python" -c \
    'import importlib.metadata as m, sys; sys.exit(m.version("backend.ai-client") != "23.9.10")' \
    2>/dev/null
}

pick_python() {
  local c
  for c in ${BAI_OFFICIAL_PYTHON:-} python3.11 python3; do
    if command -v "$c" >/dev/null 2>&1 \
        && "$c" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
      echo "$c"; return 0
    fi
  done
  echo "the official client needs Python 3.11 (set BAI_OFFICIAL_PYTHON)" >&2
  return 1
}

if ! ready; then
  python=$(pick_python)
  mkdir -p "$root"
  echo "installing backend.ai-client 23.9.10 into $venv" >&2
  rm -rf "$venv"
  "$python" -m venv "$venv" >&2
  constraints=()
  [ -f "$freeze" ] && constraints=(-c "$freeze")
  "$venv/bin/pip" install -q --disable-pip-version-check "${constraints[@]}" \
    'backend.ai-client==23.9.10' 'yarl<1.17' >&2
  ready || { echo "official client install failed" >&2; exit 1; }
fi
echo "$(cd "$(dirname "$exe")" && pwd -P)/backend.ai"
