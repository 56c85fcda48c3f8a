//! `shared::requests::parse`: message attributes and body (see `src/lib.rs`
//! for the framing) in any of the three request forms. Whatever parses is
//! one to MAX_BATCH jobs that each pass validation.

#![no_main]

use libfuzzer_sys::fuzz_target;
use shared::requests::{Envelope, MAX_BATCH, parse};

fuzz_target!(|data: &[u8]| {
    let (fields, body) = asmr_fuzz::split(data);
    let envelope = Envelope {
        attributes: fields.into_iter().collect(),
        message_id: Some("4242"),
        dry_run: true,
    };
    let Ok(jobs) = parse(body, &envelope) else {
        return;
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
});
