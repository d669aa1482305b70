#!/usr/bin/env bash
# Build the manager's and the agent's container images (bai-manager:<version>, bai-agent:<version>)
# from Debian packages: the kernel base image of scripts/build-images.sh plus this checkout with its
# server extra (see `python -m bai.ops.service_images --help`). Needs a docker CLI and $DOCKER_HOST.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
py="${BAI_PYTHON:-$here/.venv/bin/python}"
[ -x "$py" ] || py=python3
PYTHONPATH="$here/src${PYTHONPATH:+:$PYTHONPATH}" exec "$py" -m bai.ops.service_images build "$@"
