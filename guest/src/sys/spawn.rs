//! Starting a program the way `posix_spawn` does: the child shares the
//! agent's memory and runs on a small stack of its own until it execs
//! (`clone(CLONE_VM | CLONE_VFORK)`), instead of `fork`, which copies the
//! agent's page tables and then takes a copy-on-write fault for every page
//! either side touches before the exec. Under TCG that copy is what makes a
//! bottle's first command slow: a throwaway `fork` of the agent took 9 ms
//! the first time (2 ms after), a `vfork` under 1 ms once warm.
//!
//! `posix_spawn` itself cannot switch users or take a controlling terminal,
//! which every exec session may need; so the child here does, with raw
//! system calls only: it shares the agent's memory, so it must not
//! allocate, take a lock or run any code that expects to be the agent
//! (glibc's `setuid` would signal the agent's threads, for one).

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;

/// The user a child switches to before its exec.
#[derive(Debug, Clone)]
pub struct Creds {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

/// Everything a child needs, made before it exists.
pub struct SpawnPlan {
    /// Where to look for the program: one path, or one per `PATH` entry.
    candidates: Vec<CString>,
    argv: Vec<CString>,
    envp: Vec<CString>,
    cwd: CString,
    /// The descriptors the child gets as its stdin, stdout and stderr.
    stdio: [RawFd; 3],
    /// Whether its stdin is a terminal to make its controlling one.
    tty: bool,
    creds: Option<Creds>,
}

/// Why a spawn plan could not be made.
fn nul(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{what} contains a NUL byte"),
    )
}

fn cstring(s: impl AsRef<OsStr>, what: &str) -> io::Result<CString> {
    CString::new(s.as_ref().as_bytes()).map_err(|_| nul(what))
}

impl SpawnPlan {
    /// A program (`argv[0]`, looked up in `env`'s `PATH` when it has no
    /// slash, like `execvp`) with exactly `env`, started in `cwd` in a
    /// session of its own on `stdio`.
    pub fn new(
        argv: &[String],
        env: &[(String, String)],
        cwd: &str,
        stdio: [RawFd; 3],
        tty: bool,
        creds: Option<Creds>,
    ) -> io::Result<SpawnPlan> {
        let program = argv
            .first()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty argv"))?;
        let candidates = if program.contains('/') {
            vec![cstring(program, "the program")?]
        } else {
            let path = env
                .iter()
                .rev()
                .find(|(k, _)| k == "PATH")
                .map(|(_, v)| v.as_str())
                .unwrap_or_default();
            path.split(':')
                .map(|dir| {
                    let dir = if dir.is_empty() { "." } else { dir };
                    cstring(format!("{dir}/{program}"), "the program")
                })
                .collect::<io::Result<_>>()?
        };
        Ok(SpawnPlan {
            candidates,
            argv: argv
                .iter()
                .map(|a| cstring(a, "an argument"))
                .collect::<io::Result<_>>()?,
            envp: env
                .iter()
                .map(|(k, v)| cstring(format!("{k}={v}"), "the environment"))
                .collect::<io::Result<_>>()?,
            cwd: cstring(cwd, "the working directory")?,
            stdio,
            tty,
            creds,
        })
    }
}

/// What the child reads, and where it leaves the error that stopped it.
struct ChildArgs<'a> {
    plan: &'a SpawnPlan,
    argv: &'a [*const libc::c_char],
    envp: &'a [*const libc::c_char],
    /// Set by the child when it fails before or at its exec.
    error: libc::c_int,
}

/// The array of pointers `execve` takes: one per string, then a null.
fn null_terminated(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// The child's stack: it runs only the few calls of `child_main`.
const STACK_BYTES: usize = 64 * 1024;

/// Starts the program of `plan`; returns its pid once it has exec'd. An
/// error means it never ran (the child it was meant for has exited, and is
/// reaped here).
pub fn spawn(plan: &SpawnPlan) -> io::Result<libc::pid_t> {
    let argv = null_terminated(&plan.argv);
    let envp = null_terminated(&plan.envp);
    let mut args = ChildArgs {
        plan,
        argv: &argv,
        envp: &envp,
        error: 0,
    };
    let mut stack = vec![0u128; STACK_BYTES / 16];
    // The stack grows down from its end, which is 16-byte aligned (u128).
    let top = stack.as_mut_ptr_range().end.cast::<libc::c_void>();
    // Signals stay blocked from before the clone until the child has put
    // every handler back to its default: a handler of the agent's must not
    // run in the child, on the agent's memory.
    // SAFETY: sigset_t is plain data; sigfillset initialises it.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut saved: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: both sets are valid locals; this changes only this thread's mask.
    unsafe {
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut saved);
    }
    // SAFETY: `child_main` runs on `stack` (alive until clone returns: with
    // CLONE_VFORK this thread is suspended until the child has exec'd or
    // exited, so nothing of ours is used after it is gone) and reads `args`
    // through the pointer; it only makes system calls, see its comment.
    let pid = unsafe {
        libc::clone(
            child_main,
            top,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            std::ptr::addr_of_mut!(args).cast(),
        )
    };
    let clone_error = io::Error::last_os_error();
    // SAFETY: restores this thread's mask from the valid saved set.
    unsafe {
        libc::pthread_sigmask(libc::SIG_SETMASK, &saved, std::ptr::null_mut());
    }
    drop(stack);
    if pid < 0 {
        return Err(clone_error);
    }
    // SAFETY: the child has exec'd or exited (CLONE_VFORK), so it no longer
    // writes `args`; the volatile read keeps the compiler from assuming the
    // value it had before the clone.
    let error = unsafe { std::ptr::read_volatile(std::ptr::addr_of!(args.error)) };
    if error != 0 {
        // It has exited: reap it here (a reaper that got it first leaves
        // nothing to wait for, which is fine).
        // SAFETY: waits for our own child, storing nothing.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
        return Err(io::Error::from_raw_os_error(error));
    }
    Ok(pid)
}

/// The child, between its clone and its exec. It shares the agent's memory
/// (the agent's thread waits), so it only makes system calls: no
/// allocation, no lock, no panic, no libc function that keeps state.
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `ChildArgs` that `spawn` passed, alive and not
    // touched by the suspended parent until this child execs or exits.
    let args = unsafe { &mut *arg.cast::<ChildArgs<'_>>() };
    let error = child_steps(args);
    args.error = if error == 0 { libc::ENOEXEC } else { error };
    // SAFETY: leaves this child at once, without running any exit handler of
    // the agent's.
    unsafe { libc::syscall(libc::SYS_exit_group, 127) };
    127
}

/// The errno of the step that failed (the exec's when no candidate ran).
/// Only for `child_main`, in the cloned child.
fn child_steps(args: &ChildArgs<'_>) -> libc::c_int {
    // SAFETY: raw system calls (and glibc's stateless sigaction, sigemptyset
    // and sigprocmask wrappers) on values `spawn` made before the clone:
    // NUL-terminated strings, pointer arrays ending with a null, descriptors
    // it owns, and zeroed plain-data structs; errno is this thread's.
    unsafe {
        let errno = || *libc::__errno_location();
        let plan = args.plan;
        // Handlers back to their defaults (the child's table is its own copy: no
        // CLONE_SIGHAND), and SIGPIPE, which Rust ignores, too. glibc's
        // sigaction is a plain system call (it refuses its own two signals).
        for sig in 1..65 {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut old) != 0 {
                continue;
            }
            let handled = old.sa_sigaction != libc::SIG_DFL && old.sa_sigaction != libc::SIG_IGN;
            if handled || sig == libc::SIGPIPE {
                let mut dfl: libc::sigaction = std::mem::zeroed();
                dfl.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(sig, &dfl, std::ptr::null_mut());
            }
        }
        if libc::syscall(libc::SYS_setsid) < 0 {
            return errno();
        }
        for (target, &fd) in plan.stdio.iter().enumerate() {
            let target = target as libc::c_int;
            let ok = if fd == target {
                // dup2 onto itself would keep its close-on-exec flag.
                libc::syscall(libc::SYS_fcntl, fd, libc::F_SETFD, 0) == 0
            } else {
                libc::syscall(libc::SYS_dup3, fd, target, 0) >= 0
            };
            if !ok {
                return errno();
            }
        }
        if plan.tty && libc::syscall(libc::SYS_ioctl, 0, libc::TIOCSCTTY, 0) < 0 {
            return errno();
        }
        if let Some(c) = &plan.creds {
            if libc::syscall(libc::SYS_setgroups, c.groups.len(), c.groups.as_ptr()) < 0
                || libc::syscall(libc::SYS_setgid, c.gid) < 0
                || libc::syscall(libc::SYS_setuid, c.uid) < 0
            {
                return errno();
            }
        }
        if libc::syscall(libc::SYS_chdir, plan.cwd.as_ptr()) < 0 {
            return errno();
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        // Like execvp: the first candidate that runs; a missing one is passed
        // over, a forbidden one remembered, any other failure final.
        let mut error = libc::ENOENT;
        for program in &plan.candidates {
            libc::syscall(
                libc::SYS_execve,
                program.as_ptr(),
                args.argv.as_ptr(),
                args.envp.as_ptr(),
            );
            match errno() {
                libc::ENOENT | libc::ENOTDIR => {}
                libc::EACCES => error = libc::EACCES,
                other => return other,
            }
        }
        error
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    fn pipe() -> (OwnedFd, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills the two-element array.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: both descriptors were just opened and are owned here.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    fn wait(pid: libc::pid_t) -> libc::c_int {
        let mut status = 0;
        // SAFETY: waits for our own child into a valid local.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        status
    }

    fn run(argv: &[&str], env: &[(&str, &str)], cwd: &str) -> io::Result<(String, i32)> {
        let (r, w) = pipe();
        let (in_r, _in_w) = pipe();
        let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let plan = SpawnPlan::new(
            &argv,
            &env,
            cwd,
            [in_r.as_raw_fd(), w.as_raw_fd(), w.as_raw_fd()],
            false,
            None,
        )?;
        let pid = spawn(&plan)?;
        drop(w);
        let mut out = String::new();
        std::fs::File::from(r).read_to_string(&mut out).unwrap();
        let status = wait(pid);
        Ok((out, libc::WEXITSTATUS(status)))
    }

    #[test]
    fn a_program_runs_with_exactly_its_env_cwd_and_a_session_of_its_own() {
        let (out, code) = run(
            &["sh", "-c", "echo $A; env | wc -l; pwd; test $(cut -d' ' -f6 /proc/self/stat) = $$ && echo leader; exit 3"],
            &[("PATH", "/nonexistent:/usr/bin:/bin"), ("A", "one")],
            "/tmp",
        )
        .unwrap();
        // PWD and SHLVL are the shell's own; A and PATH are all it was given.
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "one", "{out}");
        assert!(lines[1].trim().parse::<u32>().unwrap() <= 5, "{out}");
        assert_eq!(lines[2], "/tmp");
        assert_eq!(lines[3], "leader", "not a session leader: {out}");
        assert_eq!(code, 3);
    }

    #[test]
    fn a_missing_program_or_directory_is_an_error_not_a_child() {
        let e = run(&["no-such-program-here"], &[("PATH", "/bin")], "/").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
        let e = run(&["/bin/true"], &[], "/no/such/dir").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
        let e = run(&["/etc/passwd"], &[], "/").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EACCES));
    }

    #[test]
    fn handlers_and_the_signal_mask_do_not_reach_the_program() {
        // SIGPIPE is ignored in Rust programs; the child gets the default.
        let (out, _) = run(
            &["sh", "-c", "grep -E '^Sig(Ign|Blk)' /proc/self/status"],
            &[("PATH", "/usr/bin:/bin")],
            "/",
        )
        .unwrap();
        for line in out.lines() {
            let mask = u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap();
            assert_eq!(mask & (1 << (libc::SIGPIPE - 1)), 0, "{line}");
            if line.starts_with("SigBlk") {
                assert_eq!(mask, 0, "{line}");
            }
        }
    }

    #[test]
    fn a_root_agent_switches_the_program_to_its_user_and_terminal() {
        if !bottle_test_harness::skip::require(
            bottle_test_harness::skip::is_root(),
            "switching users needs root",
        ) {
            return;
        }
        let pty = nix::pty::openpty(None, None).unwrap();
        let slave = pty.slave.as_raw_fd();
        let argv: Vec<String> = [
            "/bin/sh",
            "-c",
            "id -u; id -g; id -G; test -t 0 && cut -d' ' -f7 /proc/$$/stat",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let env = vec![("PATH".to_string(), "/usr/bin:/bin".to_string())];
        let creds = Creds {
            uid: 65534,
            gid: 65533,
            groups: vec![65533, 65532],
        };
        let plan = SpawnPlan::new(&argv, &env, "/", [slave; 3], true, Some(creds)).unwrap();
        let pid = spawn(&plan).unwrap();
        drop(pty.slave);
        let mut out = Vec::new();
        // Reads until the terminal's other side is gone (EIO on Linux).
        let _ = std::fs::File::from(pty.master).read_to_end(&mut out);
        assert_eq!(libc::WEXITSTATUS(wait(pid)), 0);
        let out = String::from_utf8_lossy(&out).replace('\r', "");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(&lines[..3], &["65534", "65533", "65533 65532"], "{out}");
        // tty_nr: the controlling terminal's device number, 0 for none.
        assert_ne!(lines[3], "0", "no controlling terminal: {out}");
    }

    #[test]
    fn nul_bytes_are_refused_before_any_child() {
        let argv = vec!["/bin/true".to_string(), "a\0b".to_string()];
        assert!(SpawnPlan::new(&argv, &[], "/", [0, 1, 2], false, None).is_err());
        assert!(SpawnPlan::new(&[], &[], "/", [0, 1, 2], false, None).is_err());
    }
}
