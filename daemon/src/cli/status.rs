//! `weft status`: the daemon's JSON, or a readable summary of it.

use crate::client::check;
use serde_json::Value;
use std::path::Path;
use weft_ipc::{Reply, Request};

pub fn fetch(socket: &Path) -> Result<Value, String> {
    let mut c = super::connect(socket)?;
    match check(c.request(Request::Status).map_err(|e| e.to_string())?) {
        Ok(Reply::Status { json }) => {
            serde_json::from_str(&json).map_err(|e| format!("bad status JSON: {e}"))
        }
        Ok(other) => Err(format!("unexpected reply {other:?}")),
        Err(e) => Err(e.to_string()),
    }
}

pub fn run(socket: &Path, json: bool) -> Result<i32, String> {
    let v = fetch(socket)?;
    let version = v["schema_version"].as_u64();
    if version != Some(u64::from(crate::io::STATUS_SCHEMA_VERSION)) {
        eprintln!(
            "weft: the daemon's status is schema {}, this weft reads schema {} (upgrade one of them)",
            version.map_or("unversioned".into(), |v| v.to_string()),
            crate::io::STATUS_SCHEMA_VERSION
        );
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?
        );
        return Ok(0);
    }
    print!("{}", render(&v));
    Ok(0)
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => format!("{f:.2}"),
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}

/// What a link's emulation parameters set, as `weft link set` would take them.
fn emulation_summary(p: &Value) -> String {
    let num = |k: &str| p[k].as_f64().unwrap_or(0.0);
    let mut parts = vec![];
    if num("loss_ratio") > 0.0 {
        parts.push(format!("loss={}%", num("loss_ratio") * 100.0));
    }
    if num("burst_ratio") > 0.0 {
        parts.push(format!("burst={}%", num("burst_ratio") * 100.0));
    }
    if num("delay_us") > 0.0 {
        parts.push(format!("delay={}ms", num("delay_us") / 1e3));
    }
    if num("jitter_us") > 0.0 {
        parts.push(format!("jitter={}ms", num("jitter_us") / 1e3));
    }
    if num("rate_bps") > 0.0 {
        parts.push(format!("rate={}mbit", num("rate_bps") / 1e6));
    }
    parts.join(" ")
}

pub fn render(v: &Value) -> String {
    let mut out = String::new();
    out += &format!(
        "node {}  listen {}  metric {}  recovery {}  up {:.1}s  emulation {}\n",
        s(&v["node"]),
        s(&v["listen"]),
        s(&v["metric"]),
        s(&v["recovery"]),
        v["uptime_ms"].as_f64().unwrap_or(0.0) / 1e3,
        s(&v["emulation"]),
    );
    let security = &v["security"];
    out += &format!(
        "links {}{}\n",
        s(&security["mode"]),
        match &security["public_key"] {
            Value::String(k) => format!("  public key {k}"),
            _ => String::new(),
        }
    );
    out += "\nneighbours:\n";
    out += &format!(
        "  {:<22} {:<15} {:<5} {:>9} {:>9} {:>7} {:>7}  {:<10} {:<10}  {}\n",
        "address",
        "node",
        "state",
        "rtt ms",
        "min ms",
        "loss",
        format!("cost {}", s(&v["cost_unit"])),
        "encrypted",
        "peer key",
        "link"
    );
    for n in v["neighbors"].as_array().into_iter().flatten() {
        let sec = security["links"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|l| l["addr"] == n["addr"]);
        let encrypted = match sec.map(|l| l["encrypted"].as_bool()) {
            Some(Some(true)) => "yes",
            Some(_) => "no",
            None => "insecure",
        };
        let peer_key: String = sec
            .and_then(|l| l["public_key"].as_str())
            .map(|k| format!("{}…", k.chars().take(8).collect::<String>()))
            .unwrap_or_else(|| "-".into());
        let loss = n["hello_loss_ratio"].as_f64().unwrap_or(0.0) * 100.0;
        let link = emulation_summary(&n["emulation"]["params"]);
        let cut = if n["cut"].as_bool().unwrap_or(false) {
            " CUT"
        } else {
            ""
        };
        out += &format!(
            "  {:<22} {:<15} {:<5} {:>9} {:>9} {:>6.1}% {:>7}  {:<10} {:<10}  {}{}\n",
            s(&n["addr"]),
            s(&n["node"]),
            s(&n["state"]),
            s(&n["rtt_ms"]),
            s(&n["min_rtt_ms"]),
            loss,
            s(&n["cost"]),
            encrypted,
            peer_key,
            link,
            cut
        );
    }
    out += "\nroutes:\n";
    out += &format!(
        "  {:<15} {:<15} {:>9}  {}\n",
        "destination", "next hop", "cost", "path"
    );
    for r in v["routes"].as_array().into_iter().flatten() {
        let path: Vec<String> = r["path"].as_array().into_iter().flatten().map(s).collect();
        out += &format!(
            "  {:<15} {:<15} {:>9}  {}\n",
            s(&r["dst"]),
            s(&r["next_hop"]),
            s(&r["cost"]),
            path.join(" > ")
        );
    }
    let sessions = v["sessions"].as_array().map_or(&[][..], |a| a.as_slice());
    if !sessions.is_empty() {
        out += "\nsessions:\n";
        out += &format!(
            "  {:<22} {:<22} {:<12} {:>8} {:>10} {:>12} {:>12} {:>6}\n",
            "local", "remote", "state", "rtt ms", "cwnd B", "sent B", "recv B", "retx"
        );
        for x in sessions {
            let ep = |e: &Value| format!("{}:{}", s(&e["node"]), s(&e["port"]));
            out += &format!(
                "  {:<22} {:<22} {:<12} {:>8} {:>10} {:>12} {:>12} {:>6}\n",
                ep(&x["local"]),
                ep(&x["remote"]),
                s(&x["state"]),
                s(&x["rtt_ms"]),
                s(&x["cwnd_bytes"]),
                s(&x["bytes_sent"]),
                s(&x["bytes_received"]),
                s(&x["retransmits"])
            );
        }
    }
    let groups = v["multicast"]["groups"]
        .as_array()
        .map_or(&[][..], |a| a.as_slice());
    if !groups.is_empty() {
        out += "\nmulticast groups:\n";
        for g in groups {
            let members: Vec<String> = g["members"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|m| s(&m["node"]))
                .collect();
            out += &format!(
                "  {:<15} local sockets {:<3} members {}\n",
                s(&g["group"]),
                s(&g["local_sockets"]),
                members.join(" ")
            );
        }
        for t in v["multicast"]["trees"].as_array().into_iter().flatten() {
            let hops: Vec<String> = t["next_hops"]
                .as_array()
                .into_iter()
                .flatten()
                .map(s)
                .collect();
            out += &format!(
                "  tree {} -> {}: from {} to [{}]{}\n",
                s(&t["source"]),
                s(&t["group"]),
                s(&t["upstream"]),
                hops.join(" "),
                if t["deliver_locally"].as_bool().unwrap_or(false) {
                    ", delivered here"
                } else {
                    ""
                }
            );
        }
    }
    out
}
