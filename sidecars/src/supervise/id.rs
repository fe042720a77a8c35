//! Request ids: 12 characters of RFC 4648 base32 (lower case), 60 random
//! bits. Every id that comes from outside (a tool argument, a CLI argument, a
//! file name) is checked with [`validate`] before it names a file.

use rand::Rng;

/// Length of an id.
pub const LEN: usize = 12;
const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// A fresh random id.
pub fn generate() -> String {
    let mut rng = rand::rngs::OsRng;
    (0..LEN)
        .map(|_| char::from(ALPHABET[rng.gen_range(0..ALPHABET.len())]))
        .collect()
}

/// Whether `id` is an id this module could have made: exactly [`LEN`]
/// characters of the alphabet, so never a path, a dot or a separator.
pub fn is_valid(id: &str) -> bool {
    id.len() == LEN && id.bytes().all(|b| ALPHABET.contains(&b))
}

/// `id` back if valid, else an error saying what an id looks like.
pub fn validate(id: &str) -> Result<&str, super::SuperviseError> {
    if is_valid(id) {
        Ok(id)
    } else {
        let shown: String = id.chars().take(40).collect();
        Err(super::SuperviseError::Invalid(format!(
            "`{shown}` is not a request id (ids are {LEN} characters a-z and 2-7, as returned by \
             the request tools)"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_valid_and_differ() {
        let ids: std::collections::BTreeSet<String> = (0..1000).map(|_| generate()).collect();
        assert_eq!(ids.len(), 1000);
        assert!(ids.iter().all(|i| is_valid(i)));
    }

    #[test]
    fn paths_and_odd_ids_are_refused() {
        for bad in [
            "",
            "../../etc/pa",
            "abcdefghijk/",
            "abcdefghij..",
            "ABCDEFGHIJKL",
            "abcdefghijk",
            "abcdefghijklm",
            "abcdefghijk1",
            "abcdefghijk\0",
            "abcdéfghijk",
        ] {
            assert!(!is_valid(bad), "{bad:?}");
            assert!(validate(bad).is_err());
        }
        assert!(validate("abcdefghij27").is_ok());
    }
}
