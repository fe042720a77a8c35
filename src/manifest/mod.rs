//! The TOML manifest: where it is found, how it is checked, what it holds.
//!
//! Loading runs three passes and reports every problem of all of them at once:
//! the TOML syntax, the structure against the schema ([`structure`]: unknown
//! and removed keys, value types), and the semantics ([`validate`]:
//! references, exclusive keys, host patterns, pinned host keys).

mod diag;
pub mod edit;
pub mod paths;
mod structure;
mod suggest;
pub mod trust;
mod types;
pub mod validate;

pub use diag::{line_col, Diagnostics, Problem};
pub use suggest::did_you_mean;
pub use types::*;

use std::path::{Path, PathBuf};

/// The manifest compiled into the binary: a `demo` bottle and agent.
pub const DEFAULT_MANIFEST: &str = include_str!("default.toml");
/// How the embedded default is named in messages.
pub const EMBEDDED_ORIGIN: &str = "<embedded default manifest>";

/// Why a manifest could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read manifest {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("manifest {0} given with --manifest does not exist")]
    NotFound(PathBuf),
    #[error("{0}")]
    Invalid(Diagnostics),
    #[error(
        "manifest {} is not trusted. A manifest outside {config} can run commands on this host \
         and copy host files into a bottle, so bottle uses it only once you have read it and said \
         so. Review it (`bottle plan AGENT` shows what it would run and copy), then run: \
         {trust_command}",
        path.display()
    )]
    Untrusted {
        path: PathBuf,
        config: String,
        trust_command: String,
    },
    #[error(
        "manifest {} changed since you trusted it (sha256 {was}… is now {now}…). Review the \
         change (`bottle plan AGENT` shows what it would run and copy), then run: {trust_command}",
        path.display()
    )]
    Changed {
        path: PathBuf,
        was: String,
        now: String,
        trust_command: String,
    },
}

/// Where the manifest in use came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// `--manifest PATH`.
    Flag(PathBuf),
    /// `./bottle.toml`.
    WorkingDir(PathBuf),
    /// `$XDG_CONFIG_HOME/bottle/bottle.toml`.
    UserConfig(PathBuf),
    /// The built-in default.
    Embedded,
}

impl Origin {
    pub fn path(&self) -> Option<&Path> {
        match self {
            Origin::Flag(p) | Origin::WorkingDir(p) | Origin::UserConfig(p) => Some(p),
            Origin::Embedded => None,
        }
    }

    pub fn describe(&self) -> String {
        match self.path() {
            Some(p) => p.display().to_string(),
            None => EMBEDDED_ORIGIN.to_string(),
        }
    }

    /// Directory that relative paths in the manifest are resolved against:
    /// the real directory of the manifest file (symlinks resolved), so what a
    /// trusted manifest reads is fixed by its real path and content. The
    /// embedded default names no paths; `cwd` stands in for it.
    pub fn base_dir(&self, cwd: &Path) -> PathBuf {
        let Some(path) = self.path() else {
            return cwd.to_path_buf();
        };
        let abs = cwd.join(path);
        if let Some(dir) = std::fs::canonicalize(&abs)
            .ok()
            .and_then(|real| real.parent().map(Path::to_path_buf))
        {
            return dir;
        }
        abs.parent()
            .map_or_else(|| cwd.to_path_buf(), Path::to_path_buf)
    }
}

/// A manifest that passed every check, with where it came from and whether
/// the user trusts it (see [`trust`]).
#[derive(Debug, Clone)]
pub struct Loaded {
    pub manifest: Manifest,
    pub origin: Origin,
    pub trust: trust::TrustStatus,
}

/// Find the manifest: `--manifest`, else `./bottle.toml`, else the user's
/// config dir, else the embedded default.
pub fn locate(
    flag: Option<&Path>,
    cwd: &Path,
    config_home: Option<&Path>,
) -> Result<Origin, ManifestError> {
    if let Some(path) = flag {
        return if path.exists() {
            Ok(Origin::Flag(path.to_path_buf()))
        } else {
            Err(ManifestError::NotFound(path.to_path_buf()))
        };
    }
    let local = cwd.join("bottle.toml");
    if local.is_file() {
        return Ok(Origin::WorkingDir(local));
    }
    if let Some(config) = config_home {
        let user = config.join("bottle").join("bottle.toml");
        if user.is_file() {
            return Ok(Origin::UserConfig(user));
        }
    }
    Ok(Origin::Embedded)
}

/// Read and check the manifest at `origin`, and find whether it is trusted.
/// Trust is judged on the very bytes that are parsed, read from the file's
/// real path.
pub fn load(origin: Origin) -> Result<Loaded, ManifestError> {
    let (text, trust) = match origin.path() {
        Some(path) => {
            let (real, text) = read(path)?;
            let store = trust::Store::open().ok();
            let config = trust::config_dir();
            let status = trust::status(&real, text.as_bytes(), config.as_deref(), store.as_ref());
            (text, status)
        }
        None => (DEFAULT_MANIFEST.to_string(), trust::TrustStatus::BuiltIn),
    };
    let manifest = parse(&origin.describe(), &text)?;
    Ok(Loaded {
        manifest,
        origin,
        trust,
    })
}

/// The real path of the manifest at `path` and its text, read from that real path.
pub fn read(path: &Path) -> Result<(PathBuf, String), ManifestError> {
    let err = |source| ManifestError::Read {
        path: path.to_path_buf(),
        source,
    };
    let real = std::fs::canonicalize(path).map_err(err)?;
    let text = std::fs::read_to_string(&real).map_err(err)?;
    Ok((real, text))
}

/// Parse and check manifest text; `origin` names it in messages.
pub fn parse(origin: &str, text: &str) -> Result<Manifest, ManifestError> {
    let invalid = |problems: Vec<Problem>| {
        ManifestError::Invalid(Diagnostics::new(origin.to_string(), text, problems))
    };
    let doc = match toml_edit::ImDocument::parse(text.to_string()) {
        Ok(doc) => doc,
        Err(e) => {
            return Err(invalid(vec![Problem::new(
                "(syntax)".to_string(),
                e.span(),
                e.message().trim().to_string(),
                Some("this is not valid TOML; see https://toml.io for the syntax".to_string()),
            )]))
        }
    };
    let problems = structure::check(&doc);
    if !problems.is_empty() {
        return Err(invalid(problems));
    }
    let manifest: Manifest = match toml::from_str(text) {
        Ok(m) => m,
        Err(e) => {
            return Err(invalid(vec![Problem::new(
                "(value)".to_string(),
                e.span(),
                e.message().trim().to_string(),
                None,
            )]))
        }
    };
    // Compiling the scanner's rules takes ~8 ms: only a manifest that names
    // a rule (to switch it off) pays for it.
    let scanner = std::cell::OnceCell::new();
    let known_rule = |id: &str| {
        scanner
            .get_or_init(|| bottle_sidecars::scanner::Scanner::builtin().ok())
            .as_ref()
            .is_some_and(|s| s.rule_ids().any(|r| r == id))
    };
    let problems = validate::check(&manifest, &doc, &known_rule);
    if !problems.is_empty() {
        return Err(invalid(problems));
    }
    Ok(manifest)
}

/// Name of a route: its `name`, else its host with dots as dashes.
pub fn route_name(route: &Route) -> String {
    route
        .name
        .clone()
        .unwrap_or_else(|| route.host.trim_start_matches("*.").replace('.', "-"))
}

#[cfg(test)]
mod tests;
