//! The control socket: a `SOCK_SEQPACKET` Unix listener and its connections (the shim in every
//! application process, and the `weft` CLI). Records are `weft_ipc::control` envelopes.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use weft_ipc::fdpass;

fn sockaddr_un(path: &Path) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    // SAFETY: sockaddr_un is plain data.
    let mut sa: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    sa.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() >= sa.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "socket path too long",
        ));
    }
    for (d, s) in sa.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    let len = (std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1) as libc::socklen_t;
    Ok((sa, len))
}

fn seqpacket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket creation.
    let raw = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// The socket's directory: created (mode 0755) only if its parent exists; an existing one
/// must belong to root or to us and must not be writable by others unless sticky.
fn prepare_dir(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.exists() {
        let parent_exists = dir
            .parent()
            .is_none_or(|p| p.as_os_str().is_empty() || p.is_dir());
        if !parent_exists {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "{} does not exist (weftd creates only the socket's own directory)",
                    dir.parent().unwrap_or(dir).display()
                ),
            ));
        }
        std::fs::DirBuilder::new().mode(0o755).create(dir)?;
    }
    let meta = std::fs::metadata(dir)?;
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != 0 && meta.uid() != me {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} belongs to uid {}: another user could replace the socket",
                dir.display(),
                meta.uid()
            ),
        ));
    }
    if meta.mode() & 0o002 != 0 && meta.mode() & 0o1000 == 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is writable by every user: another user could replace the socket",
                dir.display()
            ),
        ));
    }
    Ok(())
}

pub struct Listener {
    fd: OwnedFd,
    path: PathBuf,
}

impl Listener {
    /// Binds the control socket at `path`, mode 0660, group `group` (None: the daemon's).
    /// A leftover socket from a dead daemon is replaced; a live daemon on the path, or a file
    /// that is not a socket, is an error (nothing else is ever deleted). Of the directories
    /// only the socket's own is created, and only inside one that exists; the directory must
    /// belong to root or to the daemon's user and must not be writable by others (unless
    /// sticky), so no other user can swap the socket.
    pub fn bind(path: &Path, group: Option<u32>) -> io::Result<Listener> {
        let (sa, len) = sockaddr_un(path)?;
        prepare_dir(path)?;
        match std::fs::symlink_metadata(path) {
            Ok(meta) => {
                use std::os::unix::fs::FileTypeExt;
                if !meta.file_type().is_socket() {
                    return Err(io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        format!(
                            "{} exists and is not a socket: refusing to replace it",
                            path.display()
                        ),
                    ));
                }
                let probe = seqpacket()?;
                // SAFETY: connect with a valid sockaddr_un.
                let rc = unsafe {
                    libc::connect(
                        probe.as_raw_fd(),
                        &sa as *const _ as *const libc::sockaddr,
                        len,
                    )
                };
                let err = io::Error::last_os_error();
                if rc == 0
                    || err.raw_os_error() == Some(libc::EAGAIN)
                    || err.raw_os_error() == Some(libc::EINPROGRESS)
                {
                    return Err(io::Error::new(
                        io::ErrorKind::AddrInUse,
                        format!("another weftd is already serving {}", path.display()),
                    ));
                }
                std::fs::remove_file(path)?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let fd = seqpacket()?;
        let c = std::ffi::CString::new(path.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in socket path"))?;
        // SAFETY: bind/listen on our own socket with a valid address; chmod/chown on the
        // path we just bound (fchmod does not apply to a socket's file).
        unsafe {
            // Nobody may connect before the mode and group are right.
            let old = libc::umask(0o177);
            let rc = libc::bind(
                fd.as_raw_fd(),
                &sa as *const _ as *const libc::sockaddr,
                len,
            );
            libc::umask(old);
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            if let Some(gid) = group {
                if libc::chown(c.as_ptr(), u32::MAX, gid) != 0 {
                    let e = io::Error::last_os_error();
                    let _ = std::fs::remove_file(path);
                    return Err(io::Error::new(
                        e.kind(),
                        format!("giving the socket to group {gid}: {e}"),
                    ));
                }
            }
            // Members of the socket's group may connect; what each may do is checked per
            // request from SO_PEERCRED (`access`).
            if libc::chmod(c.as_ptr(), 0o660) != 0 || libc::listen(fd.as_raw_fd(), 128) != 0 {
                let e = io::Error::last_os_error();
                let _ = std::fs::remove_file(path);
                return Err(e);
            }
        }
        Ok(Listener {
            fd,
            path: path.to_path_buf(),
        })
    }

    pub fn accept(&self) -> io::Result<Option<OwnedFd>> {
        // SAFETY: accept4 on our listener; the result is owned at once.
        let raw = unsafe {
            libc::accept4(
                self.fd.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            )
        };
        if raw < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(None),
                _ => Err(e),
            };
        }
        // SAFETY: fresh descriptor.
        Ok(Some(unsafe { OwnedFd::from_raw_fd(raw) }))
    }
}

impl AsRawFd for Listener {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct PeerCred {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
}

pub fn peer_cred(fd: RawFd) -> Option<PeerCred> {
    // SAFETY: SO_PEERCRED fills a ucred.
    unsafe {
        let mut cred: libc::ucred = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
        let rc = libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            &mut cred as *mut _ as *mut libc::c_void,
            &mut len,
        );
        (rc == 0).then_some(PeerCred {
            pid: cred.pid,
            uid: cred.uid,
            gid: cred.gid,
        })
    }
}

/// One client connection: its socket, identity and the replies waiting for buffer space.
pub struct Connection {
    pub fd: OwnedFd,
    pub cred: PeerCred,
    /// What the caller may do (`access`), fixed when it connected.
    pub caller: super::access::Caller,
    /// Requests of this connection refused so far.
    pub refusals: u64,
    pub kind: Option<weft_ipc::ClientKind>,
    /// Sockets this client joined groups for (their memberships end with the client).
    pub mc_sockets: std::collections::BTreeSet<weft_multicast::SocketId>,
    /// Replies (with their fds) that did not fit; sent in order when writable.
    outbox: VecDeque<(Vec<u8>, Vec<OwnedFd>)>,
}

impl Connection {
    pub fn new(fd: OwnedFd, policy: &super::access::Policy) -> Self {
        // Without credentials the caller is nobody: uid u32::MAX owns nothing and
        // administers nothing.
        let cred = peer_cred(fd.as_raw_fd()).unwrap_or(PeerCred {
            pid: 0,
            uid: u32::MAX,
            gid: u32::MAX,
        });
        let caller = policy.caller(cred, fd.as_raw_fd());
        Connection {
            fd,
            cred,
            caller,
            refusals: 0,
            kind: None,
            mc_sockets: Default::default(),
            outbox: VecDeque::new(),
        }
    }

    /// Queues or sends a reply (replies are never dropped while the connection lives).
    pub fn reply(&mut self, record: Vec<u8>, fds: Vec<OwnedFd>) -> io::Result<()> {
        self.outbox.push_back((record, fds));
        self.flush()
    }

    /// Sends an unsolicited event; dropped if the client is not keeping up (like a datagram).
    pub fn event(&mut self, record: &[u8], fd: Option<RawFd>) -> io::Result<bool> {
        if !self.outbox.is_empty() {
            return Ok(false);
        }
        match fdpass::send_record(self.fd.as_raw_fd(), record, fd.as_slice()) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub fn flush(&mut self) -> io::Result<()> {
        while let Some((rec, fds)) = self.outbox.front() {
            let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
            match fdpass::send_record(self.fd.as_raw_fd(), rec, &raw) {
                Ok(()) => {
                    self.outbox.pop_front();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    pub fn wants_write(&self) -> bool {
        !self.outbox.is_empty()
    }
}
