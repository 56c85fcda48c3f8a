//! Job requests, in the three forms the public interface accepts, turned
//! into validated [`NewJob`]s. One parser for every way in: the Pub/Sub push
//! of `asmr-requests`, `POST /v1/jobs`, and `asmr add`.
//!
//! - a JSON object: `{"prompt", "kind", "request_id", "priority", "params",
//!   "chain"}` (`"chain": "video"` on an image: make a video of it once it is
//!   delivered);
//! - a batch: `{"kind", "prompts": [...], "params", "priority", "request_id",
//!   "chain"}`;
//! - a plain-text body that is the prompt, with `kind` (and optionally
//!   `request_id`, `priority`) as message attributes, so that
//!   `gcloud pubsub topics publish asmr-requests --message "..." --attribute kind=video`
//!   works.
//!
//! Any of them may name a `webhook` (an `https://` URL) and a
//! `webhook_events_filter` (`start`, `output`, `completed`; output and
//! completed when left out), as body fields or, for plain text, attributes.
//!
//! `kind` is required, in the body or as an attribute; it is never guessed.
//! Unknown fields and parameters are refused rather than ignored, so a typo
//! (`"promt"`, `"aspect"`) is reported instead of silently changing the job.
//! The idempotency key is the request's `request_id`, else the Pub/Sub
//! message id; a batch's n-th prompt gets `{key}#{n}`.

use crate::domain::invalid::ValidationError;
use crate::domain::job::NewJob;
use crate::domain::tenant::TenantName;
use crate::domain::values::Chain;
use crate::domain::values::{JobKind, JobParams};
use crate::domain::webhook::Webhook;
use crate::redact::json_error;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;

/// The most prompts one batch may carry.
pub const MAX_BATCH: usize = 1000;
/// The largest request body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// Why a request was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Rejection {
    /// One sentence for whoever sent it, and for the rejected record: it
    /// may quote the request.
    pub reason: String,
    /// The same without a word of the request (a class of mistake and
    /// where it is): what the logs carry, since a prompt is the caller's.
    pub class: String,
    /// The request names another tenant than the one its way in
    /// identified: not a mistake of form but one of permission (HTTP 403).
    pub other_tenant: bool,
}

impl Rejection {
    fn new(class: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            class: class.into(),
            other_tenant: false,
        }
    }

    /// A rejection whose reason quotes nothing of the request.
    fn plain(reason: impl Into<String>) -> Self {
        let reason = reason.into();
        Self::new(reason.clone(), reason)
    }
}

impl From<ValidationError> for Rejection {
    fn from(e: ValidationError) -> Self {
        Rejection::new(e.class(), e.to_string())
    }
}

/// Where a request came from, beside its body.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// Pub/Sub message attributes (empty over HTTP).
    pub attributes: BTreeMap<String, String>,
    /// The Pub/Sub message id, the idempotency key of last resort.
    pub message_id: Option<&'a str>,
    /// Whether the jobs are dry runs (the service's DRY_RUN).
    pub dry_run: bool,
    /// The tenant the way in identified (an API key's, a `tenant`
    /// attribute's, `--tenant`): the jobs are its, and a body that names
    /// another is refused.
    pub tenant: TenantName,
    /// Whether a webhook may be `http://` or name a private address
    /// (`WEBHOOK_ALLOW_PRIVATE_NETWORKS`).
    pub private_webhooks: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    #[serde(default)]
    prompt: Option<String>,
    #[serde(default)]
    prompts: Option<Vec<String>>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    request_id: Option<String>,
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    priority: Option<i64>,
    #[serde(default)]
    params: Option<serde_json::Map<String, Value>>,
    #[serde(default)]
    chain: Option<Chain>,
    #[serde(default)]
    webhook: Option<String>,
    #[serde(default)]
    webhook_events_filter: Option<Vec<String>>,
}

fn params_from(map: &serde_json::Map<String, Value>) -> Result<JobParams, Rejection> {
    let mut params = JobParams::default();
    for (key, value) in map {
        let text = match value {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Null => continue,
            _ => {
                return Err(Rejection::new(
                    "invalid params: a value of the wrong type",
                    format!("params.{key}: must be a string, a number or true/false"),
                ));
            }
        };
        params.set(key, &text)?;
    }
    Ok(params)
}

fn kind_from(
    body: Option<&str>,
    attributes: &BTreeMap<String, String>,
) -> Result<JobKind, Rejection> {
    match body.or(attributes.get("kind").map(String::as_str)) {
        Some(kind) => Ok(kind.parse()?),
        None => Err(Rejection::plain(
            "kind is missing: give \"kind\": \"image\" or \"video\" in the body, or a kind attribute",
        )),
    }
}

/// Parses and validates one request. Returns the jobs to create, each with
/// its idempotency key, or why the whole request is refused.
pub fn parse(body: &[u8], envelope: &Envelope<'_>) -> Result<Vec<NewJob>, Rejection> {
    if body.len() > MAX_BODY_BYTES {
        return Err(Rejection::plain(format!(
            "the request is {} bytes; the limit is {MAX_BODY_BYTES}",
            body.len()
        )));
    }
    let text =
        std::str::from_utf8(body).map_err(|_| Rejection::plain("the request is not UTF-8 text"))?;
    let attributes = &envelope.attributes;
    let trimmed = text.trim_start();
    let parsed: Body = if trimmed.starts_with('{') {
        serde_json::from_str(text).map_err(|e| {
            Rejection::new(
                format!("the request is not valid JSON: {}", json_error(&e)),
                format!("the request is not valid JSON: {e}"),
            )
        })?
    } else {
        // Plain text: the body is the prompt; the rest comes from attributes.
        let priority = match attributes.get("priority") {
            Some(p) => Some(p.trim().parse().map_err(|_| {
                Rejection::new(
                    "the priority attribute is not a whole number",
                    format!("priority attribute {p:?} is not a whole number"),
                )
            })?),
            None => None,
        };
        Body {
            prompt: Some(text.to_string()),
            prompts: None,
            kind: None,
            request_id: None,
            tenant: None,
            priority,
            params: None,
            chain: None,
            webhook: attributes.get("webhook").cloned(),
            webhook_events_filter: attributes.get("webhook_events_filter").map(|names| {
                names
                    .split(',')
                    .map(|name| name.trim().to_string())
                    .collect()
            }),
        }
    };
    if let Some(named) = &parsed.tenant
        && *named != envelope.tenant.as_str()
    {
        return Err(Rejection {
            other_tenant: true,
            ..Rejection::plain(format!(
                "the request names tenant {:?}, but comes from tenant {}",
                crate::redact::clipped(named),
                envelope.tenant
            ))
        });
    }
    let kind = kind_from(parsed.kind.as_deref(), attributes)?;
    let params = match &parsed.params {
        Some(map) => params_from(map)?,
        None => JobParams::default(),
    };
    let webhook = match &parsed.webhook {
        Some(url) => Some(Webhook::new(
            url,
            parsed.webhook_events_filter.as_deref(),
            envelope.private_webhooks,
        )?),
        None if parsed.webhook_events_filter.is_some() => {
            return Err(Rejection::plain(
                "webhook_events_filter needs a webhook: give \"webhook\": \"https://...\"",
            ));
        }
        None => None,
    };
    let key = parsed
        .request_id
        .or_else(|| attributes.get("request_id").cloned())
        .or_else(|| envelope.message_id.map(str::to_string));
    let prompts: Vec<(Option<String>, String)> = match (parsed.prompt, parsed.prompts) {
        (Some(_), Some(_)) => {
            return Err(Rejection::plain(
                "give either \"prompt\" or \"prompts\", not both",
            ));
        }
        (None, None) => {
            return Err(Rejection::plain(
                "the request has no \"prompt\" and no \"prompts\"",
            ));
        }
        (Some(prompt), None) => vec![(key, prompt)],
        (None, Some(prompts)) => {
            if prompts.is_empty() {
                return Err(Rejection::plain("\"prompts\" is empty"));
            }
            if prompts.len() > MAX_BATCH {
                return Err(Rejection::plain(format!(
                    "the batch has {} prompts; the limit is {MAX_BATCH}",
                    prompts.len()
                )));
            }
            prompts
                .into_iter()
                .enumerate()
                .map(|(n, prompt)| (key.as_ref().map(|k| format!("{k}#{n}")), prompt))
                .collect()
        }
    };
    let batch = prompts.len() > 1;
    let mut jobs = Vec::with_capacity(prompts.len());
    for (n, (request_id, prompt)) in prompts.into_iter().enumerate() {
        let mut job = NewJob::new(prompt, kind);
        job.params = params.clone();
        job.priority = parsed.priority.unwrap_or(0);
        job.request_id = request_id;
        job.dry_run = envelope.dry_run;
        job.chain = parsed.chain;
        job.tenant = envelope.tenant.clone();
        job.webhook = webhook.clone();
        job.validate().map_err(|e| match batch {
            true => Rejection::new(
                format!("prompts[{n}]: {}", e.class()),
                format!("prompts[{n}]: {e}"),
            ),
            false => Rejection::from(e),
        })?;
        jobs.push(job);
    }
    Ok(jobs)
}

/// The prompt lines of a prompts file, numbered from 1: blank lines and lines
/// whose first non-blank character is `#` are left out; a line that cannot be
/// a prompt comes with the reason. The one reading of a prompts file, for
/// `asmr add --file` and `asmr run`.
pub fn prompt_lines(bytes: &[u8]) -> Vec<(usize, Result<String, ValidationError>)> {
    let mut lines = Vec::new();
    for (index, raw) in bytes.split(|b| *b == b'\n').enumerate() {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let raw = match index {
            0 => raw.strip_prefix("\u{feff}".as_bytes()).unwrap_or(raw),
            _ => raw,
        };
        let trimmed = raw.trim_ascii();
        if trimmed.is_empty() || trimmed.starts_with(b"#") {
            continue;
        }
        let prompt = match std::str::from_utf8(trimmed) {
            Ok(text) if text.trim().is_empty() => continue,
            Ok(text) => Ok(text.trim().to_string()),
            Err(_) => Err(ValidationError::new("prompt", "is not valid UTF-8")),
        };
        lines.push((index + 1, prompt));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(
        attributes: &[(&str, &str)],
        message_id: Option<&'static str>,
    ) -> Envelope<'static> {
        Envelope {
            attributes: attributes
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            message_id,
            dry_run: true,
            ..Default::default()
        }
    }

    /// A job as the tests expect it: prompt, kind, idempotency key.
    type Expected<'a> = (&'a str, JobKind, Option<&'a str>);

    fn check(body: &str, attributes: &[(&str, &str)], expected: Result<&[Expected<'_>], &str>) {
        let got = parse(body.as_bytes(), &envelope(attributes, Some("m-1")));
        match (got, expected) {
            (Ok(jobs), Ok(want)) => {
                let got: Vec<_> = jobs
                    .iter()
                    .map(|j| (j.prompt.as_str(), j.kind, j.request_id.as_deref()))
                    .collect();
                assert_eq!(got, want.to_vec(), "{body}");
            }
            (Err(Rejection { reason: got, .. }), Err(want)) => {
                assert!(got.contains(want), "{body}: {got:?} lacks {want:?}")
            }
            (got, want) => panic!("{body}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn the_three_forms_become_jobs_with_their_idempotency_keys() {
        use JobKind::{Image, Video};
        check(
            r#"{"prompt": "rain", "kind": "video", "request_id": "r1"}"#,
            &[],
            Ok(&[("rain", Video, Some("r1"))]),
        );
        check(
            r#"{"prompt": "rain", "kind": "IMAGE_TEST"}"#,
            &[],
            Ok(&[("rain", Image, Some("m-1"))]),
        );
        check(
            r#"{"prompt": "rain"}"#,
            &[("kind", "VIDEO_PROD")],
            Ok(&[("rain", Video, Some("m-1"))]),
        );
        check(
            r#"{"kind": "image", "prompts": ["a", "b"], "request_id": "batch"}"#,
            &[],
            Ok(&[("a", Image, Some("batch#0")), ("b", Image, Some("batch#1"))]),
        );
        check(
            r#"{"kind": "image", "prompts": ["a"]}"#,
            &[],
            Ok(&[("a", Image, Some("m-1#0"))]),
        );
        check(
            "soft whispers\nand rain",
            &[("kind", "video")],
            Ok(&[("soft whispers\nand rain", Video, Some("m-1"))]),
        );
        check(
            "tapping",
            &[("kind", "image"), ("request_id", "cli-7")],
            Ok(&[("tapping", Image, Some("cli-7"))]),
        );
    }

    #[test]
    fn an_image_request_may_ask_for_a_video_once_it_is_delivered() {
        let body = r#"{"prompt": "rain", "kind": "image", "chain": "video"}"#;
        let jobs = parse(body.as_bytes(), &envelope(&[], Some("m-1"))).unwrap();
        assert_eq!(jobs[0].chain, Some(Chain::Video));
        let plain = r#"{"prompt": "rain", "kind": "image"}"#;
        let jobs = parse(plain.as_bytes(), &envelope(&[], Some("m-1"))).unwrap();
        assert_eq!(jobs[0].chain, None);
        check(
            r#"{"prompt": "rain", "kind": "video", "chain": "video"}"#,
            &[],
            Err("chain: applies to image jobs only"),
        );
        check(
            r#"{"prompt": "rain", "kind": "image", "chain": "audio"}"#,
            &[],
            Err("unknown variant `audio`"),
        );
    }

    #[test]
    fn bad_requests_are_refused_with_a_reason() {
        check(r#"{"prompt": "rain"}"#, &[], Err("kind is missing"));
        check("plain text", &[], Err("kind is missing"));
        check(
            r#"{"prompt": "rain", "kind": "audio"}"#,
            &[],
            Err("\"audio\" is not a job kind"),
        );
        check(
            r#"{"promt": "rain", "kind": "image"}"#,
            &[],
            Err("unknown field `promt`"),
        );
        check(
            r#"{"prompt": "x", "prompts": ["y"], "kind": "image"}"#,
            &[],
            Err("not both"),
        );
        check(r#"{"kind": "image"}"#, &[], Err("no \"prompt\""));
        check(
            r#"{"kind": "image", "prompts": []}"#,
            &[],
            Err("\"prompts\" is empty"),
        );
        check(
            r#"{"kind": "image", "prompts": ["ok", " "]}"#,
            &[],
            Err("prompts[1]: prompt: is empty"),
        );
        check(
            r#"{"prompt": "", "kind": "image"}"#,
            &[],
            Err("prompt: is empty"),
        );
        check(
            r#"{"prompt": "x", "kind": "video", "params": {"duration_seconds": 5}}"#,
            &[],
            Err("5 is not accepted"),
        );
        check(
            r#"{"prompt": "x", "kind": "video", "params": {"aspect": "16:9"}}"#,
            &[],
            Err("unknown parameter \"aspect\""),
        );
        check(
            r#"{"prompt": "x", "kind": "video", "params": {"seed": [1]}}"#,
            &[],
            Err("params.seed: must be"),
        );
        check(
            r#"{"prompt": "x", "kind": "image", "priority": "high"}"#,
            &[],
            Err("not valid JSON"),
        );
        check("{not json", &[("kind", "image")], Err("not valid JSON"));
        check(
            "text",
            &[("kind", "image"), ("priority", "soon")],
            Err("priority attribute"),
        );
        check("bell\u{7}", &[("kind", "image")], Err("U+0007"));
    }

    #[test]
    fn params_priority_and_dry_run_reach_the_jobs() {
        let body = r#"{"prompt": "x", "kind": "video", "priority": 3,
            "params": {"duration_seconds": 6, "generate_audio": false, "aspect_ratio": "9:16", "seed": 7}}"#;
        let mut env = envelope(&[], None);
        env.dry_run = false;
        let jobs = parse(body.as_bytes(), &env).unwrap();
        let job = &jobs[0];
        assert_eq!(
            (job.priority, job.dry_run, job.request_id.clone()),
            (3, false, None)
        );
        assert_eq!(job.params.duration_seconds, Some(6));
        assert_eq!(job.params.generate_audio, Some(false));
        assert_eq!(job.params.aspect_ratio.as_deref(), Some("9:16"));
        assert_eq!(job.params.seed, Some(7));
    }

    #[test]
    fn what_a_rejection_logs_quotes_nothing_of_the_request() {
        let secret = "whispered secret prompt";
        let cases = [
            format!(r#"{{"prompt": ["{secret}"], "kind": "image"}}"#),
            format!(r#"{{"prompt": "{secret}", "kind": "image", "{secret}": 1}}"#),
            format!(r#"{{"prompt": "{secret}", "kind": "{secret}"}}"#),
            format!(
                r#"{{"prompt": "{secret}", "kind": "image", "params": {{"seed": "{secret}"}}}}"#
            ),
            format!(r#"{{"prompt": "{secret}", "kind": "image", "params": {{"{secret}": 1}}}}"#),
            format!(r#"{{"prompts": ["ok", "{secret}\u0007"], "kind": "image"}}"#),
            format!(r#"{{"prompt": "{secret}"#),
        ];
        for body in cases {
            let rejection = parse(body.as_bytes(), &envelope(&[], None)).unwrap_err();
            assert!(
                !rejection.class.contains("secret"),
                "{body}: logs {:?}",
                rejection.class
            );
            assert!(!rejection.class.is_empty(), "{body}");
        }
        let attribute = parse(
            secret.as_bytes(),
            &envelope(&[("kind", "image"), ("priority", secret)], None),
        )
        .unwrap_err();
        assert!(!attribute.class.contains("secret"), "{attribute:?}");
        assert!(
            attribute.reason.contains(secret),
            "the caller is told: {attribute:?}"
        );
    }

    #[test]
    fn oversized_requests_and_batches_are_refused() {
        let big = vec![b'a'; MAX_BODY_BYTES + 1];
        assert!(
            parse(&big, &envelope(&[("kind", "image")], None))
                .unwrap_err()
                .reason
                .contains("the limit is")
        );
        let prompts: Vec<String> = (0..=MAX_BATCH).map(|n| format!("p{n}")).collect();
        let body = serde_json::json!({"kind": "image", "prompts": prompts}).to_string();
        assert!(
            parse(body.as_bytes(), &envelope(&[], None))
                .unwrap_err()
                .reason
                .contains("limit is 1000")
        );
        assert!(
            parse(&[0xff, 0xfe], &envelope(&[("kind", "image")], None))
                .unwrap_err()
                .reason
                .contains("not UTF-8")
        );
    }
}
