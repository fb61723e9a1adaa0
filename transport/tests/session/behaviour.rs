//! Behaviour of established sessions: half-close, flow control, congestion marks, how each
//! recovery mode repairs loss and tolerates reordering, route recovery, idling and keepalive.

use crate::sim::*;
use crate::util::*;
use weft_transport::session::SessionEvent::{Closed, Connected, Failed, PeerFinished};
use weft_transport::session::{RecoveryMode, SessionConfig, SessionError, SessionEvent};

#[test]
fn half_close_both_ways() {
    let mut sim = sim(SessionConfig::default(), link(10), link(10));
    // A sends a request and shuts down; B answers only after reading A's EOF.
    sim.b.accept_plan = AppPlan {
        hold_open: true,
        ..AppPlan::default()
    };
    sim.connect(
        CONN_ID,
        AppPlan {
            send_bytes: 10_000,
            ..AppPlan::default()
        },
    );
    sim.run_until(at(secs(10)), |s| b_has(s, PeerFinished))
        .unwrap();
    assert_eq!(sim.b.conn(CONN_ID).unwrap().read, 10_000);
    assert!(!a_has(&sim, PeerFinished));
    let conn = sim.b.conn_mut(CONN_ID).unwrap();
    conn.plan.send_bytes = 300_000;
    conn.plan.hold_open = false;
    sim.run_until(at(secs(60)), |s| s.both_closed(CONN_ID))
        .unwrap();
    assert_eq!(sim.a.conn(CONN_ID).unwrap().read, 300_000);
    assert_eq!(sim.a.conn(CONN_ID).unwrap().corrupt, None);
    for events in [sim.a.events(CONN_ID), sim.b.events(CONN_ID)] {
        assert_eq!(events.first(), Some(&Connected));
        assert_eq!(events.iter().filter(|&&e| e == PeerFinished).count(), 1);
        assert_eq!(events.last(), Some(&Closed));
        assert!(!events.iter().any(|e| matches!(e, Failed(_))));
    }
}

#[test]
fn stalled_reader_stalls_the_writer_then_resumes() {
    let cfg = SessionConfig {
        recv_buffer_bytes: 64 * 1024,
        send_buffer_bytes: 128 * 1024,
        ..SessionConfig::default()
    };
    let mut sim = sim(cfg, link(10), link(10));
    let total = 2_000_000;
    sim.b.accept_plan = AppPlan {
        read_pause: Some((at(ms(100)), at(secs(20)))),
        ..AppPlan::default()
    };
    sim.connect(
        CONN_ID,
        AppPlan {
            send_bytes: total,
            wait_for_writable: true,
            ..AppPlan::default()
        },
    );
    sim.run_to(at(secs(19))).unwrap();
    let a = a_stats(&sim);
    let writer = sim.a.conn(CONN_ID).unwrap();
    assert!(
        writer.write_blocked && writer.session.send_capacity() < 32 * 1024,
        "writer blocked"
    );
    assert_eq!(a.peer_window, 0, "receiver window closed");
    assert!(a.window_probes >= 3, "zero window probed: {a:?}");
    assert!(a.window_probes < 20, "probes back off: {a:?}");
    assert_eq!(sim.b.conn(CONN_ID).unwrap().session.readable(), 64 * 1024);
    assert!(
        !a_has(&sim, Failed(SessionError::TimedOut)),
        "an answered probe keeps the session alive"
    );
    sim.run_until(at(secs(120)), |s| {
        s.b.conn(CONN_ID).is_some_and(|c| c.read == total)
    })
    .unwrap();
    assert!(
        sim.now < at(secs(25)),
        "resumed promptly after the reader came back: done at {:?}",
        sim.now
    );
    sim.run_until(at(secs(120)), |s| s.both_closed(CONN_ID))
        .unwrap();
    let b = sim.b.conn(CONN_ID).unwrap();
    assert_eq!((b.read, b.corrupt.clone()), (total, None));
    assert_eq!(a_stats(&sim).retransmits, 0, "nothing was lost");
    assert!(
        sim.a.events(CONN_ID).contains(&SessionEvent::Writable),
        "{:?}",
        sim.a.events(CONN_ID)
    );
}

/// A bottleneck whose queue marks CE past 20 kB: the sender keeps the queue short.
fn bottleneck(ce: bool) -> LinkParams {
    LinkParams {
        delay: ms(10),
        rate: Some((10_000_000, 1_000_000)),
        ce_threshold: ce.then_some(20_000),
        ..LinkParams::default()
    }
}

#[test]
fn congestion_marks_shrink_the_window() {
    let run = |ce: bool| {
        let mut sim = sim(SessionConfig::default(), bottleneck(ce), link(10));
        sim.connect(
            CONN_ID,
            AppPlan {
                send_bytes: 3_000_000,
                ..AppPlan::default()
            },
        );
        let mut max_cwnd = 0;
        sim.run_until(at(secs(60)), |s| {
            if let Some(c) = s.a.conn(CONN_ID) {
                max_cwnd = max_cwnd.max(c.session.info().cwnd);
            }
            s.both_closed(CONN_ID)
        })
        .unwrap();
        (
            a_stats(&sim),
            b_stats(&sim),
            max_cwnd,
            sim.ab.counters.clone(),
        )
    };
    let (marked_a, marked_b, marked_max, marked_link) = run(true);
    let (plain_a, _, plain_max, _) = run(false);
    assert!(marked_link.marked > 0 && marked_b.ce_marks_received == marked_link.marked);
    assert!(marked_a.ce_reductions > 0, "{marked_a:?}");
    assert_eq!(marked_link.dropped, 0);
    assert_eq!(plain_a.ce_reductions, 0);
    assert!(
        marked_max * 2 < plain_max,
        "marks bound the window: {marked_max} with marks vs {plain_max} without"
    );
}

#[test]
fn hop_by_hop_does_not_retransmit_on_reordering() {
    let reorder = LinkParams {
        delay: ms(10),
        jitter: ms(40),
        ..LinkParams::default()
    };
    let run = |mode| {
        let cfg = SessionConfig {
            mode,
            ..SessionConfig::default()
        };
        let mut sim = sim(cfg, reorder.clone(), reorder.clone());
        sim.connect(
            CONN_ID,
            AppPlan {
                send_bytes: 2_000_000,
                ..AppPlan::default()
            },
        );
        sim.b.accept_plan = AppPlan {
            send_bytes: 500_000,
            ..AppPlan::default()
        };
        sim.run_until(at(secs(120)), |s| s.both_closed(CONN_ID))
            .unwrap();
        assert_eq!(sim.b.conn(CONN_ID).unwrap().read, 2_000_000);
        (a_stats(&sim), b_stats(&sim))
    };
    let (a, b) = run(RecoveryMode::HopByHop);
    assert_eq!(
        (a.retransmits, b.retransmits),
        (0, 0),
        "no spurious retransmission:\n{a:?}\n{b:?}"
    );
    let (e2e, _) = run(RecoveryMode::EndToEndOnly);
    println!(
        "end-to-end mode on the same path: {} retransmits, {} spurious",
        e2e.retransmits, e2e.spurious_retransmits
    );
}

#[test]
fn end_to_end_repairs_a_single_loss_by_fast_retransmit() {
    for (nth, what) in [(20, "a mid-stream segment"), (3, "an early segment")] {
        let cfg = SessionConfig {
            mode: RecoveryMode::EndToEndOnly,
            ..SessionConfig::default()
        };
        let ab = LinkParams {
            delay: ms(10),
            drop_nth: vec![nth],
            ..LinkParams::default()
        };
        let mut sim = sim(cfg, ab, link(10));
        sim.connect(
            CONN_ID,
            AppPlan {
                send_bytes: 200_000,
                ..AppPlan::default()
            },
        );
        sim.run_until(at(secs(60)), |s| s.both_closed(CONN_ID))
            .unwrap();
        let a = a_stats(&sim);
        assert_eq!(sim.ab.counters.dropped, 1);
        assert_eq!(
            (a.retransmits, a.fast_retransmits, a.timeouts),
            (1, 1, 0),
            "{what}: {a:?}"
        );
        assert_eq!(sim.b.conn(CONN_ID).unwrap().read, 200_000);
    }
}

#[test]
fn hop_by_hop_repairs_a_loss_by_timeout_only() {
    let ab = LinkParams {
        delay: ms(10),
        drop_nth: vec![20],
        ..LinkParams::default()
    };
    let mut sim = sim(SessionConfig::default(), ab, link(10));
    sim.connect(
        CONN_ID,
        AppPlan {
            send_bytes: 200_000,
            ..AppPlan::default()
        },
    );
    sim.run_until(at(secs(60)), |s| s.both_closed(CONN_ID))
        .unwrap();
    let a = a_stats(&sim);
    assert_eq!((a.fast_retransmits, a.timeouts), (0, 1), "{a:?}");
    assert_eq!(sim.b.conn(CONN_ID).unwrap().read, 200_000);
}

#[test]
fn route_return_probes_at_once() {
    let mut sim = sim(SessionConfig::default(), slow(10), slow(10));
    sim.connect(
        CONN_ID,
        AppPlan {
            send_bytes: 50_000_000,
            ..AppPlan::default()
        },
    );
    let (cut, back) = (at(secs(1)), at(secs(16)));
    sim.ab.params.outages.push((cut, back));
    sim.ba.params.outages.push((cut, back));
    sim.at(cut, |s| set_route(s, false));
    sim.at(back, |s| set_route(s, true));
    sim.run_to(back).unwrap();
    let acked = a_stats(&sim).bytes_acked;
    sim.run_until(at(secs(60)), |s| a_stats(s).bytes_acked > acked)
        .unwrap();
    assert!(
        sim.now - back <= ms(25),
        "progress {:?} after the route returned",
        sim.now - back
    );
    assert!(!a_has(&sim, Failed(SessionError::TimedOut)));
}

#[test]
fn idle_sessions_stay_up_without_keepalive() {
    let mut sim = sim(SessionConfig::default(), link(10), link(10));
    sim.connect(
        CONN_ID,
        AppPlan {
            send_bytes: 1000,
            hold_open: true,
            ..AppPlan::default()
        },
    );
    sim.b.accept_plan = AppPlan {
        hold_open: true,
        ..AppPlan::default()
    };
    sim.run_until(at(secs(10)), |s| {
        s.b.conn(CONN_ID).is_some_and(|c| c.read == 1000)
    })
    .unwrap();
    sim.run_to(at(secs(10))).unwrap();
    let sent = sim.ab.counters.sent + sim.ba.counters.sent;
    let err = sim.run_until(at(secs(3 * 3600)), |_| false).unwrap_err();
    assert!(err.contains("stalled"), "nothing left to do: {err}");
    assert_eq!(
        sim.ab.counters.sent + sim.ba.counters.sent,
        sent,
        "an idle session sends nothing"
    );
    assert_eq!(
        a_stats(&sim).state,
        weft_transport::session::SessionState::Established
    );
}

#[test]
fn keepalive_detects_a_dead_peer_and_spares_a_live_one() {
    let cfg = SessionConfig {
        keepalive: Some(secs(60)),
        keepalive_interval: secs(10),
        keepalive_probes: 3,
        ..SessionConfig::default()
    };
    let mut sim = sim(cfg, link(10), link(10));
    sim.connect(
        CONN_ID,
        AppPlan {
            hold_open: true,
            ..AppPlan::default()
        },
    );
    sim.b.accept_plan = AppPlan {
        hold_open: true,
        ..AppPlan::default()
    };
    // Alive: probes are answered for an hour.
    sim.run_to(at(secs(3600))).unwrap();
    let a = a_stats(&sim);
    let probes = a.keepalive_probes + b_stats(&sim).keepalive_probes;
    assert!(
        (55..=60).contains(&probes),
        "one probe per idle minute from either side: {probes}"
    );
    assert!(!a_has(&sim, Failed(SessionError::TimedOut)));
    // Dead: 60 s after last hearing from the peer, 3 probes 10 s apart, then failure.
    let cut = sim.now;
    let probes_before = a_stats(&sim).keepalive_probes;
    sim.ab.blackhole = true;
    sim.ba.blackhole = true;
    sim.run_until(at(secs(7200)), |s| a_has(s, Closed)).unwrap();
    let events = sim.a.events(CONN_ID);
    assert_eq!(
        &events[events.len() - 2..],
        &[Failed(SessionError::TimedOut), Closed]
    );
    assert_eq!(a_stats(&sim).keepalive_probes - probes_before, 3);
    let waited = sim.now - cut;
    assert!(
        waited > secs(30) && waited <= secs(90),
        "failed after {waited:?}"
    );
}

#[test]
fn timestamps_wrap_without_harm() {
    // The 32-bit microsecond timestamps wrap every 71.6 minutes: start just before a wrap.
    let wrap = weft_core::Instant::from_micros(1 << 32);
    let cfg = SessionConfig {
        mode: RecoveryMode::EndToEndOnly,
        ..SessionConfig::default()
    };
    let lossy = LinkParams {
        delay: ms(20),
        loss: 0.02,
        ..LinkParams::default()
    };
    let mut sim = sim(cfg, lossy.clone(), lossy);
    sim.now = wrap - ms(50);
    sim.connect(
        CONN_ID,
        AppPlan {
            send_bytes: 3_000_000,
            ..AppPlan::default()
        },
    );
    sim.run_until(wrap + secs(600), |s| s.both_closed(CONN_ID))
        .unwrap();
    let a = a_stats(&sim);
    assert!(sim.now > wrap + ms(200), "the transfer ran across the wrap");
    assert!(
        a.rtt > ms(39) && a.rtt < ms(60),
        "RTT estimate stayed sane: {a:?}"
    );
    assert!(
        a.fast_retransmits > 0 && a.fast_retransmits >= a.timeouts,
        "{a:?}"
    );
    assert_eq!(sim.b.conn(CONN_ID).unwrap().read, 3_000_000);
}

#[test]
fn route_return_after_a_long_outage_resends_at_once() {
    // A long outage: timeouts have declared the whole window lost and backed off far.
    let mut sim = sim(SessionConfig::default(), slow(10), slow(10));
    sim.connect(
        CONN_ID,
        AppPlan {
            send_bytes: 50_000_000,
            ..AppPlan::default()
        },
    );
    let (cut, back) = (at(secs(1)), at(secs(25)));
    sim.ab.params.outages.push((cut, back));
    sim.ba.params.outages.push((cut, back));
    sim.at(cut, |s| set_route(s, false));
    sim.at(back, |s| set_route(s, true));
    sim.run_to(back).unwrap();
    let before = a_stats(&sim);
    assert!(
        before.timeouts >= 5,
        "timeouts backed off during the outage: {before:?}"
    );
    sim.run_until(at(secs(60)), |s| {
        a_stats(s).bytes_acked > before.bytes_acked
    })
    .unwrap();
    assert!(
        sim.now - back <= ms(25),
        "progress {:?} after the route returned",
        sim.now - back
    );
}

/// Flags byte of a segment (see the segment format).
fn carries_fin(segment: &[u8]) -> bool {
    segment.get(1).is_some_and(|f| f & 0x04 != 0)
}

#[test]
fn end_to_end_repairs_a_lost_tail_with_a_probe() {
    let cfg = SessionConfig {
        mode: RecoveryMode::EndToEndOnly,
        ..SessionConfig::default()
    };
    let ab = LinkParams {
        delay: ms(10),
        drop_first_matching: Some(carries_fin),
        ..LinkParams::default()
    };
    let mut sim = sim(cfg, ab, link(10));
    sim.connect(
        CONN_ID,
        AppPlan {
            send_bytes: 20_000,
            ..AppPlan::default()
        },
    );
    sim.b.accept_plan = AppPlan {
        hold_open: true,
        ..AppPlan::default()
    };
    sim.run_until(at(secs(60)), |s| b_has(s, PeerFinished))
        .unwrap();
    let a = a_stats(&sim);
    assert_eq!(sim.ab.counters.dropped, 1);
    assert_eq!(
        (a.tail_loss_probes, a.timeouts, a.retransmits),
        (1, 0, 1),
        "{a:?}"
    );
    assert!(
        sim.now < at(ms(200)),
        "repaired within a few RTTs, not a timeout: {:?}",
        sim.now
    );
}

#[test]
fn hop_by_hop_sends_no_tail_probes() {
    let ab = LinkParams {
        delay: ms(10),
        drop_first_matching: Some(carries_fin),
        ..LinkParams::default()
    };
    let mut sim = sim(SessionConfig::default(), ab, link(10));
    sim.connect(
        CONN_ID,
        AppPlan {
            send_bytes: 20_000,
            ..AppPlan::default()
        },
    );
    sim.run_until(at(secs(60)), |s| s.both_closed(CONN_ID))
        .unwrap();
    let a = a_stats(&sim);
    assert_eq!((a.tail_loss_probes, a.timeouts), (0, 1), "{a:?}");
}
