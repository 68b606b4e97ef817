# Sourced by readahead.sh and maxwrite.sh: the backing of a same-run comparison (a sharded
# GlusterFS volume whose brick waits DELAY µs per operation, or a plain directory) and the
# median of a list of timings.
#
#   backing_up NAME   sets B (the backing's path), GL (the volume's base, empty for a
#                     directory) and backing (a description); DIR set: that directory
#   backing_down      takes the volume down again (nothing for a directory)
#   med "T1 T2 ..."   the median
# The GlusterFS scripts are $SPARSEFS_BENCH_BACKENDS (as for bench-scripts/run and scale.sh),
# else shared/backends beside the repository.

backends=${SPARSEFS_BENCH_BACKENDS:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/shared/backends}

backing_up() {
  GL=
  if [ -z "${DIR:-}" ]; then
    [ -x "$backends/gluster-up.sh" ] || {
      echo "$1: $backends/gluster-up.sh missing (set SPARSEFS_BENCH_BACKENDS=DIR or pass --dir)" >&2
      exit 2
    }
    GL=/tmp/$1-bench
    B=$(BASE=$GL SHARD=1 DELAY_US=$DELAY "$backends/gluster-up.sh" | tail -1)
    backing="sharded GlusterFS, brick waits ${DELAY} µs"
  else
    B=$DIR
    backing="directory $DIR"
  fi
}

backing_down() {
  [ -z "$GL" ] || BASE=$GL "$backends/gluster-down.sh" >/dev/null 2>&1 || true
}

med() { printf '%s\n' $1 | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
