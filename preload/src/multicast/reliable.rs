//! Which groups ask for reliable delivery: `WEFT_RELIABLE_GROUPS`, a comma-separated list of
//! groups (`239.1.2.3`), prefixes (`239.1.0.0/16`, or the leading octets `239.1` / `239.1.*`)
//! or `*` for every group. Reliability is the receivers' choice: a join of a listed group
//! asks the overlay for hop-by-hop repair and per-source order toward this socket.

use std::net::Ipv4Addr;
use std::sync::OnceLock;

pub const ENV: &str = "WEFT_RELIABLE_GROUPS";

/// (network, prefix length) entries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupSet(Vec<(u32, u8)>);

impl GroupSet {
    /// Parses the list; entries that are not addresses or prefixes are skipped (and
    /// returned, so the shim can say so).
    pub fn parse(s: &str) -> (GroupSet, Vec<String>) {
        let mut set = Vec::new();
        let mut bad = Vec::new();
        for entry in s.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            match parse_entry(entry) {
                Some(p) => set.push(p),
                None => bad.push(entry.to_string()),
            }
        }
        (GroupSet(set), bad)
    }

    pub fn contains(&self, group: Ipv4Addr) -> bool {
        let a = u32::from(group);
        self.0.iter().any(|&(net, len)| {
            let mask = if len == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(len))
            };
            a & mask == net & mask
        })
    }
}

fn parse_entry(e: &str) -> Option<(u32, u8)> {
    if e == "*" {
        return Some((0, 0));
    }
    if let Some((a, len)) = e.split_once('/') {
        let a: Ipv4Addr = a.trim().parse().ok()?;
        let len: u8 = len.trim().parse().ok()?;
        return (len <= 32).then_some((u32::from(a), len));
    }
    // Leading octets: "239.1", "239.1.", "239.1.*".
    let body = e.trim_end_matches('*').trim_end_matches('.');
    let octets: Vec<u8> = body
        .split('.')
        .map(|o| o.parse().ok())
        .collect::<Option<Vec<u8>>>()?;
    if octets.is_empty() || octets.len() > 4 {
        return None;
    }
    let mut a = [0u8; 4];
    a[..octets.len()].copy_from_slice(&octets);
    Some((u32::from(Ipv4Addr::from(a)), (octets.len() * 8) as u8))
}

static GROUPS: OnceLock<GroupSet> = OnceLock::new();

/// Reads the environment (the constructor calls this).
pub fn init() {
    let Some(v) = std::env::var_os(ENV) else {
        return;
    };
    let (set, bad) = GroupSet::parse(&v.to_string_lossy());
    for b in bad {
        crate::log::debug!("{ENV}: `{b}` is not a group or prefix; ignored");
    }
    let _ = GROUPS.set(set);
}

pub fn is_reliable(group: Ipv4Addr) -> bool {
    GROUPS.get().is_some_and(|s| s.contains(group))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_prefixes_and_everything() {
        let (s, bad) =
            GroupSet::parse(" 239.1.2.3, 238.0.0.0/8 ,239.9 ,239.8.*, bogus, 1.2.3.4/40,");
        assert_eq!(bad, vec!["bogus".to_string(), "1.2.3.4/40".to_string()]);
        assert!(s.contains(Ipv4Addr::new(239, 1, 2, 3)));
        assert!(!s.contains(Ipv4Addr::new(239, 1, 2, 4)));
        assert!(s.contains(Ipv4Addr::new(238, 200, 0, 1)));
        assert!(s.contains(Ipv4Addr::new(239, 9, 255, 1)));
        assert!(s.contains(Ipv4Addr::new(239, 8, 0, 1)));
        assert!(!s.contains(Ipv4Addr::new(239, 10, 0, 1)));
        let (all, _) = GroupSet::parse("*");
        assert!(all.contains(Ipv4Addr::new(224, 0, 0, 1)));
        let (none, bad) = GroupSet::parse("");
        assert!(bad.is_empty());
        assert!(!none.contains(Ipv4Addr::new(239, 1, 2, 3)));
    }
}
