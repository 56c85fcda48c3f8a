//! The sidecar metadata files of the local adapter: what a sidecar records,
//! when it is believed (it records the file's generation and size), and the
//! metadata computed from the file itself when it is not.

use super::CHUNK;
use super::files::missing;
use crate::crc::Crc32c;
use crate::objects::ObjectMeta;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{self, Read};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// What a sidecar records.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Sidecar {
    pub(super) size: u64,
    pub(super) crc32c: u32,
    pub(super) generation: i64,
    pub(super) content_type: String,
    #[serde(default)]
    pub(super) metadata: BTreeMap<String, String>,
}

impl Sidecar {
    pub(super) fn into_meta(self, bucket: &str, name: &str) -> ObjectMeta {
        ObjectMeta {
            bucket: bucket.to_string(),
            name: name.to_string(),
            size: self.size,
            crc32c: Crc32c(self.crc32c),
            generation: self.generation,
            content_type: self.content_type,
            metadata: self.metadata,
        }
    }
}

/// The metadata of an object from its sidecar when that describes the file
/// as it is, else computed from the file. `None` if there is no such file.
pub(super) fn object_meta(
    bucket: &str,
    name: &str,
    data_path: &Path,
    meta_path: &Path,
) -> io::Result<Option<ObjectMeta>> {
    let stat = match std::fs::metadata(data_path) {
        Ok(stat) if stat.is_file() => stat,
        Ok(_) => return Ok(None),
        Err(e) if missing(&e) => return Ok(None),
        Err(e) => return Err(e),
    };
    let sidecar = match believed_sidecar(meta_path, &stat)? {
        Some(sidecar) => sidecar,
        None => Sidecar {
            size: stat.len(),
            crc32c: match file_crc32c(data_path) {
                Ok(crc) => crc,
                Err(e) if missing(&e) => return Ok(None),
                Err(e) => return Err(e),
            },
            generation: stat.modified().map(micros)?,
            content_type: guess_content_type(name).to_string(),
            metadata: BTreeMap::new(),
        },
    };
    Ok(Some(sidecar.into_meta(bucket, name)))
}

/// The sidecar at `meta_path` if it describes the file of `stat` (same
/// generation, same size); `None` if it is missing, unreadable or stale.
pub(super) fn believed_sidecar(
    meta_path: &Path,
    stat: &std::fs::Metadata,
) -> io::Result<Option<Sidecar>> {
    let generation = stat.modified().map(micros)?;
    Ok(std::fs::read(meta_path)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Sidecar>(&bytes).ok())
        .filter(|s| s.generation == generation && s.size == stat.len()))
}

/// The CRC32C of a file, read in chunks.
pub(super) fn file_crc32c(path: &Path) -> io::Result<u32> {
    let mut file = std::fs::File::open(path)?;
    let mut buffer = vec![0; CHUNK];
    let mut crc = 0;
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            return Ok(crc);
        }
        crc = crc32c::crc32c_append(crc, &buffer[..n]);
    }
}

/// The content type of a file dropped in by hand, from its extension.
pub(super) fn guess_content_type(name: &str) -> &'static str {
    let extension = name
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match extension.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "mp4" => "video/mp4",
        "webm" => "video/webm",
        "mov" => "video/quicktime",
        "mp3" => "audio/mpeg",
        "wav" => "audio/wav",
        "json" => "application/json",
        "txt" | "log" => "text/plain",
        "html" | "htm" => "text/html",
        _ => "application/octet-stream",
    }
}

/// Microseconds since the epoch (negative before it).
pub(super) fn micros(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_micros()).unwrap_or(i64::MAX),
        Err(before) => -i64::try_from(before.duration().as_micros()).unwrap_or(i64::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::gs_uri::GsUri;
    use crate::objects::local::LocalObjectStore;
    use crate::objects::{ObjectStore, ReadRange};
    use bytes::Bytes;
    use futures::StreamExt;

    #[tokio::test]
    async fn a_file_dropped_in_by_hand_is_listed_and_read() {
        let root = tempfile::tempdir().unwrap();
        let store = LocalObjectStore::new(root.path().to_path_buf());
        store.ensure_bucket("out").await.unwrap();
        std::fs::create_dir_all(root.path().join("out/hand")).unwrap();
        std::fs::write(root.path().join("out/hand/pic.PNG"), b"not really a png").unwrap();

        let listed = store.list("out", "").await.unwrap();
        assert_eq!(listed.len(), 1);
        let meta = &listed[0];
        assert_eq!(meta.name, "hand/pic.PNG");
        assert_eq!(meta.crc32c, Crc32c::of(b"not really a png"));
        assert_eq!(meta.content_type, "image/png");
        assert!(meta.generation > 0);
        assert_eq!(
            store
                .metadata("out", "hand/pic.PNG")
                .await
                .unwrap()
                .as_ref(),
            Some(meta)
        );

        let mut stream = store
            .read("out", "hand/pic.PNG", ReadRange::from(4))
            .await
            .unwrap();
        assert_eq!(stream.next().await.unwrap().unwrap(), &b"really a png"[..]);
        assert!(stream.next().await.is_none());
    }

    #[tokio::test]
    async fn a_copy_of_a_file_dropped_in_by_hand_gets_its_metadata_from_the_file() {
        let root = tempfile::tempdir().unwrap();
        let store = LocalObjectStore::new(root.path().to_path_buf());
        store.ensure_bucket("out").await.unwrap();
        std::fs::write(root.path().join("out/hand.mp4"), b"not really a video").unwrap();
        let uri = |name: &str| GsUri {
            bucket: "out".into(),
            name: name.into(),
        };

        let copy = store
            .copy(&uri("hand.mp4"), &uri("copy/x"), &BTreeMap::new())
            .await
            .unwrap();
        assert_eq!(copy.crc32c, Crc32c::of(b"not really a video"));
        assert_eq!(copy.size, 18);
        // Guessed from the source's name: the copy's has no extension.
        assert_eq!(copy.content_type, "video/mp4");
        assert_eq!(
            store.metadata("out", "copy/x").await.unwrap(),
            Some(copy),
            "the sidecar of the copy is believed"
        );
        // No temporary file is left behind.
        let mut names: Vec<_> = std::fs::read_dir(root.path().join("out/copy"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["x"]);
    }

    #[tokio::test]
    async fn a_stale_sidecar_is_not_believed() {
        let root = tempfile::tempdir().unwrap();
        let store = LocalObjectStore::new(root.path().to_path_buf());
        store.ensure_bucket("out").await.unwrap();
        let written = store
            .write(
                "out",
                "a.txt",
                Bytes::from_static(b"one"),
                "text/x-one",
                &BTreeMap::new(),
            )
            .await
            .unwrap();
        // Someone replaces the file behind the store's back.
        let path = root.path().join("out/a.txt");
        std::fs::write(&path, b"something else").unwrap();
        let meta = store.metadata("out", "a.txt").await.unwrap().unwrap();
        assert_eq!(meta.crc32c, Crc32c::of(b"something else"));
        assert_eq!(meta.size, 14);
        assert_ne!(meta.generation, written.generation);
        assert_eq!(meta.content_type, "text/plain");
    }
}
