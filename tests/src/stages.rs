//! A world for stage tests: a store, an object store with an output bucket,
//! and the fake Vertex server writing into that object store — either all
//! local (embedded store, directory buckets) or on the emulators
//! (Firestore, fake-gcs-server).

use crate::fake_vertex::{FakeOptions, FakeVertex};
use crate::harness;
use axum::Router;
use shared::domain::job::NewJob;
use shared::domain::values::JobKind;
use shared::objects::ObjectStore;
use shared::store::Store;
use shared::time::Timestamp;
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

/// A new API key of `tenant` in `store` (the tenant is added first when it
/// is not the default one and does not exist).
pub async fn api_key(store: &Store, tenant: &str) -> String {
    use shared::domain::tenant::{Tenant, TenantName, TenantSettings};
    let name: TenantName = tenant.parse().unwrap();
    if store.tenant(&name).await.unwrap().is_none() {
        let new = Tenant::new(name.clone(), &TenantSettings::default(), Timestamp::now());
        store.add_tenant(new.unwrap()).await.unwrap();
    }
    let (_, key) = store
        .change_tenant(&name, |tenant, now| {
            Ok(tenant.rotate_key(std::time::Duration::from_secs(3600), now))
        })
        .await
        .unwrap();
    key.reveal().to_string()
}

impl World {
    /// Every job of this world's store (every tenant's), newest first.
    pub async fn jobs(&self) -> Vec<shared::domain::job::Job> {
        self.store
            .list_jobs(&shared::store::JobFilter::default(), 1000, None)
            .await
            .expect("the jobs are listed")
            .items
    }

    /// A new API key of `tenant` in this world's store (see [`api_key`]).
    pub async fn api_key(&self, tenant: &str) -> String {
        api_key(&self.store, tenant).await
    }

    /// `asmr` as an operator on this emulator world's Firestore and
    /// Pub/Sub, with only the documented environment; its output.
    pub fn operator(&self, args: &[&str]) -> std::process::Output {
        let prefix = self.prefix.as_deref().expect("an emulator world");
        Command::new(harness::binary("asmr"))
            .env_clear()
            .env("GOOGLE_CLOUD_PROJECT", harness::emulator_project())
            .env(
                "FIRESTORE_EMULATOR_HOST",
                harness::emulator_host("FIRESTORE_EMULATOR_HOST"),
            )
            .env(
                "PUBSUB_EMULATOR_HOST",
                harness::emulator_host("PUBSUB_EMULATOR_HOST"),
            )
            .env("ASMR_COLLECTION_PREFIX", prefix)
            .env("ASMR_TOPIC_PREFIX", prefix)
            .args(["--backend", "firestore"])
            .args(args)
            .output()
            .expect("running asmr")
    }

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
                shared::vertex::client::VertexClient::new(self.fake.config())
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
            .id()
            .to_string()
    }
}

/// A stage binary serving HTTP, killed when dropped.
pub struct Service {
    /// The binary.
    pub name: &'static str,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// The process.
    pub process: crate::process::Running,
}

impl Service {
    /// Starts `name` on this emulator world (see [`World::stage_command`])
    /// with `extra` environment, and waits for its `/healthz`.
    pub async fn start(name: &'static str, world: &World, extra: &[(&str, String)]) -> Self {
        let port = crate::process::free_port();
        let mut env = extra.to_vec();
        env.push(("PORT", port.to_string()));
        let process = crate::process::Running(
            world
                .stage_command(name, &env)
                .spawn()
                .expect("the stage starts"),
        );
        let url = format!("http://127.0.0.1:{port}");
        crate::process::wait_healthy(&url).await;
        Self { name, url, process }
    }

    /// [`Service::start`] with the stage's JSON log lines (its stdout)
    /// written to `log`.
    pub async fn start_logged(
        name: &'static str,
        world: &World,
        extra: &[(&str, String)],
        log: &std::path::Path,
    ) -> Self {
        let port = crate::process::free_port();
        let mut env = extra.to_vec();
        env.push(("PORT", port.to_string()));
        let mut command = world.stage_command(name, &env);
        command.stdout(std::fs::File::create(log).expect("the log file is created"));
        let process = crate::process::Running(command.spawn().expect("the stage starts"));
        let url = format!("http://127.0.0.1:{port}");
        crate::process::wait_healthy(&url).await;
        Self { name, url, process }
    }

    /// The process is still running and `/healthz` answers 200.
    pub async fn assert_healthy(&mut self) {
        let exited = self.process.0.try_wait().expect("the process can be asked");
        assert!(exited.is_none(), "{} exited: {exited:?}", self.name);
        let status = reqwest::get(format!("{}/healthz", self.url))
            .await
            .expect("/healthz answers")
            .status();
        assert_eq!(status, 200, "{} /healthz", self.name);
    }

    /// SIGKILL: no clean-up, no graceful shutdown.
    pub fn kill(&mut self) {
        let _ = self.process.0.kill();
        let _ = self.process.0.wait();
    }
}

impl World {
    /// Every topic of the pipeline with this world's prefix, so that what
    /// the stages publish (job messages, job events) has somewhere to go.
    pub async fn topics(&self) -> (crate::pubsub::Emulator, shared::bus::Topics) {
        let topics = shared::bus::Topics::new(self.prefix.clone().expect("an emulator world"));
        let pubsub = crate::pubsub::Emulator::new();
        for topic in topics.all() {
            pubsub.topic(&topic).await;
        }
        (pubsub, topics)
    }

    /// The dead-letter topic of this world, and the janitor's subscription
    /// on it.
    pub async fn dead_letters(&self, pubsub: &crate::pubsub::Emulator) -> String {
        let prefix = self.prefix.clone().expect("an emulator world");
        let topic = format!("{prefix}asmr-dead-letter");
        pubsub.topic(&topic).await;
        pubsub
            .pull_subscription(&format!("{prefix}asmr-dead-letter-janitor"), &topic)
            .await;
        topic
    }

    /// Runs the `janitor` binary; returns its JSON summary line.
    pub async fn run_janitor(&self, pubsub: &crate::pubsub::Emulator) -> serde_json::Value {
        self.run_janitor_with(pubsub, &[]).await
    }

    /// Runs the `janitor` binary with `extra` environment; returns its JSON
    /// summary line.
    pub async fn run_janitor_with(
        &self,
        pubsub: &crate::pubsub::Emulator,
        extra: &[(&str, &str)],
    ) -> serde_json::Value {
        let prefix = self.prefix.clone().expect("an emulator world");
        self.dead_letters(pubsub).await;
        let mut command = harness::emulator_command("janitor", &prefix);
        command.env("DEAD_LETTER_WAIT", "1s");
        command.envs(extra.iter().copied());
        command.stdout(Stdio::piped()).stderr(Stdio::inherit());
        let output =
            tokio::task::spawn_blocking(move || command.output().expect("the janitor runs"))
                .await
                .expect("the janitor is waited for");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let summary = stdout
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .find(|line| line["event"] == "janitor.summary" && line.get("severity").is_none())
            .unwrap_or_else(|| panic!("no summary line in {stdout}"));
        assert!(output.status.success(), "the janitor failed: {summary}");
        summary
    }

    /// Runs the `video-poller` binary with `extra` environment until nothing
    /// is generating.
    pub async fn run_poller(&self, extra: &[(&str, String)]) {
        let mut command = self.stage_command("video-poller", extra);
        let status =
            tokio::task::spawn_blocking(move || command.status().expect("the poller runs"))
                .await
                .expect("the poller is waited for");
        assert!(status.success(), "the video poller failed");
    }

    /// Jobs of this world that are neither finished nor failed.
    pub async fn unfinished(&self) -> Vec<shared::domain::job::Job> {
        use shared::domain::values::JobStatus;
        let mut left = Vec::new();
        for status in [
            JobStatus::Pending,
            JobStatus::Processing,
            JobStatus::Generating,
        ] {
            let filter = shared::store::JobFilter {
                status: Some(status),
                ..Default::default()
            };
            left.extend(
                self.store
                    .list_jobs(&filter, 1000, None)
                    .await
                    .expect("the store lists jobs")
                    .items,
            );
        }
        left
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
