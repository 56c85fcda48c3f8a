//! Sending one webhook: signed, to an address that is checked where the
//! connection is made, without following redirects, within a time limit,
//! reading no more of the answer than a line of it.
//!
//! A URL was checked when the job was made; the names it holds are checked
//! again here, address by address, by the resolver the client connects
//! with, so a name that resolves to a private address now (DNS rebinding)
//! is refused even if it did not then.

use crate::domain::webhook::{WebhookSecret, check_url, is_public};
use crate::domain::webhook_delivery::{Answer, Delivery};
use crate::time::Timestamp;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The most bytes of a receiver's answer read; the rest is left unread.
const MAX_ANSWER_BYTES: usize = 1024;
/// The longest `Retry-After` honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(6 * 3600);

/// Resolves names for the webhook client, keeping public addresses only
/// (every address, when private networks are allowed).
struct GuardedResolver {
    private: bool,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let private = self.private;
        Box::pin(async move {
            let host = name.as_str().to_string();
            let all: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let kept: Vec<SocketAddr> = all
                .into_iter()
                .filter(|addr| private || is_public(addr.ip()))
                .collect();
            if kept.is_empty() {
                return Err(format!(
                    "refused: {host} resolves to no public address (loopback, private, link-local or metadata)"
                )
                .into());
            }
            let addrs: Addrs = Box::new(kept.into_iter());
            Ok(addrs)
        })
    }
}

/// The webhook client.
#[derive(Clone)]
pub struct Sender {
    client: reqwest::Client,
    private: bool,
}

impl Sender {
    /// A sender whose attempts last at most `timeout`; `private` lets it
    /// reach private addresses over plain http (tests, a laptop).
    pub fn new(private: bool, timeout: Duration) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .dns_resolver(Arc::new(GuardedResolver { private }))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .user_agent(concat!("asmr-notifier/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self { client, private })
    }

    /// Sends `delivery` once, signed with `secrets`, and says what came of
    /// it.
    pub async fn send(&self, delivery: &Delivery, secrets: &[&WebhookSecret]) -> Answer {
        if let Err(e) = check_url(&delivery.url, self.private) {
            return Answer::Unreachable(format!("refused: {}", e.message));
        }
        let timestamp = Timestamp::now().unix_parts().0;
        let signature =
            super::sign::signature(secrets, &delivery.id, timestamp, delivery.body.as_bytes());
        let sent = self
            .client
            .post(&delivery.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("webhook-id", &delivery.id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(delivery.body.clone())
            .send()
            .await;
        let mut response = match sent {
            Ok(response) => response,
            Err(e) => return Answer::Unreachable(describe(&e)),
        };
        let status = response.status().as_u16();
        if response.status().is_success() {
            return Answer::Accepted(status);
        }
        if status == 410 {
            return Answer::Gone;
        }
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|text| text.trim().parse::<u64>().ok())
            .map(|seconds| Duration::from_secs(seconds).min(MAX_RETRY_AFTER));
        let mut read = Vec::new();
        while read.len() < MAX_ANSWER_BYTES {
            match response.chunk().await {
                Ok(Some(chunk)) => read.extend_from_slice(&chunk),
                _ => break,
            }
        }
        read.truncate(MAX_ANSWER_BYTES);
        Answer::Refused {
            status,
            excerpt: String::from_utf8_lossy(&read).trim().to_string(),
            retry_after,
        }
    }
}

/// What went wrong with a request, with its causes, on one line.
fn describe(e: &reqwest::Error) -> String {
    let what = match (e.is_timeout(), e.is_connect()) {
        (true, _) => "timed out",
        (_, true) => "no connection",
        _ => "failed",
    };
    let mut text = what.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(inner) = cause {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        cause = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::tenant::TenantName;
    use crate::domain::webhook::WebhookEvent;
    use crate::domain::webhook_delivery::RetrySchedule;
    use axum::Router;
    use axum::http::StatusCode;
    use axum::routing::post;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A receiver on loopback: `/moved` redirects to `/target`, `/big`
    /// answers 500 with a megabyte, `/slow` answers after 5 s; how often
    /// `/target` was reached.
    async fn receiver() -> (String, Arc<AtomicUsize>) {
        let reached = Arc::new(AtomicUsize::new(0));
        let counter = reached.clone();
        let app = Router::new()
            .route(
                "/moved",
                post(|| async { (StatusCode::FOUND, [("location", "/target")]) }),
            )
            .route(
                "/target",
                post(move || {
                    counter.fetch_add(1, Ordering::SeqCst);
                    async { StatusCode::NO_CONTENT }
                }),
            )
            .route(
                "/big",
                post(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "x".repeat(1 << 20)) }),
            )
            .route(
                "/slow",
                post(|| async {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    StatusCode::NO_CONTENT
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, reached)
    }

    fn delivery(url: &str) -> Delivery {
        Delivery::new(
            "e",
            "j",
            TenantName::default(),
            url,
            WebhookEvent::Completed,
            "{}".into(),
            &RetrySchedule::default(),
            Timestamp::now(),
        )
    }

    #[tokio::test]
    async fn the_sender_follows_no_redirect_reads_little_and_stops_at_its_time_limit() {
        let (url, reached) = receiver().await;
        let sender = Sender::new(true, Duration::from_millis(500)).unwrap();
        let moved = sender.send(&delivery(&format!("{url}/moved")), &[]).await;
        assert!(
            matches!(moved, Answer::Refused { status: 302, .. }),
            "{moved:?}"
        );
        assert_eq!(
            reached.load(Ordering::SeqCst),
            0,
            "the redirect was not followed"
        );
        match sender.send(&delivery(&format!("{url}/big")), &[]).await {
            Answer::Refused {
                status: 500,
                excerpt,
                ..
            } => assert!(excerpt.len() <= MAX_ANSWER_BYTES, "{}", excerpt.len()),
            other => panic!("{other:?}"),
        }
        let started = std::time::Instant::now();
        let slow = sender.send(&delivery(&format!("{url}/slow")), &[]).await;
        assert!(
            matches!(&slow, Answer::Unreachable(why) if why.starts_with("timed out")),
            "{slow:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(3));
        // Without private networks, the same receiver is out of reach.
        let guarded = Sender::new(false, Duration::from_millis(500)).unwrap();
        let refused = guarded.send(&delivery(&format!("{url}/target")), &[]).await;
        assert!(
            matches!(&refused, Answer::Unreachable(why) if why.starts_with("refused")),
            "{refused:?}"
        );
        assert_eq!(reached.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn the_resolver_keeps_only_public_addresses_unless_private_networks_are_allowed() {
        let guarded = GuardedResolver { private: false };
        let name: Name = "localhost".parse().unwrap();
        let refused = guarded.resolve(name).await.err().expect("refused");
        assert!(
            refused.to_string().contains("no public address"),
            "{refused}"
        );
        let open = GuardedResolver { private: true };
        let mut addrs = open.resolve("localhost".parse().unwrap()).await.unwrap();
        assert!(addrs.next().is_some_and(|a| a.ip().is_loopback()));
    }
}
