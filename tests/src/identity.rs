//! A stand-in for Google as an OpenID Connect issuer: it publishes a JWKS
//! over HTTP, as `https://www.googleapis.com/oauth2/v3/certs` does, and
//! signs ID tokens with the claims Google puts in the tokens of Pub/Sub
//! pushes and of callers of Cloud Run (`iss`, `aud`, `exp`, `email`,
//! `email_verified`), so that the stages' own verification is tested
//! against real RS256 signatures. [`FakeIap`] does the same for
//! Identity-Aware Proxy: it publishes its JWKS as
//! `https://www.gstatic.com/iap/verify/public_key-jwk` does and signs
//! ES256 assertions as IAP signs `x-goog-iap-jwt-assertion`.

use base64::Engine;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use std::path::Path;

/// The key id the published key goes by.
pub const KID: &str = "asmr-test-key-1";

/// The DER of a test key's PEM file (the base64 between the armour lines).
fn der(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/identity")
        .join(name);
    let pem = std::fs::read_to_string(&path).expect("the test key is in tests/fixtures/identity");
    let body: String = pem
        .lines()
        .filter(|line| !line.starts_with("-----"))
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .expect("a PEM file")
}

/// An RSA key (PKCS#1).
fn key(name: &str) -> EncodingKey {
    EncodingKey::from_rsa_der(&der(name))
}

/// Serves `set` at `path` on a port of its own; its address.
async fn publish(path: &'static str, set: JwkSet) -> String {
    let app = axum::Router::new().route(
        path,
        axum::routing::get(move || {
            let set = set.clone();
            async move { axum::Json(set) }
        }),
    );
    format!("{}{path}", crate::stages::serve(app).await)
}

/// The issuer: its keys and where they are published.
pub struct FakeGoogle {
    /// The JWKS address (what `GOOGLE_CERTS_URL` names).
    pub certs_url: String,
    signing: EncodingKey,
    other: EncodingKey,
}

/// What a token claims.
#[derive(Clone, Debug)]
pub struct Token<'a> {
    /// The account.
    pub email: &'a str,
    /// The audience.
    pub aud: &'a str,
    /// Seconds from now until it expires (negative: expired).
    pub expires_in: i64,
    /// Whether Google verified the email.
    pub verified: bool,
    /// The issuer.
    pub iss: &'a str,
    /// Signed by a key that is not published.
    pub unpublished_key: bool,
}

impl<'a> Token<'a> {
    /// A good token of `email` for `aud`, valid for an hour.
    pub fn of(email: &'a str, aud: &'a str) -> Self {
        Self {
            email,
            aud,
            expires_in: 3600,
            verified: true,
            iss: "https://accounts.google.com",
            unpublished_key: false,
        }
    }
}

impl FakeGoogle {
    /// Publishes the test key's JWKS on a port of its own.
    pub async fn start() -> Self {
        let signing = key("signing-key.pem");
        let mut jwk = Jwk::from_encoding_key(&signing, Algorithm::RS256).expect("a JWK");
        jwk.common.key_id = Some(KID.to_string());
        let set = JwkSet { keys: vec![jwk] };
        Self {
            certs_url: publish("/oauth2/v3/certs", set).await,
            signing,
            other: key("other-key.pem"),
        }
    }

    /// A signed ID token with `claims`.
    pub fn token(&self, claims: &Token<'_>) -> String {
        let now = chrono::Utc::now().timestamp();
        let body = serde_json::json!({
            "iss": claims.iss,
            "aud": claims.aud,
            "azp": "113774264463038321964",
            "sub": "113774264463038321964",
            "email": claims.email,
            "email_verified": claims.verified,
            "iat": now - 10,
            "exp": now + claims.expires_in,
        });
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(KID.to_string());
        let key = match claims.unpublished_key {
            true => &self.other,
            false => &self.signing,
        };
        jsonwebtoken::encode(&header, &body, key).expect("the token is signed")
    }

    /// `Authorization: Bearer` with a good token of `email` for `aud`.
    pub fn bearer(&self, email: &str, aud: &str) -> String {
        format!("Bearer {}", self.token(&Token::of(email, aud)))
    }
}

/// The key id IAP's published key goes by.
pub const IAP_KID: &str = "asmr-test-iap-key-1";

/// A stand-in for Identity-Aware Proxy: its published key, and the
/// assertions it signs into the requests it lets through.
pub struct FakeIap {
    /// The JWKS address (what `IAP_KEYS_URL` names).
    pub keys_url: String,
    signing: EncodingKey,
}

impl FakeIap {
    /// Publishes the test P-256 key's JWKS on a port of its own.
    pub async fn start() -> Self {
        let signing = EncodingKey::from_ec_der(&der("iap-signing-key.pem"));
        let mut jwk = Jwk::from_encoding_key(&signing, Algorithm::ES256).expect("a JWK");
        jwk.common.key_id = Some(IAP_KID.to_string());
        let set = JwkSet { keys: vec![jwk] };
        Self {
            keys_url: publish("/iap/verify/public_key-jwk", set).await,
            signing,
        }
    }

    /// An assertion of `email` for `aud`, valid for ten minutes, as IAP
    /// signs it.
    pub fn assertion(&self, email: &str, aud: &str) -> String {
        let now = chrono::Utc::now().timestamp();
        let claims = serde_json::json!({
            "aud": aud,
            "email": email,
            "sub": "accounts.google.com:118194585739476423400",
            "iss": "https://cloud.google.com/iap",
            "iat": now - 5,
            "exp": now + 600,
        });
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(IAP_KID.to_string());
        jsonwebtoken::encode(&header, &claims, &self.signing).expect("the assertion is signed")
    }
}
