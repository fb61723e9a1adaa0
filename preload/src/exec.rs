//! Keeping the shim across `execve`: if the new environment dropped `LD_PRELOAD` (or the
//! shim from it) or `WEFT_SOCKET`, put them back. This can run in a vfork child, which shares
//! the parent's memory: no allocation, no locks, nothing but the stack.

use libc::c_char;
use std::ffi::{CStr, CString};
use std::sync::OnceLock;

/// Environments larger than this are passed unchanged.
pub const MAX_ENV: usize = 1024;
/// Room to build `LD_PRELOAD=<shim> <their value>`.
pub const SCRATCH: usize = 8192;

const PRELOAD: &[u8] = b"LD_PRELOAD=";
const SOCKET: &[u8] = b"WEFT_SOCKET=";

pub struct Saved {
    /// `LD_PRELOAD=...` as this process started with it.
    preload: CString,
    /// `WEFT_SOCKET=...`, if set.
    socket: Option<CString>,
    /// The shim's own path and file name.
    lib: Vec<u8>,
    lib_name: Vec<u8>,
}

static SAVED: OnceLock<Saved> = OnceLock::new();

pub fn saved() -> Option<&'static Saved> {
    SAVED.get()
}

fn lib_path() -> Option<Vec<u8>> {
    // SAFETY: dladdr on the address of a function in this library.
    unsafe {
        let mut info: libc::Dl_info = std::mem::zeroed();
        if libc::dladdr(lib_path as *const libc::c_void, &mut info) == 0 || info.dli_fname.is_null()
        {
            return None;
        }
        Some(CStr::from_ptr(info.dli_fname).to_bytes().to_vec())
    }
}

/// Captures what must survive an exec (constructor).
pub fn init() {
    let Some(lib) = lib_path() else { return };
    let env = |name: &str| std::env::var_os(name).map(std::os::unix::ffi::OsStringExt::into_vec);
    let preload_value = env("LD_PRELOAD")
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| lib.clone());
    let Ok(preload) = CString::new([PRELOAD, &preload_value].concat()) else {
        return;
    };
    let socket = env("WEFT_SOCKET").and_then(|v| CString::new([SOCKET, &v].concat()).ok());
    let lib_name = lib.rsplit(|&b| b == b'/').next().unwrap_or(&lib).to_vec();
    let _ = SAVED.set(Saved {
        preload,
        socket,
        lib,
        lib_name,
    });
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// An environment that keeps the shim, written into `out` (and `scratch`), or `None` when
/// `envp` already has everything (or is too large to rewrite safely).
///
/// # Safety
/// `envp` is null or a NULL-terminated array of NUL-terminated strings.
pub unsafe fn patch(
    envp: *const *const c_char,
    saved: &Saved,
    out: &mut [*const c_char; MAX_ENV],
    scratch: &mut [u8; SCRATCH],
) -> Option<*const *const c_char> {
    if envp.is_null() {
        return None;
    }
    let mut n = 0;
    let mut preload_at = None;
    let mut has_socket = false;
    while !(*envp.add(n)).is_null() {
        if n + 3 >= MAX_ENV {
            return None;
        }
        let e = CStr::from_ptr(*envp.add(n)).to_bytes();
        if e.starts_with(PRELOAD) {
            preload_at = Some(n);
        } else if e.starts_with(SOCKET) {
            has_socket = true;
        }
        n += 1;
    }
    let theirs = preload_at.map(|i| CStr::from_ptr(*envp.add(i)).to_bytes());
    let preload_ok =
        theirs.is_some_and(|v| contains(v, &saved.lib) || contains(v, &saved.lib_name));
    let add_socket = !has_socket && saved.socket.is_some();
    if preload_ok && !add_socket {
        return None;
    }
    let mut k = 0;
    for i in 0..n {
        if preload_at == Some(i) && !preload_ok {
            continue;
        }
        out[k] = *envp.add(i);
        k += 1;
    }
    if !preload_ok {
        out[k] = match theirs {
            // Ours first, then what they asked for.
            Some(v)
                if PRELOAD.len() + saved.lib.len() + 1 + (v.len() - PRELOAD.len()) < SCRATCH =>
            {
                let rest = &v[PRELOAD.len()..];
                let parts: [&[u8]; 4] = [PRELOAD, &saved.lib, b" ", rest];
                let mut at = 0;
                for p in parts {
                    scratch[at..at + p.len()].copy_from_slice(p);
                    at += p.len();
                }
                scratch[at] = 0;
                scratch.as_ptr() as *const c_char
            }
            _ => saved.preload.as_ptr(),
        };
        k += 1;
    }
    if add_socket {
        if let Some(s) = &saved.socket {
            out[k] = s.as_ptr();
            k += 1;
        }
    }
    out[k] = std::ptr::null();
    Some(out.as_ptr())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn saved() -> Saved {
        Saved {
            preload: CString::new("LD_PRELOAD=/opt/weft/libweft.so").unwrap(),
            socket: Some(CString::new("WEFT_SOCKET=/run/weft.sock").unwrap()),
            lib: b"/opt/weft/libweft.so".to_vec(),
            lib_name: b"libweft.so".to_vec(),
        }
    }

    fn run(env: &[&str]) -> Option<Vec<String>> {
        let owned: Vec<CString> = env.iter().map(|e| CString::new(*e).unwrap()).collect();
        let mut ptrs: Vec<*const c_char> = owned.iter().map(|c| c.as_ptr()).collect();
        ptrs.push(std::ptr::null());
        let mut out = [std::ptr::null(); MAX_ENV];
        let mut scratch = [0u8; SCRATCH];
        let s = saved();
        let p = unsafe { patch(ptrs.as_ptr(), &s, &mut out, &mut scratch) }?;
        let mut v = Vec::new();
        let mut i = 0;
        unsafe {
            while !(*p.add(i)).is_null() {
                v.push(CStr::from_ptr(*p.add(i)).to_string_lossy().into_owned());
                i += 1;
            }
        }
        Some(v)
    }

    #[test]
    fn intact_environment_is_left_alone() {
        assert_eq!(
            run(&["A=1", "LD_PRELOAD=/opt/weft/libweft.so", "WEFT_SOCKET=/x"]),
            None
        );
        assert_eq!(
            run(&["LD_PRELOAD=libfoo.so ./libweft.so", "WEFT_SOCKET=/x"]),
            None
        );
    }

    #[test]
    fn dropped_variables_come_back() {
        assert_eq!(
            run(&["A=1"]).unwrap(),
            [
                "A=1",
                "LD_PRELOAD=/opt/weft/libweft.so",
                "WEFT_SOCKET=/run/weft.sock"
            ]
        );
        assert_eq!(
            run(&["LD_PRELOAD=libfoo.so", "B=2", "WEFT_SOCKET=/y"]).unwrap(),
            [
                "B=2",
                "WEFT_SOCKET=/y",
                "LD_PRELOAD=/opt/weft/libweft.so libfoo.so"
            ]
        );
        assert_eq!(
            run(&[]).unwrap(),
            [
                "LD_PRELOAD=/opt/weft/libweft.so",
                "WEFT_SOCKET=/run/weft.sock"
            ]
        );
    }

    #[test]
    fn oversized_environments_pass_unchanged() {
        let big: Vec<String> = (0..MAX_ENV).map(|i| format!("V{i}=x")).collect();
        let refs: Vec<&str> = big.iter().map(|s| s.as_str()).collect();
        assert_eq!(run(&refs), None);
    }
}
