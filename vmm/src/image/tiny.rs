//! The tiny image: an uncompressed newc initramfs with busybox-static and
//! the static guest agent as `/init` (linked as `/sbin/bottle-guest`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use super::cpio::CpioWriter;
use crate::spec::READY_MARKER;
use crate::VmmError;

/// Default busybox; `BOTTLE_BUSYBOX` overrides it.
pub const BUSYBOX: &str = "/bin/busybox";

/// Used as /init when no guest agent is given: mounts the basics, prints the
/// ready marker and holds. With `bottle.root=/dev/…` it first mounts it
/// read-only under a tmpfs overlay and switches root to it (as the guest
/// agent does); `bottle.test=tools` then prints node's and git's versions
/// before the marker. `bottle.test=poweroff` (no root) powers off right
/// after the marker.
pub const PLACEHOLDER_INIT: &str = r#"#!/bin/busybox sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t devtmpfs dev /dev 2>/dev/null
mount -t proc proc /proc
mount -t sysfs sys /sys
cmdline=" $(cat /proc/cmdline) "
root=""
for w in $cmdline; do case "$w" in bottle.root=/dev/*) root="${w#bottle.root=}" ;; esac; done
if [ -n "$root" ]; then
  mkdir -p /ro /rw /newroot
  mount -o ro "$root" /ro || { echo "bottle-init: cannot mount $root"; reboot -f; }
  mount -t tmpfs -o mode=0755 rw /rw && mkdir -p /rw/upper /rw/work
  mount -t overlay overlay -o lowerdir=/ro,upperdir=/rw/upper,workdir=/rw/work /newroot
  for m in dev proc sys; do mount --move /$m /newroot/$m; done
  check=""
  case "$cmdline" in *" bottle.test=tools "*) check="node --version; git --version;" ;; esac
  exec switch_root /newroot /bin/sh -c "$check cat /etc/debian_version; echo BOTTLE-GUEST-READY; exec sleep infinity"
fi
echo BOTTLE-GUEST-READY
case "$cmdline" in *" bottle.test=poweroff "*) reboot -f ;; esac
while :; do sleep 3600; done
"#;

fn busybox_path() -> PathBuf {
    std::env::var_os("BOTTLE_BUSYBOX")
        .map(PathBuf::from)
        .unwrap_or_else(|| BUSYBOX.into())
}

/// True when `elf` is an ELF executable without a program interpreter.
pub fn is_static_elf(elf: &[u8]) -> bool {
    let rd16 = |o: usize| {
        elf.get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let rd32 = |o: usize| {
        elf.get(o..o + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
    };
    let rd64 = |o: usize| {
        elf.get(o..o + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    if elf.get(..5) != Some(b"\x7fELF\x02") {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (rd64(0x20), rd16(0x36), rd16(0x38)) else {
        return false;
    };
    let Ok(phoff) = usize::try_from(phoff) else {
        return false;
    };
    (0..phnum).all(|i| {
        let at = phoff.saturating_add(i.saturating_mul(phentsize));
        matches!(rd32(at), Some(t) if t != 3 /* PT_INTERP */)
    })
}

fn read_static(what: &'static str, p: &Path) -> Result<Vec<u8>, VmmError> {
    let bytes = std::fs::read(p).map_err(VmmError::io(what, p))?;
    if !is_static_elf(&bytes) {
        return Err(VmmError::ImageBuild(format!(
            "{} is not a static x86-64 ELF binary",
            p.display()
        )));
    }
    Ok(bytes)
}

/// The cache key of the tiny image for these inputs. Hashing both binaries
/// (~4.5 MB) costs a few ms and one launch asks several times, so the key
/// is remembered for the process under the files' inode, size and mtime.
/// How the tiny image is laid out, part of its key: a change here makes
/// every cached tiny image a miss, so it is built again.
const LAYOUT: &str = "tiny-v3 uncompressed, the agent once\n";

pub fn tiny_key(guest_bin: Option<&Path>) -> Result<String, VmmError> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static KEYS: OnceLock<Mutex<HashMap<String, String>>> = OnceLock::new();
    use crate::paths::file_stamp;
    let bb = busybox_path();
    let memo = match guest_bin {
        Some(g) => file_stamp(&bb)
            .zip(file_stamp(g))
            .map(|(b, g)| format!("{LAYOUT};{b};{g}")),
        // No guest agent: the placeholder init, so busybox alone.
        None => file_stamp(&bb).map(|b| format!("{LAYOUT};{b};placeholder")),
    };
    let keys = KEYS.get_or_init(Mutex::default);
    if let Some(k) = memo.as_ref().and_then(|m| {
        keys.lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(m)
            .cloned()
    }) {
        return Ok(k);
    }
    // Hashing busybox and the agent (~4.5 MB) costs ~4 ms of every launch:
    // remembered on disk too, under the same stamps.
    let disk = crate::paths::StampCache::new("tiny-keys.json");
    let key = match memo.as_deref().and_then(|m| disk.get(m)) {
        Some(k) => k,
        None => {
            let k = hash_tiny_inputs(&bb, guest_bin)?;
            if let Some(m) = &memo {
                disk.put(m.clone(), k.clone());
            }
            k
        }
    };
    if let Some(m) = memo {
        keys.lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(m, key.clone());
    }
    Ok(key)
}

fn hash_tiny_inputs(bb: &Path, guest_bin: Option<&Path>) -> Result<String, VmmError> {
    let mut h = Sha256::new();
    h.update(LAYOUT.as_bytes());
    h.update(std::fs::read(bb).map_err(VmmError::io("read busybox", bb))?);
    match guest_bin {
        Some(g) => h.update(std::fs::read(g).map_err(VmmError::io("read guest agent", g))?),
        None => h.update(PLACEHOLDER_INIT.as_bytes()),
    }
    Ok(hex::encode(h.finalize())[..16].to_string())
}

/// Writes the tiny initramfs to `out`. Without `guest_bin`, `/init` is
/// [`PLACEHOLDER_INIT`] (boots to the marker; serves nothing).
pub fn build_tiny(guest_bin: Option<&Path>, out: &Path) -> Result<(), VmmError> {
    let bb_path = busybox_path();
    let busybox = read_static("read busybox", &bb_path)
        .map_err(|e| VmmError::ImageBuild(format!("{e}; install busybox-static")))?;
    let guest = guest_bin
        .map(|g| read_static("read guest agent", g))
        .transpose()?;
    let list = Command::new(&bb_path)
        .arg("--list-full")
        .output()
        .map_err(|_| VmmError::MissingProgram("busybox", "apt-get install busybox-static"))?;
    let applets = String::from_utf8_lossy(&list.stdout).into_owned();

    let tmp = out.with_extension("tmp");
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).map_err(VmmError::io("create image dir", dir))?;
    }
    let file = std::fs::File::create(&tmp).map_err(VmmError::io("create initramfs", &tmp))?;
    // Not compressed: under TCG the guest kernel spent ~80 ms inflating
    // the gzip'd archive at every boot; the uncompressed one is 7 MB
    // instead of 3 MB on disk.
    let mut w = CpioWriter::new(std::io::BufWriter::new(file));
    let io = VmmError::io("write initramfs", &tmp);
    let res = (move || -> std::io::Result<()> {
        for d in [
            "bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp", "run", "etc",
            "root", "mnt", "newroot",
        ] {
            w.dir(d, if d == "tmp" { 0o1777 } else { 0o755 })?;
        }
        w.char_dev("dev/console", 0o600, 5, 1)?;
        w.char_dev("dev/null", 0o666, 1, 3)?;
        w.file("bin/busybox", 0o755, &busybox)?;
        for applet in applets
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.contains(".."))
        {
            if applet == "bin/busybox" {
                continue;
            }
            let depth = applet.matches('/').count();
            let target = format!("{}bin/busybox", "../".repeat(depth));
            w.symlink(applet, &target)?;
        }
        w.file("etc/bottle-marker", 0o644, READY_MARKER.as_bytes())?;
        match &guest {
            Some(g) => {
                // Once: the guest kernel copies every byte of the archive
                // at each boot (2 MB less to copy under TCG).
                w.file("init", 0o755, g)?;
                w.symlink("sbin/bottle-guest", "../init")?;
            }
            None => w.file("init", 0o755, PLACEHOLDER_INIT.as_bytes())?,
        }
        w.finish()?.flush()
    })();
    res.map_err(io)?;
    std::fs::rename(&tmp, out).map_err(VmmError::io("install initramfs", out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncated_or_foreign_bytes_are_not_static_elf() {
        assert!(!is_static_elf(b""));
        assert!(!is_static_elf(b"\x7fELF\x02\x01\x01"));
        assert!(!is_static_elf(b"#!/bin/sh\n"));
    }

    #[test]
    fn dynamic_binary_is_not_static() {
        let sh = std::fs::read("/bin/sh").unwrap();
        assert!(!is_static_elf(&sh));
    }

    /// Whether busybox-static and cpio are here (a skip, or a failure under
    /// BOTTLE_TEST_STRICT, when not).
    fn busybox_and_cpio() -> bool {
        bottle_test_harness::skip::require(
            Path::new(BUSYBOX).exists() && Path::new("/usr/bin/cpio").exists(),
            "needs busybox-static and cpio (apt-get install busybox-static cpio)",
        )
    }

    #[test]
    fn the_agent_is_in_the_image_once_and_linked_as_its_path() {
        if !busybox_and_cpio() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("tiny.cpio");
        // Any static program stands in for the agent.
        build_tiny(Some(Path::new(BUSYBOX)), &out).unwrap();
        let unpacked = dir.path().join("root");
        std::fs::create_dir(&unpacked).unwrap();
        let ok = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("cpio -id --quiet < {}", out.display()))
            .current_dir(&unpacked)
            .status()
            .unwrap();
        assert!(ok.success());
        let link = std::fs::read_link(unpacked.join("sbin/bottle-guest")).unwrap();
        assert_eq!(link, Path::new("../init"));
        assert_eq!(
            std::fs::read(unpacked.join("sbin/bottle-guest")).unwrap(),
            std::fs::read(BUSYBOX).unwrap()
        );
        // Busybox and the agent's one copy, plus headers and small files.
        let size = std::fs::metadata(&out).unwrap().len();
        let busybox = std::fs::metadata(BUSYBOX).unwrap().len();
        assert!(size < 2 * busybox + 256 * 1024, "{size} bytes");
    }

    #[test]
    fn tiny_image_holds_init_busybox_and_console() {
        if !busybox_and_cpio() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("tiny.cpio");
        build_tiny(None, &out).unwrap();
        let listing = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("cpio -t --quiet < {}", out.display()))
            .output()
            .unwrap();
        let l = String::from_utf8_lossy(&listing.stdout);
        for want in [
            "init",
            "bin/busybox",
            "dev/console",
            "bin/sh",
            "sbin/reboot",
        ] {
            assert!(l.lines().any(|x| x == want), "missing {want}");
        }
    }
}
