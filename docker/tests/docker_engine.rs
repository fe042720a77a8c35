//! The Docker backend's engine plumbing against a real dockerd, under runc
//! and under gVisor (runsc): image import, the hardened agent container
//! (no interface but `lo`, uid 1000 with no capabilities, read-only root, a
//! host unix socket reachable through the bind-mounted directory, every TCP
//! address refused), labels, logs and teardown.
//!
//! Needs: dockerd (`scripts/setup-docker.sh`), busybox-static and socat
//! (copied into the test rootfs with its libraries: busybox `nc` cannot
//! speak to unix sockets). The API's exec is used here only to look inside.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test crate: helpers may unwrap too

use std::io::Write;
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bollard::exec::{CreateExecOptions, StartExecResults};
use bottle_docker::{
    AgentContainerSpec, DockerClient, DockerError, ImageRef, Runtime, RuntimeChoice, LABEL_AGENT,
    LABEL_IDENTITY, LABEL_VERSION,
};
use bottle_test_harness::skip;
use futures_util::StreamExt;

const GREETING: &str = "hello-from-the-host-socket";

/// A connected client, or `None` after reporting the skip.
async fn client() -> Option<DockerClient> {
    match DockerClient::connect().await {
        Ok(c) => Some(c),
        Err(e) => {
            skip::require(
                false,
                &format!("dockerd unreachable ({e}); run scripts/setup-docker.sh as root"),
            );
            None
        }
    }
}

/// Builds the test rootfs tarball: static busybox with its applets, socat
/// with the libraries `ldd` names, an `agent` user with uid 1000.
fn build_rootfs(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    for d in [
        "bin",
        "etc",
        "proc",
        "sys",
        "dev",
        "run",
        "home/agent",
        "workspace",
        "usr/bin",
    ] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::create_dir_all(root.join("tmp")).unwrap();
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for applet in [
        "sh", "cat", "grep", "id", "nc", "sleep", "touch", "echo", "ls", "true",
    ] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nagent:x:1000:1000:agent:/home/agent:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\nagent:x:1000:\n").unwrap();
    copy_with_libs(Path::new("/usr/bin/socat"), &root);
    let tar = dir.join("rootfs.tar");
    let st = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    tar
}

/// Copies a dynamically linked program and the shared objects it loads.
fn copy_with_libs(program: &Path, root: &Path) {
    let out = Command::new("ldd").arg(program).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let mut files = vec![program.to_path_buf()];
    for line in text.lines() {
        let path = match line.split_once("=>") {
            Some((_, rhs)) => rhs.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            files.push(PathBuf::from(p));
        }
    }
    for f in files {
        let dest = root.join(f.strip_prefix("/").unwrap());
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(&f, &dest).unwrap();
    }
}

/// Serves `GREETING` to every connection on `path`, from a thread.
fn serve_greeting(path: &Path) {
    let listener = UnixListener::bind(path).unwrap();
    // The container's uid 1000 must be allowed to connect.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).unwrap();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let _ = conn.write_all(GREETING.as_bytes());
        }
    });
}

/// Runs `cmd` in the container through the API's exec; (exit code, output).
/// Panics naming the command when it takes more than a minute.
/// Runs `cmd` in the container as the agent user (uid 1000), as the guest
/// agent runs the agent's commands.
async fn exec(id: &str, cmd: &[&str]) -> (i64, String) {
    exec_as(id, "1000:1000", cmd).await
}

/// Runs `cmd` in the container as `user` (the container's own user, the
/// guest agent's, is root).
async fn exec_as(id: &str, user: &str, cmd: &[&str]) -> (i64, String) {
    match tokio::time::timeout(Duration::from_secs(60), exec_unbounded(id, user, cmd)).await {
        Ok(r) => r,
        Err(_) => panic!("exec {cmd:?} did not finish within 60s"),
    }
}

async fn exec_unbounded(id: &str, user: &str, cmd: &[&str]) -> (i64, String) {
    let docker = bollard::Docker::connect_with_local_defaults().unwrap();
    let options = CreateExecOptions {
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        user: Some(user.to_owned()),
        cmd: Some(cmd.iter().map(|s| (*s).to_owned()).collect()),
        ..Default::default()
    };
    let created = docker.create_exec(id, options).await.unwrap();
    let mut text = Vec::new();
    if let StartExecResults::Attached { mut output, .. } =
        docker.start_exec(&created.id, None).await.unwrap()
    {
        while let Some(chunk) = output.next().await {
            text.extend_from_slice(&chunk.unwrap().into_bytes());
        }
    }
    let code = docker
        .inspect_exec(&created.id)
        .await
        .unwrap()
        .exit_code
        .unwrap();
    (code, String::from_utf8_lossy(&text).into_owned())
}

/// The host's own IPv4 addresses except loopback (docker0 among them).
fn host_ipv4_addresses() -> Vec<Ipv4Addr> {
    nix::ifaddrs::getifaddrs()
        .unwrap()
        .filter_map(|ifa| ifa.address?.as_sockaddr_in().map(|s| s.ip()))
        .filter(|ip| !ip.is_loopback())
        .collect()
}

async fn hardened_container_round_trip(runtime: Runtime) {
    let Some(docker) = client().await else { return };
    if !skip::require_programs(&[
        ("/bin/busybox", "busybox-static"),
        ("/usr/bin/socat", "socat"),
    ]) {
        return;
    }
    if runtime == Runtime::Runsc {
        let probe = docker.probe_runsc().await.unwrap();
        if !skip::require(probe.is_ok(), &format!("gVisor unusable: {probe:?}")) {
            return;
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let tag = format!(
        "{runtime}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    );
    let image = ImageRef::new("bottle-engine-test", &tag).unwrap();
    assert!(!docker.image_exists(&image).await.unwrap());
    let image_id = docker
        .import_rootfs(&build_rootfs(dir.path()), &image)
        .await
        .unwrap();
    assert!(image_id.starts_with("sha256:"), "{image_id}");
    assert!(docker.image_exists(&image).await.unwrap());

    let state = dir.path().join("state");
    let identity = format!("enginetest-{tag}");
    let mut spec =
        AgentContainerSpec::new(&identity, "enginetest", &image.to_string(), runtime, &state);
    std::fs::create_dir_all(&spec.socket_dir).unwrap();
    std::fs::set_permissions(&spec.socket_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    serve_greeting(&spec.socket_dir.join("test.sock"));
    spec.command = ["/bin/sh", "-c", "echo container-started; exec sleep 600"]
        .map(String::from)
        .to_vec();
    spec.memory_bytes = 256 << 20;
    spec.tmpfs_bytes = 64 << 20;

    let id = docker.create_agent_container(&spec).await.unwrap();
    let (docker2, id2, identity2) = (docker.clone(), id.clone(), identity.clone());
    let outcome = async move {
        let (docker, id, identity) = (docker2, id2, identity2);
        docker.start(&id).await.unwrap();
        check_inside(&id, runtime).await;
        let tail = docker.logs_tail(&id, 10).await.unwrap();
        assert!(tail.contains("container-started"), "logs: {tail}");
        let listed = docker.list_bottle_containers().await.unwrap();
        let me = listed.iter().find(|c| c.id == id).expect("listed by label");
        assert_eq!(
            (me.identity.as_str(), me.agent.as_str(), me.state.as_str()),
            (identity.as_str(), "enginetest", "running")
        );
        assert!(me.created > 0);
        let raw = bollard::Docker::connect_with_local_defaults().unwrap();
        let labels = raw
            .inspect_container(&id, None)
            .await
            .unwrap()
            .config
            .unwrap()
            .labels
            .unwrap();
        assert_eq!(labels[LABEL_IDENTITY], identity);
        assert_eq!(labels[LABEL_AGENT], "enginetest");
        assert_eq!(labels[LABEL_VERSION], env!("CARGO_PKG_VERSION"));
        docker.stop(&id, Duration::from_secs(1)).await.unwrap();
    };
    // Teardown runs even when an assertion above fails.
    let result = tokio::spawn(outcome).await;
    let removed = docker.remove_by_identity(&identity).await.unwrap();
    assert_eq!(removed, vec![id.clone()]);
    docker.remove(&id, true).await.unwrap(); // idempotent
    let left: Vec<_> = docker
        .list_bottle_containers()
        .await
        .unwrap()
        .into_iter()
        .filter(|c| c.identity == identity)
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let raw = bollard::Docker::connect_with_local_defaults().unwrap();
    raw.remove_image(
        &image.to_string(),
        None::<bollard::query_parameters::RemoveImageOptions>,
        None,
    )
    .await
    .unwrap();
    if let Err(e) = result {
        std::panic::resume_unwind(e.into_panic());
    }
}

/// Everything the agent must (not) be able to do, looked at from inside.
async fn check_inside(id: &str, runtime: Runtime) {
    let (_, netdev) = exec(id, &["cat", "/proc/net/dev"]).await;
    let ifaces: Vec<&str> = netdev
        .lines()
        .skip(2)
        .filter_map(|l| l.split_once(':'))
        .map(|(name, _)| name.trim())
        .collect();
    assert_eq!(ifaces, ["lo"], "{netdev}");

    let (_, status) = exec(id, &["cat", "/proc/self/status"]).await;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .map(|l| l[name.len()..].trim().to_owned())
            .unwrap_or_default()
    };
    assert!(
        field("Uid:").split_whitespace().all(|u| u == "1000"),
        "{status}"
    );
    assert!(
        field("Gid:").split_whitespace().all(|g| g == "1000"),
        "{status}"
    );
    // gVisor's /proc/self/status has no CapAmb and NoNewPrivs lines.
    let optional = |name: &str| runtime == Runtime::Runsc && !status.contains(name);
    for caps in ["CapInh:", "CapPrm:", "CapEff:", "CapAmb:"] {
        // gVisor gives a `docker exec`'d process of any uid the container's
        // capabilities; the agent's real processes (spawned by the guest
        // agent) have none under both runtimes: tests/docker_bottle.rs.
        let exec_artifact = runtime == Runtime::Runsc && matches!(caps, "CapPrm:" | "CapEff:");
        if !optional(caps) && !exec_artifact {
            assert_eq!(field(caps), "0000000000000000", "{caps} in {status}");
        }
    }
    // The bounding set is the container's: only the guest agent's capabilities.
    assert_eq!(field("CapBnd:"), "00000000000000eb", "{status}");
    if !optional("NoNewPrivs:") {
        assert_eq!(field("NoNewPrivs:"), "1", "{status}");
    }
    // The container's own user, the guest agent's, is root with only the
    // capabilities it needs: SETUID SETGID KILL DAC_OVERRIDE CHOWN FOWNER.
    let (_, status) = exec_as(id, "0:0", &["cat", "/proc/self/status"]).await;
    for caps in ["CapEff:", "CapBnd:"] {
        let value = status
            .lines()
            .find(|l| l.starts_with(caps))
            .map(|l| l[caps.len()..].trim().to_owned())
            .unwrap_or_default();
        assert_eq!(value, "00000000000000eb", "{caps} in {status}");
    }

    let (code, out) = exec(id, &["touch", "/root-is-writable"]).await;
    assert_ne!(code, 0, "root filesystem is writable: {out}");
    let (_, mounts) = exec(id, &["cat", "/proc/mounts"]).await;
    let root = mounts
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("/"))
        .unwrap();
    assert!(
        root.split_whitespace()
            .nth(3)
            .unwrap()
            .split(',')
            .any(|o| o == "ro"),
        "{root}"
    );
    let (code, out) = exec(id, &["touch", "/home/agent/f", "/workspace/f", "/tmp/f"]).await;
    assert_eq!(code, 0, "tmpfs paths not writable: {out}");
    let (code, out) = exec(id, &["touch", "/run/bottle/f"]).await;
    assert_ne!(code, 0, "socket directory is writable: {out}");

    let (_, hosts) = exec(id, &["cat", "/etc/hosts"]).await;
    assert!(
        hosts
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["127.0.0.1", "proxy.internal"]),
        "{hosts}"
    );
    let (_, resolv) = exec(id, &["cat", "/etc/resolv.conf"]).await;
    assert!(resolv.starts_with("nameserver 127.0.0.1"), "{resolv}");

    let (code, out) = exec(
        id,
        &[
            "socat",
            "-u",
            "UNIX-CONNECT:/run/bottle/test.sock",
            "STDOUT",
        ],
    )
    .await;
    assert_eq!(
        (code, out.as_str()),
        (0, GREETING),
        "host unix socket not reachable"
    );

    // A listener of our own on every host address: nothing may reach it.
    let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let mut targets = vec![Ipv4Addr::LOCALHOST];
    targets.extend(host_ipv4_addresses());
    for ip in targets {
        let (code, out) = exec(id, &["nc", "-w", "2", &ip.to_string(), &port]).await;
        assert_ne!(code, 0, "TCP to {ip}:{port} connected: {out}");
        assert!(
            out.contains("refused") || out.contains("unreachable") || out.contains("No route"),
            "{ip}: {out}"
        );
    }
    match listener.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the host listener saw a connection: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hardened_agent_container_under_runc() {
    hardened_container_round_trip(Runtime::Runc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hardened_agent_container_under_runsc() {
    hardened_container_round_trip(Runtime::Runsc).await;
}

#[tokio::test]
async fn auto_runtime_picks_runsc_when_its_probe_passes() {
    let Some(docker) = client().await else { return };
    let probe = docker.probe_runsc().await.unwrap();
    if !skip::require(probe.is_ok(), &format!("gVisor unusable: {probe:?}")) {
        return;
    }
    let auto = docker.choose_runtime(RuntimeChoice::Auto).await.unwrap();
    assert_eq!(auto.runtime, Runtime::Runsc, "{}", auto.reason);
    let forced = docker.choose_runtime(RuntimeChoice::Runc).await.unwrap();
    assert_eq!(forced.runtime, Runtime::Runc);
}

#[tokio::test]
async fn remote_docker_host_is_refused_with_the_reason() {
    let e = DockerClient::connect_with_host(Some("tcp://127.0.0.1:1"))
        .await
        .unwrap_err();
    assert!(matches!(e, DockerError::RemoteHost { .. }), "{e}");
    assert!(e.to_string().contains("cannot see"), "{e}");
}

#[tokio::test]
async fn missing_socket_says_the_daemon_is_absent_and_how_to_start_it() {
    let e = DockerClient::connect_with_host(Some("unix:///nonexistent/docker.sock"))
        .await
        .unwrap_err();
    assert!(matches!(e, DockerError::DaemonAbsent { .. }), "{e}");
    assert!(e.to_string().contains("dockerd is not running"), "{e}");
    assert!(
        e.to_string().contains("dockerd >/var/log/dockerd.log"),
        "{e}"
    );
}

#[tokio::test]
async fn stale_socket_says_connection_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("docker.sock");
    drop(UnixListener::bind(&path).unwrap()); // the file stays, nobody listens
    let e = DockerClient::connect_with_host(Some(&format!("unix://{}", path.display())))
        .await
        .unwrap_err();
    assert!(matches!(e, DockerError::DaemonRefused { .. }), "{e}");
}

/// A fake dockerd on a unix socket that answers every request with API `version`.
fn fake_daemon(path: &Path, version: &'static str) {
    let listener = UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match std::io::Read::read(&mut conn, &mut byte) {
                        Ok(1) => head.push(byte[0]),
                        _ => return, // the client's probe dial closes at once
                    }
                }
                let body = format!(r#"{{"ApiVersion":"{version}","Version":"fake"}}"#);
                let reply = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(reply.as_bytes());
            });
        }
    });
}

#[tokio::test]
async fn daemon_with_a_too_old_api_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.sock");
    fake_daemon(&path, "1.30");
    let host = format!("unix://{}", path.display());
    let e = DockerClient::connect_with_host(Some(&host))
        .await
        .unwrap_err();
    assert!(matches!(e, DockerError::ApiTooOld { .. }), "{e}");
    assert!(e.to_string().contains("1.30"), "{e}");

    let path = dir.path().join("new.sock");
    fake_daemon(&path, "1.41");
    let host = format!("unix://{}", path.display());
    let client = DockerClient::connect_with_host(Some(&host)).await.unwrap();
    assert_eq!(client.api_version(), (1, 41));
}

/// The static guest agent `scripts/build-guest.sh` builds, in the
/// workspace's target directory (`CARGO_TARGET_DIR` when it is set).
fn guest_binary() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("x86_64-unknown-linux-gnu/guest/bottle-guest")
}

/// The real guest agent as the container's command (`guest_command`): it
/// forwards 127.0.0.1:8888 inside to the host's `proxy.sock`; when the host
/// side goes away the forward fails closed.
async fn guest_forwards_guard_port(runtime: Runtime) {
    let Some(docker) = client().await else { return };
    let guest = guest_binary();
    if !skip::require(
        guest.is_file(),
        "no static guest binary: run scripts/build-guest.sh",
    ) || !skip::require_programs(&[("/bin/busybox", "busybox-static")])
    {
        return;
    }
    if runtime == Runtime::Runsc {
        let probe = docker.probe_runsc().await.unwrap();
        if !skip::require(probe.is_ok(), &format!("gVisor unusable: {probe:?}")) {
            return;
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("rootfs");
    for d in ["bin", "sbin", "etc", "tmp", "home/agent", "workspace"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for applet in ["sh", "nc", "sleep", "timeout"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    std::fs::copy(&guest, root.join("sbin/bottle-guest")).unwrap();
    std::fs::write(
        root.join("etc/passwd"),
        "agent:x:1000:1000::/home/agent:/bin/sh\n",
    )
    .unwrap();
    let tar = dir.path().join("rootfs.tar");
    let st = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    let tag = format!(
        "guest-{runtime}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    );
    let image = ImageRef::new("bottle-engine-test", &tag).unwrap();
    docker.import_rootfs(&tar, &image).await.unwrap();

    let identity = format!("guesttest-{tag}");
    let spec = AgentContainerSpec::new(
        &identity,
        "guesttest",
        &image.to_string(),
        runtime,
        &dir.path().join("state"),
    );
    std::fs::create_dir_all(&spec.socket_dir).unwrap();
    std::fs::set_permissions(&spec.socket_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let proxy_sock = spec.socket_dir.join("proxy.sock");
    let listener = UnixListener::bind(&proxy_sock).unwrap();
    std::fs::set_permissions(&proxy_sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let id = docker.create_agent_container(&spec).await.unwrap();
    let (docker2, id2) = (docker.clone(), id.clone());
    let proxy_sock2 = proxy_sock.clone();
    let outcome = tokio::spawn(async move {
        let (docker, id, proxy_sock) = (docker2, id2, proxy_sock2);
        docker.start(&id).await.unwrap();
        // Serve a greeting per connection until told to stop, then drop
        // the listener: the socket file stays, as when the bundle dies.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = stop.clone();
        let server = std::thread::spawn(move || {
            for mut conn in listener.incoming().flatten() {
                if stop2.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                let _ = conn.write_all(GREETING.as_bytes());
            }
        });
        // The forward is up once the guest has started: retry briefly.
        let mut got = String::new();
        for _ in 0..50 {
            let (code, out) = exec(
                &id,
                &["sh", "-c", "sleep 2 | timeout 10 nc -w 3 127.0.0.1 8888"],
            )
            .await;
            if code == 0 && out.contains(GREETING) {
                got = out;
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let logs = docker.logs_tail(&id, 20).await.unwrap_or_default();
        assert!(
            got.contains(GREETING),
            "no greeting through the forward; guest log: {logs}"
        );
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        drop(std::os::unix::net::UnixStream::connect(&proxy_sock));
        server.join().unwrap();
        // The bundle is gone: the socket file stays, nobody accepts.
        let (code, out) = exec(
            &id,
            &["sh", "-c", "sleep 2 | timeout 10 nc -w 3 127.0.0.1 8888"],
        )
        .await;
        assert!(
            code != 0 || !out.contains(GREETING),
            "forward did not fail closed: {out}"
        );
    })
    .await;
    docker.remove_by_identity(&identity).await.unwrap();
    let raw = bollard::Docker::connect_with_local_defaults().unwrap();
    raw.remove_image(
        &image.to_string(),
        None::<bollard::query_parameters::RemoveImageOptions>,
        None,
    )
    .await
    .unwrap();
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_agent_forwards_a_guard_port_under_runc() {
    guest_forwards_guard_port(Runtime::Runc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_agent_forwards_a_guard_port_under_runsc() {
    guest_forwards_guard_port(Runtime::Runsc).await;
}
