//! `shared::paths`: any name is refused or becomes the same bytes as plain
//! segments under the root; never a path that climbs out.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| asmr_fuzz::paths(data));
