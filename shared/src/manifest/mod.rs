//! Every delivered file is findable by its prompt: the destination holds
//! `manifest.jsonl`, one JSON object ([`ManifestLine`]) per delivered file,
//! and a copy in an archive bucket carries its job, prompt and model as
//! custom metadata ([`archive_metadata`]).
//!
//! The downloader appends a file's line once its copy is verified and
//! before the delivery is recorded ([`append`]); a failed append fails that
//! copy attempt, so the retry writes the line. Appends never tear and never
//! repeat a line: see [`append`] for how, on a directory and in a bucket.
//! [`rebuild`] writes the whole manifest again from the store.

pub mod append;
pub mod rebuild;

use crate::cost::{job_cost, model_of};
use crate::crc::Crc32c;
use crate::domain::job::Job;
use crate::domain::tenant::TenantName;
use crate::domain::values::{JobKind, JobParams};
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::LazyLock;

/// The manifest's name, at the root of the destination.
pub const MANIFEST_NAME: &str = "manifest.jsonl";
/// Custom metadata key of an archived copy: the job's prompt (shortened to
/// fit, see [`archive_metadata`]).
pub const PROMPT_METADATA: &str = "asmr-prompt";
/// Custom metadata key of an archived copy: the model that made it.
pub const MODEL_METADATA: &str = "asmr-model";
/// Cloud Storage's limit on all custom metadata keys and values of one
/// object together, in bytes.
pub const MAX_METADATA_BYTES: usize = 8 * 1024;
/// Cloud Storage's limit on one custom metadata value, in bytes.
pub const MAX_METADATA_VALUE_BYTES: usize = 4 * 1024;
/// Bytes of [`MAX_METADATA_BYTES`] left to the metadata the source object
/// already has (the generators set only `asmr-job-id`, which the archived
/// copy sets again).
const SOURCE_METADATA_RESERVE: usize = 1024;

/// The prices a line's `cost_usd` is estimated with.
static LIST_PRICES: LazyLock<crate::cost::PriceTable> =
    LazyLock::new(crate::cost::PriceTable::list_prices);

/// One delivered file, as one line of `manifest.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ManifestLine {
    /// The job that made the file.
    pub job_id: String,
    /// `image` or `video`.
    pub kind: JobKind,
    /// The prompt sent to the model.
    pub prompt: String,
    /// What the output must not show, when the job said.
    pub negative_prompt: Option<String>,
    /// The model: the job's `model` parameter, else the pipeline's default
    /// model of its kind (see [`model_of`]).
    pub model: String,
    /// The job's parameters, as the job records them.
    pub params: JobParams,
    /// The seed, when the job set one.
    pub seed: Option<u32>,
    /// The image a video was made from; `None` for a job made from text
    /// alone.
    pub parent: Option<String>,
    /// Where the file is, relative to the destination root, `/`-separated.
    pub path: String,
    /// Its size.
    pub bytes: u64,
    /// Its CRC32C (base64, as Cloud Storage writes it).
    pub crc32c: Crc32c,
    /// What the whole job (all its files) is estimated to cost at list
    /// prices on [`ManifestLine::model`], in US dollars; what the call would
    /// have cost for a dry run.
    pub cost_usd: f64,
    /// When the job was created (RFC 3339).
    pub created_at: Timestamp,
    /// When the file was delivered (RFC 3339).
    pub delivered_at: Timestamp,
    /// Whose job made it (absent for `default`, as in lines of before
    /// tenants).
    #[serde(default, skip_serializing_if = "TenantName::is_default")]
    pub tenant: TenantName,
}

impl ManifestLine {
    /// The line of the file `job` made, delivered at `path` (relative to
    /// the destination root) with `bytes` bytes and CRC32C `crc32c`.
    pub fn new(
        job: &Job,
        path: String,
        bytes: u64,
        crc32c: Crc32c,
        delivered_at: Timestamp,
    ) -> Self {
        let params = job.params();
        let model = model_of(job);
        let cost = job_cost(job, &LIST_PRICES);
        ManifestLine {
            job_id: job.id().to_string(),
            kind: job.kind(),
            prompt: job.prompt().to_string(),
            negative_prompt: params.negative_prompt.clone(),
            params: params.clone(),
            seed: params.seed,
            parent: job.parent().map(str::to_string),
            path,
            bytes,
            crc32c,
            cost_usd: crate::cost::usd(cost.micros),
            created_at: job.created_at(),
            delivered_at,
            model,
            tenant: job.tenant().clone(),
        }
    }

    /// The line as written: compact JSON (no raw newline can occur in it)
    /// and a final `\n`.
    pub fn to_bytes(&self) -> crate::error::Result<Vec<u8>> {
        let mut bytes = serde_json::to_vec(self).map_err(|e| {
            crate::error::Error::objects("writing a manifest line", e.to_string(), false)
        })?;
        bytes.push(b'\n');
        Ok(bytes)
    }

    /// What makes two lines the same delivered file.
    fn key(&self) -> LineKey {
        LineKey {
            path: self.path.clone(),
            crc32c: self.crc32c,
        }
    }
}

/// The identity of a delivered file in the manifest: its path and content.
/// A line with the same key is already there when a copy is redelivered.
#[derive(Debug, PartialEq, Eq, Deserialize)]
struct LineKey {
    path: String,
    crc32c: Crc32c,
}

impl LineKey {
    /// Whether one of the whole lines in `text` is this file. Lines that
    /// do not parse (the first one of a tail cut mid-line) are skipped.
    fn is_among(&self, text: &[u8]) -> bool {
        text.split(|b| *b == b'\n')
            .filter(|line| !line.is_empty())
            .filter_map(|line| serde_json::from_slice::<LineKey>(line).ok())
            .any(|key| key == *self)
    }
}

/// The custom metadata an archived copy of `job`'s output carries, so
/// Cloud Console shows where it came from: `asmr-job-id`, `asmr-model` and
/// `asmr-prompt`. The prompt is cut on a character boundary so that one
/// value stays within [`MAX_METADATA_VALUE_BYTES`] and all of it, with room
/// left for the source's own keys, within [`MAX_METADATA_BYTES`].
pub fn archive_metadata(job: &Job) -> BTreeMap<String, String> {
    let mut metadata = BTreeMap::from([
        (
            crate::objects::JOB_ID_METADATA.to_string(),
            job.id().to_string(),
        ),
        (MODEL_METADATA.to_string(), model_of(job)),
    ]);
    let used: usize = metadata.iter().map(|(k, v)| k.len() + v.len()).sum();
    let room = MAX_METADATA_BYTES
        .saturating_sub(SOURCE_METADATA_RESERVE + used + PROMPT_METADATA.len())
        .min(MAX_METADATA_VALUE_BYTES);
    metadata.insert(
        PROMPT_METADATA.to_string(),
        cut_to_bytes(job.prompt(), room).to_string(),
    );
    metadata
}

/// The longest start of `text` of at most `max` bytes that ends on a
/// character boundary.
fn cut_to_bytes(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Runs the file work `work` off the async threads; an I/O error, or a task
/// that died, is a retryable error of `context`.
async fn blocking<T: Send + 'static>(
    context: &str,
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> crate::error::Result<T> {
    use crate::error::Error;
    match tokio::task::spawn_blocking(work).await {
        Ok(Err(e)) if crate::beneath::is_refused(&e) => Err(Error::UnsafePath(e.to_string())),
        Ok(result) => result.map_err(|e| Error::objects(context, e, true)),
        Err(e) => Err(Error::objects(
            context,
            format!("the file task failed ({e})"),
            true,
        )),
    }
}

#[cfg(test)]
mod tests;
