//! Docker backend: the same bottle on dockerd with no container network.
//!
//! This module is the engine plumbing: a client for dockerd's Engine API
//! (through `bollard`, never the `docker` CLI), runtime choice (gVisor's
//! `runsc` when it is registered and really starts a `--network none`
//! container), rootfs import, and the hardened agent container. The agent
//! container has no network at all; the guards reach it over unix sockets in
//! a directory bind-mounted read-only at [`GUEST_SOCKET_DIR`].

mod client;
mod container;
mod error;
mod image;
mod labels;
mod probe;
mod runtime;

pub use client::{DockerClient, DockerHost, MIN_API_VERSION};
pub use container::{
    guest_agent_socket, guest_command, AgentContainerSpec, ContainerInfo, AGENT_UID, GUEST_CAPS,
    GUEST_PATH, GUEST_SOCKET_DIR,
};
pub use error::DockerError;
pub use image::ImageRef;
pub use labels::{LABEL_AGENT, LABEL_IDENTITY, LABEL_PROBE, LABEL_VERSION};
pub use probe::ProbeFailure;
pub use runtime::{
    register_hint, RunscProblem, Runtime, RuntimeChoice, RuntimeInfo, RuntimeSelection, RUNSC_ARGS,
};
