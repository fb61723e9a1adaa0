//! Building a topology on this host and tearing it down again.
//!
//! [`Emulator::setup`] creates one namespace per node (`<prefix>-<node>`), a TUN device at
//! each end of every link (opened from inside the namespace so the device lives there), the
//! addresses, static routes and sysctls of the plan. Dropping the [`Emulator`] kills every
//! process left in its namespaces and deletes them; the TUN devices vanish with their
//! descriptors. The binary blocks terminating signals first, so Ctrl-C reaches this teardown.

use crate::engine::{Engine, EngineConfig, LinkIo};
use crate::netlink::RouteSocket;
use crate::netns;
use crate::sys::{self, EventFd, SignalFd};
use crate::topology::{Plan, Topology};
use std::io;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct Options {
    /// Namespaces are named `<prefix>-<node>`.
    pub prefix: String,
    pub seed: u64,
    /// Unix socket for control commands.
    pub control: PathBuf,
    /// Round wake-ups up to this granularity (0 = exact).
    pub coalesce: Duration,
    /// SCHED_FIFO priority of the packet thread, if any.
    pub rt_priority: Option<i32>,
    /// Packets each direction can hold in flight; must cover delay × rate.
    pub ring_slots: usize,
    /// Kernel queue of each TUN device (its `tx_dropped` counts overflows).
    pub txqueuelen: u32,
    /// Run the packet thread on this CPU only.
    pub pin_cpu: Option<usize>,
    /// Receive packet steering: the kernel work behind each write into a TUN device (the
    /// destination namespace's whole receive path, TCP included) runs on these CPUs instead
    /// of in the packet thread's `write()`. Bit i = CPU i.
    pub steer_cpus: Option<u64>,
}

static PREFIX_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A prefix unique on this host: `netemu<pid>x<n>`. `netns::cleanup("netemu", true)` removes
/// leftovers of dead processes by the pid inside.
pub fn unique_prefix() -> String {
    let n = PREFIX_COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("netemu{}x{n}", std::process::id())
}

impl Options {
    pub fn new(prefix: String, control: PathBuf) -> Self {
        Options {
            prefix,
            seed: 1,
            control,
            coalesce: Duration::ZERO,
            rt_priority: None,
            ring_slots: 8192,
            txqueuelen: 1000,
            pin_cpu: None,
            steer_cpus: None,
        }
    }
}

fn context(what: impl std::fmt::Display) -> impl FnOnce(io::Error) -> io::Error {
    move |e| io::Error::new(e.kind(), format!("{what}: {e}"))
}

pub struct Emulator {
    plan: Plan,
    namespaces: Vec<String>,
    control: PathBuf,
    engine: Option<Engine>,
}

impl Emulator {
    /// Build everything. On error, whatever was created is removed before returning.
    pub fn setup(
        topology: &Topology,
        options: &Options,
        signals: Option<SignalFd>,
        stop: Option<Arc<EventFd>>,
    ) -> io::Result<Emulator> {
        let plan = topology.plan(&options.prefix);
        let mut emulator = Emulator {
            plan,
            namespaces: Vec::new(),
            control: options.control.clone(),
            engine: None,
        };
        emulator.build(topology, options, signals, stop)?;
        Ok(emulator)
    }

    fn build(
        &mut self,
        topology: &Topology,
        options: &Options,
        signals: Option<SignalFd>,
        stop: Option<Arc<EventFd>>,
    ) -> io::Result<()> {
        for node in &self.plan.nodes {
            netns::create(&node.namespace).map_err(context(&node.namespace))?;
            self.namespaces.push(node.namespace.clone());
        }
        let mut route_sockets = Vec::new();
        for node in &self.plan.nodes {
            let _inside = netns::Entered::new(&node.namespace)?;
            configure_sysctls(topology.congestion_control.as_deref())
                .map_err(context(&node.namespace))?;
            route_sockets.push(RouteSocket::open()?);
        }
        let mut links = Vec::new();
        for (j, link) in topology.links.iter().enumerate() {
            let lp = &self.plan.links[j];
            let open_in = |node: usize, device: &str| -> io::Result<_> {
                let _inside = netns::Entered::new(&self.plan.nodes[node].namespace)?;
                let fd = sys::open_tun(device).map_err(context(format!("TUN {device}")))?;
                let index = sys::interface_index(device)?;
                Ok((fd, index))
            };
            let (a_tun, a_ifindex) = open_in(link.a, &lp.a_device)?;
            let (b_tun, b_ifindex) = open_in(link.b, &lp.b_device)?;
            links.push(LinkIo {
                name: lp.name.clone(),
                a: link.a,
                b: link.b,
                a_tun,
                b_tun,
                a_ifindex,
                b_ifindex,
                forward: link.forward,
                reverse: link.reverse,
            });
        }
        for (u, node) in self.plan.nodes.iter().enumerate() {
            let mut commands = vec![
                "link set dev lo up".to_string(),
                format!("address add {}/32 dev lo", node.address),
            ];
            for (j, link) in topology.links.iter().enumerate() {
                let lp = &self.plan.links[j];
                let (device, local, peer) = if link.a == u {
                    (&lp.a_device, lp.a_address, lp.b_address)
                } else if link.b == u {
                    (&lp.b_device, lp.b_address, lp.a_address)
                } else {
                    continue;
                };
                commands.push(format!(
                    "link set dev {device} mtu {} txqueuelen {} up",
                    self.plan.mtu, options.txqueuelen
                ));
                commands.push(format!("address add {local} peer {peer} dev {device}"));
            }
            for route in &node.routes {
                commands.push(format!(
                    "route add {}/32 dev {} src {}",
                    route.destination, route.device, node.address
                ));
            }
            netns::ip_batch(&node.namespace, &commands).map_err(context(&node.namespace))?;
            if let Some(mask) = options.steer_cpus {
                let devices: Vec<&str> = topology
                    .links
                    .iter()
                    .enumerate()
                    .filter_map(|(j, link)| {
                        let lp = &self.plan.links[j];
                        (link.a == u)
                            .then_some(lp.a_device.as_str())
                            .or((link.b == u).then_some(lp.b_device.as_str()))
                    })
                    .collect();
                netns::steer_receive(&node.namespace, &devices, mask)
                    .map_err(context(format!("{}: receive steering", node.namespace)))?;
            }
        }
        if self.control.exists() {
            std::fs::remove_file(&self.control).map_err(context(self.control.display()))?;
        }
        let listener =
            UnixListener::bind(&self.control).map_err(context(self.control.display()))?;
        let plan_json = serde_json::to_value(&self.plan).map_err(io::Error::other)?;
        self.engine = Some(Engine::new(EngineConfig {
            node_names: topology.nodes.clone(),
            links,
            route_sockets,
            mtu: self.plan.mtu as usize,
            ring_slots: options.ring_slots,
            seed: options.seed,
            coalesce: options.coalesce,
            listener,
            plan: plan_json,
            signals,
            stop,
        })?);
        Ok(())
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Run one control command before (or instead of) the socket, e.g. `set * loss=1`.
    pub fn execute(&mut self, command: &str) -> serde_json::Value {
        match self.engine.as_mut() {
            Some(engine) => engine.execute(command),
            None => serde_json::json!({"ok": false, "error": "not running"}),
        }
    }

    /// Forward packets until stopped. Timer slack, the CPU and the real-time class apply to
    /// the calling thread, which is the packet thread.
    pub fn run(&mut self, rt_priority: Option<i32>, pin_cpu: Option<usize>) -> io::Result<()> {
        if let Err(e) = sys::minimal_timer_slack() {
            eprintln!("netemu: cannot set timer slack: {e}");
        }
        if let Some(cpu) = pin_cpu {
            sys::pin_to_cpu(cpu).map_err(context(format!("pin to CPU {cpu}")))?;
        }
        if let Some(priority) = rt_priority {
            sys::set_fifo_priority(priority).map_err(context("SCHED_FIFO"))?;
        }
        match self.engine.as_mut() {
            Some(engine) => engine.run(),
            None => Ok(()),
        }
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        // Close the devices first so nothing is forwarded while processes are stopped.
        self.engine = None;
        for ns in self.namespaces.iter().rev() {
            if let Err(e) = netns::destroy(ns, Duration::from_secs(1)) {
                eprintln!("netemu: cannot remove namespace {ns}: {e}");
            }
        }
        let _ = std::fs::remove_file(&self.control);
    }
}

/// Sysctls of a fresh namespace. IPv6 goes first so the devices created later never get
/// link-local addresses (no router solicitations or MLD reports on the links).
fn configure_sysctls(congestion_control: Option<&str>) -> io::Result<()> {
    for key in [
        "net/ipv6/conf/all/disable_ipv6",
        "net/ipv6/conf/default/disable_ipv6",
    ] {
        if let Err(e) = netns::write_sysctl(key, "1") {
            eprintln!("netemu: {e} (continuing)");
        }
    }
    netns::write_sysctl("net/ipv4/ip_forward", "1")?;
    // Cached ssthresh from one run must not leak into the next.
    netns::write_sysctl("net/ipv4/tcp_no_metrics_save", "1")?;
    if let Some(cc) = congestion_control {
        netns::write_sysctl("net/ipv4/tcp_congestion_control", cc).map_err(context(format!(
            "congestion_control {cc} (outside the initial namespace only \
             tcp_allowed_congestion_control algorithms can be the default)"
        )))?;
    }
    for key in [
        "net/ipv4/conf/all/rp_filter",
        "net/ipv4/conf/default/rp_filter",
        "net/ipv4/conf/all/send_redirects",
        "net/ipv4/conf/default/send_redirects",
    ] {
        netns::write_sysctl(key, "0")?;
    }
    Ok(())
}

/// An emulator on its own thread, for tests and embedding: `spawn` returns once the topology
/// is up; dropping the handle stops the thread and removes everything.
pub struct RunningEmulator {
    plan: Plan,
    control: PathBuf,
    stop: Arc<EventFd>,
    thread: Option<JoinHandle<io::Result<()>>>,
}

impl RunningEmulator {
    pub fn spawn(topology: Topology, options: Options) -> io::Result<RunningEmulator> {
        let stop = Arc::new(EventFd::new()?);
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        let thread_stop = Arc::clone(&stop);
        let control = options.control.clone();
        let thread =
            std::thread::Builder::new().name("netemu".into()).spawn(
                move || match Emulator::setup(&topology, &options, None, Some(thread_stop)) {
                    Ok(mut emulator) => {
                        let _ = ready_tx.send(Ok(emulator.plan().clone()));
                        emulator.run(options.rt_priority, options.pin_cpu)
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        Ok(())
                    }
                },
            )?;
        let plan = match ready_rx.recv() {
            Ok(Ok(plan)) => plan,
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e);
            }
            Err(_) => {
                let _ = thread.join();
                return Err(io::Error::other("emulator thread died during setup"));
            }
        };
        Ok(RunningEmulator {
            plan,
            control,
            stop,
            thread: Some(thread),
        })
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Send a control command (see [`crate::control`]) and return the JSON reply.
    pub fn control(&self, command: &str) -> io::Result<serde_json::Value> {
        crate::control::request(&self.control, command)
    }

    /// Stop, tear down and report how the packet loop ended.
    pub fn stop(mut self) -> io::Result<()> {
        self.finish()
    }

    fn finish(&mut self) -> io::Result<()> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        self.stop.signal()?;
        thread
            .join()
            .map_err(|_| io::Error::other("emulator thread panicked"))?
    }
}

impl Drop for RunningEmulator {
    fn drop(&mut self) {
        if let Err(e) = self.finish() {
            eprintln!("netemu: {e}");
        }
    }
}
