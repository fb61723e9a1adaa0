//! Reliable flooding of routing state to one neighbour: every record we owe the neighbour stays
//! pending until it acknowledges that version, and is resent after a timeout.

use crate::overlay::wire::{StateId, StateKind};
use std::collections::BTreeMap;
use std::time::Duration;
use weft_core::{Instant, NodeId};

type RecordKey = (StateKind, NodeId, u32);

#[derive(Debug)]
struct Pending {
    version: u128,
    record: Vec<u8>,
    last_sent: Option<Instant>,
}

#[derive(Debug, Default)]
pub struct FloodQueue {
    pending: BTreeMap<RecordKey, Pending>,
    /// Records never sent yet.
    unsent: usize,
    /// No record was sent before this (it may be earlier than the true oldest after acks;
    /// `due` recomputes it), so nothing is due for a resend before `earliest_sent + rto`.
    earliest_sent: Option<Instant>,
}

impl FloodQueue {
    /// Owe the neighbour this record (replacing an older pending version of it).
    pub fn push(&mut self, id: StateId, record: Vec<u8>) {
        let key = (id.kind, id.origin, id.key);
        match self.pending.get(&key) {
            Some(p) if p.version > id.version => {}
            old => {
                if old.is_none_or(|p| p.last_sent.is_some()) {
                    self.unsent += 1;
                }
                self.pending.insert(
                    key,
                    Pending {
                        version: id.version,
                        record,
                        last_sent: None,
                    },
                );
            }
        }
    }

    pub fn ack(&mut self, id: &StateId) {
        let key = (id.kind, id.origin, id.key);
        if self
            .pending
            .get(&key)
            .is_some_and(|p| p.version <= id.version)
            && self
                .pending
                .remove(&key)
                .is_some_and(|p| p.last_sent.is_none())
        {
            self.unsent -= 1;
        }
    }

    pub fn clear(&mut self) {
        self.pending.clear();
        self.unsent = 0;
        self.earliest_sent = None;
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Records due now (never sent, or sent more than `rto` ago), at most `budget` bytes of
    /// records per batch; marks them sent.
    pub fn due(
        &mut self,
        now: Instant,
        rto: Duration,
        budget: usize,
    ) -> Vec<Vec<(StateKind, Vec<u8>)>> {
        if self.unsent == 0
            && self
                .earliest_sent
                .is_none_or(|t| now.saturating_since(t) < rto)
        {
            return Vec::new();
        }
        self.unsent = 0;
        let mut earliest: Option<Instant> = None;
        let mut batches = Vec::new();
        let mut batch = Vec::new();
        let mut used = 0;
        for ((kind, _, _), p) in self.pending.iter_mut() {
            if let Some(t) = p.last_sent.filter(|t| now.saturating_since(*t) < rto) {
                earliest = Some(earliest.map_or(t, |e| e.min(t)));
                continue;
            }
            let size = p.record.len() + 3;
            if used + size > budget && !batch.is_empty() {
                batches.push(std::mem::take(&mut batch));
                used = 0;
            }
            p.last_sent = Some(now);
            earliest = Some(earliest.map_or(now, |e| e.min(now)));
            batch.push((*kind, p.record.clone()));
            used += size;
        }
        if !batch.is_empty() {
            batches.push(batch);
        }
        self.earliest_sent = earliest;
        batches
    }

    /// When the next resend falls due.
    pub fn next_due(&self, rto: Duration) -> Option<Instant> {
        if self.pending.is_empty() {
            return None;
        }
        self.earliest_sent.map(|t| t + rto)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(origin: u32, version: u128) -> StateId {
        StateId {
            kind: StateKind::LinkState,
            origin: NodeId(origin),
            key: 0,
            version,
        }
    }

    #[test]
    fn resends_until_acked_and_keeps_newest() {
        let mut q = FloodQueue::default();
        let rto = Duration::from_millis(50);
        q.push(id(1, 1), vec![1]);
        q.push(id(1, 3), vec![3]);
        q.push(id(1, 2), vec![2]);
        let t0 = Instant::ZERO;
        let b = q.due(t0, rto, 1000);
        assert_eq!(b, vec![vec![(StateKind::LinkState, vec![3])]]);
        assert!(q.due(t0 + Duration::from_millis(10), rto, 1000).is_empty());
        assert_eq!(q.due(t0 + rto, rto, 1000).len(), 1, "resent after rto");
        q.ack(&id(1, 2));
        assert_eq!(q.len(), 1, "an older ack does not clear a newer record");
        q.ack(&id(1, 3));
        assert!(q.is_empty());
    }

    #[test]
    fn batches_respect_the_budget() {
        let mut q = FloodQueue::default();
        for o in 0..10 {
            q.push(id(o, 1), vec![0; 100]);
        }
        let batches = q.due(Instant::ZERO, Duration::from_secs(1), 350);
        assert_eq!(batches.iter().map(|b| b.len()).sum::<usize>(), 10);
        assert!(batches.iter().all(|b| b.len() <= 3));
    }
}
