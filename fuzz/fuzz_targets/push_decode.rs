//! `shared::push::decode` and the job message inside: any bytes give a
//! delivery or poison, never a panic; what decodes keeps its promises.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| asmr_fuzz::push_decode(data));
