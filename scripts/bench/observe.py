"""What the weft daemons did during one benchmark cell, from `weft status --json`: the hop-by-hop
links' ARQ counters (difference over the cell, summed over every link of every node), the
largest instantaneous window/queue seen, node drop counters, and the last summary of every
session the end nodes had. This is how a missed goal is explained, not measured."""

import threading

# Cumulative per-link ARQ counters; the difference over a cell is what the cell caused.
ARQ_COUNTERS = ["packets_sent", "retransmissions", "losses_by_sack", "losses_by_timer",
                "timeouts", "congestion_events", "duplicates", "redundant_copies",
                "redundant_copies_used", "redundant_copies_skipped", "acks_sent"]
# Cumulative per-neighbour datagram counters (everything sent on the link: ARQ data, standalone
# acks, copies, hellos, flooding).
LINK_COUNTERS = ["packets_out", "bytes_out"]
# Instantaneous per-link ARQ figures; the cell keeps the largest seen.
ARQ_GAUGES = ["cwnd_bytes", "srtt_ms", "in_flight_bytes", "queued_bytes"]
NODE_COUNTERS = ["no_route", "dropped_cut", "ttl_expired", "rerouted", "ce_marked",
                 "dropped_backpressure", "neighbors_declared_dead", "reliable_before_up"]
# The daemon's socket and event loop (cumulative): datagrams per system call, wake-ups.
UDP_COUNTERS = ["recv_calls", "recv_datagrams", "recv_coalesced", "send_calls", "send_messages",
                "send_datagrams"]
SESSION_FIELDS = ["state", "rtt_ms", "cwnd_bytes", "bytes_sent", "bytes_received", "retransmits",
                  "fast_retransmits", "timeouts", "ce_reductions"]


def link_counters(status):
    out = {}
    for n in status.get("neighbors", []):
        arq = n.get("arq") or {}
        out[n.get("addr")] = {k: arq.get(k, 0) for k in ARQ_COUNTERS + ARQ_GAUGES}
        out[n.get("addr")].update({k: n.get(k, 0) for k in LINK_COUNTERS})
    return out


class Observer:
    """Snapshot every daemon of `overlay` now; `finish()` snapshots again and returns the
    differences. Meanwhile a thread samples the `watch` nodes every `interval` s for sessions
    (they disappear from status once closed) and gauges."""

    def __init__(self, overlay, watch, interval=0.5):
        self.overlay = overlay
        self.watch = list(watch)
        self.interval = interval
        self.before = {node: overlay.status(node) for node in overlay.daemons}
        self.sessions = {}
        self.gauges = {k: 0 for k in ARQ_GAUGES}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _take(self, node, status):
        for link in link_counters(status).values():
            for k in ARQ_GAUGES:
                self.gauges[k] = max(self.gauges[k], link[k] or 0)
        for s in status.get("sessions", []):
            key = (node, s.get("id"))
            summary = {k: s.get(k) for k in SESSION_FIELDS}
            summary["node"] = node
            self.sessions[key] = summary

    def _sample(self):
        while not self._stop.wait(self.interval):
            for node in self.watch:
                status = self.overlay.status(node)
                if status:
                    self._take(node, status)

    def finish(self):
        self._stop.set()
        self._thread.join()
        arq = {k: 0 for k in ARQ_COUNTERS + LINK_COUNTERS}
        nodes = {k: 0 for k in NODE_COUNTERS}
        io = {k: 0 for k in UDP_COUNTERS + ["loop_passes"]}
        per_link = []
        for node in self.overlay.daemons:
            after = self.overlay.status(node)
            before = self.before.get(node)
            if not after or not before:
                continue
            self._take(node, after)
            old = link_counters(before)
            for addr, now in link_counters(after).items():
                was = old.get(addr, {})
                delta = {k: (now[k] or 0) - (was.get(k) or 0)
                         for k in ARQ_COUNTERS + LINK_COUNTERS}
                for k in ARQ_COUNTERS + LINK_COUNTERS:
                    arq[k] += delta[k]
                if delta["packets_sent"]:
                    per_link.append({"node": node, "peer": addr, **delta,
                                     **{k: now[k] for k in ARQ_GAUGES}})
            c0, c1 = before.get("counters", {}), after.get("counters", {})
            for k in NODE_COUNTERS:
                nodes[k] += (c1.get(k) or 0) - (c0.get(k) or 0)
            u0, u1 = before.get("udp") or {}, after.get("udp") or {}
            for k in UDP_COUNTERS:
                io[k] += (u1.get(k) or 0) - (u0.get(k) or 0)
            d0, d1 = before.get("daemon_counters") or {}, after.get("daemon_counters") or {}
            io["loop_passes"] += (d1.get("loop_passes") or 0) - (d0.get("loop_passes") or 0)
        return {"arq": arq, "arq_max": self.gauges, "node_counters": nodes, "io": io,
                "links": per_link, "sessions": list(self.sessions.values())}
