//! What every benchmark group needs: the emulators' environment, the release
//! binaries started as services with their documented environment, Pub/Sub
//! wiring over the emulator's REST API, `/proc` readings and a few numbers.

use anyhow::{Context as _, Result, bail};
use base64::Engine;
use serde_json::{Value, json};
use shared::store::Store;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tests::process::{Running, free_port};

/// The ack deadline and back-off of the production push subscriptions
/// (terraform/pubsub.tf): the service's request timeout, 10 s to 600 s.
pub const PUSH_MIN_BACKOFF: &str = "10s";
/// See [`PUSH_MIN_BACKOFF`].
pub const PUSH_MAX_BACKOFF: &str = "600s";

fn started() -> Instant {
    static STARTED: OnceLock<Instant> = OnceLock::new();
    *STARTED.get_or_init(Instant::now)
}

/// One progress line on stderr, with the seconds since the start.
pub fn progress(what: &str) {
    eprintln!("==> [{:4}s] {what}", started().elapsed().as_secs());
}

/// A detail line under the current progress line.
pub fn detail(what: &str) {
    eprintln!("    [{:4}s] {what}", started().elapsed().as_secs());
}

/// Where the emulators are (what `tests/run --serve` writes).
#[derive(Clone, Debug)]
pub struct Env {
    /// `FIRESTORE_EMULATOR_HOST`.
    pub firestore: String,
    /// `PUBSUB_EMULATOR_HOST`.
    pub pubsub: String,
    /// `STORAGE_EMULATOR_HOST` (fake-gcs-server, `http://127.0.0.1:80`).
    pub storage: String,
    /// `GOOGLE_CLOUD_PROJECT`.
    pub project: String,
    /// `ASMR_TEST_GCS_EVENTS_TOPIC`: where fake-gcs-server publishes its
    /// object notifications.
    pub gcs_events_topic: String,
}

impl Env {
    /// From this process's environment; says what is missing.
    pub fn from_process() -> Result<Self> {
        let var = |name: &str| {
            std::env::var(name).with_context(|| {
                format!(
                    "{name} is not set: run tests/bench, or source the file `tests/run --serve FILE` writes"
                )
            })
        };
        Ok(Self {
            firestore: var("FIRESTORE_EMULATOR_HOST")?,
            pubsub: var("PUBSUB_EMULATOR_HOST")?,
            storage: var("STORAGE_EMULATOR_HOST")?
                .trim_end_matches('/')
                .to_string(),
            project: std::env::var("GOOGLE_CLOUD_PROJECT").unwrap_or_else(|_| "asmr-test".into()),
            gcs_events_topic: var("ASMR_TEST_GCS_EVENTS_TOPIC")?,
        })
    }
}

/// Shared state of a benchmark run.
pub struct Context {
    /// The emulators.
    pub env: Env,
    /// A scratch directory, removed at the end.
    pub work: PathBuf,
    /// The directory of the release binaries.
    pub bin_dir: PathBuf,
    /// The Pub/Sub emulator.
    pub pubsub: PubSub,
    /// A plain HTTP client.
    pub http: reqwest::Client,
    logs: AtomicUsize,
}

impl Context {
    /// Checks that the release binaries are there.
    pub fn new(env: Env, work: PathBuf) -> Result<Self> {
        let exe = std::env::current_exe().context("locating the bench binary")?;
        let bin_dir = exe
            .parent()
            .context("the bench binary has no directory")?
            .to_path_buf();
        let context = Self {
            pubsub: PubSub::new(&env),
            env,
            work,
            bin_dir,
            http: reqwest::Client::new(),
            logs: AtomicUsize::new(0),
        };
        for name in SERVICES.iter().chain(&["asmr"]) {
            context.binary(name)?;
        }
        std::fs::create_dir_all(context.work.join("logs"))?;
        Ok(context)
    }

    /// The path of a release binary of the workspace.
    pub fn binary(&self, name: &str) -> Result<PathBuf> {
        let path = self.bin_dir.join(name);
        if !path.is_file() {
            bail!(
                "{} is not built: run `cargo build --release --workspace --bins` (tests/bench does)",
                path.display()
            );
        }
        Ok(path)
    }

    /// A fresh directory under the work directory.
    pub fn dir(&self, name: &str) -> Result<PathBuf> {
        let n = self.logs.fetch_add(1, Ordering::SeqCst);
        let dir = self.work.join(format!("{name}-{n}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(dir)
    }

    /// A Firestore store on the emulator with collections named by `prefix`.
    pub async fn store(&self, prefix: &str) -> Store {
        Store::new(std::sync::Arc::new(
            tests::harness::firestore_backend_with_prefix(prefix).await,
        ))
    }

    /// The documented environment every stage shares here: the emulators,
    /// collections and topics under `prefix`, outputs in `bucket`.
    pub fn stage_env(&self, prefix: &str, bucket: &str) -> Vec<(String, String)> {
        [
            ("GOOGLE_CLOUD_PROJECT", self.env.project.as_str()),
            ("FIRESTORE_EMULATOR_HOST", &self.env.firestore),
            ("PUBSUB_EMULATOR_HOST", &self.env.pubsub),
            ("STORAGE_EMULATOR_HOST", &self.env.storage),
            ("ASMR_COLLECTION_PREFIX", prefix),
            ("ASMR_TOPIC_PREFIX", prefix),
            ("GCS_OUTPUT_BUCKET", bucket),
            ("RUST_LOG", "info"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// Starts a release binary as a service on a free port, with `env` and
    /// nothing else; its output goes to a log file. Does not wait for it.
    pub fn spawn(&self, name: &str, env: &[(String, String)]) -> Result<Service> {
        let port = free_port();
        let n = self.logs.fetch_add(1, Ordering::SeqCst);
        let log = self.work.join("logs").join(format!("{name}-{n}.log"));
        let file = std::fs::File::create(&log)?;
        let mut command = Command::new(self.binary(name)?);
        command
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("PORT", port.to_string())
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        let spawned = Instant::now();
        let child = command
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Service {
            name: name.to_string(),
            url: format!("http://127.0.0.1:{port}"),
            log,
            process: Running(child),
            spawned,
        })
    }
}

/// The four HTTP services.
pub const SERVICES: [&str; 4] = ["intake", "image-generator", "video-generator", "downloader"];

/// A running service binary, killed when dropped.
pub struct Service {
    /// Binary name.
    pub name: String,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// Its stdout and stderr.
    pub log: PathBuf,
    /// The process.
    pub process: Running,
    /// When it was started.
    pub spawned: Instant,
}

impl Service {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.process.0.id()
    }

    /// Waits for the first 2xx of `GET /healthz`, polling every 2 ms;
    /// returns the time since the process was started.
    pub async fn healthy(&mut self, http: &reqwest::Client) -> Result<Duration> {
        let deadline = self.spawned + Duration::from_secs(30);
        let url = format!("{}/healthz", self.url);
        loop {
            if let Ok(response) = http.get(&url).timeout(Duration::from_secs(2)).send().await
                && response.status().is_success()
            {
                return Ok(self.spawned.elapsed());
            }
            if let Some(status) = self.process.0.try_wait()? {
                bail!(
                    "{} exited ({status}) before it answered /healthz:\n{}",
                    self.name,
                    tail(&self.log)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not answer /healthz within 30 s:\n{}",
                    self.name,
                    tail(&self.log)
                );
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// A field of `/proc/PID/status` in KiB (`VmHWM`: peak RSS, `VmRSS`).
    pub fn memory_kib(&self, field: &str) -> Result<u64> {
        memory_kib(self.pid(), field)
    }
}

/// A field of `/proc/PID/status` in KiB.
pub fn memory_kib(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

/// The last lines of a log file, for an error message.
pub fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(20);
    format!(
        "{} (last lines):\n{}",
        path.display(),
        lines[start..].join("\n")
    )
}

/// A prefix no other run uses, for collections and topics.
pub fn unique_prefix() -> String {
    tests::harness::unique_prefix()
}

/// A bucket name no other run uses.
pub fn unique_bucket() -> String {
    tests::objects::unique_bucket()
}

/// The Pub/Sub emulator over REST.
pub struct PubSub {
    base: String,
    project: String,
    http: reqwest::Client,
}

impl PubSub {
    fn new(env: &Env) -> Self {
        Self {
            base: format!("http://{}/v1/projects/{}", env.pubsub, env.project),
            project: env.project.clone(),
            http: reqwest::Client::new(),
        }
    }

    async fn put(&self, path: &str, body: Value) -> Result<()> {
        let response = self
            .http
            .put(format!("{}/{path}", self.base))
            .json(&body)
            .send()
            .await
            .with_context(|| format!("PUT {path} to the Pub/Sub emulator"))?;
        let status = response.status();
        if !status.is_success() && status.as_u16() != 409 {
            bail!("PUT {path}: {status} {}", response.text().await?);
        }
        Ok(())
    }

    /// Creates a topic (an existing one is fine).
    pub async fn topic(&self, topic: &str) -> Result<()> {
        self.put(&format!("topics/{topic}"), json!({})).await
    }

    /// A push subscription configured as terraform configures production's:
    /// ack deadline = the service's request timeout, back-off 10 s to 600 s.
    pub async fn push(
        &self,
        name: &str,
        topic: &str,
        endpoint: &str,
        ack_deadline_s: u32,
    ) -> Result<()> {
        self.put(
            &format!("subscriptions/{name}"),
            json!({
                "topic": format!("projects/{}/topics/{topic}", self.project),
                "pushConfig": {"pushEndpoint": endpoint},
                "ackDeadlineSeconds": ack_deadline_s.min(600),
                "retryPolicy": {
                    "minimumBackoff": PUSH_MIN_BACKOFF,
                    "maximumBackoff": PUSH_MAX_BACKOFF,
                },
            }),
        )
        .await
    }

    /// Publishes messages (payload and attributes), 500 per request.
    pub async fn publish(
        &self,
        topic: &str,
        messages: &[(Vec<u8>, BTreeMap<String, String>)],
    ) -> Result<()> {
        for batch in messages.chunks(500) {
            let messages: Vec<Value> = batch
                .iter()
                .map(|(data, attributes)| {
                    json!({
                        "data": base64::engine::general_purpose::STANDARD.encode(data),
                        "attributes": attributes,
                    })
                })
                .collect();
            let response = self
                .http
                .post(format!("{}/topics/{topic}:publish", self.base))
                .json(&json!({ "messages": messages }))
                .send()
                .await
                .with_context(|| format!("publishing to {topic}"))?;
            if !response.status().is_success() {
                bail!(
                    "publishing to {topic}: {} {}",
                    response.status(),
                    response.text().await?
                );
            }
        }
        Ok(())
    }

    /// Deletes subscriptions and topics, best effort: a push subscription
    /// left behind would go on pushing to a stopped service.
    pub async fn remove(&self, subscriptions: &[String], topics: &[String]) {
        for (kind, names) in [("subscriptions", subscriptions), ("topics", topics)] {
            for name in names {
                let _ = self
                    .http
                    .delete(format!("{}/{kind}/{name}", self.base))
                    .send()
                    .await;
            }
        }
    }
}

/// The median of some measurements (the lower middle of an even count).
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted
        .get(sorted.len().saturating_sub(1) / 2)
        .copied()
        .unwrap_or(f64::NAN)
}

/// Deletes a bucket of fake-gcs-server and every object in it, best
/// effort. A bucket must be empty to go, and fake-gcs-server keeps every
/// object in memory: without this, the objects of a whole bench run (some
/// 20 GiB) add up until the kernel stops it.
pub async fn delete_bucket(ctx: &Context, bucket: &str) {
    use futures::StreamExt;
    let base = format!("{}/storage/v1/b/{bucket}", ctx.env.storage);
    loop {
        let listed: Option<Value> = match ctx
            .http
            .get(format!("{base}/o?fields=items(name)&maxResults=1000"))
            .send()
            .await
        {
            Ok(response) => response.json().await.ok(),
            Err(_) => None,
        };
        let names: Vec<String> = listed
            .as_ref()
            .and_then(|l| l["items"].as_array())
            .map(|items| {
                items
                    .iter()
                    .filter_map(|i| i["name"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        if names.is_empty() {
            break;
        }
        let deleted = futures::stream::iter(names)
            .map(|name| {
                let url = format!("{base}/o/{}", encode(&name));
                async move {
                    ctx.http
                        .delete(url)
                        .send()
                        .await
                        .is_ok_and(|r| r.status().is_success())
                }
            })
            .buffer_unordered(16)
            .filter(|ok| std::future::ready(*ok))
            .count()
            .await;
        if deleted == 0 {
            break;
        }
    }
    let _ = ctx.http.delete(base).send().await;
}

/// Writes `bytes` bytes to a new file at `path` in 1 MiB pieces and fsyncs
/// it: what one durable file costs on this disk, with no network or store.
pub fn write_durably(path: &Path, bytes: u64) -> Result<()> {
    let piece = vec![0x5au8; 1024 * 1024];
    let mut file = std::fs::File::create(path)?;
    let mut left = bytes;
    while left > 0 {
        let n = left.min(piece.len() as u64) as usize;
        std::io::Write::write_all(&mut file, &piece[..n])?;
        left -= n as u64;
    }
    file.sync_all()?;
    Ok(())
}

/// Uploads `data` as `gs://{bucket}/{name}` in one JSON API media request
/// (as `curl -T` would; the adapter's resumable upload is far slower into
/// fake-gcs-server) and returns the object resource it answers with.
pub async fn upload_media(
    ctx: &Context,
    bucket: &str,
    name: &str,
    content_type: &str,
    data: bytes::Bytes,
) -> Result<Value> {
    Ok(ctx
        .http
        .post(format!(
            "{}/upload/storage/v1/b/{bucket}/o?uploadType=media&name={}",
            ctx.env.storage,
            encode(name)
        ))
        .header("content-type", content_type)
        .body(data)
        .timeout(Duration::from_secs(300))
        .send()
        .await?
        .error_for_status()
        .with_context(|| format!("uploading gs://{bucket}/{name}"))?
        .json()
        .await?)
}

/// An object name as one path segment of a JSON API URL.
pub fn encode(name: &str) -> String {
    name.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
