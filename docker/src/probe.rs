//! The runsc probe: checks that dockerd registered gVisor with the arguments
//! this backend needs, then really runs a `--network none`, unprivileged,
//! read-only container under it. The container's whole root filesystem is one
//! tiny static program that exits 0, built here, so the probe needs no image.

use std::time::Duration;

use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{CreateContainerOptions, WaitContainerOptions};
use bytes::Bytes;
use futures_util::StreamExt;

use bottle_contract::agent_user::UID as AGENT_UID;
use bottle_util::error_chain;

use crate::client::DockerClient;
use crate::error::DockerError;
use crate::image::ImageRef;
use crate::labels::{self, VERSION};
use crate::runtime::{check_runsc_registration, RunscProblem, Runtime};

/// How long the probe container may take to run to its exit.
const PROBE_TIMEOUT: Duration = Duration::from_secs(60);

/// Why the probe container did not run to a clean exit under runsc.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeFailure {
    #[error("there is no probe program for {0}")]
    NoProgram(&'static str),
    /// dockerd refused a step; `detail` is its error with every source.
    #[error("{step}: {detail}")]
    Docker { step: &'static str, detail: String },
    #[error("the probe container did not exit within {secs}s")]
    Timeout { secs: u64 },
    #[error("dockerd ended the wait for the probe container without a status")]
    NoStatus,
    #[error("the probe container exited with status {0}")]
    Exited(i64),
}

impl ProbeFailure {
    fn docker(step: &'static str) -> impl FnOnce(DockerError) -> Self {
        move |e| ProbeFailure::Docker {
            step,
            detail: error_chain(&e),
        }
    }
}

impl DockerClient {
    /// Whether gVisor can run the agent container. The outer error is a
    /// failure to talk to dockerd at all; the inner one says what is wrong
    /// with runsc and how to fix it.
    pub async fn probe_runsc(&self) -> Result<Result<(), RunscProblem>, DockerError> {
        let runtimes = self.runtimes().await?;
        if let Err(problem) = check_runsc_registration(&runtimes) {
            return Ok(Err(problem));
        }
        Ok(self
            .run_probe_container()
            .await
            .map_err(|(failure, log)| RunscProblem::ProbeFailed { failure, log }))
    }

    /// Runs the probe container; on failure, why and the container's log.
    async fn run_probe_container(&self) -> Result<(), (ProbeFailure, String)> {
        let no_log = |f: ProbeFailure| (f, String::new());
        let tar = probe_rootfs_tar()
            .ok_or(ProbeFailure::NoProgram(std::env::consts::ARCH))
            .map_err(no_log)?;
        let image = ImageRef::new(
            "bottle-probe",
            &format!("{VERSION}-{}", std::env::consts::ARCH),
        )
        .map_err(ProbeFailure::docker("naming the probe image"))
        .map_err(no_log)?;
        let exists = self
            .image_exists(&image)
            .await
            .map_err(ProbeFailure::docker("looking up the probe image"))
            .map_err(no_log)?;
        if !exists {
            self.import_bytes(Bytes::from(tar), &image)
                .await
                .map_err(ProbeFailure::docker("importing the probe image"))
                .map_err(no_log)?;
        }
        let name = format!("bottle-probe-{:08x}", rand::random::<u32>());
        let body = probe_body(&image);
        let options = CreateContainerOptions {
            name: Some(name.clone()),
            ..Default::default()
        };
        let id = self
            .engine()
            .create_container(Some(options), body)
            .await
            .map_err(DockerError::api("POST /containers/create"))
            .map_err(ProbeFailure::docker("creating the probe container"))
            .map_err(no_log)?
            .id;
        let outcome = match self.start_and_wait(&id).await {
            Ok(()) => Ok(()),
            Err(failure) => {
                let log = self.logs_tail(&id, 20).await.unwrap_or_default();
                Err((failure, log.trim().to_string()))
            }
        };
        if let Err(e) = self.remove(&id, true).await {
            let step = "removing the probe container";
            return Err(no_log(ProbeFailure::Docker {
                step,
                detail: format!("{name}: {}", error_chain(&e)),
            }));
        }
        outcome
    }

    async fn start_and_wait(&self, id: &str) -> Result<(), ProbeFailure> {
        self.start(id)
            .await
            .map_err(ProbeFailure::docker("starting the probe container"))?;
        let options = WaitContainerOptions {
            condition: "not-running".into(),
        };
        let mut wait = self.engine().wait_container(id, Some(options));
        match tokio::time::timeout(PROBE_TIMEOUT, wait.next()).await {
            Err(_) => Err(ProbeFailure::Timeout {
                secs: PROBE_TIMEOUT.as_secs(),
            }),
            Ok(None) => Err(ProbeFailure::NoStatus),
            Ok(Some(Ok(r))) if r.status_code == 0 => Ok(()),
            Ok(Some(Ok(r))) => Err(ProbeFailure::Exited(r.status_code)),
            Ok(Some(Err(e))) => Err(ProbeFailure::Docker {
                step: "waiting for the probe container",
                detail: error_chain(&e),
            }),
        }
    }
}

/// The probe container: the agent container's hardening, nothing mounted.
fn probe_body(image: &ImageRef) -> ContainerCreateBody {
    ContainerCreateBody {
        image: Some(image.to_string()),
        cmd: Some(vec!["/probe".into()]),
        entrypoint: Some(Vec::new()),
        user: Some(format!("{AGENT_UID}:{AGENT_UID}")),
        labels: Some(labels::for_probe()),
        host_config: Some(HostConfig {
            runtime: Some(Runtime::Runsc.as_str().into()),
            network_mode: Some("none".into()),
            readonly_rootfs: Some(true),
            cap_drop: Some(vec!["ALL".into()]),
            security_opt: Some(vec!["no-new-privileges:true".into()]),
            // Under runsc the sandbox's own threads count too: 16 is too few.
            pids_limit: Some(128),
            memory: Some(64 << 20),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Machine code of `exit(0)` for this CPU, if we have it.
fn exit0_code() -> Option<(u16, &'static [u8])> {
    if cfg!(target_arch = "x86_64") {
        // xor edi, edi; mov eax, 60 (exit); syscall
        Some((
            0x3e,
            &[0x31, 0xff, 0xb8, 0x3c, 0x00, 0x00, 0x00, 0x0f, 0x05],
        ))
    } else if cfg!(target_arch = "aarch64") {
        // mov x0, #0; mov x8, #93 (exit); svc #0
        Some((
            0xb7,
            &[
                0x00, 0x00, 0x80, 0xd2, 0xa8, 0x0b, 0x80, 0xd2, 0x01, 0x00, 0x00, 0xd4,
            ],
        ))
    } else {
        None
    }
}

/// A minimal static ELF64 executable: one PT_LOAD segment holding the
/// headers and `code`, entered right after the headers.
fn elf_exit0(machine: u16, code: &[u8]) -> Vec<u8> {
    const BASE: u64 = 0x40_0000;
    const EHDR: u16 = 64;
    const PHDR: u16 = 56;
    let total = u64::from(EHDR + PHDR) + code.len() as u64;
    let mut e = Vec::with_capacity(usize::from(EHDR + PHDR) + code.len());
    e.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    e.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    e.extend_from_slice(&machine.to_le_bytes());
    e.extend_from_slice(&1u32.to_le_bytes()); // EV_CURRENT
    e.extend_from_slice(&(BASE + u64::from(EHDR + PHDR)).to_le_bytes()); // entry
    e.extend_from_slice(&u64::from(EHDR).to_le_bytes()); // phoff
    e.extend_from_slice(&0u64.to_le_bytes()); // shoff
    e.extend_from_slice(&0u32.to_le_bytes()); // flags
    e.extend_from_slice(&EHDR.to_le_bytes());
    e.extend_from_slice(&PHDR.to_le_bytes());
    e.extend_from_slice(&1u16.to_le_bytes()); // phnum
    e.extend_from_slice(&[0; 6]); // shentsize, shnum, shstrndx
    e.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    e.extend_from_slice(&5u32.to_le_bytes()); // R + X
    e.extend_from_slice(&0u64.to_le_bytes()); // offset
    e.extend_from_slice(&BASE.to_le_bytes()); // vaddr
    e.extend_from_slice(&BASE.to_le_bytes()); // paddr
    e.extend_from_slice(&total.to_le_bytes()); // filesz
    e.extend_from_slice(&total.to_le_bytes()); // memsz
    e.extend_from_slice(&0x1000u64.to_le_bytes()); // align
    e.extend_from_slice(code);
    e
}

/// A tar archive with one file, `probe` (mode 0755), holding the exit(0) program.
fn probe_rootfs_tar() -> Option<Vec<u8>> {
    let (machine, code) = exit0_code()?;
    Some(tar_one_file("probe", 0o755, &elf_exit0(machine, code)))
}

/// A ustar archive holding one regular file owned by root.
fn tar_one_file(name: &str, mode: u32, data: &[u8]) -> Vec<u8> {
    let mut h = [0u8; 512];
    let put =
        |h: &mut [u8; 512], at: usize, bytes: &[u8]| h[at..at + bytes.len()].copy_from_slice(bytes);
    put(&mut h, 0, name.as_bytes());
    put(&mut h, 100, format!("{mode:07o}\0").as_bytes());
    put(&mut h, 108, b"0000000\0");
    put(&mut h, 116, b"0000000\0");
    put(&mut h, 124, format!("{:011o}\0", data.len()).as_bytes());
    put(&mut h, 136, b"00000000000\0");
    put(&mut h, 148, b"        ");
    h[156] = b'0';
    put(&mut h, 257, b"ustar\0");
    put(&mut h, 263, b"00");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    put(&mut h, 148, format!("{sum:06o}\0 ").as_bytes());
    let mut out = h.to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512 + 1024, 0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_tar_is_one_executable_file_with_a_valid_header() {
        let tar = probe_rootfs_tar().unwrap();
        assert_eq!(tar.len() % 512, 0);
        assert_eq!(&tar[..6], b"probe\0");
        assert_eq!(&tar[257..263], b"ustar\0");
        let stored: u32 =
            u32::from_str_radix(std::str::from_utf8(&tar[148..154]).unwrap(), 8).unwrap();
        let mut header = tar[..512].to_vec();
        header[148..156].copy_from_slice(b"        ");
        assert_eq!(stored, header.iter().map(|&b| u32::from(b)).sum::<u32>());
        assert_eq!(&tar[512..516], b"\x7fELF");
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn probe_program_really_exits_zero_on_this_machine() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("probe");
        let (machine, code) = exit0_code().unwrap();
        std::fs::write(&path, elf_exit0(machine, code)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        let status = std::process::Command::new(&path).status().unwrap();
        assert!(status.success(), "{status:?}");
    }

    #[test]
    fn probe_container_is_hardened_and_has_no_mounts() {
        let image = ImageRef::new("bottle-probe", "t").unwrap();
        let b = probe_body(&image);
        let h = b.host_config.unwrap();
        assert_eq!(h.network_mode.as_deref(), Some("none"));
        assert_eq!(h.runtime.as_deref(), Some("runsc"));
        assert_eq!(h.binds, None);
        assert_eq!(h.mounts, None);
        assert!(b.labels.unwrap().contains_key("bottle.probe"));
    }
}
