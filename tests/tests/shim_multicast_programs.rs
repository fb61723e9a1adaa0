//! Unmodified multicast programs under the shim on a six-node overlay (a tree with cross
//! links): `socat` and a Python receiver joined to a group on several nodes, `iperf` (iperf2)
//! sending to the group from another. Checks that every member socket gets the datagrams,
//! that each packet crosses each overlay link at most once (link stress from the daemons'
//! counters, printed against unicast fan-out), best-effort delivery on clean links, reliable
//! delivery through 2 % loss on every link, and that leaves, crashes and new joins move the
//! traffic (the times are printed; the tests assert only that traffic stops and starts).

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use weft_tests::shim::{
    free_port, iperf2_ids, iperf2_sent, iperf2_server_received, iperf2_tally, settled,
    socket_buffer_drops, udp_receive_buffer_errors, Bg, PYTHON,
};
use weft_tests::{monotonic_ns, require_tool, wait_for, weft_bin, Overlay};

/// Node 1 sends over the tree 1─2, 1─3, 2─4, 2─5, 3─6; the cross links 3─4 and 5─6 are
/// slower (5 ms), so shortest paths and the source's tree follow the tree links.
const TREE: [(usize, usize); 5] = [(1, 2), (1, 3), (2, 4), (2, 5), (3, 6)];
const CROSS: [(usize, usize); 2] = [(3, 4), (5, 6)];
const SENDER: usize = 1;
/// iperf2 datagram length (one overlay fragment each).
const LEN: usize = 1000;
const LIMIT: Duration = Duration::from_secs(120);

/// One six-daemon overlay at a time: the machine is small and the delivery checks need the
/// daemons to keep up.
static ONE_OVERLAY: Mutex<()> = Mutex::new(());

/// A receiver that joins with a 12-byte `ip_mreqn` before `bind` (SO_REUSEADDR, wildcard
/// address), leaves on SIGUSR1 and prints one line per datagram with CLOCK_MONOTONIC times.
const PY_RECEIVER: &str = r#"
import signal, socket, struct, sys, time
group, port, iface = sys.argv[1], int(sys.argv[2]), sys.argv[3]
mreqn = struct.pack('4s4si', socket.inet_aton(group), socket.inet_aton(iface), 0)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreqn)
s.bind(('', port))
def leave(*_):
    s.setsockopt(socket.IPPROTO_IP, socket.IP_DROP_MEMBERSHIP, mreqn)
    print('left', time.monotonic_ns(), flush=True)
signal.signal(signal.SIGUSR1, leave)
print('joined', time.monotonic_ns(), flush=True)
while True:
    data, src = s.recvfrom(65536)
    print('rx', time.monotonic_ns(), struct.unpack('!i', data[:4])[0], src[0], flush=True)
"#;

/// The six daemons with `spec` on every link, once node 1 routes along the tree.
fn overlay(spec: &str) -> Overlay {
    for t in ["socat", "iperf", PYTHON] {
        require_tool(t);
    }
    let mut b = Overlay::builder();
    for (a, z) in TREE {
        b = b.link(a, z, spec);
    }
    for (a, z) in CROSS {
        b = b.link(a, z, &format!("{spec} delay=5ms"));
    }
    let o = b.start();
    o.wait_converged(Duration::from_secs(30));
    // Six daemons share this namespace's loopback: at most one (the first daemon of the
    // namespace, possibly another run's) delivers through the kernel, the others fall back to
    // per-socket delivery addresses, so these tests exercise the fallback (preload/README.md).
    let modes: Vec<String> = (1..=6)
        .map(|n| {
            o.status(n)["group_delivery"]
                .as_str()
                .unwrap_or("?")
                .to_string()
        })
        .collect();
    assert!(
        modes.iter().all(|m| m == "kernel" || m == "addresses")
            && modes.iter().filter(|m| *m == "kernel").count() <= 1,
        "group delivery per node: {modes:?}"
    );
    println!("group delivery per node: {modes:?}");
    // Link costs follow measured delays a little after the routes first converge.
    for (parent, child) in TREE {
        let want: Vec<String> = tree_path(child).into_iter().map(|k| o.ip(k)).collect();
        wait_for(
            Duration::from_secs(30),
            || o.path(SENDER, child) == want,
            || {
                format!(
                    "node {SENDER} routes to {child} via {:?}, not through {parent}",
                    o.path(SENDER, child)
                )
            },
        );
    }
    o
}

/// The nodes from the sender down the tree to `n`.
fn tree_path(n: usize) -> Vec<usize> {
    let mut path = vec![n];
    while let Some(&(parent, _)) = TREE.iter().find(|&&(_, c)| c == *path.last().unwrap_or(&n)) {
        path.push(parent);
    }
    path.reverse();
    path
}

fn neighbours(n: usize) -> Vec<usize> {
    TREE.iter()
        .chain(&CROSS)
        .filter_map(|&(a, z)| match n {
            _ if a == n => Some(z),
            _ if z == n => Some(a),
            _ => None,
        })
        .collect()
}

/// How `socat` receives.
#[derive(Clone, Copy)]
enum Socat {
    /// `UDP4-RECVFROM:…,fork`: the parent peeks at each datagram and a forked child reads it
    /// from the inherited member socket and writes it out (without `fork` socat stops after
    /// the first datagram).
    RecvfromFork,
    /// `UDP4-RECV`: one process reads every datagram (in arrival order).
    Recv,
}

/// `socat` receiving `group:port` on node `n` and writing each datagram to its stdout,
/// optionally through `weft run --reliable-group G`.
fn socat(o: &Overlay, n: usize, mode: Socat, group: &str, port: u16, reliable: Option<&str>) -> Bg {
    let options = format!("ip-add-membership={group}:{},reuseaddr", o.ip(n));
    let address = match mode {
        Socat::RecvfromFork => format!("UDP4-RECVFROM:{port},{options},fork"),
        Socat::Recv => format!("UDP4-RECV:{port},{options}"),
    };
    let cmd = match reliable {
        None => {
            let mut c = o.shim(n, "socat");
            c.args(["-u", &address, "STDOUT"]);
            c
        }
        Some(g) => {
            let mut c = Command::new(weft_bin());
            c.arg("--socket").arg(o.socket(n));
            c.args([
                "run",
                "--reliable-group",
                g,
                "--",
                "socat",
                "-u",
                &address,
                "STDOUT",
            ]);
            c.env_remove("LD_PRELOAD").env_remove("WEFT_LOG");
            c
        }
    };
    Bg::spawn(cmd, &o.dir, &format!("socat-node{n}"))
}

/// [`PY_RECEIVER`] on node `n` (reliable when `reliable_groups` names the group).
fn python(o: &Overlay, n: usize, group: &str, port: u16, reliable_groups: Option<&str>) -> Bg {
    let mut c = o.shim(n, PYTHON);
    c.args(["-c", PY_RECEIVER, group, &port.to_string(), &o.ip(n)]);
    if let Some(g) = reliable_groups {
        c.env("WEFT_RELIABLE_GROUPS", g);
    }
    let mut bg = Bg::spawn(c, &o.dir, &format!("python-node{n}"));
    wait_for(
        Duration::from_secs(15),
        || bg.stdout().contains("joined") || !bg.running(),
        || "python receiver did not start".into(),
    );
    assert!(bg.running(), "python receiver exited: {}", bg.stderr());
    bg
}

/// `iperf -u -c group` on node `n` at `rate` for `seconds`.
fn iperf2(o: &Overlay, n: usize, group: &str, port: u16, rate: &str, seconds: u32) -> Bg {
    let mut c = o.shim(n, "iperf");
    c.args(["-u", "-c", group, "-p", &port.to_string(), "-T", "8"])
        .args([
            "-l",
            &LEN.to_string(),
            "-b",
            rate,
            "-t",
            &seconds.to_string(),
        ]);
    Bg::spawn(c, &o.dir, &format!("iperf2-node{n}"))
}

/// A [`PY_RECEIVER`]'s datagrams: (CLOCK_MONOTONIC ns, id, source address).
fn py_datagrams(bg: &Bg) -> Vec<(u64, i32, String)> {
    bg.stdout()
        .lines()
        .filter_map(|l| {
            let mut f = l.strip_prefix("rx ")?.split_whitespace();
            Some((
                f.next()?.parse().ok()?,
                f.next()?.parse().ok()?,
                f.next()?.to_string(),
            ))
        })
        .collect()
}

/// The CLOCK_MONOTONIC time a [`PY_RECEIVER`] printed after `word` (`joined`, `left`).
fn py_time(bg: &Bg, word: &str) -> Option<u64> {
    bg.stdout().lines().find_map(|l| {
        l.strip_prefix(word)?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
}

/// The datagram ids a receiver got, in arrival order.
enum Receiver {
    Socat(Bg),
    Python(Bg),
}

impl Receiver {
    fn ids(&self) -> Vec<i32> {
        match self {
            Receiver::Socat(bg) => iperf2_ids(&bg.stdout_bytes(), LEN),
            Receiver::Python(bg) => py_datagrams(bg).into_iter().map(|d| d.1).collect(),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Receiver::Socat(_) => "socat",
            Receiver::Python(_) => "python (ip_mreqn before bind)",
        }
    }

    fn bg(&self) -> &Bg {
        match self {
            Receiver::Socat(bg) | Receiver::Python(bg) => bg,
        }
    }
}

/// Runs iperf2 to the group and returns (datagrams iperf2 sent, each receiver's ids
/// once the receivers have settled).
fn send_and_collect(
    o: &Overlay,
    group: &str,
    port: u16,
    rate: &str,
    seconds: u32,
    receivers: &[(usize, Receiver)],
) -> (u64, Vec<Vec<i32>>) {
    let out = iperf2(o, SENDER, group, port, rate, seconds).success(LIMIT);
    let sent = iperf2_sent(&out).unwrap_or_else(|| panic!("no `Sent N datagrams` in:\n{out}"));
    let ids = settled(Duration::from_secs(2), Duration::from_secs(30), || {
        receivers.iter().map(|(_, r)| r.ids()).collect::<Vec<_>>()
    });
    (sent, ids)
}

#[test]
fn socat_python_and_iperf2_share_a_group_and_each_link_carries_each_packet_once() {
    let _one = ONE_OVERLAY.lock().unwrap_or_else(|e| e.into_inner());
    let o = overlay("");
    let group = "239.1.2.3";
    let port = free_port();
    let receivers = vec![
        (
            2,
            Receiver::Socat(socat(&o, 2, Socat::RecvfromFork, group, port, None)),
        ),
        (
            4,
            Receiver::Socat(socat(&o, 4, Socat::RecvfromFork, group, port, None)),
        ),
        (
            5,
            Receiver::Socat(socat(&o, 5, Socat::RecvfromFork, group, port, None)),
        ),
        (
            6,
            Receiver::Socat(socat(&o, 6, Socat::RecvfromFork, group, port, None)),
        ),
        // A second socket on node 4, same group and port: it gets its own copy.
        (4, Receiver::Python(python(&o, 4, group, port, None))),
    ];
    // iperf2's own receiver binds to the group address (a third kind of member socket).
    let mut server = o.shim(5, "iperf");
    server.args([
        "-s",
        "-u",
        "-B",
        group,
        "-p",
        &port.to_string(),
        "-l",
        &LEN.to_string(),
    ]);
    let server = Bg::spawn(server, &o.dir, "iperf2-server-node5");
    o.wait_group_members(SENDER, group, &[2, 4, 5, 6]);
    let before = o.mcast_links();
    let drops_before = udp_receive_buffer_errors();

    let (sent, ids) = send_and_collect(&o, group, port, "2M", 4, &receivers);
    println!("iperf2 sent {sent} datagrams of {LEN} bytes to {group}:{port}");
    let kernel_drops = udp_receive_buffer_errors() - drops_before;
    let mut short = Vec::new();
    for ((n, r), ids) in receivers.iter().zip(&ids) {
        let (got, _) = iperf2_tally(ids, sent);
        if let Receiver::Socat(bg) = r {
            let bytes = bg.stdout_bytes().len();
            assert_eq!(
                bytes % LEN,
                0,
                "node {n} socat wrote {bytes} bytes: torn datagrams"
            );
        }
        // A receiver that falls behind (socat forks a process per datagram) lets its socket
        // buffer overflow: those datagrams reached it and the kernel dropped them.
        let dropped = socket_buffer_drops(r.bg().pid());
        let (read, delivered) = (
            got as f64 / sent as f64,
            (got + dropped) as f64 / sent as f64,
        );
        println!(
            "  node {n} {}: read {got}/{sent} ({:.2} %), its socket buffer overflowed for \
             {dropped}: delivered {:.2} %",
            r.kind(),
            100.0 * read,
            100.0 * delivered
        );
        // Reading at least half shows the program receives through the shim at all.
        if delivered < 0.999 || read < 0.5 {
            short.push(format!(
                "node {n} {}: {got}/{sent} (+{dropped} buffer drops)\n{}",
                r.kind(),
                r.bg().stderr()
            ));
        }
    }
    let report = settled(Duration::from_secs(1), Duration::from_secs(10), || {
        server.stdout()
    });
    match iperf2_server_received(&report) {
        Some((got, total)) => {
            let ratio = got as f64 / sent as f64;
            println!(
                "  node 5 iperf2 server bound to {group}: {got}/{sent} datagrams ({:.2} %, it \
                 counted {total})",
                100.0 * ratio
            );
            if ratio < 0.999 {
                short.push(format!("node 5 iperf2 server: {got}/{sent}\n{report}"));
            }
        }
        None => short.push(format!(
            "node 5 iperf2 server printed no report:\n{report}\n{}",
            server.stderr()
        )),
    }
    println!("  (kernel UDP receive-buffer drops on this machine meanwhile: {kernel_drops})");
    assert!(
        short.is_empty(),
        "receivers below 99.9 % on clean links:\n{}",
        short.join("\n")
    );
    let from: Vec<(u64, i32, String)> = match &receivers[4].1 {
        Receiver::Python(bg) => py_datagrams(bg),
        Receiver::Socat(_) => unreachable!("the fifth receiver is python"),
    };
    assert!(
        from.iter().all(|d| d.2 == o.ip(SENDER)),
        "recvfrom must name the sending node {}: {:?}",
        o.ip(SENDER),
        from.iter().find(|d| d.2 != o.ip(SENDER))
    );

    // Link stress: copies per directed link during the run.
    let after = o.mcast_links();
    let copies: BTreeMap<(usize, usize), u64> = after
        .iter()
        .map(|(&l, &n)| (l, n - before.get(&l).copied().unwrap_or(0)))
        .filter(|&(_, n)| n > 0)
        .collect();
    // Every packet leaves the source once on each branch of its tree, so the busiest link
    // out of the source carried each packet once: that is the number of packets.
    let packets = copies
        .iter()
        .filter(|((a, _), _)| *a == SENDER)
        .map(|(_, &n)| n)
        .max()
        .unwrap_or(0);
    assert!(
        packets >= sent,
        "the source's links carried {packets} copies for {sent} datagrams: {copies:?}"
    );
    for (&(a, z), &n) in &copies {
        assert!(
            n <= packets,
            "link {a}->{z} carried {n} copies of {packets} packets"
        );
        assert!(
            !copies.contains_key(&(z, a)),
            "link {a}-{z} carried the group both ways: {copies:?}"
        );
    }
    assert!(
        copies.keys().all(|l| TREE.contains(l)),
        "copies left the source's tree {TREE:?}: {copies:?}"
    );
    let member_nodes = [2, 4, 5, 6];
    let overlay_total: u64 = copies.values().sum();
    let unicast_total: u64 = member_nodes
        .iter()
        .map(|&m| packets * o.hops(SENDER, m) as u64)
        .sum();
    println!(
        "link stress: {packets} packets, {overlay_total} link transmissions over {} links {:?}; \
         unicast fan-out to nodes {member_nodes:?} would need {unicast_total}",
        copies.len(),
        copies
    );
    assert!(overlay_total < unicast_total);

    let status = o.weft_ok(SENDER, &["status"]);
    let shown: Vec<&str> = status
        .lines()
        .skip_while(|l| !l.starts_with("multicast groups"))
        .collect();
    println!("weft status on node {SENDER}:\n{}", shown.join("\n"));
    assert!(
        shown
            .iter()
            .any(|l| l.contains(group) && l.contains(&o.ip(6))),
        "{status}"
    );
    assert!(
        shown.iter().any(|l| l.contains("tree")),
        "no tree in:\n{status}"
    );
}

#[test]
fn reliable_group_delivers_everything_in_order_through_two_percent_loss_per_link() {
    let _one = ONE_OVERLAY.lock().unwrap_or_else(|e| e.into_inner());
    let o = overlay("loss=2%");
    let group = "239.1.2.4";
    let port = free_port();
    let receivers = vec![
        (
            2,
            Receiver::Socat(socat(&o, 2, Socat::Recv, group, port, Some(group))),
        ),
        (
            4,
            Receiver::Socat(socat(&o, 4, Socat::Recv, group, port, Some("239.1.0.0/16"))),
        ),
        (
            5,
            Receiver::Socat(socat(&o, 5, Socat::Recv, group, port, Some("239.1"))),
        ),
        (6, Receiver::Python(python(&o, 6, group, port, Some(group)))),
    ];
    o.wait_group_members(SENDER, group, &[2, 4, 5, 6]);

    let (sent, ids) = send_and_collect(&o, group, port, "2M", 4, &receivers);
    println!("iperf2 sent {sent} datagrams to reliable {group}:{port}, 2 % loss on every link");
    // The loss was real, and links repaired it.
    let (mut dropped, mut retransmitted, mut skipped) = (0, 0, 0);
    for n in 1..=o.nodes {
        let st = o.status(n);
        skipped += st["multicast_counters"]["order_skipped"]
            .as_u64()
            .unwrap_or(0);
        for nb in st["neighbors"].as_array().into_iter().flatten() {
            dropped += nb["emulation"]["counters"]["dropped_loss"]
                .as_u64()
                .unwrap_or(0);
            retransmitted += nb["arq"]["retransmissions"].as_u64().unwrap_or(0);
        }
    }
    for ((n, r), ids) in receivers.iter().zip(&ids) {
        let (got, in_order) = iperf2_tally(ids, sent);
        // What the program was too slow to read reached its socket: the overlay delivered it.
        let overflowed = socket_buffer_drops(r.bg().pid());
        println!(
            "  node {n} {}: read {got}/{sent} datagrams {}, its socket buffer overflowed for \
             {overflowed}",
            r.kind(),
            if in_order { "in order" } else { "OUT OF ORDER" }
        );
        assert!(
            got + overflowed >= sent,
            "node {n} missed datagrams {:?} of a reliable group (gaps given up: {skipped})\n\
             stderr: {}",
            (1..=sent as i32)
                .filter(|i| !ids.contains(i) && !ids.contains(&-i))
                .collect::<Vec<_>>(),
            r.bg().stderr()
        );
        assert!(in_order, "node {n} got a reliable group out of order");
    }
    println!(
        "links dropped {dropped} packets, hop-by-hop repair retransmitted {retransmitted}, \
         gaps given up: {skipped}"
    );
    assert!(dropped > 0 && retransmitted > 0, "no loss was emulated");
}

/// Copies all neighbours of `n` have sent toward it.
fn copies_toward(o: &Overlay, n: usize) -> u64 {
    neighbours(n)
        .into_iter()
        .flat_map(|k| o.mcast_out(k))
        .filter(|&(to, _)| to == n)
        .map(|(_, c)| c)
        .sum()
}

/// After `since` (CLOCK_MONOTONIC ns), polls the copies going toward node `n` until none has
/// gone for a second (at most 20 s). Returns an upper bound on when the last one went, in ms
/// after `since`: the time of the first poll that already saw the final count.
fn traffic_stops(o: &Overlay, n: usize, since: u64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut count, mut seen_at) = (copies_toward(o, n), monotonic_ns());
    loop {
        std::thread::sleep(Duration::from_millis(20));
        let c = copies_toward(o, n);
        let now = monotonic_ns();
        if c != count {
            (count, seen_at) = (c, now);
        } else if now - seen_at > 1_000_000_000 {
            return seen_at.saturating_sub(since) as f64 / 1e6;
        }
        assert!(
            Instant::now() < deadline,
            "traffic toward node {n} never stopped ({c} copies)"
        );
    }
}

#[test]
fn leaving_or_crashing_stops_traffic_and_a_new_member_gets_it() {
    let _one = ONE_OVERLAY.lock().unwrap_or_else(|e| e.into_inner());
    let o = overlay("");
    let group = "239.1.2.5";
    let port = free_port();
    let steady = socat(&o, 4, Socat::Recv, group, port, None);
    let leaver = python(&o, 6, group, port, None);
    let mut crasher = python(&o, 5, group, port, None);
    o.wait_group_members(SENDER, group, &[4, 5, 6]);
    // 100 datagrams a second until the end of the test.
    let _sender = iperf2(&o, SENDER, group, port, "800k", 60);
    let steady_count = || iperf2_ids(&steady.stdout_bytes(), LEN).len();
    wait_for(
        Duration::from_secs(20),
        || steady_count() > 0 && !py_datagrams(&leaver).is_empty(),
        || "the members never got traffic".into(),
    );
    assert!(
        !py_datagrams(&crasher).is_empty() || {
            std::thread::sleep(Duration::from_secs(2));
            !py_datagrams(&crasher).is_empty()
        },
        "node 5 never got traffic"
    );

    // A leave: IP_DROP_MEMBERSHIP on node 6's only member socket.
    leaver.signal(libc::SIGUSR1);
    wait_for(
        Duration::from_secs(10),
        || py_time(&leaver, "left").is_some(),
        || format!("no leave: {}", leaver.stderr()),
    );
    let left = py_time(&leaver, "left").unwrap_or(0);
    let stop_ms = traffic_stops(&o, 6, left);
    let late = |bg: &Bg| py_datagrams(bg).iter().filter(|d| d.0 > left).count();
    let late_now = late(&leaver);
    let steady_before = steady_count();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        late(&leaver),
        late_now,
        "the socket that left keeps receiving"
    );
    assert!(
        steady_count() > steady_before,
        "the remaining member stopped receiving too"
    );
    println!(
        "leave on node 6: no copy toward it later than {stop_ms:.0} ms after the leave returned"
    );

    // A crash: the member process on node 5 is killed.
    let killed = monotonic_ns();
    crasher.signal(libc::SIGKILL);
    let _ = crasher.wait(Duration::from_secs(10));
    let crash_ms = traffic_stops(&o, 5, killed);
    println!("crash on node 5: no copy toward it later than {crash_ms:.0} ms after SIGKILL");
    o.wait_group_members(SENDER, group, &[4]);

    // A new member on node 3, which carries nothing since node 6 left.
    let toward3 = copies_toward(&o, 3);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        copies_toward(&o, 3),
        toward3,
        "node 3 still carries the group"
    );
    let joiner = python(&o, 3, group, port, None);
    let joined = py_time(&joiner, "joined").unwrap_or(0);
    wait_for(
        Duration::from_secs(10),
        || copies_toward(&o, 3) > toward3,
        || "no copy went toward the new member on node 3".into(),
    );
    let flowing = monotonic_ns();
    wait_for(
        Duration::from_secs(10),
        || !py_datagrams(&joiner).is_empty(),
        || "the new member on node 3 never got traffic".into(),
    );
    let first = py_datagrams(&joiner)[0].0;
    println!(
        "join on node 3: first datagram {:.0} ms after the join returned \
         (copies seen going toward it by {:.0} ms)",
        first.saturating_sub(joined) as f64 / 1e6,
        flowing.saturating_sub(joined) as f64 / 1e6
    );
    assert!(
        steady_count() > steady_before,
        "the steady member stopped receiving"
    );
}
