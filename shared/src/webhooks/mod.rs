//! Webhooks: signed deliveries of job events to tenants' receivers, by the
//! `notifier` stage. What a webhook and a delivery are lives in the domain
//! ([`crate::domain::webhook`], [`crate::domain::webhook_delivery`]).

pub mod notifier;
pub mod send;
pub mod service;
pub mod sign;
