//! The channel key: a per-launch secret that only the guest agent can read.
//! The host generates it, delivers it to the guest out of band (an extra
//! initramfs segment in a VM, a root-only file in the Docker socket
//! directory), and the mux accepts a guest connection only when its hello
//! carries it. See `docs/guest-protocol.md` ("Who may be the guest").

use std::fmt;
use std::io::Read;
use std::path::Path;

/// Bytes of randomness in a key.
pub const KEY_BYTES: usize = 32;

/// Where the key is in a VM's initramfs (appended at launch; mode 0400,
/// root). Init takes it (reads and deletes it) before anything else runs.
pub const INITRAMFS_KEY_PATH: &str = "/bottle-channel.key";

/// Where stage 1 of init leaves the key for stage 2 across a root switch
/// (`/run` is a tmpfs moved into the new root); stage 2 takes it.
pub const HANDOVER_KEY_PATH: &str = "/run/bottle-channel.key";

/// The guest channel's socket in the Docker socket directory (mode 0000:
/// only a process with `CAP_DAC_OVERRIDE`, the guest agent, can connect).
pub const DOCKER_SOCKET: &str = bottle_contract::docker::AGENT_SOCKET;

/// The key file's name in the Docker socket directory (the directory is
/// bind-mounted read-only at `/run/bottle`; the file has mode 0000, so only
/// a process with `CAP_DAC_OVERRIDE`, the guest agent, can read it).
pub const DOCKER_KEY_FILE: &str = bottle_contract::docker::KEY_FILE;

/// Errors reading or parsing a key.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("the channel key must be {} hex digits", KEY_BYTES * 2)]
    Format,
    #[error("cannot read the channel key from {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// A channel key. Its `Debug` form never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct ChannelKey([u8; KEY_BYTES]);

impl fmt::Debug for ChannelKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ChannelKey(..)")
    }
}

impl ChannelKey {
    /// A fresh random key from the kernel's CSPRNG.
    pub fn generate() -> std::io::Result<ChannelKey> {
        let mut bytes = [0u8; KEY_BYTES];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
        Ok(ChannelKey(bytes))
    }

    pub fn from_bytes(bytes: [u8; KEY_BYTES]) -> ChannelKey {
        ChannelKey(bytes)
    }

    /// The key as lowercase hex: what travels in the hello and in files.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Parses the hex form (surrounding whitespace is ignored).
    pub fn parse(text: &str) -> Result<ChannelKey, KeyError> {
        let text = text.trim();
        if text.len() != KEY_BYTES * 2 || !text.is_ascii() {
            return Err(KeyError::Format);
        }
        let mut bytes = [0u8; KEY_BYTES];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|_| KeyError::Format)?;
        }
        Ok(ChannelKey(bytes))
    }

    /// Reads a key file.
    pub fn read(path: &Path) -> Result<ChannelKey, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        ChannelKey::parse(&text)
    }

    /// Whether `offered` (the hex form from a hello) is this key, compared
    /// in time that does not depend on where they differ.
    pub fn matches(&self, offered: &str) -> bool {
        let offered = offered.as_bytes();
        let mine = self.to_hex();
        let mine = mine.as_bytes();
        if offered.len() != mine.len() {
            return false;
        }
        let diff = mine
            .iter()
            .zip(offered)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        diff == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_hex_and_differ() {
        let a = ChannelKey::generate().unwrap();
        let b = ChannelKey::generate().unwrap();
        assert_ne!(a, b);
        assert_eq!(ChannelKey::parse(&format!(" {}\n", a.to_hex())).unwrap(), a);
        assert!(a.matches(&a.to_hex()));
        assert!(!a.matches(&b.to_hex()));
        assert!(!a.matches(""));
        assert!(!a.matches(&a.to_hex()[1..]));
    }

    #[test]
    fn malformed_keys_are_refused_and_debug_hides_the_secret() {
        assert!(ChannelKey::parse("abc").is_err());
        assert!(ChannelKey::parse(&"zz".repeat(KEY_BYTES)).is_err());
        assert!(ChannelKey::parse(&"é".repeat(KEY_BYTES)).is_err());
        let k = ChannelKey::from_bytes([0xab; KEY_BYTES]);
        assert!(!format!("{k:?}").contains("ab"));
    }
}
