//! Emulated IP multicast, the pure-logic part: the group membership database that daemons
//! flood like link state, and source-rooted shortest-path trees pruned to the members.
//!
//! How the daemon drives it (sans-I/O: nothing here sends, sleeps or reads a clock):
//! - Local sockets join and leave through [`Multicast::local_join`], [`Multicast::local_leave`]
//!   and [`Multicast::local_close`]; each returns the node's record to flood when its
//!   aggregate membership changed, at once, so joins are visible overlay-wide within one flood.
//! - Records from neighbours go through [`Multicast::apply`]; the [`Applied`] answer says
//!   whether to flood on ([`Applied::Newer`]), answer with a correction
//!   ([`Applied::Corrected`]), or only acknowledge. A new neighbour gets
//!   [`Multicast::records`] (the full sync). Records encode with
//!   [`MembershipRecord::encode`] and decode one at a time with [`MembershipRecord::decode`].
//! - When routing declares a node unreachable, [`Multicast::forget_node`] withdraws all its
//!   memberships locally (no timeout, no flood needed: every node sees the same topology).
//! - For each multicast packet, [`Multicast::forwarding`] answers which neighbours get a copy
//!   and whether to deliver locally, from the daemon's [`ShortestPaths`]; answers are cached
//!   per (source, group) and recomputed only when the topology or that group changed.
//!
//! Restarts: the daemon passes an `epoch` that grows across restarts (start time in
//! microseconds, or a persisted counter). Records issued in a later epoch outrank earlier ones;
//! a stale record about this node that still circulates is answered with a correction.

#![forbid(unsafe_code)]

pub mod db;
pub mod local;
pub mod record;
pub mod status;
pub mod tree;

pub use db::{Applied, MembershipDb};
pub use local::{
    Applied as MembershipApplied, FilterMode, JoinError, MembershipOp, Memberships, SocketFilter,
    SocketId, MAX_MEMBERSHIPS, MAX_SOCKET_SOURCES,
};
pub use record::{
    InvalidRecord, Membership, MembershipRecord, SourceFilter, Version, MAX_SOURCES,
    RECORD_HEADER_LEN,
};
pub use status::MulticastStatus;
pub use tree::{compute_forwarding, CacheStats, Forwarding, NextHop, ShortestPaths, TreeCache};

use weft_core::NodeId;

/// A node's multicast state: its membership database and its cache of forwarding answers,
/// kept together so the cache is always validated against the database it was built from.
#[derive(Debug, Clone)]
pub struct Multicast {
    db: MembershipDb,
    trees: TreeCache,
}

impl Multicast {
    /// `local`: this node; `epoch`: grows across restarts of this node (see the crate docs).
    pub fn new(local: NodeId, epoch: u64) -> Self {
        Multicast {
            db: MembershipDb::new(local, epoch),
            trees: TreeCache::default(),
        }
    }

    pub fn with_cache(local: NodeId, epoch: u64, trees: TreeCache) -> Self {
        Multicast {
            db: MembershipDb::new(local, epoch),
            trees,
        }
    }

    pub fn local(&self) -> NodeId {
        self.db.local()
    }

    /// Read access to the membership database (members, records, local sockets).
    pub fn db(&self) -> &MembershipDb {
        &self.db
    }

    /// See [`MembershipDb::local_join`].
    pub fn local_join(
        &mut self,
        socket: SocketId,
        group: NodeId,
        source: Option<NodeId>,
        reliable: bool,
    ) -> Result<Option<MembershipRecord>, JoinError> {
        self.db.local_join(socket, group, source, reliable)
    }

    /// See [`MembershipDb::local_leave`].
    pub fn local_leave(
        &mut self,
        socket: SocketId,
        group: NodeId,
        source: Option<NodeId>,
    ) -> Result<Option<MembershipRecord>, JoinError> {
        self.db.local_leave(socket, group, source)
    }

    /// See [`MembershipDb::local_set_filter`].
    pub fn local_set_filter(
        &mut self,
        socket: SocketId,
        group: NodeId,
        filter: Option<SocketFilter>,
        reliable: bool,
    ) -> Option<MembershipRecord> {
        self.db.local_set_filter(socket, group, filter, reliable)
    }

    /// See [`MembershipDb::local_close`].
    pub fn local_close(&mut self, socket: SocketId) -> Vec<MembershipRecord> {
        self.db.local_close(socket)
    }

    /// See [`MembershipDb::apply`].
    pub fn apply(&mut self, record: MembershipRecord) -> Applied {
        self.db.apply(record)
    }

    /// See [`MembershipDb::forget_node`].
    pub fn forget_node(&mut self, node: NodeId) -> usize {
        self.db.forget_node(node)
    }

    /// Every record held: what a new neighbour receives as full sync.
    pub fn records(&self) -> impl Iterator<Item = &MembershipRecord> + '_ {
        self.db.records()
    }

    pub fn record(&self, origin: NodeId, group: NodeId) -> Option<&MembershipRecord> {
        self.db.record(origin, group)
    }

    /// What to do with a packet from `source` to `group` here: one hash lookup while neither
    /// `paths.generation()` nor the group's membership changed.
    pub fn forwarding<P: ShortestPaths + ?Sized>(
        &mut self,
        paths: &P,
        source: NodeId,
        group: NodeId,
    ) -> &Forwarding {
        self.trees.forwarding(&self.db, paths, source, group)
    }

    pub fn cache_stats(&self) -> CacheStats {
        self.trees.stats()
    }

    /// Groups, members and the cached tree from this node, for `weft status`.
    pub fn status<P: ShortestPaths + ?Sized>(&self, paths: &P) -> MulticastStatus {
        status::status(&self.db, &self.trees, paths)
    }
}
