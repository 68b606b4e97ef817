#!/usr/bin/env bash
# Larger FUSE requests (issue 18 item 5): --max-write and --read-ahead of 1, 4 and 16 MiB with
# the kernel's fs.fuse.max_pages_limit raised for the run (restored at the end), side by side
# with writing and reading directly, in one run.
#
#   bench-scripts/maxwrite.sh [--sparsefs BIN] [--rounds N] [--delay-us N | --dir DIR] [--size M]
#
# Backing: a sharded GlusterFS volume whose brick waits --delay-us µs per operation (default
# 500), or a directory. Timed per round and variant (page cache dropped first): dd of
# --size MiB (default 256) of zeros, bs=16M, conv=fsync; dd of as much random data (from a
# file in /var/tmp, read once beforehand), bs=16M, conv=fsync; cat of that file back
# (cold; through the daemon, --no-passthrough). Outputs are compared with cmp.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=latency-backing.sh
. "$here/latency-backing.sh"
BIN=$(command -v sparsefs || true)
ROUNDS=3
DELAY=500
DIR=
SIZE=256
while [ $# -gt 0 ]; do
  case $1 in
    --sparsefs) BIN=$2; shift 2;;
    --rounds) ROUNDS=$2; shift 2;;
    --delay-us) DELAY=$2; shift 2;;
    --dir) DIR=$2; shift 2;;
    --size) SIZE=$2; shift 2;;
    *) echo "maxwrite.sh: unknown argument $1" >&2; exit 2;;
  esac
done
[ -x "$BIN" ] || { echo "maxwrite.sh: no sparsefs binary (--sparsefs)" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "maxwrite.sh: needs root" >&2; exit 2; }
LIMIT=/proc/sys/fs/fuse/max_pages_limit
old_limit=$(cat $LIMIT)
backing_up mw
M=$(mktemp -d /tmp/mw-mnt.XXXX)
SRC=$(mktemp /var/tmp/mw-src.XXXX)
cleanup() {
  echo "$old_limit" > $LIMIT
  mountpoint -q "$M" && fusermount3 -u "$M" || true
  rm -f "$SRC" "$B/mw-zero" "$B/mw-rand"
  rmdir "$M" 2>/dev/null || true
  backing_down
}
trap cleanup EXIT
echo 4096 > $LIMIT
head -c $((SIZE << 20)) /dev/urandom > "$SRC"
timed() {
  local t0 t1
  t0=$(date +%s.%N); "$@" >/dev/null 2>&1; t1=$(date +%s.%N)
  echo "$t1 - $t0" | bc -l | xargs printf '%.3f'
}
declare -A T
variants=(direct 1M 4M 16M)
for r in $(seq "$ROUNDS"); do
  for v in "${variants[@]}"; do
    if [ "$v" = direct ]; then dst=$B; else
      "$BIN" mount --max-write "$v" --read-ahead "$v" --no-passthrough "$B" "$M"; dst=$M; fi
    rm -f "$dst/mw-zero" "$dst/mw-rand"
    cat "$SRC" > /dev/null
    sync; echo 3 > /proc/sys/vm/drop_caches; cat "$SRC" > /dev/null
    a=$(timed dd if=/dev/zero of="$dst/mw-zero" bs=16M count=$((SIZE / 16)) conv=fsync)
    b=$(timed dd if="$SRC" of="$dst/mw-rand" bs=16M conv=fsync)
    sync; echo 3 > /proc/sys/vm/drop_caches
    c=$(timed cat "$dst/mw-rand")
    cmp "$SRC" "$dst/mw-rand"
    echo "round $r  $v  dd zeros $a s  dd random $b s  cat back $c s"
    T[$v,z]+="$a "; T[$v,r]+="$b "; T[$v,c]+="$c "
    [ "$v" = direct ] || fusermount3 -u "$M"
  done
done
echo
echo "backing: $backing; $SIZE MiB; fs.fuse.max_pages_limit 4096 for the run; medians of $ROUNDS"
ratio_table "z r c" "dd zeros bs=16M" "dd random bs=16M" "cat back (cold)"
echo "(x: direct time / variant time; variants: --max-write and --read-ahead of that size)"
