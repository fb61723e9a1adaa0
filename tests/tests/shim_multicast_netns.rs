//! Real, unmodified programs under the shim on three network namespaces joined by a router
//! that forwards unicast only (no multicast route anywhere, one `weftd` per namespace):
//! ssmping/asmping, udpcast, ZeroMQ `epgm://` pub/sub (clean and through 2 % loss on the
//! overlay), socat's forking UDP echo, a UDP server bound to the node's own address, and the
//! cost of delivering one group datagram to ten sockets of one host.

use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;
use weft_tests::netns::{Daemons, Hosts, Wiring};
use weft_tests::shim::{random_file, run_ok, sha256, Bg, PYTHON};
use weft_tests::{require_tool, wait_for};

const LIMIT: Duration = Duration::from_secs(120);

/// One set of namespaces at a time: the machine has two cores, and the programs' own
/// timeouts assume they get the CPU they ask for.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

struct Net {
    daemons: Daemons,
    hosts: Hosts,
}

impl Net {
    fn start(extra: &[&str]) -> Net {
        require_tool("ip");
        let hosts = Hosts::new(Wiring::Routed, 3);
        let daemons = Daemons::start(&hosts, extra);
        Net { daemons, hosts }
    }

    /// `prog` on host `n` under the shim.
    fn shim(&self, n: usize, prog: &str) -> Command {
        let mut c = self.hosts.command(n, prog);
        self.daemons.shim_env(n, &mut c);
        c
    }

    fn group(&self, k: u8) -> String {
        format!("239.{}.99.{k}", self.hosts.t)
    }

    /// Waits until host `n`'s daemon knows `members` (host numbers) in `group`.
    fn wait_members(&self, n: usize, group: &str, members: &[usize]) {
        let want: Vec<String> = members.iter().map(|&m| self.hosts.addr(m)).collect();
        wait_for(
            Duration::from_secs(20),
            || {
                let st = self.daemons.status(n);
                let got: Vec<String> = st["multicast"]["groups"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|g| g["group"] == group)
                    .flat_map(|g| g["members"].as_array().cloned().unwrap_or_default())
                    .filter_map(|m| m["node"].as_str().map(String::from))
                    .collect();
                want.iter().all(|w| got.contains(w))
            },
            || format!("host {n} never saw {members:?} join {group}"),
        );
    }
}

#[test]
fn ssmping_and_asmping_lose_nothing_since_the_first_multicast_packet() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    for t in ["ssmpingd", "ssmping", "asmping"] {
        require_tool(t);
    }
    let net = Net::start(&[]);
    let mut server = Bg::spawn(net.shim(3, "ssmpingd"), &net.hosts.dir, "ssmpingd");
    std::thread::sleep(Duration::from_millis(500));
    assert!(server.running(), "ssmpingd exited: {}", server.stderr());
    let server_addr = net.hosts.addr(3);
    let mut ssm = net.shim(1, "ssmping");
    ssm.args(["-c", "5", &server_addr]);
    let out = run_ok(ssm, &net.hosts.dir, "ssmping", LIMIT);
    println!("{out}");
    let group = net.group(1);
    let mut asm = net.shim(1, "asmping");
    asm.args(["-c", "5", &group, &server_addr]);
    let asm_out = run_ok(asm, &net.hosts.dir, "asmping", LIMIT);
    println!("{asm_out}");
    for (name, text) in [("ssmping", &out), ("asmping", &asm_out)] {
        assert!(
            text.contains("0% packet loss since first mc packet"),
            "{name}: multicast replies were lost:\n{text}"
        );
        let unicast = text.split("multicast:").next().unwrap_or("");
        assert!(
            unicast.contains("5 packets received, 0% packet loss"),
            "{name}: unicast replies were lost:\n{text}"
        );
    }
}

#[test]
fn udpcast_sends_three_megabytes_to_two_receivers() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    for t in ["udp-sender", "udp-receiver"] {
        require_tool(t);
    }
    let net = Net::start(&[]);
    let dir = net.hosts.dir.clone();
    let file = dir.join("three-megabytes");
    random_file(&file, 3_000_000, 15);
    let rdv = net.group(2);
    let mut receivers: Vec<(Bg, std::path::PathBuf)> = (2..=3)
        .map(|n| {
            let out = dir.join(format!("received-{n}"));
            let mut c = net.shim(n, "udp-receiver");
            c.arg("--file")
                .arg(&out)
                .args(["--mcast-rdv-address", &rdv, "--nokbd"]);
            (Bg::spawn(c, &dir, &format!("udp-receiver-{n}")), out)
        })
        .collect();
    net.wait_members(1, &rdv, &[2, 3]);
    let mut sender = net.shim(1, "udp-sender");
    sender.arg("--file").arg(&file).args([
        "--mcast-rdv-address",
        &rdv,
        "--nokbd",
        "--min-receivers",
        "2",
        "--max-wait",
        "60",
    ]);
    let out = run_ok(sender, &dir, "udp-sender", LIMIT);
    println!("{out}");
    let want = sha256(&file);
    for (rx, path) in receivers.iter_mut() {
        rx.success(LIMIT);
        assert_eq!(
            sha256(path),
            want,
            "{} differs from the file sent",
            path.display()
        );
    }
    println!("udpcast: 3 000 000 bytes to 2 receivers, checksums equal");
}

/// 500 messages over `epgm://` from host 1 to subscribers on hosts 2 and 3.
fn epgm_round(net: &Net, group: &str, port: u16) -> Vec<String> {
    const PUBSUB: &str = r#"
import sys, time, zmq
role, url, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
ctx = zmq.Context()
if role == 'pub':
    s = ctx.socket(zmq.PUB)
    s.setsockopt(zmq.RATE, 10000)
    s.connect(url)
    time.sleep(2)
    for i in range(n):
        s.send(b'msg %d' % i)
        time.sleep(0.002)
    # A PGM sender must stay to answer NAKs: a lost tail (or a lost repair) is found only by
    # the heartbeats after the last message, and a repair may need several NAK rounds.
    time.sleep(8)
    print('sent', n, flush=True)
else:
    s = ctx.socket(zmq.SUB)
    # OpenPGM sizes the receive window from ZMQ_RATE x ZMQ_RECOVERY_IVL. At the default
    # 100 kbit/s it holds ~80 packets (160 ms here): a loss whose repair is lost too is then
    # pulled off the trailing edge ("Data loss due to pulled trailing edge") before the second
    # NAK's repair arrives, on a kernel network as much as on weft.
    s.setsockopt(zmq.RATE, 10000)
    s.setsockopt(zmq.SUBSCRIBE, b'')
    s.setsockopt(zmq.RCVTIMEO, 15000)
    s.connect(url)
    print('ready', flush=True)
    got = set()
    try:
        while len(got) < n:
            got.add(int(s.recv().split()[1]))
    except zmq.Again:
        pass
    missing = sorted(set(range(n)) - got)
    print('got', len(got), 'missing', missing[:20], flush=True)
"#;
    let url = |n: usize| format!("epgm://{};{group}:{port}", net.hosts.addr(n));
    let mut subs: Vec<Bg> = (2..=3)
        .map(|n| {
            let mut c = net.shim(n, PYTHON);
            c.args(["-c", PUBSUB, "sub", &url(n), "500"]);
            Bg::spawn(c, &net.hosts.dir, &format!("zmq-sub-{n}"))
        })
        .collect();
    net.wait_members(1, group, &[2, 3]);
    let mut publisher = net.shim(1, PYTHON);
    publisher.args(["-c", PUBSUB, "pub", &url(1), "500"]);
    let out = run_ok(publisher, &net.hosts.dir, "zmq-pub", LIMIT);
    assert!(out.contains("sent 500"), "{out}");
    subs.iter_mut().map(|s| s.success(LIMIT)).collect()
}

#[test]
fn zeromq_epgm_pub_sub_clean_and_through_two_percent_loss() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let probe = Command::new(PYTHON)
        .args(["-c", "import zmq; assert zmq.has('pgm')"])
        .output()
        .expect("python3");
    assert!(
        probe.status.success(),
        "python3-zmq with OpenPGM is missing (scripts/test.sh installs python3-zmq)"
    );
    let net = Net::start(&[]);
    let clean = epgm_round(&net, &net.group(3), 5555);
    println!("epgm clean: {clean:?}");
    for out in &clean {
        assert!(out.contains("got 500"), "a subscriber lost messages: {out}");
    }
    // 2 % of what hosts 2 and 3 receive from host 1 is dropped; PGM repairs it.
    for n in 2..=3 {
        let out = net
            .daemons
            .weft(n, &["link", "set", &net.hosts.addr(1), "loss=2%"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let lossy = epgm_round(&net, &net.group(4), 5557);
    let dropped: Vec<u64> = (2..=3)
        .map(|n| {
            net.daemons.status(n)["neighbors"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|nb| nb["node"] == net.hosts.addr(1).as_str())
                .map(|nb| {
                    nb["emulation"]["counters"]["dropped_loss"]
                        .as_u64()
                        .unwrap_or(0)
                })
                .sum()
        })
        .collect();
    println!("epgm through 2 % loss: {lossy:?}, packets dropped by the emulation {dropped:?}");
    for out in &lossy {
        assert!(out.contains("got 500"), "a subscriber lost messages: {out}");
    }
    assert!(
        dropped.iter().all(|&d| d > 0),
        "the emulation dropped nothing: the loss round proved nothing"
    );
}

/// A UDP echo server (Python) on `bind`:`port`; each reply names the address it came from.
const UDP_ECHO: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
print('ready', flush=True)
while True:
    d, a = s.recvfrom(65536)
    s.sendto(b're-' + d, a)
"#;

/// Sends `count` lines to `addr`:`port` from host 1 and prints what comes back, with the
/// address each reply came from.
const UDP_CLIENT: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
for i in range(int(sys.argv[3])):
    s.sendto(b'hello%d' % i, (sys.argv[1], int(sys.argv[2])))
    try:
        d, a = s.recvfrom(65536)
        print(d.decode(), a[0], a[1], flush=True)
    except socket.timeout:
        print('timeout', flush=True)
"#;

#[test]
fn socat_fork_echo_and_a_server_bound_to_the_node_address_answer_every_datagram() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    require_tool("socat");
    let net = Net::start(&[]);
    let server = net.hosts.addr(3);
    let mut socat = net.shim(3, "socat");
    socat.args(["UDP4-RECVFROM:5601,fork", "EXEC:cat"]);
    let _socat = Bg::spawn(socat, &net.hosts.dir, "socat-echo");
    let mut bound = net.shim(3, PYTHON);
    bound.args(["-c", UDP_ECHO, &server, "5602"]);
    let bound = Bg::spawn(bound, &net.hosts.dir, "bound-echo");
    wait_for(
        Duration::from_secs(15),
        || bound.stdout().contains("ready"),
        || format!("the echo server did not start: {}", bound.stderr()),
    );
    std::thread::sleep(Duration::from_millis(300));
    for (port, expect) in [("5601", "hello"), ("5602", "re-hello")] {
        let mut c = net.shim(1, PYTHON);
        c.args(["-c", UDP_CLIENT, &server, port, "5"]);
        let out = run_ok(c, &net.hosts.dir, "udp-client", LIMIT);
        println!("port {port}:\n{out}");
        let answers: Vec<&str> = out.lines().filter(|l| l.starts_with(expect)).collect();
        assert_eq!(
            answers.len(),
            5,
            "5 datagrams to {server}:{port}, answers:\n{out}"
        );
        for a in answers {
            assert!(
                a.ends_with(&format!("{server} {port}")),
                "the answer must come from {server}:{port}: {a}"
            );
        }
    }
}

/// 100 threads of host 1 each opening one connection to host 3 at the same moment and
/// fetching a page (issue 15, item 13: the streams fix). Prints `ok N failed M`.
const BURST: &str = r#"
import sys, threading, urllib.request
url, n = sys.argv[1], int(sys.argv[2])
start = threading.Barrier(n)
ok, failed = [], []
def one(i):
    start.wait()
    try:
        with urllib.request.urlopen(url, timeout=20) as r:
            (ok if r.status == 200 and r.read() else failed).append(i)
    except Exception as e:
        failed.append(repr(e))
ts = [threading.Thread(target=one, args=(i,)) for i in range(n)]
[t.start() for t in ts]; [t.join() for t in ts]
print('ok', len(ok), 'failed', len(failed), flush=True)
"#;

/// Python's `ThreadingHTTPServer` with a listen backlog of `argv[2]` on port `argv[1]`
/// (`python3 -m http.server` is the same server with a backlog of 5).
const HTTP_SERVER: &str = r#"
import sys, http.server
class Server(http.server.ThreadingHTTPServer):
    request_queue_size = int(sys.argv[2])
    daemon_threads = True
Server(('0.0.0.0', int(sys.argv[1])), http.server.SimpleHTTPRequestHandler).serve_forever()
"#;

/// The burst from host 1 to a server with `backlog` on host 3: (kernel TCP, under the shim).
fn http_burst(backlog: &str) -> (String, String) {
    let net = Net::start(&[]);
    let www = net.hosts.dir.join("www");
    std::fs::create_dir_all(&www).expect("www");
    std::fs::write(www.join("index.html"), "hello\n").expect("index");
    let mut server = net.shim(3, PYTHON);
    server
        .args(["-c", HTTP_SERVER, "8080", backlog])
        .current_dir(&www);
    let _server = Bg::spawn(server, &net.hosts.dir, "http-server");
    net.daemons.wait_listener(3, 8080);
    let url = format!("http://{}:8080/index.html", net.hosts.addr(3));
    let mut kernel = net.hosts.command(1, PYTHON);
    kernel.args(["-c", BURST, &url, "100"]);
    let kernel = run_ok(kernel, &net.hosts.dir, "burst-kernel", LIMIT);
    let mut weft = net.shim(1, PYTHON);
    weft.args(["-c", BURST, &url, "100"]);
    let weft = run_ok(weft, &net.hosts.dir, "burst-weft", LIMIT);
    println!(
        "backlog {backlog}: kernel TCP {}, weft {}",
        kernel.trim(),
        weft.trim()
    );
    (kernel, weft)
}

#[test]
fn a_hundred_threads_fetch_from_a_threading_http_server_at_once() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (kernel, weft) = http_burst("128");
    assert!(
        kernel.contains("ok 100 "),
        "the kernel's own run failed: {kernel}"
    );
    assert!(weft.contains("ok 100 "), "under the shim: {weft}");
}

/// The same burst against `python3 -m http.server`'s backlog of 5: the kernel's clients
/// wait out SYN retransmissions (13-32 of 100 time out here); the daemon holds the shim's
/// sessions until the listener's backlog has room, so none of them may do worse.
#[test]
fn a_hundred_threads_fetch_from_a_backlog_of_five_no_worse_than_the_kernel() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (kernel, weft) = http_burst("5");
    let ok = |s: &str| -> u64 {
        s.split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    assert!(ok(&weft) >= ok(&kernel), "kernel: {kernel} weft: {weft}");
}

/// One group datagram to ten member sockets of one host costs the daemon one send to
/// loopback, not ten; the figures (sends and context switches per datagram) are printed.
#[test]
fn a_group_datagram_to_ten_local_sockets_is_one_send_by_the_daemon() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    const RECEIVERS: &str = r#"
import socket, struct, sys, select
group, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
socks = []
for _ in range(10):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(('', port))
    s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, struct.pack('4s4s', socket.inet_aton(group), bytes(4)))
    socks.append(s)
print('ready', flush=True)
counts = [0] * 10
while min(counts) < n:
    r, _, _ = select.select(socks, [], [], 20)
    if not r:
        break
    for s in r:
        s.recv(2048)
        counts[socks.index(s)] += 1
print('counts', *counts, flush=True)
"#;
    const SENDER: &str = r#"
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(int(sys.argv[3])):
    s.sendto(b'x' * 100, (sys.argv[1], int(sys.argv[2])))
    time.sleep(0.001)
"#;
    const N: u64 = 1000;
    let net = Net::start(&[]);
    let group = net.group(5);
    let mut rx = net.shim(1, PYTHON);
    rx.args(["-c", RECEIVERS, &group, "5700", &N.to_string()]);
    let mut rx = Bg::spawn(rx, &net.hosts.dir, "ten-receivers");
    wait_for(
        Duration::from_secs(15),
        || rx.stdout().contains("ready"),
        || format!("receivers did not start: {}", rx.stderr()),
    );
    net.wait_members(2, &group, &[1]);
    let sends_before = net.daemons.status(1)["daemon_counters"]["group_loopback_sends"]
        .as_u64()
        .unwrap_or(0);
    let daemon_pid = net.daemons.daemons[0].pid();
    let switches = || -> u64 {
        std::fs::read_to_string(format!("/proc/{daemon_pid}/status"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("ctxt_switches"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum()
    };
    let switches_before = switches();
    let mut tx = net.shim(2, PYTHON);
    tx.args(["-c", SENDER, &group, "5700", &N.to_string()]);
    run_ok(tx, &net.hosts.dir, "sender", LIMIT);
    let out = rx.success(LIMIT);
    let switches_after = switches();
    let sends = net.daemons.status(1)["daemon_counters"]["group_loopback_sends"]
        .as_u64()
        .unwrap_or(0)
        - sends_before;
    let counts: Vec<u64> = out
        .lines()
        .find_map(|l| l.strip_prefix("counts "))
        .map(|l| {
            l.split_whitespace()
                .filter_map(|c| c.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    println!(
        "{N} datagrams to 10 sockets: received {counts:?}; the daemon sent {sends} to loopback \
         ({:.2} per datagram) and was switched {} times ({:.2} per datagram)",
        sends as f64 / N as f64,
        switches_after - switches_before,
        (switches_after - switches_before) as f64 / N as f64
    );
    assert_eq!(counts.len(), 10, "{out}");
    assert!(
        counts.iter().all(|&c| c == N),
        "every socket gets every datagram: {counts:?}"
    );
    assert_eq!(
        sends, N,
        "one loopback send per group datagram, whatever the sockets"
    );
}

/// A membership whose last holder is killed with SIGKILL ends: the other nodes stop counting
/// this one as a member (how long it took is printed; the daemon looks every 250 ms).
#[test]
fn a_membership_ends_when_its_last_holder_is_killed() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    const HOLDER: &str = r#"
import socket, struct, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, struct.pack('4s4s', socket.inet_aton(sys.argv[1]), bytes(4)))
print('joined', flush=True)
time.sleep(600)
"#;
    let net = Net::start(&[]);
    let group = net.group(6);
    let mut holder = net.shim(1, PYTHON);
    holder.args(["-c", HOLDER, &group]);
    let mut holder = Bg::spawn(holder, &net.hosts.dir, "holder");
    wait_for(
        Duration::from_secs(15),
        || holder.stdout().contains("joined"),
        || format!("the holder did not join: {}", holder.stderr()),
    );
    net.wait_members(2, &group, &[1]);
    let killed = std::time::Instant::now();
    holder.signal(libc::SIGKILL);
    holder.wait(LIMIT);
    let node1 = net.hosts.addr(1);
    wait_for(
        Duration::from_secs(20),
        || {
            !net.daemons.status(2)["multicast"]["groups"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|g| g["group"] == group.as_str())
                .flat_map(|g| g["members"].as_array().cloned().unwrap_or_default())
                .any(|m| m["node"] == node1.as_str())
        },
        || format!("host 2 still counts host 1 as a member of {group}"),
    );
    println!(
        "membership of a SIGKILLed holder gone at host 2 after {:?}",
        killed.elapsed()
    );
}
