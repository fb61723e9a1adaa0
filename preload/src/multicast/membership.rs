//! One socket's group memberships with the kernel's rules (`net/ipv4/igmp.c`), and what the
//! daemon must be told for each accepted change. Pure, so the errno semantics are tested
//! against what this kernel answered (module tests) without a daemon.
//!
//! Kernel behaviour copied here, measured in a namespace with a multicast route on `lo`:
//! - a second any-source join of a group is `EADDRINUSE`, as is an any-source join of a group
//!   joined source-specifically; leaving a group not joined is `EADDRNOTAVAIL`;
//! - the 21st group on a socket is `ENOBUFS` (`igmp_max_memberships` = 20), and so is the
//!   11th source of one group (`igmp_max_msf` = 10);
//! - adding a source to an any-source membership turns it source-specific (the kernel allows
//!   a mode switch of an empty filter); dropping a source from one switches it too, to an empty
//!   source list, and fails with `EADDRNOTAVAIL`; dropping the last source leaves the group;
//! - a source operation on a group not joined at all is `EINVAL`, a repeated source
//!   `EADDRNOTAVAIL`; group addresses outside 224.0.0.0/4 are `EINVAL` for joins.
//!
//! Joins name no interface here: the overlay has one. A program that joins a group once per
//! interface gets `EADDRINUSE` for the second, as the kernel answers a repeat on one interface.

use super::option::MembershipOp;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

/// `net.ipv4.igmp_max_memberships` default.
pub const MAX_MEMBERSHIPS: usize = 20;
/// `net.ipv4.igmp_max_msf` default.
pub const MAX_SOURCES: usize = 10;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    /// Any source (the kernel's EXCLUDE mode with an empty list).
    Any,
    /// Only these sources (INCLUDE mode); empty after a failed source drop, as in the kernel.
    Only(BTreeSet<Ipv4Addr>),
}

/// A request for the daemon (its `Join`/`Leave`). Sources are only ever unicast addresses:
/// the kernel accepts a multicast "source", which can never send, and the daemon refuses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DaemonOp {
    Join {
        group: Ipv4Addr,
        source: Option<Ipv4Addr>,
    },
    Leave {
        group: Ipv4Addr,
        source: Option<Ipv4Addr>,
    },
}

/// What one option did: its result for the program, and the daemon requests that make the
/// overlay agree (sent even when the result is an error: a failed source drop still switches
/// the membership's mode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub result: Result<(), i32>,
    pub daemon: Vec<DaemonOp>,
}

impl Outcome {
    fn fail(errno: i32) -> Outcome {
        Outcome {
            result: Err(errno),
            daemon: Vec::new(),
        }
    }

    fn ok(daemon: Vec<DaemonOp>) -> Outcome {
        Outcome {
            result: Ok(()),
            daemon,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Memberships {
    groups: BTreeMap<Ipv4Addr, Filter>,
}

fn daemon_source(s: Ipv4Addr) -> bool {
    !s.is_multicast()
}

impl Memberships {
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    pub fn groups(&self) -> impl Iterator<Item = (&Ipv4Addr, &Filter)> {
        self.groups.iter()
    }

    pub fn apply(&mut self, op: MembershipOp) -> Outcome {
        match op {
            MembershipOp::Join(group) => self.join(group),
            MembershipOp::Leave(group) => self.leave(group),
            MembershipOp::AddSource { group, source } => self.add_source(group, source),
            MembershipOp::DropSource { group, source } => self.drop_source(group, source),
        }
    }

    fn join(&mut self, group: Ipv4Addr) -> Outcome {
        if !group.is_multicast() {
            return Outcome::fail(libc::EINVAL);
        }
        if self.groups.contains_key(&group) {
            return Outcome::fail(libc::EADDRINUSE);
        }
        if self.groups.len() >= MAX_MEMBERSHIPS {
            return Outcome::fail(libc::ENOBUFS);
        }
        self.groups.insert(group, Filter::Any);
        Outcome::ok(vec![DaemonOp::Join {
            group,
            source: None,
        }])
    }

    fn leave(&mut self, group: Ipv4Addr) -> Outcome {
        match self.groups.remove(&group) {
            None => Outcome::fail(libc::EADDRNOTAVAIL),
            Some(f) => Outcome::ok(Self::leave_ops(group, &f)),
        }
    }

    fn leave_ops(group: Ipv4Addr, f: &Filter) -> Vec<DaemonOp> {
        let known = match f {
            Filter::Any => true,
            Filter::Only(list) => list.iter().any(|&s| daemon_source(s)),
        };
        if known {
            vec![DaemonOp::Leave {
                group,
                source: None,
            }]
        } else {
            Vec::new()
        }
    }

    fn add_source(&mut self, group: Ipv4Addr, source: Ipv4Addr) -> Outcome {
        if !group.is_multicast() {
            return Outcome::fail(libc::EINVAL);
        }
        let join = DaemonOp::Join {
            group,
            source: Some(source),
        };
        let told = |ops: Vec<DaemonOp>| {
            Outcome::ok(
                ops.into_iter()
                    .filter(|op| match op {
                        DaemonOp::Join {
                            source: Some(s), ..
                        } => daemon_source(*s),
                        _ => true,
                    })
                    .collect(),
            )
        };
        match self.groups.get_mut(&group) {
            None => {
                if self.groups.len() >= MAX_MEMBERSHIPS {
                    return Outcome::fail(libc::ENOBUFS);
                }
                self.groups
                    .insert(group, Filter::Only(BTreeSet::from([source])));
                told(vec![join])
            }
            Some(f @ Filter::Any) => {
                *f = Filter::Only(BTreeSet::from([source]));
                told(vec![
                    DaemonOp::Leave {
                        group,
                        source: None,
                    },
                    join,
                ])
            }
            Some(Filter::Only(list)) => {
                if list.len() >= MAX_SOURCES {
                    return Outcome::fail(libc::ENOBUFS);
                }
                if !list.insert(source) {
                    return Outcome::fail(libc::EADDRNOTAVAIL);
                }
                told(vec![join])
            }
        }
    }

    fn drop_source(&mut self, group: Ipv4Addr, source: Ipv4Addr) -> Outcome {
        if !group.is_multicast() {
            return Outcome::fail(libc::EINVAL);
        }
        let Some(f) = self.groups.get_mut(&group) else {
            return Outcome::fail(libc::EINVAL);
        };
        match f {
            Filter::Any => {
                // The kernel switches the empty filter's mode before it finds nothing to drop.
                *f = Filter::Only(BTreeSet::new());
                Outcome {
                    result: Err(libc::EADDRNOTAVAIL),
                    daemon: vec![DaemonOp::Leave {
                        group,
                        source: None,
                    }],
                }
            }
            Filter::Only(list) => {
                if !list.remove(&source) {
                    return Outcome::fail(libc::EADDRNOTAVAIL);
                }
                if list.is_empty() {
                    self.groups.remove(&group);
                }
                let ops = if daemon_source(source) {
                    vec![DaemonOp::Leave {
                        group,
                        source: Some(source),
                    }]
                } else {
                    Vec::new()
                };
                Outcome::ok(ops)
            }
        }
    }

    /// Everything the daemon must hear to hold these memberships (a socket that just got
    /// its delivery address).
    pub fn join_all(&self) -> Vec<DaemonOp> {
        let mut ops = Vec::new();
        for (&group, f) in &self.groups {
            match f {
                Filter::Any => ops.push(DaemonOp::Join {
                    group,
                    source: None,
                }),
                Filter::Only(list) => {
                    ops.extend(list.iter().filter(|&&s| daemon_source(s)).map(|&s| {
                        DaemonOp::Join {
                            group,
                            source: Some(s),
                        }
                    }))
                }
            }
        }
        ops
    }

    /// What the daemon must hear when the socket closes.
    pub fn leave_all(&self) -> Vec<DaemonOp> {
        self.groups
            .iter()
            .flat_map(|(&g, f)| Self::leave_ops(g, f))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap as Map;

    const G: Ipv4Addr = Ipv4Addr::new(239, 1, 2, 3);
    const S1: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const S2: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

    fn errno(m: &mut Memberships, op: MembershipOp) -> Result<(), i32> {
        m.apply(op).result
    }

    /// The sequences probed on the kernel (`/tmp` probe in the issue note), with its answers.
    #[test]
    fn answers_what_the_kernel_answered() {
        use MembershipOp::*;
        let mut m = Memberships::default();
        let add = |source| AddSource { group: G, source };
        let drop = |source| DropSource { group: G, source };
        assert_eq!(
            errno(&mut m, Join(Ipv4Addr::new(10, 0, 0, 1))),
            Err(libc::EINVAL)
        );
        assert_eq!(errno(&mut m, Join(G)), Ok(()));
        assert_eq!(errno(&mut m, Join(G)), Err(libc::EADDRINUSE));
        // Source on an any-source membership: switches to source-specific.
        assert_eq!(errno(&mut m, add(S1)), Ok(()));
        // Dropping the only source leaves the group.
        assert_eq!(errno(&mut m, drop(S1)), Ok(()));
        assert_eq!(errno(&mut m, Leave(G)), Err(libc::EADDRNOTAVAIL));
        // Dropping a source of a fresh any-source membership: EADDRNOTAVAIL, and the
        // membership is now an empty source list (still joined).
        assert_eq!(errno(&mut m, Join(G)), Ok(()));
        assert_eq!(errno(&mut m, drop(S1)), Err(libc::EADDRNOTAVAIL));
        assert_eq!(errno(&mut m, Join(G)), Err(libc::EADDRINUSE));
        assert_eq!(errno(&mut m, add(S1)), Ok(()));
        assert_eq!(errno(&mut m, Leave(G)), Ok(()));
        // Source-specific joins.
        assert_eq!(errno(&mut m, add(S1)), Ok(()));
        assert_eq!(errno(&mut m, add(S1)), Err(libc::EADDRNOTAVAIL));
        assert_eq!(errno(&mut m, Join(G)), Err(libc::EADDRINUSE));
        assert_eq!(
            errno(
                &mut m,
                AddSource {
                    group: Ipv4Addr::new(10, 1, 2, 3),
                    source: S1
                }
            ),
            Err(libc::EINVAL)
        );
        assert_eq!(errno(&mut m, drop(S2)), Err(libc::EADDRNOTAVAIL));
        assert_eq!(
            errno(
                &mut m,
                DropSource {
                    group: Ipv4Addr::new(239, 1, 2, 9),
                    source: S2
                }
            ),
            Err(libc::EINVAL)
        );
        // A multicast "source" is accepted (and counts).
        assert_eq!(errno(&mut m, add(Ipv4Addr::new(239, 0, 0, 1))), Ok(()));
        for i in 3..11 {
            assert_eq!(errno(&mut m, add(Ipv4Addr::new(10, 0, 0, i))), Ok(()));
        }
        assert_eq!(
            errno(&mut m, add(Ipv4Addr::new(10, 0, 0, 11))),
            Err(libc::ENOBUFS),
            "the 11th source"
        );
        assert_eq!(errno(&mut m, Leave(G)), Ok(()));
        for i in 0..20 {
            assert_eq!(errno(&mut m, Join(Ipv4Addr::new(239, 2, 0, i))), Ok(()));
        }
        assert_eq!(
            errno(&mut m, Join(Ipv4Addr::new(239, 2, 0, 20))),
            Err(libc::ENOBUFS),
            "the 21st group"
        );
        assert_eq!(errno(&mut m, add(S1)), Err(libc::ENOBUFS));
    }

    #[test]
    fn daemon_hears_joins_mode_switches_and_leaves() {
        use DaemonOp as D;
        let mut m = Memberships::default();
        assert_eq!(
            m.apply(MembershipOp::Join(G)).daemon,
            vec![D::Join {
                group: G,
                source: None
            }]
        );
        assert_eq!(
            m.apply(MembershipOp::AddSource {
                group: G,
                source: S1
            })
            .daemon,
            vec![
                D::Leave {
                    group: G,
                    source: None
                },
                D::Join {
                    group: G,
                    source: Some(S1)
                }
            ]
        );
        let mc = Ipv4Addr::new(239, 9, 9, 9);
        assert!(m
            .apply(MembershipOp::AddSource {
                group: G,
                source: mc
            })
            .daemon
            .is_empty());
        assert_eq!(
            m.join_all(),
            vec![D::Join {
                group: G,
                source: Some(S1)
            }]
        );
        assert_eq!(
            m.apply(MembershipOp::DropSource {
                group: G,
                source: S1
            })
            .daemon,
            vec![D::Leave {
                group: G,
                source: Some(S1)
            }]
        );
        // Only the multicast "source" is left: the daemon holds nothing for it.
        assert!(m.leave_all().is_empty());
        assert!(m.apply(MembershipOp::Leave(G)).daemon.is_empty());
        assert!(m.is_empty());
    }

    /// The daemon's view of a socket, replayed from the requests: any-source or a list.
    fn replay(view: &mut Map<Ipv4Addr, Option<BTreeSet<Ipv4Addr>>>, ops: &[DaemonOp]) {
        for op in ops {
            match *op {
                DaemonOp::Join {
                    group,
                    source: None,
                } => {
                    view.insert(group, None);
                }
                DaemonOp::Join {
                    group,
                    source: Some(s),
                } => {
                    view.entry(group)
                        .or_insert_with(|| Some(BTreeSet::new()))
                        .as_mut()
                        .map(|l| l.insert(s));
                }
                DaemonOp::Leave {
                    group,
                    source: None,
                } => {
                    view.remove(&group);
                }
                DaemonOp::Leave {
                    group,
                    source: Some(s),
                } => {
                    if let Some(Some(l)) = view.get_mut(&group) {
                        l.remove(&s);
                        if l.is_empty() {
                            view.remove(&group);
                        }
                    }
                }
            }
        }
    }

    fn expected_view(m: &Memberships) -> Map<Ipv4Addr, Option<BTreeSet<Ipv4Addr>>> {
        let mut v = Map::new();
        for (&g, f) in m.groups() {
            match f {
                Filter::Any => {
                    v.insert(g, None);
                }
                Filter::Only(list) => {
                    let l: BTreeSet<Ipv4Addr> =
                        list.iter().copied().filter(|s| !s.is_multicast()).collect();
                    if !l.is_empty() {
                        v.insert(g, Some(l));
                    }
                }
            }
        }
        v
    }

    fn op() -> impl Strategy<Value = MembershipOp> {
        let group = prop_oneof![
            (0u8..4).prop_map(|i| Ipv4Addr::new(239, 0, 0, i)),
            Just(Ipv4Addr::new(10, 0, 0, 1)),
        ];
        let source = prop_oneof![
            (1u8..5).prop_map(|i| Ipv4Addr::new(10, 0, 0, i)),
            Just(Ipv4Addr::new(239, 9, 9, 9)),
        ];
        prop_oneof![
            group.clone().prop_map(MembershipOp::Join),
            group.clone().prop_map(MembershipOp::Leave),
            (group.clone(), source.clone())
                .prop_map(|(group, source)| MembershipOp::AddSource { group, source }),
            (group, source).prop_map(|(group, source)| MembershipOp::DropSource { group, source }),
        ]
    }

    proptest! {
        /// Whatever the program does, the daemon's replayed view equals the socket's
        /// memberships (so traffic follows the kernel's filter), closing leaves nothing, and
        /// the kernel's limits hold.
        #[test]
        fn daemon_view_follows_the_socket(ops in proptest::collection::vec(op(), 0..60)) {
            let mut m = Memberships::default();
            let mut view = Map::new();
            for o in ops {
                let out = m.apply(o);
                replay(&mut view, &out.daemon);
                prop_assert_eq!(&view, &expected_view(&m), "after {:?}", o);
                prop_assert!(m.groups().count() <= MAX_MEMBERSHIPS);
                for (_, f) in m.groups() {
                    if let Filter::Only(l) = f {
                        prop_assert!(l.len() <= MAX_SOURCES);
                    }
                }
            }
            let mut fresh = Map::new();
            replay(&mut fresh, &m.join_all());
            prop_assert_eq!(&fresh, &view);
            replay(&mut view, &m.leave_all());
            prop_assert!(view.is_empty());
        }
    }
}
