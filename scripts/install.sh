#!/usr/bin/env bash
# Installs what sparsefs needs to run (fuse3) and the sparsefs binary into /usr/local/bin.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v fusermount3 >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q && apt-get install -y -q fuse3
fi
cargo build --release
install -m 0755 target/release/sparsefs /usr/local/bin/sparsefs
echo "installed /usr/local/bin/sparsefs ($(sparsefs --version))"
# Man page and shell completions.
mkdir -p /usr/local/share/man/man8 /usr/share/bash-completion/completions
sparsefs man > /usr/local/share/man/man8/sparsefs.8
sparsefs completions bash > /usr/share/bash-completion/completions/sparsefs
echo "installed man page (man 8 sparsefs) and bash completions"
