//! Running real, unmodified programs under the shim (`LD_PRELOAD=libweft.so`, `WEFT_SOCKET`)
//! against the daemons of an [`Overlay`], and the small C test programs in `tests/c/`.

use crate::{bin_dir, wait_for, Overlay};
use std::fs::File;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The shim library built next to the daemon.
pub fn shim_lib() -> PathBuf {
    let p = bin_dir().join("libweft.so");
    assert!(
        p.exists(),
        "{} is missing: build the workspace first",
        p.display()
    );
    p
}

/// The system Python (dynamically linked, so the shim applies; pyenv shims are shell scripts).
pub const PYTHON: &str = "/usr/bin/python3";

/// A port free for both TCP and UDP on the wildcard address right now.
pub fn free_port() -> u16 {
    loop {
        let t = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)).expect("bind");
        let port = t.local_addr().expect("local addr").port();
        if UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)).is_ok() {
            return port;
        }
    }
}

impl Overlay {
    /// `prog` under the shim, talking to node `n`'s daemon.
    pub fn shim(&self, n: usize, prog: &str) -> Command {
        let mut c = Command::new(prog);
        c.env("LD_PRELOAD", shim_lib())
            .env("WEFT_SOCKET", self.socket(n))
            .stdin(Stdio::null());
        if let Ok(level) = std::env::var("WEFT_TEST_SHIM_LOG") {
            c.env("WEFT_LOG", level);
        } else {
            c.env_remove("WEFT_LOG");
        }
        c
    }

    /// Waits until node `n`'s daemon has an overlay listener on `port` (a shimmed server
    /// registered it).
    pub fn wait_listener(&self, n: usize, port: u16) {
        wait_for(
            Duration::from_secs(15),
            || {
                self.status(n)["listeners"]
                    .as_array()
                    .is_some_and(|l| l.iter().any(|p| p.as_u64() == Some(port as u64)))
            },
            || format!("no overlay listener on node {n} port {port}"),
        );
    }

    /// Overlay sessions node `n` holds.
    pub fn sessions(&self, n: usize) -> Vec<serde_json::Value> {
        self.status(n)["sessions"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

/// Ring mode (the default) is off in this process's shimmed programs: `WEFT_RINGS=0` in the
/// environment, which every program started from here inherits.
pub fn rings_off() -> bool {
    std::env::var("WEFT_RINGS").is_ok_and(|v| v == "0")
}

/// Runs every other test of this test binary again with `WEFT_RINGS=0`, so each shim test
/// runs with rings on (the default) and off in one `cargo test`. `this_test` is the name of
/// the calling test (skipped in the re-run). Does nothing when this run is already rings-off.
pub fn rerun_with_rings_off(this_test: &str) {
    if rings_off() {
        eprintln!("WEFT_RINGS=0 already: this run is the rings-off one");
        return;
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let out = Command::new(&exe)
        .args(["--skip", this_test])
        .env("WEFT_RINGS", "0")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot re-run {}: {e}", exe.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "with WEFT_RINGS=0 the tests of {} failed ({})\nstdout:\n{stdout}\nstderr:\n{stderr}",
        exe.display(),
        out.status
    );
    assert!(
        stdout.contains("test result: ok"),
        "the rings-off re-run ran no tests:\n{stdout}"
    );
}

static NEXT_LOG: AtomicUsize = AtomicUsize::new(0);

/// A program running in the background, its stdout and stderr in files under `dir` (kept with
/// the daemon logs when a test fails). Killed if still running when dropped.
pub struct Bg {
    pub name: String,
    child: Child,
    out: PathBuf,
    err: PathBuf,
}

impl Bg {
    pub fn spawn(mut cmd: Command, dir: &Path, name: &str) -> Bg {
        let k = NEXT_LOG.fetch_add(1, Ordering::Relaxed);
        let out = dir.join(format!("{name}-{k}.out"));
        let err = dir.join(format!("{name}-{k}.err"));
        cmd.stdout(File::create(&out).expect("stdout file"))
            .stderr(File::create(&err).expect("stderr file"));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Bg {
            name: name.to_string(),
            child,
            out,
            err,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends a signal to the program (SIGINT: Ctrl-C).
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill on the pid of a child we started and have not reaped.
        unsafe { libc::kill(self.pid(), sig) };
    }

    /// Waits up to `limit` for the program to exit; panics (with its output) if it does not.
    pub fn wait(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                return st;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "{} did not finish within {limit:?}\nstdout:\n{}\nstderr:\n{}",
                    self.name,
                    self.stdout(),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits and requires exit status 0.
    pub fn success(&mut self, limit: Duration) -> String {
        let st = self.wait(limit);
        assert!(
            st.success(),
            "{} failed ({st})\nstdout:\n{}\nstderr:\n{}",
            self.name,
            self.stdout(),
            self.stderr()
        );
        self.stdout()
    }

    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn stdout(&self) -> String {
        read(&self.out)
    }

    /// Everything the program wrote to stdout so far, as bytes (datagram payloads).
    pub fn stdout_bytes(&self) -> Vec<u8> {
        std::fs::read(&self.out).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        read(&self.err)
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn read(p: &Path) -> String {
    let mut s = String::new();
    if let Ok(mut f) = File::open(p) {
        let _ = f.read_to_string(&mut s);
    }
    s
}

/// Runs a command to completion within `limit`; returns (status, stdout, stderr).
pub fn run(cmd: Command, dir: &Path, name: &str, limit: Duration) -> (ExitStatus, String, String) {
    let mut bg = Bg::spawn(cmd, dir, name);
    let st = bg.wait(limit);
    (st, bg.stdout(), bg.stderr())
}

/// Runs a command that must succeed within `limit`; returns its stdout.
pub fn run_ok(cmd: Command, dir: &Path, name: &str, limit: Duration) -> String {
    Bg::spawn(cmd, dir, name).success(limit)
}

/// Compiles `tests/c/<name>.c` (once per test binary run) and returns the executable.
pub fn c_program(name: &str) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("c")
        .join(format!("{name}.c"));
    let out_dir = bin_dir().join("weft-c-tests");
    std::fs::create_dir_all(&out_dir).expect("c test dir");
    // Unique per process: parallel test binaries never race on one output file.
    let exe = out_dir.join(format!("{name}-{}", std::process::id()));
    if !exe.exists() {
        let tmp = out_dir.join(format!("{name}-{}.tmp", std::process::id()));
        let out = Command::new("cc")
            .args(["-O1", "-D_FORTIFY_SOURCE=2", "-Wall", "-Werror", "-o"])
            .arg(&tmp)
            .arg(&src)
            .output()
            .expect("run cc");
        assert!(
            out.status.success(),
            "cc {}: {}",
            src.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::rename(&tmp, &exe).expect("rename");
    }
    exe
}

/// `sha256sum` of a file, as hex.
pub fn sha256(p: &Path) -> String {
    crate::require_tool("sha256sum");
    let out = Command::new("sha256sum")
        .arg(p)
        .output()
        .expect("sha256sum");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// A file of `len` pseudo-random bytes from a seeded generator (reproducible content).
pub fn random_file(p: &Path, len: usize, seed: u64) {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(File::create(p).expect("create"));
    let mut x = seed | 1;
    let mut buf = vec![0u8; 1 << 16];
    let mut left = len;
    while left > 0 {
        for b in buf.iter_mut() {
            // xorshift64*: fast, deterministic filler.
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            *b = (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8;
        }
        let n = left.min(buf.len());
        f.write_all(&buf[..n]).expect("write");
        left -= n;
    }
    f.flush().expect("flush");
}

/// A threaded echo server on a dual-stack `[::]` listener (like iperf3's): prints `ready`,
/// then `peer ADDR PORT LOCAL` for every connection. Argument: the port.
pub const ECHO_SERVER: &str = r#"
import socket, sys, threading
l = socket.socket(socket.AF_INET6)
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
l.bind(('::', int(sys.argv[1])))
l.listen(64)
print('ready', flush=True)
def serve(c):
    while True:
        d = c.recv(65536)
        if not d:
            break
        c.sendall(d)
    c.close()
while True:
    c, a = l.accept()
    print('peer', a[0], a[1], c.getsockname()[0], flush=True)
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

impl Overlay {
    /// Starts [`ECHO_SERVER`] under the shim on node `n` and waits until overlay clients can
    /// reach it.
    pub fn echo_server(&self, n: usize, port: u16) -> Bg {
        let mut cmd = self.shim(n, PYTHON);
        cmd.args(["-c", ECHO_SERVER, &port.to_string()]);
        let mut bg = Bg::spawn(cmd, &self.dir, "echo-server");
        let err = bg.err.clone();
        wait_for(
            Duration::from_secs(15),
            || bg.stdout().contains("ready") || !bg.running(),
            move || format!("echo server did not start: {}", read(&err)),
        );
        assert!(bg.running(), "echo server exited: {}", bg.stderr());
        self.wait_listener(n, port);
        bg
    }

    /// A converged chain 1 ─ 2 ─ … ─ n of daemons.
    pub fn ready_chain(n: usize, spec: &str) -> Overlay {
        let o = Overlay::builder().chain(n, spec).start();
        o.wait_converged(Duration::from_secs(20));
        o
    }
}

/// `iperf3 -s` closes its listener after every test and opens a new one for the next; a
/// client that comes in between is refused (or lands in the old listener's backlog and is
/// reset). Start the server with `--forceflush` and wait for its `(test #n)` line before the
/// n-th client.
pub fn iperf3_ready(server: &Bg, test: usize) {
    let line = format!("(test #{test})");
    wait_for(
        Duration::from_secs(30),
        || server.stdout().contains(&line),
        || format!("iperf3 server never got to {line}: {}", server.stdout()),
    );
}

// ----- multicast ----------------------------------------------------------------------------

impl Overlay {
    /// The nodes (by number) that node `n` knows as members of `group`.
    pub fn group_members(&self, n: usize, group: &str) -> Vec<usize> {
        let st = self.status(n);
        let mut members: Vec<usize> = st["multicast"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|g| g["group"] == group)
            .flat_map(|g| g["members"].as_array().cloned().unwrap_or_default())
            .filter_map(|m| m["node"].as_str().and_then(|a| self.node_number(a)))
            .collect();
        members.sort_unstable();
        members.dedup();
        members
    }

    /// Waits until node `n` knows exactly `want` as the members of `group`.
    pub fn wait_group_members(&self, n: usize, group: &str, want: &[usize]) {
        let mut want = want.to_vec();
        want.sort_unstable();
        wait_for(
            Duration::from_secs(20),
            || self.group_members(n, group) == want,
            || {
                format!(
                    "node {n} sees members {:?} of {group}, not {want:?}",
                    self.group_members(n, group)
                )
            },
        );
    }

    /// The node number of an overlay address of this overlay.
    pub fn node_number(&self, addr: &str) -> Option<usize> {
        (1..=self.nodes).find(|&k| self.ip(k) == addr)
    }

    /// Multicast copies node `from` has sent to each neighbour, by neighbour number.
    pub fn mcast_out(&self, from: usize) -> Vec<(usize, u64)> {
        self.status(from)["neighbors"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|nb| {
                let to = nb["node"].as_str().and_then(|a| self.node_number(a))?;
                Some((to, nb["mcast_out"].as_u64().unwrap_or(0)))
            })
            .collect()
    }

    /// Multicast copies sent over every directed link `(from, to)`.
    pub fn mcast_links(&self) -> std::collections::BTreeMap<(usize, usize), u64> {
        (1..=self.nodes)
            .flat_map(|from| {
                self.mcast_out(from)
                    .into_iter()
                    .map(move |(to, n)| ((from, to), n))
            })
            .collect()
    }

    /// Hops on node `from`'s route to node `to`.
    pub fn hops(&self, from: usize, to: usize) -> usize {
        self.path(from, to).len().saturating_sub(1)
    }
}

/// The datagram ids in a stream of iperf2 UDP payloads of `len` bytes each (the first four
/// bytes of each, big-endian; iperf2 marks its last datagram with the negated id).
pub fn iperf2_ids(stream: &[u8], len: usize) -> Vec<i32> {
    stream
        .chunks(len)
        .filter(|c| c.len() >= 4)
        .map(|c| i32::from_be_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// The datagrams an iperf2 UDP client sent, from its `Sent N datagrams` line: it numbers
/// them 1..N-1 (its count starts at 0) and marks the last one by negating its id.
pub fn iperf2_sent(client_output: &str) -> Option<u64> {
    client_output.lines().find_map(|l| {
        let rest = l.split("Sent ").nth(1)?;
        let n: u64 = rest.split_whitespace().next()?.parse().ok()?;
        Some(n.saturating_sub(1))
    })
}

/// Waits until `value` has not changed for `quiet` (at most `limit`); returns it.
pub fn settled<T: PartialEq>(quiet: Duration, limit: Duration, mut value: impl FnMut() -> T) -> T {
    let deadline = Instant::now() + limit;
    let mut last = value();
    let mut since = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let v = value();
        if v != last {
            last = v;
            since = Instant::now();
        } else if since.elapsed() >= quiet || Instant::now() >= deadline {
            return last;
        }
    }
}

/// (datagrams received, datagrams it counted) from an iperf2 UDP server's `lost/total` report.
pub fn iperf2_server_received(report: &str) -> Option<(u64, u64)> {
    report.lines().rev().find_map(|l| {
        let field = l.split_whitespace().find(|f| {
            f.split_once('/')
                .is_some_and(|(a, b)| a.parse::<u64>().is_ok() && b.parse::<u64>().is_ok())
        })?;
        let (lost, total) = field.split_once('/')?;
        let (lost, total): (u64, u64) = (lost.parse().ok()?, total.parse().ok()?);
        Some((total.saturating_sub(lost), total))
    })
}

/// Datagrams the kernel dropped because the UDP sockets of process `pid` had full receive
/// buffers (the `drops` column of `/proc/net/udp`): delivered by the overlay, not read in
/// time by the program.
pub fn socket_buffer_drops(pid: i32) -> u64 {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    let table = std::fs::read_to_string("/proc/net/udp").unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (inode, drops) = (f.get(9)?, f.last()?);
            inodes
                .contains(&inode.to_string())
                .then(|| drops.parse::<u64>().ok())?
        })
        .sum()
}

/// The kernel's count of UDP datagrams dropped for a full receive buffer (all programs on
/// the machine: a diagnostic, printed, never asserted).
pub fn udp_receive_buffer_errors() -> u64 {
    let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "RcvbufErrors")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// How many of iperf2's datagrams 1..=`datagrams` a receiver got, and whether they came in
/// order (ids never going back).
pub fn iperf2_tally(ids: &[i32], datagrams: u64) -> (u64, bool) {
    let ids: Vec<u64> = ids.iter().map(|i| u64::from(i.unsigned_abs())).collect();
    let in_order = ids.windows(2).all(|w| w[0] <= w[1]);
    let mut distinct: Vec<u64> = ids
        .into_iter()
        .filter(|&i| (1..=datagrams).contains(&i))
        .collect();
    distinct.sort_unstable();
    distinct.dedup();
    (distinct.len() as u64, in_order)
}
