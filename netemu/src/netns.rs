//! Named network namespaces (`ip netns`), entering them from a thread, and removing them with
//! every process still inside.

use crate::sys;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const NETNS_DIR: &str = "/run/netns";

fn namespace_path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

fn run_ip(args: &[&str], stdin: Option<&str>) -> io::Result<String> {
    let mut child = Command::new("ip")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot run `ip` (iproute2): {e}")))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())?;
    }
    let output = child.wait_with_output()?;
    if !output.status.success() {
        return Err(io::Error::other(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Create the named namespace. Fails if it exists: names carry a per-run prefix, so an
/// existing one belongs to somebody else.
pub fn create(name: &str) -> io::Result<()> {
    if namespace_path(name).exists() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("network namespace {name} already exists"),
        ));
    }
    run_ip(&["netns", "add", name], None).map(|_| ())
}

/// Apply `ip -batch` commands inside the namespace.
pub fn ip_batch(name: &str, commands: &[String]) -> io::Result<()> {
    let mut script = commands.join("\n");
    script.push('\n');
    run_ip(&["-n", name, "-batch", "-"], Some(&script)).map(|_| ())
}

/// Steer the receive processing of `devices` (in namespace `name`) to the CPUs in `mask`
/// (RPS). sysfs shows the devices of the namespace it was mounted in, so the write runs under
/// `ip netns exec`, which mounts a fresh sysfs; device names go as arguments, never as script.
pub fn steer_receive(name: &str, devices: &[&str], mask: u64) -> io::Result<()> {
    let script = r#"m=$1; shift; for d; do echo "$m" > "/sys/class/net/$d/queues/rx-0/rps_cpus" || exit 1; done"#;
    let mask = format!("{mask:x}");
    let mut args = vec![
        "netns",
        "exec",
        name,
        "sh",
        "-c",
        script,
        "sh",
        mask.as_str(),
    ];
    args.extend_from_slice(devices);
    run_ip(&args, None).map(|_| ())
}

/// Processes whose network namespace is this one.
pub fn pids(name: &str) -> io::Result<Vec<u32>> {
    let out = run_ip(&["netns", "pids", name], None)?;
    Ok(out
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect())
}

/// Stop every process in the namespace (SIGTERM, then SIGKILL after `grace`) and delete it.
/// Never touches our own process, which may still hold threads inside.
pub fn destroy(name: &str, grace: Duration) -> io::Result<()> {
    if !namespace_path(name).exists() {
        return Ok(());
    }
    let me = std::process::id();
    let victims: Vec<u32> = pids(name)?.into_iter().filter(|&p| p != me).collect();
    for &pid in &victims {
        sys::send_signal(pid, libc::SIGTERM);
    }
    let deadline = std::time::Instant::now() + grace;
    while victims.iter().any(|&p| sys::process_alive(p)) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    for &pid in &victims {
        if sys::process_alive(pid) {
            sys::send_signal(pid, libc::SIGKILL);
        }
    }
    run_ip(&["netns", "delete", name], None).map(|_| ())
}

/// Names of existing named namespaces.
pub fn list() -> io::Result<Vec<String>> {
    let entries = match std::fs::read_dir(NETNS_DIR) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    Ok(names)
}

/// While alive, the calling thread is inside the named namespace; dropping it returns. If the
/// return fails the thread would keep working in the wrong namespace, so that aborts.
pub struct Entered {
    original: File,
}

impl Entered {
    pub fn new(name: &str) -> io::Result<Self> {
        let original = sys::current_netns()?;
        let target = File::open(namespace_path(name))
            .map_err(|e| io::Error::new(e.kind(), format!("namespace {name}: {e}")))?;
        sys::set_netns(&target)?;
        Ok(Entered { original })
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        if let Err(e) = sys::set_netns(&self.original) {
            eprintln!("netemu: cannot return to the original network namespace: {e}");
            std::process::abort();
        }
    }
}

/// Run `f` with the calling thread inside the named namespace. Sockets created in `f` stay
/// bound to that namespace afterwards.
pub fn run_in<T>(name: &str, f: impl FnOnce() -> T) -> io::Result<T> {
    let _inside = Entered::new(name)?;
    Ok(f())
}

/// Write a sysctl under `/proc/sys/` for the calling thread's current network namespace.
pub fn write_sysctl(key: &str, value: &str) -> io::Result<()> {
    let path = Path::new("/proc/sys").join(key);
    std::fs::write(&path, value)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

/// The pid embedded in a prefix `<family><pid>...` (default prefixes: `netemu<pid>x<n>`).
fn prefix_owner(name: &str, family: &str) -> Option<u32> {
    let rest = name.strip_prefix(family)?;
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

/// Delete namespaces starting with `prefix-`; with `only_orphans`, `prefix` names a family
/// (`netemu`) and only namespaces whose creating process is gone are removed.
pub fn cleanup(prefix: &str, only_orphans: bool) -> io::Result<Vec<String>> {
    let mut removed = Vec::new();
    for name in list()? {
        let matches = if only_orphans {
            prefix_owner(&name, prefix).is_some_and(|pid| !sys::process_alive(pid))
        } else {
            name.starts_with(&format!("{prefix}-"))
        };
        if matches {
            destroy(&name, Duration::from_millis(500))?;
            removed.push(name);
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_prefixes_name_their_owner() {
        assert_eq!(prefix_owner("netemu1234x0-s", "netemu"), Some(1234));
        assert_eq!(prefix_owner("netemux-s", "netemu"), None);
        assert_eq!(prefix_owner("other1234-s", "netemu"), None);
    }
}
