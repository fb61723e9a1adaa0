//! Hostile input: random bytes, mutated real segments and well-formed segments with random
//! fields never panic `peek`, `accept` or `handle_segment`, and leave a session that still
//! polls sanely (bounded output, segments within the MSS).

use proptest::prelude::*;
use std::time::Duration;
use weft_core::{Endpoint, Instant, NodeId};
use weft_transport::session::{Session, SessionConfig, SessionState};

const CONN: u32 = 0xfeed_f00d;

fn endpoints() -> (Endpoint, Endpoint) {
    (
        Endpoint::new(NodeId(0x7f00_0001), 40000),
        Endpoint::new(NodeId(0x7f00_0002), 5001),
    )
}

fn cfg() -> SessionConfig {
    SessionConfig {
        recv_buffer_bytes: 20_000,
        send_buffer_bytes: 20_000,
        ..SessionConfig::default()
    }
}

/// Moves segments between `a` and `b` (1 ms apart) until both are quiet; returns what
/// each sent.
fn exchange(
    a: &mut Session,
    b: &mut Session,
    now: &mut Instant,
    rounds: usize,
) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let (mut from_a, mut from_b) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        *now += Duration::from_millis(1);
        for s in [&mut *a, &mut *b] {
            if s.poll_timeout().is_some_and(|d| d <= *now) {
                s.handle_timeout(*now);
            }
        }
        let sa: Vec<_> = std::iter::from_fn(|| a.poll_transmit(*now))
            .take(1000)
            .collect();
        let sb: Vec<_> = std::iter::from_fn(|| b.poll_transmit(*now))
            .take(1000)
            .collect();
        for seg in &sa {
            let _ = b.handle_segment(*now, seg, false);
        }
        for seg in &sb {
            let _ = a.handle_segment(*now, seg, false);
        }
        from_a.extend(sa);
        from_b.extend(sb);
        let mut buf = [0u8; 4096];
        while a.read(&mut buf) > 0 {}
        while b.read(&mut buf) > 0 {}
    }
    (from_a, from_b)
}

/// Sessions in every state, and the segments a real exchange produced.
struct Zoo {
    sessions: Vec<Session>,
    corpus: Vec<Vec<u8>>,
    now: Instant,
}

fn zoo() -> Zoo {
    let (ea, eb) = endpoints();
    let mut now = Instant::ZERO;
    let mut syn_sent = Session::connect(cfg(), ea, eb, CONN, now);
    let syn = syn_sent.poll_transmit(now).expect("SYN");
    let syn_received = Session::accept(cfg(), eb, ea, &syn, now).expect("accept");
    let mut a = Session::connect(cfg(), ea, eb, CONN, now);
    let syn = a.poll_transmit(now).expect("SYN");
    let mut b = Session::accept(cfg(), eb, ea, &syn, now).expect("accept");
    a.write(&[7u8; 15_000]);
    b.write(&[9u8; 6_000]);
    let (mut corpus, from_b) = exchange(&mut a, &mut b, &mut now, 40);
    corpus.insert(0, syn);
    corpus.extend(from_b);
    // A second pair that closes and leaves one side in TIME-WAIT.
    let mut c = Session::connect(cfg(), ea, eb, CONN, now);
    let syn = c.poll_transmit(now).expect("SYN");
    let mut d = Session::accept(cfg(), eb, ea, &syn, now).expect("accept");
    c.write(b"bye");
    c.shutdown_write();
    d.shutdown_write();
    let (x, y) = exchange(&mut c, &mut d, &mut now, 20);
    corpus.extend(x);
    corpus.extend(y);
    assert!([c.state(), d.state()].contains(&SessionState::TimeWait));
    assert_eq!(a.state(), SessionState::Established);
    Zoo {
        sessions: vec![syn_sent, syn_received, a, b, c, d],
        corpus,
        now,
    }
}

/// Feeds `input` to every session (as its peer would send it) and checks they stay sane.
fn feed(input: &[Vec<u8>], ce: bool) {
    let mut z = zoo();
    let _ = Session::peek(&input[0]);
    let _ = Session::reset_reply(&input[0]);
    let (ea, eb) = endpoints();
    let _ = Session::accept(cfg(), eb, ea, &input[0], z.now);
    for s in &mut z.sessions {
        let mut now = z.now;
        for seg in input {
            now += Duration::from_micros(300);
            let _ = s.handle_segment(now, seg, ce);
            let mut sent = 0;
            while let Some(out) = s.poll_transmit(now) {
                assert!(out.len() <= s.info().mss, "segment of {} bytes", out.len());
                sent += 1;
                assert!(sent < 10_000, "poll_transmit never ends");
            }
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            assert!(s.readable() <= cfg().recv_buffer_bytes);
            while s.poll_event().is_some() {}
        }
        for _ in 0..20 {
            match s.poll_timeout() {
                Some(d) => {
                    now = now.max(d);
                    s.handle_timeout(now);
                    while s.poll_transmit(now).is_some() {}
                }
                None => break,
            }
        }
        let _ = s.info();
    }
}

/// A segment in the documented layout with the right conn_id and ports, other fields free.
#[allow(clippy::too_many_arguments)]
fn forge(
    flags: u8,
    seq: u64,
    ack: u64,
    window: u32,
    tsecr: u32,
    ce_count: u32,
    mss: Option<u16>,
    sacks: &[(u64, u64)],
    payload: &[u8],
    towards_b: bool,
) -> Vec<u8> {
    let (sp, dp) = if towards_b {
        (40000u16, 5001u16)
    } else {
        (5001, 40000)
    };
    let mut opts = Vec::new();
    if let Some(m) = mss {
        opts.extend([1, 2]);
        opts.extend(m.to_be_bytes());
    }
    if !sacks.is_empty() {
        opts.extend([2, (sacks.len() * 16) as u8]);
        for (s, e) in sacks {
            opts.extend(s.to_be_bytes());
            opts.extend(e.to_be_bytes());
        }
    }
    let mut v = vec![1, flags];
    v.extend(((48 + opts.len()) as u16).to_be_bytes());
    v.extend(CONN.to_be_bytes());
    v.extend(sp.to_be_bytes());
    v.extend(dp.to_be_bytes());
    v.extend(seq.to_be_bytes());
    v.extend(ack.to_be_bytes());
    v.extend(window.to_be_bytes());
    v.extend(0u32.to_be_bytes());
    v.extend(tsecr.to_be_bytes());
    v.extend(100u32.to_be_bytes());
    v.extend(ce_count.to_be_bytes());
    v.extend(opts);
    v.extend(payload);
    v
}

fn small_offset() -> impl Strategy<Value = u64> {
    prop_oneof![
        0u64..30_000,
        any::<u64>(),
        Just(u64::MAX),
        Just(u64::MAX - 1)
    ]
}

fn forged_segment() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<u8>(),
        small_offset(),
        small_offset(),
        any::<u32>(),
        any::<u32>(),
        0u32..4,
        proptest::option::of(any::<u16>()),
        proptest::collection::vec((small_offset(), small_offset()), 0..4),
        proptest::collection::vec(any::<u8>(), 0..1500),
        any::<bool>(),
    )
        .prop_map(
            |(flags, seq, ack, window, tsecr, ce, mss, sacks, payload, to_b)| {
                let sacks: Vec<_> = sacks
                    .into_iter()
                    .map(|(a, b)| (a.min(b), a.max(b).saturating_add(1)))
                    .collect();
                forge(
                    flags, seq, ack, window, tsecr, ce, mss, &sacks, &payload, to_b,
                )
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes(inputs in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..120), 1..6)) {
        feed(&inputs, false);
    }

    #[test]
    fn mutated_real_segments(
        picks in proptest::collection::vec((any::<prop::sample::Index>(), proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6), any::<Option<prop::sample::Index>>()), 1..8),
        ce in any::<bool>(),
    ) {
        let corpus = zoo().corpus;
        let inputs: Vec<Vec<u8>> = picks
            .into_iter()
            .map(|(which, flips, cut)| {
                let mut seg = corpus[which.index(corpus.len())].clone();
                for (at, value) in flips {
                    let i = at.index(seg.len());
                    seg[i] = value;
                }
                if let Some(cut) = cut {
                    seg.truncate(cut.index(seg.len() + 1));
                }
                seg
            })
            .collect();
        feed(&inputs, ce);
    }

    #[test]
    fn forged_segments(inputs in proptest::collection::vec(forged_segment(), 1..8), ce in any::<bool>()) {
        feed(&inputs, ce);
    }
}

#[test]
fn forged_layout_matches_the_codec() {
    // The documented layout, written by hand above, is what the session parses.
    let seg = forge(0x02, 5, 6, 7, 0, 0, Some(1280), &[(10, 20)], b"xy", true);
    let summary = Session::peek(&seg).expect("peek");
    assert_eq!(
        (summary.conn_id, summary.src_port, summary.dst_port),
        (CONN, 40000, 5001)
    );
    let rst = Session::reset_reply(&seg).expect("a RST");
    let summary = Session::peek(&rst).expect("peek");
    assert!(summary.is_rst());
    assert_eq!((summary.src_port, summary.dst_port), (5001, 40000));
    assert!(Session::reset_reply(&rst).is_none());
    // Forged segments reach the state machine: B accepts two more bytes after A's 15 000.
    let mut z = zoo();
    let b = &mut z.sessions[3];
    assert_eq!(b.info().bytes_received, 15_000);
    let data = forge(0x02, 15_000, 0, 0, 0, 0, None, &[], b"xy", true);
    assert_eq!(b.handle_segment(z.now, &data, false), Ok(()));
    assert_eq!(b.readable(), 2);
}
