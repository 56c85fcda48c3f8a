//! `shared::requests::parse`: message attributes and body (see `src/lib.rs`
//! for the framing) in any of the three request forms. Whatever parses is
//! one to MAX_BATCH jobs that each pass validation.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| asmr_fuzz::requests_parse(data));
