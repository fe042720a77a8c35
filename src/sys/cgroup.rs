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

/// Starts, on a thread of its own, a move that changes nothing: this
/// process into the v1 memory group it is already in. On a cgroup v1 host
/// the first move into a group after a quiet spell waits for an RCU grace
/// period (the kernel's threadgroup lock switching to its slow mode: 4–13 ms
/// measured here), and moves that come while one is under way, or just
/// after, share it. `bottle run` calls this as it starts, so that the
/// bundle's confinement a few ms later does not wait a grace period of its
/// own, and the VM starts that much sooner. Nothing happens on cgroup v2 or
/// where the group is not writable.
pub fn prime() {
    let Some(Layout::V1 { memory, .. }) = layout(Path::new(ROOT)) else {
        return;
    };
    let _ = std::thread::Builder::new()
        .name("cgroup-prime".into())
        .spawn(move || {
            let Ok(own) = std::fs::read_to_string("/proc/self/cgroup") else {
                return;
            };
            if let Some(group) = own_v1_group(&own, "memory") {
                let procs = memory
                    .join(group.trim_start_matches('/'))
                    .join("cgroup.procs");
                let _ = std::fs::write(procs, std::process::id().to_string());
            }
        });
}

/// This process's group in the v1 hierarchy of `controller`, from the
/// contents of `/proc/self/cgroup` (`ID:CONTROLLERS:PATH` lines).
fn own_v1_group<'a>(proc_cgroup: &'a str, controller: &str) -> Option<&'a str> {
    proc_cgroup.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        controllers
            .split(',')
            .any(|c| c == controller)
            .then_some(path)
    })
}

/// Put `pid` in a new group `bottle/<identity>` with `limits`.
pub fn confine(identity: &str, pid: u32, limits: Limits) -> Result<Confined, CgroupError> {
    confine_at(Path::new(ROOT), identity, pid, limits)
}

fn confine_at(
    root: &Path,
    identity: &str,
    pid: u32,
    limits: Limits,
) -> Result<Confined, CgroupError> {
    let layout = layout(root).ok_or(CgroupError::Unavailable)?;
    let write = |path: PathBuf, value: String| std::fs::write(&path, value).map_err(io(&path));
    let made = match layout {
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
            write(dir.join("cgroup.procs"), pid.to_string())?;
            vec![dir]
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
            write(mem.join("cgroup.procs"), pid.to_string())?;
            write(pid_dir.join("cgroup.procs"), pid.to_string())?;
            vec![mem, pid_dir]
        }
    };
    Ok(Confined { dirs: made })
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

    #[test]
    fn own_v1_group_reads_the_controllers_line() {
        let proc_cgroup =
            "12:pids:/user.slice\n5:cpu,cpuacct:/a\n4:memory:/process_api/x\n0::/unified\n";
        assert_eq!(own_v1_group(proc_cgroup, "memory"), Some("/process_api/x"));
        assert_eq!(own_v1_group(proc_cgroup, "cpu"), Some("/a"));
        assert_eq!(own_v1_group(proc_cgroup, "blkio"), None);
        assert_eq!(own_v1_group("0::/only-v2\n", "memory"), None);
    }

    fn fake_v1(root: &Path) {
        std::fs::create_dir_all(root.join("memory")).unwrap();
        std::fs::create_dir_all(root.join("pids")).unwrap();
        std::fs::write(root.join("memory/memory.limit_in_bytes"), "").unwrap();
        std::fs::write(root.join("pids/cgroup.procs"), "").unwrap();
    }

    #[test]
    fn v1_layout_gets_a_memory_and_a_pids_group_with_the_limits() {
        let t = tempfile::tempdir().unwrap();
        fake_v1(t.path());
        let limits = Limits {
            memory_bytes: 1 << 30,
            pids: 256,
        };
        let c = confine_at(t.path(), "demo-abcde", 4242, limits).unwrap();
        assert_eq!(c.dirs.len(), 2);
        let mem = t.path().join("memory/bottle/demo-abcde");
        assert_eq!(
            std::fs::read_to_string(mem.join("memory.limit_in_bytes")).unwrap(),
            (1u64 << 30).to_string()
        );
        assert_eq!(
            std::fs::read_to_string(mem.join("cgroup.procs")).unwrap(),
            "4242"
        );
        let pids = t.path().join("pids/bottle/demo-abcde");
        assert_eq!(
            std::fs::read_to_string(pids.join("pids.max")).unwrap(),
            "256"
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
        let c = confine_at(t.path(), "x-aaaaa", 7, limits).unwrap();
        let dir = t.path().join("bottle/x-aaaaa");
        assert_eq!(c.dirs, vec![dir.clone()]);
        assert_eq!(
            std::fs::read_to_string(dir.join("memory.max")).unwrap(),
            (5u64 << 20).to_string()
        );
        assert_eq!(std::fs::read_to_string(dir.join("pids.max")).unwrap(), "64");
    }

    #[test]
    fn no_hierarchy_is_an_error_not_a_guess() {
        let t = tempfile::tempdir().unwrap();
        let limits = Limits {
            memory_bytes: 1,
            pids: 1,
        };
        assert!(matches!(
            confine_at(t.path(), "x-aaaaa", 7, limits),
            Err(CgroupError::Unavailable)
        ));
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
