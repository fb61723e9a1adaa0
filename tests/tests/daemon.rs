//! Real `weftd` processes: routing over the shortest path, rerouting around a cut and back,
//! restart detection, large datagrams, and configuration errors.

use std::io::{BufRead, BufReader};
use std::process::Command;
use std::time::Duration;
use weft_tests::{monotonic_ns, wait_for, weftd_bin, Overlay};

/// One line of `weft recv`: receive time, and the `seq=` / `t=` fields of generated payloads.
struct Received {
    at_ns: u64,
    seq: u64,
    sent_ns: u64,
}

fn parse_recv(line: &str) -> Option<Received> {
    let mut w = line.split_whitespace();
    let at_ns = w.next()?.parse().ok()?;
    let _src = w.next()?;
    let _len = w.next()?;
    let seq = w.next()?.strip_prefix("seq=")?.parse().ok()?;
    let sent_ns = w
        .next()?
        .strip_prefix("t=")?
        .trim_end_matches('.')
        .parse()
        .ok()?;
    Some(Received {
        at_ns,
        seq,
        sent_ns,
    })
}

/// 1 ─2ms─ 2 ─2ms─ 4 ─1ms─ 5, and 1 ─6ms─ 3 ─6ms─ 4: the shortest path 1→5 is via 2.
fn diamond_with_tail() -> Overlay {
    Overlay::builder()
        .link(1, 2, "delay=2ms")
        .link(2, 4, "delay=2ms")
        .link(1, 3, "delay=6ms")
        .link(3, 4, "delay=6ms")
        .link(4, 5, "delay=1ms")
        .start()
}

#[test]
fn reroutes_around_a_cut_link_and_back() {
    let o = diamond_with_tail();
    o.wait_converged(Duration::from_secs(15));
    let (n1, n2, n3, n4, n5) = (o.ip(1), o.ip(2), o.ip(3), o.ip(4), o.ip(5));
    wait_for(
        Duration::from_secs(10),
        || o.path(1, 5) == [n1.clone(), n2.clone(), n4.clone(), n5.clone()],
        || format!("1→5 should go via 2, got {:?}", o.path(1, 5)),
    );

    let mut recv = o.spawn_weft(5, &["recv", "--port", "9000", "--time", "mono"]);
    let stdout = recv.stdout.take().expect("recv stdout");
    let reader = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .filter_map(|l| parse_recv(&l))
            .collect::<Vec<_>>()
    });
    std::thread::sleep(Duration::from_millis(300));
    let to = format!("{n5}:9000");
    let mut send = o.spawn_weft(
        1,
        &["send", "--to", &to, "--count", "600", "--interval", "5ms"],
    );
    std::thread::sleep(Duration::from_millis(1000));
    let t_cut = monotonic_ns();
    o.weft_ok(1, &["link", "cut", &n2]);
    let _ = send.wait();
    std::thread::sleep(Duration::from_millis(300));
    let _ = recv.kill();
    let _ = recv.wait();
    let got = reader.join().expect("reader");

    let before = got.iter().filter(|r| r.sent_ns < t_cut).count();
    let after: Vec<&Received> = got.iter().filter(|r| r.sent_ns > t_cut).collect();
    assert!(
        before > 100,
        "traffic flowed before the cut ({before} datagrams)"
    );
    assert!(
        !after.is_empty(),
        "no datagram sent after the cut was delivered"
    );
    // The outage is the longest silence at the receiver after the cut; it ends with the first
    // datagram over the alternate path.
    let mut times: Vec<u64> = got
        .iter()
        .map(|r| r.at_ns)
        .filter(|&t| t + 50_000_000 > t_cut)
        .collect();
    times.sort_unstable();
    let (gap_start, gap_end) = times
        .windows(2)
        .map(|w| (w[0], w[1]))
        .max_by_key(|(a, b)| b - a)
        .expect("deliveries around the cut");
    let first = got
        .iter()
        .find(|r| r.at_ns == gap_end)
        .expect("first after the gap");
    let reroute_ms = (gap_end.saturating_sub(t_cut)) as f64 / 1e6;
    println!(
        "longest silence at the receiver: {:.1} ms",
        (gap_end - gap_start) as f64 / 1e6
    );

    let last_seq = got.iter().map(|r| r.seq).max().unwrap_or(0);
    let lost = (last_seq + 1) as usize - got.len();
    println!(
        "cut of link 1-2: first datagram over the alternate path {reroute_ms:.1} ms after the cut \
         (detection + reroute + 13 ms path); {lost} of {} datagrams lost meanwhile",
        last_seq + 1
    );
    assert_eq!(
        o.path(1, 5),
        [n1.clone(), n3.clone(), n4.clone(), n5.clone()],
        "rerouted via 3"
    );
    // Every datagram after the reroute arrived.
    let tail: Vec<u64> = got
        .iter()
        .filter(|r| r.at_ns > first.at_ns)
        .map(|r| r.seq)
        .collect();
    assert!(
        tail.windows(2).all(|w| w[1] == w[0] + 1),
        "no loss once rerouted"
    );

    o.weft_ok(1, &["link", "heal", &n2]);
    wait_for(
        Duration::from_secs(10),
        || o.path(1, 5) == [n1.clone(), n2.clone(), n4.clone(), n5.clone()],
        || {
            format!(
                "after heal 1→5 should go via 2 again, got {:?}",
                o.path(1, 5)
            )
        },
    );
}

#[test]
fn restarted_neighbour_is_detected_and_routes_recover() {
    let mut o = Overlay::builder().chain(3, "").start();
    o.wait_converged(Duration::from_secs(15));
    let n3 = o.ip(3);
    // Crash node 2 and bring it back before the dead interval: only its new incarnation
    // tells the neighbours it restarted.
    o.kill(2);
    o.start_daemon(2);
    wait_for(
        Duration::from_secs(10),
        || {
            o.status(1)["counters"]["neighbor_restarts"]
                .as_u64()
                .unwrap_or(0)
                >= 1
        },
        || "node 1 did not notice node 2's restart".into(),
    );
    o.wait_converged(Duration::from_secs(15));
    // A crash that lasts: the route through 2 disappears, then returns.
    o.kill(2);
    wait_for(
        Duration::from_secs(10),
        || {
            o.status(1)["routes"]
                .as_array()
                .is_some_and(|r| r.iter().all(|x| x["dst"] != n3.as_str()))
        },
        || "node 1 kept a route to 3 through the dead node 2".into(),
    );
    o.start_daemon(2);
    o.wait_converged(Duration::from_secs(15));
}

#[test]
fn large_datagrams_cross_the_overlay_whole() {
    let o = Overlay::builder().chain(3, "loss=0%").start();
    o.wait_converged(Duration::from_secs(15));
    let mut recv = o.spawn_weft(3, &["recv", "--port", "9100", "--count", "2"]);
    std::thread::sleep(Duration::from_millis(300));
    let to = format!("{}:9100", o.ip(3));
    o.weft_ok(1, &["send", "--to", &to, "--size", "65507"]);
    o.weft_ok(1, &["send", "--to", &to, "--size", "3000"]);
    let out = recv.wait_with_output_timeout();
    let lens: Vec<usize> = out
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2)?.parse().ok())
        .collect();
    assert_eq!(lens, vec![65507, 3000]);
    let too_big = o.weft(1, &["send", "--to", &to, "--size", "65508"]);
    assert!(
        !too_big.status.success(),
        "a datagram over 65507 bytes must be refused"
    );
}

trait WaitOutput {
    fn wait_with_output_timeout(&mut self) -> String;
}

impl WaitOutput for std::process::Child {
    fn wait_with_output_timeout(&mut self) -> String {
        wait_for(
            Duration::from_secs(10),
            || matches!(self.try_wait(), Ok(Some(_))),
            || "weft recv did not finish".into(),
        );
        let mut s = String::new();
        if let Some(mut o) = self.stdout.take() {
            use std::io::Read;
            let _ = o.read_to_string(&mut s);
        }
        s
    }
}

#[test]
fn bad_configuration_is_one_line_and_exit_2() {
    let dir = std::env::temp_dir().join(format!("weft-badcfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let sock = dir.join("x.sock");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "--listen".into(),
                "127.0.0.1:7999".into(),
                "--hello-interval".into(),
                "often".into(),
            ],
            "hello_interval",
        ),
        (vec!["--listen".into(), "nowhere".into()], "listen"),
        (
            vec![
                "--listen".into(),
                "127.0.0.1:7999".into(),
                "--neighbor".into(),
                "127.0.0.2:7470/delay=5ms".into(),
            ],
            "emulation",
        ),
        (
            vec![
                "--listen".into(),
                "127.0.0.1:7999".into(),
                "--metric".into(),
                "fastest".into(),
            ],
            "metric",
        ),
    ];
    for (args, field) in cases {
        let out = Command::new(weftd_bin())
            .args(&args)
            .arg("--socket")
            .arg(&sock)
            .output()
            .expect("run weftd");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
        assert!(err.contains(field), "`{field}` named in: {err}");
        assert!(!sock.exists(), "nothing started");
    }
    let cfg = dir.join("bad.toml");
    std::fs::write(
        &cfg,
        "listen = \"127.0.0.1:7999\"\n[[neighbor]]\naddr = \"127.0.0.2:7470\"\nlatency = \"5ms\"\n",
    )
    .expect("write");
    let out = Command::new(weftd_bin())
        .arg("--config")
        .arg(&cfg)
        .output()
        .expect("run weftd");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("bad.toml:4") && err.contains("latency"),
        "{err}"
    );
    // `weft status` fails when no daemon answers, so scripts can wait on it.
    let out = Command::new(weft_tests::weft_bin())
        .arg("--socket")
        .arg(&sock)
        .arg("status")
        .output()
        .expect("weft");
    assert!(!out.status.success());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn link_emulation_needs_the_daemon_flag() {
    let plain = Overlay::builder().chain(2, "").without_emulation().start();
    plain.wait_converged(Duration::from_secs(15));
    let refused = plain.weft(1, &["link", "set", &plain.ip(2), "loss=5%"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--emulation"));
    assert!(
        !plain
            .weft(1, &["link", "cut", &plain.ip(2)])
            .status
            .success(),
        "cuts are emulation too"
    );

    let o = Overlay::builder().chain(2, "").start();
    o.wait_converged(Duration::from_secs(15));
    let peer = o.ip(2);
    assert!(o
        .weft(1, &["link", "set", &peer, "loss=5%", "delay=10ms"])
        .status
        .success());
    let bad = o.weft(1, &["link", "set", &peer, "loss=lots"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("loss"));
    let status = o.status(1);
    let nbr = &status["neighbors"][0];
    assert_eq!(
        nbr["emulation"]["params"]["loss_ratio"].as_f64(),
        Some(0.05)
    );
    assert_eq!(
        nbr["emulation"]["params"]["delay_us"].as_u64(),
        Some(10_000)
    );
}

#[test]
fn fast_probing_declares_a_cut_active_link_dead_before_the_dead_interval() {
    // The diamond of `reroutes_around_a_cut_link_and_back`, every daemon with fast liveness.
    let o = Overlay::builder()
        .link(1, 2, "delay=2ms")
        .link(2, 4, "delay=2ms")
        .link(1, 3, "delay=6ms")
        .link(3, 4, "delay=6ms")
        .link(4, 5, "delay=1ms")
        .flag("--fast-probe=5ms")
        .start();
    o.wait_converged(Duration::from_secs(15));
    let (n1, n2, n3, n4, n5) = (o.ip(1), o.ip(2), o.ip(3), o.ip(4), o.ip(5));
    wait_for(
        Duration::from_secs(10),
        || o.path(1, 5) == [n1.clone(), n2.clone(), n4.clone(), n5.clone()],
        || format!("1→5 should go via 2, got {:?}", o.path(1, 5)),
    );
    let neighbour = |n: usize, ip: &str| {
        o.status(n)["neighbors"]
            .as_array()
            .and_then(|a| a.iter().find(|x| x["node"] == ip).cloned())
            .unwrap_or_default()
    };
    let idle = neighbour(1, &n2);
    assert!(
        idle["fast_dead_after_ms"].is_null(),
        "no promise on an idle link: {idle}"
    );
    let to = format!("{n5}:9000");
    let mut send = o.spawn_weft(
        1,
        &["send", "--to", &to, "--count", "400", "--interval", "5ms"],
    );
    // The link carries traffic: 2 promises keepalives, and 1 holds it to a short silence.
    wait_for(
        Duration::from_secs(5),
        || neighbour(1, &n2)["fast_dead_after_ms"].as_f64().is_some(),
        || format!("no fast promise from 2 at 1: {}", neighbour(1, &n2)),
    );
    let before = o.status(1)["counters"]["fast_deaths"].as_u64().unwrap_or(0);
    o.weft_ok(1, &["link", "cut", &n2]);
    wait_for(
        Duration::from_secs(5),
        || o.status(1)["counters"]["fast_deaths"].as_u64().unwrap_or(0) > before,
        || {
            format!(
                "1 did not declare 2 dead by fast liveness: {}",
                o.status(1)["counters"]
            )
        },
    );
    wait_for(
        Duration::from_secs(5),
        || o.path(1, 5) == [n1.clone(), n3.clone(), n4.clone(), n5.clone()],
        || format!("1→5 should go via 3, got {:?}", o.path(1, 5)),
    );
    let _ = send.wait();
    // Once the traffic stops, the promise lapses (after a second and a tail).
    wait_for(
        Duration::from_secs(10),
        || neighbour(1, &n3)["fast_dead_after_ms"].is_null(),
        || {
            format!(
                "the promise on 1-3 outlived its traffic: {}",
                neighbour(1, &n3)
            )
        },
    );
}
