//! The exported functions that interpose libc's. Each one is a thin shell: it enters the shim
//! (or goes straight to libc when the shim is not ready or this thread is already inside it)
//! and hands over to the module that owns the concept.

pub mod data;
pub mod fd;
pub mod msg;
pub mod net;
pub mod proc;

use crate::guard::Entered;
use std::sync::atomic::{AtomicBool, Ordering};

static READY: AtomicBool = AtomicBool::new(false);

pub fn set_ready() {
    READY.store(true, Ordering::Release);
}

pub fn is_ready() -> bool {
    READY.load(Ordering::Acquire)
}

/// Inside the shim for this call, or `None`: go straight to libc.
pub fn enter() -> Option<Entered> {
    if !READY.load(Ordering::Acquire) {
        return None;
    }
    Entered::enter()
}

/// Defines exported hooks: `fn name(args) -> ret { body }`; the body runs inside the shim,
/// anything else goes to the real function of the same name.
macro_rules! hook {
    ($(
        $(#[$meta:meta])*
        fn $name:ident($($arg:ident : $ty:ty),* $(,)?) -> $ret:ty $body:block
    )*) => {$(
        $(#[$meta])*
        /// # Safety
        /// The contract of the libc function of the same name.
        #[no_mangle]
        pub unsafe extern "C" fn $name($($arg: $ty),*) -> $ret {
            let Some(_inside) = crate::hooks::enter() else {
                return crate::real::$name($($arg),*);
            };
            // Success leaves errno as the program had it, whatever the shim did meanwhile.
            let entry_errno = crate::guard::errno();
            // A closure, so a `return` in the body ends the body, not the hook.
            #[allow(clippy::redundant_closure_call)]
            let result: $ret = (|| -> $ret { $body })();
            if !crate::guard::HookResult::failed(result) {
                crate::guard::set_errno(entry_errno);
            }
            result
        }
    )*};
}
pub(crate) use hook;
