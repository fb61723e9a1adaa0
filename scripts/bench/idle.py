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


def cpu_ns(pid):
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0])


def status(weft, sock):
    out = subprocess.run([weft, "--socket", sock, "status", "--json"], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--neighbours", type=int, default=10)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "release"))
    a = ap.parse_args()
    weft = os.path.join(a.bin, "weft")
    with tempfile.TemporaryDirectory(prefix="weft-idle-") as d:
        topo = os.path.join(d, "star.topo")
        with open(topo, "w") as f:
            for n in range(2, a.neighbours + 2):
                f.write(f"1 {n}\n")
        state = os.path.join(d, "overlay")
        subprocess.run([weft, "overlay", "up", topo, "--dir", state], check=True, stdout=subprocess.DEVNULL)
        try:
            sock = os.path.join(state, "node1.sock")
            pids = dict(l.split() for l in open(os.path.join(state, "pids")))
            pid = int(pids["1"])
            time.sleep(3)
            s0, c0, t0 = status(weft, sock), cpu_ns(pid), time.monotonic()
            time.sleep(a.seconds)
            s1, c1, t1 = status(weft, sock), cpu_ns(pid), time.monotonic()
            secs = t1 - t0
            cpu = (c1 - c0) / 1e9 / secs * 100
            per = []
            for n0, n1 in zip(s0["neighbors"], s1["neighbors"]):
                per.append(((n1["bytes_out"] - n0["bytes_out"]) / secs, (n1["packets_out"] - n0["packets_out"]) / secs))
            ups = sum(1 for n in s1["neighbors"] if n["state"] == "up")
            print(f"| weftd at idle, {a.neighbours} neighbours ({ups} up), {secs:.0f} s | value |")
            print("|---|---|")
            print(f"| CPU (schedstat) | {cpu:.2f} % of one core |")
            print(f"| control traffic sent per neighbour | {max(b for b, _ in per):.0f} B/s max, {sum(b for b, _ in per) / len(per):.0f} B/s mean (UDP payload) |")
            print(f"| packets sent per neighbour | {sum(p for _, p in per) / len(per):.1f} /s |")
        finally:
            subprocess.run([weft, "overlay", "down", topo, "--dir", state], stdout=subprocess.DEVNULL)


if __name__ == "__main__":
    sys.exit(main())
