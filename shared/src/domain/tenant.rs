//! Tenants: the teams that share one deployment. Each has its own API keys,
//! daily budget, share of each model's quota, output prefix and delivery
//! destination. A tenant named `default` always exists, stored or not, so a
//! record written before tenants existed (no `tenant` field) is the default
//! tenant's.

use super::destination::Destination;
use super::invalid::ValidationError;
use super::webhook::{Webhook, WebhookSecret, rotate_secret};
use crate::time::Timestamp;
use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// The most bytes of a tenant name.
const MAX_NAME_BYTES: usize = 30;
/// The most characters of a display name.
const MAX_DISPLAY_NAME_CHARS: usize = 200;
/// The largest weight: a share of a model's quota is `weight / Σ weights`.
pub const MAX_WEIGHT: u32 = 1000;
/// How long a key replaced by `asmr tenant key NAME --rotate` keeps working
/// unless another grace is asked for: a day, time to roll the new key out.
pub const DEFAULT_KEY_GRACE: Duration = Duration::from_secs(24 * 3600);
/// The start of every API key, so a leaked one is recognisable by scanners.
const KEY_PREFIX: &str = "asmr_";
/// The most keys a tenant holds at once (the current one and those still
/// in their grace).
const MAX_KEYS: usize = 10;

/// A tenant's name: `default`, or 1 to 30 lowercase letters, digits and
/// dashes starting with a letter. It is a path segment of the tenant's
/// output prefix and destination, so nothing else is accepted.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TenantName(String);

impl TenantName {
    /// The name of the tenant that always exists.
    pub const DEFAULT: &'static str = "default";

    /// Whether this is the default tenant.
    pub fn is_default(&self) -> bool {
        self.0 == Self::DEFAULT
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for TenantName {
    fn default() -> Self {
        Self(Self::DEFAULT.to_string())
    }
}

impl fmt::Display for TenantName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for TenantName {
    type Err = ValidationError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        let well_formed = !name.is_empty()
            && name.len() <= MAX_NAME_BYTES
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && !name.ends_with('-')
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        match well_formed {
            true => Ok(Self(name.to_string())),
            false => Err(ValidationError::new(
                "tenant",
                format!(
                    "must be 1 to {MAX_NAME_BYTES} lowercase letters, digits and dashes, starting with a letter and not ending with a dash"
                ),
            )),
        }
    }
}

impl TryFrom<String> for TenantName {
    type Error = ValidationError;

    fn try_from(name: String) -> Result<Self, Self::Error> {
        name.parse()
    }
}

impl From<TenantName> for String {
    fn from(name: TenantName) -> Self {
        name.0
    }
}

/// What an operator may set on a tenant; `None` leaves a setting as it is
/// (or at its default, for a new tenant).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TenantSettings {
    /// A name for people.
    pub display_name: Option<String>,
    /// The tenant's own daily budget in millionths of a US dollar;
    /// `Some(None)` removes it.
    pub daily_budget_micros: Option<Option<u64>>,
    /// Its share of each model's quota, relative to the other tenants'.
    pub weight: Option<u32>,
    /// Where its files are delivered; `Some(None)` goes back to the
    /// deployment's destination plus `/{name}`.
    pub destination: Option<Option<String>>,
    /// The webhook of its jobs that name none; `Some(None)` removes it.
    pub webhook: Option<Option<Webhook>>,
}

impl TenantSettings {
    /// Checks every setting given.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if let Some(name) = &self.display_name
            && (name.trim().is_empty()
                || name.chars().count() > MAX_DISPLAY_NAME_CHARS
                || name.chars().any(char::is_control))
        {
            return Err(ValidationError::new(
                "display_name",
                format!("must be 1 to {MAX_DISPLAY_NAME_CHARS} characters, none a control"),
            ));
        }
        if let Some(weight) = self.weight
            && !(1..=MAX_WEIGHT).contains(&weight)
        {
            return Err(ValidationError::new(
                "weight",
                format!("must be a whole number from 1 to {MAX_WEIGHT}"),
            ));
        }
        if let Some(Some(destination)) = &self.destination {
            let refused = |why: String| {
                ValidationError::new(
                    "destination",
                    format!("must be gs://bucket/prefix or a directory: {why}"),
                )
            };
            if destination.chars().any(char::is_control) {
                return Err(refused("it holds a control character".into()));
            }
            destination.parse::<Destination>().map_err(refused)?;
        }
        Ok(())
    }
}

/// One API key of a tenant, as stored: its hash, never the key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ApiKey {
    /// SHA-256 of the key, in hex. Keys are 256 random bits, so a fast hash
    /// is as safe as a slow one and the lookup costs nothing.
    pub hash: String,
    /// The key's first characters, to tell keys apart in `asmr tenant show`.
    pub hint: String,
    /// When it was made.
    pub created_at: Timestamp,
    /// When it stops working (a rotated key's grace); `None` for the
    /// current key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
}

impl ApiKey {
    /// The SHA-256 of `key`, in hex: what is stored and looked up.
    pub fn hash_of(key: &str) -> String {
        Sha256::digest(key.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Whether this key is still accepted at `now`.
    pub fn is_live(&self, now: Timestamp) -> bool {
        self.expires_at.is_none_or(|end| now < end)
    }
}

/// A new API key, shown once to the operator who made it.
#[derive(Clone, PartialEq, Eq)]
pub struct IssuedKey(String);

impl IssuedKey {
    /// The key, to hand to the tenant.
    pub fn reveal(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for IssuedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("IssuedKey(…)")
    }
}

/// A tenant record (`tenants/{name}`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Tenant {
    /// The document id.
    pub(in crate::domain) id: TenantName,
    pub(in crate::domain) display_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(in crate::domain) daily_budget_micros: Option<u64>,
    pub(in crate::domain) weight: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(in crate::domain) destination: Option<String>,
    #[serde(default)]
    pub(in crate::domain) keys: Vec<ApiKey>,
    #[serde(default)]
    pub(in crate::domain) disabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(in crate::domain) webhook: Option<Webhook>,
    /// The secrets that sign its webhooks: the current one and those in
    /// a rotation's grace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(in crate::domain) webhook_secrets: Vec<WebhookSecret>,
    /// URLs whose receiver answered 410 Gone: nothing more goes there.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(in crate::domain) gone_webhooks: Vec<String>,
    /// `None` for the default tenant while nobody stored it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(in crate::domain) created_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(in crate::domain) updated_at: Option<Timestamp>,
}

impl Tenant {
    /// A new tenant with `settings` (weight 1, no budget of its own, the
    /// default destination unless set).
    pub fn new(
        name: TenantName,
        settings: &TenantSettings,
        now: Timestamp,
    ) -> Result<Self, ValidationError> {
        let mut tenant = Self::unstored(name);
        tenant.created_at = Some(now);
        tenant.set(settings, now)?;
        Ok(tenant)
    }

    /// The default tenant as it is before anyone stores it: no key, no
    /// budget of its own, weight 1.
    pub fn implicit_default() -> Self {
        Self::unstored(TenantName::default())
    }

    /// A tenant as it is before anyone stores it: no key, no budget of its
    /// own, weight 1, the default destination.
    pub fn unstored(name: TenantName) -> Self {
        Self {
            display_name: name.to_string(),
            id: name,
            daily_budget_micros: None,
            weight: 1,
            destination: None,
            keys: Vec::new(),
            disabled: false,
            webhook: None,
            webhook_secrets: Vec::new(),
            gone_webhooks: Vec::new(),
            created_at: None,
            updated_at: None,
        }
    }

    /// Its name.
    pub fn name(&self) -> &TenantName {
        &self.id
    }
    /// A name for people.
    pub fn display_name(&self) -> &str {
        &self.display_name
    }
    /// Its own daily budget in millionths of a US dollar, on top of the
    /// deployment's.
    pub fn daily_budget_micros(&self) -> Option<u64> {
        self.daily_budget_micros
    }
    /// Its share of each model's quota, relative to the other tenants'.
    pub fn weight(&self) -> u32 {
        self.weight
    }
    /// The destination it set, if any (see [`Tenant::destination_under`]).
    pub fn destination(&self) -> Option<&str> {
        self.destination.as_deref()
    }
    /// Its keys' hashes and hints, the current one and those in grace.
    pub fn keys(&self) -> &[ApiKey] {
        &self.keys
    }
    /// Whether it is disabled: its keys are refused with 403 and its
    /// requests rejected.
    pub fn disabled(&self) -> bool {
        self.disabled
    }
    /// When it was made; `None` for the default tenant nobody stored.
    pub fn created_at(&self) -> Option<Timestamp> {
        self.created_at
    }

    /// Where its objects go in the output bucket: nothing for the default
    /// tenant (today's layout), `tenants/{name}/` for every other, so a
    /// bucket IAM condition on that prefix gives a tenant its own objects.
    pub fn output_prefix(name: &TenantName) -> String {
        match name.is_default() {
            true => String::new(),
            false => format!("tenants/{name}/"),
        }
    }

    /// Where its files are delivered: the destination it set, else the
    /// deployment's (the default tenant) or a folder `{name}` below it.
    pub fn destination_in(&self, deployment: &Destination) -> Destination {
        match (&self.destination, self.id.is_default()) {
            // Checked when it was set.
            (Some(own), _) => own
                .parse()
                .unwrap_or_else(|_| deployment.below(self.id.as_str())),
            (None, true) => deployment.clone(),
            (None, false) => deployment.below(self.id.as_str()),
        }
    }

    /// Applies `settings`.
    pub fn set(
        &mut self,
        settings: &TenantSettings,
        now: Timestamp,
    ) -> Result<(), ValidationError> {
        settings.validate()?;
        if let Some(name) = &settings.display_name {
            self.display_name = name.trim().to_string();
        }
        if let Some(budget) = settings.daily_budget_micros {
            self.daily_budget_micros = budget;
        }
        if let Some(weight) = settings.weight {
            self.weight = weight;
        }
        if let Some(destination) = &settings.destination {
            self.destination = destination.clone();
        }
        if let Some(webhook) = &settings.webhook {
            // Setting a URL again is an operator's word that it listens.
            if let Some(hook) = webhook {
                self.gone_webhooks.retain(|url| *url != hook.url);
            }
            self.webhook = webhook.clone();
        }
        self.touch(now);
        Ok(())
    }

    /// Disables (`true`) or enables it again.
    pub fn set_disabled(&mut self, disabled: bool, now: Timestamp) {
        self.disabled = disabled;
        self.touch(now);
    }

    /// Makes a new key. Every key still live keeps working for `grace`
    /// from now (a first key has nothing to replace); keys whose grace is
    /// over are dropped.
    pub fn rotate_key(&mut self, grace: Duration, now: Timestamp) -> IssuedKey {
        let end = now.plus(grace);
        self.keys.retain(|key| key.is_live(now));
        for key in &mut self.keys {
            key.expires_at = Some(key.expires_at.map_or(end, |at| at.min(end)));
        }
        let mut secret = [0u8; 32];
        rand::Rng::fill(&mut rand::rng(), &mut secret);
        let key = format!(
            "{KEY_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)
        );
        self.keys.push(ApiKey {
            hash: ApiKey::hash_of(&key),
            hint: key.chars().take(KEY_PREFIX.len() + 4).collect(),
            created_at: now,
            expires_at: None,
        });
        // The oldest go first when a tenant rotates again and again.
        let excess = self.keys.len().saturating_sub(MAX_KEYS);
        self.keys.drain(..excess);
        self.touch(now);
        IssuedKey(key)
    }

    /// The webhook of its jobs that name none.
    pub fn webhook(&self) -> Option<&Webhook> {
        self.webhook.as_ref()
    }

    /// The secrets that sign its webhooks at `now`, the newest first.
    pub fn webhook_secrets(&self, now: Timestamp) -> Vec<&WebhookSecret> {
        let mut live: Vec<&WebhookSecret> = self
            .webhook_secrets
            .iter()
            .filter(|secret| secret.is_live(now))
            .collect();
        live.sort_by_key(|secret| std::cmp::Reverse(secret.created_at));
        live
    }

    /// Makes a new signing secret; the live ones keep signing for `grace`.
    pub fn rotate_webhook_secret(&mut self, grace: Duration, now: Timestamp) -> WebhookSecret {
        let secret = rotate_secret(&mut self.webhook_secrets, grace, now);
        self.touch(now);
        secret
    }

    /// Whether its receiver at `url` answered 410 Gone.
    pub fn is_gone(&self, url: &str) -> bool {
        self.gone_webhooks.iter().any(|gone| gone == url)
    }

    /// Stops (`true`) or resumes deliveries to `url`.
    pub fn set_gone(&mut self, url: &str, gone: bool, now: Timestamp) {
        self.gone_webhooks.retain(|known| known != url);
        if gone {
            self.gone_webhooks.push(url.to_string());
        }
        self.touch(now);
    }

    /// The record without its signing secrets, for listings.
    pub fn without_secrets(&self) -> Self {
        Self {
            webhook_secrets: Vec::new(),
            ..self.clone()
        }
    }

    /// Whether the key with hash `hash` is one of its live keys at `now`.
    pub fn accepts(&self, hash: &str, now: Timestamp) -> bool {
        self.keys
            .iter()
            .any(|key| key.hash == hash && key.is_live(now))
    }

    fn touch(&mut self, now: Timestamp) {
        self.updated_at = Some(now);
        self.created_at.get_or_insert(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: u64) -> Timestamp {
        Timestamp::parse("2026-01-01T00:00:00Z")
            .unwrap()
            .plus(Duration::from_secs(seconds))
    }

    #[test]
    fn names_are_path_safe_lowercase_words() {
        for good in ["default", "acme", "team-7", "a"] {
            assert_eq!(good.parse::<TenantName>().unwrap().as_str(), good);
        }
        for bad in [
            "",
            "Acme",
            "7up",
            "a/b",
            "..",
            "a b",
            "team-",
            "a_b",
            "é",
            &"a".repeat(31),
        ] {
            assert!(bad.parse::<TenantName>().is_err(), "{bad:?} was accepted");
        }
        assert_eq!(
            serde_json::from_str::<TenantName>("\"../x\"")
                .unwrap_err()
                .to_string(),
            "tenant: must be 1 to 30 lowercase letters, digits and dashes, starting with a letter and not ending with a dash"
        );
    }

    #[test]
    fn a_rotated_key_works_through_its_grace_and_then_stops() {
        let mut tenant =
            Tenant::new("acme".parse().unwrap(), &TenantSettings::default(), at(0)).unwrap();
        let first = tenant.rotate_key(DEFAULT_KEY_GRACE, at(0));
        let first_hash = ApiKey::hash_of(first.reveal());
        assert!(first.reveal().starts_with("asmr_") && first.reveal().len() > 40);
        assert!(tenant.accepts(&first_hash, at(10)));
        assert!(
            !tenant
                .keys()
                .iter()
                .any(|key| key.hash.contains(first.reveal()))
        );

        let second = tenant.rotate_key(Duration::from_secs(3600), at(100));
        let second_hash = ApiKey::hash_of(second.reveal());
        assert!(tenant.accepts(&first_hash, at(3699)));
        assert!(!tenant.accepts(&first_hash, at(3700)));
        assert!(tenant.accepts(&second_hash, at(1_000_000)));
        assert!(!tenant.accepts(&ApiKey::hash_of("asmr_guess"), at(10)));

        // A rotation with no grace ends every earlier key at once, and
        // keys whose grace is over are dropped.
        let third = tenant.rotate_key(Duration::ZERO, at(5000));
        assert!(!tenant.accepts(&second_hash, at(5000)));
        assert!(tenant.accepts(&ApiKey::hash_of(third.reveal()), at(5000)));
        assert_eq!(tenant.keys().len(), 2);
        assert_eq!(format!("{third:?}"), "IssuedKey(…)");
    }

    #[test]
    fn prefixes_and_destinations_follow_the_name_unless_set() {
        let out = |text: &str| text.parse::<Destination>().unwrap();
        let default = Tenant::implicit_default();
        assert_eq!(Tenant::output_prefix(default.name()), "");
        assert_eq!(default.destination_in(&out("/srv/out")), out("/srv/out"));
        let mut acme =
            Tenant::new("acme".parse().unwrap(), &TenantSettings::default(), at(0)).unwrap();
        assert_eq!(Tenant::output_prefix(acme.name()), "tenants/acme/");
        assert_eq!(
            acme.destination_in(&out("gs://b/out/")),
            out("gs://b/out/acme")
        );
        assert_eq!(acme.destination_in(&out("gs://b")), out("gs://b/acme"));
        assert_eq!(acme.destination_in(&out("/srv/out")), out("/srv/out/acme"));
        let own = TenantSettings {
            destination: Some(Some("/mnt/acme".into())),
            ..TenantSettings::default()
        };
        acme.set(&own, at(1)).unwrap();
        assert_eq!(acme.destination_in(&out("gs://b/out")), out("/mnt/acme"));
        let bad = TenantSettings {
            destination: Some(Some("gs://b/../x".into())),
            ..TenantSettings::default()
        };
        assert!(acme.set(&bad, at(2)).is_err());
    }

    #[test]
    fn settings_are_checked() {
        let bad = [
            TenantSettings {
                weight: Some(0),
                ..TenantSettings::default()
            },
            TenantSettings {
                destination: Some(Some("gs://".into())),
                ..TenantSettings::default()
            },
            TenantSettings {
                display_name: Some(" ".into()),
                ..TenantSettings::default()
            },
        ];
        for settings in bad {
            assert!(settings.validate().is_err(), "{settings:?}");
        }
    }
}
