//! The hardened agent container and its lifecycle.
//!
//! No network (`NetworkMode: none`), a read-only root with tmpfs for the
//! writable paths, `no-new-privileges`, limits from the manifest, Docker's
//! init as PID 1. The only host paths it sees are the bottle's socket
//! directory (read-only, at [`GUEST_SOCKET_DIR`]) and two small generated
//! files, `/etc/hosts` and `/etc/resolv.conf`, also read-only.
//!
//! The guest agent runs as root with only [`GUEST_CAPS`]: it alone can open
//! the guest channel and read the channel key (both mode 0000 in the
//! read-only mount), and it runs everything the host asks as the agent user
//! ([`AGENT_UID`], `serve --user`), which has no capability at all.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::models::{
    ContainerCreateBody, ContainerSummary, HostConfig, HostConfigLogConfig, RestartPolicy,
};
use bollard::models::{ResourcesUlimits, RestartPolicyNameEnum};
use bollard::query_parameters::{
    CreateContainerOptions, ListContainersOptions, LogsOptions, RemoveContainerOptions,
    StopContainerOptions,
};
use futures_util::StreamExt;

use crate::client::DockerClient;
use crate::error::{is_not_found, DockerError};
use crate::labels::{self, LABEL_AGENT, LABEL_IDENTITY, LABEL_STATE_ROOT};
use crate::runtime::Runtime;

/// Where the bottle's socket directory appears inside the container.
pub use bottle_contract::docker::SOCKET_DIR as GUEST_SOCKET_DIR;
/// The guest agent binary inside the image (as in the VM image).
pub use bottle_contract::GUEST_BINARY as GUEST_PATH;

/// The guest agent's host↔guest protocol socket (the agent dials it).
pub fn guest_agent_socket() -> String {
    format!(
        "{GUEST_SOCKET_DIR}/{}",
        bottle_contract::docker::AGENT_SOCKET
    )
}
/// Fewest pids the container may be limited to: under runsc the sandbox's
/// own threads count against the limit (16 fails to start it).
const MIN_PIDS: u32 = 64;

/// The agent user's uid and gid.
pub use bottle_contract::agent_user::UID as AGENT_UID;

/// The only capabilities of the container (held by the root guest agent;
/// the agent user's processes have none): switch to the agent user
/// (`SETUID`, `SETGID`), signal its processes (`KILL`), open the root-only
/// channel and key and write into the agent's directories (`DAC_OVERRIDE`),
/// and hand the files it writes to the agent (`CHOWN`, `FOWNER`).
pub const GUEST_CAPS: [&str; 6] = [
    "SETUID",
    "SETGID",
    "KILL",
    "DAC_OVERRIDE",
    "CHOWN",
    "FOWNER",
];

/// `/etc/hosts` inside the container: `proxy.internal` is loopback, where
/// the guest agent listens for the guards.
fn etc_hosts() -> String {
    format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost\n127.0.0.1\t{}\n",
        bottle_contract::PROXY_HOST
    )
}
/// `/etc/resolv.conf` inside the container: a resolver on loopback that does
/// not exist, so every other name fails at once.
const ETC_RESOLV_CONF: &str = "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n";

/// Everything the caller decides about one agent container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentContainerSpec {
    /// The bottle's identity (`agent-xxxxx`): container name and label.
    pub identity: String,
    /// The agent name from the manifest (label only).
    pub agent: String,
    /// An imported image (see [`DockerClient::import_rootfs`]).
    pub image: String,
    /// From [`DockerClient::choose_runtime`].
    pub runtime: Runtime,
    /// Host directory holding the guards' unix sockets (mounted read-only).
    pub socket_dir: PathBuf,
    /// Host directory (in the bottle's state dir) where `hosts` and
    /// `resolv.conf` are written for the container.
    pub etc_dir: PathBuf,
    /// The container's command; [`guest_command`] by default.
    pub command: Vec<String>,
    /// Extra environment, `KEY=value`.
    pub env: Vec<String>,
    pub memory_bytes: u64,
    /// CPUs in units of 10⁻⁹.
    pub nano_cpus: u64,
    pub pids_limit: u32,
    /// Size of each of the `/home/agent` and `/workspace` tmpfs.
    pub tmpfs_bytes: u64,
}

impl AgentContainerSpec {
    /// A spec with the guest agent command and modest default limits
    /// (2 GiB, 2 CPUs, 512 pids, 1 GiB per tmpfs); the caller sets the
    /// manifest's limits on the fields.
    pub fn new(
        identity: &str,
        agent: &str,
        image: &str,
        runtime: Runtime,
        state_dir: &Path,
    ) -> Self {
        Self {
            identity: identity.to_owned(),
            agent: agent.to_owned(),
            image: image.to_owned(),
            runtime,
            socket_dir: state_dir.join("sock"),
            etc_dir: state_dir.join("docker-etc"),
            command: guest_command(),
            env: Vec::new(),
            memory_bytes: 2 << 30,
            nano_cpus: 2_000_000_000,
            pids_limit: 512,
            tmpfs_bytes: 1 << 30,
        }
    }

    /// The state root the bottle's state directory is in.
    pub fn state_root(&self) -> PathBuf {
        self.socket_dir
            .parent()
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_default()
    }

    /// The container name: `bottle-<identity>`.
    pub fn container_name(&self) -> String {
        format!("bottle-{}", self.identity)
    }

    fn validate(&self) -> Result<(), DockerError> {
        let ok_name = |s: &str| {
            !s.is_empty()
                && s.len() <= 64
                && s.starts_with(|c: char| c.is_ascii_alphanumeric())
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        if !ok_name(&self.identity) {
            return Err(invalid("identity", format!("{:?}", self.identity)));
        }
        if !ok_name(&self.agent) {
            return Err(invalid("agent name", format!("{:?}", self.agent)));
        }
        for (what, dir) in [
            ("socket directory", &self.socket_dir),
            ("etc directory", &self.etc_dir),
        ] {
            // A bind source with ':' or ',' would be split by dockerd.
            let text = dir.to_str().unwrap_or(":");
            if !dir.is_absolute() || text.contains([':', ',']) {
                return Err(invalid(
                    what,
                    format!(
                        "{}: must be an absolute path without ':' or ','",
                        dir.display()
                    ),
                ));
            }
        }
        if self.command.is_empty() {
            return Err(invalid("command", "empty".into()));
        }
        if self.memory_bytes < (64 << 20)
            || self.nano_cpus == 0
            || self.pids_limit < MIN_PIDS
            || self.tmpfs_bytes == 0
        {
            return Err(invalid(
                "limits",
                format!("need memory >= 64 MiB, cpus > 0, pids >= {MIN_PIDS} and a tmpfs size"),
            ));
        }
        Ok(())
    }
}

fn invalid(what: &'static str, why: String) -> DockerError {
    DockerError::Invalid { what, why }
}

/// The guest agent as the container's command: it dials the protocol socket
/// with the channel key, serves as the agent user, and listens on loopback
/// at each guard port, forwarding to its socket.
pub fn guest_command() -> Vec<String> {
    let mut cmd = vec![
        GUEST_PATH.to_owned(),
        "serve".to_owned(),
        "--connect".to_owned(),
    ];
    cmd.push(format!("unix:{}", guest_agent_socket()));
    cmd.push("--key-file".to_owned());
    cmd.push(format!(
        "{GUEST_SOCKET_DIR}/{}",
        bottle_contract::docker::KEY_FILE
    ));
    cmd.push("--user".to_owned());
    cmd.push(AGENT_UID.to_string());
    // Each guard's port on loopback (where `/etc/hosts` puts proxy.internal).
    for g in bottle_contract::GUARDS {
        cmd.push("--forward".to_owned());
        cmd.push(format!(
            "127.0.0.1:{}=unix:{GUEST_SOCKET_DIR}/{}",
            g.port, g.socket
        ));
    }
    cmd
}

/// The create request for `spec`; `hosts` and `resolv` are the written files.
fn create_body(spec: &AgentContainerSpec, hosts: &Path, resolv: &Path) -> ContainerCreateBody {
    let uid = AGENT_UID;
    let size = spec.tmpfs_bytes;
    let tmpfs = HashMap::from([
        (
            "/home/agent".to_owned(),
            format!("rw,nosuid,nodev,exec,size={size},uid={uid},gid={uid},mode=0755"),
        ),
        (
            "/workspace".to_owned(),
            format!("rw,nosuid,nodev,exec,size={size},uid={uid},gid={uid},mode=0755"),
        ),
        (
            "/tmp".to_owned(),
            "rw,nosuid,nodev,noexec,size=268435456,mode=1777".to_owned(),
        ),
        (
            "/run".to_owned(),
            "rw,nosuid,nodev,noexec,size=16777216,mode=0755".to_owned(),
        ),
    ]);
    let binds = vec![
        format!("{}:{GUEST_SOCKET_DIR}:ro", spec.socket_dir.display()),
        format!("{}:/etc/hosts:ro", hosts.display()),
        format!("{}:/etc/resolv.conf:ro", resolv.display()),
    ];
    let mut env = vec!["HOME=/home/agent".to_owned(), "USER=agent".to_owned()];
    env.extend(spec.env.iter().cloned());
    let host_config = HostConfig {
        network_mode: Some("none".into()),
        runtime: Some(spec.runtime.as_str().into()),
        readonly_rootfs: Some(true),
        cap_drop: Some(vec!["ALL".into()]),
        cap_add: Some(GUEST_CAPS.iter().map(|c| (*c).to_owned()).collect()),
        security_opt: Some(vec!["no-new-privileges:true".into()]),
        privileged: Some(false),
        init: Some(true),
        ipc_mode: Some("private".into()),
        pids_limit: Some(i64::from(spec.pids_limit)),
        memory: Some(clamp_i64(spec.memory_bytes)),
        memory_swap: Some(clamp_i64(spec.memory_bytes)),
        nano_cpus: Some(clamp_i64(spec.nano_cpus)),
        shm_size: Some(64 << 20),
        tmpfs: Some(tmpfs),
        binds: Some(binds),
        ulimits: Some(vec![ResourcesUlimits {
            name: Some("core".into()),
            soft: Some(0),
            hard: Some(0),
        }]),
        restart_policy: Some(RestartPolicy {
            name: Some(RestartPolicyNameEnum::NO),
            maximum_retry_count: None,
        }),
        auto_remove: Some(false),
        // The guest can write to its stdout: bound what that costs the host.
        log_config: Some(HostConfigLogConfig {
            typ: Some("json-file".into()),
            config: Some(HashMap::from([
                ("max-size".to_owned(), "10m".to_owned()),
                ("max-file".to_owned(), "2".to_owned()),
            ])),
        }),
        ..Default::default()
    };
    ContainerCreateBody {
        image: Some(spec.image.clone()),
        cmd: Some(spec.command.clone()),
        entrypoint: Some(Vec::new()),
        // The guest agent; it runs the agent's commands as `uid`.
        user: Some("0:0".into()),
        working_dir: Some("/workspace".into()),
        hostname: Some("bottle".into()),
        env: Some(env),
        labels: Some(labels::for_bottle(
            &spec.identity,
            &spec.agent,
            &spec.state_root().display().to_string(),
        )),
        attach_stdin: Some(false),
        attach_stdout: Some(false),
        attach_stderr: Some(false),
        tty: Some(false),
        open_stdin: Some(false),
        host_config: Some(host_config),
        ..Default::default()
    }
}

fn clamp_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Writes `hosts` and `resolv.conf` into `dir` (temp file, then rename).
fn write_etc_files(dir: &Path) -> Result<(PathBuf, PathBuf), DockerError> {
    std::fs::create_dir_all(dir).map_err(|source| DockerError::Io {
        action: "creating",
        path: dir.into(),
        source,
    })?;
    Ok((
        write_file(dir, "hosts", &etc_hosts())?,
        write_file(dir, "resolv.conf", ETC_RESOLV_CONF)?,
    ))
}

fn write_file(dir: &Path, name: &str, text: &str) -> Result<PathBuf, DockerError> {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).map_err(|source| DockerError::Io {
        action: "writing",
        path: tmp.clone(),
        source,
    })?;
    std::fs::rename(&tmp, &path).map_err(|source| DockerError::Io {
        action: "renaming",
        path: tmp,
        source,
    })?;
    Ok(path)
}

/// One container of a bottle, as `ls` and `cleanup` see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    pub id: String,
    pub identity: String,
    pub agent: String,
    /// Docker's state word: `created`, `running`, `exited`, …
    pub state: String,
    /// Creation time, seconds since the epoch.
    pub created: i64,
    /// The state root it belongs to (`None` for containers of older versions).
    pub state_root: Option<String>,
}

impl ContainerInfo {
    fn from_summary(s: ContainerSummary) -> Option<Self> {
        let labels = s.labels.unwrap_or_default();
        Some(Self {
            id: s.id?,
            identity: labels.get(LABEL_IDENTITY)?.clone(),
            agent: labels.get(LABEL_AGENT).cloned().unwrap_or_default(),
            state: s.state.map(|st| st.to_string()).unwrap_or_default(),
            created: s.created.unwrap_or_default(),
            state_root: labels.get(LABEL_STATE_ROOT).cloned(),
        })
    }
}

impl DockerClient {
    /// Writes the container's `/etc` files and creates the hardened agent
    /// container (not started); returns its id.
    pub async fn create_agent_container(
        &self,
        spec: &AgentContainerSpec,
    ) -> Result<String, DockerError> {
        spec.validate()?;
        if !spec.socket_dir.is_dir() {
            return Err(invalid(
                "socket directory",
                format!("{} is not a directory", spec.socket_dir.display()),
            ));
        }
        let (hosts, resolv) = write_etc_files(&spec.etc_dir)?;
        let body = create_body(spec, &hosts, &resolv);
        let options = CreateContainerOptions {
            name: Some(spec.container_name()),
            ..Default::default()
        };
        let created = self
            .engine()
            .create_container(Some(options), body)
            .await
            .map_err(DockerError::api("POST /containers/create"))?;
        Ok(created.id)
    }

    /// Starts a created container.
    pub async fn start(&self, id: &str) -> Result<(), DockerError> {
        self.engine()
            .start_container(id, None::<bollard::query_parameters::StartContainerOptions>)
            .await
            .map_err(|e| not_found_or(e, id, "POST /containers/{id}/start"))
    }

    /// Stops a container: SIGTERM, then SIGKILL after `timeout`. A stopped
    /// container is not an error.
    pub async fn stop(&self, id: &str, timeout: Duration) -> Result<(), DockerError> {
        let t = i32::try_from(timeout.as_secs()).unwrap_or(i32::MAX);
        let options = StopContainerOptions {
            t: Some(t),
            signal: None,
        };
        self.engine()
            .stop_container(id, Some(options))
            .await
            .map_err(|e| not_found_or(e, id, "POST /containers/{id}/stop"))
    }

    /// Removes a container (and its anonymous volumes); `force` kills a
    /// running one first. An absent container is not an error (teardown is
    /// idempotent).
    pub async fn remove(&self, id: &str, force: bool) -> Result<(), DockerError> {
        let options = RemoveContainerOptions {
            force,
            v: true,
            link: false,
        };
        match self.engine().remove_container(id, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(DockerError::Api {
                what: "DELETE /containers/{id}",
                source: e,
            }),
        }
    }

    /// The last `n` lines of the container's stdout and stderr, interleaved.
    pub async fn logs_tail(&self, id: &str, n: usize) -> Result<String, DockerError> {
        let options = LogsOptions {
            stdout: true,
            stderr: true,
            tail: n.to_string(),
            ..Default::default()
        };
        let mut stream = self.engine().logs(id, Some(options));
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| not_found_or(e, id, "GET /containers/{id}/logs"))?;
            out.extend_from_slice(&chunk.into_bytes());
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    /// Every container carrying a `bottle.identity` label, running or not.
    pub async fn list_bottle_containers(&self) -> Result<Vec<ContainerInfo>, DockerError> {
        self.list_by_label(LABEL_IDENTITY.to_owned()).await
    }

    /// Force-removes every container labelled with `identity`; returns their ids.
    pub async fn remove_by_identity(&self, identity: &str) -> Result<Vec<String>, DockerError> {
        let found = self
            .list_by_label(format!("{LABEL_IDENTITY}={identity}"))
            .await?;
        let mut removed = Vec::new();
        for c in found {
            self.remove(&c.id, true).await?;
            removed.push(c.id);
        }
        Ok(removed)
    }

    async fn list_by_label(&self, filter: String) -> Result<Vec<ContainerInfo>, DockerError> {
        let options = ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([("label".to_owned(), vec![filter])])),
            ..Default::default()
        };
        let list = self
            .engine()
            .list_containers(Some(options))
            .await
            .map_err(DockerError::api("GET /containers/json"))?;
        Ok(list
            .into_iter()
            .filter_map(ContainerInfo::from_summary)
            .collect())
    }
}

fn not_found_or(e: bollard::errors::Error, id: &str, what: &'static str) -> DockerError {
    if is_not_found(&e) {
        DockerError::NoSuchContainer { id: id.to_owned() }
    } else {
        DockerError::Api { what, source: e }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> AgentContainerSpec {
        AgentContainerSpec::new(
            "demo-ab12c",
            "demo",
            "bottle-guest:abc",
            Runtime::Runsc,
            Path::new("/state/demo-ab12c"),
        )
    }

    fn body() -> ContainerCreateBody {
        create_body(
            &spec(),
            Path::new("/state/e/hosts"),
            Path::new("/state/e/resolv.conf"),
        )
    }

    #[test]
    fn agent_container_has_no_network_and_only_the_guest_agents_capabilities() {
        let b = body();
        let h = b.host_config.unwrap();
        assert_eq!(h.network_mode.as_deref(), Some("none"));
        assert_eq!(h.cap_drop, Some(vec!["ALL".to_owned()]));
        assert_eq!(
            h.cap_add,
            Some(
                [
                    "SETUID",
                    "SETGID",
                    "KILL",
                    "DAC_OVERRIDE",
                    "CHOWN",
                    "FOWNER"
                ]
                .map(String::from)
                .to_vec()
            )
        );
        assert_eq!(
            h.security_opt,
            Some(vec!["no-new-privileges:true".to_owned()])
        );
        assert_eq!(h.readonly_rootfs, Some(true));
        assert_eq!(h.privileged, Some(false));
        assert_eq!(h.init, Some(true));
        assert_eq!(h.runtime.as_deref(), Some("runsc"));
        assert_eq!(h.port_bindings, None);
        assert_eq!(h.extra_hosts, None);
        // Root for the guest agent only: it serves as the agent user.
        assert_eq!(b.user.as_deref(), Some("0:0"));
        let cmd = b.cmd.unwrap();
        let user = cmd.iter().position(|a| a == "--user").unwrap();
        assert_eq!(cmd[user + 1], "1000");
    }

    #[test]
    fn only_the_socket_dir_and_two_etc_files_are_mounted_all_read_only() {
        let h = body().host_config.unwrap();
        let binds = h.binds.unwrap();
        assert_eq!(
            binds,
            vec![
                "/state/demo-ab12c/sock:/run/bottle:ro".to_owned(),
                "/state/e/hosts:/etc/hosts:ro".to_owned(),
                "/state/e/resolv.conf:/etc/resolv.conf:ro".to_owned(),
            ]
        );
        assert!(!binds.iter().any(|b| b.contains("docker.sock")));
        assert_eq!(h.mounts, None);
        assert_eq!(h.volumes_from, None);
    }

    #[test]
    fn writable_paths_are_tmpfs_owned_by_the_agent() {
        let t = body().host_config.unwrap().tmpfs.unwrap();
        let mut keys: Vec<_> = t.keys().cloned().collect();
        keys.sort();
        assert_eq!(keys, ["/home/agent", "/run", "/tmp", "/workspace"]);
        assert!(t["/workspace"].contains("uid=1000"));
        assert!(t["/home/agent"].contains(&format!("size={}", 1u64 << 30)));
        assert!(t["/run"].contains("noexec"));
    }

    #[test]
    fn limits_come_from_the_spec() {
        let mut s = spec();
        s.memory_bytes = 512 << 20;
        s.nano_cpus = 1_500_000_000;
        s.pids_limit = 100;
        let h = create_body(&s, Path::new("/h"), Path::new("/r"))
            .host_config
            .unwrap();
        assert_eq!(h.memory, Some(512 << 20));
        assert_eq!(h.memory_swap, Some(512 << 20));
        assert_eq!(h.nano_cpus, Some(1_500_000_000));
        assert_eq!(h.pids_limit, Some(100));
    }

    #[test]
    fn every_container_carries_the_three_labels() {
        let l = body().labels.unwrap();
        assert_eq!(l["bottle.identity"], "demo-ab12c");
        assert_eq!(l["bottle.agent"], "demo");
        assert!(l.contains_key("bottle.version"));
    }

    #[test]
    fn guest_command_serves_the_agent_socket_and_forwards_each_guard() {
        let c = guest_command();
        assert_eq!(
            c[..4],
            [
                "/sbin/bottle-guest",
                "serve",
                "--connect",
                "unix:/run/bottle/agent.sock"
            ]
        );
        let key = c.iter().position(|a| a == "--key-file").unwrap();
        assert_eq!(c[key + 1], "/run/bottle/agent.key");
        assert!(c.contains(&"127.0.0.1:8888=unix:/run/bottle/proxy.sock".to_owned()));
        assert!(c.contains(&"127.0.0.1:9418=unix:/run/bottle/git-gate.sock".to_owned()));
        assert!(c.contains(&"127.0.0.1:9100=unix:/run/bottle/supervise.sock".to_owned()));
    }

    #[test]
    fn hosts_maps_only_proxy_internal_and_localhost_to_loopback() {
        for line in etc_hosts().lines() {
            let mut f = line.split_whitespace();
            assert!(matches!(f.next(), Some("127.0.0.1" | "::1")), "{line}");
            assert!(
                f.all(|n| n == "localhost" || n == "proxy.internal"),
                "{line}"
            );
        }
        assert!(ETC_RESOLV_CONF.starts_with("nameserver 127.0.0.1\n"));
    }

    #[test]
    fn bad_identities_paths_and_limits_are_refused() {
        let mut s = spec();
        s.identity = "../x".into();
        assert!(s.validate().is_err());
        let mut s = spec();
        s.socket_dir = PathBuf::from("/a:b");
        assert!(s.validate().is_err());
        let mut s = spec();
        s.socket_dir = PathBuf::from("relative");
        assert!(s.validate().is_err());
        let mut s = spec();
        s.pids_limit = 0;
        assert!(s.validate().is_err());
        assert!(spec().validate().is_ok());
    }

    #[test]
    fn etc_files_are_written_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let (hosts, resolv) = write_etc_files(&dir.path().join("etc")).unwrap();
        assert_eq!(std::fs::read_to_string(hosts).unwrap(), etc_hosts());
        assert_eq!(std::fs::read_to_string(resolv).unwrap(), ETC_RESOLV_CONF);
    }
}
