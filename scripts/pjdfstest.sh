#!/usr/bin/env bash
# POSIX conformance runs with pjdfstest (the crates.io Rust rewrite) on three targets:
#   plain     a fresh ext4 directory under $PJD_WORK (no FUSE at all)
#   sparsefs  sparsefs mounted over a fresh directory with -o allow_other
#   bindfs    bindfs (as root: allow_other, create-as-user, default_permissions) over one
# and prints passed/failed/skipped per target, the failures, and the failures seen through
# sparsefs but not on the plain directory. Full logs go to $PJD_WORK/logs/.
#
# Extra checks (PJD_EXTRAS=1, the default) cover what the main pass skips:
#   erofs   the 13 EROFS tests need `mount -o remount,ro` of the file system under test:
#           run with allow_remount=true on a private loop-mounted ext4 (plain) and on the
#           private FUSE mounts. For FUSE, `mount` is shimmed to `mount -i` (no
#           /sbin/mount.fuse3 helper: the helper re-runs the daemon binary with
#           `-o remount,...`, which neither sparsefs nor bindfs accept; see docs/pjdfstest.md).
#   emlink  link::link_count_max is skipped through FUSE (statfs f_type is FUSE's, so
#           pathconf(_PC_LINK_MAX) answers the generic 127): the same check, link(2) until
#           it fails, done with perl; expects EMLINK at the backing fs's LINK_MAX.
#   wtimes  not in pjdfstest: write(2) must update st_mtime/st_ctime (checked with one fd
#           kept open, so no FUSE_FLUSH hides a write-back delay).
#
# Needs root, /dev/fuse, bindfs, cargo (first run only). Rerunnable; everything it mounts
# is unmounted on exit. Exit status: 0 when every sparsefs failure also happens on the
# plain directory, 1 otherwise, 2 on setup errors.
#
# Environment:
#   PJD_WORK        work root (default /tmp/pjd): tools/, logs/, sparsefs copy, runs
#   SPARSEFS_BIN    binary to test (default <repo>/target/release/sparsefs; copied first)
#   PJD_EXTRAS=0    skip the erofs, emlink and wtimes checks
#   PJD_KEEP=1      keep the per-run directories (still unmounted)
#   PJD_TIMEOUT     seconds per pjdfstest invocation (default 300)
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
WORK=${PJD_WORK:-/tmp/pjd}
TOOLS=$WORK/tools
LOGS=$WORK/logs
PJD_VERSION=0.2.2
PJD=$TOOLS/bin/pjdfstest
CONFIG=$REPO/scripts/pjdfstest.toml
SRC_BIN=${SPARSEFS_BIN:-$REPO/target/release/sparsefs}
SPARSEFS=$WORK/sparsefs
EXTRAS=${PJD_EXTRAS:-1}
TIMEOUT=${PJD_TIMEOUT:-300}
export NO_COLOR=1

die() { echo "pjdfstest.sh: $*" >&2; exit 2; }
log() { echo "== $*"; }

[[ $(id -u) -eq 0 ]] || die "must run as root (user switching, mknod, allow_other)"
[[ -c /dev/fuse ]] || die "/dev/fuse missing"
command -v bindfs >/dev/null || die "bindfs not installed (apt-get install bindfs)"
command -v mountpoint >/dev/null || die "mountpoint(1) missing (util-linux)"
[[ -x $SRC_BIN ]] || die "$SRC_BIN not found: build sparsefs first (cargo build --release)"
MOUNT_BIN=$(command -v mount)

mkdir -p "$WORK" "$LOGS"
cd "$WORK"   # never run cargo or the suite from inside the repo

# ---------------------------------------------------------------- cleanup
MOUNTS=()   # mount points we mounted, in order
PIDS=()     # foreground FUSE daemons we started
RUNDIRS=()  # per-run directories to delete
SECONDARY=""
cleanup() {
    local rc=$? i m
    set +e
    for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
        m=${MOUNTS[$i]}
        if mountpoint -q "$m"; then
            umount "$m" 2>/dev/null || { sleep 1; umount "$m" 2>/dev/null; } || umount -l "$m"
        fi
    done
    for p in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$p" 2>/dev/null && kill "$p" 2>/dev/null
    done
    if [[ ${PJD_KEEP:-0} != 1 ]]; then
        for d in "${RUNDIRS[@]}" $SECONDARY; do
            # never delete through something that is still mounted
            if [[ -d $d ]] && ! grep -qF " $d" /proc/self/mounts; then rm -rf "$d"; fi
        done
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- setup
# Our own copy of the binary: target/ may be rebuilt concurrently.
cp "$SRC_BIN" "$SPARSEFS.new" && mv -f "$SPARSEFS.new" "$SPARSEFS"
"$SPARSEFS" --version >/dev/null || die "copied $SPARSEFS does not run (caught mid-rebuild? rerun)"

if ! [[ -x $PJD ]] || [[ $("$PJD" --version 2>/dev/null) != "pjdfstest $PJD_VERSION" ]]; then
    command -v cargo >/dev/null || { [[ -f $HOME/.cargo/env ]] && . "$HOME/.cargo/env"; }
    command -v cargo >/dev/null || die "cargo not found (needed once to install pjdfstest)"
    log "installing pjdfstest $PJD_VERSION into $TOOLS (one job, niced)"
    CARGO_BUILD_JOBS=1 nice cargo install pjdfstest --version "$PJD_VERSION" --locked \
        -j 1 --root "$TOOLS" >"$LOGS/install.log" 2>&1 \
        || { tail -20 "$LOGS/install.log" >&2; die "cargo install pjdfstest failed"; }
fi

# Users/groups named in the config: nobody/nogroup exist on Debian; create `tests`.
getent passwd nobody >/dev/null || die "user nobody missing"
getent group nogroup >/dev/null || die "group nogroup missing"
if ! getent passwd tests >/dev/null; then
    log "creating system user tests (group tests)"
    if getent group tests >/dev/null; then
        useradd --system --gid tests --no-create-home --home-dir / --shell /usr/sbin/nologin tests
    else
        useradd --system --user-group --no-create-home --home-dir / --shell /usr/sbin/nologin tests
    fi
fi
[[ $(id -gn tests) == tests ]] || die "user tests' primary group is not tests"

# Secondary file system for the EXDEV tests (tmpfs, distinct from every target).
SECONDARY=$(mktemp -d /dev/shm/pjd-secondary.XXXXXX)
chmod 0777 "$SECONDARY"

# ---------------------------------------------------------------- helpers
new_rundir() {   # $1 = label -> sets d to a fresh directory with back/ and mnt/
    d=$(mktemp -d "$WORK/run-$1.XXXXXX")
    RUNDIRS+=("$d")   # not in a subshell: cleanup must see it
    mkdir "$d/back" "$d/mnt"
    chmod 0755 "$d" "$d/back" "$d/mnt"
}

wait_mounted() {   # $1 = mount point, $2 = daemon pid, $3 = daemon log
    for _ in $(seq 100); do
        mountpoint -q "$1" && return 0
        kill -0 "$2" 2>/dev/null || { cat "$3" >&2; die "daemon for $1 exited before mounting"; }
        sleep 0.1
    done
    die "$1 not mounted after 10 s"
}

mount_sparsefs() {   # $1 backing, $2 mount point, $3 log
    "$SPARSEFS" mount "$1" "$2" -f -o allow_other >"$3" 2>&1 &
    PIDS+=($!); MOUNTS+=("$2")
    wait_mounted "$2" "$!" "$3"
}

mount_bindfs() {   # $1 backing, $2 mount point, $3 log
    # As root bindfs already defaults to allow_other + create-as-user, and passes
    # default_permissions; no remapping options, so it is a plain multi-user passthrough.
    bindfs -f "$1" "$2" >"$3" 2>&1 &
    PIDS+=($!); MOUNTS+=("$2")
    wait_mounted "$2" "$!" "$3"
}

unmount() {   # $1 mount point: umount and wait for the daemon to exit
    umount "$1"
    local i p
    for ((i = 0; i < ${#MOUNTS[@]}; i++)); do
        [[ ${MOUNTS[$i]} == "$1" ]] || continue
        p=${PIDS[$i]:-}
        [[ -n $p ]] || continue
        for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    done
}

declare -A RESULT   # "<pass>:<target>" -> "run passed failed skipped"
run_pjd() {   # $1 pass, $2 target, $3 dir, $4 config, rest: test patterns
    local pass=$1 target=$2 dir=$3 cfg=$4; shift 4
    local out=$LOGS/$pass-$target.log rc=0
    rm -f "$out" "$LOGS/$pass-$target.failed"
    log "$pass / $target: pjdfstest -p $dir"
    timeout "$TIMEOUT" "$PJD" -c "$cfg" -s "$SECONDARY" -p "$dir" "$@" >"$out" 2>&1 || rc=$?
    [[ $rc -eq 124 ]] && echo "TIMEOUT after ${TIMEOUT}s" >>"$out"
    local s
    s=$(grep -E '^Summary: ' "$out" | tail -1)
    if [[ -z $s ]]; then
        RESULT[$pass:$target]="- - - -"
        echo "   no summary line (rc=$rc), see $out"
        return
    fi
    # Summary: F failed, S skipped, P passed, E expected failures, T total
    local f sk p t
    f=$(sed -E 's/.* ([0-9]+) failed.*/\1/' <<<"$s")
    sk=$(sed -E 's/.* ([0-9]+) skipped.*/\1/' <<<"$s")
    p=$(sed -E 's/.* ([0-9]+) passed.*/\1/' <<<"$s")
    t=$(sed -E 's/.* ([0-9]+) total.*/\1/' <<<"$s")
    RESULT[$pass:$target]="$((t - sk)) $p $f $sk"
    grep -E ' FAILED$' "$out" | awk '{print $1}' | sort >"$LOGS/$pass-$target.failed" || true
    echo "   $s"
}

declare -A EMLINK
emlink_check() {   # $1 target, $2 dir on the target, $3 backing dir (for LINK_MAX)
    local max res
    max=$(getconf LINK_MAX "$3")
    mkdir "$2/emlink"
    : >"$2/emlink/f"
    res=$(perl -e '
        my ($d) = @ARGV; my $n = 1;
        while (link("$d/f", "$d/l$n")) { $n++ }
        my $err = $!{EMLINK} ? "EMLINK" : "errno " . ($!+0) . " ($!)";
        print "$err $n ", (lstat("$d/f"))[3], "\n";' "$2/emlink")
    # res: "<error> <names made, the original included> <st_nlink reported by lstat>"
    local nlink=${res##* } made
    made=${res% *}; made=${made##* }
    local err=${res%% "$made" *}
    if [[ $err == EMLINK && $made == "$max" && $nlink == "$max" ]]; then
        EMLINK[$1]="pass (EMLINK after $made names, st_nlink $nlink)"
    else
        EMLINK[$1]="FAIL ($err after $made names, st_nlink $nlink, LINK_MAX $max)"
    fi
    echo "   emlink / $1: ${EMLINK[$1]}"
}

declare -A WTIMES
write_times_check() {   # $1 target, $2 dir on the target
    # POSIX write(2): st_mtime and st_ctime are marked for update on success. pjdfstest
    # has no such test. Keep one fd open (a close would send FUSE_FLUSH and hide a
    # write-back delay), write 1 byte 1.1 s after creation, stat by path.
    local res
    res=$(perl -e '
        my $p = "$ARGV[0]/wtimes";
        open(my $f, ">", $p) or die "open: $!";
        my @a = stat $p; select(undef, undef, undef, 1.1);
        syswrite($f, "x") == 1 or die "write: $!";
        my @b = stat $p; close $f; unlink $p;
        print join(" ", ($b[9] != $a[9] ? "ok" : "UNCHANGED"), ($b[10] != $a[10] ? "ok" : "UNCHANGED")), "\n";' "$2")
    if [[ $res == "ok ok" ]]; then
        WTIMES[$1]="pass (write updated mtime and ctime)"
    else
        WTIMES[$1]="FAIL (after write: mtime ${res% *}, ctime ${res#* })"
    fi
    echo "   write-times / $1: ${WTIMES[$1]}"
}

# ---------------------------------------------------------------- main pass
log "$("$SPARSEFS" --version), $("$PJD" --version), kernel $(uname -r), nproc $(nproc)"
log "binary under test: $SRC_BIN (built $(date -u -r "$SRC_BIN" '+%F %T UTC'), sha256 $(sha256sum "$SPARSEFS" | cut -c1-16))"

new_rundir plain
run_pjd main plain "$d/back" "$CONFIG"
[[ $EXTRAS == 1 ]] && emlink_check plain "$d/back" "$d/back"
[[ $EXTRAS == 1 ]] && write_times_check plain "$d/back"

new_rundir sparsefs
mount_sparsefs "$d/back" "$d/mnt" "$LOGS/sparsefs-daemon.log"
run_pjd main sparsefs "$d/mnt" "$CONFIG"
[[ $EXTRAS == 1 ]] && emlink_check sparsefs "$d/mnt" "$d/back"
[[ $EXTRAS == 1 ]] && write_times_check sparsefs "$d/mnt"
unmount "$d/mnt"

new_rundir bindfs
mount_bindfs "$d/back" "$d/mnt" "$LOGS/bindfs-daemon.log"
run_pjd main bindfs "$d/mnt" "$CONFIG"
[[ $EXTRAS == 1 ]] && emlink_check bindfs "$d/mnt" "$d/back"
[[ $EXTRAS == 1 ]] && write_times_check bindfs "$d/mnt"
unmount "$d/mnt"

# ---------------------------------------------------------------- erofs pass
if [[ $EXTRAS == 1 ]]; then
    RCONFIG=$WORK/pjdfstest-remount.toml
    sed -E 's/^allow_remount *= *false/allow_remount = true/' "$CONFIG" >"$RCONFIG"
    grep -q '^allow_remount = true' "$RCONFIG" || die "could not enable allow_remount"
    SHIM=$WORK/mount-shim
    mkdir -p "$SHIM"
    printf '#!/bin/sh\nexec %s -i "$@"\n' "$MOUNT_BIN" >"$SHIM/mount"
    chmod 0755 "$SHIM/mount"

    # plain: a private loop-mounted ext4, so remounting it read-only is harmless
    new_rundir erofs-plain
    truncate -s 64M "$d/ext4.img"
    mkfs.ext4 -q -F "$d/ext4.img"
    if mount -o loop "$d/ext4.img" "$d/mnt" 2>"$LOGS/erofs-loop.err"; then
        MOUNTS+=("$d/mnt"); PIDS+=("")
        chmod 0755 "$d/mnt"
        run_pjd erofs plain "$d/mnt" "$RCONFIG" erofs
        unmount "$d/mnt"
    else
        echo "   loop mount unavailable ($(cat "$LOGS/erofs-loop.err")): erofs/plain not run"
        RESULT[erofs:plain]="- - - -"
    fi

    new_rundir erofs-sparsefs
    mount_sparsefs "$d/back" "$d/mnt" "$LOGS/sparsefs-erofs-daemon.log"
    PATH="$SHIM:$PATH" run_pjd erofs sparsefs "$d/mnt" "$RCONFIG" erofs
    unmount "$d/mnt"

    new_rundir erofs-bindfs
    mount_bindfs "$d/back" "$d/mnt" "$LOGS/bindfs-erofs-daemon.log"
    PATH="$SHIM:$PATH" run_pjd erofs bindfs "$d/mnt" "$RCONFIG" erofs
    unmount "$d/mnt"
fi

# ---------------------------------------------------------------- summary
passes=(main)
[[ $EXTRAS == 1 ]] && passes+=(erofs)
echo
echo "pjdfstest $PJD_VERSION results (logs: $LOGS/)"
printf '%-6s %-9s %5s %7s %7s %8s\n' pass target run passed failed skipped
for pass in "${passes[@]}"; do
    for t in plain sparsefs bindfs; do
        read -r run p f sk <<<"${RESULT[$pass:$t]:-- - - -}"
        printf '%-6s %-9s %5s %7s %7s %8s\n' "$pass" "$t" "$run" "$p" "$f" "$sk"
    done
done
if [[ $EXTRAS == 1 ]]; then
    for t in plain sparsefs bindfs; do
        printf 'emlink %-9s %s\n' "$t" "${EMLINK[$t]:-not run}"
    done
    for t in plain sparsefs bindfs; do
        printf 'wtimes %-9s %s\n' "$t" "${WTIMES[$t]:-not run}"
    done
fi

sparsefs_only=0
for pass in "${passes[@]}"; do
    for t in plain sparsefs bindfs; do
        f=$LOGS/$pass-$t.failed
        [[ -s $f ]] || continue
        echo
        echo "$pass / $t failures:"
        sed 's/^/  /' "$f"
    done
    if [[ -f $LOGS/$pass-sparsefs.failed ]]; then
        only=$(comm -23 "$LOGS/$pass-sparsefs.failed" <(sort "$LOGS/$pass-plain.failed" 2>/dev/null || true))
        if [[ -n $only ]]; then
            sparsefs_only=1
            echo
            echo "$pass: failing through sparsefs but not on the plain directory:"
            sed 's/^/  /' <<<"$only"
        fi
    fi
done
[[ ${EMLINK[sparsefs]:-pass} == pass* ]] || sparsefs_only=1
[[ ${WTIMES[sparsefs]:-pass} == pass* ]] || sparsefs_only=1

echo
if [[ $sparsefs_only -eq 0 ]]; then
    echo "sparsefs: no failure beyond the plain directory's"
else
    echo "sparsefs: failures beyond the plain directory's (pjdfstest lists or extra checks above)"
fi
exit "$sparsefs_only"
