//! Where multicast will plug in (its own issue): group joins and leaves arrive as socket
//! options, and sends to 224.0.0.0/4 as `sendto`/`connect`. Until then the kernel handles all
//! of them; [`setsockopt`] is the single dispatch point the hooks already call.

use libc::{c_int, c_void, socklen_t};

/// Membership and multicast-interface options, in every spelling programs use.
pub fn is_multicast_option(level: c_int, name: c_int) -> bool {
    match level {
        libc::IPPROTO_IP => matches!(
            name,
            libc::IP_ADD_MEMBERSHIP
                | libc::IP_DROP_MEMBERSHIP
                | libc::IP_ADD_SOURCE_MEMBERSHIP
                | libc::IP_DROP_SOURCE_MEMBERSHIP
                | libc::IP_MULTICAST_IF
                | libc::IP_MULTICAST_TTL
                | libc::IP_MULTICAST_LOOP
                | libc::MCAST_JOIN_GROUP
                | libc::MCAST_LEAVE_GROUP
                | libc::MCAST_JOIN_SOURCE_GROUP
                | libc::MCAST_LEAVE_SOURCE_GROUP
        ),
        libc::IPPROTO_IPV6 => matches!(
            name,
            libc::IPV6_ADD_MEMBERSHIP
                | libc::IPV6_DROP_MEMBERSHIP
                | libc::IPV6_MULTICAST_IF
                | libc::IPV6_MULTICAST_HOPS
                | libc::IPV6_MULTICAST_LOOP
                | libc::MCAST_JOIN_GROUP
                | libc::MCAST_LEAVE_GROUP
        ),
        _ => false,
    }
}

/// `Some(rc)` when the option was handled here; `None`: the caller goes on (today: always,
/// so the kernel keeps handling multicast until the multicast issue lands).
///
/// # Safety
/// Arguments as the program passed them to setsockopt.
pub unsafe fn setsockopt(
    _fd: c_int,
    level: c_int,
    name: c_int,
    _val: *const c_void,
    _len: socklen_t,
) -> Option<c_int> {
    if is_multicast_option(level, name) {
        crate::log::debug!(
            "multicast option {level}/{name}: left to the kernel (not yet overlay multicast)"
        );
    }
    None
}
