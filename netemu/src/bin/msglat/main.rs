//! `msglat`: one-way message latency over TCP (TCP_NODELAY) or UDP at a fixed rate.
//!
//! Run `msglat recv` in the destination namespace, then `msglat send` in the source one. Both
//! read CLOCK_MONOTONIC, which every namespace of the host shares, so one-way latency is a
//! plain subtraction. Only std/libc sockets are used so the tool runs unmodified under an
//! LD_PRELOAD shim. `bulk-send`/`bulk-recv` move a verified byte stream as fast as the path
//! allows and time its delivery.

mod bulk;

use clap::{Parser, Subcommand};
use serde_json::json;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use weft_core::Instant;
use weft_netemu::probe::{
    decode_header, encode, Frame, Recorder, Report, StreamDecoder, HEADER_LEN, MAX_MESSAGE,
};
use weft_netemu::sys::{self, monotonic_now};

#[derive(Parser)]
#[command(
    version,
    about = "One-way message latency probe (CLOCK_MONOTONIC, TCP or UDP)"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Send fixed-size messages at a fixed rate.
    Send {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        udp: bool,
        /// Messages per second.
        #[arg(long, default_value_t = 50.0)]
        rate: f64,
        /// Message size in bytes (at least 24).
        #[arg(long, default_value_t = 200)]
        size: usize,
        #[arg(long, default_value_t = 10.0)]
        duration_s: f64,
        /// TCP congestion control for this connection (e.g. cubic, reno, bbr).
        #[arg(long)]
        cc: Option<String>,
        /// Keep retrying a refused connection this long (the receiver may start late).
        #[arg(long, default_value_t = 30.0)]
        connect_timeout_s: f64,
        /// After the last message, wait this long for the receiver to close (TCP), so queued
        /// data is delivered before the process exits.
        #[arg(long, default_value_t = 60.0)]
        linger_s: f64,
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Receive one stream, then print latency figures.
    Recv {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        udp: bool,
        /// Leave out messages sent during the first WARMUP_MS of the stream.
        #[arg(long, default_value_t = 0)]
        warmup_ms: u64,
        /// Give up if the first message (or TCP connection) has not arrived by then.
        #[arg(long, default_value_t = 60.0)]
        start_timeout_s: f64,
        /// Stop after this long without data once the stream started.
        #[arg(long, default_value_t = 30.0)]
        idle_timeout_s: f64,
        /// Report the share of messages over these deadlines (ms, comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "65,100,150")]
        deadlines: Vec<f64>,
        /// Write every arrival as "seq send_ns recv_ns" lines.
        #[arg(long)]
        raw: Option<PathBuf>,
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Send a verifiable byte stream as fast as the connection takes it.
    BulkSend {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value_t = 10.0)]
        duration_s: f64,
        /// TCP congestion control for this connection (e.g. cubic, reno, bbr).
        #[arg(long)]
        cc: Option<String>,
        #[arg(long, default_value_t = 30.0)]
        connect_timeout_s: f64,
        /// After the last write, wait this long for the receiver to close.
        #[arg(long, default_value_t = 60.0)]
        linger_s: f64,
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Receive one bulk stream to its end: exact byte count, verification, timeline.
    BulkRecv {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long, default_value_t = 60.0)]
        start_timeout_s: f64,
        #[arg(long, default_value_t = 30.0)]
        idle_timeout_s: f64,
        /// Width of the timeline's bins in ms.
        #[arg(long, default_value_t = 1.0)]
        bin_ms: f64,
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

fn seconds(s: f64) -> Duration {
    Duration::from_secs_f64(s.clamp(0.0, 86_400.0))
}

fn write_json(path: &Option<PathBuf>, value: &serde_json::Value) -> io::Result<()> {
    if let Some(path) = path {
        std::fs::write(path, format!("{value}\n"))?;
    }
    Ok(())
}

struct SendOutcome {
    sent: u64,
    send_errors: u64,
    max_lag_ns: u64,
    start: Instant,
}

/// Send `count` messages on a fixed schedule through `send`.
fn paced(
    count: u64,
    rate: f64,
    size: usize,
    mut send: impl FnMut(&[u8]) -> io::Result<()>,
) -> SendOutcome {
    let period_ns = 1e9 / rate;
    let start = monotonic_now() + Duration::from_millis(10);
    let mut buf = vec![0u8; size];
    let mut outcome = SendOutcome {
        sent: 0,
        send_errors: 0,
        max_lag_ns: 0,
        start,
    };
    for seq in 0..count {
        let intended = start + Duration::from_nanos((seq as f64 * period_ns) as u64);
        while monotonic_now() < intended {
            sys::sleep_until(intended);
        }
        encode(
            &mut buf,
            Frame::Data {
                seq,
                send_ns: intended.as_nanos(),
                size,
            },
        );
        match send(&buf) {
            Ok(()) => outcome.sent += 1,
            Err(_) => outcome.send_errors += 1,
        }
        let lag = monotonic_now()
            .as_nanos()
            .saturating_sub(intended.as_nanos());
        outcome.max_lag_ns = outcome.max_lag_ns.max(lag);
    }
    outcome
}

fn connect_with_retry(to: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match TcpStream::connect(to) {
            Ok(s) => return Ok(s),
            Err(e) if std::time::Instant::now() < deadline => {
                if e.kind() != io::ErrorKind::ConnectionRefused {
                    eprintln!("msglat: connect {to}: {e}; retrying");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(e),
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn run_send(
    to: SocketAddr,
    udp: bool,
    rate: f64,
    size: usize,
    duration_s: f64,
    cc: Option<String>,
    connect_timeout: Duration,
    linger: Duration,
) -> io::Result<serde_json::Value> {
    let count = (rate * duration_s).round() as u64;
    let outcome = if udp {
        let bind: SocketAddr = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }
            .parse()
            .map_err(io::Error::other)?;
        let socket = UdpSocket::bind(bind)?;
        socket.connect(to)?;
        let outcome = paced(count, rate, size, |m| socket.send(m).map(|_| ()));
        let mut end = [0u8; HEADER_LEN];
        encode(&mut end, Frame::End { sent: outcome.sent });
        // Several end markers: any one of them may be lost.
        for _ in 0..5 {
            let _ = socket.send(&end);
            std::thread::sleep(Duration::from_millis(20));
        }
        outcome
    } else {
        let mut stream = connect_with_retry(to, connect_timeout)?;
        stream.set_nodelay(true)?;
        if let Some(name) = &cc {
            if let Err(e) = sys::set_tcp_congestion(stream.as_raw_fd(), name) {
                eprintln!("msglat: TCP_CONGESTION {name}: {e} (continuing)");
            }
        }
        let outcome = paced(count, rate, size, |m| stream.write_all(m));
        let mut end = [0u8; HEADER_LEN];
        encode(&mut end, Frame::End { sent: outcome.sent });
        stream.write_all(&end)?;
        stream.shutdown(std::net::Shutdown::Write)?;
        // Wait for the receiver to close: everything queued has then been delivered.
        stream.set_read_timeout(Some(linger))?;
        let mut sink = [0u8; 64];
        while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
        outcome
    };
    let end_ns = monotonic_now().as_nanos();
    println!(
        "msglat send {}: {} sent, {} errors, max lag {:.3} ms",
        if udp { "udp" } else { "tcp" },
        outcome.sent,
        outcome.send_errors,
        outcome.max_lag_ns as f64 / 1e6
    );
    Ok(json!({
        "mode": if udp { "udp" } else { "tcp" },
        "sent": outcome.sent,
        "send_errors": outcome.send_errors,
        "max_lag_ms": outcome.max_lag_ns as f64 / 1e6,
        "start_ns": outcome.start.as_nanos(),
        "end_ns": end_ns,
        "rate": rate,
        "size": size,
    }))
}

/// Why reception stopped.
fn receive_tcp(
    listen: SocketAddr,
    start_timeout: Duration,
    idle_timeout: Duration,
    recorder: &mut Recorder,
) -> io::Result<&'static str> {
    let listener = TcpListener::bind(listen)?;
    listener.set_nonblocking(true)?;
    let deadline = std::time::Instant::now() + start_timeout;
    let mut stream = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if std::time::Instant::now() >= deadline {
                    return Ok("no connection");
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e),
        }
    };
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(idle_timeout))?;
    let mut decoder = StreamDecoder::default();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => return Ok("eof"),
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Ok("idle timeout")
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let recv_ns = monotonic_now().as_nanos();
        match decoder.push(&buf[..n]) {
            Ok(frames) => {
                for f in frames {
                    recorder.record(f, recv_ns);
                }
            }
            Err(_) => {
                recorder.record_corrupt();
                return Ok("corrupt stream");
            }
        }
        if recorder.end_seen() {
            return Ok("end");
        }
    }
}

fn receive_udp(
    listen: SocketAddr,
    start_timeout: Duration,
    idle_timeout: Duration,
    recorder: &mut Recorder,
) -> io::Result<&'static str> {
    let socket = UdpSocket::bind(listen)?;
    if let Err(e) = sys::force_receive_buffer(socket.as_raw_fd(), 8 << 20) {
        eprintln!("msglat: SO_RCVBUFFORCE: {e} (continuing with the default buffer)");
    }
    let mut buf = vec![0u8; MAX_MESSAGE + 1];
    let mut started = false;
    socket.set_read_timeout(Some(start_timeout))?;
    loop {
        let n = match socket.recv(&mut buf) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(if started { "idle timeout" } else { "no data" })
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let recv_ns = monotonic_now().as_nanos();
        if !started {
            started = true;
            socket.set_read_timeout(Some(idle_timeout))?;
        }
        match decode_header(&buf[..n]) {
            Some((frame, size)) if size == n => recorder.record(frame, recv_ns),
            _ => recorder.record_corrupt(),
        }
        if recorder.end_seen() {
            return Ok("end");
        }
    }
}

fn dump_raw(path: &PathBuf, recorder: &Recorder) -> io::Result<()> {
    let mut out = BufWriter::new(File::create(path)?);
    for s in recorder.samples() {
        writeln!(out, "{} {} {}", s.seq, s.send_ns, s.recv_ns)?;
    }
    out.flush()
}

fn describe(report: &Report, mode: &str, stop: &str) -> String {
    let l = &report.latency;
    let over: Vec<String> = report
        .over_deadline
        .iter()
        .map(|(d, f)| format!(">{d}ms {:.2}%", f * 100.0))
        .collect();
    format!(
        "msglat recv {mode}: {} received, sent {}, lost {}, {} duplicates, {} reordered ({stop})\n\
         latency ms: min {:.3} p50 {:.3} p90 {:.3} p99 {:.3} p99.9 {:.3} max {:.3}; \
         jitter {:.3} ms; {}",
        report.received,
        report.sent.map_or("?".to_string(), |s| s.to_string()),
        report.lost.map_or("?".to_string(), |s| s.to_string()),
        report.duplicates,
        report.reordered,
        l.min_ms,
        l.p50_ms,
        l.p90_ms,
        l.p99_ms,
        l.p999_ms,
        l.max_ms,
        report.jitter_ms,
        over.join(", ")
    )
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Cmd::Send {
            to,
            udp,
            rate,
            size,
            duration_s,
            cc,
            connect_timeout_s,
            linger_s,
            json,
        } => {
            if !(HEADER_LEN..=MAX_MESSAGE).contains(&size) {
                eprintln!("msglat: --size: must be {HEADER_LEN}-{MAX_MESSAGE} bytes");
                return ExitCode::from(2);
            }
            if !(rate > 0.0 && rate <= 1e6 && duration_s > 0.0 && duration_s < 86_400.0) {
                eprintln!("msglat: --rate and --duration-s must be positive");
                return ExitCode::from(2);
            }
            run_send(
                to,
                udp,
                rate,
                size,
                duration_s,
                cc,
                seconds(connect_timeout_s),
                seconds(linger_s),
            )
            .and_then(|v| write_json(&json, &v))
        }
        Cmd::Recv {
            listen,
            udp,
            warmup_ms,
            start_timeout_s,
            idle_timeout_s,
            deadlines,
            raw,
            json,
        } => {
            let mut recorder = Recorder::default();
            let (start, idle) = (seconds(start_timeout_s), seconds(idle_timeout_s));
            let stopped = if udp {
                receive_udp(listen, start, idle, &mut recorder)
            } else {
                receive_tcp(listen, start, idle, &mut recorder)
            };
            stopped.and_then(|stop| {
                let report = recorder.report(warmup_ms * 1_000_000, &deadlines);
                let mode = if udp { "udp" } else { "tcp" };
                println!("{}", describe(&report, mode, stop));
                if let Some(path) = &raw {
                    dump_raw(path, &recorder)?;
                }
                let mut value = serde_json::to_value(&report).map_err(io::Error::other)?;
                if let Some(map) = value.as_object_mut() {
                    map.insert("mode".into(), json!(mode));
                    map.insert("stopped".into(), json!(stop));
                }
                write_json(&json, &value)
            })
        }
        Cmd::BulkSend {
            to,
            duration_s,
            cc,
            connect_timeout_s,
            linger_s,
            json,
        } => bulk::send(
            to,
            seconds(duration_s),
            cc,
            seconds(connect_timeout_s),
            seconds(linger_s),
        )
        .and_then(|v| write_json(&json, &v)),
        Cmd::BulkRecv {
            listen,
            start_timeout_s,
            idle_timeout_s,
            bin_ms,
            json,
        } => {
            if !(bin_ms > 0.0 && bin_ms <= 60_000.0) {
                eprintln!("msglat: --bin-ms: must be in (0, 60000]");
                return ExitCode::from(2);
            }
            bulk::recv(
                listen,
                seconds(start_timeout_s),
                seconds(idle_timeout_s),
                Duration::from_secs_f64(bin_ms / 1e3),
            )
            .and_then(|v| write_json(&json, &v))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("msglat: {e}");
            ExitCode::from(1)
        }
    }
}
