#!/usr/bin/env bash
# Builds weft, starts five daemons on 127.0.0.1-5 with emulated lossy links, moves data through
# the overlay, runs unmodified programs over it (iperf3, curl against python's http.server,
# a multicast group), cuts a link under traffic, and prints what happened. No root needed,
# except to install iperf3 and curl if they are missing (as scripts/test.sh does).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

python=/usr/bin/python3   # dynamically linked, so the shim loads (pyenv's python3 is a script)
[ -x "$python" ] || python=$(command -v python3) || { echo "demo.sh: python3 is required" >&2; exit 1; }
missing=()
for t in iperf3 curl; do command -v "$t" >/dev/null 2>&1 || missing+=("$t"); done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]} (the unmodified programs of this demo)"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo -n"
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null \
        || { echo "demo.sh: could not install ${missing[*]}; install them and run again" >&2; exit 1; }
fi

say "building (release)"
cargo build --release -q --workspace
bin="$root/target/release"
weft="$bin/weft"
topo="$root/scripts/overlays/demo.toml"
dir="$(mktemp -d /tmp/weft-demo.XXXXXX)"
cleanup() { kill $(jobs -p) 2>/dev/null || true; "$weft" overlay down "$topo" --dir "$dir/overlay" >/dev/null 2>&1 || true; rm -rf "$dir"; }
trap cleanup EXIT INT TERM

say "starting 5 daemons: $(grep '^between' "$topo" | tr -d 'n"[],' | awk '{printf "%s-%s ", $3, $4}')(2% loss on every link)"
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

# Unmodified programs: `weft run` preloads the shim; WEFT_SOCKET picks the node's daemon.
# (Background jobs call it inline, so that $! is the program itself: `weft run` execs it.)
on() { local n=$1; shift; WEFT_SOCKET="$(sock "$n")" "$weft" run -- "$@"; }

say "unmodified iperf3 over the overlay: server on node 5, client on node 1 (3 lossy hops)"
WEFT_SOCKET="$(sock 5)" "$weft" run -- iperf3 -s -1 -p 5201 > "$dir/iperf3-server.txt" 2>&1 &
server=$!
for _ in $(seq 50); do grep -q "Server listening" "$dir/iperf3-server.txt" && break; sleep 0.1; done
on 1 iperf3 -c 127.0.0.5 -p 5201 -t 3 > "$dir/iperf3-client.txt" 2>&1 || cat "$dir/iperf3-client.txt"
wait $server || true
grep -E "Accepted connection" "$dir/iperf3-server.txt" | sed 's/^/server: /'
grep -E "sender|receiver" "$dir/iperf3-client.txt" | sed 's/^/client: /'
echo "=> iperf3 believes it used TCP to 127.0.0.5; the bytes crossed the overlay as a weft session"

say "unmodified curl downloads 20 MB from python's http.server over the overlay"
mkdir -p "$dir/www"
head -c 20000000 /dev/urandom > "$dir/www/file.bin"
WEFT_SOCKET="$(sock 5)" "$weft" run -- "$python" -u -m http.server 8080 --bind 127.0.0.5 --directory "$dir/www" > "$dir/http.txt" 2>&1 &
http=$!
for _ in $(seq 50); do grep -q "Serving HTTP" "$dir/http.txt" 2>/dev/null && break; sleep 0.2; done
on 1 curl -sS -o "$dir/got.bin" -w 'curl: %{size_download} bytes in %{time_total} s\n' \
    http://127.0.0.5:8080/file.bin || { echo "http.server said:"; cat "$dir/http.txt"; exit 1; }
kill $http 2>/dev/null || true
wait $http 2>/dev/null || true
[ "$(sha256sum < "$dir/www/file.bin")" = "$(sha256sum < "$dir/got.bin")" ] \
    && echo "=> sha256 identical"

say "multicast without multicast routers: 3 receivers join 239.1.2.3, node 1 sends"
cat > "$dir/mrecv.py" <<'PY'
import socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
# Joined before bind: the shim then gives this socket a delivery address of its own, so the
# three receivers sharing port 5000 on this one machine each get every copy.
s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
             struct.pack("4s4s", socket.inet_aton("239.1.2.3"), socket.inet_aton("0.0.0.0")))
s.bind(("0.0.0.0", 5000))
s.settimeout(5)
got = []
try:
    while len(got) < 5:
        data, src = s.recvfrom(2048)
        got.append(data.decode())
except socket.timeout:
    pass
print(f"node {sys.argv[1]}: {len(got)} datagrams from the group: {', '.join(got)}")
PY
receivers=()
for n in 3 4 5; do
    WEFT_SOCKET="$(sock "$n")" "$weft" run -- "$python" "$dir/mrecv.py" "$n" &
    receivers+=($!)
done
sleep 1.5   # the joins flood through the overlay
on 1 "$python" -c '
import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 8)
for i in range(5):
    s.sendto(f"hello-{i}".encode(), ("239.1.2.3", 5000))
    time.sleep(0.05)
'
for r in "${receivers[@]}"; do wait "$r" || true; done
"$weft" --socket "$(sock 1)" status --json | "$python" -c '
import json, sys
c = json.load(sys.stdin).get("multicast_counters", {})
sent = c.get("copies_sent", "?")
print(f"node 1 put {sent} copies on its links for 5 datagrams to 3 members (one per tree branch)")'

say "best-effort datagrams 1 -> 5 while the link 1-2 is cut mid-stream"
"$weft" --socket "$(sock 5)" recv --port 9100 --time mono > "$dir/recv.txt" &
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
