//! `netemu`: build a topology of network namespaces linked by emulated TUN links and forward
//! packets until Ctrl-C, SIGTERM or `netemu ctl ... shutdown`.

use clap::{Parser, Subcommand};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use weft_netemu::control;
use weft_netemu::netns;
use weft_netemu::sys::{self, SignalFd};
use weft_netemu::{unique_prefix, Emulator, Options, Topology};

#[derive(Parser)]
#[command(version, about = "Userspace link emulator between network namespaces")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the topology and forward packets. Prints `READY <plan json>` on stdout once the
    /// namespaces are usable; logs go to stderr.
    Run {
        #[arg(long)]
        topology: PathBuf,
        /// Namespaces are named PREFIX-<node> (default: netemu<pid>x0).
        #[arg(long)]
        prefix: Option<String>,
        /// Control socket (default: /run/netemu-PREFIX.sock).
        #[arg(long)]
        control: Option<PathBuf>,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Round timer wake-ups up to this many microseconds (trades delay accuracy for CPU).
        #[arg(long, default_value_t = 0)]
        coalesce_us: u64,
        /// Run the packet thread at this SCHED_FIFO priority.
        #[arg(long)]
        rt_priority: Option<i32>,
        #[arg(long, default_value_t = 8192)]
        ring_slots: usize,
        #[arg(long, default_value_t = 1000)]
        txqueuelen: u32,
        /// Run the packet thread on this CPU only.
        #[arg(long)]
        pin_cpu: Option<usize>,
        /// Steer the kernel's receive work behind every TUN write to these CPUs (RPS), e.g.
        /// "1" or "1,3": off the packet thread, which then only moves packets.
        #[arg(long, value_parser = parse_cpu_list)]
        steer_cpus: Option<u64>,
        /// A control command applied before READY, e.g. "set * loss=1"; repeatable.
        #[arg(long = "exec")]
        exec: Vec<String>,
        /// Shut down (and remove everything) when the parent process dies.
        #[arg(long)]
        exit_with_parent: bool,
    },
    /// Send one control command to a running emulator and print its JSON reply.
    Ctl {
        #[arg(long)]
        control: PathBuf,
        #[arg(required = true, num_args = 1..)]
        command: Vec<String>,
    },
    /// Print the addressing and routing plan of a topology without building it.
    Plan {
        #[arg(long)]
        topology: PathBuf,
        #[arg(long, default_value = "netemu")]
        prefix: String,
    },
    /// Remove namespaces left behind, killing what runs in them: `--prefix P` removes every
    /// P-*; `--orphans` removes those named FAMILY<pid>... (default family: netemu, the
    /// default prefix) whose creating process <pid> is gone.
    Cleanup {
        #[arg(long, conflicts_with = "orphans")]
        prefix: Option<String>,
        #[arg(long)]
        orphans: bool,
        #[arg(long, default_value = "netemu", requires = "orphans")]
        family: String,
    },
}

fn fail(code: u8, message: impl std::fmt::Display) -> ExitCode {
    eprintln!("netemu: {message}");
    ExitCode::from(code)
}

fn load(path: &std::path::Path) -> Result<Topology, ExitCode> {
    // A topology file, or a built-in shape of the shared format (`chain:4@delay=10ms`).
    Topology::load(&path.to_string_lossy()).map_err(|e| fail(2, format!("{}: {e}", path.display())))
}

fn valid_prefix(prefix: &str) -> bool {
    !prefix.is_empty()
        && prefix.len() <= 40
        && prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// "1" or "0,2-3" → a CPU bit mask.
fn parse_cpu_list(list: &str) -> Result<u64, String> {
    let mut mask = 0u64;
    for part in list.split(',') {
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (a, b),
            None => (part, part),
        };
        let parse = |s: &str| {
            s.trim()
                .parse::<u32>()
                .ok()
                .filter(|&c| c < 64)
                .ok_or_else(|| format!("{part:?}: expected CPU numbers 0-63 like 1 or 0,2-3"))
        };
        let (lo, hi) = (parse(lo)?, parse(hi)?);
        if lo > hi {
            return Err(format!("{part:?}: range runs backwards"));
        }
        for cpu in lo..=hi {
            mask |= 1 << cpu;
        }
    }
    Ok(mask)
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Cmd::Run {
            topology,
            prefix,
            control,
            seed,
            coalesce_us,
            rt_priority,
            ring_slots,
            txqueuelen,
            pin_cpu,
            steer_cpus,
            exec,
            exit_with_parent,
        } => {
            let topology = match load(&topology) {
                Ok(t) => t,
                Err(code) => return code,
            };
            let prefix = prefix.unwrap_or_else(unique_prefix);
            if !valid_prefix(&prefix) {
                return fail(2, "--prefix: use 1-40 characters [A-Za-z0-9_]");
            }
            if !(1..=99).contains(&rt_priority.unwrap_or(1)) {
                return fail(2, "--rt-priority: must be 1-99");
            }
            if !(16..=1 << 20).contains(&ring_slots) {
                return fail(2, "--ring-slots: must be 16-1048576");
            }
            // Block terminating signals before anything is created, so that Ctrl-C at any
            // point reaches the teardown instead of killing the process mid-way.
            let signals = match SignalFd::for_termination() {
                Ok(s) => s,
                Err(e) => return fail(1, format!("signalfd: {e}")),
            };
            // After the signal mask: the parent-death SIGTERM must reach the signalfd.
            if exit_with_parent {
                match sys::terminate_with_parent() {
                    Ok(true) => {}
                    Ok(false) => return fail(1, "parent already gone"),
                    Err(e) => return fail(1, format!("PR_SET_PDEATHSIG: {e}")),
                }
            }
            let control =
                control.unwrap_or_else(|| PathBuf::from(format!("/run/netemu-{prefix}.sock")));
            let mut options = Options::new(prefix, control);
            options.seed = seed;
            options.coalesce = Duration::from_micros(coalesce_us);
            options.rt_priority = rt_priority;
            options.ring_slots = ring_slots;
            options.txqueuelen = txqueuelen;
            options.pin_cpu = pin_cpu;
            options.steer_cpus = steer_cpus;
            let mut emulator = match Emulator::setup(&topology, &options, Some(signals), None) {
                Ok(e) => e,
                Err(e) => return fail(1, format!("setup failed: {e}")),
            };
            for command in &exec {
                let reply = emulator.execute(command);
                if reply.get("ok") != Some(&serde_json::Value::Bool(true)) {
                    return fail(2, format!("--exec {command:?}: {reply}"));
                }
            }
            let plan = match serde_json::to_string(emulator.plan()) {
                Ok(p) => p,
                Err(e) => return fail(1, e),
            };
            let mut stdout = std::io::stdout().lock();
            if writeln!(stdout, "READY {plan}")
                .and_then(|_| stdout.flush())
                .is_err()
            {
                return fail(1, "cannot write to stdout");
            }
            drop(stdout);
            eprintln!(
                "netemu: {} up ({} namespaces, control {})",
                topology.name,
                topology.nodes.len(),
                options.control.display()
            );
            match emulator.run(options.rt_priority, options.pin_cpu) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(1, e),
            }
        }
        Cmd::Ctl { control, command } => match control::request(&control, &command.join(" ")) {
            Ok(reply) => {
                println!("{reply}");
                if reply.get("ok") == Some(&serde_json::Value::Bool(true)) {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(2)
                }
            }
            Err(e) => fail(1, e),
        },
        Cmd::Plan { topology, prefix } => {
            let topology = match load(&topology) {
                Ok(t) => t,
                Err(code) => return code,
            };
            match serde_json::to_string_pretty(&topology.plan(&prefix)) {
                Ok(text) => {
                    println!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(1, e),
            }
        }
        Cmd::Cleanup {
            prefix,
            orphans,
            family,
        } => {
            let result = match (prefix, orphans) {
                (Some(p), false) if valid_prefix(&p) => netns::cleanup(&p, false),
                (None, true) if valid_prefix(&family) => netns::cleanup(&family, true),
                _ => return fail(2, "give --prefix PREFIX or --orphans [--family F]"),
            };
            match result {
                Ok(removed) => {
                    for name in removed {
                        eprintln!("netemu: removed {name}");
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => fail(1, e),
            }
        }
    }
}
