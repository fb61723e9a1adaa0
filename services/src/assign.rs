//! The assignment rule every node of a component computes alike from the same flooded
//! records: rendezvous (highest-random-weight) hashing, with claims for stickiness.

use weft_core::NodeId;

/// The rendezvous weight of `node` for `address`: a fixed bijective mix (splitmix64's
/// finaliser) of the pair, so every build and every node ranks alike and no two candidates of
/// one address ever tie.
pub fn weight(address: NodeId, node: NodeId) -> u64 {
    let mut x = ((address.0 as u64) << 32) | node.0 as u64;
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The candidate rendezvous hashing prefers for `address` (what a fresh assignment gives).
pub fn preferred(address: NodeId, candidates: impl IntoIterator<Item = NodeId>) -> Option<NodeId> {
    candidates.into_iter().max_by_key(|&n| weight(address, n))
}

/// One live candidate of an address: a node that serves it, and whether it claims it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    pub node: NodeId,
    pub claimed: bool,
}

/// The owner of `address` among the live candidates of one component: the preferred
/// claimant if any candidate claims it (an owner keeps the address while it lives and
/// serves; two claimants meet only after a merge, and the same one wins everywhere), else the
/// preferred candidate. `None` only when there is no candidate.
pub fn owner(address: NodeId, candidates: &[Candidate]) -> Option<NodeId> {
    preferred(
        address,
        candidates.iter().filter(|c| c.claimed).map(|c| c.node),
    )
    .or_else(|| preferred(address, candidates.iter().map(|c| c.node)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn c(node: u32, claimed: bool) -> Candidate {
        Candidate {
            node: NodeId(node),
            claimed,
        }
    }

    #[test]
    fn claims_win_and_order_does_not_matter() {
        let a = NodeId(0x0a09_0001);
        let all = [c(1, false), c(2, false), c(3, false)];
        let fresh = owner(a, &all).unwrap();
        let mut rev = all;
        rev.reverse();
        assert_eq!(owner(a, &rev), Some(fresh));
        // Whoever claims keeps it, even if not preferred.
        let other = all.iter().find(|x| x.node != fresh).unwrap().node;
        let claimed: Vec<Candidate> = all.iter().map(|x| c(x.node.0, x.node == other)).collect();
        assert_eq!(owner(a, &claimed), Some(other));
        // Two claimants (a merge): the preferred of them, everywhere.
        let both: Vec<Candidate> = all.iter().map(|x| c(x.node.0, true)).collect();
        assert_eq!(owner(a, &both), Some(fresh));
        assert_eq!(owner(a, &[]), None);
    }

    #[test]
    fn balanced_across_addresses() {
        // 3000 addresses over 3 candidates: each gets a third, give or take 10 %.
        let nodes = [
            NodeId(0x0a00_0001),
            NodeId(0x0a00_0002),
            NodeId(0x0a00_0003),
        ];
        let mut count: BTreeMap<NodeId, u32> = BTreeMap::new();
        for i in 0..3000u32 {
            let a = NodeId(0x0a64_0000 + i);
            *count.entry(preferred(a, nodes).unwrap()).or_default() += 1;
        }
        for n in nodes {
            let k = count.get(&n).copied().unwrap_or(0);
            assert!((900..=1100).contains(&k), "{n}: {k} of 3000");
        }
    }

    #[test]
    fn removing_a_non_owner_keeps_the_owner() {
        let nodes: Vec<NodeId> = (1..=5).map(NodeId).collect();
        for i in 0..500u32 {
            let a = NodeId(0x0a64_0000 + i);
            let best = preferred(a, nodes.iter().copied()).unwrap();
            for gone in &nodes {
                if *gone == best {
                    continue;
                }
                let rest = nodes.iter().copied().filter(|n| n != gone);
                assert_eq!(preferred(a, rest), Some(best));
            }
        }
    }
}
