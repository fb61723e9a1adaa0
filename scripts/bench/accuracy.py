#!/usr/bin/python3
"""The emulator measured on its own, as the C prototype was (research/testbed.md section 3.2):
delay error of a 10 ms link for 200-byte UDP probes at 500/s, idle and under UDP background
load; TCP throughput ceiling over 1 and 4 clean links with emulator CPU per GB; emulator CPU
for a 10 Mbit/s TCP flow over 4 x (10 ms, 10 Mbit/s).

Probes run at SCHED_FIFO so that the figures describe the emulator, not the probe processes.
Usage: accuracy.py [--out DIR]  (root; needs target/release/{netemu,msglat} and iperf3)."""

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lab import RELEASE, ROOT, Emulator, Lab, in_ns  # noqa: E402
from workloads import PortAllocator, goodput, wait_listening  # noqa: E402

TOPOLOGIES = ROOT / "topologies"


def delay_error(lab, em, ports, background_mbit):
    em.ctl("set * delay_ms=10 rate_mbit=0 loss_pct=0 jitter_ms=0")
    em.ctl("reset")
    bg = []
    if background_mbit:
        port = ports.take()
        server = lab.spawn(in_ns(em, "d", ["iperf3", "-s", "-1", "-p", str(port)]), "bg-s")
        wait_listening(em, "d", port)
        client = lab.spawn(in_ns(em, "s", ["iperf3", "-c", em.address("d"), "-p", str(port),
                                           "-u", "-b", f"{background_mbit}M", "-l", "1400",
                                           "-t", "7"]), "bg-c")
        bg = [client, server]
        time.sleep(1)
    port = ports.take()
    out = lab.log_path("accuracy-recv.json")
    msglat = str(RELEASE / "msglat")
    receiver = lab.spawn(in_ns(em, "d", ["chrt", "-f", "60", msglat, "recv", "--udp",
                                         "--listen", f"0.0.0.0:{port}", "--json", str(out)]),
                         "accuracy-recv")
    wait_listening(em, "d", port, tcp=False)
    sender = lab.spawn(in_ns(em, "s", ["chrt", "-f", "60", msglat, "send", "--udp", "--to",
                                       f"{em.address('d')}:{port}", "--rate", "500",
                                       "--duration-s", "4"]), "accuracy-send")
    lab.finish(sender, 30)
    lab.finish(receiver, 30)
    for p in bg:
        lab.finish(p, 30)
    stats = em.ctl("stats")
    latency = json.loads(out.read_text())["latency"]
    return {
        "background_mbit": background_mbit,
        "probes": latency["count"],
        "error_p50_ms": latency["p50_ms"] - 10,
        "error_p99_ms": latency["p99_ms"] - 10,
        "error_max_ms": latency["max_ms"] - 10,
        "lateness": stats["lateness"],
        "faults": stats["emulator_faults"],
    }


def ceiling(lab, em, ports, cc):
    em.ctl("set * delay_ms=0 rate_mbit=0 loss_pct=0 jitter_ms=0")
    em.ctl("reset")
    from workloads import Arm
    r = goodput(lab, em, Arm(cc), "s", "d", 6, ports.take())
    stats = em.ctl("stats")
    return {
        "cc": cc,
        "goodput_mbps": r.get("goodput_mbps"),
        "retransmits": r.get("retransmits"),
        "emulator_core_share": stats["emulator_cpu_ns"] / stats["since_reset_ns"],
        "emulator_s_per_gb": stats["emulator_cpu_ns"] / r["bytes"] if r.get("bytes") else None,
        "faults": stats["emulator_faults"],
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=ROOT / "bench-out" / "accuracy")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    lab = Lab(args.out)
    ports = PortAllocator(30000)
    results = {"delay": [], "ceiling": [], "paced": None}
    try:
        em = Emulator(lab, TOPOLOGIES / "chain1.toml", seed=1, log_dir=lab.logs)
        for bg in [0, 300, 1000]:
            r = delay_error(lab, em, ports, bg)
            results["delay"].append(r)
            print(f"delay 10 ms, background {bg} Mbit/s: error p50 {r['error_p50_ms']:.3f} "
                  f"p99 {r['error_p99_ms']:.3f} max {r['error_max_ms']:.3f} ms; emulator "
                  f"lateness p99 {r['lateness']['p99_ms']:.3f} ms; faults {r['faults']}",
                  flush=True)
        for cc in ["cubic", "bbr"]:
            r = ceiling(lab, em, ports, cc)
            r["links"] = 1
            results["ceiling"].append(r)
            print(f"1 link {cc}: {r['goodput_mbps']:.0f} Mbit/s, emulator "
                  f"{r['emulator_core_share'] * 100:.0f} % of a core, "
                  f"{r['emulator_s_per_gb']:.2f} s/GB, faults {r['faults']}", flush=True)
        em.close()
        em = Emulator(lab, TOPOLOGIES / "chain4.toml", seed=1, log_dir=lab.logs)
        for cc in ["cubic", "bbr"]:
            r = ceiling(lab, em, ports, cc)
            r["links"] = 4
            results["ceiling"].append(r)
            print(f"4 links {cc}: {r['goodput_mbps']:.0f} Mbit/s, emulator "
                  f"{r['emulator_core_share'] * 100:.0f} % of a core, "
                  f"{r['emulator_s_per_gb']:.2f} s/GB, faults {r['faults']}", flush=True)
        em.ctl("set * delay_ms=10 rate_mbit=10 queue_bytes=125000 loss_pct=0")
        em.ctl("reset")
        from workloads import Arm
        r = goodput(lab, em, Arm("cubic"), "s", "d", 10, ports.take())
        stats = em.ctl("stats")
        results["paced"] = {"goodput_mbps": r.get("goodput_mbps"),
                            "emulator_core_share":
                                stats["emulator_cpu_ns"] / stats["since_reset_ns"],
                            "lateness": stats["lateness"]}
        print(f"4 x (10 ms, 10 Mbit/s) cubic: {r.get('goodput_mbps'):.2f} Mbit/s, emulator "
              f"{results['paced']['emulator_core_share'] * 100:.1f} % of a core", flush=True)
    finally:
        lab.close()
        (args.out / "accuracy.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
