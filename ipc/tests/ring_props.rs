//! Property tests of the rings against simple models: random sizes, wrap-around (also of the
//! free-running u64 indices), partial reads and writes, vectored and zero-copy operations,
//! datagram records at and across the end, truncation, close and detach.

use std::collections::VecDeque;
use std::io::{IoSlice, IoSliceMut};

use proptest::prelude::*;
use weft_ipc::ring::{ProducerEnd, RegionKind, RingError, SharedRegion, RECORD_HEADER};

/// Deterministic payload: the byte at stream position `pos`.
fn pattern(pos: u64) -> u8 {
    (pos.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8
}

fn bytes_from(start: u64, len: usize) -> Vec<u8> {
    (0..len as u64).map(|i| pattern(start + i)).collect()
}

/// Moves both TX indices close to u64::MAX before the views attach, so the run crosses the
/// wrap of the free-running counters.
fn start_near_wrap(region: &SharedRegion, start: u64) {
    let offsets = region.header_word_offsets();
    for name in ["tx.head", "tx.tail", "rx.head", "rx.tail"] {
        let offset = offsets
            .iter()
            .find(|(n, _)| n == name)
            .map(|&(_, o)| o)
            .unwrap();
        region.scribble(offset, &start.to_le_bytes());
    }
}

#[derive(Debug, Clone)]
enum StreamOp {
    Write(usize),
    WriteVectored(Vec<usize>),
    WriteGrant { want: usize },
    Read(usize),
    ReadVectored(Vec<usize>),
    Peek(usize),
    ReadGrant { take: usize },
    Skip(usize),
}

fn stream_op(cap: usize) -> impl Strategy<Value = StreamOp> {
    let len = 0..=cap + 3;
    prop_oneof![
        len.clone().prop_map(StreamOp::Write),
        prop::collection::vec(0..=cap / 2 + 1, 0..4).prop_map(StreamOp::WriteVectored),
        len.clone().prop_map(|want| StreamOp::WriteGrant { want }),
        len.clone().prop_map(StreamOp::Read),
        prop::collection::vec(0..=cap / 2 + 1, 0..4).prop_map(StreamOp::ReadVectored),
        len.clone().prop_map(StreamOp::Peek),
        len.clone().prop_map(|take| StreamOp::ReadGrant { take }),
        len.prop_map(StreamOp::Skip),
    ]
}

fn stream_case() -> impl Strategy<Value = (usize, bool, Vec<StreamOp>)> {
    prop_oneof![Just(16usize), Just(32), Just(64), Just(256), Just(4096)].prop_flat_map(|cap| {
        (
            Just(cap),
            any::<bool>(),
            prop::collection::vec(stream_op(cap), 1..200),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn stream_ring_matches_a_queue((cap, near_wrap, ops) in stream_case()) {
        let region = SharedRegion::anonymous(RegionKind::Stream, cap as u32, 16).unwrap();
        let start = if near_wrap { u64::MAX - 3 * cap as u64 / 2 } else { 0 };
        start_near_wrap(&region, start);
        let (mut app, mut daemon) = region.split().unwrap();
        let mut model: VecDeque<u8> = VecDeque::new();
        let mut written = 0u64;
        for op in ops {
            let free = cap - model.len();
            match op {
                StreamOp::Write(len) => {
                    let data = bytes_from(written, len);
                    let n = app.tx().write(&data).unwrap();
                    prop_assert_eq!(n, len.min(free));
                    model.extend(&data[..n]);
                    written += n as u64;
                }
                StreamOp::WriteVectored(lens) => {
                    let total: usize = lens.iter().sum();
                    let data = bytes_from(written, total);
                    let mut parts = Vec::new();
                    let mut at = 0;
                    for l in &lens {
                        parts.push(IoSlice::new(&data[at..at + l]));
                        at += l;
                    }
                    let n = app.tx().write_vectored(&parts).unwrap();
                    prop_assert_eq!(n, total.min(free));
                    model.extend(&data[..n]);
                    written += n as u64;
                }
                StreamOp::WriteGrant { want } => {
                    let mut grant = app.tx().write_grant().unwrap();
                    prop_assert_eq!(grant.len(), free);
                    let n = want.min(free);
                    let data = bytes_from(written, n);
                    written += n as u64;
                    let (a, b) = grant.as_mut_slices();
                    prop_assert_eq!(a.len() + b.len(), free);
                    let first = n.min(a.len());
                    a[..first].copy_from_slice(&data[..first]);
                    b[..n - first].copy_from_slice(&data[first..]);
                    grant.commit(n).unwrap();
                    model.extend(&data);
                }
                StreamOp::Read(len) => {
                    let mut buf = vec![0u8; len];
                    let n = daemon.tx().read(&mut buf).unwrap();
                    prop_assert_eq!(n, len.min(model.len()));
                    let expected: Vec<u8> = model.drain(..n).collect();
                    prop_assert_eq!(&buf[..n], &expected[..]);
                }
                StreamOp::ReadVectored(lens) => {
                    let mut bufs: Vec<Vec<u8>> = lens.iter().map(|&l| vec![0u8; l]).collect();
                    let mut slices: Vec<IoSliceMut<'_>> = bufs.iter_mut().map(|b| IoSliceMut::new(b)).collect();
                    let n = daemon.tx().read_vectored(&mut slices).unwrap();
                    let total: usize = lens.iter().sum();
                    prop_assert_eq!(n, total.min(model.len()));
                    let got: Vec<u8> = bufs.concat().into_iter().take(n).collect();
                    let expected: Vec<u8> = model.drain(..n).collect();
                    prop_assert_eq!(got, expected);
                }
                StreamOp::Peek(len) => {
                    let mut buf = vec![0u8; len];
                    let n = daemon.tx().peek(&mut buf).unwrap();
                    prop_assert_eq!(n, len.min(model.len()));
                    let expected: Vec<u8> = model.iter().take(n).copied().collect();
                    prop_assert_eq!(&buf[..n], &expected[..]);
                }
                StreamOp::ReadGrant { take } => {
                    let grant = daemon.tx().read_grant().unwrap();
                    prop_assert_eq!(grant.len(), model.len());
                    let (a, b) = grant.as_slices();
                    let got: Vec<u8> = a.iter().chain(b).copied().collect();
                    let expected: Vec<u8> = model.iter().copied().collect();
                    prop_assert_eq!(got, expected);
                    let n = take.min(model.len());
                    grant.consume(n).unwrap();
                    model.drain(..n);
                }
                StreamOp::Skip(len) => {
                    let n = daemon.tx().skip(len).unwrap();
                    prop_assert_eq!(n, len.min(model.len()));
                    model.drain(..n);
                }
            }
            prop_assert_eq!(daemon.tx().readable().unwrap(), model.len());
            prop_assert_eq!(app.tx().writable().unwrap(), cap - model.len());
            prop_assert_eq!(app.tx().unconsumed().unwrap(), model.len());
        }
        app.tx().close().unwrap();
        prop_assert_eq!(daemon.tx().producer_end().unwrap(), ProducerEnd::Closed);
        prop_assert_eq!(daemon.tx().is_finished().unwrap(), model.is_empty());
        prop_assert!(matches!(app.tx().write(b"x"), Err(RingError::Closed)));
        let mut rest = vec![0u8; model.len()];
        prop_assert_eq!(daemon.tx().read(&mut rest).unwrap(), model.len());
        prop_assert!(daemon.tx().is_finished().unwrap());
    }
}

#[derive(Debug, Clone)]
enum DatagramOp {
    Push(usize),
    PushVectored(Vec<usize>),
    Pop(usize),
    Peek(usize),
    NextLen,
    Grant,
}

fn datagram_case() -> impl Strategy<Value = (usize, Vec<DatagramOp>)> {
    prop_oneof![Just(16usize), Just(32), Just(64), Just(256)].prop_flat_map(|cap| {
        let len = 0..=cap;
        let op = prop_oneof![
            3 => len.clone().prop_map(DatagramOp::Push),
            1 => prop::collection::vec(0..=cap / 3, 0..4).prop_map(DatagramOp::PushVectored),
            3 => len.clone().prop_map(DatagramOp::Pop),
            1 => len.prop_map(DatagramOp::Peek),
            1 => Just(DatagramOp::NextLen),
            1 => Just(DatagramOp::Grant),
        ];
        (Just(cap), prop::collection::vec(op, 1..200))
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn datagram_ring_keeps_boundaries((cap, ops) in datagram_case()) {
        let region = SharedRegion::anonymous(RegionKind::Datagram, 16, cap as u32).unwrap();
        let (mut app, mut daemon) = region.split().unwrap();
        let max = cap - RECORD_HEADER;
        prop_assert_eq!(daemon.rx().max_datagram(), max);
        let mut model: VecDeque<Vec<u8>> = VecDeque::new();
        let mut seq = 0u64;
        let mut make = |len: usize| -> Vec<u8> {
            seq += 1;
            (0..len as u64).map(|i| pattern(seq.wrapping_mul(1 << 20) + i)).collect()
        };
        let used = |m: &VecDeque<Vec<u8>>| m.iter().map(|d| d.len() + RECORD_HEADER).sum::<usize>();
        // The daemon produces RX; the app consumes it.
        for op in ops {
            match op {
                DatagramOp::Push(len) => {
                    let data = make(len);
                    let result = daemon.rx().push(&data);
                    if len > max {
                        prop_assert!(matches!(result, Err(RingError::TooLarge { .. })), "expected TooLarge");
                    } else if used(&model) + RECORD_HEADER + len <= cap {
                        prop_assert!(result.unwrap());
                        model.push_back(data);
                    } else {
                        prop_assert!(!result.unwrap());
                    }
                }
                DatagramOp::PushVectored(lens) => {
                    let parts: Vec<Vec<u8>> = lens.iter().map(|&l| make(l)).collect();
                    let slices: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
                    let whole = parts.concat();
                    let result = daemon.rx().push_vectored(&slices);
                    if whole.len() > max {
                        prop_assert!(matches!(result, Err(RingError::TooLarge { .. })), "expected TooLarge");
                    } else if used(&model) + RECORD_HEADER + whole.len() <= cap {
                        prop_assert!(result.unwrap());
                        model.push_back(whole);
                    } else {
                        prop_assert!(!result.unwrap());
                    }
                }
                DatagramOp::Pop(buf_len) | DatagramOp::Peek(buf_len) => {
                    let peek = matches!(op, DatagramOp::Peek(_));
                    let mut buf = vec![0u8; buf_len];
                    let got = if peek { app.rx().peek_datagram(&mut buf) } else { app.rx().pop(&mut buf) }.unwrap();
                    match model.front() {
                        None => prop_assert_eq!(got, None),
                        Some(front) => {
                            let d = got.unwrap();
                            prop_assert_eq!(d.len, front.len());
                            prop_assert_eq!(d.copied, front.len().min(buf_len));
                            prop_assert_eq!(d.truncated(), front.len() > buf_len);
                            prop_assert_eq!(&buf[..d.copied], &front[..d.copied]);
                            if !peek {
                                model.pop_front();
                            }
                        }
                    }
                }
                DatagramOp::NextLen => {
                    prop_assert_eq!(app.rx().next_datagram_len().unwrap(), model.front().map(|d| d.len()));
                }
                DatagramOp::Grant => {
                    let grant = app.rx().datagram_grant().unwrap();
                    match (grant, model.pop_front()) {
                        (None, None) => {}
                        (Some(g), Some(front)) => {
                            let (a, b) = g.as_slices();
                            let got: Vec<u8> = a.iter().chain(b).copied().collect();
                            prop_assert_eq!(got, front);
                            g.consume();
                        }
                        (g, f) => prop_assert!(false, "grant {:?} vs model {:?}", g.map(|g| g.len()), f),
                    }
                }
            }
            prop_assert_eq!(app.rx().readable().unwrap(), used(&model));
        }
        // Stream operations are refused on a datagram ring and vice versa.
        prop_assert!(matches!(daemon.rx().write(b"x"), Err(RingError::WrongKind(_))));
        prop_assert!(matches!(app.rx().read(&mut [0u8; 4]), Err(RingError::WrongKind(_))));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Detach at a random point: what the app read plus what the daemon gets back is exactly
    /// what the daemon wrote (RX), and the daemon consumes exactly what the app wrote (TX).
    #[test]
    fn detach_loses_and_duplicates_nothing(
        cap in prop_oneof![Just(16u32), Just(64), Just(1024)],
        steps in prop::collection::vec((0u8..4, 0usize..200), 0..100),
    ) {
        let region = SharedRegion::anonymous(RegionKind::Stream, cap, cap).unwrap();
        let (mut app, mut daemon) = region.split().unwrap();
        let (mut rx_sent, mut rx_read, mut tx_sent, mut tx_read) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (what, len) in steps {
            let mut buf = vec![0u8; len];
            match what {
                0 => {
                    let data: Vec<u8> = (0..len as u64).map(|i| pattern(rx_sent.len() as u64 + i)).collect();
                    let n = daemon.rx().write(&data).unwrap();
                    rx_sent.extend_from_slice(&data[..n]);
                }
                1 => {
                    let n = app.rx().read(&mut buf).unwrap();
                    rx_read.extend_from_slice(&buf[..n]);
                }
                2 => {
                    let data: Vec<u8> = (0..len as u64).map(|i| pattern(!(tx_sent.len() as u64 + i))).collect();
                    let n = app.tx().write(&data).unwrap();
                    tx_sent.extend_from_slice(&data[..n]);
                }
                _ => {
                    let n = daemon.tx().read(&mut buf).unwrap();
                    tx_read.extend_from_slice(&buf[..n]);
                }
            }
        }
        prop_assert!(app.detach_outcome().unwrap().is_none());
        app.request_detach().unwrap();
        prop_assert!(matches!(app.tx().write(b"x"), Err(RingError::Closed)));
        prop_assert!(matches!(app.rx().read(&mut [0u8; 1]), Err(RingError::Closed)));
        prop_assert!(daemon.app_requested_detach());
        let mut detached = daemon.detach().unwrap();
        prop_assert_eq!(detached.discard_filler, 0);
        // The one doorbell the daemon writes at detach is what the app discards.
        prop_assert_eq!(app.detach_outcome().unwrap().unwrap().discard_doorbells, 1);
        let (a, b) = detached.rx_remainder.as_slices();
        rx_read.extend_from_slice(a);
        rx_read.extend_from_slice(b);
        prop_assert_eq!(&rx_read, &rx_sent);
        let mut buf = vec![0u8; cap as usize];
        loop {
            let n = detached.tx.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            tx_read.extend_from_slice(&buf[..n]);
        }
        prop_assert_eq!(detached.tx.producer_end().unwrap(), ProducerEnd::Sealed);
        prop_assert!(detached.tx.is_finished().unwrap());
        prop_assert_eq!(&tx_read, &tx_sent);
    }
}

#[test]
fn capacities_must_be_powers_of_two_in_range() {
    for cap in [0u32, 1, 8, 15, 24, 100, (1 << 30) + 1, u32::MAX] {
        assert!(matches!(
            SharedRegion::anonymous(RegionKind::Stream, cap, 16),
            Err(RingError::InvalidCapacity(_))
        ));
    }
}

#[test]
fn a_datagram_of_the_maximum_size_fits_an_empty_ring_exactly() {
    let (mut app, mut daemon) = SharedRegion::anonymous(RegionKind::Datagram, 64, 16)
        .unwrap()
        .split()
        .unwrap();
    let max = app.tx().max_datagram();
    assert_eq!(max, 60);
    let payload: Vec<u8> = (0..max as u64).map(pattern).collect();
    // Leave the indices mid-ring so the maximal record wraps.
    assert!(app.tx().push(&[1, 2, 3]).unwrap());
    assert_eq!(daemon.tx().pop(&mut [0u8; 8]).unwrap().unwrap().len, 3);
    assert!(app.tx().push(&payload).unwrap());
    assert!(!app.tx().push(&[]).unwrap(), "ring is full");
    let mut buf = vec![0u8; 100];
    let d = daemon.tx().pop(&mut buf).unwrap().unwrap();
    assert_eq!((d.len, d.copied), (max, max));
    assert_eq!(&buf[..max], &payload[..]);
    assert!(
        app.tx().push(&[]).unwrap(),
        "an empty datagram is a record too"
    );
    assert_eq!(daemon.tx().pop(&mut buf).unwrap().unwrap().len, 0);
    assert_eq!(daemon.tx().pop(&mut buf).unwrap(), None);
}
