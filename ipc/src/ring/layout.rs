//! The bytes of a shared region: `#[repr(C)]` headers made only of atomics (so forming a
//! reference to them is sound even while the peer scribbles on them), and the geometry, which
//! is a pure function of (kind, capacities) so a mapper can recompute it and demand an exact
//! match instead of trusting offsets it reads.

use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64};

use super::RingError;

/// "WEFTRING" in ASCII, read as a little-endian u64.
pub const REGION_MAGIC: u64 = u64::from_le_bytes(*b"WEFTRING");
/// Bumped on any change to the layout or the protocol in the module docs.
pub const REGION_VERSION: u32 = 1;
/// Smallest ring capacity (bytes). Tiny rings are legal so tests can force wrap-around.
pub const MIN_CAPACITY: u32 = 16;
/// Largest ring capacity (bytes).
pub const MAX_CAPACITY: u32 = 1 << 30;
/// Every datagram record starts with its payload length as a little-endian u32.
pub const RECORD_HEADER: usize = 4;

/// Alignment of the data areas: a page, so each ring's bytes start on their own page.
const DATA_ALIGN: usize = 4096;
/// 128 bytes rather than 64: x86's adjacent-line prefetcher pulls cache lines in pairs, so a
/// 64-byte separation still lets the producer's and consumer's words fight.
pub const CACHE_LINE: usize = 128;

/// What the rings of a region carry; both rings of one region are of the same kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegionKind {
    /// Byte streams (TCP-like sockets): `write`/`read`.
    Stream,
    /// Length-prefixed records (datagram sockets): `push`/`pop`, message boundaries kept.
    Datagram,
}

impl RegionKind {
    pub(crate) fn code(self) -> u32 {
        match self {
            RegionKind::Stream => 1,
            RegionKind::Datagram => 2,
        }
    }

    pub(crate) fn from_code(code: u32) -> Option<Self> {
        match code {
            1 => Some(RegionKind::Stream),
            2 => Some(RegionKind::Datagram),
            _ => None,
        }
    }
}

/// Written once by the creator before the fd is passed; a mapper validates every word and
/// from then on uses only its private [`Geometry`].
#[repr(C, align(128))]
pub struct GeometryLine {
    pub magic: AtomicU64,
    pub version: AtomicU32,
    pub kind: AtomicU32,
    pub tx_capacity: AtomicU32,
    pub rx_capacity: AtomicU32,
    pub total_len: AtomicU64,
}

/// Words only the application (shim) writes.
#[repr(C, align(128))]
pub struct AppLine {
    /// 0, or 1 once the app has sealed its ring ends and asks the daemon to detach.
    pub detach_requested: AtomicU32,
    /// Credit filler bytes the app has written into its end of the socketpair, ever.
    pub tx_filler_written: AtomicU64,
    /// RX doorbell bytes the app has read out of the socketpair, ever.
    pub rx_doorbells_drained: AtomicU64,
}

/// Words only the daemon writes.
#[repr(C, align(128))]
pub struct DaemonLine {
    /// [`REGION_OPEN`], [`REGION_DETACHED`] or [`REGION_RESET`].
    pub status: AtomicU32,
    /// The errno of a reset (`ECONNRESET`, `ETIMEDOUT`, ...), valid once status is RESET.
    pub error: AtomicI32,
    /// RX doorbell bytes the daemon has written into the socketpair, ever (counted after the
    /// write succeeded).
    pub rx_doorbells_written: AtomicU64,
}

pub const REGION_OPEN: u32 = 0;
pub const REGION_DETACHED: u32 = 1;
pub const REGION_RESET: u32 = 2;

#[repr(C)]
pub struct RegionHeader {
    pub geometry: GeometryLine,
    pub app: AppLine,
    pub daemon: DaemonLine,
}

/// Written only by the ring's consumer.
#[repr(C, align(128))]
pub struct ConsumerLine {
    /// Free-running count of bytes consumed.
    pub head: AtomicU64,
    /// [`END_OPEN`] or [`END_SEALED`] (the consumer stopped at `head` and hands the rest over).
    pub state: AtomicU32,
}

/// Written only by the ring's producer.
#[repr(C, align(128))]
pub struct ProducerLine {
    /// Free-running count of bytes published.
    pub tail: AtomicU64,
    /// [`END_OPEN`], [`END_CLOSED`] (end of stream at `tail`) or [`END_SEALED`] (the
    /// producer stopped at `tail`; later bytes travel on the socketpair).
    pub state: AtomicU32,
}

/// Need-wakeup flags: each is set by the side about to sleep and cleared (swapped to 0) by the
/// side that then owes it a wakeup.
#[repr(C, align(128))]
pub struct WaitLine {
    /// The consumer found the ring empty and sleeps: the producer must wake it after its next
    /// publication (RX_ARMED on the RX ring, TX_ARMED on the TX ring).
    pub consumer_waiting: AtomicU32,
    /// The producer found the ring full and sleeps: the consumer must wake it once it frees
    /// space (TX_BLOCKED on the TX ring).
    pub producer_waiting: AtomicU32,
}

pub const END_OPEN: u32 = 0;
pub const END_CLOSED: u32 = 1;
pub const END_SEALED: u32 = 2;

#[repr(C)]
pub struct RingHeader {
    pub consumer: ConsumerLine,
    pub producer: ProducerLine,
    pub wait: WaitLine,
}

/// Where everything lives, computed privately from (kind, capacities).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub kind: RegionKind,
    pub tx_capacity: u32,
    pub rx_capacity: u32,
    pub tx_header: usize,
    pub rx_header: usize,
    pub tx_data: usize,
    pub rx_data: usize,
    pub total_len: usize,
}

impl Geometry {
    pub fn new(kind: RegionKind, tx_capacity: u32, rx_capacity: u32) -> Result<Self, RingError> {
        for cap in [tx_capacity, rx_capacity] {
            if !(MIN_CAPACITY..=MAX_CAPACITY).contains(&cap) || !cap.is_power_of_two() {
                return Err(RingError::InvalidCapacity(cap as u64));
            }
        }
        let region = std::mem::size_of::<RegionHeader>();
        let ring = std::mem::size_of::<RingHeader>();
        let tx_header = region;
        let rx_header = tx_header + ring;
        let tx_data = round_up(rx_header + ring, DATA_ALIGN);
        let rx_data = round_up(tx_data + tx_capacity as usize, DATA_ALIGN);
        let total_len = round_up(rx_data + rx_capacity as usize, DATA_ALIGN);
        Ok(Geometry {
            kind,
            tx_capacity,
            rx_capacity,
            tx_header,
            rx_header,
            tx_data,
            rx_data,
            total_len,
        })
    }
}

fn round_up(value: usize, align: usize) -> usize {
    value.div_ceil(align) * align
}

/// Largest payload a datagram ring of `capacity` bytes can hold.
pub fn max_datagram(capacity: u32) -> usize {
    (capacity as usize - RECORD_HEADER).min(u32::MAX as usize)
}

const _: () = {
    assert!(std::mem::size_of::<GeometryLine>() == CACHE_LINE);
    assert!(std::mem::size_of::<ConsumerLine>() == CACHE_LINE);
    assert!(std::mem::size_of::<ProducerLine>() == CACHE_LINE);
    assert!(std::mem::size_of::<RingHeader>() == 3 * CACHE_LINE);
    assert!(std::mem::size_of::<RegionHeader>() == 3 * CACHE_LINE);
    assert!(std::mem::align_of::<RegionHeader>() <= DATA_ALIGN);
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_is_page_aligned_and_disjoint() {
        let g = Geometry::new(RegionKind::Stream, 16, 1 << 20).unwrap();
        assert_eq!(g.tx_data % DATA_ALIGN, 0);
        assert_eq!(g.rx_data % DATA_ALIGN, 0);
        assert!(g.rx_header >= g.tx_header + std::mem::size_of::<RingHeader>());
        assert!(g.tx_data >= g.rx_header + std::mem::size_of::<RingHeader>());
        assert!(g.rx_data >= g.tx_data + 16);
        assert!(g.total_len >= g.rx_data + (1 << 20));
    }

    #[test]
    fn rejects_bad_capacities() {
        for cap in [0, 8, 15, 17, 3000, MAX_CAPACITY + 1, u32::MAX] {
            assert!(
                Geometry::new(RegionKind::Datagram, cap, 4096).is_err(),
                "cap {cap}"
            );
            assert!(
                Geometry::new(RegionKind::Datagram, 4096, cap).is_err(),
                "cap {cap}"
            );
        }
    }
}
