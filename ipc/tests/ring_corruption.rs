//! The peer is untrusted: random header words (and data bytes) scribbled at random moments
//! must surface as `RingError`, never as a panic or an out-of-bounds access; indices moved
//! out of range must be detected, and a view that detected corruption stays poisoned.
//! A memfd whose geometry, seals or size are off must be refused at map time.
//!
//! Run under AddressSanitizer to check "no out-of-bounds access" mechanically (the regions
//! here are heap allocations, so a copy past a data area hits a redzone):
//! `RUSTFLAGS=-Zsanitizer=address cargo +nightly test -p weft-ipc --test ring_corruption
//! --target x86_64-unknown-linux-gnu`.

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use weft_ipc::ring::{AppEnd, DaemonEnd, RegionKind, RingError, SharedRegion, RECORD_HEADER};

/// Prints the seed of a case that panics.
struct SeedGuard(u64);

impl Drop for SeedGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("failing seed: {:#x}", self.0);
        }
    }
}

fn seeds(base: u64, count: u64) -> impl Iterator<Item = u64> {
    let base = std::env::var("WEFT_TEST_SEED")
        .ok()
        .and_then(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok())
        .unwrap_or(base);
    let count = if std::env::var("WEFT_TEST_SEED").is_ok() {
        1
    } else {
        count
    };
    (0..count).map(move |i| base.wrapping_add(i))
}

fn offset_of(region: &SharedRegion, name: &str) -> usize {
    region
        .header_word_offsets()
        .iter()
        .find(|(n, _)| n == name)
        .map(|&(_, o)| o)
        .unwrap()
}

fn random_value(rng: &mut ChaCha8Rng) -> u32 {
    match rng.gen_range(0..6) {
        0 => 0,
        1 => 1,
        2 => u32::MAX,
        3 => rng.gen_range(0..64),
        4 => 1 << rng.gen_range(0..32),
        _ => rng.gen(),
    }
}

/// One random operation on either side; every `Ok` result is checked for sanity.
fn random_op(rng: &mut ChaCha8Rng, app: &mut AppEnd, daemon: &mut DaemonEnd, kind: RegionKind) {
    let mut buf = vec![0u8; rng.gen_range(0..300)];
    let data: Vec<u8> = (0..rng.gen_range(0..300)).map(|_| rng.gen()).collect();
    let cap = app.tx().capacity();
    match (kind, rng.gen_range(0..12)) {
        (RegionKind::Stream, 0) => check_len(app.tx().write(&data), data.len()),
        (RegionKind::Stream, 1) => check_len(daemon.rx().write(&data), data.len()),
        (RegionKind::Stream, 2) => check_len(daemon.tx().read(&mut buf), buf.len()),
        (RegionKind::Stream, 3) => check_len(app.rx().peek(&mut buf), buf.len()),
        (RegionKind::Stream, 4) => {
            if let Ok(grant) = daemon.tx().read_grant() {
                let (a, b) = grant.as_slices();
                assert!(a.len() + b.len() <= cap);
                let n = grant.len() / 2;
                grant.consume(n).unwrap();
            }
        }
        (RegionKind::Datagram, 0) => {
            drop(app.tx().push(&data[..data.len().min(cap - RECORD_HEADER)]))
        }
        (RegionKind::Datagram, 1) => drop(
            daemon
                .rx()
                .push(&data[..data.len().min(cap - RECORD_HEADER)]),
        ),
        (RegionKind::Datagram, 2) => check_datagram(daemon.tx().pop(&mut buf), buf.len(), cap),
        (RegionKind::Datagram, 3) => {
            check_datagram(app.rx().peek_datagram(&mut buf), buf.len(), cap)
        }
        (RegionKind::Datagram, 4) => {
            if let Ok(Some(grant)) = app.rx().datagram_grant() {
                let (a, b) = grant.as_slices();
                assert!(a.len() + b.len() <= cap - RECORD_HEADER);
                grant.consume();
            }
        }
        (_, 5) => check_len(app.rx().readable(), cap),
        (_, 6) => check_len(daemon.rx().writable(), cap),
        (_, 7) => drop(
            app.prepare_rx_sleep()
                .map(|_| ())
                .and_then(|_| app.doorbells_drained(rng.gen_range(0..2))),
        ),
        (_, 8) => {
            let _ = daemon.after_rx_publish();
            let _ = app.after_tx_publish();
            let _ = app.after_rx_consume();
            daemon.doorbell_written();
        }
        (_, 9) => drop(
            daemon
                .filler_action(rng.gen())
                .map(|_| daemon.filler_drained(rng.gen_range(0..3))),
        ),
        (_, 10) => {
            app.prepare_tx_block(rng.gen_range(0..cap + 2));
            let _ = app.filler_written(rng.gen_range(0..3), rng.gen_range(0..cap + 2));
            let _ = daemon.prepare_tx_idle();
            let _ = daemon.prepare_rx_full(rng.gen_range(0..cap + 2));
        }
        _ => {
            let _ = app.status();
            let _ = app.detach_outcome();
            let _ = daemon.tx().producer_end();
            let _ = daemon.tx().is_finished();
            let _ = app.rx().is_finished();
        }
    }
}

fn check_len(result: Result<usize, RingError>, max: usize) {
    if let Ok(n) = result {
        assert!(n <= max, "returned {n} > {max}");
    }
}

fn check_datagram(
    result: Result<Option<weft_ipc::ring::Datagram>, RingError>,
    buf: usize,
    cap: usize,
) {
    if let Ok(Some(d)) = result {
        assert!(
            d.len <= cap - RECORD_HEADER && d.copied <= buf && d.copied <= d.len,
            "{d:?}"
        );
    }
}

/// Random operations interleaved with random scribbles; then one index is moved out of range
/// for sure (its high half made non-zero: ≥ 2^32 away, past any capacity) and the side that
/// reads it must report corruption, and keep reporting it after the word is restored.
#[test]
fn scribbled_headers_are_detected_or_harmless() {
    for seed in seeds(0x5eed_0000, 400) {
        let _guard = SeedGuard(seed);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let kind = if rng.gen() {
            RegionKind::Stream
        } else {
            RegionKind::Datagram
        };
        let cap = 1u32 << rng.gen_range(4..11);
        let region = SharedRegion::anonymous(kind, cap, cap).unwrap();
        let scribbler = region.handle();
        let words = scribbler.header_word_offsets();
        let (mut app, mut daemon) = region.split().unwrap();
        for _ in 0..rng.gen_range(0..200) {
            if rng.gen_range(0..10) == 0 {
                let offset = match rng.gen_range(0..10) {
                    0..=6 => words[rng.gen_range(0..words.len())].1 + 4 * rng.gen_range(0..2),
                    7 | 8 => rng.gen_range(0..scribbler.header_len()),
                    _ => rng.gen_range(scribbler.header_len()..scribbler.len()),
                };
                scribbler.scribble(offset, &random_value(&mut rng).to_le_bytes());
            } else {
                random_op(&mut rng, &mut app, &mut daemon, kind);
            }
        }
        let (index, reader_is_app) = match rng.gen_range(0..4) {
            0 => ("tx.tail", false),
            1 => ("tx.head", true),
            2 => ("rx.tail", true),
            _ => ("rx.head", false),
        };
        let high = offset_of(&scribbler, index) + 4;
        scribbler.scribble(high, &rng.gen_range(1..=u32::MAX).to_le_bytes());
        let check = |app: &mut AppEnd, daemon: &mut DaemonEnd| match (index, reader_is_app) {
            ("tx.tail", _) => daemon.tx().readable(),
            ("tx.head", _) => app.tx().unconsumed(),
            ("rx.tail", _) => app.rx().readable(),
            _ => daemon.rx().unconsumed(),
        };
        let first = check(&mut app, &mut daemon);
        assert!(
            matches!(first, Err(RingError::Corrupt(_))),
            "{index} out of range not detected: {first:?}"
        );
        scribbler.scribble(high, &[0; 4]);
        let again = check(&mut app, &mut daemon);
        assert!(
            matches!(again, Err(RingError::Corrupt(_))),
            "poison lost after restoring {index}: {again:?}"
        );
        assert!(app.is_poisoned() || daemon.is_poisoned());
    }
}

/// A datagram record whose length runs past the producer's index or beyond the ring.
#[test]
fn corrupt_record_lengths_are_detected() {
    for seed in seeds(0xd47a_0000, 200) {
        let _guard = SeedGuard(seed);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let cap = 1u32 << rng.gen_range(4..10);
        let region = SharedRegion::anonymous(RegionKind::Datagram, cap, 16).unwrap();
        let scribbler = region.handle();
        let (mut app, mut daemon) = region.split().unwrap();
        // Move the indices to a random spot so the record header may wrap.
        let shift = rng.gen_range(0..cap as usize);
        let filler = vec![
            0u8;
            shift
                .saturating_sub(RECORD_HEADER)
                .min(cap as usize - RECORD_HEADER)
        ];
        assert!(app.tx().push(&filler).unwrap());
        assert!(daemon.tx().pop(&mut []).unwrap().is_some());
        let len = rng.gen_range(0..(cap as usize - RECORD_HEADER) / 2);
        assert!(app.tx().push(&vec![7u8; len]).unwrap());
        let bad_len: u32 = if rng.gen() {
            rng.gen_range(len as u32 + 1..=u32::MAX)
        } else {
            cap
        };
        let header_at = (filler.len() + RECORD_HEADER) % cap as usize;
        // The record header may straddle the end of the data area: write it byte by byte.
        let tx_data = scribbler.header_len();
        for (i, byte) in bad_len.to_le_bytes().iter().enumerate() {
            scribbler.scribble(tx_data + (header_at + i) % cap as usize, &[*byte]);
        }
        let result = daemon.tx().pop(&mut [0u8; 64]);
        assert!(
            matches!(result, Err(RingError::Corrupt(_))),
            "length {bad_len} accepted: {result:?}"
        );
        assert!(matches!(
            daemon.tx().pop(&mut [0u8; 64]),
            Err(RingError::Corrupt(_))
        ));
    }
}

/// Any change to a geometry word makes `map` refuse the memfd.
#[test]
fn map_validates_the_geometry() {
    let (region, fd) = SharedRegion::create(RegionKind::Stream, 4096, 8192).unwrap();
    let mapped = SharedRegion::map(fd.as_fd()).unwrap();
    assert_eq!(
        (mapped.kind(), mapped.tx_capacity(), mapped.rx_capacity()),
        (RegionKind::Stream, 4096, 8192)
    );
    let mut rng = ChaCha8Rng::seed_from_u64(0x6e0);
    for name in [
        "magic",
        "version",
        "kind",
        "tx_capacity",
        "rx_capacity",
        "total_len",
    ] {
        let offset = offset_of(&region, name);
        let halves = if matches!(name, "magic" | "total_len") {
            2
        } else {
            1
        };
        for half in 0..halves {
            let at = offset + 4 * half;
            let original = read_word(&fd, at);
            for value in [
                original ^ 1,
                original.wrapping_add(4096),
                0,
                u32::MAX,
                rng.gen(),
            ] {
                if value == original {
                    continue;
                }
                region.scribble(at, &value.to_le_bytes());
                let result = SharedRegion::map(fd.as_fd());
                assert!(
                    matches!(result, Err(RingError::BadRegion(_))),
                    "{name}+{half} = {value:#x} accepted"
                );
            }
            region.scribble(at, &original.to_le_bytes());
        }
    }
    SharedRegion::map(fd.as_fd()).unwrap();
}

fn read_word(fd: &OwnedFd, offset: usize) -> u32 {
    let mut file = std::fs::File::from(fd.try_clone().unwrap());
    let mut bytes = vec![0u8; offset + 4];
    use std::io::Seek;
    file.seek(std::io::SeekFrom::Start(0)).unwrap();
    file.read_exact(&mut bytes).unwrap();
    u32::from_le_bytes(bytes[offset..].try_into().unwrap())
}

/// Unsealed memfds, wrong sizes and descriptors that are no memfd at all are refused.
#[test]
fn map_refuses_unsealed_resized_or_foreign_descriptors() {
    let (_region, fd) = SharedRegion::create(RegionKind::Datagram, 4096, 4096).unwrap();
    let mut image = Vec::new();
    std::fs::File::from(fd.try_clone().unwrap())
        .read_to_end(&mut image)
        .unwrap();

    let copy = |extra: usize, seal: bool| -> OwnedFd {
        let memfd = memfd::MemfdOptions::new()
            .allow_sealing(true)
            .create("copy")
            .unwrap();
        memfd.as_file().write_all(&image).unwrap();
        memfd
            .as_file()
            .set_len((image.len() + extra) as u64)
            .unwrap();
        if seal {
            memfd
                .add_seals(&[memfd::FileSeal::SealShrink, memfd::FileSeal::SealGrow])
                .unwrap();
        }
        memfd.into_file().into()
    };
    SharedRegion::map(copy(0, true).as_fd()).expect("an exact sealed copy maps");
    assert!(matches!(
        SharedRegion::map(copy(0, false).as_fd()),
        Err(RingError::BadRegion(_))
    ));
    assert!(matches!(
        SharedRegion::map(copy(4096, true).as_fd()),
        Err(RingError::BadRegion(_))
    ));

    let mut fds = [0; 2];
    // SAFETY: fds is a valid out-array for pipe(2).
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: the kernel just returned these descriptors to us.
    let (r, _w) = unsafe {
        use std::os::fd::FromRawFd;
        (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1]))
    };
    assert!(matches!(
        SharedRegion::map(r.as_fd()),
        Err(RingError::BadRegion(_))
    ));
}
