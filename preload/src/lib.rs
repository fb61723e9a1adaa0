//! `libweft.so`, the LD_PRELOAD shim: unmodified, dynamically linked programs talk over the
//! overlay when they address an overlay node, and to the kernel for everything else.
//!
//! Design (DESIGN.md §2–§3): the program's fd is always a real kernel socket whose readiness
//! is the emulated socket's readiness, so select/poll/epoll, fork, dup, exec inheritance,
//! O_NONBLOCK, timeouts, EINTR and cancellation need no hooks.
//! - Streams to overlay nodes become `AF_UNIX` socketpair ends pumped by the daemon
//!   ([`stream`]); listeners stay kernel sockets and overlay sessions are injected and claimed
//!   at `accept` ([`listen`]); datagrams go through daemon proxy addresses with names rewritten
//!   ([`dgram`]); TCP options are emulated ([`sockopt`]).
//! - Stream bytes move through shared-memory rings to the daemon ([`rings`]), the socketpair
//!   keeping readiness; everything else the hooks only classify, transplant and rename
//!   ([`hooks`]).
//! - Static and Go binaries bypass LD_PRELOAD entirely (see README.md).

pub mod addr;
pub mod control;
pub mod dgram;
pub mod exec;
pub mod fdtable;
pub mod guard;
pub mod interrupt;
pub mod listen;
pub mod log;
pub mod multicast;
pub mod real;
pub mod release;
pub mod rings;
pub mod sockopt;
pub mod state;
pub mod stream;
pub mod sys;
pub mod view;

// The exported hooks and the constructor are left out of unit-test builds: linked into the
// test harness they would interpose the harness's own libc calls.
#[cfg(not(test))]
pub mod hooks;

#[cfg(not(test))]
mod init {
    use crate::guard::{Entered, ForkQuiet};
    use crate::{control, exec, log, real, state, sys};

    #[used]
    #[link_section = ".init_array"]
    static CONSTRUCTOR: extern "C" fn() = constructor;

    /// Resolves libc, reads the environment, registers the fork handlers. No threads, no
    /// connection to the daemon (that waits for the first call that needs it).
    extern "C" fn constructor() {
        let _inside = Entered::hold();
        real::resolve_all();
        real::resolve_extra();
        state::set_owner(sys::getpid());
        log::init();
        control::init();
        exec::init();
        crate::rings::init();
        crate::multicast::init();
        // SAFETY: registering plain extern "C" handlers.
        unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(child)) };
        crate::hooks::set_ready();
        crate::log::debug!("loaded");
    }

    static QUIET: ForkQuiet = ForkQuiet::new();

    /// Takes both shim locks (control, then state) so the child never inherits one held by a
    /// thread that does not exist there.
    extern "C" fn prepare() {
        // SAFETY: the fork protocol: prepare takes, parent and child release.
        unsafe {
            QUIET.block();
            control::acquire_for_fork();
            state::shared_lock().acquire_for_fork();
            // Parent and child would share the rings: both continue on plain socketpair
            // bytes. Under the state lock, so no ring can be installed after the sweep.
            crate::rings::detach_all(false);
        }
    }

    extern "C" fn parent() {
        // SAFETY: releasing what prepare took, on the same thread.
        unsafe {
            state::shared_lock().release_after_fork();
            control::release_after_fork();
            QUIET.restore();
        }
    }

    /// The child owns its copy of the state, and must open its own control connection.
    extern "C" fn child() {
        let _inside = Entered::hold();
        // SAFETY: releasing what prepare took; the locks are held by this (only) thread.
        unsafe {
            state::set_owner(sys::getpid());
            crate::rings::after_fork_child();
            control::forget_in_child();
            state::shared_lock().release_after_fork();
            control::release_after_fork();
            QUIET.restore();
        }
    }
}
