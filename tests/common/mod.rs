//! Helpers for the root crate's integration tests: run the real `bottle`
//! binary with its own state dir and manifest.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub use bottle_test_harness::skip;

pub mod escape;

/// A scratch home for one test: state dir, config dir and manifest.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("bottle-it-")
            .tempdir()
            .expect("tempdir");
        std::fs::create_dir_all(dir.path().join("state")).unwrap();
        std::fs::create_dir_all(dir.path().join("config")).unwrap();
        std::fs::create_dir_all(dir.path().join("cwd")).unwrap();
        Self { dir }
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn cwd(&self) -> PathBuf {
        self.dir.path().join("cwd")
    }

    /// Write `bottle.toml` in the sandbox, trust it as its user would with
    /// `bottle trust` (a manifest that does not load is left untrusted, for
    /// the tests of manifest errors) and return its path.
    pub fn manifest(&self, text: &str) -> PathBuf {
        let path = self.manifest_untrusted(text);
        let _ = self.trust(&path);
        path
    }

    /// Write `bottle.toml` in the sandbox without trusting it.
    pub fn manifest_untrusted(&self, text: &str) -> PathBuf {
        let path = self.dir.path().join("bottle.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    /// `bottle trust PATH` with this sandbox's state dir.
    pub fn trust(&self, path: &Path) -> Output {
        self.bottle()
            .arg("trust")
            .arg(path)
            .output()
            .expect("bottle trust")
    }

    /// A `bottle` command with this sandbox's state, config and cwd.
    pub fn bottle(&self) -> Command {
        self.command(env!("CARGO_BIN_EXE_bottle"))
    }

    /// `program` (a copy of `bottle`, say) with this sandbox's state, config
    /// and cwd.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("BOTTLE_STATE_DIR", self.state_dir())
            .env("XDG_CONFIG_HOME", self.dir.path().join("config"))
            .env_remove("BOTTLE_BACKEND")
            .current_dir(self.cwd());
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.bottle().args(args).output().expect("run bottle")
    }

    /// `bottle run BACKEND --yes --detach` of agent `a` in `manifest`; the identity.
    pub fn run_detached(&self, backend: &str, manifest: &str) -> String {
        let m = self.manifest(manifest);
        let out = self
            .bottle()
            .args(["run", backend, "--yes", "--detach", "--manifest"])
            .arg(&m)
            .arg("a")
            .output()
            .expect("run bottle");
        let err = stderr(&out);
        assert!(out.status.success(), "{err}");
        err.split("(identity ")
            .nth(1)
            .and_then(|s| s.split(')').next())
            .expect("identity in the plan")
            .to_string()
    }

    /// A running bottle's metadata.
    pub fn metadata(&self, identity: &str) -> serde_json::Value {
        let path = self.state_dir().join(identity).join("metadata.json");
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    }

    /// Identities with a state directory (stopped bottles' kept logs under
    /// `logs/` and the trust store beside them are not state).
    pub fn state_entries(&self) -> Vec<String> {
        match std::fs::read_dir(self.state_dir()) {
            Ok(rd) => rd
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n != "logs" && n != "trust")
                .collect(),
            Err(_) => Vec::new(),
        }
    }
}

/// Stops a bottle when the test ends, passing or not, so a failed assertion
/// leaves no VM, container or bundle behind.
pub struct StopOnDrop<'a>(pub &'a Sandbox, pub String);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self.0.run(&["stop", &self.1]);
    }
}

/// Removes a built image (its directory and Docker's copy) when the test
/// ends, so each run of the suite does not leave gigabytes behind.
pub struct ImageRmOnDrop(pub &'static str);

impl Drop for ImageRmOnDrop {
    fn drop(&mut self) {
        let _ = Command::new(env!("CARGO_BIN_EXE_bottle"))
            .args(["image", "rm", self.0])
            .output();
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Processes whose command line contains `needle`.
pub fn processes_matching(needle: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            if String::from_utf8_lossy(&cmdline).contains(needle) {
                pids.push(pid);
            }
        }
    }
    pids
}

/// Docker with `runtime` (`runc` or `runsc`) and the tiny image, or a skip.
#[track_caller]
pub fn require_docker(runtime: &str) -> bool {
    let out = Command::new(env!("CARGO_BIN_EXE_bottle"))
        .arg("doctor")
        .output()
        .expect("doctor");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let ready = text.contains("backend docker: ready") && text.contains("ok   tiny image");
    let runsc = text.contains("ok   runsc (gVisor)");
    skip::require(
        ready && (runtime != "runsc" || runsc),
        &format!("Docker with {runtime} is not ready here (run scripts/setup):\n{text}"),
    )
}

/// Whether the VM backend can run here; `require`s it.
#[track_caller]
pub fn require_vm() -> bool {
    let out = Command::new(env!("CARGO_BIN_EXE_bottle"))
        .args(["doctor"])
        .output()
        .expect("doctor");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    skip::require(
        text.contains("backend vm: ready")
            && text.contains("ok   tiny image")
            && text.contains("boot probe qemu/tcg"),
        &format!("the VM backend is not ready here (run scripts/setup):\n{text}"),
    )
}

/// `Backend::teardown` of a running bottle, called twice through the
/// library as `bottle stop` would call it: both calls must succeed. Returns
/// the metadata it tore down.
pub fn teardown_twice(sb: &Sandbox, identity: &str) -> bottle::state::Metadata {
    let dir = bottle::state::StateDir::open(&sb.state_dir(), identity).unwrap();
    let meta = dir.read_metadata().unwrap();
    let backend = bottle::backend::backend_for(meta.backend);
    backend.teardown(&meta, &dir).expect("first teardown");
    backend.teardown(&meta, &dir).expect("second teardown");
    meta
}

/// Is `path` gone?
pub fn gone(path: &Path) -> bool {
    !path.exists()
}

static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Held by the tests of one test binary that must not overlap (load or
/// timing one of them measures); each binary has its own lock.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}
