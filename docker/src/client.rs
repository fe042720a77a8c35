//! Connecting to dockerd: `DOCKER_HOST` (local unix sockets only), clear
//! errors for an absent daemon, a denied socket and a too old API.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use bollard::{ClientVersion, Docker, API_DEFAULT_VERSION};

use crate::error::DockerError;

/// Oldest Engine API the backend accepts (Docker 20.10, the version it is
/// tested against; every field it sets exists there).
pub const MIN_API_VERSION: (usize, usize) = (1, 41);

/// Seconds bollard waits for a response head before giving up.
const REQUEST_TIMEOUT_SECS: u64 = 120;

/// Where dockerd listens, from `DOCKER_HOST`: always a local unix socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerHost {
    socket: PathBuf,
}

impl DockerHost {
    /// The socket dockerd listens on when `DOCKER_HOST` is unset.
    pub const DEFAULT_SOCKET: &'static str = "/var/run/docker.sock";

    /// Parses a `DOCKER_HOST` value (`None` or empty: the default socket).
    /// Remote schemes are refused: the container must see the host's sockets.
    pub fn parse(value: Option<&str>) -> Result<Self, DockerError> {
        let value = value.map(str::trim).unwrap_or("");
        if value.is_empty() {
            return Ok(Self {
                socket: PathBuf::from(Self::DEFAULT_SOCKET),
            });
        }
        let Some((scheme, rest)) = value.split_once("://") else {
            return Err(DockerError::UnsupportedHost {
                host: value.to_owned(),
            });
        };
        match scheme.to_ascii_lowercase().as_str() {
            "unix" if rest.starts_with('/') && rest.len() > 1 => Ok(Self {
                socket: PathBuf::from(rest),
            }),
            "tcp" | "ssh" | "http" | "https" => Err(DockerError::RemoteHost {
                host: value.to_owned(),
            }),
            _ => Err(DockerError::UnsupportedHost {
                host: value.to_owned(),
            }),
        }
    }

    /// The socket path on this machine.
    pub fn socket(&self) -> &Path {
        &self.socket
    }
}

/// A connection to a local dockerd whose API is new enough.
#[derive(Debug, Clone)]
pub struct DockerClient {
    docker: Docker,
    host: DockerHost,
    api: (usize, usize),
}

impl DockerClient {
    /// Connects to the daemon named by `DOCKER_HOST` (default
    /// `/var/run/docker.sock`) and checks its API version.
    pub async fn connect() -> Result<Self, DockerError> {
        let value = std::env::var("DOCKER_HOST").ok();
        Self::connect_with_host(value.as_deref()).await
    }

    /// [`connect`](Self::connect) with an explicit `DOCKER_HOST` value.
    pub async fn connect_with_host(docker_host: Option<&str>) -> Result<Self, DockerError> {
        let host = DockerHost::parse(docker_host)?;
        let path = host.socket().to_path_buf();
        // Dial once ourselves: bollard folds "absent", "refused" and "denied"
        // into one opaque error, and each needs a different fix.
        if let Err(source) = tokio::net::UnixStream::connect(&path).await {
            return Err(classify_connect_error(path, source));
        }
        let path_str = path.to_str().ok_or_else(|| DockerError::Invalid {
            what: "DOCKER_HOST",
            why: "socket path is not UTF-8".into(),
        })?;
        let docker = Docker::connect_with_unix(path_str, REQUEST_TIMEOUT_SECS, API_DEFAULT_VERSION)
            .map_err(|e| match e {
                bollard::errors::Error::SocketNotFoundError(_) => {
                    DockerError::DaemonAbsent { path: path.clone() }
                }
                source => DockerError::Api {
                    what: "connect",
                    source,
                },
            })?;
        // Downgrades the client to the server's version when that is older.
        let docker = docker
            .negotiate_version()
            .await
            .map_err(DockerError::api("GET /version"))?;
        let ClientVersion {
            major_version,
            minor_version,
        } = docker.client_version();
        let api = (major_version, minor_version);
        if api < MIN_API_VERSION {
            return Err(DockerError::ApiTooOld {
                server: format!("{major_version}.{minor_version}"),
                min: format!("{}.{}", MIN_API_VERSION.0, MIN_API_VERSION.1),
            });
        }
        Ok(Self { docker, host, api })
    }

    /// The daemon this client talks to.
    pub fn host(&self) -> &DockerHost {
        &self.host
    }

    /// The API version in use (the older of the server's and bollard's).
    pub fn api_version(&self) -> (usize, usize) {
        self.api
    }

    pub(crate) fn engine(&self) -> &Docker {
        &self.docker
    }
}

/// Maps a failed dial of the daemon socket to the error that says what to do.
fn classify_connect_error(path: PathBuf, source: std::io::Error) -> DockerError {
    match source.kind() {
        ErrorKind::NotFound => DockerError::DaemonAbsent { path },
        ErrorKind::ConnectionRefused => DockerError::DaemonRefused { path },
        ErrorKind::PermissionDenied => DockerError::PermissionDenied { path },
        _ => DockerError::Connect { path, source },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_or_empty_docker_host_means_the_default_socket() {
        for v in [None, Some(""), Some("  ")] {
            assert_eq!(
                DockerHost::parse(v).unwrap().socket(),
                Path::new("/var/run/docker.sock")
            );
        }
    }

    #[test]
    fn unix_docker_host_names_its_socket() {
        let h = DockerHost::parse(Some("unix:///run/user/1000/docker.sock")).unwrap();
        assert_eq!(h.socket(), Path::new("/run/user/1000/docker.sock"));
    }

    #[test]
    fn tcp_and_ssh_hosts_are_refused_as_remote() {
        for v in [
            "tcp://127.0.0.1:2375",
            "ssh://user@host",
            "https://docker.example:2376",
            "TCP://x:1",
        ] {
            let e = DockerHost::parse(Some(v)).unwrap_err();
            assert!(matches!(e, DockerError::RemoteHost { .. }), "{v}: {e}");
            assert!(e.to_string().contains("remote daemon"), "{e}");
        }
    }

    #[test]
    fn relative_or_schemeless_or_odd_hosts_are_unsupported() {
        for v in [
            "unix://",
            "unix://relative.sock",
            "/var/run/docker.sock",
            "npipe:////./pipe/docker",
            "fd://",
        ] {
            let e = DockerHost::parse(Some(v)).unwrap_err();
            assert!(matches!(e, DockerError::UnsupportedHost { .. }), "{v}: {e}");
        }
    }

    #[test]
    fn connect_errors_name_the_fix() {
        let p = PathBuf::from("/x.sock");
        let absent = classify_connect_error(p.clone(), ErrorKind::NotFound.into());
        assert!(
            absent.to_string().contains("dockerd is not running"),
            "{absent}"
        );
        let refused = classify_connect_error(p.clone(), ErrorKind::ConnectionRefused.into());
        assert!(
            refused.to_string().contains("connection refused"),
            "{refused}"
        );
        let denied = classify_connect_error(p, ErrorKind::PermissionDenied.into());
        assert!(denied.to_string().contains("docker` group"), "{denied}");
    }
}
