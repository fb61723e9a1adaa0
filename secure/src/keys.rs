//! Node keys. A node's secret is one 32-byte seed (the key file); from it derive, with
//! separate labels, an Ed25519 signing key (origin signatures of flooded state) and an X25519
//! static key (the Noise handshake of every link). The public key names both halves
//! (64 bytes: Ed25519 then X25519), so one string identifies a node for links and for
//! signatures, and no key is used for two purposes.
//!
//! Text form: standard base64 (88 characters for a public key, 44 for a secret), as WireGuard
//! writes its keys; the URL-safe alphabet and missing padding are accepted too.

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine;
use blake2::{Blake2s256, Digest};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use std::fmt;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use thiserror::Error;
use zeroize::{Zeroize, Zeroizing};

pub const SECRET_LEN: usize = 32;
pub const PUBLIC_LEN: usize = 64;
pub const SIGNATURE_LEN: usize = 64;

pub type Signature = [u8; SIGNATURE_LEN];

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KeyError {
    #[error("not base64")]
    NotBase64,
    #[error("{0} bytes, expected {1}")]
    Length(usize, usize),
    #[error("not a valid Ed25519 point")]
    BadPoint,
}

#[derive(Debug, Error)]
pub enum KeyFileError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}: already exists (use --force to replace it)")]
    Exists(String),
    #[error("{path}: readable by other users (mode {mode:04o}); run chmod 600 {path}")]
    Permissive { path: String, mode: u32 },
    #[error("{path}: {source}")]
    Invalid { path: String, source: KeyError },
}

fn decode_base64(text: &str, len: usize) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    let text = text.trim();
    let bytes = [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|e| e.decode(text).ok())
        .ok_or(KeyError::NotBase64)?;
    let bytes = Zeroizing::new(bytes);
    if bytes.len() != len {
        return Err(KeyError::Length(bytes.len(), len));
    }
    Ok(bytes)
}

fn derive(label: &[u8], seed: &[u8; SECRET_LEN]) -> Zeroizing<[u8; 32]> {
    let mut h = Blake2s256::new();
    h.update(label);
    h.update(seed);
    let mut out = Zeroizing::new([0u8; 32]);
    out.copy_from_slice(&h.finalize());
    out
}

/// A node's public identity: its Ed25519 verifying key and its X25519 static key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey {
    ed: [u8; 32],
    x: [u8; 32],
}

impl PublicKey {
    pub fn from_bytes(bytes: &[u8]) -> Result<PublicKey, KeyError> {
        if bytes.len() != PUBLIC_LEN {
            return Err(KeyError::Length(bytes.len(), PUBLIC_LEN));
        }
        let mut ed = [0u8; 32];
        let mut x = [0u8; 32];
        ed.copy_from_slice(&bytes[..32]);
        x.copy_from_slice(&bytes[32..]);
        VerifyingKey::from_bytes(&ed).map_err(|_| KeyError::BadPoint)?;
        Ok(PublicKey { ed, x })
    }

    pub fn to_bytes(&self) -> [u8; PUBLIC_LEN] {
        let mut out = [0u8; PUBLIC_LEN];
        out[..32].copy_from_slice(&self.ed);
        out[32..].copy_from_slice(&self.x);
        out
    }

    pub fn parse(text: &str) -> Result<PublicKey, KeyError> {
        PublicKey::from_bytes(&decode_base64(text, PUBLIC_LEN)?)
    }

    /// The X25519 half, for the Noise handshake.
    pub fn x25519(&self) -> &[u8; 32] {
        &self.x
    }

    /// Checks `signature` over `domain || body` (strict Ed25519: no malleable encodings).
    pub fn verify(&self, domain: &[u8], body: &[u8], signature: &Signature) -> bool {
        let Ok(key) = VerifyingKey::from_bytes(&self.ed) else {
            return false;
        };
        let sig = ed25519_dalek::Signature::from_bytes(signature);
        let mut msg = Vec::with_capacity(domain.len() + body.len());
        msg.extend_from_slice(domain);
        msg.extend_from_slice(body);
        key.verify_strict(&msg, &sig).is_ok()
    }

    /// A short form for logs: the first 8 characters of the base64 text.
    pub fn short(&self) -> String {
        self.to_string().chars().take(8).collect()
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&STANDARD.encode(self.to_bytes()))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({}…)", self.short())
    }
}

impl std::str::FromStr for PublicKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        PublicKey::parse(s)
    }
}

impl serde::Serialize for PublicKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A node's secret: the seed both private keys derive from. Wiped from memory when dropped.
pub struct SecretKey {
    seed: Zeroizing<[u8; SECRET_LEN]>,
    signing: SigningKey,
    x25519: Zeroizing<[u8; 32]>,
    public: PublicKey,
}

impl SecretKey {
    pub fn generate() -> SecretKey {
        let mut seed = Zeroizing::new([0u8; SECRET_LEN]);
        rand::Rng::fill(&mut rand::rngs::OsRng, &mut seed[..]);
        SecretKey::from_seed(&seed)
    }

    pub fn from_seed(seed: &[u8; SECRET_LEN]) -> SecretKey {
        let signing = SigningKey::from_bytes(&derive(b"weft ed25519 v1", seed));
        let x25519 = derive(b"weft x25519 v1", seed);
        let x_public =
            x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(*x25519)).to_bytes();
        let public = PublicKey {
            ed: signing.verifying_key().to_bytes(),
            x: x_public,
        };
        SecretKey {
            seed: Zeroizing::new(*seed),
            signing,
            x25519,
            public,
        }
    }

    pub fn parse(text: &str) -> Result<SecretKey, KeyError> {
        let bytes = decode_base64(text, SECRET_LEN)?;
        let mut seed = Zeroizing::new([0u8; SECRET_LEN]);
        seed.copy_from_slice(&bytes);
        Ok(SecretKey::from_seed(&seed))
    }

    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(STANDARD.encode(&self.seed[..]))
    }

    pub fn public(&self) -> PublicKey {
        self.public
    }

    /// The X25519 static private key, for the Noise handshake.
    pub(crate) fn x25519(&self) -> &[u8; 32] {
        &self.x25519
    }

    /// Signs `domain || body`. Ed25519 is deterministic: the same record always carries the
    /// same signature, so two nodes holding one record hold the same bytes.
    pub fn sign(&self, domain: &[u8], body: &[u8]) -> Signature {
        let mut msg = Vec::with_capacity(domain.len() + body.len());
        msg.extend_from_slice(domain);
        msg.extend_from_slice(body);
        self.signing.sign(&msg).to_bytes()
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey(public {})", self.public.short())
    }
}

/// Writes a new secret key file readable only by its owner (0600). An existing file is only
/// replaced with `force`.
pub fn write_key_file(path: &Path, key: &SecretKey, force: bool) -> Result<(), KeyFileError> {
    let io = |source| KeyFileError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).mode(0o600);
    if force {
        opts.create(true).truncate(true);
    } else {
        opts.create_new(true);
    }
    let mut f = opts.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            KeyFileError::Exists(path.display().to_string())
        } else {
            io(e)
        }
    })?;
    // An existing file keeps its mode when truncated: tighten it before writing the secret.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(io)?;
    let mut text = key.to_base64();
    text.push('\n');
    let written = f.write_all(text.as_bytes()).and_then(|_| f.sync_all());
    text.zeroize();
    written.map_err(io)
}

/// Reads a secret key file, refusing one that users other than its owner can read.
pub fn read_key_file(path: &Path) -> Result<SecretKey, KeyFileError> {
    let p = path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|source| KeyFileError::Io {
        path: p.clone(),
        source,
    })?;
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::Permissive { path: p, mode });
    }
    let text =
        Zeroizing::new(
            std::fs::read_to_string(path).map_err(|source| KeyFileError::Io {
                path: p.clone(),
                source,
            })?,
        );
    SecretKey::parse(&text).map_err(|source| KeyFileError::Invalid { path: p, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trips_and_derivation_is_deterministic() {
        let k = SecretKey::generate();
        let again = SecretKey::parse(&k.to_base64()).unwrap();
        assert_eq!(again.public(), k.public());
        let text = k.public().to_string();
        assert_eq!(text.len(), 88);
        assert_eq!(PublicKey::parse(&text).unwrap(), k.public());
        let url = text.replace('+', "-").replace('/', "_");
        assert_eq!(
            PublicKey::parse(url.trim_end_matches('=')).unwrap(),
            k.public()
        );
        assert_ne!(
            SecretKey::generate().public(),
            k.public(),
            "fresh keys differ"
        );
    }

    #[test]
    fn rejects_bad_text() {
        assert_eq!(PublicKey::parse("not base64!"), Err(KeyError::NotBase64));
        assert!(matches!(
            PublicKey::parse(&STANDARD.encode([1u8; 10])),
            Err(KeyError::Length(10, 64))
        ));
        assert!(SecretKey::parse(&STANDARD.encode([1u8; 33])).is_err());
    }

    #[test]
    fn signatures_bind_key_domain_and_body() {
        let k = SecretKey::generate();
        let sig = k.sign(b"d1", b"body");
        assert_eq!(sig, k.sign(b"d1", b"body"), "deterministic");
        assert!(k.public().verify(b"d1", b"body", &sig));
        assert!(!k.public().verify(b"d2", b"body", &sig));
        assert!(!k.public().verify(b"d1", b"bodY", &sig));
        assert!(!SecretKey::generate().public().verify(b"d1", b"body", &sig));
        let mut bad = sig;
        bad[5] ^= 1;
        assert!(!k.public().verify(b"d1", b"body", &bad));
    }

    #[test]
    fn key_files_are_private_and_not_overwritten() {
        let dir = std::env::temp_dir().join(format!("weft-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("node.key");
        let _ = std::fs::remove_file(&path);
        let k = SecretKey::generate();
        write_key_file(&path, &k, false).unwrap();
        let mode = std::fs::metadata(&path).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(read_key_file(&path).unwrap().public(), k.public());
        assert!(matches!(
            write_key_file(&path, &SecretKey::generate(), false),
            Err(KeyFileError::Exists(_))
        ));
        assert_eq!(read_key_file(&path).unwrap().public(), k.public());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            read_key_file(&path),
            Err(KeyFileError::Permissive { mode: 0o644, .. })
        ));
        let k2 = SecretKey::generate();
        write_key_file(&path, &k2, true).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert_eq!(read_key_file(&path).unwrap().public(), k2.public());
        std::fs::remove_dir_all(&dir).ok();
    }
}
