#!/usr/bin/env python3
"""weftd at idle: CPU and control traffic of a daemon with N neighbours (default 10).

Starts N+1 daemons on 127.0.0.1..N+1 in a star (node 1 in the middle) with `weft overlay up`,
lets them settle, then measures node 1 over an interval: CPU from /proc/<pid>/schedstat
(/proc/stat under-counts on this VM) and bytes sent per neighbour from its status counters.
Prints one markdown table. Usage: scripts/bench/idle.py [--neighbours 10] [--seconds 20]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lab import schedstat_ns as cpu_ns  # noqa: E402  every thread of the process


def status(weft, sock):
    out = subprocess.run([weft, "--socket", sock, "status", "--json"], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def measure(bin_dir, neighbours=10, seconds=20.0, settle=3.0):
    """Node 1's CPU (% of one core) and per-neighbour control traffic over `seconds`."""
    weft = os.path.join(bin_dir, "weft")
    with tempfile.TemporaryDirectory(prefix="weft-idle-") as d:
        topo = os.path.join(d, "star.toml")
        with open(topo, "w") as f:
            names = [f"n{n}" for n in range(1, neighbours + 2)]
            f.write('name = "star"\nnodes = [' + ", ".join(f'"{x}"' for x in names) + "]\n")
            for x in names[1:]:
                f.write(f'[[link]]\nbetween = ["n1", "{x}"]\n')
        state = os.path.join(d, "overlay")
        subprocess.run([weft, "overlay", "up", topo, "--dir", state], check=True,
                       stdout=subprocess.DEVNULL)
        try:
            sock = os.path.join(state, "node1.sock")
            with open(os.path.join(state, "pids")) as f:
                pids = dict(line.split() for line in f)
            pid = int(pids["1"])
            time.sleep(settle)
            s0, c0, t0 = status(weft, sock), cpu_ns(pid), time.monotonic()
            time.sleep(seconds)
            s1, c1, t1 = status(weft, sock), cpu_ns(pid), time.monotonic()
        finally:
            subprocess.run([weft, "overlay", "down", topo, "--dir", state],
                           stdout=subprocess.DEVNULL)
    secs = t1 - t0
    per = []
    for n0, n1 in zip(s0["neighbors"], s1["neighbors"]):
        per.append(((n1["bytes_out"] - n0["bytes_out"]) / secs,
                    (n1["packets_out"] - n0["packets_out"]) / secs))
    return {
        "neighbours": neighbours,
        "up": sum(1 for n in s1["neighbors"] if n["state"] == "up"),
        "seconds": secs,
        "cpu_pct": (c1 - c0) / 1e9 / secs * 100,
        "bytes_per_s_max": max(b for b, _ in per),
        "bytes_per_s_mean": sum(b for b, _ in per) / len(per),
        "packets_per_s_mean": sum(p for _, p in per) / len(per),
    }


def table(r):
    return "\n".join([
        f"| weftd at idle, {r['neighbours']} neighbours ({r['up']} up), {r['seconds']:.0f} s "
        "| value |",
        "|---|---|",
        f"| CPU (schedstat) | {r['cpu_pct']:.2f} % of one core |",
        f"| control traffic sent per neighbour | {r['bytes_per_s_max']:.0f} B/s max, "
        f"{r['bytes_per_s_mean']:.0f} B/s mean (UDP payload) |",
        f"| packets sent per neighbour | {r['packets_per_s_mean']:.1f} /s |",
    ])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--neighbours", type=int, default=10)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "release"))
    a = ap.parse_args()
    print(table(measure(a.bin, a.neighbours, a.seconds)))


if __name__ == "__main__":
    sys.exit(main())
