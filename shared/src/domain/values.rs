//! The words of a job: its kinds, statuses, parameters, error and wait
//! codes, and the values it carries (deliveries, reservations, held
//! outputs), and what a new job is made from.

use super::destination::Target;
use super::gs_uri::GsUri;
use super::invalid::ValidationError;
use crate::time::Timestamp;
use serde::{Deserialize, Deserializer, Serialize};
use std::fmt;
use std::str::FromStr;

/// How many times a job may be claimed before it fails for good.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;

/// Error code of a job whose claims were all used up.
pub const ATTEMPTS_EXHAUSTED: &str = "attempts_exhausted";
/// Error code of a job whose output the model's safety filters withheld. Such
/// a job is never sent to the model again unless an operator insists.
pub const FILTERED: &str = "filtered";
/// Error code of a job whose paid request went out and whose outcome is not
/// known (a time-out after sending, a broken connection, a worker that
/// vanished mid-call). It is never sent again blindly: a video waits for
/// its output to appear under its prefix; an image, whose bytes came back
/// only in the lost answer, fails with the cost booked. Only an operator's
/// `asmr retry --resubmit` pays again.
pub const SUBMIT_UNKNOWN: &str = "submit_unknown";
/// Error code of a video whose operation ran past OPERATION_TIMEOUT.
pub const TIMED_OUT: &str = "timed_out";
/// Error code of a video whose Veo operation ended with an error.
pub const OPERATION_FAILED: &str = "operation_failed";

/// Why a pending job waits: claiming it would take the day's spending past
/// the budget (`BUDGET_USD_PER_DAY`). It is claimed once the day rolls over
/// or the budget is raised.
pub const BUDGET_EXHAUSTED: &str = "budget_exhausted";
/// Why a pending job waits: the model's quota is spent (429). The model is
/// saying "later", so waiting uses up no attempt, however long it lasts.
pub const QUOTA_EXHAUSTED: &str = "quota_exhausted";
/// Why a pending job waits: the deployment cannot reach a service (no
/// credentials, a missing role: 401/403). The job is not at fault; it
/// resumes once the configuration is fixed.
pub const MISCONFIGURED: &str = "misconfigured";
/// Why a pending job waits: its outputs were generated and paid for, but
/// the output bucket could not take them; they are held in the store and
/// the next claim writes them instead of calling the model again.
pub const STORAGE_UNAVAILABLE: &str = "storage_unavailable";

/// Every reason a pending job may wait, none of which costs an attempt.
pub const WAIT_REASONS: [&str; 4] = [
    BUDGET_EXHAUSTED,
    QUOTA_EXHAUSTED,
    MISCONFIGURED,
    STORAGE_UNAVAILABLE,
];

/// What a person can do about jobs waiting for `reason`, or how long they
/// should expect to wait: said next to the count wherever waiting jobs are
/// shown (the local run, the live page).
pub fn wait_advice(reason: &str) -> &'static str {
    match reason {
        BUDGET_EXHAUSTED => {
            "today's spending cap is reached: they wait for a larger budget (asmr run --budget USD) or the next UTC day; nothing is paid twice"
        }
        QUOTA_EXHAUSTED => {
            "the model's quota is spent: they are tried again as it frees up (usually within a minute or two), using no attempt; ask for more quota if it stays spent"
        }
        MISCONFIGURED => {
            "the model refused this caller (credentials or a permission; the error says which): fix it, and they are tried again without using attempts"
        }
        STORAGE_UNAVAILABLE => {
            "Cloud Storage did not take outputs already paid for: they are held and written when it answers again, without calling the model again"
        }
        _ => "they wait without using attempts",
    }
}

/// What a job makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    /// A still image (Imagen or a Gemini image model).
    Image,
    /// A video clip (Veo).
    Video,
}

impl JobKind {
    /// Both kinds, in display order.
    pub const ALL: [JobKind; 2] = [JobKind::Image, JobKind::Video];

    /// The name used in documents, messages and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Image => "image",
            JobKind::Video => "video",
        }
    }
}

impl fmt::Display for JobKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobKind {
    type Err = ValidationError;

    /// Accepts `image` and `video` in any case, and the job-type names
    /// `IMAGE_TEST` and `VIDEO_PROD`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim().to_ascii_lowercase().as_str() {
            "image" | "image_test" => Ok(JobKind::Image),
            "video" | "video_prod" => Ok(JobKind::Video),
            _ => Err(ValidationError::new(
                "kind",
                format!("{text:?} is not a job kind; use image or video"),
            )),
        }
    }
}

impl<'de> Deserialize<'de> for JobKind {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Where a job stands. The README draws the state machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    /// Waiting for a generator.
    Pending,
    /// Claimed by a generator, which holds the lease.
    Processing,
    /// A long-running model operation was submitted (video).
    Generating,
    /// Outputs exist in the output bucket; delivery follows.
    Completed,
    /// Every output was copied to the destination.
    Delivered,
    /// Gave up; `error` says why.
    Failed,
    /// Stopped by an operator.
    Cancelled,
}

impl JobStatus {
    /// Every status, in pipeline order.
    pub const ALL: [JobStatus; 7] = [
        JobStatus::Pending,
        JobStatus::Processing,
        JobStatus::Generating,
        JobStatus::Completed,
        JobStatus::Delivered,
        JobStatus::Failed,
        JobStatus::Cancelled,
    ];

    /// The name used in documents and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Pending => "pending",
            JobStatus::Processing => "processing",
            JobStatus::Generating => "generating",
            JobStatus::Completed => "completed",
            JobStatus::Delivered => "delivered",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    /// No transition leaves these, except an operator's retry of a failed or
    /// cancelled job.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Delivered | JobStatus::Failed | JobStatus::Cancelled
        )
    }

    /// A worker holds a lease on jobs in these statuses.
    pub fn is_leased(self) -> bool {
        matches!(self, JobStatus::Processing | JobStatus::Generating)
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobStatus {
    type Err = ValidationError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let wanted = text.trim().to_ascii_lowercase();
        JobStatus::ALL
            .into_iter()
            .find(|s| s.as_str() == wanted)
            .ok_or_else(|| {
                let all = JobStatus::ALL.map(JobStatus::as_str).join(", ");
                ValidationError::new(
                    "status",
                    format!("{text:?} is not a job status; use one of {all}"),
                )
            })
    }
}

/// Model parameters of a job. Every field is optional: the generator fills in
/// the model's default for what is missing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobParams {
    /// `16:9`, `9:16`, `1:1`...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aspect_ratio: Option<String>,
    /// Outputs per request, 1 to 4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_count: Option<u32>,
    /// Video length: 4, 6 or 8 seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<u32>,
    /// What the output must not show.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub negative_prompt: Option<String>,
    /// Seed for repeatable output, where the model honours it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u32>,
    /// Veo 3: whether the clip has sound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generate_audio: Option<bool>,
    /// `720p`, `1080p`, `4k` for video; `1K`, `2K` for images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolution: Option<String>,
    /// A model id that overrides IMAGE_MODEL / VIDEO_MODEL for this job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

impl JobParams {
    /// The parameter names [`JobParams::set`] knows.
    pub const KEYS: [&'static str; 8] = [
        "aspect_ratio",
        "sample_count",
        "duration_seconds",
        "negative_prompt",
        "seed",
        "generate_audio",
        "resolution",
        "model",
    ];

    /// Sets one parameter from text, as `--param key=value` gives it.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ValidationError> {
        let field = format!("params.{key}");
        let number = |value: &str| {
            value.trim().parse::<u32>().map_err(|_| {
                ValidationError::new(&field, format!("{value:?} is not a whole number"))
            })
        };
        let text = Some(value.to_string());
        match key {
            "aspect_ratio" => self.aspect_ratio = text,
            "sample_count" => self.sample_count = Some(number(value)?),
            "duration_seconds" | "duration" => self.duration_seconds = Some(number(value)?),
            "negative_prompt" => self.negative_prompt = text,
            "seed" => self.seed = Some(number(value)?),
            "generate_audio" => {
                self.generate_audio = Some(match value.trim().to_ascii_lowercase().as_str() {
                    "true" | "yes" | "1" | "on" => true,
                    "false" | "no" | "0" | "off" => false,
                    _ => {
                        return Err(ValidationError::new(
                            field,
                            format!("{value:?} is not true or false"),
                        ));
                    }
                })
            }
            "resolution" => self.resolution = text,
            "model" => self.model = text,
            _ => {
                return Err(ValidationError::new(
                    "params",
                    format!(
                        "unknown parameter {key:?}; known are {}",
                        Self::KEYS.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Why a job or a download failed (or last failed).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobError {
    /// A short stable code: `filtered`, `rate_limited`, `attempts_exhausted`...
    pub code: String,
    /// What happened, as the model or the store said it.
    pub message: String,
    /// Whether trying again can help.
    pub retryable: bool,
}

impl JobError {
    /// An error with the given code and message.
    pub fn new(code: impl Into<String>, message: impl Into<String>, retryable: bool) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
            retryable,
        }
    }
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// One output copied to the destination.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveredOutput {
    /// The output it copies (`gs://bucket/images/{job}/0.png`).
    pub source: GsUri,
    /// Where the copy is (`gs://archive/...` or a path under the volume).
    pub destination: Target,
}

/// The estimated cost of a paid model call, reserved against one day's
/// budget when the job was claimed, until the call's outcome settles it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    /// The UTC day (`YYYY-MM-DD`) whose budget holds it.
    pub day: String,
    /// Micro-dollars reserved.
    pub micros: u64,
    /// The claim that made it (the lease owner), so that a late settlement by
    /// an earlier holder cannot touch a later claim's reservation.
    pub owner: String,
    /// The budget shard that holds it (`None`: the day's main document, as
    /// for reservations made before budgets had shards).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<u32>,
    /// The id of the charge record its settlement creates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub charge: Option<String>,
}

/// An output that was generated and paid for but not yet written to the
/// output bucket. Its bytes are kept in the store, in `chunks` documents,
/// until the next claim writes them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldOutput {
    /// Names its chunks in the store: `{key}.{n}` for n in `0..chunks`.
    pub key: String,
    /// Object name in the output bucket (`images/{job}/0.png`).
    pub name: String,
    /// MIME type.
    pub content_type: String,
    /// Size in bytes.
    pub size: u64,
    /// CRC32C of the bytes, checked when they are read back.
    pub crc32c: crate::crc::Crc32c,
    /// How many store documents hold the bytes.
    pub chunks: u32,
}

/// What an operator's retry may do beyond putting a job back in the queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetryOptions {
    /// Send again a job the safety filters stopped.
    pub include_filtered: bool,
    /// Pay again for a job whose last paid request has an unknown outcome
    /// (`submit_unknown`): it may already have been billed.
    pub resubmit: bool,
}

/// What a reviewer said of an image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Good enough to pay for a video of it.
    Approved,
    /// Not worth a video.
    Rejected,
}

impl Verdict {
    /// The name used in documents, the API and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Approved => "approved",
            Verdict::Rejected => "rejected",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Verdict {
    type Err = ValidationError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim().to_ascii_lowercase().as_str() {
            "approved" | "approve" => Ok(Verdict::Approved),
            "rejected" | "reject" => Ok(Verdict::Rejected),
            _ => Err(ValidationError::new(
                "verdict",
                format!("{text:?} is not a verdict; use approved or rejected"),
            )),
        }
    }
}

/// A reviewer's mark on an image. Reviewing again replaces it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Review {
    /// Approved or rejected.
    pub verdict: Verdict,
    /// Why, in the reviewer's words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When the verdict was given.
    pub at: Timestamp,
}

/// What to make of a job once it is delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Chain {
    /// When this image is delivered, make a video that opens on it.
    Video,
}

/// Error code of a video whose first frame is not in Cloud Storage (any
/// more) when its generator takes it: nothing is sent, nothing is paid.
pub const FIRST_FRAME_MISSING: &str = "first_frame_missing";

/// The MIME types Veo takes as a first frame.
pub const FIRST_FRAME_TYPES: [&str; 2] = ["image/png", "image/jpeg"];

/// The image a video starts from: an object in Cloud Storage that Veo
/// reads as the video's first frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirstFrame {
    /// `gs://bucket/object`.
    pub gcs_uri: String,
    /// `image/png` or `image/jpeg`.
    pub mime_type: String,
}

impl FirstFrame {
    /// The first frame for the image at `uri`, its MIME type read from the
    /// extension (`.png`, `.jpg`, `.jpeg`); `None` for anything else.
    pub fn of_image(uri: &str) -> Option<Self> {
        let extension = uri.rsplit_once('.')?.1.to_ascii_lowercase();
        let mime_type = match extension.as_str() {
            "png" => "image/png",
            "jpg" | "jpeg" => "image/jpeg",
            _ => return None,
        };
        Some(Self {
            gcs_uri: uri.to_string(),
            mime_type: mime_type.to_string(),
        })
    }

    /// The bucket and object name of `gcs_uri`, when it is
    /// `gs://bucket/object` with neither part empty.
    pub fn location(&self) -> Option<(&str, &str)> {
        let (bucket, object) = self.gcs_uri.strip_prefix("gs://")?.split_once('/')?;
        (!bucket.is_empty() && !object.is_empty()).then_some((bucket, object))
    }

    /// Checks the address and the type Veo will be sent.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.location().is_none() {
            return Err(ValidationError::new(
                "first_frame.gcs_uri",
                format!("{:?} is not gs://bucket/object", self.gcs_uri),
            ));
        }
        if !FIRST_FRAME_TYPES.contains(&self.mime_type.as_str()) {
            return Err(ValidationError::new(
                "first_frame.mime_type",
                format!(
                    "{:?} is not accepted; Veo takes {}",
                    self.mime_type,
                    FIRST_FRAME_TYPES.join(" or ")
                ),
            ));
        }
        Ok(())
    }
}
