#!/usr/bin/env bash
# Takes a virtual machine's memory artefact out of a benchmark run.
#
#   bench-scripts/vm-memory.sh pause [GIB]   -> prints the state to give to restore
#   bench-scripts/vm-memory.sh restore STATE
#
# On a VM with free page reporting (virtio-balloon; here a Firecracker guest), memory the
# guest frees is handed back to the host, and the next first touch of each page costs a
# host fault: measured here, writing 2 GiB to tmpfs ran at 227 MB/s on reported memory and
# 1.2-1.8 GB/s on memory just freed, and back to 304 MB/s after 10 s idle. A benchmark then
# measures which variant happens to touch memory that has been free for a while: sparsefs's
# direct-I/O writes leave no page cache, so its read-back allocated 2 GiB of cold page cache
# (600 MB/s) where bindfs's read reused the pages its own write had just freed (1.6 GB/s).
# Bare-metal HPC nodes have no such cost.
#
# pause: sets page_reporting_order above the largest page order (nothing is reported any
# more) and touches GIB of memory once (default: free memory minus 3 GiB) so that it is
# backed by the host; prints the old order. restore puts the old order back. Nothing is
# done (and "none" printed) where the kernel has no page reporting or it is not writable.
set -euo pipefail
p=/sys/module/page_reporting/parameters/page_reporting_order
case "${1:-}" in
  pause)
    if [ ! -w "$p" ]; then echo none; exit 0; fi
    old=$(cat "$p")
    echo 11 > "$p" 2>/dev/null || { echo none; exit 0; }
    gib=${2:-$(awk '/MemFree:/{g=int($2/1048576)-3; print (g>0)?g:0}' /proc/meminfo)}
    if [ "$gib" -gt 0 ]; then
      python3 -c "
import sys
n = int(sys.argv[1]) << 30
b = bytearray(n)
b[::4096] = b'\x01' * (n // 4096)
" "$gib" || true
    fi
    echo "$old"
    ;;
  restore)
    state=${2:?restore needs the state printed by pause}
    if [ "$state" != none ] && [ -w "$p" ]; then echo "$state" > "$p"; fi
    ;;
  *) echo "usage: vm-memory.sh pause [GIB] | restore STATE" >&2; exit 2 ;;
esac
