//! A FIFO of packets waiting for their due time, in one preallocated buffer: packets are read
//! straight into the next free slot and written out from it, with no allocation per packet.

use weft_core::Instant;

pub struct PacketRing {
    slot_size: usize,
    data: Vec<u8>,
    meta: Vec<(usize, Instant)>,
    head: usize,
    len: usize,
}

impl PacketRing {
    pub fn new(slots: usize, slot_size: usize) -> Self {
        let slots = slots.max(1);
        PacketRing {
            slot_size,
            data: vec![0; slots * slot_size],
            meta: vec![(0, Instant::ZERO); slots],
            head: 0,
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn tail(&self) -> usize {
        (self.head + self.len) % self.meta.len()
    }

    /// The buffer of the next free slot, or None when full. Nothing is queued until `commit`.
    pub fn free_slot(&mut self) -> Option<&mut [u8]> {
        if self.len == self.meta.len() {
            return None;
        }
        let start = self.tail() * self.slot_size;
        Some(&mut self.data[start..start + self.slot_size])
    }

    /// Queue the packet written into the free slot.
    pub fn commit(&mut self, len: usize, due: Instant) {
        if self.len == self.meta.len() {
            return;
        }
        let tail = self.tail();
        self.meta[tail] = (len.min(self.slot_size), due);
        self.len += 1;
    }

    /// The packet at the head and its due time.
    pub fn front(&self) -> Option<(Instant, &[u8])> {
        if self.len == 0 {
            return None;
        }
        let (len, due) = self.meta[self.head];
        let start = self.head * self.slot_size;
        Some((due, &self.data[start..start + len]))
    }

    pub fn front_due(&self) -> Option<Instant> {
        (self.len > 0).then(|| self.meta[self.head].1)
    }

    pub fn pop(&mut self) {
        if self.len > 0 {
            self.head = (self.head + 1) % self.meta.len();
            self.len -= 1;
        }
    }

    /// Drop everything queued; returns how many packets were discarded.
    pub fn clear(&mut self) -> usize {
        let n = self.len;
        self.len = 0;
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifo_order_wraps_and_reports_full() {
        let mut ring = PacketRing::new(3, 8);
        for round in 0..4u8 {
            for i in 0..3u8 {
                let slot = ring.free_slot().expect("room");
                slot[0] = round * 10 + i;
                ring.commit(1, Instant::from_nanos(u64::from(i)));
            }
            assert!(ring.free_slot().is_none());
            for i in 0..3u8 {
                let (due, bytes) = ring.front().unwrap();
                assert_eq!(due, Instant::from_nanos(u64::from(i)));
                assert_eq!(bytes, &[round * 10 + i]);
                ring.pop();
            }
            assert!(ring.is_empty());
        }
        ring.free_slot().unwrap();
        ring.commit(4, Instant::ZERO);
        assert_eq!(ring.clear(), 1);
        assert_eq!(ring.front(), None);
    }
}
