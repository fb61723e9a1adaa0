#!/usr/bin/python3
"""weft against kernel TCP, and against itself, on the same emulated paths, in one run.

Scenarios (issue 7): (a) clean 1-hop and 4-hop goodput and CPU per GB; (b) 4 hops x (10 ms,
10 Mbit/s) with 0/0.5/1/2/5 % and bursty 1 % loss per link: goodput, and one-way latency of
200-byte messages at 50/s; (c) a cut of the diamond's active path under a 1 kHz probe stream;
(d) one weft session against one kernel CUBIC flow on a shared 10 Mbit/s link.

Arms: kernel TCP pinned to CUBIC, Reno and BBR (iperf3 -C / msglat --cc), and iperf3/msglat
under the shim over weft hop-by-hop and end-to-end-only. Repeats interleave the arms in a
seeded random order and reseed the emulator identically for every arm of a repeat.
Writes results.json, results.md and PNG plots to the output folder.
"""

import argparse
import datetime
import gzip
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ceiling  # noqa: E402
import idle  # noqa: E402
import latency_local  # noqa: E402
import lab  # noqa: E402
import loopback  # noqa: E402
import report  # noqa: E402
from lab import RELEASE, ROOT, BenchError, Emulator, Lab, WeftOverlay  # noqa: E402
from workloads import (  # noqa: E402
    INSECURE_ARMS, KERNEL_ARMS, RECOVERY, WEFT_ARMS, WEFT_PORTS, Arm, PortAllocator, finish_bulk, finish_stream, goodput,
    outage, stall_after, start_bulk, start_stream, window_rates,
)
from stats import jain  # noqa: E402

TOPOLOGIES = ROOT / "topologies"

ALL_SCENARIOS = ["clean", "ceiling", "loss", "failover", "fairness", "shim", "idle", "overlay_latency"]
PROFILES = {
    "smoke": dict(repeats=1, clean_s=3, goodput_s=4, latency_s=8, warmup_ms=1000,
                  failover_total_s=8, cut_at_s=2, heal_after_s=4, fairness_s=8,
                  shim_s=2, shim_repeats=1, idle_s=3,
                  scenarios=["loss", "shim", "idle"], levels=["1%"]),
    "quick": dict(repeats=1, clean_s=4, goodput_s=5, latency_s=12, warmup_ms=2000,
                  failover_total_s=10, cut_at_s=3, heal_after_s=4, fairness_s=12,
                  shim_s=3, shim_repeats=3, idle_s=10, overlay_latency_s=20,
                  overlay_latency_repeats=1,
                  # overlay_latency (about a minute) only in the full run: quick stays < 10 min.
                  scenarios=[s for s in ALL_SCENARIOS if s != "overlay_latency"], levels=None),
    "full": dict(repeats=5, clean_s=5, goodput_s=7, latency_s=25, warmup_ms=3000,
                 failover_total_s=14, cut_at_s=4, heal_after_s=6, fairness_s=20,
                 shim_s=5, shim_repeats=5, idle_s=20, overlay_latency_s=30,
                 overlay_latency_repeats=3,
                 scenarios=ALL_SCENARIOS, levels=None),
}

# (label, loss % per link, burst %) in Spines' (loss, burst) parameterisation.
LOSS_LEVELS = [("0%", 0, 0), ("0.5%", 0.5, 0), ("1%", 1, 0), ("2%", 2, 0), ("5%", 5, 0),
               ("1% burst 30%", 1, 30)]
LATENCY_RATE = 50
LATENCY_SIZE = 200
FAILOVER_RATE = 1000
# How long a weft overlay may take to finish the previous cell's sessions before a restart.
WEFT_QUIET_S = 2
# Fairness shares leave out the first seconds in which both flows deliver (slow start).
FAIRNESS_WARMUP_NS = 2_000_000_000


class Progress:
    def __init__(self, total):
        self.total = total
        self.done = 0
        self.start = time.monotonic()

    def step(self, label, summary):
        self.done += 1
        elapsed = time.monotonic() - self.start
        eta = elapsed / self.done * (self.total - self.done)
        print(f"[{self.done:3d}/{self.total}] {fmt_time(elapsed)} (eta {fmt_time(eta)}) "
              f"{label}: {summary}", flush=True)


def fmt_time(seconds):
    seconds = int(seconds)
    return f"{seconds // 60:d}:{seconds % 60:02d}"


class Bench:
    def __init__(self, args, profile, out):
        self.args = args
        self.p = profile
        self.out = out
        self.lab = Lab(out)
        self.ports = PortAllocator()
        self.weft = WeftOverlay.available(args.weft_bin) and not args.kernel_only
        self.weft_problem = None
        arms = [a for a in KERNEL_ARMS if a in args.arms]
        if self.weft:
            arms += [a for a in WEFT_ARMS if a in args.arms]
        self.arm_names = arms
        self.results = {"clean": [], "ceiling": [], "ceiling_reference": [], "loss_goodput": [], "latency": [], "failover": [],
                        "fairness": [], "validity": [], "weft_drains": []}
        (out / "raw").mkdir(parents=True, exist_ok=True)

    # ----- set-up per topology -------------------------------------------------------------

    def emulator(self, name, extra_args=()):
        return Emulator(self.lab, TOPOLOGIES / f"{name}.toml", seed=self.args.seed,
                        log_dir=self.lab.logs, rt_priority=self.args.rt_priority,
                        extra_args=extra_args)

    def arms_for(self, em, wanted):
        """Arm objects for this emulator; starts one weft overlay per recovery mode."""
        arms = {}
        overlays = []
        for name in wanted:
            if name in KERNEL_ARMS:
                arms[name] = Arm(name)
            elif name in WEFT_ARMS and self.weft:
                overlay = WeftOverlay(self.lab, em, RECOVERY[name],
                                      port=WEFT_PORTS[name],
                                      addressing=self.args.weft_addressing,
                                      bin_dir=self.args.weft_bin,
                                      secure=name not in INSECURE_ARMS)
                try:
                    overlay.start()
                except BenchError as e:
                    overlay.stop()
                    self.weft_problem = str(e)
                    print(f"bench: {name} unavailable: {e}", flush=True)
                    continue
                overlays.append(overlay)
                em.overlays.append(overlay)
                arms[name] = Arm(name, overlay)
        return arms, overlays

    def check_cell(self, em, scenario, label, arm_names, path=None):
        """Emulator validity for the cell just finished; counters were reset at its start."""
        stats = em.ctl("stats")
        outside, checks, tcp = [], 0, 0
        for link in stats["links"]:
            for d in link["directions"]:
                loss = d["loss"]
                tcp += d["counters"]["tcp_packets"]
                if loss["trials"] >= 200 and loss["expected"] > 0:
                    checks += 1
                    if not loss["within"]:
                        outside.append({"direction": d["label"], **loss})
        cell = {
            "scenario": scenario, "label": label, "topology": em.plan["topology"],
            "arms": arm_names,
            "faults": stats["emulator_faults"],
            "device_errors": stats["device_errors"],
            "loss_checks": checks, "loss_outside": outside,
            "lateness": stats["lateness"],
            "lateness_buckets_us": stats.get("lateness_buckets_us", []),
            "emulator_cpu_ns": stats["emulator_cpu_ns"],
            "since_reset_ns": stats["since_reset_ns"],
            "tcp_packets": tcp,
        }
        self.results["validity"].append(cell)
        return cell

    def start_cell(self, em, rep):
        """Wait until the previous cell's traffic is gone, then zero the counters and reseed
        every link. Kernel TCP: a FIN retransmitted over a lossy path can take seconds. weft:
        a session keeps delivering what the program had written into it after the program
        stopped; an overlay still busy after WEFT_QUIET_S is restarted (and counted)."""
        for overlay in em.overlays:
            if not overlay.daemons:
                continue
            started = time.monotonic()
            busy = overlay.wait_quiet(timeout=WEFT_QUIET_S)
            drain = {"recovery": overlay.recovery, "seconds": time.monotonic() - started,
                     "restarted": bool(busy), "busy": busy, "limit_s": WEFT_QUIET_S}
            self.results["weft_drains"].append(drain)
            if busy:
                print(f"bench: weft ({overlay.recovery}) still busy after {WEFT_QUIET_S} s: "
                      f"{busy}; restarting it", flush=True)
                overlay.restart()
        busy = em.wait_tcp_quiet(timeout=15)
        if busy:
            print(f"bench: kernel TCP still open from the previous cell: {busy}", flush=True)
        em.ctl("reset")
        em.ctl(f"reseed {self.args.seed * 1000 + rep}")

    # ----- (a) clean paths -------------------------------------------------------------------

    def clean(self, progress):
        for topo in ["chain1", "chain4"]:
            em = self.emulator(topo)
            em.ctl("set * delay_ms=0 jitter_ms=0 loss_pct=0 rate_mbit=0")
            arms, overlays = self.arms_for(em, self.arm_names)
            dst = "d"
            for rep in range(self.p["repeats"]):
                order = list(arms)
                random.Random(self.args.seed + rep).shuffle(order)
                for name in order:
                    self.start_cell(em, rep)
                    r = goodput(self.lab, em, arms[name], "s", dst, self.p["clean_s"],
                                self.ports.take())
                    v = self.check_cell(em, "clean", f"{topo} {name}", [name])
                    r.update(topology=topo, rep=rep, arm=name,
                             emulator_cpu_ns=v["emulator_cpu_ns"])
                    self.results["clean"].append(r)
                    progress.step(f"clean {topo} rep {rep + 1} {name}", summarise_goodput(r))
            for o in overlays:
                o.stop()
            em.close()

    # ----- the emulator's ceiling ----------------------------------------------------------

    def ceiling_repeats(self):
        # For information, not a goal: three repeats keep the full run under its hour.
        return min(self.p["repeats"], 3)

    def ceiling_arms(self):
        return [a for a in ["cubic", "weft-hbh"] if a in self.arm_names]

    def ceiling(self, progress):
        """Clean paths again with receive steering (the emulator pinned to CPU 0, the kernel's
        receive work behind its TUN writes on the other CPUs), then kernel CUBIC through the
        design's floor, tunfwd.c."""
        steer = ceiling.steering_cpus()
        if steer is None:
            print("bench: one CPU: no receive steering to measure", flush=True)
        for topo in ["chain1", "chain4"] if steer else []:
            em = self.emulator(topo, ["--pin-cpu", "0", "--steer-cpus", steer])
            em.ctl("set * delay_ms=0 jitter_ms=0 loss_pct=0 rate_mbit=0")
            arms, overlays = self.arms_for(em, self.ceiling_arms())
            for rep in range(self.ceiling_repeats()):
                order = list(arms)
                random.Random(self.args.seed + rep).shuffle(order)
                for name in order:
                    self.start_cell(em, rep)
                    r = goodput(self.lab, em, arms[name], "s", "d", self.p["clean_s"],
                                self.ports.take())
                    v = self.check_cell(em, "ceiling", f"{topo} steered {name}", [name])
                    r.update(topology=topo, rep=rep, arm=name, steered=steer,
                             emulator_cpu_ns=v["emulator_cpu_ns"])
                    self.results["ceiling"].append(r)
                    progress.step(f"ceiling {topo} steered rep {rep + 1} {name}",
                                  summarise_goodput(r))
            for o in overlays:
                o.stop()
            em.close()
        exe = ceiling.build_forwarder(self.lab.logs)
        for rep in range(self.ceiling_repeats()):
            r = ceiling.reference_goodput(self.lab, exe, self.p["clean_s"], self.ports.take(),
                                          mtu=1500)
            r.update(rep=rep)
            self.results["ceiling_reference"].append(r)
            progress.step(f"ceiling floor (tunfwd.c, one link) rep {rep + 1}",
                          summarise_goodput(r))

    # ----- (b) lossy 4-hop -------------------------------------------------------------------

    def loss(self, progress):
        em = self.emulator("chain4")
        arms, overlays = self.arms_for(em, self.arm_names)
        levels = [lv for lv in LOSS_LEVELS
                  if self.p["levels"] is None or lv[0] in self.p["levels"]]
        for label, loss_pct, burst_pct in levels:
            em.ctl(f"set * delay_ms=10 jitter_ms=0 rate_mbit=10 queue_bytes=125000 "
                   f"loss_pct={loss_pct} burst_pct={burst_pct}")
            for rep in range(self.p["repeats"]):
                order = list(arms)
                random.Random(self.args.seed * 7 + rep).shuffle(order)
                for name in order:
                    self.start_cell(em, rep)
                    r = goodput(self.lab, em, arms[name], "s", "d", self.p["goodput_s"],
                                self.ports.take())
                    self.check_cell(em, "loss-goodput", f"{label} {name}", [name])
                    r.update(level=label, loss_pct=loss_pct, burst_pct=burst_pct, rep=rep,
                             arm=name)
                    self.results["loss_goodput"].append(r)
                    progress.step(f"goodput {label} rep {rep + 1} {name}", summarise_goodput(r))
                self.latency_cell(em, arms, label, loss_pct, burst_pct, rep, progress)
        for o in overlays:
            o.stop()
        em.close()

    def latency_cell(self, em, arms, label, loss_pct, burst_pct, rep, progress):
        """All arms' latency streams at once, plus a raw-UDP reference stream: 50 msg/s of 200
        bytes is under 1 % of the link, so the streams do not disturb each other, and every
        arm sees the same loss realisation at the same time."""
        self.start_cell(em, rep)
        observers = {name: arm.observe(["s", "d"]) for name, arm in arms.items() if arm.is_weft}
        handles = {}
        for name, arm in arms.items():
            handles[name] = start_stream(self.lab, em, arm, "s", "d", self.ports.take(),
                                         LATENCY_RATE, LATENCY_SIZE, self.p["latency_s"],
                                         self.p["warmup_ms"])
        handles["udp"] = start_stream(self.lab, em, None, "s", "d", self.ports.take(),
                                      LATENCY_RATE, LATENCY_SIZE, self.p["latency_s"],
                                      self.p["warmup_ms"], udp=True)
        summaries = []
        for name, handle in handles.items():
            slug = label.replace("%", "pct").replace(" ", "_")
            raw_name = f"raw/latency-{slug}-rep{rep}-{name}.txt.gz"
            r, _ = finish_stream(self.lab, handle, keep_raw_as=self.out / raw_name)
            r.update(level=label, loss_pct=loss_pct, burst_pct=burst_pct, rep=rep, arm=name,
                     raw=raw_name)
            if name in observers:
                r["weft"] = observers[name].finish()
            self.results["latency"].append(r)
            rec = r.get("receiver", {})
            summaries.append(f"{name} p99 {rec.get('latency', {}).get('p99_ms', float('nan')):.1f}")
        v = self.check_cell(em, "latency", f"{label} rep {rep}", list(handles))
        self.results["latency_expected_ms"] = self.path_delay_ms(em, v)
        progress.step(f"latency {label} rep {rep + 1}", ", ".join(summaries))

    def path_delay_ms(self, em, _cell):
        """Configured one-way delay s -> d of a latency message: propagation plus serialisation
        at each hop's rate, following the kernel's static routes."""
        stats = em.ctl("stats")
        directions = {d["label"]: d for link in stats["links"] for d in link["directions"]}
        node, total = "s", 0.0
        dst_addr = em.address("d")
        for _ in range(len(em.nodes)):
            if node == "d":
                break
            route = next(r for r in em.nodes[node]["routes"] if r["destination"] == dst_addr)
            peer = route["device"][len("to-"):]
            p = directions[f"{node}>{peer}"]["params"]
            total += p["delay_ms"]
            if p["rate_mbit"] > 0:
                total += (LATENCY_SIZE + 28) * 8 / (p["rate_mbit"] * 1e6) * 1e3
            node = peer
        return total

    # ----- (c) failover ----------------------------------------------------------------------

    def failover(self, progress):
        """A saturating verified bulk transfer and a 1 kHz probe stream s -> d at the same time;
        the emulator cuts s-a (both directions) and heals it later."""
        em = self.emulator("diamond")
        wanted = ["cubic"] + [a for a in WEFT_ARMS
                              if a in self.arm_names and a not in INSECURE_ARMS]
        arms, overlays = self.arms_for(em, wanted)
        total = self.p["failover_total_s"]
        for rep in range(self.p["repeats"]):
            order = list(arms)
            random.Random(self.args.seed * 13 + rep).shuffle(order)
            for name in order:
                arm = arms[name]
                self.start_cell(em, rep)
                bulk = start_bulk(self.lab, em, arm, "s", "d", self.ports.take(), total)
                probe = start_stream(self.lab, em, arm, "s", "d", self.ports.take(),
                                     FAILOVER_RATE, LATENCY_SIZE, total, 0)
                time.sleep(self.p["cut_at_s"])
                cut = em.ctl("down s-a")["t_ns"]
                time.sleep(self.p["heal_after_s"])
                heal = em.ctl("up s-a")["t_ns"]
                r, samples = finish_stream(self.lab, probe,
                                           keep_raw_as=self.out / f"raw/failover-rep{rep}-{name}.txt.gz")
                r["bulk"], timeline = finish_bulk(self.lab, bulk)
                r["bulk"]["longest_stall_ms"] = stall_after(timeline, cut)
                if timeline:
                    raw_bulk = f"raw/failover-bulk-rep{rep}-{name}.json.gz"
                    with gzip.open(self.out / raw_bulk, "wt") as f:
                        json.dump(timeline, f)
                    r["bulk"]["raw"] = raw_bulk
                if "weft" in r["bulk"]:
                    r["weft"] = r["bulk"].pop("weft")
                self.check_cell(em, "failover", f"rep {rep} {name}", [name])
                r.update(outage(samples, cut, heal))
                sent = r.get("sender", {}).get("sent")
                received = r.get("receiver", {}).get("received")
                r.update(rep=rep, arm=name, cut_ns=cut, heal_ns=heal,
                         lost_bytes=None if sent is None or received is None
                         else (sent - received) * LATENCY_SIZE)
                self.results["failover"].append(r)
                o, b = r["outage_ms"], r["bulk"]
                progress.step(f"failover rep {rep + 1} {name}",
                              f"probe outage {'no recovery' if o is None else f'{o:.0f} ms'}, "
                              f"lost {r['lost_bytes']} B; bulk stall "
                              f"{fmt_ms(b.get('longest_stall_ms'))}, lost {b.get('bytes_lost')} B"
                              f" of {b.get('bytes_written')}")
        for o in overlays:
            o.stop()
        em.close()

    # ----- (d) fairness ----------------------------------------------------------------------

    def fairness_pairs(self):
        pairs = []
        if "weft-hbh" in self.arm_names:
            pairs.append(("weft-hbh", "cubic"))
        pairs.append(("cubic", "cubic"))
        return pairs

    def fairness(self, progress):
        """Two verified bulk flows s -> d at once over one 10 Mbit/s, 10 ms link; each flow's
        share of what both got over the window in which both were delivering."""
        em = self.emulator("chain1")
        em.ctl("set * delay_ms=10 jitter_ms=0 loss_pct=0 rate_mbit=10 queue_bytes=50000")
        wanted = sorted({a for pair in self.fairness_pairs() for a in pair})
        arms, overlays = self.arms_for(em, wanted)
        seconds = self.p["fairness_s"]
        for rep in range(self.p["repeats"]):
            for pair in self.fairness_pairs():
                if not all(a in arms for a in pair):
                    continue
                self.start_cell(em, rep)
                handles = [start_bulk(self.lab, em, arms[a], "s", "d", self.ports.take(),
                                      seconds, bin_ms=10) for a in pair]
                finished = [finish_bulk(self.lab, h) for h in handles]
                self.check_cell(em, "fairness", f"rep {rep} {'+'.join(pair)}", list(pair))
                flows = [f for f, _ in finished]
                window = window_rates([t for _, t in finished], FAIRNESS_WARMUP_NS)
                rates, window_s = window if window else ([None] * len(pair), None)
                for f, rate in zip(flows, rates):
                    f["window_mbps"] = rate
                total = sum(x for x in rates if x) or None
                r = {"rep": rep, "pair": list(pair), "flows": flows, "window_s": window_s,
                     "shares": [None if not total or x is None else x / total for x in rates],
                     "jain": jain(rates)}
                self.results["fairness"].append(r)
                progress.step(f"fairness rep {rep + 1} {' vs '.join(pair)}",
                              ", ".join(f"{a} {fmt_mbps(x)}" for a, x in zip(pair, rates))
                              + f" over {window_s or 0:.1f} s")
        for o in overlays:
            o.stop()
        em.close()

    # ----- no emulator: the shim on loopback, the daemon at idle -----------------------------

    def shim(self, progress):
        if not self.weft:
            return
        try:
            r = loopback.shim_throughput(self.lab, self.args.weft_bin, self.p["shim_s"],
                                         self.p["shim_repeats"], self.ports.take_pair())
        except BenchError as e:
            r = {"error": str(e)}
        self.results["shim"] = r
        progress.step("shim: iperf3 over the overlay vs kernel loopback",
                      r.get("error") or f"{fmt_mbps(r['overlay_bps'] and r['overlay_bps'] / 1e6)}"
                      f" vs {fmt_mbps(r['kernel_bps'] and r['kernel_bps'] / 1e6)}, "
                      f"ratio {r['ratio'] or 0:.3f}")

    def idle(self, progress):
        if not self.weft:
            return
        try:
            r = idle.measure(str(self.args.weft_bin), 10, self.p["idle_s"],
                             settle=min(3.0, self.p["idle_s"]))
        except (subprocess.CalledProcessError, OSError, KeyError, ValueError) as e:
            r = {"error": str(e)}
        self.results["idle"] = r
        progress.step("idle: weftd with 10 neighbours",
                      r.get("error") or f"{r['cpu_pct']:.2f} % of a core, "
                      f"{r['bytes_per_s_mean']:.0f} B/s per neighbour")

    def overlay_latency(self, progress):
        """Issue 3's comparison on weft's own link emulation (no namespaces): 1 KB messages at
        20/s over 4 hops of 20 ms and 2 % loss, hop-by-hop vs end-to-end-only recovery."""
        if not self.weft:
            return
        try:
            r = latency_local.measure(str(self.args.weft_bin), self.p["overlay_latency_s"],
                                      repeats=self.p["overlay_latency_repeats"])
        except (subprocess.SubprocessError, OSError, KeyError, ValueError) as e:
            r = {"error": str(e)}
        self.results["overlay_latency"] = r

        def p99(mode):
            vals = [x["latency"].get("p99_ms") for x in r.get(mode, [])]
            return sorted(v for v in vals if v is not None)

        progress.step("overlay latency: hop-by-hop vs end-to-end on weft's own emulation",
                      r.get("error") or f"p99 {p99('hop-by-hop')} vs {p99('end-to-end')} ms")

    # ----- driver ------------------------------------------------------------------------------

    def total_cells(self):
        r = self.p["repeats"]
        n_arms = len(self.arm_names)
        n_levels = len([lv for lv in LOSS_LEVELS
                        if self.p["levels"] is None or lv[0] in self.p["levels"]])
        counts = {
            "clean": 2 * r * n_arms,
            "ceiling": self.ceiling_repeats() * (1 + (2 * len(self.ceiling_arms()) if ceiling.steering_cpus() else 0)),
            "loss": n_levels * r * (n_arms + 1),
            "failover": r * (1 + len([a for a in WEFT_ARMS
                                      if a in self.arm_names and a not in INSECURE_ARMS])),
            "fairness": r * len(self.fairness_pairs()),
            "shim": 1 if self.weft else 0,
            "idle": 1 if self.weft else 0,
            "overlay_latency": 1 if self.weft else 0,
        }
        return sum(counts[s] for s in self.scenarios())

    def scenarios(self):
        return [s for s in self.p["scenarios"] if s in self.args.scenarios]

    def run(self):
        progress = Progress(self.total_cells())
        for scenario in self.scenarios():
            getattr(self, scenario)(progress)


def fmt_mbps(x):
    return "–" if x is None else f"{x:.2f} Mbit/s"


def fmt_ms(x):
    return "–" if x is None else f"{x:.0f} ms"


def summarise_goodput(r):
    if r.get("goodput_mbps") is None:
        return f"failed ({r.get('error')})"
    return f"{r['goodput_mbps']:.2f} Mbit/s" + ("" if r.get("ok") else f" ({r.get('error')})")


def git_sha():
    out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain"],
                           capture_output=True, text=True).stdout.strip()
    return out.stdout.strip() + ("-dirty" if dirty else "")


def preflight():
    problems = []
    if os.geteuid() != 0:
        problems.append("must run as root (network namespaces, TUN devices)")
    for tool in ["ip", "ss", "iperf3"]:
        if shutil.which(tool) is None:
            problems.append(f"missing tool: {tool}")
    for binary in ["netemu", "msglat"]:
        if not (RELEASE / binary).exists():
            problems.append(f"missing {RELEASE / binary} (cargo build --release -p weft-netemu)")
    if problems:
        for p in problems:
            print(f"bench: {p}", file=sys.stderr)
        sys.exit(2)


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="1 repeat, short runs (< 10 min)")
    mode.add_argument("--smoke", action="store_true", help="CI smoke: 4-hop 1%% loss only")
    ap.add_argument("--out", type=Path, help="output folder (default bench-out/<time>)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--repeats", type=int, help="override the profile's repeat count")
    ap.add_argument("--arms", default=",".join(KERNEL_ARMS + WEFT_ARMS))
    ap.add_argument("--scenarios", default=",".join(ALL_SCENARIOS),
                    help="comma-separated subset of " + ",".join(ALL_SCENARIOS)
                    + " (with rings, scripts/bench.sh also runs the rings section)")
    ap.add_argument("--levels", help="comma-separated loss levels of scenario (b), e.g. 0%%,2%%"
                    " (default: the profile's)")
    ap.add_argument("--kernel-only", action="store_true", help="skip weft arms even if built")
    ap.add_argument("--weft-addressing", choices=["link", "node"], default="link",
                    help="weftd neighbours by link address (default) or node address")
    ap.add_argument("--weft-bin", type=Path, default=RELEASE,
                    help="folder holding weftd and weft (default target/release)")
    ap.add_argument("--rt-priority", type=int, default=50,
                    help="SCHED_FIFO priority of the emulator (0 = normal scheduling)")
    ap.add_argument("--sut-nice", type=int, default=-10,
                    help="nice value for iperf3, msglat and weftd in every arm (default -10: "
                    "other work on a shared machine delays the measured programs of every "
                    "arm alike less; 0 = inherit)")
    ap.add_argument("--no-plots", action="store_true")
    args = ap.parse_args()
    args.arms = args.arms.split(",")
    args.scenarios = args.scenarios.split(",")
    if args.levels:
        args.levels = args.levels.split(",")
        known = [lv[0] for lv in LOSS_LEVELS]
        unknown = [lv for lv in args.levels if lv not in known]
        if unknown:
            ap.error(f"--levels: unknown {unknown}; known: {known}")
    return args


def main():
    args = parse_args()
    preflight()
    lab.SUT_NICE = args.sut_nice
    name = "smoke" if args.smoke else "quick" if args.quick else "full"
    profile = dict(PROFILES[name])
    if args.repeats:
        profile["repeats"] = args.repeats
    if args.levels:
        profile["levels"] = args.levels
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = args.out or ROOT / "bench-out" / f"{stamp}-{name}"
    out.mkdir(parents=True, exist_ok=True)

    def on_term(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)
    bench = Bench(args, profile, out)
    if not WeftOverlay.available(args.weft_bin):
        print(f"weft arms: not built yet (weftd, weft or libweft.so missing in {args.weft_bin}); "
              "running the kernel arms only", flush=True)
    elif args.kernel_only:
        print("weft arms: skipped (--kernel-only)", flush=True)
    print(f"bench: {name} run, {profile['repeats']} repeat(s), arms {', '.join(bench.arm_names)},"
          f" output {out}", flush=True)
    started = time.time()
    interrupted = None
    try:
        bench.run()
    except KeyboardInterrupt as e:
        interrupted = str(e) or "interrupted"
        print(f"\nbench: {interrupted}; cleaning up", flush=True)
    except BenchError as e:
        interrupted = str(e)
        print(f"bench: {e}; cleaning up", flush=True)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        bench.lab.close()
        signal.signal(signal.SIGINT, signal.default_int_handler)
    bench.results["meta"] = {
        "profile": name, **profile, "seed": args.seed, "arms": bench.arm_names,
        "weft_available": WeftOverlay.available(args.weft_bin), "weft_used": bench.weft,
        "weft_problem": bench.weft_problem, "git": git_sha(),
        "kernel": platform.release(), "started": datetime.datetime.fromtimestamp(started)
        .isoformat(timespec="seconds"), "duration_s": round(time.time() - started),
        "interrupted": interrupted, "emulator_rt_priority": args.rt_priority,
        "sut_nice": args.sut_nice,
        "loadavg_end": os.getloadavg(),
    }
    (out / "results.json").write_text(json.dumps(bench.results, indent=1))
    table = report.render(bench.results)
    (out / "results.md").write_text(table)
    print()
    print(table)
    if not args.no_plots:
        plot = subprocess.run(["/usr/bin/python3", str(Path(__file__).parent / "plot.py"),
                               str(out)], capture_output=True, text=True)
        print(plot.stdout.strip() or plot.stderr.strip())
    latest = ROOT / "bench-out" / "latest"
    if out.parent == latest.parent:
        if latest.is_symlink() or latest.exists():
            latest.unlink()
        latest.symlink_to(out.name)
    print(f"bench: done in {fmt_time(time.time() - started)}; results in {out}")
    problems = report.breakage(bench.results)
    for p in problems:
        print(f"bench: BROKEN: {p}")
    return 1 if interrupted or problems else 0


if __name__ == "__main__":
    sys.exit(main())
