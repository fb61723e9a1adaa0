#!/usr/bin/env bash
# Installs what the tests need and runs the whole suite. Fails loudly on a missing tool.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --all-targets
