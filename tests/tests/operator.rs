//! Running weft as an operator would (issue 19), against real `weftd` processes: the
//! Prometheus endpoint, `weft ping` / `weft trace`, SIGHUP reloads, `weft neighbor add`,
//! a clean stop that tells the neighbours, logs and wire-version mismatches.

use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use weft_tests::{http_get, wait_for, weft_bin, weftd_bin, Overlay};

/// Parses the Prometheus text exposition format strictly: every sample line is
/// `name{label="value",...} number`, every family has a `# TYPE` before its samples, and
/// names are valid metric names. Returns samples keyed by `name{labels}`.
fn parse_prometheus(text: &str) -> BTreeMap<String, f64> {
    let valid_name = |n: &str| {
        !n.is_empty()
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            && !n.starts_with(|c: char| c.is_ascii_digit())
    };
    let mut typed: Vec<String> = Vec::new();
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut w = rest.splitn(3, ' ');
            let (kind, name) = (w.next().unwrap_or(""), w.next().unwrap_or(""));
            assert!(kind == "HELP" || kind == "TYPE", "bad comment line: {line}");
            assert!(valid_name(name), "bad metric name in: {line}");
            if kind == "TYPE" {
                let t = w.next().unwrap_or("");
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&t),
                    "bad type: {line}"
                );
                typed.push(name.to_string());
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample has a value");
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value: {line}"));
        let name = series.split('{').next().unwrap_or("");
        assert!(valid_name(name), "bad sample name: {line}");
        if let Some(labels) = series.strip_prefix(name) {
            if !labels.is_empty() {
                assert!(
                    labels.starts_with('{') && labels.ends_with('}'),
                    "bad labels: {line}"
                );
                for pair in labels[1..labels.len() - 1].split("\",") {
                    let (k, v) = pair.split_once('=').expect("label=value");
                    assert!(valid_name(k) && v.starts_with('"'), "bad label: {line}");
                }
            }
        }
        assert!(
            typed
                .iter()
                .any(|t| name == t || name.starts_with(&format!("{t}_"))),
            "sample before its # TYPE: {line}"
        );
        samples.insert(series.to_string(), value);
    }
    samples
}

fn sum_of(samples: &BTreeMap<String, f64>, name: &str) -> f64 {
    samples
        .iter()
        .filter(|(k, _)| k.split('{').next() == Some(name))
        .map(|(_, v)| v)
        .sum()
}

#[test]
fn metrics_parse_as_prometheus_text_and_count_traffic() {
    let o = Overlay::builder()
        .chain(4, "delay=1ms")
        .with_metrics()
        .start();
    o.wait_converged(Duration::from_secs(15));
    let relay = o.metrics_addr(2);
    let (code, head, body) = http_get(&relay, "/metrics");
    assert_eq!(code, 200, "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    let before = parse_prometheus(&body);
    for family in [
        "weft_link_rtt_seconds",
        "weft_link_state",
        "weft_link_sent_bytes_total",
        "weft_link_retransmissions_total",
        "weft_dropped_packets_total",
        "weft_sessions",
        "weft_multicast_groups",
        "weft_routes",
    ] {
        assert!(
            body.contains(&format!("# TYPE {family} ")),
            "{family} missing:\n{body}"
        );
    }
    assert_eq!(sum_of(&before, "weft_routes"), 3.0);
    let up: f64 = before
        .iter()
        .filter(|(k, _)| k.starts_with("weft_link_state{") && k.contains("state=\"up\""))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(up, 2.0, "the relay has two links up");

    // Traffic across the relay moves its counters.
    let to = format!("{}:9300", o.ip(4));
    o.weft_ok(
        1,
        &["send", "--to", &to, "--count", "200", "--size", "1000"],
    );
    wait_for(
        Duration::from_secs(10),
        || {
            let after = parse_prometheus(&http_get(&relay, "/metrics").2);
            sum_of(&after, "weft_forwarded_packets_total")
                >= sum_of(&before, "weft_forwarded_packets_total") + 150.0
                && sum_of(&after, "weft_link_sent_bytes_total")
                    >= sum_of(&before, "weft_link_sent_bytes_total") + 150_000.0
        },
        || "the relay's forwarded and byte counters did not move with the traffic".into(),
    );
    // The far end counts what nobody listened for, by reason. The relay counts a packet as
    // forwarded before it reaches the far end, so the far end's count is awaited, not sampled.
    let no_listener = "weft_dropped_packets_total{reason=\"no_listener\"}";
    let counted = std::cell::Cell::new(0.0);
    wait_for(
        Duration::from_secs(10),
        || {
            let far = parse_prometheus(&http_get(&o.metrics_addr(4), "/metrics").2);
            counted.set(far.get(no_listener).copied().unwrap_or(0.0));
            counted.get() >= 150.0
        },
        || {
            format!(
                "the far end counted {} of 200 in {no_listener}",
                counted.get()
            )
        },
    );

    let (code, _, _) = http_get(&relay, "/");
    assert_eq!(code, 404);
    // OpenMetrics on request, and the logs carry no colour and no Rust debug text.
    let mut s = std::net::TcpStream::connect(&relay).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text; version=1.0.0\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    assert!(raw.contains("application/openmetrics-text") && raw.ends_with("# EOF\n"));
    for n in 1..=4 {
        let log = std::fs::read_to_string(o.log(n)).unwrap();
        assert!(!log.contains('\u{1b}'), "ANSI escapes in a log file");
        assert!(!log.contains("Some("), "Rust debug text in the log:\n{log}");
        assert!(log.contains("link state"), "{log}");
    }
}

fn json(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[test]
fn ping_and_trace_report_the_path() {
    let o = Overlay::builder().chain(4, "delay=2ms").start();
    o.wait_converged(Duration::from_secs(15));
    let ips: Vec<String> = (1..=4).map(|n| o.ip(n)).collect();
    let ping = json(&o.weft_ok(1, &["ping", &ips[3], "-c", "5", "-i", "50ms", "--json"]));
    assert_eq!(ping["path"], serde_json::json!(ips));
    assert!(ping["summary"]["received"].as_u64().unwrap() >= 1, "{ping}");
    let rtt = ping["summary"]["rtt_min_ms"].as_f64().unwrap();
    println!("ping 3 hops x 2 ms: min rtt {rtt:.2} ms");
    // The emulated delay is a floor: 3 links, 2 ms each way.
    assert!(rtt >= 12.0, "{ping}");

    let text = o.weft_ok(1, &["ping", &ips[3], "-c", "2", "-i", "50ms"]);
    assert!(text.contains(&ips.join(" > ")), "{text}");

    let trace = json(&o.weft_ok(1, &["trace", &ips[3], "-q", "2", "--json"]));
    let hops = trace["hops"].as_array().unwrap();
    let nodes: Vec<&str> = hops.iter().map(|h| h["node"].as_str().unwrap()).collect();
    assert_eq!(nodes, [ips[1].as_str(), ips[2].as_str(), ips[3].as_str()]);
    for h in hops {
        assert!(h["received"].as_u64().unwrap() >= 1, "{h}");
        // Each link's RTT as its far end measures it: 2 ms each way at least.
        assert!(h["link_rtt_ms"].as_f64().unwrap() >= 4.0, "{h}");
        assert!(h["link_loss_forward_ratio"].as_f64().is_some(), "{h}");
        assert!(h["link_loss_reverse_ratio"].as_f64().is_some(), "{h}");
    }
    // Round trips grow along the path.
    let rtts: Vec<f64> = hops
        .iter()
        .map(|h| h["rtt_min_ms"].as_f64().unwrap())
        .collect();
    assert!(rtts[0] < rtts[2], "{rtts:?}");

    // A node that is not in the overlay: an immediate, explained failure.
    let started = Instant::now();
    let unknown = format!("127.{}.0.99", o.subnet.t);
    for args in [
        vec!["ping", unknown.as_str(), "-c", "1"],
        vec!["trace", unknown.as_str()],
        vec!["cat", &format!("{unknown}:9000")],
    ] {
        let out = o.weft(1, &args);
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("not a node of this overlay"),
            "{args:?}: {err}"
        );
    }
    println!(
        "three refusals for an unknown node took {:?}",
        started.elapsed()
    );
}

/// Writes `total` bytes to `weft cat` in small chunks, `pause` apart; returns the child.
fn slow_cat(
    o: &Overlay,
    n: usize,
    to: &str,
    chunks: usize,
    pause: Duration,
) -> std::thread::JoinHandle<bool> {
    let mut child = Command::new(weft_bin())
        .arg("--socket")
        .arg(o.socket(n))
        .args(["cat", to])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("weft cat");
    let mut stdin = child.stdin.take().unwrap();
    std::thread::spawn(move || {
        for i in 0..chunks {
            let chunk: Vec<u8> = (0..1000).map(|j| ((i * 7 + j) % 251) as u8).collect();
            if stdin.write_all(&chunk).is_err() {
                return false;
            }
            std::thread::sleep(pause);
        }
        drop(stdin);
        let out = child.wait_with_output().unwrap();
        if !out.status.success() {
            eprintln!("weft cat: {}", String::from_utf8_lossy(&out.stderr));
        }
        out.status.success()
    })
}

fn expected_stream(chunks: usize) -> Vec<u8> {
    (0..chunks)
        .flat_map(|i| (0..1000).map(move |j| ((i * 7 + j) % 251) as u8))
        .collect()
}

/// `weft listen` on `n`: its stdout, read on a thread, with the count so far.
fn listener(
    o: &Overlay,
    n: usize,
    port: u16,
) -> (
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
    std::thread::JoinHandle<Vec<u8>>,
) {
    let mut child = o.spawn_listen(n, port, Stdio::null());
    let mut out = child.stdout.take().unwrap();
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = count.clone();
    let h = std::thread::spawn(move || {
        let mut got = Vec::new();
        let mut buf = [0u8; 65536];
        while let Ok(k) = out.read(&mut buf) {
            if k == 0 {
                break;
            }
            got.extend_from_slice(&buf[..k]);
            c.store(got.len(), std::sync::atomic::Ordering::Relaxed);
        }
        let _ = child.wait();
        got
    });
    (count, h)
}

fn neighbor<'a>(status: &'a Value, node: &str) -> Option<&'a Value> {
    status["neighbors"]
        .as_array()?
        .iter()
        .find(|n| n["node"].as_str() == Some(node))
}

#[test]
fn sighup_adds_a_neighbour_and_keeps_an_open_session_flowing() {
    // Four daemons started from configuration files: a chain 1-2-3-4.
    let mut o = Overlay::builder().chain(4, "").start();
    for n in 1..=4 {
        o.kill(n);
    }
    for n in 1..=4usize {
        let neighbors: Vec<usize> = [n.wrapping_sub(1), n + 1]
            .into_iter()
            .filter(|m| (1..=4).contains(m))
            .collect();
        let cfg = o.write_config(n, &neighbors, "");
        o.daemons[n - 1].args = vec!["--config".into(), cfg.display().to_string()];
        o.start_daemon(n);
    }
    o.wait_converged(Duration::from_secs(15));
    assert_eq!(o.path(1, 4).len(), 4);

    let (received, done) = listener(&o, 4, 9400);
    std::thread::sleep(Duration::from_millis(300));
    let chunks = 300;
    let sender = slow_cat(
        &o,
        1,
        &format!("{}:9400", o.ip(4)),
        chunks,
        Duration::from_millis(10),
    );
    wait_for(
        Duration::from_secs(10),
        || received.load(std::sync::atomic::Ordering::Relaxed) > 20_000,
        || "the session did not start flowing".into(),
    );

    // Link 1 and 4 directly: edit both files and reload both daemons.
    o.write_config(1, &[2, 4], "");
    o.write_config(4, &[3, 1], "");
    o.signal(1, libc::SIGHUP);
    o.signal(4, libc::SIGHUP);
    let at_reload = received.load(std::sync::atomic::Ordering::Relaxed);
    let four = o.ip(4);
    wait_for(
        Duration::from_secs(10),
        || neighbor(&o.status(1), &four).is_some_and(|n| n["state"] == "up"),
        || "the reloaded neighbour did not come up".into(),
    );
    wait_for(
        Duration::from_secs(10),
        || o.path(1, 4).len() == 2,
        || "node 1 does not route to 4 over the new link".into(),
    );
    // The session lived through it and kept moving.
    wait_for(
        Duration::from_secs(10),
        || received.load(std::sync::atomic::Ordering::Relaxed) > at_reload + 20_000,
        || "no bytes flowed after the reload".into(),
    );
    assert!(sender.join().unwrap(), "weft cat failed");
    let got = done.join().unwrap();
    assert_eq!(got.len(), chunks * 1000);
    assert!(got == expected_stream(chunks), "the stream was corrupted");
    let log = std::fs::read_to_string(o.log(1)).unwrap();
    assert!(log.contains("configuration reloaded"), "{log}");
    assert!(log.contains("+neighbor"), "{log}");

    // A reload with a broken file changes nothing and says why.
    std::fs::write(o.dir.join("node1.toml"), "listen = \"nonsense\"\n").unwrap();
    o.signal(1, libc::SIGHUP);
    wait_for(
        Duration::from_secs(5),
        || {
            std::fs::read_to_string(o.log(1))
                .unwrap()
                .contains("reload failed")
        },
        || "a bad reload was not reported".into(),
    );
    assert_eq!(o.path(1, 4).len(), 2);
}

#[test]
fn neighbor_add_links_a_fifth_daemon_that_no_configuration_names() {
    let mut o = Overlay::builder().chain(4, "").start();
    o.wait_converged(Duration::from_secs(15));
    // Adding node 4's neighbour before node 5 is admitted is refused: no key is known for it.
    let ip5 = o.ip(5);
    let early = o.weft(4, &["neighbor", "add", &ip5]);
    assert!(!early.status.success());
    assert!(
        String::from_utf8_lossy(&early.stderr).contains("no key for"),
        "{}",
        String::from_utf8_lossy(&early.stderr)
    );
    // As an operator would: the new node's key joins the admitted list, the running daemons
    // reload it, and both ends add each other at run time.
    let five = o.add_daemon(&["--emulation"]);
    assert_eq!(five, 5);
    for n in 1..=4 {
        o.signal(n, libc::SIGHUP);
    }
    for n in 1..=4 {
        wait_for(
            Duration::from_secs(10),
            || {
                std::fs::read_to_string(o.log(n))
                    .unwrap()
                    .contains("admitted_keys")
            },
            || format!("node {n} did not reload the admitted list"),
        );
    }
    let ip4 = o.ip(4);
    o.weft_ok(4, &["neighbor", "add", &format!("{ip5}:7470")]);
    o.weft_ok(5, &["neighbor", "add", &ip4]);
    o.wait_converged(Duration::from_secs(15));
    assert_eq!(o.path(1, 5).len(), 5);
    let ping = json(&o.weft_ok(1, &["ping", &ip5, "-c", "3", "-i", "50ms", "--json"]));
    assert!(ping["summary"]["received"].as_u64().unwrap() >= 1, "{ping}");
    // Adding it twice is refused; removing it unlinks it again.
    let again = o.weft(4, &["neighbor", "add", &ip5]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already a neighbour"));
    o.weft_ok(4, &["neighbor", "remove", &ip5]);
    wait_for(
        Duration::from_secs(10),
        || o.path(1, 5).is_empty(),
        || "node 1 still routes to the removed neighbour".into(),
    );
    assert!(neighbor(&o.status(4), &ip5).is_none());
}

#[test]
fn sigterm_of_a_relay_makes_its_neighbours_reroute_by_its_leave() {
    // 1 -2ms- 2 -2ms- 4 and 1 -6ms- 3 -6ms- 4. The dead interval is 30 s: a reroute that
    // happens within the wait below can only come from the relay's leave.
    let mut o = Overlay::builder()
        .link(1, 2, "delay=2ms")
        .link(2, 4, "delay=2ms")
        .link(1, 3, "delay=6ms")
        .link(3, 4, "delay=6ms")
        .flag("--dead-interval")
        .flag("30s")
        .start();
    o.wait_converged(Duration::from_secs(15));
    let (ip1, ip2, ip3, ip4) = (o.ip(1), o.ip(2), o.ip(3), o.ip(4));
    assert_eq!(o.path(1, 4), [ip1.as_str(), ip2.as_str(), ip4.as_str()]);
    let counters = |n: usize| {
        let c = o.status(n)["counters"].clone();
        (
            c["neighbor_leaves"].as_u64().unwrap(),
            c["neighbors_declared_dead"].as_u64().unwrap(),
        )
    };
    assert_eq!(counters(1), (0, 0));

    let t0 = Instant::now();
    o.signal(2, libc::SIGTERM);
    wait_for(
        Duration::from_secs(10),
        || o.path(1, 4) == [ip1.as_str(), ip3.as_str(), ip4.as_str()],
        || "node 1 did not reroute around the stopped relay".into(),
    );
    println!(
        "reroute after SIGTERM of the relay seen by polling within {:?}",
        t0.elapsed()
    );
    // Both neighbours heard the leave; neither declared it dead (that takes 30 s).
    for n in [1, 4] {
        assert_eq!(counters(n), (1, 0), "node {n}");
        let s = o.status(n);
        assert_eq!(neighbor(&s, &ip2).unwrap()["state"], "down");
    }
    let st = o
        .wait_exit(2, Duration::from_secs(10))
        .expect("weftd 2 exits");
    assert!(st.success(), "a clean stop exits 0: {st:?}");
    let log = std::fs::read_to_string(o.log(2)).unwrap();
    assert!(log.contains("told the neighbours we are leaving"), "{log}");
}

#[test]
fn json_logs_and_a_wire_version_mismatch_shown_on_the_neighbour() {
    let mut o = Overlay::builder()
        .link(1, 2, "")
        .flag("--log-format")
        .flag("json")
        .start();
    // Node 2 is replaced by a socket speaking wire version 9.
    o.kill(2);
    let fake = std::net::UdpSocket::bind(format!("{}:7470", o.ip(2))).unwrap();
    let mut pkt = vec![0x57, 0x46, 9, 1, 0, 0, 0, 0];
    pkt.extend_from_slice(&[127, o.subnet.t, 0, 2]);
    pkt.extend_from_slice(&7u32.to_be_bytes());
    pkt.extend_from_slice(&[0u8; 28]);
    let one = format!("{}:7470", o.ip(1));
    let ip2 = o.ip(2);
    wait_for(
        Duration::from_secs(10),
        || {
            fake.send_to(&pkt, &one).unwrap();
            neighbor_by_addr(&o.status(1), &format!("{ip2}:7470"))
                .is_some_and(|n| n["wire_version_mismatch"] == 9)
        },
        || "the mismatch is not shown on the neighbour".into(),
    );
    assert!(
        o.status(1)["counters"]["wire_version_mismatch"]
            .as_u64()
            .unwrap()
            >= 1
    );
    let log = std::fs::read_to_string(o.log(1)).unwrap();
    let warn = log
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .find(|v| v["level"] == "WARN" && v["ours"].is_number())
        .unwrap_or_else(|| panic!("no warning:\n{log}"));
    assert_eq!(warn["theirs"], 9);
    assert_eq!(warn["ours"], 1);
    assert!(warn["peer"].as_str().unwrap().starts_with(&ip2));
}

fn neighbor_by_addr<'a>(status: &'a Value, addr: &str) -> Option<&'a Value> {
    status["neighbors"]
        .as_array()?
        .iter()
        .find(|n| n["addr"].as_str() == Some(addr))
}

#[test]
fn weft_run_warns_when_no_daemon_answers() {
    let dir = std::env::temp_dir().join(format!("weft-run-loud-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("nobody.sock");
    let run = |flags: &[&str], marker: &str| {
        let mut args = vec!["--socket", socket.to_str().unwrap(), "run"];
        args.extend_from_slice(flags);
        let script = format!("touch {}", dir.join(marker).display());
        args.extend_from_slice(&["--", "sh", "-c", &script]);
        Command::new(weft_bin()).args(&args).output().unwrap()
    };
    let loud = run(&[], "ran-loud");
    let err = String::from_utf8_lossy(&loud.stderr);
    assert!(loud.status.success(), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(
        err.contains(socket.to_str().unwrap()) && err.contains("kernel network"),
        "{err}"
    );
    assert!(dir.join("ran-loud").exists(), "the program runs anyway");

    let quiet = run(&["-q"], "ran-quiet");
    assert!(quiet.status.success() && quiet.stderr.is_empty());
    assert!(dir.join("ran-quiet").exists());

    let strict = run(&["--strict"], "ran-strict");
    assert_eq!(strict.status.code(), Some(69));
    assert!(String::from_utf8_lossy(&strict.stderr).contains("--strict"));
    assert!(
        !dir.join("ran-strict").exists(),
        "--strict must not start the program"
    );
    std::fs::remove_dir_all(&dir).ok();
    let _ = weftd_bin();
}

/// `weft listen` on `n` whose stdin the test holds (None: /dev/null, so the listener finishes
/// its own side at once); its stdout is read on a thread.
fn held_listener(
    o: &Overlay,
    n: usize,
    port: u16,
    hold_stdin: bool,
) -> (
    Option<std::process::ChildStdin>,
    std::thread::JoinHandle<(Vec<u8>, std::process::ExitStatus)>,
) {
    let mut child = o.spawn_listen(
        n,
        port,
        if hold_stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        },
    );
    let stdin = child.stdin.take();
    let mut out = child.stdout.take().unwrap();
    let h = std::thread::spawn(move || {
        let mut got = Vec::new();
        let _ = out.read_to_end(&mut got);
        (got, child.wait().unwrap())
    });
    (stdin, h)
}

/// Node `n`'s sessions on local overlay port `port`, by state.
fn session_states(o: &Overlay, n: usize, port: u16) -> Vec<String> {
    o.status(n)["sessions"]
        .as_array()
        .map(|v| {
            v.iter()
                .filter(|s| s["local"]["port"] == port)
                .map(|s| s["state"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn sigterm_finishes_sessions_with_fin_resets_the_rest_after_the_grace_and_exits_0() {
    let mut o = Overlay::builder().chain(4, "delay=1ms").start();
    o.wait_converged(Duration::from_secs(15));
    // Two sessions from node 1 to node 4. The first listener has no input: its side is
    // finished at once, so node 1's FIN ends the session. The second keeps its side open:
    // only a reset after the grace period ends it.
    let (_, finishes) = held_listener(&o, 4, 9501, false);
    let (open_stdin, stays_open) = held_listener(&o, 4, 9502, true);
    std::thread::sleep(Duration::from_millis(300));
    let payload: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
    let mut senders = Vec::new();
    for port in [9501, 9502] {
        let mut cat = Command::new(weft_bin())
            .arg("--socket")
            .arg(o.socket(1))
            .args(["cat", &format!("{}:{port}", o.ip(4))])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("weft cat");
        // The program keeps its socket open: what ends the session is the daemon's stop.
        let mut stdin = cat.stdin.take().unwrap();
        stdin.write_all(&payload).unwrap();
        senders.push((cat, stdin));
    }
    wait_for(
        Duration::from_secs(10),
        || {
            [9501, 9502].iter().all(|&p| {
                o.status(4)["sessions"].as_array().is_some_and(|v| {
                    v.iter().any(|s| {
                        s["local"]["port"] == p
                            && s["bytes_received"].as_u64() == Some(payload.len() as u64)
                    })
                })
            })
        },
        || {
            format!(
                "the sessions did not carry their bytes: {}",
                o.status(4)["sessions"]
            )
        },
    );

    let t0 = Instant::now();
    o.signal(1, libc::SIGTERM);
    let st = o
        .wait_exit(1, Duration::from_secs(15))
        .expect("weftd 1 exits after its grace period");
    println!("weftd stopped {:?} after SIGTERM (grace 2 s)", t0.elapsed());
    assert!(st.success(), "a clean stop exits 0: {st:?}");

    // The FIN: the listener saw every byte and the end of the stream, and finished.
    let (got, status) = finishes.join().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        got == payload,
        "{} bytes, not the {} sent",
        got.len(),
        payload.len()
    );
    // The reset: the session that stayed open on node 4 is over without its program
    // closing anything.
    wait_for(
        Duration::from_secs(10),
        || {
            !session_states(&o, 4, 9502)
                .iter()
                .any(|s| s == "established")
        },
        || {
            format!(
                "node 4's open session was not reset: {:?}",
                session_states(&o, 4, 9502)
            )
        },
    );
    drop(open_stdin);
    let (got, _) = stays_open.join().unwrap();
    assert!(
        got == payload,
        "{} bytes, not the {} sent",
        got.len(),
        payload.len()
    );
    let log = std::fs::read_to_string(o.log(1)).unwrap();
    assert!(
        log.contains("stopping: closing sessions sessions=2"),
        "{log}"
    );
    assert!(
        log.contains("grace period over: resetting sessions sessions=1"),
        "{log}"
    );
    for (mut cat, stdin) in senders {
        drop(stdin);
        let _ = cat.wait();
    }
}
