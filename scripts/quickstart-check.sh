#!/usr/bin/env bash
# Runs every ```sh block of docs/quickstart.md, in order, as written (CI runs this so the
# quick start keeps working).
set -euo pipefail
cd "$(dirname "$0")/.."
script=$(awk '/^```sh$/{on=1; next} /^```$/{on=0} on' docs/quickstart.md)
echo "$script" | bash -euxo pipefail
