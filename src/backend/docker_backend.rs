//! The Docker backend behind the `Backend` trait: a `--network none`
//! container whose only way out is the bundle's unix sockets, bind-mounted
//! read-only at `/run/bottle`. The engine calls are in the `bottle-docker` crate (`docker/`).

use super::{Availability, Backend, BackendError, Found};
use crate::bundle::{BundleConfig, Mode};
use crate::doctor::Check;
use crate::manifest::BackendName;
use crate::plan::{Engine, Plan};
use crate::state::{Metadata, StateDir};
use bottle_docker::{
    AgentContainerSpec, DockerClient, DockerError, ImageRef, Runtime, RuntimeChoice,
    RuntimeSelection,
};
use std::time::Duration;

#[derive(Debug, Default)]
pub struct DockerBackend;

/// Run one engine call on a small runtime of its own (the CLI is synchronous).
fn block_on<T>(f: impl std::future::Future<Output = T>) -> Result<T, BackendError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| BackendError::failed("cannot start a runtime", e))?;
    Ok(rt.block_on(f))
}

fn api(e: DockerError) -> BackendError {
    BackendError::Unavailable(e.to_string())
}

/// The image tag for a bottle image: `bottle-<name>:<definition hash>`.
fn image_ref(plan: &Plan) -> Result<(ImageRef, std::path::PathBuf), BackendError> {
    let unavailable = |e: anyhow::Error| BackendError::Unavailable(format!("{e:#}"));
    let def = crate::images::for_plan(plan).map_err(unavailable)?;
    let name = def.name();
    let tar = crate::images::rootfs_tar_of(&def).map_err(unavailable)?;
    let key = tar
        .parent()
        .and_then(|d| d.file_name())
        .and_then(|n| n.to_str())
        .and_then(|n| n.rsplit('-').next())
        .unwrap_or("latest")
        .to_string();
    let image = ImageRef::new(&format!("bottle-{name}"), &key).map_err(api)?;
    Ok((image, tar))
}

/// Removes the Docker copy (`bottle-<name>:<key>`) of a built image that
/// is being deleted. `Ok(None)` when dockerd is not running (nothing to
/// remove there now; a later run imports again), `Ok(Some(false))` when
/// it never had that copy.
pub fn remove_image_copy(name: &str, key: &str) -> Result<Option<bool>, BackendError> {
    let image = ImageRef::new(&format!("bottle-{name}"), key).map_err(api)?;
    block_on(async {
        let Ok(client) = DockerClient::connect().await else {
            return Ok(None);
        };
        client.remove_image(&image).await.map(Some).map_err(api)
    })?
}

impl Backend for DockerBackend {
    fn name(&self) -> BackendName {
        BackendName::Docker
    }

    fn doctor(&self) -> Vec<Check> {
        let result = block_on(async {
            let client = match DockerClient::connect().await {
                Ok(c) => c,
                Err(e) => {
                    return vec![Check {
                        name: "dockerd".into(),
                        ok: false,
                        detail: e.to_string(),
                        fix: Some("run scripts/setup-docker.sh".into()),
                    }]
                }
            };
            let (major, minor) = client.api_version();
            let mut checks = vec![Check {
                name: "dockerd".into(),
                ok: true,
                detail: format!("reachable, API {major}.{minor}"),
                fix: None,
            }];
            checks.push(match client.probe_runsc().await {
                Ok(Ok(())) => Check { name: "runsc (gVisor)".into(), ok: true, detail: "starts a --network none container".into(), fix: None },
                Ok(Err(problem)) => Check { name: "runsc (gVisor)".into(), ok: false, detail: problem.to_string(), fix: Some("see `bottle doctor` output above: register runsc in /etc/docker/daemon.json with runtimeArgs [\"--network=none\", \"--host-uds=open\"] and restart dockerd".into()) },
                Err(e) => Check { name: "runsc (gVisor)".into(), ok: false, detail: e.to_string(), fix: None },
            });
            checks
        });
        result.unwrap_or_default()
    }

    fn availability(&self) -> Availability {
        match block_on(DockerClient::connect()) {
            Ok(Ok(client)) => {
                let (major, minor) = client.api_version();
                Availability::Ready {
                    detail: format!("dockerd API {major}.{minor}"),
                }
            }
            Ok(Err(e)) => Availability::Unavailable {
                why: e.to_string(),
                fix: "run scripts/setup-docker.sh (installs docker.io and runsc, starts dockerd)"
                    .to_string(),
            },
            Err(e) => Availability::Unavailable {
                why: e.to_string(),
                fix: "see the error".to_string(),
            },
        }
    }

    fn prepare(&self, plan: &mut Plan) -> Result<(), BackendError> {
        super::image_available(plan)?;
        // Say which runtime will run it and why; this asks dockerd, starts nothing.
        let choice = plan.requested.runtime;
        let (runtime, reason) = block_on(async {
            let client = DockerClient::connect().await?;
            match choice {
                RuntimeChoice::Runc => Ok((Runtime::Runc, "chosen by --runtime or the manifest")),
                _ => {
                    let runtimes = client.runtimes().await?;
                    Ok(if runtimes.contains_key(Runtime::Runsc.as_str()) {
                        (
                            Runtime::Runsc,
                            "dockerd has gVisor registered (probed at launch)",
                        )
                    } else if choice == RuntimeChoice::Runsc {
                        return Err(DockerError::RunscUnavailable(
                            bottle_docker::RunscProblem::NotRegistered,
                        ));
                    } else {
                        (Runtime::Runc, "dockerd has no runsc runtime registered")
                    })
                }
            }
        })?
        .map_err(api)?;
        plan.engine = Some(Engine::Container(runtime));
        plan.engine_reason = Some(reason.to_string());
        Ok(())
    }

    fn launch(&self, plan: &Plan, state: &StateDir) -> Result<(), BackendError> {
        let (image, tar) = image_ref(plan)?;
        let config = BundleConfig::for_plan(plan, Mode::Docker)
            .map_err(|e| BackendError::failed("cannot read the upstream CAs", e))?;
        crate::bundle::start(state, &config, Duration::from_secs(30))?;
        let choice = plan.requested.runtime;
        let container = block_on(async {
            let client = DockerClient::connect().await?;
            if !client.image_exists(&image).await? {
                eprintln!("bottle: importing image {} from {}", image, tar.display());
                client.import_rootfs(&tar, &image).await?;
            }
            let runtime = choose_runtime_cached(&client, choice).await?;
            eprintln!("bottle: runtime {} ({})", runtime.runtime, runtime.reason);
            let mut spec = AgentContainerSpec::new(
                &plan.identity,
                &plan.agent,
                &image.to_string(),
                runtime.runtime,
                state.path(),
            );
            spec.memory_bytes = u64::from(plan.memory_mib) << 20;
            spec.nano_cpus = u64::from(plan.cpus) * 1_000_000_000;
            spec.pids_limit = plan.pids_limit;
            spec.env.push(format!("BOTTLE_IDENTITY={}", plan.identity));
            let id = client.create_agent_container(&spec).await?;
            state
                .update_metadata(|m| {
                    m.container_id = Some(id.clone());
                    m.engine = Some(Engine::Container(runtime.runtime));
                })
                .map_err(|e| DockerError::Invalid {
                    what: "metadata",
                    why: e.to_string(),
                })?;
            client.start(&id).await?;
            Ok::<_, DockerError>(id)
        })?;
        match container {
            Ok(_) => Ok(()),
            Err(e) => {
                let logs = state
                    .read_metadata()
                    .ok()
                    .and_then(|m| m.container_id)
                    .and_then(|id| {
                        block_on(async { DockerClient::connect().await?.logs_tail(&id, 20).await })
                            .ok()?
                            .ok()
                    })
                    .unwrap_or_default();
                Err(BackendError::Unavailable(format!(
                    "{e}\n--- container log ---\n{logs}"
                )))
            }
        }
    }

    fn enumerate(&self) -> Result<Vec<Found>, BackendError> {
        let root =
            crate::state::state_root().map_err(|e| BackendError::failed("no state root", e))?;
        let root = root.display().to_string();
        let list = block_on(async {
            DockerClient::connect()
                .await?
                .list_bottle_containers()
                .await
        })?
        .map_err(api)?;
        Ok(list
            .into_iter()
            .filter(|c| c.state_root.as_deref() == Some(root.as_str()))
            .map(|c| Found {
                identity: c.identity,
                running: c.state == "running",
                handle: c.id,
            })
            .collect())
    }

    fn teardown(&self, meta: &Metadata, _state: &StateDir) -> Result<(), BackendError> {
        // The container first, then the bundle whose sockets it used; the
        // bundle is stopped even when dockerd cannot be reached.
        let removed = remove_container(&meta.identity);
        crate::bundle::stop(meta);
        removed
    }

    fn remove_orphan(&self, found: &Found) -> Result<(), BackendError> {
        remove_container(&found.identity)
    }
}

/// `choose_runtime`, but a passed runsc probe is remembered (per dockerd API
/// version and runsc registration) so each launch does not start a probe
/// container first. A failed probe is never cached.
async fn choose_runtime_cached(
    client: &DockerClient,
    choice: RuntimeChoice,
) -> Result<RuntimeSelection, DockerError> {
    if choice == RuntimeChoice::Runc {
        return client.choose_runtime(choice).await;
    }
    let runtimes = client.runtimes().await?;
    let key = runtimes.get(Runtime::Runsc.as_str()).map(|info| {
        let (major, minor) = client.api_version();
        format!(
            "api {major}.{minor} | {} {}",
            info.path,
            info.args.join(" ")
        )
    });
    let cache = bottle_vmm::cache_root().join("docker-runsc-probe.json");
    if let Some(key) = &key {
        let cached: Option<String> = std::fs::read(&cache)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        if cached.as_deref() == Some(key.as_str()) {
            return Ok(RuntimeSelection {
                runtime: Runtime::Runsc,
                reason: "gVisor (runsc) is registered and its probe passed before".to_string(),
            });
        }
    }
    let selection = client.choose_runtime(choice).await?;
    if let (Runtime::Runsc, Some(key)) = (selection.runtime, key) {
        if let Ok(bytes) = serde_json::to_vec(&key) {
            let _ = std::fs::create_dir_all(bottle_vmm::cache_root());
            let _ = crate::state::write_atomic(&cache, &bytes);
        }
    }
    Ok(selection)
}

/// Remove the containers of an identity (none is fine).
fn remove_container(identity: &str) -> Result<(), BackendError> {
    block_on(async {
        DockerClient::connect()
            .await?
            .remove_by_identity(identity)
            .await
    })?
    .map_err(api)?;
    Ok(())
}
