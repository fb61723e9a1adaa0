//! Control commands against a running engine: changes, counters and the stats report.

use super::{direction_seed, DirectionCounters, Engine, EventRecord};
use crate::control::{Command, Selector};
use crate::netlink::DeviceCounters;
use crate::params::ApplyPatch;
use crate::stats::{LatenessHistogram, LossEstimate, Z_999};
use crate::sys;
use serde_json::{json, Value};
use std::io;

impl Engine {
    /// Run one control command and build its reply.
    pub fn execute(&mut self, line: &str) -> Value {
        let command = match Command::parse(line) {
            Ok(c) => c,
            Err(e) => return json!({"ok": false, "error": e.to_string()}),
        };
        match command {
            Command::Stats => self.stats(),
            Command::Plan => json!({"ok": true, "plan": self.plan}),
            Command::Events => json!({"ok": true, "events": self.events}),
            Command::Reset => {
                self.reset_counters();
                self.log_event(line)
            }
            Command::Reseed(seed) => {
                for (i, d) in self.directions.iter_mut().enumerate() {
                    d.model.reseed(direction_seed(seed, i));
                }
                self.log_event(line)
            }
            Command::Shutdown => {
                self.stop_requested = true;
                json!({"ok": true})
            }
            Command::Down(sel) => self.set_up(&sel, false, line),
            Command::Up(sel) => self.set_up(&sel, true, line),
            Command::Set(sel, patch) => {
                let selected = match self.select(&sel) {
                    Ok(s) => s,
                    Err(e) => return json!({"ok": false, "error": e}),
                };
                // All or nothing: validate every direction before changing any.
                let mut updates = Vec::new();
                for &i in &selected {
                    match patch.apply(self.directions[i].model.params()) {
                        Ok(p) => updates.push((i, p)),
                        Err(e) => return json!({"ok": false, "error": e.to_string()}),
                    }
                }
                for (i, p) in updates {
                    self.directions[i].model.set_params(p);
                }
                self.log_event(line)
            }
        }
    }

    fn set_up(&mut self, selector: &Selector, up: bool, line: &str) -> Value {
        let selected = match self.select(selector) {
            Ok(s) => s,
            Err(e) => return json!({"ok": false, "error": e}),
        };
        for &i in &selected {
            let d = &mut self.directions[i];
            d.model.set_up(up);
            if !up {
                // A cut loses what is on the wire.
                d.counters.drop_down += d.ring.clear() as u64;
            }
        }
        self.log_event(line)
    }

    fn log_event(&mut self, line: &str) -> Value {
        let t_ns = sys::monotonic_now().as_nanos();
        self.events.push(EventRecord {
            t_ns,
            command: line.trim().to_string(),
        });
        json!({"ok": true, "t_ns": t_ns})
    }

    fn node_index(&self, name: &str) -> Option<usize> {
        self.node_names.iter().position(|n| n == name)
    }

    fn select(&self, selector: &Selector) -> Result<Vec<usize>, String> {
        let link_between = |x: &str, y: &str| -> Result<usize, String> {
            let (Some(x), Some(y)) = (self.node_index(x), self.node_index(y)) else {
                return Err("unknown node".to_string());
            };
            self.links
                .iter()
                .position(|l| (l.a, l.b) == (x, y) || (l.a, l.b) == (y, x))
                .ok_or_else(|| "no link between these nodes".to_string())
        };
        match selector {
            Selector::All => Ok((0..self.directions.len()).collect()),
            Selector::Link(x, y) => {
                let link = link_between(x, y)?;
                Ok(vec![2 * link, 2 * link + 1])
            }
            Selector::Direction { from, to } => {
                let link = link_between(from, to)?;
                let forward = self.node_index(from) == Some(self.links[link].a);
                Ok(vec![if forward { 2 * link } else { 2 * link + 1 }])
            }
        }
    }

    fn device_counters(&mut self, direction: usize) -> io::Result<DeviceCounters> {
        let d = &self.directions[direction];
        let socket = self
            .route_sockets
            .get_mut(d.from)
            .ok_or_else(|| io::Error::other("no rtnetlink socket for the node"))?;
        socket.device_counters(d.input_ifindex)
    }

    pub(super) fn reset_counters(&mut self) {
        for i in 0..self.directions.len() {
            let baseline = self.device_counters(i).unwrap_or_default();
            let d = &mut self.directions[i];
            d.counters = DirectionCounters::default();
            d.lateness.clear();
            d.device_baseline = baseline;
        }
        self.reset_at = sys::monotonic_now();
        self.cpu_at_reset = sys::process_cpu_ns(None).unwrap_or(0);
    }

    fn stats(&mut self) -> Value {
        let now = sys::monotonic_now();
        let mut total = LatenessHistogram::default();
        let mut faults = 0u64;
        let mut device_errors = Vec::new();
        let mut links: Vec<Value> = self
            .links
            .iter()
            .map(|l| json!({"name": l.name, "directions": []}))
            .collect();
        for i in 0..self.directions.len() {
            let device = self.device_counters(i);
            let d = &self.directions[i];
            total.merge(&d.lateness);
            let tx_dropped = match &device {
                Ok(c) => Some(c.tx_dropped.saturating_sub(d.device_baseline.tx_dropped)),
                Err(e) => {
                    device_errors.push(format!("{}: {e}", d.label));
                    None
                }
            };
            let c = &d.counters;
            faults += c.drop_ring + c.drop_write + c.drop_oversize + tx_dropped.unwrap_or(0);
            let p = d.model.params();
            let entry = json!({
                "label": d.label,
                "up": d.model.is_up(),
                "params": {
                    "delay_ms": p.delay.as_secs_f64() * 1e3,
                    "jitter_ms": p.jitter.as_secs_f64() * 1e3,
                    "loss": p.loss,
                    "expected_loss": p.loss.expected_rate(),
                    "rate_mbit": p.rate_bps as f64 / 1e6,
                    "queue_bytes": p.queue.bytes_at(p.rate_bps),
                },
                "counters": c,
                "queued": d.ring.len(),
                "loss": LossEstimate::new(c.loss_trials, c.drop_loss, &p.loss, Z_999),
                "lateness": d.lateness.summary(),
                "device_tx_dropped": tx_dropped,
            });
            if let Some(Value::Array(list)) =
                links.get_mut(d.link).and_then(|l| l.get_mut("directions"))
            {
                list.push(entry);
            }
        }
        let cpu = sys::process_cpu_ns(None).unwrap_or(0);
        json!({
            "ok": true,
            "now_ns": now.as_nanos(),
            "since_reset_ns": now.as_nanos().saturating_sub(self.reset_at.as_nanos()),
            "emulator_cpu_ns": cpu.saturating_sub(self.cpu_at_reset),
            "emulator_faults": faults,
            "device_errors": device_errors,
            "lateness": total.summary(),
            "lateness_buckets_us": total.buckets_us(),
            "links": links,
        })
    }
}
