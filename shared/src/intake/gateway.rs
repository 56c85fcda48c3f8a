//! Calls that come through the API Gateway in front of intake as a
//! consumer's Google identity (a JWT the gateway validated) rather than with
//! a tenant's key.
//!
//! The gateway passes the claims of the token it validated to intake,
//! base64url-encoded JSON, in `X-Apigateway-Api-Userinfo`. Anyone allowed to
//! invoke intake could write that header too, so it is read only when the
//! call carries a Google-signed ID token of the gateway's own service
//! account (`GATEWAY_IDENTITY`, of audience `GATEWAY_AUDIENCE` when set),
//! verified here like every other token ([`IdTokens`]): the gateway calls
//! its backend with such a token, in `Authorization`. Then the tenant is the
//! one the claim `GATEWAY_TENANT_CLAIM` names, and `x-api-key` is not read.
//! Any other call's header is ignored, and its tenant comes from its
//! `x-api-key` as always. Unset (no gateway, or one without JWTs), the
//! header is never read.

use super::{Intake, enabled};
use crate::domain::tenant::{Tenant, TenantName};
use crate::error::Result;
use crate::identity::IdTokens;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use clap::Args;
use std::sync::Arc;

/// The header that carries the claims of the consumer's JWT.
pub const USERINFO: &str = "x-apigateway-api-userinfo";
/// The longest header looked at; a token's claims are well under 2 KiB.
const MAX_USERINFO_BYTES: usize = 16 * 1024;

/// The gateway whose word about a consumer's tenant intake takes.
#[derive(Clone, Debug, Default, Args)]
#[command(next_help_heading = "Gateway options")]
pub struct GatewayArgs {
    /// The service account of the API Gateway in front of intake (an
    /// email), whose verified token makes intake take the tenant from the
    /// claims the gateway forwards. Unset: the claims header is never read.
    #[arg(long, env = "GATEWAY_IDENTITY")]
    pub gateway_identity: Option<String>,
    /// The audience the gateway's tokens carry (its backend's JWT
    /// audience). Unset: any audience.
    #[arg(long, env = "GATEWAY_AUDIENCE")]
    pub gateway_audience: Option<String>,
    /// The claim of the consumer's JWT whose value is the tenant's name.
    /// Unset: the claims header is never read.
    #[arg(long, env = "GATEWAY_TENANT_CLAIM")]
    pub gateway_tenant_claim: Option<String>,
}

impl GatewayArgs {
    /// The gateway to trust, when both its account and the claim are named;
    /// its tokens are verified against the keys at `certs_url`.
    pub fn gateway(&self, certs_url: &str) -> Option<Gateway> {
        let named = |value: &Option<String>| {
            value
                .as_deref()
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_string)
        };
        let gateway = Gateway {
            identity: named(&self.gateway_identity)?.to_ascii_lowercase(),
            audiences: named(&self.gateway_audience).into_iter().collect(),
            claim: named(&self.gateway_tenant_claim)?,
            tokens: Arc::new(IdTokens::new(certs_url)),
        };
        tracing::info!(
            identity = %gateway.identity,
            claim = %gateway.claim,
            event = "gateway_claims_trusted",
            "the tenant of a call with the gateway's token is the one its consumer's claim names"
        );
        Some(gateway)
    }
}

/// The gateway's account, and the claim that names a tenant.
pub struct Gateway {
    identity: String,
    audiences: Vec<String>,
    claim: String,
    tokens: Arc<IdTokens>,
}

/// Why the tenant a gateway call names is not taken: the status and the
/// sentence for the caller.
pub(super) type Unvouched = (StatusCode, String);

impl Gateway {
    /// The tenant the gateway vouches for: `None` when the call carries no
    /// claims header, or carries one without the gateway's verified token
    /// (then the header is ignored).
    async fn vouched(
        &self,
        headers: &HeaderMap,
    ) -> Option<std::result::Result<TenantName, Unvouched>> {
        let userinfo = headers.get(USERINFO)?;
        match self.tokens.verify(headers, &self.audiences).await {
            Ok(account) if account == self.identity => {}
            outcome => {
                let caller = outcome.unwrap_or_else(|refused| refused.to_string());
                tracing::warn!(
                    caller = %caller,
                    event = "gateway_claims_ignored",
                    "a claims header from a caller that is not the gateway is ignored"
                );
                return None;
            }
        }
        Some(claimed(userinfo.as_bytes(), &self.claim))
    }
}

impl Intake {
    /// The tenant of a call that came through the gateway as a consumer's
    /// JWT: `None` for every other call; 401 when the claim is missing or
    /// names no tenant, 403 for a disabled tenant.
    pub(super) async fn vouched_tenant(
        &self,
        headers: &HeaderMap,
    ) -> Result<Option<std::result::Result<Tenant, Unvouched>>> {
        let Some(gateway) = &self.gateway else {
            return Ok(None);
        };
        match gateway.vouched(headers).await {
            None => Ok(None),
            Some(Err(refused)) => Ok(Some(Err(refused))),
            Some(Ok(name)) => self.vouched_as(&name, &gateway.claim).await.map(Some),
        }
    }

    /// The tenant `name`, as the gateway's claim `claim` named it.
    async fn vouched_as(
        &self,
        name: &TenantName,
        claim: &str,
    ) -> Result<std::result::Result<Tenant, Unvouched>> {
        Ok(match self.store.cached_tenant(name).await? {
            None => Err((
                StatusCode::UNAUTHORIZED,
                format!("the token's {claim} claim names no tenant"),
            )),
            Some(tenant) => enabled(tenant)
                .map_err(|refused| (StatusCode::FORBIDDEN, refused.reason().to_string())),
        })
    }
}

/// The tenant name that claim `claim` of a claims header holds.
fn claimed(header: &[u8], claim: &str) -> std::result::Result<TenantName, Unvouched> {
    let refused = |why: &str| {
        (
            StatusCode::UNAUTHORIZED,
            format!("the gateway's claims header {why}"),
        )
    };
    if header.len() > MAX_USERINFO_BYTES {
        return Err(refused("is too long"));
    }
    // Base64url, padded or not.
    let text = String::from_utf8_lossy(header);
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text.trim().trim_end_matches('='))
        .map_err(|_| refused("is not base64url"))?;
    let claims: serde_json::Value =
        serde_json::from_slice(&json).map_err(|_| refused("is not JSON"))?;
    let named = claims
        .get(claim)
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| refused(&format!("has no {claim} claim")))?;
    named.parse().map_err(|_| {
        (
            StatusCode::UNAUTHORIZED,
            format!("the token's {claim} claim names no tenant"),
        )
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::api::API_KEY;
    use super::super::promote::AutoPromote;
    use super::super::service::router;
    use super::super::testing::*;
    use super::*;
    use crate::store::Store;
    use crate::store::embedded::EmbeddedBackend;
    use axum::body::Body;
    use axum::http::Request;
    use serde_json::json;

    fn userinfo(claims: serde_json::Value) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims.to_string())
    }

    #[test]
    fn the_claim_names_the_tenant_and_anything_else_is_refused() {
        let header = userinfo(json!({"tenant": "acme", "sub": "1"}));
        assert_eq!(
            claimed(header.as_bytes(), "tenant").unwrap().as_str(),
            "acme"
        );
        // Padded base64url is taken too.
        let padded = format!("{header}==");
        assert_eq!(
            claimed(padded.as_bytes(), "tenant").unwrap().as_str(),
            "acme"
        );
        for (header, why) in [
            ("not base64!".to_string(), "not base64url"),
            (
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("{"),
                "not JSON",
            ),
            (userinfo(json!({"sub": "1"})), "no tenant claim"),
            (userinfo(json!({"tenant": 7})), "no tenant claim"),
            (userinfo(json!({"tenant": "Not A Name"})), "names no tenant"),
        ] {
            let (status, message) = claimed(header.as_bytes(), "tenant").unwrap_err();
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{header}");
            assert!(message.contains(why), "{header}: {message}");
        }
    }

    fn gateway() -> Gateway {
        GatewayArgs {
            gateway_identity: Some("Gateway@p.iam.gserviceaccount.com".into()),
            gateway_audience: None,
            gateway_tenant_claim: Some("tenant".into()),
        }
        // Nothing listens here: no token can be verified.
        .gateway("http://127.0.0.1:9/certs")
        .unwrap()
    }

    /// Intake over `store` that trusts [`gateway`], and its router.
    async fn gateway_app(store: Store) -> (Arc<Intake>, App) {
        let (adapters, bus) = adapters_on(&store).await;
        let intake =
            Arc::new(Intake::new(adapters, true, AutoPromote::Off).with_gateway(Some(gateway())));
        let app = App {
            router: router(intake.clone()),
            key: key_of(&store, "default").await,
            store,
            bus,
        };
        (intake, app)
    }

    fn store() -> Store {
        Store::new(Arc::new(EmbeddedBackend::in_memory().unwrap()))
    }

    #[test]
    fn it_is_off_unless_both_the_account_and_the_claim_are_named() {
        let args = GatewayArgs {
            gateway_identity: Some("g@p.iam.gserviceaccount.com".into()),
            gateway_audience: None,
            gateway_tenant_claim: Some("  ".into()),
        };
        assert!(args.gateway("http://127.0.0.1:9/certs").is_none());
        assert!(GatewayArgs::default().gateway("x").is_none());
        assert_eq!(gateway().identity, "gateway@p.iam.gserviceaccount.com");
    }

    #[tokio::test]
    async fn a_claims_header_without_the_gateways_token_is_ignored() {
        let gateway = gateway();
        let mut headers = HeaderMap::new();
        headers.insert(
            USERINFO,
            userinfo(json!({"tenant": "acme"})).parse().unwrap(),
        );
        assert!(gateway.vouched(&headers).await.is_none(), "no token");
        headers.insert("authorization", "Bearer not.a.jwt".parse().unwrap());
        assert!(gateway.vouched(&headers).await.is_none(), "a bad token");
        assert!(
            gateway.vouched(&HeaderMap::new()).await.is_none(),
            "no header"
        );
    }

    #[tokio::test]
    async fn over_http_a_forged_claims_header_does_not_replace_the_key() {
        let (_, app) = gateway_app(store()).await;
        let acme = key_of(&app.store, "acme").await;
        let forged = userinfo(json!({"tenant": "acme"}));
        // Without a key the forged header names nobody: 401.
        let request = Request::get("/v1/stats")
            .header(USERINFO, &forged)
            .header(API_KEY, "")
            .body(Body::empty())
            .unwrap();
        assert_eq!(call(&app, request).await.0, StatusCode::UNAUTHORIZED);
        // With the default tenant's key it is the default tenant's call.
        let request = Request::post("/v1/jobs")
            .header(USERINFO, &forged)
            .body(Body::from(
                r#"{"kind":"image","prompt":"Soap cut into cubes"}"#,
            ))
            .unwrap();
        let (status, answer) = call(&app, request).await;
        assert_eq!(status, StatusCode::CREATED, "{answer}");
        let id = answer["jobs"][0]["id"].as_str().unwrap();
        let request = Request::get(format!("/v1/jobs/{id}"))
            .header(API_KEY, &acme)
            .body(Body::empty())
            .unwrap();
        assert_eq!(call(&app, request).await.0, StatusCode::NOT_FOUND);
        let request = Request::get(format!("/v1/jobs/{id}"))
            .body(Body::empty())
            .unwrap();
        assert_eq!(call(&app, request).await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn a_vouched_claim_of_no_tenant_is_401_and_of_a_disabled_one_403() {
        let store = store();
        key_of(&store, "acme").await;
        key_of(&store, "globex").await;
        let globex: TenantName = "globex".parse().unwrap();
        store
            .change_tenant(&globex, |t, now| {
                t.set_disabled(true, now);
                Ok(())
            })
            .await
            .unwrap();
        let (intake, _) = gateway_app(store).await;
        let vouched = async |name: &str| {
            let header = userinfo(json!({"tenant": name}));
            let name = claimed(header.as_bytes(), "tenant").unwrap();
            intake.vouched_as(&name, "tenant").await.unwrap()
        };
        assert_eq!(vouched("acme").await.unwrap().name().as_str(), "acme");
        assert_eq!(
            vouched("nobody").await.unwrap_err().0,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            vouched("globex").await.unwrap_err().0,
            StatusCode::FORBIDDEN
        );
    }
}
