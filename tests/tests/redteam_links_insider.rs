//! Red team, network side, from the inside: the test plays node 4, an admitted node with its
//! own key and an authenticated, encrypted link to daemon 1 (it runs weft-secure's link
//! machine itself), and lies. It must not be able to speak for another node, to invent nodes,
//! to crash or pin anyone with the largest sequence number, to inject datagrams from made-up
//! sources, or to claim a listener's session with a SYN in another node's name.

use serde_json::Value;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use weft_secure::{LinkConfig, Links, Opened, PeerConfig, SecretKey};
use weft_tests::spoof;
use weft_tests::Overlay;

/// Node 4 as a puppet: a real link (handshake, hellos) to daemon 1, and whatever packets the
/// test wants to send over it.
struct Puppet {
    sock: UdpSocket,
    links: Links,
    key: Arc<SecretKey>,
    node: Ipv4Addr,
    peer: SocketAddr,
    incarnation: u32,
    peer_incarnation: u32,
    hello_seq: u32,
    started: std::time::Instant,
    last_hello: Option<std::time::Instant>,
}

impl Puppet {
    fn new(o: &Overlay) -> Puppet {
        let key = Arc::new(weft_secure::read_key_file(&o.key_file(4)).expect("key 4"));
        let node: Ipv4Addr = o.ip(4).parse().expect("ip");
        let peer: SocketAddr = format!("{}:7470", o.ip(1)).parse().expect("addr");
        let sock = UdpSocket::bind(format!("{}:7470", o.ip(4))).expect("bind node 4");
        sock.set_read_timeout(Some(Duration::from_millis(5)))
            .expect("timeout");
        let links = Links::new(
            key.clone(),
            LinkConfig {
                node: weft_core::NodeId::from(node),
                peers: vec![PeerConfig {
                    addr: peer,
                    node: None,
                    key: Some(o.public_key(1)),
                }],
                admitted: None,
                wall_clock_us: 1 << 60,
            },
            weft_core::Instant::ZERO,
        );
        Puppet {
            sock,
            links,
            key,
            node,
            peer,
            incarnation: 0x4444_0001,
            peer_incarnation: 0,
            hello_seq: 0,
            started: std::time::Instant::now(),
            last_hello: None,
        }
    }

    fn now(&self) -> weft_core::Instant {
        weft_core::Instant::from_nanos(self.started.elapsed().as_nanos() as u64)
    }

    /// Seals and sends a node packet over the link (false without a session yet).
    fn send(&mut self, mut packet: Vec<u8>) -> bool {
        let now = self.now();
        if self.links.seal(now, self.peer, &mut packet, 0).is_err() {
            return false;
        }
        self.sock.send_to(&packet, self.peer).expect("send");
        true
    }

    /// Runs the link for `d`: handshakes, hellos every 100 ms, reading what daemon 1 sends.
    fn run(&mut self, d: Duration) {
        let end = std::time::Instant::now() + d;
        let mut buf = vec![0u8; 65536];
        while std::time::Instant::now() < end {
            let now = self.now();
            self.links.handle_timeout(now);
            while let Some((to, m)) = self.links.poll_transmit() {
                self.sock.send_to(&m, to).expect("send");
            }
            if self
                .last_hello
                .is_none_or(|t| t.elapsed() >= Duration::from_millis(100))
            {
                self.hello_seq += 1;
                let hello = spoof::hello(
                    self.node,
                    self.incarnation,
                    self.hello_seq,
                    self.peer_incarnation,
                );
                if self.send(hello) {
                    self.last_hello = Some(std::time::Instant::now());
                } else {
                    let now = self.now();
                    self.links.handle_timeout(now);
                }
            }
            if let Ok((n, from)) = self.sock.recv_from(&mut buf) {
                let now = self.now();
                if let Opened::Deliver(p) = self.links.open(now, from, &mut buf[..n]) {
                    self.peer_incarnation = u32::from_be_bytes([p[12], p[13], p[14], p[15]]);
                }
                while let Some((to, m)) = self.links.poll_transmit() {
                    self.sock.send_to(&m, to).expect("send");
                }
            }
        }
    }

    /// An advert signed with node 4's key, whatever origin it names.
    fn signed_advert(&self, origin: Ipv4Addr, seq: u64, links: &[(Ipv4Addr, u32)]) -> Vec<u8> {
        let mut a = spoof::advert(origin, seq, links);
        let sig = self.key.sign(weft_secure::domain::LINK_STATE, &a);
        a.extend_from_slice(&self.key.public().to_bytes());
        a.extend_from_slice(&sig);
        a
    }

    fn send_adverts(&mut self, adverts: &[Vec<u8>]) {
        let p = spoof::state(self.node, self.incarnation, adverts);
        assert!(self.send(p), "the puppet's link has a session");
    }
}

fn routes_to(status: &Value, ip: &str) -> bool {
    status["routes"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|r| r["dst"] == ip)
}

fn trust(status: &Value, name: &str) -> u64 {
    status["trust"][name].as_u64().expect("trust counter")
}

/// Daemons 1-2-3 in a chain, the puppet (node 4) linked to daemon 1 and up.
fn overlay_with_puppet() -> (Overlay, Puppet) {
    let o = Overlay::builder()
        .chain(3, "")
        .link(1, 4, "")
        .external(4)
        .start();
    let mut p = Puppet::new(&o);
    let link = format!("{}:7470", o.ip(4));
    let mut up = false;
    for _ in 0..100 {
        p.run(Duration::from_millis(100));
        let s = o.status(1);
        up = s["neighbors"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|n| n["addr"] == link.as_str() && n["state"] == "up");
        if up && routes_to(&s, &o.ip(3)) {
            break;
        }
    }
    assert!(up, "the puppet's link came up");
    (o, p)
}

#[test]
fn an_authenticated_neighbour_cannot_speak_for_others_nor_pin_its_sequence() {
    let (o, mut p) = overlay_with_puppet();
    let (n1, n2, n4) = (
        o.ip(1).parse::<Ipv4Addr>().expect("ip"),
        o.ip(2).parse::<Ipv4Addr>().expect("ip"),
        p.node,
    );
    let ip4 = o.ip(4);
    // Its own advert at 2^64-1: daemon 1 survives and routes to it.
    let a = p.signed_advert(n4, u64::MAX, &[(n1, 1000)]);
    p.send_adverts(&[a]);
    let mut reachable = false;
    for _ in 0..50 {
        p.run(Duration::from_millis(100));
        if routes_to(&o.status(1), &ip4) {
            reachable = true;
            break;
        }
    }
    assert!(reachable, "node 4 routed after its advert at 2^64-1");
    // The next one (wrapped to 5, listing no links) is newer: the maximum pinned nothing.
    let a = p.signed_advert(n4, 5, &[]);
    p.send_adverts(&[a]);
    let mut withdrawn = false;
    for _ in 0..50 {
        p.run(Duration::from_millis(100));
        if !routes_to(&o.status(1), &ip4) {
            withdrawn = true;
            break;
        }
    }
    assert!(withdrawn, "an advert after 2^64-1 still replaced it");
    let a = p.signed_advert(n4, 6, &[(n1, 1000)]);
    p.send_adverts(&[a]);

    // Speaking for node 2, and inventing nodes, with its own (admitted) key.
    let s0 = o.status(1);
    let fake_a: Ipv4Addr = "8.8.8.8".parse().expect("ip");
    let fake_b: Ipv4Addr = "10.66.66.66".parse().expect("ip");
    let forged = vec![
        p.signed_advert(
            n2,
            u64::MAX / 2,
            &[(n1, 1), (n4, 1), (fake_a, 1), (fake_b, 1)],
        ),
        p.signed_advert(fake_a, 1, &[(n2, 1), (n4, 1)]),
        p.signed_advert(fake_b, 1, &[(n2, 1), (n4, 1)]),
    ];
    // And a membership record "by" node 2 (present in 239.1.2.3), signed by node 4.
    let mut rec = Vec::new();
    rec.extend_from_slice(&u32::from(n2).to_be_bytes());
    rec.extend_from_slice(&[239, 1, 2, 3]);
    rec.extend_from_slice(&u64::MAX.to_be_bytes());
    rec.extend_from_slice(&1u32.to_be_bytes());
    let mut body = rec.clone();
    body.push(1);
    let sig = p.key.sign(weft_secure::domain::MEMBERSHIP, &body);
    rec.push(1 | 8);
    rec.extend_from_slice(&sig);
    let mut state = spoof::state(p.node, p.incarnation, &forged);
    let count = u16::from_be_bytes([state[16], state[17]]) + 1;
    state[16..18].copy_from_slice(&count.to_be_bytes());
    state.push(2);
    state.extend_from_slice(&(rec.len() as u16).to_be_bytes());
    state.extend_from_slice(&rec);
    assert!(p.send(state));
    let mut s1 = o.status(1);
    for _ in 0..50 {
        p.run(Duration::from_millis(100));
        s1 = o.status(1);
        if trust(&s1, "unadmitted") >= trust(&s0, "unadmitted") + 3
            && trust(&s1, "bad_signature") > trust(&s0, "bad_signature")
        {
            break;
        }
    }
    assert!(
        trust(&s1, "unadmitted") >= trust(&s0, "unadmitted") + 3,
        "forged adverts refused and counted: {}",
        s1["trust"]
    );
    assert!(
        trust(&s1, "bad_signature") > trust(&s0, "bad_signature"),
        "forged membership refused and counted: {}",
        s1["trust"]
    );
    let known = s1["known_nodes"].to_string();
    assert!(
        !known.contains("8.8.8.8") && !known.contains("10.66.66.66"),
        "{known}"
    );
    // Node 2's genuine state still rules: 1 reaches 3 through 2.
    assert_eq!(o.path(1, 3), vec![o.ip(1), o.ip(2), o.ip(3)]);
    let groups = s1["multicast"].to_string();
    assert!(
        !groups.contains("239.1.2.3"),
        "no membership for node 2: {groups}"
    );
}

#[test]
fn an_authenticated_neighbour_cannot_inject_made_up_sources_or_claim_a_session() {
    let (o, mut p) = overlay_with_puppet();
    let n3: Ipv4Addr = o.ip(3).parse().expect("ip");
    let n1: Ipv4Addr = o.ip(1).parse().expect("ip");
    // A datagram "from" 10.1.2.3:53 to a receiver on node 3, relayed by daemon 1.
    let recv = o.spawn_weft(
        3,
        &["recv", "--port", "9600", "--count", "1", "--timeout", "15s"],
    );
    std::thread::sleep(Duration::from_millis(300));
    let s0 = o.status(1);
    let src: SocketAddrV4 = "10.1.2.3:53".parse().expect("addr");
    for i in 0..20u32 {
        let d = spoof::routed(
            p.node,
            p.incarnation,
            1,
            src,
            SocketAddrV4::new(n3, 9600),
            &spoof::datagram_body(i + 1, b"spoofed"),
        );
        assert!(p.send(d));
    }
    p.run(Duration::from_millis(300));
    let s1 = o.status(1);
    let dropped = s1["counters"]["unknown_source"].as_u64().expect("counter")
        - s0["counters"]["unknown_source"].as_u64().expect("counter");
    assert!(
        dropped >= 20,
        "made-up sources dropped and counted: {dropped}"
    );
    o.weft_ok(
        2,
        &["send", "--to", &format!("{}:9600", o.ip(3)), "genuine"],
    );
    let mut out = String::new();
    let mut child = recv;
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .expect("read");
    let _ = child.wait();
    assert!(
        out.contains("genuine") && !out.contains("10.1.2.3"),
        "{out}"
    );

    // SYNs in node 3's name to a one-shot listener on node 1: the SYN|ACK goes to the real
    // node 3, which knows no such session, so nothing is ever announced to the listener.
    let port = 9700u16;
    let listener = o.spawn_listen(1, port, Stdio::null());
    o.wait_listening(1, port);
    for i in 0..10u32 {
        let syn = spoof::syn(0x5150_0000 + i, 41_000 + i as u16, port);
        let d = spoof::routed(
            p.node,
            p.incarnation,
            2,
            SocketAddrV4::new(n3, 41_000 + i as u16),
            SocketAddrV4::new(n1, port),
            &syn,
        );
        assert!(p.send(d));
    }
    p.run(Duration::from_millis(500));
    let mut cat = std::process::Command::new(weft_tests::weft_bin())
        .arg("--socket")
        .arg(o.socket(3))
        .args(["cat", &format!("{}:{port}", o.ip(1))])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("weft cat");
    cat.stdin
        .take()
        .expect("stdin")
        .write_all(b"the genuine session")
        .expect("write");
    let mut listener = listener;
    let mut got = String::new();
    let mut stdout = listener.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let _ = stdout.read_to_string(&mut got);
        got
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while listener.try_wait().ok().flatten().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = listener.kill();
            panic!("the listener never finished: a spoofed SYN took it");
        }
        p.run(Duration::from_millis(50));
    }
    let _ = cat.wait();
    assert_eq!(reader.join().expect("reader"), "the genuine session");
}
