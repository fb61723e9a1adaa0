//! `weftd` configuration: a TOML file (`--config`) and/or flags, resolved into the node's
//! configuration plus what the I/O layer needs. Any problem is reported as one line naming the
//! field, and `weftd` exits with status 2 before starting anything.

use crate::emulation::{parse_duration, LinkParams};
use crate::logging::{parse_filter, LogFormat};
use crate::overlay::neighbor::Metric;
use crate::overlay::{NeighborConfig, NodeConfig};
use serde::Deserialize;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use weft_core::NodeId;
use weft_secure::{Admitted, LinkConfig, PeerConfig, PublicKey, SecretKey};
use weft_transport::arq::RedundancyConfig;
use weft_transport::session::RecoveryMode;

pub const DEFAULT_PORT: u16 = 7470;
/// Where a system `weftd` listens and `weft` connects when neither `--socket` nor
/// `WEFT_SOCKET` says (`/run/weft` is root's, unlike a shared /tmp directory).
pub const DEFAULT_SOCKET: &str = "/run/weft/weftd.sock";

/// The socket of a daemon run by `uid` with `runtime_dir` (`$XDG_RUNTIME_DIR`): root's is
/// [`DEFAULT_SOCKET`], another user's lives in their own runtime directory.
pub fn default_socket(uid: u32, runtime_dir: Option<&std::ffi::OsStr>) -> PathBuf {
    match runtime_dir {
        Some(dir) if uid != 0 && !dir.is_empty() => Path::new(dir).join("weft/weftd.sock"),
        _ => PathBuf::from(DEFAULT_SOCKET),
    }
}

fn parse_recovery(s: &str) -> Result<RecoveryMode, String> {
    match s {
        "hop-by-hop" => Ok(RecoveryMode::HopByHop),
        "end-to-end" | "end-to-end-only" => Ok(RecoveryMode::EndToEndOnly),
        _ => Err(format!("`{s}`: expected hop-by-hop or end-to-end")),
    }
}

/// Longest delay of a redundant copy: beyond it a link's own repair (about one RTT) is usually
/// as fast, and the copy only adds traffic.
const MAX_REDUNDANCY_DELAY: Duration = Duration::from_millis(100);

/// `off`, `on` (the default delay) or the delay of the copy after its original, e.g. `2ms`.
fn parse_redundancy(s: &str) -> Result<RedundancyConfig, String> {
    let default = RedundancyConfig::default();
    match s {
        "off" | "false" => Ok(RedundancyConfig {
            enabled: false,
            ..default
        }),
        "on" | "true" => Ok(default),
        _ => {
            let delay = parse_duration(s)
                .ok_or_else(|| format!("`{s}`: expected off, on or a delay like 2ms"))?;
            if delay.is_zero() || delay > MAX_REDUNDANCY_DELAY {
                return Err(format!(
                    "`{s}`: the delay must be above 0 and at most {MAX_REDUNDANCY_DELAY:?}"
                ));
            }
            Ok(RedundancyConfig { delay, ..default })
        }
    }
}

/// The file format. Every field is optional; flags override the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub node: Option<String>,
    pub listen: Option<String>,
    pub socket: Option<String>,
    /// Group (name or gid) the control socket belongs to: who may connect.
    pub socket_group: Option<String>,
    /// Group (name or gid) whose members may administer the overlay.
    pub admin_group: Option<String>,
    pub proxy_ip: Option<String>,
    pub emulation: Option<bool>,
    pub metric: Option<String>,
    pub recovery: Option<String>,
    /// Redundant copies on sparse links: `off`, `on` or the copy's delay (`2ms`).
    pub redundancy: Option<String>,
    pub hello_interval: Option<String>,
    pub dead_interval: Option<String>,
    /// Fast liveness on links that carry traffic: `off` or the keepalive interval (`5ms`).
    pub fast_probe: Option<String>,
    pub mtu: Option<u32>,
    pub ttl: Option<u8>,
    /// Log filter: a level or per-module directives (checked, see `logging::parse_filter`).
    pub log: Option<String>,
    /// This node's secret key (written by `weft keygen`, mode 0600).
    pub key_file: Option<String>,
    /// The overlay-wide list of admitted node keys (`NODE PUBLIC_KEY` lines).
    pub admitted_keys: Option<String>,
    /// Links without authentication or encryption, flooded state unsigned.
    pub insecure: Option<bool>,
    /// `text` or `json`.
    pub log_format: Option<String>,
    /// Address of the Prometheus endpoint, or `off`.
    pub metrics: Option<String>,
    #[serde(default, rename = "neighbor")]
    pub neighbors: Vec<FileNeighbor>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileNeighbor {
    pub addr: String,
    pub node: Option<String>,
    /// Emulation for packets from this neighbour, e.g. `delay=10ms loss=1%`.
    pub link: Option<String>,
    /// The neighbour's public key (`weft keygen` prints it); may come from `admitted_keys`.
    pub public_key: Option<String>,
}

/// Flags, as parsed by `weftd`'s command line.
#[derive(Debug, Default, Clone)]
pub struct Flags {
    pub config: Option<PathBuf>,
    pub node: Option<String>,
    pub listen: Option<String>,
    pub socket: Option<String>,
    pub socket_group: Option<String>,
    pub admin_group: Option<String>,
    pub proxy_ip: Option<String>,
    pub emulation: bool,
    pub metric: Option<String>,
    pub recovery: Option<String>,
    pub redundancy: Option<String>,
    pub hello_interval: Option<String>,
    pub dead_interval: Option<String>,
    pub fast_probe: Option<String>,
    pub mtu: Option<u32>,
    pub ttl: Option<u8>,
    /// `ADDR` or `ADDR/SPEC`: emulation for packets from that neighbour, and `key=PUBLIC_KEY`
    /// and `node=IP` items.
    pub neighbors: Vec<String>,
    pub log: Option<String>,
    pub log_format: Option<String>,
    pub metrics: Option<String>,
    pub key_file: Option<PathBuf>,
    pub admitted_keys: Option<PathBuf>,
    pub insecure: bool,
}

/// Everything `weftd` needs to run.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub node: NodeConfig,
    /// Receive-side emulation (the layer between the socket and the node).
    pub emulation: EmulationConfig,
    pub listen: SocketAddr,
    pub socket: PathBuf,
    /// Who may connect to the socket and who may administer (`io::access`).
    pub access: AccessConfig,
    pub proxy_ip: Ipv4Addr,
    pub log: LogConfig,
    /// Where `/metrics` is served (None: off).
    pub metrics: Option<SocketAddr>,
    pub security: Security,
}

/// The control socket's group and the admin group, as configured (a name or a gid; names are
/// looked up when the daemon starts).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessConfig {
    /// None: the daemon's own group.
    pub socket_group: Option<String>,
    /// None: only root and the daemon's user administer.
    pub admin_group: Option<String>,
}

fn parse_group(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!("`{s}`: expected a group name or a gid"))
    }
}

/// How the daemon logs: a checked filter and a line format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    pub filter: String,
    pub format: LogFormat,
}

fn parse_metrics(s: &str) -> Result<Option<SocketAddr>, String> {
    if s == "off" {
        return Ok(None);
    }
    match s.parse::<SocketAddr>() {
        Ok(a) => Ok(Some(a)),
        Err(_) => Err(format!(
            "`{s}` is not an address like 127.0.0.1:9470 (or `off`)"
        )),
    }
}

impl DaemonConfig {
    /// One line for `--check-config` and the start-up log.
    pub fn summary(&self) -> String {
        format!(
            "node {}, listen {}, {} neighbours, socket {}, metrics {}",
            self.node.id,
            self.listen,
            self.node.neighbors.len(),
            self.socket.display(),
            self.metrics.map_or("off".into(), |m| m.to_string()),
        )
    }
}

/// How links and flooded state are protected.
#[derive(Debug, Clone)]
pub enum Security {
    /// `insecure = true`: nothing authenticated, nothing encrypted, nothing signed.
    Insecure,
    Keys {
        identity: Arc<SecretKey>,
        /// The link layer's configuration (its `wall_clock_us` is set when the daemon starts).
        links: LinkConfig,
    },
}

impl Security {
    pub fn is_secure(&self) -> bool {
        matches!(self, Security::Keys { .. })
    }
}

/// Whether emulation is allowed, and each neighbour's initial link parameters.
#[derive(Debug, Clone, Default)]
pub struct EmulationConfig {
    pub enabled: bool,
    pub links: Vec<(SocketAddr, LinkParams)>,
}

fn field<T>(name: &str, r: Result<T, String>) -> Result<T, String> {
    r.map_err(|e| format!("`{name}`: {e}"))
}

fn parse_ipv4(s: &str) -> Result<Ipv4Addr, String> {
    s.parse()
        .map_err(|_| format!("`{s}` is not an IPv4 address"))
}

fn parse_socket_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return match a {
            SocketAddr::V4(_) => Ok(a),
            SocketAddr::V6(_) => Err(format!("`{s}`: only IPv4 overlay addresses are supported")),
        };
    }
    // A bare address means the default port.
    let ip = parse_ipv4(s)
        .map_err(|_| format!("`{s}` is not an address like 127.0.0.2:{DEFAULT_PORT}"))?;
    Ok(SocketAddr::new(ip.into(), DEFAULT_PORT))
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s).ok_or_else(|| format!("`{s}` is not a duration like 100ms"))?;
    if d < Duration::from_millis(1) {
        return Err(format!("`{s}` is below 1ms"));
    }
    Ok(d)
}

/// `off` or the keepalive interval of fast liveness, 1ms..=100ms.
fn parse_fast_probe(s: &str) -> Result<Option<Duration>, String> {
    if matches!(s, "off" | "false") {
        return Ok(None);
    }
    let d =
        parse_duration(s).ok_or_else(|| format!("`{s}`: expected off or an interval like 5ms"))?;
    if !(Duration::from_millis(1)..=Duration::from_millis(100)).contains(&d) {
        return Err(format!("`{s}`: the interval must be 1ms..=100ms"));
    }
    Ok(Some(d))
}

fn parse_metric(s: &str) -> Result<Metric, String> {
    match s {
        "hops" => Ok(Metric::Hops),
        "latency" => Ok(Metric::Latency),
        _ => Err(format!("`{s}`: expected hops or latency")),
    }
}

/// The default proxy address for a node: 127.77.x.y from the node address's last two bytes, so
/// daemons sharing one host (127.0.0.N) get distinct ones.
pub fn default_proxy_ip(node: Ipv4Addr) -> Ipv4Addr {
    let o = node.octets();
    Ipv4Addr::new(127, 77, o[2], o[3])
}

/// Reads the TOML file, turning parser errors into `file:line: key: problem`.
pub fn read_file(path: &Path) -> Result<FileConfig, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse_file(&text).map_err(|e| format!("{}:{e}", path.display()))
}

/// Parses the file's text; an error reads `line: key: problem` (or `line: problem` when the
/// problem already names the key, as an unknown key's does).
pub fn parse_file(text: &str) -> Result<FileConfig, String> {
    toml::from_str(text).map_err(|e| {
        let msg = e.message().replace('\n', " ");
        let Some(span) = e.span() else {
            return format!(" {msg}");
        };
        let at = span.start.min(text.len());
        let line = text.as_bytes()[..at]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1;
        match key_at(text, at) {
            Some(key) if !msg.contains(&format!("`{key}`")) => format!("{line}: `{key}`: {msg}"),
            _ => format!("{line}: {msg}"),
        }
    })
}

/// The line of the file that set the key an error names (`` `mtu`: ...``,
/// `` `neighbor[1].addr`: ...``), unless a flag set it.
fn blame(text: &str, flags: &Flags, error: &str) -> Option<usize> {
    let key = error.strip_prefix('`')?.split('`').next()?;
    let from_flag = match key {
        "node" => flags.node.is_some(),
        "listen" => flags.listen.is_some(),
        "socket" => flags.socket.is_some(),
        "socket_group" => flags.socket_group.is_some(),
        "admin_group" => flags.admin_group.is_some(),
        "proxy_ip" => flags.proxy_ip.is_some(),
        "metric" => flags.metric.is_some(),
        "recovery" => flags.recovery.is_some(),
        "redundancy" => flags.redundancy.is_some(),
        "hello_interval" => flags.hello_interval.is_some(),
        "dead_interval" => flags.dead_interval.is_some(),
        "fast_probe" => flags.fast_probe.is_some(),
        "mtu" => flags.mtu.is_some(),
        "ttl" => flags.ttl.is_some(),
        "log" => flags.log.is_some(),
        "log_format" => flags.log_format.is_some(),
        "metrics" => flags.metrics.is_some(),
        _ => false,
    };
    if from_flag {
        return None;
    }
    let mut offset = 0;
    for (i, line) in text.lines().enumerate() {
        let found = line.trim_start().split_once('=').is_some_and(|(k, _)| {
            k.trim().trim_matches('"') == key.rsplit('.').next().unwrap_or(key)
        });
        if found
            && key_at(text, offset + line.len() - line.trim_start().len()).as_deref() == Some(key)
        {
            return Some(i + 1);
        }
        offset += line.len() + 1;
    }
    None
}

/// The dotted name of the key whose line holds byte `at`: `mtu`, `neighbor[1].addr`.
fn key_at(text: &str, at: usize) -> Option<String> {
    let start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let end = text[at..].find('\n').map_or(text.len(), |i| at + i);
    let line = text[start..end].trim();
    // The innermost table the line belongs to, with its index for arrays of tables.
    let mut table: Option<String> = None;
    let mut counts: std::collections::HashMap<String, usize> = Default::default();
    for l in text[..start].lines().map(str::trim) {
        if let Some(name) = l.strip_prefix("[[").and_then(|r| r.split("]]").next()) {
            let name = name.trim().to_string();
            let n = counts.entry(name.clone()).or_insert(0);
            table = Some(format!("{name}[{n}]"));
            *n += 1;
        } else if let Some(name) = l.strip_prefix('[').and_then(|r| r.split(']').next()) {
            table = Some(name.trim().to_string());
        }
    }
    let key = if line.starts_with('[') {
        return Some(
            line.trim_matches(|c| c == '[' || c == ']')
                .trim()
                .to_string(),
        );
    } else {
        let (k, _) = line.split_once('=')?;
        k.trim().trim_matches('"').to_string()
    };
    if key.is_empty() {
        return None;
    }
    Some(match table {
        Some(t) => format!("{t}.{key}"),
        None => key,
    })
}

impl DaemonConfig {
    /// Merges file and flags (flags win) and validates everything.
    pub fn resolve(flags: &Flags) -> Result<DaemonConfig, String> {
        Self::resolve_inner(flags).map_err(|e| match &flags.config {
            Some(path) if !e.starts_with(&path.display().to_string()) => {
                match std::fs::read_to_string(path)
                    .ok()
                    .and_then(|text| blame(&text, flags, &e))
                {
                    Some(line) => format!("{}:{line}: {e}", path.display()),
                    None => e,
                }
            }
            _ => e,
        })
    }

    fn resolve_inner(flags: &Flags) -> Result<DaemonConfig, String> {
        let file = match &flags.config {
            Some(p) => read_file(p)?,
            None => FileConfig::default(),
        };
        let pick =
            |flag: &Option<String>, file: &Option<String>| flag.clone().or_else(|| file.clone());

        let listen = match pick(&flags.listen, &file.listen) {
            Some(s) => field("listen", parse_socket_addr(&s))?,
            None => return Err("`listen`: required (e.g. --listen 127.0.0.1:7470)".into()),
        };
        let listen_ip = match listen {
            SocketAddr::V4(a) => *a.ip(),
            SocketAddr::V6(_) => return Err("`listen`: only IPv4 is supported".into()),
        };
        if listen_ip.is_unspecified() && pick(&flags.node, &file.node).is_none() {
            return Err("`node`: required when `listen` is a wildcard address".into());
        }
        let node_ip = match pick(&flags.node, &file.node) {
            Some(s) => field("node", parse_ipv4(&s))?,
            None => listen_ip,
        };
        if node_ip.is_multicast() || node_ip.is_unspecified() || node_ip.is_broadcast() {
            return Err(format!("`node`: {node_ip} cannot name a node"));
        }
        let mut node = NodeConfig::new(NodeId::from(node_ip));
        let emulation = flags.emulation || file.emulation.unwrap_or(false);
        if let Some(m) = pick(&flags.metric, &file.metric) {
            node.metric = field("metric", parse_metric(&m))?;
        }
        if let Some(s) = pick(&flags.hello_interval, &file.hello_interval) {
            node.hello_interval = field("hello_interval", parse_interval(&s))?;
        }
        if let Some(s) = pick(&flags.dead_interval, &file.dead_interval) {
            node.dead_interval = field("dead_interval", parse_interval(&s))?;
        }
        if let Some(s) = pick(&flags.fast_probe, &file.fast_probe) {
            node.fast_probe = field("fast_probe", parse_fast_probe(&s))?;
        }
        if node.dead_interval < node.hello_interval * 2 {
            return Err(format!(
                "`dead_interval`: {:?} must be at least twice hello_interval ({:?})",
                node.dead_interval, node.hello_interval
            ));
        }
        if let Some(m) = flags.mtu.or(file.mtu) {
            if !(576..=65_507).contains(&m) {
                return Err(format!("`mtu`: {m} is outside 576..=65507"));
            }
            node.mtu = m as usize;
        }
        if let Some(t) = flags.ttl.or(file.ttl) {
            if t == 0 {
                return Err("`ttl`: must be at least 1".into());
            }
            node.default_ttl = t;
        }
        if let Some(s) = pick(&flags.recovery, &file.recovery) {
            node.recovery = field("recovery", parse_recovery(&s))?;
        }
        if let Some(s) = pick(&flags.redundancy, &file.redundancy) {
            node.arq.redundancy = field("redundancy", parse_redundancy(&s))?;
        }

        let mut neighbors: Vec<(NeighborConfig, LinkParams)> = Vec::new();
        let mut neighbor_keys: Vec<Option<PublicKey>> = Vec::new();
        for (i, n) in file.neighbors.iter().enumerate() {
            let name = format!("neighbor[{i}]");
            let addr = field(&format!("{name}.addr"), parse_socket_addr(&n.addr))?;
            let id = match &n.node {
                Some(s) => Some(NodeId::from(field(&format!("{name}.node"), parse_ipv4(s))?)),
                None => None,
            };
            let link = match &n.link {
                Some(spec) => field(
                    &format!("{name}.link"),
                    LinkParams::default().apply_spec(spec),
                )?,
                None => LinkParams::default(),
            };
            let key = match &n.public_key {
                Some(k) => Some(field(
                    &format!("{name}.public_key"),
                    PublicKey::parse(k).map_err(|e| e.to_string()),
                )?),
                None => None,
            };
            neighbors.push((NeighborConfig { addr, id }, link));
            neighbor_keys.push(key);
        }
        for s in &flags.neighbors {
            let (addr, spec) = match s.split_once('/') {
                Some((a, sp)) => (a, Some(sp)),
                None => (s.as_str(), None),
            };
            let addr = field("neighbor", parse_socket_addr(addr))?;
            let spec = field("neighbor", NeighborSpec::parse(spec.unwrap_or("")))?;
            let link = field("neighbor", LinkParams::default().apply_spec(&spec.link))?;
            neighbors.push((
                NeighborConfig {
                    addr,
                    id: spec.node,
                },
                link,
            ));
            neighbor_keys.push(spec.key);
        }
        for (i, (n, link)) in neighbors.iter().enumerate() {
            if n.addr == listen {
                return Err(format!(
                    "`neighbor`: {} is this daemon's own address",
                    n.addr
                ));
            }
            if neighbors[..i].iter().any(|(m, _)| m.addr == n.addr) {
                return Err(format!("`neighbor`: {} is listed twice", n.addr));
            }
            if !link.is_identity() && !emulation {
                return Err(format!(
                    "`neighbor`: link emulation for {} needs `emulation = true`",
                    n.addr
                ));
            }
        }
        let configured: Vec<NeighborConfig> = neighbors.iter().map(|(n, _)| n.clone()).collect();
        let security = resolve_security(flags, &file, &node, &configured, neighbor_keys)?;
        if let Security::Keys { identity, links } = &security {
            node.trust = Some(crate::overlay::trust::TrustConfig {
                identity: identity.clone(),
                admitted: links.admitted.clone(),
            });
        }
        let emulation = EmulationConfig {
            enabled: emulation,
            links: neighbors.iter().map(|(n, link)| (n.addr, *link)).collect(),
        };
        node.neighbors = configured;

        let socket = match pick(&flags.socket, &file.socket) {
            Some(s) => PathBuf::from(s),
            None => default_socket(
                // SAFETY: geteuid cannot fail.
                unsafe { libc::geteuid() },
                std::env::var_os("XDG_RUNTIME_DIR").as_deref(),
            ),
        };
        let access = AccessConfig {
            socket_group: match pick(&flags.socket_group, &file.socket_group) {
                Some(g) => Some(field("socket_group", parse_group(&g))?),
                None => None,
            },
            admin_group: match pick(&flags.admin_group, &file.admin_group) {
                Some(g) => Some(field("admin_group", parse_group(&g))?),
                None => None,
            },
        };
        let proxy_ip = match pick(&flags.proxy_ip, &file.proxy_ip) {
            Some(s) => field("proxy_ip", parse_ipv4(&s))?,
            None => default_proxy_ip(node_ip),
        };
        if !proxy_ip.is_loopback() {
            return Err(format!(
                "`proxy_ip`: {proxy_ip} must be a loopback address (127.0.0.0/8)"
            ));
        }
        let filter = pick(&flags.log, &file.log).unwrap_or_else(|| "info".into());
        field("log", parse_filter(&filter))?;
        let format = match pick(&flags.log_format, &file.log_format) {
            Some(s) => field("log_format", s.parse())?,
            None => LogFormat::Text,
        };
        let metrics = match pick(&flags.metrics, &file.metrics) {
            Some(s) => field("metrics", parse_metrics(&s))?,
            None => None,
        };
        if metrics.is_some_and(|m| m.port() == 0) {
            return Err("`metrics`: needs a port (e.g. 127.0.0.1:9470)".into());
        }
        Ok(DaemonConfig {
            node,
            emulation,
            listen,
            socket,
            access,
            proxy_ip,
            log: LogConfig { filter, format },
            metrics,
            security,
        })
    }
}

/// What a `--neighbor ADDR/SPEC` flag's SPEC says besides emulation.
struct NeighborSpec {
    link: String,
    key: Option<PublicKey>,
    node: Option<NodeId>,
}

impl NeighborSpec {
    fn parse(spec: &str) -> Result<NeighborSpec, String> {
        let mut out = NeighborSpec {
            link: String::new(),
            key: None,
            node: None,
        };
        for item in spec
            .split(|c: char| c.is_whitespace() || c == ',')
            .filter(|s| !s.is_empty())
        {
            if let Some(k) = item.strip_prefix("key=") {
                out.key = Some(PublicKey::parse(k).map_err(|e| format!("`key`: {e}"))?);
            } else if let Some(n) = item.strip_prefix("node=") {
                out.node = Some(NodeId::from(parse_ipv4(n)?));
            } else {
                if !out.link.is_empty() {
                    out.link.push(',');
                }
                out.link.push_str(item);
            }
        }
        Ok(out)
    }
}

fn resolve_security(
    flags: &Flags,
    file: &FileConfig,
    node: &NodeConfig,
    neighbors: &[NeighborConfig],
    keys: Vec<Option<PublicKey>>,
) -> Result<Security, String> {
    let key_file = flags
        .key_file
        .clone()
        .or_else(|| file.key_file.as_ref().map(PathBuf::from));
    let admitted_path = flags
        .admitted_keys
        .clone()
        .or_else(|| file.admitted_keys.as_ref().map(PathBuf::from));
    let insecure = flags.insecure || file.insecure.unwrap_or(false);
    if insecure {
        if key_file.is_some() || admitted_path.is_some() || keys.iter().any(Option::is_some) {
            return Err(
                "`insecure`: cannot be combined with `key_file`, `admitted_keys` or neighbour keys"
                    .into(),
            );
        }
        return Ok(Security::Insecure);
    }
    let Some(key_file) = key_file else {
        return Err("`key_file`: required: link security needs this node's key (create one with `weft keygen FILE`, pass --key FILE), or run unprotected with --insecure".into());
    };
    let identity = field(
        "key_file",
        weft_secure::read_key_file(&key_file).map_err(|e| e.to_string()),
    )?;
    let admitted: Option<Admitted> = match &admitted_path {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| format!("`admitted_keys`: {}: {e}", p.display()))?;
            Some(
                weft_secure::admitted::parse(&text)
                    .map_err(|e| format!("`admitted_keys`: {}: {e}", p.display()))?,
            )
        }
        None => None,
    };
    if let Some(a) = &admitted {
        match a.get(&node.id) {
            Some(k) if *k == identity.public() => {}
            Some(_) => {
                return Err(format!(
                    "`admitted_keys`: lists another key for this node ({})",
                    node.id
                ))
            }
            None => {
                return Err(format!(
                    "`admitted_keys`: does not list this node ({})",
                    node.id
                ))
            }
        }
    }
    let mut peers = Vec::with_capacity(neighbors.len());
    for (n, key) in neighbors.iter().zip(keys) {
        let by_id = n.id.or(match n.addr {
            SocketAddr::V4(a) => Some(NodeId::from(*a.ip())),
            SocketAddr::V6(_) => None,
        });
        let listed = by_id.and_then(|id| admitted.as_ref()?.get(&id).copied());
        if let (Some(k), Some(l)) = (key, listed) {
            if k != l {
                return Err(format!(
                    "`neighbor`: {}: its public key differs from the one `admitted_keys` lists",
                    n.addr
                ));
            }
        }
        if key.is_none() && listed.is_none() {
            return Err(format!(
                "`neighbor`: {}: no public key (give `public_key`, or list its node in `admitted_keys`)",
                n.addr
            ));
        }
        peers.push(PeerConfig {
            addr: n.addr,
            node: n.id,
            key,
        });
    }
    Ok(Security::Keys {
        links: LinkConfig {
            node: node.id,
            peers,
            admitted: admitted.map(Arc::new),
            wall_clock_us: 0,
        },
        identity: Arc::new(identity),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn flags() -> Flags {
        Flags {
            listen: Some("127.0.0.1:7470".into()),
            insecure: true,
            ..Default::default()
        }
    }

    #[test]
    fn defaults_from_listen_address() {
        let c = DaemonConfig::resolve(&flags()).unwrap();
        assert_eq!(c.node.id, NodeId::from(Ipv4Addr::new(127, 0, 0, 1)));
        assert_eq!(c.proxy_ip, Ipv4Addr::new(127, 77, 0, 1));
        assert_eq!(c.node.hello_interval, Duration::from_millis(100));
        assert!(c.node.dead_interval <= Duration::from_millis(500));
        assert_eq!(c.node.recovery, RecoveryMode::HopByHop);
        assert!(c.node.arq.redundancy.enabled, "redundancy is on by default");
    }

    #[test]
    fn redundancy_can_be_tuned_or_turned_off() {
        let resolve = |v: &str| {
            let mut f = flags();
            f.redundancy = Some(v.into());
            DaemonConfig::resolve(&f).map(|c| c.node.arq.redundancy)
        };
        assert!(!resolve("off").unwrap().enabled);
        assert_eq!(resolve("on").unwrap(), RedundancyConfig::default());
        let tuned = resolve("6ms").unwrap();
        assert!(tuned.enabled);
        assert_eq!(tuned.delay, Duration::from_millis(6));
        for bad in ["0ms", "1s", "sometimes"] {
            let e = resolve(bad).unwrap_err();
            assert!(e.starts_with("`redundancy`"), "{bad}: {e}");
        }
    }

    #[test]
    fn errors_name_the_field() {
        let mut f = flags();
        f.hello_interval = Some("soon".into());
        assert!(DaemonConfig::resolve(&f)
            .unwrap_err()
            .starts_with("`hello_interval`"));
        let mut f = flags();
        f.neighbors = vec!["127.0.0.2:7470/delay=3ms".into()];
        let e = DaemonConfig::resolve(&f).unwrap_err();
        assert!(e.contains("emulation"), "{e}");
        let f = Flags::default();
        assert!(DaemonConfig::resolve(&f)
            .unwrap_err()
            .starts_with("`listen`"));
        let mut f = flags();
        f.dead_interval = Some("150ms".into());
        assert!(DaemonConfig::resolve(&f)
            .unwrap_err()
            .starts_with("`dead_interval`"));
    }

    #[test]
    fn reads_a_file_and_reports_bad_lines() {
        let dir = std::env::temp_dir().join(format!("weft-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.toml");
        let mut f = std::fs::File::create(&good).unwrap();
        writeln!(
            f,
            "listen = \"127.0.0.3:7000\"\ninsecure = true\nemulation = true\nmetric = \"hops\"\nredundancy = \"off\"\n[[neighbor]]\naddr = \"127.0.0.4:7000\"\nlink = \"delay=5ms loss=1%\""
        )
        .unwrap();
        let c = DaemonConfig::resolve(&Flags {
            config: Some(good),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.node.neighbors.len(), 1);
        assert_eq!(c.emulation.links[0].1.delay, Duration::from_millis(5));
        assert_eq!(c.node.metric, Metric::Hops);
        assert!(!c.node.arq.redundancy.enabled);

        let bad = dir.join("bad.toml");
        std::fs::write(
            &bad,
            "listen = \"127.0.0.3:7000\"\nhelo_interval = \"5ms\"\n",
        )
        .unwrap();
        let e = DaemonConfig::resolve(&Flags {
            config: Some(bad),
            ..Default::default()
        })
        .unwrap_err();
        assert!(
            e.contains("bad.toml:2") && e.contains("helo_interval"),
            "{e}"
        );
        assert!(!e.contains('\n'));
        std::fs::remove_dir_all(&dir).ok();
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("weft-config-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn keys_or_an_explicit_insecure_are_required() {
        let bare = Flags {
            listen: Some("127.0.0.1:7470".into()),
            ..Default::default()
        };
        let e = DaemonConfig::resolve(&bare).unwrap_err();
        assert!(
            e.starts_with("`key_file`") && e.contains("--insecure"),
            "{e}"
        );
        assert!(!DaemonConfig::resolve(&flags())
            .unwrap()
            .security
            .is_secure());

        let dir = temp_dir("keys");
        let me = SecretKey::generate();
        let peer = SecretKey::generate();
        let key_file = dir.join("me.key");
        weft_secure::write_key_file(&key_file, &me, false).unwrap();
        let secure = |neighbors: Vec<String>, admitted: Option<PathBuf>| Flags {
            listen: Some("127.0.0.1:7470".into()),
            key_file: Some(key_file.clone()),
            admitted_keys: admitted,
            neighbors,
            ..Default::default()
        };
        let c = DaemonConfig::resolve(&secure(
            vec![format!("127.0.0.2:7470/key={}", peer.public())],
            None,
        ))
        .unwrap();
        let Security::Keys { identity, links } = &c.security else {
            panic!("secure config expected");
        };
        assert_eq!(identity.public(), me.public());
        assert_eq!(links.peers[0].key, Some(peer.public()));

        let e = DaemonConfig::resolve(&secure(vec!["127.0.0.2:7470".into()], None)).unwrap_err();
        assert!(e.contains("no public key"), "{e}");

        let admitted = dir.join("admitted");
        let mut list = weft_secure::Admitted::new();
        list.insert(NodeId::from(Ipv4Addr::new(127, 0, 0, 1)), me.public());
        list.insert(NodeId::from(Ipv4Addr::new(127, 0, 0, 2)), peer.public());
        std::fs::write(&admitted, weft_secure::admitted::render(&list)).unwrap();
        let c = DaemonConfig::resolve(&secure(
            vec!["127.0.0.2:7470/delay=0ms".into()],
            Some(admitted.clone()),
        ))
        .unwrap();
        assert!(
            c.security.is_secure(),
            "the admitted list supplies the neighbour's key"
        );
        let other = SecretKey::generate().public();
        let e = DaemonConfig::resolve(&secure(
            vec![format!("127.0.0.2:7470/key={other}")],
            Some(admitted),
        ))
        .unwrap_err();
        assert!(e.contains("differs"), "{e}");

        let mut both = secure(vec![], None);
        both.insecure = true;
        assert!(DaemonConfig::resolve(&both)
            .unwrap_err()
            .starts_with("`insecure`"));

        std::fs::set_permissions(
            &key_file,
            std::os::unix::fs::PermissionsExt::from_mode(0o644),
        )
        .unwrap();
        let e = DaemonConfig::resolve(&secure(vec![], None)).unwrap_err();
        assert!(e.starts_with("`key_file`") && e.contains("chmod"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }

    /// A key file for the example's node 192.0.2.1 and an admitted list naming it.
    fn example_keys(tag: &str) -> (PathBuf, PathBuf) {
        let dir = std::env::temp_dir().join(format!("weft-example-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = weft_secure::SecretKey::generate();
        let key_file = dir.join("weftd.key");
        weft_secure::write_key_file(&key_file, &key, true).unwrap();
        let mut list = Admitted::new();
        list.insert(
            NodeId::from(std::net::Ipv4Addr::new(192, 0, 2, 1)),
            key.public(),
        );
        let admitted = dir.join("admitted");
        std::fs::write(&admitted, weft_secure::admitted::render(&list)).unwrap();
        (key_file, admitted)
    }

    /// The keys serde accepts at one level, read from its own "expected one of" message.
    fn accepted_keys(probe: &str) -> Vec<String> {
        let e = parse_file(probe).unwrap_err();
        let list = e.split("expected one of").nth(1).unwrap_or_default();
        list.split('`')
            .skip(1)
            .step_by(2)
            .map(String::from)
            .collect()
    }

    #[test]
    fn the_default_socket_is_roots_or_in_the_users_runtime_dir() {
        let run = std::ffi::OsStr::new("/run/user/1000");
        assert_eq!(default_socket(0, Some(run)), Path::new(DEFAULT_SOCKET));
        assert_eq!(
            default_socket(1000, Some(run)),
            Path::new("/run/user/1000/weft/weftd.sock")
        );
        assert_eq!(default_socket(1000, None), Path::new(DEFAULT_SOCKET));
    }

    #[test]
    fn the_packaged_example_sets_every_key_and_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/weftd.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let table: toml::Table = toml::from_str(&text).unwrap();
        let top = accepted_keys("__probe__ = 1");
        let neighbor = accepted_keys("[[neighbor]]\n__probe__ = 1");
        assert!(
            top.len() > 10 && neighbor.len() >= 3,
            "{top:?} {neighbor:?}"
        );
        for k in &top {
            assert!(table.contains_key(k), "packaging/weftd.toml lacks `{k}`");
        }
        let first = &table["neighbor"].as_array().unwrap()[0];
        for k in &neighbor {
            assert!(
                first.get(k).is_some(),
                "packaging/weftd.toml lacks `neighbor.{k}`"
            );
        }
        // The example names /etc/weft paths; this host's key and list stand in for them.
        let (key_file, admitted) = example_keys("example");
        let c = DaemonConfig::resolve(&Flags {
            config: Some(path),
            key_file: Some(key_file),
            admitted_keys: Some(admitted),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.node.neighbors.len(), 2);
        assert_eq!(c.node.fast_probe, None, "the example shows the default");
        assert!(c.security.is_secure());
        assert_eq!(c.metrics, None);
    }
}
