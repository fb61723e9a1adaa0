//! Waiting inside a hook (a blocking `connect`) with the kernel's signal semantics.
//!
//! The kernel's connect wait returns `-ERESTARTSYS` on a signal: with an `SA_RESTART` handler
//! and no `SO_SNDTIMEO` the call goes on transparently, otherwise it fails with `EINTR`; a
//! signal that is ignored or stops the process does not interrupt it. `poll` would turn every
//! signal into `EINTR` (a program with an `SA_RESTART` `SIGCHLD` handler would see a
//! blocking connect fail), so the wait runs with every signal blocked, watches a `signalfd`
//! for the ones the program has not blocked, and decides per pending signal, then lets its
//! handler run by briefly restoring the program's mask. Holding signals from the start of the
//! call also catches one that arrives while the hook is still setting up.

use crate::guard::errno;
use libc::{c_int, sigset_t};

/// The signals a program can see: glibc keeps 32 and 33 for itself (cancellation, setxid).
fn program_signals() -> impl Iterator<Item = c_int> {
    (1..32).chain(libc::SIGRTMIN()..=libc::SIGRTMAX())
}

/// Every signal blocked for as long as it lives; the program's own mask restored after.
pub struct SignalsHeld {
    program: sigset_t,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// `fd` reported these events.
    Ready(libc::c_short),
    TimedOut,
    /// A signal interrupted the wait, and the kernel would not restart the call.
    Interrupted,
}

impl SignalsHeld {
    #[allow(clippy::new_without_default)] // blocking signals is an action, not a default
    pub fn new() -> SignalsHeld {
        let program = crate::guard::program_sigmask();
        // SAFETY: plain signal-mask calls on locals.
        unsafe {
            let mut all: sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_BLOCK, &all, std::ptr::null_mut());
        }
        SignalsHeld { program }
    }

    /// Signals the program has not blocked (what may interrupt it).
    fn deliverable(&self) -> sigset_t {
        // SAFETY: building a set from the saved mask.
        unsafe {
            let mut set: sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for sig in program_signals() {
                if libc::sigismember(&self.program, sig) == 0 {
                    libc::sigaddset(&mut set, sig);
                }
            }
            set
        }
    }

    /// Runs the handlers of pending signals the program has not blocked. `None`: there were
    /// none; `Some(restart)`: whether the interrupted call would be restarted.
    fn deliver_pending(&self, may_restart: bool) -> Option<bool> {
        // SAFETY: signal-set queries and mask changes on locals and our saved mask.
        unsafe {
            let mut pending: sigset_t = std::mem::zeroed();
            libc::sigpending(&mut pending);
            let mut any = false;
            let mut restart = may_restart;
            for sig in program_signals() {
                if libc::sigismember(&pending, sig) != 1
                    || libc::sigismember(&self.program, sig) == 1
                {
                    continue;
                }
                any = true;
                let mut act: libc::sigaction = std::mem::zeroed();
                libc::sigaction(sig, std::ptr::null(), &mut act);
                let handled =
                    act.sa_sigaction != libc::SIG_DFL && act.sa_sigaction != libc::SIG_IGN;
                if handled && act.sa_flags & libc::SA_RESTART == 0 {
                    restart = false;
                }
            }
            if !any {
                return None;
            }
            // Let the handlers run now, then hold everything again.
            let mut all: sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_SETMASK, &self.program, std::ptr::null_mut());
            libc::pthread_sigmask(libc::SIG_SETMASK, &all, std::ptr::null_mut());
            Some(restart)
        }
    }

    /// Waits for `events` on `fd` for at most `timeout_ms` (`< 0`: no limit). A finite
    /// timeout means `SO_SNDTIMEO` is set, and then the kernel never restarts.
    pub fn wait(&self, fd: c_int, events: libc::c_short, timeout_ms: c_int) -> Result<Wait, i32> {
        let deliverable = self.deliverable();
        // SAFETY: a close-on-exec signalfd we close below.
        let sfd =
            unsafe { libc::signalfd(-1, &deliverable, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
        if sfd < 0 {
            return Err(errno());
        }
        let start = crate::sys::monotonic_ms();
        let result = loop {
            if let Some(restart) = self.deliver_pending(timeout_ms < 0) {
                if !restart {
                    break Ok(Wait::Interrupted);
                }
            }
            let left = if timeout_ms < 0 {
                -1
            } else {
                let spent = crate::sys::monotonic_ms().saturating_sub(start);
                (timeout_ms as u64)
                    .saturating_sub(spent)
                    .min(c_int::MAX as u64) as c_int
            };
            let mut fds = [
                libc::pollfd {
                    fd,
                    events,
                    revents: 0,
                },
                libc::pollfd {
                    fd: sfd,
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: two valid pollfds.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, left) };
            if n < 0 {
                if errno() == libc::EINTR {
                    continue;
                }
                break Err(errno());
            }
            if fds[0].revents != 0 {
                break Ok(Wait::Ready(fds[0].revents));
            }
            if n == 0 {
                break Ok(Wait::TimedOut);
            }
        };
        crate::sys::close(sfd);
        result
    }
}

impl Drop for SignalsHeld {
    fn drop(&mut self) {
        // Under a shim lock the lock's own guard restores the mask when it is released.
        if !crate::guard::quiet() {
            // SAFETY: restoring the mask saved in new().
            unsafe {
                libc::pthread_sigmask(libc::SIG_SETMASK, &self.program, std::ptr::null_mut())
            };
        }
    }
}
