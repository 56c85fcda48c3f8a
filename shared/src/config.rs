//! Configuration of the stage binaries, from the environment (and flags, for
//! `--help` and tests). Parsed once in `main`; nothing below reads the
//! environment.

use crate::bus::memory::MemoryBus;
use crate::bus::pubsub::{PubSubBus, PubSubConfig};
use crate::bus::store_queue::StoreQueue;
use crate::bus::{Bus, Topics};
use crate::error::{Error, Result};
use crate::job_events::BusJobEvents;
use crate::objects::ObjectStore;
use crate::objects::gcs::{GcsConfig, GcsObjectStore};
use crate::objects::local::LocalObjectStore;
use crate::store::firestore::FirestoreConfig;
use crate::store::{Store, StoreConfig};
use crate::vertex::{DEFAULT_IMAGE_MODEL, DEFAULT_VIDEO_MODEL, RetryPolicy, VertexConfig};
use clap::{Args, ValueEnum};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Reads a duration: a plain number is seconds (`5`, `0.5`), anything else
/// has a unit (`500ms`, `2m`, `1h`, `3d`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<f64>() {
        return Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"));
    }
    humantime_parse(text)
}

fn humantime_parse(text: &str) -> Result<Duration, String> {
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map(|i| text.split_at(i))
        .ok_or_else(|| format!("{text:?} is not a duration"))?;
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (try 5, 500ms, 2m, 1h)"))?;
    let scale = match unit.trim() {
        "ms" => 0.001,
        "s" | "sec" | "secs" => 1.0,
        "m" | "min" | "mins" => 60.0,
        "h" | "hour" | "hours" => 3600.0,
        "d" | "day" | "days" => 86_400.0,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?} (use ms, s, m, h or d)"
            ));
        }
    };
    Duration::try_from_secs_f64(value * scale).map_err(|e| format!("{text:?}: {e}"))
}

/// Which store holds the jobs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    /// Firestore in --project (or the emulator at FIRESTORE_EMULATOR_HOST):
    /// the cloud, and the services' default.
    Firestore,
    /// SQLite under --state-dir: a local run, and the asmr CLI's default.
    Embedded,
}

/// Where the job store is, and the Pub/Sub that goes with it. Declared once
/// for every binary: the services flatten it as it is, the asmr CLI makes
/// its options global and the embedded store its default.
#[derive(Clone, Debug, Args)]
#[command(next_help_heading = "Store options")]
pub struct StoreArgs {
    /// Which store holds the jobs.
    #[arg(
        long,
        global = true,
        env = "ASMR_BACKEND",
        value_enum,
        default_value = "firestore"
    )]
    pub backend: Backend,
    /// State directory of the embedded store.
    #[arg(long, global = true, env = "ASMR_STATE_DIR", default_value = ".asmr")]
    pub state_dir: PathBuf,
    /// Google Cloud project (Firestore, Pub/Sub, Vertex AI).
    #[arg(long, global = true, env = "GOOGLE_CLOUD_PROJECT")]
    pub project: Option<String>,
    /// Prefix of the Firestore collection names (`test42_` gives `test42_jobs`).
    #[arg(
        long,
        global = true,
        env = "ASMR_COLLECTION_PREFIX",
        default_value = ""
    )]
    pub collection_prefix: String,
    /// Firestore database id.
    #[arg(
        long,
        global = true,
        env = "FIRESTORE_DATABASE",
        default_value = "(default)"
    )]
    pub database: String,
    /// Firestore emulator (host:port); when set no credentials are needed.
    /// Read by the Firestore client itself; listed here for --help.
    #[arg(long, global = true, env = "FIRESTORE_EMULATOR_HOST")]
    pub firestore_emulator_host: Option<String>,
    /// Pub/Sub emulator (host:port) instead of Cloud Pub/Sub; when set no
    /// credentials are needed.
    #[arg(
        long,
        global = true,
        env = "PUBSUB_EMULATOR_HOST",
        help_heading = "Pub/Sub options (firestore backend)"
    )]
    pub pubsub_emulator_host: Option<String>,
    /// Prefix of the Pub/Sub topic names (`dev-` gives `dev-asmr-job-events`).
    #[arg(
        long,
        global = true,
        env = "ASMR_TOPIC_PREFIX",
        default_value = "",
        help_heading = "Pub/Sub options (firestore backend)"
    )]
    pub topic_prefix: String,
    /// Publish a job event on every terminal transition (Firestore store
    /// only; the local run reports its own).
    #[arg(long, global = true, env = "ASMR_JOB_EVENTS", default_value = "true",
          action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new(),
          value_name = "true|false", help_heading = "Pub/Sub options (firestore backend)")]
    pub job_events: bool,
}

/// The ports a process works through, connected once from its
/// configuration: the job store, and the bus that announces jobs and job
/// events ([`StoreQueue`] on the embedded store, which has no Pub/Sub).
#[derive(Clone)]
pub struct Adapters {
    /// The job store, with job events on the bus when they are on.
    pub store: Store,
    /// Cloud Pub/Sub, or [`StoreQueue`].
    pub bus: Arc<dyn Bus>,
    /// The topic names.
    pub topics: Topics,
}

/// The adapters of a run on this machine (see [`Adapters::local`]).
pub struct LocalAdapters {
    /// The embedded store, announcing job events on `events`.
    pub adapters: Adapters,
    /// The in-process bus behind `adapters.bus`: job events are read from
    /// it as a push subscription would deliver them.
    pub events: Arc<MemoryBus>,
    /// The local object store: one directory per bucket.
    pub objects: Arc<dyn ObjectStore>,
}

impl Adapters {
    /// Everything a local run works through, under `state_dir`: the
    /// embedded store (`state_dir`), the in-process bus with every topic,
    /// publishing the store's job events, and the local object store
    /// (`state_dir/objects`).
    pub async fn local(state_dir: &Path) -> Result<LocalAdapters> {
        let events = Arc::new(MemoryBus::new());
        let topics = Topics::default();
        for topic in topics.all() {
            events.ensure_topic(&topic).await?;
        }
        let bus: Arc<dyn Bus> = events.clone();
        let store = Store::open(&StoreConfig::Embedded {
            state_dir: state_dir.to_path_buf(),
        })
        .await?
        .with_events(Arc::new(BusJobEvents::new(
            bus.clone(),
            topics.job_events(),
        )));
        Ok(LocalAdapters {
            adapters: Adapters { store, bus, topics },
            events,
            objects: Arc::new(LocalObjectStore::new(state_dir.join("objects"))),
        })
    }
}

impl StoreArgs {
    /// The store configuration.
    pub fn store_config(&self) -> Result<StoreConfig> {
        Ok(match self.backend {
            Backend::Embedded => StoreConfig::Embedded {
                state_dir: self.state_dir.clone(),
            },
            Backend::Firestore => StoreConfig::Firestore(FirestoreConfig {
                project: self.project()?,
                database: self.database.clone(),
                prefix: self.collection_prefix.clone(),
            }),
        })
    }

    /// The project, required by everything in the cloud.
    pub fn project(&self) -> Result<String> {
        self.project
            .as_deref()
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .ok_or_else(|| {
                Error::store(
                    "the firestore backend needs a project",
                    "pass --project or set GOOGLE_CLOUD_PROJECT",
                    false,
                )
            })
    }

    /// The pipeline's topic names.
    pub fn topics(&self) -> Topics {
        Topics::new(self.topic_prefix.clone())
    }

    /// How to reach Pub/Sub, on the Firestore backend; `None` on the
    /// embedded store, which has no Pub/Sub.
    pub fn pubsub(&self) -> Result<Option<PubSubConfig>> {
        Ok(match self.backend {
            Backend::Embedded => None,
            Backend::Firestore => Some(PubSubConfig {
                project: self.project()?,
                emulator_endpoint: self.pubsub_emulator_host.clone(),
            }),
        })
    }

    /// The bus: Cloud Pub/Sub on the Firestore backend; on the embedded
    /// store, whose workers take pending jobs from the store, one that
    /// reaches no one ([`StoreQueue`]).
    pub async fn bus(&self) -> Result<Arc<dyn Bus>> {
        match self.pubsub()? {
            Some(config) => Ok(Arc::new(PubSubBus::new(config).await?)),
            None => Ok(Arc::new(StoreQueue::default())),
        }
    }

    /// Connects the store and the bus. The bus comes first, so that one
    /// that cannot be reached fails the start before anything is written.
    pub async fn connect(&self) -> Result<Adapters> {
        self.connect_with(true).await
    }

    /// [`StoreArgs::connect`], or with `announce` false the store alone
    /// behind a bus that reaches no one and no job events: for reading, and
    /// for a process that never announces anything.
    pub async fn connect_with(&self, announce: bool) -> Result<Adapters> {
        let bus: Arc<dyn Bus> = if announce {
            self.bus().await?
        } else {
            Arc::new(StoreQueue::default())
        };
        let topics = self.topics();
        let store = Store::open(&self.store_config()?).await?;
        if !announce {
            return Ok(Adapters { store, bus, topics });
        }
        let store = if self.job_events && self.backend == Backend::Firestore {
            store.with_events(Arc::new(BusJobEvents::new(
                bus.clone(),
                topics.job_events(),
            )))
        } else {
            store
        };
        Ok(Adapters { store, bus, topics })
    }
}

/// The port an HTTP service listens on, and who may push to it.
#[derive(Clone, Debug, Args)]
pub struct ServeArgs {
    /// Port of the HTTP service.
    #[arg(long, env = "PORT", default_value = "8080")]
    pub port: u16,
    #[command(flatten)]
    pub identity: crate::identity::IdentityArgs,
}

/// Whether model calls are made (and paid for).
#[derive(Clone, Debug, Args)]
pub struct DryRunArgs {
    /// Write placeholder outputs instead of calling (and paying for) the
    /// models.
    #[arg(long, env = "DRY_RUN", default_value = "true", action = clap::ArgAction::Set,
          value_parser = clap::builder::BoolishValueParser::new(), value_name = "true|false")]
    pub dry_run: bool,
}

/// Where webhooks may go.
#[derive(Clone, Copy, Debug, Default, Args)]
pub struct WebhookNetworkArgs {
    /// Let webhooks be plain http:// and reach loopback, private and
    /// link-local addresses: for tests and a laptop, never a deployment
    /// (a webhook could then read the metadata server).
    #[arg(long, env = "WEBHOOK_ALLOW_PRIVATE_NETWORKS", default_value = "false", action = clap::ArgAction::Set,
          value_parser = clap::builder::BoolishValueParser::new(), value_name = "true|false")]
    pub allow_private_networks: bool,
}

/// Which models, and how to reach Vertex AI.
#[derive(Clone, Debug, Args)]
#[command(next_help_heading = "Vertex AI options")]
pub struct VertexArgs {
    /// Vertex AI region.
    #[arg(long, env = "GOOGLE_CLOUD_LOCATION", default_value = "us-central1")]
    pub location: String,
    /// Image model (imagen-* through :predict, gemini-* through :generateContent).
    #[arg(long, env = "IMAGE_MODEL", default_value = DEFAULT_IMAGE_MODEL)]
    pub image_model: String,
    /// Video model (veo-*).
    #[arg(long, env = "VIDEO_MODEL", default_value = DEFAULT_VIDEO_MODEL)]
    pub video_model: String,
    /// Vertex AI base URL [default: https://{location}-aiplatform.googleapis.com].
    #[arg(long, env = "VERTEX_BASE_URL")]
    pub vertex_base_url: Option<String>,
    /// A static bearer token for Vertex AI instead of Application Default Credentials.
    #[arg(long, env = "VERTEX_ACCESS_TOKEN", hide_env_values = true)]
    pub vertex_access_token: Option<crate::redact::Secret>,
    /// Resource Manager base URL, asked which permissions the caller holds.
    #[arg(long, env = "RESOURCE_MANAGER_BASE_URL", default_value = crate::vertex::RESOURCE_MANAGER_URL, hide = true)]
    pub resource_manager_base_url: String,
    /// Google OAuth 2.0 base URL, asked whose token the calls carry.
    #[arg(long, env = "OAUTH2_BASE_URL", default_value = crate::vertex::OAUTH2_URL, hide = true)]
    pub oauth2_base_url: String,
    /// Cloud Storage JSON API base URL, asked which permissions the caller
    /// holds on the output bucket.
    #[arg(long, env = "STORAGE_BASE_URL", default_value = crate::vertex::STORAGE_URL, hide = true)]
    pub storage_base_url: String,
    /// Pause between polls of running video operations.
    #[arg(long, env = "POLLING_INTERVAL", default_value = "15", value_parser = parse_duration)]
    pub polling_interval: Duration,
}

impl VertexArgs {
    /// How to reach Vertex AI in `project`, calls retried as `retry` says.
    pub fn config(
        &self,
        project: String,
        retry: RetryPolicy,
        request_timeout: Duration,
    ) -> VertexConfig {
        VertexConfig {
            project,
            location: self.location.clone(),
            base_url: self
                .vertex_base_url
                .clone()
                .unwrap_or_else(|| VertexConfig::default_base_url(&self.location)),
            image_model: self.image_model.clone(),
            video_model: self.video_model.clone(),
            retry,
            request_timeout,
            access_token: self.vertex_access_token.clone(),
            resource_manager_url: self.resource_manager_base_url.clone(),
            oauth2_url: self.oauth2_base_url.clone(),
            storage_url: self.storage_base_url.clone(),
        }
    }
}

/// The bucket(s) the generators write to and the downloader delivers from.
#[derive(Clone, Debug, Args)]
pub struct OutputArgs {
    /// Output bucket: where the generators write, and (comma-separated, one
    /// or more) whose objects the downloader delivers.
    #[arg(
        long = "output-bucket",
        env = "GCS_OUTPUT_BUCKET",
        value_delimiter = ','
    )]
    pub output_buckets: Vec<String>,
}

impl OutputArgs {
    /// The named buckets, blanks dropped; an error when there is none.
    pub fn all(&self) -> Result<Vec<String>> {
        let buckets: Vec<String> = self
            .output_buckets
            .iter()
            .map(|b| b.trim().to_string())
            .filter(|b| !b.is_empty())
            .collect();
        if buckets.is_empty() {
            return Err(Error::objects(
                "configuring the output bucket",
                "GCS_OUTPUT_BUCKET is not set",
                false,
            ));
        }
        Ok(buckets)
    }

    /// The one bucket a generator writes to.
    pub fn one(&self) -> Result<String> {
        let mut buckets = self.all()?;
        if buckets.len() > 1 {
            return Err(Error::objects(
                "configuring the output bucket",
                format!(
                    "GCS_OUTPUT_BUCKET names {} buckets; a generator writes to one",
                    buckets.len()
                ),
                false,
            ));
        }
        Ok(buckets.remove(0))
    }

    /// The buckets for the start-up log.
    pub fn describe(&self) -> String {
        if self.output_buckets.is_empty() {
            "-".into()
        } else {
            self.output_buckets.join(",")
        }
    }
}

/// Where the buckets are.
#[derive(Clone, Debug, Args)]
pub struct ObjectArgs {
    /// fake-gcs-server (http://host:port) instead of Cloud Storage.
    #[arg(long, env = "STORAGE_EMULATOR_HOST")]
    pub storage_emulator_host: Option<String>,
    /// A local directory (one sub-directory per bucket) instead of Cloud Storage.
    #[arg(long, env = "ASMR_OBJECTS_DIR")]
    pub objects_dir: Option<PathBuf>,
}

impl ObjectArgs {
    /// The object store: a local directory, or GCS (the emulator when set).
    pub async fn object_store(&self) -> Result<Arc<dyn ObjectStore>> {
        if let Some(dir) = &self.objects_dir {
            return Ok(Arc::new(LocalObjectStore::new(dir.clone())));
        }
        let config = GcsConfig {
            emulator_endpoint: self.storage_emulator_host.clone(),
        };
        Ok(Arc::new(GcsObjectStore::new(config).await?))
    }

    /// Which object store, in a word.
    pub fn describe(&self) -> String {
        self.objects_dir
            .as_ref()
            .map(|d| d.display().to_string())
            .or_else(|| self.storage_emulator_host.clone())
            .unwrap_or_else(|| "gcs".into())
    }
}

/// Everything a generation stage reads from the environment.
#[derive(Clone, Debug, Args)]
pub struct StageArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub vertex: VertexArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(flatten)]
    pub dry_run: DryRunArgs,
    /// Retries inside one model call.
    #[arg(long, env = "MAX_RETRIES", default_value = "3")]
    pub max_retries: u32,
    /// First back-off of a retry (seconds, or 500ms, 2m...).
    #[arg(long, env = "BASE_DELAY", default_value = "5", value_parser = parse_duration)]
    pub base_delay: Duration,
    /// Longest back-off.
    #[arg(long, env = "MAX_DELAY", default_value = "60", value_parser = parse_duration)]
    pub max_delay: Duration,
    /// How long a model call waits behind a spent quota (after a 429) for
    /// it to free before its job goes back to the queue.
    #[arg(long, env = "QUOTA_WAIT", default_value = "75", value_parser = parse_duration)]
    pub quota_wait: Duration,
    /// Time limit of each model HTTP request.
    #[arg(long, env = "VERTEX_TIMEOUT", default_value = "120", value_parser = parse_duration)]
    pub vertex_timeout: Duration,
    /// How long a generator's claim on a job lasts; the janitor requeues a
    /// job whose worker died once its claim has run out.
    #[arg(long, env = "LEASE_TTL", default_value = "900", value_parser = parse_duration)]
    pub lease_ttl: Duration,
    /// How long a video operation may run before it fails as timed out.
    #[arg(long, env = "OPERATION_TIMEOUT", default_value = "1800", value_parser = parse_duration)]
    pub operation_timeout: Duration,
    #[command(flatten)]
    pub serve: ServeArgs,
    /// Daily budget of paid model calls in US dollars (UTC day); unset: no
    /// limit. A job whose estimated cost does not fit waits as pending
    /// (budget_exhausted).
    #[arg(long, env = "BUDGET_USD_PER_DAY", value_parser = crate::cost::parse_usd)]
    pub budget_usd_per_day: Option<u64>,
    /// Prices over the built-in list, `MODEL=USD,...`: per image, or for
    /// veo-* models per second as WITH_AUDIO/WITHOUT_AUDIO; a trailing `*`
    /// names a family (`imagen-4.0-generate-001=0.04,veo-3.1-fast-*=0.15/0.10`).
    #[arg(long, env = "MODEL_PRICES")]
    pub model_prices: Option<String>,
    #[command(flatten)]
    pub objects: ObjectArgs,
}

impl StageArgs {
    /// Connects the store and the bus.
    pub async fn connect(&self) -> Result<Adapters> {
        self.store.connect().await
    }

    /// The object store.
    pub async fn object_store(&self) -> Result<Arc<dyn ObjectStore>> {
        self.objects.object_store().await
    }

    /// The output bucket, required by the generators.
    pub fn output_bucket(&self) -> Result<String> {
        self.output.one()
    }

    /// In-call retries of model calls.
    pub fn retry(&self) -> RetryPolicy {
        RetryPolicy {
            max_retries: self.max_retries,
            base_delay: self.base_delay,
            max_delay: self.max_delay,
            quota_wait: self.quota_wait,
        }
    }

    /// The cost guard: list prices with MODEL_PRICES over them, and the
    /// daily budget.
    pub fn cost_guard(&self) -> Result<crate::cost::CostGuard, String> {
        let prices = match &self.model_prices {
            Some(text) => crate::cost::PriceTable::list_prices()
                .with_overrides(text)
                .map_err(|e| format!("MODEL_PRICES: {e}"))?,
            None => crate::cost::PriceTable::list_prices(),
        };
        Ok(crate::cost::CostGuard {
            prices,
            budget_micros: self.budget_usd_per_day,
        })
    }

    /// How to reach Vertex AI.
    pub fn vertex(&self) -> VertexConfig {
        let project = self.store.project.clone().unwrap_or_default();
        self.vertex
            .config(project, self.retry(), self.vertex_timeout)
    }

    /// One line for the start-up log, secrets left out.
    pub fn summary(&self) -> String {
        format!(
            "backend={:?} project={} prefix={:?} bucket={} dry_run={} image_model={} video_model={} vertex={} token={} retries={} base_delay={:?} max_delay={:?} quota_wait={:?} operation_timeout={:?} polling_interval={:?} lease_ttl={:?} storage={} budget_per_day={} model_prices={}",
            self.store.backend,
            self.store.project.as_deref().unwrap_or("-"),
            self.store.collection_prefix,
            self.output.describe(),
            self.dry_run.dry_run,
            self.vertex.image_model,
            self.vertex.video_model,
            self.vertex().base_url,
            if self.vertex.vertex_access_token.is_some() {
                "static"
            } else {
                "adc"
            },
            self.max_retries,
            self.base_delay,
            self.max_delay,
            self.quota_wait,
            self.operation_timeout,
            self.vertex.polling_interval,
            self.lease_ttl,
            self.objects.describe(),
            self.budget_usd_per_day
                .map_or_else(|| "none".to_string(), crate::cost::format_usd),
            self.model_prices.as_deref().unwrap_or("list"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, expected: Result<Duration, &str>) {
        match (parse_duration(text), expected) {
            (Ok(got), Ok(want)) => assert_eq!(got, want, "{text}"),
            (Err(got), Err(want)) => assert!(got.contains(want), "{text}: {got}"),
            (got, want) => panic!("{text}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn a_static_vertex_token_never_prints() {
        #[derive(clap::Parser, Debug)]
        struct Cli {
            #[command(flatten)]
            vertex: VertexArgs,
        }
        use clap::Parser;
        let cli =
            Cli::try_parse_from(["stage", "--vertex-access-token", "ya29.do-not-print"]).unwrap();
        assert!(!format!("{cli:?}").contains("do-not-print"), "{cli:?}");
        let config = cli
            .vertex
            .config("p".into(), RetryPolicy::default(), Duration::from_secs(1));
        assert!(!format!("{config:?}").contains("do-not-print"));
        assert_eq!(
            config.access_token.as_ref().map(|t| t.expose()),
            Some("ya29.do-not-print")
        );
    }

    #[test]
    fn durations_read_as_seconds_or_with_a_unit() {
        check("5", Ok(Duration::from_secs(5)));
        check("0.25", Ok(Duration::from_millis(250)));
        check("500ms", Ok(Duration::from_millis(500)));
        check("2m", Ok(Duration::from_secs(120)));
        check("1h", Ok(Duration::from_secs(3600)));
        check("1 h", Ok(Duration::from_secs(3600)));
        check("3d", Ok(Duration::from_secs(3 * 86_400)));
        check("-1", Err("-1"));
        check("5 parsecs", Err("unknown unit"));
        check("soon", Err("is not a duration"));
    }
}
