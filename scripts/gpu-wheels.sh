#!/usr/bin/env bash
# Wheels that scripts/gpu-check.sh installs on the device machine, which has Python 3.12 (with
# PyTorch, aiohttp, click, rich, httpx, psutil, prometheus-client and nvidia-ml-py) and no
# network: bai itself and the server extra's packages that machine lacks, into ./.whl (ignored
# through .git/info/exclude). Then carry ".whl" in the device run (see scripts/gpu-check.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
dest=.whl
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> "$(git rev-parse --git-path info/exclude)"
rm -rf "$dest" && mkdir -p "$dest"
py=${PYTHON:-python3}
# Python 3.12 on x86-64 glibc: the device machine's, whatever this machine runs
plat=(--only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any)
# what the device image lacks of bai's server extra (and their own needs)
need=(websockets "sqlalchemy[asyncio]" alembic aiosqlite pydantic pydantic-settings graphql-core redis aiodocker
      pyseccomp asyncpg uvloop)
"$py" -m pip download -q "${plat[@]}" -d "$dest" "${need[@]}"
# drop what the image already holds: two versions of one package stop the whole install
for have in aiohttp aiosignal aiohappyeyeballs attrs frozenlist multidict propcache yarl idna \
            typing_extensions click rich httpx httpcore h11 anyio certifi psutil \
            prometheus_client markupsafe pygments markdown_it_py mdurl sniffio packaging; do
  rm -f "$dest"/"$have"-*.whl "$dest"/"${have//_/-}"-*.whl
done
"$py" -m pip wheel -q --no-deps --no-build-isolation -w "$dest" . 2>/dev/null \
  || "$py" -m pip wheel -q --no-deps -w "$dest" .
ls "$dest"
du -sh "$dest"
