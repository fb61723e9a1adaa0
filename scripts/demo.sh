#!/usr/bin/env bash
# Builds weft, starts five daemons on 127.0.0.1-5 with emulated lossy links, moves data through
# the overlay, cuts a link under traffic, and prints what happened. No root needed.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "building (release)"
cargo build --release -q --workspace
bin="$root/target/release"
weft="$bin/weft"
topo="$root/scripts/overlays/demo.topo"
dir="$(mktemp -d /tmp/weft-demo.XXXXXX)"
cleanup() { "$weft" overlay down "$topo" --dir "$dir/overlay" >/dev/null 2>&1 || true; rm -rf "$dir"; }
trap cleanup EXIT INT TERM

say "starting 5 daemons: $(grep -v '^#' "$topo" | awk '{printf "%s-%s ", $1, $2}')(2% loss on every link)"
"$weft" overlay up "$topo" --dir "$dir/overlay"
sock() { echo "$dir/overlay/node$1.sock"; }

say "node 1's view: neighbours and routes"
"$weft" --socket "$(sock 1)" status

say "a reliable session 1 -> 5 over three lossy hops: 8 MB, checked end to end"
head -c 8000000 /dev/urandom > "$dir/in.bin"
"$weft" --socket "$(sock 5)" listen --port 9000 > "$dir/out.bin" < /dev/null &
listener=$!
sleep 0.3
start=$(date +%s%N)
"$weft" --socket "$(sock 1)" cat 127.0.0.5:9000 < "$dir/in.bin"
wait $listener
end=$(date +%s%N)
in_sum=$(sha256sum < "$dir/in.bin" | cut -c1-16)
out_sum=$(sha256sum < "$dir/out.bin" | cut -c1-16)
echo "sent $in_sum, received $out_sum ($(stat -c %s "$dir/out.bin") bytes) in $(( (end - start) / 1000000 )) ms"
[ "$in_sum" = "$out_sum" ] && echo "=> identical, although every link dropped 2% of packets"

say "best-effort datagrams 1 -> 5 while the link 1-2 is cut mid-stream"
"$weft" --socket "$(sock 5)" recv --port 9100 > "$dir/recv.txt" &
receiver=$!
sleep 0.3
"$weft" --socket "$(sock 1)" send --to 127.0.0.5:9100 --count 300 --interval 10ms &
sender=$!
sleep 1.5
cut_mono=$(python3 -c 'import time; print(time.monotonic_ns())')
"$weft" --socket "$(sock 1)" link cut 127.0.0.2
wait $sender
sleep 0.5
kill $receiver 2>/dev/null || true
python3 - "$dir/recv.txt" "$cut_mono" <<'PY'
import sys
rows = []
for line in open(sys.argv[1]):
    f = line.split()
    if len(f) >= 5 and f[3].startswith("seq="):
        rows.append((int(f[0]), int(f[3][4:])))
cut = int(sys.argv[2])
times = sorted(t for t, _ in rows)
gap = max(((b - a), b) for a, b in zip(times, times[1:]) if b > cut)
print(f"received {len(rows)} of 300 datagrams (best effort over 2%-loss links)")
print(f"longest silence after the cut: {gap[0] / 1e6:.0f} ms; traffic resumed {(gap[1] - cut) / 1e6:.0f} ms after the cut")
PY
echo "node 1 now routes to 5 via: $("$weft" --socket "$(sock 1)" status --json | python3 -c 'import json,sys; d=json.load(sys.stdin); print(" > ".join(next(r["path"] for r in d["routes"] if r["dst"]=="127.0.0.5")))')"
"$weft" --socket "$(sock 1)" link heal 127.0.0.2

say "done: tearing the overlay down"
