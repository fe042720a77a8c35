//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong starting, probing or preparing a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("{what}: {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} not found; install it: {1}")]
    MissingProgram(&'static str, &'static str),
    #[error(
        "guest kernel not built (looked for {0}); run scripts/build-kernel.sh or set BOTTLE_KERNEL"
    )]
    KernelMissing(PathBuf),
    #[error("image '{0}' not built; run `bottle image build {0}`")]
    ImageMissing(String),
    #[error("invalid VM spec: {0}")]
    InvalidSpec(String),
    #[error("could not start {engine}")]
    Spawn {
        engine: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("guest did not print the ready marker within {0:?}")]
    BootTimeout(std::time::Duration),
    #[error("VM exited before the guest was ready ({0})")]
    VmExited(String),
    #[error("libkrun: {0}")]
    Krun(#[from] crate::sys::KrunError),
    #[error("image build failed: {0}")]
    ImageBuild(String),
    #[error("no usable engine: {0}")]
    NoEngine(#[from] crate::select::SelectError),
    #[error("unknown engine '{0}'; use auto, libkrun or qemu")]
    UnknownEngine(String),
    #[error("probe cache: {0}")]
    ProbeCache(String),
}

impl VmmError {
    pub(crate) fn io(
        what: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| VmmError::Io { what, path, source }
    }
}
