# Sourced by readahead.sh and maxwrite.sh: the backing of a same-run comparison (a sharded
# GlusterFS volume whose brick waits DELAY µs per operation, or a plain directory) and the
# median of a list of timings.
#
#   backing_up NAME   sets B (the backing's path), GL (the volume's base, empty for a
#                     directory) and backing (a description); DIR set: that directory
#   backing_down      takes the volume down again (nothing for a directory)
#   med "T1 T2 ..."   the median
#   ratio_table KEYS HEADERS...
#                     one line per variant of the array `variants` (the first "direct"):
#                     for each key K of KEYS ("cp tar cat"), the median of T[variant,K]
#                     and direct's median over it; HEADERS name the columns
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

ratio_table() {
  local keys=$1 v w m d line; shift
  line=$(printf '%-10s' variant)
  for h in "$@"; do line+=$(printf ' %24s' "$h"); done
  echo "$line"
  for v in "${variants[@]}"; do
    line=$(printf '%-10s' "$v")
    for w in $keys; do
      m=$(med "${T[$v,$w]}"); d=$(med "${T[direct,$w]}")
      line+=$(printf ' %12s s (%6.2fx)' "$m" "$(echo "$d / $m" | bc -l)")
    done
    echo "$line"
  done
}
