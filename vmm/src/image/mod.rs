//! Guest images: the tiny initramfs, the Debian root image, and their cache.
//!
//! Cache: `<cache>/images/<name>-<key>/`, `<key>` = hash of the definition
//! (and of the guest agent binary baked in). A built image directory is
//! complete when its `image.json` exists; it is never written again, and VMs
//! open its disk read-only.

mod cpio;
mod debian;
mod layer;
mod store;
mod tiny;

pub use cpio::CpioWriter;
pub use debian::{
    build_debian, export_rootfs_tar, find_debian, DebianOpts, ImageFile, RootFormat,
    CLAUDE_CODE_VERSION,
};
pub use store::{ImageInfo, ImageStore};
pub use tiny::{build_tiny, is_static_elf, tiny_key, BUSYBOX, PLACEHOLDER_INIT};

use std::path::{Path, PathBuf};

use crate::VmmError;

/// File name of the initramfs inside an image directory.
pub const INITRAMFS: &str = "initramfs.cpio";

/// Name of the tiny image built with the placeholder init (no agent): what
/// probes and the bare-boot benchmark boot, since the real agent prints the
/// ready marker only after a host handshake.
pub const PROBE_IMAGE: &str = "tiny-probe";

/// What a built image is for, recorded in its `image.json` and shown by
/// `bottle image ls`.
pub fn purpose_of(name: &str) -> &'static str {
    match name {
        "tiny" => "demo and tests: busybox + guest agent (initramfs)",
        PROBE_IMAGE => "boot probes and the bare-boot benchmark: placeholder init, no guest agent",
        "debian" => "real agents: Debian with git, curl, node, npm",
        "claude" => "real agents: the Debian image with Claude Code",
        _ => "user-defined image",
    }
}

/// The cached tiny image for `guest_bin` (named `tiny`), or with the
/// placeholder init (named [`PROBE_IMAGE`]), built on first use. Returns the
/// path of its initramfs. The two never share a name, so a lookup for the
/// agent image can never find the probe image.
pub fn ensure_tiny(guest_bin: Option<&Path>) -> Result<PathBuf, VmmError> {
    let store = ImageStore::open();
    let key = tiny_key(guest_bin)?;
    let name = tiny_name(guest_bin);
    let dir = store.dir_for(name, &key);
    let out = dir.join(INITRAMFS);
    if store.is_complete(&dir) && out.is_file() {
        return Ok(out);
    }
    build_tiny(guest_bin, &out)?;
    store.mark_complete(
        &dir,
        name,
        &key,
        serde_json::json!({ "guest_agent": guest_bin.is_some() }),
    )?;
    Ok(out)
}

fn tiny_name(guest_bin: Option<&Path>) -> &'static str {
    if guest_bin.is_some() {
        "tiny"
    } else {
        PROBE_IMAGE
    }
}

/// The built tiny initramfs for exactly this guest agent (or the probe
/// image for `None`): found by its definition's key, never by name and age.
pub fn find_tiny(guest_bin: Option<&Path>) -> Result<Option<PathBuf>, VmmError> {
    let key = tiny_key(guest_bin)?;
    Ok(ImageStore::open()
        .find(tiny_name(guest_bin), &key)
        .map(|d| d.join(INITRAMFS))
        .filter(|p| p.is_file()))
}
