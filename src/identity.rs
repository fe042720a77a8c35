//! Bottle identities: `<agent>-<5 random base36 chars>`, unique per launch.

use rand::Rng;

const ALPHABET: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";

/// A fresh identity for a launch of `agent`.
pub fn new_identity(agent: &str) -> String {
    let mut rng = rand::thread_rng();
    let suffix: String = (0..5)
        .map(|_| char::from(ALPHABET[rng.gen_range(0..ALPHABET.len())]))
        .collect();
    format!("{agent}-{suffix}")
}

/// Whether `s` is shaped like an identity (so it is safe as a directory name).
pub fn is_identity(s: &str) -> bool {
    match s.rsplit_once('-') {
        Some((agent, suffix)) => {
            !agent.is_empty()
                && suffix.len() == 5
                && suffix.bytes().all(|b| ALPHABET.contains(&b))
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_agent_dash_five_base36_chars() {
        let id = new_identity("claude");
        assert!(id.starts_with("claude-"));
        assert_eq!(id.len(), "claude-".len() + 5);
        assert!(is_identity(&id));
    }

    #[test]
    fn two_launches_get_different_identities() {
        let ids: std::collections::BTreeSet<_> = (0..50).map(|_| new_identity("a")).collect();
        assert!(ids.len() > 45);
    }

    #[test]
    fn paths_are_not_identities() {
        assert!(!is_identity("../etc-abcde"));
        assert!(!is_identity("demo"));
        assert!(!is_identity("demo-ABCDE"));
    }
}
