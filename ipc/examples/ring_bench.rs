//! Micro benchmark: one process writes, another reads, through a shared-memory ring (with the
//! full wake-up protocol: eventfd, doorbells, credit filler) or through a plain `AF_UNIX`
//! socketpair, at 64 B, 1400 B and 64 KiB writes. Prints medians of repeated runs and the
//! ring/socketpair ratio. Figures are reported, never asserted.
//!
//! `cargo run --release -p weft-ipc --example ring_bench [-- --repeats N --capacity BYTES --scale F]`

#[path = "../tests/support/mod.rs"]
mod support;

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

use support::{run_daemon, AppIo, Produced, Pump};
use weft_ipc::ring::{DaemonEnd, RegionKind, RingError, SharedRegion};

#[derive(Clone, Copy, PartialEq, Debug)]
enum Transport {
    Ring,
    Socketpair,
}

struct Options {
    repeats: usize,
    capacity: u32,
    scale: f64,
}

fn parse_options() -> Options {
    let mut options = Options {
        repeats: 5,
        capacity: 256 * 1024,
        scale: 1.0,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let value = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--repeats" => options.repeats = value.parse().expect("--repeats N"),
            "--capacity" => {
                options.capacity = value.parse().expect("--capacity BYTES (power of two)")
            }
            "--scale" => options.scale = value.parse().expect("--scale F"),
            "--bench" => {
                i += 1;
                continue;
            }
            other => panic!("unknown argument {other}"),
        }
        i += 2;
    }
    options
}

/// The writer: the child process. fds: 3 = memfd (ring) or socket, 4 = socket, 5 = eventfd.
fn child(transport: &str, size: usize, total: u64) {
    let buf = vec![0xA5u8; size];
    let writes = total / size as u64;
    match transport {
        "ring" => {
            // SAFETY: the parent placed exactly these descriptors at 3, 4 and 5.
            let (memfd, sock, wake) = unsafe {
                (
                    OwnedFd::from_raw_fd(3),
                    OwnedFd::from_raw_fd(4),
                    OwnedFd::from_raw_fd(5),
                )
            };
            let region = SharedRegion::map(memfd.as_fd()).expect("map");
            let mut io = AppIo::new(region.into_app_end().expect("app end"), sock, wake);
            for _ in 0..writes {
                io.write_all(&buf).expect("ring write");
            }
            io.close_tx().expect("close");
            if std::env::var_os("WEFT_BENCH_VERBOSE").is_some() {
                eprintln!(
                    "  writer {size} B: eventfd wakes {}, sleeps {}, filler {} B",
                    io.wakes, io.sleeps, io.filler
                );
            }
        }
        _ => {
            // SAFETY: as above; fd 3 is the socket.
            let sock = unsafe { OwnedFd::from_raw_fd(3) };
            for _ in 0..writes {
                let mut done = 0;
                while done < size {
                    // SAFETY: writes from a live buffer.
                    let n = unsafe {
                        libc::write(
                            sock.as_raw_fd(),
                            buf[done..].as_ptr() as *const libc::c_void,
                            size - done,
                        )
                    };
                    assert!(n > 0, "socket write: {}", std::io::Error::last_os_error());
                    done += n as usize;
                }
            }
        }
    }
}

fn spawn_child(
    transport: Transport,
    size: usize,
    total: u64,
    fds: &[RawFd],
) -> std::process::Child {
    let fds = fds.to_vec();
    let mut command = Command::new(std::env::current_exe().expect("current exe"));
    let name = if transport == Transport::Ring {
        "ring"
    } else {
        "socketpair"
    };
    command.args(["--child", name, &size.to_string(), &total.to_string()]);
    // SAFETY: only fcntl and dup2 between fork and exec.
    unsafe {
        command.pre_exec(move || {
            let mut high = Vec::with_capacity(fds.len());
            for fd in &fds {
                let h = libc::fcntl(*fd, libc::F_DUPFD, 100);
                if h < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                high.push(h);
            }
            for (i, fd) in high.iter().enumerate() {
                if libc::dup2(*fd, 3 + i as i32) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    command.spawn().expect("spawn writer")
}

/// Counts TX bytes, copying them out like a daemon filling packets; sends nothing back.
struct CountPump {
    buf: Vec<u8>,
    received: u64,
    first: Option<Instant>,
}

impl Pump for CountPump {
    fn consume(&mut self, end: &mut DaemonEnd) -> Result<bool, RingError> {
        let n = end.tx().read(&mut self.buf)?;
        if n > 0 && self.first.is_none() {
            self.first = Some(Instant::now());
        }
        self.received += n as u64;
        Ok(n > 0)
    }

    fn produce(&mut self, _end: &mut DaemonEnd) -> Result<Produced, RingError> {
        Ok(Produced::Finished)
    }
}

/// One run: bytes per second as seen by the reader, from its first byte to the last.
fn run_once(transport: Transport, size: usize, total: u64, capacity: u32) -> f64 {
    let total = total / size as u64 * size as u64;
    let (elapsed, received) = match transport {
        Transport::Ring => {
            let (region, memfd) =
                SharedRegion::create(RegionKind::Stream, capacity, 4096).expect("region");
            let (app_sock, daemon_sock) = support::socketpair();
            let wake = support::eventfd();
            let mut child = spawn_child(
                transport,
                size,
                total,
                &[memfd.as_raw_fd(), app_sock.as_raw_fd(), wake.as_raw_fd()],
            );
            drop((memfd, app_sock));
            let mut end = region.into_daemon_end().expect("daemon end");
            let mut pump = CountPump {
                buf: vec![0u8; 64 * 1024],
                received: 0,
                first: None,
            };
            let stats = run_daemon(&mut end, &daemon_sock, &wake, &mut pump).expect("daemon loop");
            if std::env::var_os("WEFT_BENCH_VERBOSE").is_some() {
                eprintln!("  reader {size} B: {stats:?}");
            }
            let elapsed = pump.first.map(|t| t.elapsed()).unwrap_or(Duration::ZERO);
            assert!(child.wait().expect("wait").success());
            (elapsed, pump.received)
        }
        Transport::Socketpair => {
            let mut fds = [0; 2];
            // SAFETY: fds is a valid out-array of two ints.
            assert_eq!(
                unsafe {
                    libc::socketpair(
                        libc::AF_UNIX,
                        libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
                        0,
                        fds.as_mut_ptr(),
                    )
                },
                0
            );
            // SAFETY: the kernel just returned these descriptors.
            let (writer, reader) =
                unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
            let mut child = spawn_child(transport, size, total, &[writer.as_raw_fd()]);
            drop(writer);
            let mut buf = vec![0u8; 64 * 1024];
            let (mut received, mut first) = (0u64, None);
            loop {
                // SAFETY: reads into a live buffer.
                let n = unsafe {
                    libc::read(
                        reader.as_raw_fd(),
                        buf.as_mut_ptr() as *mut libc::c_void,
                        buf.len(),
                    )
                };
                assert!(n >= 0, "socket read: {}", std::io::Error::last_os_error());
                if n == 0 {
                    break;
                }
                first.get_or_insert_with(Instant::now);
                received += n as u64;
            }
            assert!(child.wait().expect("wait").success());
            (
                first.map(|t| t.elapsed()).unwrap_or(Duration::ZERO),
                received,
            )
        }
    };
    assert_eq!(received, total, "{transport:?}: lost bytes");
    received as f64 / elapsed.as_secs_f64().max(1e-9)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--child") {
        child(
            &args[2],
            args[3].parse().expect("size"),
            args[4].parse().expect("total"),
        );
        return;
    }
    let options = parse_options();
    println!(
        "ring vs AF_UNIX socketpair, writer and reader in two processes; ring capacity {} B; median of {} runs",
        options.capacity, options.repeats
    );
    println!(
        "{:>9} {:>14} {:>14} {:>8}",
        "write", "ring MB/s", "socket MB/s", "ratio"
    );
    for (size, total) in [
        (64usize, 64u64 << 20),
        (1400, 512 << 20),
        (65536, 2048 << 20),
    ] {
        let total = ((total as f64) * options.scale) as u64;
        let mut ring = Vec::new();
        let mut socket = Vec::new();
        for _ in 0..options.repeats {
            ring.push(run_once(Transport::Ring, size, total, options.capacity));
            socket.push(run_once(
                Transport::Socketpair,
                size,
                total,
                options.capacity,
            ));
        }
        let (r, s) = (median(ring) / 1e6, median(socket) / 1e6);
        println!("{:>8}B {:>14.1} {:>14.1} {:>7.2}x", size, r, s, r / s);
    }
}
