//! Helpers shared by the integration tests: real `weftd` processes on private 127.T.0.N
//! addresses (T claimed with a lock file, so tests in parallel processes never collide), the
//! `weft` CLI, and real programs.

pub mod netns;
pub mod netns_scenario;
pub mod shim;
pub mod spoof;

use serde_json::Value;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Directory holding the built binaries (`weftd`, `weft`, `libweft.so`): the test executable
/// lives in `<target>/<profile>/deps/`.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>")
        .to_path_buf();
    for b in ["weftd", "weft"] {
        assert!(
            dir.join(b).exists(),
            "{} is missing: build the workspace first (scripts/test.sh does: cargo build --workspace)",
            dir.join(b).display()
        );
    }
    dir
}

pub fn weftd_bin() -> PathBuf {
    bin_dir().join("weftd")
}

pub fn weft_bin() -> PathBuf {
    bin_dir().join("weft")
}

/// CLOCK_MONOTONIC in nanoseconds (what `weft send/recv` stamp with).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Fails loudly if a tool the tests need is missing (never skip silently).
pub fn require_tool(name: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "required tool `{name}` is not installed (scripts/test.sh installs it)"
    );
}

/// A claimed 127.T.0.0/16 slice: released when dropped.
pub struct Subnet {
    pub t: u8,
    _lock: File,
}

impl Subnet {
    pub fn claim() -> Subnet {
        let dir = Path::new("/tmp/weft-tests");
        std::fs::create_dir_all(dir).expect("create /tmp/weft-tests");
        for t in 100u8..=250 {
            let f = File::create(dir.join(format!("subnet-{t}.lock"))).expect("lock file");
            // SAFETY: flock on a descriptor we own.
            if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return Subnet { t, _lock: f };
            }
        }
        panic!("no free 127.T.0.0/16 test subnet");
    }
}

pub struct Daemon {
    pub n: usize,
    pub child: Option<Child>,
    pub args: Vec<String>,
}

/// A running overlay of `weftd` processes; everything is killed and removed on drop.
pub struct Overlay {
    pub subnet: Subnet,
    pub dir: PathBuf,
    pub nodes: usize,
    pub daemons: Vec<Daemon>,
}

pub struct OverlayBuilder {
    nodes: usize,
    links: Vec<(usize, usize, String)>,
    extra: Vec<String>,
    emulation: bool,
    secure: bool,
    external: Vec<usize>,
    metrics: bool,
}

impl OverlayBuilder {
    pub fn link(mut self, a: usize, b: usize, spec: &str) -> Self {
        self.nodes = self.nodes.max(a).max(b);
        self.links.push((a, b, spec.to_string()));
        self
    }

    /// Daemons without `--emulation` (link emulation commands are then refused).
    pub fn without_emulation(mut self) -> Self {
        self.emulation = false;
        self
    }

    /// Daemons with `--insecure` instead of keys (links unauthenticated, state unsigned).
    pub fn insecure(mut self) -> Self {
        self.secure = false;
        self
    }

    /// Node `n` is in the topology and the admitted list, but no daemon runs for it: the
    /// test plays it (with `key_file(n)`), e.g. as an authenticated neighbour that lies.
    pub fn external(mut self, n: usize) -> Self {
        self.nodes = self.nodes.max(n);
        self.external.push(n);
        self
    }

    /// Every daemon serves /metrics at `Overlay::metrics_addr(n)`.
    pub fn with_metrics(mut self) -> Self {
        self.metrics = true;
        self
    }

    /// Extra `weftd` flags for every daemon.
    pub fn flag(mut self, f: &str) -> Self {
        self.extra.push(f.to_string());
        self
    }

    pub fn chain(mut self, n: usize, spec: &str) -> Self {
        for i in 1..n {
            self = self.link(i, i + 1, spec);
        }
        self
    }

    pub fn start(self) -> Overlay {
        let subnet = Subnet::claim();
        let dir = PathBuf::from(format!("/tmp/weft-tests/{}", subnet.t));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("test dir");
        let mut o = Overlay {
            subnet,
            dir,
            nodes: self.nodes,
            daemons: Vec::new(),
        };
        // Every daemon gets a key; one admitted list names them all (the neighbours' keys
        // come from it by node id), as `weft overlay up` does.
        let mut admitted = weft_secure::Admitted::new();
        if self.secure {
            for n in 1..=self.nodes {
                o.new_key(n, &mut admitted);
            }
            std::fs::write(o.admitted_file(), weft_secure::admitted::render(&admitted))
                .expect("write admitted keys");
        }
        for n in 1..=self.nodes {
            let mut args = vec![
                "--listen".to_string(),
                format!("{}:7470", o.ip(n)),
                "--socket".into(),
                o.socket(n).display().to_string(),
                "--proxy-ip".into(),
                format!("127.{}.1.{n}", o.subnet.t),
            ];
            if self.emulation {
                args.push("--emulation".into());
            }
            if self.secure {
                args.push("--key".into());
                args.push(o.key_file(n).display().to_string());
                args.push("--admitted-keys".into());
                args.push(o.admitted_file().display().to_string());
            } else {
                args.push("--insecure".into());
            }
            if self.metrics {
                args.push("--metrics".into());
                args.push(format!("{}:9470", o.ip(n)));
            }
            for (a, b, spec) in &self.links {
                let peer = if *a == n {
                    *b
                } else if *b == n {
                    *a
                } else {
                    continue;
                };
                let spec = spec.replace(' ', ",");
                args.push("--neighbor".into());
                args.push(if spec.is_empty() {
                    format!("{}:7470", o.ip(peer))
                } else {
                    format!("{}:7470/{spec}", o.ip(peer))
                });
            }
            args.extend(self.extra.iter().cloned());
            o.daemons.push(Daemon {
                n,
                child: None,
                args,
            });
        }
        for n in 1..=o.nodes {
            if !self.external.contains(&n) {
                o.start_daemon(n);
            }
        }
        o
    }
}

impl Overlay {
    pub fn builder() -> OverlayBuilder {
        OverlayBuilder {
            nodes: 0,
            links: Vec::new(),
            extra: Vec::new(),
            emulation: true,
            secure: true,
            external: Vec::new(),
            metrics: false,
        }
    }

    /// Node `n`'s secret key file (secure overlays).
    pub fn key_file(&self, n: usize) -> PathBuf {
        self.dir.join(format!("node{n}.key"))
    }

    /// The admitted list every daemon of a secure overlay reads.
    pub fn admitted_file(&self) -> PathBuf {
        self.dir.join("admitted")
    }

    /// Node `n`'s public key (secure overlays).
    pub fn public_key(&self, n: usize) -> weft_secure::PublicKey {
        weft_secure::read_key_file(&self.key_file(n))
            .expect("key file")
            .public()
    }

    pub fn ip(&self, n: usize) -> String {
        format!("127.{}.0.{n}", self.subnet.t)
    }

    pub fn socket(&self, n: usize) -> PathBuf {
        self.dir.join(format!("node{n}.sock"))
    }

    pub fn log(&self, n: usize) -> PathBuf {
        self.dir.join(format!("node{n}.log"))
    }

    pub fn start_daemon(&mut self, n: usize) {
        let log = File::create(self.log(n)).expect("log file");
        let err = log.try_clone().expect("log file");
        let d = &mut self.daemons[n - 1];
        let child = Command::new(weftd_bin())
            .args(&d.args)
            .env(
                "WEFT_LOG",
                std::env::var("WEFT_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .expect("spawn weftd");
        d.child = Some(child);
        let sock = self.socket(n);
        wait_for(
            Duration::from_secs(10),
            || sock.exists(),
            || format!("weftd {n} did not create its socket"),
        );
    }

    /// SIGKILL one daemon (a crash).
    pub fn kill(&mut self, n: usize) {
        if let Some(mut c) = self.daemons[n - 1].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(self.socket(n));
    }

    /// `weft listen --port PORT` against node `n`, its stdout piped (what it receives).
    pub fn spawn_listen(&self, n: usize, port: u16, stdin: Stdio) -> Child {
        Command::new(weft_bin())
            .arg("--socket")
            .arg(self.socket(n))
            .args(["listen", "--port", &port.to_string()])
            .stdin(stdin)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn weft listen")
    }

    /// Waits until node `n` lists `port` among its listeners.
    pub fn wait_listening(&self, n: usize, port: u16) {
        wait_for(
            Duration::from_secs(10),
            || {
                self.status(n)["listeners"]
                    .as_array()
                    .is_some_and(|l| l.iter().any(|v| v == port))
            },
            || format!("`weft listen --port {port}` did not register on node {n}"),
        );
    }

    /// Runs `weft ARGS` against node `n`.
    pub fn weft(&self, n: usize, args: &[&str]) -> Output {
        Command::new(weft_bin())
            .arg("--socket")
            .arg(self.socket(n))
            .args(args)
            .output()
            .expect("run weft")
    }

    /// `weft ARGS` that must succeed.
    pub fn weft_ok(&self, n: usize, args: &[&str]) -> String {
        let out = self.weft(n, args);
        assert!(
            out.status.success(),
            "weft {args:?} on node {n} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn status(&self, n: usize) -> Value {
        serde_json::from_str(&self.weft_ok(n, &["status", "--json"])).expect("status JSON")
    }

    /// The path (list of node IPs) node `n` uses toward node `dst`.
    pub fn path(&self, n: usize, dst: usize) -> Vec<String> {
        let want = self.ip(dst);
        self.status(n)["routes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["dst"] == want.as_str())
            .map(|r| {
                r["path"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Waits until every node routes to every other node.
    pub fn wait_converged(&self, timeout: Duration) {
        wait_for(
            timeout,
            || {
                (1..=self.nodes).all(|n| {
                    self.status(n)["routes"].as_array().map_or(0, |r| r.len()) + 1 >= self.nodes
                })
            },
            || format!("overlay did not converge; logs in {}", self.dir.display()),
        );
    }

    /// Spawns `weft ARGS` on node `n` in the background.
    pub fn spawn_weft(&self, n: usize, args: &[&str]) -> Child {
        Command::new(weft_bin())
            .arg("--socket")
            .arg(self.socket(n))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn weft")
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        for n in 1..=self.daemons.len() {
            self.kill(n);
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("daemon logs kept in {}", self.dir.display());
        }
    }
}

/// Polls `cond` every 20 ms until it holds; panics with `what()` after `timeout`. (A bound on
/// how long to wait for something, not an assertion about how fast it happens.)
pub fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool, what: impl Fn() -> String) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "{}", what());
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ----- operator tooling (issue 19): signals, extra daemons, config files, metrics ---------

impl Overlay {
    /// Daemon `n`'s process id.
    pub fn daemon_pid(&self, n: usize) -> u32 {
        self.daemons[n - 1]
            .child
            .as_ref()
            .map(|c| c.id())
            .expect("daemon running")
    }

    /// Sends `signal` to daemon `n` (SIGHUP reloads, SIGTERM stops cleanly).
    pub fn signal(&self, n: usize, signal: i32) {
        let pid = self.daemons[n - 1]
            .child
            .as_ref()
            .map(|c| c.id() as i32)
            .expect("daemon running");
        // SAFETY: signalling a child process we started.
        unsafe { libc::kill(pid, signal) };
    }

    /// Waits for daemon `n` to exit and returns its status (None on timeout).
    pub fn wait_exit(&mut self, n: usize, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.daemons[n - 1].child.as_mut()?;
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                self.daemons[n - 1].child = None;
                return Some(st);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A new secret key for node `n`, written to `key_file(n)` and listed in `admitted`.
    fn new_key(&self, n: usize, admitted: &mut weft_secure::Admitted) {
        let key = weft_secure::SecretKey::generate();
        weft_secure::write_key_file(&self.key_file(n), &key, true).expect("write key file");
        admitted.insert(
            weft_core::NodeId::from(self.ip(n).parse::<std::net::Ipv4Addr>().expect("ip")),
            key.public(),
        );
    }

    /// Whether the daemons run with keys and one admitted list (the default).
    pub fn is_secure(&self) -> bool {
        self.admitted_file().exists()
    }

    /// Starts one more daemon, number `nodes + 1`, with exactly `args` after its address,
    /// socket, proxy and key flags (no neighbours unless `args` names some). In a secure
    /// overlay it gets a new key, which is added to the admitted list every daemon reads (the
    /// running ones apply it when reloaded: `signal(n, SIGHUP)`).
    pub fn add_daemon(&mut self, args: &[&str]) -> usize {
        let n = self.daemons.len() + 1;
        let mut all = vec![
            "--listen".to_string(),
            format!("{}:7470", self.ip(n)),
            "--socket".into(),
            self.socket(n).display().to_string(),
            "--proxy-ip".into(),
            format!("127.{}.1.{n}", self.subnet.t),
        ];
        if self.is_secure() {
            let text = std::fs::read_to_string(self.admitted_file()).expect("read admitted keys");
            let mut admitted = weft_secure::admitted::parse(&text).expect("admitted keys");
            self.new_key(n, &mut admitted);
            std::fs::write(
                self.admitted_file(),
                weft_secure::admitted::render(&admitted),
            )
            .expect("write admitted keys");
            all.extend([
                "--key".into(),
                self.key_file(n).display().to_string(),
                "--admitted-keys".into(),
                self.admitted_file().display().to_string(),
            ]);
        } else {
            all.push("--insecure".into());
        }
        all.extend(args.iter().map(|s| s.to_string()));
        self.daemons.push(Daemon {
            n,
            child: None,
            args: all,
        });
        self.nodes = self.nodes.max(n);
        self.start_daemon(n);
        n
    }

    /// The address daemon `n` serves metrics on when started with `metrics_flag(n)`.
    pub fn metrics_addr(&self, n: usize) -> String {
        format!("{}:9470", self.ip(n))
    }

    /// A configuration file for daemon `n` (what `--config` reads), written to the test
    /// directory: its listen address, socket, proxy, emulation and these neighbours.
    pub fn write_config(&self, n: usize, neighbors: &[usize], extra: &str) -> PathBuf {
        let mut toml = format!(
            "listen = \"{}:7470\"\nsocket = \"{}\"\nproxy_ip = \"127.{}.1.{n}\"\nemulation = true\n{extra}\n",
            self.ip(n),
            self.socket(n).display(),
            self.subnet.t
        );
        if self.is_secure() {
            toml += &format!(
                "key_file = \"{}\"\nadmitted_keys = \"{}\"\n",
                self.key_file(n).display(),
                self.admitted_file().display()
            );
        } else {
            toml += "insecure = true\n";
        }
        for m in neighbors {
            toml += &format!("[[neighbor]]\naddr = \"{}:7470\"\n", self.ip(*m));
        }
        let path = self.dir.join(format!("node{n}.toml"));
        std::fs::write(&path, toml).expect("write config");
        path
    }
}

/// One HTTP/1.1 GET on a fresh connection: (status code, headers, body).
pub fn http_get(addr: &str, path: &str) -> (u16, String, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect to metrics");
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read response");
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, head.to_string(), body.to_string())
}

/// Makes `cmd` run as `uid`/`gid` with exactly the supplementary `groups` (the tests run as
/// root): a second local user for the red-team tests.
pub fn as_user(cmd: &mut Command, uid: u32, gid: u32, groups: &[u32]) {
    use std::os::unix::process::CommandExt;
    let groups: Vec<libc::gid_t> = groups.to_vec();
    // SAFETY: only async-signal-safe calls between fork and exec, on memory allocated before.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                || libc::setgid(gid) != 0
                || libc::setuid(uid) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
