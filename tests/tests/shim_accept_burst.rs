//! A burst of connections to a shimmed server with a small accept backlog: 100 client threads
//! open one connection each at the same moment to a python `ThreadingHTTPServer` on another
//! node (socketserver listens with a backlog of 5), all under the shim across real weftd
//! daemons. Every request must succeed, as on the kernel, and the daemon must have paced its
//! injected connections to the listener's accept queue: none refused or expired, and no SYN
//! the kernel had to retransmit because the queue dropped it (what made 22–48 of 100
//! requests time out before). Then the worst case: the server starts accepting only once all
//! 100 sessions have arrived; exactly `backlog + 1` were connected to its queue and the other
//! 94 held in the daemon, and again all 100 succeed.

use std::process::Command;
use std::time::Duration;
use weft_tests::shim::{free_port, run_ok, Bg, PYTHON};
use weft_tests::{wait_for, Overlay};

const LIMIT: Duration = Duration::from_secs(120);
const CLIENTS: usize = 100;

/// argv: port, and optionally a file to wait for before accepting anything.
const SERVER: &str = r#"
import http.server, os, sys, time
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = self.path.encode()
        self.send_response(200)
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
srv = http.server.ThreadingHTTPServer(('0.0.0.0', int(sys.argv[1])), H)
assert srv.request_queue_size == 5
print('ready', flush=True)
while len(sys.argv) > 2 and not os.path.exists(sys.argv[2]):
    time.sleep(0.01)
srv.serve_forever()
"#;

/// `n` threads released by one barrier, one GET each; prints `ok <good> of <n>`, the
/// errors by kind, and how many took more than a second (a dropped SYN costs one).
const CLIENT: &str = r#"
import sys, threading, time, urllib.request
base, n = sys.argv[1], int(sys.argv[2])
barrier = threading.Barrier(n)
lock = threading.Lock()
good, slow, errors = 0, 0, {}
def one(i):
    global good, slow
    barrier.wait()
    t = time.monotonic()
    try:
        with urllib.request.urlopen(f'{base}/{i}', timeout=60) as r:
            body = r.read()
            ok = r.status == 200 and body == f'/{i}'.encode()
        with lock:
            good += ok
            slow += time.monotonic() - t > 1.0
    except Exception as e:
        with lock:
            errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(f'ok {good} of {n} errors {sorted(errors.items())} over-1s {slow}')
"#;

fn burst(mut client: Command, base: &str, dir: &std::path::Path, name: &str) -> String {
    client.args(["-c", CLIENT, base, &CLIENTS.to_string()]);
    run_ok(client, dir, name, LIMIT)
}

fn counters(o: &Overlay) -> serde_json::Value {
    o.status(2)["accept_backlog"].clone()
}

fn count(v: &serde_json::Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or(u64::MAX)
}

/// Counters that must not move: every session was claimed, none given up, no SYN dropped.
fn assert_clean(before: &serde_json::Value, after: &serde_json::Value) {
    for k in [
        "overflowed",
        "expired",
        "inject_failed",
        "abandoned",
        "listener_gone",
        "syn_retransmits",
    ] {
        assert_eq!(count(after, k), count(before, k), "{k}: {after}");
    }
    assert_eq!(
        count(after, "claimed") - count(before, "claimed"),
        CLIENTS as u64,
        "{after}"
    );
}

#[test]
fn a_hundred_simultaneous_connections_to_a_backlog_of_five_all_succeed() {
    let o = Overlay::ready_chain(2, "");
    let all_ok = format!("ok {CLIENTS} of {CLIENTS} errors []");

    // The kernel, for reference: the same server and clients on loopback, no shim.
    let port = free_port();
    let mut cmd = Command::new(PYTHON);
    cmd.args(["-c", SERVER, &port.to_string()]);
    let kernel_server = Bg::spawn(cmd, &o.dir, "kernel-server");
    wait_for(
        Duration::from_secs(15),
        || kernel_server.stdout().contains("ready"),
        || format!("kernel server: {}", kernel_server.stderr()),
    );
    let kernel = burst(
        Command::new(PYTHON),
        &format!("http://127.0.0.1:{port}"),
        &o.dir,
        "kernel-clients",
    );
    println!("kernel: {kernel}");
    drop(kernel_server);

    // weft: server under the shim on node 2, clients under the shim on node 1.
    let port = free_port();
    let mut cmd = o.shim(2, PYTHON);
    cmd.args(["-c", SERVER, &port.to_string()]);
    let mut server = Bg::spawn(cmd, &o.dir, "weft-server");
    o.wait_listener(2, port);
    let before = counters(&o);
    let weft = burst(
        o.shim(1, PYTHON),
        &format!("http://{}:{port}", o.ip(2)),
        &o.dir,
        "weft-clients",
    );
    let after = counters(&o);
    println!("weft:   {weft}\nnode 2 accept_backlog: {after}");
    assert!(
        weft.starts_with(&all_ok),
        "{weft}\nserver: {}",
        server.stderr()
    );
    assert_clean(&before, &after);
    assert!(server.running(), "server died: {}", server.stderr());
    drop(server);

    // The worst case: nothing is accepted until every session has arrived.
    let port = free_port();
    let go = o.dir.join("go");
    let mut cmd = o.shim(2, PYTHON);
    cmd.args(["-c", SERVER, &port.to_string(), go.to_str().unwrap()]);
    let mut server = Bg::spawn(cmd, &o.dir, "paused-server");
    o.wait_listener(2, port);
    let before = counters(&o);
    let mut cmd = o.shim(1, PYTHON);
    cmd.args([
        "-c",
        CLIENT,
        &format!("http://{}:{port}", o.ip(2)),
        &CLIENTS.to_string(),
    ]);
    let mut clients = Bg::spawn(cmd, &o.dir, "paused-clients");
    // backlog 5: the kernel queue takes 6, the daemon holds the other 94.
    let held = (CLIENTS - 6) as u64;
    wait_for(
        Duration::from_secs(60),
        || count(&counters(&o), "held") - count(&before, "held") >= held,
        || format!("sessions held: {}", counters(&o)),
    );
    assert_eq!(
        count(&counters(&o), "held") - count(&before, "held"),
        held,
        "{}",
        counters(&o)
    );
    std::fs::write(&go, b"").expect("go file");
    let paused = clients.success(LIMIT);
    let after = counters(&o);
    println!("weft, accepting only once all had arrived: {paused}\nnode 2 accept_backlog: {after}");
    assert!(
        paused.starts_with(&all_ok),
        "{paused}\nserver: {}",
        server.stderr()
    );
    assert_clean(&before, &after);
    assert!(server.running(), "server died: {}", server.stderr());
}
