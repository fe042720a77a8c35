//! Labels that mark every object the Docker backend creates.

use std::collections::HashMap;

/// The bottle's identity (`agent-xxxxx`); `ls` and `cleanup` filter on it.
pub const LABEL_IDENTITY: &str = "bottle.identity";
/// The agent name from the manifest.
pub const LABEL_AGENT: &str = "bottle.agent";
/// The `bottle` version that created the object.
pub const LABEL_VERSION: &str = "bottle.version";
/// The state root (`$XDG_STATE_HOME/bottle`) the bottle belongs to: `cleanup`
/// only touches containers of its own root (other users, other sandboxes).
pub const LABEL_STATE_ROOT: &str = "bottle.state_root";
/// Marks the short-lived containers and images of the runsc probe.
pub const LABEL_PROBE: &str = "bottle.probe";

/// This crate's version, stamped on every object.
pub(crate) const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The labels of an agent container.
pub(crate) fn for_bottle(identity: &str, agent: &str, state_root: &str) -> HashMap<String, String> {
    HashMap::from([
        (LABEL_IDENTITY.to_owned(), identity.to_owned()),
        (LABEL_AGENT.to_owned(), agent.to_owned()),
        (LABEL_VERSION.to_owned(), VERSION.to_owned()),
        (LABEL_STATE_ROOT.to_owned(), state_root.to_owned()),
    ])
}

/// The labels of a probe container.
pub(crate) fn for_probe() -> HashMap<String, String> {
    HashMap::from([
        (LABEL_PROBE.to_owned(), "runsc".to_owned()),
        (LABEL_VERSION.to_owned(), VERSION.to_owned()),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bottle_labels_carry_identity_agent_and_version() {
        let l = for_bottle("demo-ab12c", "demo", "/root/.local/state/bottle");
        assert_eq!(l[LABEL_STATE_ROOT], "/root/.local/state/bottle");
        assert_eq!(l[LABEL_IDENTITY], "demo-ab12c");
        assert_eq!(l[LABEL_AGENT], "demo");
        assert_eq!(l[LABEL_VERSION], VERSION);
    }

    #[test]
    fn probe_labels_have_no_identity_so_ls_never_lists_them() {
        assert!(!for_probe().contains_key(LABEL_IDENTITY));
    }
}
