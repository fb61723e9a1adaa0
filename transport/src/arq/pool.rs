//! Packet buffers for reuse. A relay receives a packet on one link and queues it on another,
//! whose ARQ frees it when the next hop acknowledges it; one pool shared by all of a node's
//! links carries the freed buffers back to the receiving side, so a relay in steady state
//! allocates nothing per packet.

/// Spare packet buffers (empty, with their capacity kept).
#[derive(Debug)]
pub struct BufferPool {
    spare: Vec<Vec<u8>>,
    limit: usize,
}

impl BufferPool {
    /// A pool keeping at most `limit` spare buffers (the rest are freed).
    pub fn new(limit: usize) -> Self {
        BufferPool {
            spare: Vec::new(),
            limit,
        }
    }

    /// A pool that keeps nothing (every buffer is freed, every take allocates).
    pub fn none() -> Self {
        BufferPool::new(0)
    }

    /// An empty buffer, reused when one is spare.
    pub fn take(&mut self) -> Vec<u8> {
        self.spare.pop().unwrap_or_default()
    }

    /// A buffer no longer needed.
    pub fn give(&mut self, mut buf: Vec<u8>) {
        if self.spare.len() < self.limit && buf.capacity() > 0 {
            buf.clear();
            self.spare.push(buf);
        }
    }

    pub fn spare(&self) -> usize {
        self.spare.len()
    }
}

impl Default for BufferPool {
    /// Enough for a few windows of packets in flight across a node's links.
    fn default() -> Self {
        BufferPool::new(4096)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_up_to_its_limit() {
        let mut pool = BufferPool::new(2);
        let mut a = pool.take();
        a.extend_from_slice(&[1; 100]);
        let cap = a.capacity();
        pool.give(a);
        pool.give(vec![2; 10]);
        pool.give(vec![3; 10]);
        assert_eq!(pool.spare(), 2, "the third buffer is freed");
        let b = pool.take();
        assert!(b.is_empty());
        let c = pool.take();
        assert!(c.is_empty() && (b.capacity() == cap || c.capacity() == cap));
        let mut none = BufferPool::none();
        none.give(vec![1]);
        assert_eq!(none.spare(), 0);
    }
}
