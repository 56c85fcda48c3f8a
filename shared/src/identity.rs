//! Who sent a request: the Google-signed OpenID Connect ID token in its
//! `Authorization: Bearer` header, verified here rather than believed.
//!
//! Cloud Run's IAM gate checks a token before a request reaches the
//! container, but when a request carries `X-Serverless-Authorization` it
//! checks that one and passes `Authorization` through as it came: anyone
//! allowed to invoke a service could write any account's name there. So the
//! stages check the token themselves: its RS256 signature against Google's
//! published keys, the issuer, the expiry, the audience when one is
//! configured, and that Google verified the account's email.
//!
//! Two uses: the push routes take only the push subscription's account
//! ([`PushGate`]), and intake scopes idempotency keys by the account that
//! called its API. Both are on where the deployment names the push identity
//! (`PUSH_IDENTITY`, which terraform sets); where it does not (the
//! emulators send no token), they are off and each stage says so once at
//! start.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use clap::Args;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where Google publishes the keys that sign its ID tokens (a JWKS).
pub const GOOGLE_CERTS_URL: &str = "https://www.googleapis.com/oauth2/v3/certs";
/// The issuers of Google ID tokens.
const ISSUERS: [&str; 2] = ["accounts.google.com", "https://accounts.google.com"];
/// How long fetched keys are used before they are fetched again. Google
/// publishes a key well before it signs with it, so an hour old set still
/// knows every key in use; a token naming an unknown key fetches sooner.
const KEYS_FOR: Duration = Duration::from_secs(3600);
/// The shortest pause between two fetches, so that tokens naming unknown
/// keys cannot make a stage hammer Google's endpoint.
const REFETCH_PAUSE: Duration = Duration::from_secs(30);
/// The time limit of one fetch of the keys.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest token looked at; Google's are about 1 KiB.
const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Who may push to a stage, and where the keys that prove it are.
#[derive(Clone, Debug, Args)]
#[command(next_help_heading = "Identity options")]
pub struct IdentityArgs {
    /// Service accounts allowed to push to this stage (comma-separated
    /// emails): the push subscriptions' account, and Eventarc's. Unset: push
    /// routes take any caller and intake does not scope idempotency keys by
    /// caller (the emulators send no token); the stage says so at start.
    #[arg(long, env = "PUSH_IDENTITY", value_delimiter = ',')]
    pub push_identity: Vec<String>,
    /// Audiences a push token may carry (comma-separated): the audience the
    /// push subscriptions set. Unset: any audience.
    #[arg(long, env = "PUSH_AUDIENCE", value_delimiter = ',')]
    pub push_audience: Vec<String>,
    /// Where the keys that sign Google ID tokens are published (a JWKS).
    #[arg(long, env = "GOOGLE_CERTS_URL", default_value = GOOGLE_CERTS_URL)]
    pub google_certs_url: String,
}

impl IdentityArgs {
    /// The verifier of ID tokens, when the deployment names identities.
    pub fn id_tokens(&self) -> Option<Arc<IdTokens>> {
        (!self.identities().is_empty()).then(|| Arc::new(IdTokens::new(&self.google_certs_url)))
    }

    /// The gate of `stage`'s push routes; says at start whether it is open.
    pub fn push_gate(&self, stage: &str) -> PushGate {
        let Some(tokens) = self.id_tokens() else {
            tracing::warn!(
                stage,
                event = "push_identity_unchecked",
                "PUSH_IDENTITY is not set: push routes accept any caller, and no caller identity scopes idempotency keys (right for the emulators, which send no token; a deployment sets it)"
            );
            return PushGate::open();
        };
        let identities = self.identities();
        let audiences = clean(&self.push_audience);
        tracing::info!(
            stage,
            identities = identities.join(","),
            audiences = if audiences.is_empty() {
                "any".to_string()
            } else {
                audiences.join(",")
            },
            event = "push_identity_checked",
            "push routes accept only these accounts' Google-signed tokens"
        );
        PushGate {
            check: Some(Check {
                tokens,
                identities,
                audiences,
            }),
        }
    }

    fn identities(&self) -> Vec<String> {
        clean(&self.push_identity)
            .into_iter()
            .map(|email| email.to_ascii_lowercase())
            .collect()
    }
}

fn clean(values: &[String]) -> Vec<String> {
    values
        .iter()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect()
}

/// Why a request's identity was not accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// No `Authorization: Bearer` token.
    #[error("no bearer token: send a Google-signed ID token in Authorization")]
    Missing,
    /// A token that does not verify: bad signature, expired, another
    /// issuer or audience, an unverified email, not a JWT at all.
    #[error("the ID token is not valid: {0}")]
    Invalid(String),
    /// A valid token of an account that may not do this.
    #[error("{0} may not push to this service")]
    NotAllowed(String),
    /// Google's keys could not be fetched: nothing can be verified now.
    #[error("the keys that sign ID tokens could not be fetched: {0}")]
    KeysUnavailable(String),
}

impl Refused {
    /// The answer: 401 for no or a bad token, 403 for a good token of the
    /// wrong account, 503 when nothing can be verified now (a push is then
    /// redelivered later).
    pub fn status(&self) -> StatusCode {
        match self {
            Refused::Missing | Refused::Invalid(_) => StatusCode::UNAUTHORIZED,
            Refused::NotAllowed(_) => StatusCode::FORBIDDEN,
            Refused::KeysUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.to_string() });
        (self.status(), axum::Json(body)).into_response()
    }
}

/// The claims of a Google ID token that are read.
#[derive(serde::Deserialize)]
struct Claims {
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    email_verified: Option<serde_json::Value>,
}

/// Verifies Google ID tokens against Google's published keys, fetched once
/// and kept for [`KEYS_FOR`].
pub struct IdTokens {
    url: String,
    http: reqwest::Client,
    keys: tokio::sync::Mutex<Keys>,
}

#[derive(Default)]
struct Keys {
    set: Option<JwkSet>,
    fetched: Option<Instant>,
}

impl IdTokens {
    /// A verifier whose keys are published at `url`.
    pub fn new(url: &str) -> Self {
        Self {
            url: url.to_string(),
            http: reqwest::Client::builder()
                .timeout(FETCH_TIMEOUT)
                .build()
                .unwrap_or_default(),
            keys: tokio::sync::Mutex::default(),
        }
    }

    /// The verified account (its email, lowercase) of the bearer token in
    /// `headers`, whose audience must be one of `audiences` (any, if empty).
    pub async fn verify(
        &self,
        headers: &HeaderMap,
        audiences: &[String],
    ) -> Result<String, Refused> {
        let token = bearer(headers)?;
        let kid = jsonwebtoken::decode_header(token)
            .map_err(|e| Refused::Invalid(e.to_string()))?
            .kid
            .ok_or_else(|| Refused::Invalid("the token names no signing key".into()))?;
        let key = self.key(&kid).await?;
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_issuer(&ISSUERS);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        if audiences.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(audiences);
        }
        let claims = jsonwebtoken::decode::<Claims>(token, &key, &validation)
            .map_err(|e| Refused::Invalid(e.to_string()))?
            .claims;
        let verified = matches!(claims.email_verified, Some(serde_json::Value::Bool(true)))
            || matches!(&claims.email_verified, Some(serde_json::Value::String(s)) if s == "true");
        match claims.email {
            Some(email) if verified => Ok(email.to_ascii_lowercase()),
            Some(email) => Err(Refused::Invalid(format!(
                "the email {email} is not verified"
            ))),
            None => Err(Refused::Invalid("the token names no account".into())),
        }
    }

    /// The key `kid`, fetching the set when it is old or lacks it.
    async fn key(&self, kid: &str) -> Result<DecodingKey, Refused> {
        let mut keys = self.keys.lock().await;
        let age = keys.fetched.map(|at| at.elapsed());
        let known = keys.set.as_ref().and_then(|set| set.find(kid)).is_some();
        let stale = age.is_none_or(|age| age >= KEYS_FOR);
        let may_fetch = age.is_none_or(|age| age >= REFETCH_PAUSE);
        if stale || (!known && may_fetch) {
            match self.fetch().await {
                Ok(set) => {
                    keys.set = Some(set);
                    keys.fetched = Some(Instant::now());
                }
                // Old keys still verify the tokens they signed.
                Err(e) if keys.set.is_some() => {
                    tracing::warn!(error = %e, "could not fetch Google's token keys again; using the ones fetched before");
                }
                Err(e) => return Err(e),
            }
        }
        let jwk = keys
            .set
            .as_ref()
            .and_then(|set| set.find(kid))
            .ok_or_else(|| Refused::Invalid(format!("no published key {kid:?} signed it")))?;
        DecodingKey::from_jwk(jwk).map_err(|e| Refused::Invalid(format!("key {kid:?}: {e}")))
    }

    async fn fetch(&self) -> Result<JwkSet, Refused> {
        let unavailable =
            |e: &dyn std::fmt::Display| Refused::KeysUnavailable(format!("{}: {e}", self.url));
        let response = self
            .http
            .get(&self.url)
            .send()
            .await
            .map_err(|e| unavailable(&e))?;
        let status = response.status();
        if !status.is_success() {
            return Err(unavailable(&status));
        }
        response.json::<JwkSet>().await.map_err(|e| unavailable(&e))
    }
}

/// The token of `Authorization: Bearer TOKEN`.
fn bearer(headers: &HeaderMap) -> Result<&str, Refused> {
    let value = headers.get(header::AUTHORIZATION).ok_or(Refused::Missing)?;
    let value = value
        .to_str()
        .map_err(|_| Refused::Invalid("Authorization is not ASCII".into()))?;
    let (scheme, token) = value
        .trim()
        .split_once(' ')
        .ok_or_else(|| Refused::Invalid("Authorization is not \"Bearer TOKEN\"".into()))?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(Refused::Invalid(
            "Authorization is not \"Bearer TOKEN\"".into(),
        ));
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(Refused::Invalid("the token is too long".into()));
    }
    Ok(token)
}

/// Who may call a stage's push routes: anyone (no identity named), or only
/// the named accounts, each push proving it with a Google-signed token.
#[derive(Clone, Default)]
pub struct PushGate {
    check: Option<Check>,
}

#[derive(Clone)]
struct Check {
    tokens: Arc<IdTokens>,
    identities: Vec<String>,
    audiences: Vec<String>,
}

impl PushGate {
    /// A gate that lets every push in: where no push identity is named.
    pub fn open() -> Self {
        Self::default()
    }

    /// A gate that admits only `identities`' tokens (of `audiences`, or
    /// any when empty), verified against the keys at `certs_url`.
    pub fn checking(certs_url: &str, identities: &[&str], audiences: &[&str]) -> Self {
        Self {
            check: Some(Check {
                tokens: Arc::new(IdTokens::new(certs_url)),
                identities: identities.iter().map(|i| i.to_ascii_lowercase()).collect(),
                audiences: audiences.iter().map(|a| a.to_string()).collect(),
            }),
        }
    }

    /// The verifier behind the gate, when it checks.
    pub fn id_tokens(&self) -> Option<Arc<IdTokens>> {
        self.check.as_ref().map(|check| check.tokens.clone())
    }

    /// Whether the push with these headers may come in.
    pub async fn admit(&self, headers: &HeaderMap) -> Result<(), Refused> {
        let Some(check) = &self.check else {
            return Ok(());
        };
        let account = check.tokens.verify(headers, &check.audiences).await?;
        match check.identities.contains(&account) {
            true => Ok(()),
            false => Err(Refused::NotAllowed(account)),
        }
    }
}

/// The middleware of every push route: a push whose token the gate does
/// not admit is answered at once and never handled.
pub async fn require_pusher(
    State(gate): State<Arc<PushGate>>,
    request: Request,
    next: Next,
) -> Response {
    match gate.admit(request.headers()).await {
        Ok(()) => next.run(request).await,
        Err(refused) => {
            tracing::warn!(
                event = "push_refused",
                status = refused.status().as_u16(),
                reason = %refused,
                "push refused: not from the push identity"
            );
            refused.into_response()
        }
    }
}
