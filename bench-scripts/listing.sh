#!/usr/bin/env bash
# Listing a tree for names only (issue 15: `find` slower through sparsefs than bindfs): a
# tree of N empty files in directories of P files (default 100,000 in directories of 20,
# the shape of a source tree; --per-dir 1000 is scale.sh's shape) is listed with
# `find T -type f` (names and types only: d_type, no stat) through each target, caches
# dropped before every listing (`echo 3`, or `echo 2` with --keep-pages: slab caches only,
# the backing's directory blocks stay in the page cache, so the FUSE requests are what is
# left to measure); RUNS rounds, the targets interleaved within each round. Targets, all
# over the same backing directory:
#   bindfs           bindfs (single-threaded, its default; plain readdir)
#   sparsefs         sparsefs mount (--sparsefs PATH, default target/release/sparsefs)
#   base             another sparsefs build (--base PATH), for before/after
# Prints the times of every round and the median per target, and for the sparsefs targets
# the FUSE requests per directory of one listing (from `sparsefs stats --json`).
#   bench-scripts/listing.sh [--files N] [--per-dir P] [--runs R] [--under DIR]
#       [--sparsefs PATH] [--base PATH] [--keep-pages]
set -euo pipefail
me=listing.sh
repo=$(cd "$(dirname "$0")/.." && pwd)
files=100000 per_dir=20 runs=7 under=/var/tmp bin=$repo/target/release/sparsefs base="" drop=3
die() { echo "$me: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --files) files=$2; shift 2 ;;
    --per-dir) per_dir=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --under) under=$2; shift 2 ;;
    --sparsefs) bin=$2; shift 2 ;;
    --base) base=$2; shift 2 ;;
    --keep-pages) drop=2; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (--help lists the options)" ;;
  esac
done
for v in files per_dir runs; do
  [[ ${!v} =~ ^[0-9]+$ ]] && [ "${!v}" -gt 0 ] || die "--${v//_/-} must be a positive number"
done
[ "$(id -u)" = 0 ] || die "must run as root (mounts, drop_caches)"
[ -x "$bin" ] || die "no sparsefs binary at $bin (cargo build --release, or --sparsefs)"
[ -z "$base" ] || [ -x "$base" ] || die "no sparsefs binary at $base (--base)"
for t in bindfs python3 fusermount3; do command -v $t >/dev/null || die "$t missing"; done
[ -d "$under" ] || die "--under $under is not a directory"

work=$(mktemp -d "$under/listing.XXXXXX")
b=$work/backing
targets=(bindfs sparsefs)
[ -z "$base" ] || targets+=(base)
mkdir -p "$b"
for t in "${targets[@]}"; do mkdir -p "$work/$t"; done
cleanup() {
  for t in "${targets[@]}"; do
    fusermount3 -u "$work/$t" 2>/dev/null || umount -l "$work/$t" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
python3 - "$b" "$files" "$per_dir" <<'P'
import os, sys
root, n, per = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for d in range((n + per - 1) // per):
    p = os.path.join(root, f"d{d:05d}")
    os.mkdir(p)
    for i in range(min(per, n - d * per)):
        os.close(os.open(os.path.join(p, f"f{d * per + i:07d}"), os.O_WRONLY | os.O_CREAT, 0o644))
P
dirs=$(( (files + per_dir - 1) / per_dir + 1 ))
bindfs "$b" "$work/bindfs"
"$bin" mount "$b" "$work/sparsefs"
[ -z "$base" ] || "$base" mount "$b" "$work/base"
sfsbin() { if [ "$1" = base ]; then echo "$base"; else echo "$bin"; fi; }

# FUSE requests by opcode answered so far (the sum of each latency histogram's buckets).
requests() {
  "$(sfsbin "$1")" stats --json "$work/$1" | python3 -c '
import json, sys
f = json.load(sys.stdin)["fuse"]
print(json.dumps({op: sum(v for k, v in h.items() if k.startswith("b")) for op, h in f.items()}))'
}
count() { find "$work/$1" -type f | wc -l; }

for t in "${targets[@]}"; do
  n=$(count "$t")
  [ "$n" = "$files" ] || die "$t listed $n files, not $files"
done
echo "# $files files in directories of $per_dir ($dirs directories with the top), $runs rounds, echo $drop > drop_caches before each listing"
echo "# $(nproc) CPUs, $(uname -r), backing $(findmnt -n -o FSTYPE -T "$b"), bindfs $(bindfs --version 2>&1 | head -1 | awk '{print $2}')"
echo "# sparsefs $("$bin" --version | awk '{print $2}') ($bin)${base:+, base $base}"
declare -A times
for r in $(seq "$runs"); do
  for t in "${targets[@]}"; do
    sync; echo $drop > /proc/sys/vm/drop_caches
    s=$(date +%s%N)
    find "$work/$t" -type f > /dev/null
    e=$(date +%s%N)
    times[$t]+="$(( (e - s) / 1000000 )) "
  done
done
echo "| target | find -type f ms (each round) | median ms | median / bindfs |"
echo "|---|---|---|---|"
med() { tr ' ' '\n' <<<"$1" | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
mb=$(med "${times[bindfs]}")
for t in "${targets[@]}"; do
  m=$(med "${times[$t]}")
  echo "| $t | ${times[$t]}| $m | $(python3 -c "print(f'{$m/$mb:.2f}')") |"
done
for t in sparsefs ${base:+base}; do
  sync; echo $drop > /proc/sys/vm/drop_caches
  a=$(requests "$t"); find "$work/$t" -type f > /dev/null; z=$(requests "$t")
  python3 - "$t" "$dirs" "$a" "$z" <<'P'
import json, sys
t, dirs, a, z = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]), json.loads(sys.argv[4])
d = {k: z[k] - a.get(k, 0) for k in z if z[k] - a.get(k, 0) > 0}
per = ", ".join(f"{k} {v / dirs:.2f}" for k, v in sorted(d.items(), key=lambda kv: -kv[1]))
print(f"{t}: FUSE requests per directory of one listing: {sum(d.values()) / dirs:.2f} ({per})")
P
done
