#!/usr/bin/env bash
# The test command (README): lint gates, unit and property tests, then the real-mount
# integration tests. Needs root and /dev/fuse for the mounts; with
# SPARSEFS_REQUIRE_FUSE=1 a test that cannot mount fails instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --release --all-targets -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --document-private-items -q
cargo build --release
install -m 0755 target/release/sparsefs /usr/local/bin/sparsefs 2>/dev/null || true
python3 -m unittest discover -s bench-scripts/tests -q
cargo test --release -- --test-threads=2
# The vendored fuser's unit tests, with the changes sparsefs made to it (the request
# threads' turn-taking, readdirplus node ids: vendor/fuser/SPARSEFS.md).
cargo test --release -q --manifest-path vendor/fuser/Cargo.toml --target-dir target/vendor-fuser --lib
