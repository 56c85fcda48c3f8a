//! Where delivered copies go: the destination (a bucket and prefix, or a
//! directory) and the target of one object under it.

use super::gs_uri::GsUri;
use super::paths::{join_under, relative_path};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Where a download's copy goes: an object of the archive bucket, or a
/// file under the mounted directory. Records carry it as text, a
/// `gs://` URI or a path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A server-side copy to this object.
    Object(GsUri),
    /// A streamed copy to this file.
    File(std::path::PathBuf),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Object(uri) => uri.fmt(f),
            Target::File(path) => path.display().fmt(f),
        }
    }
}

impl Serialize for Target {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl FromStr for Target {
    type Err = String;

    /// A `gs://` URI is an object, anything else a path.
    fn from_str(text: &str) -> Result<Self, String> {
        if text.starts_with("gs://") {
            text.parse().map(Target::Object)
        } else {
            Ok(Target::File(text.into()))
        }
    }
}

impl<'de> Deserialize<'de> for Target {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Where copies go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    /// `gs://bucket/prefix`: a server-side copy into another bucket.
    Bucket {
        /// The archive bucket.
        bucket: String,
        /// Prepended to each object name; empty or ending in `/`.
        prefix: String,
    },
    /// A directory: each object lands at its name under it.
    Directory(PathBuf),
}

impl FromStr for Destination {
    type Err = String;

    /// `gs://bucket[/prefix]` or a filesystem path.
    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("DOWNLOAD_DESTINATION is empty".into());
        }
        if text.starts_with("gs://") {
            let uri =
                GsUri::parse(text).ok_or_else(|| format!("{text:?} is not gs://bucket/prefix"))?;
            let mut prefix = uri.name.trim_matches('/').to_string();
            if !prefix.is_empty() {
                super::paths::relative_path(&prefix).map_err(|e| e.to_string())?;
                prefix.push('/');
            }
            return Ok(Destination::Bucket {
                bucket: uri.bucket,
                prefix,
            });
        }
        Ok(Destination::Directory(PathBuf::from(text)))
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Destination::Bucket { bucket, prefix } => write!(f, "gs://{bucket}/{prefix}"),
            Destination::Directory(path) => write!(f, "{}", path.display()),
        }
    }
}

impl Destination {
    /// The folder `segment` below this destination (`segment` is one plain
    /// path segment, such as a tenant's name).
    pub fn below(&self, segment: &str) -> Destination {
        match self {
            Destination::Bucket { bucket, prefix } => Destination::Bucket {
                bucket: bucket.clone(),
                prefix: format!("{prefix}{segment}/"),
            },
            Destination::Directory(root) => Destination::Directory(root.join(segment)),
        }
    }

    /// Where the object `name` is copied to. Names that could escape the
    /// destination are refused here.
    pub fn target_of(&self, name: &str) -> Result<Target, String> {
        match self {
            Destination::Bucket { bucket, prefix } => {
                relative_path(name).map_err(|e| e.to_string())?;
                Ok(Target::Object(GsUri {
                    bucket: bucket.clone(),
                    name: format!("{prefix}{name}"),
                }))
            }
            Destination::Directory(root) => join_under(root, name)
                .map(Target::File)
                .map_err(|e| e.to_string()),
        }
    }

    /// Where `target` is relative to the root, `/`-separated; `None` when
    /// it is not under it (a record made for another destination).
    pub fn relative(&self, target: &Target) -> Option<String> {
        match (self, target) {
            (Destination::Bucket { bucket, prefix }, Target::Object(uri))
                if uri.bucket == *bucket =>
            {
                uri.name
                    .strip_prefix(prefix.as_str())
                    .filter(|name| !name.is_empty())
                    .map(str::to_string)
            }
            (Destination::Directory(root), Target::File(path)) => under(root, path),
            _ => None,
        }
    }
}

/// `path` relative to `root`, its segments joined by `/`.
fn under(root: &Path, path: &Path) -> Option<String> {
    let relative = path.strip_prefix(root).ok()?;
    let segments = relative
        .components()
        .map(|c| match c {
            std::path::Component::Normal(segment) => segment.to_str(),
            _ => None,
        })
        .collect::<Option<Vec<_>>>()?;
    (!segments.is_empty()).then(|| segments.join("/"))
}
