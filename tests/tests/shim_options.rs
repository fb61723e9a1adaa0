//! TCP options that change what a shimmed session does, with real daemons and a real
//! program: `TCP_USER_TIMEOUT` and `SO_KEEPALIVE` + `TCP_KEEPIDLE`/`TCP_KEEPINTVL`/
//! `TCP_KEEPCNT` bound how long a session to a dead peer stays open, and the program's read
//! then fails with `ETIMEDOUT` (once; end of file after), as the kernel's socket does; a
//! session with neither stays open.
//!
//! The peer dies with `kill -9` of its daemon. The daemons run with a long dead interval so
//! the route to the dead node outlives the test: the sessions see a silent peer, not a
//! vanished route (which the kernel and weft both report as `EHOSTUNREACH`).

use std::time::Duration;
use weft_tests::shim::{free_port, Bg, PYTHON};
use weft_tests::{wait_for, Overlay};

const LIMIT: Duration = Duration::from_secs(90);

/// Accepts and holds connections, never writes.
const HOLDER: &str = r#"
import socket, sys
l = socket.socket()
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(('0.0.0.0', int(sys.argv[1])))
l.listen()
print('ready', flush=True)
held = []
while True:
    c, _ = l.accept()
    held.append(c)
"#;

/// Three sessions: keepalive (1 s idle, 1 s interval, 2 probes), a 1.5 s user timeout with
/// data in flight, and one with neither. Once the peer is dead (the go file), waits for the
/// first two to fail, each bounded by 25 s (below the daemon's 30 s default user timeout),
/// then looks at the third.
const CLIENT: &str = r#"
import errno, os, select, socket, sys, time
ip, port, go = sys.argv[1], int(sys.argv[2]), sys.argv[3]
k = socket.create_connection((ip, port))
k.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
k.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 1)
k.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 1)
k.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 2)
u = socket.create_connection((ip, port))
u.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, 1500)
n = socket.create_connection((ip, port))
print('options', k.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
      k.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
      u.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT), flush=True)
while not os.path.exists(go):
    time.sleep(0.01)
u.sendall(b'x' * 1000)
def outcome(name, s):
    s.settimeout(25)
    try:
        return f'{name} read {s.recv(10)!r}'
    except OSError as e:
        return f'{name} ' + ('own-timeout' if e.errno is None else errno.errorcode.get(e.errno, str(e.errno)))
for name, s in (('keepalive', k), ('user-timeout', u)):
    print(outcome(name, s), flush=True)
    # The error is reported once; then the socket reads end of file.
    print(outcome(name + ' again', s), flush=True)
readable = select.select([n], [], [], 0)[0]
print('plain', 'closed' if readable else 'open', n.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR), flush=True)
"#;

#[test]
fn user_timeout_and_keepalive_end_sessions_to_a_dead_peer_with_etimedout() {
    let mut o = Overlay::builder()
        .chain(2, "")
        .flag("--dead-interval")
        .flag("60s")
        .start();
    o.wait_converged(Duration::from_secs(20));
    let port = free_port();
    let mut cmd = o.shim(2, PYTHON);
    cmd.args(["-c", HOLDER, &port.to_string()]);
    let _holder = Bg::spawn(cmd, &o.dir, "holder");
    o.wait_listener(2, port);
    let go = o.dir.join("go");
    let mut cmd = o.shim(1, PYTHON);
    cmd.args([
        "-c",
        CLIENT,
        &o.ip(2),
        &port.to_string(),
        go.to_str().unwrap(),
    ]);
    let mut client = Bg::spawn(cmd, &o.dir, "client");
    wait_for(
        Duration::from_secs(30),
        || client.stdout().contains("options"),
        || format!("client: {} {}", client.stdout(), client.stderr()),
    );
    assert_eq!(client.stdout(), "options 1 2 1500\n");
    // All three sessions are up at node 1 before the peer dies.
    wait_for(
        Duration::from_secs(15),
        || {
            o.sessions(1)
                .iter()
                .filter(|s| s["state"] == "established")
                .count()
                == 3
        },
        || format!("sessions at node 1: {:?}", o.sessions(1)),
    );
    o.kill(2);
    std::fs::write(&go, b"").expect("go file");
    let out = client.success(LIMIT);
    assert_eq!(
        out,
        "options 1 2 1500\n\
         keepalive ETIMEDOUT\n\
         keepalive again read b''\n\
         user-timeout ETIMEDOUT\n\
         user-timeout again read b''\n\
         plain open 0\n",
        "{}",
        client.stderr()
    );
    // The route to the dead node was still there: a timeout, not an unreachable host.
    assert!(!o.path(1, 2).is_empty(), "node 1 lost its route to node 2");
}

/// Twenty 50-byte writes three ways against an echo server: corked then uncorked,
/// `MSG_MORE` on all but the last, and `TCP_NODELAY` with each write answered before the
/// next. Prints the local ports, then waits for the go file (the sessions stay open).
const COALESCE: &str = r#"
import os, socket, sys, time
ip, port, go = sys.argv[1], int(sys.argv[2]), sys.argv[3]
chunk = b'c' * 50
def recv_all(s, n):
    got = b''
    while len(got) < n:
        d = s.recv(n - len(got))
        assert d, 'early end of file'
        got += d
    return got
c = socket.create_connection((ip, port))
c.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
for _ in range(20):
    c.send(chunk)
c.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)
assert recv_all(c, 1000) == chunk * 20
m = socket.create_connection((ip, port))
for i in range(20):
    m.send(chunk, socket.MSG_MORE if i < 19 else 0)
assert recv_all(m, 1000) == chunk * 20
d = socket.create_connection((ip, port))
d.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
for _ in range(20):
    d.send(chunk)
    assert recv_all(d, 50) == chunk
print('ports', c.getsockname()[1], m.getsockname()[1], d.getsockname()[1], flush=True)
while not os.path.exists(go):
    time.sleep(0.01)
"#;

#[test]
fn cork_and_msg_more_coalesce_writes_into_one_segment() {
    let o = Overlay::ready_chain(2, "");
    let port = free_port();
    let _echo = o.echo_server(2, port);
    let go = o.dir.join("go-coalesce");
    let mut cmd = o.shim(1, PYTHON);
    cmd.args([
        "-c",
        COALESCE,
        &o.ip(2),
        &port.to_string(),
        go.to_str().unwrap(),
    ]);
    let mut client = Bg::spawn(cmd, &o.dir, "coalesce");
    wait_for(
        Duration::from_secs(60),
        || client.stdout().contains("ports") || client.stderr().contains("Error"),
        || format!("client: {} {}", client.stdout(), client.stderr()),
    );
    let out = client.stdout();
    let ports: Vec<u64> = out
        .split_whitespace()
        .skip(1)
        .filter_map(|p| p.parse().ok())
        .collect();
    assert_eq!(ports.len(), 3, "{out} {}", client.stderr());
    let segments: Vec<u64> = ports
        .iter()
        .map(|p| {
            let s = o.sessions(1);
            let s = s
                .iter()
                .find(|s| s["local"]["port"] == *p)
                .unwrap_or_else(|| panic!("no session from port {p}: {s:?}"));
            s["data_segments_sent"].as_u64().unwrap_or(0)
        })
        .collect();
    std::fs::write(&go, b"").expect("go file");
    println!(
        "data segments for 20 writes: cork {}, MSG_MORE {}, nodelay {}",
        segments[0], segments[1], segments[2]
    );
    // The kernel's counts: one segment for what the cork or MSG_MORE held (1000 bytes fit
    // in one), one per write when each waits for its answer.
    assert_eq!(segments, vec![1, 1, 20]);
    client.success(LIMIT);
}

/// The test above again, with ring mode off in the shimmed programs.
#[test]
fn all_again_with_rings_off() {
    weft_tests::shim::rerun_with_rings_off("all_again_with_rings_off");
}
