//! The flooded service record: which service addresses one node serves right now, and which
//! of them it holds (claims). One record per node, versioned like a membership record:
//! `(epoch, seq)`, where the epoch grows across runs of the node and `seq` within a run.
//!
//! ```text
//! origin u32 | epoch u64 | seq u32 | count u16 | count × (address u32 | flags u8)
//!   | record flags u8 | [signature 64]
//! ```
//!
//! Record flag bit 0: an Ed25519 signature by the origin follows (secure overlays sign every
//! record, as they sign adverts and membership records). It covers the domain
//! `weft_secure::domain::SERVICE` and the encoding with the record flags zero and no
//! signature, so only the origin's key can make or alter a record.

use weft_core::{DecodeError, NodeId, Reader, Writer};
use weft_secure::{PublicKey, SecretKey, Signature, SIGNATURE_LEN};

/// Record flag: a signature follows.
const FLAG_SIGNED: u8 = 1;

/// The entry's node holds the address (it is the owner it computed and told everyone).
pub const FLAG_CLAIMED: u8 = 1;

/// Upper bound on entries in one record: what one flooded record can carry with room left.
pub const MAX_ENTRIES: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    pub epoch: u64,
    pub seq: u32,
}

impl Version {
    /// The total order flooding acknowledges (`epoch << 32 | seq`).
    pub fn as_u128(self) -> u128 {
        ((self.epoch as u128) << 32) | self.seq as u128
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub address: NodeId,
    pub claimed: bool,
}

/// Equality ignores the signature: it proves a record, it is not part of it.
#[derive(Debug, Clone)]
pub struct ServiceRecord {
    pub origin: NodeId,
    pub version: Version,
    /// Sorted by address, unique: one record, one encoding.
    pub entries: Vec<Entry>,
    pub signature: Option<Box<Signature>>,
}

impl PartialEq for ServiceRecord {
    fn eq(&self, other: &Self) -> bool {
        (self.origin, self.version, &self.entries) == (other.origin, other.version, &other.entries)
    }
}

impl Eq for ServiceRecord {}

impl ServiceRecord {
    pub fn encoded_len(&self) -> usize {
        4 + 8
            + 4
            + 2
            + 5 * self.entries.len()
            + 1
            + self.signature.as_ref().map_or(0, |_| SIGNATURE_LEN)
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        self.encode_with(out, true);
    }

    fn encode_with(&self, out: &mut Vec<u8>, with_signature: bool) {
        let mut w = Writer::new(out);
        w.u32(self.origin.0)
            .u64(self.version.epoch)
            .u32(self.version.seq)
            .u16(self.entries.len() as u16);
        for e in &self.entries {
            w.u32(e.address.0)
                .u8(if e.claimed { FLAG_CLAIMED } else { 0 });
        }
        match self.signature.as_deref().filter(|_| with_signature) {
            Some(sig) => {
                w.u8(FLAG_SIGNED);
                w.bytes(sig);
            }
            None => {
                w.u8(0);
            }
        }
    }

    /// The bytes a signature covers: the unsigned encoding.
    pub fn signed_body(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode_with(&mut out, false);
        out
    }

    /// This record signed with its origin's key.
    pub fn signed(mut self, key: &SecretKey) -> Self {
        let sig = key.sign(weft_secure::domain::SERVICE, &self.signed_body());
        self.signature = Some(Box::new(sig));
        self
    }

    /// Whether the record carries a valid signature by `key`.
    pub fn verify(&self, key: &PublicKey) -> bool {
        self.signature
            .as_deref()
            .is_some_and(|sig| key.verify(weft_secure::domain::SERVICE, &self.signed_body(), sig))
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode(&mut out);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<ServiceRecord, DecodeError> {
        let mut r = Reader::new(bytes);
        let origin = NodeId(r.u32()?);
        let epoch = r.u64()?;
        let seq = r.u32()?;
        let n = r.u16()? as usize;
        if n > MAX_ENTRIES {
            return Err(DecodeError::Invalid("too many service entries"));
        }
        let mut entries = Vec::with_capacity(n);
        for _ in 0..n {
            let address = NodeId(r.u32()?);
            let flags = r.u8()?;
            if flags & !FLAG_CLAIMED != 0 {
                return Err(DecodeError::Invalid("service entry flags"));
            }
            if address.0 == 0 || address.is_multicast() {
                return Err(DecodeError::Invalid("service address"));
            }
            entries.push(Entry {
                address,
                claimed: flags & FLAG_CLAIMED != 0,
            });
        }
        if entries.windows(2).any(|w| w[0].address >= w[1].address) {
            return Err(DecodeError::Invalid(
                "service entries not strictly ascending",
            ));
        }
        let flags = r.u8()?;
        if flags & !FLAG_SIGNED != 0 {
            return Err(DecodeError::Invalid("service record flags"));
        }
        let signature = if flags & FLAG_SIGNED != 0 {
            let mut sig = [0u8; SIGNATURE_LEN];
            sig.copy_from_slice(r.bytes(SIGNATURE_LEN)?);
            Some(Box::new(sig))
        } else {
            None
        };
        if !r.is_empty() {
            return Err(DecodeError::Invalid("bytes after the service record"));
        }
        Ok(ServiceRecord {
            origin,
            version: Version { epoch, seq },
            entries,
            signature,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip_and_rejects() {
        let rec = ServiceRecord {
            origin: NodeId(7),
            version: Version { epoch: 3, seq: 9 },
            entries: vec![
                Entry {
                    address: NodeId(100),
                    claimed: true,
                },
                Entry {
                    address: NodeId(200),
                    claimed: false,
                },
            ],
            signature: None,
        };
        let bytes = rec.to_bytes();
        assert_eq!(bytes.len(), rec.encoded_len());
        assert_eq!(ServiceRecord::decode(&bytes), Ok(rec.clone()));
        assert!(ServiceRecord::decode(&bytes[..bytes.len() - 1]).is_err());
        let mut long = bytes.clone();
        long.push(0);
        assert!(ServiceRecord::decode(&long).is_err());
        let mut unsorted = rec.clone();
        unsorted.entries.reverse();
        assert!(ServiceRecord::decode(&unsorted.to_bytes()).is_err());
        let mut bad_flags = bytes.clone();
        let last = bad_flags.len() - 2;
        bad_flags[last] = 0x80;
        assert!(ServiceRecord::decode(&bad_flags).is_err());
        let mut bad_flags = bytes.clone();
        let last = bad_flags.len() - 1;
        bad_flags[last] = 0x80;
        assert!(ServiceRecord::decode(&bad_flags).is_err());
    }

    #[test]
    fn signatures_round_trip_and_bind_the_content() {
        let key = SecretKey::generate();
        let rec = ServiceRecord {
            origin: NodeId(7),
            version: Version { epoch: 3, seq: 9 },
            entries: vec![Entry {
                address: NodeId(100),
                claimed: true,
            }],
            signature: None,
        };
        assert!(!rec.verify(&key.public()), "unsigned");
        let signed = rec.clone().signed(&key);
        let bytes = signed.to_bytes();
        assert_eq!(bytes.len(), signed.encoded_len());
        let back = ServiceRecord::decode(&bytes).unwrap();
        assert_eq!(back, rec);
        assert!(back.verify(&key.public()));
        assert!(!back.verify(&SecretKey::generate().public()));
        // Any change to what was signed breaks the signature: flip the claim.
        let mut altered = bytes.clone();
        altered[4 + 8 + 4 + 2 + 4] = 0;
        let altered = ServiceRecord::decode(&altered).unwrap();
        assert!(!altered.entries[0].claimed);
        assert!(!altered.verify(&key.public()));
        // A truncated signature is malformed, not unsigned.
        assert!(ServiceRecord::decode(&bytes[..bytes.len() - 1]).is_err());
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = ServiceRecord::decode(&bytes);
        }
    }
}
