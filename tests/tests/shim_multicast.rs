//! Multicast for unmodified programs under the shim, checked against the kernel: every option
//! spelling, the kernel's errors, getsockopt answers, and data through several member sockets
//! on one host (joined before and after bind, bound to the group, source-specific, two groups,
//! loop off, a leave and a close) give the same transcript as kernel multicast does.
//!
//! Both sides run in private network namespaces, so no multicast datagram can leave the
//! machine: the kernel's reference in one with a multicast route on a veth pair, the overlay's
//! (one `weftd` and the program under the shim) in one with no multicast route at all, where
//! the kernel alone would fail joins with `ENODEV` and sends with `ENETUNREACH`.

use std::process::Command;
use std::time::Duration;
use weft_tests::shim::{c_program, run, shim_lib};
use weft_tests::{require_tool, weftd_bin, Subnet};

const LIMIT: Duration = Duration::from_secs(120);
const PORT: &str = "45000";

/// Runs `script` with `sh` in a fresh network namespace (deleted when it exits).
fn in_namespace(script: &str, dir: &std::path::Path, name: &str) -> String {
    let mut cmd = Command::new("unshare");
    cmd.args(["--net", "sh", "-euc", script]);
    let (st, out, err) = run(cmd, dir, name, LIMIT);
    assert!(
        st.success(),
        "{name} failed ({st})\nstdout:\n{out}\nstderr:\n{err}"
    );
    out
}

/// The transcript with this host's address spelled `self` everywhere.
fn normalised(out: &str, self_ip: &str) -> String {
    out.replace(self_ip, "self")
}

#[test]
fn options_and_data_match_kernel_multicast() {
    for t in ["unshare", "ip", "sh"] {
        require_tool(t);
    }
    let subnet = Subnet::claim();
    let dir = std::path::PathBuf::from(format!("/tmp/weft-tests/{}", subnet.t));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("test dir");
    let prog = c_program("mcast_calls");
    let prog = prog.display();
    let groups = format!("239.77.{}", subnet.t);

    let kernel = in_namespace(
        &format!(
            "ip link set lo up
             ip link add v0 type veth peer name v1
             ip link set v0 up; ip link set v1 up
             ip addr add 10.99.0.1/24 dev v0
             ip route add 224.0.0.0/4 dev v0
             {prog} {groups} {PORT} 10.99.0.1"
        ),
        &dir,
        "kernel-reference",
    );

    // The same namespace shape as the overlay's below: no multicast route, so the kernel
    // alone refuses. Proves the shim's answers are its own.
    let bare = in_namespace(
        &format!("ip link set lo up; {prog} {groups} {PORT} 127.0.0.1"),
        &dir,
        "kernel-without-route",
    );
    assert!(bare.contains("join mreq: ENODEV"), "{bare}");
    assert!(bare.contains("sendto: ENETUNREACH"), "{bare}");

    let node = "127.66.0.1";
    let sock = dir.join("ns-node.sock");
    let key = dir.join("ns-node.key");
    weft_secure::write_key_file(&key, &weft_secure::SecretKey::generate(), true).expect("key file");
    let overlay = in_namespace(
        &format!(
            "ip link set lo up
             {weftd} --listen {node}:7470 --socket {sock} --proxy-ip 127.66.1.1 --key {key} 2>{log} &
             daemon=$!
             i=0; while [ ! -S {sock} ] && [ $i -lt 500 ]; do sleep 0.02; i=$((i+1)); done
             LD_PRELOAD={shim} WEFT_SOCKET={sock} {prog} {groups} {PORT} {node}
             kill $daemon",
            weftd = weftd_bin().display(),
            key = key.display(),
            sock = sock.display(),
            log = dir.join("ns-node.log").display(),
            shim = shim_lib().display(),
        ),
        &dir,
        "overlay",
    );
    let (kernel, overlay) = (normalised(&kernel, "10.99.0.1"), normalised(&overlay, node));
    let differences: Vec<String> = kernel
        .lines()
        .zip(overlay.lines())
        .filter(|(k, o)| k != o)
        .map(|(k, o)| format!("  kernel:  {k}\n  overlay: {o}"))
        .collect();
    assert!(
        differences.is_empty() && kernel.lines().count() == overlay.lines().count(),
        "the overlay's transcript differs from the kernel's:\n{}\n--- overlay transcript:\n{overlay}",
        differences.join("\n")
    );
    println!(
        "{} transcript lines identical (kernel multicast vs overlay under the shim)",
        kernel.lines().count()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
