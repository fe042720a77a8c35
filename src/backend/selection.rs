//! Which backend a launch uses, and why: `--vm`/`--docker`, then
//! `BOTTLE_BACKEND`, then the bottle's `backend`, then auto (VM when an engine
//! can boot the guest here, else Docker).

use crate::manifest::BackendName;

/// Whether a backend can run here, and if not why and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Availability {
    Ready { detail: String },
    Unavailable { why: String, fix: String },
}

impl Availability {
    pub fn is_ready(&self) -> bool {
        matches!(self, Availability::Ready { .. })
    }
}

/// Why no backend could be chosen.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SelectionError {
    #[error("BOTTLE_BACKEND={0:?} is not a backend; use `vm` or `docker`")]
    BadEnv(String),
    #[error("the {backend} backend was asked for ({by}) but cannot run here: {why}\nfix: {fix}")]
    Unavailable {
        backend: BackendName,
        by: String,
        why: String,
        fix: String,
    },
    #[error("no backend can run here.\n  vm: {vm_why}\n      fix: {vm_fix}\n  docker: {docker_why}\n      fix: {docker_fix}")]
    NoneAvailable {
        vm_why: String,
        vm_fix: String,
        docker_why: String,
        docker_fix: String,
    },
}

/// Pick the backend. `available` answers for each backend (it may probe).
pub fn select(
    flag: Option<BackendName>,
    env: Option<&str>,
    manifest: Option<BackendName>,
    available: &mut dyn FnMut(BackendName) -> Availability,
) -> Result<(BackendName, String), SelectionError> {
    let env_choice = match env.map(str::trim).filter(|v| !v.is_empty()) {
        None => None,
        Some(word) => Some(
            word.parse::<BackendName>()
                .map_err(|_| SelectionError::BadEnv(word.to_string()))?,
        ),
    };
    let explicit = flag
        .map(|b| (b, format!("--{b}")))
        .or_else(|| env_choice.map(|b| (b, format!("BOTTLE_BACKEND={b}"))))
        .or_else(|| manifest.map(|b| (b, format!("the bottle's `backend = \"{b}\"`"))));
    if let Some((backend, by)) = explicit {
        return match available(backend) {
            Availability::Ready { detail } => Ok((backend, format!("chosen by {by}; {detail}"))),
            Availability::Unavailable { why, fix } => Err(SelectionError::Unavailable {
                backend,
                by,
                why,
                fix,
            }),
        };
    }
    match available(BackendName::Vm) {
        Availability::Ready { detail } => Ok((BackendName::Vm, format!("auto: {detail}"))),
        Availability::Unavailable {
            why: vm_why,
            fix: vm_fix,
        } => match available(BackendName::Docker) {
            Availability::Ready { detail } => Ok((
                BackendName::Docker,
                format!("auto: no VM engine can boot the guest ({vm_why}); {detail}"),
            )),
            Availability::Unavailable {
                why: docker_why,
                fix: docker_fix,
            } => Err(SelectionError::NoneAvailable {
                vm_why,
                vm_fix,
                docker_why,
                docker_fix,
            }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(_: BackendName) -> Availability {
        Availability::Ready {
            detail: "ok".into(),
        }
    }

    #[test]
    fn flag_beats_env_beats_manifest() {
        let (b, why) = select(
            Some(BackendName::Docker),
            Some("vm"),
            Some(BackendName::Vm),
            &mut ready,
        )
        .unwrap();
        assert_eq!((b, why.contains("--docker")), (BackendName::Docker, true));
        let (b, why) = select(None, Some("docker"), Some(BackendName::Vm), &mut ready).unwrap();
        assert_eq!(
            (b, why.contains("BOTTLE_BACKEND")),
            (BackendName::Docker, true)
        );
        let (b, why) = select(None, None, Some(BackendName::Docker), &mut ready).unwrap();
        assert_eq!((b, why.contains("backend = ")), (BackendName::Docker, true));
    }

    #[test]
    fn auto_prefers_vm_and_falls_back_to_docker_with_reason() {
        let (b, _) = select(None, None, None, &mut ready).unwrap();
        assert_eq!(b, BackendName::Vm);
        let mut no_vm = |b: BackendName| match b {
            BackendName::Vm => Availability::Unavailable {
                why: "no kernel".into(),
                fix: "build it".into(),
            },
            BackendName::Docker => Availability::Ready {
                detail: "dockerd 20.10".into(),
            },
        };
        let (b, why) = select(None, None, None, &mut no_vm).unwrap();
        assert_eq!(b, BackendName::Docker);
        assert!(why.contains("no kernel"));
    }

    #[test]
    fn unavailable_explicit_choice_says_why_and_how_to_fix() {
        let mut none = |_: BackendName| Availability::Unavailable {
            why: "no /dev/kvm".into(),
            fix: "enable KVM".into(),
        };
        let err = select(Some(BackendName::Vm), None, None, &mut none).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("--vm") && text.contains("no /dev/kvm") && text.contains("enable KVM"),
            "{text}"
        );
    }

    #[test]
    fn bad_env_value_is_an_error() {
        assert_eq!(
            select(None, Some("lxc"), None, &mut ready),
            Err(SelectionError::BadEnv("lxc".into()))
        );
    }
}
