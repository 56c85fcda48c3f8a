//! The fuzz targets' bodies, and the input framing they share. Each target
//! in `fuzz_targets/` hands libFuzzer's input to one function here, so the
//! same code runs under cargo fuzz (`fuzz/run`, for as long as you like) and
//! in the test command, which replays every committed corpus and a few
//! seconds of mutated inputs through it (`tests/tests/suites/fuzzing.rs`).
//!
//! Targets that need more than a body (request headers, message
//! attributes) read their input as an HTTP-like text: `name: value` lines,
//! a blank line, then the body bytes. Input without a blank line is all
//! body. The seed corpora are written in this form, so a seed reads like
//! the request it stands for.

/// The `name: value` lines before the first blank line, and the bytes after it.
pub fn split(data: &[u8]) -> (Vec<(String, String)>, &[u8]) {
    let Some(end) = data.windows(2).position(|w| w == b"\n\n") else {
        return (Vec::new(), data);
    };
    let head = String::from_utf8_lossy(&data[..end]);
    let fields = head
        .lines()
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_string(), value.trim_start().to_string()))
        .collect();
    (fields, &data[end + 2..])
}

/// The fields as request headers; names or values HTTP refuses are left out.
pub fn headers(fields: &[(String, String)]) -> http::HeaderMap {
    let mut map = http::HeaderMap::new();
    for (name, value) in fields {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_str(value),
        ) {
            map.append(name, value);
        }
    }
    map
}

/// Every target: its name (its corpus is `fuzz/corpus/NAME/`) and body.
pub const TARGETS: [(&str, fn(&[u8])); 4] = [
    ("push_decode", push_decode),
    ("events_decode", events_decode),
    ("requests_parse", requests_parse),
    ("paths", paths),
];

/// `shared::push::decode` and the job message inside: any bytes give a
/// delivery or poison, never a panic; what decodes keeps its promises.
pub fn push_decode(data: &[u8]) {
    use shared::push::{JobMessage, decode};
    let Ok(delivery) = decode(data) else {
        return;
    };
    assert!(
        !delivery.message_id.is_empty(),
        "a delivery without a message id"
    );
    if let Ok(message) = JobMessage::from_delivery(&delivery) {
        let id = message.job_id.trim();
        assert!(
            !id.is_empty() && id.len() <= 200,
            "job id {:?}",
            message.job_id
        );
        assert!(!id.contains('/'), "job id {:?}", message.job_id);
        assert!(
            !id.chars().any(char::is_control),
            "job id {:?}",
            message.job_id
        );
    }
    // The same delivery read as a GCS notification must not panic either.
    let _ = shared::events::from_push(&delivery);
}

/// `shared::events::decode`: request headers and body (see [`split`]) as a
/// binary-mode CloudEvent or a Pub/Sub GCS notification. Whatever decodes
/// names a bucket, an object and an event id.
pub fn events_decode(data: &[u8]) {
    let (fields, body) = split(data);
    let headers = headers(&fields);
    let Ok(event) = shared::events::decode(&headers, body) else {
        return;
    };
    assert!(!event.bucket.is_empty(), "{event:?}");
    assert!(!event.name.is_empty(), "{event:?}");
    assert!(!event.event_id.is_empty(), "{event:?}");
    let _ = event.uri().to_string();
    // The downloader turns the name into a path next.
    let _ = shared::domain::paths::relative_path(&event.name);
}

/// `shared::requests::parse`: message attributes and body (see [`split`])
/// in any of the three request forms. Whatever parses is one to MAX_BATCH
/// jobs that each pass validation; whatever is refused says so in a class
/// that quotes nothing of the request's text.
pub fn requests_parse(data: &[u8]) {
    use shared::requests::{Envelope, MAX_BATCH, parse};
    let (fields, body) = split(data);
    let envelope = Envelope {
        attributes: fields.into_iter().collect(),
        message_id: Some("4242"),
        dry_run: true,
        ..Default::default()
    };
    let jobs = match parse(body, &envelope) {
        Ok(jobs) => jobs,
        Err(rejection) => {
            assert!(
                rejection.class.chars().count() <= 200,
                "a class of {} characters",
                rejection.class.chars().count()
            );
            return;
        }
    };
    assert!(
        !jobs.is_empty() && jobs.len() <= MAX_BATCH,
        "{} jobs",
        jobs.len()
    );
    for job in &jobs {
        assert!(
            job.validate().is_ok(),
            "{job:?} passed parse but not validate"
        );
        assert!(job.request_id.is_some(), "{job:?} has no idempotency key");
    }
}

/// `shared::domain::paths`: any name is refused or becomes the same bytes as plain
/// segments under the root; never a path that climbs out.
pub fn paths(data: &[u8]) {
    use shared::domain::paths::{join_under, relative_path};
    use std::path::{Component, Path};
    let Ok(name) = std::str::from_utf8(data) else {
        return;
    };
    let relative = relative_path(name);
    let root = Path::new("/srv/archive");
    let joined = join_under(root, name);
    assert_eq!(relative.is_ok(), joined.is_ok(), "{name:?}");
    let (Ok(relative), Ok(joined)) = (relative, joined) else {
        return;
    };
    assert_eq!(relative.to_str(), Some(name), "{name:?} changed");
    assert!(
        relative
            .components()
            .all(|c| matches!(c, Component::Normal(_))),
        "{name:?} -> {}",
        relative.display()
    );
    assert!(joined.starts_with(root), "{name:?} -> {}", joined.display());
    assert!(
        !name
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == ".."),
        "{name:?} was accepted"
    );
}
