//! `shared::push::decode` and the job message inside: any bytes give a
//! delivery or poison, never a panic; what decodes keeps its promises.

#![no_main]

use libfuzzer_sys::fuzz_target;
use shared::push::{JobMessage, decode};

fuzz_target!(|data: &[u8]| {
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
});
