//! The scenarios of the differential suite, generated: see the crate docs in `main.rs`.

use super::matrix::{delivery_scenario, pairwise, AXES};
use weft_tests::netns_scenario::{Role, Scenario};

/// Send phases per scenario (scripts have barriers 0..=PHASES).
pub const PHASES: usize = 3;

// ----- scripts -------------------------------------------------------------------------------

pub(super) struct Script(Vec<String>);

impl Script {
    pub(super) fn new() -> Script {
        Script(Vec::new())
    }

    pub(super) fn l(&mut self, line: impl Into<String>) -> &mut Self {
        self.0.push(line.into());
        self
    }

    /// The barriers up to and including `n` that are not there yet.
    pub(super) fn barrier(&mut self, n: usize) -> &mut Self {
        let have = self.0.iter().filter(|l| l.starts_with("barrier")).count();
        for b in have..=n {
            self.0.push(format!("barrier {b}"));
        }
        self
    }

    pub(super) fn done(mut self) -> Vec<String> {
        self.barrier(PHASES);
        self.0
    }
}

pub(super) struct Names {
    pub t: u8,
}

impl Names {
    pub(super) fn group(&self, i: usize, k: usize) -> String {
        format!("239.{}.{}.{k}", self.t, i)
    }
    pub(super) fn port(&self, i: usize) -> u16 {
        20000 + i as u16 * 4
    }
    /// Fixed sender ports stay below the ephemeral range (32768-60999), as a server's fixed
    /// ports do: under weft the daemon's proxies hold ephemeral ports in the same namespace,
    /// and a wildcard bind to one of those is EADDRINUSE (as with any process's socket).
    pub(super) fn sport(&self, i: usize, k: usize) -> u16 {
        10000 + i as u16 * 4 + k as u16
    }
}

pub(super) fn receiver(host: usize, s: Script) -> Role {
    Role {
        host,
        receiver: true,
        script: s.done(),
    }
}

pub(super) fn sender(host: usize, s: Script) -> Role {
    Role {
        host,
        receiver: false,
        script: s.done(),
    }
}

// ----- membership lifetime (item 11) ----------------------------------------------------

fn lifetime_scenario(n: &Names, i: usize, kind: &str, life: &str) -> Scenario {
    let (g1, p) = (n.group(i, 1), n.port(i));
    let mut r = Script::new();
    r.l("sock 1").l("opt 1 reuseaddr");
    match kind {
        "ssm" => r.l(format!("join 1 ssm {g1} 0 {{h2}}")),
        _ => r.l(format!("join 1 mreq {g1} 0")),
    };
    r.l(format!("bind 1 0 {p}"));
    // The witness has joined nothing: it sees G1 exactly while the host is a member.
    r.l("sock 9")
        .l("opt 9 reuseaddr")
        .l(format!("bind 9 0 {p}"))
        .l("waiter 9 poll");
    match life {
        "dup-then-close-duplicate" => {
            r.l("waiter 1 poll").l("dup 1 2");
            r.barrier(0);
            r.l("close 2");
            r.barrier(1);
        }
        "dup-then-close-original" => {
            r.l("dup 1 2").l("waiter 2 poll");
            r.barrier(0);
            r.l("close 1");
            r.barrier(1);
            r.l("close 2");
            r.barrier(2);
        }
        "fork-child-closes" => {
            r.l("waiter 1 poll").l("fork p1");
            r.barrier(0);
            r.l("@p1 close 1");
            r.barrier(1);
        }
        "fork-parent-closes" => {
            r.l("fork p1").l("@p1 waiter 1 poll");
            r.barrier(0);
            r.l("close 1");
            r.barrier(1);
            r.l("@p1 close 1");
            r.barrier(2);
        }
        "fork-exec" => {
            r.l("fork p1").l("@p1 exec").l("@p1 waiter 1 poll");
            r.barrier(0);
            r.l("close 1");
            r.barrier(1);
            r.l("@p1 close 1");
            r.barrier(2);
        }
        "fork-child-leaves" => {
            r.l("waiter 1 poll").l("fork p1");
            r.barrier(0);
            match kind {
                "ssm" => r.l(format!("@p1 join 1 dropsrc {g1} 0 {{h2}}")),
                _ => r.l(format!("@p1 join 1 leave {g1} 0")),
            };
            r.barrier(1);
        }
        "sigkill" => {
            r.l("fork p1").l("@p1 waiter 1 poll");
            r.barrier(0);
            r.l("close 1");
            r.barrier(1);
            r.l("kill p1");
            r.barrier(2);
        }
        _ => {
            // last close
            r.l("waiter 1 poll");
            r.barrier(0);
            r.l("close 1");
            r.barrier(1);
        }
    }
    let mut s = Script::new();
    s.l("sock 1").l(format!("bind 1 0 {}", n.sport(i, 0)));
    s.barrier(0);
    for phase in 0..PHASES {
        if phase > 0 {
            s.barrier(phase);
        }
        s.l(format!("send 1 {g1} {p} x{phase}"));
    }
    Scenario {
        name: format!("lifetime/{kind}+{life}"),
        roles: vec![receiver(1, r), sender(2, s)],
    }
}

// ----- source filters (item 10, 12) ------------------------------------------------------

/// Steps for socket 1 (`{G}` is the group): at setup, and before each later phase.
struct FilterCase(
    &'static str,
    &'static [&'static str],
    &'static [&'static str],
    &'static [&'static str],
);

const FILTERS: &[FilterCase] = &[
    FilterCase(
        "block-unblock",
        &["join 1 mreq {G} 0"],
        &["join 1 block {G} 0 {h2}"],
        &["join 1 unblock {G} 0 {h2}"],
    ),
    FilterCase(
        "gblock-gunblock",
        &["join 1 gr {G} eth0"],
        &["join 1 gblock {G} eth0 {h3}"],
        &["join 1 gunblock {G} eth0 {h3}"],
    ),
    FilterCase(
        "block-twice-unblock-absent",
        &["join 1 mreq {G} 0", "join 1 block {G} 0 {h2}"],
        &["join 1 block {G} 0 {h2}", "join 1 unblock {G} 0 {h3}"],
        &["join 1 leave {G} 0"],
    ),
    FilterCase(
        "msfilter-exclude-include",
        &["join 1 mreq {G} 0"],
        &["msfilter 1 {G} 0 exclude {h2} {h3}"],
        &["msfilter 1 {G} 0 include {h3}"],
    ),
    FilterCase(
        "gmsfilter-exclude-include",
        &["join 1 gr {G} 0"],
        &["gmsfilter 1 {G} eth0 exclude {h3}"],
        &["gmsfilter 1 {G} eth0 include {h2} {h3}"],
    ),
    FilterCase(
        "msfilter-include-empty-leaves",
        &["join 1 mreq {G} 0"],
        &["msfilter 1 {G} 0 include"],
        &["join 1 mreq {G} 0"],
    ),
    FilterCase(
        "ssm-add-drop",
        &["join 1 ssm {G} 0 {h2}"],
        &["join 1 ssm {G} 0 {h3}"],
        &["join 1 dropsrc {G} 0 {h2}"],
    ),
    FilterCase(
        "gsr-add-drop",
        &["join 1 gsr {G} 0 {h3}"],
        &["join 1 gsr {G} 0 {h2}", "join 1 gsr {G} 0 {h2}"],
        &["join 1 gdropsrc {G} 0 {h3}", "join 1 gdropsrc {G} 0 {h2}"],
    ),
    FilterCase(
        "drop-source-of-any-source",
        &["join 1 mreq {G} 0"],
        &["join 1 dropsrc {G} 0 {h2}"],
        &["join 1 ssm {G} 0 {h3}"],
    ),
    FilterCase(
        "any-source-on-ssm",
        &["join 1 ssm {G} 0 {h2}"],
        &["join 1 mreq {G} 0"],
        &["join 1 leave {G} 0", "join 1 mreq {G} 0"],
    ),
    FilterCase(
        "filters-on-unjoined",
        &[],
        &[
            "join 1 block {G} 0 {h2}",
            "msfilter 1 {G} 0 exclude {h2}",
            "join 1 unblock {G} 0 {h2}",
        ],
        &["join 1 dropsrc {G} 0 {h2}"],
    ),
    FilterCase(
        "ssm-then-block",
        &["join 1 ssm {G} 0 {h2}"],
        &["join 1 block {G} 0 {h3}"],
        &["msfilter 1 {G} 0 exclude"],
    ),
];

fn filter_scenario(n: &Names, i: usize, f: &FilterCase) -> Scenario {
    let (g, p) = (n.group(i, 1), n.port(i));
    let fill = |l: &str| l.replace("{G}", &g);
    let mut r = Script::new();
    r.l("sock 1")
        .l("opt 1 reuseaddr")
        .l(format!("bind 1 0 {p}"))
        .l("waiter 1 poll");
    r.l("sock 2")
        .l("opt 2 reuseaddr")
        .l(format!("bind 2 0 {p}"))
        .l(format!("join 2 mreq {g} 0"))
        .l("waiter 2 poll");
    for l in f.1 {
        r.l(fill(l));
    }
    r.l(format!("getfilter 1 {g} 0"));
    r.barrier(0);
    for (k, steps) in [f.2, f.3].iter().enumerate() {
        for l in steps.iter() {
            r.l(fill(l));
        }
        r.l(format!("getfilter 1 {g} 0"));
        r.barrier(k + 1);
    }
    let mut roles = vec![receiver(1, r)];
    for host in [2, 3] {
        let mut s = Script::new();
        s.l("sock 1").l(format!("bind 1 0 {}", n.sport(i, 0)));
        s.barrier(0);
        for phase in 0..PHASES {
            if phase > 0 {
                s.barrier(phase);
            }
            s.l(format!("send 1 {g} {p} h{host}p{phase}"));
        }
        roles.push(sender(host, s));
    }
    Scenario {
        name: format!("filter/{}", f.0),
        roles,
    }
}

// ----- interfaces (item 9) ---------------------------------------------------------------

fn interface_scenario(n: &Names, i: usize, name: &str) -> Scenario {
    let p = n.port(i);
    let g = match name {
        "link-local-mdns" => "224.0.0.251".to_string(),
        "all-hosts" => "224.0.0.1".to_string(),
        _ => n.group(i, 1),
    };
    let mut r = Script::new();
    r.l("sock 1")
        .l("opt 1 reuseaddr")
        .l("opt 1 recvttl")
        .l("opt 1 pktinfo")
        .l(format!("bind 1 0 {p}"));
    match name {
        "both" => {
            r.l(format!("join 1 mreq {g} 127.0.0.1"));
            r.l(format!("join 1 mreq {g} {{h1}}"));
        }
        "both-index" => {
            r.l(format!("join 1 mreqn {g} lo"));
            r.l(format!("join 1 gr {g} eth0"));
            r.l(format!("join 1 mreqn {g} eth0"));
        }
        "loopback-only" => {
            r.l(format!("join 1 mreq {g} 127.0.0.1"));
        }
        "all-hosts" => {}
        _ => {
            r.l(format!("join 1 mreq {g} {{h1}}"));
        }
    }
    r.l("waiter 1 poll");
    r.barrier(0);
    if name.starts_with("both") {
        // Leaving one interface keeps the other.
        r.l(format!("join 1 leave {g} 127.0.0.1"));
    }
    r.barrier(1);
    let mut roles = vec![receiver(1, r)];
    let senders: &[(usize, &str)] = match name {
        "overlay-only+local-if-lo" => &[(1, "127.0.0.1")],
        "link-local-mdns" => &[(2, "0"), (1, "0")],
        _ => &[(2, "0"), (1, "0"), (1, "127.0.0.1")],
    };
    for (k, &(host, iface)) in senders.iter().enumerate() {
        let mut s = Script::new();
        s.l("sock 1").l(format!("bind 1 0 {}", n.sport(i, k)));
        s.l(format!(
            "opt 1 ttl {}",
            if g.starts_with("224.0.0.") { 255 } else { 3 }
        ));
        if iface != "0" {
            s.l(format!("opt 1 if {iface}"));
        }
        s.barrier(0);
        for phase in 0..2 {
            if phase > 0 {
                s.barrier(phase);
            }
            s.l(format!("send 1 {g} {p} h{host}if{k}p{phase}"));
        }
        roles.push(sender(host, s));
    }
    Scenario {
        name: format!("iface/{name}"),
        roles,
    }
}

// ----- unicast to the node's address (items 2, 3) ----------------------------------------

fn unicast_scenario(n: &Names, i: usize, name: &str) -> Scenario {
    let p = n.port(i);
    let mut r = Script::new();
    r.l("sock 1");
    match name {
        "bound-to-node-address" => {
            r.l(format!("bind 1 {{h1}} {p}")).l("waiter 1 echo");
        }
        "fork-child-answers" => {
            r.l(format!("bind 1 0 {p}"))
                .l("fork p1")
                .l("@p1 waiter 1 echo");
        }
        _ => {
            r.l(format!("bind 1 0 {p}")).l("waiter 1 echo");
        }
    }
    r.barrier(0);
    let mut s = Script::new();
    s.l("sock 1")
        .l(format!("bind 1 0 {}", n.sport(i, 0)))
        .l("waiter 1 poll");
    s.barrier(0);
    for phase in 0..2 {
        if phase > 0 {
            s.barrier(phase);
        }
        for k in 0..3 {
            s.l(format!("send 1 {{h1}} {p} u{phase}{k}"));
        }
    }
    Scenario {
        name: format!("unicast/{name}"),
        roles: vec![receiver(1, r), sender(2, s)],
    }
}

pub fn scenarios(t: u8) -> Vec<Scenario> {
    let n = Names { t };
    let mut out = Vec::new();
    let mut i = 1;
    let push = |sc: Scenario, out: &mut Vec<Scenario>| out.push(sc);
    for row in pairwise(AXES) {
        push(delivery_scenario(&n, i, &row), &mut out);
        i += 1;
    }
    for kind in ["any", "ssm"] {
        for life in [
            "dup-then-close-duplicate",
            "dup-then-close-original",
            "fork-child-closes",
            "fork-parent-closes",
            "fork-exec",
            "fork-child-leaves",
            "last-close",
            "sigkill",
        ] {
            push(lifetime_scenario(&n, i, kind, life), &mut out);
            i += 1;
        }
    }
    for f in FILTERS {
        push(filter_scenario(&n, i, f), &mut out);
        i += 1;
    }
    for name in [
        "both",
        "both-index",
        "loopback-only",
        "overlay-only+local-if-lo",
        "link-local-mdns",
        "all-hosts",
    ] {
        push(interface_scenario(&n, i, name), &mut out);
        i += 1;
    }
    for name in ["bound-to-node-address", "wildcard", "fork-child-answers"] {
        push(unicast_scenario(&n, i, name), &mut out);
        i += 1;
    }
    assert!(
        i < 256,
        "{i} scenarios: group addresses 239.T.i.k need i < 256"
    );
    out
}
