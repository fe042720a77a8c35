//! Guest images (what `bottle image build|ls|rm` manages), cached under the
//! user's cache dir and keyed by their definition.

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
        // target/{debug,release}/bottle → target/x86_64-unknown-linux-gnu/guest/bottle-guest
        // (the `guest` profile of scripts/build-guest.sh)
        if let Some(target) = dir.parent() {
            candidates.push(target.join("x86_64-unknown-linux-gnu/guest/bottle-guest"));
        }
    }
    candidates
        .into_iter()
        .find(|p| elf_head(p).is_some_and(|bytes| bottle_vmm::image::is_static_elf(&bytes)))
        .ok_or_else(|| {
            anyhow::anyhow!(
                "no static guest agent found; run scripts/build-guest.sh (or set BOTTLE_GUEST_BIN)"
            )
        })
}

/// The first 64 KiB of `path`, which hold an ELF file's header and program
/// headers: enough to tell a static binary without reading megabytes.
fn elf_head(path: &Path) -> Option<Vec<u8>> {
    use std::io::Read;
    let mut head = Vec::new();
    std::fs::File::open(path)
        .ok()?
        .take(64 << 10)
        .read_to_end(&mut head)
        .ok()?;
    Some(head)
}

/// The root disk of a built image (`root.ext4` or `root.erofs`).
pub fn root_disk(dir: &Path) -> Option<PathBuf> {
    ["root.ext4", "root.erofs"]
        .iter()
        .map(|f| dir.join(f))
        .find(|p| p.is_file())
}

/// The built-in images a manifest's `image` can name.
pub const IMAGE_NAMES: &[&str] = &["tiny", "debian", "claude"];

/// An image's definition: what is built, and so the key it is found by.
#[derive(Debug, Clone)]
pub enum ImageDef {
    /// busybox + the guest agent, as an initramfs.
    Tiny,
    /// A Debian root image (`claude` is the Debian image with Claude Code).
    Debian(bottle_vmm::image::DebianOpts),
}

/// The definition of the image a manifest calls `name`.
pub fn definition(name: &str) -> anyhow::Result<ImageDef> {
    match name {
        "tiny" => Ok(ImageDef::Tiny),
        "debian" => Ok(ImageDef::Debian(bottle_vmm::image::DebianOpts::default())),
        "claude" => Ok(ImageDef::Debian(bottle_vmm::image::DebianOpts {
            name: "claude".into(),
            claude: true,
            ..Default::default()
        })),
        other => anyhow::bail!(
            "unknown image `{other}`: the images are {}",
            IMAGE_NAMES
                .iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The directory of image `name` built from exactly its definition and this
/// binary's guest agent: found by key, never by name and age, so a probe
/// image or a build for another guest agent is never taken for it.
pub fn image_dir(name: &str) -> anyhow::Result<PathBuf> {
    find(&definition(name)?)
}

/// The built image of exactly `def` and this binary's guest agent.
pub fn find(def: &ImageDef) -> anyhow::Result<PathBuf> {
    let guest = guest_binary()?;
    let found = match def {
        ImageDef::Tiny => bottle_vmm::image::find_tiny(Some(&guest))?
            .and_then(|p| p.parent().map(Path::to_path_buf)),
        ImageDef::Debian(opts) => bottle_vmm::image::find_debian(opts, &guest)?,
    };
    found.ok_or_else(|| {
        let name = def.name();
        anyhow::anyhow!(
            "image `{name}` is not built for this bottle's guest agent; run `bottle image build {}`",
            def.build_arg()
        )
    })
}

/// The definition of a plan's image: a built-in one, or the bottle's own.
pub fn for_plan(plan: &crate::plan::Plan) -> anyhow::Result<ImageDef> {
    match &plan.custom_image {
        None => definition(&plan.image),
        Some(custom) => {
            let mut files = Vec::new();
            for (guest, host) in &custom.files {
                let content = std::fs::read(host).with_context(|| {
                    format!("cannot read {} (image file {guest})", host.display())
                })?;
                anyhow::ensure!(
                    content.len() <= MAX_IMAGE_FILE,
                    "{} is over {} MiB; image files are for configuration, install large things with `setup`",
                    host.display(),
                    MAX_IMAGE_FILE >> 20
                );
                files.push(bottle_vmm::image::ImageFile::new(guest, content));
            }
            Ok(ImageDef::Debian(bottle_vmm::image::DebianOpts {
                name: plan.image.clone(),
                extra_packages: custom.packages.clone(),
                claude: custom.claude,
                setup: custom.setup.clone(),
                files,
                ..Default::default()
            }))
        }
    }
}

/// Largest file `[bottles.NAME.image] files` copies into an image.
const MAX_IMAGE_FILE: usize = 16 << 20;

impl ImageDef {
    /// The image's name (`tiny`, `debian`, `claude`, `custom-<bottle>`).
    pub fn name(&self) -> String {
        match self {
            ImageDef::Tiny => "tiny".to_string(),
            ImageDef::Debian(o) => o.name.clone(),
        }
    }

    /// What to pass to `bottle image build` for it.
    fn build_arg(&self) -> String {
        let name = self.name();
        name.strip_prefix("custom-")
            .map_or(name.clone(), str::to_string)
    }
}

/// The tiny initramfs every VM boots (it switches to a root disk when the
/// bottle's image has one).
pub fn tiny_initramfs() -> anyhow::Result<PathBuf> {
    Ok(image_dir("tiny")?.join(bottle_vmm::image::INITRAMFS))
}

/// Builds image `name` (cached by its definition); returns its directory.
pub fn build(name: &str) -> anyhow::Result<PathBuf> {
    build_def(&definition(name)?)
}

/// Builds the image of `def` (cached by its key); returns its directory.
pub fn build_def(def: &ImageDef) -> anyhow::Result<PathBuf> {
    let guest = guest_binary()?;
    match def.clone() {
        ImageDef::Tiny => {
            let initramfs = bottle_vmm::image::ensure_tiny(Some(&guest))?;
            Ok(initramfs
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or(initramfs))
        }
        ImageDef::Debian(opts) => Ok(bottle_vmm::image::build_debian(
            &opts,
            &guest,
            &mut |line| eprintln!("image: {line}"),
        )?),
    }
}

/// A root filesystem tarball of a built image, for the Docker backend: the
/// same bits the VM boots. Debian images ship one; for `tiny` it is
/// converted from the initramfs once and kept next to it.
pub fn rootfs_tar(name: &str) -> anyhow::Result<PathBuf> {
    rootfs_tar_of(&definition(name)?)
}

/// [`rootfs_tar`] for a definition.
pub fn rootfs_tar_of(def: &ImageDef) -> anyhow::Result<PathBuf> {
    let dir = find(def)?;
    match def {
        ImageDef::Tiny => {
            let initramfs = dir.join(bottle_vmm::image::INITRAMFS);
            let tar = dir.join("rootfs.tar");
            if !tar.is_file() {
                cpio_to_tar(&initramfs, &tar).with_context(|| {
                    format!("cannot convert {} to a tarball", initramfs.display())
                })?;
            }
            Ok(tar)
        }
        ImageDef::Debian(_) => Ok(bottle_vmm::image::export_rootfs_tar(&dir)?),
    }
}

/// Rewrite a `newc` cpio archive, plain or gzip'd, as a tar archive (regular
/// files, directories, symlinks; device nodes are left to the container
/// runtime).
pub fn cpio_to_tar(cpio: &Path, out: &Path) -> anyhow::Result<()> {
    use std::io::Read;
    let mut data = std::fs::read(cpio)?;
    if data.starts_with(&[0x1f, 0x8b]) {
        let mut plain = Vec::new();
        flate2::read::GzDecoder::new(&data[..]).read_to_end(&mut plain)?;
        data = plain;
    }
    // Unique per process: two bottles starting at once both convert, and a
    // shared temp name let one rename the other's file away.
    let tmp = out.with_extension(format!("tar.tmp.{}", std::process::id()));
    let written = write_cpio_as_tar(&data, &tmp).and_then(|()| Ok(std::fs::rename(&tmp, out)?));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Writes the `newc` cpio archive `data` to `path` as a tar archive.
fn write_cpio_as_tar(data: &[u8], path: &Path) -> anyhow::Result<()> {
    let mut builder = tar::Builder::new(std::io::BufWriter::new(std::fs::File::create(path)?));
    let mut pos = 0usize;
    let hex = |bytes: &[u8]| -> anyhow::Result<usize> {
        let text = std::str::from_utf8(bytes).context("bad cpio header")?;
        usize::from_str_radix(text, 16).context("bad cpio header")
    };
    let align4 = |n: usize| (n + 3) & !3;
    loop {
        let header = data.get(pos..pos + 110).context("truncated cpio archive")?;
        anyhow::ensure!(&header[..6] == b"070701", "not a newc cpio archive");
        let mode = hex(&header[14..22])?;
        let file_size = hex(&header[54..62])?;
        let name_size = hex(&header[94..102])?;
        let name_start = pos + 110;
        let name = data
            .get(name_start..name_start + name_size.saturating_sub(1))
            .context("truncated cpio name")?;
        let name = std::str::from_utf8(name)
            .context("cpio name is not UTF-8")?
            .to_string();
        let data_start = align4(name_start + name_size);
        let body = data
            .get(data_start..data_start + file_size)
            .context("truncated cpio data")?;
        pos = align4(data_start + file_size);
        if name == "TRAILER!!!" {
            break;
        }
        let mut h = tar::Header::new_gnu();
        h.set_mode(u32::try_from(mode & 0o7777).unwrap_or(0o644));
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        match mode & 0o170000 {
            0o040000 => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                builder.append_data(&mut h, format!("{name}/"), std::io::empty())?;
            }
            0o120000 => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                builder.append_link(
                    &mut h,
                    &name,
                    std::str::from_utf8(body).context("bad symlink target")?,
                )?;
            }
            0o100000 => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(body.len() as u64);
                builder.append_data(&mut h, &name, body)?;
            }
            _ => {}
        }
    }
    builder
        .into_inner()?
        .into_inner()
        .map_err(|e| e.into_error())?
        .sync_all()?;
    Ok(())
}
