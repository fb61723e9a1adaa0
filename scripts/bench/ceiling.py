"""The emulator's ceiling: what kernel TCP reaches through the floor of netemu's design (one
thread moving packets between two TUN devices, no model: tunfwd.c), so that netemu's clean
figures can be read against what this machine allows, and not only against figures measured
elsewhere."""

import json
import os
import subprocess
import time
from pathlib import Path

from lab import RELEASE, schedstat_ns

HERE = Path(__file__).resolve().parent

ADDR_A, ADDR_B = "10.99.0.1", "10.99.0.2"


def steering_cpus():
    """CPUs for receive steering when the emulator is pinned to CPU 0, or None on one CPU."""
    n = os.cpu_count() or 1
    if n < 2:
        return None
    return "1" if n == 2 else f"1-{n - 1}"


def build_forwarder(work):
    exe = work / "tunfwd"
    subprocess.run(["cc", "-O2", "-Wall", "-Werror", "-o", str(exe), str(HERE / "tunfwd.c")],
                   check=True)
    return exe


def _ip(*args):
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


def reference_goodput(lab, exe, seconds, port, mtu):
    """Kernel CUBIC over one link through tunfwd. Returns a result like workloads.goodput's,
    with the forwarder's CPU in `emulator_cpu_ns`."""
    prefix = f"{lab.prefix}ref"
    ns_a, ns_b = f"{prefix}-a", f"{prefix}-b"
    forwarder = server = None
    try:
        _ip("netns", "add", ns_a)
        _ip("netns", "add", ns_b)
        forwarder = subprocess.Popen([str(exe), ns_a, "ref0", ns_b, "ref1"],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        line = forwarder.stdout.readline()
        if line.strip() != b"READY":
            err = forwarder.stderr.read().decode(errors="replace") if forwarder.poll() else ""
            return {"ok": False, "error": f"tunfwd did not start: {err.strip()}"}
        for ns, dev, local, peer in [(ns_a, "ref0", ADDR_A, ADDR_B), (ns_b, "ref1", ADDR_B, ADDR_A)]:
            _ip("-n", ns, "link", "set", "dev", "lo", "up")
            _ip("-n", ns, "link", "set", "dev", dev, "mtu", str(mtu), "txqueuelen", "4096", "up")
            _ip("-n", ns, "address", "add", local, "peer", peer, "dev", dev)
        server = lab.spawn(["ip", "netns", "exec", ns_b, "iperf3", "-s", "-1", "-p", str(port)],
                           "iperf3-s-reference")
        time.sleep(0.5)
        cpu_before = schedstat_ns(forwarder.pid)
        json_path = lab.log_path("iperf3-reference.json")
        with open(json_path, "w") as out:
            client = lab.spawn(["ip", "netns", "exec", ns_a, "iperf3", "-c", ADDR_B, "-p",
                                str(port), "-t", str(seconds), "-J", "-C", "cubic"],
                               "iperf3-c-reference", stdout=out)
            code, _ = lab.finish(client, timeout=seconds + 30)
        cpu = schedstat_ns(forwarder.pid) - cpu_before
        lab.finish(server, timeout=10)
        server = None
        try:
            received = json.loads(json_path.read_text())["end"]["sum_received"]
        except (OSError, ValueError, KeyError):
            return {"ok": False, "error": f"iperf3 exit {code}, no result"}
        return {"ok": code == 0, "goodput_mbps": received["bits_per_second"] / 1e6,
                "bytes": received["bytes"], "seconds": received["seconds"],
                "emulator_cpu_ns": cpu}
    finally:
        if server is not None:
            lab.stop(server, grace=1.0)
        if forwarder is not None:
            forwarder.kill()
            forwarder.wait()
        subprocess.run([str(RELEASE / "netemu"), "cleanup", "--prefix", prefix],
                       capture_output=True, timeout=60)
