//! Requests on disk: `<state dir>/supervise/<id>.json`, mode 0600, each
//! written to a temporary file and renamed over the old one, so a reader
//! sees the old request or the new one, never half of one. The directory is
//! in the state directory, which the guest cannot reach.

use super::id;
use super::request::{Request, Status};
use super::SuperviseError;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// The store in `dir` (created, mode 0700, if missing).
    pub fn open(dir: &Path) -> Result<Self, SuperviseError> {
        use std::os::unix::fs::DirBuilderExt;
        if !dir.is_dir() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| SuperviseError::io(format!("cannot create {}", dir.display()), e))?;
        }
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, id: &str) -> Result<PathBuf, SuperviseError> {
        Ok(self.dir.join(format!("{}.json", id::validate(id)?)))
    }

    /// Write `request` atomically (temp file, fsync, rename).
    pub fn save(&self, request: &Request) -> Result<(), SuperviseError> {
        let path = self.path(&request.id)?;
        let bytes = serde_json::to_vec_pretty(request)
            .map_err(|e| SuperviseError::Invalid(format!("cannot encode the request: {e}")))?;
        let tmp = self
            .dir
            .join(format!(".{}.{}.tmp", request.id, id::generate()));
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            SuperviseError::io(format!("cannot write {}", path.display()), e)
        })
    }

    /// The request `id` (validated first: an id is never a path).
    pub fn get(&self, id: &str) -> Result<Request, SuperviseError> {
        let path = self.path(id)?;
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SuperviseError::NotFound(id.to_string()))
            }
            Err(e) => {
                return Err(SuperviseError::io(
                    format!("cannot read {}", path.display()),
                    e,
                ))
            }
        };
        let request: Request = serde_json::from_slice(&bytes).map_err(|e| {
            SuperviseError::Invalid(format!("{} is not a request: {e}", path.display()))
        })?;
        if request.id != id {
            return Err(SuperviseError::Invalid(format!(
                "{} holds request `{}`, not `{id}`",
                path.display(),
                request.id
            )));
        }
        Ok(request)
    }

    /// Every readable request, oldest first. Files that are not requests
    /// (temporary files, odd names) are skipped.
    pub fn list(&self) -> Result<Vec<Request>, SuperviseError> {
        let entries = std::fs::read_dir(&self.dir)
            .map_err(|e| SuperviseError::io(format!("cannot list {}", self.dir.display()), e))?;
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            if !id::is_valid(id) {
                continue;
            }
            if let Ok(r) = self.get(id) {
                out.push(r);
            }
        }
        out.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
        Ok(out)
    }

    /// (pending, all) request files, without parsing the decided ones twice.
    pub fn counts(&self) -> Result<(usize, usize), SuperviseError> {
        let all = self.list()?;
        let pending = all.iter().filter(|r| r.status == Status::Pending).count();
        Ok((pending, all.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::super::request::Ask;
    use super::*;

    fn request() -> Request {
        Request {
            id: id::generate(),
            ask: Ask::RequestCapability { name: "jq".into() },
            reason: "parse json".into(),
            created: 3,
            status: Status::Pending,
            decided: None,
            until: None,
            note: None,
        }
    }

    #[test]
    fn a_saved_request_survives_reopening_with_mode_0600_and_no_temp_files() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("supervise");
        let r = request();
        Store::open(&dir).unwrap().save(&r).unwrap();
        let reopened = Store::open(&dir).unwrap();
        assert_eq!(reopened.get(&r.id).unwrap(), r);
        let mut decided = r.clone();
        decided.status = Status::Rejected;
        reopened.save(&decided).unwrap();
        assert_eq!(Store::open(&dir).unwrap().list().unwrap(), vec![decided]);
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec![format!("{}.json", r.id)]);
        let mode = std::fs::metadata(dir.join(&names[0]))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn ids_with_paths_never_reach_the_file_system() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("secret.json"), b"{}").unwrap();
        let store = Store::open(&t.path().join("supervise")).unwrap();
        for bad in ["../secret", "../../etc/passwd", "/etc/passwd", "abc"] {
            assert!(
                matches!(store.get(bad), Err(SuperviseError::Invalid(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            store.get("abcdefghijkl"),
            Err(SuperviseError::NotFound(_))
        ));
    }

    #[test]
    fn a_file_under_another_id_is_not_returned() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(t.path()).unwrap();
        let r = request();
        store.save(&r).unwrap();
        let other = id::generate();
        std::fs::copy(
            t.path().join(format!("{}.json", r.id)),
            t.path().join(format!("{other}.json")),
        )
        .unwrap();
        assert!(store.get(&other).is_err());
    }
}
