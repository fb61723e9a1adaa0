//! The memory behind a region: a sealed memfd mapped `MAP_SHARED` (between processes) or a
//! zeroed heap allocation (in-process tests and Miri-style checks), and the validation a
//! mapper runs before it trusts a single word of a foreign memfd.

use std::alloc::Layout;
use std::fs::File;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use memfd::{FileSeal, MemfdOptions};
use memmap2::{MmapOptions, MmapRaw};

use super::app_end::AppEnd;
use super::consumer::Consumer;
use super::daemon_end::DaemonEnd;
use super::layout::{
    Geometry, RegionHeader, RegionKind, RingHeader, REGION_MAGIC, REGION_OPEN, REGION_VERSION,
};
use super::producer::Producer;
use super::RingError;

/// Which ring of a region: TX carries application → daemon bytes, RX daemon → application.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Tx,
    Rx,
}

enum Backing {
    // Held only so the mapping lives as long as the memory is used.
    Mapped(#[allow(dead_code)] MmapRaw),
    Heap(Layout),
}

/// One region's memory, shared by the views carved out of it.
pub(crate) struct Memory {
    base: NonNull<u8>,
    backing: Backing,
    pub(crate) geometry: Geometry,
}

// SAFETY: the memory is shared by design; every access goes through atomics or raw copies
// whose bounds come from the private geometry, never through `&mut` aliasing of headers.
unsafe impl Send for Memory {}
// SAFETY: as above.
unsafe impl Sync for Memory {}

impl Drop for Memory {
    fn drop(&mut self) {
        if let Backing::Heap(layout) = self.backing {
            // SAFETY: allocated in `anonymous` with exactly this layout.
            unsafe { std::alloc::dealloc(self.base.as_ptr(), layout) };
        }
    }
}

impl Memory {
    pub(crate) fn region_header(&self) -> &RegionHeader {
        // SAFETY: the region starts with a RegionHeader (size checked at map/create time), the
        // base is page aligned, and the header consists of atomics only.
        unsafe { &*(self.base.as_ptr() as *const RegionHeader) }
    }

    pub(crate) fn ring_header(&self, direction: Direction) -> &RingHeader {
        let offset = match direction {
            Direction::Tx => self.geometry.tx_header,
            Direction::Rx => self.geometry.rx_header,
        };
        // SAFETY: the geometry places an aligned RingHeader at this offset, inside the region.
        unsafe { &*(self.base.as_ptr().add(offset) as *const RingHeader) }
    }

    /// Start and capacity of a ring's data area.
    pub(crate) fn ring_data(&self, direction: Direction) -> (NonNull<u8>, u32) {
        let (offset, capacity) = match direction {
            Direction::Tx => (self.geometry.tx_data, self.geometry.tx_capacity),
            Direction::Rx => (self.geometry.rx_data, self.geometry.rx_capacity),
        };
        // SAFETY: offset + capacity <= total_len, the size of the allocation or mapping.
        (
            unsafe { NonNull::new_unchecked(self.base.as_ptr().add(offset)) },
            capacity,
        )
    }

    fn initialise(&self) {
        let g = &self.region_header().geometry;
        g.version.store(REGION_VERSION, Ordering::Relaxed);
        g.kind.store(self.geometry.kind.code(), Ordering::Relaxed);
        g.tx_capacity
            .store(self.geometry.tx_capacity, Ordering::Relaxed);
        g.rx_capacity
            .store(self.geometry.rx_capacity, Ordering::Relaxed);
        g.total_len
            .store(self.geometry.total_len as u64, Ordering::Relaxed);
        self.region_header()
            .daemon
            .status
            .store(REGION_OPEN, Ordering::Relaxed);
        for direction in [Direction::Tx, Direction::Rx] {
            // Both consumers start armed: the first publication must wake its consumer, which
            // may already be sleeping in poll before any byte ever moved.
            self.ring_header(direction)
                .wait
                .consumer_waiting
                .store(1, Ordering::Relaxed);
        }
        // Magic last, with Release: whoever sees it sees a complete header.
        g.magic.store(REGION_MAGIC, Ordering::Release);
    }
}

/// A region: two rings (TX app → daemon, RX daemon → app) plus the flags of the protocol in
/// the [module docs](super). Turn it into the view of one side with [`into_app_end`],
/// [`into_daemon_end`] or (both in one process) [`split`].
///
/// [`into_app_end`]: SharedRegion::into_app_end
/// [`into_daemon_end`]: SharedRegion::into_daemon_end
/// [`split`]: SharedRegion::split
pub struct SharedRegion {
    memory: Arc<Memory>,
}

impl std::fmt::Debug for SharedRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedRegion")
            .field("geometry", &self.memory.geometry)
            .finish()
    }
}

impl SharedRegion {
    /// Daemon side: a fresh region in a memfd (`MFD_CLOEXEC | MFD_ALLOW_SEALING`, sealed
    /// against shrinking, growing and further sealing so no holder can make the other's
    /// mapping fault). Returns the region and the memfd to pass to the application.
    pub fn create(
        kind: RegionKind,
        tx_capacity: u32,
        rx_capacity: u32,
    ) -> Result<(Self, OwnedFd), RingError> {
        let geometry = Geometry::new(kind, tx_capacity, rx_capacity)?;
        let memfd = MemfdOptions::new()
            .close_on_exec(true)
            .allow_sealing(true)
            .create("weft-ring")
            .map_err(memfd_error)?;
        memfd.as_file().set_len(geometry.total_len as u64)?;
        memfd
            .add_seals(&[FileSeal::SealShrink, FileSeal::SealGrow, FileSeal::SealSeal])
            .map_err(memfd_error)?;
        let file: File = memfd.into_file();
        let map = MmapOptions::new().len(geometry.total_len).map_raw(&file)?;
        let base = NonNull::new(map.as_mut_ptr()).ok_or(RingError::BadRegion("null mapping"))?;
        let memory = Memory {
            base,
            backing: Backing::Mapped(map),
            geometry,
        };
        memory.initialise();
        Ok((
            SharedRegion {
                memory: Arc::new(memory),
            },
            OwnedFd::from(file),
        ))
    }

    /// Application side: maps a memfd received from the daemon after checking that it is
    /// sealed against shrinking and growing (a shrink would turn our accesses into SIGBUS),
    /// that its size is the exact size its header's geometry implies, and that magic,
    /// version, kind and capacities are valid. The geometry is then kept privately: later
    /// scribbles on the header's geometry words change nothing.
    pub fn map(fd: BorrowedFd<'_>) -> Result<Self, RingError> {
        // SAFETY: F_GET_SEALS on a descriptor we borrow; no pointers involved.
        let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
        if seals < 0 {
            return Err(RingError::BadRegion("not a sealable memfd"));
        }
        let needed = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW;
        if seals & needed != needed {
            return Err(RingError::BadRegion(
                "memfd not sealed against shrink and grow",
            ));
        }
        let file_len = file_len(fd)?;
        if file_len < std::mem::size_of::<RegionHeader>() as u64 {
            return Err(RingError::BadRegion("memfd smaller than a region header"));
        }
        let len = usize::try_from(file_len).map_err(|_| RingError::BadRegion("memfd too large"))?;
        let map = MmapOptions::new().len(len).map_raw(fd.as_raw_fd())?;
        let base = NonNull::new(map.as_mut_ptr()).ok_or(RingError::BadRegion("null mapping"))?;
        // SAFETY: the mapping is at least one RegionHeader long (checked above) and page aligned.
        let header = unsafe { &*(base.as_ptr() as *const RegionHeader) };
        let geometry = validate_geometry(header, file_len)?;
        let memory = Memory {
            base,
            backing: Backing::Mapped(map),
            geometry,
        };
        Ok(SharedRegion {
            memory: Arc::new(memory),
        })
    }

    /// A region in ordinary process memory: for in-process use and tests (threads, property
    /// tests). Same layout and protocol as a memfd region.
    pub fn anonymous(
        kind: RegionKind,
        tx_capacity: u32,
        rx_capacity: u32,
    ) -> Result<Self, RingError> {
        let geometry = Geometry::new(kind, tx_capacity, rx_capacity)?;
        let layout = Layout::from_size_align(geometry.total_len, 4096)
            .map_err(|_| RingError::InvalidCapacity(geometry.total_len as u64))?;
        // SAFETY: the layout has a non-zero size (at least the headers).
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let base = NonNull::new(raw).ok_or(RingError::BadRegion("allocation failed"))?;
        let memory = Memory {
            base,
            backing: Backing::Heap(layout),
            geometry,
        };
        memory.initialise();
        Ok(SharedRegion {
            memory: Arc::new(memory),
        })
    }

    pub fn kind(&self) -> RegionKind {
        self.memory.geometry.kind
    }

    pub fn tx_capacity(&self) -> u32 {
        self.memory.geometry.tx_capacity
    }

    pub fn rx_capacity(&self) -> u32 {
        self.memory.geometry.rx_capacity
    }

    /// Bytes of header before the TX data area: the words [`scribble`](Self::scribble) can hit.
    pub fn header_len(&self) -> usize {
        self.memory.geometry.tx_data
    }

    /// Total size of the region in bytes.
    pub fn len(&self) -> usize {
        self.memory.geometry.total_len
    }

    /// Never true: a region always holds at least its headers.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Overwrites `bytes` at `offset` (taken modulo the region size, wrapping to its start):
    /// what a buggy or hostile peer can do at any time. Exists for corruption tests; the views
    /// must answer with [`RingError::Corrupt`], never misbehave.
    #[doc(hidden)]
    pub fn scribble(&self, offset: usize, bytes: &[u8]) {
        let len = self.memory.geometry.total_len;
        for (i, &byte) in bytes.iter().enumerate() {
            let at = (offset + i) % len;
            // SAFETY: in bounds; byte-wide atomic stores cannot tear or race unsoundly with
            // the views' own atomic accesses.
            let cell = unsafe { &*(self.memory.base.as_ptr().add(at) as *const AtomicU8) };
            cell.store(byte, Ordering::SeqCst);
        }
    }

    /// Offsets of the named header words (for corruption tests that aim at them).
    #[doc(hidden)]
    pub fn header_word_offsets(&self) -> Vec<(String, usize)> {
        use std::mem::offset_of;
        let g = &self.memory.geometry;
        let region = [
            ("magic", offset_of!(RegionHeader, geometry.magic)),
            ("version", offset_of!(RegionHeader, geometry.version)),
            ("kind", offset_of!(RegionHeader, geometry.kind)),
            (
                "tx_capacity",
                offset_of!(RegionHeader, geometry.tx_capacity),
            ),
            (
                "rx_capacity",
                offset_of!(RegionHeader, geometry.rx_capacity),
            ),
            ("total_len", offset_of!(RegionHeader, geometry.total_len)),
            (
                "detach_requested",
                offset_of!(RegionHeader, app.detach_requested),
            ),
            (
                "tx_filler_written",
                offset_of!(RegionHeader, app.tx_filler_written),
            ),
            (
                "rx_doorbells_drained",
                offset_of!(RegionHeader, app.rx_doorbells_drained),
            ),
            ("status", offset_of!(RegionHeader, daemon.status)),
            ("error", offset_of!(RegionHeader, daemon.error)),
            (
                "rx_doorbells_written",
                offset_of!(RegionHeader, daemon.rx_doorbells_written),
            ),
        ];
        let ring = [
            ("head", offset_of!(RingHeader, consumer.head)),
            ("consumer_state", offset_of!(RingHeader, consumer.state)),
            ("tail", offset_of!(RingHeader, producer.tail)),
            ("producer_state", offset_of!(RingHeader, producer.state)),
            (
                "consumer_waiting",
                offset_of!(RingHeader, wait.consumer_waiting),
            ),
            (
                "producer_waiting",
                offset_of!(RingHeader, wait.producer_waiting),
            ),
        ];
        let mut words: Vec<(String, usize)> =
            region.iter().map(|&(n, o)| (n.to_string(), o)).collect();
        for (prefix, base) in [("tx", g.tx_header), ("rx", g.rx_header)] {
            words.extend(
                ring.iter()
                    .map(|&(n, o)| (format!("{prefix}.{n}"), base + o)),
            );
        }
        words
    }

    /// The application's side: producer of TX, consumer of RX.
    pub fn into_app_end(self) -> Result<AppEnd, RingError> {
        let tx = Producer::attach(self.memory.clone(), Direction::Tx)?;
        let rx = Consumer::attach(self.memory.clone(), Direction::Rx)?;
        Ok(AppEnd::new(self.memory, tx, rx))
    }

    /// The daemon's side: consumer of TX, producer of RX.
    pub fn into_daemon_end(self) -> Result<DaemonEnd, RingError> {
        let tx = Consumer::attach(self.memory.clone(), Direction::Tx)?;
        let rx = Producer::attach(self.memory.clone(), Direction::Rx)?;
        Ok(DaemonEnd::new(self.memory, tx, rx))
    }

    /// Both sides in one process (threads, tests).
    pub fn split(self) -> Result<(AppEnd, DaemonEnd), RingError> {
        let daemon = SharedRegion {
            memory: self.memory.clone(),
        }
        .into_daemon_end()?;
        Ok((self.into_app_end()?, daemon))
    }

    /// Another handle on the same memory, e.g. to keep scribbling after
    /// [`split`](Self::split) in a corruption test.
    pub fn handle(&self) -> SharedRegion {
        SharedRegion {
            memory: self.memory.clone(),
        }
    }
}

fn validate_geometry(header: &RegionHeader, file_len: u64) -> Result<Geometry, RingError> {
    let g = &header.geometry;
    if g.magic.load(Ordering::Acquire) != REGION_MAGIC {
        return Err(RingError::BadRegion("bad magic"));
    }
    if g.version.load(Ordering::Relaxed) != REGION_VERSION {
        return Err(RingError::BadRegion("unsupported version"));
    }
    let kind = RegionKind::from_code(g.kind.load(Ordering::Relaxed))
        .ok_or(RingError::BadRegion("unknown kind"))?;
    let geometry = Geometry::new(
        kind,
        g.tx_capacity.load(Ordering::Relaxed),
        g.rx_capacity.load(Ordering::Relaxed),
    )
    .map_err(|_| RingError::BadRegion("invalid capacities"))?;
    if g.total_len.load(Ordering::Relaxed) != geometry.total_len as u64
        || file_len != geometry.total_len as u64
    {
        return Err(RingError::BadRegion("size does not match the geometry"));
    }
    Ok(geometry)
}

fn file_len(fd: BorrowedFd<'_>) -> Result<u64, RingError> {
    // SAFETY: fstat fills a plain-data struct we own.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above; fd is a live borrowed descriptor.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut stat) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    u64::try_from(stat.st_size).map_err(|_| RingError::BadRegion("negative size"))
}

fn memfd_error(err: memfd::Error) -> RingError {
    match err {
        memfd::Error::Create(e) | memfd::Error::AddSeals(e) | memfd::Error::GetSeals(e) => {
            RingError::Io(e)
        }
    }
}
