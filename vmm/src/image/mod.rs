//! Guest images: the tiny initramfs, the Debian root image, and their cache.
//!
//! Cache: `<cache>/images/<name>-<key>/`, `<key>` = hash of the definition
//! (and of the guest agent binary baked in). A built image directory is
//! complete when its `image.json` exists; it is never written again, and VMs
//! open its disk read-only.

mod cpio;
mod debian;
mod store;
mod tiny;

pub use cpio::CpioWriter;
pub use debian::{build_debian, export_rootfs_tar, DebianOpts, RootFormat};
pub use store::{ImageInfo, ImageStore};
pub use tiny::{build_tiny, is_static_elf, tiny_key, BUSYBOX, PLACEHOLDER_INIT};

use std::path::{Path, PathBuf};

use crate::VmmError;

/// File name of the initramfs inside an image directory.
pub const INITRAMFS: &str = "initramfs.cpio.gz";

/// Name of the tiny image built with the placeholder init (no agent): what
/// probes and the bare-boot benchmark boot, since the real agent prints the
/// ready marker only after a host handshake.
pub const PROBE_IMAGE: &str = "tiny-probe";

/// The cached tiny image for `guest_bin` (named `tiny`), or with the
/// placeholder init (named [`PROBE_IMAGE`]), built on first use. Returns the
/// path of its initramfs.
pub fn ensure_tiny(guest_bin: Option<&Path>) -> Result<PathBuf, VmmError> {
    let store = ImageStore::open();
    let key = tiny_key(guest_bin)?;
    let name = if guest_bin.is_some() {
        "tiny"
    } else {
        PROBE_IMAGE
    };
    let dir = store.dir_for(name, &key);
    let out = dir.join(INITRAMFS);
    if store.is_complete(&dir) && out.is_file() {
        return Ok(out);
    }
    build_tiny(guest_bin, &out)?;
    store.mark_complete(
        &dir,
        "tiny",
        &key,
        serde_json::json!({ "guest_agent": guest_bin.is_some() }),
    )?;
    Ok(out)
}

/// The newest built tiny initramfs with the guest agent, if any.
pub fn find_tiny() -> Option<PathBuf> {
    let store = ImageStore::open();
    store
        .path_of("tiny")
        .map(|d| d.join(INITRAMFS))
        .filter(|p| p.is_file())
}
