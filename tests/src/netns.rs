//! Private network namespaces for tests that need real hosts: several namespaces, either on
//! one bridge with a multicast route (the kernel's multicast: the reference), or joined by a
//! router namespace that forwards unicast only (no multicast route anywhere: what `weftd`
//! must make work). Names and addresses carry the claimed test subnet number T
//! (`Subnet::claim`), so parallel runs never collide: namespaces `wft<T>…`, addresses
//! 10.T.x.y, which exist only inside these namespaces. Everything is deleted on drop, also
//! when a test panics; a run killed outright leaves namespaces that the next run with the
//! same T deletes first.

use crate::shim::{shim_lib, Bg};
use crate::{weft_bin, weftd_bin, Subnet};

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Runs `ip ARGS`, panicking with its error output if it fails.
fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `ip` that may fail (cleanup).
fn ip_quiet(args: &[&str]) {
    let _ = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// How the hosts are joined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wiring {
    /// One bridge, `10.T.0.<host>/24`, a multicast route on every host: kernel multicast.
    Bridge,
    /// A router forwarding unicast between `10.T.<host>.0/24` links (host `.2`, router
    /// `.1`); no multicast route anywhere.
    Routed,
}

/// A set of host namespaces (`1..=hosts`) and the namespace that joins them.
pub struct Hosts {
    /// The claimed test subnet number (in names and addresses).
    pub t: u8,
    _subnet: Option<Subnet>,
    pub wiring: Wiring,
    pub hosts: usize,
    pub dir: PathBuf,
    prefix: String,
    made: Vec<String>,
}

impl Hosts {
    /// `hosts` namespaces wired as `wiring`, under a freshly claimed subnet.
    pub fn new(wiring: Wiring, hosts: usize) -> Hosts {
        let subnet = Subnet::claim();
        let mut h = Hosts::within(&subnet, wiring, hosts);
        h._subnet = Some(subnet);
        h
    }

    /// Hosts under a subnet the caller holds (a bridged and a routed set can share one: their
    /// names and addresses differ).
    pub fn within(subnet: &Subnet, wiring: Wiring, hosts: usize) -> Hosts {
        crate::require_tool("ip");
        let tag = match wiring {
            Wiring::Bridge => 'b',
            Wiring::Routed => 'r',
        };
        let prefix = format!("wft{}{tag}", subnet.t);
        let dir = PathBuf::from(format!("/tmp/weft-tests/{}-{tag}", subnet.t));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("test dir");
        let mut h = Hosts {
            t: subnet.t,
            _subnet: None,
            wiring,
            hosts,
            dir,
            prefix,
            made: Vec::new(),
        };
        h.build();
        h
    }

    /// The namespace of host `n` (1-based).
    pub fn ns(&self, n: usize) -> String {
        format!("{}{n}", self.prefix)
    }

    fn hub(&self) -> String {
        format!("{}0", self.prefix)
    }

    /// Host `n`'s address.
    pub fn addr(&self, n: usize) -> String {
        let t = self.t;
        match self.wiring {
            Wiring::Bridge => format!("10.{t}.0.{n}"),
            Wiring::Routed => format!("10.{t}.{n}.2"),
        }
    }

    fn add_ns(&mut self, name: &str) {
        ip_quiet(&["netns", "del", name]);
        ip(&["netns", "add", name]);
        self.made.push(name.to_string());
        ip(&["-n", name, "link", "set", "lo", "up"]);
    }

    fn build(&mut self) {
        let t = self.t;
        let hub = self.hub();
        self.add_ns(&hub);
        match self.wiring {
            Wiring::Bridge => {
                ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"]);
                // No IGMP snooping: every port sees every group, as on a plain switch.
                ip(&[
                    "-n",
                    &hub,
                    "link",
                    "set",
                    "br0",
                    "type",
                    "bridge",
                    "mcast_snooping",
                    "0",
                ]);
                ip(&["-n", &hub, "link", "set", "br0", "up"]);
            }
            Wiring::Routed => {
                let out = Command::new("ip")
                    .args([
                        "netns",
                        "exec",
                        &hub,
                        "sysctl",
                        "-qw",
                        "net.ipv4.ip_forward=1",
                    ])
                    .output()
                    .expect("sysctl");
                assert!(out.status.success(), "cannot enable forwarding");
            }
        }
        for n in 1..=self.hosts {
            let ns = self.ns(n);
            self.add_ns(&ns);
            let (inner, outer) = (format!("w{t}h{n}"), format!("w{t}p{n}"));
            ip(&[
                "link", "add", &inner, "netns", &ns, "type", "veth", "peer", "name", &outer,
                "netns", &hub,
            ]);
            ip(&["-n", &ns, "link", "set", &inner, "name", "eth0"]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            ip(&["-n", &hub, "link", "set", &outer, "up"]);
            match self.wiring {
                Wiring::Bridge => {
                    ip(&["-n", &hub, "link", "set", &outer, "master", "br0"]);
                    ip(&[
                        "-n",
                        &ns,
                        "addr",
                        "add",
                        &format!("10.{t}.0.{n}/24"),
                        "dev",
                        "eth0",
                    ]);
                    ip(&["-n", &ns, "route", "add", "224.0.0.0/4", "dev", "eth0"]);
                }
                Wiring::Routed => {
                    ip(&[
                        "-n",
                        &hub,
                        "addr",
                        "add",
                        &format!("10.{t}.{n}.1/24"),
                        "dev",
                        &outer,
                    ]);
                    ip(&[
                        "-n",
                        &ns,
                        "addr",
                        "add",
                        &format!("10.{t}.{n}.2/24"),
                        "dev",
                        "eth0",
                    ]);
                    ip(&[
                        "-n",
                        &ns,
                        "route",
                        "add",
                        &format!("10.{t}.0.0/16"),
                        "via",
                        &format!("10.{t}.{n}.1"),
                    ]);
                }
            }
        }
    }

    /// `prog ARGS` inside host `n`'s namespace.
    pub fn command(&self, n: usize, prog: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns(n)]).arg(prog);
        c.stdin(Stdio::null());
        c
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        // Deleting a namespace also deletes its veth ends (and the peers in the others).
        for name in self.made.iter().rev() {
            ip_quiet(&["netns", "del", name]);
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("logs kept in {}", self.dir.display());
        }
    }
}

/// One `weftd` per host of a routed [`Hosts`], every host a neighbour of every other.
pub struct Daemons {
    pub daemons: Vec<Bg>,
    sockets: Vec<PathBuf>,
}

impl Daemons {
    /// Starts the daemons (with `--emulation` and `extra` flags) and waits until every node
    /// routes to every other.
    pub fn start(hosts: &Hosts, extra: &[&str]) -> Daemons {
        assert_eq!(hosts.wiring, Wiring::Routed, "daemons run on routed hosts");
        let mut daemons = Vec::new();
        let mut sockets = Vec::new();
        // Encrypted links, as every overlay the harness starts: a key per host and one
        // admitted list naming them all by node id (the listen address).
        let admitted_file = hosts.dir.join("admitted");
        let key_file = |n: usize| hosts.dir.join(format!("node{n}.key"));
        let mut admitted = weft_secure::Admitted::new();
        for n in 1..=hosts.hosts {
            let key = weft_secure::SecretKey::generate();
            weft_secure::write_key_file(&key_file(n), &key, true).expect("write key file");
            let ip: std::net::Ipv4Addr = hosts.addr(n).parse().expect("host address");
            admitted.insert(weft_core::NodeId::from(ip), key.public());
        }
        std::fs::write(&admitted_file, weft_secure::admitted::render(&admitted))
            .expect("write admitted keys");
        for n in 1..=hosts.hosts {
            let sock = hosts.dir.join(format!("node{n}.sock"));
            let _ = std::fs::remove_file(&sock);
            let mut c = hosts.command(n, weftd_bin());
            c.args(["--listen", &format!("{}:7470", hosts.addr(n))])
                .arg("--socket")
                .arg(&sock)
                .arg("--emulation")
                .arg("--key")
                .arg(key_file(n))
                .arg("--admitted-keys")
                .arg(&admitted_file);
            for m in (1..=hosts.hosts).filter(|&m| m != n) {
                c.args(["--neighbor", &format!("{}:7470", hosts.addr(m))]);
            }
            c.args(extra);
            c.env(
                "WEFT_LOG",
                std::env::var("WEFT_TEST_LOG").unwrap_or_else(|_| "info".into()),
            );
            daemons.push(Bg::spawn(c, &hosts.dir, &format!("weftd{n}")));
            sockets.push(sock);
        }
        let d = Daemons { daemons, sockets };
        for s in &d.sockets {
            crate::wait_for(
                Duration::from_secs(10),
                || s.exists(),
                || format!("weftd did not create {}", s.display()),
            );
        }
        crate::wait_for(
            Duration::from_secs(30),
            || {
                (1..=hosts.hosts).all(|n| {
                    d.status(n)["routes"].as_array().map_or(0, |r| r.len()) + 1 >= hosts.hosts
                })
            },
            || {
                format!(
                    "the daemons did not converge; logs in {}",
                    hosts.dir.display()
                )
            },
        );
        d
    }

    pub fn socket(&self, n: usize) -> &Path {
        &self.sockets[n - 1]
    }

    /// `weft ARGS` against host `n`'s daemon.
    pub fn weft(&self, n: usize, args: &[&str]) -> std::process::Output {
        Command::new(weft_bin())
            .arg("--socket")
            .arg(self.socket(n))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run weft")
    }

    pub fn status(&self, n: usize) -> serde_json::Value {
        let out = self.weft(n, &["status", "--json"]);
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    }

    /// The overlay addresses node `n` knows as members of each group, sorted (to see
    /// membership changes settle).
    pub fn memberships(&self, n: usize) -> Vec<(String, Vec<String>)> {
        let st = self.status(n);
        let mut out: Vec<(String, Vec<String>)> = st["multicast"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|g| {
                let mut m: Vec<String> = g["members"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|m| m.to_string())
                    .collect();
                m.sort();
                (g["group"].as_str().unwrap_or("").to_string(), m)
            })
            .collect();
        out.sort();
        out
    }

    /// Waits until host `n`'s daemon has an overlay listener on `port`.
    pub fn wait_listener(&self, n: usize, port: u16) {
        crate::wait_for(
            Duration::from_secs(15),
            || {
                self.status(n)["listeners"]
                    .as_array()
                    .is_some_and(|l| l.iter().any(|p| p.as_u64() == Some(u64::from(port))))
            },
            || format!("no overlay listener on host {n} port {port}"),
        );
    }

    /// Environment for a program under the shim of host `n`'s daemon.
    pub fn shim_env(&self, n: usize, c: &mut Command) {
        c.env("LD_PRELOAD", shim_lib())
            .env("WEFT_SOCKET", self.socket(n));
        if let Ok(level) = std::env::var("WEFT_TEST_SHIM_LOG") {
            c.env("WEFT_LOG", level);
        } else {
            c.env_remove("WEFT_LOG");
        }
    }
}
