//! The membership database: every (origin, group) record this node knows, its own included,
//! with the merge rule that makes flooding converge and the repair of stale self-records.
//!
//! Merge rule: of two records for one (origin, group) the one with the greater
//! [`MembershipRecord::precedence`] wins, whatever order they arrive in, so nodes that have
//! received the same set of records hold the same state. Only the origin issues versions for
//! its own key; when it receives a record about itself that it does not hold (one from before
//! a restart, or issued under a reused epoch) it answers with a correction that outranks it.

use crate::local::{JoinError, LocalMemberships, SocketFilter, SocketId};
use crate::record::{Membership, MembershipRecord, Version};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use weft_core::NodeId;

/// What [`MembershipDb::apply`] did with a record, and so what the flooder does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Stored: flood it to every neighbour except the one it came from.
    Newer,
    /// Already held: acknowledge it, flood nothing.
    Same,
    /// Older than the record held: acknowledge it; the sender is behind, so send it the held
    /// record ([`MembershipDb::record`]) if it exists.
    Older,
    /// A record about this node that is not its current state: flood the correction (which
    /// outranks the stale record) to every neighbour, including the sender.
    Corrected(MembershipRecord),
}

#[derive(Debug, Clone, Default)]
struct GroupRecords {
    /// Changes whenever a record of this group changes; unique across groups and time.
    generation: u64,
    by_origin: BTreeMap<NodeId, MembershipRecord>,
}

#[derive(Debug, Clone)]
pub struct MembershipDb {
    local: NodeId,
    /// The highest version this node has issued or seen on a record about itself; every
    /// version it issues next is greater.
    last_own_version: Version,
    groups: BTreeMap<NodeId, GroupRecords>,
    groups_of_origin: HashMap<NodeId, BTreeSet<NodeId>>,
    generation_counter: u64,
    local_sockets: LocalMemberships,
}

impl MembershipDb {
    /// `epoch` must grow across restarts of this node (a start timestamp in microseconds, or a
    /// persisted counter); the first version issued is `(epoch, 1)`.
    pub fn new(local: NodeId, epoch: u64) -> Self {
        MembershipDb {
            local,
            last_own_version: Version::new(epoch, 0),
            groups: BTreeMap::new(),
            groups_of_origin: HashMap::new(),
            generation_counter: 0,
            local_sockets: LocalMemberships::default(),
        }
    }

    pub fn local(&self) -> NodeId {
        self.local
    }

    pub fn last_own_version(&self) -> Version {
        self.last_own_version
    }

    /// A local socket joins `group` (any source with `source: None`). Returns the node's new
    /// record to flood, or `None` when the node's aggregate membership did not change.
    pub fn local_join(
        &mut self,
        socket: SocketId,
        group: NodeId,
        source: Option<NodeId>,
        reliable: bool,
    ) -> Result<Option<MembershipRecord>, JoinError> {
        self.local_sockets.join(socket, group, source, reliable)?;
        Ok(self.publish_local(group))
    }

    /// A local socket leaves `group` (entirely with `source: None`, else one source). Returns
    /// the record to flood (a withdrawal when the last local socket left), if any changed.
    pub fn local_leave(
        &mut self,
        socket: SocketId,
        group: NodeId,
        source: Option<NodeId>,
    ) -> Result<Option<MembershipRecord>, JoinError> {
        self.local_sockets.leave(socket, group, source)?;
        Ok(self.publish_local(group))
    }

    /// A local socket's filter of `group` as the kernel holds it (`None`: not a member).
    /// Returns the node's new record to flood, if the aggregate changed.
    pub fn local_set_filter(
        &mut self,
        socket: SocketId,
        group: NodeId,
        filter: Option<SocketFilter>,
        reliable: bool,
    ) -> Option<MembershipRecord> {
        self.local_sockets
            .set_filter(socket, group, filter, reliable);
        self.publish_local(group)
    }

    /// A local socket closed (or its process died): drops all its memberships and returns the
    /// records to flood.
    pub fn local_close(&mut self, socket: SocketId) -> Vec<MembershipRecord> {
        let groups = self.local_sockets.close(socket);
        groups
            .into_iter()
            .filter_map(|g| self.publish_local(g))
            .collect()
    }

    /// Local sockets that should receive a packet from `source` to `group`.
    pub fn local_receivers(
        &self,
        group: NodeId,
        source: NodeId,
    ) -> impl Iterator<Item = SocketId> + '_ {
        self.local_sockets.receivers(group, source)
    }

    pub fn local_sockets_in(&self, group: NodeId) -> usize {
        self.local_sockets.sockets_in(group)
    }

    /// Groups at least one local socket has joined.
    pub fn local_groups(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.local_sockets.groups()
    }

    /// Re-derives this node's record for `group` from its sockets; issues a new version if the
    /// aggregate differs from what the node last said.
    fn publish_local(&mut self, group: NodeId) -> Option<MembershipRecord> {
        let truth = self.local_sockets.aggregate(group);
        let current = self
            .record(self.local, group)
            .map(|r| r.membership().clone());
        let unchanged = match current {
            Some(said) => said == truth,
            None => truth == Membership::Absent,
        };
        if unchanged {
            return None;
        }
        self.issue(group, truth)
    }

    fn issue(&mut self, group: NodeId, membership: Membership) -> Option<MembershipRecord> {
        let version = self.last_own_version.successor();
        self.last_own_version = version;
        // `local` is never multicast and `group` was checked at join time; a failure here
        // would be a bug, so the caller floods nothing rather than something invalid.
        let record = MembershipRecord::new(self.local, group, version, membership).ok()?;
        self.store(record.clone());
        Some(record)
    }

    /// Merges a record received from a neighbour (or by full sync).
    pub fn apply(&mut self, record: MembershipRecord) -> Applied {
        if record.origin() == self.local {
            return self.apply_own(record);
        }
        match self.record(record.origin(), record.group()) {
            Some(held) if !record.supersedes(held) => {
                if record == *held {
                    Applied::Same
                } else {
                    Applied::Older
                }
            }
            _ => {
                self.store(record);
                Applied::Newer
            }
        }
    }

    fn apply_own(&mut self, record: MembershipRecord) -> Applied {
        if record.version() > self.last_own_version {
            self.last_own_version = record.version();
        }
        if let Some(held) = self.record(self.local, record.group()) {
            if record == *held {
                return Applied::Same;
            }
            if held.supersedes(&record) {
                return Applied::Older;
            }
        }
        let truth = self.local_sockets.aggregate(record.group());
        if *record.membership() == truth {
            // True, just newer than anything we held (e.g. a tombstone from a previous life).
            self.store(record);
            return Applied::Newer;
        }
        match self.issue(record.group(), truth) {
            Some(correction) => Applied::Corrected(correction),
            None => Applied::Older,
        }
    }

    fn store(&mut self, record: MembershipRecord) {
        self.generation_counter += 1;
        let generation = self.generation_counter;
        let (origin, group) = record.key();
        let entry = self.groups.entry(group).or_default();
        entry.generation = generation;
        entry.by_origin.insert(origin, record);
        self.groups_of_origin
            .entry(origin)
            .or_default()
            .insert(group);
    }

    /// Routing says `node` is unreachable: drop everything it said, so its memberships stop
    /// attracting traffic and leave the status at once. Returns how many records went. The
    /// local node is never forgotten.
    pub fn forget_node(&mut self, node: NodeId) -> usize {
        if node == self.local {
            return 0;
        }
        let Some(groups) = self.groups_of_origin.remove(&node) else {
            return 0;
        };
        let mut removed = 0;
        for group in groups {
            let Some(entry) = self.groups.get_mut(&group) else {
                continue;
            };
            if entry.by_origin.remove(&node).is_some() {
                removed += 1;
                self.generation_counter += 1;
                entry.generation = self.generation_counter;
            }
            if entry.by_origin.is_empty() {
                self.groups.remove(&group);
            }
        }
        removed
    }

    /// The record held for (origin, group), withdrawn or not.
    pub fn record(&self, origin: NodeId, group: NodeId) -> Option<&MembershipRecord> {
        self.groups.get(&group)?.by_origin.get(&origin)
    }

    /// Every record held, withdrawals included (a new neighbour needs those too so that its
    /// stale "present" records lose): the full sync. Ordered by group, then origin.
    pub fn records(&self) -> impl Iterator<Item = &MembershipRecord> + '_ {
        self.groups.values().flat_map(|g| g.by_origin.values())
    }

    pub fn record_count(&self) -> usize {
        self.groups.values().map(|g| g.by_origin.len()).sum()
    }

    /// Bytes a full sync of this database takes on the wire (records only).
    pub fn encoded_len(&self) -> usize {
        self.records().map(MembershipRecord::encoded_len).sum()
    }

    /// Every record of `group`, withdrawals included, in origin order.
    pub fn records_of(&self, group: NodeId) -> impl Iterator<Item = &MembershipRecord> + '_ {
        self.groups
            .get(&group)
            .into_iter()
            .flat_map(|g| g.by_origin.values())
    }

    /// Records of current members of `group` (withdrawals skipped), in origin order.
    pub fn members(&self, group: NodeId) -> impl Iterator<Item = &MembershipRecord> + '_ {
        self.records_of(group)
            .filter(|r| r.membership().is_present())
    }

    /// Groups with at least one record (member or withdrawal).
    pub fn groups(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.groups.keys().copied()
    }

    /// Changes whenever any record of `group` changes; 0 exactly when no record is held. Tree
    /// caches compare it to decide whether a cached answer is still valid.
    pub fn group_generation(&self, group: NodeId) -> u64 {
        self.groups.get(&group).map_or(0, |g| g.generation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::SourceFilter;

    const G: NodeId = NodeId(0xef01_0001);
    const A: NodeId = NodeId(0x0a00_0001);
    const B: NodeId = NodeId(0x0a00_0002);
    const SOCK: SocketId = SocketId(7);

    fn any() -> Membership {
        Membership::Present {
            sources: SourceFilter::Any,
            reliable: false,
        }
    }

    fn rec(origin: NodeId, epoch: u64, seq: u32, m: Membership) -> MembershipRecord {
        MembershipRecord::new(origin, G, Version::new(epoch, seq), m).expect("valid")
    }

    #[test]
    fn local_changes_issue_increasing_versions_only_when_the_aggregate_changes() {
        let mut db = MembershipDb::new(A, 50);
        let first = db
            .local_join(SOCK, G, None, false)
            .expect("join")
            .expect("record");
        assert_eq!(first.version(), Version::new(50, 1));
        assert_eq!(
            db.local_join(SocketId(8), G, None, false).expect("join"),
            None
        );
        assert_eq!(db.local_leave(SOCK, G, None).expect("leave"), None);
        let gone = db
            .local_leave(SocketId(8), G, None)
            .expect("leave")
            .expect("record");
        assert_eq!(gone.version(), Version::new(50, 2));
        assert_eq!(*gone.membership(), Membership::Absent);
        assert_eq!(db.members(G).count(), 0);
        assert_eq!(
            db.record_count(),
            1,
            "the withdrawal is kept as a tombstone"
        );
    }

    #[test]
    fn merge_rule() {
        let mut db = MembershipDb::new(A, 1);
        assert_eq!(db.apply(rec(B, 1, 2, any())), Applied::Newer);
        assert_eq!(db.apply(rec(B, 1, 2, any())), Applied::Same);
        assert_eq!(db.apply(rec(B, 1, 1, Membership::Absent)), Applied::Older);
        assert_eq!(db.apply(rec(B, 2, 0, Membership::Absent)), Applied::Newer);
        assert_eq!(db.members(G).count(), 0);
        let generation = db.group_generation(G);
        assert_eq!(db.apply(rec(B, 1, 9, any())), Applied::Older);
        assert_eq!(
            db.group_generation(G),
            generation,
            "a losing record changes nothing"
        );
    }

    #[test]
    fn stale_self_record_is_corrected_above_its_version() {
        let mut db = MembershipDb::new(A, 10);
        match db.apply(rec(A, 10, 5, any())) {
            Applied::Corrected(c) => {
                assert_eq!(c.version(), Version::new(10, 6));
                assert_eq!(*c.membership(), Membership::Absent);
            }
            other => panic!("expected a correction, got {other:?}"),
        }
        // A true tombstone from a previous life is simply adopted.
        assert_eq!(db.apply(rec(A, 12, 1, Membership::Absent)), Applied::Newer);
        let next = db
            .local_join(SOCK, G, None, false)
            .expect("join")
            .expect("record");
        assert_eq!(next.version(), Version::new(12, 2));
    }

    #[test]
    fn forget_node_drops_its_records_and_bumps_generation() {
        let mut db = MembershipDb::new(A, 1);
        db.local_join(SOCK, G, None, false).expect("join");
        db.apply(rec(B, 1, 1, any()));
        let before = db.group_generation(G);
        assert_eq!(db.forget_node(B), 1);
        assert_ne!(db.group_generation(G), before);
        assert_eq!(
            db.members(G).map(|r| r.origin()).collect::<Vec<_>>(),
            vec![A]
        );
        assert_eq!(db.forget_node(A), 0, "never forgets itself");
        assert_eq!(db.forget_node(B), 0);
    }
}
