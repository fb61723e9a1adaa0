//! The thin I/O layer around the sans-I/O node: one mio event loop on one thread, the overlay
//! UDP socket, the control socket and signals. Everything protocol-shaped lives in `overlay`.

pub mod access;
mod clients;
pub mod clock;
pub mod control;
pub mod echo;
mod groups;
mod kernel_groups;
mod listeners;
mod metrics;
mod proxies;
mod reload;
mod rings;
mod stop;
pub mod streams;
pub mod udp;

use crate::config::DaemonConfig;
use crate::emulation::{Emulation, EmulationStatus, Verdict};
use crate::link_security::{LinkSecurity, SecurityStatus};
use crate::overlay::links::NeighborStatus;
use crate::overlay::{Node, NodeEvent, SendError};
use clock::Clock;
use control::{Connection, Listener};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::os::fd::AsRawFd;
use tracing::{debug, info, warn};
use udp::{OverlaySocket, TxQueue};
use weft_core::Endpoint;
use weft_ipc::{fdpass, Event, Reply, Request, Welcome, MAX_MESSAGE};

const UDP: Token = Token(0);
const LISTENER: Token = Token(1);
const SIGNALS: Token = Token(2);
const CONN_BASE: usize = 1 << 32;
/// Loop wake-up period while a clean stop waits for sessions.
const STOP_POLL: std::time::Duration = std::time::Duration::from_millis(10);
const STREAM_BASE: usize = 2 << 32;
const PROXY_BASE: usize = 3 << 32;
const CLAIM_BASE: usize = 4 << 32;
const RING_BASE: usize = 5 << 32;

/// Where datagrams for a local port go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PortOwner {
    /// A control connection (the CLI's `weft recv`): delivered as `Event::Datagram`.
    Control(usize),
    /// A shimmed program's kernel UDP socket: sent there from the source's proxy.
    Deliver {
        conn: usize,
        to: std::net::SocketAddrV4,
    },
}

impl PortOwner {
    fn conn(&self) -> usize {
        match *self {
            PortOwner::Control(c) | PortOwner::Deliver { conn: c, .. } => c,
        }
    }
}

#[derive(Debug, Default, Clone, Copy, Serialize)]
struct DaemonCounters {
    datagrams_no_listener: u64,
    datagrams_dropped_slow_client: u64,
    udp_send_errors: u64,
    control_malformed: u64,
    /// Datagrams a proxy could not put on the overlay (no route, too large).
    proxy_send_failed: u64,
    /// Group datagrams sent once to loopback for the kernel to deliver to member sockets.
    group_loopback_sends: u64,
    /// Passes of the event loop (wake-ups from epoll, timers included).
    loop_passes: u64,
}

/// Version of the `weft status --json` document. Bump it when a field changes meaning or
/// disappears (adding a field does not); docs/status-json.md describes each version.
pub const STATUS_SCHEMA_VERSION: u32 = 1;

#[derive(Serialize)]
struct DaemonStatus<'a> {
    schema_version: u32,
    #[serde(flatten)]
    node: crate::overlay::status::NodeStatus,
    emulation: bool,
    neighbors: Vec<DaemonNeighbor>,
    listen: String,
    socket: String,
    recovery: weft_transport::session::RecoveryMode,
    clients: Vec<ClientStatus>,
    datagram_ports: Vec<u16>,
    datagram_proxies: usize,
    /// `kernel` (memberships held by the kernel on loopback) or `addresses`.
    group_delivery: &'static str,
    /// Kernel delivery: member-socket checks run, and closed sockets they found.
    member_checks: u64,
    member_sockets_closed: u64,
    daemon_counters: &'a DaemonCounters,
    udp: udp::UdpCounters,
    rings: rings::RingCounters,
    /// Sessions for shimmed listeners: held for a free accept-queue slot, injected, claimed,
    /// and each way one left unclaimed.
    accept_backlog: crate::streams::backlog::BacklogCounters,
    security: SecurityStatus,
    access: AccessStatus,
}

/// Who may use the control socket and what it refused (`access`).
#[derive(Serialize)]
struct AccessStatus {
    /// The socket's group (gid), mode 0660.
    socket_gid: Option<u32>,
    admin_gid: Option<u32>,
    #[serde(flatten)]
    counters: access::AccessCounters,
}

/// A neighbour as the node sees it, with what the emulation layer does to its packets.
#[derive(Serialize)]
struct DaemonNeighbor {
    #[serde(flatten)]
    link: NeighborStatus,
    emulation: Option<EmulationStatus>,
}

#[derive(Serialize)]
struct ClientStatus {
    pid: i32,
    uid: u32,
    kind: Option<String>,
}

pub struct Daemon {
    cfg: DaemonConfig,
    poll: Poll,
    clock: Clock,
    node: Node,
    /// Nearest the socket: every datagram authenticated and decrypted on the way in, sealed
    /// on the way out (nothing with `--insecure`).
    security: LinkSecurity,
    /// Between link security and the node: what `--emulation` does to received packets.
    emulation: Emulation,
    udp: OverlaySocket,
    udp_backlog: TxQueue,
    udp_wants_write: bool,
    listener: Listener,
    /// Who administers; what every connection may do (`access`).
    policy: access::Policy,
    socket_gid: Option<u32>,
    access_counters: access::AccessCounters,
    signals: SignalFd,
    conns: HashMap<usize, Connection>,
    next_conn: usize,
    ports: BTreeMap<u16, PortOwner>,
    counters: DaemonCounters,
    stop: bool,
    streams: HashMap<u64, streams::AppStream>,
    stream_by_session: HashMap<crate::overlay::SessionId, u64>,
    stream_by_inode: HashMap<u64, u64>,
    next_stream: u64,
    dirty_streams: std::collections::BTreeSet<u64>,
    /// Sessions whose application closed while the peer may still be sending: data that
    /// arrives for them resets the session, as a closed TCP socket answers with RST.
    released_sessions: std::collections::HashSet<crate::overlay::SessionId>,
    outcomes: HashMap<u64, streams::Outcome>,
    listeners: listeners::Listeners,
    scratch: Vec<u8>,
    /// Fds to attach to the reply being built (set by `handle_request`).
    reply_fds: Vec<std::os::fd::OwnedFd>,
    ring_counters: rings::RingCounters,
    /// Per local port: how its datagrams to groups travel, and the uid that set that.
    mc_send: HashMap<u16, (groups::SendOptions, u32)>,
    proxies: proxies::Proxies,
    /// What SIGHUP reloads from (None: started without a configuration to re-read).
    reloader: Option<reload::Reloader>,
    /// The Prometheus endpoint, when `metrics` is set.
    metrics: Option<metrics::MetricsServer>,
    /// Set by SIGTERM/SIGINT: until when local sessions may finish (`stop.rs`).
    stopping: Option<std::time::Instant>,
    /// Set once the sessions are finished or reset: until when the links may deliver the
    /// last resets before the node leaves (`stop.rs`).
    lingering: Option<std::time::Instant>,
    echo_budget: echo::EchoBudget,
    /// Kernel delivery of group datagrams, when this daemon holds its namespace's claim.
    kernel_groups: Option<kernel_groups::KernelGroups>,
}

fn ipc_err(errno: i32, message: impl Into<String>) -> Reply {
    Reply::Error {
        errno,
        message: message.into(),
    }
}

impl Daemon {
    pub fn new(cfg: DaemonConfig) -> Result<Daemon, String> {
        let mut mask = SigSet::empty();
        for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
            mask.add(s);
        }
        mask.thread_block()
            .map_err(|e| format!("blocking signals: {e}"))?;
        let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(|e| format!("signalfd: {e}"))?;
        // A peer closing a socketpair must not kill the daemon.
        // SAFETY: ignoring SIGPIPE process-wide is what every network daemon does.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        }
        let udp = OverlaySocket::bind(cfg.listen)
            .map_err(|e| format!("cannot bind {}: {e}", cfg.listen))?;
        let group = |name: &str, spec: &Option<String>| match spec {
            Some(g) => access::resolve_group(g)
                .map(Some)
                .map_err(|e| format!("`{name}`: {e}")),
            None => Ok(None),
        };
        let socket_gid = group("socket_group", &cfg.access.socket_group)?;
        let admin_gid = group("admin_group", &cfg.access.admin_group)?;
        let listener = Listener::bind(&cfg.socket, socket_gid)
            .map_err(|e| format!("control socket {}: {e}", cfg.socket.display()))?;
        let poll = Poll::new().map_err(|e| format!("epoll: {e}"))?;
        let reg = poll.registry();
        reg.register(&mut SourceFd(&udp.as_raw_fd()), UDP, Interest::READABLE)
            .and_then(|_| {
                reg.register(
                    &mut SourceFd(&listener.as_raw_fd()),
                    LISTENER,
                    Interest::READABLE,
                )
            })
            .and_then(|_| {
                reg.register(
                    &mut SourceFd(&signals.as_raw_fd()),
                    SIGNALS,
                    Interest::READABLE,
                )
            })
            .map_err(|e| format!("epoll register: {e}"))?;
        let metrics = match cfg.metrics {
            Some(addr) => Some(metrics::MetricsServer::bind(addr, poll.registry())?),
            None => None,
        };
        let clock = Clock::new();
        let incarnation: u32 = rand::random::<u32>() | 1;
        let node = Node::new(
            cfg.node.clone(),
            clock.now(),
            incarnation,
            clock::first_sequence(),
            rand::random(),
        );
        let emulation = Emulation::new(cfg.emulation.enabled, &cfg.emulation.links, rand::random());
        let wall_clock_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        let security = LinkSecurity::new(&cfg.security, clock.now(), wall_clock_us);
        Ok(Daemon {
            cfg,
            poll,
            clock,
            node,
            security,
            emulation,
            udp,
            udp_backlog: TxQueue::default(),
            udp_wants_write: false,
            listener,
            policy: access::Policy::new(admin_gid),
            socket_gid,
            access_counters: Default::default(),
            signals,
            conns: HashMap::new(),
            next_conn: 0,
            ports: BTreeMap::new(),
            counters: DaemonCounters::default(),
            stop: false,
            streams: HashMap::new(),
            stream_by_session: HashMap::new(),
            stream_by_inode: HashMap::new(),
            next_stream: 0,
            dirty_streams: Default::default(),
            released_sessions: Default::default(),
            outcomes: HashMap::new(),
            listeners: listeners::Listeners::default(),
            scratch: vec![0; 64 * 1024],
            reply_fds: Vec::new(),
            ring_counters: Default::default(),
            mc_send: HashMap::new(),
            proxies: proxies::Proxies::default(),
            reloader: None,
            metrics,
            stopping: None,
            lingering: None,
            echo_budget: Default::default(),
            kernel_groups: None,
        })
        .map(|mut d| {
            d.start_kernel_groups();
            d
        })
    }

    pub fn run(mut self) -> Result<(), String> {
        info!(
            node = %self.node.id(),
            listen = %self.cfg.listen,
            socket = %self.cfg.socket.display(),
            neighbors = self.cfg.node.neighbors.len(),
            metrics = %self.metrics.as_ref().and_then(|m| m.local_addr()).map_or("off".into(), |a| format!("http://{a}/metrics")),
            security = if self.security.is_secure() { "encrypted" } else { "insecure" },
            public_key = self.security.public_key().map(|k| k.to_string()).unwrap_or_default(),
            "weftd running"
        );
        let mut events = Events::with_capacity(256);
        while !self.stop {
            // Streams left with work (a busy ring yields after a few passes) must not wait.
            let mut timeout = if self.dirty_streams.is_empty() {
                let now = self.clock.now();
                let next = [
                    self.node.poll_timeout(),
                    self.listeners.backlogs.poll_timeout(),
                    self.emulation.next_due(),
                    self.security.poll_timeout(now),
                ]
                .into_iter()
                .flatten()
                .min()
                .map(|t| self.clock.until(t));
                match (next, self.kernel_check_timeout()) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            } else {
                Some(std::time::Duration::ZERO)
            };
            if self.stopping.is_some() {
                // Look at the sessions' progress often while stopping.
                timeout = Some(timeout.map_or(STOP_POLL, |t| t.min(STOP_POLL)));
            }
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(format!("epoll: {e}"));
                }
            }
            self.counters.loop_passes += 1;
            for ev in events.iter() {
                match ev.token() {
                    UDP => {
                        if ev.is_readable() {
                            self.read_udp();
                        }
                        if ev.is_writable() {
                            self.flush_udp();
                        }
                    }
                    LISTENER => self.accept_clients(),
                    SIGNALS => self.read_signals(),
                    metrics::LISTENER => self.metrics_listener_event(),
                    Token(t) if t >= metrics::CONN_BASE => self.metrics_conn_event(
                        t - metrics::CONN_BASE,
                        ev.is_readable() || ev.is_read_closed(),
                        ev.is_writable(),
                    ),
                    Token(t) if t >= RING_BASE => self.ring_event((t - RING_BASE) as u64),
                    Token(t) if t >= CLAIM_BASE => self.claim_event((t - CLAIM_BASE) as u16),
                    Token(t) if t >= PROXY_BASE => self.read_proxy(t - PROXY_BASE),
                    Token(t) if t >= STREAM_BASE => {
                        self.stream_event(
                            (t - STREAM_BASE) as u64,
                            ev.is_readable(),
                            ev.is_writable(),
                            ev.is_write_closed(),
                        );
                    }
                    Token(t) if t >= CONN_BASE => {
                        let id = t - CONN_BASE;
                        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                            self.read_client(id);
                        }
                        if ev.is_writable() {
                            self.flush_client(id);
                        }
                    }
                    Token(_) => {}
                }
            }
            let now = self.clock.now();
            self.security.handle_timeout(now);
            // Emulated packets whose time has come.
            while let Some((from, packet)) = self.emulation.pop_due(now) {
                self.node.handle_datagram(now, from, &packet);
            }
            if self.node.poll_timeout().is_some_and(|t| t <= now) {
                self.node.handle_timeout(now);
            }
            self.drain_node();
            self.service_streams();
            self.housekeeping();
            self.flush_udp();
            if let Some(deadline) = self.stopping {
                self.continue_stop(deadline);
            }
        }
        info!("weftd stopping");
        Ok(())
    }

    fn read_signals(&mut self) {
        while let Ok(Some(info)) = self.signals.read_signal() {
            if info.ssi_signo == Signal::SIGHUP as u32 {
                info!("SIGHUP: reloading the configuration");
                self.reload();
            } else {
                info!(signal = info.ssi_signo, "signal received: stopping");
                self.begin_stop();
            }
        }
    }

    // ----- overlay UDP --------------------------------------------------------------------

    fn read_udp(&mut self) {
        // Bounded so that a flood cannot starve clients and timers.
        for _ in 0..64 {
            let n = match self.udp.recv_batch() {
                Ok(n) => n,
                Err(e) => {
                    warn!("overlay socket receive: {e}");
                    return;
                }
            };
            if n == 0 {
                return;
            }
            let now = self.clock.now();
            for i in 0..n {
                let (from, datagrams) = self.udp.received_mut(i);
                for data in datagrams {
                    // Authenticated and decrypted before anything else reads it.
                    let Some(packet) = self.security.open(now, from, data) else {
                        continue;
                    };
                    if self.emulation.admit(now, from, packet) == Verdict::Pass {
                        self.node.handle_datagram(now, from, packet);
                    }
                }
            }
            self.bind_identities();
            self.drain_node();
        }
    }

    fn flush_udp(&mut self) {
        while !self.udp_backlog.is_empty() {
            let sent = match self.udp.send_batch(self.udp_backlog.iter()) {
                Ok(n) => n,
                Err(e) => {
                    self.counters.udp_send_errors += 1;
                    debug!("overlay send to {:?}: {e}", self.udp_backlog.front_dst());
                    1
                }
            };
            if sent == 0 {
                break;
            }
            self.udp_backlog.consume(sent);
        }
        // Ask for writability only while something waits for it (one epoll_ctl per change).
        let want_write = !self.udp_backlog.is_empty();
        if want_write != self.udp_wants_write {
            self.udp_wants_write = want_write;
            let interest = if want_write {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            let _ = self.poll.registry().reregister(
                &mut SourceFd(&self.udp.as_raw_fd()),
                UDP,
                interest,
            );
        }
    }

    /// Keys that link handshakes proved for neighbours' node ids: the keys that may sign
    /// their flooded state.
    fn bind_identities(&mut self) {
        while let Some((node, key)) = self.security.poll_identity() {
            self.node.bind_neighbor_key(node, key);
        }
    }

    /// Moves everything the node produced to where it goes.
    fn drain_node(&mut self) {
        let now = self.clock.now();
        let (node, security) = (&mut self.node, &mut self.security);
        // Each datagram is sealed where the node wrote it; one without a session yet is
        // dropped (counted) and the node's own retries resend it.
        while self.udp_backlog.push_with(|buf| loop {
            let start = buf.len();
            let t = node.poll_transmit(now, buf)?;
            match security.seal(now, t.dst, buf, start) {
                Some(len) => return Some((t.dst, len)),
                None => buf.truncate(start),
            }
        }) {}
        while self
            .udp_backlog
            .push_with(|buf| security.poll_transmit(buf))
        {}
        // Sends are batched until the end of the loop iteration (fewer, larger sendmmsg and
        // GSO runs), unless enough piled up to fill a batch now.
        if self.udp_backlog.len() >= udp::BATCH * 4 {
            self.flush_udp();
        }
        while let Some(ev) = self.node.poll_event() {
            match ev {
                NodeEvent::Datagram {
                    src,
                    dst,
                    payload,
                    ttl,
                } => self.deliver_datagram(src, dst, payload, ttl),
                NodeEvent::RoutesChanged => {}
                NodeEvent::Incoming { id, port, remote } => self.incoming_session(id, port, remote),
                NodeEvent::Session { id, event } => self.session_event(id, event),
            }
        }
    }

    fn deliver_datagram(&mut self, src: Endpoint, dst: Endpoint, payload: Vec<u8>, ttl: u8) {
        if dst.node.is_multicast() {
            return self.deliver_group(src, dst, &payload, ttl);
        }
        match self.ports.get(&dst.port) {
            Some(PortOwner::Control(id)) => {
                let id = *id;
                let Ok(rec) = (Event::Datagram {
                    src,
                    dst_port: dst.port,
                    payload,
                })
                .encode() else {
                    return;
                };
                let delivered = self.conns.get_mut(&id).map(|c| c.event(&rec, None));
                match delivered {
                    Some(Ok(true)) => {}
                    Some(Ok(false)) => self.counters.datagrams_dropped_slow_client += 1,
                    Some(Err(_)) | None => self.drop_client(id),
                }
            }
            Some(PortOwner::Deliver { to, .. }) => {
                let to = *to;
                self.deliver_via_proxy(src, to, &payload);
            }
            None => {
                if !(dst.port == echo::ECHO_PORT && self.echo(src, &payload)) {
                    self.counters.datagrams_no_listener += 1;
                }
            }
        }
    }

    fn housekeeping(&mut self) {
        self.expire_outcomes();
        if let Some(m) = self.metrics.as_mut() {
            m.expire();
        }
        self.check_kernel_members(false);
        let now = self.clock.now();
        self.backlog_timeout(now);
    }

    fn status(&mut self, now: weft_core::Instant) -> DaemonStatus<'_> {
        let mut node = self.node.status(now);
        let neighbors = std::mem::take(&mut node.neighbors)
            .into_iter()
            .zip(self.node.neighbors())
            .map(|(link, (addr, _))| DaemonNeighbor {
                emulation: self.emulation.status(addr),
                link,
            })
            .collect();
        DaemonStatus {
            schema_version: STATUS_SCHEMA_VERSION,
            node,
            emulation: self.emulation.enabled(),
            neighbors,
            listen: self.cfg.listen.to_string(),
            socket: self.cfg.socket.display().to_string(),
            recovery: self.cfg.node.recovery,
            clients: self
                .conns
                .values()
                .map(|c| ClientStatus {
                    pid: c.cred.pid,
                    uid: c.cred.uid,
                    kind: c.kind.map(|k| format!("{k:?}").to_lowercase()),
                })
                .collect(),
            datagram_ports: self.ports.keys().copied().collect(),
            datagram_proxies: self.proxies.count(),
            group_delivery: if self.kernel_groups.is_some() {
                "kernel"
            } else {
                "addresses"
            },
            member_checks: self.kernel_groups.as_ref().map_or(0, |k| k.checks),
            member_sockets_closed: self.kernel_groups.as_ref().map_or(0, |k| k.closed_found),
            rings: self.ring_counters(),
            accept_backlog: self.listeners.backlogs.counters(),
            udp: self.udp.counters(),
            security: self.security.status(now),
            access: AccessStatus {
                socket_gid: self.socket_gid,
                admin_gid: self.policy.admin_gid,
                counters: self.access_counters,
            },
            daemon_counters: &self.counters,
        }
    }
}
