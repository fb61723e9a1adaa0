//! Control clients of the event loop: accepting connections on the control socket, reading
//! their requests, answering them (with passed fds), and dropping what a client leaves behind.

use super::*;

impl Daemon {
    pub(super) fn accept_clients(&mut self) {
        loop {
            match self.listener.accept() {
                Ok(Some(fd)) => {
                    let id = self.next_conn;
                    self.next_conn += 1;
                    let conn = Connection::new(fd, &self.policy);
                    if let Err(e) = self.poll.registry().register(
                        &mut SourceFd(&conn.fd.as_raw_fd()),
                        Token(CONN_BASE + id),
                        Interest::READABLE,
                    ) {
                        warn!("register client: {e}");
                        continue;
                    }
                    debug!(
                        id,
                        pid = conn.cred.pid,
                        uid = conn.cred.uid,
                        admin = conn.caller.admin,
                        "client connected"
                    );
                    self.conns.insert(id, conn);
                }
                Ok(None) => return,
                Err(e) => {
                    warn!("accept on control socket: {e}");
                    return;
                }
            }
        }
    }

    pub(super) fn read_client(&mut self, id: usize) {
        let mut buf = vec![0u8; MAX_MESSAGE];
        for _ in 0..64 {
            let Some(conn) = self.conns.get(&id) else {
                return;
            };
            let mut rec =
                match fdpass::recv_record(conn.fd.as_raw_fd(), &mut buf, libc::MSG_DONTWAIT) {
                    Ok(r) => r,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                    Err(_) => return self.drop_client(id),
                };
            if rec.is_eof() {
                return self.drop_client(id);
            }
            let reply = if rec.truncated {
                self.counters.control_malformed += 1;
                ipc_err(libc::EMSGSIZE, "control message too large")
            } else {
                match Request::decode(&buf[..rec.len]) {
                    Ok(req) => self.handle_request(id, req, rec.take_fd()),
                    Err(e) => {
                        self.counters.control_malformed += 1;
                        ipc_err(libc::EPROTO, e.to_string())
                    }
                }
            };
            let fds = std::mem::take(&mut self.reply_fds);
            self.send_reply(id, reply, fds);
        }
    }

    pub(super) fn send_reply(&mut self, id: usize, reply: Reply, fds: Vec<std::os::fd::OwnedFd>) {
        let Ok(rec) = reply.encode() else { return };
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if conn.reply(rec, fds).is_err() {
            return self.drop_client(id);
        }
        self.update_client_interest(id);
    }

    pub(super) fn flush_client(&mut self, id: usize) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if conn.flush().is_err() {
            return self.drop_client(id);
        }
        self.update_client_interest(id);
    }

    pub(super) fn update_client_interest(&mut self, id: usize) {
        let Some(conn) = self.conns.get(&id) else {
            return;
        };
        let interest = if conn.wants_write() {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        let _ = self.poll.registry().reregister(
            &mut SourceFd(&conn.fd.as_raw_fd()),
            Token(CONN_BASE + id),
            interest,
        );
    }

    /// Forgets a client and releases everything it held.
    pub(super) fn drop_client(&mut self, id: usize) {
        let Some(conn) = self.conns.remove(&id) else {
            return;
        };
        let _ = self
            .poll
            .registry()
            .deregister(&mut SourceFd(&conn.fd.as_raw_fd()));
        self.ports.retain(|_, owner| owner.conn() != id);
        for port in self.listeners.drop_client(id) {
            self.listener_gone(port);
        }
        self.release_memberships(conn.mc_sockets.iter().copied());
        debug!(id, pid = conn.cred.pid, "client gone");
    }

    /// The caller on connection `id` (one that is gone owns and administers nothing).
    pub(super) fn caller(&self, id: usize) -> access::Caller {
        self.conns.get(&id).map_or(
            access::Caller {
                uid: u32::MAX,
                ..Default::default()
            },
            |c| c.caller,
        )
    }

    /// Counts and logs a refusal; the reply the caller gets.
    fn refuse(&mut self, id: usize, request: &'static str, r: access::Refusal) -> Reply {
        self.access_counters.count(&r);
        if let Some(c) = self.conns.get_mut(&id) {
            c.refusals += 1;
            let (uid, pid, n) = (c.cred.uid, c.cred.pid, c.refusals);
            if access::loud(n) {
                warn!(
                    uid,
                    pid,
                    request,
                    refusals = n,
                    "control request refused: {}",
                    r.message
                );
            } else {
                debug!(
                    uid,
                    pid,
                    request,
                    refusals = n,
                    "control request refused: {}",
                    r.message
                );
            }
        }
        ipc_err(r.errno, r.message)
    }

    /// The uid of the connection that holds datagram port `port`.
    fn port_uid(&self, port: u16) -> Option<u32> {
        let owner = self.ports.get(&port)?;
        Some(self.conns.get(&owner.conn())?.caller.uid)
    }

    pub(super) fn handle_request(
        &mut self,
        id: usize,
        req: Request,
        fd: Option<std::os::fd::OwnedFd>,
    ) -> Reply {
        let request = access::kind(&req);
        let caller = self.caller(id);
        if access::class(&req) == access::Class::Admin {
            if let Err(r) = caller.require_admin(&format!("`{request}`")) {
                return self.refuse(id, request, r);
            }
        }
        match self.serve(id, caller, req, fd) {
            Ok(reply) => reply,
            Err(r) => self.refuse(id, request, r),
        }
    }

    /// Answers one request the caller may make (refusals of what it may not: `Err`).
    fn serve(
        &mut self,
        id: usize,
        caller: access::Caller,
        req: Request,
        fd: Option<std::os::fd::OwnedFd>,
    ) -> Result<Reply, access::Refusal> {
        let now = self.clock.now();
        Ok(match req {
            Request::Hello { kind, pid } => {
                if let Some(c) = self.conns.get_mut(&id) {
                    c.kind = Some(kind);
                    debug!(id, ?kind, pid, "hello");
                }
                Reply::Welcome(Welcome {
                    node: self.node.id(),
                    proxy_ip: self.cfg.proxy_ip,
                    nodes: self.node.known_nodes(),
                    prefixes: Vec::new(),
                })
            }
            Request::Nodes => Reply::Nodes {
                nodes: self.node.known_nodes(),
            },
            Request::Status => match serde_json::to_string(&self.status(now)) {
                Ok(json) => Reply::Status { json },
                Err(e) => ipc_err(libc::EIO, e.to_string()),
            },
            Request::Link { peer, action } => {
                match self.emulation.command(&mut self.node, now, &peer, &action) {
                    Ok(()) => Reply::Ok,
                    Err(e) => ipc_err(libc::EINVAL, e),
                }
            }
            Request::Neighbor { addr, action } => match self.neighbor_request(addr, action) {
                Ok(()) => Reply::Ok,
                Err(e) => ipc_err(libc::EINVAL, e),
            },
            Request::BindDatagram { port, deliver_to } => {
                let port = if port == 0 {
                    match (49152..=65535u16).find(|p| !self.ports.contains_key(p)) {
                        Some(p) => p,
                        None => return Ok(ipc_err(libc::EADDRINUSE, "no free port")),
                    }
                } else {
                    port
                };
                if self.ports.contains_key(&port) {
                    return Ok(ipc_err(libc::EADDRINUSE, format!("port {port} is in use")));
                }
                let owner = match deliver_to {
                    None => PortOwner::Control(id),
                    Some(to) => PortOwner::Deliver { conn: id, to },
                };
                self.ports.insert(port, owner);
                Reply::Bound { port }
            }
            Request::UnbindDatagram { port } => {
                if self.ports.get(&port).is_some_and(|o| o.conn() == id) {
                    self.ports.remove(&port);
                }
                Reply::Ok
            }
            Request::ProxyFor { remote } => match self.proxy_for(remote) {
                Ok((_, addr)) => Reply::Proxy { addr },
                Err(e) => ipc_err(e.raw_os_error().unwrap_or(libc::EIO), e.to_string()),
            },
            Request::ResolveProxy { proxy_port } => Reply::Resolved {
                remote: self.proxies.remote_of(proxy_port),
            },
            Request::SendDatagram {
                src_port,
                dst,
                ttl,
                payload,
            } => {
                if let Some(owner) = self.port_uid(src_port) {
                    caller.require_owner(
                        owner,
                        libc::EACCES,
                        &format!("datagram port {src_port}"),
                    )?;
                }
                match self.node.send_datagram(
                    now,
                    src_port,
                    dst,
                    &payload,
                    (ttl > 0).then_some(ttl),
                ) {
                    Ok(()) => Reply::Ok,
                    Err(SendError::NoRoute) => {
                        ipc_err(libc::EHOSTUNREACH, format!("no route to {}", dst.node))
                    }
                    Err(SendError::TooLarge) => ipc_err(libc::EMSGSIZE, "datagram too large"),
                }
            }
            Request::Connect {
                dst,
                local_port,
                filler,
                inode,
                rings,
            } => {
                let Some(fd) = fd else {
                    return Ok(ipc_err(libc::EINVAL, "connect needs a socketpair end"));
                };
                // Inodes are unique among live sockets: one already taken by another user's
                // session is a made-up name for theirs.
                if let Some((_, owner)) = self.stream_session(inode) {
                    caller.require_owner(owner, libc::EACCES, &format!("socket inode {inode}"))?;
                }
                match self.node.connect(now, local_port, dst) {
                    Ok((sid, local)) => {
                        let attached = self.attach_stream(
                            sid,
                            fd,
                            inode,
                            caller.uid,
                            streams::Phase::Connecting,
                            filler as usize,
                        );
                        let key = match attached {
                            Ok(key) => key,
                            Err(e) => {
                                self.node.session_abort(now, sid);
                                return Ok(ipc_err(libc::EIO, e.to_string()));
                            }
                        };
                        // The app's end is not ours to size: it set SO_SNDBUF itself. No
                        // ring (memory, descriptors): the session runs plain.
                        let granted = rings
                            && match self.attach_ring(key, None) {
                                Ok(fds) => {
                                    self.reply_fds.extend(fds);
                                    true
                                }
                                Err(e) => {
                                    warn!(session = sid, "no ring for a connect: {e}");
                                    false
                                }
                            };
                        Reply::Connecting {
                            local,
                            rings: granted,
                        }
                    }
                    Err(crate::overlay::OpenError::PortInUse) => {
                        ipc_err(libc::EADDRINUSE, "local port in use")
                    }
                    Err(crate::overlay::OpenError::NoPorts) => {
                        ipc_err(libc::EADDRNOTAVAIL, "no free local port")
                    }
                }
            }
            Request::ConnectStatus { inode } => match self.connect_status(inode) {
                Some((owner, result)) => {
                    caller.require_owner(owner, libc::EACCES, &format!("socket inode {inode}"))?;
                    Reply::ConnectStatus { result }
                }
                None => ipc_err(libc::EBADF, "no such overlay socket"),
            },
            Request::SessionInfo { inode } => match self
                .stream_session(inode)
                .and_then(|(sid, owner)| Some((owner, self.node.session_stats(sid)?)))
            {
                Some((owner, _)) if !caller.may_use(owner) => {
                    return Err(access::Refusal {
                        errno: libc::EACCES,
                        message: format!(
                            "socket inode {inode} belongs to another user (uid {owner})"
                        ),
                        admin: false,
                    })
                }
                Some((_, (local, remote, st))) => Reply::Session(weft_ipc::SessionInfo {
                    local: Some(local),
                    remote: Some(remote),
                    established: st.state == weft_transport::session::SessionState::Established,
                    rtt_us: st.rtt.as_micros().min(u32::MAX as u128) as u32,
                    rttvar_us: st.rttvar.as_micros().min(u32::MAX as u128) as u32,
                    cwnd_bytes: st.cwnd.min(u32::MAX as u64) as u32,
                    mss: st.mss as u32,
                    total_retrans: st.retransmits.min(u32::MAX as u64) as u32,
                    bytes_sent: st.bytes_sent,
                    bytes_received: st.bytes_received,
                }),
                None => ipc_err(libc::EBADF, "no such overlay socket"),
            },
            Request::SessionOptions { inode, options } => match self.stream_session(inode) {
                Some((sid, owner)) => {
                    caller.require_owner(owner, libc::EACCES, &format!("socket inode {inode}"))?;
                    // What the program wrote before changing them is the session's first:
                    // uncorking pushes everything it holds, as the kernel's does.
                    self.pull_app_bytes(inode);
                    let options = super::streams::session_options(options);
                    self.node.session_set_options(now, sid, options);
                    Reply::Ok
                }
                None => ipc_err(libc::EBADF, "no such overlay socket"),
            },
            Request::Listen {
                port,
                delivery,
                backlog,
            } => {
                if port == 0 {
                    return Ok(ipc_err(libc::EINVAL, "listen needs a port"));
                }
                // Another user's listener keeps its port, as the kernel keeps it (no
                // SO_REUSEPORT across users): its sessions are not ours to take.
                if let Some(owner) = self.listeners.other_owner(port, caller.uid) {
                    if !caller.privileged {
                        return Err(access::Refusal {
                            errno: libc::EADDRINUSE,
                            message: format!(
                                "port {port} is listened on by another user (uid {owner})"
                            ),
                            admin: false,
                        });
                    }
                }
                if self.listeners.add(port, id, delivery, caller.uid) {
                    // The first listener on the port: the node starts accepting.
                    let _ = self.node.listen(port);
                }
                if let weft_ipc::ListenDelivery::Inject(_) = delivery {
                    self.listener_backlog(port, backlog);
                }
                Reply::Ok
            }
            Request::Unlisten { port } => {
                if self.listeners.remove(port, id) {
                    self.listener_gone(port);
                }
                Reply::Ok
            }
            Request::ClaimAccepted {
                listen_port: _,
                proxy_port,
                rings,
            } => {
                // The shim passes the connection it accepted: holding it proves the claim.
                let proven = fd
                    .as_ref()
                    .is_some_and(|fd| self.listeners.proves_claim(proxy_port, fd));
                if let Some(owner) = self.listeners.claim_owner(proxy_port).filter(|_| !proven) {
                    caller.require_owner(
                        owner,
                        libc::EACCES,
                        &format!("the session waiting at proxy port {proxy_port}"),
                    )?;
                }
                match self.claim_accepted(proxy_port) {
                    Some((sid, app_end)) => {
                        let (local, peer) = match self.remote_of(sid) {
                            Some((l, r)) => (Some(l), Some(r)),
                            None => (None, None),
                        };
                        let ring_fds = self.start_claimed(sid, app_end.as_raw_fd(), rings);
                        let granted = ring_fds.is_some();
                        self.reply_fds.push(app_end);
                        self.reply_fds.extend(ring_fds.into_iter().flatten());
                        Reply::Claimed {
                            peer,
                            local,
                            rings: granted,
                        }
                    }
                    None => Reply::Claimed {
                        peer: None,
                        local: None,
                        rings: false,
                    },
                }
            }
            Request::Join {
                group,
                source,
                deliver_to,
                reliable,
            } => self.join(id, group, source, deliver_to, reliable)?,
            Request::Leave {
                group,
                source,
                deliver_to,
            } => self.leave(id, group, source, deliver_to)?,
            Request::GroupFilter {
                socket,
                group,
                filter,
                reliable,
            } => self.group_filter(id, socket, group, filter, reliable)?,
            Request::MulticastInfo => self.multicast_info(),
            Request::SourceAlias { node, ip } => self.source_alias(node, ip),
            Request::ResolveProxyAt { addr } => Reply::Resolved {
                remote: self.proxies.remote_at(addr),
            },
            Request::MulticastCheck => {
                self.check_kernel_members(true);
                Reply::Ok
            }
            Request::MulticastSend {
                port,
                hops,
                loopback,
            } => {
                // The options belong to the port's holder (or, for a port nobody holds, to
                // whoever set them first).
                let owner = self
                    .port_uid(port)
                    .or_else(|| self.mc_send.get(&port).map(|(_, uid)| *uid));
                if let Some(owner) = owner {
                    caller.require_owner(
                        owner,
                        libc::EACCES,
                        &format!("port {port} (its multicast send options)"),
                    )?;
                }
                // What the program sent before changing its options already waits on the
                // group proxies: it leaves with the options it was sent under.
                self.drain_group_proxies();
                self.mc_send
                    .insert(port, (groups::SendOptions { hops, loopback }, caller.uid));
                Reply::Ok
            }
        })
    }
}
