//! `bottle cp ID:PATH DEST` and `bottle cp SRC ID:PATH`: files between the
//! host and a running bottle, through the guest agent. Copies out are
//! written only below DEST: paths from the guest are checked, a symlink
//! that points outside the copied tree is refused, nothing is written
//! through a symlink, and DEST is never overwritten.

use super::{lifecycle, print};
use crate::manifest::BackendName;
use crate::state::Metadata;
use anyhow::Context;
use bottle_guest::host::{Client, ClientError};
use bottle_guest::proto::User;
use std::path::{Path, PathBuf};

/// Largest copy out of a guest (it is held in memory on its way).
pub const COPY_OUT_LIMIT: u64 = 1 << 30;

/// One side of a copy.
#[derive(Debug, PartialEq, Eq)]
enum Side {
    Host(PathBuf),
    Guest { id: String, path: String },
}

/// `ID:PATH` names a bottle's file when ID is a bottle identity; anything
/// else is a host path.
fn side(arg: &str) -> Side {
    match arg.split_once(':') {
        Some((id, path)) if crate::identity::is_identity(id) => Side::Guest {
            id: id.to_string(),
            path: path.to_string(),
        },
        _ => Side::Host(PathBuf::from(arg)),
    }
}

pub fn cp(src: &str, dest: &str) -> anyhow::Result<()> {
    match (side(src), side(dest)) {
        (Side::Guest { id, path }, Side::Host(to)) => copy_out(&id, &path, &to),
        (Side::Host(from), Side::Guest { id, path }) => copy_in(&from, &id, &path),
        (Side::Guest { .. }, Side::Guest { .. }) => Err(super::UsageError(
            "copy between two bottles through the host: `bottle cp A:PATH DIR` then `bottle cp DIR/… B:PATH`".into(),
        )
        .into()),
        (Side::Host(_), Side::Host(_)) => Err(super::UsageError(format!(
            "neither `{src}` nor `{dest}` names a bottle: write `ID:PATH` for the bottle's side (`bottle ls` lists identities)"
        ))
        .into()),
    }
}

fn guest_path(path: &str) -> anyhow::Result<&str> {
    anyhow::ensure!(
        path.starts_with('/'),
        "the bottle's path `{path}` must be absolute (e.g. /workspace/file)"
    );
    Ok(path)
}

fn with_client<T>(
    id: &str,
    f: impl AsyncFnOnce(&Client, &Metadata) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let (dir, meta) = lifecycle::open(id)?;
    if !crate::bundle::is_alive(&meta) {
        anyhow::bail!("bottle {id} is not running; `bottle transcript {id}` shows what it kept");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let control = dir.file(crate::bundle::files::CONTROL);
    let result = runtime.block_on(async {
        let client = Client::connect(&control)
            .await
            .with_context(|| format!("cannot reach the guest agent of {id}"))?;
        f(&client, &meta).await
    });
    runtime.shutdown_background();
    result
}

fn copy_out(id: &str, path: &str, to: &Path) -> anyhow::Result<()> {
    let path = guest_path(path)?;
    // Into an existing directory, as cp does; never over an existing file.
    let dest = if to.is_dir() {
        let name = Path::new(path)
            .file_name()
            .context("copy a named file or directory, not `/`")?;
        to.join(name)
    } else {
        to.to_path_buf()
    };
    anyhow::ensure!(
        std::fs::symlink_metadata(&dest).is_err(),
        "{} exists; bottle cp does not overwrite: remove it or name another destination",
        dest.display()
    );
    let n = with_client(id, async |client, _| {
        match client.copy_dir_out(path, &dest, COPY_OUT_LIMIT).await {
            Ok(n) => Ok(n),
            // The root is a file, not a directory.
            Err(ClientError::Tree(e)) if e.to_string().contains("non-directory as the root") => {
                let data = client.read_file(path).await?;
                write_new(&dest, &data)?;
                Ok(1)
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dest);
                Err(anyhow::Error::new(e).context(format!("cannot copy {id}:{path}")))
            }
        }
    })?;
    print(&format!(
        "copied {id}:{path} to {} ({n} entries)\n",
        dest.display()
    ))
}

fn write_new(dest: &Path, data: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(dest)
        .with_context(|| format!("cannot create {}", dest.display()))?;
    f.write_all(data)
        .with_context(|| format!("cannot write {}", dest.display()))
}

fn copy_in(from: &Path, id: &str, path: &str) -> anyhow::Result<()> {
    let path = guest_path(path)?;
    let meta = std::fs::symlink_metadata(from)
        .with_context(|| format!("cannot read {}", from.display()))?;
    // A trailing `/` names the directory to copy into.
    let target = if path.ends_with('/') {
        let name = from
            .file_name()
            .context("name a file or directory to copy")?
            .to_string_lossy();
        format!("{path}{name}")
    } else {
        path.to_string()
    };
    let n = with_client(id, async |client, meta_b| {
        // Owned by the agent, who must be able to change what it was given.
        let owner = (meta_b.backend == BackendName::Vm)
            .then_some(User::Uid(crate::provision::AGENT_UID));
        if meta.is_dir() {
            Ok(client.copy_dir_in(from, &target, owner).await?)
        } else if meta.is_file() {
            use std::os::unix::fs::PermissionsExt;
            let data = std::fs::read(from).with_context(|| format!("cannot read {}", from.display()))?;
            client
                .write_file(&target, &data, meta.permissions().mode() & 0o777, owner)
                .await?;
            Ok(1)
        } else {
            anyhow::bail!(
                "{} is neither a file nor a directory (a symlink is copied only inside a directory)",
                from.display()
            )
        }
    })
    .with_context(|| format!("cannot copy {} to {id}:{target}", from.display()))?;
    print(&format!(
        "copied {} to {id}:{target} ({n} entries)\n",
        from.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_identity_before_the_colon_names_the_bottle() {
        assert_eq!(
            side("claude-x1y2z:/workspace/a"),
            Side::Guest {
                id: "claude-x1y2z".into(),
                path: "/workspace/a".into()
            }
        );
        assert_eq!(side("./a:b"), Side::Host(PathBuf::from("./a:b")));
        assert_eq!(side("/tmp/x"), Side::Host(PathBuf::from("/tmp/x")));
        assert!(cp("/tmp/a", "/tmp/b").is_err());
    }
}
