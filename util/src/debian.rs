//! Debian names, checked the way Debian policy defines them.

/// Whether `name` is a Debian package name (policy §5.6.1: lower-case
/// letters, digits, `+`, `-` and `.`, at least two characters, starting
/// with a letter or digit). Such a name can never be read as an option or
/// a path by apt or a shell.
pub fn is_package_name(name: &str) -> bool {
    name.len() >= 2
        && name.len() <= 128
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_names_follow_debian_policy() {
        for ok in ["jq", "python3-requests", "g++", "libc6.1", "0ad"] {
            assert!(is_package_name(ok), "{ok}");
        }
        for bad in [
            "",
            "j",
            "-y",
            "--allow-unauthenticated",
            "Jq",
            "a_b",
            "a b",
            "../x",
            "jq=1.6",
            "jq:amd64",
            ".x",
        ] {
            assert!(!is_package_name(bad), "{bad}");
        }
    }
}
