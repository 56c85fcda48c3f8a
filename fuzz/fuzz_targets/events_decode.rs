//! `shared::events::decode`: request headers and body (see `src/lib.rs` for
//! the framing) as a binary-mode CloudEvent or a Pub/Sub GCS notification.
//! Whatever decodes names a bucket, an object and an event id.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (fields, body) = asmr_fuzz::split(data);
    let headers = asmr_fuzz::headers(&fields);
    let Ok(event) = shared::events::decode(&headers, body) else {
        return;
    };
    assert!(!event.bucket.is_empty(), "{event:?}");
    assert!(!event.name.is_empty(), "{event:?}");
    assert!(!event.event_id.is_empty(), "{event:?}");
    let _ = event.uri().to_string();
    // The downloader turns the name into a path next.
    let _ = shared::paths::relative_path(&event.name);
});
