//! Datagrams through the shim: `sendto`/`connect`+`send` to an overlay endpoint, a bound UDP
//! socket that receives overlay datagrams with the true overlay source (and still gets kernel
//! datagrams), offload options refused so programs fall back, and real programs (iperf3 -u,
//! nc -u, socat UDP).

use std::process::Command;
use std::time::Duration;
use weft_tests::shim::{free_port, run_ok, Bg, PYTHON};
use weft_tests::{require_tool, wait_for, Overlay};

const LIMIT: Duration = Duration::from_secs(120);

const RECEIVER: &str = r#"
import socket, sys
u = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
u.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
u.bind(('::', int(sys.argv[1])))
print('ready', flush=True)
for _ in range(int(sys.argv[2])):
    data, src = u.recvfrom(70000)
    print(len(data), data.split(b':')[0].decode(), src[0], flush=True)
    u.sendto(b'reply %d' % len(data), src)
"#;

const SENDER: &str = r#"
import errno, socket, sys
ip, port = sys.argv[1], int(sys.argv[2])
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.settimeout(10)
for size in (8, 1400, 9000, 65000):
    msg = b'sendto:'.ljust(size, b'.')
    u.sendto(msg, (ip, port))
    data, src = u.recvfrom(100)
    print(data.decode(), src[0], src[1] == port, flush=True)
try:
    u.setsockopt(socket.SOL_UDP, 103, 1400)  # UDP_SEGMENT
    print('UDP_SEGMENT accepted')
except OSError as e:
    print('UDP_SEGMENT', errno.errorcode[e.errno])
c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
c.connect((ip, port))
c.send(b'connected:send')
c.settimeout(10)
print(c.recv(100).decode(), c.getpeername()[0], c.getsockname()[0], flush=True)
"#;

#[test]
fn datagrams_reach_a_bound_socket_with_their_overlay_source() {
    let o = Overlay::ready_chain(3, "");
    let port = free_port();
    let mut rx = o.shim(3, PYTHON);
    rx.args(["-c", RECEIVER, &port.to_string(), "6"]);
    let mut rx = Bg::spawn(rx, &o.dir, "udp-receiver");
    wait_for(
        Duration::from_secs(15),
        || rx.stdout().contains("ready"),
        || "receiver did not start".into(),
    );
    let mut tx = o.shim(1, PYTHON);
    tx.args(["-c", SENDER, &o.ip(3), &port.to_string()]);
    let out = run_ok(tx, &o.dir, "udp-sender", LIMIT);
    let (n1, n3) = (o.ip(1), o.ip(3));
    let mut want = String::new();
    for size in [8, 1400, 9000, 65000] {
        want += &format!("reply {size} {n3} True\n");
    }
    want += &format!("UDP_SEGMENT ENOPROTOOPT\nreply 14 {n3} {n1}\n");
    assert_eq!(out, want);
    // A kernel datagram to the same socket still arrives, with its kernel source.
    let mut kernel = Command::new(PYTHON);
    kernel.args([
        "-c",
        "import socket,sys; u=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); \
         u.sendto(b'kernel', ('127.0.0.1', int(sys.argv[1]))); u.settimeout(10); print(u.recv(100).decode())",
        &port.to_string(),
    ]);
    assert_eq!(run_ok(kernel, &o.dir, "kernel-sender", LIMIT), "reply 6\n");
    let seen = rx.success(LIMIT);
    let mut want = "ready\n".to_string();
    for size in [8, 1400, 9000, 65000] {
        want += &format!("{size} sendto ::ffff:{n1}\n");
    }
    want += &format!("14 connected ::ffff:{n1}\n6 kernel ::ffff:127.0.0.1\n");
    assert_eq!(seen, want);
}

#[test]
fn iperf3_udp_across_a_three_node_chain() {
    require_tool("iperf3");
    let o = Overlay::ready_chain(3, "");
    let port = free_port();
    let mut server = o.shim(3, "iperf3");
    server.args(["-s", "-p", &port.to_string(), "--forceflush"]);
    let server = Bg::spawn(server, &o.dir, "iperf3-server");
    o.wait_listener(3, port);
    for (test, extra) in [&[][..], &["-R"][..]].into_iter().enumerate() {
        weft_tests::shim::iperf3_ready(&server, test + 1);
        let mut client = o.shim(1, "iperf3");
        client
            .args(["-c", &o.ip(3), "-p", &port.to_string()])
            .args(["-u", "-b", "50M", "-t", "5", "-J"])
            .args(extra);
        let out = run_ok(client, &o.dir, "iperf3-udp", LIMIT);
        let j: serde_json::Value = serde_json::from_str(&out).expect("iperf3 JSON");
        assert!(j["error"].is_null(), "{extra:?}: {}", j["error"]);
        let sum = &j["end"]["sum"];
        let packets = sum["packets"].as_u64().unwrap_or(0);
        let lost = sum["lost_packets"].as_u64().unwrap_or(u64::MAX);
        eprintln!(
            "iperf3 -u -b 50M {extra:?}: {:.1} Mbit/s, {lost}/{packets} lost",
            sum["bits_per_second"].as_f64().unwrap_or(0.0) / 1e6
        );
        assert!(packets > 10_000, "{extra:?}: {sum}");
        // A clean chain far below its capacity: loss stays small.
        assert!(lost * 20 < packets, "{extra:?}: {lost} of {packets} lost");
    }
    assert!(
        server
            .stdout()
            .contains(&format!("Accepted connection from {}", o.ip(1))),
        "{}",
        server.stdout()
    );
}

#[test]
fn netcat_ncat_and_socat_udp() {
    for t in ["nc", "ncat", "socat"] {
        require_tool(t);
    }
    let o = Overlay::ready_chain(3, "");
    let n3 = o.ip(3);

    // nc -u: the server learns the client from the first datagram (MSG_PEEK) and connects.
    let port = free_port();
    let mut server = o.shim(3, "nc");
    server.args(["-u", "-l", &port.to_string()]);
    let server = Bg::spawn(server, &o.dir, "nc-udp-server");
    std::thread::sleep(Duration::from_millis(500));
    let mut client = o.shim(1, "sh");
    client.args([
        "-c",
        &format!("(echo one; sleep 0.3; echo two; sleep 1) | nc -u -q 1 {n3} {port}"),
    ]);
    run_ok(client, &o.dir, "nc-udp-client", LIMIT);
    wait_for(
        Duration::from_secs(10),
        || server.stdout() == "one\ntwo\n",
        || format!("nc -u server got {:?}", server.stdout()),
    );

    // ncat -u, the other way round: the client on node 1 sends, the server on node 3 prints.
    let port = free_port();
    let mut server = o.shim(3, "ncat");
    server.args(["-u", "-l", &port.to_string()]);
    let server = Bg::spawn(server, &o.dir, "ncat-udp-server");
    std::thread::sleep(Duration::from_millis(500));
    let mut client = o.shim(1, "sh");
    client.args([
        "-c",
        &format!("(echo three; sleep 1) | ncat -u --send-only {n3} {port}"),
    ]);
    run_ok(client, &o.dir, "ncat-udp-client", LIMIT);
    wait_for(
        Duration::from_secs(10),
        || server.stdout() == "three\n",
        || format!("ncat -u server got {:?}", server.stdout()),
    );

    // socat: a UDP echo on node 3, a client on node 1.
    let port = free_port();
    let mut server = o.shim(3, "socat");
    server.args([&format!("UDP-RECVFROM:{port},fork"), "EXEC:cat"]);
    let _server = Bg::spawn(server, &o.dir, "socat-udp-server");
    std::thread::sleep(Duration::from_millis(500));
    let mut client = o.shim(1, "sh");
    client.args([
        "-c",
        &format!("echo through-socat-udp | socat -t 3 - UDP:{n3}:{port}"),
    ]);
    assert_eq!(
        run_ok(client, &o.dir, "socat-udp-client", LIMIT),
        "through-socat-udp\n"
    );
}

#[test]
fn every_datagram_call_sees_overlay_names() {
    let o = Overlay::ready_chain(3, "");
    let exe = weft_tests::shim::c_program("dgram_calls");
    let port = free_port();
    let mut server = o.shim(3, exe.to_str().unwrap());
    server.args(["server", &port.to_string()]);
    let server = Bg::spawn(server, &o.dir, "dgram-server");
    wait_for(
        Duration::from_secs(15),
        || server.stdout().contains("ready"),
        || format!("server did not start: {}", server.stderr()),
    );
    let mut client = o.shim(1, exe.to_str().unwrap());
    client.args(["client", &o.ip(3), &port.to_string(), &o.ip(1)]);
    let out = run_ok(client, &o.dir, "dgram-client", LIMIT);
    assert!(out.ends_with("0 failures\n"), "{out}");
}

/// Every test above again, with ring mode off in the shimmed programs.
#[test]
fn all_again_with_rings_off() {
    weft_tests::shim::rerun_with_rings_off("all_again_with_rings_off");
}
