//! View changes: proposals, reports (the flush), installs.

use crate::machine::{Event, Held, Member, Proposal};
use crate::wire::{Cut, Entry, Install, Message, MsgRec, Nack, Propose, Report, View, ViewId};
use crate::MemberId;
use std::collections::BTreeMap;
use weft_core::Instant;

impl Member {
    /// Proposes a view if this member coordinates and one is due.
    pub(crate) fn check_view_change(&mut self, now: Instant) {
        let coord = self.candidates.first().copied().unwrap_or(self.me);
        if let Some(p) = &self.proposal {
            if coord != self.me {
                self.proposal = None;
            } else if p.members != self.candidates || now >= p.started + self.cfg.propose_timeout {
                self.start_proposal(now);
            }
            return;
        }
        if coord != self.me {
            self.blocked_since = None;
            return;
        }
        if self.candidates != self.view.members {
            self.start_proposal(now);
            return;
        }
        // Someone froze for a proposal that never completed, or missed our install and cannot
        // be sent it again: reconfigure to release it.
        let frozen = self.blocked || self.peers.iter().any(|p| p.blocked || p.behind);
        if !frozen {
            self.blocked_since = None;
            return;
        }
        let since = *self.blocked_since.get_or_insert(now);
        if now >= since + self.cfg.propose_timeout {
            self.start_proposal(now);
        }
    }

    fn start_proposal(&mut self, now: Instant) {
        let epoch = self.max_epoch.max(self.view.id.epoch).saturating_add(1);
        self.max_epoch = epoch;
        let id = ViewId {
            epoch,
            coord: self.me,
        };
        self.counters.proposals += 1;
        let members = self.candidates.clone();
        let report = self.make_report(id);
        let mut reports = BTreeMap::new();
        reports.insert(self.me, report);
        self.proposal = Some(Proposal {
            id,
            members: members.clone(),
            reports,
            started: now,
            resend_at: now,
        });
        self.blocked_since = None;
        self.resend_proposal(now);
        self.maybe_install(now);
    }

    /// Sends the proposal again to the members that have not answered, if due.
    pub(crate) fn resend_proposal(&mut self, now: Instant) {
        let Some(p) = &mut self.proposal else { return };
        if now < p.resend_at {
            return;
        }
        p.resend_at = now + self.cfg.status_interval;
        let bytes = Message::Propose(Propose {
            id: p.id,
            members: p.members.clone(),
        })
        .to_bytes();
        for &m in &p.members {
            if m != self.me && !p.reports.contains_key(&m) {
                self.out.push_back((m, bytes.clone()));
            }
        }
    }

    /// Our report of the current view for `proposal`; freezes the view.
    fn make_report(&mut self, proposal: ViewId) -> Report {
        self.blocked = true;
        self.report_seq = self.report_seq.saturating_add(1);
        self.first_report.get_or_insert(self.report_seq);
        let mut msgs = Vec::new();
        for j in 0..self.senders.len() {
            let have = self.everyone_has(j);
            let s = &self.senders[j];
            if have >= s.contiguous {
                continue;
            }
            for (&c, h) in s.held.range(have + 1..=s.contiguous) {
                msgs.push(MsgRec {
                    sender: self.view.members[j],
                    counter: c,
                    ts: h.ts,
                    payload: h.payload.clone(),
                });
            }
        }
        Report {
            proposal,
            from: self.me,
            seq: self.report_seq,
            prev: self.view.clone(),
            recv: self.senders.iter().map(|s| s.contiguous).collect(),
            msgs,
        }
    }

    pub(crate) fn on_propose(&mut self, now: Instant, p: Propose) {
        self.max_epoch = self.max_epoch.max(p.id.epoch);
        if p.members.binary_search(&self.me).is_err() || p.id.coord == self.me {
            return;
        }
        if self.candidates.first() != Some(&p.id.coord) {
            return;
        }
        if p.id.epoch <= self.view.id.epoch {
            let nack = Message::Nack(Nack {
                proposal: p.id,
                from: self.me,
                epoch: self.view.id.epoch,
            });
            self.out.push_back((p.id.coord, nack.to_bytes()));
            return;
        }
        // A coordinator we follow now: ours (if any) is abandoned.
        self.proposal = None;
        let report = self.make_report(p.id);
        self.reported_to = Some(p.id.coord);
        self.out
            .push_back((p.id.coord, Message::Report(report).to_bytes()));
        let _ = now;
    }

    pub(crate) fn on_nack(&mut self, now: Instant, n: Nack) {
        if self.proposal.as_ref().is_some_and(|p| p.id == n.proposal) {
            self.max_epoch = self.max_epoch.max(n.epoch);
            self.start_proposal(now);
        }
    }

    pub(crate) fn on_report(&mut self, now: Instant, r: Report) {
        let Some(p) = &mut self.proposal else { return };
        if p.id != r.proposal || p.members.binary_search(&r.from).is_err() {
            return;
        }
        if r.recv.len() != r.prev.members.len() || r.prev.position(r.from).is_none() {
            self.counters.malformed += 1;
            return;
        }
        if p.reports.get(&r.from).is_some_and(|old| old.seq >= r.seq) {
            return;
        }
        p.reports.insert(r.from, r);
        self.maybe_install(now);
    }

    /// With every report in: the install, sent to every member and applied here.
    fn maybe_install(&mut self, now: Instant) {
        let Some(p) = &self.proposal else { return };
        if p.reports.len() < p.members.len() {
            return;
        }
        let Some(install) = compute_install(p) else {
            // Reports of one view that disagree about it: only a bug or a forgery.
            self.counters.malformed += 1;
            self.proposal = None;
            return;
        };
        let bytes = Message::Install(install.clone()).to_bytes();
        for &m in &install.view.members {
            if m != self.me {
                self.out.push_back((m, bytes.clone()));
            }
        }
        self.proposal = None;
        self.apply_install(now, install, &bytes);
    }

    pub(crate) fn on_install(&mut self, now: Instant, i: Install, bytes: &[u8]) {
        self.apply_install(now, i, bytes);
    }

    /// A member that sent a status of `its_view` missed our install: send it again.
    pub(crate) fn resend_install(&mut self, now: Instant, i: usize, its_view: ViewId) {
        let Some((bytes, entries)) = &self.install else {
            return;
        };
        let member = self.view.members[i];
        let missed = entries
            .iter()
            .any(|e| e.member == member && e.prev == its_view);
        if !missed || now < self.peers[i].install_at {
            return;
        }
        self.peers[i].install_at = now + self.cfg.retransmit;
        self.out.push_back((member, bytes.clone()));
    }

    fn apply_install(&mut self, now: Instant, inst: Install, bytes: &[u8]) {
        let ok = inst.view.position(self.me).is_some()
            && inst.view.id.epoch > self.view.id.epoch
            && self.blocked
            && inst.entries.iter().any(|e| {
                e.member == self.me
                    && e.prev == self.view.id
                    && self.first_report.is_some_and(|f| e.seq >= f)
                    && e.seq <= self.report_seq
            });
        let cut = inst.cuts.iter().find(|c| c.prev == self.view.id);
        let (true, Some(cut)) = (ok, cut) else {
            self.counters.installs_refused += 1;
            return;
        };
        // Each sender's count in the cut; the cut must cover what we delivered.
        let n = self.view.members.len();
        let mut counts = vec![0u32; n];
        for &(m, c) in &cut.counts {
            match self.view.position(m) {
                Some(j) => counts[j] = c,
                None => {
                    self.counters.installs_refused += 1;
                    return;
                }
            }
        }
        for rec in &cut.msgs {
            let Some(j) = self.view.position(rec.sender) else {
                continue;
            };
            let s = &mut self.senders[j];
            if rec.counter > s.delivered && rec.counter <= counts[j] {
                s.held.entry(rec.counter).or_insert(Held {
                    ts: rec.ts,
                    payload: rec.payload.clone(),
                    sent_at: now,
                });
            }
        }
        let complete = self.senders.iter().zip(&counts).all(|(s, &c)| {
            c >= s.delivered && (s.delivered.saturating_add(1)..=c).all(|k| s.held.contains_key(&k))
        });
        if !complete {
            self.counters.installs_refused += 1;
            return;
        }
        // Deliver the rest of the cut, in agreed order.
        while let Some((_, j)) = self.next_in_order(Some(&counts)) {
            self.deliver_next(j);
        }
        let old = self.view.id;
        let transitional: Vec<MemberId> = inst
            .entries
            .iter()
            .filter(|e| e.prev == old)
            .map(|e| e.member)
            .collect();
        self.max_epoch = self.max_epoch.max(inst.view.id.epoch);
        self.proposal = None;
        self.reset_view(inst.view.clone(), now);
        self.install = Some((bytes.to_vec(), inst.entries));
        self.counters.views_installed += 1;
        self.events.push_back(Event::View {
            view: inst.view,
            transitional,
        });
        self.try_deliver();
        self.check_view_change(now);
    }
}

/// The install for a proposal whose reports are all in: per previous view, each sender's
/// count is the most any of the view's reporters received, and the messages between the
/// least and the most come from the reports.
fn compute_install(p: &Proposal) -> Option<Install> {
    let mut entries = Vec::new();
    let mut groups: BTreeMap<ViewId, Vec<&Report>> = BTreeMap::new();
    for r in p.reports.values() {
        entries.push(Entry {
            member: r.from,
            prev: r.prev.id,
            seq: r.seq,
        });
        groups.entry(r.prev.id).or_default().push(r);
    }
    let mut cuts = Vec::new();
    for (prev, reports) in groups {
        let members = &reports.first()?.prev.members;
        if reports.iter().any(|r| &r.prev.members != members) {
            return None;
        }
        let mut have: BTreeMap<(MemberId, u32), &MsgRec> = BTreeMap::new();
        for r in &reports {
            for m in &r.msgs {
                have.insert((m.sender, m.counter), m);
            }
        }
        let mut counts = Vec::new();
        let mut msgs = Vec::new();
        for (j, &sender) in members.iter().enumerate() {
            let most = reports.iter().map(|r| r.recv[j]).max().unwrap_or(0);
            let least = reports.iter().map(|r| r.recv[j]).min().unwrap_or(0);
            counts.push((sender, most));
            for c in least.saturating_add(1)..=most {
                // Every reporter that received it holds it unless every member of the view
                // had it, in which case `least` covers it.
                msgs.push((*have.get(&(sender, c))?).clone());
            }
        }
        cuts.push(Cut { prev, counts, msgs });
    }
    Some(Install {
        view: View {
            id: p.id,
            members: p.members.clone(),
        },
        entries,
        cuts,
    })
}
