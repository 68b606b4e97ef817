#!/usr/bin/env bash
# zrx (zrx.py) through sparsefs mounts: FALLOC_FL_ZERO_RANGE, all-zero and mostly-zero
# pwrites, punch, fallocate, truncate and SEEK_DATA/SEEK_HOLE checked against a model,
# which fsx 0.3.2 cannot do (docs/reliability.md).
#
#   scripts/reliability/zrx.sh [--quick] [--backing dir|bindfs|gluster]... [--block 4K,32K,1M]
#                              [--ops N] [--seed S] [--mount-opt ARG]... [--out DIR] [--gluster DIR]
#
# --ops is per combination (default 20000; --quick 2000). After each run: the model's hash
# must equal the backing file's after unmount (daemon exited 0) and the file's after a
# remount (seekcheck.py, fresh extent index). Failures keep the op log, the model
# (.zrxgood), the bad file and the daemon log in OUT/fail-*/.
set -uo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; }

QUICK=0; BACKINGS=(); BLOCKS="4K,32K,1M"; OPS=""; SEED=""; MOUNT_OPTS=(); OUT=""
GLUSTER=/tmp/gl/mnt
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --backing) IFS=, read -r -a b <<<"$2"; BACKINGS+=("${b[@]}"); shift ;;
        --block) BLOCKS="$2"; shift ;;
        --ops) OPS="$2"; shift ;;
        --seed) SEED="$2"; shift ;;
        --mount-opt) MOUNT_OPTS+=("$2"); shift ;;
        --out) OUT="$2"; shift ;;
        --gluster) GLUSTER="$2"; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "zrx.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done
[ ${#BACKINGS[@]} -gt 0 ] || BACKINGS=(dir bindfs gluster)
IFS=, read -r -a BLOCK_LIST <<<"$BLOCKS"
[ -n "$OPS" ] || { if [ $QUICK = 1 ]; then OPS=2000; else OPS=20000; fi; }
[ -n "$SEED" ] || SEED=$(( $(od -An -N3 -tu4 /dev/urandom) ))
OUT="${OUT:-/tmp/rel/results/zrx-$(date +%Y%m%d-%H%M%S)}"

# shellcheck source=lib.sh
. "$HERE/lib.sh"
SPARSEFS="$(find_bin "${SPARSEFS:-}" "$REPO/target/release/sparsefs" sparsefs)" \
    || { echo "zrx.sh: no sparsefs binary (set SPARSEFS)" >&2; exit 2; }
PY="$(find_bin /usr/bin/python3 python3)" || { echo "zrx.sh: no python3" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "zrx.sh: needs root" >&2; exit 2; }
for b in "${BACKINGS[@]}"; do
    case "$b" in
        dir) ;;
        bindfs) command -v bindfs >/dev/null || { echo "zrx.sh: bindfs not installed" >&2; exit 2; } ;;
        gluster) mountpoint -q "$GLUSTER" || { echo "zrx.sh: $GLUSTER is not a mount" >&2; exit 2; } ;;
        *) echo "zrx.sh: unknown backing $b" >&2; exit 2 ;;
    esac
done
mkdir -p "$OUT"
WORK="$(mktemp -d /tmp/rel-zrx.XXXXXX)"
REL_NAME=zrx
rel_init
log() { echo "[zrx.sh $(date +%H:%M:%S)] $*"; }

RESULTS="$OUT/results.tsv"
printf 'backing\tblock\tseed\tops\tresult\tsecs\tskipped\tdetail\n' >"$RESULTS"
FAILS=0; run=0
declare -A R
for backing in "${BACKINGS[@]}"; do
    for blk in "${BLOCK_LIST[@]}"; do
        run=$((run + 1)); seed=$((SEED + run)); tag="$backing-$blk-s$seed"
        d="$WORK/$tag"; mkdir -p "$d/mnt"
        dlog="$d/sparsefs.log"; zlog="$d/zrx.log"; f="$d/mnt/zrx.file"
        result=pass; detail=""; secs=0; skipped=""
        log "RUN $tag: backing=$backing block=$blk ops=$OPS seed=$seed"
        if ! make_backing "$backing" "$d"; then
            result=error; detail="cannot create $backing backing"
        elif ! mount_sparsefs "$BACKING" "$d/mnt" "$blk" "$dlog"; then
            result=error; detail="$MSG"
        fi
        if [ $result = pass ]; then
            t0=$(date +%s)
            run_child "$PY" "$HERE/zrx.py" "$f" --ops "$OPS" --seed "$seed" --good "$d/zrx.good" >"$zlog" 2>&1
            rc=$?
            secs=$(( $(date +%s) - t0 ))
            want=$(sed -n 's/.*sha256=\([0-9a-f]*\).*/\1/p' "$zlog")
            skipped=$(sed -n 's/.*skipped=//p' "$zlog")
            if [ $rc != 0 ]; then
                result=FAIL; detail="$(grep -m1 'FAIL' "$zlog")"
                cp "$f" "$d/zrx.file.actual" 2>/dev/null
            fi
        fi
        if mountpoint -q "$d/mnt" && ! unmount_sparsefs "$d/mnt"; then
            [ $result = pass ] && { result=FAIL; detail="$MSG"; }
        fi
        if [ $result = pass ] && [ "$(sha "$RAW_DIR/zrx.file")" != "$want" ]; then
            result=FAIL; detail="backing file after unmount != model"
            cp "$RAW_DIR/zrx.file" "$d/backing.after-umount"
        fi
        if [ $result = pass ]; then
            if ! mount_sparsefs "$BACKING" "$d/mnt" "$blk" "$dlog"; then
                result=error; detail="remount: $MSG"
            else
                if ! "$PY" "$HERE/seekcheck.py" "$f" --expect "$want" >"$d/seekcheck.out" 2>&1; then
                    result=FAIL; detail="after remount: $(grep -m1 seekcheck: "$d/seekcheck.out")"
                fi
                unmount_sparsefs "$d/mnt" || { [ $result = pass ] && { result=FAIL; detail="$MSG"; }; }
            fi
        fi
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$backing" "$blk" "$seed" "$OPS" "$result" \
            "$secs" "$skipped" "$detail" >>"$RESULTS"
        R[$backing/$blk]="$result $secs $skipped"
        log "  -> $result in ${secs}s (fallocate modes refused by the backing: $skipped)${detail:+; $detail}"
        if [ $result != pass ]; then
            FAILS=$((FAILS + 1)); fd="$OUT/fail-$tag"; mkdir -p "$fd"
            cp "$d"/zrx.* "$d"/*.actual "$d"/backing.* "$dlog" "$zlog" "$fd/" 2>/dev/null
            echo "$PY $HERE/zrx.py \${MNT:?}/zrx.file --ops $OPS --seed $seed  # sparse block $blk, $backing backing" >"$fd/repro.sh"
            sed -n '/last/,$p' "$zlog" | tail -8 | sed 's/^/     /'
            log "  artifacts: $fd"
        fi
        drop_backing "$backing" "$d"
    done
done
echo
echo "zrx through sparsefs: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname) ($(nproc) cores), $($SPARSEFS --version 2>/dev/null), $OPS ops each, base seed $SEED"
printf '%-8s %-6s %-8s %6s %s\n' backing block result secs refused
for backing in "${BACKINGS[@]}"; do
    for blk in "${BLOCK_LIST[@]}"; do
        read -r r s k <<<"${R[$backing/$blk]:-not-run 0 -}"
        printf '%-8s %-6s %-8s %6s %s\n' "$backing" "$blk" "$r" "$s" "$k"
    done
done
echo "$FAILS failing run(s); results: $RESULTS"
[ $FAILS = 0 ] || { echo "FAILED: see $OUT/fail-*/"; exit 1; }
