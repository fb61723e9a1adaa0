#!/usr/bin/env bash
# Start, stop or inspect a local overlay of weftd daemons on 127.0.0.1..N (no root needed):
#   scripts/overlay.sh up diamond-tail            scripts/overlay.sh up scripts/overlays/demo.toml
#   scripts/overlay.sh status diamond-tail        scripts/overlay.sh down diamond-tail
# Topologies: chain:N ring:N diamond diamond-tail grid:RxC random:N[:SEED], each optionally
# @SPEC (e.g. chain:5@delay=20ms,loss=2%), or a file of "A B [link spec]" lines.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
weft="$root/target/release/weft"
if [ ! -x "$weft" ] || [ ! -x "$root/target/release/weftd" ]; then
    (cd "$root" && cargo build --release -q -p weft-daemon)
fi
exec "$weft" overlay "$@"
