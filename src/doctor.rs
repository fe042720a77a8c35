//! What this host has for bottle: the host's own checks, and the type every
//! backend reports its checks in (`Backend::doctor`). `bottle doctor`
//! prints them.

use std::process::Command;

/// One line of the doctor's report.
#[derive(Debug, Clone)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
    pub fix: Option<String>,
}

impl Check {
    /// A check; the fix is kept only when it failed.
    pub fn new(name: &str, ok: bool, detail: impl Into<String>, fix: Option<&str>) -> Self {
        Self {
            name: name.to_string(),
            ok,
            detail: detail.into(),
            fix: if ok { None } else { fix.map(str::to_string) },
        }
    }
}

/// First line of `program args` output, if it runs.
fn version_of(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    let text = if out.stdout.is_empty() {
        out.stderr
    } else {
        out.stdout
    };
    String::from_utf8_lossy(&text)
        .lines()
        .next()
        .map(|l| l.trim().to_string())
}

fn program_check(name: &str, program: &str, args: &[&str], package: &str, why: &str) -> Check {
    match version_of(program, args) {
        Some(v) => Check::new(name, true, v, None),
        None => Check::new(
            name,
            false,
            format!("`{program}` not found ({why})"),
            Some(&format!("apt-get install {package}")),
        ),
    }
}

/// The host's own checks (KVM, programs, cgroups), before the backends'.
pub fn host_checks() -> Vec<Check> {
    let mut checks = Vec::new();
    checks.push(match crate::bundle::executable() {
        Ok(path) => Check::new(
            "bottle-bundle",
            true,
            format!("{} (each bottle's guards run from it)", path.display()),
            None,
        ),
        Err(crate::bundle::StartError::NoBinary { beside }) => Check::new(
            "bottle-bundle",
            false,
            format!(
                "no `{}` next to {}",
                crate::bundle::BINARY,
                beside.display()
            ),
            Some(crate::bundle::BUILD_HINT),
        ),
        Err(e) => Check::new("bottle-bundle", false, e.to_string(), None),
    });
    let kvm = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm");
    checks.push(match kvm {
        Ok(_) => Check::new("/dev/kvm", true, "present and accessible (whether a guest really boots on it: see the engine probes)", None),
        Err(e) => Check::new("/dev/kvm", false, format!("not usable: {e}; the qemu engine falls back to TCG software emulation (slower)"), Some("enable virtualisation (or nested virtualisation) and add your user to the `kvm` group")),
    });
    checks.push(program_check(
        "git",
        "git",
        &["--version"],
        "git",
        "the agent's repos and git-gate",
    ));
    checks.push(program_check(
        "ssh",
        "ssh",
        &["-V"],
        "openssh-client",
        "git-gate pushes upstream over SSH",
    ));
    checks.push(program_check(
        "ip (netns tests)",
        "ip",
        &["-V"],
        "iproute2",
        "network-namespace tests",
    ));
    let tun = std::path::Path::new("/dev/net/tun").exists();
    checks.push(Check::new(
        "/dev/net/tun (tests)",
        tun,
        if tun { "present" } else { "missing" },
        Some("modprobe tun"),
    ));
    let cgroup = crate::sys::cgroup::describe();
    checks.push(Check::new(
        "cgroups (bundle limits)",
        cgroup.is_ok(),
        match &cgroup {
            Ok(how) => format!("each bottle's bundle and VM get memory and pids limits ({how})"),
            Err(why) => why.clone(),
        },
        Some("run as root, or delegate a cgroup v2 subtree with the memory and pids controllers to this user"),
    ));
    checks.push(program_check(
        "mmdebstrap (images)",
        "mmdebstrap",
        &["--version"],
        "mmdebstrap",
        "`bottle image build debian`",
    ));
    checks
}
