//! The `/metrics` endpoint: a few lines of HTTP/1.1 on a non-blocking listener in the daemon's
//! own event loop (no thread, no lock). A scrape builds one status snapshot and renders it
//! (`crate::metrics`); nothing is kept between scrapes. Requests are bounded in size, number
//! and time, and every connection closes after its response.

use super::Daemon;
use crate::metrics::{self, DaemonFigures, Encoding};
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tracing::debug;

pub(super) const LISTENER: Token = Token(3);
pub(super) const CONN_BASE: usize = 6 << 32;

/// Larger request heads are refused (431).
const MAX_REQUEST: usize = 8 * 1024;
/// Scrapers beyond this many at once are turned away.
const MAX_CONNECTIONS: usize = 16;
/// A connection that has not finished by then is closed.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);

struct Conn {
    stream: TcpStream,
    request: Vec<u8>,
    response: Vec<u8>,
    written: usize,
    opened: Instant,
}

pub struct MetricsServer {
    listener: TcpListener,
    conns: HashMap<usize, Conn>,
    next: usize,
    pub scrapes: u64,
}

/// What a complete request head asks for.
#[derive(Debug, PartialEq, Eq)]
enum Ask {
    Metrics { head_only: bool, encoding: Encoding },
    Status(u16, &'static str),
}

fn parse_request(head: &str) -> Ask {
    let mut lines = head.split("\r\n");
    let first = lines.next().unwrap_or_default();
    let mut words = first.split(' ');
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Ask::Status(405, "only GET and HEAD\n"),
    };
    if path != "/metrics" {
        return Ask::Status(404, "weftd serves /metrics\n");
    }
    let accept = lines.find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case("accept").then_some(v.trim())
    });
    Ask::Metrics {
        head_only,
        encoding: Encoding::negotiate(accept),
    }
}

fn response(code: u16, content_type: &str, body: &[u8], head_only: bool) -> Vec<u8> {
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Bad Request",
    };
    let mut out = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body);
    }
    out
}

impl MetricsServer {
    pub fn bind(addr: SocketAddr, registry: &Registry) -> Result<MetricsServer, String> {
        let mut listener = TcpListener::bind(addr)
            .map_err(|e| format!("`metrics`: cannot listen on {addr}: {e}"))?;
        registry
            .register(&mut listener, LISTENER, Interest::READABLE)
            .map_err(|e| format!("epoll register: {e}"))?;
        Ok(MetricsServer {
            listener,
            conns: HashMap::new(),
            next: 0,
            scrapes: 0,
        })
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    fn accept(&mut self, registry: &Registry) {
        loop {
            match self.listener.accept() {
                Ok((mut stream, _)) => {
                    if self.conns.len() >= MAX_CONNECTIONS {
                        continue; // dropped: closed at once
                    }
                    let id = self.next;
                    self.next = self.next.wrapping_add(1) % (1 << 31);
                    let interest = Interest::READABLE | Interest::WRITABLE;
                    if registry
                        .register(&mut stream, Token(CONN_BASE + id), interest)
                        .is_ok()
                    {
                        self.conns.insert(
                            id,
                            Conn {
                                stream,
                                request: Vec::new(),
                                response: Vec::new(),
                                written: 0,
                                opened: Instant::now(),
                            },
                        );
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    debug!("metrics accept: {e}");
                    return;
                }
            }
        }
    }

    /// Reads what has arrived; a complete head yields what it asks for.
    fn read(&mut self, id: usize) -> Option<Ask> {
        let conn = self.conns.get_mut(&id)?;
        if !conn.response.is_empty() {
            return None;
        }
        let mut buf = [0u8; 2048];
        loop {
            match conn.stream.read(&mut buf) {
                Ok(0) => {
                    self.close(id);
                    return None;
                }
                Ok(n) => {
                    conn.request.extend_from_slice(&buf[..n]);
                    if let Some(end) = conn.request.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&conn.request[..end]).into_owned();
                        return Some(parse_request(&head));
                    }
                    if conn.request.len() > MAX_REQUEST {
                        return Some(Ask::Status(431, "request head too large\n"));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.close(id);
                    return None;
                }
            }
        }
    }

    fn respond(&mut self, id: usize, bytes: Vec<u8>) {
        if let Some(conn) = self.conns.get_mut(&id) {
            conn.response = bytes;
            conn.written = 0;
        }
        self.write(id);
    }

    /// Writes what the socket takes; closes once everything is out.
    fn write(&mut self, id: usize) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        while conn.written < conn.response.len() {
            match conn.stream.write(&conn.response[conn.written..]) {
                Ok(n) => conn.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        if !conn.response.is_empty() {
            self.close(id);
        }
    }

    fn close(&mut self, id: usize) {
        if let Some(conn) = self.conns.remove(&id) {
            let _ = conn.stream.shutdown(std::net::Shutdown::Write);
        }
    }

    /// Closes connections that took too long (slow or silent clients).
    pub fn expire(&mut self) {
        let now = Instant::now();
        let stale: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| now - c.opened > CONNECTION_TIMEOUT)
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            self.close(id);
        }
    }
}

impl Daemon {
    pub(super) fn metrics_listener_event(&mut self) {
        if let Some(m) = self.metrics.as_mut() {
            m.accept(self.poll.registry());
        }
    }

    pub(super) fn metrics_conn_event(&mut self, id: usize, readable: bool, writable: bool) {
        let Some(m) = self.metrics.as_mut() else {
            return;
        };
        if writable {
            m.write(id);
        }
        if !readable {
            return;
        }
        let Some(ask) = m.read(id) else { return };
        let bytes = match ask {
            Ask::Status(code, text) => {
                response(code, "text/plain; charset=utf-8", text.as_bytes(), false)
            }
            Ask::Metrics {
                head_only,
                encoding,
            } => {
                let body = self.render_metrics(encoding);
                response(200, encoding.content_type(), body.as_bytes(), head_only)
            }
        };
        if let Some(m) = self.metrics.as_mut() {
            m.scrapes += 1;
            m.respond(id, bytes);
        }
    }

    fn render_metrics(&mut self, encoding: Encoding) -> String {
        let now = self.clock.now();
        let status = self.node.status(now);
        let c = &self.counters;
        let figures = DaemonFigures {
            control_clients: self.conns.len() as u64,
            datagram_ports: self.ports.len() as u64,
            datagram_proxies: self.proxies.count() as u64,
            dropped: vec![
                ("no_listener", c.datagrams_no_listener),
                ("slow_client", c.datagrams_dropped_slow_client),
                ("proxy_send_failed", c.proxy_send_failed),
            ],
            udp_send_errors: c.udp_send_errors,
            group_loopback_sends: c.group_loopback_sends,
            link_emulation: self
                .node
                .neighbors()
                .filter_map(|(addr, _)| {
                    let e = self.emulation.status(addr)?;
                    Some((addr.to_string(), e.counters))
                })
                .collect(),
        };
        metrics::render(&status, &figures, encoding)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests() {
        assert_eq!(
            parse_request("GET /metrics HTTP/1.1\r\nHost: x"),
            Ask::Metrics {
                head_only: false,
                encoding: Encoding::Prometheus
            }
        );
        assert_eq!(
            parse_request(
                "HEAD /metrics?x=1 HTTP/1.0\r\nAccept: application/openmetrics-text; version=1.0.0"
            ),
            Ask::Metrics {
                head_only: true,
                encoding: Encoding::OpenMetrics
            }
        );
        assert!(matches!(
            parse_request("GET / HTTP/1.1"),
            Ask::Status(404, _)
        ));
        assert!(matches!(
            parse_request("POST /metrics HTTP/1.1"),
            Ask::Status(405, _)
        ));
        assert!(matches!(parse_request(""), Ask::Status(405, _)));
        let r = response(200, "text/plain", b"abc", true);
        assert!(
            String::from_utf8_lossy(&r).ends_with("Content-Length: 3\r\nConnection: close\r\n\r\n")
        );
    }
}
