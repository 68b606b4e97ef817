# shellcheck shell=bash
# Shared helpers of scripts/reliability/fsx.sh and fio.sh (sourced, not run).
# The caller sets SPARSEFS, MOUNT_OPTS (array), WORK (its temp dir), GLUSTER, REL_NAME and
# EXTRA_CLEAN (array of paths to remove on exit), then calls rel_init (trap: unmount all
# mounts it made, wait for the daemon, remove its temp dirs and GlusterFS subdirectories).

# find_bin CANDIDATE...: the first one that is an executable path or a command.
find_bin() {
    for c in "$@"; do
        [ -n "$c" ] || continue
        if [ -x "$c" ]; then echo "$c"; return 0; fi
        if command -v "$c" >/dev/null 2>&1; then command -v "$c"; return 0; fi
    done
    return 1
}

sha() { sha256sum "$1" | cut -d' ' -f1; }

# True if something is mounted at or below PATH (never rm -rf through a live mount).
has_mounts_below() {
    local p
    p="$(readlink -f "$1")" || return 1
    awk -v p="$p" '$2 == p || index($2, p "/") == 1 { found = 1 } END { exit !found }' /proc/mounts
}

safe_rm() {
    for p in "$@"; do
        [ -e "$p" ] || continue
        if has_mounts_below "$p"; then
            echo "not removing $p: a mount is still live below it" >&2
        else
            rm -rf "$p"
        fi
    done
}

MOUNTS=()      # mount points to unmount on exit, in order of mounting
DAEMON_PID=""
GL_DIRS=()

CHILD_PID=""   # the exerciser running now (fsx, fio): killed first on interrupt

# run_child CMD...: run in the background and wait, so that INT/TERM interrupt the wait
# at once (bash runs traps only between foreground commands). Returns CMD's status.
run_child() {
    "$@" &
    CHILD_PID=$!
    wait "$CHILD_PID"
    local rc=$?
    CHILD_PID=""
    return $rc
}

cleanup() {
    local i
    if [ -n "$CHILD_PID" ] && kill -0 "$CHILD_PID" 2>/dev/null; then
        kill -TERM "$CHILD_PID" 2>/dev/null
        wait "$CHILD_PID" 2>/dev/null
    fi
    for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
        local m="${MOUNTS[$i]}"
        if mountpoint -q "$m"; then
            umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
        fi
        # the sparsefs daemon flushes into its backing after the unmount: let it finish
        # before the backing (bindfs) goes
        if [ -n "$DAEMON_PID" ]; then
            for _ in $(seq 300); do kill -0 "$DAEMON_PID" 2>/dev/null || break; sleep 0.1; done
            kill -0 "$DAEMON_PID" 2>/dev/null && kill -TERM "$DAEMON_PID" 2>/dev/null
            DAEMON_PID=""
        fi
    done
    MOUNTS=()
    for g in "${GL_DIRS[@]}"; do safe_rm "$g"; done
    GL_DIRS=()
    safe_rm "$WORK" "${EXTRA_CLEAN[@]}"
}
EXTRA_CLEAN=()

rel_init() {
    trap cleanup EXIT
    trap 'echo "interrupted" >&2; exit 130' INT TERM
}

# mount_sparsefs BACKING MNT BLOCK LOGFILE: foreground daemon in the background; sets
# DAEMON_PID (not in a subshell: the script must be its parent to wait for it), or MSG.
mount_sparsefs() {
    local b="$1" m="$2" blk="$3" lg="$4"
    "$SPARSEFS" mount "$b" "$m" -f --sparse-block "$blk" "${MOUNT_OPTS[@]}" >>"$lg" 2>&1 &
    DAEMON_PID=$!
    for _ in $(seq 200); do
        if mountpoint -q "$m"; then MOUNTS+=("$m"); return 0; fi
        kill -0 "$DAEMON_PID" 2>/dev/null || break
        sleep 0.05
    done
    MSG="mount of $b on $m failed: $(tail -3 "$lg" | tr '\n' ' ')"
    return 1
}

# unmount_sparsefs MNT: umount, then wait for the daemon (it flushes after the unmount).
# Returns non-zero, with MSG, if umount failed or the daemon's exit status was not 0.
unmount_sparsefs() {
    local m="$1" rc bad=0
    MSG=""
    if ! umount "$m" 2>"$WORK/umount.err"; then
        MSG="umount failed: $(cat "$WORK/umount.err"); "
        bad=1
        umount -l "$m" 2>/dev/null
    fi
    local keep=()
    for x in "${MOUNTS[@]}"; do [ "$x" = "$m" ] || keep+=("$x"); done
    MOUNTS=("${keep[@]}")
    local t=0
    while kill -0 "$DAEMON_PID" 2>/dev/null; do
        sleep 0.05
        t=$((t + 1))
        if [ $t -gt 2400 ]; then MSG+="daemon $DAEMON_PID still alive 120 s after umount"; return 1; fi
    done
    wait "$DAEMON_PID"; rc=$?
    DAEMON_PID=""
    [ $rc = 0 ] || { MSG+="daemon exited with status $rc"; return 1; }
    return $bad
}

# make_backing KIND DIR: prints the path to give to sparsefs as BACKING and, via RAW_DIR,
# the directory that holds the bytes (for bindfs: its source).
# shellcheck disable=SC2034  # BACKING and RAW_DIR are read by the callers
make_backing() {
    local kind="$1" d="$2"
    case "$kind" in
        dir) mkdir -p "$d/backing"; BACKING="$d/backing"; RAW_DIR="$d/backing" ;;
        bindfs)
            mkdir -p "$d/src" "$d/backing"
            bindfs "$d/src" "$d/backing" || return 1
            MOUNTS+=("$d/backing"); BACKING="$d/backing"; RAW_DIR="$d/src" ;;
        gluster)
            local g
            g="$(mktemp -d "$GLUSTER/rel-${REL_NAME:-x}.XXXXXX")" || return 1
            GL_DIRS+=("$g"); BACKING="$g"; RAW_DIR="$g" ;;
    esac
}

drop_backing() {
    local kind="$1" d="$2"
    case "$kind" in
        bindfs)
            umount "$d/backing" 2>/dev/null || umount -l "$d/backing"
            local keep=()
            for x in "${MOUNTS[@]}"; do [ "$x" = "$d/backing" ] || keep+=("$x"); done
            MOUNTS=("${keep[@]}") ;;
        gluster)
            safe_rm "$BACKING"
            local keep=()
            for x in "${GL_DIRS[@]}"; do [ "$x" = "$BACKING" ] || keep+=("$x"); done
            GL_DIRS=("${keep[@]}") ;;
    esac
    safe_rm "$d"
}

