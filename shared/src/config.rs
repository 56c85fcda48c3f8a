//! Configuration of the stage binaries, from the environment (and flags, for
//! `--help` and tests). Parsed once in `main`; nothing below reads the
//! environment.

use crate::bus::pubsub::{PubSubBus, PubSubConfig};
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
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Reads a duration: a plain number is seconds (`5`, `0.5`), anything else
/// is humantime (`500ms`, `2m`).
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
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?} (use ms, s, m or h)"
            ));
        }
    };
    Duration::try_from_secs_f64(value * scale).map_err(|e| format!("{text:?}: {e}"))
}

/// Which store the stages use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    /// Firestore (the cloud).
    Firestore,
    /// SQLite under ASMR_STATE_DIR (a local run).
    Embedded,
}

/// Where the job store is.
#[derive(Clone, Debug, Args)]
pub struct StoreArgs {
    /// Store adapter.
    #[arg(long, env = "ASMR_BACKEND", value_enum, default_value = "firestore")]
    pub backend: Backend,
    /// State directory of the embedded store.
    #[arg(long, env = "ASMR_STATE_DIR", default_value = ".asmr")]
    pub state_dir: PathBuf,
    /// Google Cloud project (Firestore, Vertex AI).
    #[arg(long, env = "GOOGLE_CLOUD_PROJECT")]
    pub project: Option<String>,
    /// Prefix of the Firestore collection names.
    #[arg(long, env = "ASMR_COLLECTION_PREFIX", default_value = "")]
    pub collection_prefix: String,
    /// Firestore database id.
    #[arg(long, env = "FIRESTORE_DATABASE", default_value = "(default)")]
    pub database: String,
    /// Firestore emulator (host:port); when set no credentials are needed.
    /// Read by the Firestore client itself; listed here for --help.
    #[arg(long, env = "FIRESTORE_EMULATOR_HOST")]
    pub firestore_emulator_host: Option<String>,
    /// Pub/Sub emulator (host:port); when set no credentials are needed.
    #[arg(long, env = "PUBSUB_EMULATOR_HOST")]
    pub pubsub_emulator_host: Option<String>,
    /// Prefix of the Pub/Sub topic names (`dev-` gives `dev-asmr-job-events`).
    #[arg(long, env = "ASMR_TOPIC_PREFIX", default_value = "")]
    pub topic_prefix: String,
    /// Publish a job event on every terminal transition (Firestore store
    /// only; the local run publishes its own in process).
    #[arg(long, env = "ASMR_JOB_EVENTS", default_value = "true", action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    pub job_events: bool,
}

impl StoreArgs {
    /// The store configuration.
    pub fn store_config(&self) -> Result<StoreConfig> {
        Ok(match self.backend {
            Backend::Embedded => StoreConfig::Embedded {
                state_dir: self.state_dir.clone(),
            },
            Backend::Firestore => StoreConfig::Firestore(FirestoreConfig {
                project: self.project.clone().ok_or_else(|| {
                    Error::store(
                        "configuring Firestore",
                        "GOOGLE_CLOUD_PROJECT is not set",
                        false,
                    )
                })?,
                database: self.database.clone(),
                prefix: self.collection_prefix.clone(),
            }),
        })
    }

    /// The pipeline's topic names.
    pub fn topics(&self) -> Topics {
        Topics::new(self.topic_prefix.clone())
    }

    /// The Pub/Sub bus, for a Firestore deployment; `None` on the embedded
    /// store, which has no Pub/Sub.
    pub async fn bus(&self) -> Result<Option<Arc<dyn Bus>>> {
        match self.backend {
            Backend::Embedded => Ok(None),
            Backend::Firestore => {
                let project = self.project.clone().ok_or_else(|| {
                    Error::store(
                        "configuring Pub/Sub",
                        "GOOGLE_CLOUD_PROJECT is not set",
                        false,
                    )
                })?;
                let bus = PubSubBus::new(PubSubConfig {
                    project,
                    emulator_endpoint: self.pubsub_emulator_host.clone(),
                })
                .await?;
                Ok(Some(Arc::new(bus)))
            }
        }
    }

    /// Opens the store, publishing job events to `bus` when they are on.
    pub async fn open_with(&self, bus: Option<Arc<dyn Bus>>) -> Result<Store> {
        let store = Store::open(&self.store_config()?).await?;
        Ok(match bus {
            Some(bus) if self.job_events => {
                store.with_events(Arc::new(BusJobEvents::new(bus, self.topics().job_events())))
            }
            _ => store,
        })
    }

    /// Opens the store with job events on the Pub/Sub bus when they are on.
    pub async fn open(&self) -> Result<Store> {
        let bus = if self.job_events {
            self.bus().await?
        } else {
            None
        };
        self.open_with(bus).await
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
    /// Vertex AI region.
    #[arg(long, env = "GOOGLE_CLOUD_LOCATION", default_value = "us-central1")]
    pub location: String,
    /// Bucket the generators write outputs to.
    #[arg(long, env = "GCS_OUTPUT_BUCKET")]
    pub output_bucket: Option<String>,
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
    pub vertex_access_token: Option<String>,
    /// Placeholders instead of paid model calls.
    #[arg(long, env = "DRY_RUN", default_value = "true", action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    pub dry_run: bool,
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
    /// Pause between rounds of the video poller.
    #[arg(long, env = "POLLING_INTERVAL", default_value = "15", value_parser = parse_duration)]
    pub polling_interval: Duration,
    /// Port of the HTTP service.
    #[arg(long, env = "PORT", default_value = "8080")]
    pub port: u16,
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
    /// Opens the job store.
    pub async fn open_store(&self) -> Result<Store> {
        self.store.open().await
    }

    /// The object store.
    pub async fn object_store(&self) -> Result<Arc<dyn ObjectStore>> {
        self.objects.object_store().await
    }

    /// The output bucket, required by the generators.
    pub fn output_bucket(&self) -> Result<String> {
        self.output_bucket
            .clone()
            .filter(|b| !b.trim().is_empty())
            .ok_or_else(|| {
                Error::objects(
                    "configuring the generator",
                    "GCS_OUTPUT_BUCKET is not set",
                    false,
                )
            })
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
    pub fn cost_guard(&self) -> Result<crate::generate::CostGuard, String> {
        let prices = match &self.model_prices {
            Some(text) => crate::cost::PriceTable::list_prices()
                .with_overrides(text)
                .map_err(|e| format!("MODEL_PRICES: {e}"))?,
            None => crate::cost::PriceTable::list_prices(),
        };
        Ok(crate::generate::CostGuard {
            prices,
            budget_micros: self.budget_usd_per_day,
        })
    }

    /// How to reach Vertex AI.
    pub fn vertex(&self) -> VertexConfig {
        VertexConfig {
            project: self.store.project.clone().unwrap_or_default(),
            location: self.location.clone(),
            base_url: self
                .vertex_base_url
                .clone()
                .unwrap_or_else(|| VertexConfig::default_base_url(&self.location)),
            image_model: self.image_model.clone(),
            video_model: self.video_model.clone(),
            retry: self.retry(),
            request_timeout: self.vertex_timeout,
            access_token: self.vertex_access_token.clone(),
        }
    }

    /// One line for the start-up log, secrets left out.
    pub fn summary(&self) -> String {
        format!(
            "backend={:?} project={} prefix={:?} bucket={} dry_run={} image_model={} video_model={} vertex={} token={} retries={} base_delay={:?} max_delay={:?} quota_wait={:?} operation_timeout={:?} polling_interval={:?} lease_ttl={:?} storage={} budget_per_day={} model_prices={}",
            self.store.backend,
            self.store.project.as_deref().unwrap_or("-"),
            self.store.collection_prefix,
            self.output_bucket.as_deref().unwrap_or("-"),
            self.dry_run,
            self.image_model,
            self.video_model,
            self.vertex().base_url,
            if self.vertex_access_token.is_some() {
                "static"
            } else {
                "adc"
            },
            self.max_retries,
            self.base_delay,
            self.max_delay,
            self.quota_wait,
            self.operation_timeout,
            self.polling_interval,
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
    fn durations_read_as_seconds_or_with_a_unit() {
        check("5", Ok(Duration::from_secs(5)));
        check("0.25", Ok(Duration::from_millis(250)));
        check("500ms", Ok(Duration::from_millis(500)));
        check("2m", Ok(Duration::from_secs(120)));
        check("1h", Ok(Duration::from_secs(3600)));
        check("1 h", Ok(Duration::from_secs(3600)));
        check("-1", Err("-1"));
        check("5 parsecs", Err("unknown unit"));
        check("soon", Err("is not a duration"));
    }
}
