//! Workspace-level tests of asmr: the store contract suite, run unchanged
//! against every store adapter, and (in later stages) scenario tests over the
//! emulators.
//!
//! Run everything with `tests/run`, which starts the emulators and turns on
//! the `emulators` feature. Without the feature only the embedded half runs;
//! with it, a missing emulator fails the tests loudly instead of skipping.

// Test support: a setup failure should stop the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod browser;
pub mod counting;
pub mod fake_google;
pub mod fake_vertex;
pub mod harness;
pub mod http;
pub mod identity;
pub mod objects;
pub mod outage;
pub mod process;
pub mod pubsub;
pub mod stages;
pub mod throttle;
