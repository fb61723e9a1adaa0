#!/usr/bin/env python3
"""Latency under loss, hop-by-hop vs end-to-end-only recovery, over the same overlay chain.

Five daemons on 127.0.0.1..5 (no root, no namespaces), 4 hops of 20 ms with 2 % loss per link
each way (the daemons' receive-side emulation); msglat, unmodified, under `weft run`, sends
1 KB messages at a fixed rate over a session (TCP through the shim) from node 1 to node 5.
Both modes run in one invocation, alternating for --repeats rounds; prints one markdown table.
The default rate (20/s) stays below what end-to-end recovery sustains on this path (TCP-like
windows at 7.8 % path loss carry about 40 kB/s), so the comparison measures recovery, not
queueing. Usage: scripts/bench/latency_local.py [--seconds 30] [--rate 20] [--size 1024] [--repeats 1]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SPEC = "chain:5@delay=20ms,loss=2%"


def run_mode(bin_dir, mode, seconds, rate, size, port):
    weft = os.path.join(bin_dir, "weft")
    msglat = os.path.join(bin_dir, "msglat")
    with tempfile.TemporaryDirectory(prefix="weft-lat-") as d:
        state = os.path.join(d, "overlay")
        subprocess.run([weft, "overlay", "up", SPEC, "--dir", state, "--recovery", mode], check=True, stdout=subprocess.DEVNULL)
        try:
            out = os.path.join(d, "recv.json")
            env5 = dict(os.environ, WEFT_SOCKET=os.path.join(state, "node5.sock"))
            env1 = dict(os.environ, WEFT_SOCKET=os.path.join(state, "node1.sock"))
            recv = subprocess.Popen(
                [weft, "run", "--", msglat, "recv", "--listen", f"127.0.0.5:{port}", "--warmup-ms", "3000", "--json", out],
                env=env5, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)
            subprocess.run(
                [weft, "run", "--", msglat, "send", "--to", f"127.0.0.5:{port}", "--rate", str(rate), "--size", str(size),
                 "--duration-s", str(seconds)],
                env=env1, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            recv.wait(timeout=120)
            with open(out) as f:
                return json.load(f)
        finally:
            subprocess.run([weft, "overlay", "down", SPEC, "--dir", state], stdout=subprocess.DEVNULL)


def measure(bin_dir, seconds=30, rate=20, size=1024, repeats=1, port_base=9500, log=None):
    """Both modes, alternating for `repeats` rounds: {"hop-by-hop": [...], "end-to-end": [...],
    "params": {...}}, each entry msglat's receiver JSON."""
    results = {"hop-by-hop": [], "end-to-end": [],
               "params": dict(seconds=seconds, rate=rate, size=size, repeats=repeats)}
    for r in range(repeats):
        for i, mode in enumerate(["hop-by-hop", "end-to-end"] if r % 2 == 0 else ["end-to-end", "hop-by-hop"]):
            if log:
                log(f"round {r + 1}/{repeats}: {mode}")
            results[mode].append(run_mode(bin_dir, mode, seconds, rate, size, port_base + r * 2 + i))
    return results


def table(results):
    """Markdown lines: hop-by-hop vs end-to-end-only side by side, medians over rounds."""
    p = results["params"]

    def med(mode, key):
        vals = [x["latency"].get(key) if key != "jitter_ms" else x.get(key) for x in results[mode]]
        vals = [v for v in vals if v is not None]
        return statistics.median(vals) if vals else float("nan")

    keys = [("p50_ms", "p50 (ms)"), ("p90_ms", "p90 (ms)"), ("p99_ms", "p99 (ms)"), ("max_ms", "max (ms)"), ("jitter_ms", "RFC 3550 jitter (ms)")]
    lines = [f"| {p['size']} B at {p['rate']}/s, 4 hops × (20 ms, 2 % loss each way), {p['seconds']} s × {p['repeats']} | hop-by-hop | end-to-end-only | ratio e2e / hbh |",
             "|---|---|---|---|"]
    for key, label in keys:
        h, e = med("hop-by-hop", key), med("end-to-end", key)
        lines.append(f"| one-way {label} | {h:.1f} | {e:.1f} | {e / h:.2f}× |" if h else f"| {label} | {h} | {e} | |")
    row = lambda key: [sum(x.get(key, 0) for x in results[m]) for m in ("hop-by-hop", "end-to-end")]
    sent, received, lost = row("sent"), row("received"), row("lost")
    lines.append(f"| messages received / sent (lost) | {received[0]} / {sent[0]} ({lost[0]}) | {received[1]} / {sent[1]} ({lost[1]}) | |")
    return lines


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=30)
    ap.add_argument("--rate", type=int, default=20)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "release"))
    a = ap.parse_args()
    results = measure(a.bin, a.seconds, a.rate, a.size, a.repeats,
                      log=lambda m: print(f"  {m} ...", file=sys.stderr, flush=True))
    print()
    print("\n".join(table(results)))


if __name__ == "__main__":
    sys.exit(main())
