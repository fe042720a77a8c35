//! File transfer sessions on the guest: `Put` writes entries the host sends,
//! `Get` walks a file or tree and sends it back.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::exec::resolve_user;
use super::server::SessionCtx;
use crate::frame::DATA_CHUNK;
use crate::proto::{Entry, EntryKind, Frame, Msg, Stream, User};

/// Errors of a transfer (sent to the host as the session's error).
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}: guest paths must be absolute")]
    Relative(String),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("owner: {0}")]
    Owner(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FilesError + '_ {
    move |source| FilesError::Io {
        path: path.display().to_string(),
        source,
    }
}

struct Put {
    owner: Option<(u32, u32)>,
    current: Option<(File, u64, PathBuf)>,
    dirs: Vec<(PathBuf, u32)>,
    entries: u64,
}

impl Put {
    /// Gives `path` (never what a symlink there points at) to the owner.
    fn chown(&self, path: &Path) -> Result<(), FilesError> {
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map_err(io(path))?;
        }
        Ok(())
    }

    /// Creates the missing directories of `dir`, each given to the owner (a
    /// file written for the agent lands in directories the agent can use).
    fn create_parents(&self, dir: &Path) -> Result<(), FilesError> {
        let missing: Vec<&Path> = dir
            .ancestors()
            .take_while(|d| fs::symlink_metadata(d).is_err())
            .collect();
        for d in missing.into_iter().rev() {
            match fs::create_dir(d) {
                Ok(()) => self.chown(d)?,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io(d)(e)),
            }
        }
        Ok(())
    }

    fn entry(&mut self, e: Entry) -> Result<(), FilesError> {
        if self.current.is_some() {
            return Err(FilesError::Protocol(
                "entry before the previous file's data ended".into(),
            ));
        }
        let path = PathBuf::from(&e.path);
        if !path.is_absolute() {
            return Err(FilesError::Relative(e.path));
        }
        let mode = e.mode & 0o7777;
        if let Some(parent) = path.parent() {
            self.create_parents(parent)?;
        }
        self.entries += 1;
        match e.kind {
            EntryKind::Dir => {
                if !path.is_dir() {
                    fs::create_dir(&path).map_err(io(&path))?;
                }
                self.chown(&path)?;
                // Applied at the end so a read-only directory can still be filled.
                self.dirs.push((path, mode));
            }
            EntryKind::Symlink { target } => {
                if fs::symlink_metadata(&path).is_ok_and(|m| !m.is_dir()) {
                    fs::remove_file(&path).map_err(io(&path))?;
                }
                std::os::unix::fs::symlink(&target, &path).map_err(io(&path))?;
                self.chown(&path)?;
            }
            EntryKind::File { len } => {
                if fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
                    fs::remove_file(&path).map_err(io(&path))?;
                }
                let file = OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(mode)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&path)
                    .map_err(io(&path))?;
                if let Some((uid, gid)) = self.owner {
                    std::os::unix::fs::fchown(&file, Some(uid), Some(gid)).map_err(io(&path))?;
                }
                file.set_permissions(fs::Permissions::from_mode(mode))
                    .map_err(io(&path))?;
                if len > 0 {
                    self.current = Some((file, len, path));
                }
            }
        }
        Ok(())
    }

    fn data(&mut self, bytes: &[u8]) -> Result<(), FilesError> {
        let Some((file, remaining, path)) = &mut self.current else {
            return Err(FilesError::Protocol(
                "file data without a file entry".into(),
            ));
        };
        if bytes.len() as u64 > *remaining {
            return Err(FilesError::Protocol(format!(
                "{}: more data than announced",
                path.display()
            )));
        }
        file.write_all(bytes).map_err(io(path))?;
        *remaining -= bytes.len() as u64;
        if *remaining == 0 {
            self.current = None;
        }
        Ok(())
    }

    fn end(&mut self) -> Result<u64, FilesError> {
        if let Some((_, _, path)) = &self.current {
            return Err(FilesError::Protocol(format!(
                "{}: data ended early",
                path.display()
            )));
        }
        for (path, mode) in self.dirs.iter().rev() {
            fs::set_permissions(path, fs::Permissions::from_mode(*mode)).map_err(io(path))?;
        }
        Ok(self.entries)
    }
}

fn owner_ids(owner: Option<&User>) -> Result<Option<(u32, u32)>, FilesError> {
    match owner {
        None => Ok(None),
        Some(u) => {
            let who = resolve_user(Some(u)).map_err(|e| FilesError::Owner(e.to_string()))?;
            Ok(Some((who.uid, who.gid)))
        }
    }
}

/// Runs a `Put` session to its end.
pub(crate) async fn put(mut ctx: SessionCtx, owner: Option<User>) {
    let id = ctx.id;
    let owner = match owner_ids(owner.as_ref()) {
        Ok(o) => o,
        Err(e) => {
            ctx.send(Frame::error(id, e.to_string())).await;
            return;
        }
    };
    let mut put = Put {
        owner,
        current: None,
        dirs: Vec::new(),
        entries: 0,
    };
    loop {
        let result = match ctx.inbound.recv().await {
            Some(Frame::Control {
                msg: Msg::Entry(e), ..
            }) => put.entry(e),
            Some(Frame::Data {
                stream: Stream::File,
                bytes,
                ..
            }) => put.data(&bytes),
            Some(Frame::Control { msg: Msg::End, .. }) => {
                let reply = match put.end() {
                    Ok(entries) => Frame::control(id, Msg::Done { entries }),
                    Err(e) => Frame::error(id, e.to_string()),
                };
                ctx.send(reply).await;
                return;
            }
            Some(Frame::Control {
                msg: Msg::Cancel, ..
            })
            | None => return,
            Some(other) => Err(FilesError::Protocol(format!(
                "unexpected frame in put: {other:?}"
            ))),
        };
        if let Err(e) = result {
            ctx.send(Frame::error(id, e.to_string())).await;
            return;
        }
    }
}

/// Runs a `Get` session to its end.
pub(crate) async fn get(ctx: SessionCtx, path: String) {
    let id = ctx.id;
    if let Err(e) = walk(&ctx, Path::new(&path)).await {
        ctx.send(Frame::error(id, e.to_string())).await;
    }
}

async fn walk(ctx: &SessionCtx, root: &Path) -> Result<(), FilesError> {
    if !root.is_absolute() {
        return Err(FilesError::Relative(root.display().to_string()));
    }
    let mut stack = vec![String::new()];
    let mut entries = 0u64;
    while let Some(rel) = stack.pop() {
        let path = if rel.is_empty() {
            root.to_path_buf()
        } else {
            root.join(&rel)
        };
        let meta = fs::symlink_metadata(&path).map_err(io(&path))?;
        let mode = meta.mode() & 0o7777;
        entries += 1;
        if meta.file_type().is_symlink() {
            let target = fs::read_link(&path).map_err(io(&path))?;
            let target = target.to_string_lossy().into_owned();
            send(
                ctx,
                Entry {
                    path: rel,
                    mode,
                    kind: EntryKind::Symlink { target },
                },
            )
            .await?;
        } else if meta.is_dir() {
            let mut names: Vec<String> = fs::read_dir(&path)
                .map_err(io(&path))?
                .filter_map(|d| d.ok())
                .map(|d| d.file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            for name in names.into_iter().rev() {
                stack.push(if rel.is_empty() {
                    name
                } else {
                    format!("{rel}/{name}")
                });
            }
            send(
                ctx,
                Entry {
                    path: rel,
                    mode,
                    kind: EntryKind::Dir,
                },
            )
            .await?;
        } else if meta.is_file() {
            send_file(ctx, &path, rel, mode).await?;
        } else {
            entries -= 1; // sockets, fifos and devices are not transferred
        }
    }
    if !ctx
        .send(Frame::control(ctx.id, Msg::Done { entries }))
        .await
    {
        return Err(FilesError::Protocol("connection closed".into()));
    }
    Ok(())
}

async fn send(ctx: &SessionCtx, entry: Entry) -> Result<(), FilesError> {
    if ctx.send(Frame::control(ctx.id, Msg::Entry(entry))).await {
        Ok(())
    } else {
        Err(FilesError::Protocol("connection closed".into()))
    }
}

async fn send_file(
    ctx: &SessionCtx,
    path: &Path,
    rel: String,
    mode: u32,
) -> Result<(), FilesError> {
    let file = File::open(path).map_err(io(path))?;
    let len = file.metadata().map_err(io(path))?.len();
    send(
        ctx,
        Entry {
            path: rel,
            mode,
            kind: EntryKind::File { len },
        },
    )
    .await?;
    let mut reader = file.take(len);
    let mut sent = 0u64;
    loop {
        let mut buf = vec![0u8; DATA_CHUNK];
        let n = reader.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        buf.truncate(n);
        sent += n as u64;
        let frame = Frame::Data {
            session: ctx.id,
            stream: Stream::File,
            bytes: Bytes::from(buf),
        };
        if !ctx.send(frame).await {
            return Err(FilesError::Protocol("connection closed".into()));
        }
    }
    if sent != len {
        return Err(FilesError::Protocol(format!(
            "{}: file shrank while being read",
            path.display()
        )));
    }
    Ok(())
}
