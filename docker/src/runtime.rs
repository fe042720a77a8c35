//! Which OCI runtime runs the agent container: gVisor's `runsc` when dockerd
//! has it registered with the arguments this backend needs and it really
//! starts a `--network none` container, else `runc`.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use crate::client::DockerClient;
use crate::error::DockerError;

/// The `runtimeArgs` runsc must be registered with: no network stack of its
/// own, and permission to connect to the bind-mounted host unix sockets.
pub const RUNSC_ARGS: [&str; 2] = ["--network=none", "--host-uds=open"];

/// An OCI runtime the backend can use (serialised as dockerd names it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    /// The default runtime: namespaces, cgroups, seccomp.
    Runc,
    /// gVisor: a user-space kernel between the agent and the host.
    Runsc,
}

impl Runtime {
    /// The name dockerd knows the runtime by.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Runc => "runc",
            Self::Runsc => "runsc",
        }
    }
}

impl fmt::Display for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the user asked for (`--runtime`, or the manifest's
/// `[bottles.NAME.docker] runtime`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeChoice {
    /// runsc when it is registered and its probe passes, else runc.
    #[default]
    Auto,
    /// runc, even when runsc is available.
    Runc,
    /// runsc, or an error saying why it cannot be used.
    Runsc,
}

impl FromStr for RuntimeChoice {
    type Err = DockerError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "runc" => Ok(Self::Runc),
            "runsc" => Ok(Self::Runsc),
            other => Err(DockerError::Invalid {
                what: "docker runtime",
                why: format!("{other:?}: write \"auto\", \"runc\" or \"runsc\""),
            }),
        }
    }
}

/// The runtime chosen and why, for the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeSelection {
    pub runtime: Runtime,
    pub reason: String,
}

/// One runtime registered with dockerd.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RuntimeInfo {
    /// Executable path (empty for built-in runtimes).
    pub path: String,
    /// `runtimeArgs` from daemon.json.
    pub args: Vec<String>,
}

/// Why gVisor cannot be used; each says how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunscProblem {
    #[error("dockerd has no runtime named runsc; {}", register_hint())]
    NotRegistered,
    #[error(
        "runsc is registered without runtimeArgs {missing:?}; {}",
        register_hint()
    )]
    MissingArgs { missing: Vec<String> },
    #[error(
        "runsc did not run a --network none container: {failure}{}; \
         check dockerd's log (journalctl -u docker) and `runsc --version`, or use runc (--runtime runc)",
        if log.is_empty() { String::new() } else { format!("; container log: {log}") }
    )]
    ProbeFailed {
        failure: crate::probe::ProbeFailure,
        /// The end of the probe container's log, if it got that far.
        log: String,
    },
}

/// How to register runsc, quoted by every [`RunscProblem`].
pub fn register_hint() -> String {
    format!(
        "register it in /etc/docker/daemon.json as \
         {{\"runtimes\": {{\"runsc\": {{\"path\": \"/usr/bin/runsc\", \"runtimeArgs\": [\"{}\", \"{}\"]}}}}}} \
         and reload dockerd (`kill -HUP $(pidof dockerd)`), or run scripts/setup-docker.sh",
        RUNSC_ARGS[0], RUNSC_ARGS[1]
    )
}

/// Checks a registered runsc's arguments; `Ok` when both required ones are there.
pub(crate) fn check_runsc_registration(
    runtimes: &BTreeMap<String, RuntimeInfo>,
) -> Result<(), RunscProblem> {
    let info = runtimes.get("runsc").ok_or(RunscProblem::NotRegistered)?;
    let missing: Vec<String> = RUNSC_ARGS
        .iter()
        .filter(|want| !info.args.iter().any(|a| a == *want))
        .map(|s| (*s).to_owned())
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(RunscProblem::MissingArgs { missing })
    }
}

impl DockerClient {
    /// The runtimes dockerd has registered, by name.
    pub async fn runtimes(&self) -> Result<BTreeMap<String, RuntimeInfo>, DockerError> {
        let info = self
            .engine()
            .info()
            .await
            .map_err(DockerError::api("GET /info"))?;
        Ok(info
            .runtimes
            .unwrap_or_default()
            .into_iter()
            .map(|(name, rt)| {
                (
                    name,
                    RuntimeInfo {
                        path: rt.path.unwrap_or_default(),
                        args: rt.runtime_args.unwrap_or_default(),
                    },
                )
            })
            .collect())
    }

    /// Resolves `choice` to a runtime. `Auto` falls back to runc with the
    /// reason; a forced `Runsc` that cannot work is an error (fail closed).
    pub async fn choose_runtime(
        &self,
        choice: RuntimeChoice,
    ) -> Result<RuntimeSelection, DockerError> {
        let runsc = match choice {
            RuntimeChoice::Runc => {
                return Ok(RuntimeSelection {
                    runtime: Runtime::Runc,
                    reason: "runc was asked for".into(),
                })
            }
            RuntimeChoice::Auto | RuntimeChoice::Runsc => self.probe_runsc().await?,
        };
        match (runsc, choice) {
            (Ok(()), RuntimeChoice::Runsc) => Ok(RuntimeSelection {
                runtime: Runtime::Runsc,
                reason: "runsc was asked for and its probe passed".into(),
            }),
            (Ok(()), _) => Ok(RuntimeSelection {
                runtime: Runtime::Runsc,
                reason: "gVisor (runsc) is registered with dockerd and started a --network none probe container"
                    .into(),
            }),
            (Err(problem), RuntimeChoice::Runsc) => Err(DockerError::RunscUnavailable(problem)),
            (Err(problem), _) => Ok(RuntimeSelection {
                runtime: Runtime::Runc,
                reason: format!("gVisor not used: {problem}"),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registered(args: &[&str]) -> BTreeMap<String, RuntimeInfo> {
        BTreeMap::from([
            ("runc".to_owned(), RuntimeInfo::default()),
            (
                "runsc".to_owned(),
                RuntimeInfo {
                    path: "/usr/bin/runsc".into(),
                    args: args.iter().map(|s| (*s).to_owned()).collect(),
                },
            ),
        ])
    }

    #[test]
    fn runsc_with_both_arguments_passes_the_registration_check() {
        assert_eq!(
            check_runsc_registration(&registered(&["--host-uds=open", "--network=none"])),
            Ok(())
        );
    }

    #[test]
    fn runsc_missing_an_argument_names_it_and_how_to_register() {
        let e = check_runsc_registration(&registered(&["--network=none"])).unwrap_err();
        assert_eq!(
            e,
            RunscProblem::MissingArgs {
                missing: vec!["--host-uds=open".into()]
            }
        );
        assert!(e.to_string().contains("/etc/docker/daemon.json"), "{e}");
    }

    #[test]
    fn absent_runsc_is_not_registered() {
        let only_runc = BTreeMap::from([("runc".to_owned(), RuntimeInfo::default())]);
        let e = check_runsc_registration(&only_runc).unwrap_err();
        assert_eq!(e, RunscProblem::NotRegistered);
        assert!(
            e.to_string()
                .contains("\"runtimeArgs\": [\"--network=none\", \"--host-uds=open\"]"),
            "{e}"
        );
    }

    #[test]
    fn runtime_choice_parses_the_manifest_words_only() {
        assert_eq!(
            "auto".parse::<RuntimeChoice>().unwrap(),
            RuntimeChoice::Auto
        );
        assert_eq!(
            "runc".parse::<RuntimeChoice>().unwrap(),
            RuntimeChoice::Runc
        );
        assert_eq!(
            "runsc".parse::<RuntimeChoice>().unwrap(),
            RuntimeChoice::Runsc
        );
        assert!("gvisor".parse::<RuntimeChoice>().is_err());
    }
}
