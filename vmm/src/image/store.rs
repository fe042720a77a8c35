//! The image cache directory: list, find, remove.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::VmmError;

const META: &str = "image.json";

/// One built image.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageInfo {
    pub name: String,
    pub key: String,
    pub dir: PathBuf,
    pub size_bytes: u64,
    /// What the image is for (see [`super::purpose_of`]).
    pub purpose: String,
    #[serde(skip)]
    pub built: Option<SystemTime>,
}

/// The images under `<cache>/images`.
#[derive(Debug, Clone)]
pub struct ImageStore {
    root: PathBuf,
}

impl ImageStore {
    /// The store in the user's cache dir.
    pub fn open() -> Self {
        ImageStore {
            root: crate::paths::cache_root().join("images"),
        }
    }

    /// A store rooted elsewhere (tests).
    pub fn at(root: PathBuf) -> Self {
        ImageStore { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn dir_for(&self, name: &str, key: &str) -> PathBuf {
        self.root.join(format!("{name}-{key}"))
    }

    pub(crate) fn is_complete(&self, dir: &Path) -> bool {
        dir.join(META).is_file()
    }

    pub(crate) fn mark_complete(
        &self,
        dir: &Path,
        name: &str,
        key: &str,
        extra: serde_json::Value,
    ) -> Result<(), VmmError> {
        let meta = serde_json::json!({
            "name": name,
            "key": key,
            "purpose": super::purpose_of(name),
            "def": extra,
        });
        let bytes =
            serde_json::to_vec_pretty(&meta).map_err(|e| VmmError::ImageBuild(e.to_string()))?;
        crate::paths::write_atomic(&dir.join(META), &bytes)
            .map_err(VmmError::io("write image metadata", dir))
    }

    /// Every complete image, newest first.
    pub fn list(&self) -> Result<Vec<ImageInfo>, VmmError> {
        let rd = match std::fs::read_dir(&self.root) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(VmmError::io("list images", &self.root)(e)),
        };
        let mut out = Vec::new();
        for e in rd.flatten() {
            let dir = e.path();
            let Ok(meta) = std::fs::read(dir.join(META)) else {
                continue;
            };
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(&meta) else {
                continue;
            };
            let (Some(name), Some(key)) = (v["name"].as_str(), v["key"].as_str()) else {
                continue;
            };
            let built = std::fs::metadata(dir.join(META))
                .and_then(|m| m.modified())
                .ok();
            let purpose = v["purpose"]
                .as_str()
                .unwrap_or_else(|| super::purpose_of(name))
                .to_string();
            out.push(ImageInfo {
                purpose,
                name: name.into(),
                key: key.into(),
                size_bytes: dir_size(&dir),
                dir,
                built,
            });
        }
        out.sort_by_key(|i| std::cmp::Reverse(i.built));
        Ok(out)
    }

    /// The complete image `name` built from exactly the definition `key`.
    /// Images are looked up by what the caller needs, never by name and age:
    /// another build under the same name (a probe image, an older agent) is
    /// not a match.
    pub fn find(&self, name: &str, key: &str) -> Option<PathBuf> {
        let dir = self.dir_for(name, key);
        let meta: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join(META)).ok()?).ok()?;
        (meta["name"] == name && meta["key"] == key).then_some(dir)
    }

    /// Every build of `name` (an error when there is none).
    pub fn builds(&self, name: &str) -> Result<Vec<ImageInfo>, VmmError> {
        let builds: Vec<ImageInfo> = self
            .list()?
            .into_iter()
            .filter(|i| i.name == name)
            .collect();
        if builds.is_empty() {
            return Err(VmmError::ImageMissing(name.into()));
        }
        Ok(builds)
    }

    /// Removes one build (its directory).
    pub fn remove_build(&self, build: &ImageInfo) -> Result<(), VmmError> {
        std::fs::remove_dir_all(&build.dir).map_err(VmmError::io("remove image", &build.dir))
    }

    /// Removes every build of `name`; returns how many were removed.
    pub fn remove(&self, name: &str) -> Result<usize, VmmError> {
        let victims = self.builds(name)?;
        for v in &victims {
            self.remove_build(v)?;
        }
        Ok(victims.len())
    }
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_lists_finds_and_removes_complete_images() {
        let t = tempfile::tempdir().unwrap();
        let s = ImageStore::at(t.path().to_path_buf());
        assert!(s.list().unwrap().is_empty());
        let d = s.dir_for("demo", "abc");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("root.ext4"), vec![0u8; 10]).unwrap();
        // Incomplete (no metadata): not listed.
        assert!(s.find("demo", "abc").is_none());
        s.mark_complete(&d, "demo", "abc", serde_json::json!({}))
            .unwrap();
        let l = s.list().unwrap();
        assert_eq!(l.len(), 1);
        assert!(l[0].size_bytes >= 10);
        assert_eq!(s.find("demo", "abc").unwrap(), d);
        assert!(
            s.find("demo", "abd").is_none(),
            "another key is another image"
        );
        assert!(
            s.find("tiny", "abc").is_none(),
            "another name is another image"
        );
        assert_eq!(s.remove("demo").unwrap(), 1);
        assert!(!d.exists());
        assert!(matches!(s.remove("demo"), Err(VmmError::ImageMissing(_))));
    }
}
