//! The `Backend` trait and its two implementations (`vm`, `docker`).
//!
//! The lifecycle is the plan's: `availability` → `prepare` (validate and
//! resolve, write nothing) → `launch` → `provision` → `exec`/`attach` →
//! `enumerate` → `teardown` (idempotent). Provisioning, exec and attach go
//! through the guest agent's protocol on the bottle's control socket, the same
//! for both backends, so they are provided methods here.

pub mod docker;
pub mod docker_backend;
pub mod selection;
pub mod vm;

use crate::manifest::BackendName;
use crate::plan::Plan;
use crate::state::{Metadata, StateDir};
pub use selection::Availability;

/// Why a backend step failed.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("the {0} backend cannot launch bottles yet: {1}")]
    NotBuilt(&'static str, &'static str),
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

    /// Resolve backend-specific parts of the plan (engine, runtime, image).
    /// Writes nothing.
    fn prepare(&self, plan: &mut Plan) -> Result<(), BackendError>;

    /// Start the sandbox (VM or container) for a prepared plan whose bundle
    /// is running; records pids or container ids in the metadata.
    fn launch(&self, plan: &Plan, state: &StateDir) -> Result<(), BackendError>;

    /// Bottles this backend has running, found from the system itself
    /// (processes, container labels), not from state files.
    fn enumerate(&self) -> Result<Vec<Found>, BackendError>;

    /// Stop and remove everything the backend made for this bottle.
    /// Idempotent: a second call, or a call after a crash, succeeds.
    fn teardown(&self, meta: &Metadata, state: &StateDir) -> Result<(), BackendError>;
}

/// The backend implementation for a name.
pub fn backend_for(name: BackendName) -> Box<dyn Backend> {
    match name {
        BackendName::Vm => Box::new(vm::VmBackend),
        BackendName::Docker => Box::new(docker_backend::DockerBackend),
    }
}
