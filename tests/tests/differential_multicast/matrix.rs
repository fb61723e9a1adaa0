//! The delivery matrix: scenarios generated as a pairwise-covering set of rows over every
//! axis (every pair of values of every two axes appears in some row).

use super::scenarios::{receiver, sender, Names, Script};
use weft_tests::netns_scenario::Scenario;

// ----- the delivery matrix (items 1, 4, 6, 7, 8, 9) -----------------------------------

pub(super) const AXES: &[(&str, &[&str])] = &[
    ("order", &["bind-join", "join-bind"]),
    ("bind", &["any", "group"]),
    (
        "join",
        &[
            "mreq",
            "mreqn",
            "gr",
            "ssm-sender",
            "ssm-other",
            "exclude-sender",
            "block-sender",
            "none",
        ],
    ),
    ("iface", &["default", "node"]),
    ("sockets", &["1", "3"]),
    ("reuse", &["addr", "port"]),
    ("procs", &["1", "2"]),
    ("mcall", &["1", "0"]),
    ("sender", &["remote", "local", "both"]),
    ("ttl", &["1", "7", "0"]),
    ("loop", &["1", "0"]),
    ("sendif", &["default", "node"]),
    (
        "waiter",
        &[
            "poll", "select", "epoll", "block", "nonblock", "scatter", "mmsg", "peek",
        ],
    ),
    (
        "how",
        &["sendto", "sendmsg", "sendmmsg", "write", "pktinfo"],
    ),
    ("leave", &["drop", "close"]),
];

/// Rows covering every pair of values of every two axes (greedy, from a fixed seed).
pub(super) fn pairwise(axes: &[(&str, &[&str])]) -> Vec<Vec<usize>> {
    let mut uncovered = std::collections::BTreeSet::new();
    for a in 0..axes.len() {
        for b in a + 1..axes.len() {
            for va in 0..axes[a].1.len() {
                for vb in 0..axes[b].1.len() {
                    uncovered.insert((a, va, b, vb));
                }
            }
        }
    }
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut rows = Vec::new();
    while !uncovered.is_empty() {
        let mut best: Option<(usize, Vec<usize>)> = None;
        for _ in 0..40 {
            // Start from an uncovered pair, fill the rest at random.
            let &(a, va, b, vb) = uncovered.iter().next().expect("uncovered");
            let mut row: Vec<usize> = axes
                .iter()
                .map(|(_, v)| (next() % v.len() as u64) as usize)
                .collect();
            row[a] = va;
            row[b] = vb;
            let gain = uncovered
                .iter()
                .filter(|&&(p, vp, q, vq)| row[p] == vp && row[q] == vq)
                .count();
            if best.as_ref().is_none_or(|(g, _)| gain > *g) {
                best = Some((gain, row));
            }
        }
        let (_, row) = best.expect("a row");
        uncovered.retain(|&(p, vp, q, vq)| !(row[p] == vp && row[q] == vq));
        rows.push(row);
    }
    rows
}

pub(super) fn delivery_scenario(n: &Names, i: usize, row: &[usize]) -> Scenario {
    let v = |axis: &str| -> &str {
        let k = AXES.iter().position(|(a, _)| *a == axis).expect("axis");
        AXES[k].1[row[k]]
    };
    let name = format!(
        "delivery/{}",
        AXES.iter()
            .zip(row)
            .map(|((_, vals), &k)| vals[k])
            .collect::<Vec<_>>()
            .join("+")
    );
    let (g1, g2, p) = (n.group(i, 1), n.group(i, 2), n.port(i));
    let sockets: usize = v("sockets").parse().unwrap_or(1);
    let two_procs = v("procs") == "2";
    let (iface_addr, iface_index) = match v("iface") {
        "node" => ("{h1}", "eth0"),
        _ => ("0", "0"),
    };
    let sender_place = v("sender");
    // The source a source-specific join names: the remote sender, or this host's own.
    let near = if sender_place == "local" {
        "{h1}"
    } else {
        "{h2}"
    };
    let reuse = if v("reuse") == "port" {
        "reuseport"
    } else {
        "reuseaddr"
    };
    let waiters = AXES
        .iter()
        .find(|(a, _)| *a == "waiter")
        .map(|(_, w)| *w)
        .unwrap_or(&["poll"]);
    let first_waiter = waiters.iter().position(|w| *w == v("waiter")).unwrap_or(0);
    let mut r = Script::new();
    if two_procs {
        r.l("fork p1");
    }
    let join = |s: &mut Script, tag: &str, id: usize| match v("join") {
        "mreq" => {
            s.l(format!("{tag}join {id} mreq {g1} {iface_addr}"));
        }
        "mreqn" => {
            s.l(format!("{tag}join {id} mreqn {g1} {iface_index}"));
        }
        "gr" => {
            s.l(format!("{tag}join {id} gr {g1} {iface_index}"));
        }
        "ssm-sender" => {
            s.l(format!("{tag}join {id} ssm {g1} {iface_addr} {near}"));
        }
        "ssm-other" => {
            s.l(format!("{tag}join {id} gsr {g1} {iface_index} {{h3}}"));
        }
        "exclude-sender" => {
            s.l(format!("{tag}join {id} mreq {g1} {iface_addr}"));
            s.l(format!(
                "{tag}msfilter {id} {g1} {iface_addr} exclude {near}"
            ));
        }
        "block-sender" => {
            s.l(format!("{tag}join {id} gr {g1} {iface_index}"));
            s.l(format!("{tag}join {id} gblock {g1} {iface_index} {near}"));
        }
        _ => {}
    };
    for id in 1..=sockets {
        let tag = if two_procs && id % 2 == 0 { "@p1 " } else { "" };
        r.l(format!("{tag}sock {id}"));
        r.l(format!("{tag}opt {id} {reuse}"));
        r.l(format!("{tag}opt {id} recvttl"));
        r.l(format!("{tag}opt {id} pktinfo"));
        r.l(format!("{tag}opt {id} mcall {}", v("mcall")));
        let bind_addr = if v("bind") == "group" {
            g1.as_str()
        } else {
            "0"
        };
        if v("order") == "bind-join" {
            r.l(format!("{tag}bind {id} {bind_addr} {p}"));
            join(&mut r, tag, id);
        } else {
            join(&mut r, tag, id);
            r.l(format!("{tag}bind {id} {bind_addr} {p}"));
        }
        r.l(format!("{tag}getopt {id} all"));
        r.l(format!(
            "{tag}waiter {id} {}",
            waiters[(first_waiter + id - 1) % waiters.len()]
        ));
    }
    // Witnesses: one joins G2 on the port (so the host is a member of G2), one has joined
    // nothing (what IP_MULTICAST_ALL lets it see).
    for (id, joins) in [(20, true), (21, false)] {
        r.l(format!("sock {id}"));
        r.l(format!("opt {id} reuseaddr"));
        r.l(format!("opt {id} reuseport"));
        r.l(format!("opt {id} recvttl"));
        if joins {
            r.l(format!("opt {id} mcall 0"));
            r.l(format!("join {id} mreq {g2} 0"));
        }
        r.l(format!("bind {id} 0 {p}"));
        r.l(format!("waiter {id} poll"));
    }
    r.barrier(0);
    let tag = "";
    match (v("leave"), v("join")) {
        ("close", _) | (_, "none") => {
            r.l(format!("{tag}close 1"));
        }
        (_, "gr") | (_, "block-sender") => {
            r.l(format!("{tag}join 1 gleave {g1} {iface_index}"));
        }
        (_, "ssm-sender") => {
            r.l(format!("{tag}join 1 dropsrc {g1} {iface_addr} {near}"));
        }
        (_, "ssm-other") => {
            r.l(format!("{tag}join 1 gdropsrc {g1} {iface_index} {{h3}}"));
        }
        _ => {
            r.l(format!("{tag}join 1 leave {g1} {iface_addr}"));
        }
    }
    r.barrier(1);
    let mut roles = vec![receiver(1, r)];
    let places: &[(usize, &str)] = match sender_place {
        "remote" => &[(2, "r")],
        "local" => &[(1, "l")],
        _ => &[(2, "r"), (1, "l")],
    };
    for &(host, who) in places {
        let mut s = Script::new();
        let (s1, s2) = (n.sport(i, 0), n.sport(i, 1));
        for (id, port) in [(1, s1), (2, s2)] {
            s.l(format!("sock {id}"));
            s.l(format!("bind {id} 0 {port}"));
            s.l(format!("opt {id} ttl {}", v("ttl")));
            if host == 1 {
                s.l(format!("opt {id} loop {}", v("loop")));
            }
            if v("sendif") == "node" {
                s.l(format!("opt {id} if {{h{host}}}"));
            }
        }
        if v("how") == "write" {
            s.l(format!("connect 1 {g1} {p}"));
        }
        s.barrier(0);
        for (phase, payload) in [(0, "a"), (1, "c")] {
            if phase == 1 {
                s.barrier(1);
            }
            let d = format!("{payload}{who}");
            match v("how") {
                "sendmmsg" => s.l(format!("sendmmsg 1 {g1} {p} {d}1 {d}2")),
                "pktinfo" => s.l(format!("send 1 {g1} {p} {d} pktinfo {{h{host}}}")),
                how => s.l(format!("send 1 {g1} {p} {d} {how}")),
            };
            s.l(format!("send 2 {g2} {p} b{who}{phase}"));
        }
        roles.push(sender(host, s));
    }
    Scenario { name, roles }
}
