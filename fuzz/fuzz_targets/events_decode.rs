//! `shared::events::decode`: request headers and body (see `src/lib.rs` for
//! the framing) as a binary-mode CloudEvent or a Pub/Sub GCS notification.
//! Whatever decodes names a bucket, an object and an event id.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| asmr_fuzz::events_decode(data));
