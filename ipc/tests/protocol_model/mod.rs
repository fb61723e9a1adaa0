//! The models behind `ring_protocol.rs`: the socketpair and eventfd ([`World`]), and the app
//! and the daemon as state machines whose every protocol call and syscall is one step.

use std::collections::VecDeque;

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use weft_ipc::ring::{
    AppEnd, DaemonDetached, DaemonEnd, FillerAction, ProducerEnd, RegionKind, RxWaitDecision,
    WaitDecision, Wakeup, RECORD_HEADER,
};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Item {
    Doorbell,
    Filler,
    Data(u8),
    Eof,
}

/// The socketpair (one queue per direction) and the eventfd.
pub struct World {
    pub to_app: VecDeque<Item>,
    pub to_daemon: VecDeque<Item>,
    /// Filler the app can write before `EAGAIN` (its small `SO_SNDBUF`).
    pub to_daemon_limit: usize,
    pub eventfd: u64,
    /// An edge on the daemon's socket end not yet seen by its (edge-triggered) epoll.
    pub daemon_edge: bool,
}

impl World {
    pub fn app_writable(&self) -> bool {
        // AF_UNIX reports POLLOUT only while the queue is at most a quarter full.
        self.to_daemon.len() * 4 <= self.to_daemon_limit
    }
}

pub fn tx_byte(i: usize) -> u8 {
    (i as u64)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .rotate_left(17) as u8
}

pub fn rx_byte(i: usize) -> u8 {
    (i as u64)
        .wrapping_mul(0xD134_2543_DE82_EF95)
        .rotate_left(29) as u8
}

#[derive(Debug, Clone, Copy)]
pub enum AppPc {
    Idle,
    Read,
    AfterRead,
    ArmRead,
    DrainDoorbells(u64),
    Write,
    AfterWrite,
    BlockWrite,
    WriteFiller,
    Recheck(u64),
    Close,
    RequestDetach,
    AwaitDetach,
    Plain,
}

pub struct App {
    pub end: AppEnd,
    pub kind: RegionKind,
    /// A datagram that did not fit yet (retried as is) and the bytes a blocked write needs.
    pub pending_tx: Option<usize>,
    pub tx_need: usize,
    pub tx_lens: Vec<usize>,
    pub rx_lens: Vec<usize>,
    pub pc: AppPc,
    pub tx_total: usize,
    pub tx_sent: usize,
    pub tx_closed: bool,
    pub rx_got: Vec<u8>,
    pub rx_done: bool,
    pub want_read: bool,
    pub want_write: bool,
    pub detach_after: Option<usize>,
    pub steps: usize,
    /// Retries since the last successful read or write: a correct recheck only says Retry
    /// when the next attempt succeeds, so this stays tiny; a growing count is a busy loop.
    pub retries: usize,
}

impl App {
    pub fn retry(&mut self) {
        self.retries += 1;
        assert!(self.retries < 3, "the app spins: Retry without progress");
    }

    pub fn finished(&self) -> bool {
        self.rx_done && self.tx_closed && matches!(self.pc, AppPc::Idle | AppPc::Plain)
    }

    pub fn runnable(&self, world: &World) -> bool {
        match self.pc {
            AppPc::Idle => !self.choices(world).is_empty(),
            AppPc::AwaitDetach => !world.to_app.is_empty(),
            AppPc::Plain => !self.rx_done && !world.to_app.is_empty(),
            _ => true,
        }
    }

    pub fn choices(&self, world: &World) -> Vec<AppPc> {
        let mut c = Vec::new();
        if self.detach_after.is_some_and(|at| self.steps >= at) {
            return vec![AppPc::RequestDetach];
        }
        if !self.rx_done && (!self.want_read || !world.to_app.is_empty()) {
            c.push(AppPc::Read);
        }
        if self.tx_sent < self.tx_total && (!self.want_write || world.app_writable()) {
            c.push(AppPc::Write);
        }
        if self.tx_sent == self.tx_total && !self.tx_closed {
            c.push(AppPc::Close);
        }
        c
    }

    pub fn step(&mut self, world: &mut World, rng: &mut ChaCha8Rng) {
        self.steps += 1;
        let wake = |w: Wakeup, world: &mut World| {
            if w == Wakeup::Needed {
                world.eventfd += 1;
            }
        };
        self.pc = match self.pc {
            AppPc::Idle => {
                let c = self.choices(world);
                let next = c[rng.gen_range(0..c.len())];
                match next {
                    AppPc::Read => self.want_read = false,
                    AppPc::Write => self.want_write = false,
                    _ => {}
                }
                next
            }
            AppPc::Read => {
                let n = match self.kind {
                    RegionKind::Stream => {
                        let mut buf = vec![0u8; rng.gen_range(1..64)];
                        let n = self.end.rx().read(&mut buf).unwrap();
                        self.rx_got.extend_from_slice(&buf[..n]);
                        n
                    }
                    RegionKind::Datagram => {
                        let mut buf = vec![0u8; self.end.rx().capacity()];
                        match self.end.rx().pop(&mut buf).unwrap() {
                            Some(d) => {
                                self.rx_got.extend_from_slice(&buf[..d.len]);
                                self.rx_lens.push(d.len);
                                d.len + RECORD_HEADER
                            }
                            None => 0,
                        }
                    }
                };
                if n > 0 {
                    AppPc::AfterRead
                } else if self.end.rx().is_finished().unwrap() {
                    self.rx_done = true;
                    AppPc::Idle
                } else {
                    AppPc::ArmRead
                }
            }
            AppPc::AfterRead => {
                self.retries = 0;
                wake(self.end.after_rx_consume(), world);
                AppPc::Idle
            }
            AppPc::ArmRead => match self.end.prepare_rx_sleep().unwrap() {
                RxWaitDecision::Retry => {
                    self.retry();
                    AppPc::Read
                }
                RxWaitDecision::Sleep { drain_doorbells } => AppPc::DrainDoorbells(drain_doorbells),
            },
            AppPc::DrainDoorbells(max) => {
                let mut drained = 0;
                while drained < max && !world.to_app.is_empty() {
                    assert_eq!(
                        world.to_app.pop_front(),
                        Some(Item::Doorbell),
                        "data before detach"
                    );
                    drained += 1;
                }
                self.end.doorbells_drained(drained).unwrap();
                self.want_read = true;
                AppPc::Idle
            }
            AppPc::Write => {
                let remaining = self.tx_total - self.tx_sent;
                let n = match self.kind {
                    RegionKind::Stream => {
                        let len = rng.gen_range(1..64).min(remaining);
                        let data: Vec<u8> =
                            (self.tx_sent..self.tx_sent + len).map(tx_byte).collect();
                        self.tx_need = 1;
                        self.end.tx().write(&data).unwrap()
                    }
                    RegionKind::Datagram => {
                        let max = self.end.tx().max_datagram().min(remaining);
                        let len = *self
                            .pending_tx
                            .get_or_insert_with(|| rng.gen_range(0..=max));
                        let data: Vec<u8> =
                            (self.tx_sent..self.tx_sent + len).map(tx_byte).collect();
                        self.tx_need = len + RECORD_HEADER;
                        if self.end.tx().push(&data).unwrap() {
                            self.pending_tx = None;
                            self.tx_lens.push(len);
                            // Count the record, not the payload, as progress (empty datagrams too).
                            self.tx_sent += len;
                            len + RECORD_HEADER
                        } else {
                            0
                        }
                    }
                };
                if self.kind == RegionKind::Stream {
                    self.tx_sent += n;
                }
                if n > 0 {
                    AppPc::AfterWrite
                } else {
                    AppPc::BlockWrite
                }
            }
            AppPc::AfterWrite => {
                self.retries = 0;
                wake(self.end.after_tx_publish(), world);
                AppPc::Idle
            }
            AppPc::BlockWrite => {
                self.end.prepare_tx_block(self.tx_need);
                AppPc::WriteFiller
            }
            AppPc::WriteFiller => {
                let mut written = 0;
                while world.to_daemon.len() < world.to_daemon_limit {
                    world.to_daemon.push_back(Item::Filler);
                    written += 1;
                }
                if written > 0 {
                    world.daemon_edge = true;
                }
                AppPc::Recheck(written)
            }
            AppPc::Recheck(written) => {
                match self.end.filler_written(written, self.tx_need).unwrap() {
                    WaitDecision::Retry => {
                        self.retry();
                        AppPc::Write
                    }
                    WaitDecision::Sleep => {
                        self.want_write = true;
                        AppPc::Idle
                    }
                }
            }
            AppPc::Close => {
                self.end.tx().close().unwrap();
                wake(self.end.after_tx_publish(), world);
                self.tx_closed = true;
                AppPc::Idle
            }
            AppPc::RequestDetach => {
                self.detach_after = None;
                self.end.request_detach().unwrap();
                world.eventfd += 1;
                AppPc::AwaitDetach
            }
            AppPc::AwaitDetach => match self.end.detach_outcome().unwrap() {
                // Readable but not detached yet: an ordinary doorbell; poll again.
                None => AppPc::AwaitDetach,
                Some(outcome) => {
                    for _ in 0..outcome.discard_doorbells {
                        assert_eq!(
                            world.to_app.pop_front(),
                            Some(Item::Doorbell),
                            "discarded a non-doorbell"
                        );
                    }
                    // From here the socket is plain: write the rest of the stream and the EOF.
                    if !self.tx_closed {
                        world
                            .to_daemon
                            .extend((self.tx_sent..self.tx_total).map(|i| Item::Data(tx_byte(i))));
                        world.to_daemon.push_back(Item::Eof);
                        world.daemon_edge = true;
                        self.tx_sent = self.tx_total;
                        self.tx_closed = true;
                    }
                    AppPc::Plain
                }
            },
            AppPc::Plain => {
                match world.to_app.pop_front() {
                    Some(Item::Data(b)) => self.rx_got.push(b),
                    Some(Item::Eof) => self.rx_done = true,
                    other => panic!("app read {other:?} from a plain socket"),
                }
                AppPc::Plain
            }
        };
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DaemonPc {
    Wake,
    Consume,
    Filler,
    Produce,
    AfterProduce,
    RxFull,
    Idle,
    ArmTx,
    Asleep,
    Plain,
}

pub struct Daemon {
    pub end: Option<DaemonEnd>,
    pub kind: RegionKind,
    pub pending_rx: Option<usize>,
    pub rx_need: usize,
    pub tx_lens: Vec<usize>,
    pub rx_lens: Vec<usize>,
    pub detached: Option<DaemonDetached>,
    pub pc: DaemonPc,
    pub tx_got: Vec<u8>,
    pub tx_done: bool,
    pub rx_total: usize,
    pub rx_sent: usize,
    pub rx_closed: bool,
    pub rx_blocked: bool,
    pub tx_asleep: bool,
    pub plain_incoming: bool,
}

impl Daemon {
    pub fn end(&mut self) -> &mut DaemonEnd {
        self.end.as_mut().expect("daemon end before detach")
    }

    pub fn runnable(&self, world: &World) -> bool {
        match self.pc {
            DaemonPc::Asleep => world.eventfd > 0 || world.daemon_edge,
            DaemonPc::Plain => !self.tx_done && !world.to_daemon.is_empty(),
            _ => true,
        }
    }

    pub fn finished(&self) -> bool {
        self.tx_done && (self.rx_closed || self.detached.is_some())
    }

    pub fn ring_doorbell(&mut self, wake: Wakeup, world: &mut World) {
        if wake == Wakeup::Needed && world.to_app.len() < 64 {
            world.to_app.push_back(Item::Doorbell);
            self.end().doorbell_written();
        }
    }

    pub fn step(&mut self, world: &mut World, rng: &mut ChaCha8Rng) {
        self.pc = match self.pc {
            DaemonPc::Asleep | DaemonPc::Wake => {
                // The eventfd is reset before the rings are looked at, never after.
                world.eventfd = 0;
                world.daemon_edge = false;
                self.rx_blocked = false;
                self.tx_asleep = false;
                if self.end().app_requested_detach() {
                    self.detach(world);
                    DaemonPc::Plain
                } else {
                    DaemonPc::Consume
                }
            }
            DaemonPc::Consume => {
                match self.kind {
                    RegionKind::Stream => {
                        let mut buf = vec![0u8; rng.gen_range(1..64)];
                        let n = self.end().tx().read(&mut buf).unwrap();
                        self.tx_got.extend_from_slice(&buf[..n]);
                    }
                    RegionKind::Datagram => {
                        let mut buf = vec![0u8; self.end().tx().capacity()];
                        if let Some(d) = self.end().tx().pop(&mut buf).unwrap() {
                            self.tx_got.extend_from_slice(&buf[..d.len]);
                            self.tx_lens.push(d.len);
                        }
                    }
                }
                DaemonPc::Filler
            }
            DaemonPc::Filler => {
                let readable = !world.to_daemon.is_empty();
                if self.end().filler_action(readable).unwrap() == FillerAction::Drain {
                    let mut drained = 0;
                    while let Some(item) = world.to_daemon.pop_front() {
                        assert_eq!(item, Item::Filler, "data before detach");
                        drained += 1;
                    }
                    self.end().filler_drained(drained);
                }
                DaemonPc::Produce
            }
            DaemonPc::Produce => {
                if self.rx_closed || self.rx_blocked {
                    DaemonPc::Idle
                } else if self.rx_sent == self.rx_total {
                    let wake = self.end().close_rx().unwrap();
                    self.rx_closed = true;
                    self.ring_doorbell(wake, world);
                    DaemonPc::Idle
                } else {
                    let remaining = self.rx_total - self.rx_sent;
                    let published = match self.kind {
                        RegionKind::Stream => {
                            let len = rng.gen_range(1..64).min(remaining);
                            let data: Vec<u8> =
                                (self.rx_sent..self.rx_sent + len).map(rx_byte).collect();
                            self.rx_need = 1;
                            let n = self.end().rx().write(&data).unwrap();
                            self.rx_sent += n;
                            n > 0
                        }
                        RegionKind::Datagram => {
                            let max = self.end().rx().max_datagram().min(remaining);
                            let len = *self
                                .pending_rx
                                .get_or_insert_with(|| rng.gen_range(0..=max));
                            let data: Vec<u8> =
                                (self.rx_sent..self.rx_sent + len).map(rx_byte).collect();
                            self.rx_need = len + RECORD_HEADER;
                            let pushed = self.end().rx().push(&data).unwrap();
                            if pushed {
                                self.pending_rx = None;
                                self.rx_sent += len;
                                self.rx_lens.push(len);
                            }
                            pushed
                        }
                    };
                    if published {
                        DaemonPc::AfterProduce
                    } else {
                        DaemonPc::RxFull
                    }
                }
            }
            DaemonPc::AfterProduce => {
                let wake = self.end().after_rx_publish();
                self.ring_doorbell(wake, world);
                DaemonPc::Idle
            }
            DaemonPc::RxFull => {
                let need = self.rx_need;
                if self.end().prepare_rx_full(need).unwrap() == WaitDecision::Sleep {
                    self.rx_blocked = true;
                }
                DaemonPc::Idle
            }
            DaemonPc::Idle => {
                let end = self.end();
                if end.tx().readable().unwrap() > 0 {
                    DaemonPc::Wake
                } else if end.tx().is_finished().unwrap() {
                    if end.tx().producer_end().unwrap() == ProducerEnd::Sealed {
                        // Not end of stream: the app detached; the bytes go on in the socket.
                        return self.pc = DaemonPc::Wake;
                    }
                    self.tx_done = true;
                    self.sleep_or_loop()
                } else {
                    DaemonPc::ArmTx
                }
            }
            DaemonPc::ArmTx => {
                if self.end().prepare_tx_idle().unwrap() == WaitDecision::Sleep {
                    self.tx_asleep = true;
                }
                self.sleep_or_loop()
            }
            DaemonPc::Plain => {
                match world.to_daemon.pop_front() {
                    Some(Item::Data(b)) => self.tx_got.push(b),
                    Some(Item::Eof) => self.tx_done = true,
                    other => panic!("daemon read {other:?} from a plain socket"),
                }
                DaemonPc::Plain
            }
        };
    }

    pub fn sleep_or_loop(&mut self) -> DaemonPc {
        let tx_quiet = self.tx_asleep || self.tx_done;
        let rx_quiet = self.rx_blocked || self.rx_closed;
        if tx_quiet && rx_quiet {
            DaemonPc::Asleep
        } else {
            DaemonPc::Wake
        }
    }

    /// The daemon's half of a detach, done in one go (its own order of writes is what matters).
    pub fn detach(&mut self, world: &mut World) {
        let end = self.end.take().expect("detach once");
        let mut detached = end.detach().unwrap();
        // Outgoing: the counted doorbell, the remainder, the rest of the stream, EOF.
        world.to_app.push_back(Item::Doorbell);
        let (a, b) = detached.rx_remainder.as_slices();
        world
            .to_app
            .extend(a.iter().chain(b).map(|&x| Item::Data(x)));
        if !self.rx_closed {
            world
                .to_app
                .extend((self.rx_sent..self.rx_total).map(|i| Item::Data(rx_byte(i))));
        }
        world.to_app.push_back(Item::Eof);
        // Incoming: drop the filler, drain TX to the seal, then plain bytes.
        for _ in 0..detached.discard_filler {
            assert_eq!(
                world.to_daemon.pop_front(),
                Some(Item::Filler),
                "discarded a non-filler"
            );
        }
        let mut buf = [0u8; 256];
        loop {
            let n = detached.tx.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            self.tx_got.extend_from_slice(&buf[..n]);
        }
        assert!(detached.tx.is_finished().unwrap());
        if detached.tx.producer_end().unwrap() == ProducerEnd::Closed {
            // The app had closed TX before detaching: the stream ends here.
            self.tx_done = true;
        }
        self.plain_incoming = true;
        self.detached = Some(detached);
    }
}
