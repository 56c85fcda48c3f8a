//! Stores for tests: a fresh embedded store in a temporary directory, or a
//! Firestore store on the emulator with collections no other test uses.

use shared::domain::job::Retention;
use shared::store::Store;
use shared::store::backend::Backend;
use shared::store::embedded::EmbeddedBackend;
use shared::store::firestore::{FirestoreBackend, FirestoreConfig};
use std::sync::Arc;

/// A store and whatever must live as long as it.
pub struct TestStore {
    /// The store under test.
    pub store: Store,
    /// The backend under it, for tests of the port itself.
    pub backend: Arc<dyn Backend>,
    /// The state directory of an embedded store.
    pub dir: Option<tempfile::TempDir>,
}

/// A unique, short prefix for collection names, topics and buckets.
pub fn unique_prefix() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("t{}_", &id[..12])
}

/// An empty embedded store in its own temporary directory.
pub async fn embedded(retention: Retention) -> TestStore {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let backend: Arc<dyn Backend> =
        Arc::new(EmbeddedBackend::open(dir.path()).expect("the embedded store opens"));
    TestStore {
        store: Store::new(backend.clone()).with_retention(retention),
        backend,
        dir: Some(dir),
    }
}

/// The project the emulators serve.
pub fn emulator_project() -> String {
    std::env::var("GOOGLE_CLOUD_PROJECT").unwrap_or_else(|_| "asmr-test".into())
}

/// A Firestore backend on the emulator with fresh collections. Panics with
/// what to do when the emulator is not configured: these tests never skip.
pub async fn firestore_backend() -> FirestoreBackend {
    firestore_backend_with_prefix(&unique_prefix()).await
}

/// A Firestore backend on the emulator with collections named by `prefix`.
pub async fn firestore_backend_with_prefix(prefix: &str) -> FirestoreBackend {
    assert!(
        std::env::var("FIRESTORE_EMULATOR_HOST").is_ok(),
        "FIRESTORE_EMULATOR_HOST is not set: run the tests with tests/run, which starts the emulator"
    );
    FirestoreBackend::connect(FirestoreConfig {
        project: emulator_project(),
        database: "(default)".into(),
        prefix: prefix.to_string(),
    })
    .await
    .expect("the Firestore emulator answers")
}

/// An empty Firestore store on the emulator.
pub async fn firestore(retention: Retention) -> TestStore {
    let backend: Arc<dyn Backend> = Arc::new(firestore_backend().await);
    TestStore {
        store: Store::new(backend.clone()).with_retention(retention),
        backend,
        dir: None,
    }
}

/// The GCS adapter on fake-gcs-server. Panics with what to do when
/// `STORAGE_EMULATOR_HOST` is not set: these tests never skip.
pub async fn gcs() -> shared::objects::gcs::GcsObjectStore {
    let endpoint = std::env::var("STORAGE_EMULATOR_HOST").expect(
        "STORAGE_EMULATOR_HOST is not set: run the tests with tests/run, which starts fake-gcs-server",
    );
    shared::objects::gcs::GcsObjectStore::new(shared::objects::gcs::GcsConfig {
        emulator_endpoint: Some(endpoint),
    })
    .await
    .expect("fake-gcs-server answers")
}

/// A workspace binary on the Firestore and Pub/Sub emulators with only
/// the environment it documents: the project, the emulator hosts, `prefix`
/// for collections and topics, and info logs. Nothing is inherited.
pub fn emulator_command(name: &str, prefix: &str) -> std::process::Command {
    let mut command = std::process::Command::new(binary(name));
    command.env_clear().envs([
        ("GOOGLE_CLOUD_PROJECT", emulator_project()),
        (
            "FIRESTORE_EMULATOR_HOST",
            emulator_host("FIRESTORE_EMULATOR_HOST"),
        ),
        (
            "PUBSUB_EMULATOR_HOST",
            emulator_host("PUBSUB_EMULATOR_HOST"),
        ),
        ("ASMR_COLLECTION_PREFIX", prefix.to_string()),
        ("ASMR_TOPIC_PREFIX", prefix.to_string()),
        ("RUST_LOG", "info".to_string()),
    ]);
    command
}

/// An emulator variable that `tests/run` sets; panics with what to do.
pub fn emulator_host(name: &str) -> String {
    std::env::var(name)
        .unwrap_or_else(|_| panic!("{name} is not set: run the tests with tests/run"))
}

/// Every file below `root`, however deep, in name order; a link (to a
/// file or a folder) is listed, never followed.
pub fn files_below(root: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            // A link is listed, never followed: a walk stays below `root`.
            match entry.file_type().unwrap().is_dir() {
                true => dirs.push(entry.path()),
                false => files.push(entry.path()),
            }
        }
    }
    files.sort();
    files
}

/// `asmr --state-dir STATE ARGS` with nothing else in its environment; its
/// standard output (it must succeed).
pub fn asmr_local(state: &std::path::Path, args: &[&str]) -> String {
    let output = std::process::Command::new(binary("asmr"))
        .env_clear()
        .args(["--state-dir", state.to_str().unwrap()])
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "asmr {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// A built binary of the workspace (`asmr`, `intake`...), next to the
/// running test's own target directory. Fails with how to build it.
pub fn binary(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built: run the tests with tests/run (cargo build --workspace --bins first)",
        path.display()
    );
    path
}
