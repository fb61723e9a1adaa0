//! Who may do what on the control socket. The socket file is mode 0660 (the daemon's user,
//! group `socket_group`): only that group's members connect at all. Every request is then
//! checked against the caller's credentials as the kernel gave them when it connected
//! (`SO_PEERCRED`, and `SO_PEERGROUPS` for its supplementary groups):
//!
//! - reading (hello, status, nodes, multicast info, proxy look-ups): anyone connected;
//! - administration, anything that changes the overlay for everyone (link set/cut/heal,
//!   neighbour add/remove): root, the daemon's own user, or a member of `admin_group`
//!   ([`Caller::require_admin`]); refused with `EPERM`;
//! - what a uid made (sessions and their outcomes, listeners and the sessions waiting for
//!   their `accept`, datagram ports, the multicast send options of a port) belongs to that
//!   uid ([`Caller::require_owner`]), a membership to the owner of its kernel UDP socket
//!   ([`udp_owner`]): another uid gets `EACCES`, or what the kernel answers for a port
//!   someone else holds (`EADDRINUSE`), never their data or metadata. Root and the daemon's
//!   user may act on anything (root could anyway). Passing the accepted connection with a
//!   claim proves it for any uid (`Listeners::proves_claim`).
//!
//! Every refusal is counted ([`AccessCounters`], in `weft status --json` under `access`) and
//! logged with the caller's uid and pid (the first few per connection at `warn`, then every
//! 1024th, so a scan cannot flood the log).

use super::control::PeerCred;
use serde::Serialize;
use weft_ipc::Request;

/// `SO_PEERGROUPS` (Linux 4.13; the same number on every architecture weft builds for).
const SO_PEERGROUPS: libc::c_int = 59;
/// Refusals per connection logged at `warn` before the log thins out.
pub const LOUD_REFUSALS: u64 = 8;

/// What a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Reading the daemon's state, or questions about the caller's own objects (checked
    /// where the object is found).
    Open,
    /// Changes the overlay for everyone.
    Admin,
}

/// Kind of request, for the log and for [`class`].
pub fn kind(req: &Request) -> &'static str {
    match req {
        Request::Hello { .. } => "hello",
        Request::Status => "status",
        Request::Nodes => "nodes",
        Request::Link { .. } => "link",
        Request::Connect { .. } => "connect",
        Request::ConnectStatus { .. } => "connect-status",
        Request::SessionInfo { .. } => "session-info",
        Request::SessionOptions { .. } => "session-options",
        Request::Listen { .. } => "listen",
        Request::Unlisten { .. } => "unlisten",
        Request::ClaimAccepted { .. } => "claim-accepted",
        Request::BindDatagram { .. } => "bind-datagram",
        Request::UnbindDatagram { .. } => "unbind-datagram",
        Request::SendDatagram { .. } => "send-datagram",
        Request::ProxyFor { .. } => "proxy-for",
        Request::ResolveProxy { .. } => "resolve-proxy",
        Request::Join { .. } => "join",
        Request::Leave { .. } => "leave",
        Request::MulticastSend { .. } => "multicast-send",
        Request::MulticastInfo => "multicast-info",
        Request::GroupFilter { .. } => "group-filter",
        Request::SourceAlias { .. } => "source-alias",
        Request::ResolveProxyAt { .. } => "resolve-proxy-at",
        Request::MulticastCheck => "multicast-check",
        Request::Neighbor { .. } => "neighbor",
    }
}

pub fn class(req: &Request) -> Class {
    match req {
        Request::Link { .. } | Request::Neighbor { .. } => Class::Admin,
        _ => Class::Open,
    }
}

/// Who the daemon takes as administrators.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// The daemon's effective uid (a user daemon's owner administers it).
    pub daemon_uid: u32,
    pub admin_gid: Option<u32>,
}

impl Policy {
    pub fn new(admin_gid: Option<u32>) -> Policy {
        Policy {
            // SAFETY: geteuid cannot fail.
            daemon_uid: unsafe { libc::geteuid() },
            admin_gid,
        }
    }

    /// The caller on connection `fd`, as the kernel recorded it at `connect`.
    pub fn caller(&self, cred: PeerCred, fd: std::os::fd::RawFd) -> Caller {
        let privileged = cred.uid == 0 || cred.uid == self.daemon_uid;
        let in_admin_group = self
            .admin_gid
            .is_some_and(|g| cred.gid == g || peer_groups(fd).contains(&g));
        Caller {
            uid: cred.uid,
            pid: cred.pid,
            privileged,
            admin: privileged || in_admin_group,
        }
    }
}

/// The peer's supplementary groups (empty if the kernel cannot say).
fn peer_groups(fd: std::os::fd::RawFd) -> Vec<u32> {
    let mut groups = vec![0u32; 64];
    for _ in 0..4 {
        let mut len = (groups.len() * std::mem::size_of::<u32>()) as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into the buffer.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                SO_PEERGROUPS,
                groups.as_mut_ptr() as *mut libc::c_void,
                &mut len,
            )
        };
        let n = len as usize / std::mem::size_of::<u32>();
        if rc == 0 {
            groups.truncate(n.min(groups.len()));
            return groups;
        }
        // ERANGE: `len` says how much is needed.
        if std::io::Error::last_os_error().raw_os_error() != Some(libc::ERANGE)
            || n <= groups.len()
            || n > 65_536
        {
            return Vec::new();
        }
        groups.resize(n, 0);
    }
    Vec::new()
}

/// One connection's caller.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub pid: i32,
    /// Root or the daemon's user: may act on any uid's objects.
    pub privileged: bool,
    /// May administer the overlay.
    pub admin: bool,
}

/// A refused request: the errno the shim hands the application, and what the CLI prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub errno: i32,
    pub message: String,
    pub admin: bool,
}

impl Caller {
    pub fn require_admin(&self, what: &str) -> Result<(), Refusal> {
        if self.admin {
            return Ok(());
        }
        Err(Refusal {
            errno: libc::EPERM,
            message: format!(
                "{what} changes the overlay for everyone: it needs root or the daemon's admin \
                 group (uid {} is neither)",
                self.uid
            ),
            admin: true,
        })
    }

    /// `what` was made by `owner`: only that uid (or root, or the daemon's user) may touch it.
    pub fn may_use(&self, owner: u32) -> bool {
        self.privileged || self.uid == owner
    }

    pub fn require_owner(&self, owner: u32, errno: i32, what: &str) -> Result<(), Refusal> {
        if self.may_use(owner) {
            return Ok(());
        }
        Err(Refusal {
            errno,
            message: format!("{what} belongs to another user (uid {owner})"),
            admin: false,
        })
    }
}

/// Refusals, by rule.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct AccessCounters {
    /// Administrative requests from callers that are not administrators.
    pub refused_admin: u64,
    /// Requests on another uid's session, listener, port or membership.
    pub refused_owner: u64,
}

impl AccessCounters {
    pub fn count(&mut self, r: &Refusal) {
        if r.admin {
            self.refused_admin += 1;
        } else {
            self.refused_owner += 1;
        }
    }
}

/// Whether the `n`th refusal of a connection (1-based) goes to the log at `warn`.
pub fn loud(n: u64) -> bool {
    n <= LOUD_REFUSALS || n.is_multiple_of(1024)
}

/// Which kernel UDP socket a membership request names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdpSocket {
    Inode(u64),
    /// Bound to this address (or to the wildcard address on its port).
    Bound(std::net::SocketAddrV4),
}

/// The uid that owns a kernel UDP socket, as `/proc/net/udp` says (`None`: no such socket, or
/// the table cannot be read).
pub fn udp_owner(which: UdpSocket) -> Option<u32> {
    ["/proc/net/udp", "/proc/net/udp6"]
        .into_iter()
        .find_map(|table| {
            let text = std::fs::read_to_string(table).ok()?;
            udp_owner_in(&text, which)
        })
}

/// [`udp_owner`] on the table's text: `sl local rem st queues tr retr uid timeout inode`.
fn udp_owner_in(text: &str, which: UdpSocket) -> Option<u32> {
    text.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let uid: u32 = f.get(7)?.parse().ok()?;
        let matches = match which {
            UdpSocket::Inode(inode) => f.get(9)?.parse::<u64>().ok()? == inode,
            UdpSocket::Bound(addr) => {
                let (ip, port) = f.get(1)?.split_once(':')?;
                // The kernel prints each 32-bit word of the network-order address as a
                // host-order hex number; an IPv6 socket holds IPv4 names when it is the
                // wildcard or an IPv4-mapped address (::ffff:a.b.c.d, the last word).
                let v4 = match ip.len() {
                    8 => ip,
                    32 if ip.bytes().all(|b| b == b'0') => "00000000",
                    32 if ip.get(..24)? == "0000000000000000FFFF0000" => ip.get(24..)?,
                    _ => return None,
                };
                let ip = std::net::Ipv4Addr::from(u32::from_str_radix(v4, 16).ok()?.to_le_bytes());
                u16::from_str_radix(port, 16).ok()? == addr.port()
                    && (ip == *addr.ip() || ip.is_unspecified())
            }
        };
        matches.then_some(uid)
    })
}

/// `name` or a number: the gid of a group.
pub fn resolve_group(spec: &str) -> Result<u32, String> {
    if let Ok(gid) = spec.parse::<u32>() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(spec) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        Ok(None) => Err(format!("no group named `{spec}`")),
        Err(e) => Err(format!("looking up group `{spec}`: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_ipc::LinkAction;

    fn caller(uid: u32, admin: bool) -> Caller {
        Caller {
            uid,
            pid: 1,
            privileged: uid == 0,
            admin: admin || uid == 0,
        }
    }

    #[test]
    fn administration_needs_an_administrator() {
        let link = Request::Link {
            peer: "x".into(),
            action: LinkAction::Cut,
        };
        assert_eq!(class(&link), Class::Admin);
        assert_eq!(class(&Request::Status), Class::Open);
        let r = caller(65534, false).require_admin("link").unwrap_err();
        assert_eq!(r.errno, libc::EPERM);
        assert!(r.admin && r.message.contains("65534"), "{}", r.message);
        assert!(caller(65534, true).require_admin("link").is_ok());
        assert!(caller(0, false).require_admin("link").is_ok());
    }

    #[test]
    fn objects_belong_to_their_uid() {
        let nobody = caller(65534, true);
        assert!(nobody.require_owner(65534, libc::EACCES, "s").is_ok());
        // Administering the overlay is not reading other users' sessions.
        let r = nobody.require_owner(1000, libc::EACCES, "s").unwrap_err();
        assert_eq!((r.errno, r.admin), (libc::EACCES, false));
        assert!(caller(0, false).may_use(1000));
        let mut c = AccessCounters::default();
        c.count(&r);
        assert_eq!((c.refused_admin, c.refused_owner), (0, 1));
    }

    #[test]
    fn the_log_thins_out() {
        assert!((1..=LOUD_REFUSALS).all(loud));
        assert!(!loud(LOUD_REFUSALS + 1) && loud(2048));
    }

    #[test]
    fn udp_sockets_have_owners() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
            1: 0100007F:1388 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4242 2 0 0\n\
            2: 00000000:1389 00000000:0000 07 00000000:00000000 00:00000000 00000000 65534        0 4343 2 0 0\n";
        let at = |ip: [u8; 4], port| UdpSocket::Bound(std::net::SocketAddrV4::new(ip.into(), port));
        assert_eq!(udp_owner_in(table, UdpSocket::Inode(4242)), Some(0));
        assert_eq!(udp_owner_in(table, UdpSocket::Inode(4343)), Some(65534));
        assert_eq!(udp_owner_in(table, UdpSocket::Inode(1)), None);
        assert_eq!(udp_owner_in(table, at([127, 0, 0, 1], 5000)), Some(0));
        assert_eq!(udp_owner_in(table, at([127, 0, 0, 2], 5000)), None);
        // A wildcard socket holds its port on every address.
        assert_eq!(udp_owner_in(table, at([127, 0, 0, 2], 5001)), Some(65534));
        let table6 = "  sl  local_address remote_address st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
            1: 00000000000000000000000000000000:1388 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000  1000        0 77 2 0 0\n\
            2: 0000000000000000FFFF00000100007F:1389 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000  1001        0 78 2 0 0\n";
        assert_eq!(udp_owner_in(table6, at([127, 0, 0, 9], 5000)), Some(1000));
        assert_eq!(udp_owner_in(table6, at([127, 0, 0, 1], 5001)), Some(1001));
        assert_eq!(udp_owner_in(table6, at([127, 0, 0, 2], 5001)), None);
        assert_eq!(udp_owner_in(table6, UdpSocket::Inode(78)), Some(1001));
        // This process's own socket, in the real table.
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let std::net::SocketAddr::V4(a) = s.local_addr().unwrap() else {
            panic!("v4")
        };
        // SAFETY: geteuid cannot fail.
        assert_eq!(
            udp_owner(UdpSocket::Bound(a)),
            Some(unsafe { libc::geteuid() })
        );
    }

    #[test]
    fn groups_by_name_or_number() {
        assert_eq!(resolve_group("0"), Ok(0));
        assert_eq!(resolve_group("root"), Ok(0));
        assert!(resolve_group("no-such-group-weft").is_err());
    }
}
