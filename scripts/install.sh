#!/usr/bin/env bash
# What the product needs from Debian (README command 1 and scripts/test.sh call this):
# bubblewrap (the process runtime's sandbox), util-linux (setpriv, prlimit, nsenter), slirp4netns
# and iproute2 (outbound network for policies that allow it) and jupyter-notebook (the `jupyter`
# app of the default image; without it that app says it is missing). Installs only
# what is missing, quietly; never fails: without root, apt or a mirror, bai runs and
# `backend.ai server start` says which isolation promise does not hold on this host.
set -u
missing=()
command -v bwrap >/dev/null 2>&1 || missing+=(bubblewrap)
{ command -v setpriv && command -v prlimit && command -v nsenter; } >/dev/null 2>&1 \
  || missing+=(util-linux)
command -v slirp4netns >/dev/null 2>&1 || missing+=(slirp4netns)
PATH="$PATH:/usr/sbin:/sbin" command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v jupyter-notebook >/dev/null 2>&1 || missing+=(jupyter-notebook)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "install.sh: not installing ${missing[*]} (needs root and apt-get)" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1; then
  apt-get update -qq >/dev/null 2>&1 || true
  for pkg in "${missing[@]}"; do  # one at a time: one that cannot come must not stop the rest
    apt-get install -y -qq --no-install-recommends "$pkg" >/dev/null 2>&1 \
      || echo "install.sh: could not install $pkg; bai runs without it" >&2
  done
fi
exit 0
