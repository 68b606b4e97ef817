#!/usr/bin/env bash
# Minimal reproduction of the one failure the reliability suites found (docs/reliability.md):
# statfs(2) on a regular file inside a sparsefs mount fails with ENOTDIR, so glibc's
# posix_fallocate() fallback (used when the backing refuses fallocate, e.g. bindfs) fails too.
# Exit status 1 while the bug is present, 0 once fixed.
set -uo pipefail
SPARSEFS="${SPARSEFS:-$(cd "$(dirname "$0")/../.." && pwd)/target/release/sparsefs}"
FSX="${FSX:-/tmp/rel/tools/bin/fsx}"
T="$(mktemp -d /tmp/rel-repro.XXXXXX)"
cleanup() {
    mountpoint -q "$T/mnt" && umount "$T/mnt"
    sleep 0.5
    mountpoint -q "$T/bk" && umount "$T/bk"
    rm -rf "$T"
}
trap cleanup EXIT
mkdir -p "$T/src" "$T/bk" "$T/mnt"
bindfs "$T/src" "$T/bk"
"$SPARSEFS" mount "$T/bk" "$T/mnt" --sparse-block 32K
echo data >"$T/mnt/f"
bad=0
echo "== stat -f on the mount root, then on a file in it"
stat -f -c '%n: %T' "$T/mnt"
stat -f -c '%n: %T' "$T/mnt/f" || bad=1
echo "== posix_fallocate through glibc (bindfs backing: fallocate is EOPNOTSUPP, glibc emulates)"
/usr/bin/python3 -c "
import os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
try:
    os.posix_fallocate(fd, 0, 65536); print('posix_fallocate: ok')
except OSError as e:
    print('posix_fallocate:', e); sys.exit(1)
" "$T/mnt/f" || bad=1
if [ -x "$FSX" ]; then
    echo "== fsx, one operation"
    printf 'flen = 65536\n[weights]\nread = 0\nwrite = 0\nmapread = 0\nmapwrite = 0\ntruncate = 0\nposix_fallocate = 1\n' >"$T/min.toml"
    NO_COLOR=1 "$FSX" -v -f "$T/min.toml" -N 1 -S 1 -P "$T" "$T/mnt/g" 2>&1 || bad=1
fi
exit $bad
