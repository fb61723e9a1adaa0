//! Real, unmodified programs over the overlay through the shim: iperf3, netcat (OpenBSD and
//! ncat), socat, curl against python's http.server, and a python asyncio server and client.

use std::process::Command;
use std::time::Duration;
use weft_tests::shim::{free_port, iperf3_ready, random_file, run_ok, sha256, Bg, PYTHON};
use weft_tests::{require_tool, wait_for, Overlay};

const LIMIT: Duration = Duration::from_secs(180);

fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("iperf3 JSON: {e}\n{out}"))
}

#[test]
fn iperf3_tcp_across_a_three_node_chain() {
    require_tool("iperf3");
    let o = Overlay::ready_chain(3, "");
    let port = free_port();
    let mut server = o.shim(3, "iperf3");
    server.args(["-s", "-p", &port.to_string(), "--forceflush"]);
    let server = Bg::spawn(server, &o.dir, "iperf3-server");
    o.wait_listener(3, port);
    let modes: [&[&str]; 4] = [&[], &["-P", "4"], &["-R"], &["--bidir"]];
    for (test, extra) in modes.into_iter().enumerate() {
        iperf3_ready(&server, test + 1);
        let mut client = o.shim(1, "iperf3");
        client
            .args(["-c", &o.ip(3), "-p", &port.to_string(), "-t", "5", "-J"])
            .args(extra);
        let j = json(&run_ok(client, &o.dir, "iperf3-client", LIMIT));
        assert!(j["error"].is_null(), "{extra:?}: {}", j["error"]);
        let conn = &j["start"]["connected"][0];
        assert_eq!(conn["remote_host"], o.ip(3).as_str(), "{extra:?}");
        assert_eq!(conn["local_host"], o.ip(1).as_str(), "{extra:?}");
        let streams = j["start"]["connected"].as_array().map_or(0, |a| a.len());
        let want = match extra {
            ["-P", n] => n.parse().unwrap(),
            ["--bidir"] => 2,
            _ => 1,
        };
        assert_eq!(streams, want, "{extra:?}");
        if extra.is_empty() {
            // iperf3 reads TCP_INFO for these: the emulation must give sane figures.
            let sender = &j["end"]["streams"][0]["sender"];
            assert!(sender["max_snd_cwnd"].as_u64().unwrap_or(0) > 0, "{sender}");
            assert!(sender["mean_rtt"].as_u64().unwrap_or(0) > 0, "{sender}");
        }
        let received = j["end"]["sum_received"]["bytes"].as_u64().unwrap_or(0);
        assert!(received > 1_000_000, "{extra:?}: only {received} bytes");
        if extra == ["--bidir"] {
            let reverse = j["end"]["sum_received_bidir_reverse"]["bytes"]
                .as_u64()
                .unwrap_or(0);
            assert!(reverse > 1_000_000, "bidir reverse: only {reverse} bytes");
        }
        eprintln!(
            "iperf3 {extra:?}: {:.0} Mbit/s",
            j["end"]["sum_received"]["bits_per_second"]
                .as_f64()
                .unwrap_or(0.0)
                / 1e6
        );
    }
    // The server reports the overlay client's address.
    let report = server.stdout();
    assert!(
        report.contains(&format!("Accepted connection from {}", o.ip(1))),
        "{report}"
    );
    // The same server still serves an ordinary kernel client (no shim).
    iperf3_ready(&server, modes.len() + 1);
    let mut kernel = Command::new("iperf3");
    kernel.args(["-c", &o.ip(3), "-p", &port.to_string(), "-t", "1", "-J"]);
    let j = json(&run_ok(kernel, &o.dir, "iperf3-kernel", LIMIT));
    assert!(j["end"]["sum_received"]["bytes"].as_u64().unwrap_or(0) > 0);
}

/// Sends `input` from node 1 to a server on node 3 with the given tools; returns what the
/// server wrote.
fn transfer(
    o: &Overlay,
    server: &[&str],
    client: &str,
    input: &std::path::Path,
    port: u16,
) -> std::path::PathBuf {
    let out = o.dir.join(format!("received-{port}"));
    let mut srv = o.shim(3, "sh");
    srv.args(["-c", &format!("{} > {}", server.join(" "), out.display())]);
    let mut srv = Bg::spawn(srv, &o.dir, server[0]);
    o.wait_listener(3, port);
    let mut cli = o.shim(1, "sh");
    cli.args(["-c", &format!("{client} < {}", input.display())]);
    run_ok(
        cli,
        &o.dir,
        client.split(' ').next().unwrap_or("client"),
        LIMIT,
    );
    srv.success(LIMIT);
    out
}

#[test]
fn netcat_ncat_and_socat_move_files() {
    for t in ["nc", "ncat", "socat"] {
        require_tool(t);
    }
    let o = Overlay::ready_chain(3, "");
    let input = o.dir.join("input.bin");
    random_file(&input, 4 << 20, 0x5eed_0001);
    let want = sha256(&input);
    let n3 = o.ip(3);

    let port = free_port();
    let got = transfer(
        &o,
        &["nc", "-l", &port.to_string()],
        &format!("nc -N {n3} {port}"),
        &input,
        port,
    );
    assert_eq!(sha256(&got), want, "nc");

    let port = free_port();
    let got = transfer(
        &o,
        &["ncat", "-l", &port.to_string()],
        &format!("ncat --send-only {n3} {port}"),
        &input,
        port,
    );
    assert_eq!(sha256(&got), want, "ncat");

    let port = free_port();
    let got = transfer(
        &o,
        &[
            "socat",
            "-u",
            &format!("TCP-LISTEN:{port},reuseaddr"),
            "STDOUT",
        ],
        &format!("socat -u STDIN TCP:{n3}:{port}"),
        &input,
        port,
    );
    assert_eq!(sha256(&got), want, "socat");
}

#[test]
fn curl_downloads_100_mb_from_python_http_server() {
    require_tool("curl");
    let o = Overlay::ready_chain(3, "");
    let www = o.dir.join("www");
    std::fs::create_dir_all(&www).unwrap();
    let file = www.join("big.bin");
    random_file(&file, 100 << 20, 0x5eed_0100);
    let port = free_port();
    let mut server = o.shim(3, PYTHON);
    server
        .args(["-m", "http.server", &port.to_string()])
        .current_dir(&www);
    let _server = Bg::spawn(server, &o.dir, "http-server");
    o.wait_listener(3, port);
    let got = o.dir.join("downloaded.bin");
    let mut curl = o.shim(1, "curl");
    curl.args(["-sfS", "-o"])
        .arg(&got)
        .arg(format!("http://{}:{port}/big.bin", o.ip(3)));
    run_ok(curl, &o.dir, "curl", LIMIT);
    assert_eq!(sha256(&got), sha256(&file));
}

const ASYNC_SERVER: &str = r#"
import asyncio, sys
async def handle(r, w):
    print('peer', w.get_extra_info('peername')[0], flush=True)
    while data := await r.read(65536):
        w.write(data)
        await w.drain()
    w.close()
async def main():
    srv = await asyncio.start_server(handle, port=int(sys.argv[1]), reuse_address=True)
    print('ready', flush=True)
    async with srv:
        await srv.serve_forever()
asyncio.run(main())
"#;

const ASYNC_CLIENT: &str = r#"
import asyncio, sys
async def one(i):
    r, w = await asyncio.open_connection(sys.argv[1], int(sys.argv[2]))
    for k in range(50):
        msg = (f'{i}:{k}:' + 'x' * (k * 97)).encode()
        w.write(msg)
        await w.drain()
        assert await r.readexactly(len(msg)) == msg
    peer = w.get_extra_info('peername')[0]
    w.close()
    await w.wait_closed()
    return peer
async def main():
    peers = await asyncio.gather(*(one(i) for i in range(8)))
    print('ok', sorted(set(peers)))
asyncio.run(main())
"#;

#[test]
fn python_asyncio_echo_server_and_client() {
    let o = Overlay::ready_chain(3, "");
    let port = free_port();
    let mut server = o.shim(3, PYTHON);
    server.args(["-c", ASYNC_SERVER, &port.to_string()]);
    let server = Bg::spawn(server, &o.dir, "asyncio-server");
    o.wait_listener(3, port);
    let mut client = o.shim(1, PYTHON);
    client.args(["-c", ASYNC_CLIENT, &o.ip(3), &port.to_string()]);
    let out = run_ok(client, &o.dir, "asyncio-client", LIMIT);
    assert_eq!(out, format!("ok ['{}']\n", o.ip(3)));
    wait_for(
        Duration::from_secs(10),
        || server.stdout().matches("peer").count() == 8,
        || format!("server saw: {}", server.stdout()),
    );
    assert!(server
        .stdout()
        .lines()
        .filter(|l| l.starts_with("peer"))
        .all(|l| l == format!("peer {}", o.ip(1))));
}

/// Every test above again, with ring mode off in the shimmed programs.
#[test]
fn all_again_with_rings_off() {
    weft_tests::shim::rerun_with_rings_off("all_again_with_rings_off");
}
