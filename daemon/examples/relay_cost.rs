//! A deterministic bulk session over a chain of simulated daemons, for counting what relaying
//! costs: run it under `valgrind --tool=callgrind` with `HOPS=1` and `HOPS=4` and compare the
//! instructions spent inside the nodes (the simulator's own work is the same per packet).
//!
//! ```text
//! valgrind --tool=callgrind --toggle-collect='*overlay*Node*handle_*' \
//!     --toggle-collect='*overlay*Node*poll_transmit*' target/ci/examples/relay_cost 4 8
//! ```
//! Arguments: hops (default 4), megabytes (default 8).

use std::time::Duration;
use weft_core::Endpoint;
use weft_daemon::overlay::NodeEvent;
use weft_daemon::sim::{Sim, SimLink};

const PORT: u16 = 5000;

fn main() {
    let mut args = std::env::args().skip(1);
    let hops: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(4);
    let megabytes: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(8);
    let total = megabytes << 20;
    let mut sim = Sim::new(1);
    for _ in 0..=hops {
        sim.add_node(|_| {});
    }
    for i in 0..hops {
        sim.connect(i, i + 1, SimLink::with_delay(Duration::from_millis(1)));
    }
    sim.start();
    sim.run_for(Duration::from_secs(2));
    let _ = sim.with_node(hops, |n, _| n.listen(PORT));
    let remote = Endpoint::new(Sim::id_of(hops), PORT);
    let Some(Ok((client, _))) = sim.with_node(0, |n, now| n.connect(now, None, remote)) else {
        eprintln!("session did not open");
        std::process::exit(1);
    };
    let chunk = vec![7u8; 256 * 1024];
    let mut buf = vec![0u8; 256 * 1024];
    let (mut written, mut received) = (0usize, 0usize);
    let mut server = None;
    let start = sim.now;
    let deadline = start + Duration::from_secs(600);
    while received < total && sim.now < deadline {
        if written < total {
            let want = (total - written).min(chunk.len());
            written += sim
                .with_node(0, |n, now| n.session_write(now, client, &chunk[..want]))
                .unwrap_or(0);
        }
        sim.run_for(Duration::from_millis(1));
        for ev in std::mem::take(&mut sim.observed) {
            if let NodeEvent::Incoming { id, port: PORT, .. } = ev.event {
                server = Some(id);
            }
        }
        if let Some(id) = server {
            loop {
                let n = sim
                    .with_node(hops, |n, now| n.session_read(now, id, &mut buf))
                    .unwrap_or(0);
                if n == 0 {
                    break;
                }
                received += n;
            }
        }
    }
    let secs = (sim.now - start).as_secs_f64();
    println!(
        "hops {hops} delivered {received} bytes in {secs:.3} s virtual ({:.1} Mbit/s), {} datagrams, {} bytes on links",
        received as f64 * 8.0 / secs / 1e6,
        sim.packets_sent,
        sim.bytes_sent
    );
    // Where the datagrams went: per node and neighbour, all datagrams out, then the ARQ's new
    // data packets and redundant copies (the rest are acks, hellos and flooding).
    for i in 0..=hops {
        let Some(status) = sim.with_node(i, |n, now| n.status(now)) else {
            continue;
        };
        for nb in status.neighbors {
            let (data, copies) = nb
                .arq
                .map_or((0, 0), |a| (a.packets_sent, a.redundant_copies));
            println!(
                "  node {i} -> {}: {} datagrams, {} bytes; arq data {data}, copies {copies}",
                nb.addr, nb.packets_out, nb.bytes_out
            );
        }
    }
    if received < total {
        std::process::exit(1);
    }
}
