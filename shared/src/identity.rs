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
//!
//! The live page in the cloud is opened by people through Identity-Aware
//! Proxy, which signs each request it lets through with an ES256 JWT in
//! `x-goog-iap-jwt-assertion` ([`IapAssertions`]): the page's service
//! verifies that one too, against IAP's own keys, so that a request that
//! reached it some other way (IAP turned off by mistake, a caller that
//! holds `run.invoker`) is never answered with the page.
//!
//! Both kinds of token are checked against a published JWK set that is
//! fetched once and kept ([`KeySet`]).

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use clap::Args;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where Google publishes the keys that sign its ID tokens (a JWKS).
pub const GOOGLE_CERTS_URL: &str = "https://www.googleapis.com/oauth2/v3/certs";
/// The issuers of Google ID tokens.
const ISSUERS: [&str; 2] = ["accounts.google.com", "https://accounts.google.com"];
/// Where Identity-Aware Proxy publishes the keys that sign its assertions
/// (a JWKS).
pub const IAP_KEYS_URL: &str = "https://www.gstatic.com/iap/verify/public_key-jwk";
/// The issuer of IAP's assertions.
pub const IAP_ISSUER: &str = "https://cloud.google.com/iap";
/// The header IAP puts its signed assertion in.
pub const IAP_ASSERTION: &str = "x-goog-iap-jwt-assertion";
/// How far the clocks of IAP and of the service may disagree.
const CLOCK_SKEW_S: u64 = 60;
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

/// Who may open the live page in the cloud: the audience of the
/// assertions of the Identity-Aware Proxy in front of it, and where IAP's
/// keys are.
#[derive(Clone, Debug, Args)]
#[command(next_help_heading = "Identity-Aware Proxy options")]
pub struct IapArgs {
    /// The audience of the IAP assertions this service takes; for IAP on a
    /// Cloud Run service, /projects/PROJECT_NUMBER/locations/REGION/services/SERVICE
    /// (terraform sets it). Every request without an assertion of this
    /// audience is refused.
    #[arg(long, env = "IAP_AUDIENCE")]
    pub iap_audience: String,
    /// Where the keys that sign IAP's assertions are published (a JWKS).
    #[arg(long, env = "IAP_KEYS_URL", default_value = IAP_KEYS_URL)]
    pub iap_keys_url: String,
}

impl IapArgs {
    /// The verifier of IAP's assertions; an error when no audience is named.
    pub fn assertions(&self) -> Result<IapAssertions, String> {
        let audience = self.iap_audience.trim();
        if audience.is_empty() {
            return Err("IAP_AUDIENCE is empty: name the audience of the Identity-Aware Proxy in front of this service".into());
        }
        Ok(IapAssertions::new(&self.iap_keys_url, audience))
    }
}

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
    /// No IAP assertion: the request did not come through Identity-Aware
    /// Proxy.
    #[error(
        "no Identity-Aware Proxy assertion ({IAP_ASSERTION}): open the page at its own address, where IAP signs you in"
    )]
    NoAssertion,
    /// A token that does not verify: bad signature, expired, another
    /// issuer or audience, an unverified email, not a JWT at all.
    #[error("the token is not valid: {0}")]
    Invalid(String),
    /// A valid token of an account that may not do this.
    #[error("{0} may not push to this service")]
    NotAllowed(String),
    /// Google's keys could not be fetched: nothing can be verified now.
    #[error("the keys that sign the token could not be fetched: {0}")]
    KeysUnavailable(String),
}

impl Refused {
    /// The answer: 401 for no or a bad token, 403 for a good token of the
    /// wrong account, 503 when nothing can be verified now (a push is then
    /// redelivered later).
    pub fn status(&self) -> StatusCode {
        match self {
            Refused::Missing | Refused::NoAssertion | Refused::Invalid(_) => {
                StatusCode::UNAUTHORIZED
            }
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

/// Keys published as a JWK set at one address, fetched once and kept for
/// [`KEYS_FOR`]; a token naming a key the set lacks fetches it again, at
/// most once per [`REFETCH_PAUSE`]. The one cache of published keys: of
/// Google's ID tokens and of IAP's assertions alike.
pub struct KeySet {
    url: String,
    http: reqwest::Client,
    keys: tokio::sync::Mutex<Keys>,
}

#[derive(Default)]
struct Keys {
    set: Option<JwkSet>,
    fetched: Option<Instant>,
}

impl KeySet {
    /// The keys published at `url`.
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

    /// The header of `token`, which must name its key, and that key.
    async fn key_of(&self, token: &str) -> Result<(Header, DecodingKey), Refused> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| Refused::Invalid(e.to_string()))?;
        let kid = header
            .kid
            .clone()
            .ok_or_else(|| Refused::Invalid("the token names no signing key".into()))?;
        Ok((header, self.key(&kid).await?))
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
                    tracing::warn!(url = %self.url, error = %e, "could not fetch the token keys again; using the ones fetched before");
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

/// Verifies Google ID tokens against Google's published keys.
pub struct IdTokens {
    keys: KeySet,
}

impl IdTokens {
    /// A verifier whose keys are published at `url`.
    pub fn new(url: &str) -> Self {
        Self {
            keys: KeySet::new(url),
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
        let (_, key) = self.keys.key_of(token).await?;
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
}

/// The claims of an IAP assertion that are read.
#[derive(serde::Deserialize)]
struct IapClaims {
    iat: u64,
    #[serde(default)]
    email: Option<String>,
}

/// The person IAP let through, as its assertion names them: put on each
/// request [`require_iap`] admits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Person(pub String);

/// Verifies the assertions Identity-Aware Proxy signs into each request it
/// lets through: ES256, by a key IAP publishes, of issuer [`IAP_ISSUER`]
/// and of this service's audience, not expired and not issued in the
/// future; the person is its `email`.
pub struct IapAssertions {
    keys: KeySet,
    audience: String,
}

impl IapAssertions {
    /// A verifier of assertions of `audience`, signed by the keys at `url`.
    pub fn new(url: &str, audience: &str) -> Self {
        Self {
            keys: KeySet::new(url),
            audience: audience.to_string(),
        }
    }

    /// The person (their email, lowercase) of the assertion in `headers`.
    pub async fn verify(&self, headers: &HeaderMap) -> Result<Person, Refused> {
        let token = headers
            .get(IAP_ASSERTION)
            .ok_or(Refused::NoAssertion)?
            .to_str()
            .map_err(|_| Refused::Invalid("the IAP assertion is not ASCII".into()))?
            .trim();
        if token.is_empty() {
            return Err(Refused::NoAssertion);
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(Refused::Invalid("the IAP assertion is too long".into()));
        }
        let (header, key) = self.keys.key_of(token).await?;
        // Checked before the signature, so that the answer names it.
        if header.alg != Algorithm::ES256 {
            return Err(Refused::Invalid(format!(
                "the IAP assertion is signed with {:?}, not ES256",
                header.alg
            )));
        }
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_issuer(&[IAP_ISSUER]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "iat", "iss", "aud"]);
        validation.leeway = CLOCK_SKEW_S;
        let claims = jsonwebtoken::decode::<IapClaims>(token, &key, &validation)
            .map_err(|e| Refused::Invalid(format!("the IAP assertion: {e}")))?
            .claims;
        let now = jsonwebtoken::get_current_timestamp();
        if claims.iat > now + CLOCK_SKEW_S {
            return Err(Refused::Invalid(
                "the IAP assertion is issued in the future".into(),
            ));
        }
        match claims.email.map(|e| e.trim().to_ascii_lowercase()) {
            Some(email) if !email.is_empty() => Ok(Person(email)),
            _ => Err(Refused::Invalid("the IAP assertion names no one".into())),
        }
    }
}

/// The middleware of every route of the page in the cloud: a request
/// without a valid IAP assertion is answered 401 (503 while IAP's keys
/// cannot be fetched) and never handled; an admitted one carries the
/// [`Person`].
pub async fn require_iap(
    State(assertions): State<Arc<IapAssertions>>,
    mut request: Request,
    next: Next,
) -> Response {
    match assertions.verify(request.headers()).await {
        Ok(person) => {
            request.extensions_mut().insert(person);
            next.run(request).await
        }
        Err(refused) => {
            tracing::warn!(
                event = "iap_refused",
                path = %request.uri().path(),
                status = refused.status().as_u16(),
                reason = %refused,
                "request refused: no valid Identity-Aware Proxy assertion"
            );
            refused.into_response()
        }
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use axum::body::Body;
    use base64::Engine;
    use jsonwebtoken::jwk::Jwk;
    use jsonwebtoken::{EncodingKey, Header};
    use tower::ServiceExt;

    /// Two P-256 keys made for these tests only (`openssl genpkey -algorithm
    /// EC -pkeyopt ec_paramgen_curve:P-256`, PKCS#8): the first is
    /// published, the second is not. Neither is a credential of anything.
    const PUBLISHED: &str = "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg2LEBbzb6uwGyAs+354rkHOgZXFJ/4jpL/NXiVmfaiyOhRANCAARTm/L0hrV87Fb8YYXQ9p9+TktkLGEOOQbtLCt84mrd92noL9lMK9/LVo5YVnrJj0rn3mLTYAjfSoDfj3unuqsT";
    const UNPUBLISHED: &str = "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg30/OBF34AaJCIV+uIRbq/rsFoR2gCHzKFYPzJkSg3OmhRANCAASidFjhORRY+4zRvJ1qLPdSWy10MepYdkB7Doiv2xVvSc3WENI7Nd24z+tktXYBFzpwah8/VCtMtLSY/P+DwoWe";
    const KID: &str = "iap-test-key";
    const AUDIENCE: &str = "/projects/123456789/locations/europe-west1/services/asmr-live";

    fn key(pkcs8: &str) -> EncodingKey {
        let der = base64::engine::general_purpose::STANDARD
            .decode(pkcs8)
            .unwrap();
        EncodingKey::from_ec_der(&der)
    }

    /// Publishes the first key as IAP does; its address.
    async fn publish() -> String {
        let mut jwk = Jwk::from_encoding_key(&key(PUBLISHED), Algorithm::ES256).unwrap();
        jwk.common.key_id = Some(KID.to_string());
        let set = JwkSet { keys: vec![jwk] };
        let app = axum::Router::new().route(
            "/public_key-jwk",
            axum::routing::get(move || {
                let set = set.clone();
                async move { axum::Json(set) }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        format!("http://{address}/public_key-jwk")
    }

    /// An assertion as IAP signs it, `change` applied to its claims.
    fn assertion(change: impl FnOnce(&mut serde_json::Value)) -> String {
        let now = jsonwebtoken::get_current_timestamp() as i64;
        let mut claims = serde_json::json!({
            "aud": AUDIENCE,
            "email": "Ana@Example.com",
            "exp": now + 600,
            "iat": now - 5,
            "iss": IAP_ISSUER,
            "sub": "accounts.google.com:118194585739476423400",
            "hd": "example.com",
        });
        change(&mut claims);
        signed(&claims, Algorithm::ES256, KID, &key(PUBLISHED))
    }

    fn signed(claims: &serde_json::Value, alg: Algorithm, kid: &str, key: &EncodingKey) -> String {
        let mut header = Header::new(alg);
        header.kid = Some(kid.to_string());
        jsonwebtoken::encode(&header, claims, key).unwrap()
    }

    fn with(token: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(IAP_ASSERTION, token.parse().unwrap());
        headers
    }

    async fn refusal(assertions: &IapAssertions, token: &str) -> Refused {
        assertions.verify(&with(token)).await.unwrap_err()
    }

    #[tokio::test]
    async fn an_iap_assertion_of_this_audience_names_the_person() {
        let assertions = IapAssertions::new(&publish().await, AUDIENCE);
        let person = assertions.verify(&with(&assertion(|_| {}))).await.unwrap();
        assert_eq!(person, Person("ana@example.com".into()));
    }

    /// A change to an assertion's claims.
    type Change = Box<dyn FnOnce(&mut serde_json::Value)>;

    #[tokio::test]
    async fn iap_assertions_of_another_audience_issuer_or_time_are_refused() {
        let assertions = IapAssertions::new(&publish().await, AUDIENCE);
        let now = jsonwebtoken::get_current_timestamp() as i64;
        let cases: [(&str, Change, &str); 6] = [
            (
                "another service's audience",
                Box::new(|c| {
                    c["aud"] = "/projects/123456789/locations/europe-west1/services/other".into()
                }),
                "InvalidAudience",
            ),
            (
                "a Google ID token's issuer",
                Box::new(|c| c["iss"] = "https://accounts.google.com".into()),
                "InvalidIssuer",
            ),
            (
                "expired two minutes ago",
                Box::new(move |c| {
                    c["iat"] = (now - 720).into();
                    c["exp"] = (now - 120).into();
                }),
                "ExpiredSignature",
            ),
            (
                "issued in ten minutes",
                Box::new(move |c| c["iat"] = (now + 600).into()),
                "issued in the future",
            ),
            (
                "no issue time",
                Box::new(|c| {
                    c.as_object_mut().unwrap().remove("iat");
                }),
                "iat",
            ),
            (
                "no one named",
                Box::new(|c| {
                    c.as_object_mut().unwrap().remove("email");
                }),
                "names no one",
            ),
        ];
        for (case, change, said) in cases {
            let refused = refusal(&assertions, &assertion(change)).await;
            assert_eq!(refused.status(), StatusCode::UNAUTHORIZED, "{case}");
            assert!(refused.to_string().contains(said), "{case}: {refused}");
        }
    }

    #[tokio::test]
    async fn iap_assertions_not_signed_es256_by_a_published_key_are_refused() {
        let assertions = IapAssertions::new(&publish().await, AUDIENCE);
        let claims = serde_json::json!({
            "aud": AUDIENCE, "email": "ana@example.com", "iss": IAP_ISSUER,
            "iat": jsonwebtoken::get_current_timestamp(),
            "exp": jsonwebtoken::get_current_timestamp() + 600,
        });
        // Another algorithm under the published key's id: an HMAC whose
        // secret would be the public key is the classic forgery.
        let hmac = signed(
            &claims,
            Algorithm::HS256,
            KID,
            &EncodingKey::from_secret(b"anything"),
        );
        let refused = refusal(&assertions, &hmac).await;
        assert!(refused.to_string().contains("not ES256"), "{refused}");
        // A key IAP never published.
        let unknown = signed(&claims, Algorithm::ES256, "not-a-key", &key(UNPUBLISHED));
        let refused = refusal(&assertions, &unknown).await;
        assert!(
            refused.to_string().contains("no published key"),
            "{refused}"
        );
        // The published key's id, another key's signature.
        let forged = signed(&claims, Algorithm::ES256, KID, &key(UNPUBLISHED));
        let refused = refusal(&assertions, &forged).await;
        assert!(
            refused.to_string().contains("InvalidSignature"),
            "{refused}"
        );
        // No key id, or not a JWT at all.
        let anonymous =
            jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &key(PUBLISHED)).unwrap();
        for token in [anonymous.as_str(), "not.a.jwt", "garbage"] {
            let refused = refusal(&assertions, token).await;
            assert_eq!(
                refused.status(),
                StatusCode::UNAUTHORIZED,
                "{token}: {refused}"
            );
        }
    }

    #[tokio::test]
    async fn a_request_without_an_iap_assertion_is_refused_with_a_reason() {
        let assertions = IapAssertions::new(&publish().await, AUDIENCE);
        assert_eq!(
            assertions.verify(&HeaderMap::new()).await.unwrap_err(),
            Refused::NoAssertion
        );
        assert_eq!(
            assertions.verify(&with(" ")).await.unwrap_err(),
            Refused::NoAssertion
        );
        // A Google ID token in Authorization is no IAP assertion.
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(
            assertions.verify(&headers).await.unwrap_err(),
            Refused::NoAssertion
        );
        assert_eq!(Refused::NoAssertion.status(), StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn iap_keys_that_cannot_be_fetched_are_a_503_not_a_pass() {
        let assertions = IapAssertions::new("http://127.0.0.1:9/public_key-jwk", AUDIENCE);
        let refused = refusal(&assertions, &assertion(|_| {})).await;
        assert_eq!(
            refused.status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "{refused}"
        );
    }

    #[tokio::test]
    async fn the_iap_gate_answers_401_without_handling_and_hands_the_person_on() {
        let assertions = Arc::new(IapAssertions::new(&publish().await, AUDIENCE));
        let app = axum::Router::new()
            .route(
                "/ui",
                axum::routing::get(
                    |axum::Extension(Person(email)): axum::Extension<Person>| async move {
                        format!("the page, for {email}")
                    },
                ),
            )
            .layer(axum::middleware::from_fn_with_state(
                assertions,
                require_iap,
            ));
        let answer = |token: Option<String>| {
            let app = app.clone();
            async move {
                let mut request = axum::http::Request::get("/ui");
                if let Some(token) = token {
                    request = request.header(IAP_ASSERTION, token);
                }
                let response = app
                    .oneshot(request.body(Body::empty()).unwrap())
                    .await
                    .unwrap();
                let status = response.status();
                let body = axum::body::to_bytes(response.into_body(), 1 << 16)
                    .await
                    .unwrap();
                (status, String::from_utf8(body.to_vec()).unwrap())
            }
        };
        let (status, body) = answer(None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(body.contains("no Identity-Aware Proxy assertion"), "{body}");
        let (status, body) = answer(Some(assertion(|c| c["aud"] = "/other".into()))).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(!body.contains("the page"), "{body}");
        let (status, body) = answer(Some(assertion(|_| {}))).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "the page, for ana@example.com");
    }
}
