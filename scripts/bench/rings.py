"""Shared-memory rings against the socketpair (issue 5): app -> local daemon -> app, a session
from a node to itself (one daemon, no network), both programs under the shim, with
WEFT_RINGS=1 and WEFT_RINGS=0 interleaved. Throughput at 1400-byte and 64 KiB writes,
messages/s at 64-byte writes, and CPU seconds per GB of sender + receiver + daemon from
/proc/<pid>/schedstat. Prints a markdown table and writes it (and the raw runs as JSON) to
--out.

    scripts/bench/rings.py [--bin target/release] [--seconds 3] [--repeats 3] [--smoke]
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
SIZES = [(64, "msgs"), (1400, "bytes"), (65536, "bytes")]
MODES = [("socketpair", "0"), ("rings", "1")]


sys.path.insert(0, str(HERE))
from lab import BenchError, schedstat_ns  # noqa: E402
from loopback import claim_subnet  # noqa: E402


def wait(predicate, what, limit=20.0):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise BenchError(what)


def median(xs):
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return None
    m = len(xs) // 2
    return xs[m] if len(xs) % 2 else (xs[m - 1] + xs[m]) / 2


class Bench:
    def __init__(self, args, work):
        self.args = args
        self.work = work
        self.bin = args.bin
        self.procs = []

    def compile(self):
        exe = self.work / "ringbench"
        subprocess.run(["cc", "-O2", "-Wall", "-Werror", "-o", str(exe),
                        str(HERE / "ringbench.c")], check=True)
        return exe

    def status(self):
        out = subprocess.run([str(self.bin / "weft"), "--socket", self.socket, "status", "--json"],
                             capture_output=True, text=True, timeout=10)
        return json.loads(out.stdout) if out.returncode == 0 else None

    def start_daemon(self, net):
        self.node = f"{net}.0.1"
        self.socket = str(self.work / "weftd.sock")
        log = open(self.work / "weftd.log", "w")
        key = self.work / "weftd.key"
        subprocess.run([str(self.bin / "weft"), "keygen", "--force", str(key)], check=True,
                       capture_output=True)
        argv = [str(self.bin / "weftd"), "--listen", f"{self.node}:7470", "--socket", self.socket,
                "--proxy-ip", f"{net}.1.1", "--log", "warn", "--key", str(key)]
        self.daemon = subprocess.Popen(argv, stdout=log, stderr=log)
        self.procs.append(self.daemon)
        wait(lambda: self.status() is not None, "the daemon did not answer")

    def shimmed(self, argv, rings, out):
        env = dict(os.environ, LD_PRELOAD=str(self.bin / "libweft.so"), WEFT_SOCKET=self.socket,
                   WEFT_RINGS=rings)
        env.pop("WEFT_LOG", None)
        p = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.PIPE, text=True)
        self.procs.append(p)
        return p

    def one(self, exe, size, rings, port):
        recv_out = tempfile.TemporaryFile(mode="w+", dir=self.work)
        send_out = tempfile.TemporaryFile(mode="w+", dir=self.work)
        receiver = self.shimmed([str(exe), "recv", str(port)], rings, recv_out)
        wait(lambda: port in (self.status() or {}).get("listeners", []),
             "the receiver's listener was not registered")
        before = self.status()["rings"]["attached"]
        daemon_cpu = schedstat_ns(self.daemon.pid)
        sender = self.shimmed([str(exe), "send", self.node, str(port), str(size),
                               str(self.args.seconds)], rings, send_out)
        limit = self.args.seconds + 60
        for p, name in ((sender, "sender"), (receiver, "receiver")):
            try:
                p.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                raise BenchError(f"{name} ({size} B, WEFT_RINGS={rings}) did not finish")
            if p.returncode != 0:
                raise BenchError(f"{name} failed: {p.stderr.read()}")
        daemon_cpu = schedstat_ns(self.daemon.pid) - daemon_cpu
        attached = self.status()["rings"]["attached"] - before
        if (attached > 0) != (rings == "1"):
            raise BenchError(f"WEFT_RINGS={rings} but {attached} ring streams were attached")
        recv_out.seek(0)
        send_out.seek(0)
        r = json.loads(recv_out.read())
        s = json.loads(send_out.read())
        if r["bytes"] != s["bytes"] or r["seconds"] <= 0:
            raise BenchError(f"sent {s['bytes']} bytes, received {r['bytes']}")
        cpu_ns = r["cpu_ns"] + s["cpu_ns"] + daemon_cpu
        return {"size": size, "rings": rings == "1", "bytes": r["bytes"], "writes": s["writes"],
                "seconds": r["seconds"], "bps": r["bytes"] * 8 / r["seconds"],
                "msgs_per_s": s["writes"] / r["seconds"],
                "cpu_s_per_gb": cpu_ns / 1e9 / (r["bytes"] / 1e9),
                "cpu_s": {"sender": s["cpu_ns"] / 1e9, "receiver": r["cpu_ns"] / 1e9,
                          "daemon": daemon_cpu / 1e9}}

    def run(self):
        exe = self.compile()
        t, lock = claim_subnet()
        try:
            self.start_daemon(f"127.{t}")
            runs = []
            port = 24000 + os.getpid() % 20000
            for _ in range(self.args.repeats):
                for size, _ in SIZES:
                    for _, rings in MODES:
                        port += 1
                        runs.append(self.one(exe, size, rings, port))
            return runs
        finally:
            for p in self.procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
                    try:
                        p.wait(timeout=3)
                    except subprocess.TimeoutExpired:
                        p.kill()
            lock.close()


def table(runs, seconds, repeats):
    def med(size, rings, key):
        return median([r[key] for r in runs if r["size"] == size and r["rings"] == rings])

    lines = [f"Rings vs socketpair, app -> local daemon -> app (session to itself), "
             f"{seconds} s per run, median of {repeats}:", "",
             "| writes | metric | socketpair | rings | rings / socketpair |",
             "|---|---|---|---|---|"]
    for size, kind in SIZES:
        if kind == "msgs":
            key, unit, scale = "msgs_per_s", "messages/s", 1e6
            fmt = "{:.2f} M"
        else:
            key, unit, scale = "bps", "throughput", 1e9
            fmt = "{:.2f} Gbit/s"
        plain, ring = med(size, False, key), med(size, True, key)
        ratio = f"{ring / plain:.2f}x" if plain and ring else "-"
        lines.append(f"| {size} B | {unit} | {fmt.format(plain / scale)} | "
                     f"{fmt.format(ring / scale)} | {ratio} |")
        plain, ring = med(size, False, "cpu_s_per_gb"), med(size, True, "cpu_s_per_gb")
        lines.append(f"| {size} B | CPU s/GB (sender+receiver+daemon) | {plain:.2f} | "
                     f"{ring:.2f} | {ring / plain:.2f}x |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", type=Path, default=Path(os.environ.get(
        "WEFT_BENCH_BIN", ROOT / "target" / "release")))
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--smoke", action="store_true", help="1 repeat of 1 s (CI)")
    ap.add_argument("--out", type=Path, help="folder for rings.md and rings.json "
                    "(default: bench-out/latest if it exists)")
    args = ap.parse_args()
    if args.smoke:
        args.seconds, args.repeats = 1.0, 1
    for f in ("weftd", "weft", "libweft.so"):
        if not (args.bin / f).exists():
            print(f"rings.py: {args.bin / f} is missing (build the workspace)", file=sys.stderr)
            return 2
    out = args.out or (ROOT / "bench-out" / "latest")
    with tempfile.TemporaryDirectory(prefix="weft-rings-") as work:
        try:
            runs = Bench(args, Path(work)).run()
        except BenchError as e:
            print(f"rings.py: {e}", file=sys.stderr)
            return 1
    text = table(runs, args.seconds, args.repeats)
    print(text)
    if out.is_dir():
        (out / "rings.md").write_text(text + "\n")
        (out / "rings.json").write_text(json.dumps(runs, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
