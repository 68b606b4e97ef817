#!/usr/bin/env bash
# Reruns the sparse-engine integration tests over a real GlusterFS volume on loopback,
# sharded so that SEEK_DATA fails (as on GPFS, BeeGFS, CephFS kernel client, NFSv3).
# Uses ../shared/backends/gluster-up.sh; tears the volume down on exit.
#   SPARSEFS_GLUSTER_DIR=/mounted/volume scripts/test-gluster.sh   # reuse a running volume
set -euo pipefail
cd "$(dirname "$0")/.."
shared=${SPARSEFS_SHARED:-$(cd .. && pwd)/shared}
if [ -z "${SPARSEFS_GLUSTER_DIR:-}" ]; then
  base=$(mktemp -d /tmp/sparsefs-test-gl.XXXXXX)
  trap 'BASE=$base "$shared/backends/gluster-down.sh" >/dev/null 2>&1 || true; rm -rf "$base"' EXIT
  SPARSEFS_GLUSTER_DIR=$(SHARD=1 BASE=$base "$shared/backends/gluster-up.sh")
fi
export SPARSEFS_GLUSTER_DIR SPARSEFS_TEST_BACKINGS=gluster
cargo test --release --test mount -- --test-threads=1 \
  dd_of_zeros real_tools sparse_aware zeros_written fallocate files_not_written \
  maps_persist a_map_is_never two_mounts scan_makes a_writer_joining the_kernel_keeps \
  punch_frees_space the_punch_probe seek_answers_come
# The never-hang torture over GlusterFS too (30 s; scripts/long-suite.sh runs 10 min).
SPARSEFS_TORTURE_SECS=${SPARSEFS_TORTURE_SECS:-30} cargo test --release --test mount -- \
  --test-threads=1 many_threads_and_processes
# Issue 15, point 5: close-to-open between two GlusterFS client mounts of one sharded
# volume with GlusterFS's client caches on (CACHE=1), each under its own sparsefs mount.
if [ -n "${base:-}" ]; then
  BASE=$base "$shared/backends/gluster-down.sh" >/dev/null 2>&1 || true
  a=$(CACHE=1 SHARD=1 BASE=$base "$shared/backends/gluster-up.sh")
  b=$base/mnt2; mkdir -p "$b"
  trap 'umount "$b" 2>/dev/null || umount -l "$b" 2>/dev/null; BASE=$base "$shared/backends/gluster-down.sh" >/dev/null 2>&1 || true; rm -rf "$base"' EXIT
  glusterfs --volfile-server=127.0.0.1 --volfile-server-port=24007 --volfile-id=vol \
    --log-file="$base/client2.log" "$b"
  for _ in $(seq 100); do mountpoint -q "$b" && stat -f "$b" >/dev/null 2>&1 && break; sleep 0.1; done
  SPARSEFS_GLUSTER_CACHED="$a:$b" cargo test --release --test mount -- --test-threads=1 \
    --nocapture close_to_open_between_two_glusterfs_clients
fi
