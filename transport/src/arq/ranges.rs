//! A set of sequence numbers kept as disjoint, non-touching half-open ranges. The receiver
//! uses it for what arrived above its cumulative point, the sender for what the peer reported
//! by SACK, so both only ever touch the part of an ack that is news.

use std::collections::BTreeMap;

#[derive(Debug, Clone, Default)]
pub(crate) struct SeqRanges {
    /// start → end (exclusive). Invariant: ranges neither overlap nor touch.
    ranges: BTreeMap<u64, u64>,
}

impl SeqRanges {
    pub fn contains(&self, seq: u64) -> bool {
        self.range_containing(seq).is_some()
    }

    pub fn range_containing(&self, seq: u64) -> Option<(u64, u64)> {
        self.ranges
            .range(..=seq)
            .next_back()
            .filter(|(_, &end)| seq < end)
            .map(|(&s, &e)| (s, e))
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    pub fn range_count(&self) -> usize {
        self.ranges.len()
    }

    pub fn clear(&mut self) {
        self.ranges.clear();
    }

    /// Highest ranges first.
    pub fn iter_descending(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.ranges.iter().rev().map(|(&s, &e)| (s, e))
    }

    /// Adds `[start, end)` and calls `fresh(a, b)` for every sub-range `[a, b)` that was not
    /// in the set before (in descending order).
    pub fn insert(&mut self, start: u64, end: u64, mut fresh: impl FnMut(u64, u64)) {
        if start >= end {
            return;
        }
        let (mut lo, mut hi) = (start, end);
        // Everything in [start, top) not yet examined is uncovered.
        let mut top = end;
        while let Some((&s, &e)) = self.ranges.range(..=hi).next_back() {
            if e < lo {
                break;
            }
            self.ranges.remove(&s);
            let uncovered_from = e.max(start);
            if uncovered_from < top {
                fresh(uncovered_from, top);
            }
            top = top.min(s.max(start));
            lo = lo.min(s);
            hi = hi.max(e);
        }
        if start < top {
            fresh(start, top);
        }
        self.ranges.insert(lo, hi);
    }

    /// Forgets every sequence number below `floor`.
    pub fn remove_below(&mut self, floor: u64) {
        while let Some((&s, &e)) = self.ranges.first_key_value() {
            if s >= floor {
                break;
            }
            self.ranges.remove(&s);
            if e > floor {
                self.ranges.insert(floor, e);
                break;
            }
        }
    }

    /// Removes and returns the lowest range if it starts exactly at `at`.
    pub fn pop_first_if_starts_at(&mut self, at: u64) -> Option<(u64, u64)> {
        match self.ranges.first_key_value() {
            Some((&s, &e)) if s == at => {
                self.ranges.remove(&s);
                Some((s, e))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn ranges(set: &SeqRanges) -> Vec<(u64, u64)> {
        let mut v: Vec<_> = set.iter_descending().collect();
        v.reverse();
        v
    }

    #[test]
    fn merges_overlapping_and_touching() {
        let mut set = SeqRanges::default();
        let mut fresh = Vec::new();
        set.insert(3, 6, |a, b| fresh.push((a, b)));
        set.insert(8, 12, |a, b| fresh.push((a, b)));
        assert_eq!(ranges(&set), vec![(3, 6), (8, 12)]);
        fresh.clear();
        set.insert(5, 10, |a, b| fresh.push((a, b)));
        assert_eq!(fresh, vec![(6, 8)]);
        assert_eq!(ranges(&set), vec![(3, 12)]);
        fresh.clear();
        set.insert(12, 13, |a, b| fresh.push((a, b)));
        set.insert(2, 3, |a, b| fresh.push((a, b)));
        assert_eq!(fresh, vec![(12, 13), (2, 3)]);
        assert_eq!(ranges(&set), vec![(2, 13)]);
        fresh.clear();
        set.insert(4, 9, |a, b| fresh.push((a, b)));
        assert!(fresh.is_empty());
    }

    #[test]
    fn remove_below_cuts_a_straddling_range() {
        let mut set = SeqRanges::default();
        set.insert(1, 4, |_, _| {});
        set.insert(6, 10, |_, _| {});
        set.remove_below(8);
        assert_eq!(ranges(&set), vec![(8, 10)]);
        assert_eq!(set.pop_first_if_starts_at(7), None);
        assert_eq!(set.pop_first_if_starts_at(8), Some((8, 10)));
        assert!(set.is_empty());
    }

    proptest! {
        #[test]
        fn behaves_like_a_set(ops in proptest::collection::vec((0u64..200, 1u64..20, any::<bool>()), 0..60)) {
            let mut set = SeqRanges::default();
            let mut model = BTreeSet::new();
            for (start, len, cut) in ops {
                if cut {
                    set.remove_below(start);
                    model.retain(|&x| x >= start);
                    continue;
                }
                let mut fresh = BTreeSet::new();
                set.insert(start, start + len, |a, b| fresh.extend(a..b));
                let expected: BTreeSet<u64> = (start..start + len).filter(|x| !model.contains(x)).collect();
                prop_assert_eq!(&fresh, &expected);
                model.extend(start..start + len);
                let r = ranges(&set);
                for w in r.windows(2) {
                    prop_assert!(w[0].1 < w[1].0, "ranges touch or overlap: {:?}", r);
                }
                let flat: BTreeSet<u64> = r.iter().flat_map(|&(a, b)| a..b).collect();
                prop_assert_eq!(&flat, &model);
            }
            for x in 0..230 {
                prop_assert_eq!(set.contains(x), model.contains(&x));
            }
        }
    }
}
