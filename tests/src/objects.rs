//! Object stores for tests: a local store in a temporary directory, or the
//! Cloud Storage adapter on fake-gcs-server; each with a fresh bucket.

use shared::objects::ObjectStore;
use shared::objects::gcs::{GcsConfig, GcsObjectStore};
use shared::objects::local::LocalObjectStore;
use std::sync::Arc;

/// An object store, a bucket of its own, and whatever must live as long.
pub struct TestObjects {
    /// The store under test.
    pub store: Arc<dyn ObjectStore>,
    /// An empty bucket no other test uses.
    pub bucket: String,
    /// The root directory of a local store.
    pub root: Option<tempfile::TempDir>,
}

/// A bucket name no other test uses (GCS rules: lowercase, 3–63 chars).
pub fn unique_bucket() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("asmr-test-{}", &id[..16])
}

/// A local store in its own temporary directory, with an empty bucket.
pub async fn local() -> TestObjects {
    let root = tempfile::tempdir().expect("a temporary directory");
    let store: Arc<dyn ObjectStore> = Arc::new(LocalObjectStore::new(root.path().to_path_buf()));
    let bucket = unique_bucket();
    store
        .ensure_bucket(&bucket)
        .await
        .expect("the local bucket is created");
    TestObjects {
        store,
        bucket,
        root: Some(root),
    }
}

/// The Cloud Storage adapter on fake-gcs-server. Panics with what to do
/// when the emulator is not configured: these tests never skip.
pub async fn gcs_store() -> GcsObjectStore {
    let endpoint = std::env::var("STORAGE_EMULATOR_HOST").expect(
        "STORAGE_EMULATOR_HOST is not set: run the tests with tests/run, which starts fake-gcs-server",
    );
    GcsObjectStore::new(GcsConfig {
        emulator_endpoint: Some(endpoint),
    })
    .await
    .expect("the storage clients are built")
}

/// The Cloud Storage adapter on fake-gcs-server with a fresh bucket.
pub async fn gcs() -> TestObjects {
    let store: Arc<dyn ObjectStore> = Arc::new(gcs_store().await);
    let bucket = unique_bucket();
    store
        .ensure_bucket(&bucket)
        .await
        .expect("fake-gcs-server creates the bucket");
    TestObjects {
        store,
        bucket,
        root: None,
    }
}

/// `len` bytes of a cheap, non-repeating-looking pattern.
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i as u32).wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect()
}

/// CRC32C (Castagnoli), written out here as an oracle independent of the
/// `crc32c` crate the adapters use.
pub fn crc32c(data: &[u8]) -> u32 {
    const POLY: u32 = 0x82F6_3B78; // reflected Castagnoli polynomial
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut table = [0; 256];
        for (i, entry) in table.iter_mut().enumerate() {
            let mut crc = i as u32;
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ POLY
                } else {
                    crc >> 1
                };
            }
            *entry = crc;
        }
        table
    });
    !data.iter().fold(!0u32, |crc, &byte| {
        table[((crc ^ u32::from(byte)) & 0xFF) as usize] ^ (crc >> 8)
    })
}

/// Uploads `data` as object `name` of `bucket` on fake-gcs-server through
/// the JSON API itself, name and all as given (the client library would
/// refuse or rewrite some hostile names before sending them); returns the
/// object's generation.
pub async fn upload_as_named(bucket: &str, name: &str, data: Vec<u8>) -> i64 {
    let endpoint = std::env::var("STORAGE_EMULATOR_HOST")
        .expect("STORAGE_EMULATOR_HOST is not set: run the tests with tests/run");
    let url = format!(
        "{}/upload/storage/v1/b/{bucket}/o",
        endpoint.trim_end_matches('/')
    );
    let response = reqwest::Client::new()
        .post(url)
        .query(&[("uploadType", "media"), ("name", name)])
        .header("content-type", "image/png")
        .body(data)
        .send()
        .await
        .expect("fake-gcs-server answers");
    let status = response.status();
    let object: serde_json::Value = response.json().await.expect("an object resource");
    assert!(status.is_success(), "uploading {name:?}: {status} {object}");
    assert_eq!(object["name"], name, "stored under another name");
    object["generation"]
        .as_str()
        .and_then(|g| g.parse().ok())
        .unwrap_or_else(|| panic!("no generation in {object}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_crc32c_oracle_gives_the_standard_check_value() {
        assert_eq!(super::crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(super::crc32c(b""), 0);
    }
}
