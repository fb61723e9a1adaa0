//! What `weft status` shows about multicast: groups and their members, this node's sockets,
//! and the cached tree from this node. Plain serialisable data with addresses as text.

use crate::db::MembershipDb;
use crate::record::{Membership, SourceFilter};
use crate::tree::{CacheStats, ShortestPaths, TreeCache};
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MulticastStatus {
    pub node: String,
    /// Last version this node issued (or saw about itself), as `epoch.seq`.
    pub version: String,
    pub records: usize,
    /// Bytes a full sync of the membership database takes.
    pub encoded_bytes: usize,
    pub groups: Vec<GroupStatus>,
    /// Cached forwarding answers still valid for the current topology and membership.
    pub trees: Vec<TreeStatus>,
    pub cache_entries: usize,
    pub cache_hits: u64,
    pub cache_misses: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupStatus {
    pub group: String,
    pub members: Vec<MemberStatus>,
    /// Withdrawal records kept so that stale joins cannot come back.
    pub withdrawn: usize,
    /// Local sockets joined to this group.
    pub local_sockets: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemberStatus {
    pub node: String,
    /// `None`: any source.
    pub sources: Option<Vec<String>>,
    pub reliable: bool,
    pub version: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TreeStatus {
    pub source: String,
    pub group: String,
    pub deliver_locally: bool,
    pub upstream: Option<String>,
    /// Children, with `+reliable` appended for reliable branches.
    pub next_hops: Vec<String>,
}

pub fn status<P: ShortestPaths + ?Sized>(
    db: &MembershipDb,
    cache: &TreeCache,
    paths: &P,
) -> MulticastStatus {
    let mut groups = Vec::new();
    for group in db.groups() {
        let mut members = Vec::new();
        let mut withdrawn = 0;
        for record in db.records_of(group) {
            match record.membership() {
                Membership::Absent => withdrawn += 1,
                Membership::Present { sources, reliable } => members.push(MemberStatus {
                    node: record.origin().to_string(),
                    sources: match sources {
                        SourceFilter::Any => None,
                        SourceFilter::Only(list) => {
                            Some(list.iter().map(ToString::to_string).collect())
                        }
                    },
                    reliable: *reliable,
                    version: record.version().to_string(),
                }),
            }
        }
        groups.push(GroupStatus {
            group: group.to_string(),
            members,
            withdrawn,
            local_sockets: db.local_sockets_in(group),
        });
    }
    let trees = cache
        .valid_entries(db, paths)
        .into_iter()
        .map(|(source, group, f)| TreeStatus {
            source: source.to_string(),
            group: group.to_string(),
            deliver_locally: f.deliver_locally,
            upstream: f.upstream.map(|u| u.to_string()),
            next_hops: f
                .next_hops
                .iter()
                .map(|h| {
                    if h.reliable {
                        format!("{}+reliable", h.neighbour)
                    } else {
                        h.neighbour.to_string()
                    }
                })
                .collect(),
        })
        .collect();
    let CacheStats {
        entries,
        hits,
        misses,
    } = cache.stats();
    MulticastStatus {
        node: db.local().to_string(),
        version: db.last_own_version().to_string(),
        records: db.record_count(),
        encoded_bytes: db.encoded_len(),
        groups,
        trees,
        cache_entries: entries,
        cache_hits: hits,
        cache_misses: misses,
    }
}
