//! Connection outcomes: refusal, connect/user/idle timeouts, unreachable routes, resets,
//! vanished and restarted peers, lost handshake segments and stale duplicate SYNs.

use crate::sim::*;
use crate::util::*;
use std::time::Duration;
use weft_core::Instant;
use weft_transport::session::SessionEvent::{Closed, Connected, Failed};
use weft_transport::session::{Session, SessionConfig, SessionError};

#[test]
fn refused_when_nobody_listens() {
    let mut sim = sim(SessionConfig::default(), link(10), link(10));
    sim.b.listening = false;
    sim.connect(CONN_ID, AppPlan::default());
    sim.run_until(at(secs(60)), |s| a_has(s, Closed)).unwrap();
    assert_eq!(
        sim.a.events(CONN_ID),
        vec![Failed(SessionError::Refused), Closed]
    );
    assert_eq!(sim.now, at(ms(20)), "one round trip");
    assert_eq!(sim.b.resets_sent, 1);
}

#[test]
fn connect_times_out_with_syn_backoff() {
    let mut sim = sim(SessionConfig::default(), link(10), link(10));
    sim.ab.blackhole = true;
    sim.connect(CONN_ID, AppPlan::default());
    sim.run_until(at(secs(60)), |s| a_has(s, Closed)).unwrap();
    assert_eq!(
        sim.a.events(CONN_ID),
        vec![Failed(SessionError::TimedOut), Closed]
    );
    assert_eq!(sim.now, at(secs(20)), "default connect timeout");
    let syns = &sim.ab.send_times;
    assert!(syns.len() >= 5, "SYN retransmitted: {syns:?}");
    let gaps: Vec<Duration> = syns.windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(
        gaps[0],
        ms(300),
        "first retransmission after 3 × initial RTT"
    );
    for w in gaps.windows(2) {
        assert_eq!(w[1], w[0] * 2, "exponential backoff: {gaps:?}");
    }
}

#[test]
fn connect_without_route_fails_unreachable() {
    let cfg = SessionConfig {
        connect_timeout: secs(5),
        ..SessionConfig::default()
    };
    let mut sim = sim(cfg, link(10), link(10));
    sim.ab.blackhole = true;
    sim.connect(CONN_ID, AppPlan::default());
    sim.at(at(ms(1)), |s| set_route(s, false));
    sim.run_until(at(secs(60)), |s| a_has(s, Closed)).unwrap();
    assert_eq!(
        sim.a.events(CONN_ID),
        vec![Failed(SessionError::Unreachable), Closed]
    );
    assert_eq!(sim.now, at(secs(5)));
}

#[test]
fn route_lost_mid_transfer_fails_unreachable_within_user_timeout() {
    let cfg = SessionConfig {
        user_timeout: secs(10),
        ..SessionConfig::default()
    };
    let mut sim = sim(cfg, slow(10), slow(10));
    sim.connect(
        CONN_ID,
        AppPlan {
            send_bytes: 50_000_000,
            ..AppPlan::default()
        },
    );
    sim.at(at(secs(1)), |s| {
        s.ab.blackhole = true;
        s.ba.blackhole = true;
        set_route(s, false);
    });
    sim.run_until(at(secs(120)), |s| a_has(s, Closed)).unwrap();
    let events = sim.a.events(CONN_ID);
    assert_eq!(
        &events[events.len() - 2..],
        &[Failed(SessionError::Unreachable), Closed]
    );
    // Measured from the last acknowledgement, which packets queued at the bottleneck when
    // the path broke may still bring.
    assert!(
        sim.now > at(secs(11)) - ms(50) && sim.now <= at(secs(11) + ms(500)),
        "failed at {:?}",
        sim.now
    );
}

#[test]
fn vanished_peer_fails_within_user_timeout() {
    let mut sim = sim(SessionConfig::default(), slow(10), slow(10));
    sim.connect(
        CONN_ID,
        AppPlan {
            send_bytes: 50_000_000,
            ..AppPlan::default()
        },
    );
    sim.run_to(at(secs(2))).unwrap();
    let cut = sim.now;
    sim.ab.blackhole = true;
    sim.ba.blackhole = true;
    sim.b.conns.clear();
    sim.run_until(at(secs(120)), |s| a_has(s, Closed)).unwrap();
    let events = sim.a.events(CONN_ID);
    assert_eq!(
        &events[events.len() - 2..],
        &[Failed(SessionError::TimedOut), Closed]
    );
    let waited = sim.now - cut;
    assert!(
        waited > secs(30) - ms(50) && waited <= secs(30) + ms(500),
        "default user timeout is 30 s, failed after {waited:?}"
    );
    assert!(
        a_stats(&sim).timeouts >= 5,
        "retransmission timer backed off and kept trying"
    );
}

#[test]
fn restarted_peer_resets_the_session() {
    let mut sim = sim(SessionConfig::default(), slow(10), slow(10));
    sim.connect(
        CONN_ID,
        AppPlan {
            send_bytes: 50_000_000,
            ..AppPlan::default()
        },
    );
    sim.run_to(at(secs(1))).unwrap();
    sim.b.conns.clear(); // B's daemon restarted: the session is gone, the port still listens
    let cut = sim.now;
    sim.run_until(at(secs(60)), |s| a_has(s, Closed)).unwrap();
    let events = sim.a.events(CONN_ID);
    assert_eq!(
        &events[events.len() - 2..],
        &[Failed(SessionError::Reset), Closed]
    );
    assert!(sim.now - cut < ms(100), "the next segment draws a RST");
}

#[test]
fn reset_mid_stream() {
    let mut sim = sim(SessionConfig::default(), slow(5), slow(5));
    sim.b.accept_plan = AppPlan {
        send_bytes: 50_000_000,
        ..AppPlan::default()
    };
    sim.connect(
        CONN_ID,
        AppPlan {
            hold_open: true,
            ..AppPlan::default()
        },
    );
    sim.at(at(ms(500)), |s| {
        let conn = s.b.conn_mut(CONN_ID).expect("B's session");
        conn.session.abort();
        assert_eq!(conn.session.write(b"more"), 0, "no writes after abort");
    });
    sim.run_until(at(secs(60)), |s| a_has(s, Closed) && b_has(s, Closed))
        .unwrap();
    let a_events = sim.a.events(CONN_ID);
    assert_eq!(
        &a_events[a_events.len() - 2..],
        &[Failed(SessionError::Reset), Closed]
    );
    assert!(
        !sim.b.events(CONN_ID).iter().any(|e| matches!(e, Failed(_))),
        "the aborting side does not fail"
    );
    assert!(sim.a.conn(CONN_ID).unwrap().read > 0);
}

#[test]
fn idle_timeout_closes_a_silent_session() {
    let cfg = SessionConfig {
        idle_timeout: Some(secs(30)),
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
    sim.run_until(at(secs(100)), |s| a_has(s, Closed) && b_has(s, Closed))
        .unwrap();
    assert_eq!(
        sim.a.events(CONN_ID),
        vec![Connected, Failed(SessionError::TimedOut), Closed]
    );
    assert!(sim.now <= at(secs(31)));
}

#[test]
fn lost_handshake_ack_is_repaired() {
    // Drop A's handshake ACK (its second packet) and B's first SYN|ACK.
    let ab = LinkParams {
        delay: ms(10),
        drop_nth: vec![2],
        ..LinkParams::default()
    };
    let ba = LinkParams {
        delay: ms(10),
        drop_nth: vec![1],
        ..LinkParams::default()
    };
    let mut sim = sim(SessionConfig::default(), ab, ba);
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
    sim.run_until(at(secs(10)), |s| a_has(s, Connected) && b_has(s, Connected))
        .unwrap();
    assert_eq!(
        sim.b.conns.len(),
        1,
        "retransmitted SYNs reach the same session"
    );
}

#[test]
fn stale_duplicate_syn_never_becomes_a_connection() {
    let mut sim = sim(SessionConfig::default(), link(10), link(10));
    sim.connect(
        CONN_ID,
        AppPlan {
            send_bytes: 5_000,
            ..AppPlan::default()
        },
    );
    sim.b.accept_plan = AppPlan {
        send_bytes: 5_000,
        ..AppPlan::default()
    };
    // B closes first (it acknowledges A's FIN last... either way one side lingers).
    sim.run_until(at(secs(30)), |s| s.b.finished.len() == 1)
        .unwrap();
    // A copy of A's original SYN, delayed in the network, reaches B after B freed the session.
    let mut twin = Session::connect(
        SessionConfig::default(),
        sim.a.endpoint,
        sim.b.endpoint,
        CONN_ID,
        Instant::ZERO,
    );
    let syn = twin.poll_transmit(Instant::ZERO).expect("SYN");
    let (now, a_ep) = (sim.now, sim.a.endpoint);
    sim.b.receive(now, a_ep, &syn, false);
    assert_eq!(sim.b.conns.len(), 1, "B's listener accepted the stale SYN");
    sim.run_until(at(secs(120)), |s| {
        s.b.conns.is_empty() && s.a.conns.is_empty()
    })
    .unwrap();
    let ghost = &sim.b.finished[1].1;
    assert!(!ghost.events.contains(&Connected), "{:?}", ghost.events);
    assert!(matches!(ghost.events[0], Failed(_)), "{:?}", ghost.events);
    assert_eq!(
        sim.a
            .events(CONN_ID)
            .iter()
            .filter(|&&e| e == Closed)
            .count(),
        1
    );
}
