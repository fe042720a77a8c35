//! Images: a root filesystem tarball imported through the API (the
//! `docker import` equivalent, streamed), tagged by the caller's definition hash.

use std::fmt;
use std::io;
use std::path::Path;
use std::str::FromStr;

use bollard::query_parameters::CreateImageOptions;
use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use tokio::io::AsyncReadExt;

use crate::client::DockerClient;
use crate::error::{is_not_found, DockerError};
use crate::labels::{LABEL_VERSION, VERSION};

/// Bytes read from the tarball per request body chunk.
const CHUNK: usize = 256 * 1024;

/// A local image reference `repo:tag`, e.g. `bottle-guest:3f9a…` (no
/// registry, no digest: images here are only ever imported).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    repo: String,
    tag: String,
}

impl ImageRef {
    /// Checks both parts against Docker's grammar, narrowed to local names.
    pub fn new(repo: &str, tag: &str) -> Result<Self, DockerError> {
        let repo_ok = !repo.is_empty()
            && repo.len() <= 128
            && repo.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && repo.chars().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')
            });
        if !repo_ok {
            return Err(DockerError::Invalid {
                what: "image repository",
                why: format!("{repo:?}: use lowercase letters, digits, '.', '_', '-'"),
            });
        }
        let tag_ok = !tag.is_empty()
            && tag.len() <= 128
            && !tag.starts_with(['.', '-'])
            && tag
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !tag_ok {
            return Err(DockerError::Invalid {
                what: "image tag",
                why: format!("{tag:?}: use up to 128 letters, digits, '.', '_', '-'"),
            });
        }
        Ok(Self {
            repo: repo.to_owned(),
            tag: tag.to_owned(),
        })
    }

    pub fn repo(&self) -> &str {
        &self.repo
    }

    pub fn tag(&self) -> &str {
        &self.tag
    }
}

impl FromStr for ImageRef {
    type Err = DockerError;

    /// Parses `repo:tag`; the tag is required (no implicit `latest`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (repo, tag) = s.split_once(':').ok_or_else(|| DockerError::Invalid {
            what: "image reference",
            why: format!("{s:?}: write repo:tag"),
        })?;
        Self::new(repo, tag)
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.repo, self.tag)
    }
}

impl DockerClient {
    /// Whether `image` exists in the daemon's store.
    pub async fn image_exists(&self, image: &ImageRef) -> Result<bool, DockerError> {
        match self.engine().inspect_image(&image.to_string()).await {
            Ok(_) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(DockerError::Api {
                what: "GET /images/{name}/json",
                source: e,
            }),
        }
    }

    /// Removes the tag `image` (and the image once no tag is left); `false`
    /// when the daemon has no such image. A container still using it keeps
    /// it (the daemon refuses; the error says so).
    pub async fn remove_image(&self, image: &ImageRef) -> Result<bool, DockerError> {
        match self
            .engine()
            .remove_image(
                &image.to_string(),
                None::<bollard::query_parameters::RemoveImageOptions>,
                None,
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(DockerError::Api {
                what: "DELETE /images/{name}",
                source: e,
            }),
        }
    }

    /// Imports the root filesystem tarball at `tar_path` (plain or
    /// compressed) as `image`, streaming it from disk; returns the image id.
    pub async fn import_rootfs(
        &self,
        tar_path: &Path,
        image: &ImageRef,
    ) -> Result<String, DockerError> {
        let file = tokio::fs::File::open(tar_path)
            .await
            .map_err(|source| DockerError::Io {
                action: "opening rootfs tarball",
                path: tar_path.to_path_buf(),
                source,
            })?;
        self.import_stream(file_chunks(file), image).await
    }

    /// Imports a rootfs tarball held in memory (the probe's few hundred bytes).
    pub(crate) async fn import_bytes(
        &self,
        tar: Bytes,
        image: &ImageRef,
    ) -> Result<String, DockerError> {
        self.import_stream(futures_util::stream::iter([Ok::<_, io::Error>(tar)]), image)
            .await
    }

    async fn import_stream(
        &self,
        body: impl Stream<Item = Result<Bytes, io::Error>> + Send + 'static,
        image: &ImageRef,
    ) -> Result<String, DockerError> {
        let options = CreateImageOptions {
            from_src: Some("-".into()),
            repo: Some(image.repo.clone()),
            tag: Some(image.tag.clone()),
            changes: vec![format!("LABEL {LABEL_VERSION}={VERSION}")],
            ..Default::default()
        };
        let mut progress =
            self.engine()
                .create_image(Some(options), Some(bollard::body_try_stream(body)), None);
        while let Some(item) = progress.next().await {
            item.map_err(DockerError::api("POST /images/create?fromSrc=-"))?;
        }
        let inspect = self
            .engine()
            .inspect_image(&image.to_string())
            .await
            .map_err(DockerError::api("GET /images/{name}/json"))?;
        Ok(inspect.id.unwrap_or_default())
    }
}

/// Reads `file` as a stream of chunks, never holding more than one.
fn file_chunks(
    file: tokio::fs::File,
) -> impl Stream<Item = Result<Bytes, io::Error>> + Send + 'static {
    futures_util::stream::try_unfold(file, |mut file| async move {
        let mut buf = BytesMut::with_capacity(CHUNK);
        let n = file.read_buf(&mut buf).await?;
        Ok((n > 0).then(|| (buf.freeze(), file)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_ref_round_trips_repo_and_tag() {
        let r: ImageRef = "bottle-guest:3f9a0c".parse().unwrap();
        assert_eq!((r.repo(), r.tag()), ("bottle-guest", "3f9a0c"));
        assert_eq!(r.to_string(), "bottle-guest:3f9a0c");
    }

    #[test]
    fn image_ref_refuses_registries_digests_and_missing_tags() {
        for bad in [
            "bottle-guest",
            "Upper:x",
            "reg.io/x:y",
            "x:",
            ":y",
            "x:-y",
            "x@sha256:ab",
            "x:y z",
        ] {
            assert!(bad.parse::<ImageRef>().is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn file_chunks_yield_the_whole_file_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        let data: Vec<u8> = (0..(CHUNK * 2 + 17)).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let file = tokio::fs::File::open(&path).await.unwrap();
        let chunks: Vec<Bytes> = file_chunks(file).map(|c| c.unwrap()).collect().await;
        assert!(chunks.len() >= 3);
        assert_eq!(chunks.concat(), data);
    }
}
