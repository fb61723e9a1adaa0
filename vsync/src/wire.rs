//! The messages members of a group exchange, and their encoding (`weft_core::codec`, big
//! endian). Decoding never panics: every length is checked against what remains and against
//! [`MAX_MEMBERS`] / [`MAX_RECORDS`], so a hostile datagram costs at most its own size.

use serde::Serialize;
use std::fmt;
use weft_core::{DecodeError, Reader, Writer};

/// At most this many members in a view (and entries in any per-member list).
pub const MAX_MEMBERS: usize = 1024;
/// At most this many message records in one report or install.
pub const MAX_RECORDS: usize = 65_535;

/// A member process of a group. Unique for the life of the process: a process that restarts
/// comes back as a new member (the daemon puts its incarnation into the id).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct MemberId(pub u64);

impl fmt::Debug for MemberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "m{:x}", self.0)
    }
}

/// A view's id: an epoch larger than any its coordinator knew of, and the coordinator, so two
/// coordinators never make the same id and one coordinator's ids only grow. Ordered by
/// (epoch, coordinator): each member installs views in increasing id order.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize)]
pub struct ViewId {
    pub epoch: u64,
    pub coord: MemberId,
}

/// A membership view: its id and its members, sorted.
#[derive(Clone, PartialEq, Eq, Debug, Serialize)]
pub struct View {
    pub id: ViewId,
    pub members: Vec<MemberId>,
}

impl View {
    pub fn position(&self, m: MemberId) -> Option<usize> {
        self.members.binary_search(&m).ok()
    }
}

/// One application message of a view, as a report or an install carries it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct MsgRec {
    pub sender: MemberId,
    /// The sender's count of it in the view (1 = first).
    pub counter: u32,
    /// Its Lamport timestamp (agreed order is (ts, sender)).
    pub ts: u64,
    pub payload: Vec<u8>,
}

/// An application message.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Data {
    pub view: ViewId,
    pub msg: MsgRec,
}

/// A member's periodic state in its view: heartbeat, acknowledgement and stability.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Status {
    pub view: ViewId,
    pub from: MemberId,
    /// The sender's Lamport clock: it sends nothing stamped at or below it from now on.
    pub ts: u64,
    /// How many messages it has sent in the view.
    pub sent: u32,
    /// It reported to a proposal (frozen until it installs a view).
    pub blocked: bool,
    /// Per member of the view (in order): messages received without a gap.
    pub recv: Vec<u32>,
    /// Per member of the view: messages its application has taken.
    pub consumed: Vec<u32>,
}

/// A coordinator proposes a view.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Propose {
    pub id: ViewId,
    pub members: Vec<MemberId>,
}

/// A member's answer to a proposal: its view and what it holds of it (it is frozen from now
/// on: it delivers and accepts nothing more of that view).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Report {
    pub proposal: ViewId,
    pub from: MemberId,
    /// Grows with every report the member makes.
    pub seq: u64,
    pub prev: View,
    /// Per member of `prev`: messages received without a gap.
    pub recv: Vec<u32>,
    /// The messages it holds that not every member of `prev` is known to have.
    pub msgs: Vec<MsgRec>,
}

/// A member refuses a proposal whose epoch is not above its view's.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Nack {
    pub proposal: ViewId,
    pub from: MemberId,
    pub epoch: u64,
}

/// Which report of a member an install was computed from.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Entry {
    pub member: MemberId,
    pub prev: ViewId,
    pub seq: u64,
}

/// What the members that come from view `prev` deliver of it before installing the next:
/// each sender's messages up to its count, and the ones some of them lack.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Cut {
    pub prev: ViewId,
    pub counts: Vec<(MemberId, u32)>,
    pub msgs: Vec<MsgRec>,
}

/// The coordinator's decision: the new view and, per previous view, its cut.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Install {
    pub view: View,
    pub entries: Vec<Entry>,
    pub cuts: Vec<Cut>,
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Message {
    Data(Data),
    Status(Status),
    Propose(Propose),
    Report(Report),
    Nack(Nack),
    Install(Install),
}

const DATA: u8 = 1;
const STATUS: u8 = 2;
const PROPOSE: u8 = 3;
const REPORT: u8 = 4;
const NACK: u8 = 5;
const INSTALL: u8 = 6;

fn w_member(w: &mut Writer, m: MemberId) {
    w.u64(m.0);
}

fn w_view_id(w: &mut Writer, v: ViewId) {
    w.u64(v.epoch);
    w_member(w, v.coord);
}

fn w_len(w: &mut Writer, n: usize) {
    w.u32(n.min(u32::MAX as usize) as u32);
}

fn w_members(w: &mut Writer, ms: &[MemberId]) {
    w_len(w, ms.len());
    for &m in ms {
        w_member(w, m);
    }
}

fn w_counts(w: &mut Writer, cs: &[u32]) {
    w_len(w, cs.len());
    for &c in cs {
        w.u32(c);
    }
}

fn w_msg(w: &mut Writer, m: &MsgRec) {
    w_member(w, m.sender);
    w.u32(m.counter);
    w.u64(m.ts);
    w.short_bytes(&m.payload);
}

fn w_msgs(w: &mut Writer, ms: &[MsgRec]) {
    w_len(w, ms.len());
    for m in ms {
        w_msg(w, m);
    }
}

fn w_view(w: &mut Writer, v: &View) {
    w_view_id(w, v.id);
    w_members(w, &v.members);
}

fn r_member(r: &mut Reader) -> Result<MemberId, DecodeError> {
    Ok(MemberId(r.u64()?))
}

fn r_view_id(r: &mut Reader) -> Result<ViewId, DecodeError> {
    Ok(ViewId {
        epoch: r.u64()?,
        coord: r_member(r)?,
    })
}

/// A list length, checked against a limit and against the bytes left (each item at least
/// `min_item` bytes), so no allocation exceeds what the datagram could hold.
fn r_len(r: &mut Reader, limit: usize, min_item: usize) -> Result<usize, DecodeError> {
    let n = r.u32()? as usize;
    if n > limit || n.saturating_mul(min_item) > r.remaining() {
        return Err(DecodeError::Invalid("list length"));
    }
    Ok(n)
}

fn r_members(r: &mut Reader) -> Result<Vec<MemberId>, DecodeError> {
    let n = r_len(r, MAX_MEMBERS, 8)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(r_member(r)?);
    }
    if !out.windows(2).all(|w| w[0] < w[1]) {
        return Err(DecodeError::Invalid("members not sorted"));
    }
    Ok(out)
}

fn r_counts(r: &mut Reader) -> Result<Vec<u32>, DecodeError> {
    let n = r_len(r, MAX_MEMBERS, 4)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(r.u32()?);
    }
    Ok(out)
}

fn r_msg(r: &mut Reader) -> Result<MsgRec, DecodeError> {
    Ok(MsgRec {
        sender: r_member(r)?,
        counter: r.u32()?,
        ts: r.u64()?,
        payload: r.short_bytes()?.to_vec(),
    })
}

fn r_msgs(r: &mut Reader) -> Result<Vec<MsgRec>, DecodeError> {
    let n = r_len(r, MAX_RECORDS, 22)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(r_msg(r)?);
    }
    Ok(out)
}

fn r_view(r: &mut Reader) -> Result<View, DecodeError> {
    Ok(View {
        id: r_view_id(r)?,
        members: r_members(r)?,
    })
}

impl Message {
    pub fn encode(&self, out: &mut Vec<u8>) {
        let w = &mut Writer::new(out);
        match self {
            Message::Data(d) => {
                w.u8(DATA);
                w_view_id(w, d.view);
                w_msg(w, &d.msg);
            }
            Message::Status(s) => {
                w.u8(STATUS);
                w_view_id(w, s.view);
                w_member(w, s.from);
                w.u64(s.ts).u32(s.sent).u8(s.blocked as u8);
                w_counts(w, &s.recv);
                w_counts(w, &s.consumed);
            }
            Message::Propose(p) => {
                w.u8(PROPOSE);
                w_view_id(w, p.id);
                w_members(w, &p.members);
            }
            Message::Report(rep) => {
                w.u8(REPORT);
                w_view_id(w, rep.proposal);
                w_member(w, rep.from);
                w.u64(rep.seq);
                w_view(w, &rep.prev);
                w_counts(w, &rep.recv);
                w_msgs(w, &rep.msgs);
            }
            Message::Nack(n) => {
                w.u8(NACK);
                w_view_id(w, n.proposal);
                w_member(w, n.from);
                w.u64(n.epoch);
            }
            Message::Install(i) => {
                w.u8(INSTALL);
                w_view(w, &i.view);
                w_len(w, i.entries.len());
                for e in &i.entries {
                    w_member(w, e.member);
                    w_view_id(w, e.prev);
                    w.u64(e.seq);
                }
                w_len(w, i.cuts.len());
                for c in &i.cuts {
                    w_view_id(w, c.prev);
                    w_len(w, c.counts.len());
                    for &(m, n) in &c.counts {
                        w_member(w, m);
                        w.u32(n);
                    }
                    w_msgs(w, &c.msgs);
                }
            }
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.encode(&mut v);
        v
    }

    pub fn decode(bytes: &[u8]) -> Result<Message, DecodeError> {
        let r = &mut Reader::new(bytes);
        let msg = match r.u8()? {
            DATA => Message::Data(Data {
                view: r_view_id(r)?,
                msg: r_msg(r)?,
            }),
            STATUS => {
                let view = r_view_id(r)?;
                let from = r_member(r)?;
                let ts = r.u64()?;
                let sent = r.u32()?;
                let blocked = r.u8()? != 0;
                let recv = r_counts(r)?;
                let consumed = r_counts(r)?;
                Message::Status(Status {
                    view,
                    from,
                    ts,
                    sent,
                    blocked,
                    recv,
                    consumed,
                })
            }
            PROPOSE => Message::Propose(Propose {
                id: r_view_id(r)?,
                members: r_members(r)?,
            }),
            REPORT => {
                let proposal = r_view_id(r)?;
                let from = r_member(r)?;
                let seq = r.u64()?;
                let prev = r_view(r)?;
                let recv = r_counts(r)?;
                let msgs = r_msgs(r)?;
                Message::Report(Report {
                    proposal,
                    from,
                    seq,
                    prev,
                    recv,
                    msgs,
                })
            }
            NACK => Message::Nack(Nack {
                proposal: r_view_id(r)?,
                from: r_member(r)?,
                epoch: r.u64()?,
            }),
            INSTALL => {
                let view = r_view(r)?;
                let n = r_len(r, MAX_MEMBERS, 32)?;
                let mut entries = Vec::with_capacity(n);
                for _ in 0..n {
                    entries.push(Entry {
                        member: r_member(r)?,
                        prev: r_view_id(r)?,
                        seq: r.u64()?,
                    });
                }
                let n = r_len(r, MAX_MEMBERS, 24)?;
                let mut cuts = Vec::with_capacity(n);
                for _ in 0..n {
                    let prev = r_view_id(r)?;
                    let k = r_len(r, MAX_MEMBERS, 12)?;
                    let mut counts = Vec::with_capacity(k);
                    for _ in 0..k {
                        counts.push((r_member(r)?, r.u32()?));
                    }
                    let msgs = r_msgs(r)?;
                    cuts.push(Cut { prev, counts, msgs });
                }
                Message::Install(Install {
                    view,
                    entries,
                    cuts,
                })
            }
            k => return Err(DecodeError::UnknownKind(k)),
        };
        if !r.is_empty() {
            return Err(DecodeError::Invalid("trailing bytes"));
        }
        Ok(msg)
    }

    /// The member that sent it (for a propose: its coordinator; for an install: the new
    /// view's coordinator).
    pub fn from(&self) -> MemberId {
        match self {
            Message::Data(d) => d.msg.sender,
            Message::Status(s) => s.from,
            Message::Propose(p) => p.id.coord,
            Message::Report(r) => r.from,
            Message::Nack(n) => n.from,
            Message::Install(i) => i.view.id.coord,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(e: u64, c: u64) -> ViewId {
        ViewId {
            epoch: e,
            coord: MemberId(c),
        }
    }

    #[test]
    fn round_trips_and_rejects_truncation() {
        let msg = MsgRec {
            sender: MemberId(3),
            counter: 7,
            ts: 99,
            payload: b"hello".to_vec(),
        };
        let all = vec![
            Message::Data(Data {
                view: id(2, 1),
                msg: msg.clone(),
            }),
            Message::Status(Status {
                view: id(2, 1),
                from: MemberId(3),
                ts: 5,
                sent: 4,
                blocked: true,
                recv: vec![1, 2],
                consumed: vec![0, 2],
            }),
            Message::Propose(Propose {
                id: id(3, 1),
                members: vec![MemberId(1), MemberId(3)],
            }),
            Message::Report(Report {
                proposal: id(3, 1),
                from: MemberId(3),
                seq: 9,
                prev: View {
                    id: id(2, 1),
                    members: vec![MemberId(1), MemberId(3)],
                },
                recv: vec![1, 7],
                msgs: vec![msg.clone()],
            }),
            Message::Nack(Nack {
                proposal: id(3, 1),
                from: MemberId(3),
                epoch: 8,
            }),
            Message::Install(Install {
                view: View {
                    id: id(3, 1),
                    members: vec![MemberId(1), MemberId(3)],
                },
                entries: vec![Entry {
                    member: MemberId(3),
                    prev: id(2, 1),
                    seq: 9,
                }],
                cuts: vec![Cut {
                    prev: id(2, 1),
                    counts: vec![(MemberId(3), 7)],
                    msgs: vec![msg],
                }],
            }),
        ];
        for m in all {
            let bytes = m.to_bytes();
            assert_eq!(Message::decode(&bytes), Ok(m.clone()));
            for cut in 0..bytes.len() {
                assert!(
                    Message::decode(&bytes[..cut]).is_err(),
                    "{m:?} cut at {cut}"
                );
            }
        }
    }

    #[test]
    fn hostile_lengths_are_refused_without_allocating() {
        let mut b = vec![PROPOSE];
        b.extend_from_slice(&[0; 16]);
        b.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(Message::decode(&b).is_err());
        // Unsorted members are refused.
        let mut b = vec![PROPOSE];
        b.extend_from_slice(&[0; 16]);
        b.extend_from_slice(&2u32.to_be_bytes());
        b.extend_from_slice(&5u64.to_be_bytes());
        b.extend_from_slice(&4u64.to_be_bytes());
        assert!(Message::decode(&b).is_err());
    }
}
