//! Carrying a per-launch secret into the guest without the kernel command
//! line (which every guest user can read in `/proc/cmdline`): a copy of the
//! image's initramfs with one more newc segment appended, holding a single
//! root-only file. The kernel unpacks concatenated segments in order into the
//! same rootfs, so the guest's init finds the file at `path` and takes it
//! (reads and deletes it) before anything else runs. The same file works as
//! qemu's `-initrd` and as libkrun's initramfs.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::image::CpioWriter;
use crate::VmmError;

/// Writes `out` (mode 0600, replaced if present): the initramfs `base`, zero
/// padding to a 4-byte boundary (where the kernel looks for the next
/// segment), then an uncompressed newc archive with `path` (absolute, mode
/// 0400, owned by root) holding `data`.
pub fn initramfs_with_secret(
    base: &Path,
    out: &Path,
    path: &str,
    data: &[u8],
) -> Result<(), VmmError> {
    let name = path.trim_start_matches('/');
    if name.is_empty()
        || name
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(VmmError::InvalidSpec(format!(
            "secret path {path:?} must be a plain absolute path"
        )));
    }
    let write_err = VmmError::io("writing the initramfs with the channel key", out);
    let _ = std::fs::remove_file(out);
    let mut dst = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .map_err(VmmError::io(
            "creating the initramfs with the channel key",
            out,
        ))?;
    let mut src = File::open(base).map_err(VmmError::io("reading the initramfs", base))?;
    let copied = io::copy(&mut src, &mut dst)
        .and_then(|len| {
            let pad = (4 - len % 4) % 4;
            dst.write_all(&[0u8; 3][..pad as usize])?;
            let mut cpio = CpioWriter::new(Vec::new());
            let mut dir = String::new();
            for part in name.split('/').take(name.split('/').count() - 1) {
                if !dir.is_empty() {
                    dir.push('/');
                }
                dir.push_str(part);
                cpio.dir(&dir, 0o755)?;
            }
            cpio.file(name, 0o400, data)?;
            dst.write_all(&cpio.finish()?)
        })
        .map_err(write_err);
    if copied.is_err() {
        let _ = std::fs::remove_file(out);
    }
    copied
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secret_is_appended_as_an_aligned_root_only_segment() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.img");
        std::fs::write(&base, b"gzip-bytes").unwrap(); // 10 bytes: 2 of padding
        let out = dir.path().join("with-key.img");
        std::fs::write(&out, b"stale").unwrap();
        initramfs_with_secret(&base, &out, "/bottle-channel.key", b"s3cret").unwrap();
        let bytes = std::fs::read(&out).unwrap();
        assert!(bytes.starts_with(b"gzip-bytes\x00\x00070701"));
        let text = String::from_utf8_lossy(&bytes);
        // mode 0100400: a regular file readable by its owner (root) only.
        let header = &text[12..12 + 110];
        assert_eq!(&header[14..22], "00008100", "{header}");
        assert!(text.contains("bottle-channel.key\0"));
        assert!(text.contains("s3cret"));
        assert!(text.contains("TRAILER!!!"));
        let mode = std::fs::metadata(&out).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn parents_are_created_and_odd_paths_refused() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.img");
        std::fs::write(&base, b"1234").unwrap();
        let out = dir.path().join("o.img");
        initramfs_with_secret(&base, &out, "/etc/bottle/key", b"k").unwrap();
        let text = String::from_utf8_lossy(&std::fs::read(&out).unwrap()).into_owned();
        assert!(text.starts_with("1234070701"), "no padding when aligned");
        let (etc, key) = (
            text.find("etc\0").unwrap(),
            text.find("etc/bottle/key\0").unwrap(),
        );
        assert!(etc < text.find("etc/bottle\0").unwrap() && etc < key);
        for bad in ["/", "/a/../b", "/a//b", "/./a"] {
            assert!(
                initramfs_with_secret(&base, &out, bad, b"k").is_err(),
                "{bad}"
            );
        }
    }
}
