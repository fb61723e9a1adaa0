//! `weft ping NODE` and `weft trace NODE`: probes over the overlay to the echo service of
//! remote daemons (`io::echo`). Ping: round-trip time and loss to one node, with the path the
//! routes give. Trace: every hop of that path probed in turn, with the RTT and loss of the
//! link that leads to it as the hop itself measures them.

use super::stream::unreachable_reason;
use super::{connect, monotonic_ns};
use crate::client::{check, ControlClient};
use crate::emulation::parse_duration;
use crate::io::echo::{parse_reply, EchoReport, ECHO_MAGIC, ECHO_PORT};
use clap::Args;
use serde::Serialize;
use serde_json::Value;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::time::{Duration, Instant};
use weft_core::{Endpoint, NodeId};
use weft_ipc::{Event, Reply, Request};

#[derive(Args, Debug)]
pub struct PingArgs {
    /// The node to probe (its overlay address).
    node: Ipv4Addr,
    /// Number of probes.
    #[arg(short = 'c', long, default_value_t = 5)]
    count: u32,
    /// Pause between probes, e.g. 200ms.
    #[arg(short = 'i', long, default_value = "1s")]
    interval: String,
    /// How long to wait for a reply after the last probe.
    #[arg(short = 'W', long, default_value = "2s")]
    timeout: String,
    /// Print a JSON summary instead of lines.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct TraceArgs {
    /// The node to trace the path to.
    node: Ipv4Addr,
    /// Probes per hop.
    #[arg(short = 'q', long, default_value_t = 3)]
    probes: u32,
    /// Pause between probes, e.g. 100ms.
    #[arg(short = 'i', long, default_value = "100ms")]
    interval: String,
    /// How long to wait for each hop's last reply.
    #[arg(short = 'W', long, default_value = "1s")]
    timeout: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

fn duration(flag: &str, s: &str) -> Result<Duration, String> {
    parse_duration(s).ok_or_else(|| format!("{flag}: `{s}` is not a duration like 200ms"))
}

/// The path (node addresses, this node first) the routes give toward `node`.
fn route_path(status: &Value, node: Ipv4Addr) -> Vec<String> {
    let want = node.to_string();
    status["routes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["dst"].as_str() == Some(want.as_str()))
        .map(|r| {
            r["path"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// A control connection with an ephemeral overlay port to probe from.
struct Prober {
    client: ControlClient,
    port: u16,
    next_seq: u64,
}

#[derive(Debug, Clone, Serialize)]
struct Probe {
    seq: u64,
    rtt_ms: Option<f64>,
    #[serde(skip)]
    report: Option<EchoReport>,
}

impl Prober {
    fn new(socket: &Path) -> Result<Prober, String> {
        let mut client = connect(socket)?;
        let port = match check(
            client
                .request(Request::BindDatagram {
                    port: 0,
                    deliver_to: None,
                })
                .map_err(|e| e.to_string())?,
        ) {
            Ok(Reply::Bound { port }) => port,
            Ok(other) => return Err(format!("unexpected reply {other:?}")),
            Err(e) => return Err(e.to_string()),
        };
        Ok(Prober {
            client,
            port,
            next_seq: 0,
        })
    }

    fn send(&mut self, node: Ipv4Addr) -> Result<u64, String> {
        let seq = self.next_seq;
        self.next_seq += 1;
        let payload = [ECHO_MAGIC, format!("{seq} {}", monotonic_ns()).as_bytes()].concat();
        let reply = self
            .client
            .request(Request::SendDatagram {
                src_port: self.port,
                dst: Endpoint::from(SocketAddrV4::new(node, ECHO_PORT)),
                ttl: 0,
                payload,
            })
            .map_err(|e| e.to_string())?;
        check(reply).map_err(|e| format!("probe to {node}: {e}"))?;
        Ok(seq)
    }

    /// Replies from `node` until `until`: (seq, rtt, the responder's report).
    fn replies(
        &mut self,
        node: Ipv4Addr,
        until: Instant,
    ) -> Result<Vec<(u64, Duration, EchoReport)>, String> {
        let mut out = Vec::new();
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(out);
            }
            let ev = self
                .client
                .next_event(Some(left.max(Duration::from_millis(1))))
                .map_err(|e| e.to_string())?;
            let Some((Event::Datagram { src, payload, .. }, _)) = ev else {
                continue;
            };
            if src.node != NodeId::from(node) || src.port != ECHO_PORT {
                continue;
            }
            let Some((request, report)) = parse_reply(&payload) else {
                continue;
            };
            let text = String::from_utf8_lossy(&request[ECHO_MAGIC.len().min(request.len())..])
                .into_owned();
            let mut w = text.split_whitespace();
            let (Some(seq), Some(sent)) = (
                w.next().and_then(|s| s.parse::<u64>().ok()),
                w.next().and_then(|s| s.parse::<u64>().ok()),
            ) else {
                continue;
            };
            let rtt = Duration::from_nanos(monotonic_ns().saturating_sub(sent));
            out.push((seq, rtt, report));
            if Instant::now() >= until {
                return Ok(out);
            }
        }
    }

    /// `count` probes to `node`, `interval` apart, then up to `timeout` for stragglers.
    fn probe(
        &mut self,
        node: Ipv4Addr,
        count: u32,
        interval: Duration,
        timeout: Duration,
        mut each: impl FnMut(&Probe),
    ) -> Result<Vec<Probe>, String> {
        let mut probes: Vec<Probe> = Vec::new();
        let start = Instant::now();
        let mut record = |probes: &mut Vec<Probe>, got: Vec<(u64, Duration, EchoReport)>| {
            for (seq, rtt, report) in got {
                if let Some(p) = probes
                    .iter_mut()
                    .find(|p| p.seq == seq && p.rtt_ms.is_none())
                {
                    p.rtt_ms = Some(rtt.as_secs_f64() * 1e3);
                    p.report = Some(report);
                    each(p);
                }
            }
        };
        for i in 0..count {
            let seq = self.send(node)?;
            probes.push(Probe {
                seq,
                rtt_ms: None,
                report: None,
            });
            if i + 1 < count {
                let got = self.replies(node, start + interval * (i + 1))?;
                record(&mut probes, got);
            }
        }
        // The last probe (and any straggler): wait until all answered or the timeout.
        let deadline = Instant::now() + timeout;
        while probes.iter().any(|p| p.rtt_ms.is_none()) && Instant::now() < deadline {
            let slice = (Instant::now() + Duration::from_millis(20)).min(deadline);
            let got = self.replies(node, slice)?;
            record(&mut probes, got);
        }
        Ok(probes)
    }
}

#[derive(Debug, Serialize)]
struct RttSummary {
    sent: u32,
    received: u32,
    loss_ratio: f64,
    rtt_min_ms: Option<f64>,
    rtt_avg_ms: Option<f64>,
    rtt_max_ms: Option<f64>,
}

fn summarize(probes: &[Probe]) -> RttSummary {
    let rtts: Vec<f64> = probes.iter().filter_map(|p| p.rtt_ms).collect();
    let sent = probes.len() as u32;
    let received = rtts.len() as u32;
    RttSummary {
        sent,
        received,
        loss_ratio: if sent == 0 {
            0.0
        } else {
            f64::from(sent - received) / f64::from(sent)
        },
        rtt_min_ms: rtts.iter().copied().reduce(f64::min),
        rtt_avg_ms: (!rtts.is_empty()).then(|| rtts.iter().sum::<f64>() / rtts.len() as f64),
        rtt_max_ms: rtts.iter().copied().reduce(f64::max),
    }
}

fn fmt_ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |x| format!("{x:.2}"))
}

/// Fails at once (with the reason) for a node that cannot be reached.
fn reachable(socket: &Path, node: Ipv4Addr) -> Result<Value, String> {
    let status = super::status::fetch(socket)?;
    if status["node"].as_str() == Some(node.to_string().as_str()) {
        return Err(format!("{node} is this node"));
    }
    match unreachable_reason(&status, node) {
        Some(why) => Err(why),
        None => Ok(status),
    }
}

pub fn ping(socket: &Path, a: PingArgs) -> Result<i32, String> {
    let interval = duration("--interval", &a.interval)?;
    let timeout = duration("--timeout", &a.timeout)?;
    let status = reachable(socket, a.node)?;
    let path = route_path(&status, a.node);
    let mut prober = Prober::new(socket)?;
    if !a.json {
        println!(
            "PING {} over the overlay: path {} ({} hops)",
            a.node,
            path.join(" > "),
            path.len().saturating_sub(1)
        );
    }
    let json = a.json;
    let node = a.node;
    let probes = prober.probe(a.node, a.count, interval, timeout, |p| {
        if !json {
            println!("from {node}: seq={} time={} ms", p.seq, fmt_ms(p.rtt_ms));
        }
    })?;
    let summary = summarize(&probes);
    if a.json {
        let v = serde_json::json!({
            "node": a.node.to_string(),
            "path": path,
            "summary": summary,
            "probes": probes,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?
        );
    } else {
        println!(
            "--- {} ping: {} sent, {} received, {:.0}% loss, rtt min/avg/max {}/{}/{} ms",
            a.node,
            summary.sent,
            summary.received,
            summary.loss_ratio * 100.0,
            fmt_ms(summary.rtt_min_ms),
            fmt_ms(summary.rtt_avg_ms),
            fmt_ms(summary.rtt_max_ms)
        );
    }
    Ok(if summary.received > 0 { 0 } else { 1 })
}

#[derive(Debug, Serialize)]
struct Hop {
    hop: usize,
    node: String,
    /// Round trip from here to this hop.
    #[serde(flatten)]
    rtt: RttSummary,
    /// The link from the previous hop to this one, as its two ends measure it.
    link_rtt_ms: Option<f64>,
    /// Hellos lost from the previous hop to this one (this hop's measure).
    link_loss_forward_ratio: Option<f64>,
    /// Hellos lost from this hop back to the previous one (the previous hop's measure).
    link_loss_reverse_ratio: Option<f64>,
    /// Data packets the previous hop's reliable link to this one lost.
    link_data_loss_ratio: Option<f64>,
}

/// A node's view of its link to `peer`: from a report, or (for this node) from status.
fn link_in_report(report: &EchoReport, peer: &str) -> Option<crate::io::echo::EchoLink> {
    report
        .links
        .iter()
        .find(|l| l.node.map(|n| n.to_string()).as_deref() == Some(peer))
        .cloned()
}

fn local_report(status: &Value) -> Option<EchoReport> {
    let node: Ipv4Addr = status["node"].as_str()?.parse().ok()?;
    let links = status["neighbors"]
        .as_array()?
        .iter()
        .map(|n| crate::io::echo::EchoLink {
            node: n["node"]
                .as_str()
                .and_then(|s| s.parse::<Ipv4Addr>().ok())
                .map(NodeId::from),
            state: n["state"].as_str().unwrap_or("").to_string(),
            rtt_ms: n["rtt_ms"].as_f64(),
            hello_loss_ratio: n["hello_loss_ratio"].as_f64().unwrap_or(0.0),
            data_loss_ratio: n["arq"]["loss_rate_ppm"].as_f64().map(|p| p / 1e6),
        })
        .collect();
    Some(EchoReport {
        node: NodeId::from(node),
        links,
    })
}

pub fn trace(socket: &Path, a: TraceArgs) -> Result<i32, String> {
    let interval = duration("--interval", &a.interval)?;
    let timeout = duration("--timeout", &a.timeout)?;
    let status = reachable(socket, a.node)?;
    let path = route_path(&status, a.node);
    if path.len() < 2 {
        return Err(format!("no path to {}", a.node));
    }
    let mut prober = Prober::new(socket)?;
    if !a.json {
        println!(
            "trace to {} over the overlay: {} hops (the path of this node's routes), {} probes each",
            a.node,
            path.len() - 1,
            a.probes
        );
        println!(
            "  {:>3}  {:<15} {:>22} {:>6}  {:>12} {:>14}",
            "hop", "node", "rtt ms min/avg/max", "loss", "link rtt ms", "link loss →/←"
        );
    }
    let mut previous = local_report(&status);
    let mut hops = Vec::new();
    for (k, name) in path.iter().enumerate().skip(1) {
        let node: Ipv4Addr = name
            .parse()
            .map_err(|_| format!("bad node `{name}` in the route"))?;
        let probes = prober.probe(node, a.probes, interval, timeout, |_| {})?;
        let report = probes.iter().find_map(|p| p.report.clone());
        let prev_name = &path[k - 1];
        let here = report.as_ref().and_then(|r| link_in_report(r, prev_name));
        let there = previous.as_ref().and_then(|r| link_in_report(r, name));
        let hop = Hop {
            hop: k,
            node: name.clone(),
            rtt: summarize(&probes),
            link_rtt_ms: here
                .as_ref()
                .and_then(|l| l.rtt_ms)
                .or(there.as_ref().and_then(|l| l.rtt_ms)),
            link_loss_forward_ratio: here.as_ref().map(|l| l.hello_loss_ratio),
            link_loss_reverse_ratio: there.as_ref().map(|l| l.hello_loss_ratio),
            link_data_loss_ratio: there.as_ref().and_then(|l| l.data_loss_ratio),
        };
        if !a.json {
            let pct = |v: Option<f64>| v.map_or("-".into(), |x| format!("{:.1}%", x * 100.0));
            println!(
                "  {:>3}  {:<15} {:>22} {:>5.0}%  {:>12} {:>14}",
                hop.hop,
                hop.node,
                format!(
                    "{}/{}/{}",
                    fmt_ms(hop.rtt.rtt_min_ms),
                    fmt_ms(hop.rtt.rtt_avg_ms),
                    fmt_ms(hop.rtt.rtt_max_ms)
                ),
                hop.rtt.loss_ratio * 100.0,
                fmt_ms(hop.link_rtt_ms),
                format!(
                    "{} / {}",
                    pct(hop.link_loss_forward_ratio),
                    pct(hop.link_loss_reverse_ratio)
                ),
            );
        }
        hops.push(hop);
        previous = report;
    }
    if a.json {
        let v = serde_json::json!({ "node": a.node.to_string(), "path": path, "hops": hops });
        println!(
            "{}",
            serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?
        );
    }
    let last_answered = hops.last().is_some_and(|h| h.rtt.received > 0);
    Ok(if last_answered { 0 } else { 1 })
}
