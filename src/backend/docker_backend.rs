//! The Docker backend behind the `Backend` trait: a `--network none`
//! container whose only way out is the bundle's unix sockets.

use super::{Availability, Backend, BackendError, Found};
use crate::manifest::BackendName;
use crate::plan::Plan;
use crate::state::{Metadata, StateDir};

#[derive(Debug, Default)]
pub struct DockerBackend;

impl Backend for DockerBackend {
    fn name(&self) -> BackendName {
        BackendName::Docker
    }

    fn availability(&self) -> Availability {
        Availability::Unavailable {
            why: "the Docker backend is not built yet".to_string(),
            fix: "use --vm, or wait for the Docker backend".to_string(),
        }
    }

    fn prepare(&self, _plan: &mut Plan) -> Result<(), BackendError> {
        Ok(())
    }

    fn launch(&self, _plan: &Plan, _state: &StateDir) -> Result<(), BackendError> {
        Err(BackendError::NotBuilt(
            "docker",
            "the container launcher is not built yet",
        ))
    }

    fn enumerate(&self) -> Result<Vec<Found>, BackendError> {
        Ok(Vec::new())
    }

    fn teardown(&self, _meta: &Metadata, _state: &StateDir) -> Result<(), BackendError> {
        Ok(())
    }
}

/// The Docker backend's lines in `bottle doctor`.
pub fn doctor_checks() -> Vec<crate::commands::doctor::Check> {
    Vec::new()
}
