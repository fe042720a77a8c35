//! A user-defined image's layer: Debian packages, setup lines and files
//! applied in a chroot of the cached bare tree, so a changed package list
//! costs an `apt-get install`, not a new `mmdebstrap`.
//!
//! The build has the host's network (its apt and npm registry access) and
//! runs nothing from any workspace; the finished tree is checked for host
//! credentials (`.ssh`, `.netrc`, docker and cloud configs) and refused if
//! it holds any. A failed build leaves nothing in the store.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::debian::{run_logged, DebianOpts};
use crate::VmmError;

/// Files and directories that would carry host credentials into an image.
const CREDENTIAL_PATHS: &[&str] = &[
    "root/.ssh",
    "root/.netrc",
    "root/.docker/config.json",
    "root/.aws",
    "root/.config/gcloud",
    "root/.npmrc",
    "root/.git-credentials",
];

/// Apply `opts`' layer to the unpacked bare tree `tree`, then check it holds
/// no credentials. The caller removes the tree if this fails.
pub fn apply_layer(
    tree: &Path,
    opts: &DebianOpts,
    progress: &mut dyn FnMut(&str),
) -> Result<(), VmmError> {
    apply(tree, opts, progress)?;
    check_no_credentials(tree)
}

/// What the chroot needs while the layer is applied, undone on drop.
struct Chroot {
    tree: PathBuf,
    proc_mounted: bool,
    made: Vec<PathBuf>,
}

impl Chroot {
    fn enter(tree: &Path) -> Result<Self, VmmError> {
        let mut c = Chroot {
            tree: tree.to_path_buf(),
            proc_mounted: false,
            made: Vec::new(),
        };
        let proc = tree.join("proc");
        std::fs::create_dir_all(&proc).map_err(VmmError::io("create /proc", &proc))?;
        let status = Command::new("mount")
            .args(["-t", "proc", "proc"])
            .arg(&proc)
            .status()
            .map_err(|e| VmmError::ImageBuild(format!("cannot run mount: {e}")))?;
        if !status.success() {
            return Err(VmmError::ImageBuild(format!(
                "cannot mount /proc in {} ({status})",
                tree.display()
            )));
        }
        c.proc_mounted = true;
        // The device nodes apt and dpkg use; removed again before packing.
        for (dev, major, minor) in [("null", 1, 3), ("zero", 1, 5), ("urandom", 1, 9)] {
            let path = tree.join("dev").join(dev);
            let _ = std::fs::remove_file(&path);
            let status = Command::new("mknod")
                .args(["-m", "666"])
                .arg(&path)
                .args(["c", &major.to_string(), &minor.to_string()])
                .status()
                .map_err(|e| VmmError::ImageBuild(format!("cannot run mknod: {e}")))?;
            if !status.success() {
                return Err(VmmError::ImageBuild(format!(
                    "cannot make {} ({status})",
                    path.display()
                )));
            }
            c.made.push(path);
        }
        // The host's resolver and apt settings (mirror, proxy, validity)
        // for the build only.
        let resolv = tree.join("etc/resolv.conf");
        let _ = std::fs::remove_file(&resolv);
        std::fs::copy("/etc/resolv.conf", &resolv)
            .map_err(VmmError::io("copy the host's resolv.conf", &resolv))?;
        c.made.push(resolv);
        let apt_conf = tree.join("etc/apt/apt.conf.d/99bottle-build-host");
        std::fs::write(&apt_conf, host_acquire_config())
            .map_err(VmmError::io("write apt settings", &apt_conf))?;
        c.made.push(apt_conf);
        Ok(c)
    }

    /// Run `script` with `/bin/sh -ec` as root in the tree.
    fn run(
        &self,
        what: &str,
        script: &str,
        progress: &mut dyn FnMut(&str),
    ) -> Result<(), VmmError> {
        run_logged(
            what,
            Command::new("chroot")
                .arg(&self.tree)
                .args(["/usr/bin/env", "-i"])
                .args([
                    "HOME=/root",
                    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    "DEBIAN_FRONTEND=noninteractive",
                    "LANG=C.UTF-8",
                ])
                .args(["/bin/sh", "-ec", &format!("exec 1>&2; {script}")]),
            progress,
        )
    }
}

impl Drop for Chroot {
    fn drop(&mut self) {
        for p in self.made.drain(..) {
            let _ = std::fs::remove_file(p);
        }
        if self.proc_mounted {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.tree.join("proc"))
                .status();
        }
    }
}

/// `Acquire::*` settings of the host's apt (e.g. a snapshot mirror's
/// `Check-Valid-Until "false"`, a proxy), for apt in the chroot.
fn host_acquire_config() -> String {
    let out = Command::new("apt-config")
        .args(["dump", "Acquire"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    out.lines()
        .filter(|l| l.starts_with("Acquire::") && l.ends_with(';'))
        .map(|l| format!("{l}\n"))
        .collect()
}

fn apply(tree: &Path, opts: &DebianOpts, progress: &mut dyn FnMut(&str)) -> Result<(), VmmError> {
    let chroot = Chroot::enter(tree)?;
    if !opts.extra_packages.is_empty() {
        progress(&format!(
            "apt-get install {} ...",
            opts.extra_packages.join(" ")
        ));
        chroot.run(
            "apt-get install",
            &format!(
                "apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends {} && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb",
                opts.extra_packages.join(" ")
            ),
            progress,
        )?;
    }
    for (i, line) in opts.setup.iter().enumerate() {
        progress(&format!("setup[{i}]: {line}"));
        chroot.run(&format!("setup line {} (`{line}`)", i + 1), line, progress)?;
    }
    drop(chroot);
    for f in &opts.files {
        let rel = f.path.trim_start_matches('/');
        let dest = tree.join(rel);
        // Never through a symlink the image holds.
        let mut at = tree.to_path_buf();
        for part in Path::new(rel)
            .parent()
            .into_iter()
            .flat_map(|p| p.components())
        {
            at.push(part);
            if at.is_symlink() {
                return Err(VmmError::ImageBuild(format!(
                    "files: {} goes through a symlink in the image ({})",
                    f.path,
                    at.display()
                )));
            }
        }
        if let Some(dir) = dest.parent() {
            std::fs::create_dir_all(dir).map_err(VmmError::io("create directory", dir))?;
        }
        if dest.is_symlink() {
            let _ = std::fs::remove_file(&dest);
        }
        std::fs::write(&dest, &f.content).map_err(VmmError::io("write image file", &dest))?;
        progress(&format!("file {} ({} bytes)", f.path, f.content.len()));
    }
    Ok(())
}

/// Refuse a tree that holds credentials: a setup line that copied the
/// host's keys, or a package that left a login behind.
fn check_no_credentials(tree: &Path) -> Result<(), VmmError> {
    let mut found: Vec<String> = CREDENTIAL_PATHS
        .iter()
        .filter(|p| tree.join(p).symlink_metadata().is_ok())
        .map(|p| format!("/{p}"))
        .collect();
    if let Ok(homes) = std::fs::read_dir(tree.join("home")) {
        for home in homes.flatten() {
            for p in [".ssh", ".netrc", ".git-credentials", ".npmrc"] {
                if home.path().join(p).symlink_metadata().is_ok() {
                    found.push(format!("/home/{}/{p}", home.file_name().to_string_lossy()));
                }
            }
        }
    }
    if found.is_empty() {
        Ok(())
    } else {
        Err(VmmError::ImageBuild(format!(
            "the image would hold credentials ({}); an image must not carry host logins: remove what put them there",
            found.join(", ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_the_tree_are_refused() {
        let t = tempfile::tempdir().unwrap();
        assert!(check_no_credentials(t.path()).is_ok());
        std::fs::create_dir_all(t.path().join("home/agent/.ssh")).unwrap();
        std::fs::create_dir_all(t.path().join("root")).unwrap();
        std::fs::write(t.path().join("root/.netrc"), "machine x").unwrap();
        let e = check_no_credentials(t.path()).unwrap_err().to_string();
        assert!(
            e.contains("/root/.netrc") && e.contains("/home/agent/.ssh"),
            "{e}"
        );
    }

    #[test]
    fn only_acquire_settings_are_taken_from_the_host() {
        for line in host_acquire_config().lines() {
            assert!(line.starts_with("Acquire::"), "{line}");
        }
    }
}
