#!/usr/bin/env bash
# Throughput of unmodified programs through the shim: iperf3 over the overlay (two daemons, one
# clean hop, both ends under LD_PRELOAD) against iperf3 on kernel loopback, measured in the same
# run, interleaved, medians of REPEATS runs of SECONDS each. Prints the ratio; also written to
# bench-out/shim-throughput.txt.
#   scripts/bench-shim.sh [SECONDS] [REPEATS]
# (The netemu branch owns scripts/bench.sh; this is the shim's throughput arm, meant to be
# called from it.)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-5}"
repeats="${2:-3}"
for t in iperf3 python3; do
    command -v "$t" >/dev/null || { echo "bench-shim.sh: $t is required" >&2; exit 1; }
done

cargo build --release -q --workspace
bin="$PWD/target/release"
shim="$bin/libweft.so"
work="$(mktemp -d /tmp/weft-bench.XXXXXX)"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# A private 127.T.0.0/16 slice, claimed like the integration tests claim theirs.
mkdir -p /tmp/weft-tests
net=""
for t in $(seq 251 254); do
    exec {lock}>"/tmp/weft-tests/subnet-$t.lock"
    if flock -n "$lock"; then net="127.$t"; break; fi
    exec {lock}>&-
done
[ -n "$net" ] || { echo "bench-shim.sh: no free 127.T test subnet" >&2; exit 1; }

for n in 1 2; do
    peer=$((3 - n))
    "$bin/weftd" --listen "$net.0.$n:7470" --socket "$work/node$n.sock" --proxy-ip "$net.1.$n" \
        --neighbor "$net.0.$peer:7470" >"$work/node$n.log" 2>&1 &
    pids+=($!)
done
for n in 1 2; do
    for _ in $(seq 100); do
        "$bin/weft" --socket "$work/node$n.sock" status --json 2>/dev/null |
            python3 -c 'import json,sys; sys.exit(0 if json.load(sys.stdin)["routes"] else 1)' 2>/dev/null && break
        sleep 0.1
    done
done

port_overlay=$((20000 + RANDOM % 20000))
port_kernel=$((port_overlay + 1))
LD_PRELOAD="$shim" WEFT_SOCKET="$work/node2.sock" iperf3 -s -p "$port_overlay" >"$work/server-overlay.log" 2>&1 &
pids+=($!)
iperf3 -s -p "$port_kernel" >"$work/server-kernel.log" 2>&1 &
pids+=($!)
# The shimmed server registers its listener with node 2's daemon.
for _ in $(seq 100); do
    "$bin/weft" --socket "$work/node2.sock" status --json |
        python3 -c "import json,sys; sys.exit(0 if $port_overlay in json.load(sys.stdin)['listeners'] else 1)" 2>/dev/null && break
    sleep 0.1
done

bps() { python3 -c 'import json,sys; print(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"])'; }
overlay=()
kernel=()
for i in $(seq "$repeats"); do
    overlay+=("$(LD_PRELOAD="$shim" WEFT_SOCKET="$work/node1.sock" \
        iperf3 -c "$net.0.2" -p "$port_overlay" -t "$seconds" -J | bps)")
    kernel+=("$(iperf3 -c 127.0.0.1 -p "$port_kernel" -t "$seconds" -J | bps)")
    echo "run $i: overlay ${overlay[-1]} bit/s, kernel ${kernel[-1]} bit/s" >&2
done

mkdir -p bench-out
python3 - "$seconds" "$repeats" "${overlay[*]}" "${kernel[*]}" <<'EOF' | tee bench-out/shim-throughput.txt
import statistics, sys
seconds, repeats = sys.argv[1], sys.argv[2]
overlay = [float(x) for x in sys.argv[3].split()]
kernel = [float(x) for x in sys.argv[4].split()]
o, k = statistics.median(overlay), statistics.median(kernel)
print(f"iperf3 TCP, {seconds} s runs, median of {repeats}, interleaved")
print(f"  kernel loopback            {k / 1e9:8.2f} Gbit/s")
print(f"  overlay, 1 hop, via shim   {o / 1e9:8.2f} Gbit/s")
print(f"  ratio overlay / kernel     {o / k:8.3f}")
EOF
