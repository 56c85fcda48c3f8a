//! A world for stage tests: a store, an object store with an output bucket,
//! and the fake Vertex server writing into that object store — either all
//! local (embedded store, directory buckets) or on the emulators
//! (Firestore, fake-gcs-server).

use crate::fake_vertex::{FakeOptions, FakeVertex};
use crate::harness;
use axum::Router;
use shared::domain::job::{JobKind, NewJob};
use shared::objects::ObjectStore;
use shared::store::Store;
use std::process::{Command, Stdio};
use std::sync::Arc;

/// Everything a stage needs, and the fake model it talks to.
pub struct World {
    /// The job store.
    pub store: Store,
    /// The object store.
    pub objects: Arc<dyn ObjectStore>,
    /// The output bucket (exists).
    pub bucket: String,
    /// The fake Vertex AI.
    pub fake: FakeVertex,
    /// The Firestore collection prefix (emulator world only).
    pub prefix: Option<String>,
    /// Keeps local directories alive.
    pub _dirs: Vec<tempfile::TempDir>,
}

impl World {
    /// A stage binary on this emulator world with only its documented
    /// environment: the emulators, this world's prefixes and bucket, live
    /// calls to its fake Vertex AI with short back-offs; `extra` over it.
    /// Its stdout (the JSON logs) is dropped, its stderr kept.
    pub fn stage_command(&self, name: &str, extra: &[(&str, String)]) -> Command {
        let prefix = self.prefix.as_deref().expect("an emulator world");
        let mut command = harness::emulator_command(name, prefix);
        command.envs([
            (
                "STORAGE_EMULATOR_HOST",
                harness::emulator_host("STORAGE_EMULATOR_HOST"),
            ),
            ("GCS_OUTPUT_BUCKET", self.bucket.clone()),
            ("VERTEX_BASE_URL", self.fake.base_url()),
            ("VERTEX_ACCESS_TOKEN", self.fake.token().to_string()),
            ("DRY_RUN", "false".to_string()),
            ("BASE_DELAY", "10ms".to_string()),
            ("MAX_DELAY", "100ms".to_string()),
            ("POLLING_INTERVAL", "100ms".to_string()),
        ]);
        command.envs(extra.iter().map(|(k, v)| (k, v)));
        command.stdout(Stdio::null()).stderr(Stdio::inherit());
        command
    }

    /// A video poller of this world: its store, its fake Vertex AI, its
    /// output bucket, polling every 10 ms for at most 20 s.
    pub fn poller(
        &self,
        operation_timeout: std::time::Duration,
    ) -> shared::generate::poller::VideoPoller {
        use shared::generate::poller::{PollerSettings, VideoPoller};
        VideoPoller::new(
            self.store.clone(),
            Arc::new(
                shared::vertex::VertexClient::new(self.fake.config())
                    .expect("a client of the fake"),
            ),
            self.objects.clone(),
            PollerSettings {
                operation_timeout,
                polling_interval: std::time::Duration::from_millis(10),
                max_runtime: std::time::Duration::from_secs(20),
                output_bucket: self.bucket.clone(),
            },
        )
    }

    /// A live (not dry-run) job, created in the store.
    pub async fn job(
        &self,
        prompt: impl Into<String>,
        kind: JobKind,
        params: &[(&str, &str)],
    ) -> String {
        let mut new = NewJob::new(prompt, kind);
        new.dry_run = false;
        for (key, value) in params {
            new.params.set(key, value).expect("a valid parameter");
        }
        self.store
            .create_job(new)
            .await
            .expect("the job is created")
            .record
            .id
    }
}

/// The local world: embedded store, directory buckets.
pub async fn local(options: FakeOptions) -> World {
    let objects_dir = tempfile::tempdir().expect("a temporary directory");
    let objects: Arc<dyn ObjectStore> = Arc::new(shared::objects::local::LocalObjectStore::new(
        objects_dir.path().to_path_buf(),
    ));
    let t = harness::embedded(Default::default()).await;
    let mut dirs = vec![objects_dir];
    dirs.extend(t.dir);
    finish(t.store, objects, options, dirs, None).await
}

/// The emulator world: Firestore emulator, fake-gcs-server.
pub async fn emulators(options: FakeOptions) -> World {
    let objects: Arc<dyn ObjectStore> = Arc::new(harness::gcs().await);
    let prefix = harness::unique_prefix();
    let backend = Arc::new(harness::firestore_backend_with_prefix(&prefix).await);
    finish(
        Store::new(backend),
        objects,
        options,
        Vec::new(),
        Some(prefix),
    )
    .await
}

async fn finish(
    store: Store,
    objects: Arc<dyn ObjectStore>,
    mut options: FakeOptions,
    dirs: Vec<tempfile::TempDir>,
    prefix: Option<String>,
) -> World {
    let bucket = harness::unique_prefix().replace('_', "-") + "out";
    objects
        .ensure_bucket(&bucket)
        .await
        .expect("the output bucket is created");
    options.objects = Some(objects.clone());
    let fake = FakeVertex::start(options).await;
    World {
        store,
        objects,
        bucket,
        fake,
        prefix,
        _dirs: dirs,
    }
}

/// Serves `app` on a free loopback port; returns its base URL.
pub async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a free port");
    let address = listener.local_addr().expect("a bound address");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{address}")
}

/// The push envelope Pub/Sub would POST for a job message.
pub fn push_body(job_id: &str, message_id: &str) -> String {
    use base64::Engine;
    let data =
        base64::engine::general_purpose::STANDARD.encode(format!("{{\"job_id\":\"{job_id}\"}}"));
    serde_json::json!({
        "message": {
            "data": data,
            "attributes": {},
            "messageId": message_id,
            "message_id": message_id,
            "publishTime": "2026-11-28T10:00:00.000Z",
        },
        "subscription": "projects/asmr-test/subscriptions/jobs-push",
        "deliveryAttempt": 1,
    })
    .to_string()
}

/// POSTs a push of `job_id` to `url`; returns the status code.
pub async fn push(url: &str, job_id: &str, message_id: &str) -> u16 {
    post_raw(url, push_body(job_id, message_id)).await
}

/// POSTs `body` to `url`; returns the status code.
pub async fn post_raw(url: &str, body: String) -> u16 {
    reqwest::Client::new()
        .post(format!("{url}/"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("the service answers")
        .status()
        .as_u16()
}
