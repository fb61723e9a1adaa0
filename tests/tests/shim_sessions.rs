//! Overlay sessions as programs see them: `connect()` to an overlay node has the kernel's
//! semantics (EINPROGRESS, EALREADY, EISCONN, SO_ERROR, EINTR, SO_SNDTIMEO), the fd keeps its
//! flags and epoll registrations across the transplant, listeners take overlay and kernel
//! clients on one socket, and failures come back as the kernel's errnos.

use std::process::Command;
use std::time::Duration;
use weft_tests::shim::{c_program, free_port, run, run_ok, PYTHON};
use weft_tests::{wait_for, Overlay};

const LIMIT: Duration = Duration::from_secs(90);

fn c_against(o: &Overlay, n: usize, prog: &str, dst: usize, port: u16) -> String {
    let exe = c_program(prog);
    let mut cmd = o.shim(n, exe.to_str().unwrap());
    cmd.args([&o.ip(dst), &port.to_string()]);
    run_ok(cmd, &o.dir, prog, LIMIT)
}

#[test]
fn connect_follows_the_kernel_state_machine() {
    // A slow first hop keeps the handshake in flight long enough to look at it.
    let o = Overlay::builder()
        .link(1, 2, "delay=25ms")
        .link(2, 3, "")
        .start();
    o.wait_converged(Duration::from_secs(20));
    let port = free_port();
    let _echo = o.echo_server(3, port);
    let out = c_against(&o, 1, "connect_states", 3, port);
    assert!(out.contains("0 failures"), "{out}");
}

#[test]
fn epoll_registration_made_before_connect_survives() {
    let o = Overlay::ready_chain(3, "");
    let port = free_port();
    let _echo = o.echo_server(3, port);
    let out = c_against(&o, 1, "epoll_first", 3, port);
    assert_eq!(out, "ok\n");
}

const REFUSED: &str = r#"
import errno, select, socket, sys
ip, port = sys.argv[1], int(sys.argv[2])
s = socket.socket()
s.setblocking(False)
assert s.connect_ex((ip, port)) == errno.EINPROGRESS
# The issue's bound: the refusal is in within a second.
r, w, x = select.select([], [s], [], 1.0)
assert w, "no outcome within 1 s"
e = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
print('nonblocking', errno.errorcode.get(e, e))
print('reported once', s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR))
try:
    socket.create_connection((ip, port), timeout=10)
    print('blocking connected?!')
except OSError as e:
    print('blocking', errno.errorcode.get(e.errno, e.errno))
"#;

#[test]
fn connect_to_a_closed_overlay_port_is_refused() {
    let o = Overlay::ready_chain(3, "");
    let mut cmd = o.shim(1, PYTHON);
    cmd.args(["-c", REFUSED, &o.ip(3), &free_port().to_string()]);
    let out = run_ok(cmd, &o.dir, "refused", LIMIT);
    assert_eq!(
        out,
        "nonblocking ECONNREFUSED\nreported once 0\nblocking ECONNREFUSED\n"
    );
}

const UNREACHABLE: &str = r#"
import errno, socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])))
    print('connected?!')
except OSError as e:
    print(errno.errorcode.get(e.errno, e.errno))
"#;

#[test]
fn connect_to_an_unreachable_node_fails_without_hanging() {
    let mut o = Overlay::ready_chain(3, "");
    o.kill(3);
    // Node 1 still knows node 3 (its address stays overlay-bound) but has no route to it.
    wait_for(
        Duration::from_secs(20),
        || o.path(1, 3).is_empty(),
        || "node 1 still routes to the dead node 3".into(),
    );
    let known = o.status(1)["known_nodes"].to_string();
    assert!(known.contains(&o.ip(3)), "node 3 forgotten: {known}");
    let mut cmd = o.shim(1, PYTHON);
    cmd.args(["-c", UNREACHABLE, &o.ip(3), "7000"]);
    // Bounded by the session's own timeout, whatever the daemon chooses; never a hang.
    let out = run_ok(cmd, &o.dir, "unreachable", LIMIT);
    assert!(
        ["EHOSTUNREACH\n", "ETIMEDOUT\n", "ENETUNREACH\n"].contains(&out.as_str()),
        "{out}"
    );
}

const CLIENT: &str = r#"
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
s.sendall(b'hello')
assert s.recv(5) == b'hello'
print(s.getsockname()[0], s.getpeername()[0])
"#;

#[test]
fn one_listener_takes_overlay_and_kernel_clients() {
    let o = Overlay::ready_chain(3, "");
    let port = free_port();
    let mut echo = o.echo_server(3, port);
    // Overlay client from node 1.
    let mut cmd = o.shim(1, PYTHON);
    cmd.args(["-c", CLIENT, &o.ip(3), &port.to_string()]);
    let out = run_ok(cmd, &o.dir, "overlay-client", LIMIT);
    assert_eq!(out, format!("{} {}\n", o.ip(1), o.ip(3)));
    // An ordinary kernel client, no shim.
    let mut cmd = Command::new(PYTHON);
    cmd.args(["-c", CLIENT, "127.0.0.1", &port.to_string()]);
    let out = run_ok(cmd, &o.dir, "kernel-client", LIMIT);
    assert_eq!(out, "127.0.0.1 127.0.0.1\n");
    wait_for(
        Duration::from_secs(10),
        || {
            echo.stdout()
                .lines()
                .filter(|l| l.starts_with("peer"))
                .count()
                == 2
        },
        || format!("server saw: {}", echo.stdout()),
    );
    let peers: Vec<String> = echo
        .stdout()
        .lines()
        .filter(|l| l.starts_with("peer"))
        .map(String::from)
        .collect();
    // The overlay peer as an [::] listener sees it: v4-mapped, and its session's local name.
    assert!(
        peers[0].starts_with(&format!("peer ::ffff:{} ", o.ip(1)))
            && peers[0].ends_with(&format!(" ::ffff:{}", o.ip(3))),
        "{peers:?}"
    );
    assert!(peers[1].starts_with("peer ::ffff:127.0.0.1 "), "{peers:?}");
    assert!(echo.running());
}

const NODE_BOUND: &str = r#"
import socket, sys
l = socket.socket()
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind((sys.argv[1], int(sys.argv[2])))
l.listen()
print('ready', flush=True)
c, a = l.accept()
print('peer', a[0], 'local', c.getsockname()[0], flush=True)
c.sendall(c.recv(5))
c.close()
"#;

#[test]
fn listener_on_the_node_address_takes_overlay_clients() {
    let o = Overlay::ready_chain(2, "");
    let port = free_port();
    let mut cmd = o.shim(2, PYTHON);
    cmd.args(["-c", NODE_BOUND, &o.ip(2), &port.to_string()]);
    let mut server = weft_tests::shim::Bg::spawn(cmd, &o.dir, "node-bound");
    o.wait_listener(2, port);
    let mut cmd = o.shim(1, PYTHON);
    cmd.args(["-c", CLIENT, &o.ip(2), &port.to_string()]);
    run_ok(cmd, &o.dir, "client", LIMIT);
    let out = server.success(LIMIT);
    assert_eq!(out, format!("ready\npeer {} local {}\n", o.ip(1), o.ip(2)));
    // A listener on another address (localhost) is the kernel's alone.
    let port = free_port();
    let mut cmd = o.shim(2, PYTHON);
    cmd.args(["-c", NODE_BOUND, "127.0.0.1", &port.to_string()]);
    let local_only = weft_tests::shim::Bg::spawn(cmd, &o.dir, "localhost-bound");
    wait_for(
        Duration::from_secs(10),
        || local_only.stdout().contains("ready"),
        || "localhost server did not start".into(),
    );
    let listeners = o.status(2)["listeners"].to_string();
    assert!(!listeners.contains(&port.to_string()), "{listeners}");
    let mut cmd = o.shim(1, PYTHON);
    cmd.args(["-c", REFUSED, &o.ip(2), &port.to_string()]);
    let (_, out, _) = run(cmd, &o.dir, "refused", LIMIT);
    assert!(out.starts_with("nonblocking ECONNREFUSED"), "{out}");
}

#[test]
fn weft_run_puts_a_program_on_the_overlay() {
    let o = Overlay::ready_chain(2, "");
    let port = free_port();
    let _echo = o.echo_server(2, port);
    let mut cmd = Command::new(weft_tests::weft_bin());
    cmd.arg("--socket")
        .arg(o.socket(1))
        .args([
            "run",
            "--",
            PYTHON,
            "-c",
            CLIENT,
            &o.ip(2),
            &port.to_string(),
        ])
        .env_remove("LD_PRELOAD")
        .env_remove("WEFT_SOCKET");
    let out = run_ok(cmd, &o.dir, "weft-run", LIMIT);
    assert_eq!(out, format!("{} {}\n", o.ip(1), o.ip(2)));
}

#[test]
fn debug_logging_reports_decisions_without_recursing() {
    let o = Overlay::ready_chain(2, "");
    let port = free_port();
    let _echo = o.echo_server(2, port);
    let mut cmd = o.shim(1, PYTHON);
    cmd.env("WEFT_LOG", "debug")
        .args(["-c", CLIENT, &o.ip(2), &port.to_string()]);
    let mut bg = weft_tests::shim::Bg::spawn(cmd, &o.dir, "logged");
    let out = bg.success(LIMIT);
    assert_eq!(out, format!("{} {}\n", o.ip(1), o.ip(2)));
    let log = bg.stderr();
    assert!(log.contains("connected to the daemon"), "{log}");
    assert!(
        log.contains(&format!("overlay session to {}:{port}", o.ip(2))),
        "{log}"
    );
    assert!(log.lines().all(|l| l.starts_with("weft-shim[")), "{log}");
}

const NEVER_ACCEPTS: &str = r#"
import socket, sys, time
l = socket.socket()
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(('0.0.0.0', int(sys.argv[1])))
l.listen()
print('ready', flush=True)
sys.stdin.readline()
l.close()  # with the overlay client still in its backlog
print('closed', flush=True)
time.sleep(60)
"#;

const WAITS_FOR_DATA: &str = r#"
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
print('connected', flush=True)
s.settimeout(30)
try:
    print('read', s.recv(10), flush=True)
except OSError as e:
    print('error', type(e).__name__, flush=True)
"#;

#[test]
fn a_listener_closed_with_a_client_in_its_backlog_releases_it() {
    let o = Overlay::ready_chain(2, "");
    let port = free_port();
    let mut cmd = o.shim(2, PYTHON);
    cmd.args(["-c", NEVER_ACCEPTS, &port.to_string()])
        .stdin(std::process::Stdio::piped());
    let mut server = cmd.spawn().expect("server");
    o.wait_listener(2, port);
    let mut cmd = o.shim(1, PYTHON);
    cmd.args(["-c", WAITS_FOR_DATA, &o.ip(2), &port.to_string()]);
    let mut client = weft_tests::shim::Bg::spawn(cmd, &o.dir, "client");
    wait_for(
        Duration::from_secs(15),
        || client.stdout().contains("connected"),
        || format!("client: {} {}", client.stdout(), client.stderr()),
    );
    // Let the daemon's injected connection reach the backlog, then close the listener.
    std::thread::sleep(Duration::from_millis(300));
    use std::io::Write;
    let _ = server.stdin.as_mut().expect("stdin").write_all(b"close\n");
    // Like a kernel client reset by the closing listener: end of file, not a 2-minute wait
    // (the client's own bound is 30 s).
    let out = client.success(LIMIT);
    assert!(
        out.ends_with("read b''\n") || out.contains("error ConnectionResetError"),
        "{out}"
    );
    let _ = server.kill();
    let _ = server.wait();
}

/// Every test above again, with ring mode off in the shimmed programs.
#[test]
fn all_again_with_rings_off() {
    weft_tests::shim::rerun_with_rings_off("all_again_with_rings_off");
}
