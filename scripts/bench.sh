#!/usr/bin/env bash
# weft against kernel TCP (CUBIC, Reno, BBR) and against itself on the same emulated paths,
# plus the shim's loopback throughput and the daemon's idle cost, in one run.
#
#   scripts/bench.sh            full run: 5 repeats, about 50 minutes
#   scripts/bench.sh --quick    1 repeat, under 10 minutes
#   scripts/bench.sh --smoke    CI smoke: 4 hops at 1 % loss (kernel and weft arms), the shim
#                               section and the idle section, about a minute
#   --cargo-profile NAME        build and run target/NAME instead of target/release (must be
#                               the first option; scripts/test.sh reuses its `ci` build)
#
# Extra options go to scripts/bench/bench.py (--help lists them), e.g. `--scenarios
# failover,fairness --arms cubic,weft-hbh` (add `rings` to that list to keep the rings section). Needs root, iproute2, iperf3 and /usr/bin/python3
# with matplotlib (Debian: iperf3 iproute2 python3-matplotlib). Builds the workspace in release
# mode first (netemu, msglat, weftd, weft, libweft.so). Results: bench-out/<time>-<profile>/
# {results.md,results.json,*.png,raw/,logs/}; bench-out/latest links to the newest.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ $EUID -ne 0 ]]; then
    echo "bench.sh: must run as root (network namespaces and TUN devices)" >&2
    exit 2
fi
for tool in ip ss iperf3 /usr/bin/python3; do
    command -v "$tool" >/dev/null || { echo "bench.sh: missing $tool" >&2; exit 2; }
done
/usr/bin/python3 -c 'import matplotlib' 2>/dev/null \
    || echo "bench.sh: python3-matplotlib missing: tables only, no plots" >&2

profile=release
if [[ "${1:-}" == "--cargo-profile" ]]; then
    [[ -n "${2:-}" ]] || { echo "bench.sh: --cargo-profile needs a name" >&2; exit 2; }
    profile=$2
    shift 2
fi
cargo build --profile "$profile" --quiet --workspace
export WEFT_BENCH_BIN="$PWD/target/$profile"
/usr/bin/python3 scripts/bench/stats.py >/dev/null

# bench.py stops everything it started and removes its namespaces on exit, Ctrl-C and
# SIGTERM; `netemu cleanup` below catches what a SIGKILLed run would leave.
status=0
if [[ " $* " == *" -h "* || " $* " == *" --help "* ]]; then
    exec /usr/bin/python3 scripts/bench/bench.py --help
fi
/usr/bin/python3 scripts/bench/bench.py "$@" || status=$?
# The rings section (shim to daemon, no emulator) runs unless --scenarios names others only.
scenarios=$(sed -nE 's/.*--scenarios[ =]([^ ]+).*/\1/p' <<<"$*")
if [[ -z "$scenarios" || ",$scenarios," == *",rings,"* ]]; then
    /usr/bin/python3 scripts/bench/rings.py $([[ " $* " == *" --smoke "* ]] && echo --smoke) \
        || status=$?
fi
# A driver killed outright: its emulator got SIGTERM from the kernel (--exit-with-parent) and
# is tearing down; give it time, then remove (killing what runs inside) whatever is left.
for _ in $(seq 50); do
    ip netns list 2>/dev/null | grep -qE '^wb[0-9]+' || break
    sleep 0.2
done
"$WEFT_BENCH_BIN/netemu" cleanup --orphans --family wb >/dev/null 2>&1 || true
"$WEFT_BENCH_BIN/netemu" cleanup --orphans >/dev/null 2>&1 || true
exit $status
