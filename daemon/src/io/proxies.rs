//! Datagram proxies for shimmed programs. Every overlay endpoint a local program exchanges UDP
//! with is stood for by one kernel UDP socket of the daemon on a loopback address: `proxy_ip`,
//! or with kernel group delivery the alias address of the endpoint's node (see
//! `kernel_groups`). A datagram a program sends to it from local port P leaves the overlay from
//! (this node, P); an overlay datagram for a port registered with `deliver_to` is sent from
//! the sender's proxy to that kernel address, and a group datagram from the sender's proxy to
//! the group on loopback. The program's socket stays an ordinary kernel socket, so readiness,
//! `connect()`ed demultiplexing and `MSG_PEEK` stay native; the shim rewrites the names
//! (`ProxyFor`, `ResolveProxy`, `ResolveProxyAt`).
//!
//! Proxies live as long as the daemon: a shim caches the mapping for the life of its process.

use super::{Daemon, PROXY_BASE};
use mio::net::UdpSocket;
use mio::{Interest, Token};
use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use tracing::debug;
use weft_core::Endpoint;

/// Binding attempts for a proxy whose port another proxy (on another alias) already has.
const PORT_TRIES: usize = 16;

pub struct Proxy {
    remote: Endpoint,
    sock: UdpSocket,
    addr: SocketAddrV4,
    /// The multicast TTL last set on the socket (group datagrams it sends to loopback).
    mc_ttl: Option<u8>,
}

pub struct Proxies {
    list: Vec<Proxy>,
    by_remote: HashMap<Endpoint, usize>,
    /// Ports are unique across all proxies, whatever their address.
    by_port: HashMap<u16, usize>,
    buf: Vec<u8>,
}

impl Default for Proxies {
    fn default() -> Self {
        Proxies {
            list: Vec::new(),
            by_remote: HashMap::new(),
            by_port: HashMap::new(),
            buf: vec![0; 65_536],
        }
    }
}

impl Proxies {
    pub fn remote_of(&self, port: u16) -> Option<Endpoint> {
        self.by_port.get(&port).map(|&k| self.list[k].remote)
    }

    /// The endpoint the proxy at exactly `addr` stands for.
    pub fn remote_at(&self, addr: SocketAddrV4) -> Option<Endpoint> {
        let &k = self.by_port.get(&addr.port())?;
        (self.list[k].addr == addr).then_some(self.list[k].remote)
    }

    pub fn count(&self) -> usize {
        self.list.len()
    }
}

fn set_ip_option(sock: &UdpSocket, name: libc::c_int, value: &[u8]) -> io::Result<()> {
    // SAFETY: setsockopt on our own socket with a buffer of the given length.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            name,
            value.as_ptr() as *const libc::c_void,
            value.len() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl Daemon {
    /// Where the proxies of `remote` live.
    fn proxy_address(&mut self, remote: Endpoint) -> io::Result<Ipv4Addr> {
        let this_node = self.node.id();
        match self.kernel_groups.as_mut() {
            Some(kg) if !remote.node.is_multicast() => kg
                .alias(remote.node, this_node)
                .ok_or_else(|| io::Error::other("no alias address left in the proxy network")),
            _ => Ok(self.cfg.proxy_ip),
        }
    }

    /// The proxy standing for `remote` (made on first use).
    pub(super) fn proxy_for(&mut self, remote: Endpoint) -> io::Result<(usize, SocketAddrV4)> {
        if let Some(&k) = self.proxies.by_remote.get(&remote) {
            return Ok((k, self.proxies.list[k].addr));
        }
        let ip = self.proxy_address(remote)?;
        let mut bound = None;
        for _ in 0..PORT_TRIES {
            let sock = UdpSocket::bind(SocketAddr::V4(SocketAddrV4::new(ip, 0)))?;
            let addr = match sock.local_addr()? {
                SocketAddr::V4(a) => a,
                SocketAddr::V6(_) => return Err(io::Error::other("proxy bound to IPv6")),
            };
            if !self.proxies.by_port.contains_key(&addr.port()) {
                bound = Some((sock, addr));
                break;
            }
        }
        let (mut sock, addr) =
            bound.ok_or_else(|| io::Error::other("no proxy port free on every alias"))?;
        if self.kernel_groups.is_some() && !remote.node.is_multicast() {
            // Group datagrams from this endpoint go to the group on loopback.
            set_ip_option(&sock, libc::IP_MULTICAST_IF, &Ipv4Addr::LOCALHOST.octets())?;
        }
        let k = self.proxies.list.len();
        self.poll
            .registry()
            .register(&mut sock, Token(PROXY_BASE + k), Interest::READABLE)?;
        self.proxies.list.push(Proxy {
            remote,
            sock,
            addr,
            mc_ttl: None,
        });
        self.proxies.by_remote.insert(remote, k);
        self.proxies.by_port.insert(addr.port(), k);
        debug!(%remote, %addr, "datagram proxy");
        Ok((k, addr))
    }

    /// A local program sent to a proxy: the datagram leaves the overlay from its port. (The
    /// proxy is bound to a loopback address, so whatever reaches it was sent on this host,
    /// also from a socket bound to one of the host's own addresses.)
    pub(super) fn read_proxy(&mut self, k: usize) {
        let Some(p) = self.proxies.list.get(k) else {
            return;
        };
        let remote = p.remote;
        loop {
            let (n, from) = match self.proxies.list[k].sock.recv_from(&mut self.proxies.buf) {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    debug!(%remote, "proxy receive: {e}");
                    return;
                }
            };
            let now = self.clock.now();
            let payload = self.proxies.buf[..n].to_vec();
            let sent = if remote.node.is_multicast() {
                let opts = self
                    .mc_send
                    .get(&from.port())
                    .map(|(o, _)| *o)
                    .unwrap_or_default();
                self.node
                    .send_group(now, from.port(), remote, &payload, opts.hops, opts.loopback)
            } else {
                self.node
                    .send_datagram(now, from.port(), remote, &payload, None)
            };
            if sent.is_err() {
                self.counters.proxy_send_failed += 1;
            }
            self.drain_node();
        }
    }

    /// Reads every group proxy now (before a program's send options change).
    pub(super) fn drain_group_proxies(&mut self) {
        for k in 0..self.proxies.list.len() {
            if self.proxies.list[k].remote.node.is_multicast() {
                self.read_proxy(k);
            }
        }
    }

    /// An overlay datagram for a port registered with `deliver_to`: from the sender's proxy.
    pub(super) fn deliver_via_proxy(&mut self, src: Endpoint, to: SocketAddrV4, payload: &[u8]) {
        let k = match self.proxy_for(src) {
            Ok((k, _)) => k,
            Err(e) => {
                debug!(%src, "no proxy: {e}");
                self.counters.datagrams_dropped_slow_client += 1;
                return;
            }
        };
        if self.proxies.list[k]
            .sock
            .send_to(payload, SocketAddr::V4(to))
            .is_err()
        {
            // A full receive buffer or a socket gone: UDP drops.
            self.counters.datagrams_dropped_slow_client += 1;
        }
    }

    /// A group datagram for this node's kernel-held memberships: once, to the group on
    /// loopback, from the sender's proxy with the sender's TTL; the kernel hands a copy to
    /// every socket that should see it.
    pub(super) fn deliver_to_loopback_group(
        &mut self,
        src: Endpoint,
        group: Endpoint,
        ttl: u8,
        payload: &[u8],
    ) {
        let k = match self.proxy_for(src) {
            Ok((k, _)) => k,
            Err(e) => {
                debug!(%src, "no proxy: {e}");
                self.counters.datagrams_dropped_slow_client += 1;
                return;
            }
        };
        let p = &mut self.proxies.list[k];
        if p.mc_ttl != Some(ttl) {
            if let Err(e) = set_ip_option(&p.sock, libc::IP_MULTICAST_TTL, &[ttl]) {
                debug!(%src, "multicast TTL {ttl}: {e}");
            }
            p.mc_ttl = Some(ttl);
        }
        let to = SocketAddr::V4(group.socket_addr());
        match p.sock.send_to(payload, to) {
            Ok(_) => self.counters.group_loopback_sends += 1,
            Err(e) => {
                debug!(%src, %to, "group datagram to loopback: {e}");
                self.counters.datagrams_dropped_slow_client += 1;
            }
        }
    }
}
