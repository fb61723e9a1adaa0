//! Socket options set on a running session (`Session::set_options`): `TCP_USER_TIMEOUT` and
//! keepalive bound how long a session to a dead peer stays open; without them it waits for
//! the configured defaults (no keepalive: forever).

use crate::sim::*;
use crate::util::*;
use weft_transport::session::SessionEvent::{Closed, Connected, Failed};
use weft_transport::session::{
    Keepalive, SessionConfig, SessionError, SessionOptions, SessionState,
};

fn established_idle() -> Sim {
    let mut sim = sim(SessionConfig::default(), link(10), link(10));
    sim.b.accept_plan = AppPlan {
        hold_open: true,
        ..AppPlan::default()
    };
    sim.connect(
        CONN_ID,
        AppPlan {
            hold_open: true,
            ..AppPlan::default()
        },
    );
    sim.run_until(at(secs(5)), |s| a_has(s, Connected) && b_has(s, Connected))
        .unwrap();
    sim
}

fn set_a(sim: &mut Sim, o: SessionOptions) {
    let now = sim.now;
    sim.a.conn_mut(CONN_ID).unwrap().session.set_options(now, o);
}

fn dead_peer(sim: &mut Sim) {
    sim.ab.blackhole = true;
    sim.ba.blackhole = true;
}

#[test]
fn keepalive_set_on_a_running_session_fails_it_once_the_peer_is_dead() {
    let mut sim = established_idle();
    let keepalive = Keepalive {
        idle: secs(2),
        interval: secs(1),
        probes: 3,
    };
    set_a(
        &mut sim,
        SessionOptions {
            keepalive: Some(keepalive),
            ..SessionOptions::default()
        },
    );
    // Alive: probes are answered and nothing fails.
    sim.run_to(sim.now + secs(30)).unwrap();
    assert!(a_stats(&sim).keepalive_probes >= 10, "{:?}", a_stats(&sim));
    assert_eq!(a_stats(&sim).state, SessionState::Established);
    let cut = sim.now;
    let probes = a_stats(&sim).keepalive_probes;
    dead_peer(&mut sim);
    sim.run_until(cut + secs(60), |s| a_has(s, Closed)).unwrap();
    let events = sim.a.events(CONN_ID);
    assert_eq!(
        &events[events.len() - 2..],
        &[Failed(SessionError::TimedOut), Closed]
    );
    // Exactly `probes` unanswered probes, then the failure: idle + probes × interval after
    // the peer was last heard (which was at most one idle period before the cut).
    assert_eq!(a_stats(&sim).keepalive_probes - probes, 3);
    assert!(sim.now - cut <= secs(2 + 3), "{:?}", sim.now - cut);
}

#[test]
fn without_keepalive_an_idle_session_to_a_dead_peer_stays_open() {
    let mut sim = established_idle();
    dead_peer(&mut sim);
    sim.run_to(sim.now + secs(3600)).unwrap();
    assert_eq!(a_stats(&sim).state, SessionState::Established);
    assert_eq!(a_stats(&sim).keepalive_probes, 0);
}

#[test]
fn user_timeout_bounds_unacknowledged_data_below_the_default() {
    for (user_timeout, bound) in [(Some(ms(1500)), secs(2)), (None, secs(31))] {
        let mut sim = established_idle();
        set_a(
            &mut sim,
            SessionOptions {
                user_timeout,
                ..SessionOptions::default()
            },
        );
        dead_peer(&mut sim);
        let cut = sim.now;
        sim.a.conn_mut(CONN_ID).unwrap().plan.send_bytes = 10_000;
        sim.run_until(cut + secs(120), |s| a_has(s, Closed))
            .unwrap();
        let waited = sim.now - cut;
        assert!(
            a_has(&sim, Failed(SessionError::TimedOut)),
            "{:?}",
            sim.a.events(CONN_ID)
        );
        // The option decides which bound applies: the 1.5 s one, or the 30 s default.
        assert!(waited <= bound, "{user_timeout:?}: failed after {waited:?}");
        if user_timeout.is_none() {
            assert!(waited >= secs(30), "default user timeout: {waited:?}");
        }
    }
}

#[test]
fn an_explicit_user_timeout_cuts_keepalive_probing_short() {
    let mut sim = established_idle();
    set_a(
        &mut sim,
        SessionOptions {
            user_timeout: Some(secs(3)),
            keepalive: Some(Keepalive {
                idle: secs(1),
                interval: secs(10),
                probes: 9,
            }),
            ..SessionOptions::default()
        },
    );
    dead_peer(&mut sim);
    let cut = sim.now;
    sim.run_until(cut + secs(120), |s| a_has(s, Closed))
        .unwrap();
    assert!(a_has(&sim, Failed(SessionError::TimedOut)));
    // One probe went out (at 1 s), the user timeout ended it at 3 s, not 9 probes × 10 s.
    assert_eq!(a_stats(&sim).keepalive_probes, 1);
    assert!(sim.now - cut <= secs(4), "{:?}", sim.now - cut);
}

fn write_a(sim: &mut Sim, n: usize) {
    let wrote = sim
        .a
        .conn_mut(CONN_ID)
        .unwrap()
        .session
        .write(&vec![7u8; n]);
    assert_eq!(wrote, n);
    // Let the session act on it at this same instant.
    let now = sim.now;
    sim.run_to(now).unwrap();
}

fn corked(cork: bool, nodelay: bool) -> SessionOptions {
    SessionOptions {
        cork,
        nodelay,
        ..SessionOptions::default()
    }
}

fn b_read(sim: &Sim) -> u64 {
    sim.b.conn(CONN_ID).map_or(0, |c| c.read)
}

#[test]
fn cork_holds_partial_segments_until_uncorked() {
    let mut sim = established_idle();
    let sent = a_stats(&sim).segments_sent;
    set_a(&mut sim, corked(true, true));
    for _ in 0..10 {
        write_a(&mut sim, 50);
    }
    sim.run_to(sim.now + ms(150)).unwrap();
    assert_eq!(
        a_stats(&sim).segments_sent,
        sent,
        "nothing leaves while corked"
    );
    assert_eq!(b_read(&sim), 0);
    set_a(&mut sim, corked(false, true));
    sim.run_to(sim.now + ms(100)).unwrap();
    // Uncorking pushes the ten writes as one segment.
    assert_eq!(a_stats(&sim).segments_sent - sent, 1);
    assert_eq!(b_read(&sim), 500);
}

#[test]
fn cork_sends_full_segments_and_releases_a_partial_after_its_ceiling() {
    let mut sim = established_idle();
    set_a(&mut sim, corked(true, true));
    let mss = a_stats(&sim).mss;
    let payload = mss - weft_transport::session::FIXED_HEADER_LEN;
    let sent = a_stats(&sim).segments_sent;
    write_a(&mut sim, 3 * payload + payload / 2);
    sim.run_to(sim.now + ms(100)).unwrap();
    // Full segments are never held; the half one waits.
    assert_eq!(a_stats(&sim).segments_sent - sent, 3);
    assert_eq!(b_read(&sim), 3 * payload as u64);
    // Still corked: the 200 ms ceiling lets the partial one go.
    sim.run_to(sim.now + ms(150)).unwrap();
    assert_eq!(a_stats(&sim).segments_sent - sent, 4);
    assert_eq!(b_read(&sim), (3 * payload + payload / 2) as u64);
}

#[test]
fn nagle_holds_small_writes_while_data_is_unacknowledged() {
    // Three small writes, each given a chance to go before the next (no acknowledgement can
    // arrive in between: the link takes 10 ms each way).
    let mut counts = Vec::new();
    for options in [None, Some(corked(false, true)), Some(corked(false, false))] {
        let mut sim = established_idle();
        if let Some(o) = options {
            set_a(&mut sim, o);
        }
        let sent = a_stats(&sim).segments_sent;
        for _ in 0..3 {
            write_a(&mut sim, 10);
        }
        sim.run_to(sim.now + ms(200)).unwrap();
        assert_eq!(b_read(&sim), 30, "{options:?}");
        counts.push(a_stats(&sim).segments_sent - sent);
    }
    // Without options and with TCP_NODELAY each write leaves at once; with Nagle the first
    // goes and the other two wait for its acknowledgement and leave together.
    assert_eq!(counts, vec![3, 3, 2]);
}
