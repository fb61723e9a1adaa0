//! A real child process (this test binary re-executed with a role in the environment) is the
//! application side; the test is the daemon side; one memfd region, the socketpair and the
//! eventfd are inherited as fds 3, 4 and 5. Random chunk sizes, at least 256 MiB from the
//! child, byte-exact comparison against the expected stream (stronger than a checksum) and
//! exact lengths; the child checks the daemon → app direction the same way.

mod support;

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use support::{chunk_len, run_daemon, AppIo, DatagramPump, Pattern, StreamPump, MAX_SLICE};
use weft_ipc::ring::{RegionKind, SharedRegion};

const ROLE: &str = "WEFT_RING_CHILD_ROLE";
const SEED: &str = "WEFT_RING_CHILD_SEED";
const TX_TOTAL: u64 = 256 << 20;
const RX_TOTAL: u64 = 64 << 20;
const MAX_DATAGRAM: usize = 65_000;

struct Setup {
    seed: u64,
    kind: RegionKind,
    tx_cap: u32,
    rx_cap: u32,
}

impl Setup {
    fn new(seed: u64, kind: RegionKind) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (tx_cap, rx_cap) = match kind {
            RegionKind::Stream => (1 << rng.gen_range(12..21), 1 << rng.gen_range(12..21)),
            RegionKind::Datagram => (1 << rng.gen_range(17..21), 1 << rng.gen_range(17..21)),
        };
        Setup {
            seed,
            kind,
            tx_cap,
            rx_cap,
        }
    }
}

/// Runs the parent side: spawns the child with the region, the app end of the socketpair and
/// the eventfd, pumps as the daemon, and checks the child's verdict.
fn parent(test_name: &str, setup: Setup) {
    let (region, memfd) = SharedRegion::create(setup.kind, setup.tx_cap, setup.rx_cap).unwrap();
    let (app_sock, daemon_sock) = support::socketpair();
    let wake = support::eventfd();
    let inherit: [RawFd; 3] = [memfd.as_raw_fd(), app_sock.as_raw_fd(), wake.as_raw_fd()];
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args(["--exact", test_name, "--nocapture", "--test-threads=1"])
        .env(ROLE, test_name)
        .env(SEED, setup.seed.to_string())
        // The child's own libtest summary would read like more tests of this run; its
        // stderr (panics, statistics) stays visible.
        .stdout(Stdio::null());
    // SAFETY: only async-signal-safe calls (fcntl, dup2) between fork and exec. Sources are
    // first moved above fd 100 so that placing them at 3..6 cannot clobber one another.
    unsafe {
        command.pre_exec(move || {
            let mut high = [0; 3];
            for (i, fd) in inherit.iter().enumerate() {
                high[i] = libc::fcntl(*fd, libc::F_DUPFD, 100);
                if high[i] < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for (i, fd) in high.iter().enumerate() {
                if libc::dup2(*fd, 3 + i as i32) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = command.spawn().expect("spawn the child");
    drop((memfd, app_sock));
    let mut end = region.into_daemon_end().unwrap();
    let tx_pattern = Pattern::new(setup.seed);
    let rx_pattern = Pattern::new(!setup.seed);
    let (stats, tx_received) = match setup.kind {
        RegionKind::Stream => {
            let mut pump = StreamPump {
                tx_pattern: &tx_pattern,
                rx_pattern: &rx_pattern,
                tx_received: 0,
                rx_sent: 0,
                rx_total: RX_TOTAL,
                rng: ChaCha8Rng::seed_from_u64(setup.seed ^ 3),
            };
            let stats = run_daemon(&mut end, &daemon_sock, &wake, &mut pump).unwrap();
            (stats, pump.tx_received)
        }
        RegionKind::Datagram => {
            let mut pump = DatagramPump {
                tx_pattern: &tx_pattern,
                rx_pattern: &rx_pattern,
                tx_sizes: ChaCha8Rng::seed_from_u64(setup.seed ^ 4),
                tx_received: 0,
                tx_datagrams: 0,
                rx_sizes: ChaCha8Rng::seed_from_u64(setup.seed ^ 5),
                rx_next: None,
                rx_sent: 0,
                rx_total: RX_TOTAL,
                max_datagram: MAX_DATAGRAM,
                buf: vec![0u8; MAX_DATAGRAM],
            };
            let stats = run_daemon(&mut end, &daemon_sock, &wake, &mut pump).unwrap();
            eprintln!("{} datagrams from the child", pump.tx_datagrams);
            (stats, pump.tx_received)
        }
    };
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "seed {:#x}: child failed: {status}",
        setup.seed
    );
    assert!(
        tx_received >= TX_TOTAL,
        "seed {:#x}: only {tx_received} bytes from the child",
        setup.seed
    );
    eprintln!(
        "seed {:#x}: {:?} rings tx {} B / rx {} B: {tx_received} B child→parent, {RX_TOTAL} B parent→child; daemon {stats:?}",
        setup.seed, setup.kind, setup.tx_cap, setup.rx_cap
    );
}

/// The child: maps the inherited memfd and plays the application.
fn child(setup: Setup) {
    // SAFETY: the parent placed exactly these descriptors at 3, 4 and 5 for us.
    let (memfd, sock, wake) = unsafe {
        (
            OwnedFd::from_raw_fd(3),
            OwnedFd::from_raw_fd(4),
            OwnedFd::from_raw_fd(5),
        )
    };
    let region = SharedRegion::map(memfd.as_fd()).unwrap();
    drop(memfd);
    assert_eq!(
        (region.kind(), region.tx_capacity(), region.rx_capacity()),
        (setup.kind, setup.tx_cap, setup.rx_cap)
    );
    let mut io = AppIo::new(region.into_app_end().unwrap(), sock, wake);
    let tx_pattern = Pattern::new(setup.seed);
    let rx_pattern = Pattern::new(!setup.seed);
    let mut coin = ChaCha8Rng::seed_from_u64(setup.seed ^ 6);
    let mut buf = vec![0u8; MAX_SLICE.max(MAX_DATAGRAM)];
    let (mut sent, mut received, mut rx_done) = (0u64, 0u64, false);
    let mut tx_sizes = ChaCha8Rng::seed_from_u64(setup.seed ^ 4);
    let mut rx_sizes = ChaCha8Rng::seed_from_u64(setup.seed ^ 5);
    while sent < TX_TOTAL || !rx_done {
        // Mostly writes: the child→parent direction carries the bulk.
        if sent < TX_TOTAL && (rx_done || coin.gen_range(0..4) != 0) {
            match setup.kind {
                RegionKind::Stream => {
                    let len = chunk_len(&mut coin, MAX_SLICE).min((TX_TOTAL - sent) as usize);
                    io.write_all(tx_pattern.at(sent, len)).unwrap();
                    sent += len as u64;
                }
                RegionKind::Datagram => {
                    let len = chunk_len(&mut tx_sizes, MAX_DATAGRAM);
                    io.push(tx_pattern.at(sent, len)).unwrap();
                    sent += len as u64;
                }
            }
            if sent >= TX_TOTAL {
                io.close_tx().unwrap();
            }
        } else {
            match setup.kind {
                RegionKind::Stream => {
                    let len = chunk_len(&mut coin, MAX_SLICE);
                    let n = io.read(&mut buf[..len]).unwrap();
                    assert!(
                        &buf[..n] == rx_pattern.at(received, n),
                        "child: RX differs after {received}"
                    );
                    received += n as u64;
                    rx_done = n == 0;
                }
                RegionKind::Datagram => match io.pop(&mut buf).unwrap() {
                    Some(d) => {
                        assert_eq!(
                            d.len,
                            chunk_len(&mut rx_sizes, MAX_DATAGRAM),
                            "child: datagram length"
                        );
                        assert!(
                            &buf[..d.len] == rx_pattern.at(received, d.len),
                            "child: datagram differs"
                        );
                        received += d.len as u64;
                    }
                    None => rx_done = true,
                },
            }
        }
    }
    assert!(
        received >= RX_TOTAL,
        "child: only {received} bytes from the parent"
    );
    eprintln!(
        "child: sleeps {}, doorbells drained {}, filler written {}",
        io.sleeps, io.doorbells, io.filler
    );
}

fn run(test_name: &str, default_seed: u64, kind: RegionKind) {
    if let Ok(role) = std::env::var(ROLE) {
        // We are the child of this very test (other tests in this binary do nothing here).
        if role == test_name {
            let seed = std::env::var(SEED).unwrap().parse().unwrap();
            child(Setup::new(seed, kind));
        }
        return;
    }
    let seed = std::env::var("WEFT_TEST_SEED")
        .ok()
        .and_then(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok())
        .unwrap_or(default_seed);
    parent(test_name, Setup::new(seed, kind));
}

#[test]
fn stream_between_two_processes() {
    run(
        "stream_between_two_processes",
        0x2b0c_0001,
        RegionKind::Stream,
    );
}

#[test]
fn datagrams_between_two_processes() {
    run(
        "datagrams_between_two_processes",
        0x2b0c_0002,
        RegionKind::Datagram,
    );
}
