#!/usr/bin/env bash
# The long reliability suite (not in the default test run): kill -9 crash rounds, long
# property-test runs of the pure core and the map decoder, and the fsx/fio exercisers.
#   scripts/long-suite.sh [--rounds 50] [--cases 20000] [--no-fsx]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=50 cases=20000 fsx=1
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds=$2; shift 2 ;;
    --cases) cases=$2; shift 2 ;;
    --no-fsx) fsx=0; shift ;;
    *) echo "long-suite: unknown argument $1" >&2; exit 2 ;;
  esac
done
export SPARSEFS_REQUIRE_FUSE=1
cargo build --release
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
