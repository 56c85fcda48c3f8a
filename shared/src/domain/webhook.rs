//! Webhooks: where a tenant's program hears about its jobs, which events it
//! hears of, which addresses a delivery may go to, and the secrets that sign
//! every delivery (the Standard Webhooks `whsec_` form).

use super::invalid::ValidationError;
use crate::time::Timestamp;
use base64::Engine;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use std::time::Duration;
use url::{Host, Url};

/// The longest webhook URL accepted.
const MAX_URL_BYTES: usize = 2000;
/// The start of every signing secret (Standard Webhooks).
pub const SECRET_PREFIX: &str = "whsec_";
/// Random bytes in a new secret (the specification asks for 24 to 64).
const SECRET_BYTES: usize = 32;
/// How long a secret replaced by a rotation keeps signing, so receivers
/// can move to the new one: a day.
pub const DEFAULT_SECRET_GRACE: Duration = Duration::from_secs(24 * 3600);
/// The most secrets a tenant holds at once (the current one and those
/// still in their grace).
const MAX_SECRETS: usize = 5;
/// Host names that reach a cloud machine's metadata server.
const METADATA_HOSTS: [&str; 3] = ["metadata.google.internal", "metadata", "metadata.goog"];

/// What a webhook is sent for, as hosted generation APIs name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WebhookEvent {
    /// A generator took the job for the first time.
    Start,
    /// The model's outputs are in the output bucket.
    Output,
    /// The job reached its end: delivered, failed, cancelled, or completed
    /// with nothing to deliver.
    Completed,
}

impl WebhookEvent {
    /// Every event, in the order a job meets them.
    pub const ALL: [WebhookEvent; 3] = [
        WebhookEvent::Start,
        WebhookEvent::Output,
        WebhookEvent::Completed,
    ];

    /// The events of a webhook that names none: its outputs and its end.
    pub const DEFAULT: [WebhookEvent; 2] = [WebhookEvent::Output, WebhookEvent::Completed];

    /// The name used in requests and documents.
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookEvent::Start => "start",
            WebhookEvent::Output => "output",
            WebhookEvent::Completed => "completed",
        }
    }
}

impl fmt::Display for WebhookEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for WebhookEvent {
    type Err = ValidationError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        WebhookEvent::ALL
            .into_iter()
            .find(|event| event.as_str() == text)
            .ok_or_else(|| {
                ValidationError::new(
                    "webhook_events_filter",
                    "each event must be one of start, output, completed",
                )
            })
    }
}

/// Where a job's events are sent, and which of them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Webhook {
    /// An `https://` URL (`http://` where private networks are allowed).
    pub url: String,
    /// The events sent, each once, in order.
    pub events: Vec<WebhookEvent>,
}

impl Webhook {
    /// A webhook to `url` for `events` (the default ones when `None`),
    /// checked: a URL a delivery may go to, and known events. `private`
    /// allows `http://` and private addresses (tests, a laptop).
    pub fn new(
        url: &str,
        events: Option<&[String]>,
        private: bool,
    ) -> Result<Self, ValidationError> {
        check_url(url, private)?;
        let mut chosen = match events {
            None => WebhookEvent::DEFAULT.to_vec(),
            Some(names) => names
                .iter()
                .map(|name| name.parse())
                .collect::<Result<Vec<WebhookEvent>, _>>()?,
        };
        if chosen.is_empty() {
            return Err(ValidationError::new(
                "webhook_events_filter",
                "name at least one of start, output, completed (or leave it out for output and completed)",
            ));
        }
        chosen.sort();
        chosen.dedup();
        Ok(Self {
            url: url.to_string(),
            events: chosen,
        })
    }

    /// Whether it is sent for `event`.
    pub fn wants(&self, event: WebhookEvent) -> bool {
        self.events.contains(&event)
    }
}

/// Checks that `url` is one a delivery may be sent to, before any name is
/// resolved: `https://` with a host (`http://` too when `private`), no
/// credentials, and, unless `private`, no address or name of a loopback,
/// private, link-local or metadata host. The sender checks the addresses a
/// name resolves to again when it connects.
pub fn check_url(url: &str, private: bool) -> Result<Url, ValidationError> {
    let refused = |why: &str| ValidationError::new("webhook", why.to_string());
    if url.len() > MAX_URL_BYTES {
        return Err(refused(&format!("must be at most {MAX_URL_BYTES} bytes")));
    }
    let parsed = Url::parse(url).map_err(|_| refused("must be an absolute https:// URL"))?;
    match (parsed.scheme(), private) {
        ("https", _) | ("http", true) => {}
        ("http", false) => {
            return Err(refused(
                "must be https:// (plain http:// only where WEBHOOK_ALLOW_PRIVATE_NETWORKS=true)",
            ));
        }
        _ => return Err(refused("must be an absolute https:// URL")),
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(refused("must not carry a user name or password"));
    }
    if private {
        return parsed
            .host()
            .is_some()
            .then_some(parsed.clone())
            .ok_or_else(|| refused("must name a host"));
    }
    let forbidden = "must not name a loopback, private, link-local or metadata address";
    match parsed.host() {
        None => Err(refused("must name a host")),
        Some(Host::Ipv4(ip)) if !is_public(IpAddr::V4(ip)) => Err(refused(forbidden)),
        Some(Host::Ipv6(ip)) if !is_public(IpAddr::V6(ip)) => Err(refused(forbidden)),
        Some(Host::Domain(name)) if is_internal_name(name) => Err(refused(forbidden)),
        Some(_) => Ok(parsed),
    }
}

/// Whether `name` is a host name that only reaches this machine or its
/// cloud's metadata server.
fn is_internal_name(name: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost"
        || name.ends_with(".localhost")
        || name.ends_with(".internal")
        || METADATA_HOSTS.contains(&name.as_str())
}

/// Whether `ip` is an address on the public internet: not loopback,
/// private, shared (carrier NAT), link-local (the metadata server,
/// 169.254.169.254, among them), unspecified, multicast, broadcast,
/// reserved or for documentation; an IPv6 address that carries an IPv4 one
/// (mapped, NAT64) is judged by that one.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => is_public_v4(ip),
        IpAddr::V6(ip) => is_public_v6(ip),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b))
        || (a == 192 && b == 0 && c == 0)
        || (a == 198 && (b == 18 || b == 19))
        || a >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let segments = ip.segments();
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    // NAT64 (64:ff9b::/96) reaches the IPv4 address in its last 32 bits.
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let [.., hi, lo] = segments;
        return is_public_v4(Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo)));
    }
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        // unique local, fc00::/7 (the metadata server's fd00:ec2::254 too)
        || (segments[0] & 0xfe00) == 0xfc00
        // link-local, fe80::/10
        || (segments[0] & 0xffc0) == 0xfe80
        // documentation, 2001:db8::/32
        || (segments[0] == 0x2001 && segments[1] == 0x0db8)
        // IPv4-compatible (deprecated), ::/96
        || segments[..6] == [0, 0, 0, 0, 0, 0])
}

/// One of a tenant's signing secrets.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookSecret {
    /// `whsec_` and the base64 of the key.
    pub secret: String,
    /// When it was made.
    pub created_at: Timestamp,
    /// When it stops signing (a rotated secret's grace); `None` for the
    /// current one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookSecret")
            .field("created_at", &self.created_at)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl WebhookSecret {
    /// A new random secret, current from `now`.
    pub fn generate(now: Timestamp) -> Self {
        let mut key = [0u8; SECRET_BYTES];
        rand::Rng::fill(&mut rand::rng(), &mut key);
        Self {
            secret: format!(
                "{SECRET_PREFIX}{}",
                base64::engine::general_purpose::STANDARD.encode(key)
            ),
            created_at: now,
            expires_at: None,
        }
    }

    /// Whether it still signs at `now`.
    pub fn is_live(&self, now: Timestamp) -> bool {
        self.expires_at.is_none_or(|end| now < end)
    }

    /// The key bytes; `None` for a secret not of the `whsec_` form.
    pub fn key(&self) -> Option<Vec<u8>> {
        let encoded = self.secret.strip_prefix(SECRET_PREFIX)?;
        base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .ok()
    }
}

/// Puts a new current secret in `secrets`: every live one keeps signing
/// for `grace` from `now`, spent ones are dropped, the oldest go beyond
/// [`MAX_SECRETS`]. Returns the new one.
pub fn rotate_secret(
    secrets: &mut Vec<WebhookSecret>,
    grace: Duration,
    now: Timestamp,
) -> WebhookSecret {
    let end = now.plus(grace);
    secrets.retain(|secret| secret.is_live(now));
    for secret in secrets.iter_mut() {
        secret.expires_at = Some(secret.expires_at.map_or(end, |at| at.min(end)));
    }
    let new = WebhookSecret::generate(now);
    secrets.push(new.clone());
    let excess = secrets.len().saturating_sub(MAX_SECRETS);
    secrets.drain(..excess);
    new
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_urls_are_https_to_public_hosts_unless_private_networks_are_allowed() {
        for url in [
            "https://hooks.example.com/asmr",
            "https://203.0.113.1.nip.io/x",
            "https://8.8.8.8/hook",
            "https://[2606:4700::1111]/hook",
        ] {
            assert!(check_url(url, false).is_ok(), "{url}");
        }
        for (url, why) in [
            ("http://hooks.example.com/", "https"),
            ("ftp://hooks.example.com/", "https"),
            ("hooks.example.com/x", "https"),
            ("https://user:pw@hooks.example.com/", "user name"),
            ("https://127.0.0.1/", "loopback"),
            ("https://10.1.2.3/", "loopback"),
            ("https://172.16.0.1/", "loopback"),
            ("https://192.168.1.1/", "loopback"),
            ("https://169.254.169.254/computeMetadata/v1/", "loopback"),
            ("https://100.64.0.1/", "loopback"),
            ("https://0.0.0.0/", "loopback"),
            ("https://[::1]/", "loopback"),
            ("https://[fe80::1]/", "loopback"),
            ("https://[fd00:ec2::254]/", "loopback"),
            ("https://[::ffff:127.0.0.1]/", "loopback"),
            ("https://[64:ff9b::a9fe:a9fe]/", "loopback"),
            ("https://localhost/", "loopback"),
            ("https://metadata.google.internal/", "loopback"),
            ("https://METADATA.GOOGLE.INTERNAL./", "loopback"),
            ("https://2130706433/", "loopback"),
            ("https://0x7f.1/", "loopback"),
        ] {
            let e = check_url(url, false).expect_err(url);
            assert!(e.message.contains(why), "{url}: {e}");
        }
        assert!(check_url("http://127.0.0.1:8080/hook", true).is_ok());
        assert!(check_url("https://user@127.0.0.1/", true).is_err());
    }

    #[test]
    fn a_webhook_names_known_events_each_once_and_defaults_to_output_and_completed() {
        let hook = Webhook::new("https://h.example.com/", None, false).unwrap();
        assert_eq!(hook.events, WebhookEvent::DEFAULT.to_vec());
        let names = ["completed", "start", "completed"].map(String::from);
        let hook = Webhook::new("https://h.example.com/", Some(&names), false).unwrap();
        assert_eq!(
            hook.events,
            vec![WebhookEvent::Start, WebhookEvent::Completed]
        );
        assert!(hook.wants(WebhookEvent::Start) && !hook.wants(WebhookEvent::Output));
        let e = Webhook::new("https://h.example.com/", Some(&["logs".into()]), false).unwrap_err();
        assert_eq!(e.field, "webhook_events_filter");
        assert!(Webhook::new("https://h.example.com/", Some(&[]), false).is_err());
    }

    #[test]
    fn a_rotation_keeps_the_old_secret_signing_for_its_grace_only() {
        let t0 = Timestamp::parse("2026-01-01T00:00:00Z").unwrap();
        let mut secrets = Vec::new();
        let first = rotate_secret(&mut secrets, DEFAULT_SECRET_GRACE, t0);
        assert!(first.secret.starts_with(SECRET_PREFIX));
        assert_eq!(first.key().unwrap().len(), SECRET_BYTES);
        let t1 = t0.plus(Duration::from_secs(60));
        let second = rotate_secret(&mut secrets, Duration::from_secs(3600), t1);
        assert_ne!(first.secret, second.secret);
        let live = |at: Timestamp| secrets.iter().filter(|s| s.is_live(at)).count();
        assert_eq!(live(t1), 2, "both sign during the rotation");
        assert_eq!(live(t1.plus(Duration::from_secs(3601))), 1);
        assert!(
            !format!("{first:?}").contains(&first.secret),
            "never logged"
        );
    }
}
