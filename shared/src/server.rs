//! The one serve path of every HTTP stage: bind `0.0.0.0:$PORT`, add
//! `GET /healthz`, a request span (with the Cloud Trace id when the request
//! carries one) and a time limit, and shut down gracefully on SIGTERM, which
//! Cloud Run sends before it stops an instance.
//!
//! Slow and idle clients are cut off: a request's headers must arrive within
//! [`HEADER_READ_TIMEOUT`] of the connection opening or of the previous
//! response (so an idle keep-alive connection is closed after that long too),
//! and its body within [`BODY_READ_TIMEOUT`].

use crate::ack::Handled;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, Request, StatusCode};
use axum::routing::get;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use tracing::{Instrument, Span};

/// A stage that takes Pub/Sub (or Eventarc) pushes. Every push endpoint
/// is [`push`] over one of these: the body is read, decoded, handled inside
/// the message's span, and the outcome logged once, with the fixed event
/// names of [`Handled::logged`] that the deployment's metrics count.
pub trait Push: Send + Sync + 'static {
    /// A push, decoded.
    type Message: Send;

    /// Decodes a push body; the error says why it is poison.
    fn decode(&self, headers: &HeaderMap, body: &Bytes) -> Result<Self::Message, String>;

    /// The span `message` is handled in (its message id, its job...).
    fn span(&self, message: &Self::Message) -> Span;

    /// Handles a decoded push.
    fn handle(&self, message: Self::Message) -> impl Future<Output = Handled> + Send;

    /// What becomes of a poison push (`body` as far as it was read): it is
    /// acknowledged; a stage may record it first.
    fn poison(&self, body: &[u8], reason: String) -> impl Future<Output = Handled> + Send {
        let _ = body;
        std::future::ready(Handled::Poison(reason))
    }
}

/// The handler of every push endpoint: `POST /` with the stage as state.
pub async fn push<P: Push>(
    State(stage): State<Arc<P>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Handled {
    let handled = match push_body(body) {
        Err(Handled::Poison(reason)) => stage.poison(b"", reason).await,
        Err(handled) => handled,
        Ok(body) => match stage.decode(&headers, &body) {
            Err(reason) => stage.poison(&body, reason).await,
            Ok(message) => {
                let span = stage.span(&message);
                stage.handle(message).instrument(span).await
            }
        },
    };
    handled.logged()
}

/// The trace id of a request: `X-Cloud-Trace-Context: TRACE/SPAN;o=1` or
/// W3C `traceparent: 00-TRACE-SPAN-01`.
pub fn trace_id(request: &Request<Body>) -> Option<String> {
    let header = |name: &str| request.headers().get(name).and_then(|v| v.to_str().ok());
    if let Some(value) = header("traceparent") {
        let mut parts = value.split('-');
        if let (Some(_version), Some(trace)) = (parts.next(), parts.next())
            && trace.len() == 32
            && trace.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Some(trace.to_string());
        }
    }
    let value = header("x-cloud-trace-context")?;
    let trace = value.split('/').next()?;
    (!trace.is_empty() && trace.bytes().all(|b| b.is_ascii_hexdigit())).then(|| trace.to_string())
}

/// The body of a push, or how to answer it when it cannot be read. A body
/// over the limit can never be a job message or a storage event: it is
/// poison and acknowledged, since a 413 would only have Pub/Sub send it
/// again until it is dead-lettered. A body that failed to arrive is asked
/// for again.
pub fn push_body(body: Result<Bytes, BytesRejection>) -> Result<Bytes, Handled> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Handled::Poison(format!(
                "the push body is too large: {}",
                rejection.body_text()
            ))
        } else {
            Handled::Retry {
                rate_limited: false,
                reason: format!("the push body could not be read: {}", rejection.body_text()),
            }
        }
    })
}

/// How long a client may take to send a request's headers, counted from
/// the connection opening or the previous response.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a client may take to send a request's body. A push body is at
/// most a few MiB; a client that trickles it is cut off.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// The most bytes of a body read before its route sees it: over any route's
/// own limit (a Pub/Sub push is at most about 14 MB), so that a body a
/// route refuses is still read whole, and its answer (a poison push is
/// acknowledged) reaches the client instead of a cut connection.
const MAX_BODY_READ: usize = 32 * 1024 * 1024;

/// Reads the whole request body within [`BODY_READ_TIMEOUT`] before the
/// route sees it, so that a handler never waits on a trickling client.
async fn read_body_in_time(
    request: Request<Body>,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let (parts, body) = request.into_parts();
    match tokio::time::timeout(BODY_READ_TIMEOUT, axum::body::to_bytes(body, MAX_BODY_READ)).await {
        Ok(Ok(bytes)) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Ok(Err(e)) => (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body could not be read whole: {e}"),
        )
            .into_response(),
        Err(_) => (
            StatusCode::REQUEST_TIMEOUT,
            format!("the request body did not arrive within {BODY_READ_TIMEOUT:?}"),
        )
            .into_response(),
    }
}

/// Adds `GET /healthz`, the request span, a body read deadline and a time
/// limit to `app`.
pub fn with_basics(app: Router, request_timeout: Duration) -> Router {
    app.route("/healthz", get(|| async { "ok" }))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            request_timeout,
        ))
        .layer(axum::middleware::from_fn(read_body_in_time))
        .layer(
            TraceLayer::new_for_http().make_span_with(|request: &Request<Body>| {
                let trace = trace_id(request).unwrap_or_default();
                tracing::info_span!(
                    "request",
                    method = %request.method(),
                    path = %request.uri().path(),
                    trace = %trace,
                )
            }),
        )
}

/// Binds `0.0.0.0:port` (port 0 picks a free one, for tests).
pub async fn bind(port: u16) -> io::Result<TcpListener> {
    TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port))).await
}

/// Binds `port` and serves `app` on it until SIGTERM: how every stage
/// binary serves.
pub async fn serve_on(port: u16, app: Router) -> anyhow::Result<()> {
    let listener = bind(port)
        .await
        .map_err(|e| anyhow::anyhow!("binding port {port}: {e}"))?;
    serve(listener, app).await?;
    Ok(())
}

/// What a push stage's binary was started to do.
pub enum Work<D> {
    /// Serve pushes with this router on the port.
    Serve(Router),
    /// Work through the backlog (a Cloud Run job), then exit.
    Drain(D),
}

/// Runs a push stage's binary: serves on `port` or drains, then publishes
/// the job events its last writes left for the relay, so that none waits
/// for the janitor.
pub async fn serve_or_drain<D>(
    store: &crate::store::Store,
    port: u16,
    work: Work<D>,
) -> anyhow::Result<()>
where
    D: Future<Output = anyhow::Result<()>>,
{
    let outcome = match work {
        Work::Serve(app) => serve_on(port, app).await,
        Work::Drain(drain) => drain.await,
    };
    store.flush_events().await;
    outcome
}

/// Serves `app` (HTTP/1.1, as Cloud Run and Pub/Sub speak to a container)
/// until SIGTERM or Ctrl-C, then lets requests in flight finish.
pub async fn serve(listener: TcpListener, app: Router) -> io::Result<()> {
    serve_until(listener, app, shutdown_signal()).await
}

/// [`serve`] until `shutdown` resolves.
pub async fn serve_until(
    listener: TcpListener,
    app: Router,
    shutdown: impl std::future::Future<Output = ()>,
) -> io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;
    let address = listener.local_addr()?;
    tracing::info!(%address, "listening");
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                // Out of file descriptors and the like: pause, then go on.
                Err(e) => {
                    tracing::warn!(error = %e, "could not accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let connection =
            http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection closed with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {},
        () = terminate => {},
    }
    tracing::info!("shutting down");
}

/// The exit status of a stage binary: failures are logged as one line.
pub fn exit_code(outcome: anyhow::Result<()>) -> std::process::ExitCode {
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "stopped");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    fn request(headers: &[(&str, &str)]) -> Request<Body> {
        let mut builder = Request::builder().uri("/");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(Body::empty()).unwrap()
    }

    #[test]
    fn trace_ids_come_from_either_header() {
        let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
        let check = |headers: &[(&str, &str)], want: Option<&str>| {
            assert_eq!(trace_id(&request(headers)).as_deref(), want, "{headers:?}");
        };
        check(
            &[("traceparent", &format!("00-{trace}-00f067aa0ba902b7-01"))],
            Some(trace),
        );
        check(
            &[("x-cloud-trace-context", &format!("{trace}/1;o=1"))],
            Some(trace),
        );
        check(&[("x-cloud-trace-context", "not hex/1")], None);
        check(&[("traceparent", "garbage")], None);
        check(&[], None);
    }

    #[tokio::test]
    async fn healthz_answers() {
        let app = with_basics(Router::new(), Duration::from_secs(1));
        let response = app
            .oneshot(Request::get("/healthz").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
}
