//! Per-flow queues in front of a link, served by deficit round robin (Shreedhar & Varghese),
//! with back-pressure per flow: a flow over its byte limit is refused and told when it drains
//! below the low-water mark; every other flow keeps its own room.

use ahash::AHashMap as HashMap;
use std::collections::VecDeque;

use super::FlowId;

/// A packet with its flow and its place in enqueue order across all flows (so `take_all`
/// can return everything oldest first, whatever DRR did to the sending order).
#[derive(Debug)]
pub(crate) struct Held {
    pub order: u64,
    pub flow: FlowId,
    pub packet: Vec<u8>,
}

#[derive(Debug, Default)]
struct FlowQueue {
    /// (enqueue order across all flows, packet)
    packets: VecDeque<(u64, Vec<u8>)>,
    bytes: usize,
    deficit: usize,
    /// Refused a packet and not yet told it may resume.
    blocked: bool,
}

#[derive(Debug)]
pub(crate) struct FlowQueues {
    flows: HashMap<FlowId, FlowQueue>,
    /// Flows with packets, in service order; the front is being served.
    ring: VecDeque<FlowId>,
    /// The front of `ring` has been granted its quantum for this visit.
    front_granted: bool,
    quantum: usize,
    limit: usize,
    low_water: usize,
    writable: VecDeque<FlowId>,
    next_order: u64,
    total_bytes: usize,
    total_packets: usize,
}

impl FlowQueues {
    pub fn new(quantum: usize, limit: usize, low_water: usize) -> Self {
        FlowQueues {
            flows: HashMap::new(),
            ring: VecDeque::new(),
            front_granted: false,
            quantum: quantum.max(1),
            limit,
            low_water: low_water.min(limit),
            writable: VecDeque::new(),
            next_order: 0,
            total_bytes: 0,
            total_packets: 0,
        }
    }

    /// Queues `packet` on `flow` unless that flow is over its limit (then the packet comes
    /// back). An empty queue always takes one packet, whatever its size.
    pub fn push(&mut self, flow: FlowId, packet: Vec<u8>) -> Result<(), Vec<u8>> {
        self.push_with_limit(flow, packet, self.limit)
    }

    /// `push` with another byte limit for this flow's queue (relayed traffic).
    pub fn push_with_limit(
        &mut self,
        flow: FlowId,
        packet: Vec<u8>,
        limit: usize,
    ) -> Result<(), Vec<u8>> {
        let queue = self.flows.entry(flow).or_default();
        if queue.bytes > 0 && queue.bytes + packet.len() > limit {
            queue.blocked = true;
            return Err(packet);
        }
        let was_idle = queue.packets.is_empty();
        queue.bytes += packet.len();
        self.total_bytes += packet.len();
        self.total_packets += 1;
        queue.packets.push_back((self.next_order, packet));
        self.next_order += 1;
        if was_idle {
            self.ring.push_back(flow);
            if self.ring.len() == 1 {
                self.settle_front();
            }
        }
        Ok(())
    }

    /// Size of the packet `pop` would return.
    pub fn peek_len(&self) -> Option<usize> {
        let flow = self.ring.front()?;
        self.flows.get(flow)?.packets.front().map(|(_, p)| p.len())
    }

    pub fn pop(&mut self) -> Option<Held> {
        let flow = *self.ring.front()?;
        let queue = self.flows.get_mut(&flow)?;
        let (order, packet) = queue.packets.pop_front()?;
        queue.bytes -= packet.len();
        queue.deficit = queue.deficit.saturating_sub(packet.len());
        self.total_bytes -= packet.len();
        self.total_packets -= 1;
        if queue.blocked && queue.bytes <= self.low_water {
            queue.blocked = false;
            self.writable.push_back(flow);
        }
        if queue.packets.is_empty() {
            self.flows.remove(&flow);
            self.ring.pop_front();
            self.front_granted = false;
        }
        self.settle_front();
        Some(Held {
            order,
            flow,
            packet,
        })
    }

    /// Rotates the ring until its front may send its head packet, granting each flow one
    /// quantum per visit: exact DRR, driven one packet at a time.
    fn settle_front(&mut self) {
        while let Some(&flow) = self.ring.front() {
            let Some(queue) = self.flows.get_mut(&flow) else {
                self.ring.pop_front();
                self.front_granted = false;
                continue;
            };
            if !self.front_granted {
                queue.deficit += self.quantum;
                self.front_granted = true;
            }
            match queue.packets.front() {
                Some((_, packet)) if packet.len() <= queue.deficit => return,
                Some(_) => {
                    self.ring.rotate_left(1);
                    self.front_granted = false;
                }
                None => {
                    self.ring.pop_front();
                    self.front_granted = false;
                }
            }
        }
    }

    pub fn flow_bytes(&self, flow: FlowId) -> usize {
        self.flows.get(&flow).map_or(0, |q| q.bytes)
    }

    pub fn pop_writable(&mut self) -> Option<FlowId> {
        self.writable.pop_front()
    }

    pub fn is_empty(&self) -> bool {
        self.total_packets == 0
    }

    pub fn totals(&self) -> (usize, usize) {
        (self.total_bytes, self.total_packets)
    }

    pub fn flow_count(&self) -> usize {
        self.flows.len()
    }

    /// Empties every queue, oldest packet first; blocked flows are told to resume.
    pub fn drain_all(&mut self) -> Vec<Held> {
        let mut all = Vec::with_capacity(self.total_packets);
        for (flow, queue) in self.flows.drain() {
            if queue.blocked {
                self.writable.push_back(flow);
            }
            all.extend(queue.packets.into_iter().map(|(order, packet)| Held {
                order,
                flow,
                packet,
            }));
        }
        all.sort_unstable_by_key(|held| held.order);
        self.ring.clear();
        self.front_granted = false;
        self.total_bytes = 0;
        self.total_packets = 0;
        all
    }

    /// Queues packets accepted once already (after a reset), in the order given, keeping
    /// their place in the enqueue order and ignoring the limit.
    pub fn requeue(&mut self, packets: Vec<Held>) {
        for Held {
            order,
            flow,
            packet,
        } in packets
        {
            let queue = self.flows.entry(flow).or_default();
            let was_idle = queue.packets.is_empty();
            queue.bytes += packet.len();
            self.total_bytes += packet.len();
            self.total_packets += 1;
            queue.packets.push_back((order, packet));
            if was_idle {
                self.ring.push_back(flow);
            }
        }
        self.settle_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drr_shares_bytes_not_packets() {
        let mut q = FlowQueues::new(1000, 1 << 20, 1 << 19);
        for _ in 0..100 {
            q.push(1, vec![0; 1000]).unwrap();
            q.push(2, vec![0; 100]).unwrap();
            q.push(2, vec![0; 100]).unwrap();
            q.push(2, vec![0; 100]).unwrap();
        }
        let mut bytes = [0usize; 3];
        for _ in 0..120 {
            let held = q.pop().unwrap();
            bytes[held.flow as usize] += held.packet.len();
        }
        // While both are backlogged, each gets about one quantum per round.
        assert!(bytes[1].abs_diff(bytes[2]) <= 1000, "{bytes:?}");
    }

    #[test]
    fn back_pressure_is_per_flow_with_hysteresis() {
        let mut q = FlowQueues::new(100, 300, 100);
        for _ in 0..3 {
            q.push(7, vec![0; 100]).unwrap();
        }
        assert!(q.push(7, vec![0; 100]).is_err());
        q.push(8, vec![0; 100])
            .expect("another flow still has room");
        assert_eq!(q.pop_writable(), None);
        while q.flow_bytes(7) > 100 {
            q.pop();
        }
        assert_eq!(q.pop_writable(), Some(7));
        assert_eq!(q.pop_writable(), None);
    }

    #[test]
    fn drain_returns_oldest_first() {
        let mut q = FlowQueues::new(100, 1000, 500);
        q.push(1, vec![1]).unwrap();
        q.push(2, vec![2]).unwrap();
        q.push(1, vec![3]).unwrap();
        let drained: Vec<u8> = q.drain_all().into_iter().map(|h| h.packet[0]).collect();
        assert_eq!(drained, vec![1, 2, 3]);
        assert!(q.is_empty());
        assert_eq!(q.peek_len(), None);
    }
}
