"""The lab: the emulator process, programs started inside its namespaces, weft daemons, CPU
accounting and guaranteed cleanup.

Everything started here is registered with a `Lab`; `Lab.close()` (called from a `finally`
and on SIGTERM/SIGINT) stops the programs, shuts the emulator down (which kills whatever is
left in its namespaces and deletes them) and, as a last resort, runs `netemu cleanup`.
"""

import json
import os
import select
import signal
import subprocess
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# bench.sh --cargo-profile NAME builds into target/NAME and points here (CI reuses its `ci` build).
RELEASE = Path(os.environ.get("WEFT_BENCH_BIN") or ROOT / "target" / "release")


class BenchError(Exception):
    pass


def schedstat_ns(pid):
    """CPU time of every live thread of `pid` from /proc/<pid>/task/*/schedstat (exact on
    this VM, unlike /proc/stat). 0 if the process is gone."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total


class Emulator:
    """A running `netemu run` process and its control socket."""

    def __init__(self, lab, topology, seed, log_dir, rt_priority=50, coalesce_us=0,
                 extra_args=()):
        self.lab = lab
        self.prefix = f"{lab.prefix}{topology.stem.replace('-', '_')}"
        self.control = Path(f"/run/netemu-{self.prefix}.sock")
        argv = [
            str(RELEASE / "netemu"), "run",
            "--topology", str(topology),
            "--prefix", self.prefix,
            "--control", str(self.control),
            "--seed", str(seed),
            "--txqueuelen", "4096",
            "--coalesce-us", str(coalesce_us),
            "--exit-with-parent",
        ]
        if rt_priority:
            argv += ["--rt-priority", str(rt_priority)]
        argv += list(extra_args)
        self.log = open(log_dir / f"netemu-{self.prefix}.log", "w")
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=self.log, start_new_session=True
        )
        lab.emulators.append(self)
        # Weft overlays running on this emulator's namespaces (the bench registers them).
        self.overlays = []
        self.plan = self._wait_ready(timeout=30)
        self.nodes = {n["name"]: n for n in self.plan["nodes"]}

    def _wait_ready(self, timeout):
        deadline = time.monotonic() + timeout
        line = b""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 1 << 20)
                if not chunk:
                    break
                line += chunk
                if b"\n" in line:
                    text = line.split(b"\n", 1)[0].decode()
                    if text.startswith("READY "):
                        return json.loads(text[len("READY "):])
                    break
            if self.proc.poll() is not None:
                break
        raise BenchError(
            f"netemu did not start (see {self.log.name}): exit {self.proc.poll()}"
        )

    def ctl(self, command):
        out = subprocess.run(
            [str(RELEASE / "netemu"), "ctl", "--control", str(self.control), *command.split()],
            capture_output=True, text=True, timeout=30,
        )
        try:
            reply = json.loads(out.stdout)
        except json.JSONDecodeError:
            raise BenchError(f"netemu ctl {command}: {out.stderr.strip()}")
        if not reply.get("ok"):
            raise BenchError(f"netemu ctl {command}: {reply.get('error')}")
        return reply

    def namespace(self, node):
        return self.nodes[node]["namespace"]

    def address(self, node):
        return self.nodes[node]["address"]

    def neighbours(self, node):
        """(peer node, local link address, peer link address) for each link of `node`."""
        result = []
        for link in self.plan["links"]:
            if link["a"] == node:
                result.append((link["b"], link["a_address"], link["b_address"]))
            elif link["b"] == node:
                result.append((link["a"], link["b_address"], link["a_address"]))
        return result

    def pid(self):
        return self.proc.pid

    def tcp_connections(self):
        """Kernel TCP sockets in any state that can still send (not LISTEN or TIME-WAIT),
        per namespace that has some."""
        busy = {}
        for node in self.nodes:
            out = subprocess.run(
                ["ip", "netns", "exec", self.namespace(node), "ss", "-Htan", "state",
                 "connected", "exclude", "time-wait"],
                capture_output=True, text=True, timeout=10,
            )
            lines = [line for line in out.stdout.splitlines() if line.strip()]
            if lines:
                busy[node] = lines
        return busy

    def wait_tcp_quiet(self, timeout):
        deadline = time.monotonic() + timeout
        while True:
            busy = self.tcp_connections()
            if not busy or time.monotonic() > deadline:
                return busy
            time.sleep(0.2)

    def close(self):
        if self.proc.poll() is None:
            try:
                self.ctl("shutdown")
            except (BenchError, subprocess.TimeoutExpired, OSError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        subprocess.run(
            [str(RELEASE / "netemu"), "cleanup", "--prefix", self.prefix],
            capture_output=True, timeout=60,
        )
        self.log.close()


class Lab:
    def __init__(self, out_dir):
        self.prefix = f"wb{os.getpid()}"
        self.out = out_dir
        self.logs = out_dir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.emulators = []
        self.procs = []
        self._log_counter = 0
        # The fairness scenario drives two flows from two threads.
        self._lock = threading.Lock()

    def log_path(self, name):
        with self._lock:
            self._log_counter += 1
            counter = self._log_counter
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        return self.logs / f"{counter:05d}-{safe}.log"

    def spawn(self, argv, name, stdout=None):
        """Start a program; its stderr (and stdout unless captured) goes to a log file."""
        log = open(self.log_path(name), "w")
        proc = subprocess.Popen(
            argv,
            stdout=stdout if stdout is not None else log,
            stderr=log,
            start_new_session=True,
        )
        proc.log_file = log
        with self._lock:
            self.procs.append(proc)
        return proc

    def finish(self, proc, timeout):
        """Wait for `proc` (killing it after `timeout` s). Returns (exit code or None if it had
        to be killed, its CPU ns read from schedstat before it was reaped)."""
        deadline = time.monotonic() + timeout
        killed = False
        while True:
            try:
                exited = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT | os.WNOHANG)
            except ChildProcessError:
                exited = True
            if exited is not None:
                break
            if time.monotonic() > deadline and not killed:
                proc.kill()
                killed = True
            time.sleep(0.02)
        cpu = schedstat_ns(proc.pid)
        code = proc.wait()
        proc.log_file.close()
        with self._lock:
            if proc in self.procs:
                self.procs.remove(proc)
        return (None if killed else code), cpu

    def stop(self, proc, grace=3.0):
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        proc.log_file.close()
        with self._lock:
            if proc in self.procs:
                self.procs.remove(proc)

    def close(self):
        for proc in list(self.procs):
            try:
                self.stop(proc, grace=1.0)
            except OSError:
                pass
        for emulator in self.emulators:
            try:
                emulator.close()
            except Exception as e:  # noqa: BLE001 - keep cleaning up the rest
                print(f"bench: emulator cleanup: {e}")
        self.emulators.clear()
        subprocess.run(
            [str(RELEASE / "netemu"), "cleanup", "--orphans"], capture_output=True, timeout=60
        )


# Niceness of every program of the system under test (iperf3, msglat, weftd), the same for all
# arms. Kernel TCP's forwarding and receive work runs in the emulator's (SCHED_FIFO) context,
# while weft's relays are ordinary processes: on a busy host other tenants delay the latter
# only. A negative value shields all measured programs from other tenants alike.
SUT_NICE = 0


def in_ns(emulator, node, argv):
    prefix = ["nice", "-n", str(SUT_NICE)] if SUT_NICE else []
    return ["ip", "netns", "exec", emulator.namespace(node), *prefix, *argv]


class WeftOverlay:
    """One weftd per namespace of an emulator:
    weftd --node <node IP> --listen 0.0.0.0:PORT --neighbor <peer link IP>:PORT... --socket PATH
    --recovery MODE. Overlay links are UDP between the link addresses of neighbouring
    namespaces, so they cross the same emulated links as kernel TCP."""

    def __init__(self, lab, emulator, recovery, port, addressing="link", bin_dir=RELEASE,
                 secure=True):
        self.lab = lab
        # Links authenticated and encrypted (every daemon has a key, one admitted list names
        # them all), or `--insecure` for the encryption-off comparison.
        self.secure = secure
        self.weftd = str(Path(bin_dir) / "weftd")
        self.weft = str(Path(bin_dir) / "weft")
        self.emulator = emulator
        self.recovery = recovery
        self.port = port
        self.addressing = addressing
        self.daemons = {}
        self.sockets = {}
        self.ready_s = None

    @staticmethod
    def available(bin_dir=RELEASE):
        return all((Path(bin_dir) / f).exists() for f in ("weftd", "weft", "libweft.so"))

    def keys(self):
        """A key file per node and the admitted list naming them (`weft keygen`)."""
        em = self.emulator
        key_dir = self.lab.out / "keys" / f"{em.prefix}-{self.port}"
        key_dir.mkdir(parents=True, exist_ok=True)
        files, lines = {}, []
        for node in em.nodes:
            files[node] = key_dir / f"{node}.key"
            public = subprocess.run([self.weft, "keygen", "--force", str(files[node])],
                                    capture_output=True, text=True, check=True, timeout=10)
            lines.append(f"{em.address(node)} {public.stdout.strip()}")
        admitted = key_dir / "admitted"
        admitted.write_text("\n".join(lines) + "\n")
        return files, admitted

    def start(self, timeout=30.0):
        em = self.emulator
        started = time.monotonic()
        key_files, admitted = self.keys() if self.secure else (None, None)
        for node in em.nodes:
            sock = Path(f"/run/{em.prefix}-{node}-{self.recovery}-{self.port}.weft.sock")
            self.sockets[node] = sock
            argv = [self.weftd, "--node", em.address(node)]
            if self.secure:
                argv += ["--key", str(key_files[node]), "--admitted-keys", str(admitted)]
            else:
                argv += ["--insecure"]
            if self.addressing == "node":
                argv += ["--listen", f"{em.address(node)}:{self.port}"]
                for peer, _, _ in em.neighbours(node):
                    argv += ["--neighbor", f"{em.address(peer)}:{self.port}"]
            else:
                argv += ["--listen", f"0.0.0.0:{self.port}"]
                # The neighbour's node id names its key in the admitted list.
                for peer, _, peer_address in em.neighbours(node):
                    argv += ["--neighbor", f"{peer_address}:{self.port}/node={em.address(peer)}"]
            argv += ["--socket", str(sock), "--recovery", self.recovery]
            self.daemons[node] = self.lab.spawn(
                in_ns(em, node, argv), f"weftd-{self.recovery}-{node}"
            )
        # Ready when every daemon answers and has a route to every other node.
        addresses = {em.address(n) for n in em.nodes}
        deadline = time.monotonic() + timeout
        pending = set(em.nodes)
        while pending and time.monotonic() < deadline:
            for node in list(pending):
                if self.daemons[node].poll() is not None:
                    raise BenchError(
                        f"weftd ({self.recovery}) on {node} exited "
                        f"{self.daemons[node].returncode}; see {self.daemons[node].log_file.name}"
                    )
                status = self.status(node)
                if status is None:
                    continue
                routed = {str(r.get("dst")) for r in status.get("routes", [])}
                if addresses - {em.address(node)} <= routed:
                    pending.discard(node)
            if pending:
                time.sleep(0.05)
        if pending:
            raise BenchError(f"weftd ({self.recovery}): no full route table on {sorted(pending)} "
                             f"after {timeout:.0f} s")
        self.ready_s = time.monotonic() - started

    def status(self, node):
        """`weft status --json` of `node`'s daemon, or None if it does not answer. The control
        socket is a path, reachable from any network namespace."""
        try:
            out = subprocess.run(
                [self.weft, "--socket", str(self.sockets[node]), "status", "--json"],
                capture_output=True, text=True, timeout=10,
            )
        except subprocess.TimeoutExpired:
            return None
        if out.returncode != 0:
            return None
        try:
            return json.loads(out.stdout)
        except json.JSONDecodeError:
            return None

    def wait_listener(self, node, port, timeout=10.0):
        """Until `node`'s daemon lists `port` as a registered listener (a shimmed server's
        kernel socket listens before the shim has registered it with the daemon)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.status(node)
            if status and port in status.get("listeners", []):
                return True
            time.sleep(0.05)
        return False

    def busy(self):
        """What still moves on this overlay: sessions not yet finished and bytes queued or in
        flight on hop-by-hop links, per node; empty when quiet."""
        busy = {}
        for node in self.daemons:
            status = self.status(node)
            if status is None:
                busy[node] = "no status"
                continue
            open_sessions = [x for x in status.get("sessions", [])
                             if x.get("state") not in ("timewait", "closed")]
            backlog = sum((n.get("arq") or {}).get("queued_bytes", 0)
                          + (n.get("arq") or {}).get("in_flight_bytes", 0)
                          for n in status.get("neighbors", []))
            if open_sessions or backlog:
                busy[node] = f"{len(open_sessions)} open sessions, {backlog} B on links"
        return busy

    def wait_quiet(self, timeout):
        """Until nothing moves (see `busy`); returns what still did at the timeout."""
        deadline = time.monotonic() + timeout
        while True:
            busy = self.busy()
            if not busy or time.monotonic() > deadline:
                return busy
            time.sleep(0.2)

    def restart(self):
        self.stop()
        self.start()

    def wrap(self, node, argv):
        """Run `argv` unmodified over weft from `node`'s namespace."""
        return in_ns(
            self.emulator, node,
            [self.weft, "run", "--socket", str(self.sockets[node]), "--", *argv],
        )

    def cpu_ns(self):
        return sum(schedstat_ns(p.pid) for p in self.daemons.values())

    def stop(self):
        for proc in self.daemons.values():
            self.lab.stop(proc)
        self.daemons.clear()
