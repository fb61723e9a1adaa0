//! A set of disjoint half-open `u64` ranges, coalesced on insert: the receiver's map of
//! out-of-order data (what it SACKs).

use std::collections::BTreeMap;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeSet {
    /// start → end; ranges neither overlap nor touch.
    map: BTreeMap<u64, u64>,
}

impl RangeSet {
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.map.iter().map(|(&s, &e)| (s, e))
    }

    pub fn first(&self) -> Option<(u64, u64)> {
        self.map.first_key_value().map(|(&s, &e)| (s, e))
    }

    pub fn last(&self) -> Option<(u64, u64)> {
        self.map.last_key_value().map(|(&s, &e)| (s, e))
    }

    /// The range containing `offset`, if any.
    pub fn containing(&self, offset: u64) -> Option<(u64, u64)> {
        let (&s, &e) = self.map.range(..=offset).next_back()?;
        (offset < e).then_some((s, e))
    }

    /// Adds `[start, end)` and returns the sub-ranges that were not already covered, in order.
    pub fn insert(&mut self, start: u64, end: u64) -> Vec<(u64, u64)> {
        let mut uncovered = Vec::new();
        if start >= end {
            return uncovered;
        }
        let mut new_start = start;
        let mut new_end = end;
        let mut cursor = start;
        // A range that starts before `start` but reaches it absorbs the new one's head.
        if let Some((&s, &e)) = self.map.range(..start).next_back() {
            if e >= start {
                new_start = s;
                new_end = new_end.max(e);
                cursor = cursor.max(e);
                self.map.remove(&s);
            }
        }
        // Ranges starting inside `[start, end]` merge into the new one.
        while let Some((&s, &e)) = self.map.range(start..=end).next() {
            if s > cursor {
                uncovered.push((cursor, s.min(end)));
            }
            cursor = cursor.max(e);
            new_end = new_end.max(e);
            self.map.remove(&s);
        }
        if cursor < end {
            uncovered.push((cursor, end));
        }
        self.map.insert(new_start, new_end);
        uncovered
    }

    /// Forgets everything below `offset` (trimming a range that straddles it).
    pub fn remove_below(&mut self, offset: u64) {
        while let Some((&s, &e)) = self.map.first_key_value() {
            if s >= offset {
                break;
            }
            self.map.remove(&s);
            if e > offset {
                self.map.insert(offset, e);
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn coalesces_and_reports_new_pieces() {
        let mut r = RangeSet::default();
        assert_eq!(r.insert(10, 20), vec![(10, 20)]);
        assert_eq!(r.insert(30, 40), vec![(30, 40)]);
        assert_eq!(r.insert(15, 35), vec![(20, 30)]);
        assert_eq!(r.iter().collect::<Vec<_>>(), vec![(10, 40)]);
        assert_eq!(r.insert(40, 50), vec![(40, 50)], "touching ranges merge");
        assert_eq!(r.iter().count(), 1);
        assert_eq!(r.insert(0, 60), vec![(0, 10), (50, 60)]);
        assert_eq!(r.insert(5, 6), vec![]);
        assert_eq!(r.containing(59), Some((0, 60)));
        assert_eq!(r.containing(60), None);
        r.remove_below(30);
        assert_eq!(r.first(), Some((30, 60)));
        r.remove_below(100);
        assert!(r.is_empty());
    }

    proptest! {
        #[test]
        fn matches_a_bitmap(ops in proptest::collection::vec((0u64..200, 0u64..40), 0..40), cut in 0u64..240) {
            let mut r = RangeSet::default();
            let mut bits = [false; 240];
            for (start, len) in ops {
                let pieces = r.insert(start, start + len);
                let fresh: u64 = pieces.iter().map(|(s, e)| e - s).sum();
                let mut expected = 0;
                for b in &mut bits[start as usize..(start + len) as usize] {
                    if !*b { expected += 1; *b = true; }
                }
                prop_assert_eq!(fresh, expected);
            }
            r.remove_below(cut);
            for b in &mut bits[..cut as usize] { *b = false; }
            let mut from_ranges = [false; 240];
            let mut prev_end = None;
            for (s, e) in r.iter() {
                prop_assert!(s < e);
                if let Some(p) = prev_end { prop_assert!(s > p, "ranges must not touch"); }
                prev_end = Some(e);
                for b in &mut from_ranges[s as usize..e as usize] { *b = true; }
            }
            prop_assert_eq!(bits, from_ranges);
        }
    }
}
