//! The `Backend` trait and its two implementations (`vm`, `docker`).
//!
//! A backend owns its bottles' whole lifecycle on the host: `availability`
//! and `doctor` (can it run here, and why not) → `prepare` (decide the
//! engine, write nothing) → `launch` (start the bundle and the sandbox,
//! record them in the metadata) → `enumerate` (what runs, from the system
//! itself) → `teardown` (idempotent) or `remove_orphan`. What happens inside
//! a launched bottle (provisioning, the agent's session, exec, attach) goes
//! through the guest agent's protocol on the bottle's control socket, the
//! same for every backend, so it is not here but in `provision` and `session`.

pub mod docker_backend;
pub mod selection;
pub mod vm;

use crate::doctor::Check;
use crate::manifest::BackendName;
use crate::plan::Plan;
use crate::state::{Metadata, StateDir};
pub use selection::Availability;

/// Why a backend step failed.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("{0}")]
    Unavailable(String),
    #[error("{what}")]
    Failed {
        what: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

impl BackendError {
    pub fn failed(
        what: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Failed {
            what: what.into(),
            source: Some(Box::new(source)),
        }
    }
}

impl From<crate::bundle::StartError> for BackendError {
    fn from(e: crate::bundle::StartError) -> Self {
        match e {
            crate::bundle::StartError::Failed { what, source } => Self::Failed {
                what,
                source: Some(source),
            },
            crate::bundle::StartError::NotReady(why) => Self::Unavailable(why),
            e @ crate::bundle::StartError::NoBinary { .. } => Self::Unavailable(e.to_string()),
        }
    }
}

/// A bottle a backend found running (for `ls`, the dashboard and `cleanup`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub identity: String,
    /// Process id or container id.
    pub handle: String,
    pub running: bool,
}

/// One way of running a bottle.
pub trait Backend {
    fn name(&self) -> BackendName;

    /// Whether this backend can run here; says why not and how to fix it.
    fn availability(&self) -> Availability;

    /// This backend's lines in `bottle doctor`.
    fn doctor(&self) -> Vec<Check>;

    /// Resolve backend-specific parts of the plan (engine, runtime, image).
    /// Writes nothing.
    fn prepare(&self, plan: &mut Plan) -> Result<(), BackendError>;

    /// Start the bottle for a prepared plan: its bundle (`bundle::start`)
    /// and its sandbox (VM or container), recording pids, cgroup and
    /// container id in the metadata as they appear, so that `teardown`
    /// can undo a launch that failed half way.
    fn launch(&self, plan: &Plan, state: &StateDir) -> Result<(), BackendError>;

    /// Bottles this backend has running, found from the system itself
    /// (processes, container labels), not from state files.
    fn enumerate(&self) -> Result<Vec<Found>, BackendError>;

    /// Stop and remove everything `launch` made for this bottle (sandbox,
    /// bundle, cgroup); the state directory is the caller's. Idempotent: a
    /// second call, or a call after a crash, succeeds.
    fn teardown(&self, meta: &Metadata, state: &StateDir) -> Result<(), BackendError>;

    /// Remove a bottle `enumerate` found that has no state directory.
    fn remove_orphan(&self, found: &Found) -> Result<(), BackendError>;
}

/// The backend implementation for a name.
pub fn backend_for(name: BackendName) -> Box<dyn Backend> {
    match name {
        BackendName::Vm => Box::new(vm::VmBackend),
        BackendName::Docker => Box::new(docker_backend::DockerBackend),
    }
}

/// `prepare`'s image check: a built-in image must be built; a bottle's own
/// image may be missing (`bottle run` builds it, and the plan says so).
pub fn image_available(plan: &mut crate::plan::Plan) -> Result<(), BackendError> {
    let def =
        crate::images::for_plan(plan).map_err(|e| BackendError::Unavailable(format!("{e:#}")))?;
    match crate::images::find(&def) {
        Ok(_) => Ok(()),
        Err(_) if plan.custom_image.is_some() => {
            plan.warnings.push(format!(
                "image {} is not built yet: `bottle run` builds it first (a few minutes the first time; about a minute once the Debian base is cached), or build it now with `bottle image build {}`",
                plan.image,
                plan.image.trim_start_matches("custom-")
            ));
            Ok(())
        }
        Err(e) => Err(BackendError::Unavailable(format!("{e:#}"))),
    }
}
