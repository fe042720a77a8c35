//! Linux: child-process guards, process-group kill, and libkrun via dlopen.
//!
//! libkrun is loaded at run time (`libkrun.so.1`, or `BOTTLE_LIBKRUN`) so the
//! project builds and runs without it; every call goes through [`Krun`],
//! which turns the C API's `-errno` results into [`KrunError`].

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::os::unix::process::CommandExt;
use std::process::Command;

/// Makes `cmd`'s child lead its own process group and die with SIGKILL when
/// the thread that spawned it exits, so killing our side kills the VM.
pub fn guard_child(cmd: &mut Command) {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs between fork and exec and only calls
    // async-signal-safe functions (setpgid, prctl, getppid, kill, getpid).
    unsafe {
        cmd.pre_exec(move || {
            if libc::setpgid(0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect.
            if libc::getppid() != parent {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
            Ok(())
        });
    }
}

/// Sends SIGKILL to the whole process group `pgid`. A group that is already
/// gone is not an error.
pub fn kill_group(pgid: u32) -> std::io::Result<()> {
    let Ok(pgid) = libc::pid_t::try_from(pgid) else {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    };
    if pgid <= 1 {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: plain syscall with a negative pid naming a process group we
    // created; no memory is shared.
    let rc = unsafe { libc::kill(-pgid, libc::SIGKILL) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ESRCH) {
            return Err(e);
        }
    }
    Ok(())
}

/// The host's kernel release (`uname -r`).
pub fn kernel_release() -> String {
    // SAFETY: utsname is plain old data; uname fills it and we only read
    // NUL-terminated fields from it.
    unsafe {
        let mut u: libc::utsname = std::mem::zeroed();
        if libc::uname(&mut u) != 0 {
            return "unknown".into();
        }
        CStr::from_ptr(u.release.as_ptr())
            .to_string_lossy()
            .into_owned()
    }
}

/// Errors from loading or calling libkrun.
#[derive(Debug, thiserror::Error)]
pub enum KrunError {
    #[error("cannot load {lib}: {reason} (install libkrun built with NET=1 BLK=1, or set BOTTLE_LIBKRUN)")]
    Load { lib: String, reason: String },
    #[error("{lib} lacks symbol {symbol} (needs libkrun >= 1.15 built with NET=1 BLK=1)")]
    Symbol { lib: String, symbol: &'static str },
    #[error("{call} failed: {source}")]
    Call {
        call: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("argument for {0} contains a NUL byte")]
    Nul(&'static str),
}

type FnCreate = unsafe extern "C" fn() -> i32;
type FnU32 = unsafe extern "C" fn(u32) -> i32;
type FnVmConfig = unsafe extern "C" fn(u32, u8, u32) -> i32;
type FnSetKernel =
    unsafe extern "C" fn(u32, *const c_char, u32, *const c_char, *const c_char) -> i32;
type FnNetUnixstream = unsafe extern "C" fn(u32, *const c_char, c_int, *const u8, u32, u32) -> i32;
type FnVsockPort2 = unsafe extern "C" fn(u32, u32, *const c_char, bool) -> i32;
type FnAddVsock = unsafe extern "C" fn(u32, u32) -> i32;
type FnPath = unsafe extern "C" fn(u32, *const c_char) -> i32;
type FnAddDisk = unsafe extern "C" fn(u32, *const c_char, *const c_char, bool) -> i32;

/// A loaded libkrun. The library stays loaded for the life of the process
/// (each VM runs in its own process, and `krun_start_enter` never returns).
#[derive(Debug)]
pub struct Krun {
    create_ctx: FnCreate,
    set_log_level: FnU32,
    set_vm_config: FnVmConfig,
    set_kernel: FnSetKernel,
    add_net_unixstream: FnNetUnixstream,
    disable_implicit_vsock: FnU32,
    add_vsock: FnAddVsock,
    add_vsock_port2: FnVsockPort2,
    set_console_output: FnPath,
    add_disk: FnAddDisk,
    start_enter: FnU32,
}

/// A libkrun VM context id.
#[derive(Debug, Clone, Copy)]
pub struct KrunCtx(u32);

fn check(call: &'static str, rc: i32) -> Result<i32, KrunError> {
    if rc < 0 {
        Err(KrunError::Call {
            call,
            source: std::io::Error::from_raw_os_error(-rc),
        })
    } else {
        Ok(rc)
    }
}

fn cstr(what: &'static str, s: &str) -> Result<CString, KrunError> {
    CString::new(s).map_err(|_| KrunError::Nul(what))
}

fn dlerror_string() -> String {
    // SAFETY: dlerror returns NULL or a NUL-terminated string owned by libc
    // that stays valid until the next dl* call on this thread; we copy it.
    unsafe {
        let e = libc::dlerror();
        if e.is_null() {
            "unknown dlopen error".into()
        } else {
            CStr::from_ptr(e).to_string_lossy().into_owned()
        }
    }
}

impl Krun {
    /// Loads libkrun from `lib` (a soname or a path).
    pub fn load(lib: &str) -> Result<Krun, KrunError> {
        let c = cstr("library path", lib)?;
        // SAFETY: `c` is a valid C string; dlopen runs the library's
        // constructors, which is what loading libkrun means.
        let handle = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if handle.is_null() {
            return Err(KrunError::Load {
                lib: lib.into(),
                reason: dlerror_string(),
            });
        }
        let sym = |name: &'static str| -> Result<*mut c_void, KrunError> {
            let c = CString::new(name).map_err(|_| KrunError::Nul("symbol"))?;
            // SAFETY: handle is a live dlopen handle and `c` a valid C string.
            let p = unsafe { libc::dlsym(handle, c.as_ptr()) };
            if p.is_null() {
                Err(KrunError::Symbol {
                    lib: lib.into(),
                    symbol: name,
                })
            } else {
                Ok(p)
            }
        };
        // SAFETY: for every transmute below, each symbol is a function of
        // libkrun's C API whose prototype in libkrun.h matches the Rust type
        // it is cast to; the handle is never closed, so the pointers stay valid.
        unsafe {
            Ok(Krun {
                create_ctx: std::mem::transmute::<*mut c_void, FnCreate>(sym("krun_create_ctx")?),
                set_log_level: std::mem::transmute::<*mut c_void, FnU32>(sym(
                    "krun_set_log_level",
                )?),
                set_vm_config: std::mem::transmute::<*mut c_void, FnVmConfig>(sym(
                    "krun_set_vm_config",
                )?),
                set_kernel: std::mem::transmute::<*mut c_void, FnSetKernel>(sym(
                    "krun_set_kernel",
                )?),
                add_net_unixstream: std::mem::transmute::<*mut c_void, FnNetUnixstream>(sym(
                    "krun_add_net_unixstream",
                )?),
                disable_implicit_vsock: std::mem::transmute::<*mut c_void, FnU32>(sym(
                    "krun_disable_implicit_vsock",
                )?),
                add_vsock: std::mem::transmute::<*mut c_void, FnAddVsock>(sym("krun_add_vsock")?),
                add_vsock_port2: std::mem::transmute::<*mut c_void, FnVsockPort2>(sym(
                    "krun_add_vsock_port2",
                )?),
                set_console_output: std::mem::transmute::<*mut c_void, FnPath>(sym(
                    "krun_set_console_output",
                )?),
                add_disk: std::mem::transmute::<*mut c_void, FnAddDisk>(sym("krun_add_disk")?),
                start_enter: std::mem::transmute::<*mut c_void, FnU32>(sym("krun_start_enter")?),
            })
        }
    }

    pub fn set_log_level(&self, level: u32) -> Result<(), KrunError> {
        // SAFETY: value-only call into the loaded library.
        check("krun_set_log_level", unsafe { (self.set_log_level)(level) }).map(drop)
    }

    pub fn create_ctx(&self) -> Result<KrunCtx, KrunError> {
        // SAFETY: no arguments; returns a context id or -errno.
        let id = check("krun_create_ctx", unsafe { (self.create_ctx)() })?;
        Ok(KrunCtx(id as u32))
    }

    pub fn set_vm_config(&self, ctx: KrunCtx, cpus: u8, ram_mib: u32) -> Result<(), KrunError> {
        // SAFETY: value-only call.
        check("krun_set_vm_config", unsafe {
            (self.set_vm_config)(ctx.0, cpus, ram_mib)
        })
        .map(drop)
    }

    /// `format` 1 = ELF vmlinux.
    pub fn set_kernel(
        &self,
        ctx: KrunCtx,
        kernel: &str,
        format: u32,
        initramfs: &str,
        cmdline: &str,
    ) -> Result<(), KrunError> {
        let (k, i, c) = (
            cstr("kernel", kernel)?,
            cstr("initramfs", initramfs)?,
            cstr("cmdline", cmdline)?,
        );
        // SAFETY: the three C strings outlive the call; libkrun copies them.
        check("krun_set_kernel", unsafe {
            (self.set_kernel)(ctx.0, k.as_ptr(), format, i.as_ptr(), c.as_ptr())
        })
        .map(drop)
    }

    /// Attaches virtio-net to a unix stream socket by path, offloads off.
    pub fn add_net_unixstream(
        &self,
        ctx: KrunCtx,
        path: &str,
        mac: [u8; 6],
    ) -> Result<(), KrunError> {
        let p = cstr("net socket", path)?;
        // SAFETY: `p` and `mac` (6 bytes, read exactly) outlive the call.
        check("krun_add_net_unixstream", unsafe {
            (self.add_net_unixstream)(ctx.0, p.as_ptr(), -1, mac.as_ptr(), 0, 0)
        })
        .map(drop)
    }

    /// Replaces the implicit (TSI) vsock with a plain one without TSI.
    pub fn plain_vsock(&self, ctx: KrunCtx) -> Result<(), KrunError> {
        // SAFETY: value-only calls.
        check("krun_disable_implicit_vsock", unsafe {
            (self.disable_implicit_vsock)(ctx.0)
        })?;
        // SAFETY: value-only call; 0 = no TSI features.
        check("krun_add_vsock", unsafe { (self.add_vsock)(ctx.0, 0) }).map(drop)
    }

    /// Guest connections to host CID 2 `port` reach the unix socket `path`.
    pub fn add_vsock_port(&self, ctx: KrunCtx, port: u32, path: &str) -> Result<(), KrunError> {
        let p = cstr("agent socket", path)?;
        // SAFETY: `p` outlives the call; listen=false (guest dials out).
        check("krun_add_vsock_port2", unsafe {
            (self.add_vsock_port2)(ctx.0, port, p.as_ptr(), false)
        })
        .map(drop)
    }

    pub fn set_console_output(&self, ctx: KrunCtx, path: &str) -> Result<(), KrunError> {
        let p = cstr("console log", path)?;
        // SAFETY: `p` outlives the call.
        check("krun_set_console_output", unsafe {
            (self.set_console_output)(ctx.0, p.as_ptr())
        })
        .map(drop)
    }

    pub fn add_disk_ro(&self, ctx: KrunCtx, id: &str, path: &str) -> Result<(), KrunError> {
        let (i, p) = (cstr("disk id", id)?, cstr("disk path", path)?);
        // SAFETY: both C strings outlive the call.
        check("krun_add_disk", unsafe {
            (self.add_disk)(ctx.0, i.as_ptr(), p.as_ptr(), true)
        })
        .map(drop)
    }

    /// Boots the VM in this process. Returns only on failure.
    pub fn start_enter(&self, ctx: KrunCtx) -> KrunError {
        // SAFETY: value-only call; on success it never returns.
        let rc = unsafe { (self.start_enter)(ctx.0) };
        KrunError::Call {
            call: "krun_start_enter",
            source: std::io::Error::from_raw_os_error(if rc < 0 { -rc } else { libc::EIO }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_library_names_the_fix() {
        let e = Krun::load("/nonexistent/libkrun.so.1").unwrap_err();
        let m = e.to_string();
        assert!(m.contains("BOTTLE_LIBKRUN"), "{m}");
    }

    #[test]
    fn negative_errno_becomes_typed_error() {
        let e = check("krun_x", -libc::ENOENT).unwrap_err();
        assert!(e.to_string().contains("krun_x failed"));
        assert!(check("krun_x", 3).is_ok());
    }

    #[test]
    fn killing_group_one_is_refused() {
        assert!(kill_group(1).is_err());
        assert!(kill_group(0).is_err());
    }

    #[test]
    fn kernel_release_is_not_empty() {
        assert!(!kernel_release().is_empty());
    }
}
