//! Control messages. Every record on the control socket is one `postcard`-encoded envelope
//! `{version, body}`; a record from a newer or older protocol version is rejected with a
//! clear error rather than misread. Requests are answered in order, one reply per request;
//! only connections that asked for them (the CLI's `listen`/`recv`) receive unsolicited
//! [`Event`]s.
//!
//! Streams: the client creates an `AF_UNIX SOCK_STREAM` socketpair, keeps one end (the app's
//! fd) and passes the other with [`Request::Connect`]. Before passing it the client fills its
//! own end's send buffer to `EAGAIN` with `filler` bytes, so the app's fd is neither readable
//! nor writable while the overlay handshake runs. The daemon reads and discards exactly
//! `filler` bytes when the session is established (the fd becomes writable), or shuts its end
//! down when it fails (the fd reports `POLLHUP`); the outcome is then available from
//! [`Request::ConnectStatus`]. All per-socket queries are keyed by the inode of the client's
//! end (`fstat(fd).st_ino`), so they work from any process that holds the fd.
//!
//! Ring mode (`rings: true` in [`Request::Connect`] or [`Request::ClaimAccepted`]): the daemon
//! moves the session's bytes through a shared-memory region (`crate::ring`) instead of the
//! socketpair, which then carries only doorbells and credit filler. The reply says whether it
//! granted that and carries the region's memfd and the daemon's eventfd after any other fd.
//! Nothing flows before the grant, so the app can start in ring mode at once.

use serde::{Deserialize, Serialize};
use std::net::{SocketAddr, SocketAddrV4};
use thiserror::Error;
use weft_core::{Endpoint, NodeId};

/// 2: ring mode (`rings` in `Connect`, `ClaimAccepted` and their replies).
/// 3: `Listen` carries the listener's `backlog` (the daemon paces injected sessions to it).
/// 4: `SessionOptions` (a session's TCP_USER_TIMEOUT, keepalive, TCP_NODELAY and TCP_CORK
///    reach the daemon).
pub const PROTOCOL_VERSION: u16 = 4;
/// Largest control record either side sends or accepts (a 65 507-byte datagram plus framing).
pub const MAX_MESSAGE: usize = 70 * 1024;

/// Who is on the other end of a control connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientKind {
    /// The LD_PRELOAD shim inside an application.
    Shim,
    /// The `weft` command-line tool.
    Cli,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// First message on every connection. Answered with [`Reply::Welcome`].
    Hello {
        kind: ClientKind,
        pid: u32,
    },

    /// The daemon's state as JSON (what `weft status --json` prints).
    Status,
    /// The current set of overlay nodes: `Reply::Nodes` (the shim refreshes its view with it).
    Nodes,
    /// Run-time link emulation and cuts (accepted only when the daemon allows emulation).
    Link {
        peer: String,
        action: LinkAction,
    },

    /// Open an overlay session to `dst`; carries one fd (the daemon's end of a socketpair).
    /// `local_port` is the port the app bound, if any. `inode` names the client's end.
    /// `rings`: the client wants ring mode (see the module docs).
    Connect {
        dst: Endpoint,
        local_port: Option<u16>,
        filler: u32,
        inode: u64,
        rings: bool,
    },
    /// Outcome of a connect: `Reply::ConnectStatus`.
    ConnectStatus {
        inode: u64,
    },
    /// Addresses and transport state of a session: `Reply::Session`.
    SessionInfo {
        inode: u64,
    },
    /// The program set socket options that change how its session behaves: the whole set
    /// in force now (sent after each change, and at connect/accept when the kernel socket
    /// had any). `Reply::Ok`, or `EBADF` when the daemon holds no such session.
    SessionOptions {
        inode: u64,
        options: StreamOptions,
    },

    /// Accept overlay sessions on `port`. `backlog`: the `listen()` backlog in force (as
    /// the kernel applies it, at most `somaxconn`); with `Inject` delivery the daemon never
    /// has more sessions connected to the kernel listener and unclaimed than its accept
    /// queue holds (`backlog + 1`), and holds the others until `accept` makes room. Sent
    /// again when the program calls `listen()` again. Ignored for `Control` delivery.
    Listen {
        port: u16,
        delivery: ListenDelivery,
        backlog: u32,
    },
    Unlisten {
        port: u16,
    },
    /// The shim accepted a kernel connection whose peer is the daemon's proxy address at
    /// `proxy_port`: if it is an injected overlay session, the reply carries its fd. The
    /// session belongs to the listener's uid; the shim passes the accepted connection's fd
    /// along, which proves the claim for any uid that holds it (a daemon that does not look
    /// at it, or a client that passes none, falls back to the uid).
    ClaimAccepted {
        listen_port: u16,
        proxy_port: u16,
        rings: bool,
    },

    /// Receive overlay datagrams for `port` (0: allocate one). With `deliver_to`, datagrams are
    /// sent to that kernel UDP address from per-peer proxy sockets; without, they arrive on
    /// this connection as [`Event::Datagram`].
    BindDatagram {
        port: u16,
        deliver_to: Option<SocketAddrV4>,
    },
    UnbindDatagram {
        port: u16,
    },
    /// Send one datagram over the overlay from this node's `src_port`.
    SendDatagram {
        src_port: u16,
        dst: Endpoint,
        ttl: u8,
        payload: Vec<u8>,
    },
    /// The kernel address (on the daemon's proxy IP) that stands for `remote`: datagrams sent
    /// there from a local port P leave the overlay from (this node, P).
    ProxyFor {
        remote: Endpoint,
    },
    /// Which overlay endpoint a proxy port stands for.
    ResolveProxy {
        proxy_port: u16,
    },

    /// Join a multicast group on behalf of the socket delivered at `deliver_to` (port = the
    /// group port). `source`: only this source (source-specific membership). A `deliver_to`
    /// in 0.0.0.0/8 means "this control connection" (the CLI): datagrams arrive as
    /// `Event::Datagram`. Refusals carry the kernel's errno (EADDRINUSE for a double join,
    /// EADDRNOTAVAIL for leaving a group not joined).
    Join {
        group: NodeId,
        source: Option<NodeId>,
        deliver_to: SocketAddrV4,
        reliable: bool,
    },
    Leave {
        group: NodeId,
        source: Option<NodeId>,
        deliver_to: SocketAddrV4,
    },
    /// How datagrams a local port sends to groups travel: `hops` 0 keeps them on this host
    /// (IP_MULTICAST_TTL 0), anything else reaches the overlay; `loopback` is
    /// IP_MULTICAST_LOOP. Defaults: 1 and true.
    MulticastSend {
        port: u16,
        hops: u8,
        loopback: bool,
    },
    /// How this daemon delivers group datagrams to shimmed sockets: `Reply::MulticastInfo`.
    MulticastInfo,
    /// One socket's filter of `group` now (`None`: not a member). The shim sends it after
    /// every membership change: the kernel (or the shim, see [`GroupSocket`]) has already
    /// applied the rules, the daemon only aggregates.
    GroupFilter {
        socket: GroupSocket,
        group: NodeId,
        filter: Option<GroupFilterSpec>,
        reliable: bool,
    },
    /// Kernel delivery: the loopback address whose proxies stand for `node`'s endpoints (what
    /// a source filter on `node` becomes), or the node behind such an address. Answered with
    /// `Reply::SourceAlias` (both `None` when the daemon knows neither).
    SourceAlias {
        node: Option<NodeId>,
        ip: Option<std::net::Ipv4Addr>,
    },
    /// Which overlay endpoint the proxy at exactly `addr` stands for: `Reply::Resolved`.
    ResolveProxyAt {
        addr: SocketAddrV4,
    },
    /// A member socket may have closed: the daemon checks which kernel-held memberships
    /// still have a socket now instead of at its next periodic check.
    MulticastCheck,
    /// `weft neighbor add|remove`: link to (or unlink from) the daemon at `addr` now,
    /// without a restart. Answered with `Reply::Ok`.
    Neighbor {
        addr: SocketAddr,
        action: NeighborAction,
    },
}

/// The socket a [`Request::GroupFilter`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupSocket {
    /// Kernel delivery: the kernel holds the socket's memberships (on loopback) and delivers
    /// each group datagram the daemon sends there to every socket that matches; named by
    /// its inode, and released when no process holds the socket any more.
    Kernel { inode: u64 },
    /// Delivery addresses: the shim emulates the memberships; the daemon sends the socket's
    /// copy to this kernel address. Released with the shim's connection.
    Delivery(SocketAddrV4),
}

/// A socket's source filter of one group (`MCAST_INCLUDE`/`MCAST_EXCLUDE`); any-source is
/// `exclude` with no sources.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupFilterSpec {
    pub exclude: bool,
    pub sources: Vec<NodeId>,
}

/// How a daemon delivers group datagrams to shimmed sockets (`Reply::MulticastInfo`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupDelivery {
    /// Through the kernel: memberships are kernel memberships on loopback, and the daemon
    /// sends each group datagram once to the group on loopback from the proxy of its
    /// sender; proxies of node N live on N's alias address ([`Request::SourceAlias`]), all
    /// inside `proxy_net`/16.
    Kernel { proxy_net: std::net::Ipv4Addr },
    /// Per socket, to a delivery address of its own (a daemon that shares its network
    /// namespace with another daemon: loopback multicast would reach both daemons' sockets).
    Addresses,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NeighborAction {
    /// `node`: its overlay address if it differs from `addr`; `link`: emulation for packets
    /// from it (`weft link set` syntax, empty for none); `key`: its public key.
    Add {
        node: Option<NodeId>,
        link: String,
        /// Its public key (`weft keygen` prints it), when the admitted list does not name it.
        key: Option<String>,
    },
    Remove,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ListenDelivery {
    /// The shim's kernel listener at this address: the daemon connects to it from its proxy
    /// address so the app's `accept` wakes, and hands the session over on `ClaimAccepted`.
    Inject(SocketAddr),
    /// Incoming sessions arrive on this control connection as [`Event::Incoming`] with an fd.
    Control,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LinkAction {
    /// Emulation parameters, e.g. `loss=2% delay=20ms jitter=2ms rate=50mbit`.
    Set(String),
    Cut,
    Heal,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    pub node: NodeId,
    /// Kernel address the daemon's injected connections and datagram proxies come from.
    pub proxy_ip: std::net::Ipv4Addr,
    /// Every overlay node currently known (reachable or not); the shim redirects traffic for
    /// these addresses and for multicast groups.
    pub nodes: Vec<NodeId>,
    /// Extra prefixes (address, prefix length) that are always overlay-bound.
    pub prefixes: Vec<(std::net::Ipv4Addr, u8)>,
}

/// A session's socket options as the program set them, in the kernel's units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct StreamOptions {
    /// `TCP_USER_TIMEOUT` in milliseconds; 0 is the daemon's default.
    pub user_timeout_ms: u32,
    /// `SO_KEEPALIVE`.
    pub keepalive: bool,
    /// `TCP_KEEPIDLE`, `TCP_KEEPINTVL` (seconds), `TCP_KEEPCNT`.
    pub keepidle_s: u32,
    pub keepintvl_s: u32,
    pub keepcnt: u32,
    /// `TCP_NODELAY` (off: Nagle's algorithm).
    pub nodelay: bool,
    /// `TCP_CORK`, or a write with `MSG_MORE` under way.
    pub cork: bool,
}

/// What `TCP_INFO`, `getsockname` and `getpeername` report for a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct SessionInfo {
    pub local: Option<Endpoint>,
    pub remote: Option<Endpoint>,
    pub established: bool,
    pub rtt_us: u32,
    pub rttvar_us: u32,
    pub cwnd_bytes: u32,
    pub mss: u32,
    pub total_retrans: u32,
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    Welcome(Welcome),
    Ok,
    /// A failed request: an errno the shim can hand to the application, and a message.
    Error {
        errno: i32,
        message: String,
    },
    Status {
        json: String,
    },
    /// Local endpoint chosen for a connect; the outcome comes later (see module docs). With
    /// `rings`, two fds: the region's memfd, then the daemon's eventfd.
    Connecting {
        local: Endpoint,
        rings: bool,
    },
    /// `None` while pending, `Some(0)` once established, `Some(errno)` when it failed.
    ConnectStatus {
        result: Option<i32>,
    },
    Session(SessionInfo),
    /// Answer to `ClaimAccepted`: with one fd (the session) when `peer` is `Some`, then with
    /// `rings` the region's memfd and the daemon's eventfd.
    Claimed {
        peer: Option<Endpoint>,
        local: Option<Endpoint>,
        rings: bool,
    },
    Nodes {
        nodes: Vec<NodeId>,
    },
    Bound {
        port: u16,
    },
    Proxy {
        addr: SocketAddrV4,
    },
    Resolved {
        remote: Option<Endpoint>,
    },
    MulticastInfo {
        delivery: GroupDelivery,
    },
    SourceAlias {
        node: Option<NodeId>,
        ip: Option<std::net::Ipv4Addr>,
    },
}

/// Unsolicited messages, only to connections that asked for them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// A new session on a `ListenDelivery::Control` port; carries one fd.
    Incoming { port: u16, peer: Endpoint },
    /// A datagram for a port bound without `deliver_to`.
    Datagram {
        src: Endpoint,
        dst_port: u16,
        payload: Vec<u8>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Body {
    Request(Request),
    Reply(Reply),
    Event(Event),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Envelope {
    version: u16,
    body: Body,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ControlError {
    #[error("control message is malformed")]
    Malformed,
    #[error("control protocol version {0} is not supported (this side speaks {PROTOCOL_VERSION})")]
    Version(u16),
    #[error("control message of {0} bytes exceeds the {MAX_MESSAGE}-byte limit")]
    TooLarge(usize),
    #[error("unexpected control message")]
    Unexpected,
}

fn encode(body: Body) -> Result<Vec<u8>, ControlError> {
    let bytes = postcard::to_allocvec(&Envelope {
        version: PROTOCOL_VERSION,
        body,
    })
    .map_err(|_| ControlError::Malformed)?;
    if bytes.len() > MAX_MESSAGE {
        return Err(ControlError::TooLarge(bytes.len()));
    }
    Ok(bytes)
}

fn decode(bytes: &[u8]) -> Result<Body, ControlError> {
    if bytes.len() > MAX_MESSAGE {
        return Err(ControlError::TooLarge(bytes.len()));
    }
    // The version is the first field: read it alone so a future layout is reported as a
    // version mismatch, not as garbage.
    let (version, _) =
        postcard::take_from_bytes::<u16>(bytes).map_err(|_| ControlError::Malformed)?;
    if version != PROTOCOL_VERSION {
        return Err(ControlError::Version(version));
    }
    let env: Envelope = postcard::from_bytes(bytes).map_err(|_| ControlError::Malformed)?;
    Ok(env.body)
}

impl Request {
    pub fn encode(self) -> Result<Vec<u8>, ControlError> {
        encode(Body::Request(self))
    }

    pub fn decode(bytes: &[u8]) -> Result<Request, ControlError> {
        match decode(bytes)? {
            Body::Request(r) => Ok(r),
            _ => Err(ControlError::Unexpected),
        }
    }
}

/// What a client reads from the control socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    Reply(Reply),
    Event(Event),
}

impl Reply {
    pub fn encode(self) -> Result<Vec<u8>, ControlError> {
        encode(Body::Reply(self))
    }
}

impl Event {
    pub fn encode(self) -> Result<Vec<u8>, ControlError> {
        encode(Body::Event(self))
    }
}

impl Incoming {
    pub fn decode(bytes: &[u8]) -> Result<Incoming, ControlError> {
        match decode(bytes)? {
            Body::Reply(r) => Ok(Incoming::Reply(r)),
            Body::Event(e) => Ok(Incoming::Event(e)),
            Body::Request(_) => Err(ControlError::Unexpected),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trips() {
        let req = Request::Connect {
            dst: Endpoint::new(NodeId(0x7f000003), 5201),
            local_port: None,
            filler: 212_992,
            inode: 77,
            rings: true,
        };
        assert_eq!(
            Request::decode(&req.clone().encode().unwrap()).unwrap(),
            req
        );
        let rep = Reply::ConnectStatus {
            result: Some(libc::ECONNREFUSED),
        };
        assert_eq!(
            Incoming::decode(&rep.clone().encode().unwrap()).unwrap(),
            Incoming::Reply(rep)
        );
        let ev = Event::Datagram {
            src: Endpoint::new(NodeId(1), 2),
            dst_port: 3,
            payload: vec![0; 65_507],
        };
        assert_eq!(
            Incoming::decode(&ev.clone().encode().unwrap()).unwrap(),
            Incoming::Event(ev)
        );
    }

    #[test]
    fn version_mismatch_is_reported() {
        let mut bytes = Request::Status.encode().unwrap();
        bytes[0] = 9; // postcard varint for version 9
        assert_eq!(Request::decode(&bytes), Err(ControlError::Version(9)));
        assert_eq!(
            Request::decode(&Reply::Ok.encode().unwrap()),
            Err(ControlError::Unexpected)
        );
    }

    proptest! {
        #[test]
        fn decode_never_panics(data in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = Request::decode(&data);
            let _ = Incoming::decode(&data);
        }
    }
}
