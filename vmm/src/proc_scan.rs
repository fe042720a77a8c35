//! Reads /proc to tell whether processes are still alive (tests, doctor).

/// True when some non-zombie process is in process group `pgid`. Retries for
/// up to two seconds so processes being torn down get time to go.
pub fn group_has_live_members(pgid: u32) -> bool {
    for _ in 0..40 {
        if !scan(pgid) {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    true
}

fn scan(pgid: u32) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return false;
    };
    dir.flatten().any(|e| {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            return false;
        };
        // Fields after the last ')' : state ppid pgrp ...
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            return false;
        };
        let mut f = rest.split_whitespace();
        let state = f.next();
        let pgrp = f.nth(1).and_then(|v| v.parse::<u32>().ok());
        pgrp == Some(pgid) && state != Some("Z") && state != Some("X")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_group_has_live_members() {
        let pgid = nix::unistd::getpgrp().as_raw() as u32;
        assert!(scan(pgid));
    }
}
