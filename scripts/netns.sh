#!/usr/bin/env bash
# Network-namespace "hosts" for cluster tests: each host is a network namespace with one veth
# link (eth0) onto a private bridge in the root namespace. Only addresses in 10.77.N.0/24 are
# used, all created here: the bridge is 10.77.N.1 (where managers, PostgreSQL and Redis are
# reached), host i is 10.77.N.(10+i). The traffic never leaves this machine.
#
# Usage (as root):
#   scripts/netns.sh create TAG HOST...   make the bridge and one namespace per HOST; prints
#                                         "bridge <addr>" and "host <name> <netns> <addr>" lines
#   scripts/netns.sh link TAG HOST up|down  plug / unplug a host's cable (eth0 in its namespace)
#   scripts/netns.sh exec TAG HOST CMD...   run CMD inside the host's namespace
#   scripts/netns.sh destroy TAG          remove the namespaces and the bridge
#   scripts/netns.sh check                exit 0 when namespaces can be made here
# TAG: up to 6 letters/digits naming this set (several sets may exist at once, each on its own
# 10.77.N.0/24). Namespaces are named bai-TAG-HOST; the state lives in /run/bai-netns/TAG.
set -euo pipefail

STATE_ROOT=${BAI_NETNS_STATE:-/run/bai-netns}

die() { echo "netns.sh: $*" >&2; exit 1; }
need_root() { [ "$(id -u)" = 0 ] || die "must run as root"; }
check_tag() { [[ "$1" =~ ^[a-z0-9]{1,6}$ ]] || die "TAG must be 1-6 lowercase letters/digits: '$1'"; }
check_host() { [[ "$1" =~ ^[a-z0-9]{1,12}$ ]] || die "HOST must be 1-12 lowercase letters/digits: '$1'"; }

bridge_of() { echo "bai-$1-br"; }
netns_of() { echo "bai-$1-$2"; }

# The first 10.77.N.0/24 (N in 1..254) that no interface here uses yet.
free_subnet() {
  local used n
  used=$(ip -4 -o addr show | awk '{print $4}' | grep -E '^10\.77\.' | cut -d. -f3 || true)
  for n in $(seq 1 254); do
    grep -qx "$n" <<<"$used" || { echo "$n"; return; }
  done
  die "no free 10.77.N.0/24 subnet"
}

cmd_check() {
  need_root
  command -v ip >/dev/null || die "iproute2 (ip) is not installed"
  local probe="bai-probe-$$"
  ip netns add "$probe" 2>/dev/null || die "cannot create network namespaces here"
  ip netns del "$probe"
  ip link add "bai-p$$" type bridge 2>/dev/null || die "cannot create bridges here"
  ip link del "bai-p$$"
}

cmd_create() {
  need_root
  local tag=$1; shift
  check_tag "$tag"
  [ $# -gt 0 ] || die "create needs at least one HOST"
  local state="$STATE_ROOT/$tag"
  mkdir -p "$STATE_ROOT"
  # two sets made at the same time must not pick the same subnet
  exec 9>"$STATE_ROOT/.lock"
  flock 9
  [ -e "$state" ] && die "set '$tag' exists already (destroy it first)"
  mkdir -p "$state"
  local n br
  n=$(free_subnet)
  br=$(bridge_of "$tag")
  echo "$n" > "$state/subnet"
  ip link add "$br" type bridge
  ip addr add "10.77.$n.1/24" dev "$br"
  ip link set "$br" up
  echo "bridge 10.77.$n.1"
  local i=0 host ns outer
  for host in "$@"; do
    check_host "$host"
    i=$((i + 1))
    ns=$(netns_of "$tag" "$host")
    outer="bai-$tag-v$i"
    ip netns add "$ns"
    echo "$host $i" >> "$state/hosts"
    ip link add "$outer" type veth peer name eth0 netns "$ns"
    ip link set "$outer" master "$br" up
    ip -n "$ns" link set lo up
    ip -n "$ns" addr add "10.77.$n.$((10 + i))/24" dev eth0
    ip -n "$ns" link set eth0 up
    echo "host $host $ns 10.77.$n.$((10 + i))"
  done
}

cmd_link() {
  need_root
  local tag=$1 host=$2 updown=$3
  check_tag "$tag"; check_host "$host"
  [[ "$updown" = up || "$updown" = down ]] || die "link takes up or down"
  ip -n "$(netns_of "$tag" "$host")" link set eth0 "$updown"
}

cmd_exec() {
  need_root
  local tag=$1 host=$2; shift 2
  check_tag "$tag"; check_host "$host"
  exec ip netns exec "$(netns_of "$tag" "$host")" "$@"
}

cmd_destroy() {
  need_root
  local tag=$1
  check_tag "$tag"
  local state="$STATE_ROOT/$tag" host _i ns
  # Namespaces named for this tag, whether or not the state file survived.
  for ns in $(ip netns list | awk '{print $1}' | grep -E "^bai-$tag-" || true); do
    # Processes still inside would keep the namespace alive: end them first.
    for pid in $(ip netns pids "$ns" 2>/dev/null || true); do kill -9 "$pid" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
  done
  if [ -f "$state/hosts" ]; then
    while read -r host _i; do
      ip link del "bai-$tag-v$_i" 2>/dev/null || true
    done < "$state/hosts"
  fi
  ip link del "$(bridge_of "$tag")" 2>/dev/null || true
  rm -rf "$state"
}

case "${1:-}" in
  create) shift; [ $# -ge 2 ] || die "usage: create TAG HOST..."; cmd_create "$@" ;;
  link) shift; [ $# -eq 3 ] || die "usage: link TAG HOST up|down"; cmd_link "$@" ;;
  exec) shift; [ $# -ge 3 ] || die "usage: exec TAG HOST CMD..."; cmd_exec "$@" ;;
  destroy) shift; [ $# -eq 1 ] || die "usage: destroy TAG"; cmd_destroy "$1" ;;
  check) cmd_check ;;
  *) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
