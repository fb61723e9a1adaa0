//! The packet loop: one thread, level-triggered epoll over every TUN descriptor and the control
//! socket, and an `epoll_pwait2` timeout to the earliest due packet.
//!
//! Each link has two directions; a direction reads what its source namespace's kernel sends
//! into the TUN device, stamps every packet with CLOCK_MONOTONIC the moment it is read (a
//! per-batch stamp would deliver packets early), asks its [`DirectionModel`] for a verdict and
//! queues survivors in its [`PacketRing`] until their due time, then writes them into the TUN
//! device in the destination namespace (where the kernel receives them as if from a wire).

mod commands;

use crate::model::{DirectionModel, DropReason, LinkParams, Verdict};
use crate::netlink::{DeviceCounters, RouteSocket};
use crate::ring::PacketRing;
use crate::stats::LatenessHistogram;
use crate::sys::{self, Epoll, EventFd, SignalFd};
use serde::Serialize;
use serde_json::{json, Value};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::time::Duration;
use weft_core::Instant;

/// Packets read from one device before the loop services timers again.
const READ_BATCH: usize = 64;
const MAX_REQUEST: usize = 4096;

const TOKEN_SIGNAL: u64 = u64::MAX;
const TOKEN_STOP: u64 = u64::MAX - 1;
const TOKEN_LISTENER: u64 = u64::MAX - 2;
const TOKEN_CONNECTION: u64 = 1 << 32;

/// Per-direction counters; every packet read ends in exactly one of tx, a drop, or `queued`.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct DirectionCounters {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Configured drops: the loss model, the drop-tail queue, a cut link.
    pub drop_loss: u64,
    pub drop_queue: u64,
    pub drop_down: u64,
    /// Emulator faults: ring full, write into the destination device failed, packet larger
    /// than the MTU. Any of these makes a run invalid.
    pub drop_ring: u64,
    pub drop_write: u64,
    pub drop_oversize: u64,
    /// Packets that reached the loss stage (the denominator of the achieved loss rate).
    pub loss_trials: u64,
    pub tcp_packets: u64,
    pub udp_packets: u64,
    pub other_packets: u64,
}

/// One link's endpoints in engine terms.
pub struct LinkIo {
    pub name: String,
    pub a: usize,
    pub b: usize,
    /// TUN descriptors in a's and b's namespaces.
    pub a_tun: OwnedFd,
    pub b_tun: OwnedFd,
    pub a_ifindex: u32,
    pub b_ifindex: u32,
    pub forward: LinkParams,
    pub reverse: LinkParams,
}

struct Direction {
    label: String,
    link: usize,
    from: usize,
    input: RawFd,
    output: RawFd,
    input_ifindex: u32,
    model: DirectionModel,
    ring: PacketRing,
    counters: DirectionCounters,
    lateness: LatenessHistogram,
    device_baseline: DeviceCounters,
}

struct Connection {
    stream: UnixStream,
    request: Vec<u8>,
}

#[derive(Serialize)]
struct EventRecord {
    t_ns: u64,
    command: String,
}

pub struct EngineConfig {
    pub node_names: Vec<String>,
    pub links: Vec<LinkIo>,
    /// One rtnetlink socket per node, opened inside its namespace.
    pub route_sockets: Vec<RouteSocket>,
    pub mtu: usize,
    pub ring_slots: usize,
    pub seed: u64,
    /// Round wake-ups up to this granularity (0 = exact).
    pub coalesce: Duration,
    pub listener: UnixListener,
    pub plan: Value,
    pub signals: Option<SignalFd>,
    pub stop: Option<Arc<EventFd>>,
}

pub struct Engine {
    node_names: Vec<String>,
    links: Vec<LinkIo>,
    directions: Vec<Direction>,
    route_sockets: Vec<RouteSocket>,
    mtu: usize,
    coalesce_ns: u64,
    epoll: Epoll,
    listener: UnixListener,
    connections: Vec<Option<Connection>>,
    events: Vec<EventRecord>,
    plan: Value,
    signals: Option<SignalFd>,
    /// Held so the descriptor registered in epoll stays open.
    _stop: Option<Arc<EventFd>>,
    stop_requested: bool,
    scratch: Vec<u8>,
    ready: Vec<u64>,
    reset_at: Instant,
    cpu_at_reset: u64,
}

/// A well-mixed seed per direction from the run seed (splitmix64 finaliser).
fn direction_seed(run_seed: u64, direction: usize) -> u64 {
    let mut z = run_seed ^ (direction as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn classify(counters: &mut DirectionCounters, packet: &[u8]) {
    let protocol = match packet.first() {
        Some(b) if b >> 4 == 4 => packet.get(9).copied(),
        _ => None,
    };
    match protocol {
        Some(6) => counters.tcp_packets += 1,
        Some(17) => counters.udp_packets += 1,
        _ => counters.other_packets += 1,
    }
}

impl Engine {
    pub fn new(config: EngineConfig) -> io::Result<Self> {
        let slot_size = config.mtu + 64;
        let mut directions = Vec::new();
        for (index, link) in config.links.iter().enumerate() {
            for forward in [true, false] {
                let (from, to) = if forward {
                    (link.a, link.b)
                } else {
                    (link.b, link.a)
                };
                let (input, output, input_ifindex, params) = if forward {
                    (
                        link.a_tun.as_raw_fd(),
                        link.b_tun.as_raw_fd(),
                        link.a_ifindex,
                        link.forward,
                    )
                } else {
                    (
                        link.b_tun.as_raw_fd(),
                        link.a_tun.as_raw_fd(),
                        link.b_ifindex,
                        link.reverse,
                    )
                };
                let seed = direction_seed(config.seed, directions.len());
                directions.push(Direction {
                    label: format!("{}>{}", config.node_names[from], config.node_names[to]),
                    link: index,
                    from,
                    input,
                    output,
                    input_ifindex,
                    model: DirectionModel::new(params, seed),
                    ring: PacketRing::new(config.ring_slots, slot_size),
                    counters: DirectionCounters::default(),
                    lateness: LatenessHistogram::default(),
                    device_baseline: DeviceCounters::default(),
                });
            }
        }
        let epoll = Epoll::new(directions.len() + 8)?;
        for (i, d) in directions.iter().enumerate() {
            epoll.add(d.input, i as u64)?;
        }
        config.listener.set_nonblocking(true)?;
        epoll.add(config.listener.as_raw_fd(), TOKEN_LISTENER)?;
        if let Some(s) = &config.signals {
            epoll.add(s.raw(), TOKEN_SIGNAL)?;
        }
        if let Some(s) = &config.stop {
            epoll.add(s.raw(), TOKEN_STOP)?;
        }
        let mut engine = Engine {
            node_names: config.node_names,
            links: config.links,
            directions,
            route_sockets: config.route_sockets,
            mtu: config.mtu,
            coalesce_ns: u64::try_from(config.coalesce.as_nanos()).unwrap_or(u64::MAX),
            epoll,
            listener: config.listener,
            connections: Vec::new(),
            events: Vec::new(),
            plan: config.plan,
            signals: config.signals,
            _stop: config.stop,
            stop_requested: false,
            scratch: vec![0; slot_size],
            ready: Vec::new(),
            reset_at: sys::monotonic_now(),
            cpu_at_reset: 0,
        };
        engine.reset_counters();
        Ok(engine)
    }

    /// Run until a terminating signal, the stop event or a `shutdown` command.
    pub fn run(&mut self) -> io::Result<()> {
        while !self.stop_requested {
            let timeout = self.timeout(sys::monotonic_now());
            self.ready.clear();
            self.ready.extend(self.epoll.wait(timeout)?);
            for i in 0..self.ready.len() {
                let token = self.ready[i];
                self.dispatch(token)?;
            }
            self.transmit_due();
        }
        Ok(())
    }

    fn dispatch(&mut self, token: u64) -> io::Result<()> {
        match token {
            TOKEN_SIGNAL => {
                if let Some(signal) = self.signals.as_ref().and_then(|s| s.take()) {
                    eprintln!("netemu: signal {signal}, shutting down");
                    self.stop_requested = true;
                }
            }
            TOKEN_STOP => self.stop_requested = true,
            TOKEN_LISTENER => self.accept_connections(),
            t if t >= TOKEN_CONNECTION => self.serve_connection((t - TOKEN_CONNECTION) as usize),
            t => self.receive(t as usize),
        }
        Ok(())
    }

    fn timeout(&self, now: Instant) -> Option<Duration> {
        let next = self
            .directions
            .iter()
            .filter_map(|d| d.ring.front_due())
            .min()?;
        let wake = if self.coalesce_ns > 0 {
            Instant::from_nanos(next.as_nanos().div_ceil(self.coalesce_ns) * self.coalesce_ns)
        } else {
            next
        };
        Some(wake.saturating_since(now))
    }

    fn receive(&mut self, index: usize) {
        let mtu = self.mtu;
        let scratch = &mut self.scratch;
        let Some(dir) = self.directions.get_mut(index) else {
            return;
        };
        for _ in 0..READ_BATCH {
            let Some(slot) = dir.ring.free_slot() else {
                // The ring is full: keep draining the device so the kernel does not stall,
                // and count the loss as the emulator's fault.
                match sys::read(dir.input, scratch) {
                    Ok(n) if n > 0 => {
                        dir.counters.rx_packets += 1;
                        dir.counters.rx_bytes += n as u64;
                        dir.counters.drop_ring += 1;
                        continue;
                    }
                    _ => break,
                }
            };
            let n = match sys::read(dir.input, slot) {
                Ok(n) if n > 0 => n,
                _ => break,
            };
            let now = sys::monotonic_now();
            classify(&mut dir.counters, &slot[..n.min(slot.len())]);
            dir.counters.rx_packets += 1;
            dir.counters.rx_bytes += n as u64;
            if n > mtu {
                dir.counters.drop_oversize += 1;
                continue;
            }
            match dir.model.on_packet(now, n) {
                Verdict::Deliver { due, .. } => {
                    dir.counters.loss_trials += 1;
                    dir.ring.commit(n, due);
                }
                Verdict::Drop(DropReason::Loss) => {
                    dir.counters.loss_trials += 1;
                    dir.counters.drop_loss += 1;
                }
                Verdict::Drop(DropReason::Queue) => dir.counters.drop_queue += 1,
                Verdict::Drop(DropReason::Down) => dir.counters.drop_down += 1,
            }
        }
    }

    fn transmit_due(&mut self) {
        for dir in &mut self.directions {
            while let Some((due, packet)) = dir.ring.front() {
                let now = sys::monotonic_now();
                if due > now {
                    break;
                }
                match sys::write(dir.output, packet) {
                    Ok(_) => {
                        dir.counters.tx_packets += 1;
                        dir.counters.tx_bytes += packet.len() as u64;
                    }
                    Err(_) => dir.counters.drop_write += 1,
                }
                dir.lateness.record(now.as_nanos() - due.as_nanos());
                dir.ring.pop();
            }
        }
    }

    fn accept_connections(&mut self) {
        while let Ok((stream, _)) = self.listener.accept() {
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let slot = match self.connections.iter().position(|c| c.is_none()) {
                Some(i) => i,
                None => {
                    self.connections.push(None);
                    self.connections.len() - 1
                }
            };
            if self
                .epoll
                .add(stream.as_raw_fd(), TOKEN_CONNECTION + slot as u64)
                .is_ok()
            {
                self.connections[slot] = Some(Connection {
                    stream,
                    request: Vec::new(),
                });
            }
        }
    }

    fn serve_connection(&mut self, slot: usize) {
        let Some(Some(connection)) = self.connections.get_mut(slot) else {
            return;
        };
        let mut buf = [0u8; 1024];
        let mut finished = false;
        loop {
            match connection.stream.read(&mut buf) {
                Ok(0) => {
                    finished = true;
                    break;
                }
                Ok(n) => connection.request.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    finished = true;
                    break;
                }
            }
        }
        let complete = connection.request.contains(&b'\n');
        if !(complete || finished || connection.request.len() > MAX_REQUEST) {
            return;
        }
        let Some(Connection {
            mut stream,
            request,
        }) = self.connections[slot].take()
        else {
            return;
        };
        let _ = self.epoll.delete(stream.as_raw_fd());
        let reply = if request.len() > MAX_REQUEST {
            json!({"ok": false, "error": "request too long"})
        } else {
            let text = String::from_utf8_lossy(&request);
            let line = text.lines().next().unwrap_or("");
            self.execute(line)
        };
        // The reply is small and the client waits for it; a stuck client costs at most the
        // timeout, never the loop.
        if stream.set_nonblocking(false).is_ok()
            && sys::set_socket_timeouts(stream.as_raw_fd(), Duration::from_millis(500)).is_ok()
        {
            let _ = stream.write_all(format!("{reply}\n").as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direction_seeds_differ() {
        let seeds: std::collections::BTreeSet<u64> =
            (0..64).map(|i| direction_seed(1, i)).collect();
        assert_eq!(seeds.len(), 64);
        assert_ne!(direction_seed(1, 0), direction_seed(2, 0));
    }

    #[test]
    fn classifies_ipv4_protocols() {
        let mut c = DirectionCounters::default();
        let mut packet = [0u8; 20];
        packet[0] = 0x45;
        packet[9] = 6;
        classify(&mut c, &packet);
        packet[9] = 17;
        classify(&mut c, &packet);
        classify(&mut c, &[0x60; 40]);
        classify(&mut c, &[]);
        assert_eq!((c.tcp_packets, c.udp_packets, c.other_packets), (1, 1, 2));
    }
}
