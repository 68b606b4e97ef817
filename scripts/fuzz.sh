#!/usr/bin/env bash
# Fuzzes the pure core with cargo-fuzz (libFuzzer; needs the nightly toolchain and
# `cargo install cargo-fuzz`): the stored-map decoder and the engine against a model.
#   scripts/fuzz.sh [--seconds N]     (per target; default 300)
# Crashes are kept in fuzz/artifacts/TARGET/ and make the exit status 1.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs=300
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) secs=$2; shift 2 ;;
    *) echo "fuzz.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
command -v cargo-fuzz >/dev/null || { echo "fuzz.sh: cargo-fuzz missing (cargo install cargo-fuzz)" >&2; exit 2; }
rustup toolchain list | grep -q nightly || { echo "fuzz.sh: the nightly toolchain is missing (rustup toolchain install nightly)" >&2; exit 2; }
for t in map_decode engine_ops; do
  echo "== fuzz $t for ${secs}s"
  cargo +nightly fuzz run "$t" -O -- -max_total_time="$secs" -max_len=4096 2>&1 | grep -E '^Done|SUMMARY|panicked|crash-' || true
  if [ -n "$(ls -A "artifacts/$t" 2>/dev/null)" ]; then
    echo "fuzz.sh: $t found a crash: fuzz/artifacts/$t/" >&2
    exit 1
  fi
done
echo "fuzz: no crash"
