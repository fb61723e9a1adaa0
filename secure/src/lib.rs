//! Link security for weft, modelled on WireGuard: every node has a static key pair; every
//! link runs a Noise IK handshake and then carries ChaCha20-Poly1305 packets with a replay
//! window and periodic rekeying ([`link`]); handshake floods meet cookies and rate limits
//! ([`cookie`]); flooded routing state is signed with the origin's Ed25519 key ([`keys`]) and
//! node ids are bound to keys by the admitted list ([`admitted`]) or by neighbours.
//!
//! Everything here is sans-I/O except the key-file helpers: callers pass `now` and bytes.

pub mod admitted;
pub mod cookie;
pub mod keys;
pub mod link;
pub mod replay;

#[cfg(test)]
mod link_tests;

pub use admitted::Admitted;
pub use keys::{
    read_key_file, write_key_file, KeyError, KeyFileError, PublicKey, SecretKey, Signature,
    SIGNATURE_LEN,
};
pub use link::{
    Cipher, LinkConfig, LinkCounters, Links, Opened, PeerConfig, PeerStatus, Reject, SealError,
    TRAILER_LEN,
};

/// Signature domains: what a signature is about is part of what it signs.
pub mod domain {
    pub const LINK_STATE: &[u8] = b"weft link-state advert v1\0";
    pub const MEMBERSHIP: &[u8] = b"weft membership record v1\0";
    pub const SERVICE: &[u8] = b"weft service record v1\0";
}
