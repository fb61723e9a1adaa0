"""The shim's throughput on one machine, no emulator (issue 4): iperf3 over the overlay (two
daemons on a private 127.T.0.0/16 slice, one clean hop, both ends under the shim) against
iperf3 on kernel loopback, interleaved, with CPU seconds per GB of each side from schedstat."""

import fcntl
import json
import subprocess
import time
from pathlib import Path

from lab import BenchError, schedstat_ns
from stats import median

LOCK_DIR = Path("/tmp/weft-tests")


def claim_subnet():
    """A 127.T.0.0/16 slice nobody else (tests, other benches) holds: (T, lock file)."""
    LOCK_DIR.mkdir(parents=True, exist_ok=True)
    for t in range(251, 255):
        f = open(LOCK_DIR / f"subnet-{t}.lock", "w")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return t, f
        except OSError:
            f.close()
    raise BenchError("no free 127.T test subnet (251-254)")


def shim_throughput(lab, bin_dir, seconds, repeats, port):
    weftd, weft = str(bin_dir / "weftd"), str(bin_dir / "weft")
    t, lock = claim_subnet()
    net = f"127.{t}"
    work = lab.out / "shim"
    work.mkdir(exist_ok=True)
    sockets = {n: str(work / f"node{n}.sock") for n in (1, 2)}
    procs = []

    def status(n):
        out = subprocess.run([weft, "--socket", sockets[n], "status", "--json"],
                             capture_output=True, text=True, timeout=10)
        return json.loads(out.stdout) if out.returncode == 0 else None

    def wait(predicate, what):
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.05)
        raise BenchError(f"shim section: {what}")

    def shimmed(n, argv):
        return [weft, "run", "--socket", sockets[n], "--", *argv]

    try:
        daemons = []
        keys = {n: work / f"node{n}.key" for n in (1, 2)}
        public = {n: subprocess.run([weft, "keygen", "--force", str(keys[n])], check=True,
                                    capture_output=True, text=True).stdout.strip() for n in (1, 2)}
        for n in (1, 2):
            argv = [weftd, "--listen", f"{net}.0.{n}:7470", "--socket", sockets[n],
                    "--proxy-ip", f"{net}.1.{n}", "--key", str(keys[n]),
                    "--neighbor", f"{net}.0.{3 - n}:7470/key={public[3 - n]}"]
            daemons.append(lab.spawn(argv, f"shim-weftd-{n}"))
        procs += daemons
        wait(lambda: all((status(n) or {}).get("routes") for n in (1, 2)), "daemons not routed")
        servers = {
            "overlay": lab.spawn(shimmed(2, ["iperf3", "-s", "-p", str(port)]), "shim-iperf3-s"),
            "kernel": lab.spawn(["iperf3", "-s", "-p", str(port + 1)], "kernel-iperf3-s"),
        }
        procs += servers.values()
        wait(lambda: port in (status(2) or {}).get("listeners", []), "listener not registered")
        wait(lambda: subprocess.run(["ss", "-Htln", f"sport = :{port + 1}"], capture_output=True,
                                    text=True).stdout.strip(), "kernel iperf3 not listening")

        def one(kind):
            overlay = kind == "overlay"
            server = servers[kind]
            argv = ["iperf3", "-c", f"{net}.0.2" if overlay else "127.0.0.1",
                    "-p", str(port if overlay else port + 1), "-t", str(seconds), "-J"]
            cpu_before = schedstat_ns(server.pid) + (
                sum(schedstat_ns(d.pid) for d in daemons) if overlay else 0)
            json_path = lab.log_path(f"shim-{kind}-iperf3.json")
            with open(json_path, "w") as out:
                client = lab.spawn(shimmed(1, argv) if overlay else argv,
                                   f"shim-{kind}-iperf3-c", stdout=out)
                _, client_cpu = lab.finish(client, timeout=seconds + 60)
            cpu = client_cpu + schedstat_ns(server.pid) + (
                sum(schedstat_ns(d.pid) for d in daemons) if overlay else 0) - cpu_before
            try:
                received = json.loads(json_path.read_text())["end"]["sum_received"]
            except (OSError, json.JSONDecodeError, KeyError, TypeError):
                return None
            return {"bps": received["bits_per_second"], "bytes": received["bytes"],
                    "cpu_s_per_gb": cpu / received["bytes"] if received["bytes"] else None}

        runs = {"overlay": [], "kernel": []}
        for _ in range(repeats):
            for kind in runs:
                r = one(kind)
                if r:
                    runs[kind].append(r)
        o = median([r["bps"] for r in runs["overlay"]])
        k = median([r["bps"] for r in runs["kernel"]])
        return {"seconds": seconds, "repeats": repeats, "runs": runs,
                "overlay_bps": o, "kernel_bps": k, "ratio": o / k if o and k else None,
                "overlay_cpu_s_per_gb": median([r["cpu_s_per_gb"] for r in runs["overlay"]]),
                "kernel_cpu_s_per_gb": median([r["cpu_s_per_gb"] for r in runs["kernel"]])}
    finally:
        for p in procs:
            lab.stop(p, grace=2.0)
        lock.close()
