//! State-machine throughput: two sessions joined back to back in memory (no loss, no I/O),
//! bulk data one way. Reports figures, asserts only correctness. Run with
//! `cargo test --release -p weft-transport --test session -- --ignored --nocapture`.

use std::time::Duration;
use weft_core::{Endpoint, Instant, NodeId};
use weft_transport::session::{RecoveryMode, Session, SessionConfig};

fn run(mss: usize, mode: RecoveryMode, total: u64) -> (f64, u64) {
    let cfg = SessionConfig {
        mss,
        mode,
        ..SessionConfig::default()
    };
    let ea = Endpoint::new(NodeId(0x7f00_0001), 40000);
    let eb = Endpoint::new(NodeId(0x7f00_0002), 5001);
    let mut now = Instant::ZERO;
    let mut a = Session::connect(cfg.clone(), ea, eb, 1, now);
    let syn = a.poll_transmit(now).expect("SYN");
    let mut b = Session::accept(cfg, eb, ea, &syn, now).expect("accept");
    let chunk = vec![0x5au8; 256 * 1024];
    let mut sink = vec![0u8; 256 * 1024];
    let (mut written, mut read, mut segments) = (0u64, 0u64, 0u64);
    let started = std::time::Instant::now();
    while read < total {
        // 20 µs of virtual time per round: a 20 µs "path" that never loses.
        now += Duration::from_micros(20);
        if written < total {
            let n = ((total - written) as usize).min(chunk.len());
            written += a.write(&chunk[..n]) as u64;
            if written == total {
                a.shutdown_write();
            }
        }
        for s in [&mut a, &mut b] {
            if s.poll_timeout().is_some_and(|t| t <= now) {
                s.handle_timeout(now);
            }
        }
        while let Some(seg) = a.poll_transmit(now) {
            segments += 1;
            b.handle_segment(now, &seg, false).expect("valid segment");
        }
        loop {
            let n = b.read(&mut sink);
            if n == 0 {
                break;
            }
            read += n as u64;
        }
        while let Some(seg) = b.poll_transmit(now) {
            a.handle_segment(now, &seg, false).expect("valid segment");
        }
    }
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(a.info().retransmits, 0);
    (read as f64 * 8.0 / secs / 1e9, segments)
}

#[test]
#[ignore = "benchmark: run in release with --ignored --nocapture"]
fn state_machine_throughput() {
    for (mss, mode) in [
        (1280, RecoveryMode::HopByHop),
        (1280, RecoveryMode::EndToEndOnly),
        (8960, RecoveryMode::HopByHop),
        (65_000, RecoveryMode::HopByHop),
    ] {
        let total = 2_000_000_000;
        let (gbps, segments) = run(mss, mode, total);
        println!(
            "mss {mss:>6} {mode:?}: {gbps:.2} Gbit/s of payload through sender+receiver on one core ({segments} segments)"
        );
    }
}
