//! Handshake MACs and cookies (WireGuard §5.4). Every handshake message ends with
//! `mac1 | mac2` (16 bytes each):
//! - `mac1` is keyed by a hash of the *receiver's* public key: a responder rejects, for one
//!   BLAKE2s, any message from someone who does not know whom they are talking to.
//! - `mac2` is keyed by a cookie: a MAC of the sender's address under a secret the responder
//!   rotates every two minutes. A responder under load answers messages without a valid
//!   `mac2` with an encrypted cookie reply (one XChaCha20-Poly1305, no Diffie-Hellman) and
//!   processes only messages that carry one, so a flood from addresses that cannot receive
//!   costs it almost nothing.

use crate::keys::PublicKey;
use blake2::digest::consts::U16;
use blake2::digest::{FixedOutput, KeyInit, Mac};
use blake2::{Blake2s256, Blake2sMac, Digest};
use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use std::net::SocketAddr;
use std::time::Duration;
use weft_core::Instant;

pub const MAC_LEN: usize = 16;
pub const COOKIE_LEN: usize = 16;
/// Cookie secrets are replaced this often, so a cookie is good for at most twice as long.
pub const COOKIE_SECRET_LIFETIME: Duration = Duration::from_secs(120);
/// An initiator uses a received cookie this long (a little less than the secret lasts).
pub const COOKIE_USE_LIFETIME: Duration = Duration::from_secs(110);
const NONCE_LEN: usize = 24;
/// receiver index | nonce | encrypted cookie + tag.
pub const COOKIE_BODY_LEN: usize = 2 + NONCE_LEN + COOKIE_LEN + 16;

type Mac16 = Blake2sMac<U16>;

fn hash_key(label: &[u8], key: &PublicKey) -> [u8; 32] {
    let mut h = Blake2s256::new();
    Digest::update(&mut h, label);
    Digest::update(&mut h, key.to_bytes());
    h.finalize().into()
}

fn mac(key: &[u8], parts: &[&[u8]]) -> [u8; MAC_LEN] {
    // BLAKE2s accepts keys up to 32 bytes; every key here is 16 or 32.
    let mut m = match <Mac16 as KeyInit>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return [0; MAC_LEN],
    };
    for p in parts {
        Mac::update(&mut m, p);
    }
    m.finalize_fixed().into()
}

fn address_bytes(addr: SocketAddr) -> Vec<u8> {
    match addr {
        SocketAddr::V4(a) => [&a.ip().octets()[..], &a.port().to_be_bytes()].concat(),
        SocketAddr::V6(a) => [&a.ip().octets()[..], &a.port().to_be_bytes()].concat(),
    }
}

/// Constant-time equality for MACs.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The responder's side: checks both MACs and makes cookie replies.
pub struct CookieChecker {
    mac1_key: [u8; 32],
    reply_key: [u8; 32],
    secret: [u8; 32],
    secret_born: Option<Instant>,
}

impl CookieChecker {
    /// `local`: the public key of the node that receives handshake messages.
    pub fn new(local: &PublicKey) -> Self {
        CookieChecker {
            mac1_key: hash_key(b"weft mac1", local),
            reply_key: hash_key(b"weft cookie", local),
            secret: [0; 32],
            secret_born: None,
        }
    }

    /// `msg` ends with mac1 | mac2.
    pub fn mac1_ok(&self, msg: &[u8]) -> bool {
        let Some(body_len) = msg.len().checked_sub(2 * MAC_LEN) else {
            return false;
        };
        let expect = mac(&self.mac1_key, &[&msg[..body_len]]);
        same(&expect, &msg[body_len..body_len + MAC_LEN])
    }

    fn rotate(&mut self, now: Instant) {
        if self
            .secret_born
            .is_none_or(|t| now.saturating_since(t) >= COOKIE_SECRET_LIFETIME)
        {
            rand::Rng::fill(&mut rand::rngs::OsRng, &mut self.secret[..]);
            self.secret_born = Some(now);
        }
    }

    fn cookie(&mut self, now: Instant, src: SocketAddr) -> [u8; COOKIE_LEN] {
        self.rotate(now);
        mac(&self.secret, &[&address_bytes(src)])
    }

    /// Whether `msg` carries a mac2 made with a current cookie for `src`.
    pub fn mac2_ok(&mut self, now: Instant, src: SocketAddr, msg: &[u8]) -> bool {
        let Some(body_len) = msg.len().checked_sub(MAC_LEN) else {
            return false;
        };
        let cookie = self.cookie(now, src);
        same(&mac(&cookie, &[&msg[..body_len]]), &msg[body_len..])
    }

    /// The body of a cookie reply to `msg` (whose sender index is `receiver_index`).
    pub fn reply(
        &mut self,
        now: Instant,
        src: SocketAddr,
        receiver_index: u16,
        msg: &[u8],
    ) -> Option<[u8; COOKIE_BODY_LEN]> {
        let body_len = msg.len().checked_sub(2 * MAC_LEN)?;
        let mac1 = &msg[body_len..body_len + MAC_LEN];
        let mut out = [0u8; COOKIE_BODY_LEN];
        out[..2].copy_from_slice(&receiver_index.to_be_bytes());
        let mut nonce = [0u8; NONCE_LEN];
        rand::Rng::fill(&mut rand::rngs::OsRng, &mut nonce[..]);
        out[2..2 + NONCE_LEN].copy_from_slice(&nonce);
        let mut cookie = self.cookie(now, src);
        let cipher = XChaCha20Poly1305::new((&self.reply_key).into());
        let tag = cipher
            .encrypt_in_place_detached(XNonce::from_slice(&nonce), mac1, &mut cookie)
            .ok()?;
        out[2 + NONCE_LEN..2 + NONCE_LEN + COOKIE_LEN].copy_from_slice(&cookie);
        out[2 + NONCE_LEN + COOKIE_LEN..].copy_from_slice(&tag);
        Some(out)
    }
}

/// The initiator's side for one peer: stamps MACs on what it sends, keeps the cookie the
/// peer handed out.
pub struct CookieJar {
    mac1_key: [u8; 32],
    reply_key: [u8; 32],
    cookie: Option<([u8; COOKIE_LEN], Instant)>,
    /// mac1 of the last two messages sent (an initiation and a response may cross): a cookie
    /// reply must be bound to one of them.
    last_mac1: [Option<[u8; MAC_LEN]>; 2],
}

impl CookieJar {
    /// `peer`: the public key of the node the messages go to.
    pub fn new(peer: &PublicKey) -> Self {
        CookieJar {
            mac1_key: hash_key(b"weft mac1", peer),
            reply_key: hash_key(b"weft cookie", peer),
            cookie: None,
            last_mac1: [None; 2],
        }
    }

    /// Fills in the last 32 bytes of `msg` (mac1, then mac2 or zeros without a fresh cookie).
    pub fn stamp(&mut self, now: Instant, msg: &mut [u8]) {
        let Some(body_len) = msg.len().checked_sub(2 * MAC_LEN) else {
            return;
        };
        let mac1 = mac(&self.mac1_key, &[&msg[..body_len]]);
        msg[body_len..body_len + MAC_LEN].copy_from_slice(&mac1);
        self.last_mac1 = [Some(mac1), self.last_mac1[0]];
        let mac2 = match self.cookie {
            Some((c, at)) if now.saturating_since(at) < COOKIE_USE_LIFETIME => {
                mac(&c, &[&msg[..body_len + MAC_LEN]])
            }
            _ => [0; MAC_LEN],
        };
        msg[body_len + MAC_LEN..].copy_from_slice(&mac2);
    }

    /// Takes a cookie reply body; false if it does not decrypt against our last message.
    pub fn consume(&mut self, now: Instant, body: &[u8]) -> bool {
        if body.len() != COOKIE_BODY_LEN {
            return false;
        }
        let nonce = XNonce::from_slice(&body[2..2 + NONCE_LEN]);
        let tag = chacha20poly1305::Tag::from_slice(&body[2 + NONCE_LEN + COOKIE_LEN..]);
        let cipher = XChaCha20Poly1305::new((&self.reply_key).into());
        let opened = self.last_mac1.iter().flatten().find_map(|mac1| {
            let mut cookie = [0u8; COOKIE_LEN];
            cookie.copy_from_slice(&body[2 + NONCE_LEN..2 + NONCE_LEN + COOKIE_LEN]);
            cipher
                .decrypt_in_place_detached(nonce, mac1, &mut cookie, tag)
                .ok()
                .map(|_| cookie)
        });
        let Some(cookie) = opened else {
            return false;
        };
        self.cookie = Some((cookie, now));
        true
    }

    pub fn has_cookie(&self, now: Instant) -> bool {
        self.cookie
            .is_some_and(|(_, at)| now.saturating_since(at) < COOKIE_USE_LIFETIME)
    }
}

/// A token bucket: `rate` tokens per second, at most `burst` saved up.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Option<Instant>,
}

impl TokenBucket {
    pub fn new(rate: f64, burst: f64) -> Self {
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            at: None,
        }
    }

    fn refill(&mut self, now: Instant) {
        if let Some(at) = self.at {
            let dt = now.saturating_since(at).as_secs_f64();
            self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        }
        self.at = Some(now);
    }

    pub fn take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether a token is there, without taking it.
    pub fn available(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= 1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::SecretKey;

    fn addr(p: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], p))
    }

    #[test]
    fn mac1_needs_the_receivers_key() {
        let responder = SecretKey::generate().public();
        let checker = CookieChecker::new(&responder);
        let mut msg = vec![7u8; 100];
        CookieJar::new(&responder).stamp(Instant::ZERO, &mut msg);
        assert!(checker.mac1_ok(&msg));
        let mut wrong = vec![7u8; 100];
        CookieJar::new(&SecretKey::generate().public()).stamp(Instant::ZERO, &mut wrong);
        assert!(!checker.mac1_ok(&wrong));
        msg[3] ^= 1;
        assert!(!checker.mac1_ok(&msg));
        assert!(!checker.mac1_ok(&[0u8; 10]));
    }

    #[test]
    fn cookie_round_trip_makes_mac2_valid_for_that_address_only() {
        let responder = SecretKey::generate().public();
        let mut checker = CookieChecker::new(&responder);
        let mut jar = CookieJar::new(&responder);
        let t = Instant::ZERO;
        let mut msg = vec![1u8; 120];
        jar.stamp(t, &mut msg);
        assert!(!checker.mac2_ok(t, addr(1), &msg), "no cookie yet");
        let reply = checker.reply(t, addr(1), 9, &msg).unwrap();
        assert!(jar.consume(t, &reply));
        assert!(jar.has_cookie(t));
        jar.stamp(t, &mut msg);
        assert!(checker.mac2_ok(t, addr(1), &msg));
        assert!(!checker.mac2_ok(t, addr(2), &msg), "cookie is per address");
        let later = t + COOKIE_SECRET_LIFETIME;
        assert!(
            !checker.mac2_ok(later, addr(1), &msg),
            "secret rotated: old cookies die"
        );
        let mut forged = reply;
        forged[30] ^= 1;
        assert!(!jar.consume(t, &forged));
    }

    #[test]
    fn bucket_refills_at_its_rate() {
        let mut b = TokenBucket::new(10.0, 2.0);
        let t = Instant::ZERO;
        assert!(b.take(t) && b.take(t));
        assert!(!b.take(t));
        assert!(b.take(t + Duration::from_millis(100)));
        assert!(!b.take(t + Duration::from_millis(100)));
        assert!(b.take(t + Duration::from_secs(10)) && b.take(t + Duration::from_secs(10)));
        assert!(!b.take(t + Duration::from_secs(10)), "burst caps savings");
    }
}
