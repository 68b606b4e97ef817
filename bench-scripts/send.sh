#!/usr/bin/env bash
# Benchmark of `sparsefs send | sparsefs recv` (issue 19) against rsync -S, tar -S and the
# floor (cat of the data bytes alone), from a plain directory and from a sparsefs mount.
# Not run in CI. Root (mounts), on a machine with rsync and GNU tar.
#
#   bench-scripts/send.sh [--size 4G|16G|SIZE] [--data-pct 2] [--extents 400]
#                         [--sparsefs target/release/sparsefs] [--dir /var/tmp/sendbench]
#                         [--cold]
#
# A sparse image of SIZE with DATA-PCT % random data in EXTENTS scattered extents (sizes
# 16 KiB .. a few MiB, offsets unaligned) is built once; each method copies it to a fresh
# destination on the same filesystem; the output is compared with the source (cmp) and
# its allocation (du -B1) printed beside the wall time. --cold drops the page cache
# before each run (default: warm, the source read once beforehand). The `ssh lo` rows
# run through a throwaway sshd started on a free loopback port with its own keys
# (root and openssh-server needed; skipped otherwise): sparsefs send --to, rsync -S -e ssh
# and tar over ssh.
set -euo pipefail

size=4G
pct=2
extents=400
bin=$(cd "$(dirname "$0")/.." && pwd)/target/release/sparsefs
work=/var/tmp/sparsefs-sendbench
cold=0
while [ $# -gt 0 ]; do
  case "$1" in
    --size) size=$2; shift 2 ;;
    --data-pct) pct=$2; shift 2 ;;
    --extents) extents=$2; shift 2 ;;
    --sparsefs) bin=$2; shift 2 ;;
    --dir) work=$2; shift 2 ;;
    --cold) cold=1; shift ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
[ -x "$bin" ] || { echo "no sparsefs binary at $bin (cargo build --release)" >&2; exit 2; }
bytes=$(numfmt --from=iec "$size")

rm -rf "$work"; mkdir -p "$work"/src "$work"/back "$work"/mnt "$work"/out
cleanup() {
  mountpoint -q "$work/mnt" && "$bin" umount "$work/mnt" || true
  [ -f "$work/sshd/pid" ] && kill "$(cat "$work/sshd/pid")" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# The image: deterministic extents, random bytes.
img=$work/src/img
truncate -s "$bytes" "$img"
data_total=$((bytes * pct / 100))
python3 - "$img" "$bytes" "$data_total" "$extents" <<'EOF'
import os, random, sys
path, size, total, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rng = random.Random(19)
lens = [rng.randint(16 << 10, 4 * total // n) for _ in range(n)]
scale = total / sum(lens)
lens = [max(4096, int(l * scale)) for l in lens]
slot = size // n
with open(path, "r+b") as f:
    for i, l in enumerate(lens):
        off = i * slot + rng.randint(0, max(0, slot - l - 1))
        f.seek(off)
        f.write(os.urandom(min(l, size - off)))
EOF
data_alloc=$(du -B1 "$img" | cut -f1)
# The floor's input: the data bytes alone, one dense file.
cat_src=$work/src/data-only
head -c "$data_alloc" /dev/urandom > "$cat_src"
cp --sparse=always "$img" "$work/back/img"
"$bin" mount "$work/back" "$work/mnt"
cat "$img" "$cat_src" > /dev/null

ssh_ok=0
if [ -x /usr/sbin/sshd ] && [ "$(id -u)" = 0 ]; then
  mkdir -p "$work/sshd" /run/sshd
  ssh-keygen -q -t ed25519 -N '' -f "$work/sshd/host_key"
  ssh-keygen -q -t ed25519 -N '' -f "$work/sshd/user_key"
  cp "$work/sshd/user_key.pub" "$work/sshd/authorized_keys"
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  cat > "$work/sshd/config" <<EOF2
Port $port
ListenAddress 127.0.0.1
HostKey $work/sshd/host_key
AuthorizedKeysFile $work/sshd/authorized_keys
PidFile $work/sshd/pid
PermitRootLogin prohibit-password
PasswordAuthentication no
StrictModes no
UsePAM no
EOF2
  /usr/sbin/sshd -f "$work/sshd/config" -E "$work/sshd/log"
  ssh_cmd="ssh -i $work/sshd/user_key -p $port -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"
  for _ in $(seq 50); do
    $ssh_cmd root@127.0.0.1 true 2>/dev/null && { ssh_ok=1; break; }
    sleep 0.1
  done
fi
fake_ssh=$work/fake-ssh
printf '#!/bin/sh\nshift\nexec sh -c "$1"\n' > "$fake_ssh"; chmod +x "$fake_ssh"

printf 'image %s, %s%% data (%s allocated) in %s extents; sparsefs %s; %s cache\n' \
  "$size" "$pct" "$(numfmt --to=iec "$data_alloc")" "$extents" "$bin" \
  "$([ $cold = 1 ] && echo cold || echo warm)"
printf '%-8s %-32s %9s %14s\n' source method seconds dest-alloc

run() { # source-label method-label src dst command...
  local label=$1 method=$2 src=$3 dst=$4; shift 4
  rm -rf "$work/out"; mkdir -p "$work/out"
  sync
  [ $cold = 1 ] && echo 3 > /proc/sys/vm/drop_caches
  local t0 t1
  t0=$(date +%s.%N)
  "$@" > /dev/null 2>"$work/err" || { echo "$method failed: $(cat "$work/err")" >&2; exit 1; }
  t1=$(date +%s.%N)
  if [ "$src" != "-" ]; then
    cmp "$src" "$dst" || { echo "$method: output differs" >&2; exit 1; }
  fi
  printf '%-8s %-32s %9.2f %14s\n' "$label" "$method" "$(echo "$t1 - $t0" | bc)" \
    "$(du -B1 "$dst" | cut -f1)"
}

for label in dir mount; do
  if [ $label = dir ]; then s=$img; else s=$work/mnt/img; fi
  run $label "sparsefs send | recv" "$s" "$work/out/img" \
    sh -c "'$bin' send '$s' | '$bin' recv '$work/out/'"
  run $label "sparsefs send --block 4K | recv" "$s" "$work/out/img" \
    sh -c "'$bin' send --block 4K '$s' | '$bin' recv '$work/out/'"
  run $label "sparsefs send --to (local)" "$s" "$work/out/img" \
    "$bin" send --ssh "$fake_ssh" --remote-sparsefs "$bin" --to "x:$work/out/" "$s"
  if [ $ssh_ok = 1 ]; then
    run $label "sparsefs send --to (ssh lo)" "$s" "$work/out/img" \
      "$bin" send --ssh "$ssh_cmd" --remote-sparsefs "$bin" --to "root@127.0.0.1:$work/out/" "$s"
    run $label "rsync -S -e ssh (ssh lo)" "$s" "$work/out/img" \
      rsync -S -e "$ssh_cmd" "$s" "root@127.0.0.1:$work/out/img"
    run $label "tar -S | ssh tar -x (ssh lo)" "$s" "$work/out/img" \
      sh -c "tar -S -C '$(dirname "$s")' -cf - img | $ssh_cmd root@127.0.0.1 tar -C '$work/out' -xf -"
  fi
  run $label "rsync -S" "$s" "$work/out/img" rsync -S "$s" "$work/out/img"
  run $label "tar -S -c | tar -x" "$s" "$work/out/img" \
    sh -c "tar -S -C '$(dirname "$s")' -cf - img | tar -C '$work/out' -xf -"
  run $label "cat data bytes (floor)" - "$work/out/img" \
    sh -c "cat '$cat_src' > '$work/out/img'"
done
