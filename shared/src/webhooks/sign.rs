//! Standard Webhooks signatures: `v1,` and the base64 of the HMAC-SHA256,
//! under the secret's key, of `{webhook-id}.{webhook-timestamp}.{body}`;
//! one per secret, space-separated, so that a receiver holding either the
//! old or the new secret of a rotation verifies.

use crate::domain::webhook::WebhookSecret;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The `webhook-signature` header of `body` sent as `id` at `timestamp`
/// (Unix seconds), signed with each of `secrets`; secrets not of the
/// `whsec_` form are skipped.
pub fn signature(secrets: &[&WebhookSecret], id: &str, timestamp: i64, body: &[u8]) -> String {
    secrets
        .iter()
        .filter_map(|secret| secret.key())
        .filter_map(|key| {
            let mut mac = Hmac::<Sha256>::new_from_slice(&key).ok()?;
            mac.update(id.as_bytes());
            mac.update(b".");
            mac.update(timestamp.to_string().as_bytes());
            mac.update(b".");
            mac.update(body);
            let digest = mac.finalize().into_bytes();
            Some(format!(
                "v1,{}",
                base64::engine::general_purpose::STANDARD.encode(digest)
            ))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::Timestamp;

    fn secret(text: &str) -> WebhookSecret {
        WebhookSecret {
            secret: text.to_string(),
            created_at: Timestamp::now(),
            expires_at: None,
        }
    }

    #[test]
    fn signs_as_the_specifications_example_does() {
        // The example of the Standard Webhooks specification's libraries.
        let key = secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        let signed = signature(
            &[&key],
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(signed, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn every_secret_of_a_rotation_signs_and_a_malformed_one_is_skipped() {
        let old = secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        let new = WebhookSecret::generate(Timestamp::now());
        let broken = secret("not-a-secret");
        let signed = signature(&[&new, &broken, &old], "msg_1", 1, b"{}");
        let parts: Vec<&str> = signed.split(' ').collect();
        assert_eq!(parts.len(), 2, "{signed}");
        assert!(parts.iter().all(|p| p.starts_with("v1,")));
        assert_ne!(parts[0], parts[1]);
        assert_eq!(signature(&[&old], "msg_1", 1, b"{}"), parts[1]);
    }
}
