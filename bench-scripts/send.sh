#!/usr/bin/env bash
# Benchmark of `sparsefs send | sparsefs recv` (issue 19) against rsync -S, tar -S and the
# floor (cat of the data bytes alone), from a plain directory and from a sparsefs mount.
# Not run in CI. Root (mounts), on a machine with rsync and GNU tar.
#
#   bench-scripts/send.sh [--size 4G|16G|SIZE] [--data-pct 2] [--extents 400]
#                         [--sparsefs target/release/sparsefs] [--dir /var/tmp/sendbench]
#                         [--cold] [--master] [--rate RATE] [--remote-rc] [--count-calls]
#                         [--backing DIR] [--only REGEX]
#
# A sparse image of SIZE with DATA-PCT % random data in EXTENTS scattered extents (sizes
# 16 KiB .. a few MiB, offsets unaligned) is built once; each method copies it to a fresh
# destination on the same filesystem; the output is compared with the source (cmp) and
# its allocation (du -B1) printed beside the wall time. --cold drops the page cache
# before each run (default: warm, the source read once beforehand). The `ssh lo` rows
# run through a throwaway sshd started on a free loopback port with its own keys
# (root and openssh-server needed; skipped otherwise): sparsefs send --to, rsync -S -e ssh,
# scp (SFTP, writes the copy dense), tar over ssh, the xfer-hole pair (send --format
# xfer-hole piped into ssh running the sh one-liner of docs/send.md), cat of the data
# bytes alone into ssh cat (the floor over ssh), and send --to --update of a copy of the
# image with 1% of its data blocks changed (4 KiB each) onto a fresh copy of the original.
# `wire` is the bytes the ssh client counted (sent + received, its `Transferred:` line
# at LogLevel VERBOSE), so it includes ssh's framing; `-` for rows without ssh. `notes`
# is from send --json: blocks sent, stream bytes, reply bytes (--update), mount index
# requests.
#
# --master: every ssh row goes through one ssh connection (ControlMaster, ControlPersist)
# opened before the first timed row, so no row pays the connection setup (ssh HOST true
# is timed with and without it); `wire` is then the bytes the master's TCP connection
# moved during the row (ss -ti bytes_sent + bytes_received, ssh framing included).
# Without it each ssh row opens its own connection, as before, and the ratios are
# printed a second time with the setup time taken from each ssh row. (The master costs
# bulk throughput: scp and rsync ran 1.5x slower through it here.)
#
# --count-calls: each `mount` row runs with `strace -f -c` attached to the daemon, and the
# notes get the daemon's syscalls during the row (`daemon: N calls`, then the largest
# kinds): what each tool costs the backend through the mount. strace slows the daemon,
# so the times of such a run are not comparable: use it for counts only.
# --rate RATE (e.g. 1gbit): caps the ssh rows' loopback traffic (both directions of the
# sshd port only; other loopback traffic is not touched) with an HTB class on lo, to
# model a real network. Removed on exit. netem (latency) is not built into this kernel.
# --backing DIR: the mount's backing directory is made inside DIR (for instance a
# GlusterFS mount, gluster-up.sh) instead of beside the work directory, and the images
# are copied into it through the mount (so its index knows their holes, as for files
# written through it). --only REGEX: only the rows whose method matches (extended
# regex); keep `sparsefs send --to \(ssh` in it for the --update rows, which update its
# copy. Ratios of rows not run print as -.
# The throwaway sshd sets SHLVL=1 in its sessions, so that the remote bash does not
# source root's ~/.bashrc (Debian's bash does for commands run by sshd; a pyenv init there
# cost 0.17 s per command, paid by every row but scp, whose SFTP server runs no shell);
# --remote-rc keeps it.
set -euo pipefail

size=4G
pct=2
extents=400
bin=$(cd "$(dirname "$0")/.." && pwd)/target/release/sparsefs
work=/var/tmp/sparsefs-sendbench
cold=0
master=0
rate=""
remote_rc=0
count_calls=0
backing_in=""
only=""
while [ $# -gt 0 ]; do
  case "$1" in
    --size) size=$2; shift 2 ;;
    --data-pct) pct=$2; shift 2 ;;
    --extents) extents=$2; shift 2 ;;
    --sparsefs) bin=$2; shift 2 ;;
    --dir) work=$2; shift 2 ;;
    --cold) cold=1; shift ;;
    --master) master=1; shift ;;
    --rate) rate=$2; shift 2 ;;
    --count-calls) count_calls=1; shift ;;
    --remote-rc) remote_rc=1; shift ;;
    --backing) backing_in=$2; shift 2 ;;
    --only) only=$2; shift 2 ;;
    -h|--help) sed -n '2,39p' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
[ -x "$bin" ] || { echo "no sparsefs binary at $bin (cargo build --release)" >&2; exit 2; }
bytes=$(numfmt --from=iec "$size")

if [ -n "$backing_in" ]; then
  [ -d "$backing_in" ] || { echo "--backing $backing_in is not a directory" >&2; exit 2; }
  back=$backing_in/sparsefs-sendbench.$$
else
  back=$work/back
fi
rm -rf "$work"; mkdir -p "$work"/src "$back" "$work"/mnt "$work"/out
shaped=0
cleanup() {
  mountpoint -q "$work/mnt" && "$bin" umount "$work/mnt" || true
  [ -n "$backing_in" ] && rm -rf "$back"
  [ $shaped = 1 ] && tc qdisc del dev lo root 2>/dev/null || true
  [ -S "$work/sshd/cm" ] && ssh -o ControlPath="$work/sshd/cm" -O exit root@127.0.0.1 2>/dev/null || true
  [ -f "$work/sshd/pid" ] && kill "$(cat "$work/sshd/pid")" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

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
# The --update source: the image with 1% of its 32K data blocks changed (4 KiB of new
# random bytes inside each chosen block's data; no allocation change).
upd=$work/src/img-upd
cp --sparse=always "$img" "$upd"
upd_blocks=$(python3 - "$upd" "$pct" <<'EOF'
import os, random, sys
path = sys.argv[1]
rng = random.Random(1919)
fd = os.open(path, os.O_RDWR)
size = os.fstat(fd).st_size
runs, off = [], 0
while off < size:
    try:
        d = os.lseek(fd, off, os.SEEK_DATA)
    except OSError:
        break
    h = os.lseek(fd, d, os.SEEK_HOLE)
    runs.append((d, h))
    off = h
B = 32 << 10
blocks = {}
for d, h in runs:
    for b in range(d // B * B, h, B):
        lo, hi = max(b, d), min(b + B, h)
        blocks.setdefault(b, (lo, hi))
keys = sorted(blocks)
n = max(1, round(len(keys) / 100))
for b in rng.sample(keys, n):
    lo, hi = blocks[b]
    os.pwrite(fd, os.urandom(min(4096, hi - lo)), lo)
os.close(fd)
print(n, len(keys))
EOF
)
if [ -n "$backing_in" ]; then
  "$bin" mount "$back" "$work/mnt"
  cp --sparse=always "$img" "$work/mnt/img"
  cp --sparse=always "$upd" "$work/mnt/img-upd"
else
  cp --sparse=always "$img" "$back/img"
  cp --sparse=always "$upd" "$back/img-upd"
  "$bin" mount "$back" "$work/mnt"
fi
cat "$img" "$upd" "$cat_src" > /dev/null

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
Subsystem sftp internal-sftp
EOF2
  [ $remote_rc = 1 ] || echo "SetEnv SHLVL=1" >> "$work/sshd/config"
  /usr/sbin/sshd -f "$work/sshd/config" -E "$work/sshd/log"
  # One word, so that send --ssh, rsync -e and scp -S all take it; the client logs its
  # byte counts to client.log. ssh_plain never uses a master connection.
  ssh_opts="-i $work/sshd/user_key -p $port -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null"
  ssh_plain="ssh $ssh_opts -o ControlPath=none"
  mux=""
  [ $master = 1 ] && mux="-o ControlPath=$work/sshd/cm -o ControlMaster=no"
  ssh_cmd=$work/sshd/ssh
  cat > "$ssh_cmd" <<EOF2
#!/bin/sh
exec ssh $ssh_opts $mux -o LogLevel=VERBOSE -E $work/sshd/client.log "\$@"
EOF2
  chmod +x "$ssh_cmd"
  for _ in $(seq 50); do
    $ssh_plain root@127.0.0.1 true 2>/dev/null && { ssh_ok=1; break; }
    sleep 0.1
  done
  if [ $ssh_ok = 1 ] && [ -n "$rate" ]; then
    # Only the sshd port's traffic (both directions) goes through the capped class.
    tc qdisc add dev lo root handle 1: htb default 20
    shaped=1
    tc class add dev lo parent 1: classid 1:10 htb rate "$rate" ceil "$rate" burst 1mbit cburst 1mbit quantum 200000
    tc class add dev lo parent 1: classid 1:20 htb rate 100gbit quantum 200000
    tc filter add dev lo parent 1: protocol ip u32 match ip dport "$port" 0xffff flowid 1:10
    tc filter add dev lo parent 1: protocol ip u32 match ip sport "$port" 0xffff flowid 1:10
  fi
  if [ $ssh_ok = 1 ] && [ $master = 1 ]; then
    ssh $ssh_opts -o ControlMaster=yes -o ControlPath="$work/sshd/cm" -o ControlPersist=yes \
      -fN root@127.0.0.1
  fi
fi
# Bytes the master connection has moved (sent + received, TCP payload).
master_bytes() {
  ss -tniH state established "( dport = :$port )" |
    grep -o 'bytes_\(sent\|received\):[0-9]*' | awk -F: '{s += $2} END {printf "%.0f\n", s}'
}
fake_ssh=$work/fake-ssh
printf '#!/bin/sh\nshift\nexec sh -c "$1"\n' > "$fake_ssh"; chmod +x "$fake_ssh"
if [ $ssh_ok = 1 ]; then
  # The xfer-hole receiver: the sh one-liner of docs/send.md, run as documented there.
  grep -m1 '^f="\$1"; ' "$(dirname "$0")/../docs/send.md" > "$work/recv-hole.sh"
  [ -s "$work/recv-hole.sh" ] || { echo "no xfer-hole one-liner in docs/send.md" >&2; exit 2; }
  cat > "$work/xfer-hole-ssh" <<EOF2
#!/bin/sh
'$bin' send --format xfer-hole "\$1" | $ssh_cmd root@127.0.0.1 sh -c "'\$(cat $work/recv-hole.sh)'" - "\$2"
EOF2
  chmod +x "$work/xfer-hole-ssh"
fi

printf 'image %s, %s%% data (%s allocated) in %s extents; sparsefs %s; %s cache; mount backing %s (%s)\n' \
  "$size" "$pct" "$(numfmt --to=iec "$data_alloc")" "$extents" "$bin" \
  "$([ $cold = 1 ] && echo cold || echo warm)" "$back" "$(stat -f -c %T "$back")"
printf 'update source: %s of %s 32K data blocks changed\n' ${upd_blocks% *} ${upd_blocks#* }
config="ssh: $([ $master = 1 ] && echo "one master connection" || echo "a connection per row"), $([ -n "$rate" ] && echo "rate $rate" || echo "loopback unshaped"), remote ~/.bashrc $([ $remote_rc = 1 ] && echo sourced || echo "not sourced")"
if [ $ssh_ok = 1 ]; then
  echo "$config"
  t0=$(date +%s.%N); $ssh_plain root@127.0.0.1 true; t1=$(date +%s.%N)
  setup=$(echo "$t1 - $t0" | bc)
  printf 'ssh HOST true, new connection: %.3f s\n' "$setup"
  if [ $master = 1 ]; then
    t0=$(date +%s.%N); $ssh_cmd root@127.0.0.1 true; t1=$(date +%s.%N)
    printf 'ssh HOST true, through the master: %.3f s\n' "$(echo "$t1 - $t0" | bc)"
  fi
fi
printf '%-8s %-50s %9s %14s %12s  %s\n' source method seconds dest-alloc wire notes
declare -A secs
keep_out=0

run() { # source-label method-label src dst command...
  local label=$1 method=$2 src=$3 dst=$4; shift 4
  if [ -n "$only" ] && ! [[ $method =~ $only ]]; then return 0; fi
  [ $keep_out = 1 ] || { rm -rf "$work/out"; mkdir -p "$work/out"; }
  sync
  [ $cold = 1 ] && echo 3 > /proc/sys/vm/drop_caches
  { : > "$work/sshd/client.log"; } 2>/dev/null || true
  local t0 t1 t wire notes="" mb0=0
  [ $master = 1 ] && [ $ssh_ok = 1 ] && mb0=$(master_bytes)
  local tracer=""
  if [ $count_calls = 1 ] && [ "$label" = mount ]; then
    strace -f -c -S calls -o "$work/calls" -p "$(pgrep -f "$bin mount $back $work/mnt" | head -1)" 2>/dev/null &
    tracer=$!
    sleep 0.5
  fi
  t0=$(date +%s.%N)
  "$@" > "$work/stdout" 2>"$work/err" || { echo "$method failed: $(cat "$work/err")" >&2; exit 1; }
  t1=$(date +%s.%N)
  if [ -n "$tracer" ]; then
    kill -INT "$tracer"; wait "$tracer" 2>/dev/null || true
    notes="daemon syscalls $(awk '$NF == "total" {print $4}' "$work/calls"):"
    notes+=$(awk '$1 ~ /^[0-9.]+$/ && $NF != "total" {printf " %s=%s", $NF, $4}' "$work/calls" | cut -d' ' -f1-7)
    notes+=" "
  fi
  if [ "$src" != "-" ]; then
    cmp "$src" "$dst" || { echo "$method: output differs" >&2; exit 1; }
  fi
  t=$(echo "$t1 - $t0" | bc)
  secs["$label|$method"]=$t
  wire=$({ grep -ho 'Transferred: sent [0-9]*, received [0-9]*' "$work/sshd/client.log" 2>/dev/null || true; } |
    awk '{s += $3 + $5; n++} END {if (n) printf "%.0f\n", s; else print "-"}')
  if [ $master = 1 ] && [ $ssh_ok = 1 ] && [[ $method == *"ssh lo"* ]]; then
    wire=$(($(master_bytes) - mb0))
  fi
  if [ "$(head -c1 "$work/stdout")" = "{" ]; then
    notes+=$(python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); print("blocks_sent=%d stream=%d reply=%d mount_requests=%d send_s=%.2f" % (j["blocks_sent"], j["wire_bytes"], j["reply_bytes"], j["mount_requests"], j["seconds"]))' "$work/stdout")
  fi
  printf '%-8s %-50s %9.2f %14s %12s  %s\n' "$label" "$method" "$t" \
    "$(du -B1 "$dst" | cut -f1)" "$wire" "$notes"
}

for label in dir mount; do
  if [ $label = dir ]; then s=$img u=$upd; else s=$work/mnt/img u=$work/mnt/img-upd; fi
  run $label "sparsefs send | recv" "$s" "$work/out/img" \
    sh -c "'$bin' send '$s' | '$bin' recv '$work/out/'"
  run $label "sparsefs send --block 4K | recv" "$s" "$work/out/img" \
    sh -c "'$bin' send --block 4K '$s' | '$bin' recv '$work/out/'"
  run $label "sparsefs send --to (local)" "$s" "$work/out/img" \
    "$bin" send --ssh "$fake_ssh" --remote-sparsefs "$bin" --to "x:$work/out/" "$s"
  if [ $ssh_ok = 1 ]; then
    run $label "sparsefs send --to (ssh lo)" "$s" "$work/out/img" \
      "$bin" send --json --ssh "$ssh_cmd" --remote-sparsefs "$bin" --to "root@127.0.0.1:$work/out/" "$s"
    # --update: the destination holds the original (the copy just made); the source is
    # the image with 1% of its data blocks changed.
    keep_out=1
    run $label "sparsefs send --to --update 1% (ssh lo)" "$u" "$work/out/img" \
      "$bin" send --json --update --ssh "$ssh_cmd" --remote-sparsefs "$bin" \
      --to "root@127.0.0.1:$work/out/img" "$u"
    # The same with --inplace: only the changed blocks are written (no copy of the
    # old data, no fsync of it), onto a fresh copy of the original.
    cp --sparse=always "$s" "$work/out/img"
    run $label "sparsefs send --to --update --inplace 1% (ssh lo)" "$u" "$work/out/img" \
      "$bin" send --json --update --inplace --ssh "$ssh_cmd" --remote-sparsefs "$bin" \
      --to "root@127.0.0.1:$work/out/img" "$u"
    keep_out=0
    run $label "send --format xfer-hole | ssh sh (ssh lo)" "$s" "$work/out/img" \
      "$work/xfer-hole-ssh" "$s" "$work/out/img"
    run $label "rsync -S -e ssh (ssh lo)" "$s" "$work/out/img" \
      rsync -S -e "$ssh_cmd" "$s" "root@127.0.0.1:$work/out/img"
    run $label "scp (ssh lo)" "$s" "$work/out/img" \
      scp -S "$ssh_cmd" "$s" "root@127.0.0.1:$work/out/img"
    run $label "tar -S | ssh tar -x (ssh lo)" "$s" "$work/out/img" \
      sh -c "tar -S -C '$(dirname "$s")' -cf - img | $ssh_cmd root@127.0.0.1 tar -C '$work/out' -xf -"
    run $label "cat data bytes | ssh cat (floor, ssh lo)" - "$work/out/img" \
      sh -c "cat '$cat_src' | $ssh_cmd root@127.0.0.1 \"cat > '$work/out/img'\""
    # recv fsyncs each file before its rename; the same floor with an fsync (sync FILE).
    run $label "cat data | ssh cat; sync FILE (ssh lo)" - "$work/out/img" \
      sh -c "cat '$cat_src' | $ssh_cmd root@127.0.0.1 \"cat > '$work/out/img' && sync '$work/out/img'\""
  fi
  run $label "rsync -S" "$s" "$work/out/img" rsync -S "$s" "$work/out/img"
  run $label "tar -S -c | tar -x" "$s" "$work/out/img" \
    sh -c "tar -S -C '$(dirname "$s")' -cf - img | tar -C '$work/out' -xf -"
  run $label "cat data bytes (floor)" - "$work/out/img" \
    sh -c "cat '$cat_src' > '$work/out/img'"
done

if [ $ssh_ok = 1 ]; then
  echo
  echo "$config"
  for label in dir mount; do
    to=${secs["$label|sparsefs send --to (ssh lo)"]:-}
    ratio() { if [ -n "$1" ] && [ -n "$2" ]; then echo "scale=2; $1 / $2" | bc; else echo -; fi; }
    printf '%s: send --to is %sx the ssh floor (target <= 1.3); rsync -S -e ssh %sx (target >= 5), scp %sx (target >= 20), tar -S | ssh %sx, xfer-hole %sx the time of send --to; the fresh send --to %sx the time of --update 1%%, %sx that of --update --inplace 1%% (target >= 20)\n' \
      "$label" \
      "$(ratio "$to" "${secs["$label|cat data bytes | ssh cat (floor, ssh lo)"]:-}")" \
      "$(ratio "${secs["$label|rsync -S -e ssh (ssh lo)"]:-}" "$to")" \
      "$(ratio "${secs["$label|scp (ssh lo)"]:-}" "$to")" \
      "$(ratio "${secs["$label|tar -S | ssh tar -x (ssh lo)"]:-}" "$to")" \
      "$(ratio "${secs["$label|send --format xfer-hole | ssh sh (ssh lo)"]:-}" "$to")" \
      "$(ratio "$to" "${secs["$label|sparsefs send --to --update 1% (ssh lo)"]:-}")" \
      "$(ratio "$to" "${secs["$label|sparsefs send --to --update --inplace 1% (ssh lo)"]:-}")"
    if [ $master = 0 ]; then
      # Each ssh row opened one connection: the same ratios with the setup time
      # (ssh HOST true, timed once above) taken from every ssh row.
      less() { if [ -n "$1" ]; then echo "$1 - $setup" | bc; fi; }
      to=$(less "$to")
      printf '%s, less %.3f s of setup per ssh row: send --to %sx the ssh floor; rsync -S -e ssh %sx, scp %sx the time of send --to; the fresh send --to %sx the time of --update 1%%, %sx that of --update --inplace 1%%\n' \
        "$label" "$setup" \
        "$(ratio "$to" "$(less "${secs["$label|cat data bytes | ssh cat (floor, ssh lo)"]:-}")")" \
        "$(ratio "$(less "${secs["$label|rsync -S -e ssh (ssh lo)"]:-}")" "$to")" \
        "$(ratio "$(less "${secs["$label|scp (ssh lo)"]:-}")" "$to")" \
        "$(ratio "$to" "$(less "${secs["$label|sparsefs send --to --update 1% (ssh lo)"]:-}")")" \
        "$(ratio "$to" "$(less "${secs["$label|sparsefs send --to --update --inplace 1% (ssh lo)"]:-}")")"
    fi
  done
fi
