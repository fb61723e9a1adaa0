//! execve, execvpe, execv, execvp, execl, execlp, execle, posix_spawn, posix_spawnp: revoke
//! ring mode on descriptors the new program inherits, and put the shim back into an
//! environment that dropped it. No re-entrancy guard here: in a vfork child the guard's memory is the parent's,
//! and a successful exec never returns to clear it.

use crate::exec::{self, MAX_ENV, SCRATCH};
use crate::real;
use libc::{c_char, c_int, pid_t, posix_spawn_file_actions_t, posix_spawnattr_t};

/// Runs `f` with `envp` patched (on this stack) if it needs to be.
unsafe fn with_env<R>(envp: *const *const c_char, f: impl FnOnce(*const *const c_char) -> R) -> R {
    let Some(saved) = exec::saved() else {
        return f(envp);
    };
    let mut out = [std::ptr::null(); MAX_ENV];
    let mut scratch = [0u8; SCRATCH];
    match exec::patch(envp, saved, &mut out, &mut scratch) {
        Some(patched) => f(patched),
        None => f(envp),
    }
}

/// # Safety
/// The contract of libc\'s `execve`.
#[no_mangle]
pub unsafe extern "C" fn execve(
    path: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    // Descriptors that survive the exec reach a program that may not load the shim.
    crate::rings::detach_all(true);
    with_env(envp, |env| real::execve(path, argv, env))
}

/// # Safety
/// The contract of libc\'s `execvpe`.
#[no_mangle]
pub unsafe extern "C" fn execvpe(
    file: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    crate::rings::detach_all(true);
    with_env(envp, |env| real::execvpe(file, argv, env))
}

/// # Safety
/// The contract of libc\'s `posix_spawn`.
#[no_mangle]
pub unsafe extern "C" fn posix_spawn(
    pid: *mut pid_t,
    path: *const c_char,
    acts: *const posix_spawn_file_actions_t,
    attr: *const posix_spawnattr_t,
    argv: *const *mut c_char,
    envp: *const *mut c_char,
) -> c_int {
    // The file actions may hand any descriptor to the child.
    crate::rings::detach_all(false);
    with_env(envp as *const *const c_char, |env| {
        real::posix_spawn(pid, path, acts, attr, argv, env as *const *mut c_char)
    })
}

/// # Safety
/// The contract of libc\'s `posix_spawnp`.
#[no_mangle]
pub unsafe extern "C" fn posix_spawnp(
    pid: *mut pid_t,
    file: *const c_char,
    acts: *const posix_spawn_file_actions_t,
    attr: *const posix_spawnattr_t,
    argv: *const *mut c_char,
    envp: *const *mut c_char,
) -> c_int {
    crate::rings::detach_all(false);
    with_env(envp as *const *const c_char, |env| {
        real::posix_spawnp(pid, file, acts, attr, argv, env as *const *mut c_char)
    })
}

extern "C" {
    static environ: *const *const c_char;
    fn weft_execl();
    fn weft_execlp();
    fn weft_execle();
}

/// # Safety
/// The contract of libc\'s `execv`.
#[no_mangle]
pub unsafe extern "C" fn execv(path: *const c_char, argv: *const *const c_char) -> c_int {
    execve(path, argv, environ)
}

/// # Safety
/// The contract of libc\'s `execvp`.
#[no_mangle]
pub unsafe extern "C" fn execvp(file: *const c_char, argv: *const *const c_char) -> c_int {
    execvpe(file, argv, environ)
}

/// Exports `$name` as a jump to the C function `$target` with every register and the stack
/// untouched, so a C-variadic call arrives as the caller made it (Rust cannot define
/// C-variadic functions on stable).
macro_rules! variadic_forward {
    ($($name:ident => $target:ident),* $(,)?) => {$(
        /// # Safety
        /// The contract of the libc function of the same name.
        #[no_mangle]
        #[unsafe(naked)]
        pub unsafe extern "C" fn $name() {
            #[cfg(target_arch = "x86_64")]
            core::arch::naked_asm!("jmp {0}", sym $target);
            #[cfg(target_arch = "aarch64")]
            core::arch::naked_asm!("b {0}", sym $target);
        }
    )*};
}

variadic_forward! {
    execl => weft_execl,
    execlp => weft_execlp,
    execle => weft_execle,
}
