//! Errors of the Docker backend's engine plumbing.

use std::path::PathBuf;

use crate::runtime::RunscProblem;

/// How to start dockerd, quoted by the "daemon absent" errors.
const START_HINT: &str =
    "start it: `sudo scripts/setup-docker.sh`, `sudo systemctl start docker`, \
or `sudo dockerd >/var/log/dockerd.log 2>&1 &`";

/// Everything the Docker backend's engine calls can fail with.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    /// `DOCKER_HOST` names a daemon reached over the network.
    #[error(
        "DOCKER_HOST={host} names a remote daemon; the Docker backend shares unix sockets with the \
         container through a bind mount, which a daemon on another machine cannot see. Unset DOCKER_HOST \
         or set it to a local unix:// socket"
    )]
    RemoteHost { host: String },
    /// `DOCKER_HOST` is neither a unix socket nor a known remote scheme.
    #[error("DOCKER_HOST={host} is not supported: use unix:///path/to/docker.sock")]
    UnsupportedHost { host: String },
    /// No socket file: dockerd is not running (or not installed).
    #[error("dockerd is not running: no socket at {path}; {START_HINT}")]
    DaemonAbsent { path: PathBuf },
    /// The socket exists but nothing accepts on it.
    #[error("dockerd is not running: connection refused on {path} (stale socket); {START_HINT}")]
    DaemonRefused { path: PathBuf },
    /// The user may not open the socket.
    #[error(
        "permission denied on {path}: add your user to the `docker` group \
         (`sudo usermod -aG docker $USER`, then log in again) or run as root"
    )]
    PermissionDenied { path: PathBuf },
    /// Any other failure to open the socket.
    #[error("cannot connect to dockerd at {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The daemon's API is older than what the backend was written against.
    #[error("dockerd speaks API {server}, older than the {min} bottle needs (Docker 20.10 or newer): upgrade docker")]
    ApiTooOld { server: String, min: String },
    /// A request to the Engine API failed.
    #[error("docker API: {what} failed")]
    Api {
        what: &'static str,
        #[source]
        source: bollard::errors::Error,
    },
    /// The named container does not exist.
    #[error("no such container: {id}")]
    NoSuchContainer { id: String },
    /// The caller asked for gVisor but it cannot be used.
    #[error("runtime runsc was requested but cannot be used: {0}")]
    RunscUnavailable(#[source] RunscProblem),
    /// A value the caller passed cannot be used safely.
    #[error("invalid {what}: {why}")]
    Invalid { what: &'static str, why: String },
    /// Reading or writing a host file.
    #[error("{action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl DockerError {
    /// Wraps a bollard error for the request `what`.
    pub(crate) fn api(what: &'static str) -> impl FnOnce(bollard::errors::Error) -> Self {
        move |source| Self::Api { what, source }
    }
}

/// Whether a bollard error is the daemon's 404.
pub(crate) fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}
