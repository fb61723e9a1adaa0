//! Multicast at the daemon's edge: memberships of shimmed sockets (their filters, as the
//! kernel or the shim holds them) and of the CLI (joins and leaves, checked here with the
//! kernel's rules), the per-port send options (IP_MULTICAST_TTL/LOOP), and delivery of group
//! datagrams to every local socket that should get one: once to loopback for the kernel to
//! deliver (kernel-held memberships, see `kernel_groups`), or one copy per socket to its
//! delivery address; each from the sender's proxy so `recvfrom` names the true source.

use super::Daemon;
use std::net::{Ipv4Addr, SocketAddrV4};
use weft_core::{Endpoint, NodeId};
use weft_ipc::{Event, GroupDelivery, GroupFilterSpec, GroupSocket, Reply};
use weft_multicast::{FilterMode, SocketFilter, SocketId};

/// How a local port sends to groups.
#[derive(Debug, Clone, Copy)]
pub struct SendOptions {
    pub hops: u8,
    pub loopback: bool,
}

impl Default for SendOptions {
    fn default() -> Self {
        SendOptions {
            hops: 1,
            loopback: true,
        }
    }
}

/// The socket a membership delivers to: a kernel UDP address, or (0.0.0.0/8) a control
/// connection of the CLI.
fn socket_addr(id: SocketId) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from((id.0 >> 16) as u32), id.0 as u16)
}

fn control_conn(addr: SocketAddrV4) -> Option<usize> {
    let ip = u32::from(*addr.ip());
    (ip >> 24 == 0).then_some(ip as usize)
}

impl Daemon {
    /// A membership for the kernel socket `which` belongs to the uid that owns that socket
    /// (the kernel's own record): another user may not change it.
    fn membership_owner(
        &self,
        conn: usize,
        which: super::access::UdpSocket,
    ) -> Result<(), super::access::Refusal> {
        let caller = self.caller(conn);
        if caller.privileged {
            return Ok(());
        }
        match super::access::udp_owner(which) {
            Some(owner) => caller.require_owner(
                owner,
                libc::EACCES,
                &match which {
                    super::access::UdpSocket::Inode(i) => format!("the UDP socket with inode {i}"),
                    super::access::UdpSocket::Bound(a) => format!("the UDP socket at {a}"),
                },
            ),
            None => Ok(()),
        }
    }

    fn membership_socket(&self, conn: usize, deliver_to: SocketAddrV4) -> SocketId {
        // The CLI's deliver_to names its own connection, whatever number it put there.
        if control_conn(deliver_to).is_some() {
            return SocketId::from(SocketAddrV4::new(
                Ipv4Addr::from(conn as u32 & 0x00ff_ffff),
                deliver_to.port(),
            ));
        }
        SocketId::from(deliver_to)
    }

    pub(super) fn join(
        &mut self,
        conn: usize,
        group: NodeId,
        source: Option<NodeId>,
        deliver_to: SocketAddrV4,
        reliable: bool,
    ) -> Result<Reply, super::access::Refusal> {
        if control_conn(deliver_to).is_none() {
            self.membership_owner(conn, super::access::UdpSocket::Bound(deliver_to))?;
        }
        let socket = self.membership_socket(conn, deliver_to);
        let now = self.clock.now();
        match self.node.mc_join(now, socket, group, source, reliable) {
            Ok(()) => {
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.mc_sockets.insert(socket);
                }
                Ok(Reply::Ok)
            }
            Err(e) => Ok(Reply::Error {
                errno: e.errno(),
                message: e.to_string(),
            }),
        }
    }

    pub(super) fn leave(
        &mut self,
        conn: usize,
        group: NodeId,
        source: Option<NodeId>,
        deliver_to: SocketAddrV4,
    ) -> Result<Reply, super::access::Refusal> {
        if control_conn(deliver_to).is_none() {
            self.membership_owner(conn, super::access::UdpSocket::Bound(deliver_to))?;
        }
        let socket = self.membership_socket(conn, deliver_to);
        let now = self.clock.now();
        Ok(match self.node.mc_leave(now, socket, group, source) {
            Ok(()) => Reply::Ok,
            Err(e) => Reply::Error {
                errno: e.errno(),
                message: e.to_string(),
            },
        })
    }

    /// A shimmed socket's filter of `group` after a membership change.
    pub(super) fn group_filter(
        &mut self,
        conn: usize,
        socket: GroupSocket,
        group: NodeId,
        filter: Option<GroupFilterSpec>,
        reliable: bool,
    ) -> Result<Reply, super::access::Refusal> {
        if !group.is_multicast() {
            return Ok(Reply::Error {
                errno: libc::EINVAL,
                message: format!("{group} is not a multicast group"),
            });
        }
        self.membership_owner(
            conn,
            match socket {
                GroupSocket::Kernel { inode } => super::access::UdpSocket::Inode(inode),
                GroupSocket::Delivery(to) => super::access::UdpSocket::Bound(to),
            },
        )?;
        let id = match socket {
            GroupSocket::Kernel { inode } => {
                if self.kernel_groups.is_none() {
                    return Ok(Reply::Error {
                        errno: libc::EOPNOTSUPP,
                        message: "this daemon delivers to per-socket addresses".into(),
                    });
                }
                SocketId::kernel(inode)
            }
            GroupSocket::Delivery(to) => {
                let id = self.membership_socket(conn, to);
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.mc_sockets.insert(id);
                }
                id
            }
        };
        let filter = filter.map(|f| SocketFilter {
            mode: if f.exclude {
                FilterMode::Exclude
            } else {
                FilterMode::Include
            },
            sources: f.sources.into_iter().collect(),
        });
        if let (GroupSocket::Kernel { inode }, Some(kg)) = (socket, self.kernel_groups.as_mut()) {
            kg.reported(inode, group, filter.is_some());
        }
        let now = self.clock.now();
        self.node.mc_set_filter(now, id, group, filter, reliable);
        Ok(Reply::Ok)
    }

    pub(super) fn multicast_info(&self) -> Reply {
        Reply::MulticastInfo {
            delivery: match &self.kernel_groups {
                Some(kg) => GroupDelivery::Kernel {
                    proxy_net: kg.proxy_net,
                },
                None => GroupDelivery::Addresses,
            },
        }
    }

    /// A node's alias address, or the node behind one (kernel delivery).
    pub(super) fn source_alias(&mut self, node: Option<NodeId>, ip: Option<Ipv4Addr>) -> Reply {
        let this_node = self.node.id();
        let Some(kg) = self.kernel_groups.as_mut() else {
            return Reply::SourceAlias {
                node: None,
                ip: None,
            };
        };
        match (node, ip) {
            (Some(n), _) if !n.is_multicast() => Reply::SourceAlias {
                node: Some(n),
                ip: kg.alias(n, this_node),
            },
            (_, Some(ip)) => Reply::SourceAlias {
                node: kg.node_of(ip),
                ip: Some(ip),
            },
            _ => Reply::SourceAlias {
                node: None,
                ip: None,
            },
        }
    }

    /// A client went away (its process exited or crashed): its sockets' memberships end.
    pub(super) fn release_memberships(&mut self, sockets: impl IntoIterator<Item = SocketId>) {
        let now = self.clock.now();
        for s in sockets {
            self.node.mc_close(now, s);
        }
    }

    /// A datagram for group `dst.node`, sent with multicast TTL `ttl`: once to loopback if a
    /// kernel-held membership accepts `src` (the kernel matches ports and filters), and a
    /// copy for every other local socket that joined it on `dst.port` and accepts `src`.
    pub(super) fn deliver_group(&mut self, src: Endpoint, dst: Endpoint, payload: &[u8], ttl: u8) {
        let receivers = self.node.mc_local_receivers(dst.node, src.node);
        if receivers.is_empty() {
            self.counters.datagrams_no_listener += 1;
        }
        if receivers.iter().any(|s| s.kernel_inode().is_some()) {
            self.deliver_to_loopback_group(src, dst, ttl, payload);
        }
        for socket in receivers {
            if socket.kernel_inode().is_some() {
                continue;
            }
            let to = socket_addr(socket);
            if to.port() != dst.port {
                continue;
            }
            match control_conn(to) {
                Some(conn) => {
                    let Ok(rec) = (Event::Datagram {
                        src,
                        dst_port: dst.port,
                        payload: payload.to_vec(),
                    })
                    .encode() else {
                        continue;
                    };
                    match self.conns.get_mut(&conn).map(|c| c.event(&rec, None)) {
                        Some(Ok(true)) => {}
                        Some(Ok(false)) => self.counters.datagrams_dropped_slow_client += 1,
                        Some(Err(_)) | None => self.drop_client(conn),
                    }
                }
                None => self.deliver_via_proxy(src, to, payload),
            }
        }
    }
}
