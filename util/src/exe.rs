//! Programs installed beside the running one.

use std::path::{Path, PathBuf};

/// `name` in the directory of `exe`, else one directory up (a test binary
/// runs from `target/*/deps`, the workspace's binaries from `target/*`).
pub fn beside(exe: &Path, name: &str) -> Option<PathBuf> {
    exe.ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_program_is_found_beside_the_executable_or_one_directory_up() {
        let root = std::env::temp_dir().join(format!("bottle-util-beside-{}", std::process::id()));
        let deps = root.join("deps");
        std::fs::create_dir_all(&deps).unwrap();
        let exe = deps.join("runner");
        assert_eq!(beside(&exe, "helper"), None);
        std::fs::write(root.join("helper"), "").unwrap();
        assert_eq!(beside(&exe, "helper"), Some(root.join("helper")));
        std::fs::write(deps.join("helper"), "").unwrap();
        assert_eq!(beside(&exe, "helper"), Some(deps.join("helper")));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
