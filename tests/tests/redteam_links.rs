//! Red team, network side: an attacker on the same machine sends crafted UDP from a raw socket,
//! with the source address and port of a real neighbour, to real daemons on 127.T.0.N (issue
//! 17). Each test asserts that the attack is rejected — its effect is absent and the genuine
//! traffic it targets still works — and that the rejection is counted in `weft status --json`.
//! Made-up node ids (8.8.8.8, 10.66.66.66, 10.1.2.3) appear only inside packet contents; every
//! packet goes to a 127.T.0.N daemon.

use serde_json::Value;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::{Child, Stdio};
use std::time::Duration;
use weft_tests::spoof::{self, Spoofer};
use weft_tests::{wait_for, Overlay};

fn addr(o: &Overlay, n: usize) -> SocketAddrV4 {
    SocketAddrV4::new(ip(o, n), 7470)
}

fn ip(o: &Overlay, n: usize) -> Ipv4Addr {
    o.ip(n).parse().expect("node ip")
}

/// Every packet the link layer refused, whatever the reason.
fn rejected(status: &Value) -> u64 {
    let c = &status["security"]["counters"];
    [
        "not_a_neighbour",
        "malformed",
        "unauthenticated",
        "unknown_key",
        "replayed",
        "auth_failed",
        "handshake_bad_mac",
        "handshake_invalid",
        "handshake_wrong_key",
        "handshake_replayed",
        "handshake_rate_limited",
        "handshake_unexpected",
    ]
    .iter()
    .map(|k| c[k].as_u64().unwrap_or(0))
    .sum()
}

fn counter(status: &Value, name: &str) -> u64 {
    status["security"]["counters"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no security counter {name}"))
}

fn neighbour<'a>(status: &'a Value, addr: &str) -> &'a Value {
    status["neighbors"]
        .as_array()
        .and_then(|a| a.iter().find(|n| n["addr"] == addr))
        .unwrap_or_else(|| panic!("no neighbour {addr}"))
}

fn encrypted_overlay(nodes: usize) -> Overlay {
    let o = Overlay::builder().chain(nodes, "").start();
    o.wait_converged(Duration::from_secs(20));
    for n in 1..=nodes {
        let s = o.status(n);
        assert_eq!(s["security"]["mode"], "encrypted");
        for l in s["security"]["links"].as_array().expect("links") {
            assert_eq!(l["encrypted"], true, "node {n}: {l}");
        }
    }
    o
}

/// Waits until the daemon counted at least `at_least` more rejections than `before`.
fn wait_rejected(o: &Overlay, n: usize, before: u64, at_least: u64) -> u64 {
    let now = std::cell::Cell::new(before);
    wait_for(
        Duration::from_secs(10),
        || {
            now.set(rejected(&o.status(n)));
            now.get() >= before + at_least
        },
        || {
            format!(
                "node {n}: only {} of {at_least} spoofed packets counted",
                now.get() - before
            )
        },
    );
    now.get() - before
}

/// A child's stdout, or a panic if it does not finish within `secs` (it is killed).
fn output_within(mut child: Child, secs: u64, what: &str) -> String {
    let mut out = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {secs} s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    reader.join().expect("reader")
}

#[test]
fn spoofed_link_state_cannot_add_nodes() {
    let o = encrypted_overlay(3);
    let spoofer = Spoofer::new();
    let (victim, neighbour_addr) = (addr(&o, 1), addr(&o, 2));
    let n2 = ip(&o, 2);
    let fake_a: Ipv4Addr = "8.8.8.8".parse().expect("ip");
    let fake_b: Ipv4Addr = "10.66.66.66".parse().expect("ip");
    // "From" node 2: its own advert now lists the made-up nodes, and theirs list it back.
    let adverts = vec![
        spoof::advert(
            n2,
            u64::MAX / 2,
            &[(ip(&o, 1), 1), (ip(&o, 3), 1), (fake_a, 1), (fake_b, 1)],
        ),
        spoof::advert(fake_a, 1, &[(n2, 1)]),
        spoof::advert(fake_b, 1, &[(n2, 1)]),
    ];
    let before = rejected(&o.status(1));
    let mut sent = 0;
    for i in 0..100u32 {
        let plain = spoof::state(n2, i, &adverts);
        spoofer.send(neighbour_addr, victim, &plain);
        spoofer.send(
            neighbour_addr,
            victim,
            &spoof::with_forged_trailer(plain, i as u16, u64::from(i)),
        );
        sent += 2;
    }
    wait_rejected(&o, 1, before, sent);
    let s = o.status(1);
    let known: Vec<String> = s["known_nodes"]
        .as_array()
        .expect("known_nodes")
        .iter()
        .filter_map(|v| v.as_str().map(String::from))
        .collect();
    for fake in ["8.8.8.8", "10.66.66.66"] {
        assert!(
            !known.contains(&fake.to_string()),
            "{fake} was added: {known:?}"
        );
        assert!(o.path(1, 3).iter().all(|h| h != fake));
    }
    assert!(
        counter(&s, "unauthenticated") >= 100,
        "plain packets counted as unauthenticated"
    );
    assert_eq!(
        o.path(1, 3),
        vec![o.ip(1), o.ip(2), o.ip(3)],
        "routing untouched"
    );
}

#[test]
fn spoofed_hellos_with_new_incarnations_cannot_reset_a_link() {
    let o = encrypted_overlay(2);
    let spoofer = Spoofer::new();
    let s0 = o.status(1);
    let restarts = s0["counters"]["neighbor_restarts"]
        .as_u64()
        .expect("restarts");
    let up0 = neighbour(&s0, &addr(&o, 2).to_string())["up_for_ms"]
        .as_u64()
        .expect("up");
    let before = rejected(&s0);
    let my_incarnation = 0; // unknown to the attacker; any value
    for i in 0..300u32 {
        let hello = spoof::hello(ip(&o, 2), 0x5000_0000 + i, i, my_incarnation);
        spoofer.send(addr(&o, 2), addr(&o, 1), &hello);
        if i % 50 == 0 {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    wait_rejected(&o, 1, before, 300);
    let s1 = o.status(1);
    assert_eq!(
        s1["counters"]["neighbor_restarts"].as_u64(),
        Some(restarts),
        "no restart was believed"
    );
    let n = neighbour(&s1, &addr(&o, 2).to_string());
    assert_eq!(n["state"], "up");
    assert!(
        n["up_for_ms"].as_u64().expect("up") > up0,
        "the link was never reset"
    );
}

#[test]
fn spoofed_datagram_from_a_made_up_source_never_reaches_recv() {
    let o = encrypted_overlay(3);
    let spoofer = Spoofer::new();
    let port = 9300;
    let recv = o.spawn_weft(
        1,
        &[
            "recv",
            "--port",
            &port.to_string(),
            "--count",
            "1",
            "--timeout",
            "15s",
        ],
    );
    wait_for(
        Duration::from_secs(10),
        || {
            o.status(1)["datagram_ports"]
                .as_array()
                .is_some_and(|p| p.iter().any(|v| v == port))
        },
        || "weft recv did not register".into(),
    );
    let before = rejected(&o.status(1));
    let src: SocketAddrV4 = "10.1.2.3:53".parse().expect("addr");
    let dst = SocketAddrV4::new(ip(&o, 1), port);
    for i in 0..50u32 {
        let p = spoof::routed(
            ip(&o, 2),
            i,
            1,
            src,
            dst,
            &spoof::datagram_body(i + 1, b"spoofed"),
        );
        spoofer.send(addr(&o, 2), addr(&o, 1), &p);
    }
    wait_rejected(&o, 1, before, 50);
    o.weft_ok(3, &["send", "--to", &dst.to_string(), "genuine"]);
    let out = output_within(recv, 20, "weft recv");
    assert!(
        out.contains("genuine"),
        "the genuine datagram arrived first: {out}"
    );
    assert!(
        !out.contains("spoofed") && !out.contains("10.1.2.3"),
        "{out}"
    );
}

#[test]
fn spoofed_syn_cannot_take_a_one_shot_listener() {
    let o = encrypted_overlay(3);
    let spoofer = Spoofer::new();
    let port = 9400u16;
    let listener = o.spawn_listen(1, port, Stdio::null());
    o.wait_listening(1, port);
    let before = rejected(&o.status(1));
    let dst = SocketAddrV4::new(ip(&o, 1), port);
    for i in 0..50u32 {
        for src in [
            SocketAddrV4::new(ip(&o, 2), 40_000),
            "10.1.2.3:53".parse().expect("addr"),
        ] {
            let syn = spoof::syn(0x1234_0000 + i, src.port(), port);
            spoofer.send(
                addr(&o, 2),
                addr(&o, 1),
                &spoof::routed(ip(&o, 2), 1, 2, src, dst, &syn),
            );
        }
    }
    wait_rejected(&o, 1, before, 100);
    let mut cat = std::process::Command::new(weft_tests::weft_bin())
        .arg("--socket")
        .arg(o.socket(3))
        .args(["cat", &dst.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("weft cat");
    cat.stdin
        .take()
        .expect("stdin")
        .write_all(b"the genuine client's data")
        .expect("write");
    let got = output_within(listener, 20, "weft listen");
    let _ = cat.wait();
    assert_eq!(
        got, "the genuine client's data",
        "the genuine client got the session"
    );
}

#[test]
fn advert_with_the_largest_sequence_number_is_harmless() {
    let o = encrypted_overlay(3);
    let spoofer = Spoofer::new();
    let before = rejected(&o.status(1));
    let (n1, n2) = (ip(&o, 1), ip(&o, 2));
    for (i, origin) in [n1, n2].into_iter().enumerate() {
        let a = spoof::advert(origin, u64::MAX, &[(n2, 1)]);
        let p = spoof::state(n2, 7, &[a]);
        spoofer.send(addr(&o, 2), addr(&o, 1), &p);
        spoofer.send(
            addr(&o, 2),
            addr(&o, 1),
            &spoof::with_forged_trailer(p, i as u16, 9),
        );
    }
    wait_rejected(&o, 1, before, 4);
    // Still alive, still routing, and its own adverts still win.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(o.path(1, 3), vec![o.ip(1), o.ip(2), o.ip(3)]);
    assert_eq!(o.path(3, 1), vec![o.ip(3), o.ip(2), o.ip(1)]);
}

#[test]
fn handshake_flood_costs_bounded_work_and_the_link_stays_up() {
    let o = encrypted_overlay(2);
    let spoofer = Spoofer::new();
    // Mallory knows node 1's public key and has a key of her own: her initiations pass mac1
    // and are well-formed Noise, so each one a responder computes costs it Diffie-Hellman.
    let mallory = std::sync::Arc::new(weft_secure::SecretKey::generate());
    let start = weft_core::Instant::from_nanos(1);
    let mut initiations = Vec::new();
    for i in 0..200u64 {
        let mut links = weft_secure::Links::new(
            mallory.clone(),
            weft_secure::LinkConfig {
                node: weft_core::NodeId::from(ip(&o, 2)),
                peers: vec![weft_secure::PeerConfig {
                    addr: addr(&o, 1).into(),
                    node: None,
                    key: Some(o.public_key(1)),
                }],
                admitted: None,
                wall_clock_us: u64::MAX / 2 + i,
            },
            start,
        );
        links.handle_timeout(start);
        initiations.push(links.poll_transmit().expect("initiation").1);
    }
    let s0 = o.status(1);
    let computed0 = counter(&s0, "handshakes_computed");
    let before = rejected(&s0);
    let t0 = std::time::Instant::now();
    let mut sent = 0u64;
    for round in 0..50 {
        for init in &initiations {
            spoofer.send(addr(&o, 2), addr(&o, 1), init);
            sent += 1;
        }
        // Junk that does not even know the key.
        for j in 0..100u32 {
            let mut junk = init_like(&initiations[0]);
            junk[20..24].copy_from_slice(&(round * 1000 + j).to_be_bytes());
            spoofer.send(addr(&o, 2), addr(&o, 1), &junk);
            sent += 1;
        }
        std::thread::sleep(Duration::from_millis(5));
        if round % 10 == 0 {
            let s = o.status(1);
            assert_eq!(
                neighbour(&s, &addr(&o, 2).to_string())["state"],
                "up",
                "link up during the flood"
            );
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let counted = wait_rejected(&o, 1, before, sent / 2);
    let s1 = o.status(1);
    let computed = counter(&s1, "handshakes_computed") - computed0;
    // One peer address: at most its handshake budget (4/s, burst 4), plus one genuine rekey.
    let bound = (4.0 * (secs + 2.0) + 4.0 + 2.0).ceil() as u64;
    println!(
        "flood: {sent} packets in {secs:.2} s, {counted} counted, {computed} handshakes computed (bound {bound}), {} cookie replies, {} bad mac",
        counter(&s1, "cookie_replies_sent") - counter(&s0, "cookie_replies_sent"),
        counter(&s1, "handshake_bad_mac") - counter(&s0, "handshake_bad_mac"),
    );
    assert!(
        computed <= bound,
        "{computed} handshakes computed, bound {bound}"
    );
    assert!(counter(&s1, "handshake_bad_mac") > counter(&s0, "handshake_bad_mac"));
    assert!(counter(&s1, "handshake_rate_limited") > counter(&s0, "handshake_rate_limited"));
    // Traffic still flows over the attacked link.
    let recv = o.spawn_weft(
        1,
        &["recv", "--port", "9500", "--count", "1", "--timeout", "10s"],
    );
    std::thread::sleep(Duration::from_millis(300));
    o.weft_ok(
        2,
        &[
            "send",
            "--to",
            &format!("{}:9500", o.ip(1)),
            "after the flood",
        ],
    );
    assert!(output_within(recv, 15, "weft recv").contains("after the flood"));
}

/// An initiation-sized packet with a wrong mac1.
fn init_like(init: &[u8]) -> Vec<u8> {
    let mut p = init.to_vec();
    let n = p.len();
    p[n - 32] ^= 0xff;
    p
}
