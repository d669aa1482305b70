#!/usr/bin/env bash
# Build the docker runtime's default images from Debian packages and import them into the engine
# in $DOCKER_HOST (see `python -m bai.agent.images --help`). Needs root, debootstrap and a docker CLI.
#   scripts/build-images.sh                 # build or reuse the cached rootfs, import, print names
#   scripts/build-images.sh --force         # rebuild from scratch
#   scripts/build-images.sh --register      # also register with the manager of the client config
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
py="${BAI_PYTHON:-$here/.venv/bin/python}"
[ -x "$py" ] || py=python3
PYTHONPATH="$here/src${PYTHONPATH:+:$PYTHONPATH}" exec "$py" -m bai.agent.images build "$@"
