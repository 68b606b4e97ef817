#!/usr/bin/env bash
# The long reliability suite (not in the default test run): the never-hang torture for
# 10 minutes per backing (dir, bindfs, sharded GlusterFS), with a CPU hog beside it when
# stress-ng is there; kill -9 crash rounds; long property-test runs of the pure core and
# the map decoder; the fsx/fio exercisers.
#   scripts/long-suite.sh [--rounds 50] [--cases 20000] [--torture-secs 600] [--no-fsx]
#                         [--no-torture] [--no-gluster]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=50 cases=20000 fsx=1 torture=600 gluster=1
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds=$2; shift 2 ;;
    --cases) cases=$2; shift 2 ;;
    --no-fsx) fsx=0; shift ;;
    --torture-secs) torture=$2; shift 2 ;;
    --no-torture) torture=0; shift ;;
    --no-gluster) gluster=0; shift ;;
    *) echo "long-suite: unknown argument $1" >&2; exit 2 ;;
  esac
done
export SPARSEFS_REQUIRE_FUSE=1
cargo build --release
if [ "$torture" -gt 0 ]; then
  hog=
  if command -v stress-ng >/dev/null; then
    stress-ng --cpu 2 --timeout $((torture * 4))s >/dev/null 2>&1 & hog=$!
    echo "== CPU hog beside the torture: stress-ng --cpu 2 (pid $hog)"
  fi
  echo "== never-hang torture: $torture s per backing (dir, bindfs)"
  SPARSEFS_TORTURE_SECS=$torture SPARSEFS_TEST_BACKINGS=dir,bindfs \
    cargo test --release --test mount -- --test-threads=1 --nocapture many_threads_and_processes
  if [ "$gluster" = 1 ]; then
    echo "== never-hang torture: $torture s on sharded GlusterFS"
    SPARSEFS_TORTURE_SECS=$torture scripts/test-gluster.sh
  fi
  [ -n "$hog" ] && kill "$hog" 2>/dev/null || true
fi
echo "== kill -9 during writes: $rounds rounds"
SPARSEFS_CRASH_ROUNDS=$rounds cargo test --release --test mount -- kill_9 --test-threads=1
echo "== property tests: $cases cases each (engine vs model, range sets, map decoder)"
PROPTEST_CASES=$cases cargo test --release --lib -- --test-threads=2
if command -v cargo-fuzz >/dev/null; then
  echo "== cargo-fuzz: 300 s per target"
  scripts/fuzz.sh --seconds 300
else
  echo "== cargo-fuzz not installed: fuzzing skipped (cargo install cargo-fuzz)"
fi
if [ "$fsx" = 1 ] && [ -x scripts/reliability/fsx.sh ]; then
  echo "== fsx"
  scripts/reliability/fsx.sh
  [ -x scripts/reliability/fio.sh ] && scripts/reliability/fio.sh
fi
echo "long suite: all passed"
