//! The link emulator on a real namespace pair: delay, jitter, loss (Bernoulli and bursty),
//! rate with a drop-tail queue, cut and heal, and teardown.
//!
//! Needs root, `/dev/net/tun` and `ip netns`; without them every test fails with a message
//! saying so (never skips). Assertions use the emulator's counters and distributions with
//! generous bounds; none asserts how long anything took.

use serde_json::Value;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;
use weft_netemu::probe::{decode_header, encode, Frame};
use weft_netemu::stats::{wilson_interval, Z_999};
use weft_netemu::sys::{force_receive_buffer, monotonic_now, set_fifo_priority, sleep_until};
use weft_netemu::{netns, unique_prefix, Options, RunningEmulator, Topology};

const SEED: u64 = 20_261_126;

fn start(topology: &str) -> RunningEmulator {
    start_with(topology, |_| {})
}

fn start_with(topology: &str, adjust: impl FnOnce(&mut Options)) -> RunningEmulator {
    // Namespaces of earlier runs that were killed before their teardown (their pid is gone).
    let _ = netns::cleanup("netemu", true);
    let topology = Topology::parse(topology).expect("test topology parses");
    let prefix = unique_prefix();
    let control = std::env::temp_dir().join(format!("{prefix}.sock"));
    let mut options = Options::new(prefix, control);
    options.seed = SEED;
    // As in the benchmark: the system under test must not delay the packet thread.
    options.rt_priority = Some(50);
    adjust(&mut options);
    RunningEmulator::spawn(topology, options).unwrap_or_else(|e| {
        panic!("cannot build the emulated topology (needs root, /dev/net/tun and `ip netns`): {e}")
    })
}

fn pair(forward: &str, reverse: &str) -> String {
    format!(
        "name = \"pair\"\nnodes = [\"s\", \"d\"]\n[[link]]\nbetween = [\"s\", \"d\"]\n\
         [link.forward]\n{forward}\n[link.reverse]\n{reverse}\n"
    )
}

fn control(emu: &RunningEmulator, command: &str) -> Value {
    let reply = emu
        .control(command)
        .unwrap_or_else(|e| panic!("control {command:?}: {e}"));
    assert_eq!(reply["ok"], Value::Bool(true), "{command}: {reply}");
    reply
}

/// The stats of one direction ("s>d" or "d>s").
fn direction(emu: &RunningEmulator, label: &str) -> Value {
    let stats = control(emu, "stats");
    stats["links"][0]["directions"]
        .as_array()
        .and_then(|ds| ds.iter().find(|d| d["label"] == label).cloned())
        .unwrap_or_else(|| panic!("no direction {label} in {stats}"))
}

fn counter(direction: &Value, name: &str) -> u64 {
    direction["counters"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name} in {direction}"))
}

#[derive(Clone, Copy, Debug)]
struct Arrival {
    seq: u64,
    send_ns: u64,
    recv_ns: u64,
    size: usize,
}

/// Open a receiver in `to`'s namespace and a sender in `from`'s, addressed by node address.
fn udp_pair(emu: &RunningEmulator, from: &str, to: &str, port: u16) -> (UdpSocket, UdpSocket) {
    let plan = emu.plan();
    let source = plan.node(from).expect("source node");
    let destination = plan.node(to).expect("destination node");
    let target = SocketAddr::from((destination.address, port));
    let receiver = netns::run_in(&destination.namespace, || UdpSocket::bind(target))
        .and_then(|r| r)
        .expect("receiver socket");
    // A receiver thread descheduled for a while must not lose what the link delivered.
    force_receive_buffer(receiver.as_raw_fd(), 16 << 20).expect("SO_RCVBUFFORCE");
    let sender = netns::run_in(&source.namespace, || {
        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
        s.connect(target)?;
        Ok::<_, std::io::Error>(s)
    })
    .and_then(|r| r)
    .expect("sender socket");
    (sender, receiver)
}

/// Receive on a thread until `idle` passes without a packet.
fn collect(receiver: UdpSocket, idle: Duration) -> mpsc::Receiver<Vec<Arrival>> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        // Timestamps should describe the emulator, not a receiver waiting for a CPU.
        let _ = set_fifo_priority(40);
        let mut arrivals = Vec::new();
        let mut buf = vec![0u8; 65_536];
        // The first packet may take a while (the sender starts after us).
        receiver
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        while let Ok(n) = receiver.recv(&mut buf) {
            let recv_ns = monotonic_now().as_nanos();
            if let Some((Frame::Data { seq, send_ns, size }, _)) = decode_header(&buf[..n]) {
                arrivals.push(Arrival {
                    seq,
                    send_ns,
                    recv_ns,
                    size,
                });
            }
            receiver.set_read_timeout(Some(idle)).expect("timeout");
        }
        let _ = tx.send(arrivals);
    });
    rx
}

/// Send `count` probes of `size` bytes, one every `gap`, stamped with their send time.
fn send_probes(sender: &UdpSocket, count: u64, gap: Duration, size: usize) {
    let _ = set_fifo_priority(40);
    let start = monotonic_now() + Duration::from_millis(20);
    let mut buf = vec![0u8; size];
    for seq in 0..count {
        let due = start + gap * seq as u32;
        sleep_until(due);
        encode(
            &mut buf,
            Frame::Data {
                seq,
                send_ns: monotonic_now().as_nanos(),
                size,
            },
        );
        sender.send(&buf).expect("send");
    }
}

fn latencies_ms(arrivals: &[Arrival]) -> Vec<f64> {
    let mut v: Vec<f64> = arrivals
        .iter()
        .map(|a| (a.recv_ns as f64 - a.send_ns as f64) / 1e6)
        .collect();
    v.sort_by(f64::total_cmp);
    v
}

fn assert_namespaces_gone(prefix: &str) {
    let left: Vec<String> = netns::list()
        .expect("list namespaces")
        .into_iter()
        .filter(|n| n.starts_with(prefix))
        .collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
}

fn finish(emu: RunningEmulator) {
    let prefix = emu.plan().prefix.clone();
    emu.stop().expect("emulator loop ended cleanly");
    assert_namespaces_gone(&prefix);
}

#[test]
fn delay_is_never_undercut_and_each_direction_has_its_own() {
    let emu = start(&pair("delay_ms = 20", "delay_ms = 3"));
    let (sender, receiver) = udp_pair(&emu, "s", "d", 7001);
    let arrivals = collect(receiver, Duration::from_millis(500));
    send_probes(&sender, 200, Duration::from_millis(2), 200);
    let arrivals = arrivals.recv().expect("receiver thread");
    assert_eq!(arrivals.len(), 200, "no loss configured, seed {SEED}");
    let ms = latencies_ms(&arrivals);
    assert!(
        ms[0] >= 20.0,
        "a packet beat the 20 ms delay: {:.3} ms",
        ms[0]
    );
    let median = ms[ms.len() / 2];
    assert!(median < 60.0, "median {median:.3} ms for a 20 ms link");
    let forward = direction(&emu, "s>d");
    assert_eq!(counter(&forward, "tx_packets"), 200);
    assert_eq!(forward["lateness"]["count"].as_u64(), Some(200));

    let (back, back_receiver) = udp_pair(&emu, "d", "s", 7002);
    let arrivals = collect(back_receiver, Duration::from_millis(500));
    send_probes(&back, 100, Duration::from_millis(2), 200);
    let ms = latencies_ms(&arrivals.recv().expect("receiver thread"));
    assert_eq!(ms.len(), 100);
    assert!(
        ms[0] >= 3.0,
        "reverse packet beat its 3 ms delay: {:.3}",
        ms[0]
    );
    assert!(
        ms[ms.len() / 2] < 20.0,
        "reverse median {:.3} ms: the forward delay leaked into the reverse direction",
        ms[ms.len() / 2]
    );
    finish(emu);
}

#[test]
fn jitter_spreads_delay_both_ways_and_keeps_order() {
    let emu = start(&pair("delay_ms = 20\njitter_ms = 5", "delay_ms = 1"));
    let (sender, receiver) = udp_pair(&emu, "s", "d", 7003);
    // Gaps wider than the jitter span: no clamping, so the spread is the jitter itself.
    let arrivals = collect(receiver, Duration::from_millis(500));
    send_probes(&sender, 150, Duration::from_millis(12), 200);
    let arrivals = arrivals.recv().expect("receiver thread");
    assert_eq!(arrivals.len(), 150, "seed {SEED}");
    assert!(
        arrivals.windows(2).all(|w| w[0].seq < w[1].seq),
        "jitter reordered packets"
    );
    let ms = latencies_ms(&arrivals);
    assert!(
        ms[0] >= 15.0,
        "earlier than delay - jitter: {:.3} ms",
        ms[0]
    );
    // Without negative jitter nothing arrives before 20 ms; uniform ±5 ms puts about half
    // there. Machine noise only makes packets later, so the bound stays safe.
    let early = ms.iter().filter(|&&m| m < 20.0).count();
    assert!(
        early >= 150 * 15 / 100,
        "only {early}/150 packets below the 20 ms base: jitter not applied (seed {SEED})"
    );
    finish(emu);
}

/// Sends `count` probes in small bursts and checks the emulator's books: everything read is
/// delivered or dropped by the loss model, the receiver got exactly what was delivered, and
/// the achieved loss is inside the model's confidence interval.
fn run_loss(emu: &RunningEmulator, port: u16, count: u64) -> Vec<Arrival> {
    control(emu, "reset");
    let (sender, receiver) = udp_pair(emu, "s", "d", port);
    let arrivals = collect(receiver, Duration::from_millis(500));
    // 10 packets every 2 ms: 5000 packets/s, far below what the emulator moves.
    let start = monotonic_now();
    let mut buf = vec![0u8; 100];
    for seq in 0..count {
        if seq % 10 == 0 {
            sleep_until(start + Duration::from_millis(2) * (seq / 10) as u32);
        }
        encode(
            &mut buf,
            Frame::Data {
                seq,
                send_ns: monotonic_now().as_nanos(),
                size: 100,
            },
        );
        sender.send(&buf).expect("send");
    }
    let arrivals = arrivals.recv().expect("receiver thread");
    let forward = direction(emu, "s>d");
    let rx = counter(&forward, "rx_packets");
    let tx = counter(&forward, "tx_packets");
    let lost = counter(&forward, "drop_loss");
    assert_eq!(
        arrivals.len() as u64,
        tx,
        "receiver vs emulator, seed {SEED}"
    );
    assert_eq!(tx + lost, rx, "drops other than loss: {forward}");
    assert!(
        rx >= count * 9 / 10,
        "emulator read {rx} of {count}: {forward}"
    );
    assert_eq!(
        forward["loss"]["within"],
        Value::Bool(true),
        "achieved loss outside the model's interval (seed {SEED}): {}",
        forward["loss"]
    );
    arrivals
}

#[test]
fn bernoulli_loss_matches_its_rate() {
    let emu = start(&pair("delay_ms = 1\nloss_pct = 10", "delay_ms = 1"));
    let count = 8000;
    let arrivals = run_loss(&emu, 7004, count);
    let lost = count - arrivals.len() as u64;
    let (low, high) = wilson_interval(lost as f64, count as f64, Z_999);
    assert!(
        low <= 0.10 && 0.10 <= high,
        "end-to-end loss {lost}/{count} excludes 10% (seed {SEED})"
    );
    finish(emu);
}

#[test]
fn bursty_loss_has_the_configured_rate_and_burst_length() {
    // 5% average loss with burst 50%: mean burst length 1 / (1 - 0.5) = 2.
    let emu = start(&pair(
        "delay_ms = 1\nloss_pct = 5\nburst_pct = 50",
        "delay_ms = 1",
    ));
    let count = 12_000;
    let arrivals = run_loss(&emu, 7005, count);
    let mut seqs: Vec<u64> = arrivals.iter().map(|a| a.seq).collect();
    seqs.sort_unstable();
    let gaps: Vec<u64> = seqs
        .windows(2)
        .map(|w| w[1] - w[0] - 1)
        .filter(|&g| g > 0)
        .collect();
    let mean_burst = gaps.iter().sum::<u64>() as f64 / gaps.len().max(1) as f64;
    assert!(
        (1.5..=2.7).contains(&mean_burst),
        "mean burst {mean_burst:.2} over {} bursts, expected 2 (seed {SEED})",
        gaps.len()
    );
    finish(emu);
}

#[test]
fn rate_limit_caps_throughput_and_tail_drops() {
    // 8 Mbit/s = 1000 bytes per ms; offered at about twice that.
    let emu = start(&pair("rate_mbit = 8\nqueue_bytes = 20000", "delay_ms = 1"));
    let (sender, receiver) = udp_pair(&emu, "s", "d", 7006);
    let arrivals = collect(receiver, Duration::from_millis(500));
    send_probes(&sender, 2000, Duration::from_micros(500), 972);
    let arrivals = arrivals.recv().expect("receiver thread");
    let forward = direction(&emu, "s>d");
    assert!(
        counter(&forward, "drop_queue") > 0,
        "twice the rate never filled the queue: {forward}"
    );
    assert_eq!(arrivals.len() as u64, counter(&forward, "tx_packets"));
    assert!(
        arrivals.len() > 100,
        "only {} packets arrived",
        arrivals.len()
    );
    let first = arrivals.first().expect("arrivals");
    let last = arrivals.last().expect("arrivals");
    // IP packet = payload + 28 bytes of UDP/IP headers; the first packet's bits left before
    // the span starts.
    let bits: f64 = arrivals[1..]
        .iter()
        .map(|a| (a.size + 28) as f64 * 8.0)
        .sum();
    let seconds = (last.recv_ns - first.recv_ns) as f64 / 1e9;
    let mbit = bits / seconds / 1e6;
    assert!(
        mbit <= 8.0 * 1.03,
        "delivered {mbit:.3} Mbit/s through an 8 Mbit/s link"
    );
    assert!(
        mbit >= 8.0 * 0.5,
        "delivered {mbit:.3} Mbit/s: the link is far slower than configured"
    );
    finish(emu);
}

#[test]
fn a_cut_blackholes_one_direction_until_healed() {
    let emu = start(&pair("delay_ms = 2", "delay_ms = 2"));
    let cut = control(&emu, "down s>d");
    assert!(cut["t_ns"].as_u64().is_some(), "cut time missing: {cut}");

    let (sender, receiver) = udp_pair(&emu, "s", "d", 7007);
    let (back, back_receiver) = udp_pair(&emu, "d", "s", 7008);
    let during_cut = collect(receiver, Duration::from_millis(300));
    let reverse = collect(back_receiver, Duration::from_millis(300));
    send_probes(&sender, 50, Duration::from_millis(1), 100);
    send_probes(&back, 50, Duration::from_millis(1), 100);
    assert!(
        during_cut.recv().expect("receiver").is_empty(),
        "packets crossed a cut link"
    );
    assert_eq!(
        reverse.recv().expect("receiver").len(),
        50,
        "cutting s>d also cut d>s"
    );
    let forward = direction(&emu, "s>d");
    assert_eq!(counter(&forward, "drop_down"), 50, "{forward}");
    assert_eq!(forward["up"], Value::Bool(false));

    control(&emu, "up s-d");
    let (sender, receiver) = udp_pair(&emu, "s", "d", 7009);
    let healed = collect(receiver, Duration::from_millis(300));
    send_probes(&sender, 50, Duration::from_millis(1), 100);
    assert_eq!(
        healed.recv().expect("receiver").len(),
        50,
        "heal lost packets"
    );
    let events = control(&emu, "events");
    let commands: Vec<&str> = events["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["command"].as_str())
        .collect();
    assert_eq!(commands, ["down s>d", "up s-d"]);
    finish(emu);
}

#[test]
fn parameters_change_at_run_time() {
    let emu = start(&pair("delay_ms = 1", "delay_ms = 1"));
    control(&emu, "set s>d delay_ms=30 loss_pct=100");
    let forward = direction(&emu, "s>d");
    assert_eq!(forward["params"]["delay_ms"].as_f64(), Some(30.0));
    assert_eq!(forward["params"]["expected_loss"].as_f64(), Some(1.0));
    let (sender, receiver) = udp_pair(&emu, "s", "d", 7010);
    let lost = collect(receiver, Duration::from_millis(300));
    send_probes(&sender, 20, Duration::from_millis(1), 100);
    assert!(
        lost.recv().expect("receiver").is_empty(),
        "100% loss let packets through"
    );

    control(&emu, "set s-d loss_pct=0");
    let (sender, receiver) = udp_pair(&emu, "s", "d", 7011);
    let arrivals = collect(receiver, Duration::from_millis(500));
    send_probes(&sender, 20, Duration::from_millis(1), 100);
    let ms = latencies_ms(&arrivals.recv().expect("receiver"));
    assert_eq!(ms.len(), 20);
    assert!(ms[0] >= 30.0, "new delay not applied: {:.3} ms", ms[0]);
    // A rejected change leaves everything as it was.
    let reply = emu.control("set * loss_pct=500").expect("reply");
    assert_eq!(reply["ok"], Value::Bool(false));
    assert_eq!(
        direction(&emu, "s>d")["params"]["delay_ms"].as_f64(),
        Some(30.0)
    );
    finish(emu);
}

#[test]
fn teardown_removes_namespaces_and_their_processes() {
    let emu = start(&pair("delay_ms = 1", "delay_ms = 1"));
    let namespace = emu.plan().node("d").expect("node d").namespace.clone();
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", &namespace, "sleep", "120"])
        .spawn()
        .expect("start a process in the namespace");
    // Wait until the child has entered the namespace.
    let mut inside = false;
    for _ in 0..200 {
        if netns::pids(&namespace).expect("pids").contains(&child.id()) {
            inside = true;
            break;
        }
        thread::sleep(Duration::from_millis(10));
    }
    assert!(inside, "the child never showed up in {namespace}");
    finish(emu);
    let status = child.wait().expect("child reaped");
    assert!(!status.success(), "the process inside survived teardown");
}

#[test]
fn routes_follow_the_plan_across_a_chain() {
    let emu = start(
        "name = \"chain3\"\nnodes = [\"s\", \"r\", \"d\"]\n[defaults]\ndelay_ms = 2\n\
         [[link]]\nbetween = [\"s\", \"r\"]\n[[link]]\nbetween = [\"r\", \"d\"]\n",
    );
    let (sender, receiver) = udp_pair(&emu, "s", "d", 7012);
    let arrivals = collect(receiver, Duration::from_millis(500));
    send_probes(&sender, 30, Duration::from_millis(1), 100);
    let ms = latencies_ms(&arrivals.recv().expect("receiver"));
    assert_eq!(ms.len(), 30, "forwarding through the middle namespace");
    assert!(ms[0] >= 4.0, "two 2 ms links took {:.3} ms", ms[0]);
    let stats = control(&emu, "stats");
    for link in stats["links"].as_array().expect("links") {
        let forward = &link["directions"][0];
        assert!(
            counter(forward, "udp_packets") >= 30,
            "link {} did not carry the probes: {forward}",
            link["name"]
        );
    }
    finish(emu);
}

#[test]
fn receive_steering_applies_to_every_device_and_traffic_still_flows() {
    let emu = start_with(&pair("delay_ms = 1", "delay_ms = 1"), |o| {
        o.pin_cpu = Some(0);
        o.steer_cpus = Some(1);
    });
    for link in &emu.plan().links {
        for (node, device) in [(&link.a, &link.a_device), (&link.b, &link.b_device)] {
            let namespace = &emu.plan().node(node).expect("planned node").namespace;
            let path = format!("/sys/class/net/{device}/queues/rx-0/rps_cpus");
            let out = std::process::Command::new("ip")
                .args(["netns", "exec", namespace, "cat", &path])
                .output()
                .expect("ip netns exec runs");
            let text = String::from_utf8_lossy(&out.stdout).replace(',', "");
            let mask = u64::from_str_radix(text.trim(), 16);
            assert_eq!(mask, Ok(1), "{namespace} {device}: rps_cpus {text:?}");
        }
    }
    let (sender, receiver) = udp_pair(&emu, "s", "d", 7011);
    let arrivals = collect(receiver, Duration::from_millis(500));
    send_probes(&sender, 100, Duration::from_millis(1), 200);
    assert_eq!(arrivals.recv().expect("receiver thread").len(), 100);
    finish(emu);
}
