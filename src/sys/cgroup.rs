//! The bundle process (and the VM it starts) in a cgroup of its own, with a
//! memory and a pids limit, so nothing the agent makes the guards hold can
//! take the host down: past the limit the kernel stops that bottle, not the
//! machine, and a second bottle is unaffected.
//!
//! cgroup v2 (a writable unified hierarchy with the `memory` and `pids`
//! controllers enabled for children) is used where present; else the v1
//! `memory` and `pids` hierarchies. Where neither is writable (a rootless
//! user without delegation) the bottle runs unconfined and `bottle doctor`
//! says so.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Where cgroups are mounted.
const ROOT: &str = "/sys/fs/cgroup";
/// The parent group of every bottle.
const PARENT: &str = "bottle";

/// Limits for one bottle's bundle and VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub memory_bytes: u64,
    pub pids: u32,
}

/// The groups a bottle was put in (one for v2, one per controller for v1).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Confined {
    pub dirs: Vec<PathBuf>,
}

/// Why a process could not be confined.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no writable cgroup hierarchy with the memory and pids controllers")]
    Unavailable,
    #[error("cgroup {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Which layout this host has.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Layout {
    /// Unified hierarchy at this path.
    V2(PathBuf),
    /// `memory` and `pids` v1 hierarchies.
    V1 { memory: PathBuf, pids: PathBuf },
}

fn layout(root: &Path) -> Option<Layout> {
    let has = |dir: &Path, controllers: &str| {
        std::fs::read_to_string(dir.join(controllers))
            .map(|c| {
                let c: Vec<&str> = c.split_whitespace().collect();
                c.contains(&"memory") && c.contains(&"pids")
            })
            .unwrap_or(false)
    };
    if has(root, "cgroup.controllers") {
        return Some(Layout::V2(root.to_path_buf()));
    }
    let memory = root.join("memory");
    let pids = root.join("pids");
    (memory.join("memory.limit_in_bytes").is_file() && pids.join("cgroup.procs").is_file())
        .then_some(Layout::V1 { memory, pids })
}

/// Whether bottles can be confined here, and how (for `bottle doctor`).
pub fn describe() -> Result<String, String> {
    match layout(Path::new(ROOT)) {
        Some(Layout::V2(p)) if writable(&p) => Ok(format!("cgroup v2 at {}", p.display())),
        Some(Layout::V1 { memory, pids }) if writable(&memory) && writable(&pids) => Ok(format!(
            "cgroup v1 ({} and {})",
            memory.display(),
            pids.display()
        )),
        Some(_) => Err("cgroups are not writable by this user; bottles run without memory and pids limits".into()),
        None => Err("no cgroup hierarchy with memory and pids controllers; bottles run without memory and pids limits".into()),
    }
}

fn writable(dir: &Path) -> bool {
    nix::unistd::access(dir, nix::unistd::AccessFlags::W_OK).is_ok()
}

/// A bottle's groups, made and limited, that no process has entered yet.
/// The process meant for them enters them itself, between its fork and its
/// exec ([`Prepared::enter_in_child`]): on cgroup v1 a thread that writes
/// `0` to a group's `tasks` moves only itself, for which the kernel takes no
/// global lock. Moving it from outside (its pid into `cgroup.procs`) takes
/// the kernel's threadgroup lock, whose switch to its slow mode waits for an
/// RCU grace period: 7–21 ms here, on the way to every VM's start.
#[derive(Debug)]
pub struct Prepared {
    groups: Confined,
    /// The file, per group, that a process writes `0` to to enter it (v1
    /// `tasks`, v2 `cgroup.procs`), ready for a child that cannot allocate.
    entries: Vec<CString>,
}

/// Make the groups `bottle/<identity>` with `limits`, for a process about to
/// be spawned.
pub fn prepare(identity: &str, limits: Limits) -> Result<Prepared, CgroupError> {
    prepare_at(Path::new(ROOT), identity, limits)
}

fn prepare_at(root: &Path, identity: &str, limits: Limits) -> Result<Prepared, CgroupError> {
    let layout = layout(root).ok_or(CgroupError::Unavailable)?;
    let write = |path: PathBuf, value: String| std::fs::write(&path, value).map_err(io(&path));
    let (dirs, entry) = match layout {
        Layout::V2(root) => {
            let parent = root.join(PARENT);
            mkdir(&parent)?;
            // Let the children use memory and pids (ignored where already on).
            let _ = std::fs::write(parent.join("cgroup.subtree_control"), "+memory +pids");
            let dir = parent.join(identity);
            mkdir(&dir)?;
            write(dir.join("memory.max"), limits.memory_bytes.to_string())?;
            write(dir.join("memory.swap.max"), "0".into()).ok();
            write(dir.join("pids.max"), limits.pids.to_string())?;
            (vec![dir], "cgroup.procs")
        }
        Layout::V1 { memory, pids } => {
            let mem = memory.join(PARENT).join(identity);
            let pid_dir = pids.join(PARENT).join(identity);
            mkdir(&mem)?;
            mkdir(&pid_dir)?;
            write(
                mem.join("memory.limit_in_bytes"),
                limits.memory_bytes.to_string(),
            )?;
            write(pid_dir.join("pids.max"), limits.pids.to_string())?;
            (vec![mem, pid_dir], "tasks")
        }
    };
    let entries = dirs
        .iter()
        .map(|d| {
            let path = d.join(entry);
            CString::new(path.as_os_str().as_bytes()).map_err(|e| CgroupError::Io {
                path,
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(Prepared {
        groups: Confined { dirs },
        entries,
    })
}

impl Prepared {
    /// Makes `cmd`'s child enter the groups itself before it execs, so that
    /// it, and every thread and process it starts, is born in them. A group
    /// the child cannot enter is left to [`Prepared::confirm`].
    pub fn enter_in_child(&self, cmd: &mut std::process::Command) {
        use std::os::unix::process::CommandExt;
        let entries = self.entries.clone();
        #[allow(unsafe_code)]
        // SAFETY: the closure runs in the child between fork and exec, where
        // only async-signal-safe calls are allowed: it allocates nothing (the
        // paths were made before the fork) and calls open, write and close.
        unsafe {
            cmd.pre_exec(move || {
                for path in &entries {
                    let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if fd >= 0 {
                        libc::write(fd, b"0".as_ptr().cast(), 1);
                        libc::close(fd);
                    }
                }
                Ok(())
            });
        }
    }

    /// Checks that `pid` is in each group, moving it from here (the slow
    /// way) where the child could not enter one itself. Returns the groups
    /// (to release at the bottle's stop) even when that failed.
    pub fn confirm(self, pid: u32) -> (Confined, Result<(), CgroupError>) {
        let me = pid.to_string();
        let entered = self.groups.dirs.iter().try_for_each(|dir| {
            let procs = dir.join("cgroup.procs");
            let inside = std::fs::read_to_string(&procs)
                .is_ok_and(|text| text.lines().any(|line| line.trim() == me));
            if inside {
                Ok(())
            } else {
                std::fs::write(&procs, &me).map_err(io(&procs))
            }
        });
        (self.groups, entered)
    }

    /// Remove the groups (the spawn failed: nobody entered them).
    pub fn abandon(self) {
        release(&self.groups);
    }
}

fn mkdir(dir: &Path) -> Result<(), CgroupError> {
    match std::fs::create_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io(dir)(e)),
    }
}

/// Remove a bottle's groups once its processes are gone. Idempotent.
pub fn release(confined: &Confined) {
    for dir in &confined.dirs {
        // rmdir succeeds only on an empty group: try a few times while the
        // last processes exit.
        for _ in 0..20 {
            match std::fs::remove_dir(dir) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(50)),
            }
        }
    }
}

/// Peak memory the group has used, in bytes (v2 `memory.peak`, v1
/// `memory.max_usage_in_bytes`), where the kernel reports it.
pub fn peak_memory(confined: &Confined) -> Option<u64> {
    confined.dirs.iter().find_map(|d| {
        ["memory.peak", "memory.max_usage_in_bytes"]
            .iter()
            .find_map(|f| std::fs::read_to_string(d.join(f)).ok())
            .and_then(|s| s.trim().parse().ok())
    })
}

/// A Docker container's CPU time and memory, from its cgroup's files (no
/// Docker API call: its stats endpoint takes a second or more per
/// container). Docker's cgroupfs and systemd drivers, cgroup v2 and v1.
/// `None` when no group of that id is readable here.
pub fn container_usage(container_id: &str) -> Option<crate::sys::process::Usage> {
    container_usage_at(Path::new(ROOT), container_id)
}

fn container_usage_at(root: &Path, id: &str) -> Option<crate::sys::process::Usage> {
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let read = |p: PathBuf| std::fs::read_to_string(p).ok();
    let stat = |text: &str, key: &str| -> Option<u64> {
        text.lines().find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == key).then(|| v.trim().parse().ok()).flatten()
        })
    };
    let groups = [
        format!("docker/{id}"),
        format!("system.slice/docker-{id}.scope"),
    ];
    // v2: cpu.stat's usage_usec and memory.current, less the inactive page cache.
    for g in &groups {
        let dir = root.join(g);
        if let (Some(cpu), Some(mem)) =
            (read(dir.join("cpu.stat")), read(dir.join("memory.current")))
        {
            let inactive = read(dir.join("memory.stat"))
                .and_then(|s| stat(&s, "inactive_file"))
                .unwrap_or(0);
            return Some(crate::sys::process::Usage {
                cpu_ns: stat(&cpu, "usage_usec")?.saturating_mul(1000),
                memory_bytes: mem.trim().parse::<u64>().ok()?.saturating_sub(inactive),
            });
        }
    }
    // v1: cpuacct.usage (ns) and memory.usage_in_bytes.
    for g in &groups {
        let cpu = ["cpuacct", "cpu,cpuacct"]
            .iter()
            .find_map(|c| read(root.join(c).join(g).join("cpuacct.usage")));
        let mem_dir = root.join("memory").join(g);
        if let (Some(cpu), Some(mem)) = (cpu, read(mem_dir.join("memory.usage_in_bytes"))) {
            let inactive = read(mem_dir.join("memory.stat"))
                .and_then(|s| stat(&s, "total_inactive_file"))
                .unwrap_or(0);
            return Some(crate::sys::process::Usage {
                cpu_ns: cpu.trim().parse().ok()?,
                memory_bytes: mem.trim().parse::<u64>().ok()?.saturating_sub(inactive),
            });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_v1(root: &Path) {
        std::fs::create_dir_all(root.join("memory")).unwrap();
        std::fs::create_dir_all(root.join("pids")).unwrap();
        std::fs::write(root.join("memory/memory.limit_in_bytes"), "").unwrap();
        std::fs::write(root.join("pids/cgroup.procs"), "").unwrap();
    }

    const LIMITS: Limits = Limits {
        memory_bytes: 1 << 30,
        pids: 256,
    };

    #[test]
    fn v1_layout_gets_a_memory_and_a_pids_group_with_the_limits() {
        let t = tempfile::tempdir().unwrap();
        fake_v1(t.path());
        let prepared = prepare_at(t.path(), "demo-abcde", LIMITS).unwrap();
        let mem = t.path().join("memory/bottle/demo-abcde");
        let pids = t.path().join("pids/bottle/demo-abcde");
        // A child enters a v1 group through `tasks`: only itself, no global lock.
        let entries: Vec<PathBuf> = prepared
            .entries
            .iter()
            .map(|c| PathBuf::from(c.to_str().unwrap()))
            .collect();
        assert_eq!(entries, vec![mem.join("tasks"), pids.join("tasks")]);
        assert_eq!(
            std::fs::read_to_string(mem.join("memory.limit_in_bytes")).unwrap(),
            (1u64 << 30).to_string()
        );
        assert_eq!(
            std::fs::read_to_string(pids.join("pids.max")).unwrap(),
            "256"
        );
        // The child did not get in (a fake hierarchy): it is moved from outside.
        let (c, entered) = prepared.confirm(4242);
        entered.unwrap();
        assert_eq!(c.dirs, vec![mem.clone(), pids.clone()]);
        for dir in [&mem, &pids] {
            assert_eq!(
                std::fs::read_to_string(dir.join("cgroup.procs")).unwrap(),
                "4242"
            );
        }
    }

    #[test]
    fn a_process_already_in_its_groups_is_not_moved_again() {
        let t = tempfile::tempdir().unwrap();
        fake_v1(t.path());
        let prepared = prepare_at(t.path(), "demo-abcde", LIMITS).unwrap();
        let mem = t.path().join("memory/bottle/demo-abcde");
        let pids = t.path().join("pids/bottle/demo-abcde");
        std::fs::write(mem.join("cgroup.procs"), "17\n4242\n").unwrap();
        std::fs::write(pids.join("cgroup.procs"), "4242\n").unwrap();
        prepared.confirm(4242).1.unwrap();
        assert_eq!(
            std::fs::read_to_string(mem.join("cgroup.procs")).unwrap(),
            "17\n4242\n"
        );
        assert_eq!(
            std::fs::read_to_string(pids.join("cgroup.procs")).unwrap(),
            "4242\n"
        );
    }

    #[test]
    fn v2_layout_is_preferred_and_sets_max_files() {
        let t = tempfile::tempdir().unwrap();
        fake_v1(t.path());
        std::fs::write(t.path().join("cgroup.controllers"), "cpu memory pids io").unwrap();
        let limits = Limits {
            memory_bytes: 5 << 20,
            pids: 64,
        };
        let prepared = prepare_at(t.path(), "x-aaaaa", limits).unwrap();
        let dir = t.path().join("bottle/x-aaaaa");
        assert_eq!(
            prepared.entries,
            vec![CString::new(dir.join("cgroup.procs").to_str().unwrap()).unwrap()]
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("memory.max")).unwrap(),
            (5u64 << 20).to_string()
        );
        assert_eq!(std::fs::read_to_string(dir.join("pids.max")).unwrap(), "64");
        let (c, entered) = prepared.confirm(7);
        entered.unwrap();
        assert_eq!(c.dirs, vec![dir]);
    }

    #[test]
    fn no_hierarchy_is_an_error_not_a_guess() {
        let t = tempfile::tempdir().unwrap();
        assert!(matches!(
            prepare_at(t.path(), "x-aaaaa", LIMITS),
            Err(CgroupError::Unavailable)
        ));
    }

    /// On this host's real hierarchy (root, cgroups writable): a child
    /// spawned with `enter_in_child` is in its groups when the spawn
    /// returns, before anyone moved it.
    #[test]
    fn a_child_enters_its_groups_itself_before_it_execs() {
        let here = describe();
        if !bottle_test_harness::skip::require(
            here.is_ok(),
            &format!("no writable cgroup hierarchy here ({here:?})"),
        ) {
            return;
        }
        let identity = format!("unit-enter-{}", std::process::id());
        let prepared = prepare(&identity, LIMITS).unwrap();
        let mut cmd = std::process::Command::new("sleep");
        cmd.arg("30");
        prepared.enter_in_child(&mut cmd);
        let mut child = cmd.spawn().unwrap();
        let pid = child.id().to_string();
        let mut missing = Vec::new();
        for dir in &prepared.groups.dirs {
            let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap();
            if !procs.lines().any(|l| l == pid) {
                missing.push(dir.clone());
            }
        }
        let (groups, entered) = prepared.confirm(child.id());
        entered.unwrap();
        let _ = child.kill();
        let _ = child.wait();
        release(&groups);
        assert!(missing.is_empty(), "the child was not in {missing:?}");
        assert!(
            groups.dirs.iter().all(|d| !d.exists()),
            "groups left behind"
        );
    }

    #[test]
    fn a_containers_usage_comes_from_its_cgroup_files_v2_or_v1() {
        let id = "0123456789abcdef";
        let t = tempfile::tempdir().unwrap();
        let v2 = t.path().join(format!("system.slice/docker-{id}.scope"));
        std::fs::create_dir_all(&v2).unwrap();
        std::fs::write(
            v2.join("cpu.stat"),
            "usage_usec 2500000\nuser_usec 2000000\n",
        )
        .unwrap();
        std::fs::write(v2.join("memory.current"), "10485760\n").unwrap();
        std::fs::write(v2.join("memory.stat"), "anon 1\ninactive_file 1048576\n").unwrap();
        let u = container_usage_at(t.path(), id).unwrap();
        assert_eq!((u.cpu_ns, u.memory_bytes), (2_500_000_000, 9 << 20));

        let t = tempfile::tempdir().unwrap();
        for (c, f, v) in [
            ("cpuacct", "cpuacct.usage", "7000"),
            ("memory", "memory.usage_in_bytes", "4096"),
        ] {
            let d = t.path().join(c).join("docker").join(id);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join(f), v).unwrap();
        }
        let u = container_usage_at(t.path(), id).unwrap();
        assert_eq!((u.cpu_ns, u.memory_bytes), (7000, 4096));
        // Another id, or one that is not an id, has no usage (the column says `-`).
        assert_eq!(container_usage_at(t.path(), "fedcba"), None);
        assert_eq!(container_usage_at(t.path(), "../../etc"), None);
    }
}
