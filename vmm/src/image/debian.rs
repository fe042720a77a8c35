//! The Debian root image: mmdebstrap (minbase + the agent's tools) into a
//! read-only ext4 or erofs file with `/sbin/bottle-guest` inside, plus the
//! same tree as a tarball for the Docker backend.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::store::ImageStore;
use crate::VmmError;

/// Packages every Debian image has, on top of minbase.
pub const BASE_PACKAGES: &[&str] = &[
    "ca-certificates",
    "git",
    "curl",
    "openssh-client",
    "nodejs",
    "npm",
];

/// Bumped whenever the build recipe (mmdebstrap arguments, hooks, mkfs
/// options) changes, so cached images are rebuilt.
const RECIPE_VERSION: &str = "debian-recipe-2\n";

/// File system of the root image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RootFormat {
    /// Uncompressed ext4 without a journal (default: see docs/vm.md).
    Ext4,
    /// erofs with lz4hc compression: smaller, slower to read under TCG.
    Erofs,
}

impl RootFormat {
    pub fn file_name(self) -> &'static str {
        match self {
            RootFormat::Ext4 => "root.ext4",
            RootFormat::Erofs => "root.erofs",
        }
    }
}

/// The Claude Code release the `claude` image installs (npm
/// `@anthropic-ai/claude-code`); changing it changes the image's key.
pub const CLAUDE_CODE_VERSION: &str = "2.1.332";

/// What goes into a Debian image. Its JSON form is the cache key's input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DebianOpts {
    pub name: String,
    pub suite: String,
    /// Packages beyond [`BASE_PACKAGES`].
    pub extra_packages: Vec<String>,
    /// `npm install -g @anthropic-ai/claude-code@`[`CLAUDE_CODE_VERSION`]
    /// inside the image.
    pub claude: bool,
    pub format: RootFormat,
    /// Debian mirror URL; none = mmdebstrap's default (the host's sources).
    pub mirror: Option<String>,
    /// CA bundle trusted by npm during the build only (not left in the
    /// image, not part of the cache key). [`DebianOpts::default`] takes the
    /// host's `NODE_EXTRA_CA_CERTS`.
    #[serde(skip)]
    pub build_ca: Option<PathBuf>,
    /// Shell lines run as root in the image (chroot, the host's network),
    /// after `extra_packages`. A user-defined image's layer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub setup: Vec<String>,
    /// Files written into the image, after `setup`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<ImageFile>,
}

/// A file a definition puts into its image: where, and its content (whose
/// hash is part of the key; the bytes are not).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageFile {
    /// Absolute path in the image.
    pub path: String,
    /// SHA-256 (hex) of `content`.
    pub sha256: String,
    #[serde(skip)]
    pub content: Vec<u8>,
}

impl ImageFile {
    pub fn new(path: &str, content: Vec<u8>) -> Self {
        Self {
            path: path.to_string(),
            sha256: hex::encode(Sha256::digest(&content)),
            content,
        }
    }
}

impl Default for DebianOpts {
    fn default() -> Self {
        DebianOpts {
            name: "debian".into(),
            suite: "bookworm".into(),
            extra_packages: Vec::new(),
            claude: false,
            format: RootFormat::Ext4,
            mirror: None,
            build_ca: std::env::var_os("NODE_EXTRA_CA_CERTS")
                .map(PathBuf::from)
                .filter(|p| p.is_file() && !p.to_string_lossy().contains(char::is_whitespace)),
            setup: Vec::new(),
            files: Vec::new(),
        }
    }
}

impl DebianOpts {
    /// Whether the image is a layer (packages, setup lines, files) on a
    /// cached bare Debian tree, built without running `mmdebstrap` again.
    pub fn has_layer(&self) -> bool {
        !self.extra_packages.is_empty() || !self.setup.is_empty() || !self.files.is_empty()
    }

    /// The definition whose mmdebstrap tarball the image starts from: its
    /// own, or for a layered image the bare one.
    fn bare_if_layered(&self) -> DebianOpts {
        if self.has_layer() {
            self.bare()
        } else {
            self.clone()
        }
    }

    /// The bare tree a layered image is built on: the built-in `debian` (or
    /// `claude`) definition, so its cached tarball is shared.
    pub fn bare(&self) -> DebianOpts {
        DebianOpts {
            name: if self.claude { "claude" } else { "debian" }.into(),
            extra_packages: Vec::new(),
            setup: Vec::new(),
            files: Vec::new(),
            ..self.clone()
        }
    }

    fn validate(&self) -> Result<(), VmmError> {
        let ok_word = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-.+_".contains(c))
        };
        if !ok_word(&self.name) || self.name.starts_with('.') || self.name == "tiny" {
            return Err(VmmError::ImageBuild(format!(
                "bad image name '{}': use letters, digits, - . _",
                self.name
            )));
        }
        if !ok_word(&self.suite) {
            return Err(VmmError::ImageBuild(format!("bad suite '{}'", self.suite)));
        }
        if let Some(p) = self
            .extra_packages
            .iter()
            .find(|p| !bottle_util::debian::is_package_name(p))
        {
            return Err(VmmError::ImageBuild(format!("bad package name '{p}'")));
        }
        if let Some(f) = self
            .files
            .iter()
            .find(|f| !f.path.starts_with('/') || f.path.split('/').any(|c| c == ".."))
        {
            return Err(VmmError::ImageBuild(format!(
                "bad file path '{}': write an absolute path without `..`",
                f.path
            )));
        }
        Ok(())
    }

    /// Hash of the definition alone (the mmdebstrap output depends on it only).
    pub fn def_key(&self) -> String {
        let mut h = Sha256::new();
        h.update(RECIPE_VERSION.as_bytes());
        h.update(serde_json::to_vec(self).unwrap_or_default());
        if self.claude {
            h.update(CLAUDE_CODE_VERSION.as_bytes());
        }
        hex::encode(h.finalize())[..16].to_string()
    }

    /// The mmdebstrap argument vector writing a tarball to `out`.
    pub fn mmdebstrap_args(&self, out: &Path) -> Vec<String> {
        let mut pkgs: Vec<String> = BASE_PACKAGES.iter().map(|s| s.to_string()).collect();
        pkgs.extend(self.extra_packages.iter().cloned());
        let mut a = vec![
            "--variant=minbase".to_string(),
            "--mode=root".to_string(),
            "--format=tar".to_string(),
            format!("--include={}", pkgs.join(",")),
            "--dpkgopt=path-exclude=/usr/share/man/*".to_string(),
            "--dpkgopt=path-exclude=/usr/share/doc/*".to_string(),
            "--dpkgopt=path-exclude=/usr/share/locale/*".to_string(),
        ];
        if self.claude {
            // A CA bundle for the build's own downloads (a TLS-intercepting
            // egress proxy); copied in for npm and removed again.
            let ca_env = match &self.build_ca {
                Some(ca) => {
                    a.push(format!("--customize-hook=copy-in {} /tmp", ca.display()));
                    let name = ca
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    format!("NODE_EXTRA_CA_CERTS=/tmp/{name} ")
                }
                None => String::new(),
            };
            a.push(format!(
                "--customize-hook=chroot \"$1\" env {ca_env}sh -c 'npm install -g --no-fund --no-audit @anthropic-ai/claude-code@{CLAUDE_CODE_VERSION} && claude --version && rm -rf /root/.npm /usr/local/lib/node_modules/@anthropic-ai/claude-code/node_modules/@anthropic-ai/claude-code-linux-x64-musl' \
                 || {{ echo 'bottle: installing Claude Code from npm failed (is registry.npmjs.org reachable? behind a TLS-intercepting proxy set NODE_EXTRA_CA_CERTS)' >&2; exit 1; }}"
            ));
            if let Some(ca) = &self.build_ca {
                let name = ca
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                a.push(format!("--customize-hook=rm -f \"$1\"/tmp/{name}"));
            }
        }
        a.push("--customize-hook=rm -rf \"$1\"/var/cache/apt/archives/*.deb \"$1\"/var/lib/apt/lists/*".to_string());
        a.push(self.suite.clone());
        a.push(out.to_string_lossy().into_owned());
        if let Some(m) = &self.mirror {
            a.push(m.clone());
        }
        a
    }
}

/// Runs `cmd`, passing each stderr/stdout line to `progress`; on failure the
/// error carries the last lines.
pub(super) fn run_logged(
    what: &str,
    cmd: &mut Command,
    progress: &mut dyn FnMut(&str),
) -> Result<(), VmmError> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| VmmError::ImageBuild(format!("{what}: cannot start: {e}")))?;
    let mut tail: VecDeque<String> = VecDeque::new();
    if let Some(err) = child.stderr.take() {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            progress(&line);
            if tail.len() == 15 {
                tail.pop_front();
            }
            tail.push_back(line);
        }
    }
    let status = child
        .wait()
        .map_err(|e| VmmError::ImageBuild(format!("{what}: {e}")))?;
    if !status.success() {
        let t: Vec<String> = tail.into_iter().collect();
        return Err(VmmError::ImageBuild(format!(
            "{what} failed ({status}):\n{}",
            t.join("\n")
        )));
    }
    Ok(())
}

fn need(prog: &'static str, pkg: &'static str) -> Result<(), VmmError> {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(prog).is_file()))
        .unwrap_or(false);
    if found {
        Ok(())
    } else {
        Err(VmmError::MissingProgram(prog, pkg))
    }
}

/// Builds (or finds cached) the Debian image `opts.name` with `guest_bin`
/// as `/sbin/bottle-guest`. Returns the image directory holding the root
/// image (`root.ext4` or `root.erofs`) and `rootfs.tar`.
pub fn build_debian(
    opts: &DebianOpts,
    guest_bin: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<PathBuf, VmmError> {
    opts.validate()?;
    if !nix::unistd::geteuid().is_root() {
        return Err(VmmError::ImageBuild(
            "building the Debian image needs root (mmdebstrap root mode keeps file owners); run it with sudo".into(),
        ));
    }
    need("mmdebstrap", "apt-get install mmdebstrap")?;
    match opts.format {
        RootFormat::Ext4 => need("mkfs.ext4", "apt-get install e2fsprogs")?,
        RootFormat::Erofs => need("mkfs.erofs", "apt-get install erofs-utils")?,
    }
    let agent = std::fs::read(guest_bin).map_err(VmmError::io("read guest agent", guest_bin))?;
    if !super::is_static_elf(&agent) {
        return Err(VmmError::ImageBuild(format!(
            "{} is not a static binary",
            guest_bin.display()
        )));
    }
    let store = ImageStore::open();
    let def_key = opts.def_key();
    let key = image_key(&def_key, &agent);
    let dir = store.dir_for(&opts.name, &key);
    if store.is_complete(&dir) {
        progress(&format!("cached: {}", dir.display()));
        return Ok(dir);
    }

    // 1. The Debian tree as a tarball, cached by the definition alone so a
    //    new guest agent only repeats the cheap steps. A layered image starts
    //    from the cached bare tree (the built-in image's) and gets its layer
    //    in step 2: adding a package does not run mmdebstrap again.
    let base_dir = store.root().join(".base");
    std::fs::create_dir_all(&base_dir).map_err(VmmError::io("create image cache", &base_dir))?;
    let base = bootstrap(&opts.bare_if_layered(), &base_dir, progress)?;

    // 2. Unpack, add the agent, make the image and the export tarball.
    let work = store.root().join(format!(".work-{}-{key}", opts.name));
    let _ = std::fs::remove_dir_all(&work);
    let tree = work.join("rootfs");
    std::fs::create_dir_all(&tree).map_err(VmmError::io("create work dir", &tree))?;
    let result = (|| {
        progress("unpacking root tree ...");
        run_logged(
            "tar -x",
            Command::new("tar")
                .arg("-xf")
                .arg(&base)
                .arg("-C")
                .arg(&tree)
                .args(["--numeric-owner", "--exclude=./dev/*"]),
            progress,
        )?;
        if opts.has_layer() {
            super::layer::apply_layer(&tree, opts, progress)?;
        }
        let sbin = tree.join("sbin/bottle-guest");
        // usr-merged Debian: /sbin is a symlink to usr/sbin.
        let real = tree.join("usr/sbin/bottle-guest");
        let dest = if tree.join("sbin").is_symlink() {
            real
        } else {
            sbin
        };
        std::fs::write(&dest, &agent).map_err(VmmError::io("install guest agent", &dest))?;
        set_mode(&dest, 0o755)?;
        let staged = work.join("out");
        std::fs::create_dir_all(&staged).map_err(VmmError::io("create work dir", &staged))?;
        let img = staged.join(opts.format.file_name());
        progress(&format!("making {} ...", opts.format.file_name()));
        match opts.format {
            RootFormat::Ext4 => {
                let bytes = tree_size(&tree);
                let size_mib = bytes / (1 << 20) * 5 / 4 + 64;
                run_logged(
                    "mkfs.ext4",
                    Command::new("mkfs.ext4")
                        .args([
                            "-q",
                            "-F",
                            "-L",
                            "bottle-root",
                            "-O",
                            "^has_journal",
                            "-m",
                            "0",
                            "-d",
                        ])
                        .arg(&tree)
                        .arg(&img)
                        .arg(format!("{size_mib}M")),
                    progress,
                )?;
            }
            RootFormat::Erofs => run_logged(
                "mkfs.erofs",
                Command::new("mkfs.erofs")
                    .args(["--quiet", "-zlz4hc"])
                    .arg(&img)
                    .arg(&tree),
                progress,
            )?,
        }
        progress("writing rootfs.tar for the Docker backend ...");
        run_logged(
            "tar -c",
            Command::new("tar")
                .arg("-cf")
                .arg(staged.join("rootfs.tar"))
                .args(["--numeric-owner", "-C"])
                .arg(&tree)
                .arg("."),
            progress,
        )?;
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&staged, &dir).map_err(VmmError::io("install image", &dir))?;
        store.mark_complete(
            &dir,
            &opts.name,
            &key,
            serde_json::to_value(opts).unwrap_or_default(),
        )
    })();
    let _ = std::fs::remove_dir_all(&work);
    result?;
    progress(&format!("built: {}", dir.display()));
    Ok(dir)
}

/// The mmdebstrap tarball of `opts` in `base_dir`, made when missing.
fn bootstrap(
    opts: &DebianOpts,
    base_dir: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<PathBuf, VmmError> {
    let def_key = opts.def_key();
    let base = base_dir.join(format!("{def_key}.tar"));
    if !base.is_file() {
        progress(&format!(
            "mmdebstrap {} (minbase + {}) ...",
            opts.suite,
            BASE_PACKAGES.join(" ")
        ));
        let tmp = base_dir.join(format!("{def_key}.tar.tmp.{}", std::process::id()));
        let made = run_logged(
            "mmdebstrap",
            Command::new("mmdebstrap").args(opts.mmdebstrap_args(&tmp)),
            progress,
        );
        if let Err(e) = made {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        std::fs::rename(&tmp, &base).map_err(VmmError::io("install base tarball", &base))?;
    }
    Ok(base)
}

/// The image key: the definition's hash and the guest agent baked in.
fn image_key(def_key: &str, agent: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(def_key.as_bytes());
    h.update(agent);
    hex::encode(h.finalize())[..16].to_string()
}

/// The built image for exactly this definition and guest agent, if any.
pub fn find_debian(opts: &DebianOpts, guest_bin: &Path) -> Result<Option<PathBuf>, VmmError> {
    let agent = std::fs::read(guest_bin).map_err(VmmError::io("read guest agent", guest_bin))?;
    let key = image_key(&opts.def_key(), &agent);
    Ok(ImageStore::open().find(&opts.name, &key))
}

fn set_mode(p: &Path, mode: u32) -> Result<(), VmmError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .map_err(VmmError::io("chmod", p))
}

fn tree_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(m) = e.path().symlink_metadata() else {
                continue;
            };
            if m.is_dir() {
                stack.push(e.path());
            }
            total += m.len().max(4096);
        }
    }
    total
}

/// The rootfs tarball in a built image directory (same tree as its root
/// image, agent included), for `docker import`.
pub fn export_rootfs_tar(dir: &Path) -> Result<PathBuf, VmmError> {
    let tar = dir.join("rootfs.tar");
    if tar.is_file() {
        Ok(tar)
    } else {
        Err(VmmError::ImageMissing(dir.display().to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mmdebstrap_args_carry_minbase_packages_and_output() {
        let a = DebianOpts::default().mmdebstrap_args(Path::new("/tmp/out.tar"));
        assert!(a.contains(&"--variant=minbase".to_string()));
        assert!(
            a.contains(&"--include=ca-certificates,git,curl,openssh-client,nodejs,npm".to_string())
        );
        assert_eq!(
            a[a.len() - 2..],
            ["bookworm".to_string(), "/tmp/out.tar".to_string()]
        );
        assert!(!a.iter().any(|x| x.contains("claude-code")));
    }

    #[test]
    fn build_ca_is_copied_in_for_npm_and_removed() {
        let o = DebianOpts {
            claude: true,
            build_ca: Some("/etc/ssl/certs/extra.crt".into()),
            ..DebianOpts::default()
        };
        let a = o.mmdebstrap_args(Path::new("/o"));
        assert!(a.contains(&"--customize-hook=copy-in /etc/ssl/certs/extra.crt /tmp".to_string()));
        assert!(a
            .iter()
            .any(|x| x.contains("env NODE_EXTRA_CA_CERTS=/tmp/extra.crt sh -c")));
        assert!(a.contains(&"--customize-hook=rm -f \"$1\"/tmp/extra.crt".to_string()));
        let without = DebianOpts {
            build_ca: None,
            ..o.clone()
        };
        assert_eq!(o.def_key(), without.def_key());
    }

    #[test]
    fn claude_option_adds_the_npm_hook() {
        let o = DebianOpts {
            claude: true,
            ..DebianOpts::default()
        };
        assert!(o
            .mmdebstrap_args(Path::new("/o"))
            .iter()
            .any(|x| x.contains("@anthropic-ai/claude-code")));
    }

    #[test]
    fn definition_change_changes_the_key() {
        let a = DebianOpts::default();
        let b = DebianOpts {
            claude: true,
            ..DebianOpts::default()
        };
        assert_ne!(a.def_key(), b.def_key());
        assert_eq!(a.def_key(), DebianOpts::default().def_key());
    }

    #[test]
    fn option_like_package_names_are_refused() {
        let o = DebianOpts {
            extra_packages: vec!["--hook=x".into()],
            ..DebianOpts::default()
        };
        assert!(o.validate().is_err());
        let o = DebianOpts {
            name: "../x".into(),
            ..DebianOpts::default()
        };
        assert!(o.validate().is_err());
    }
}
