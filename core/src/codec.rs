//! Bounds-checked big-endian cursor used by every weft wire format. A `Reader` never panics:
//! every read checks the remaining length and returns [`DecodeError`] instead.

use thiserror::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("packet truncated: needed {needed} more bytes")]
    Truncated { needed: usize },
    #[error("bad magic")]
    BadMagic,
    #[error("unsupported wire version {0}")]
    Version(u8),
    #[error("unknown packet kind {0}")]
    UnknownKind(u8),
    #[error("invalid field: {0}")]
    Invalid(&'static str),
}

#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    #[inline]
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    #[inline]
    pub fn position(&self) -> usize {
        self.pos
    }

    #[inline]
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let rem = self.remaining();
        if n > rem {
            return Err(DecodeError::Truncated { needed: n - rem });
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    /// Everything not yet read.
    #[inline]
    pub fn rest(&mut self) -> &'a [u8] {
        let out = &self.buf[self.pos..];
        self.pos = self.buf.len();
        out
    }

    #[inline]
    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let s = self.bytes(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    #[inline]
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    #[inline]
    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    #[inline]
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    #[inline]
    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// A length-prefixed (u16) byte string.
    #[inline]
    pub fn short_bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.u16()? as usize;
        self.bytes(n)
    }

    #[inline]
    pub fn skip(&mut self, n: usize) -> Result<(), DecodeError> {
        self.bytes(n).map(|_| ())
    }
}

/// Appends big-endian fields to a byte vector.
#[derive(Debug)]
pub struct Writer<'a> {
    buf: &'a mut Vec<u8>,
}

impl<'a> Writer<'a> {
    pub fn new(buf: &'a mut Vec<u8>) -> Self {
        Writer { buf }
    }

    #[inline]
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    #[inline]
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }

    #[inline]
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    #[inline]
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    #[inline]
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    #[inline]
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(v);
        self
    }

    /// A u16 length prefix then the bytes; longer input is an encoder bug, so it is cut.
    #[inline]
    pub fn short_bytes(&mut self, v: &[u8]) -> &mut Self {
        let n = v.len().min(u16::MAX as usize);
        self.u16(n as u16);
        self.bytes(&v[..n])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip() {
        let mut v = Vec::new();
        Writer::new(&mut v)
            .u8(1)
            .u16(0x0203)
            .u32(0x04050607)
            .u64(8)
            .short_bytes(b"hi");
        let mut r = Reader::new(&v);
        assert_eq!(r.u8(), Ok(1));
        assert_eq!(r.u16(), Ok(0x0203));
        assert_eq!(r.u32(), Ok(0x04050607));
        assert_eq!(r.u64(), Ok(8));
        assert_eq!(r.short_bytes(), Ok(&b"hi"[..]));
        assert!(r.is_empty());
        assert_eq!(r.u8(), Err(DecodeError::Truncated { needed: 1 }));
    }

    proptest! {
        #[test]
        fn reader_never_panics(data in proptest::collection::vec(any::<u8>(), 0..64), ops in proptest::collection::vec(0u8..6, 0..32)) {
            let mut r = Reader::new(&data);
            for op in ops {
                let _ = match op {
                    0 => r.u8().map(|_| ()),
                    1 => r.u16().map(|_| ()),
                    2 => r.u32().map(|_| ()),
                    3 => r.u64().map(|_| ()),
                    4 => r.short_bytes().map(|_| ()),
                    _ => r.skip(7),
                };
            }
        }
    }
}
