#!/usr/bin/env bash
# Read-ahead of data chunks (issue 18 item 3), side by side with reading directly, in one run.
#
#   bench-scripts/readahead.sh [--sparsefs BIN] [--rounds N] [--delay-us N | --dir DIR]
#                              [--depth D]... 
#
# Backing: a sharded GlusterFS volume whose brick waits --delay-us µs per operation (default
# 500; brought up with gluster-up.sh under /tmp/ra-bench and taken down at
# the end), or a plain directory (--dir). Files: a 512 MiB image with 64 random-data extents of
# 256 KiB at random places (written through sparsefs, so its map is known), and a dense 256 MiB
# file. Timed, page cache dropped before each: `cp --sparse=auto` and `tar -S -c` of the image,
# `cat` of the dense file (through the daemon: --no-passthrough), for each --depth (default 0
# 16: --read-depth 0 is the daemon without read-ahead) and directly on the backing. Every copy
# is compared with cmp. Prints each round, then medians and ratios (direct / variant).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=latency-backing.sh
. "$here/latency-backing.sh"
BIN=$(command -v sparsefs || true)
ROUNDS=3
DELAY=500
DIR=
DEPTHS=()
while [ $# -gt 0 ]; do
  case $1 in
    --sparsefs) BIN=$2; shift 2;;
    --rounds) ROUNDS=$2; shift 2;;
    --delay-us) DELAY=$2; shift 2;;
    --dir) DIR=$2; shift 2;;
    --depth) DEPTHS+=("$2"); shift 2;;
    *) echo "readahead.sh: unknown argument $1" >&2; exit 2;;
  esac
done
[ ${#DEPTHS[@]} -gt 0 ] || DEPTHS=(0 16)
[ -x "$BIN" ] || { echo "readahead.sh: no sparsefs binary (--sparsefs)" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "readahead.sh: needs root (drop_caches, mounts)" >&2; exit 2; }
backing_up ra
M=$(mktemp -d /tmp/ra-mnt.XXXX)
OUT=$(mktemp -d /var/tmp/ra-out.XXXX)
cleanup() {
  mountpoint -q "$M" && fusermount3 -u "$M" || true
  rm -rf "$OUT" "$B/ra-rs.img" "$B/ra-dense.img"
  rmdir "$M" 2>/dev/null || true
  backing_down
}
trap cleanup EXIT
"$BIN" mount "$B" "$M"
python3 - "$M" <<'PY'
import os, random, sys
random.seed(7)
with open(os.path.join(sys.argv[1], 'ra-rs.img'), 'wb') as f:
    f.truncate(512 << 20)
    for i in range(64):
        off = random.randrange(0, (512 << 20) - (1 << 20)) & ~4095
        f.seek(off)
        f.write(os.urandom(256 << 10))
with open(os.path.join(sys.argv[1], 'ra-dense.img'), 'wb') as f:
    for i in range(256):
        f.write(os.urandom(1 << 20))
PY
fusermount3 -u "$M"
timed() { # prints seconds of "$@"
  sync; echo 3 > /proc/sys/vm/drop_caches
  local t0 t1
  t0=$(date +%s.%N); "$@" >/dev/null; t1=$(date +%s.%N)
  echo "$t1 - $t0" | bc -l | xargs printf '%.3f'
}
declare -A T
variants=(direct "${DEPTHS[@]}")
for r in $(seq "$ROUNDS"); do
  for v in "${variants[@]}"; do
    if [ "$v" = direct ]; then src=$B; else "$BIN" mount --no-passthrough --read-depth "$v" "$B" "$M"; src=$M; fi
    rm -f "$OUT/rs.img" "$OUT/rs.tar"
    a=$(timed cp --sparse=auto "$src/ra-rs.img" "$OUT/rs.img")
    cmp "$OUT/rs.img" "$src/ra-rs.img"
    b=$(timed tar -S -cf "$OUT/rs.tar" -C "$src" ra-rs.img)
    c=$(timed cat "$src/ra-dense.img")
    echo "round $r  ${v/#/depth }  cp --sparse=auto $a s  tar -S -c $b s  cat dense $c s"
    T[$v,cp]+="$a "; T[$v,tar]+="$b "; T[$v,cat]+="$c "
    [ "$v" = direct ] || fusermount3 -u "$M"
  done
done
echo
echo "backing: $backing; sparsefs $("$BIN" --version 2>/dev/null | head -1); medians of $ROUNDS"
ratio_table "cp tar cat" "cp --sparse=auto" "tar -S -c" "cat dense (256 MiB)"
echo "(x: direct time / variant time; variants other than direct are --read-depth N with --no-passthrough)"
