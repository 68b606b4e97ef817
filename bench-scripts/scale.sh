#!/usr/bin/env bash
# Metadata at scale (issue 15: "backend files held only while needed; daemon bounded in
# fds"): a tree of N small files (default 1,000,000, 0-4 KiB each, 1000 per directory) is
# made once under --under, then per backing (a local directory, bindfs over one, optionally
# GlusterFS) and per target
#   direct    T is a directory on the backing
#   bindfs    T is a bindfs mount over a directory of the backing (the peer)
#   sparsefs  T is `sparsefs mount` over a directory of the backing, the daemon started
#             under `prlimit --nofile=4096:4096`
# five steps run in order, each timed: rsync -a SRC/ T/tree/; find T/tree -type f | wc -l
# (must count N); ls -lR T/tree; du -s T/tree; rm -rf T/tree (then the backing directory
# must hold nothing: no .fuse_hidden*, no maps; what is left is recorded). Caches are dropped
# before every step (--warm keeps them). For the FUSE daemons: fds sampled every 0.2 s (peak
# per step), RSS after each step, VmHWM; for sparsefs also `sparsefs stats --json` diffed
# around each step (backend calls per file) and optionally `strace -f -c` for one step.
# Writes OUT/results.json, OUT/scale.md (a fragment for docs/benchmarks.md), OUT/raw.tsv,
# OUT/logs/; prints the Markdown. Exit 1 if a step failed, a count was wrong or rm -rf left
# anything; 2 on a usage or set-up error.
#   bench-scripts/scale.sh [--quick] [--files N] [--backing dir|bindfs|gluster]... [--gluster]
#       [--gluster-dir PATH] [--out DIR] [--under DIR] [--sparsefs PATH] [--strace [STEP]]
#       [--warm] [--nofile N] [--timeout S] [--src DIR] [--keep-src] [--report-only DIR]
set -euo pipefail
me=scale.sh
repo=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH=$repo/bench-scripts${PYTHONPATH:+:$PYTHONPATH}
backends=${SPARSEFS_BENCH_BACKENDS:-$repo/../shared/backends}
files=1000000 under=/var/tmp bin=$repo/target/release/sparsefs bin_given="" out=""
backings=() gluster_own=0 gluster_dir="" strace_step="" cache=cold nofile=4096
step_timeout=10800 src_given="" keep_src=0
steps=(rsync find ls du rm)
cmdline="bench-scripts/scale.sh${*:+ $*}"
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
die() { echo "$me: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) files=20000; shift ;;
    --files) files=$2; shift 2 ;;
    --backing) backings+=("$2"); shift 2 ;;
    --gluster) gluster_own=1; shift ;;
    --gluster-dir) gluster_dir=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --under) under=$2; shift 2 ;;
    --sparsefs) bin=$2 bin_given=1; shift 2 ;;
    --strace) strace_step=find; shift
              case "${1:-}" in rsync|find|ls|du|rm) strace_step=$1; shift ;; esac ;;
    --strace=*) strace_step=${1#--strace=}; shift ;;
    --warm) cache=warm; shift ;;
    --nofile) nofile=$2; shift 2 ;;
    --timeout) step_timeout=$2; shift 2 ;;
    --src) src_given=$2; shift 2 ;;
    --keep-src) keep_src=1; shift ;;
    --report-only) python3 -m sparsebench.scale report "$2"; exit $? ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument $1 (--help lists the options)" ;;
  esac
done
[[ $files =~ ^[0-9]+$ ]] && [ "$files" -gt 0 ] || die "--files must be a positive number"
[[ $nofile =~ ^[0-9]+$ ]] || die "--nofile must be a number"
case "$strace_step" in ""|rsync|find|ls|du|rm) ;; *) die "--strace takes one of: ${steps[*]}" ;; esac
[ ${#backings[@]} -gt 0 ] || backings=(dir bindfs)
if { [ "$gluster_own" = 1 ] || [ -n "$gluster_dir" ]; } && [[ " ${backings[*]} " != *" gluster "* ]]; then
  backings+=(gluster)
fi
for b in "${backings[@]}"; do
  case $b in dir|bindfs) ;; gluster) [ "$gluster_own" = 1 ] || [ -n "$gluster_dir" ] || gluster_own=1 ;;
    *) die "unknown backing $b (dir, bindfs, gluster)" ;; esac
done

# ---- checks: one clear line each -----------------------------------------------------------
[ "$(id -u)" = 0 ] || die "must run as root (mounts, drop_caches, prlimit on the daemon)"
[ -c /dev/fuse ] || die "/dev/fuse missing"
for t in bindfs:bindfs rsync:rsync prlimit:util-linux fusermount3:fuse3 python3:python3 timeout:coreutils findmnt:util-linux; do
  command -v "${t%%:*}" >/dev/null || die "${t%%:*} missing (apt-get install ${t#*:})"
done
[ -z "$strace_step" ] || command -v strace >/dev/null || die "strace missing (apt-get install strace), needed by --strace"
[ -d "$under" ] || die "--under $under is not a directory"
if [ -n "$gluster_dir" ]; then
  grep -q " $(realpath "$gluster_dir") fuse.glusterfs " /proc/mounts || die "--gluster-dir $gluster_dir is not a GlusterFS mount"
  gluster_own=0
elif [ "$gluster_own" = 1 ]; then
  [ -x "$backends/gluster-up.sh" ] || die "$backends/gluster-up.sh missing (set SPARSEFS_BENCH_BACKENDS=DIR)"
  if pgrep -x glusterd >/dev/null || pgrep -x glusterfsd >/dev/null || grep -q fuse.glusterfs /proc/mounts; then
    die "a GlusterFS instance is already running (one glusterd per machine): pass its mount with --gluster-dir"
  fi
fi
if [ ! -x "$bin" ]; then
  [ -z "$bin_given" ] || die "--sparsefs $bin is not an executable"
  for _ in $(seq 120); do [ -x "$bin" ] && break; sleep 1; done   # another build may be replacing it
  [ -x "$bin" ] || (cd "$repo" && cargo build --release >&2) || die "cargo build --release failed"
fi
need_kib=$((files * 10)) need_inodes=$((files * 21 / 10 + 10000))
avail_kib=$(df -Pk "$under" | awk 'NR==2{print $4}')
avail_inodes=$(df -Pi "$under" | awk 'NR==2{print $4}')
[ "$avail_kib" -ge "$need_kib" ] || die "$under has $((avail_kib >> 20)) GiB free; $files files need about $((need_kib >> 20)) GiB (source + one copy)"
[[ ! $avail_inodes =~ ^[0-9]+$ ]] || [ "$avail_inodes" -ge "$need_inodes" ] || die "$under has $avail_inodes free inodes; $files files need about $need_inodes"

# ---- work and output directories, cleanup --------------------------------------------------
[ -n "$out" ] || out=/var/tmp/sparsefs-scale-$(date +%Y%m%d-%H%M%S)
mkdir -p "$out/logs" "$out/stats"
: > "$out/raw.tsv"
: > "$out/meta.tsv"
work=$(mktemp -d "$under/sparsefs-scale.XXXXXX")
cp "$bin" "$work/sparsefs"   # a rebuild during the run does not matter
MOUNTS=() DAEMONS=() SAMPLER="" STRACE_PID="" STEP_PID="" GL_BASE="" GL_SUBDIR="" kept_src="" reported=0
t_start=$(date +%s) load_start=$(cut -d' ' -f1-3 /proc/loadavg)

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" | tee -a "$out/run.log" >&2; }
rec() { local v=${5//$'\t'/ }; printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "${v//$'\n'/ }" >> "$out/raw.tsv"; }
meta() { printf '%s\t%s\n' "$1" "${2//$'\n'/ }" >> "$out/meta.tsv"; }
fstype() { findmnt -n -o FSTYPE -T "$1" 2>/dev/null || stat -f -c %T "$1"; }
is_mounted() { awk -v m="$1" '$2 == m {f = 1} END {exit !f}' /proc/mounts; }
unmount() { # MNT: fusermount3 -u, else a lazy umount
  is_mounted "$1" || return 0
  fusermount3 -u "$1" 2>/dev/null || umount "$1" 2>/dev/null || umount -l "$1" 2>/dev/null || true
}
wait_gone() { # PID SECONDS
  local i
  for ((i = 0; i < $2 * 10; i++)); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
  return 1
}
secs() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", b - a}'; }
finish_report() { # writes results.json and scale.md from what was recorded; sets $report_rc
  [ "$reported" = 0 ] || return 0
  reported=1
  meta load_end "$(cut -d' ' -f1-3 /proc/loadavg)"
  meta minutes "$(awk -v s="$(($(date +%s) - t_start))" 'BEGIN {printf "%.1f", s / 60}')"
  report_rc=0
  python3 -m sparsebench.scale report "$out" > "$out/scale.md.stdout" || report_rc=$?
  cat "$out/scale.md.stdout"; rm -f "$out/scale.md.stdout"
}
cleanup() {
  local rc=$? i
  set +e
  trap '' INT TERM
  [ -z "$STEP_PID" ] || { kill "$STEP_PID"; wait_gone "$STEP_PID" 10; } 2>/dev/null
  [ -z "$STRACE_PID" ] || { kill -INT "$STRACE_PID"; wait "$STRACE_PID"; } 2>/dev/null
  [ -z "$SAMPLER" ] || { kill "$SAMPLER"; wait "$SAMPLER"; } 2>/dev/null
  for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do unmount "${MOUNTS[i]}"; done
  for p in "${DAEMONS[@]}"; do wait_gone "$p" 30 || kill -KILL "$p" 2>/dev/null; done
  [ -z "$GL_SUBDIR" ] || rm -rf "$GL_SUBDIR"
  [ -z "$GL_BASE" ] || BASE=$GL_BASE "$backends/gluster-down.sh" >> "$out/logs/gluster.log" 2>&1
  rm -rf --one-file-system "$work"
  for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
    is_mounted "${MOUNTS[i]}" && echo "$me: could not unmount ${MOUNTS[i]}" >&2
  done
  if [ "$reported" = 0 ] && [ -s "$out/meta.tsv" ]; then
    log "interrupted or failed (exit $rc): writing what was measured"
    finish_report
  fi
  [ -z "$kept_src" ] || log "source tree kept: $kept_src (reuse it with --src $kept_src)"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- the source tree -------------------------------------------------------------------------
if [ -n "$src_given" ]; then
  src=$(realpath "$src_given")
  log "counting the files of $src"
  files=$(find "$src" -type f | wc -l)
  src_bytes=$(du -s --apparent-size -B1 "$src" | cut -f1)
else
  if [ "$keep_src" = 1 ]; then src=$under/sparsefs-scale-src-$files-$(date +%Y%m%d-%H%M%S) kept_src=$src
  else src=$work/src; fi
  log "making $files files under $src"
  t0=$(date +%s.%N)
  read -r made src_bytes < <(python3 -m sparsebench.scale gen "$src" "$files")
  [ "$made" = "$files" ] || die "made $made files, not $files"
  log "made $files files ($((src_bytes >> 20)) MiB) in $(secs "$t0" "$(date +%s.%N)") s"
fi

meta files "$files"
meta src_bytes "$src_bytes"
meta command "$cmdline"
meta date "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
meta nproc "$(nproc)"
meta cpu "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
meta ram "$(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)"
meta kernel "$(uname -r)"
meta under "$under"
meta under_fstype "$(fstype "$under")"
meta load_start "$load_start"
meta cache "$cache"
meta nofile "$nofile"
meta strace_step "$strace_step"
meta sparsefs_version "$("$work/sparsefs" --version)"
meta sparsefs_sha "$(sha256sum "$work/sparsefs" | cut -c1-64)"
meta head "$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo '?')"
meta bindfs_version "$(bindfs --version 2>&1 | head -1)"
meta rsync_version "$(rsync --version | head -1 | awk '{print $1, $3}')"

# ---- backings and targets --------------------------------------------------------------------
setup_backing() { # NAME -> B, the directory that holds the targets' directories
  case $1 in
    dir) B=$work/dir; mkdir -p "$B" ;;
    bindfs)
      mkdir -p "$work/bindfs-under" "$work/bindfs"
      bindfs "$work/bindfs-under" "$work/bindfs"; MOUNTS+=("$work/bindfs")
      B=$work/bindfs ;;
    gluster)
      if [ -n "$gluster_dir" ]; then
        B=$(realpath "$gluster_dir")/sparsefs-scale.$$; GL_SUBDIR=$B
      else
        GL_BASE=$work/gl
        local m
        m=$(BASE=$GL_BASE "$backends/gluster-up.sh" 2>> "$out/logs/gluster.log" | tail -1)
        is_mounted "$m" || die "gluster-up.sh did not mount (see $out/logs/gluster.log)"
        B=$m/scale
      fi
      mkdir -p "$B" ;;
  esac
  rec "$1" - - path "$B"
  rec "$1" - - fstype "$(fstype "$B")"
}
teardown_backing() {
  case $1 in
    bindfs) unmount "$work/bindfs"; rm -rf --one-file-system "$work/bindfs-under" ;;
    gluster)
      rm -rf "$B"
      if [ -n "$GL_BASE" ]; then BASE=$GL_BASE "$backends/gluster-down.sh" >> "$out/logs/gluster.log" 2>&1 || true; GL_BASE=""; fi
      GL_SUBDIR="" ;;
  esac
}
start_target() { # BACKING TARGET -> T (where the steps work), BDIR (its directory on the backing), PID
  local d=$B/scale-$2 m=$work/mnt-$1-$2
  mkdir -p "$d"
  BDIR=$d PID=""
  case $2 in
    direct) T=$d ;;
    bindfs)
      mkdir -p "$m"; bindfs "$d" "$m"; MOUNTS+=("$m"); T=$m
      PID=$(pgrep -n -f -- "bindfs $d $m") ;;
    sparsefs)
      mkdir -p "$m"
      prlimit --nofile="$nofile:$nofile" "$work/sparsefs" mount "$d" "$m" --log-file "$out/logs/sparsefs-$1.log"
      MOUNTS+=("$m"); T=$m
      PID=$(pgrep -n -f -- "$work/sparsefs mount $d $m")
      rec "$1" "$2" - nofile "$(awk '/^Max open files/ {print $4}' "/proc/$PID/limits")"
      rec "$1" "$2" - rss_mount_kib "$(awk '/^VmRSS/ {print $2}' "/proc/$PID/status")" ;;
  esac
  if [ "$2" != direct ]; then
    [ -n "$PID" ] || die "$2 daemon for $m not found"
    DAEMONS+=("$PID")
    rec "$1" "$2" - pid "$PID"
  fi
}
stop_target() { # BACKING TARGET
  local t0
  if [ -n "$PID" ]; then
    kill -0 "$PID" 2>/dev/null && rec "$1" "$2" - hwm_kib "$(awk '/^VmHWM/ {print $2}' "/proc/$PID/status")"
    t0=$(date +%s.%N)
    unmount "$T"
    wait_gone "$PID" 120 || log "$1/$2: daemon $PID still running 120 s after unmount"
    rec "$1" "$2" - umount_s "$(secs "$t0" "$(date +%s.%N)")"
    leftovers "$1" "$2" left_after_umount
  fi
  rm -rf --one-file-system "$BDIR"
}
leftovers() { # BACKING TARGET KEY: what BDIR still holds
  local n list
  n=$(find "$BDIR" -mindepth 1 2>/dev/null | wc -l)
  list=$(find "$BDIR" -mindepth 1 -printf '%P\n' 2>/dev/null | head -10 | tr '\n' ' ')
  rec "$1" "$2" - "$3" "$n"
  [ "$n" = 0 ] || { rec "$1" "$2" - "${3}_list" "$list"; log "$1/$2: $n entries $3: $list"; }
}
sample_fds() { # PID: the daemon's open fds every 0.2 s, one count a line, until killed
  set +e
  while [ -d "/proc/$1/fd" ]; do ls -U "/proc/$1/fd" 2>/dev/null | wc -l; sleep 0.2; done
}
all_traced() { # PID: every thread has a tracer
  local s
  for s in /proc/"$1"/task/*/status; do [ "$(awk '/^TracerPid:/ {print $2}' "$s" 2>/dev/null)" != 0 ] || return 1; done
}
run_step() { # BACKING TARGET STEP
  local b=$1 t=$2 s=$3 tag=$1-$2-$3 rc=0 t0 t1 peak="" rss="" count="" i f
  local o=$out/logs/$tag
  sync
  [ "$cache" = warm ] || echo 3 > /proc/sys/vm/drop_caches
  if [ "$t" = sparsefs ]; then
    "$work/sparsefs" stats --json "$T" > "$out/stats/$tag.before.json" 2> /dev/null || true
    rec "$b" "$t" "$s" stats_before "stats/$tag.before.json"
  fi
  if [ -n "$PID" ]; then sample_fds "$PID" > "$o.fds" & SAMPLER=$!; fi
  if [ "$t" = sparsefs ] && [ "$s" = "$strace_step" ]; then
    strace -f -c -p "$PID" -o "$o.strace" 2> "$o.strace.err" & STRACE_PID=$!
    for ((i = 0; i < 200; i++)); do all_traced "$PID" && break; sleep 0.1; done
    all_traced "$PID" || log "$b/$t: strace did not attach to every thread in 20 s"
    rec "$b" "$t" "$s" strace "logs/$tag.strace"
  fi
  case $s in
    rsync) set -- rsync -a "$src/" "$T/tree/" ;;
    find) set -- bash -c 'set -o pipefail; find "$1" -type f | wc -l' _ "$T/tree" ;;
    ls) set -- ls -lR "$T/tree" ;;
    du) set -- du -s "$T/tree" ;;
    rm) set -- rm -rf "$T/tree" ;;
  esac
  # in the background, so that a signal reaches the trap at once (cleanup stops the step)
  t0=$(date +%s.%N)
  timeout "$step_timeout" "$@" > "$([ "$s" = ls ] && echo /dev/null || echo "$o.out")" 2> "$o.err" & STEP_PID=$!
  wait "$STEP_PID" || rc=$?
  t1=$(date +%s.%N)
  STEP_PID=""
  if [ -n "$STRACE_PID" ]; then kill -INT "$STRACE_PID" 2>/dev/null || true; wait "$STRACE_PID" || true; STRACE_PID=""; fi
  if [ -n "$SAMPLER" ]; then
    ls -U "/proc/$PID/fd" 2>/dev/null | wc -l >> "$o.fds" || true
    kill "$SAMPLER" 2>/dev/null || true; wait "$SAMPLER" 2>/dev/null || true; SAMPLER=""
    peak=$(grep -E '^[0-9]+$' "$o.fds" | sort -n | tail -1 || true)
    rec "$b" "$t" "$s" fds_peak "${peak:-0}"
    rss=$(awk '/^VmRSS/ {print $2}' "/proc/$PID/status" 2>/dev/null || true)
    [ -z "$rss" ] || rec "$b" "$t" "$s" rss_kib "$rss"
  fi
  rec "$b" "$t" "$s" seconds "$(secs "$t0" "$t1")"
  rec "$b" "$t" "$s" rc "$rc"
  if [ -s "$o.err" ]; then   # the first line, paths shortened
    f=$(head -1 "$o.err" | cut -c1-400); f=${f//$T/T}; f=${f//$src/SRC}
    rec "$b" "$t" "$s" err "$(echo "$f" | cut -c1-160) ($(wc -l < "$o.err") lines of stderr)"
  fi
  case $s in
    find) count=$(cat "$o.out" 2>/dev/null | tr -dc 0-9 || true); rec "$b" "$t" "$s" count "${count:-0}" ;;
    du) [ "$rc" != 0 ] || rec "$b" "$t" "$s" du_kib "$(cut -f1 "$o.out")" ;;
  esac
  for f in "$o.out" "$o.err"; do [ -s "$f" ] || rm -f "$f"; done
  if [ "$t" = sparsefs ]; then
    "$work/sparsefs" stats --json "$T" > "$out/stats/$tag.after.json" 2> /dev/null || true
    rec "$b" "$t" "$s" stats_after "stats/$tag.after.json"
  fi
  log "$b/$t $s: $(secs "$t0" "$t1") s, exit $rc${peak:+, peak fds $peak}${rss:+, RSS $((rss >> 10)) MiB}${count:+, counted $count}"
}

log "$files files; backings: ${backings[*]}; out: $out; work: $work"
for b in "${backings[@]}"; do
  setup_backing "$b"
  log "backing $b: $B ($(fstype "$B"))"
  for t in direct bindfs sparsefs; do
    start_target "$b" "$t"
    for s in "${steps[@]}"; do
      run_step "$b" "$t" "$s"
      if [ -n "$PID" ] && { ! kill -0 "$PID" 2>/dev/null || ! is_mounted "$T"; }; then
        log "$b/$t: the daemon died during $s; skipping the rest"
        rec "$b" "$t" - daemon_died 1
        break
      fi
    done
    leftovers "$b" "$t" left_after_rm
    errs=$(cat "$out/logs/$b-$t-"*.err 2>/dev/null | grep -c -i 'too many open files' || true)
    if [ "$t" = sparsefs ] && [ -f "$out/logs/sparsefs-$b.log" ]; then
      errs=$((errs + $(grep -c -i -E 'too many open files|EMFILE' "$out/logs/sparsefs-$b.log" || true)))
    fi
    rec "$b" "$t" - emfile_lines "$errs"
    stop_target "$b" "$t"
  done
  teardown_backing "$b"
done
finish_report
exit "$report_rc"
