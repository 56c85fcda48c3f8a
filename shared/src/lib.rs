//! The asmr library: the domain (jobs, downloads, their state machines), the
//! ports the stages use and their adapters. Every stage binary is a thin
//! `main.rs` over this crate.

pub mod ack;
pub mod beneath;
pub mod bus;
pub mod config;
pub mod cost;
pub mod crc;
pub mod deliver;
pub mod doctor;
pub mod domain;
pub mod error;
pub mod events;
mod gax;
pub mod generate;
pub mod identity;
pub mod intake;
pub mod janitor;
pub mod job_events;
pub mod live;
pub mod local_run;
pub mod manifest;
pub mod objects;
pub mod placeholder;
pub mod push;
pub mod redact;
pub mod report;
pub mod requests;
pub mod server;
pub mod stage;
pub mod store;
pub mod telemetry;
pub mod time;
pub mod vertex;
pub mod webhooks;
