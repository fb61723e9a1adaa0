//! Datagram proxies for shimmed programs. Every overlay endpoint a local program exchanges UDP
//! with is stood for by one kernel UDP socket of the daemon on `proxy_ip` (a loopback
//! address). A datagram a program sends to it from local port P leaves the overlay from
//! (this node, P); an overlay datagram for a port registered with `deliver_to` is sent from
//! the sender's proxy to that kernel address. The program's socket stays an ordinary kernel
//! socket, so readiness, `connect()`ed demultiplexing and `MSG_PEEK` stay native; the shim
//! rewrites the names (`ProxyFor`, `ResolveProxy`).
//!
//! Proxies live as long as the daemon: a shim caches the mapping for the life of its process.

use super::{Daemon, PROXY_BASE};
use mio::net::UdpSocket;
use mio::{Interest, Token};
use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, SocketAddrV4};
use tracing::debug;
use weft_core::Endpoint;

pub struct Proxy {
    remote: Endpoint,
    sock: UdpSocket,
    addr: SocketAddrV4,
}

pub struct Proxies {
    list: Vec<Proxy>,
    by_remote: HashMap<Endpoint, usize>,
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

    pub fn count(&self) -> usize {
        self.list.len()
    }
}

impl Daemon {
    /// The proxy standing for `remote` (made on first use).
    pub(super) fn proxy_for(&mut self, remote: Endpoint) -> io::Result<(usize, SocketAddrV4)> {
        if let Some(&k) = self.proxies.by_remote.get(&remote) {
            return Ok((k, self.proxies.list[k].addr));
        }
        let mut sock = UdpSocket::bind(SocketAddr::V4(SocketAddrV4::new(self.cfg.proxy_ip, 0)))?;
        let addr = match sock.local_addr()? {
            SocketAddr::V4(a) => a,
            SocketAddr::V6(_) => return Err(io::Error::other("proxy bound to IPv6")),
        };
        let k = self.proxies.list.len();
        self.poll
            .registry()
            .register(&mut sock, Token(PROXY_BASE + k), Interest::READABLE)?;
        self.proxies.list.push(Proxy { remote, sock, addr });
        self.proxies.by_remote.insert(remote, k);
        self.proxies.by_port.insert(addr.port(), k);
        debug!(%remote, %addr, "datagram proxy");
        Ok((k, addr))
    }

    /// A local program sent to a proxy: the datagram leaves the overlay from its port.
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
            // Only local programs speak through proxies.
            if !from.ip().is_loopback() {
                self.counters.proxy_foreign_source += 1;
                continue;
            }
            let now = self.clock.now();
            let payload = self.proxies.buf[..n].to_vec();
            let sent = if remote.node.is_multicast() {
                let opts = self.mc_send.get(&from.port()).copied().unwrap_or_default();
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
}
