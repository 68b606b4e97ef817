#!/usr/bin/env bash
# The cost of sparsefs's latency histograms (issue 20): two binaries side by side in one run
# (A = before, B = after), alternating, each over a fresh ext4 directory:
#   - 4 KiB random writes: fio, 64 MiB file, 20,000 writes, psync, end_fsync
#   - a dense stream: dd of 512 MiB of random data (from a file in the page cache), bs=1M, conv=fsync
# Prints each run and the medians, and B/A as ratios (above 1: B slower).
#   bench-scripts/metrics-overhead.sh OLD_BINARY NEW_BINARY [ROUNDS=5] [NEW_ARGS...]
set -euo pipefail
a=${1:?old binary}; b=${2:?new binary}; rounds=${3:-5}; shift 3 || true
extra=("$@")
[ "$(id -u)" = 0 ] || { echo "metrics-overhead: must run as root" >&2; exit 1; }
for t in fio dd; do command -v $t >/dev/null || { echo "metrics-overhead: $t missing" >&2; exit 1; }; done
work=$(mktemp -d /var/tmp/sparsefs-mo.XXXXXX)
trap 'for m in "$work"/m*; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done; rm -rf "$work"' EXIT
head -c $((512 << 20)) /dev/urandom > "$work/src"
run() {  # run BIN NAME ARGS...: prints "rand_s stream_s"
  local bin=$1 name=$2; shift 2
  local be=$work/be-$name m=$work/m-$name
  rm -rf "$be"; mkdir -p "$be" "$m"
  "$bin" mount "$be" "$m" "$@" >/dev/null 2>&1
  for _ in $(seq 100); do mountpoint -q "$m" && break; sleep 0.05; done
  local t0 t1 t2
  t0=$(date +%s.%N)
  fio --name=r --filename="$m/rand" --size=64M --bs=4k --rw=randwrite --ioengine=psync \
      --number_ios=20000 --end_fsync=1 --randrepeat=1 --output=/dev/null
  t1=$(date +%s.%N)
  dd if="$work/src" of="$m/dense" bs=1M conv=fsync status=none
  t2=$(date +%s.%N)
  umount "$m"
  echo "$(echo "$t1 - $t0" | bc) $(echo "$t2 - $t1" | bc)"
}
ra=(); sa=(); rb=(); sb=()
for i in $(seq "$rounds"); do
  read -r x y < <(run "$a" a); ra+=("$x"); sa+=("$y"); echo "round $i A: random ${x}s stream ${y}s"
  read -r x y < <(run "$b" b "${extra[@]}"); rb+=("$x"); sb+=("$y"); echo "round $i B: random ${x}s stream ${y}s"
done
med() { printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END {print (NR%2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2)}'; }
mra=$(med "${ra[@]}"); mrb=$(med "${rb[@]}"); msa=$(med "${sa[@]}"); msb=$(med "${sb[@]}")
echo "medians: 4 KiB random writes A ${mra}s B ${mrb}s (B/A $(echo "scale=3; $mrb / $mra" | bc)); dense stream A ${msa}s B ${msb}s (B/A $(echo "scale=3; $msb / $msa" | bc))"
