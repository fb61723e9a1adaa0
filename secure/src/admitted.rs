//! The overlay-wide list of admitted node keys: one `NODE PUBLIC_KEY` pair per line (an IPv4
//! node id and its public key), `#` starts a comment. One file can serve every node of an
//! overlay; it binds each node id to the only key that may speak for it.

use crate::keys::PublicKey;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use weft_core::NodeId;

pub type Admitted = BTreeMap<NodeId, PublicKey>;

/// Parses the list; errors name the line.
pub fn parse(text: &str) -> Result<Admitted, String> {
    let mut out = Admitted::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let n = i + 1;
        let mut words = line.split_whitespace();
        let (Some(node), Some(key), None) = (words.next(), words.next(), words.next()) else {
            return Err(format!("line {n}: expected `NODE PUBLIC_KEY`"));
        };
        let node: Ipv4Addr = node
            .parse()
            .map_err(|_| format!("line {n}: `{node}` is not an IPv4 node id"))?;
        let key = PublicKey::parse(key).map_err(|e| format!("line {n}: public key: {e}"))?;
        if out.insert(NodeId::from(node), key).is_some() {
            return Err(format!("line {n}: node {node} is listed twice"));
        }
    }
    Ok(out)
}

pub fn render(admitted: &Admitted) -> String {
    let mut s = String::from("# weft admitted node keys: NODE PUBLIC_KEY\n");
    for (node, key) in admitted {
        s += &format!("{node} {key}\n");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::SecretKey;

    #[test]
    fn round_trip_and_errors_name_the_line() {
        let mut a = Admitted::new();
        a.insert(
            NodeId::from(Ipv4Addr::new(127, 0, 0, 1)),
            SecretKey::generate().public(),
        );
        a.insert(
            NodeId::from(Ipv4Addr::new(127, 0, 0, 2)),
            SecretKey::generate().public(),
        );
        assert_eq!(parse(&render(&a)).unwrap(), a);
        let key = SecretKey::generate().public();
        assert!(parse(&format!("\n127.0.0.1 {key} extra\n"))
            .unwrap_err()
            .starts_with("line 2"));
        assert!(parse("nowhere abc").unwrap_err().contains("IPv4"));
        assert!(parse(&format!("1.2.3.4 {key}\n1.2.3.4 {key}"))
            .unwrap_err()
            .contains("twice"));
        assert!(parse("1.2.3.4 AAAA").unwrap_err().contains("public key"));
    }
}
