//! `/etc/passwd` and `/etc/group` without NSS: lookups and adding the agent user.

/// The unprivileged user the agent runs as (see the contract).
pub use bottle_contract::agent_user::{HOME as AGENT_HOME, NAME as AGENT_NAME, UID as AGENT_UID};

/// One line of `/etc/passwd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
    pub shell: String,
}

fn parse_line(line: &str) -> Option<PasswdEntry> {
    let f: Vec<&str> = line.split(':').collect();
    if f.len() != 7 {
        return None;
    }
    Some(PasswdEntry {
        name: f[0].to_string(),
        uid: f[2].parse().ok()?,
        gid: f[3].parse().ok()?,
        home: f[5].to_string(),
        shell: f[6].to_string(),
    })
}

/// All well-formed entries of a passwd file (malformed lines are skipped).
pub fn entries(passwd: &str) -> impl Iterator<Item = PasswdEntry> + '_ {
    passwd.lines().filter_map(parse_line)
}

/// The entry for `name`.
pub fn by_name(passwd: &str, name: &str) -> Option<PasswdEntry> {
    entries(passwd).find(|e| e.name == name)
}

/// The first entry for `uid`.
pub fn by_uid(passwd: &str, uid: u32) -> Option<PasswdEntry> {
    entries(passwd).find(|e| e.uid == uid)
}

/// The supplementary groups of `user` (primary `gid` included) per a group file.
pub fn groups_of(group: &str, user: &str, gid: u32) -> Vec<u32> {
    let mut out = vec![gid];
    for line in group.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() != 4 {
            continue;
        }
        let Ok(id) = f[2].parse::<u32>() else {
            continue;
        };
        if f[3].split(',').any(|m| m == user) && !out.contains(&id) {
            out.push(id);
        }
    }
    out
}

/// `passwd` with the agent user appended unless its name or uid exists.
pub fn with_agent_user(passwd: &str, shell: &str) -> Option<String> {
    if entries(passwd).any(|e| e.name == AGENT_NAME || e.uid == AGENT_UID) {
        return None;
    }
    let mut out = passwd.to_string();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(&format!(
        "{AGENT_NAME}:x:{AGENT_UID}:{AGENT_UID}:{AGENT_NAME}:{AGENT_HOME}:{shell}\n"
    ));
    Some(out)
}

/// `group` with the agent group appended unless its name or gid exists.
pub fn with_agent_group(group: &str) -> Option<String> {
    let exists = group.lines().any(|l| {
        let mut f = l.split(':');
        let name = f.next();
        let gid = f.nth(1);
        name == Some(AGENT_NAME) || gid.and_then(|g| g.parse::<u32>().ok()) == Some(AGENT_UID)
    });
    if exists {
        return None;
    }
    let mut out = group.to_string();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(&format!("{AGENT_NAME}:x:{AGENT_UID}:\n"));
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
                          broken line\n\
                          daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n";

    #[test]
    fn lookups_find_entries_and_skip_malformed_lines() {
        assert_eq!(by_name(PASSWD, "root").unwrap().home, "/root");
        assert_eq!(by_uid(PASSWD, 1).unwrap().name, "daemon");
        assert!(by_name(PASSWD, "broken line").is_none());
        assert_eq!(entries(PASSWD).count(), 2);
    }

    #[test]
    fn agent_user_is_appended_once() {
        let once = with_agent_user(PASSWD, "/bin/sh").unwrap();
        let agent = by_name(&once, "agent").unwrap();
        assert_eq!(
            (agent.uid, agent.gid, agent.home.as_str()),
            (1000, 1000, "/home/agent")
        );
        assert!(with_agent_user(&once, "/bin/sh").is_none());
    }

    #[test]
    fn agent_user_is_not_added_when_uid_1000_is_taken() {
        assert!(with_agent_user("dev:x:1000:1000::/home/dev:/bin/sh", "/bin/sh").is_none());
    }

    #[test]
    fn agent_user_is_added_to_a_file_without_trailing_newline() {
        let out = with_agent_user("root:x:0:0:root:/root:/bin/sh", "/bin/sh").unwrap();
        assert_eq!(out.lines().count(), 2);
    }

    #[test]
    fn agent_group_is_appended_once() {
        let once = with_agent_group("root:x:0:\n").unwrap();
        assert!(once.ends_with("agent:x:1000:\n"));
        assert!(with_agent_group(&once).is_none());
    }

    #[test]
    fn supplementary_groups_come_from_member_lists() {
        let group = "root:x:0:\nwheel:x:10:root,agent\nusers:x:100:bob\n";
        assert_eq!(groups_of(group, "agent", 1000), vec![1000, 10]);
    }
}
