//! `msglat bulk-send` / `bulk-recv`: a saturating TCP transfer whose receiver verifies every
//! byte and counts them exactly, with a delivery timeline (see `weft_netemu::bulk`).

use serde_json::json;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::time::Duration;
use weft_netemu::bulk::{fill, Timeline, Verifier};
use weft_netemu::sys::{self, monotonic_now};

const CHUNK: usize = 64 * 1024;

/// Write the pattern for `duration`, then close the write side and wait (up to `linger`) for
/// the receiver to close, so everything written has been delivered or given up on.
pub fn send(
    to: SocketAddr,
    duration: Duration,
    cc: Option<String>,
    connect_timeout: Duration,
    linger: Duration,
) -> io::Result<serde_json::Value> {
    let mut stream = crate::connect_with_retry(to, connect_timeout)?;
    if let Some(name) = &cc {
        if let Err(e) = sys::set_tcp_congestion(stream.as_raw_fd(), name) {
            eprintln!("msglat: TCP_CONGESTION {name}: {e} (continuing)");
        }
    }
    let start = monotonic_now();
    let stop = start + duration;
    let mut buf = vec![0u8; CHUNK];
    let mut written: u64 = 0;
    let mut error = None;
    // A write blocked by a dead path must not hold the sender past its duration.
    sys::set_socket_timeouts(stream.as_raw_fd(), Duration::from_millis(100))?;
    while monotonic_now() < stop {
        fill(&mut buf, written);
        match stream.write(&buf) {
            Ok(0) => {
                error = Some("write returned 0".to_string());
                break;
            }
            Ok(n) => written += n as u64,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => {
                error = Some(e.to_string());
                break;
            }
        }
    }
    let write_end_ns = monotonic_now().as_nanos();
    let mut closed_by_receiver = false;
    if error.is_none() {
        stream.shutdown(std::net::Shutdown::Write)?;
        sys::set_socket_timeouts(stream.as_raw_fd(), linger)?;
        let mut sink = [0u8; 64];
        closed_by_receiver = matches!(stream.read(&mut sink), Ok(0));
    }
    println!(
        "msglat bulk-send: {written} bytes in {:.3} s{}",
        (write_end_ns - start.as_nanos()) as f64 / 1e9,
        error
            .as_deref()
            .map_or(String::new(), |e| format!(", error: {e}"))
    );
    Ok(json!({
        "bytes_written": written,
        "start_ns": start.as_nanos(),
        "write_end_ns": write_end_ns,
        "end_ns": monotonic_now().as_nanos(),
        "closed_by_receiver": closed_by_receiver,
        "error": error,
    }))
}

/// Accept one connection and read it to the end, verifying and timing every byte.
pub fn recv(
    listen: SocketAddr,
    start_timeout: Duration,
    idle_timeout: Duration,
    bin: Duration,
) -> io::Result<serde_json::Value> {
    let listener = TcpListener::bind(listen)?;
    listener.set_nonblocking(true)?;
    let deadline = std::time::Instant::now() + start_timeout;
    let mut stream = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if std::time::Instant::now() >= deadline {
                    return Ok(json!({"bytes": 0, "stopped": "no connection"}));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e),
        }
    };
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(idle_timeout))?;
    let accepted_ns = monotonic_now().as_nanos();
    let mut verifier = Verifier::default();
    let mut timeline = Timeline::new(accepted_ns, bin.as_nanos() as u64);
    let mut buf = vec![0u8; CHUNK];
    let stopped = loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => break "eof",
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                break "idle timeout"
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break "reset",
            Err(e) => return Err(e),
        };
        timeline.record(monotonic_now().as_nanos(), n as u64);
        verifier.push(&buf[..n]);
    };
    let end_ns = monotonic_now().as_nanos();
    // Closing tells the sender everything arrived.
    drop(stream);
    println!(
        "msglat bulk-recv: {} bytes ({stopped}){}",
        verifier.received(),
        verifier
            .first_mismatch()
            .map_or(String::new(), |at| format!(", CORRUPT from byte {at}"))
    );
    Ok(json!({
        "bytes": verifier.received(),
        "first_mismatch": verifier.first_mismatch(),
        "stopped": stopped,
        "accepted_ns": accepted_ns,
        "end_ns": end_ns,
        "timeline": timeline,
    }))
}
