//! `weft send` / `weft recv`: a tiny datagram tool over the overlay, for tests and demos.
//! Generated payloads start with `seq=N t=MONO_NS` so receivers can measure order, loss and
//! one-way delay (CLOCK_MONOTONIC is shared by every process on the machine): `weft recv
//! --time mono` stamps lines with that clock; by default they carry the readable wall time.

use super::{connect, monotonic_ns};
use crate::client::check;
use crate::emulation::parse_duration;
use clap::Args;
use std::io::Write;
use std::net::SocketAddrV4;
use std::path::Path;
use std::time::Duration;
use weft_core::Endpoint;
use weft_ipc::{Event, Reply, Request};

#[derive(Args, Debug)]
pub struct SendArgs {
    /// Destination overlay endpoint NODE:PORT.
    #[arg(long)]
    to: SocketAddrV4,
    /// Source port on this node (default: an ephemeral one).
    #[arg(long, default_value_t = 0)]
    from_port: u16,
    /// Number of datagrams (generated payloads unless MESSAGE is given).
    #[arg(long, default_value_t = 1)]
    count: u64,
    /// Pause between datagrams, e.g. 10ms.
    #[arg(long, default_value = "0ms")]
    interval: String,
    /// Pad generated payloads to this many bytes.
    #[arg(long, default_value_t = 0)]
    size: usize,
    /// Hop limit (default: the daemon's).
    #[arg(long, default_value_t = 0)]
    ttl: u8,
    /// Payload text (default: generated `seq=N t=NS`).
    message: Option<String>,
}

#[derive(Args, Debug)]
pub struct RecvArgs {
    /// Overlay port to receive on.
    #[arg(long)]
    port: u16,
    /// Exit after this many datagrams.
    #[arg(long)]
    count: Option<u64>,
    /// Exit after this long without a datagram, e.g. 5s.
    #[arg(long)]
    timeout: Option<String>,
    /// Print only a summary at the end.
    #[arg(long)]
    quiet: bool,
    /// Join this multicast group (repeatable) and receive its datagrams on the port.
    #[arg(long)]
    join: Vec<std::net::Ipv4Addr>,
    /// With --join: only from this source node (source-specific membership).
    #[arg(long)]
    source: Option<std::net::Ipv4Addr>,
    /// With --join: ask for the reliable mode (hop-by-hop repair, per-source order).
    #[arg(long)]
    reliable: bool,
    /// How each line's receive time is written: `wall` (RFC 3339 UTC, microseconds), `mono`
    /// (CLOCK_MONOTONIC nanoseconds, comparable with the `t=` of `weft send` payloads on the
    /// same machine) or `none`.
    #[arg(long, value_enum, default_value_t = TimeFormat::Wall)]
    time: TimeFormat,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeFormat {
    Wall,
    Mono,
    None,
}

/// The receive time as `weft recv --time` asks for it (one token, no spaces).
fn stamp(format: TimeFormat) -> Option<String> {
    match format {
        TimeFormat::Wall => {
            Some(humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string())
        }
        TimeFormat::Mono => Some(monotonic_ns().to_string()),
        TimeFormat::None => None,
    }
}

pub fn send(socket: &Path, a: SendArgs) -> Result<i32, String> {
    let interval = parse_duration(&a.interval)
        .ok_or_else(|| format!("--interval: `{}` is not a duration", a.interval))?;
    let mut c = connect(socket)?;
    let src_port = if a.from_port == 0 {
        // Hold an ephemeral port so replies could come back and nobody else gets it meanwhile.
        match check(
            c.request(Request::BindDatagram {
                port: 0,
                deliver_to: None,
            })
            .map_err(|e| e.to_string())?,
        ) {
            Ok(Reply::Bound { port }) => port,
            Ok(other) => return Err(format!("unexpected reply {other:?}")),
            Err(e) => return Err(e.to_string()),
        }
    } else {
        a.from_port
    };
    let dst = Endpoint::from(a.to);
    let mut failures = 0u64;
    let start = std::time::Instant::now();
    for seq in 0..a.count {
        let payload = match &a.message {
            Some(m) => m.clone().into_bytes(),
            None => {
                let mut p = format!("seq={seq} t={}", monotonic_ns()).into_bytes();
                if p.len() < a.size {
                    p.resize(a.size, b'.');
                }
                p
            }
        };
        let reply = c
            .request(Request::SendDatagram {
                src_port,
                dst,
                ttl: a.ttl,
                payload,
            })
            .map_err(|e| e.to_string())?;
        if let Err(e) = check(reply) {
            failures += 1;
            if failures <= 3 {
                eprintln!("weft send: datagram {seq}: {e}");
            }
        }
        if !interval.is_zero() && seq + 1 < a.count {
            // Keep a steady rate: sleep until the next slot, not a fixed pause.
            let next = start + interval * (seq as u32 + 1);
            if let Some(d) = next.checked_duration_since(std::time::Instant::now()) {
                std::thread::sleep(d);
            }
        }
    }
    if failures > 0 {
        eprintln!("weft send: {failures} of {} datagrams failed", a.count);
        return Ok(1);
    }
    Ok(0)
}

pub fn recv(socket: &Path, a: RecvArgs) -> Result<i32, String> {
    let timeout = match &a.timeout {
        Some(t) => {
            Some(parse_duration(t).ok_or_else(|| format!("--timeout: `{t}` is not a duration"))?)
        }
        None => None,
    };
    let mut c = connect(socket)?;
    match check(
        c.request(Request::BindDatagram {
            port: a.port,
            deliver_to: None,
        })
        .map_err(|e| e.to_string())?,
    ) {
        Ok(Reply::Bound { .. }) => {}
        Ok(other) => return Err(format!("unexpected reply {other:?}")),
        Err(e) => return Err(format!("port {}: {e}", a.port)),
    }
    for group in &a.join {
        let req = Request::Join {
            group: (*group).into(),
            source: a.source.map(Into::into),
            deliver_to: std::net::SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, a.port),
            reliable: a.reliable,
        };
        if let Err(e) = check(c.request(req).map_err(|e| e.to_string())?) {
            return Err(format!("join {group}: {e}"));
        }
    }
    let stdout = std::io::stdout();
    let mut received = 0u64;
    while a.count.is_none_or(|n| received < n) {
        let Some((ev, _)) = c
            .next_event(timeout.or(Some(Duration::from_secs(3600))))
            .map_err(|e| e.to_string())?
        else {
            if timeout.is_some() {
                break;
            }
            continue;
        };
        if let Event::Datagram { src, payload, .. } = ev {
            received += 1;
            if !a.quiet {
                let preview: String = String::from_utf8_lossy(&payload[..payload.len().min(64)])
                    .chars()
                    .map(|c| if c.is_control() { '.' } else { c })
                    .collect();
                let mut out = stdout.lock();
                let time = stamp(a.time).map(|t| t + " ").unwrap_or_default();
                // A closed stdout (e.g. `| head`) ends the program quietly.
                if writeln!(out, "{time}{src} {} {preview}", payload.len())
                    .and_then(|_| out.flush())
                    .is_err()
                {
                    return Ok(0);
                }
            }
        }
    }
    if a.quiet {
        println!("received {received}");
    }
    Ok(0)
}
