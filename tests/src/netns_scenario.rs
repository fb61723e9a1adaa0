//! Runs multicast scenarios (`tests/c/mcast_scenario.c` scripts) on a set of hosts and
//! collects what every socket observed, spelled so that two runs on different networks (the
//! kernel's multicast on a bridge, and weft across a unicast-only router) compare line by
//! line.
//!
//! Every scenario has roles (one runner process each, on a host); all scripts share the same
//! barrier sequence `0..=phases`. The driver moves every scenario through the phases at once:
//! receivers set up (barrier 0); the network settles (memberships spread); senders send their
//! phase's datagrams and stop at the next barrier; once nothing more arrives the receivers do
//! their next phase's steps (leave, close, fork, block a source...) and stop at the next
//! barrier; and so on. Then every process prints its records.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// One role of a scenario: a runner process on `host` with its script. Placeholders in the
/// script: `{h1}` .. `{h9}` for the hosts' addresses.
#[derive(Debug, Clone)]
pub struct Role {
    pub host: usize,
    pub receiver: bool,
    pub script: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    pub roles: Vec<Role>,
}

/// Where scenarios run.
pub trait Topology {
    fn addr(&self, host: usize) -> String;
    /// `prog` inside `host` (under the shim, for weft).
    fn command(&self, host: usize, prog: &Path) -> Command;
    /// Waits until membership changes have taken effect everywhere.
    fn settle(&self);
    fn hosts(&self) -> usize;
}

/// How long any one step of the protocol may take before the run is declared stuck.
const STEP_LIMIT: Duration = Duration::from_secs(60);

struct Runner {
    scenario: usize,
    receiver: bool,
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    records: Vec<String>,
    name: String,
}

impl Runner {
    fn next_line(&mut self, deadline: Instant) -> String {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.lines.recv_timeout(left) {
            Ok(l) => l,
            Err(RecvTimeoutError::Timeout) => {
                panic!("{}: no answer within {STEP_LIMIT:?}", self.name)
            }
            Err(RecvTimeoutError::Disconnected) => {
                let st = self.child.try_wait();
                panic!("{}: runner exited ({st:?})", self.name)
            }
        }
    }

    /// Reads until a line starting with `word`; records meanwhile.
    fn until(&mut self, word: &str) -> String {
        let deadline = Instant::now() + STEP_LIMIT;
        loop {
            let l = self.next_line(deadline);
            if l.starts_with('{') {
                self.records.push(l);
            } else if l.starts_with(word) {
                return l;
            }
        }
    }

    fn send(&mut self, cmd: &str) {
        let _ = writeln!(self.stdin, "{cmd}");
        let _ = self.stdin.flush();
    }

    fn count(&mut self) -> u64 {
        self.send("count");
        self.until("count")
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The script with the hosts' addresses in place of `{hN}`.
fn expand(line: &str, top: &dyn Topology) -> String {
    let mut s = line.to_string();
    for n in 1..=top.hosts() {
        s = s.replace(&format!("{{h{n}}}"), &top.addr(n));
    }
    s
}

/// A record with the hosts' addresses spelled `{hN}` again.
fn spell(line: &str, top: &dyn Topology) -> String {
    let mut s = line.to_string();
    // Longest first: 10.T.1.2 must not be half-replaced by 10.T.1.20.
    let mut addrs: Vec<(usize, String)> = (1..=top.hosts()).map(|n| (n, top.addr(n))).collect();
    addrs.sort_by_key(|(_, a)| std::cmp::Reverse(a.len()));
    for (n, a) in addrs {
        s = s.replace(&a, &format!("{{h{n}}}"));
    }
    s
}

/// Runs every scenario through `phases` phases on `top`; returns each scenario's records,
/// spelled by name and sorted.
pub fn run(
    top: &dyn Topology,
    prog: &Path,
    scenarios: &[Scenario],
    phases: usize,
    dir: &Path,
) -> Vec<Vec<String>> {
    let mut runners: Vec<Runner> = Vec::new();
    for (i, sc) in scenarios.iter().enumerate() {
        for (r, role) in sc.roles.iter().enumerate() {
            let path = dir.join(format!("scenario-{i}-{r}.txt"));
            let text: String = role.script.iter().map(|l| expand(l, top) + "\n").collect();
            std::fs::write(&path, text).expect("write script");
            let mut cmd = top.command(role.host, prog);
            cmd.arg(&path)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit());
            let mut child = cmd
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start the runner: {e}"));
            let stdin = child.stdin.take().expect("stdin");
            let stdout = child.stdout.take().expect("stdout");
            let (tx, rx) = channel();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
            runners.push(Runner {
                scenario: i,
                receiver: role.receiver,
                child,
                stdin,
                lines: rx,
                records: Vec::new(),
                name: format!("{} role {r} (host {})", sc.name, role.host),
            });
        }
    }
    for r in runners.iter_mut() {
        r.until("at ");
    }
    for _ in 0..phases {
        top.settle();
        for r in runners.iter_mut().filter(|r| !r.receiver) {
            r.send("go");
        }
        for r in runners.iter_mut().filter(|r| !r.receiver) {
            r.until("at ");
        }
        quiet(&mut runners);
        for r in runners.iter_mut().filter(|r| r.receiver) {
            r.send("go");
        }
        for r in runners.iter_mut().filter(|r| r.receiver) {
            r.until("at ");
        }
    }
    for r in runners.iter_mut() {
        r.send("dump");
    }
    let mut by_scenario: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for r in runners.iter_mut() {
        r.until("end");
        let spelled: Vec<String> = r.records.iter().map(|l| spell(l, top)).collect();
        by_scenario.entry(r.scenario).or_default().extend(spelled);
    }
    (0..scenarios.len())
        .map(|i| {
            let mut v = by_scenario.remove(&i).unwrap_or_default();
            v.sort();
            v
        })
        .collect()
}

/// Waits until the receivers' counts stop moving (nothing more in flight).
fn quiet(runners: &mut [Runner]) {
    let deadline = Instant::now() + STEP_LIMIT;
    let mut last = None;
    let mut still = 0;
    while still < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        let total: u64 = runners
            .iter_mut()
            .filter(|r| r.receiver)
            .map(|r| r.count())
            .sum();
        if Some(total) == last {
            still += 1;
        } else {
            still = 0;
            last = Some(total);
        }
    }
}
