//! `DockerClient::connect` honours `DOCKER_HOST` (its own test binary: it
//! sets the process environment, which no other test may race with).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test crate: helpers may unwrap too

use bottle_docker::{DockerClient, DockerError};

#[tokio::test]
async fn docker_host_from_the_environment_is_honoured() {
    std::env::set_var("DOCKER_HOST", "tcp://127.0.0.1:1");
    let e = DockerClient::connect().await.unwrap_err();
    assert!(matches!(e, DockerError::RemoteHost { .. }), "{e}");

    std::env::set_var("DOCKER_HOST", "unix:///nonexistent/docker.sock");
    let e = DockerClient::connect().await.unwrap_err();
    assert!(matches!(e, DockerError::DaemonAbsent { .. }), "{e}");
}
