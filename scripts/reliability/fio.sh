#!/usr/bin/env bash
# fio verify workload through sparsefs mounts (docs/reliability.md).
#
#   scripts/reliability/fio.sh [--quick] [--backing dir|bindfs|gluster]... [--block 4K,32K,1M]
#                              [--size SIZE] [--stripes N] [--seed S] [--mount-opt ARG]...
#                              [--out DIR] [--gluster DIR] [--control]
#
# For every backing x sparse block: create the backing (temp dir; bindfs over a temp dir;
# a rel-* subdirectory of the GlusterFS mount), mount sparsefs on it (foreground daemon,
# PID and exit status tracked), then
#   1. write pass: every job of verify.fio (crc32c data with random sizes 512 B .. 1 MiB,
#      unaligned, sequential, random, with fsync/fdatasync, through mmap; all-zero buffers
#      (zero_buffers, verify_pattern=0x00) written over existing data so zero blocks become
#      holes over data; concurrent jobs on adjacent unaligned stripes); each job verifies
#      what it wrote;
#   2. verify-only pass: the re-verifiable jobs again, now that all zeros and neighbours
#      are written;
#   3. seekcheck.py on every file: SEEK_DATA/SEEK_HOLE map sane, holes read as zero;
#   4. unmount, wait for the daemon (exit status 0); the backing files hash the same;
#   5. remount (fresh extent index), verify-only pass again, seekcheck with the same hashes.
# --control runs steps 1-2 on a plain directory without sparsefs (checks the job file).
# Defaults: dir,bindfs,gluster x 4K,32K,1M with 64 MiB files (--quick: dir,bindfs x 4K,1M,
# 16 MiB files). Failing runs keep fio's output, dumps and the daemon log in OUT/fail-*.
# Environment: SPARSEFS (binary; default target/release/sparsefs,
# then PATH).
set -uo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
JOBFILE="$HERE/verify.fio"

usage() { sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; }

QUICK=0
BACKINGS=()
BLOCKS=""
SIZE=""
STRIPES=""
SEED=""
MOUNT_OPTS=()
OUT=""
GLUSTER=/tmp/gl/mnt
CONTROL=0
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --backing) IFS=, read -r -a b <<<"$2"; BACKINGS+=("${b[@]}"); shift ;;
        --block) BLOCKS="$2"; shift ;;
        --size) SIZE="$2"; shift ;;
        --stripes) STRIPES="$2"; shift ;;
        --seed) SEED="$2"; shift ;;
        --mount-opt) MOUNT_OPTS+=("$2"); shift ;;
        --out) OUT="$2"; shift ;;
        --gluster) GLUSTER="$2"; shift ;;
        --control) CONTROL=1 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "fio.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done
if [ $QUICK = 1 ]; then
    [ ${#BACKINGS[@]} -gt 0 ] || BACKINGS=(dir bindfs)
    BLOCKS="${BLOCKS:-4K,1M}"; SIZE="${SIZE:-16}"; STRIPES="${STRIPES:-4}"
else
    [ ${#BACKINGS[@]} -gt 0 ] || BACKINGS=(dir bindfs gluster)
    BLOCKS="${BLOCKS:-4K,32K,1M}"; SIZE="${SIZE:-64}"; STRIPES="${STRIPES:-4}"
fi
[ $CONTROL = 1 ] && { BACKINGS=(control); BLOCKS=none; }
IFS=, read -r -a BLOCK_LIST <<<"$BLOCKS"
SIZE="${SIZE%[mM]}"   # MiB
[ -n "$SEED" ] || SEED=$(( $(od -An -N2 -tu2 /dev/urandom) ))
OUT="${OUT:-/tmp/rel/results/fio-$(date +%Y%m%d-%H%M%S)}"

# shellcheck source=lib.sh
. "$HERE/lib.sh"
SPARSEFS="$(find_bin "${SPARSEFS:-}" "$REPO/target/release/sparsefs" sparsefs)" \
    || { echo "fio.sh: no sparsefs binary (set SPARSEFS)" >&2; exit 2; }
command -v fio >/dev/null || { echo "fio.sh: fio not installed (apt-get install fio)" >&2; exit 2; }
PY="$(find_bin /usr/bin/python3 python3)" || { echo "fio.sh: no python3" >&2; exit 2; }
SEEKCHECK="$HERE/seekcheck.py"
[ "$(id -u)" = 0 ] || { echo "fio.sh: needs root" >&2; exit 2; }
[ -c /dev/fuse ] || { echo "fio.sh: no /dev/fuse" >&2; exit 2; }
for b in "${BACKINGS[@]}"; do
    case "$b" in
        dir|control) ;;
        bindfs) command -v bindfs >/dev/null || { echo "fio.sh: bindfs not installed" >&2; exit 2; } ;;
        gluster) mountpoint -q "$GLUSTER" || { echo "fio.sh: $GLUSTER is not a mount" >&2; exit 2; } ;;
        *) echo "fio.sh: unknown backing $b" >&2; exit 2 ;;
    esac
done

mkdir -p "$OUT"
WORK="$(mktemp -d /tmp/rel-fio.XXXXXX)"
REL_NAME=fio
rel_init

log() { echo "[fio.sh $(date +%H:%M:%S)] $*"; }

# Geometry (see verify.fio): stripes whose sizes are multiples of the fixed block sizes
# of the jobs that write them and not multiples of 4 KiB.
MIB=$((1024 * 1024))
export FIO_SIZE=$((SIZE * MIB))
export FIO_ZSEQSIZE=$(( (SIZE * MIB / 65537 + 1) * 65537 ))
export FIO_DREGION=$(( (SIZE * MIB / 5 / 12345 + 1) * 12345 ))
export FIO_ZREGION=$(( (SIZE * MIB / 5 / 65537 + 1) * 65537 ))
export FIO_PITCH=$(( FIO_DREGION + FIO_ZREGION ))
export FIO_STRIPES=$STRIPES
export FIO_MIXSIZE=$(( STRIPES * FIO_PITCH ))
export FIO_REGION=$(( SIZE * MIB / 5 | 1 ))   # odd: never 4 KiB aligned
export FIO_SEED=$SEED
REVERIFY=(seq-unaligned rand-fsync rand-mmap mix-data mix-zero zeroseq)
SECTIONS=()
for s in "${REVERIFY[@]}"; do SECTIONS+=("--section=$s"); done

# run_fio DIR PASS(write|verify) OUTJSON: runs fio in DIR's artifacts; returns fio's status.
run_fio() {
    local dir="$1" pass="$2" js="$3" vo=0 sect=()
    [ "$pass" = verify ] && { vo=1; sect=("${SECTIONS[@]}"); }
    local rc
    cd "$ART" || return 1   # verify_dump writes its dumps into the current directory
    FIO_DIR="$dir" FIO_VERIFY_ONLY=$vo run_child fio "$JOBFILE" "${sect[@]}" \
        --output-format=json --output="$js" 2>>"$ART/fio.stderr"
    rc=$?
    cd / || true
    return $rc
}

# fio_sums JSON: "errors read_bytes write_bytes" summed over the jobs.
fio_sums() {
    "$PY" - "$1" <<'EOF' 2>/dev/null || echo "? 0 0"
import json, sys
t = open(sys.argv[1]).read()
d = json.loads(t[t.index("{"):])
e = sum(1 for j in d["jobs"] if j["error"])
print(e, sum(j["read"]["io_bytes"] for j in d["jobs"]), sum(j["write"]["io_bytes"] for j in d["jobs"]))
EOF
}

fio_errors() { # JSON: the failing jobs, one line each
    "$PY" - "$1" <<'EOF' 2>/dev/null
import json, sys
t = open(sys.argv[1]).read()
d = json.loads(t[t.index("{"):])
for j in d["jobs"]:
    if j["error"]:
        print(f'{j["jobname"]}: error {j["error"]}')
EOF
}

RESULTS="$OUT/results.tsv"
printf 'backing\tblock\tseed\tresult\tsecs\twritten\tverified\tdetail\n' >"$RESULTS"
log "sparsefs=$SPARSEFS $(fio --version) out=$OUT"
log "seed $SEED; files: $SIZE MiB x5, mix.dat $FIO_MIXSIZE, conc.dat $((STRIPES * FIO_REGION)), stripes $STRIPES"
FAILS=0
declare -A R_RES R_W R_V R_S
for backing in "${BACKINGS[@]}"; do
    for blk in "${BLOCK_LIST[@]}"; do
        tag="$backing-$blk"
        d="$WORK/$tag"; ART="$d/art"
        mkdir -p "$d/mnt" "$ART"
        dlog="$d/sparsefs.log"
        result=pass; detail=""; wr=0; ver=0
        t0=$(date +%s)
        log "RUN $tag: backing=$backing block=$blk seed=$SEED"
        if [ "$backing" = control ]; then
            mkdir -p "$d/plain"; target="$d/plain"
        elif ! make_backing "$backing" "$d"; then
            result=error; detail="cannot create $backing backing"
        elif ! mount_sparsefs "$BACKING" "$d/mnt" "$blk" "$dlog"; then
            result=error; detail="$MSG"
        else
            target="$d/mnt"
        fi
        declare -A H=()
        if [ $result = pass ]; then
            run_fio "$target" write "$ART/write.json"; rc=$?
            read -r e r w <<<"$(fio_sums "$ART/write.json")"
            wr=$((wr + w)); ver=$((ver + r))
            if [ $rc != 0 ] || [ "$e" != 0 ]; then
                result=FAIL; detail="write pass: fio status $rc; $(fio_errors "$ART/write.json" | head -3 | tr '\n' ' ')"
            fi
        fi
        if [ $result = pass ]; then
            run_fio "$target" verify "$ART/verify1.json"; rc=$?
            read -r e r w <<<"$(fio_sums "$ART/verify1.json")"
            ver=$((ver + r))
            if [ $rc != 0 ] || [ "$e" != 0 ]; then
                result=FAIL; detail="verify-only pass: fio status $rc; $(fio_errors "$ART/verify1.json" | head -3 | tr '\n' ' ')"
            fi
        fi
        if [ $result = pass ] && [ "$backing" != control ]; then
            "$SPARSEFS" stats --json "$d/mnt" >"$ART/stats.json" 2>&1
            for f in "$target"/*.dat; do
                n=$(basename "$f")
                if ! sc=$("$PY" "$SEEKCHECK" "$f" 2>>"$ART/seekcheck.err"); then
                    result=FAIL; detail="seekcheck $n: $(tail -1 "$ART/seekcheck.err")"; break
                fi
                H[$n]=$(sed -n 's/.*sha256=//p' <<<"$sc")
                echo "$n $sc" >>"$ART/maps.txt"
                ver=$((ver + $(stat -c %s "$f")))
            done
        fi
        if [ "$backing" != control ] && mountpoint -q "$d/mnt"; then
            if ! unmount_sparsefs "$d/mnt"; then
                [ $result = pass ] && { result=FAIL; detail="$MSG"; }
            fi
        fi
        if [ $result = pass ] && [ "$backing" != control ]; then
            for n in "${!H[@]}"; do
                if [ "$(sha "$RAW_DIR/$n")" != "${H[$n]}" ]; then
                    result=FAIL; detail="backing $n after unmount differs from what the mount served"
                    cp "$RAW_DIR/$n" "$ART/$n.backing"; break
                fi
            done
        fi
        if [ $result = pass ] && [ "$backing" != control ]; then
            if ! mount_sparsefs "$BACKING" "$d/mnt" "$blk" "$dlog"; then
                result=error; detail="remount: $MSG"
            else
                run_fio "$target" verify "$ART/verify2.json"; rc=$?
                read -r e r w <<<"$(fio_sums "$ART/verify2.json")"
                ver=$((ver + r))
                if [ $rc != 0 ] || [ "$e" != 0 ]; then
                    result=FAIL; detail="verify-only pass after remount: fio status $rc; $(fio_errors "$ART/verify2.json" | head -3 | tr '\n' ' ')"
                fi
                for n in "${!H[@]}"; do
                    [ $result = pass ] || break
                    if ! "$PY" "$SEEKCHECK" "$target/$n" --expect "${H[$n]}" >>"$ART/maps-remount.txt" 2>>"$ART/seekcheck.err"; then
                        result=FAIL; detail="after remount, $n: $(tail -1 "$ART/seekcheck.err")"
                    fi
                    ver=$((ver + $(stat -c %s "$target/$n")))
                done
                if ! unmount_sparsefs "$d/mnt"; then
                    [ $result = pass ] && { result=FAIL; detail="second unmount: $MSG"; }
                fi
            fi
        fi
        secs=$(( $(date +%s) - t0 ))
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$backing" "$blk" "$SEED" "$result" "$secs" \
            "$wr" "$ver" "$detail" >>"$RESULTS"
        R_RES[$tag]=$result; R_W[$tag]=$wr; R_V[$tag]=$ver; R_S[$tag]=$secs
        log "  -> $result in ${secs}s: $wr bytes written by fio, $ver bytes verified${detail:+; $detail}"
        mkdir -p "$OUT/$tag"   # the maps and counters of every run, pass or fail
        cp "$ART"/maps*.txt "$ART"/stats.json "$OUT/$tag/" 2>/dev/null
        if [ $result != pass ]; then
            FAILS=$((FAILS + 1))
            fd="$OUT/fail-$tag-s$SEED"
            mkdir -p "$fd"
            cp -r "$ART/." "$fd/" 2>/dev/null
            cp "$dlog" "$fd/" 2>/dev/null
            cp "$JOBFILE" "$fd/" 2>/dev/null
            env | grep '^FIO_' >"$fd/fio.env"
            grep -h -E -A3 'verify|bad|error' "$ART/fio.stderr" 2>/dev/null | head -12 | sed 's/^/     /'
            log "  artifacts: $fd"
        fi
        if [ "$backing" = control ]; then safe_rm "$d"; else drop_backing "$backing" "$d"; fi
    done
done

echo
echo "fio verify through sparsefs: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname) ($(nproc) cores), $($SPARSEFS --version 2>/dev/null), $(fio --version), seed $SEED"
printf '%-8s %-6s %-8s %6s %14s %14s\n' backing block result secs written verified
tw=0; tv=0
for backing in "${BACKINGS[@]}"; do
    for blk in "${BLOCK_LIST[@]}"; do
        tag="$backing-$blk"
        printf '%-8s %-6s %-8s %6s %14s %14s\n' "$backing" "$blk" "${R_RES[$tag]:-not-run}" \
            "${R_S[$tag]:-0}" "${R_W[$tag]:-0}" "${R_V[$tag]:-0}"
        tw=$((tw + ${R_W[$tag]:-0})); tv=$((tv + ${R_V[$tag]:-0}))
    done
done
echo "total: $tw bytes written by fio, $tv bytes verified, $FAILS failing run(s); results: $RESULTS"
[ $FAILS = 0 ] || { echo "FAILED: see $OUT/fail-*/"; exit 1; }
exit 0
