//! The Prometheus metrics of a node, rendered from a status snapshot (the same one `weft
//! status` shows) with `prometheus-client`. Every scrape builds a fresh registry from the
//! snapshot: the node's counters are already cumulative, so nothing has to be mirrored into
//! atomics as packets flow, and the packet path pays nothing between scrapes.
//!
//! Names carry their unit (`_seconds`, `_bytes`, `_ratio`; counters end in `_total`).
//! docs/metrics.md lists them.

use crate::emulation::EmulationCounters;
use crate::overlay::neighbor::LinkState;
use crate::overlay::status::NodeStatus;
use prometheus_client::encoding::{prometheus_text, text as openmetrics_text};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use std::sync::atomic::AtomicU64;

type Labels = Vec<(&'static str, String)>;
type CounterFamily = Family<Labels, Counter<u64>>;
type GaugeFamily = Family<Labels, Gauge<f64, AtomicU64>>;

/// What the I/O layer adds to the node's own snapshot.
#[derive(Debug, Default, Clone)]
pub struct DaemonFigures {
    pub control_clients: u64,
    pub datagram_ports: u64,
    pub datagram_proxies: u64,
    /// Datagrams the I/O layer dropped, by reason.
    pub dropped: Vec<(&'static str, u64)>,
    pub udp_send_errors: u64,
    /// Group datagrams sent once to loopback for the kernel to deliver to member sockets.
    pub group_loopback_sends: u64,
    /// What the emulation layer did to each emulated neighbour's packets (by address).
    pub link_emulation: Vec<(String, EmulationCounters)>,
}

/// The two text encodings a scraper may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Prometheus text format 0.0.4 (what every scraper reads).
    Prometheus,
    /// OpenMetrics 1.0 text (units declared, `# EOF` at the end).
    OpenMetrics,
}

impl Encoding {
    /// From the scraper's `Accept` header: OpenMetrics only when asked for.
    pub fn negotiate(accept: Option<&str>) -> Encoding {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Encoding::OpenMetrics,
            _ => Encoding::Prometheus,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Encoding::Prometheus => prometheus_text::CONTENT_TYPE,
            Encoding::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// Registers families and fills them; keeps the call sites to one line per metric.
struct Builder {
    registry: Registry,
}

impl Builder {
    fn counter(&mut self, name: &str, help: &str, unit: Option<Unit>) -> CounterFamily {
        let f = CounterFamily::default();
        match unit {
            Some(u) => self.registry.register_with_unit(name, help, u, f.clone()),
            None => self.registry.register(name, help, f.clone()),
        }
        f
    }

    fn gauge(&mut self, name: &str, help: &str, unit: Option<Unit>) -> GaugeFamily {
        let f = GaugeFamily::default();
        match unit {
            Some(u) => self.registry.register_with_unit(name, help, u, f.clone()),
            None => self.registry.register(name, help, f.clone()),
        }
        f
    }
}

fn ratio() -> Option<Unit> {
    Some(Unit::Other("ratio".into()))
}

fn set(f: &GaugeFamily, labels: &Labels, v: f64) {
    f.get_or_create(labels).set(v);
}

fn add(f: &CounterFamily, labels: &Labels, v: u64) {
    f.get_or_create(labels).inc_by(v);
}

fn state_name(s: LinkState) -> &'static str {
    match s {
        LinkState::Down => "down",
        LinkState::Init => "init",
        LinkState::Up => "up",
    }
}

/// The metrics text for one scrape.
pub fn render(status: &NodeStatus, daemon: &DaemonFigures, encoding: Encoding) -> String {
    let mut b = Builder {
        registry: Registry::with_prefix("weft"),
    };
    let none: Labels = Vec::new();

    let info = b.gauge(
        "info",
        "The node: its overlay address and weftd's version (always 1)",
        None,
    );
    set(
        &info,
        &vec![
            ("node", status.node.to_string()),
            ("version", env!("CARGO_PKG_VERSION").to_string()),
            ("incarnation", status.incarnation.to_string()),
        ],
        1.0,
    );
    let uptime = b.gauge("uptime", "Time since weftd started", Some(Unit::Seconds));
    set(&uptime, &none, status.uptime_ms as f64 / 1e3);

    // ----- links, one series per neighbour -----
    let link_state = b.gauge(
        "link_state",
        "1 for the state the link to a neighbour is in (down, init, up), 0 for the others",
        None,
    );
    let link_up = b.gauge(
        "link_up",
        "1 while the link is two-way and carries traffic",
        None,
    );
    let rtt = b.gauge(
        "link_rtt",
        "Smoothed round-trip time from hellos",
        Some(Unit::Seconds),
    );
    let min_rtt = b.gauge(
        "link_min_rtt",
        "Smallest recent round-trip time",
        Some(Unit::Seconds),
    );
    let hello_loss = b.gauge(
        "link_hello_loss",
        "Fraction of the neighbour's hellos lost (moving average)",
        ratio(),
    );
    let data_loss = b.gauge(
        "link_data_loss",
        "Fraction of data packets the reliable link lost (moving average)",
        ratio(),
    );
    let cost = b.gauge(
        "link_cost",
        "The link's routing cost (microseconds with the latency metric, hops with the hop metric)",
        None,
    );
    let cut = b.gauge(
        "link_cut",
        "1 while the link is cut by `weft link cut`",
        None,
    );
    let bytes_in = b.counter(
        "link_received",
        "Bytes received from the neighbour (every packet kind)",
        Some(Unit::Bytes),
    );
    let bytes_out = b.counter(
        "link_sent",
        "Bytes sent to the neighbour (every packet kind)",
        Some(Unit::Bytes),
    );
    let packets_in = b.counter(
        "link_received_packets",
        "Packets received from the neighbour",
        None,
    );
    let packets_out = b.counter("link_sent_packets", "Packets sent to the neighbour", None);
    let retx = b.counter(
        "link_retransmissions",
        "Data packets the reliable link sent again",
        None,
    );
    let copies = b.counter(
        "link_redundant_copies",
        "Redundant copies sent on the sparse link (not retransmissions)",
        None,
    );
    let timeouts = b.counter(
        "link_timeouts",
        "Retransmission timeouts of the reliable link",
        None,
    );
    let cwnd = b.gauge(
        "link_cwnd",
        "Congestion window of the reliable link",
        Some(Unit::Bytes),
    );
    let in_flight = b.gauge(
        "link_in_flight",
        "Data sent on the reliable link and not yet acknowledged",
        Some(Unit::Bytes),
    );
    let queued = b.gauge(
        "link_queued",
        "Data waiting for the reliable link's window",
        Some(Unit::Bytes),
    );
    let emu_dropped = b.counter(
        "link_emulation_dropped_packets",
        "Packets the link emulation dropped, by reason (loss, queue)",
        None,
    );
    for n in &status.neighbors {
        let l: Labels = vec![
            ("peer", n.addr.clone()),
            ("node", n.node.map_or_else(String::new, |id| id.to_string())),
        ];
        for s in [LinkState::Down, LinkState::Init, LinkState::Up] {
            let mut ls = l.clone();
            ls.push(("state", state_name(s).into()));
            set(&link_state, &ls, f64::from(u8::from(n.state == s)));
        }
        set(&link_up, &l, f64::from(u8::from(n.state == LinkState::Up)));
        if let Some(r) = n.rtt_ms {
            set(&rtt, &l, r / 1e3);
        }
        if let Some(r) = n.min_rtt_ms {
            set(&min_rtt, &l, r / 1e3);
        }
        set(&hello_loss, &l, n.hello_loss_ratio);
        set(&cost, &l, f64::from(n.cost.unwrap_or(0)));
        set(&cut, &l, f64::from(u8::from(n.cut)));
        add(&bytes_in, &l, n.bytes_in);
        add(&bytes_out, &l, n.bytes_out);
        add(&packets_in, &l, n.packets_in);
        add(&packets_out, &l, n.packets_out);
        if let Some(a) = &n.arq {
            set(&data_loss, &l, a.loss_rate_ppm as f64 / 1e6);
            add(&retx, &l, a.retransmissions);
            add(&copies, &l, a.redundant_copies);
            add(&timeouts, &l, a.timeouts);
            set(&cwnd, &l, a.cwnd_bytes as f64);
            set(&in_flight, &l, a.in_flight_bytes as f64);
            set(&queued, &l, a.queued_bytes as f64);
        }
        if let Some((_, e)) = daemon.link_emulation.iter().find(|(a, _)| *a == n.addr) {
            for (reason, v) in [("loss", e.dropped_loss), ("queue", e.dropped_queue)] {
                let mut lr = l.clone();
                lr.push(("reason", reason.into()));
                add(&emu_dropped, &lr, v);
            }
        }
    }

    // ----- routing, sessions, groups -----
    let routes = b.gauge("routes", "Nodes this node has a route to", None);
    set(&routes, &none, status.routes.len() as f64);
    let known = b.gauge(
        "known_nodes",
        "Nodes in the link-state database (reachable or not)",
        None,
    );
    set(&known, &none, status.known_nodes.len() as f64);
    let sessions = b.gauge("sessions", "Open end-to-end sessions, by state", None);
    // Every state has a series (0 included), so the family is there before any session.
    let mut by_state: std::collections::BTreeMap<&str, u64> = [
        "synsent",
        "synreceived",
        "established",
        "timewait",
        "closed",
    ]
    .into_iter()
    .map(|s| (s, 0))
    .collect();
    for s in &status.sessions {
        *by_state.entry(s.state.as_str()).or_default() += 1;
    }
    for (state, count) in by_state {
        set(&sessions, &vec![("state", state.to_string())], count as f64);
    }
    let listeners = b.gauge("listeners", "Overlay ports with a session listener", None);
    set(&listeners, &none, status.listeners.len() as f64);
    let groups = b.gauge(
        "multicast_groups",
        "Multicast groups with members anywhere in the overlay",
        None,
    );
    set(&groups, &none, status.multicast.groups.len() as f64);
    let local_members = b.gauge(
        "multicast_local_sockets",
        "Local sockets joined to multicast groups",
        None,
    );
    set(
        &local_members,
        &none,
        status
            .multicast
            .groups
            .iter()
            .map(|g| g.local_sockets)
            .sum::<usize>() as f64,
    );
    let mc = &status.multicast_counters;
    let mc_copies = b.counter(
        "multicast_copies_sent",
        "Multicast copies sent on links (one per tree branch)",
        None,
    );
    add(&mc_copies, &none, mc.copies_sent);
    let mc_delivered = b.counter(
        "multicast_delivered",
        "Multicast datagrams delivered to local sockets",
        None,
    );
    add(&mc_delivered, &none, mc.delivered);

    // ----- what happened to packets -----
    let c = &status.counters;
    let dropped = b.counter("dropped_packets", "Packets dropped, by reason", None);
    let reasons: [(&str, u64); 12] = [
        ("unknown_sender", c.unknown_sender),
        ("malformed", c.malformed),
        ("wire_version", c.wire_version_mismatch),
        ("unsupported", c.unsupported),
        ("link_cut", c.dropped_cut),
        ("ttl_expired", c.ttl_expired),
        ("no_route", c.no_route),
        ("backpressure", c.dropped_backpressure),
        ("reliable_before_up", c.reliable_before_up),
        ("multicast_rpf", mc.rpf_dropped),
        ("multicast_no_members", mc.no_members),
        ("multicast_order_skipped", mc.order_skipped),
    ];
    for (reason, v) in reasons.into_iter().chain(daemon.dropped.iter().copied()) {
        add(&dropped, &vec![("reason", reason.to_string())], v);
    }
    let plain: [(&str, &str, u64); 10] = [
        (
            "forwarded_packets",
            "Packets relayed toward another node",
            c.forwarded,
        ),
        (
            "datagrams_delivered",
            "Overlay datagrams delivered to local programs",
            c.datagrams_delivered,
        ),
        (
            "rerouted_packets",
            "Packets of a dead link re-sent along the new route",
            c.rerouted,
        ),
        (
            "ce_marked_packets",
            "Packets marked congestion-experienced at a long queue",
            c.ce_marked,
        ),
        (
            "neighbors_declared_dead",
            "Neighbours declared dead after the dead interval of silence",
            c.neighbors_declared_dead,
        ),
        (
            "fast_deaths",
            "Of those, declared dead by fast liveness (silence on a link that carried traffic)",
            c.fast_deaths,
        ),
        (
            "fast_keepalives",
            "Hellos sent because a link that carries traffic had been silent for the fast interval",
            c.fast_keepalives,
        ),
        (
            "neighbor_leaves",
            "Neighbours that said they were leaving (a clean stop): links taken down at once",
            c.neighbor_leaves,
        ),
        (
            "neighbor_restarts",
            "Neighbours seen with a new incarnation (restarted)",
            c.neighbor_restarts,
        ),
        (
            "sessions_refused",
            "Incoming sessions refused (no listener, limits)",
            c.sessions_refused,
        ),
    ];
    for (name, help, v) in plain {
        let f = b.counter(name, help, None);
        add(&f, &none, v);
    }
    let udp_errors = b.counter(
        "udp_send_errors",
        "Overlay datagrams the kernel refused to send",
        None,
    );
    add(&udp_errors, &none, daemon.udp_send_errors);
    let loopback_sends = b.counter(
        "multicast_loopback_sends",
        "Group datagrams sent once to loopback for the kernel to deliver to member sockets",
        None,
    );
    add(&loopback_sends, &none, daemon.group_loopback_sends);
    let clients = b.gauge(
        "control_clients",
        "Connections to the control socket (CLI and shimmed programs)",
        None,
    );
    set(&clients, &none, daemon.control_clients as f64);
    let ports = b.gauge("datagram_ports", "Overlay ports bound for datagrams", None);
    set(&ports, &none, daemon.datagram_ports as f64);
    let proxies = b.gauge(
        "datagram_proxies",
        "Proxy sockets carrying shimmed programs' datagrams",
        None,
    );
    set(&proxies, &none, daemon.datagram_proxies as f64);

    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = match encoding {
        Encoding::Prometheus => prometheus_text::encode(&mut out, &b.registry),
        Encoding::OpenMetrics => openmetrics_text::encode(&mut out, &b.registry),
    };
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::overlay::{NeighborConfig, Node, NodeConfig};
    use weft_core::{Instant, NodeId};

    #[test]
    fn renders_every_family_with_units_in_the_names() {
        let mut cfg = NodeConfig::new(NodeId::from(std::net::Ipv4Addr::new(127, 0, 0, 1)));
        cfg.neighbors.push(NeighborConfig {
            addr: "127.0.0.2:7470".parse().unwrap(),
            id: None,
        });
        let now = Instant::from_micros(1_000_000);
        let node = Node::new(cfg, now, 1, 1, 1);
        let figures = DaemonFigures {
            dropped: vec![("no_listener", 3)],
            ..Default::default()
        };
        let text = render(&node.status(now), &figures, Encoding::Prometheus);
        for want in [
            "weft_link_up{peer=\"127.0.0.2:7470\",node=\"\"} 0",
            "# TYPE weft_link_sent_bytes_total counter",
            "weft_link_state{",
            "weft_dropped_packets_total{reason=\"no_listener\"} 3",
            "weft_uptime_seconds 0",
        ] {
            assert!(text.contains(want), "{want} missing from\n{text}");
        }
        let open = render(&node.status(now), &figures, Encoding::OpenMetrics);
        assert!(open.ends_with("# EOF\n"));
        assert!(open.contains("# UNIT weft_link_sent_bytes bytes"));
    }
}
