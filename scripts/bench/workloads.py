"""Arms (kernel TCP with a pinned congestion control, or weft under the shim) and the
workloads run through them: iperf3 goodput, msglat latency streams, the failover probe and
the fairness pair. Each returns plain dicts that go straight into results.json."""

import gzip
import json
import shutil
import subprocess
import time

from lab import RELEASE, BenchError, in_ns
from observe import Observer
from stats import longest_empty_run

KERNEL_ARMS = ["cubic", "reno", "bbr"]
WEFT_ARMS = ["weft-hbh", "weft-e2e", "weft-insecure"]
RECOVERY = {"weft-hbh": "hop-by-hop", "weft-e2e": "end-to-end", "weft-insecure": "hop-by-hop"}
# Arms whose links run without authentication and encryption (the cost of link security is
# weft-hbh against weft-insecure, measured in the same run).
INSECURE_ARMS = {"weft-insecure"}
WEFT_PORTS = {"weft-hbh": 7100, "weft-e2e": 7200, "weft-insecure": 7300}


class Arm:
    def __init__(self, name, overlay=None):
        self.name = name
        self.overlay = overlay
        self.cc = None if overlay else name

    @property
    def is_weft(self):
        return self.overlay is not None

    def wrap(self, emulator, node, argv):
        if self.overlay:
            return self.overlay.wrap(node, argv)
        return in_ns(emulator, node, argv)

    def daemon_cpu_ns(self):
        return self.overlay.cpu_ns() if self.overlay else 0

    def wait_server(self, emulator, node, port):
        """Until a server started through this arm on `node` accepts connections on `port`:
        the kernel socket listens and, over weft, the daemon has registered it."""
        if not wait_listening(emulator, node, port):
            return False
        return self.overlay.wait_listener(node, port) if self.overlay else True

    def observe(self, watch):
        """An Observer of this arm's overlay for one cell, or None for kernel arms."""
        return Observer(self.overlay, watch) if self.overlay else None


def wait_listening(emulator, node, port, tcp=True, timeout=10.0):
    flag = "-Htln" if tcp else "-Huln"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(
            in_ns(emulator, node, ["ss", flag, f"sport = :{port}"]),
            capture_output=True, text=True, timeout=10,
        )
        if out.stdout.strip():
            return True
        time.sleep(0.05)
    return False


class PortAllocator:
    def __init__(self, base=20000):
        self.next = base

    def take(self):
        self.next += 1
        if self.next > 60000:
            self.next = 20001
        return self.next

    def take_pair(self):
        """Two consecutive ports; returns the first."""
        first = self.take()
        if first == 60000:
            first = self.take()
        self.take()
        return first


def goodput(lab, em, arm, src, dst, seconds, port, observe=True):
    """One iperf3 transfer src -> dst. Goodput is what the receiver got."""
    server = lab.spawn(
        arm.wrap(em, dst, ["iperf3", "-s", "-1", "-p", str(port)]), f"iperf3-s-{arm.name}"
    )
    if not arm.wait_server(em, dst, port):
        lab.stop(server)
        return {"ok": False, "error": "iperf3 server did not listen"}
    argv = ["iperf3", "-c", em.address(dst), "-p", str(port), "-t", str(seconds), "-J",
            "--connect-timeout", "10000"]
    if arm.cc:
        argv += ["-C", arm.cc]
    observer = arm.observe([src, dst]) if observe else None
    daemon_cpu_before = arm.daemon_cpu_ns()
    json_path = lab.log_path(f"iperf3-{arm.name}.json")
    with open(json_path, "w") as out:
        client = lab.spawn(arm.wrap(em, src, argv), f"iperf3-c-{arm.name}", stdout=out)
        code, client_cpu = lab.finish(client, timeout=seconds + 45)
    _, server_cpu = lab.finish(server, timeout=15)
    daemon_cpu = arm.daemon_cpu_ns() - daemon_cpu_before
    result = {"ok": False, "app_cpu_ns": client_cpu + server_cpu, "daemon_cpu_ns": daemon_cpu}
    if observer:
        result["weft"] = observer.finish()
    try:
        report = json.loads(json_path.read_text())
    except (OSError, json.JSONDecodeError):
        result["error"] = f"iperf3 exit {code}, no JSON (see {json_path.name})"
        return result
    if "error" in report:
        result["error"] = report["error"]
        return result
    try:
        received = report["end"]["sum_received"]
        sent = report["end"]["sum_sent"]
        result.update(
            ok=code == 0,
            goodput_mbps=received["bits_per_second"] / 1e6,
            bytes=received["bytes"],
            seconds=received["seconds"],
            retransmits=sent.get("retransmits"),
        )
        if code != 0:
            result["error"] = f"iperf3 exit {code}"
    except (KeyError, TypeError):
        result["error"] = "iperf3 JSON without end.sum_received"
    return result


def start_stream(lab, em, arm, src, dst, port, rate, size, seconds, warmup_ms, udp=False):
    """Start a msglat receiver and sender; returns a handle for `finish_stream`."""
    tag = f"{arm.name if arm else 'udp'}"
    recv_json = lab.log_path(f"msglat-recv-{tag}.json")
    raw = lab.log_path(f"msglat-raw-{tag}.txt")
    send_json = lab.log_path(f"msglat-send-{tag}.json")
    msglat = str(RELEASE / "msglat")
    receiver_argv = [msglat, "recv", "--listen", f"0.0.0.0:{port}", "--warmup-ms", str(warmup_ms),
                     "--idle-timeout-s", "60", "--start-timeout-s", "60",
                     "--json", str(recv_json), "--raw", str(raw)]
    sender_argv = [msglat, "send", "--to", f"{em.address(dst)}:{port}", "--rate", str(rate),
                   "--size", str(size), "--duration-s", str(seconds), "--json", str(send_json)]
    if udp:
        receiver_argv.append("--udp")
        sender_argv.append("--udp")
    elif arm.cc:
        sender_argv += ["--cc", arm.cc]
    wrap = (lambda node, argv: in_ns(em, node, argv)) if arm is None else (
        lambda node, argv: arm.wrap(em, node, argv))
    receiver = lab.spawn(wrap(dst, receiver_argv), f"msglat-recv-{tag}")
    ready = wait_listening(em, dst, port, tcp=False) if udp else arm.wait_server(em, dst, port)
    if not ready:
        lab.stop(receiver)
        raise BenchError(f"msglat receiver ({tag}) did not listen")
    sender = lab.spawn(wrap(src, sender_argv), f"msglat-send-{tag}")
    return {"receiver": receiver, "sender": sender, "recv_json": recv_json,
            "send_json": send_json, "raw": raw, "seconds": seconds}


def finish_stream(lab, handle, keep_raw_as=None):
    code_s, _ = lab.finish(handle["sender"], timeout=handle["seconds"] + 120)
    code_r, _ = lab.finish(handle["receiver"], timeout=90)
    result = {"ok": code_s == 0 and code_r == 0}
    try:
        result["receiver"] = json.loads(handle["recv_json"].read_text())
        result["sender"] = json.loads(handle["send_json"].read_text())
    except (OSError, json.JSONDecodeError):
        # A kernel stream at 5 % loss can still be in RTO backoff when its time is up; the
        # receiver is then killed before it writes anything. The cell has no figures for this
        # arm (the report leaves it out and says so); the run goes on.
        result["ok"] = False
        result["error"] = (f"msglat exit sender {code_s} receiver {code_r}"
                           + (" (killed: still draining)" if code_r is None else ""))
    samples = read_raw(handle["raw"])
    if keep_raw_as is not None and handle["raw"].exists():
        with open(handle["raw"], "rb") as src, gzip.open(keep_raw_as, "wb") as dst:
            shutil.copyfileobj(src, dst)
    handle["raw"].unlink(missing_ok=True)
    return result, samples


def start_bulk(lab, em, arm, src, dst, port, seconds, bin_ms=1):
    """A verified saturating transfer src -> dst (msglat bulk-send/bulk-recv)."""
    msglat = str(RELEASE / "msglat")
    recv_json = lab.log_path(f"bulk-recv-{arm.name}.json")
    send_json = lab.log_path(f"bulk-send-{arm.name}.json")
    receiver = lab.spawn(arm.wrap(em, dst, [msglat, "bulk-recv", "--listen", f"0.0.0.0:{port}",
                                            "--idle-timeout-s", "60", "--bin-ms", str(bin_ms),
                                            "--json", str(recv_json)]),
                         f"bulk-recv-{arm.name}")
    if not arm.wait_server(em, dst, port):
        lab.stop(receiver)
        raise BenchError(f"bulk receiver ({arm.name}) did not listen")
    argv = [msglat, "bulk-send", "--to", f"{em.address(dst)}:{port}", "--duration-s",
            str(seconds), "--json", str(send_json)]
    if arm.cc:
        argv += ["--cc", arm.cc]
    observer = arm.observe([src, dst])
    sender = lab.spawn(arm.wrap(em, src, argv), f"bulk-send-{arm.name}")
    return {"arm": arm, "receiver": receiver, "sender": sender, "recv_json": recv_json,
            "send_json": send_json, "seconds": seconds, "observer": observer}


def finish_bulk(lab, handle):
    """(result, timeline): bytes written, bytes delivered (verified) and their difference;
    the receive timeline {start_ns, bin_ns, bins} for the caller's windows."""
    arm = handle["arm"]
    code_s, _ = lab.finish(handle["sender"], timeout=handle["seconds"] + 90)
    code_r, _ = lab.finish(handle["receiver"], timeout=30)
    result = {"arm": arm.name}
    if handle["observer"]:
        result["weft"] = handle["observer"].finish()
    try:
        sent = json.loads(handle["send_json"].read_text())
        received = json.loads(handle["recv_json"].read_text())
    except (OSError, json.JSONDecodeError):
        result.update(ok=False, error=f"bulk exit sender {code_s} receiver {code_r}")
        return result, None
    seconds = (received.get("end_ns", 0) - received.get("accepted_ns", 0)) / 1e9
    result.update(
        ok=code_s == 0 and code_r == 0 and received.get("first_mismatch") is None,
        bytes_written=sent.get("bytes_written"),
        bytes_delivered=received.get("bytes"),
        bytes_lost=(sent.get("bytes_written") or 0) - (received.get("bytes") or 0),
        corrupt_from=received.get("first_mismatch"),
        send_error=sent.get("error"),
        stopped=received.get("stopped"),
        goodput_mbps=received.get("bytes", 0) * 8 / seconds / 1e6 if seconds > 0 else None,
    )
    return result, received.get("timeline")


def stall_after(timeline, t_ns):
    """Longest delivery stall (ms) of a bulk timeline from `t_ns` on."""
    if not timeline:
        return None
    bin_ns = timeline["bin_ns"]
    empty = longest_empty_run(timeline["bins"], max(0, (t_ns - timeline["start_ns"]) // bin_ns))
    return None if empty is None else empty * bin_ns / 1e6


def window_rates(timelines, warmup_ns):
    """Mbit/s of each flow over the window all of them were delivering, from `warmup_ns` after
    the last first delivery to the first last delivery; None if there is no such window."""
    spans = []
    for t in timelines:
        if not t:
            return None
        nonzero = [i for i, b in enumerate(t["bins"]) if b]
        if not nonzero:
            return None
        spans.append((t["start_ns"] + nonzero[0] * t["bin_ns"],
                      t["start_ns"] + (nonzero[-1] + 1) * t["bin_ns"]))
    lo = max(a for a, _ in spans) + warmup_ns
    hi = min(b for _, b in spans)
    if hi <= lo:
        return None
    rates = []
    for t in timelines:
        total = sum(b for i, b in enumerate(t["bins"])
                    if lo <= t["start_ns"] + i * t["bin_ns"] < hi)
        rates.append(total * 8 / ((hi - lo) / 1e9) / 1e6)
    return rates, (hi - lo) / 1e9


def read_raw(path):
    samples = []
    try:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 3:
                    samples.append((int(parts[0]), int(parts[1]), int(parts[2])))
    except OSError:
        pass
    return samples


def outage(samples, cut_ns, heal_ns):
    """Failover figures from raw (seq, send_ns, recv_ns) samples of a 1 kHz stream.

    outage_ms: first delivery of a message sent at or after the cut, minus the cut time;
    None ("no recovery") if nothing sent after the cut arrived before the link healed.
    max_gap_ms: the longest silence at the receiver from 1 s before the cut on."""
    after = [r for (_, s, r) in samples if s >= cut_ns]
    first = min(after) if after else None
    recovered = first is not None and first < heal_ns
    arrivals = sorted(r for (_, _, r) in samples if r >= cut_ns - 1_000_000_000)
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    return {
        "outage_ms": (first - cut_ns) / 1e6 if recovered else None,
        "first_after_cut_ms": (first - cut_ns) / 1e6 if first is not None else None,
        "heal_after_ms": (heal_ns - cut_ns) / 1e6,
        "max_gap_ms": max(gaps) / 1e6 if gaps else None,
    }
