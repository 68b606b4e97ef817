#!/usr/bin/env bash
# The first listing after a copy (issue 15: scale.sh's `find -type f` step, which follows its
# `rsync -a` step, was 1.24-1.55x bindfs while listings of a tree made directly on the
# backing were not). Per round and per target: `rsync -a SRC/ T/tree/` through the target,
# `sync`, `echo 3 > drop_caches` (the kernel forgets every inode the copy made known), then
# `find T/tree -type f` timed twice (the first listing after the forgets, then another after
# a second drop), with the daemon's CPU time (utime + stime) over each, then `rm -rf`
# through the target. Targets, each over its own directory of one backing:
#   bindfs           bindfs (the peer)
#   sparsefs         sparsefs mount (--sparsefs PATH, default target/release/sparsefs)
#   base             another sparsefs build (--base PATH), for before/after
# SRC: N files of 0-4 KiB, 1000 a directory (scale.sh's shape), made once under --under
# and removed at the end. RUNS rounds (default 3), the targets interleaved within each.
# Prints every round and the medians, and each median as a ratio to bindfs's.
#   bench-scripts/find-after-copy.sh [--files N] [--runs R] [--under DIR]
#       [--sparsefs PATH] [--base PATH]
set -euo pipefail
me=find-after-copy.sh
repo=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH=$repo/bench-scripts${PYTHONPATH:+:$PYTHONPATH}
files=100000 runs=3 under=/var/tmp bin=$repo/target/release/sparsefs base=""
die() { echo "$me: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --files) files=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --under) under=$2; shift 2 ;;
    --sparsefs) bin=$2; shift 2 ;;
    --base) base=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (--help lists the options)" ;;
  esac
done
for v in files runs; do
  [[ ${!v} =~ ^[0-9]+$ ]] && [ "${!v}" -gt 0 ] || die "--$v must be a positive number"
done
[ "$(id -u)" = 0 ] || die "must run as root (mounts, drop_caches)"
[ -x "$bin" ] || die "no sparsefs binary at $bin (cargo build --release, or --sparsefs)"
[ -z "$base" ] || [ -x "$base" ] || die "no sparsefs binary at $base (--base)"
for t in bindfs rsync python3 fusermount3; do command -v $t >/dev/null || die "$t missing"; done
[ -d "$under" ] || die "--under $under is not a directory"

work=$(mktemp -d "$under/find-after-copy.XXXXXX")
targets=(bindfs sparsefs)
[ -z "$base" ] || targets+=(base)
declare -A pid
cleanup() {
  for t in "${targets[@]}"; do
    fusermount3 -u "$work/$t" 2>/dev/null || umount -l "$work/$t" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
read -r made _ < <(python3 -m sparsebench.scale gen "$work/src" "$files")
[ "$made" = "$files" ] || die "made $made files, not $files"
for t in "${targets[@]}"; do
  mkdir -p "$work/backing/$t" "$work/$t"
  case $t in
    bindfs) bindfs "$work/backing/$t" "$work/$t" ;;
    sparsefs) "$bin" mount "$work/backing/$t" "$work/$t" ;;
    base) "$base" mount "$work/backing/$t" "$work/$t" ;;
  esac
  # The daemon serving the mount: the process holding /dev/fuse with the mount's name in
  # its command line (both daemons run in the background).
  pid[$t]=$(pgrep -f -- "$work/$t\$" | head -1)
  [ -n "${pid[$t]}" ] || die "no daemon found for $t"
done
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
ms_since() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }
declare -A first second cpu1 cpu2
listing() { # target -> "ms ticks"
  local c s n
  sync; echo 3 > /proc/sys/vm/drop_caches
  c=$(ticks "${pid[$1]}"); s=$(date +%s%N)
  n=$(find "$work/$1/tree" -type f | wc -l)
  [ "$n" = "$files" ] || die "$1 listed $n files, not $files"
  echo "$(ms_since "$s") $(( $(ticks "${pid[$1]}") - c ))"
}
echo "# $files files of 0-4 KiB, 1000 a directory; $runs rounds; per round and target: rsync -a in, sync, echo 3 > drop_caches, find -type f (first), drop again, find (second)"
echo "# $(nproc) CPUs, $(uname -r), backing $(findmnt -n -o FSTYPE -T "$work/backing"), bindfs $(bindfs --version 2>&1 | head -1 | awk '{print $2}')"
echo "# sparsefs $("$bin" --version | awk '{print $2}') ($bin)${base:+, base $base}"
for r in $(seq "$runs"); do
  for t in "${targets[@]}"; do
    rsync -a "$work/src/" "$work/$t/tree/"
    read -r ms ti < <(listing "$t"); first[$t]+="$ms " cpu1[$t]+="$ti "
    read -r ms ti < <(listing "$t"); second[$t]+="$ms " cpu2[$t]+="$ti "
    rm -rf "$work/$t/tree"
  done
done
med() { tr ' ' '\n' <<<"$1" | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
ratio() { python3 -c "print(f'{$1/$2:.2f}')"; }
echo "| target | first find ms (each round) | median | / bindfs | daemon CPU ms (median) | second find ms (each round) | median | / bindfs | daemon CPU ms (median) |"
echo "|---|---|---|---|---|---|---|---|---|"
hz=$(getconf CLK_TCK)
b1=$(med "${first[bindfs]}") b2=$(med "${second[bindfs]}")
for t in "${targets[@]}"; do
  m1=$(med "${first[$t]}") m2=$(med "${second[$t]}")
  c1=$(( $(med "${cpu1[$t]}") * 1000 / hz )) c2=$(( $(med "${cpu2[$t]}") * 1000 / hz ))
  echo "| $t | ${first[$t]}| $m1 | $(ratio "$m1" "$b1") | $c1 | ${second[$t]}| $m2 | $(ratio "$m2" "$b2") | $c2 |"
done
