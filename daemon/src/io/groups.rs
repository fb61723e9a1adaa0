//! Multicast at the daemon's edge: joins and leaves from shimmed sockets (or the CLI), the
//! per-port send options (IP_MULTICAST_TTL/LOOP), and delivery of group datagrams to every
//! local socket that joined, each from the sender's proxy so `recvfrom` names the true source.

use super::Daemon;
use std::net::{Ipv4Addr, SocketAddrV4};
use weft_core::{Endpoint, NodeId};
use weft_ipc::{Event, Reply};
use weft_multicast::SocketId;

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
    ) -> Reply {
        let socket = self.membership_socket(conn, deliver_to);
        let now = self.clock.now();
        match self.node.mc_join(now, socket, group, source, reliable) {
            Ok(()) => {
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.mc_sockets.insert(socket);
                }
                Reply::Ok
            }
            Err(e) => Reply::Error {
                errno: e.errno(),
                message: e.to_string(),
            },
        }
    }

    pub(super) fn leave(
        &mut self,
        conn: usize,
        group: NodeId,
        source: Option<NodeId>,
        deliver_to: SocketAddrV4,
    ) -> Reply {
        let socket = self.membership_socket(conn, deliver_to);
        let now = self.clock.now();
        match self.node.mc_leave(now, socket, group, source) {
            Ok(()) => Reply::Ok,
            Err(e) => Reply::Error {
                errno: e.errno(),
                message: e.to_string(),
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

    /// A datagram for group `dst.node`: a copy for every local socket that joined it on
    /// `dst.port` and accepts `src`.
    pub(super) fn deliver_group(&mut self, src: Endpoint, dst: Endpoint, payload: &[u8]) {
        let receivers = self.node.mc_local_receivers(dst.node, src.node);
        if receivers.is_empty() {
            self.counters.datagrams_no_listener += 1;
        }
        for socket in receivers {
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
