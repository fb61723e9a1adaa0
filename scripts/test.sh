#!/usr/bin/env bash
# Installs what the tests need, then builds and runs the whole suite. Any missing tool is a
# failure, never a silent skip. Runs unattended (no standard input needed).
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(iperf3 iperf socat netcat-openbsd ncat curl python3 iproute2 gcc ssmping udpcast python3-zmq)
tools=(iperf3 iperf socat nc ncat curl python3 ip cc ssmping ssmpingd asmping udp-sender udp-receiver)

missing=()
for t in "${tools[@]}"; do command -v "$t" >/dev/null 2>&1 || missing+=("$t"); done
if [ ${#missing[@]} -gt 0 ]; then
    echo "test.sh: installing packages for: ${missing[*]}"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo -n"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
fi
# The ZeroMQ epgm:// test needs the system Python's zmq, built with OpenPGM.
zmq_ok() { /usr/bin/python3 -c "import zmq, sys; sys.exit(0 if zmq.has('pgm') else 1)" >/dev/null 2>&1; }
if [ ${#missing[@]} -eq 0 ] && ! zmq_ok; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo -n"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends python3-zmq >/dev/null
fi
for t in "${tools[@]}"; do
    command -v "$t" >/dev/null 2>&1 || { echo "test.sh: required tool '$t' is still missing" >&2; exit 1; }
done
zmq_ok || { echo "test.sh: /usr/bin/python3 cannot import zmq with pgm (package python3-zmq)" >&2; exit 1; }

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -q -- -D warnings

# The simulations and throughput tests need an optimised build; the `ci` profile keeps debug
# assertions and overflow checks on.
cargo build --profile ci --workspace --all-targets
cargo test --profile ci --workspace --no-fail-fast

# The benchmark's smoke run: every arm (kernel CUBIC/Reno/BBR, weft hop-by-hop and end-to-end)
# over the namespace emulator, the shim on loopback and the idle daemon, on the build above.
# It fails when an arm cannot measure or the emulator misbehaves; missed goals are figures.
scripts/bench.sh --cargo-profile ci --smoke --no-plots --out target/bench-smoke
