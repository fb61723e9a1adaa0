//! The link-security machine of one node (sans-I/O): datagrams and `now` in, datagrams out,
//! a timer. It sits between the UDP socket and the node: [`Links::open`] authenticates and
//! decrypts a received datagram in place before anything else reads it, [`Links::seal`]
//! encrypts an outgoing one in place, [`Links::poll_transmit`] yields handshake messages.
//!
//! Wire (after the 16-byte outer header of `weft_core::header`, whose bytes 6..8 carry the
//! key id on transport packets):
//!
//! ```text
//! transport (any node kind, auth_len = 24): header | body, encrypted | counter u64 LE | tag 16
//!     AEAD ChaCha20-Poly1305, nonce = 0u32 | counter LE, associated data = the header
//! initiation (kind 16): header | sender index u16 | Noise IK message 1 (108) | mac1 | mac2
//!     its encrypted payload: timestamp u64 | node id u32
//! response (kind 17):   header | sender index u16 | receiver index u16 | Noise IK message 2 (52) | mac1 | mac2
//!     its encrypted payload: node id u32
//! cookie reply (kind 18): header | receiver index u16 | nonce 24 | encrypted cookie 16 | tag 16
//! keepalive (kind 19):  a transport packet with an empty body (confirms a new session)
//! ```
//!
//! Handshake: Noise_IK_25519_ChaChaPoly_BLAKE2s (WireGuard's pattern): the initiator knows the
//! responder's static key in advance; one round trip authenticates both and yields two
//! transport keys. Sessions are rekeyed after 120 s or 2^60 messages and die after 180 s;
//! a responder's new session becomes the one it sends with only once the initiator used it
//! (key confirmation), so a replayed initiation cannot displace a working session. Initiation
//! timestamps must grow per peer (no replay of old initiations). Under load (more handshakes
//! than `UNDER_LOAD_RATE` per second) a responder answers with cookies instead of doing
//! Diffie-Hellman (see `cookie`), and a hard cap bounds the handshakes it computes per second.

use crate::cookie::{CookieChecker, CookieJar, TokenBucket, COOKIE_BODY_LEN, MAC_LEN};
use crate::keys::{PublicKey, SecretKey};
use crate::replay::ReplayWindow;
use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, AES_256_GCM, CHACHA20_POLY1305};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use weft_core::{Instant, NodeId, HEADER_LEN, MAGIC, WIRE_VERSION};

pub const KIND_INITIATION: u8 = 16;
pub const KIND_RESPONSE: u8 = 17;
pub const KIND_COOKIE: u8 = 18;
pub const KIND_KEEPALIVE: u8 = 19;

/// Counter and Poly1305 tag after every transport packet's body.
pub const TRAILER_LEN: usize = 24;
const TAG_LEN: usize = 16;
const KIND_OFFSET: usize = 3;
const AUTH_LEN_OFFSET: usize = 5;
const KEY_ID_OFFSET: usize = 6;

const NOISE_PARAMS: &str = "Noise_IK_25519_ChaChaPoly_BLAKE2s";
const PROLOGUE: &[u8] = b"weft link v1";
/// timestamp u64 | node id u32 | transport ciphers offered u8.
const INIT_PAYLOAD_LEN: usize = 13;
const INIT_NOISE_LEN: usize = 32 + (32 + 16) + (INIT_PAYLOAD_LEN + 16);
/// The responder proves its node id too, and names the transport cipher it chose.
const RESP_PAYLOAD_LEN: usize = 5;
const RESP_NOISE_LEN: usize = 32 + (RESP_PAYLOAD_LEN + 16);
pub const INITIATION_LEN: usize = HEADER_LEN + 2 + INIT_NOISE_LEN + 2 * MAC_LEN;
pub const RESPONSE_LEN: usize = HEADER_LEN + 4 + RESP_NOISE_LEN + 2 * MAC_LEN;
pub const COOKIE_REPLY_LEN: usize = HEADER_LEN + COOKIE_BODY_LEN;

pub const REKEY_AFTER_TIME: Duration = Duration::from_secs(120);
pub const REJECT_AFTER_TIME: Duration = Duration::from_secs(180);
/// A responder-side session is rekeyed a little later than an initiator's, so the two ends
/// of a link do not both start a handshake at once.
const RESPONDER_REKEY_AFTER: Duration = Duration::from_secs(130);
/// How long an initiation waits for its response before a new one (plus up to a third more).
pub const REKEY_TIMEOUT: Duration = Duration::from_secs(1);
/// After a cookie reply, the next initiation (now carrying mac2) leaves this soon.
const RETRY_AFTER_COOKIE: Duration = Duration::from_millis(50);
pub const REKEY_AFTER_MESSAGES: u64 = 1 << 60;
pub const REJECT_AFTER_MESSAGES: u64 = u64::MAX - (1 << 13);

/// Handshake messages per second (with a valid mac1) above which a responder is under load
/// and computes only those that carry a cookie.
pub const UNDER_LOAD_RATE: f64 = 16.0;
/// Handshakes per second computed at most, cookies or not.
pub const HANDSHAKE_CAP_RATE: f64 = 128.0;
/// Handshakes per second computed at most for one peer.
pub const PEER_HANDSHAKE_RATE: f64 = 4.0;
/// Cookie replies sent per second at most.
pub const COOKIE_REPLY_RATE: f64 = 64.0;

#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// Where the neighbour's daemon sends from and listens.
    pub addr: SocketAddr,
    /// Its node id, when configured.
    pub node: Option<NodeId>,
    /// Its public key; without one, the admitted list (by node id, or by the key an
    /// initiation proves) supplies it.
    pub key: Option<PublicKey>,
}

#[derive(Debug, Clone)]
pub struct LinkConfig {
    pub node: NodeId,
    pub peers: Vec<PeerConfig>,
    /// The overlay-wide list of admitted node keys, if there is one.
    pub admitted: Option<Arc<BTreeMap<NodeId, PublicKey>>>,
    /// Wall-clock microseconds since the Unix epoch at the `now` given to [`Links::new`]:
    /// initiation timestamps must grow across restarts.
    pub wall_clock_us: u64,
}

/// What became of a received datagram.
#[derive(Debug, PartialEq, Eq)]
pub enum Opened<'a> {
    /// Authenticated and decrypted in place: the packet for the node (its header's
    /// `auth_len` still covers the trailer, which the node's header decoder skips).
    Deliver(&'a [u8]),
    /// A handshake message or keepalive, handled here.
    Consumed,
    /// Rejected and counted.
    Dropped(Reject),
}

/// Why a datagram was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    NotANeighbour,
    Malformed,
    /// No authentication trailer: an unauthenticated (or foreign) packet.
    Unauthenticated,
    UnknownKey,
    Replayed,
    AuthFailed,
    HandshakeBadMac,
    HandshakeInvalid,
    HandshakeWrongKey,
    HandshakeReplayed,
    HandshakeRateLimited,
    HandshakeUnexpected,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealError {
    NotANeighbour,
    /// No session with the neighbour yet (a handshake is under way).
    NoSession,
    Malformed,
}

/// Rejection and handshake counters (all links together; per-link ones are in [`PeerStatus`]).
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct LinkCounters {
    pub not_a_neighbour: u64,
    pub malformed: u64,
    pub unauthenticated: u64,
    pub unknown_key: u64,
    pub replayed: u64,
    pub auth_failed: u64,
    pub handshake_bad_mac: u64,
    pub handshake_invalid: u64,
    pub handshake_wrong_key: u64,
    pub handshake_replayed: u64,
    pub handshake_rate_limited: u64,
    pub handshake_unexpected: u64,
    /// Initiations answered with a cookie instead of a handshake (under load).
    pub cookie_replies_sent: u64,
    pub cookies_received: u64,
    pub initiations_sent: u64,
    /// Handshake messages admitted to Diffie-Hellman work (the CPU a flood can cost).
    pub handshakes_computed: u64,
    /// Handshakes whose Diffie-Hellman work was done as a responder.
    pub handshakes_answered: u64,
    pub handshakes_completed: u64,
    /// Sends dropped because no session existed yet.
    pub sent_without_session: u64,
}

impl LinkCounters {
    fn count(&mut self, d: Reject) {
        let c = match d {
            Reject::NotANeighbour => &mut self.not_a_neighbour,
            Reject::Malformed => &mut self.malformed,
            Reject::Unauthenticated => &mut self.unauthenticated,
            Reject::UnknownKey => &mut self.unknown_key,
            Reject::Replayed => &mut self.replayed,
            Reject::AuthFailed => &mut self.auth_failed,
            Reject::HandshakeBadMac => &mut self.handshake_bad_mac,
            Reject::HandshakeInvalid => &mut self.handshake_invalid,
            Reject::HandshakeWrongKey => &mut self.handshake_wrong_key,
            Reject::HandshakeReplayed => &mut self.handshake_replayed,
            Reject::HandshakeRateLimited => &mut self.handshake_rate_limited,
            Reject::HandshakeUnexpected => &mut self.handshake_unexpected,
        };
        *c = c.saturating_add(1);
    }

    /// Everything rejected, whatever the reason.
    pub fn rejected(&self) -> u64 {
        [
            self.not_a_neighbour,
            self.malformed,
            self.unauthenticated,
            self.unknown_key,
            self.replayed,
            self.auth_failed,
            self.handshake_bad_mac,
            self.handshake_invalid,
            self.handshake_wrong_key,
            self.handshake_replayed,
            self.handshake_rate_limited,
            self.handshake_unexpected,
        ]
        .iter()
        .fold(0u64, |a, b| a.saturating_add(*b))
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PeerStatus {
    pub addr: String,
    pub node: Option<NodeId>,
    pub public_key: Option<PublicKey>,
    /// A session both ends have used: packets on this link are authenticated and encrypted.
    pub encrypted: bool,
    /// The current session's transport AEAD.
    pub cipher: Option<&'static str>,
    pub session_age_ms: Option<u64>,
    pub handshakes: u64,
    pub rejected: u64,
}

/// Transport AEADs. Both ends offer what they run fast and the responder picks; both are
/// authenticated inside the handshake, so nobody can downgrade the choice. AES-256-GCM where
/// both CPUs have AES and carry-less multiply instructions (several times cheaper per byte
/// there), ChaCha20-Poly1305 (WireGuard's) otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cipher {
    ChaCha20Poly1305 = 1,
    Aes256Gcm = 2,
}

impl Cipher {
    pub fn name(self) -> &'static str {
        match self {
            Cipher::ChaCha20Poly1305 => "chacha20-poly1305",
            Cipher::Aes256Gcm => "aes-256-gcm",
        }
    }

    fn from_u8(v: u8) -> Option<Cipher> {
        match v {
            1 => Some(Cipher::ChaCha20Poly1305),
            2 => Some(Cipher::Aes256Gcm),
            _ => None,
        }
    }

    /// The ciphers this machine runs well, as a bit mask (ChaCha20-Poly1305 always).
    pub fn offered() -> u8 {
        let mut mask = Cipher::ChaCha20Poly1305 as u8;
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
        {
            mask |= Cipher::Aes256Gcm as u8;
        }
        #[cfg(target_arch = "aarch64")]
        if std::arch::is_aarch64_feature_detected!("aes")
            && std::arch::is_aarch64_feature_detected!("pmull")
        {
            mask |= Cipher::Aes256Gcm as u8;
        }
        mask
    }

    /// The responder's pick from what both offer.
    fn choose(theirs: u8, ours: u8) -> Cipher {
        if theirs & ours & Cipher::Aes256Gcm as u8 != 0 {
            Cipher::Aes256Gcm
        } else {
            Cipher::ChaCha20Poly1305
        }
    }
}

struct Keypair {
    cipher: Cipher,
    send: LessSafeKey,
    recv: LessSafeKey,
    /// The key id the peer puts on packets for us.
    local: u16,
    /// The key id we put on packets for the peer.
    remote: u16,
    sent: u64,
    replay: ReplayWindow,
    born: Instant,
    initiator: bool,
}

impl Keypair {
    fn new(
        cipher: Cipher,
        send: [u8; 32],
        recv: [u8; 32],
        local: u16,
        remote: u16,
        born: Instant,
        initiator: bool,
    ) -> Option<Self> {
        let key = |k: &[u8; 32]| {
            let algorithm = match cipher {
                Cipher::ChaCha20Poly1305 => &CHACHA20_POLY1305,
                Cipher::Aes256Gcm => &AES_256_GCM,
            };
            UnboundKey::new(algorithm, k).ok().map(LessSafeKey::new)
        };
        Some(Keypair {
            cipher,
            send: key(&send)?,
            recv: key(&recv)?,
            local,
            remote,
            sent: 0,
            replay: ReplayWindow::default(),
            born,
            initiator,
        })
    }

    fn alive(&self, now: Instant) -> bool {
        now.saturating_since(self.born) < REJECT_AFTER_TIME
    }

    fn can_send(&self, now: Instant) -> bool {
        self.alive(now) && self.sent < REJECT_AFTER_MESSAGES
    }

    fn wants_rekey(&self, now: Instant) -> bool {
        let age = now.saturating_since(self.born);
        let after = if self.initiator {
            REKEY_AFTER_TIME
        } else {
            RESPONDER_REKEY_AFTER
        };
        age >= after || self.sent >= REKEY_AFTER_MESSAGES
    }
}

struct Pending {
    hs: snow::HandshakeState,
    index: u16,
    /// The transport ciphers this initiation offered.
    offered: u8,
}

struct Peer {
    addr: SocketAddr,
    node: Option<NodeId>,
    /// The key the configuration gave (else `key` came from the admitted list or, without
    /// one, from the first handshake).
    configured_key: Option<PublicKey>,
    key: Option<PublicKey>,
    jar: Option<CookieJar>,
    current: Option<Keypair>,
    previous: Option<Keypair>,
    /// A session we answered but the initiator has not used yet.
    next: Option<Keypair>,
    pending: Option<Pending>,
    /// No initiation leaves before this.
    next_attempt: Instant,
    /// Greatest initiation timestamp accepted from this peer.
    last_timestamp: u64,
    handshake_budget: TokenBucket,
    handshakes: u64,
    rejected: u64,
}

impl Peer {
    fn local_indices(&self) -> impl Iterator<Item = u16> + '_ {
        [&self.current, &self.previous, &self.next]
            .into_iter()
            .flatten()
            .map(|k| k.local)
            .chain(self.pending.as_ref().map(|p| p.index))
    }

    fn wants_handshake(&self, now: Instant) -> bool {
        self.key.is_some()
            && self
                .current
                .as_ref()
                .is_none_or(|k| !k.can_send(now) || k.wants_rekey(now))
    }
}

/// Whether a datagram is a link-security message or carries an authentication trailer (what
/// a daemon without keys must refuse rather than misread).
pub fn is_secured(packet: &[u8]) -> bool {
    packet.len() >= HEADER_LEN
        && (matches!(
            packet[KIND_OFFSET],
            KIND_INITIATION | KIND_RESPONSE | KIND_COOKIE | KIND_KEEPALIVE
        ) || packet[AUTH_LEN_OFFSET] != 0)
}

/// The wire version a weft datagram of another version declares (its magic is ours, its
/// version byte is not): such a packet cannot be authenticated by this version, so the node
/// reports the mismatch on the neighbour instead of counting it as malformed.
pub fn other_wire_version(packet: &[u8]) -> Option<u8> {
    let version = *packet.get(2)?;
    (u16_at(packet, 0) == MAGIC && version != WIRE_VERSION).then_some(version)
}

/// Noise's ChaChaPoly nonce: 32 zero bits, then the counter little-endian.
fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    Nonce::assume_unique_for_key(n)
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn params() -> snow::params::NoiseParams {
    match NOISE_PARAMS.parse() {
        Ok(p) => p,
        Err(_) => unreachable!("the Noise parameter string is a constant snow supports"),
    }
}

pub struct Links {
    identity: Arc<SecretKey>,
    node: NodeId,
    admitted: Option<Arc<BTreeMap<NodeId, PublicKey>>>,
    peers: Vec<Peer>,
    by_addr: HashMap<SocketAddr, usize>,
    checker: CookieChecker,
    /// Handshake messages that passed mac1; empty means "under load".
    load: TokenBucket,
    cap: TokenBucket,
    cookie_budget: TokenBucket,
    outbox: VecDeque<(SocketAddr, Vec<u8>)>,
    /// (node id, key) pairs handshakes proved, for the node's key bindings.
    identities: VecDeque<(NodeId, PublicKey)>,
    counters: LinkCounters,
    started: Instant,
    wall_clock_us: u64,
    last_timestamp: u64,
    /// Transport ciphers this node offers ([`Cipher::offered`]).
    ciphers: u8,
}

impl Links {
    pub fn new(identity: Arc<SecretKey>, cfg: LinkConfig, now: Instant) -> Links {
        let checker = CookieChecker::new(&identity.public());
        let mut links = Links {
            checker,
            node: cfg.node,
            admitted: cfg.admitted,
            peers: Vec::new(),
            by_addr: HashMap::new(),
            load: TokenBucket::new(UNDER_LOAD_RATE, UNDER_LOAD_RATE),
            cap: TokenBucket::new(HANDSHAKE_CAP_RATE, HANDSHAKE_CAP_RATE / 4.0),
            cookie_budget: TokenBucket::new(COOKIE_REPLY_RATE, COOKIE_REPLY_RATE),
            outbox: VecDeque::new(),
            identities: VecDeque::new(),
            counters: LinkCounters::default(),
            started: now,
            wall_clock_us: cfg.wall_clock_us,
            last_timestamp: 0,
            ciphers: Cipher::offered(),
            identity,
        };
        for p in cfg.peers {
            links.add_peer(p, now);
        }
        links
    }

    /// The key a peer is known by: the configured one, else the admitted list's entry for its
    /// node id (configured, or the address's).
    fn admitted_key(&self, p: &PeerConfig) -> Option<PublicKey> {
        p.key.or_else(|| {
            let n = p.node.or_else(|| match p.addr {
                SocketAddr::V4(a) => Some(NodeId::from(*a.ip())),
                SocketAddr::V6(_) => None,
            })?;
            self.admitted.as_ref()?.get(&n).copied()
        })
    }

    /// A neighbour linked at run time (or at start). Returns false, changing nothing, when
    /// `p.addr` is one already.
    pub fn add_peer(&mut self, p: PeerConfig, now: Instant) -> bool {
        if self.by_addr.contains_key(&p.addr) {
            return false;
        }
        let key = self.admitted_key(&p);
        self.by_addr.insert(p.addr, self.peers.len());
        self.peers.push(Peer {
            addr: p.addr,
            node: p.node,
            configured_key: p.key,
            key,
            jar: key.as_ref().map(CookieJar::new),
            current: None,
            previous: None,
            next: None,
            pending: None,
            next_attempt: now,
            last_timestamp: 0,
            handshake_budget: TokenBucket::new(PEER_HANDSHAKE_RATE, PEER_HANDSHAKE_RATE),
            handshakes: 0,
            rejected: 0,
        });
        true
    }

    /// Unlinks a neighbour: its sessions and keys are forgotten and its packets are refused
    /// as from a stranger. Returns false when `addr` was no neighbour.
    pub fn remove_peer(&mut self, addr: SocketAddr) -> bool {
        let Some(idx) = self.by_addr.remove(&addr) else {
            return false;
        };
        self.peers.swap_remove(idx);
        if let Some(moved) = self.peers.get(idx) {
            self.by_addr.insert(moved.addr, idx);
        }
        true
    }

    /// A reloaded admitted list. A peer whose key came from the list takes the new entry;
    /// when that differs (or is gone) its sessions end and the next handshake proves the new
    /// key. Peers with a configured key keep it.
    pub fn set_admitted(&mut self, admitted: Option<Arc<BTreeMap<NodeId, PublicKey>>>) {
        self.admitted = admitted;
        for idx in 0..self.peers.len() {
            let p = &self.peers[idx];
            let cfg = PeerConfig {
                addr: p.addr,
                node: p.node,
                key: p.configured_key,
            };
            let key = self.admitted_key(&cfg);
            let p = &mut self.peers[idx];
            if key != p.key {
                p.key = key;
                p.jar = key.as_ref().map(CookieJar::new);
                p.current = None;
                p.previous = None;
                p.next = None;
                p.pending = None;
            }
        }
    }

    /// Restricts the transport ciphers this node offers and accepts to `mask` (bits of
    /// [`Cipher`]) where this machine runs them; ChaCha20-Poly1305 stays, as every peer runs it.
    /// Sessions already set up keep their cipher until they rekey.
    pub fn restrict_ciphers(&mut self, mask: u8) {
        self.ciphers = (mask & Cipher::offered()) | Cipher::ChaCha20Poly1305 as u8;
    }

    pub fn counters(&self) -> &LinkCounters {
        &self.counters
    }

    pub fn public_key(&self) -> PublicKey {
        self.identity.public()
    }

    /// The key a neighbour proved in its handshake and the node id it proved with it.
    pub fn peer_identity(&self, addr: SocketAddr) -> Option<(PublicKey, Option<NodeId>)> {
        let p = &self.peers[*self.by_addr.get(&addr)?];
        Some((p.key?, p.node))
    }

    pub fn status(&self, now: Instant) -> Vec<PeerStatus> {
        self.peers
            .iter()
            .map(|p| {
                let live = p.current.as_ref().filter(|k| k.alive(now));
                PeerStatus {
                    addr: p.addr.to_string(),
                    node: p.node,
                    public_key: p.key,
                    encrypted: live.is_some(),
                    cipher: live.map(|k| k.cipher.name()),
                    session_age_ms: live.map(|k| now.saturating_since(k.born).as_millis() as u64),
                    handshakes: p.handshakes,
                    rejected: p.rejected,
                }
            })
            .collect()
    }

    fn drop_packet<'a>(&mut self, idx: Option<usize>, d: Reject) -> Opened<'a> {
        self.counters.count(d);
        if let Some(p) = idx.and_then(|i| self.peers.get_mut(i)) {
            p.rejected = p.rejected.saturating_add(1);
        }
        Opened::Dropped(d)
    }

    // ----- receive ------------------------------------------------------------------------

    /// Authenticates and decrypts `packet` from `from` in place. Nothing about the link
    /// changes unless the packet authenticated.
    pub fn open<'a>(&mut self, now: Instant, from: SocketAddr, packet: &'a mut [u8]) -> Opened<'a> {
        let Some(&idx) = self.by_addr.get(&from) else {
            return self.drop_packet(None, Reject::NotANeighbour);
        };
        if packet.len() < HEADER_LEN || u16_at(packet, 0) != MAGIC || packet[2] != WIRE_VERSION {
            return self.drop_packet(Some(idx), Reject::Malformed);
        }
        let outcome = match packet[KIND_OFFSET] {
            KIND_INITIATION => self.on_initiation(now, idx, from, packet),
            KIND_RESPONSE => self.on_response(now, idx, from, packet),
            KIND_COOKIE => self.on_cookie(now, idx, packet),
            _ => return self.open_transport(now, idx, packet),
        };
        match outcome {
            Ok(()) => Opened::Consumed,
            Err(d) => self.drop_packet(Some(idx), d),
        }
    }

    fn open_transport<'a>(&mut self, now: Instant, idx: usize, packet: &'a mut [u8]) -> Opened<'a> {
        if usize::from(packet[AUTH_LEN_OFFSET]) != TRAILER_LEN
            || packet.len() < HEADER_LEN + TRAILER_LEN
        {
            return self.drop_packet(Some(idx), Reject::Unauthenticated);
        }
        let key_id = u16_at(packet, KEY_ID_OFFSET);
        let end = packet.len() - TRAILER_LEN;
        let mut counter_bytes = [0u8; 8];
        counter_bytes.copy_from_slice(&packet[end..end + 8]);
        let counter = u64::from_le_bytes(counter_bytes);
        let peer = &mut self.peers[idx];
        let slot = [&mut peer.current, &mut peer.previous, &mut peer.next]
            .into_iter()
            .position(|k| {
                k.as_ref()
                    .is_some_and(|k| k.local == key_id && k.alive(now))
            });
        let Some(slot) = slot else {
            return self.drop_packet(Some(idx), Reject::UnknownKey);
        };
        let kp = match slot {
            0 => peer.current.as_mut(),
            1 => peer.previous.as_mut(),
            _ => peer.next.as_mut(),
        };
        let Some(kp) = kp else {
            return self.drop_packet(Some(idx), Reject::UnknownKey);
        };
        if counter >= REJECT_AFTER_MESSAGES || !kp.replay.check(counter) {
            return self.drop_packet(Some(idx), Reject::Replayed);
        }
        let (head, rest) = packet.split_at_mut(HEADER_LEN);
        let (body, trailer) = rest.split_at_mut(end - HEADER_LEN);
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&trailer[8..8 + TAG_LEN]);
        if kp
            .recv
            .open_in_place_separate_tag(
                nonce(counter),
                Aad::from(&*head),
                Tag::from(tag),
                body,
                0..,
            )
            .is_err()
        {
            return self.drop_packet(Some(idx), Reject::AuthFailed);
        }
        kp.replay.accept(counter);
        if slot == 2 {
            // The initiator used the session we answered: it is now the one we send with.
            peer.previous = peer.current.take();
            peer.current = peer.next.take();
        }
        if packet[KIND_OFFSET] == KIND_KEEPALIVE {
            return Opened::Consumed;
        }
        Opened::Deliver(packet)
    }

    /// Whether a handshake message may take Diffie-Hellman work now; under load, only with a
    /// valid mac2 (otherwise a cookie reply goes back, within its own budget).
    fn admit_handshake(
        &mut self,
        now: Instant,
        idx: usize,
        from: SocketAddr,
        msg: &[u8],
        sender_index: u16,
    ) -> Result<(), Reject> {
        if !self.checker.mac1_ok(msg) {
            return Err(Reject::HandshakeBadMac);
        }
        // Every handshake message that knows our key counts toward the load, computed or not.
        let under_load = !self.load.take(now);
        if under_load && !self.checker.mac2_ok(now, from, msg) {
            if self.cookie_budget.take(now) {
                if let Some(body) = self.checker.reply(now, from, sender_index, msg) {
                    let mut out = self.message_header(KIND_COOKIE);
                    out.extend_from_slice(&body);
                    self.outbox.push_back((from, out));
                    self.counters.cookie_replies_sent += 1;
                }
            }
            return Err(Reject::HandshakeRateLimited);
        }
        if !self.peers[idx].handshake_budget.take(now) || !self.cap.take(now) {
            return Err(Reject::HandshakeRateLimited);
        }
        self.counters.handshakes_computed += 1;
        Ok(())
    }

    fn on_initiation(
        &mut self,
        now: Instant,
        idx: usize,
        from: SocketAddr,
        msg: &[u8],
    ) -> Result<(), Reject> {
        if msg.len() != INITIATION_LEN {
            return Err(Reject::Malformed);
        }
        let sender_index = u16_at(msg, HEADER_LEN);
        self.admit_handshake(now, idx, from, msg, sender_index)?;
        let noise = &msg[HEADER_LEN + 2..HEADER_LEN + 2 + INIT_NOISE_LEN];
        let mut hs = snow::Builder::new(params())
            .local_private_key(self.identity.x25519())
            .and_then(|b| b.prologue(PROLOGUE))
            .and_then(|b| b.build_responder())
            .map_err(|_| Reject::HandshakeInvalid)?;
        let mut payload = [0u8; INIT_PAYLOAD_LEN + 16];
        let n = hs
            .read_message(noise, &mut payload)
            .map_err(|_| Reject::HandshakeInvalid)?;
        if n != INIT_PAYLOAD_LEN {
            return Err(Reject::HandshakeInvalid);
        }
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&payload[..8]);
        let timestamp = u64::from_be_bytes(ts);
        let claimed = NodeId(u32::from_be_bytes([
            payload[8],
            payload[9],
            payload[10],
            payload[11],
        ]));
        let cipher = Cipher::choose(payload[12], self.ciphers);
        let Some(remote_static) = hs.get_remote_static() else {
            return Err(Reject::HandshakeInvalid);
        };
        let key = self.identify(idx, remote_static, claimed)?;
        let peer = &mut self.peers[idx];
        if timestamp <= peer.last_timestamp {
            return Err(Reject::HandshakeReplayed);
        }
        // The initiation is genuine and fresh: from here on it may change state.
        peer.last_timestamp = timestamp;
        if peer.key.is_none() {
            peer.key = Some(key);
            peer.jar = Some(CookieJar::new(&key));
        }
        peer.node = Some(claimed);
        self.identities.push_back((claimed, key));
        let local = fresh_index(peer);
        let mut out = self.message_header(KIND_RESPONSE);
        out.extend_from_slice(&local.to_be_bytes());
        out.extend_from_slice(&sender_index.to_be_bytes());
        let at = out.len();
        out.resize(RESPONSE_LEN, 0);
        let written = hs
            .write_message(
                &[&self.node.0.to_be_bytes()[..], &[cipher as u8]].concat(),
                &mut out[at..at + RESP_NOISE_LEN],
            )
            .map_err(|_| Reject::HandshakeInvalid)?;
        if written != RESP_NOISE_LEN {
            return Err(Reject::HandshakeInvalid);
        }
        let (i2r, r2i) = hs.dangerously_get_raw_split();
        let peer = &mut self.peers[idx];
        if let Some(jar) = peer.jar.as_mut() {
            jar.stamp(now, &mut out);
        }
        peer.next = Keypair::new(cipher, r2i, i2r, local, sender_index, now, false);
        peer.handshakes += 1;
        self.counters.handshakes_answered += 1;
        self.outbox.push_back((from, out));
        Ok(())
    }

    /// Checks that the static key an initiation proved belongs to the neighbour at this
    /// address and may claim `claimed` as its node id.
    fn identify(
        &self,
        idx: usize,
        remote_static: &[u8],
        claimed: NodeId,
    ) -> Result<PublicKey, Reject> {
        let peer = &self.peers[idx];
        if peer.node.is_some_and(|n| n != claimed) {
            return Err(Reject::HandshakeWrongKey);
        }
        let key = match peer.key {
            Some(k) => k,
            None => self
                .admitted
                .as_ref()
                .and_then(|a| a.get(&claimed).copied())
                .ok_or(Reject::HandshakeWrongKey)?,
        };
        if key.x25519()[..] != *remote_static {
            return Err(Reject::HandshakeWrongKey);
        }
        if let Some(a) = &self.admitted {
            if a.get(&claimed) != Some(&key) {
                return Err(Reject::HandshakeWrongKey);
            }
        }
        Ok(key)
    }

    fn on_response(
        &mut self,
        now: Instant,
        idx: usize,
        from: SocketAddr,
        msg: &[u8],
    ) -> Result<(), Reject> {
        if msg.len() != RESPONSE_LEN {
            return Err(Reject::Malformed);
        }
        let sender_index = u16_at(msg, HEADER_LEN);
        let receiver_index = u16_at(msg, HEADER_LEN + 2);
        if self.peers[idx]
            .pending
            .as_ref()
            .is_none_or(|p| p.index != receiver_index)
        {
            return Err(Reject::HandshakeUnexpected);
        }
        self.admit_handshake(now, idx, from, msg, sender_index)?;
        let peer = &mut self.peers[idx];
        let Some(pending) = peer.pending.as_mut() else {
            return Err(Reject::HandshakeUnexpected);
        };
        let noise = &msg[HEADER_LEN + 4..HEADER_LEN + 4 + RESP_NOISE_LEN];
        let mut payload = [0u8; RESP_PAYLOAD_LEN + 16];
        // A failed read leaves the handshake as it was (snow restores its state), so forged
        // responses cannot spoil the genuine one.
        let n = pending
            .hs
            .read_message(noise, &mut payload)
            .map_err(|_| Reject::HandshakeInvalid)?;
        if n != RESP_PAYLOAD_LEN || !pending.hs.is_handshake_finished() {
            return Err(Reject::HandshakeInvalid);
        }
        let claimed = NodeId(u32::from_be_bytes([
            payload[0], payload[1], payload[2], payload[3],
        ]));
        // The responder must pick from what we offered (and still run).
        let acceptable = pending.offered & self.ciphers;
        let Some(cipher) = Cipher::from_u8(payload[4]).filter(|c| *c as u8 & acceptable != 0)
        else {
            return Err(Reject::HandshakeInvalid);
        };
        let admitted_ok = self
            .admitted
            .as_ref()
            .is_none_or(|a| a.get(&claimed) == peer.key.as_ref());
        if peer.node.is_some_and(|n| n != claimed) || !admitted_ok {
            peer.pending = None;
            return Err(Reject::HandshakeWrongKey);
        }
        let (i2r, r2i) = pending.hs.dangerously_get_raw_split();
        if peer.node.is_none() {
            peer.node = Some(claimed);
        }
        if let Some(key) = peer.key {
            self.identities.push_back((claimed, key));
        }
        let local = pending.index;
        peer.pending = None;
        peer.previous = peer.current.take();
        peer.current = Keypair::new(cipher, i2r, r2i, local, sender_index, now, true);
        peer.handshakes += 1;
        self.counters.handshakes_completed += 1;
        // Confirm the session at once, so the responder can send with it.
        let addr = peer.addr;
        let mut keepalive = self.message_header(KIND_KEEPALIVE);
        if self.seal(now, addr, &mut keepalive, 0).is_ok() {
            self.outbox.push_back((addr, keepalive));
        }
        Ok(())
    }

    fn on_cookie(&mut self, now: Instant, idx: usize, msg: &[u8]) -> Result<(), Reject> {
        if msg.len() != COOKIE_REPLY_LEN {
            return Err(Reject::Malformed);
        }
        let body = &msg[HEADER_LEN..];
        let receiver_index = u16_at(body, 0);
        let peer = &mut self.peers[idx];
        if peer
            .pending
            .as_ref()
            .is_none_or(|p| p.index != receiver_index)
        {
            return Err(Reject::HandshakeUnexpected);
        }
        let Some(jar) = peer.jar.as_mut() else {
            return Err(Reject::HandshakeUnexpected);
        };
        if !jar.consume(now, body) {
            return Err(Reject::HandshakeInvalid);
        }
        self.counters.cookies_received += 1;
        // The responder dropped our initiation: send a new one, with mac2, soon.
        peer.pending = None;
        peer.next_attempt = peer.next_attempt.min(now + RETRY_AFTER_COOKIE);
        Ok(())
    }

    // ----- send ---------------------------------------------------------------------------

    /// Authenticates and encrypts the datagram at `buf[start..]` (header, then body) in place
    /// for the neighbour at `to` and appends its trailer: nothing is allocated while `buf`
    /// has room, so a caller can seal datagrams where it queued them. Without a session the
    /// datagram cannot leave; a handshake is started (the node's own retries — hellos, ARQ,
    /// flooding — resend).
    pub fn seal(
        &mut self,
        now: Instant,
        to: SocketAddr,
        buf: &mut Vec<u8>,
        start: usize,
    ) -> Result<(), SealError> {
        let Some(&idx) = self.by_addr.get(&to) else {
            return Err(SealError::NotANeighbour);
        };
        let Some(packet) = buf.get_mut(start..).filter(|p| p.len() >= HEADER_LEN) else {
            return Err(SealError::Malformed);
        };
        let peer = &mut self.peers[idx];
        let Some(kp) = peer.current.as_mut().filter(|k| k.can_send(now)) else {
            self.counters.sent_without_session += 1;
            self.initiate(now, idx);
            return Err(SealError::NoSession);
        };
        let counter = kp.sent;
        kp.sent += 1;
        packet[AUTH_LEN_OFFSET] = TRAILER_LEN as u8;
        packet[KEY_ID_OFFSET..KEY_ID_OFFSET + 2].copy_from_slice(&kp.remote.to_be_bytes());
        let (head, body) = packet.split_at_mut(HEADER_LEN);
        let Ok(tag) = kp
            .send
            .seal_in_place_separate_tag(nonce(counter), Aad::from(&*head), body)
        else {
            return Err(SealError::Malformed);
        };
        buf.extend_from_slice(&counter.to_le_bytes());
        buf.extend_from_slice(tag.as_ref());
        if kp.wants_rekey(now) {
            self.initiate(now, idx);
        }
        Ok(())
    }

    fn message_header(&self, kind: u8) -> Vec<u8> {
        let mut h = Vec::with_capacity(INITIATION_LEN + TRAILER_LEN);
        h.extend_from_slice(&MAGIC.to_be_bytes());
        h.extend_from_slice(&[WIRE_VERSION, kind, 0, 0, 0, 0]);
        h.extend_from_slice(&self.node.0.to_be_bytes());
        h.extend_from_slice(&0u32.to_be_bytes());
        h
    }

    fn timestamp(&mut self, now: Instant) -> u64 {
        let t = self
            .wall_clock_us
            .saturating_add(now.saturating_since(self.started).as_micros() as u64);
        self.last_timestamp = t.max(self.last_timestamp.saturating_add(1));
        self.last_timestamp
    }

    /// Sends an initiation to peer `idx` if one may leave now.
    fn initiate(&mut self, now: Instant, idx: usize) {
        let peer = &self.peers[idx];
        let Some(key) = peer.key else { return };
        if now < peer.next_attempt {
            return;
        }
        let Ok(mut hs) = snow::Builder::new(params())
            .local_private_key(self.identity.x25519())
            .and_then(|b| b.remote_public_key(key.x25519()))
            .and_then(|b| b.prologue(PROLOGUE))
            .and_then(|b| b.build_initiator())
        else {
            return;
        };
        let timestamp = self.timestamp(now);
        let mut payload = [0u8; INIT_PAYLOAD_LEN];
        payload[..8].copy_from_slice(&timestamp.to_be_bytes());
        payload[8..12].copy_from_slice(&self.node.0.to_be_bytes());
        payload[12] = self.ciphers;
        let peer = &mut self.peers[idx];
        peer.pending = None;
        let index = fresh_index(peer);
        let mut out = self.message_header(KIND_INITIATION);
        out.extend_from_slice(&index.to_be_bytes());
        let at = out.len();
        out.resize(INITIATION_LEN, 0);
        match hs.write_message(&payload, &mut out[at..at + INIT_NOISE_LEN]) {
            Ok(n) if n == INIT_NOISE_LEN => {}
            _ => return,
        }
        let peer = &mut self.peers[idx];
        if let Some(jar) = peer.jar.as_mut() {
            jar.stamp(now, &mut out);
        }
        peer.pending = Some(Pending {
            hs,
            index,
            offered: self.ciphers,
        });
        let jitter = Duration::from_micros(rand::Rng::gen_range(
            &mut rand::thread_rng(),
            0..REKEY_TIMEOUT.as_micros() as u64 / 3,
        ));
        peer.next_attempt = now + REKEY_TIMEOUT + jitter;
        self.counters.initiations_sent += 1;
        self.outbox.push_back((peer.addr, out));
    }

    // ----- timers -------------------------------------------------------------------------

    /// A node id and the key a handshake proved for it (each completed handshake yields one):
    /// the key that may sign that node's flooded state.
    pub fn poll_identity(&mut self) -> Option<(NodeId, PublicKey)> {
        self.identities.pop_front()
    }

    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.outbox.pop_front()
    }

    pub fn poll_timeout(&self, now: Instant) -> Option<Instant> {
        let mut t: Option<Instant> = None;
        let mut at = |x: Instant| t = Some(t.map_or(x, |t| t.min(x)));
        for p in &self.peers {
            if p.wants_handshake(now) {
                at(p.next_attempt);
            } else if let Some(k) = &p.current {
                let after = if k.initiator {
                    REKEY_AFTER_TIME
                } else {
                    RESPONDER_REKEY_AFTER
                };
                at(k.born + after);
            }
            for k in [&p.current, &p.previous, &p.next].into_iter().flatten() {
                at(k.born + REJECT_AFTER_TIME);
            }
        }
        t
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        for idx in 0..self.peers.len() {
            let p = &mut self.peers[idx];
            for slot in [&mut p.current, &mut p.previous, &mut p.next] {
                if slot.as_ref().is_some_and(|k| !k.alive(now)) {
                    *slot = None;
                }
            }
            if p.wants_handshake(now) && now >= p.next_attempt {
                self.initiate(now, idx);
            }
        }
    }
}

/// A key id unused among the peer's live sessions and pending handshake (never 0).
fn fresh_index(peer: &Peer) -> u16 {
    let mut rng = rand::thread_rng();
    loop {
        let i: u16 = rand::Rng::gen(&mut rng);
        if i != 0 && peer.local_indices().all(|used| used != i) {
            return i;
        }
    }
}
