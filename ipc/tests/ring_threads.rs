//! Two threads hammering one region: the bare SPSC rings (spinning, to stress the memory
//! ordering) and the full wake-up protocol over a real socketpair and eventfd in both
//! directions with small rings, so full and empty transitions happen all the time.

mod support;

use std::thread;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use support::{chunk_len, run_daemon, AppIo, DatagramPump, Pattern, StreamPump, MAX_SLICE};
use weft_ipc::ring::{RegionKind, SharedRegion};

#[test]
fn spinning_threads_move_a_stream_intact() {
    let seed = 0x7123_0001;
    let total: u64 = 64 << 20;
    let pattern = Pattern::new(seed);
    let (mut app, mut daemon) = SharedRegion::anonymous(RegionKind::Stream, 1024, 16)
        .unwrap()
        .split()
        .unwrap();
    thread::scope(|s| {
        s.spawn(|| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut sent = 0u64;
            while sent < total {
                let len = chunk_len(&mut rng, 2048).min((total - sent) as usize);
                let n = app.tx().write(pattern.at(sent, len)).unwrap();
                sent += n as u64;
                if n == 0 {
                    thread::yield_now();
                }
            }
            app.tx().close().unwrap();
        });
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 1);
        let mut buf = vec![0u8; 2048];
        let mut received = 0u64;
        loop {
            let len = chunk_len(&mut rng, buf.len());
            let n = daemon.tx().read(&mut buf[..len]).unwrap();
            if n == 0 {
                if daemon.tx().is_finished().unwrap() {
                    break;
                }
                thread::yield_now();
                continue;
            }
            assert!(
                &buf[..n] == pattern.at(received, n),
                "seed {seed:#x}: stream differs after {received} bytes"
            );
            received += n as u64;
        }
        assert_eq!(received, total, "seed {seed:#x}");
    });
}

#[test]
fn spinning_threads_move_datagrams_intact() {
    let seed = 0x7123_0002;
    let count = 200_000;
    let pattern = Pattern::new(seed);
    let (mut app, mut daemon) = SharedRegion::anonymous(RegionKind::Datagram, 16, 4096)
        .unwrap()
        .split()
        .unwrap();
    let max = 1500;
    thread::scope(|s| {
        s.spawn(|| {
            let mut sizes = ChaCha8Rng::seed_from_u64(seed);
            let mut pos = 0u64;
            for _ in 0..count {
                let len = chunk_len(&mut sizes, max);
                while !daemon.rx().push(pattern.at(pos, len)).unwrap() {
                    thread::yield_now();
                }
                pos += len as u64;
            }
            daemon.rx().close().unwrap();
        });
        let mut sizes = ChaCha8Rng::seed_from_u64(seed);
        let mut buf = vec![0u8; max];
        let (mut pos, mut got) = (0u64, 0);
        loop {
            match app.rx().pop(&mut buf).unwrap() {
                Some(d) => {
                    assert_eq!(
                        d.len,
                        chunk_len(&mut sizes, max),
                        "seed {seed:#x}: datagram {got}"
                    );
                    assert!(
                        &buf[..d.len] == pattern.at(pos, d.len),
                        "seed {seed:#x}: datagram {got} differs"
                    );
                    pos += d.len as u64;
                    got += 1;
                }
                None if app.rx().is_finished().unwrap() => break,
                None => thread::yield_now(),
            }
        }
        assert_eq!(got, count, "seed {seed:#x}");
    });
}

/// The shim's side (one thread, blocking, interleaving writes and reads) against a daemon
/// loop, both sleeping in `poll` whenever the protocol lets them.
#[test]
fn the_protocol_moves_both_directions_between_threads() {
    for seed in [0x7123_0010u64, 0x7123_0011, 0x7123_0012] {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let tx_cap = 1u32 << rng.gen_range(8..14);
        let rx_cap = 1u32 << rng.gen_range(8..14);
        let (tx_total, rx_total): (u64, u64) = (
            rng.gen_range(4 << 20..16 << 20),
            rng.gen_range(4 << 20..16 << 20),
        );
        let tx_pattern = Pattern::new(seed);
        let rx_pattern = Pattern::new(!seed);
        let (app_end, mut daemon_end) = SharedRegion::anonymous(RegionKind::Stream, tx_cap, rx_cap)
            .unwrap()
            .split()
            .unwrap();
        let (app_sock, daemon_sock) = support::socketpair();
        let wake = support::eventfd();
        let app_wake = wake.try_clone().unwrap();
        let (app_stats, daemon_stats) = thread::scope(|s| {
            let app = s.spawn(|| {
                let mut io = AppIo::new(app_end, app_sock, app_wake);
                let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 2);
                let mut buf = vec![0u8; MAX_SLICE];
                let (mut sent, mut received, mut rx_done) = (0u64, 0u64, false);
                while sent < tx_total || !rx_done {
                    if sent < tx_total && (rx_done || rng.gen()) {
                        let len = chunk_len(&mut rng, MAX_SLICE).min((tx_total - sent) as usize);
                        io.write_all(tx_pattern.at(sent, len)).unwrap();
                        sent += len as u64;
                        if sent == tx_total {
                            io.close_tx().unwrap();
                        }
                    } else if !rx_done {
                        let len = chunk_len(&mut rng, MAX_SLICE);
                        let n = io.read(&mut buf[..len]).unwrap();
                        assert!(
                            &buf[..n] == rx_pattern.at(received, n),
                            "seed {seed:#x}: RX differs after {received}"
                        );
                        received += n as u64;
                        rx_done = n == 0;
                    }
                }
                if tx_total == 0 {
                    io.close_tx().unwrap();
                }
                assert_eq!(received, rx_total, "seed {seed:#x}");
                (io.sleeps, io.doorbells, io.filler)
            });
            let mut pump = StreamPump {
                tx_pattern: &tx_pattern,
                rx_pattern: &rx_pattern,
                tx_received: 0,
                rx_sent: 0,
                rx_total,
                rng: ChaCha8Rng::seed_from_u64(seed ^ 3),
            };
            let stats = run_daemon(&mut daemon_end, &daemon_sock, &wake, &mut pump).unwrap();
            assert_eq!(pump.tx_received, tx_total, "seed {seed:#x}");
            (app.join().unwrap(), stats)
        });
        eprintln!(
            "seed {seed:#x}: tx {tx_total} B via {tx_cap} B ring, rx {rx_total} B via {rx_cap} B ring; \
             app sleeps/doorbells/filler {app_stats:?}, daemon {daemon_stats:?}"
        );
    }
}

#[test]
fn the_protocol_moves_datagrams_both_ways_between_threads() {
    let seed = 0x7123_0020u64;
    let total: u64 = 8 << 20;
    let max = 9000;
    let tx_pattern = Pattern::new(seed);
    let rx_pattern = Pattern::new(!seed);
    let (app_end, mut daemon_end) = SharedRegion::anonymous(RegionKind::Datagram, 16384, 32768)
        .unwrap()
        .split()
        .unwrap();
    let (app_sock, daemon_sock) = support::socketpair();
    let wake = support::eventfd();
    let app_wake = wake.try_clone().unwrap();
    thread::scope(|s| {
        let app = s.spawn(|| {
            let mut io = AppIo::new(app_end, app_sock, app_wake);
            let mut tx_sizes = ChaCha8Rng::seed_from_u64(seed);
            let mut rx_sizes = ChaCha8Rng::seed_from_u64(!seed);
            let mut coin = ChaCha8Rng::seed_from_u64(seed ^ 5);
            let mut buf = vec![0u8; max];
            let (mut sent, mut received, mut rx_done) = (0u64, 0u64, false);
            while sent < total || !rx_done {
                if sent < total && (rx_done || coin.gen()) {
                    let len = chunk_len(&mut tx_sizes, max);
                    io.push(tx_pattern.at(sent, len)).unwrap();
                    sent += len as u64;
                    if sent >= total {
                        io.close_tx().unwrap();
                    }
                } else {
                    match io.pop(&mut buf).unwrap() {
                        Some(d) => {
                            assert_eq!(d.len, chunk_len(&mut rx_sizes, max), "seed {seed:#x}");
                            assert!(
                                &buf[..d.len] == rx_pattern.at(received, d.len),
                                "seed {seed:#x}"
                            );
                            received += d.len as u64;
                        }
                        None => rx_done = true,
                    }
                }
            }
            received
        });
        let mut pump = DatagramPump {
            tx_pattern: &tx_pattern,
            rx_pattern: &rx_pattern,
            tx_sizes: ChaCha8Rng::seed_from_u64(seed),
            tx_received: 0,
            tx_datagrams: 0,
            rx_sizes: ChaCha8Rng::seed_from_u64(!seed),
            rx_next: None,
            rx_sent: 0,
            rx_total: total,
            max_datagram: max,
            buf: vec![0u8; max],
        };
        run_daemon(&mut daemon_end, &daemon_sock, &wake, &mut pump).unwrap();
        assert!(pump.tx_received >= total, "seed {seed:#x}");
        assert_eq!(app.join().unwrap(), pump.rx_sent, "seed {seed:#x}");
    });
}
