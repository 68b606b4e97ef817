#!/usr/bin/env bash
# Memory under a long streaming write (reliability issue: "memory stays bounded under an
# 8 GiB streaming write"): one writer streams SIZE bytes with dd bs=1M through sparsefs,
# through bindfs, and directly onto the backing directory, in the same run, for three
# data patterns:
#   dense   random bytes (a 64 MiB random block repeated)
#   zeros   /dev/zero (sparsefs turns it into one ftruncate)
#   mixed   4 MiB chunks, one in eight random, the rest zeros (a checkpoint-like image)
# and records wall time, throughput and the daemon's peak RSS (VmHWM from /proc, read
# just before unmounting; sampled VmRSS too). The sparsefs mount uses its defaults
# (--max-dirty 256M), so its peak RSS should stay near that bound whatever SIZE is.
# Writes docs/bench/stream-rss.md and prints it.
#   bench-scripts/stream-rss.sh [--size 8G] [--backing DIR] [--sparsefs PATH] [--quick]
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
size=8G backing_parent=/var/tmp bin=$repo/target/release/sparsefs
while [ $# -gt 0 ]; do
  case "$1" in
    --size) size=$2; shift 2 ;;
    --backing) backing_parent=$2; shift 2 ;;
    --sparsefs) bin=$2; shift 2 ;;
    --quick) size=1G; shift ;;
    *) echo "stream-rss.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
mib=$(numfmt --from=iec "$size")
mib=$((mib >> 20))
[ "$mib" -ge 64 ] || { echo "stream-rss.sh: --size must be at least 64M" >&2; exit 2; }
command -v bindfs >/dev/null || { echo "stream-rss.sh: bindfs missing" >&2; exit 2; }
work=$(mktemp -d "$backing_parent/sparsefs-rss.XXXXXX")
cp "$bin" "$work/sparsefs"
src=/dev/shm/sparsefs-rss-src.$$
cleanup() {
  for m in "$work"/mnt-*; do mountpoint -q "$m" 2>/dev/null && { umount "$m" 2>/dev/null || umount -l "$m"; }; done
  rm -rf "$work" "$src"
}
trap cleanup EXIT INT TERM
head -c 64M /dev/urandom > "$src"

writer() { # writer PATTERN FILE
  case $1 in
    dense) for _ in $(seq $((mib / 64))); do cat "$src"; done | dd of="$2" bs=1M iflag=fullblock conv=fsync status=none ;;
    zeros) dd if=/dev/zero of="$2" bs=1M count="$mib" conv=fsync status=none ;;
    mixed) python3 - "$2" "$mib" "$src" <<'EOF'
import os, sys
path, mib, src = sys.argv[1], int(sys.argv[2]), sys.argv[3]
data = open(src, 'rb').read(4 << 20)
zero = bytes(4 << 20)
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
for i in range(mib // 4):
    buf = data if i % 8 == 0 else zero
    for j in range(4):
        os.write(fd, buf[j << 20:(j + 1) << 20])
os.fsync(fd)
os.close(fd)
EOF
    ;;
  esac
}

declare -A T P
for pat in dense zeros mixed; do
  for v in direct bindfs sparsefs; do
    b=$work/back-$v m=$work/mnt-$v
    rm -rf "$b"; mkdir -p "$b" "$m"
    pid=""
    case $v in
      direct) d=$b ;;
      bindfs) bindfs "$b" "$m"; d=$m; pid=$(pgrep -n -f "bindfs $b $m") ;;
      sparsefs) "$work/sparsefs" mount "$b" "$m"; d=$m; pid=$(pgrep -n -f "sparsefs mount $b $m") ;;
    esac
    peak_sampled=0
    if [ -n "$pid" ]; then
      ( while kill -0 "$pid" 2>/dev/null; do
          awk '/VmRSS/{print $2}' "/proc/$pid/status" 2>/dev/null
          sleep 0.2
        done ) > "$work/rss-$v.txt" &
      sampler=$!
    fi
    t0=$(date +%s.%N)
    writer "$pat" "$d/f"
    t1=$(date +%s.%N)
    T[$pat,$v]=$(echo "$t1 - $t0" | bc)
    if [ -n "$pid" ]; then
      hwm=$(awk '/VmHWM/{print $2}' "/proc/$pid/status")
      P[$pat,$v]=$((hwm / 1024))
      kill "$sampler" 2>/dev/null || true
      wait "$sampler" 2>/dev/null || true
      umount "$m" 2>/dev/null || umount -l "$m"
      for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    else
      P[$pat,$v]="-"
    fi
    [ "$(stat -c %s "$b/f")" -eq $((mib << 20)) ] || { echo "stream-rss.sh: $v $pat wrote a wrong size" >&2; exit 1; }
    echo "$pat $v ${T[$pat,$v]} s peak ${P[$pat,$v]} MiB alloc $(du -m "$b/f" | cut -f1) MiB" >&2
    rm -rf "$b"
  done
done

out=$repo/docs/bench/stream-rss.md
{
  echo "# Memory under a streaming write"
  echo
  echo "Command: \`bench-scripts/stream-rss.sh --size $size\` (1 run). Machine: $(nproc) vCPU,"
  echo "$(free -g | awk '/Mem:/{print $2}') GiB, $(uname -r); backing: ext4 directory under $backing_parent;"
  echo "sparsefs defaults (--max-dirty 256M, --write-size 4M, --sparse-block 32K); $(date -u +%Y-%m-%d)."
  echo "One writer streams $size with 1 MiB writes and fsyncs at the end. Peak RSS is the"
  echo "daemon's VmHWM."
  echo
  echo "| pattern | direct | bindfs | sparsefs | sparsefs peak RSS | bindfs peak RSS |"
  echo "|---|---|---|---|---|---|"
  for pat in dense zeros mixed; do
    f() { awk -v s="$1" -v m="$mib" 'BEGIN{printf "%.1f s (%.0f MB/s)", s, m*1.048576/s}'; }
    echo "| $pat | $(f "${T[$pat,direct]}") | $(f "${T[$pat,bindfs]}") | $(f "${T[$pat,sparsefs]}") | ${P[$pat,sparsefs]} MiB | ${P[$pat,bindfs]} MiB |"
  done
} > "$out"
cat "$out"
