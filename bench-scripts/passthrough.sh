#!/usr/bin/env bash
# Passthrough benchmark (foundation issue): the same workloads on the backing directory
# directly, through bindfs, and through sparsefs, in one run, as medians of RUNS:
#   seq-write  dd of 2 GiB random data, bs=1M (source pre-generated in /dev/shm)
#   seq-read   dd of that file back, bs=1M, page cache dropped first
#   rand-4k    fio: 4 KiB random writes into a 512 MiB file, 20 s (psync, 1 job)
#   smallfiles create + stat + unlink of 20k empty files (python, one process)
#   ls-f       ls -f of a 50k-entry directory made on the backend
# Writes docs/bench/passthrough.md (table + ratios) and prints it.
#   bench-scripts/passthrough.sh [--quick] [--runs N] [--sparsefs PATH] [--under DIR] [--out FILE]
# --under DIR puts the backing directories under DIR (default /var/tmp, the root ext4;
# /dev/shm takes the disk out and leaves the FUSE path alone), --out the Markdown
# (default docs/bench/passthrough.md).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
runs=3 size_mib=2048 files=20000 dirents=50000 fio_s=20 lsreps=7
bin=$repo/target/release/sparsefs
under=/var/tmp
md=$repo/docs/bench/passthrough.md
cmdline="$*"
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) runs=1 size_mib=256 files=2000 dirents=5000 fio_s=5 lsreps=3; shift ;;
    --runs) runs=$2; shift 2 ;;
    --sparsefs) bin=$2; shift 2 ;;
    --under) under=$2; shift 2 ;;
    --out) md=$2; shift 2 ;;
    *) echo "passthrough.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
for t in bindfs fio python3; do command -v $t >/dev/null || { echo "passthrough.sh: $t missing" >&2; exit 2; }; done
work=$(mktemp -d "$under/sparsefs-pt.XXXXXX")
cp "$bin" "$work/sparsefs"
# A VM's free page reporting makes first touches of freed memory slow: paused for the run,
# memory touched once (bench-scripts/vm-memory.sh says why). --quick skips the touching.
vmstate=$("$repo/bench-scripts/vm-memory.sh" pause $([ "$runs" = 1 ] && [ "$size_mib" -lt 2048 ] && echo 0))
cleanup() {
  "$repo/bench-scripts/vm-memory.sh" restore "$vmstate" || true
  for m in "$work"/mnt-*; do mountpoint -q "$m" 2>/dev/null && { umount "$m" 2>/dev/null || umount -l "$m"; }; done
  rm -rf "$work" /dev/shm/sparsefs-pt-src.$$
}
trap cleanup EXIT INT TERM
src=/dev/shm/sparsefs-pt-src.$$
head -c $((size_mib << 20)) /dev/urandom > "$src"

setup() { # setup TARGET -> prints the directory to use
  local t=$1 b=$work/back-$t m=$work/mnt-$t
  rm -rf "$b"; mkdir -p "$b" "$m"
  case $t in
    direct) echo "$b" ;;
    bindfs) bindfs "$b" "$m"; echo "$m" ;;
    sparsefs) "$work/sparsefs" mount "$b" "$m"; echo "$m" ;;
  esac
}
teardown() {
  local t=$1 m=$work/mnt-$t
  if mountpoint -q "$m"; then umount "$m" 2>/dev/null || umount -l "$m"; fi
  for _ in $(seq 100); do pgrep -f "sparsefs mount $work/back-$t" >/dev/null || break; sleep 0.1; done
  rm -rf "$work/back-$t"
}
secs() { local t0 t1; t0=$(date +%s.%N); "$@" >/dev/null 2>&1; t1=$(date +%s.%N); echo "$t1 - $t0" | bc; }

median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END{print (NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2}'; }
declare -A R
for run in $(seq "$runs"); do
  for t in direct bindfs sparsefs; do
    d=$(setup $t)
    sync
    R[$t,seq-write,$run]=$(secs dd if="$src" of="$d/big" bs=1M conv=fsync)
    sync; echo 3 > /proc/sys/vm/drop_caches
    R[$t,seq-read,$run]=$(secs dd if="$d/big" of=/dev/null bs=1M)
    rm -f "$d/big"
    out=$(fio --name=r4k --filename="$d/r4k" --size=512M --rw=randwrite --bs=4k --ioengine=psync \
      --time_based --runtime=$fio_s --output-format=terse --terse-version=3 2>/dev/null | tail -1)
    R[$t,rand-4k,$run]=$(echo "$out" | awk -F';' '{print $49}')   # write IOPS
    rm -f "$d/r4k"
    R[$t,smallfiles,$run]=$(secs python3 -c "
import os,sys
d=sys.argv[1]; n=int(sys.argv[2])
for i in range(n):
    p=os.path.join(d,'f%d'%i); open(p,'w').close(); os.stat(p); os.unlink(p)
" "$d" "$files")
    mkdir -p "$work/back-$t/many"
    python3 -c "
import os,sys
d=sys.argv[1]
for i in range(int(sys.argv[2])): open(os.path.join(d,'e%d'%i),'w').close()
" "$work/back-$t/many" "$dirents"
    # ls -f: median of $lsreps listings with cold caches (dentries, inodes and the
    # daemon's inode table dropped before each), then of $lsreps warm ones.
    xs=()
    for _ in $(seq $lsreps); do
      sync; echo 3 > /proc/sys/vm/drop_caches
      xs+=("$(secs bash -c "ls -f '$d/many' | wc -l")")
    done
    R[$t,ls-f,$run]=$(median "${xs[@]}")
    xs=()
    for _ in $(seq $lsreps); do xs+=("$(secs bash -c "ls -f '$d/many' | wc -l")"); done
    R[$t,ls-f-warm,$run]=$(median "${xs[@]}")
    teardown $t
  done
done

mkdir -p "$(dirname "$md")"
{
  echo "# Passthrough benchmark"
  echo
  echo "Command: \`bench-scripts/passthrough.sh $cmdline\` ($runs runs, medians). Machine: $(nproc) vCPU,"
  echo "$(free -g | awk '/Mem:/{print $2}') GiB, $(uname -r), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs),"
  echo "backing: $(stat -f -c %T "$under") directory under $under; bindfs $(bindfs --version 2>&1 | head -1 | awk '{print $2}'); $(date -u +%Y-%m-%d)."
  if [ "$vmstate" != none ]; then
    echo "The VM's free page reporting was paused for the run and free memory touched once first"
    echo "(\`bench-scripts/vm-memory.sh\`: otherwise whichever variant allocates long-freed memory pays a host fault per page)."
  fi
  echo
  echo "| workload | direct | bindfs | sparsefs | sparsefs / bindfs |"
  echo "|---|---|---|---|---|"
  for w in seq-write seq-read rand-4k smallfiles ls-f ls-f-warm; do
    vals=()
    for t in direct bindfs sparsefs; do
      xs=(); for run in $(seq "$runs"); do xs+=("${R[$t,$w,$run]}"); done
      vals+=("$(median "${xs[@]}")")
    done
    case $w in
      seq-write|seq-read)
        f() { awk -v s="$1" -v m="$size_mib" 'BEGIN{printf "%.0f MB/s (%.2f s)", m*1.048576/s, s}'; }
        ratio=$(awk -v b="${vals[1]}" -v s="${vals[2]}" 'BEGIN{printf "%.2fx faster", b/s}') ;;
      rand-4k)
        f() { awk -v s="$1" 'BEGIN{printf "%.0f IOPS", s}'; }
        ratio=$(awk -v b="${vals[1]}" -v s="${vals[2]}" 'BEGIN{printf "%.2fx", s/b}') ;;
      *)
        f() { awk -v s="$1" 'BEGIN{printf "%.1f ms", s*1000}'; }
        ratio=$(awk -v b="${vals[1]}" -v s="${vals[2]}" 'BEGIN{printf "%.2fx faster", b/s}') ;;
    esac
    echo "| $w | $(f "${vals[0]}") | $(f "${vals[1]}") | $(f "${vals[2]}") | $ratio |"
  done
  echo
  echo "seq-write includes conv=fsync (data on the backing disk); smallfiles is $files"
  echo "create+stat+unlink; ls-f lists $dirents entries, median of $lsreps listings each with cold caches"
  echo "(drop_caches before each), ls-f-warm the same with warm caches; rand-4k is fio"
  echo "randwrite 4 KiB psync for ${fio_s} s into a 512 MiB file (write IOPS)."
  echo "sparsefs's seq-read is a kernel passthrough read (a read-only open of a file without"
  echo "holes, daemon run as root); its ls-f-warm listings come from the kernel's directory"
  echo "cache, kept while the backing directory shows the same stamp (docs/semantics.md)."
} > "$md"
cat "$md"
