#!/usr/bin/env bash
# Request threads taking turns (vendor/fuser/SPARSEFS.md): a tree of N small files (default
# 10,000, 0-4 KiB, 1,000 per directory) is copied with `rsync -a` into each target, read
# back by 4 `cat` processes at once (`xargs -P 4`: requests in flight together), then
# removed with `rm -rf` through it (one request at a time), caches dropped before each
# step; RUNS rounds, the targets interleaved within each round so drift hits them alike.
# --backing DIR puts the targets' backing directory under DIR (e.g. a GlusterFS mount whose
# brick waits per operation) instead of under --under. Targets:
#   bindfs          bindfs over the backing directory (single-threaded, its default)
#   bindfs-mt       bindfs --multithreaded
#   sfs:N           sparsefs mount -o threads=N (threads take turns, the default)
#   eager:N         the same with SPARSEFS_EAGER_THREADS=1 (every thread waits in read)
# Prints one line per target and step: the times of every round, then the median.
# Checks that every copy is whole (file count) and that rm -rf leaves the backing empty.
#   bench-scripts/turns.sh [--files N] [--runs R] [--under DIR] [--backing DIR]
#       [--sparsefs PATH] [--target T]...  (default targets: bindfs sfs:2 eager:2 sfs:1 sfs:4)
set -euo pipefail
me=turns.sh
repo=$(cd "$(dirname "$0")/.." && pwd)
files=10000 runs=4 under=/var/tmp backing_root="" bin=$repo/target/release/sparsefs targets=()
die() { echo "$me: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --files) files=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --under) under=$2; shift 2 ;;
    --backing) backing_root=$2; shift 2 ;;
    --sparsefs) bin=$2; shift 2 ;;
    --target) targets+=("$2"); shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (--help lists the options)" ;;
  esac
done
[[ $files =~ ^[0-9]+$ ]] && [ "$files" -gt 0 ] || die "--files must be a positive number"
[[ $runs =~ ^[0-9]+$ ]] && [ "$runs" -gt 0 ] || die "--runs must be a positive number"
[ ${#targets[@]} -gt 0 ] || targets=(bindfs sfs:2 eager:2 sfs:1 sfs:4)
for t in "${targets[@]}"; do
  [[ $t =~ ^(bindfs|bindfs-mt|(sfs|eager):[0-9]+)$ ]] || die "unknown target $t"
done
[ "$(id -u)" = 0 ] || die "must run as root (mounts, drop_caches)"
[ -x "$bin" ] || die "no sparsefs binary at $bin (cargo build --release, or --sparsefs)"
for t in bindfs rsync python3; do command -v $t >/dev/null || die "$t missing (apt-get install $t)"; done
[ -d "$under" ] || die "--under $under is not a directory"
[ -z "$backing_root" ] || [ -d "$backing_root" ] || die "--backing $backing_root is not a directory"

work=$(mktemp -d "$under/turns.XXXXXX")
src=$work/src b=$work/backing m=$work/mnt
[ -z "$backing_root" ] || b=$(mktemp -d "$backing_root/turns-backing.XXXXXX")
mkdir -p "$src" "$b" "$m"
cleanup() {
  umount "$m" 2>/dev/null || fusermount3 -u "$m" 2>/dev/null || true
  rm -rf "$work"
  [ -z "$backing_root" ] || rm -rf "$b"
}
trap cleanup EXIT
python3 - "$src" "$files" <<'P'
import os, random, sys
root, n = sys.argv[1], int(sys.argv[2])
random.seed(1)
for i in range(n):
    d = os.path.join(root, f"d{i // 1000}")
    if i % 1000 == 0:
        os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i}"), "wb") as f:
        f.write(os.urandom(random.randint(0, 4096)))
P

now() { date +%s.%N; }
declare -A rs cat_ rm_
for ((r = 1; r <= runs; r++)); do
  for t in "${targets[@]}"; do
    case $t in
      bindfs) bindfs "$b" "$m" ;;
      bindfs-mt) bindfs --multithreaded "$b" "$m" ;;
      sfs:*) "$bin" mount "$b" "$m" -o "threads=${t#sfs:}" ;;
      eager:*) SPARSEFS_EAGER_THREADS=1 "$bin" mount "$b" "$m" -o "threads=${t#eager:}" ;;
    esac
    sync; echo 3 >/proc/sys/vm/drop_caches
    s=$(now); rsync -a "$src/" "$m/tree/"; e=$(now)
    rs[$t]+=" $(echo "$e - $s" | bc)"
    got=$(find "$m/tree" -type f | wc -l)
    [ "$got" = "$files" ] || { echo "$me: $t: the copy holds $got files of $files" >&2; exit 1; }
    sync; echo 3 >/proc/sys/vm/drop_caches
    s=$(now); find "$m/tree" -type f -print0 | xargs -0 -P 4 -n 64 cat >/dev/null; e=$(now)
    cat_[$t]+=" $(echo "$e - $s" | bc)"
    sync; echo 3 >/proc/sys/vm/drop_caches
    s=$(now); rm -rf "$m/tree"; e=$(now)
    rm_[$t]+=" $(echo "$e - $s" | bc)"
    umount "$m" || fusermount3 -u "$m"
    left=$(find "$b" -mindepth 1 | wc -l)
    [ "$left" = 0 ] || { echo "$me: $t: rm -rf left $left entries in the backing" >&2; exit 1; }
  done
done
median() { tr ' ' '\n' | sed '/^$/d' | sort -n | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.2f", m}'; }
echo "# $files files, $runs rounds, $(nproc) CPUs, $(uname -r), sparsefs $("$bin" --version 2>/dev/null | head -1)"
echo "# backing: $(df -T "$b" | awk 'NR==2 {print $2}') ($b)"
printf '| target | rsync -a s (each round) | median | 4 x cat s | median | rm -rf s | median |\n|---|---|---|---|---|---|---|\n'
for t in "${targets[@]}"; do
  printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$t" \
    "$(printf '%.2f ' ${rs[$t]})" "$(echo "${rs[$t]}" | median)" \
    "$(printf '%.2f ' ${cat_[$t]})" "$(echo "${cat_[$t]}" | median)" \
    "$(printf '%.2f ' ${rm_[$t]})" "$(echo "${rm_[$t]}" | median)"
done
