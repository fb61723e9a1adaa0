//! `weft overlay up|down|status TOPOLOGY`: N daemons on 127.0.0.1..N of this machine (no root
//! needed), wired per a topology with per-link emulation, each with its own key and its
//! neighbours' public keys, and a clean teardown.

use super::status::fetch;
use super::topology::Topology;
use clap::{Args, Subcommand};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Args, Debug)]
pub struct OverlayArgs {
    #[command(subcommand)]
    action: OverlayCmd,
}

#[derive(Args, Debug, Clone)]
struct Where {
    /// chain:N, ring:N, diamond, diamond-tail, grid:RxC, random:N[:SEED] (optionally
    /// @PARAMS, e.g. chain:4@delay=10ms,loss=1%), or a topology file (TOML, the format netemu
    /// reads: topologies/*.toml).
    topology: String,
    /// State directory (configs, sockets, logs; default /tmp/weft-overlay/<name>).
    #[arg(long)]
    dir: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum OverlayCmd {
    /// Start the daemons and wait until every node routes to every other.
    Up {
        #[command(flatten)]
        at: Where,
        /// UDP port every daemon listens on (on its own 127.0.0.N).
        #[arg(long, default_value_t = 7470)]
        port: u16,
        #[arg(long)]
        hello_interval: Option<String>,
        #[arg(long)]
        dead_interval: Option<String>,
        #[arg(long)]
        metric: Option<String>,
        #[arg(long)]
        recovery: Option<String>,
        #[arg(long, default_value = "info")]
        log: String,
        /// How long to wait for convergence.
        #[arg(long, default_value_t = 20)]
        wait_secs: u64,
    },
    /// Stop the daemons and remove the state directory.
    Down {
        #[command(flatten)]
        at: Where,
        /// Keep configs and logs.
        #[arg(long)]
        keep: bool,
    },
    /// One line per node.
    Status {
        #[command(flatten)]
        at: Where,
    },
}

fn state_dir(at: &Where, topo_name: &str) -> PathBuf {
    at.dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("/tmp/weft-overlay").join(topo_name))
}

fn name_for(at: &Where) -> String {
    match Topology::parse(&at.topology) {
        Ok(t) => t.name,
        Err(_) => at
            .topology
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect(),
    }
}

pub fn node_ip(n: usize) -> String {
    format!("127.0.0.{n}")
}

fn weftd_path() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let p = exe.with_file_name("weftd");
    if p.exists() {
        Ok(p)
    } else {
        Err(format!("weftd not found next to {}", exe.display()))
    }
}

pub fn run(a: OverlayArgs) -> Result<i32, String> {
    match a.action {
        OverlayCmd::Up {
            at,
            port,
            hello_interval,
            dead_interval,
            metric,
            recovery,
            log,
            wait_secs,
        } => {
            let topo = Topology::parse(&at.topology)?;
            let dir = state_dir(&at, &topo.name);
            if dir.join("pids").exists() {
                return Err(format!(
                    "an overlay is already up in {} (run `weft overlay down` first)",
                    dir.display()
                ));
            }
            std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            let weftd = weftd_path()?;
            let keys = node_keys(&dir, topo.nodes)?;
            let mut pids = String::new();
            let mut children = Vec::new();
            for n in 1..=topo.nodes {
                let mut toml = format!(
                    "listen = \"{}:{port}\"\nsocket = \"{}\"\nemulation = true\nlog = \"{log}\"\nkey_file = \"{}\"\n",
                    node_ip(n),
                    dir.join(format!("node{n}.sock")).display(),
                    key_path(&dir, n).display()
                );
                if let Some(mtu) = topo.daemon_mtu {
                    toml += &format!("mtu = {mtu}\n");
                }
                for (k, v) in [
                    ("hello_interval", &hello_interval),
                    ("dead_interval", &dead_interval),
                    ("metric", &metric),
                    ("recovery", &recovery),
                ] {
                    if let Some(v) = v {
                        toml += &format!("{k} = \"{v}\"\n");
                    }
                }
                for (m, spec) in topo.neighbors_of(n) {
                    toml += &format!(
                        "\n[[neighbor]]\naddr = \"{}:{port}\"\npublic_key = \"{}\"\n",
                        node_ip(m),
                        keys[m - 1]
                    );
                    if !spec.is_empty() {
                        toml += &format!("link = \"{spec}\"\n");
                    }
                }
                let cfg = dir.join(format!("node{n}.toml"));
                std::fs::write(&cfg, toml).map_err(|e| format!("{}: {e}", cfg.display()))?;
                let logf = std::fs::File::create(dir.join(format!("node{n}.log")))
                    .map_err(|e| e.to_string())?;
                let errf = logf.try_clone().map_err(|e| e.to_string())?;
                use std::os::unix::process::CommandExt;
                let child = std::process::Command::new(&weftd)
                    .arg("--config")
                    .arg(&cfg)
                    .stdin(std::process::Stdio::null())
                    .stdout(logf)
                    .stderr(errf)
                    .process_group(0)
                    .spawn()
                    .map_err(|e| format!("starting {}: {e}", weftd.display()))?;
                pids += &format!("{n} {}\n", child.id());
                children.push((n, child));
            }
            std::fs::write(dir.join("pids"), &pids).map_err(|e| e.to_string())?;
            let deadline = Instant::now() + Duration::from_secs(wait_secs);
            loop {
                // A daemon that exited (its address taken, say) will never converge: say why now.
                for (n, child) in children.iter_mut() {
                    if let Ok(Some(status)) = child.try_wait() {
                        let log = std::fs::read_to_string(dir.join(format!("node{n}.log")))
                            .unwrap_or_default();
                        let why = log.lines().last().unwrap_or("no log").to_string();
                        let _ = stop_all(&dir);
                        return Err(format!("weftd for node {n} exited ({status}): {why}"));
                    }
                }
                let missing: Vec<usize> = (1..=topo.nodes)
                    .filter(|&n| {
                        fetch(&dir.join(format!("node{n}.sock")))
                            .ok()
                            .and_then(|v| v["routes"].as_array().map(|r| r.len()))
                            .is_none_or(|r| r + 1 < topo.nodes)
                    })
                    .collect();
                if missing.is_empty() {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!(
                        "overlay not converged after {wait_secs}s: nodes {missing:?} lack routes (logs in {})",
                        dir.display()
                    ));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            println!(
                "overlay {} up: {} nodes, {} links, state in {}",
                topo.name,
                topo.nodes,
                topo.links.len(),
                dir.display()
            );
            for n in 1..=topo.nodes {
                println!(
                    "  node {n}: {}  WEFT_SOCKET={}",
                    node_ip(n),
                    dir.join(format!("node{n}.sock")).display()
                );
            }
            Ok(0)
        }
        OverlayCmd::Down { at, keep } => {
            let dir = state_dir(&at, &name_for(&at));
            let stopped = stop_all(&dir)?;
            if !keep {
                std::fs::remove_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            }
            println!("overlay down: {stopped} daemons stopped");
            Ok(0)
        }
        OverlayCmd::Status { at } => {
            let dir = state_dir(&at, &name_for(&at));
            let pids = read_pids(&dir)?;
            let mut bad = 0;
            for (n, _) in pids {
                match fetch(&dir.join(format!("node{n}.sock"))) {
                    Ok(v) => {
                        let up = v["neighbors"]
                            .as_array()
                            .map_or(0, |a| a.iter().filter(|x| x["state"] == "up").count());
                        let total = v["neighbors"].as_array().map_or(0, |a| a.len());
                        let routes = v["routes"].as_array().map_or(0, |a| a.len());
                        println!(
                            "node {n} {}: neighbours up {up}/{total}, routes {routes}",
                            node_ip(n)
                        );
                    }
                    Err(e) => {
                        bad += 1;
                        println!("node {n} {}: DOWN ({e})", node_ip(n));
                    }
                }
            }
            Ok(if bad == 0 { 0 } else { 1 })
        }
    }
}

fn key_path(dir: &Path, n: usize) -> PathBuf {
    dir.join(format!("node{n}.key"))
}

/// A secret key file per node (mode 0600, kept across `up`s of the same state directory) and
/// the public keys, which go into the neighbours' configs: every link of a local overlay is
/// authenticated and encrypted without anyone handling keys.
fn node_keys(dir: &Path, nodes: usize) -> Result<Vec<weft_secure::PublicKey>, String> {
    (1..=nodes)
        .map(|n| {
            let path = key_path(dir, n);
            if path.exists() {
                return weft_secure::read_key_file(&path)
                    .map(|k| k.public())
                    .map_err(|e| e.to_string());
            }
            let key = weft_secure::SecretKey::generate();
            weft_secure::write_key_file(&path, &key, false).map_err(|e| e.to_string())?;
            Ok(key.public())
        })
        .collect()
}

fn read_pids(dir: &Path) -> Result<Vec<(usize, i32)>, String> {
    let text = std::fs::read_to_string(dir.join("pids"))
        .map_err(|_| format!("no overlay is up in {}", dir.display()))?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some((w.next()?.parse().ok()?, w.next()?.parse().ok()?))
        })
        .collect())
}

fn is_weftd(pid: i32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
        c.split(|&b| b == 0)
            .next()
            .is_some_and(|a| a.ends_with(b"weftd"))
    })
}

fn stop_all(dir: &Path) -> Result<usize, String> {
    let pids = read_pids(dir)?;
    let live: Vec<i32> = pids
        .iter()
        .map(|(_, p)| *p)
        .filter(|&p| is_weftd(p))
        .collect();
    for &p in &live {
        // SAFETY: signalling a process we verified is one of our daemons.
        unsafe { libc::kill(p, libc::SIGTERM) };
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while live.iter().any(|&p| is_weftd(p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    for &p in &live {
        if is_weftd(p) {
            // SAFETY: as above; it ignored SIGTERM for 3 s.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
    }
    let _ = std::fs::remove_file(dir.join("pids"));
    Ok(live.len())
}
