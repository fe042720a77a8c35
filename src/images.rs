//! `bottle image build|ls|rm`: guest images, cached under the user's cache dir
//! and keyed by their definition.

use crate::cli::ImageCommand;
use crate::commands::print_text as print;
use anyhow::Context;
use std::path::{Path, PathBuf};

/// The static guest agent next to this binary, or built by `scripts/build-guest.sh`.
pub fn guest_binary() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("BOTTLE_GUEST_BIN").map(PathBuf::from) {
        return Ok(p);
    }
    let exe = std::env::current_exe().context("cannot find the bottle binary")?;
    let mut candidates = Vec::new();
    if let Some(dir) = exe.parent() {
        candidates.push(dir.join("bottle-guest-static"));
        // target/{debug,release}/bottle → target/x86_64-unknown-linux-gnu/release/bottle-guest
        if let Some(target) = dir.parent() {
            candidates.push(target.join("x86_64-unknown-linux-gnu/release/bottle-guest"));
        }
    }
    candidates
        .into_iter()
        .find(|p| std::fs::read(p).is_ok_and(|bytes| bottle_vmm::image::is_static_elf(&bytes)))
        .ok_or_else(|| {
            anyhow::anyhow!(
                "no static guest agent found; run scripts/build-guest.sh (or set BOTTLE_GUEST_BIN)"
            )
        })
}

/// The root disk of a built image (`root.ext4` or `root.erofs`).
pub fn root_disk(dir: &Path) -> Option<PathBuf> {
    ["root.ext4", "root.erofs"]
        .iter()
        .map(|f| dir.join(f))
        .find(|p| p.is_file())
}

pub fn run(cmd: ImageCommand) -> anyhow::Result<()> {
    let store = bottle_vmm::image::ImageStore::open();
    match cmd {
        ImageCommand::Build { name, claude } => {
            let guest = guest_binary()?;
            let out = match name.as_str() {
                "tiny" => bottle_vmm::image::ensure_tiny(Some(&guest))?,
                "debian" => {
                    let opts = bottle_vmm::image::DebianOpts {
                        claude,
                        ..Default::default()
                    };
                    bottle_vmm::image::build_debian(&opts, &guest, &mut |line| {
                        eprintln!("image: {line}")
                    })?
                }
                other => {
                    anyhow::bail!("unknown image `{other}`: the images are `tiny` and `debian`")
                }
            };
            print(&format!("built {name}: {}\n", out.display()))
        }
        ImageCommand::Ls => {
            let mut out = String::new();
            for i in store.list()? {
                out.push_str(&format!(
                    "{}\t{}\t{} MiB\t{}\n",
                    i.name,
                    i.key,
                    i.size_bytes / (1024 * 1024),
                    i.dir.display()
                ));
            }
            print(&out)
        }
        ImageCommand::Rm { name } => {
            let n = store.remove(&name)?;
            if n == 0 {
                anyhow::bail!("no image `{name}` (see `bottle image ls`)");
            }
            print(&format!(
                "removed {n} build{} of {name}\n",
                if n == 1 { "" } else { "s" }
            ))
        }
    }
}
