//! Socket options a transplanted session emulates. Its descriptor is an `AF_UNIX` socket,
//! which refuses TCP and IP options (`EOPNOTSUPP`); programs query and set them anyway
//! (iperf3: `TCP_MAXSEG`, `TCP_CONGESTION`, `TCP_INFO`; curl: `TCP_NODELAY`, keepalive). The
//! values in force on the kernel socket are snapshotted at the transplant, later sets are
//! remembered, `TCP_INFO` comes from the daemon's session. Buffer sizes (de)serialise with
//! the kernel's rules: at most the caller's length, `*optlen` set to what was written.

use libc::{c_int, c_void, socklen_t};
use weft_ipc::{SessionInfo, StreamOptions};

/// Longest congestion-control name (`TCP_CA_NAME_MAX`).
const CA_NAME_MAX: usize = 16;
/// Size of `struct tcp_info` in the kernel this was written against (6.x).
pub const TCP_INFO_LEN: usize = 248;
/// `snd_ssthresh` before the first loss (the kernel's TCP_INFINITE_SSTHRESH).
const TCP_INFINITE_SSTHRESH: u32 = 0x7fff_ffff;

/// Options whose kernel value is carried into the emulation at a transplant.
const SNAPSHOT: &[(c_int, c_int)] = &[
    (libc::IPPROTO_TCP, libc::TCP_NODELAY),
    (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE),
    (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL),
    (libc::IPPROTO_TCP, libc::TCP_KEEPCNT),
    (libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT),
    (libc::IPPROTO_TCP, libc::TCP_CORK),
    (libc::IPPROTO_TCP, libc::TCP_QUICKACK),
    (libc::IPPROTO_TCP, libc::TCP_NOTSENT_LOWAT),
    (libc::IPPROTO_TCP, libc::TCP_SYNCNT),
    (libc::IPPROTO_TCP, libc::TCP_LINGER2),
    (libc::IPPROTO_TCP, libc::TCP_WINDOW_CLAMP),
    (libc::IPPROTO_TCP, libc::TCP_DEFER_ACCEPT),
];
const SNAPSHOT_V4: &[(c_int, c_int)] = &[
    (libc::IPPROTO_IP, libc::IP_TOS),
    (libc::IPPROTO_IP, libc::IP_TTL),
];
const SNAPSHOT_V6: &[(c_int, c_int)] = &[
    (libc::IPPROTO_IPV6, libc::IPV6_TCLASS),
    (libc::IPPROTO_IPV6, libc::IPV6_V6ONLY),
    (libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS),
];

/// Options whose values the daemon's session acts on (the shim sends the set after each
/// change: `weft_ipc::Request::SessionOptions`). Every other option is remembered and
/// reported only (preload/README.md says why for each).
pub fn drives_session(level: c_int, name: c_int) -> bool {
    matches!(
        (level, name),
        (libc::SOL_SOCKET, libc::SO_KEEPALIVE)
            | (
                libc::IPPROTO_TCP,
                libc::TCP_USER_TIMEOUT
                    | libc::TCP_KEEPIDLE
                    | libc::TCP_KEEPINTVL
                    | libc::TCP_KEEPCNT
                    | libc::TCP_NODELAY
                    | libc::TCP_CORK
            )
    )
}

/// The kernel's range checks for the options a session acts on (`EINVAL` outside them).
fn in_kernel_range(level: c_int, name: c_int, v: c_int) -> bool {
    match (level, name) {
        // MAX_TCP_KEEPIDLE, MAX_TCP_KEEPINTVL, MAX_TCP_KEEPCNT.
        (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE | libc::TCP_KEEPINTVL) => (1..=32767).contains(&v),
        (libc::IPPROTO_TCP, libc::TCP_KEEPCNT) => (1..=127).contains(&v),
        (libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT) => v >= 0,
        _ => true,
    }
}

/// Linux defaults for options nobody set or snapshotted (an inherited session).
fn default_int(level: c_int, name: c_int) -> Option<c_int> {
    Some(match (level, name) {
        (libc::IPPROTO_TCP, libc::TCP_NODELAY) => 0,
        (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE) => 7200,
        (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL) => 75,
        (libc::IPPROTO_TCP, libc::TCP_KEEPCNT) => 9,
        (libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT) => 0,
        (libc::IPPROTO_TCP, libc::TCP_CORK) => 0,
        (libc::IPPROTO_TCP, libc::TCP_QUICKACK) => 1,
        (libc::IPPROTO_TCP, libc::TCP_NOTSENT_LOWAT) => -1,
        (libc::IPPROTO_TCP, libc::TCP_SYNCNT) => 6,
        (libc::IPPROTO_TCP, libc::TCP_LINGER2) => 60,
        (libc::IPPROTO_TCP, libc::TCP_WINDOW_CLAMP) => 0,
        (libc::IPPROTO_TCP, libc::TCP_DEFER_ACCEPT) => 0,
        (libc::IPPROTO_IP, libc::IP_TOS) => 0,
        (libc::IPPROTO_IP, libc::IP_TTL) => 64,
        (libc::IPPROTO_IPV6, libc::IPV6_TCLASS) => 0,
        (libc::IPPROTO_IPV6, libc::IPV6_V6ONLY) => 0,
        (libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS) => 64,
        _ => return None,
    })
}

/// The TCP/IP options of one emulated session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opts {
    ints: Vec<(c_int, c_int, c_int)>,
    congestion: [u8; CA_NAME_MAX],
    maxseg: Option<c_int>,
}

impl Default for Opts {
    fn default() -> Opts {
        let mut congestion = [0u8; CA_NAME_MAX];
        congestion[..5].copy_from_slice(b"cubic");
        Opts {
            ints: Vec::new(),
            congestion,
            maxseg: None,
        }
    }
}

/// What a getsockopt/setsockopt on a session comes to.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Handled: return 0 (the buffers were filled).
    Done,
    /// Handled: fail with this errno.
    Fail(i32),
    /// Not emulated: ask the `AF_UNIX` socket (socket-level options).
    Pass,
    /// `TCP_INFO` / `TCP_MAXSEG`: needs the daemon's session figures.
    NeedSession,
}

impl Opts {
    /// The options in force on a kernel TCP socket about to become a session.
    pub fn snapshot(fd: c_int, domain: c_int) -> Opts {
        let mut o = Opts::default();
        let family_opts = if domain == libc::AF_INET6 {
            SNAPSHOT_V6
        } else {
            SNAPSHOT_V4
        };
        for &(level, name) in SNAPSHOT.iter().chain(family_opts) {
            if let Some(v) = crate::sys::sockopt_int(fd, level, name) {
                o.ints.push((level, name, v));
            }
        }
        let mut name = [0u8; CA_NAME_MAX];
        let mut len = CA_NAME_MAX as socklen_t;
        // SAFETY: name is a writable buffer of len bytes.
        let rc = unsafe {
            crate::real::getsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_CONGESTION,
                name.as_mut_ptr() as *mut c_void,
                &mut len,
            )
        };
        if rc == 0 && name[0] != 0 {
            o.congestion = name;
        }
        o
    }

    fn int(&self, level: c_int, name: c_int) -> Option<c_int> {
        self.ints
            .iter()
            .rev()
            .find(|(l, n, _)| *l == level && *n == name)
            .map(|(_, _, v)| *v)
            .or_else(|| default_int(level, name))
    }

    /// What the session does with these options, `SO_KEEPALIVE` as the socket holds it.
    pub fn stream_options(&self, keepalive: bool) -> StreamOptions {
        let get = |name| self.int(libc::IPPROTO_TCP, name).unwrap_or(0).max(0) as u32;
        StreamOptions {
            user_timeout_ms: get(libc::TCP_USER_TIMEOUT),
            keepalive,
            keepidle_s: get(libc::TCP_KEEPIDLE).max(1),
            keepintvl_s: get(libc::TCP_KEEPINTVL).max(1),
            keepcnt: get(libc::TCP_KEEPCNT).max(1),
            nodelay: get(libc::TCP_NODELAY) != 0,
            cork: get(libc::TCP_CORK) != 0,
        }
    }

    fn set_int(&mut self, level: c_int, name: c_int, v: c_int) {
        self.ints.retain(|(l, n, _)| !(*l == level && *n == name));
        self.ints.push((level, name, v));
    }

    /// `getsockopt` on a session for a TCP/IP-level option.
    ///
    /// # Safety
    /// `val`/`len` as the program passed them to getsockopt.
    pub unsafe fn get(
        &self,
        level: c_int,
        name: c_int,
        val: *mut c_void,
        len: *mut socklen_t,
    ) -> Outcome {
        match level {
            libc::SOL_SOCKET => return Outcome::Pass,
            libc::IPPROTO_TCP | libc::IPPROTO_IP | libc::IPPROTO_IPV6 => {}
            // What TCP answers for any other level (UDP_SEGMENT on a stream, say).
            _ => return Outcome::Fail(libc::ENOPROTOOPT),
        }
        if len.is_null() {
            return Outcome::Fail(libc::EFAULT);
        }
        if (*len as i32) < 0 {
            return Outcome::Fail(libc::EINVAL);
        }
        match (level, name) {
            (libc::IPPROTO_TCP, libc::TCP_INFO) => Outcome::NeedSession,
            (libc::IPPROTO_TCP, libc::TCP_MAXSEG) => match self.maxseg {
                Some(v) => put_int(v, val, len),
                None => Outcome::NeedSession,
            },
            (libc::IPPROTO_TCP, libc::TCP_CONGESTION) => {
                let n = (*len as usize).min(CA_NAME_MAX);
                if n > 0 && val.is_null() {
                    return Outcome::Fail(libc::EFAULT);
                }
                std::ptr::copy_nonoverlapping(self.congestion.as_ptr(), val as *mut u8, n);
                *len = n as socklen_t;
                Outcome::Done
            }
            _ => match self.int(level, name) {
                Some(v) => put_int(v, val, len),
                None => Outcome::Fail(libc::ENOPROTOOPT),
            },
        }
    }

    /// `setsockopt` on a session for a TCP/IP-level option.
    ///
    /// # Safety
    /// `val` readable for `len` bytes, as the program passed them.
    pub unsafe fn set(
        &mut self,
        level: c_int,
        name: c_int,
        val: *const c_void,
        len: socklen_t,
    ) -> Outcome {
        match level {
            libc::SOL_SOCKET => return Outcome::Pass,
            libc::IPPROTO_TCP | libc::IPPROTO_IP | libc::IPPROTO_IPV6 => {}
            // What TCP answers for any other level (UDP_SEGMENT on a stream, say).
            _ => return Outcome::Fail(libc::ENOPROTOOPT),
        }
        if (level, name) == (libc::IPPROTO_TCP, libc::TCP_CONGESTION) {
            let n = (len as usize).min(CA_NAME_MAX - 1);
            if n == 0 || val.is_null() {
                return Outcome::Fail(libc::EINVAL);
            }
            let mut name_buf = [0u8; CA_NAME_MAX];
            std::ptr::copy_nonoverlapping(val as *const u8, name_buf.as_mut_ptr(), n);
            let end = name_buf.iter().position(|&b| b == 0).unwrap_or(n);
            if end == 0 || !name_buf[..end].iter().all(|b| b.is_ascii_graphic()) {
                return Outcome::Fail(libc::ENOENT);
            }
            name_buf[end..].fill(0);
            self.congestion = name_buf;
            return Outcome::Done;
        }
        if (level, name) == (libc::IPPROTO_TCP, libc::TCP_INFO) {
            return Outcome::Fail(libc::ENOPROTOOPT);
        }
        // IP-level byte options may come as one byte (IP_TOS, IP_TTL); TCP wants an int.
        let v = if len as usize >= std::mem::size_of::<c_int>() && !val.is_null() {
            std::ptr::read_unaligned(val as *const c_int)
        } else if level == libc::IPPROTO_IP && len >= 1 && !val.is_null() {
            *(val as *const u8) as c_int
        } else {
            return Outcome::Fail(libc::EINVAL);
        };
        if !in_kernel_range(level, name, v) {
            return Outcome::Fail(libc::EINVAL);
        }
        if (level, name) == (libc::IPPROTO_TCP, libc::TCP_MAXSEG) {
            self.maxseg = Some(v);
        } else {
            self.set_int(level, name, v);
        }
        Outcome::Done
    }
}

/// Writes an int option with the kernel's length rules.
///
/// # Safety
/// `val` writable for `*len` bytes, `len` valid.
pub unsafe fn put_int(v: c_int, val: *mut c_void, len: *mut socklen_t) -> Outcome {
    let n = (*len as usize).min(std::mem::size_of::<c_int>());
    if n > 0 && val.is_null() {
        return Outcome::Fail(libc::EFAULT);
    }
    let bytes = v.to_ne_bytes();
    std::ptr::copy_nonoverlapping(bytes.as_ptr(), val as *mut u8, n);
    *len = n as socklen_t;
    Outcome::Done
}

/// MSS to report when the daemon gave none.
pub const DEFAULT_MSS: u32 = 1448;

/// `TCP_MAXSEG` of a session: the daemon's figure (or a sane default).
pub fn mss_of(info: Option<&SessionInfo>) -> c_int {
    info.map(|i| i.mss)
        .filter(|&m| m > 0)
        .unwrap_or(DEFAULT_MSS) as c_int
}

/// Connection state as `TCP_INFO` spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpState {
    Established = 1,
    SynSent = 2,
    Close = 7,
}

/// A `struct tcp_info` image (kernel layout) from the daemon's session figures.
pub fn tcp_info(state: TcpState, s: &SessionInfo) -> [u8; TCP_INFO_LEN] {
    let mut b = [0u8; TCP_INFO_LEN];
    let mss = if s.mss > 0 { s.mss } else { DEFAULT_MSS };
    let put32 = |b: &mut [u8; TCP_INFO_LEN], off: usize, v: u32| {
        b[off..off + 4].copy_from_slice(&v.to_ne_bytes())
    };
    let put64 = |b: &mut [u8; TCP_INFO_LEN], off: usize, v: u64| {
        b[off..off + 8].copy_from_slice(&v.to_ne_bytes())
    };
    b[0] = state as u8;
    let rto = (s.rtt_us.saturating_add(s.rttvar_us.saturating_mul(4))).max(200_000);
    put32(&mut b, 8, rto); // tcpi_rto
    put32(&mut b, 12, 40_000); // tcpi_ato
    put32(&mut b, 16, mss); // tcpi_snd_mss
    put32(&mut b, 20, mss); // tcpi_rcv_mss
    put32(&mut b, 60, mss + 52); // tcpi_pmtu
    put32(&mut b, 64, 65_535); // tcpi_rcv_ssthresh
    put32(&mut b, 68, s.rtt_us); // tcpi_rtt
    put32(&mut b, 72, s.rttvar_us); // tcpi_rttvar
    put32(&mut b, 76, TCP_INFINITE_SSTHRESH); // tcpi_snd_ssthresh
    put32(&mut b, 80, (s.cwnd_bytes / mss).max(1)); // tcpi_snd_cwnd (segments)
    put32(&mut b, 84, mss); // tcpi_advmss
    put32(&mut b, 88, 3); // tcpi_reordering
    put32(&mut b, 100, s.total_retrans); // tcpi_total_retrans
    put64(&mut b, 120, s.bytes_sent); // tcpi_bytes_acked
    put64(&mut b, 128, s.bytes_received); // tcpi_bytes_received
    put32(&mut b, 148, s.rtt_us); // tcpi_min_rtt
    put64(&mut b, 200, s.bytes_sent); // tcpi_bytes_sent
    put32(&mut b, 228, s.cwnd_bytes); // tcpi_snd_wnd
    put32(&mut b, 232, s.cwnd_bytes); // tcpi_rcv_wnd
    b
}

/// Copies a `tcp_info` image to the program (at most its length; `*len` = bytes written).
///
/// # Safety
/// `val` writable for `*len` bytes, `len` valid.
pub unsafe fn put_bytes(src: &[u8], val: *mut c_void, len: *mut socklen_t) -> Outcome {
    let n = (*len as usize).min(src.len());
    if n > 0 && val.is_null() {
        return Outcome::Fail(libc::EFAULT);
    }
    std::ptr::copy_nonoverlapping(src.as_ptr(), val as *mut u8, n);
    *len = n as socklen_t;
    Outcome::Done
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any option value a program passes is taken or refused, never a panic; reading back
        /// never writes past the caller's length.
        #[test]
        fn set_and_get_never_overrun(
            level in prop_oneof![Just(libc::IPPROTO_TCP), Just(libc::IPPROTO_IP), Just(libc::IPPROTO_IPV6), Just(libc::IPPROTO_UDP), any::<c_int>()],
            name in 0..40i32,
            value in proptest::collection::vec(any::<u8>(), 0..24),
            room in 0u32..40,
        ) {
            let mut o = Opts::default();
            let _ = unsafe { o.set(level, name, value.as_ptr() as *const c_void, value.len() as socklen_t) };
            let mut out = [0xA5u8; 64];
            let mut len = room as socklen_t;
            let r = unsafe { o.get(level, name, out.as_mut_ptr() as *mut c_void, &mut len) };
            if r == Outcome::Done {
                prop_assert!(len <= room);
            }
            prop_assert!(out[room as usize..].iter().all(|&b| b == 0xA5));
        }
    }

    fn get_int(
        o: &Opts,
        level: c_int,
        name: c_int,
        want_len: socklen_t,
    ) -> (Outcome, c_int, socklen_t) {
        let mut v: c_int = -7;
        let mut len = want_len;
        let r = unsafe { o.get(level, name, &mut v as *mut c_int as *mut c_void, &mut len) };
        (r, v, len)
    }

    #[test]
    fn set_then_get_round_trips_and_defaults_apply() {
        let mut o = Opts::default();
        assert_eq!(
            get_int(&o, libc::IPPROTO_TCP, libc::TCP_NODELAY, 4),
            (Outcome::Done, 0, 4)
        );
        let one: c_int = 1;
        let r = unsafe {
            o.set(
                libc::IPPROTO_TCP,
                libc::TCP_NODELAY,
                &one as *const c_int as *const c_void,
                4,
            )
        };
        assert_eq!(r, Outcome::Done);
        assert_eq!(
            get_int(&o, libc::IPPROTO_TCP, libc::TCP_NODELAY, 4),
            (Outcome::Done, 1, 4)
        );
        assert_eq!(
            get_int(&o, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, 4).1,
            7200
        );
        // A short int option: too short for TCP.
        let r = unsafe {
            o.set(
                libc::IPPROTO_TCP,
                libc::TCP_KEEPCNT,
                &one as *const c_int as *const c_void,
                2,
            )
        };
        assert_eq!(r, Outcome::Fail(libc::EINVAL));
        // IP_TOS as one byte, like some programs pass it.
        let tos: u8 = 0x10;
        let r = unsafe {
            o.set(
                libc::IPPROTO_IP,
                libc::IP_TOS,
                &tos as *const u8 as *const c_void,
                1,
            )
        };
        assert_eq!(r, Outcome::Done);
        assert_eq!(get_int(&o, libc::IPPROTO_IP, libc::IP_TOS, 4).1, 0x10);
        // Unknown options are refused like the kernel refuses unknown names.
        assert_eq!(
            get_int(&o, libc::IPPROTO_TCP, 9999, 4).0,
            Outcome::Fail(libc::ENOPROTOOPT)
        );
        assert_eq!(
            get_int(&o, libc::IPPROTO_TCP, libc::TCP_INFO, 232).0,
            Outcome::NeedSession
        );
        assert_eq!(
            get_int(&o, libc::IPPROTO_TCP, libc::TCP_MAXSEG, 4).0,
            Outcome::NeedSession
        );
        assert_eq!(
            get_int(&o, libc::SOL_SOCKET, libc::SO_SNDBUF, 4).0,
            Outcome::Pass
        );
    }

    #[test]
    fn session_options_follow_the_kernel_ranges_and_defaults() {
        let mut o = Opts::default();
        assert_eq!(
            o.stream_options(false),
            StreamOptions {
                user_timeout_ms: 0,
                keepalive: false,
                keepidle_s: 7200,
                keepintvl_s: 75,
                keepcnt: 9,
                nodelay: false,
                cork: false,
            }
        );
        let set = |o: &mut Opts, name: c_int, v: c_int| unsafe {
            o.set(
                libc::IPPROTO_TCP,
                name,
                &v as *const c_int as *const c_void,
                4,
            )
        };
        for (name, bad) in [
            (libc::TCP_KEEPIDLE, 0),
            (libc::TCP_KEEPIDLE, 32768),
            (libc::TCP_KEEPINTVL, -1),
            (libc::TCP_KEEPCNT, 128),
            (libc::TCP_USER_TIMEOUT, -5),
        ] {
            assert_eq!(
                set(&mut o, name, bad),
                Outcome::Fail(libc::EINVAL),
                "{name} {bad}"
            );
        }
        assert_eq!(set(&mut o, libc::TCP_KEEPIDLE, 1), Outcome::Done);
        assert_eq!(set(&mut o, libc::TCP_KEEPINTVL, 2), Outcome::Done);
        assert_eq!(set(&mut o, libc::TCP_KEEPCNT, 3), Outcome::Done);
        assert_eq!(set(&mut o, libc::TCP_USER_TIMEOUT, 1500), Outcome::Done);
        assert_eq!(
            o.stream_options(true),
            StreamOptions {
                user_timeout_ms: 1500,
                keepalive: true,
                keepidle_s: 1,
                keepintvl_s: 2,
                keepcnt: 3,
                nodelay: false,
                cork: false,
            }
        );
        assert!(drives_session(libc::SOL_SOCKET, libc::SO_KEEPALIVE));
        assert!(!drives_session(libc::IPPROTO_TCP, libc::TCP_QUICKACK));
    }

    #[test]
    fn congestion_name_is_kept_and_truncated_like_the_kernel() {
        let mut o = Opts::default();
        let r = unsafe {
            o.set(
                libc::IPPROTO_TCP,
                libc::TCP_CONGESTION,
                b"reno".as_ptr() as *const c_void,
                4,
            )
        };
        assert_eq!(r, Outcome::Done);
        let mut buf = [0xFFu8; 32];
        let mut len: socklen_t = 32;
        let r = unsafe {
            o.get(
                libc::IPPROTO_TCP,
                libc::TCP_CONGESTION,
                buf.as_mut_ptr() as *mut c_void,
                &mut len,
            )
        };
        assert_eq!(r, Outcome::Done);
        assert_eq!(len, 16);
        assert_eq!(&buf[..5], b"reno\0");
        assert_eq!(buf[16], 0xFF);
        let r = unsafe {
            o.set(
                libc::IPPROTO_TCP,
                libc::TCP_CONGESTION,
                c"".as_ptr() as *const c_void,
                1,
            )
        };
        assert_eq!(r, Outcome::Fail(libc::ENOENT));
    }

    #[test]
    fn tcp_info_has_the_fields_iperf3_reads() {
        let s = SessionInfo {
            established: true,
            rtt_us: 1500,
            rttvar_us: 200,
            cwnd_bytes: 14480,
            mss: 1448,
            total_retrans: 3,
            ..Default::default()
        };
        let b = tcp_info(TcpState::Established, &s);
        let u32_at = |off: usize| u32::from_ne_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]]);
        assert_eq!(b[0], 1);
        assert_eq!(u32_at(16), 1448);
        assert_eq!(u32_at(68), 1500);
        assert_eq!(u32_at(80), 10);
        assert_eq!(u32_at(100), 3);
        let mut out = [0u8; 104];
        let mut len: socklen_t = 104;
        assert_eq!(
            unsafe { put_bytes(&b, out.as_mut_ptr() as *mut c_void, &mut len) },
            Outcome::Done
        );
        assert_eq!(len, 104);
    }
}
