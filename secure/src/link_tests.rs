//! The link machine between two simulated nodes, with an attacker who can read everything on
//! the wire, replay, modify, reorder and inject packets from any address.

use crate::keys::SecretKey;
use crate::link::*;
use proptest::prelude::*;
use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use weft_core::{Instant, NodeId, HEADER_LEN, MAGIC, WIRE_VERSION};

fn addr(n: u8) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, n], 7470))
}

fn node(n: u8) -> NodeId {
    NodeId(u32::from_be_bytes([127, 0, 0, n]))
}

/// A node packet: header (kind 4 = data) and body.
fn packet(from: u8, body: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(HEADER_LEN + body.len() + TRAILER_LEN);
    p.extend_from_slice(&MAGIC.to_be_bytes());
    p.extend_from_slice(&[WIRE_VERSION, 4, 0, 0, 0, 0]);
    p.extend_from_slice(&node(from).0.to_be_bytes());
    p.extend_from_slice(&7u32.to_be_bytes());
    p.extend_from_slice(body);
    p
}

fn body_of(delivered: &[u8]) -> Vec<u8> {
    delivered[HEADER_LEN..delivered.len() - TRAILER_LEN].to_vec()
}

struct Side {
    key: Arc<SecretKey>,
    links: Links,
}

fn side(
    me: u8,
    peer: u8,
    peer_key: Option<crate::PublicKey>,
    key: Arc<SecretKey>,
    now: Instant,
) -> Side {
    let links = Links::new(
        key.clone(),
        LinkConfig {
            node: node(me),
            peers: vec![PeerConfig {
                addr: addr(peer),
                node: None,
                key: peer_key,
            }],
            admitted: None,
            wall_clock_us: 1_700_000_000_000_000 + now.as_micros(),
        },
        now,
    );
    Side { key, links }
}

struct Net {
    a: Side,
    b: Side,
    now: Instant,
    /// Every datagram seen on the wire: (from, to, bytes).
    wire: Vec<(SocketAddr, SocketAddr, Vec<u8>)>,
    /// Bodies each side delivered to its node.
    got_a: Vec<Vec<u8>>,
    got_b: Vec<Vec<u8>>,
}

impl Net {
    fn new() -> Net {
        let now = Instant::from_nanos(1_000_000_000);
        let ka = Arc::new(SecretKey::generate());
        let kb = Arc::new(SecretKey::generate());
        let a = side(1, 2, Some(kb.public()), ka.clone(), now);
        let b = side(2, 1, Some(ka.public()), kb.clone(), now);
        Net {
            a,
            b,
            now,
            wire: Vec::new(),
            got_a: Vec::new(),
            got_b: Vec::new(),
        }
    }

    /// Delivers one datagram to the side at `to`.
    fn deliver(&mut self, from: SocketAddr, to: SocketAddr, mut bytes: Vec<u8>) -> Option<Reject> {
        let (side, got) = if to == addr(1) {
            (&mut self.a, &mut self.got_a)
        } else {
            (&mut self.b, &mut self.got_b)
        };
        match side.links.open(self.now, from, &mut bytes) {
            Opened::Deliver(p) => {
                got.push(body_of(p));
                None
            }
            Opened::Consumed => None,
            Opened::Dropped(r) => Some(r),
        }
    }

    /// Moves handshake messages until both sides are quiet.
    fn pump(&mut self) {
        for _ in 0..20 {
            let mut moved = false;
            while let Some((to, m)) = self.a.links.poll_transmit() {
                self.wire.push((addr(1), to, m.clone()));
                self.deliver(addr(1), to, m);
                moved = true;
            }
            while let Some((to, m)) = self.b.links.poll_transmit() {
                self.wire.push((addr(2), to, m.clone()));
                self.deliver(addr(2), to, m);
                moved = true;
            }
            if !moved {
                return;
            }
        }
    }

    fn tick(&mut self, d: Duration) {
        self.now += d;
        self.a.links.handle_timeout(self.now);
        self.b.links.handle_timeout(self.now);
        self.pump();
    }

    /// Seals a packet on one side and returns the wire bytes (without delivering).
    fn seal(&mut self, from_a: bool, body: &[u8]) -> Option<Vec<u8>> {
        let (side, from, to) = if from_a {
            (&mut self.a, 1, addr(2))
        } else {
            (&mut self.b, 2, addr(1))
        };
        let mut p = packet(from, body);
        side.links.seal(self.now, to, &mut p, 0).ok()?;
        self.wire.push((addr(from), to, p.clone()));
        Some(p)
    }

    fn send(&mut self, from_a: bool, body: &[u8]) -> bool {
        let Some(p) = self.seal(from_a, body) else {
            return false;
        };
        let (from, to) = if from_a {
            (addr(1), addr(2))
        } else {
            (addr(2), addr(1))
        };
        self.deliver(from, to, p).is_none()
    }

    fn established() -> Net {
        let mut n = Net::new();
        n.tick(Duration::ZERO);
        assert!(
            n.a.links.status(n.now)[0].encrypted,
            "initiator has a session"
        );
        assert!(
            n.send(true, b"hello"),
            "initiator's data confirms the session"
        );
        assert!(n.send(false, b"back"));
        n
    }
}

#[test]
fn handshake_then_data_both_ways() {
    let mut n = Net::established();
    assert_eq!(n.got_b, vec![b"hello".to_vec()]);
    assert_eq!(n.got_a, vec![b"back".to_vec()]);
    let s = &n.a.links.status(n.now)[0];
    assert_eq!(s.public_key, Some(n.b.key.public()));
    assert!(s.encrypted);
    assert_eq!(
        n.b.links.peer_identity(addr(1)),
        Some((n.a.key.public(), Some(node(1))))
    );
    for i in 0..100u32 {
        assert!(n.send(i % 2 == 0, &i.to_be_bytes()));
    }
    assert_eq!(n.a.links.counters().rejected(), 0);
    assert_eq!(n.b.links.counters().rejected(), 0);
}

#[test]
fn every_modified_byte_is_rejected_without_harm() {
    let mut n = Net::established();
    let p = n.seal(true, b"the payload of a packet").unwrap();
    for i in 0..p.len() {
        for flip in [1u8, 0x80] {
            let mut bad = p.clone();
            bad[i] ^= flip;
            let r = n.deliver(addr(1), addr(2), bad);
            assert!(r.is_some(), "byte {i} flipped by {flip:#x} was accepted");
        }
    }
    for cut in 0..p.len() {
        assert!(n.deliver(addr(1), addr(2), p[..cut].to_vec()).is_some());
    }
    assert!(
        n.deliver(addr(1), addr(2), p.clone()).is_none(),
        "the original still opens"
    );
    assert_eq!(n.deliver(addr(1), addr(2), p), Some(Reject::Replayed));
    assert!(n.send(true, b"after"), "the link still works");
}

#[test]
fn packets_from_elsewhere_or_without_a_trailer_are_dropped() {
    let mut n = Net::established();
    let p = n.seal(true, b"x").unwrap();
    assert_eq!(n.deliver(addr(9), addr(2), p), Some(Reject::NotANeighbour));
    assert_eq!(
        n.deliver(addr(1), addr(2), packet(1, b"plain")),
        Some(Reject::Unauthenticated)
    );
    assert_eq!(
        n.deliver(addr(1), addr(2), b"GET /".to_vec()),
        Some(Reject::Malformed)
    );
}

#[test]
fn reordering_inside_the_window_is_fine_and_replays_are_not() {
    let mut n = Net::established();
    let ps: Vec<Vec<u8>> = (0..50u8).map(|i| n.seal(true, &[i]).unwrap()).collect();
    for p in ps.iter().rev() {
        assert!(n.deliver(addr(1), addr(2), p.clone()).is_none());
    }
    for p in &ps {
        assert_eq!(
            n.deliver(addr(1), addr(2), p.clone()),
            Some(Reject::Replayed)
        );
    }
    let old = n.seal(true, b"old").unwrap();
    for _ in 0..crate::replay::WINDOW {
        let p = n.seal(true, b"").unwrap();
        assert!(n.deliver(addr(1), addr(2), p).is_none());
    }
    assert_eq!(n.deliver(addr(1), addr(2), old), Some(Reject::Replayed));
}

#[test]
fn a_stranger_cannot_handshake_as_a_neighbour() {
    let mut n = Net::new();
    // Mallory knows B's public key and sends from A's address with her own key.
    let mallory = Arc::new(SecretKey::generate());
    let mut m = side(1, 2, Some(n.b.key.public()), mallory, n.now);
    m.links.handle_timeout(n.now);
    let (to, init) = m.links.poll_transmit().unwrap();
    assert_eq!(
        n.deliver(addr(1), to, init),
        Some(Reject::HandshakeWrongKey)
    );
    assert!(
        n.b.links.poll_transmit().is_none(),
        "no answer to a wrong key"
    );
    // Without B's public key she cannot even get past mac1.
    let mut m = side(
        1,
        2,
        Some(SecretKey::generate().public()),
        Arc::new(SecretKey::generate()),
        n.now,
    );
    m.links.handle_timeout(n.now);
    let (to, init) = m.links.poll_transmit().unwrap();
    assert_eq!(n.deliver(addr(1), to, init), Some(Reject::HandshakeBadMac));
    n.tick(Duration::ZERO);
    assert!(n.send(true, b"genuine"));
}

#[test]
fn replayed_initiations_change_nothing() {
    let mut n = Net::established();
    let init = n
        .wire
        .iter()
        .find(|(_, _, m)| m[3] == 16)
        .map(|(f, t, m)| (*f, *t, m.clone()))
        .unwrap();
    assert_eq!(
        n.deliver(init.0, init.1, init.2.clone()),
        Some(Reject::HandshakeReplayed)
    );
    // B restarts: it no longer remembers the timestamp, answers the replay, but the new
    // session is never confirmed and A's... A restarted B has no sessions at all anyway; what
    // matters is that the replayed initiation gives nobody a usable session.
    let kb = n.b.key.clone();
    n.b = side(2, 1, Some(n.a.key.public()), kb, n.now);
    assert_eq!(
        n.deliver(init.0, init.1, init.2),
        None,
        "answered (it looks fresh)"
    );
    assert!(
        !n.b.links.status(n.now)[0].encrypted,
        "but no session to send with"
    );
    assert!(
        n.b.links.poll_transmit().is_some(),
        "the response, which nobody can use"
    );
}

#[test]
fn sessions_rekey_before_they_expire_and_traffic_never_stops() {
    let mut n = Net::established();
    let mut handshakes = n.a.links.counters().handshakes_completed;
    for step in 0..(400 * 4) {
        n.tick(Duration::from_millis(250));
        assert!(
            n.send(step % 2 == 0, b"tick"),
            "step {step}: packet lost at {:?}",
            n.now
        );
        let h =
            n.a.links.counters().handshakes_completed + n.b.links.counters().handshakes_completed;
        if h > handshakes {
            handshakes = h;
        }
    }
    // 400 s: at least three rekeys.
    assert!(handshakes >= 3, "{handshakes} handshakes");
    let s = &n.a.links.status(n.now)[0];
    assert!(s.session_age_ms.unwrap() < REJECT_AFTER_TIME.as_millis() as u64);
    assert_eq!(
        n.a.links.counters().rejected() + n.b.links.counters().rejected(),
        0
    );
}

#[test]
fn old_keys_die_after_the_reject_time() {
    let mut n = Net::established();
    let old = n.seal(true, b"kept back").unwrap();
    n.tick(REJECT_AFTER_TIME);
    assert_eq!(n.deliver(addr(1), addr(2), old), Some(Reject::UnknownKey));
    n.tick(Duration::from_secs(2));
    assert!(n.send(true, b"fresh session"));
}

#[test]
fn a_restarted_peer_gets_a_new_session() {
    let mut n = Net::established();
    let ka = n.a.key.clone();
    n.now += Duration::from_secs(3);
    n.a = side(1, 2, Some(n.b.key.public()), ka, n.now);
    // B still sends with the old keys: A drops them, unknown.
    let p = n.seal(false, b"to the old A").unwrap();
    assert_eq!(n.deliver(addr(2), addr(1), p), Some(Reject::UnknownKey));
    n.tick(Duration::ZERO);
    assert!(n.send(true, b"new"));
    assert!(n.send(false, b"new back"));
}

#[test]
fn both_sides_initiating_at_once_still_converge() {
    let mut n = Net::new();
    n.a.links.handle_timeout(n.now);
    n.b.links.handle_timeout(n.now);
    let from_a: Vec<_> = std::iter::from_fn(|| n.a.links.poll_transmit()).collect();
    let from_b: Vec<_> = std::iter::from_fn(|| n.b.links.poll_transmit()).collect();
    for (to, m) in from_a {
        n.deliver(addr(1), to, m);
    }
    for (to, m) in from_b {
        n.deliver(addr(2), to, m);
    }
    n.pump();
    for i in 0..10u8 {
        assert!(n.send(i % 2 == 0, &[i]), "packet {i}");
    }
}

#[test]
fn a_handshake_flood_costs_bounded_work_and_spares_the_link() {
    let mut n = Net::established();
    // Mallory can produce well-formed initiations (she knows B's public key, has her own key)
    // and sends them from A's address, far faster than any budget.
    let mallory = Arc::new(SecretKey::generate());
    let mut flood = Vec::new();
    for _ in 0..2000 {
        let mut m = side(1, 2, Some(n.b.key.public()), mallory.clone(), n.now);
        m.links.handle_timeout(n.now);
        flood.push(m.links.poll_transmit().unwrap().1);
    }
    let before = *n.b.links.counters();
    let start = n.now;
    for (i, init) in flood.into_iter().enumerate() {
        n.now += Duration::from_micros(500); // 2000 initiations/s for one second
        n.deliver(addr(1), addr(2), init);
        if i % 100 == 0 {
            assert!(
                n.send(true, b"during"),
                "the link carries data during the flood"
            );
            // B's cookie replies go to A's address; A has no matching handshake.
            while let Some((to, m)) = n.b.links.poll_transmit() {
                n.deliver(addr(2), to, m);
            }
        }
    }
    let after = *n.b.links.counters();
    let secs = n.now.saturating_since(start).as_secs_f64();
    let computed = after.handshakes_computed - before.handshakes_computed;
    assert!(
        computed
            >= (after.handshake_wrong_key + after.handshakes_answered)
                - (before.handshake_wrong_key + before.handshakes_answered),
        "every Diffie-Hellman is counted"
    );
    let bound = (PEER_HANDSHAKE_RATE * secs + PEER_HANDSHAKE_RATE).ceil() as u64;
    assert!(
        computed <= bound,
        "{computed} handshakes computed, bound {bound}"
    );
    let limited = after.handshake_rate_limited - before.handshake_rate_limited;
    assert!(limited >= 2000 - bound, "{limited} rate-limited");
    let cookies = after.cookie_replies_sent - before.cookie_replies_sent;
    assert!(cookies as f64 <= COOKIE_REPLY_RATE * secs + COOKIE_REPLY_RATE);
    assert!(n.send(false, b"after"));
}

#[test]
fn under_load_a_genuine_initiator_gets_through_with_a_cookie() {
    let mut n = Net::established();
    // Past both ends' rekey times (whichever end initiated the current session).
    n.now += Duration::from_secs(140);
    // Exhaust B's cookie-free budget with initiations that fail late (valid mac1).
    let mallory = Arc::new(SecretKey::generate());
    for _ in 0..(UNDER_LOAD_RATE as usize + 8) {
        let mut m = side(7, 2, Some(n.b.key.public()), mallory.clone(), n.now);
        m.links.handle_timeout(n.now);
        let init = m.links.poll_transmit().unwrap().1;
        n.deliver(addr(1), addr(2), init);
    }
    while n.b.links.poll_transmit().is_some() {}
    // A rekeys now: its initiation is answered with a cookie, the retry carries mac2.
    let cookies_before = n.a.links.counters().cookies_received;
    assert!(n.send(true, b"triggers a rekey"));
    for _ in 0..100 {
        n.tick(Duration::from_millis(30));
    }
    assert!(
        n.a.links.counters().cookies_received > cookies_before,
        "a cookie came back: A {:?} B {:?}",
        n.a.links.counters(),
        n.b.links.counters()
    );
    let s = &n.a.links.status(n.now)[0];
    assert!(
        s.session_age_ms.unwrap() < 5_000,
        "rekeyed despite the load"
    );
    assert!(n.send(true, b"new keys"));
}

#[test]
fn admitted_list_supplies_keys_and_binds_node_ids() {
    let now = Instant::from_nanos(1);
    let ka = Arc::new(SecretKey::generate());
    let kb = Arc::new(SecretKey::generate());
    let admitted: BTreeMap<NodeId, crate::PublicKey> =
        [(node(1), ka.public()), (node(2), kb.public())].into();
    let admitted = Some(Arc::new(admitted));
    let mk = |me: u8, peer: u8, key: &Arc<SecretKey>| Side {
        key: key.clone(),
        links: Links::new(
            key.clone(),
            LinkConfig {
                node: node(me),
                peers: vec![PeerConfig {
                    addr: addr(peer),
                    node: None,
                    key: None,
                }],
                admitted: admitted.clone(),
                wall_clock_us: 5,
            },
            now,
        ),
    };
    let mut n = Net {
        a: mk(1, 2, &ka),
        b: mk(2, 1, &kb),
        now,
        wire: Vec::new(),
        got_a: Vec::new(),
        got_b: Vec::new(),
    };
    n.tick(Duration::ZERO);
    assert!(n.send(true, b"admitted"));
    assert_eq!(
        n.b.links.peer_identity(addr(1)),
        Some((ka.public(), Some(node(1))))
    );
    // An admitted key claiming another admitted node's id is refused.
    let mut liar = Side {
        key: ka.clone(),
        links: Links::new(
            ka.clone(),
            LinkConfig {
                node: node(3),
                peers: vec![PeerConfig {
                    addr: addr(2),
                    node: None,
                    key: Some(kb.public()),
                }],
                admitted: None,
                wall_clock_us: 1 << 60,
            },
            now,
        ),
    };
    liar.links.handle_timeout(now);
    let init = liar.links.poll_transmit().unwrap().1;
    assert_eq!(
        n.deliver(addr(1), addr(2), init),
        Some(Reject::HandshakeWrongKey)
    );
}

#[test]
fn peers_added_and_removed_at_run_time_and_a_reloaded_admitted_list() {
    let mut n = Net::established();
    // Removed: its sessions and keys are gone, its packets are a stranger's, sealing fails.
    let sealed = n.seal(false, b"before removal").unwrap();
    assert!(n.a.links.remove_peer(addr(2)));
    assert!(!n.a.links.remove_peer(addr(2)));
    assert_eq!(
        n.deliver(addr(2), addr(1), sealed),
        Some(Reject::NotANeighbour)
    );
    assert!(n
        .a
        .links
        .seal(n.now, addr(2), &mut packet(1, b"x"), 0)
        .is_err());
    assert!(n.a.links.status(n.now).is_empty());
    // Added back (with its key): a fresh handshake, data flows again; adding twice is refused.
    let kb = n.b.key.public();
    let peer = PeerConfig {
        addr: addr(2),
        node: None,
        key: Some(kb),
    };
    assert!(n.a.links.add_peer(peer.clone(), n.now));
    assert!(!n.a.links.add_peer(peer, n.now));
    n.tick(Duration::from_secs(1));
    assert!(n.send(true, b"again"));
    assert!(n.send(false, b"and back"));

    // A peer known only through the admitted list: a reloaded list without it ends its
    // session; the list naming it again lets a new handshake through.
    let now = n.now;
    let kc = Arc::new(SecretKey::generate());
    let listed: BTreeMap<NodeId, crate::PublicKey> = [(node(3), kc.public())].into();
    n.a.links.set_admitted(Some(Arc::new(listed.clone())));
    let unlisted = PeerConfig {
        addr: addr(3),
        node: None,
        key: None,
    };
    assert!(n.a.links.add_peer(unlisted, now));
    assert_eq!(n.a.links.peer_identity(addr(3)), Some((kc.public(), None)));
    n.a.links.set_admitted(Some(Arc::new(BTreeMap::new())));
    assert_eq!(n.a.links.peer_identity(addr(3)), None);
    // The configured key of peer 2 is not the list's to take away.
    assert_eq!(n.a.links.peer_identity(addr(2)).map(|k| k.0), Some(kb));
    assert!(n.send(true, b"still linked"));
    n.a.links.set_admitted(Some(Arc::new(listed)));
    assert_eq!(n.a.links.peer_identity(addr(3)), Some((kc.public(), None)));
}

#[derive(Debug, Clone)]
enum Attack {
    Legit(bool, u8),
    Replay(prop::sample::Index),
    Flip(prop::sample::Index, prop::sample::Index, u8),
    Truncate(prop::sample::Index, prop::sample::Index),
    Garbage(Vec<u8>, bool),
    Wait(u16),
}

fn attack() -> impl Strategy<Value = Attack> {
    prop_oneof![
        4 => (any::<bool>(), any::<u8>()).prop_map(|(d, b)| Attack::Legit(d, b)),
        2 => any::<prop::sample::Index>().prop_map(Attack::Replay),
        2 => (any::<prop::sample::Index>(), any::<prop::sample::Index>(), 1u8..=255)
            .prop_map(|(p, i, x)| Attack::Flip(p, i, x)),
        1 => (any::<prop::sample::Index>(), any::<prop::sample::Index>())
            .prop_map(|(p, c)| Attack::Truncate(p, c)),
        1 => (proptest::collection::vec(any::<u8>(), 0..200), any::<bool>())
            .prop_map(|(g, d)| Attack::Garbage(g, d)),
        1 => (0u16..5000).prop_map(Attack::Wait),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    /// Whatever the attacker does with what it saw, each side delivers only bodies the
    /// other side sent, each at most once, and genuine packets keep arriving.
    #[test]
    fn an_attacker_cannot_inject_replay_or_break_the_link(ops in proptest::collection::vec(attack(), 1..120)) {
        let mut n = Net::established();
        let mut sent_a = HashSet::new();
        let mut sent_b = HashSet::new();
        sent_a.insert(b"hello".to_vec());
        sent_b.insert(b"back".to_vec());
        let mut seq = 0u32;
        for op in ops {
            match op {
                Attack::Legit(from_a, b) => {
                    seq += 1;
                    let body = [&seq.to_be_bytes()[..], &[b]].concat();
                    if from_a { sent_a.insert(body.clone()); } else { sent_b.insert(body.clone()); }
                    prop_assert!(n.send(from_a, &body), "genuine packet rejected");
                }
                Attack::Replay(i) if !n.wire.is_empty() => {
                    let (f, t, m) = n.wire[i.index(n.wire.len())].clone();
                    n.deliver(f, t, m);
                }
                Attack::Flip(p, i, x) if !n.wire.is_empty() => {
                    let (f, t, mut m) = n.wire[p.index(n.wire.len())].clone();
                    let at = i.index(m.len());
                    m[at] ^= x;
                    n.deliver(f, t, m);
                }
                Attack::Truncate(p, c) if !n.wire.is_empty() => {
                    let (f, t, m) = n.wire[p.index(n.wire.len())].clone();
                    let cut = c.index(m.len());
                    n.deliver(f, t, m[..cut].to_vec());
                }
                Attack::Garbage(g, to_a) => {
                    let (f, t) = if to_a { (addr(2), addr(1)) } else { (addr(1), addr(2)) };
                    n.deliver(f, t, g);
                }
                Attack::Wait(ms) => n.tick(Duration::from_millis(u64::from(ms))),
                _ => {}
            }
            n.pump();
        }
        let unique_b: HashSet<_> = n.got_b.iter().cloned().collect();
        prop_assert_eq!(unique_b.len(), n.got_b.len(), "B delivered a duplicate");
        prop_assert!(unique_b.is_subset(&sent_a), "B delivered something A never sent");
        let unique_a: HashSet<_> = n.got_a.iter().cloned().collect();
        prop_assert_eq!(unique_a.len(), n.got_a.len(), "A delivered a duplicate");
        prop_assert!(unique_a.is_subset(&sent_b), "A delivered something B never sent");
        n.tick(Duration::from_secs(2));
        prop_assert!(n.send(true, b"still up") && n.send(false, b"still up"));
    }
}

#[test]
fn both_ends_agree_on_the_transport_cipher_inside_the_handshake() {
    // Both offer what this machine runs: the best both run.
    let n = Net::established();
    let best = if Cipher::offered() & Cipher::Aes256Gcm as u8 != 0 {
        Cipher::Aes256Gcm.name()
    } else {
        Cipher::ChaCha20Poly1305.name()
    };
    assert_eq!(n.a.links.status(n.now)[0].cipher, Some(best));
    assert_eq!(n.b.links.status(n.now)[0].cipher, Some(best));

    // One end without AES: ChaCha20-Poly1305 both ways, whoever initiates.
    for initiator_restricted in [true, false] {
        let mut n = Net::new();
        if initiator_restricted {
            n.a.links.restrict_ciphers(Cipher::ChaCha20Poly1305 as u8);
        } else {
            n.b.links.restrict_ciphers(Cipher::ChaCha20Poly1305 as u8);
        }
        n.tick(Duration::ZERO);
        assert!(n.send(true, b"hello") && n.send(false, b"back"));
        for side in [&n.a, &n.b] {
            assert_eq!(
                side.links.status(n.now)[0].cipher,
                Some(Cipher::ChaCha20Poly1305.name())
            );
        }
    }
}

#[test]
fn a_response_naming_a_cipher_never_offered_is_refused() {
    // The choice travels inside the responder's Noise payload, so no one on the path can
    // change it; a responder that names a cipher the initiator did not offer gets no session.
    if Cipher::offered() & Cipher::Aes256Gcm as u8 == 0 {
        return; // this machine runs only ChaCha20-Poly1305: no other cipher to name
    }
    let mut n = Net::new();
    // A offers AES-256-GCM in its initiation, then stops accepting it before the answer.
    n.a.links.handle_timeout(n.now);
    let (to, init) = n.a.links.poll_transmit().expect("an initiation");
    n.a.links.restrict_ciphers(Cipher::ChaCha20Poly1305 as u8);
    assert_eq!(n.deliver(addr(1), to, init), None);
    let (to, resp) = n.b.links.poll_transmit().expect("a response");
    let rejected_before = n.a.links.counters().rejected();
    assert_eq!(n.deliver(addr(2), to, resp), Some(Reject::HandshakeInvalid));
    assert_eq!(n.a.links.counters().rejected(), rejected_before + 1);
    assert!(!n.a.links.status(n.now)[0].encrypted);
}

/// Seal and open cost per byte for each cipher this machine runs (run with --ignored
/// --nocapture; a figure, not a check).
#[test]
#[ignore]
fn seal_and_open_throughput() {
    for mask in [Cipher::ChaCha20Poly1305 as u8, Cipher::offered()] {
        let mut n = Net::new();
        n.a.links.restrict_ciphers(mask);
        n.b.links.restrict_ciphers(mask);
        n.tick(Duration::ZERO);
        assert!(n.send(true, b"hello") && n.send(false, b"back"));
        let cipher = n.a.links.status(n.now)[0].cipher;
        let body = vec![7u8; 1400];
        let rounds = 200_000;
        let mut p = packet(1, &body);
        let t = std::time::Instant::now();
        for _ in 0..rounds {
            p.truncate(HEADER_LEN + body.len());
            p[5] = 0;
            n.a.links.seal(n.now, addr(2), &mut p, 0).unwrap();
            match n.b.links.open(n.now, addr(1), &mut p) {
                Opened::Deliver(_) => {}
                other => panic!("{other:?}"),
            }
        }
        let secs = t.elapsed().as_secs_f64();
        let bytes = (rounds * body.len()) as f64;
        println!(
            "{cipher:?} seal+open: {:.2} GB/s, {:.2} s/GB ({:.0} ns per packet)",
            bytes / secs / 1e9,
            secs / (bytes / 1e9),
            secs * 1e9 / rounds as f64
        );
    }
}
