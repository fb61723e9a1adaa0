//! Pass-through: under the shim, everything not addressed to an overlay node behaves exactly
//! as without it — the same results and the same errno — with a daemon, without one, and
//! with a socket path nobody listens on.

use std::process::Command;
use std::time::Duration;
use weft_tests::shim::{c_program, free_port, run, run_ok, Bg, PYTHON};
use weft_tests::{require_tool, Overlay};

const LIMIT: Duration = Duration::from_secs(60);

#[test]
fn kernel_socket_calls_are_identical_under_the_shim() {
    let o = Overlay::ready_chain(2, "");
    let exe = c_program("passthrough");
    let plain = run_ok(Command::new(&exe), &o.dir, "plain", LIMIT);
    assert!(
        plain.contains("ECONNREFUSED") && plain.ends_with("done\n"),
        "{plain}"
    );

    let with_daemon = run_ok(o.shim(1, exe.to_str().unwrap()), &o.dir, "shim", LIMIT);
    assert_eq!(plain, with_daemon, "with a daemon");

    let mut no_daemon = o.shim(1, exe.to_str().unwrap());
    no_daemon.env_remove("WEFT_SOCKET");
    assert_eq!(
        plain,
        run_ok(no_daemon, &o.dir, "no-daemon", LIMIT),
        "without WEFT_SOCKET"
    );

    let mut dead = o.shim(1, exe.to_str().unwrap());
    dead.env("WEFT_SOCKET", o.dir.join("nobody-listens.sock"));
    assert_eq!(
        plain,
        run_ok(dead, &o.dir, "dead-socket", LIMIT),
        "with a dead socket path"
    );
}

fn iperf3_json(out: &str) -> serde_json::Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("iperf3 JSON: {e}\n{out}"))
}

#[test]
fn iperf3_on_kernel_addresses_is_untouched() {
    require_tool("iperf3");
    let o = Overlay::ready_chain(2, "");
    for udp in [false, true] {
        let port = free_port();
        // Server plain, client shimmed; then both shimmed.
        for shim_server in [false, true] {
            let mut server = if shim_server {
                o.shim(1, "iperf3")
            } else {
                Command::new("iperf3")
            };
            server.args(["-s", "-1", "-p", &port.to_string()]);
            let mut server = Bg::spawn(server, &o.dir, "iperf3-server");
            std::thread::sleep(Duration::from_millis(500));
            let mut client = o.shim(1, "iperf3");
            client.args(["-c", "127.0.0.1", "-p", &port.to_string(), "-t", "1", "-J"]);
            if udp {
                client.args(["-u", "-b", "20M"]);
            }
            let out = run_ok(client, &o.dir, "iperf3-client", LIMIT);
            let j = iperf3_json(&out);
            let bytes = if udp {
                j["end"]["sum"]["bytes"].as_u64()
            } else {
                j["end"]["sum_received"]["bytes"].as_u64()
            };
            assert!(
                bytes.unwrap_or(0) > 0,
                "udp={udp} shim_server={shim_server}: {out}"
            );
            server.success(LIMIT);
        }
    }
}

#[test]
fn everyday_tools_on_kernel_addresses_are_untouched() {
    for t in ["nc", "socat", "curl"] {
        require_tool(t);
    }
    let o = Overlay::ready_chain(2, "");
    let port = free_port();

    // netcat: shimmed server, shimmed client, a line each way is enough to see both work.
    let mut server = o.shim(1, "nc");
    server.args(["-l", "127.0.0.1", &port.to_string()]);
    let mut server = Bg::spawn(server, &o.dir, "nc-server");
    std::thread::sleep(Duration::from_millis(400));
    let mut client = o.shim(1, "sh");
    client.args(["-c", &format!("echo through-nc | nc -N 127.0.0.1 {port}")]);
    run_ok(client, &o.dir, "nc-client", LIMIT);
    assert_eq!(server.success(LIMIT), "through-nc\n");

    // socat echo server and client.
    let port = free_port();
    let mut server = o.shim(1, "socat");
    server.args([&format!("TCP4-LISTEN:{port},reuseaddr"), "EXEC:cat"]);
    let mut server = Bg::spawn(server, &o.dir, "socat-server");
    std::thread::sleep(Duration::from_millis(400));
    let mut client = o.shim(1, "sh");
    client.args([
        "-c",
        &format!("echo through-socat | socat -t 2 - TCP4:127.0.0.1:{port}"),
    ]);
    assert_eq!(
        run_ok(client, &o.dir, "socat-client", LIMIT),
        "through-socat\n"
    );
    server.success(LIMIT);

    // curl from python's http.server, both shimmed.
    let port = free_port();
    let www = o.dir.join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("hello.txt"), "hello over the kernel\n").unwrap();
    let mut server = o.shim(1, PYTHON);
    server.args([
        "-m",
        "http.server",
        "--bind",
        "127.0.0.1",
        &port.to_string(),
    ]);
    server.current_dir(&www);
    let _server = Bg::spawn(server, &o.dir, "http-server");
    let mut got = String::new();
    for _ in 0..50 {
        let mut curl = o.shim(1, "curl");
        curl.args(["-sf", &format!("http://127.0.0.1:{port}/hello.txt")]);
        let (st, out, _) = run(curl, &o.dir, "curl", LIMIT);
        if st.success() {
            got = out;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(got, "hello over the kernel\n");
}

/// Every test above again, with ring mode off in the shimmed programs.
#[test]
fn all_again_with_rings_off() {
    weft_tests::shim::rerun_with_rings_off("all_again_with_rings_off");
}
