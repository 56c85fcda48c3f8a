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
use crate::identity::PushGate;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Request, StatusCode};
use axum::routing::{MethodRouter, get};
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

    /// The largest push body read; a bigger one is poison. Job messages,
    /// job events and storage events are a few KiB.
    const BODY_LIMIT: usize = 256 * 1024;

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
pub async fn push<P: Push>(State(stage): State<Arc<P>>, headers: HeaderMap, body: Body) -> Handled {
    let handled = match read_body(body, P::BODY_LIMIT).await {
        // A body over the limit can never be a message of this stage: it
        // is poison and acknowledged, since any other answer would only
        // have Pub/Sub send it again until it is dead-lettered.
        Err(e @ BodyError::TooLarge { .. }) => {
            stage
                .poison(b"", format!("the push body is too large: {e}"))
                .await
        }
        Err(e) => Handled::Retry {
            rate_limited: false,
            reason: format!("the push body could not be read: {e}"),
        },
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

/// How long a client may take to send a request's headers, counted from
/// the connection opening or the previous response.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a client may take to send a request's body. A push body is at
/// most a few MiB; a client that trickles it is cut off.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// A body stream cut short: it did not arrive within [`BODY_READ_TIMEOUT`].
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?}")]
struct BodyTimedOut(Duration);

/// A request body that ends in [`BodyTimedOut`] once its deadline passes.
/// It is read only by the route's extractor, up to the route's own limit
/// (a `Content-Length` over it is refused before anything is read), so a
/// request holds no more memory than its route allows, however big a body
/// its client sends.
struct Deadline {
    inner: Body,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl hyper::body::Body for Deadline {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, axum::Error>>> {
        use std::task::Poll;
        let this = &mut *self;
        if let Poll::Ready(frame) = std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        match this.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => {
                Poll::Ready(Some(Err(axum::Error::new(BodyTimedOut(BODY_READ_TIMEOUT)))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Gives every request body a deadline of [`BODY_READ_TIMEOUT`], so that a
/// handler never waits on a trickling client; reads nothing itself.
async fn body_deadline(
    request: Request<Body>,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let (parts, body) = request.into_parts();
    let body = Body::new(Deadline {
        inner: body,
        deadline: Box::pin(tokio::time::sleep(BODY_READ_TIMEOUT)),
    });
    next.run(Request::from_parts(parts, body)).await
}

/// The most bytes of a refused body that are still read, and thrown away,
/// so that the refusal reaches the client instead of a reset connection
/// (a push refused that way would be sent again): a Pub/Sub push is at
/// most about 14 MB.
const MAX_DRAIN: u64 = 32 * 1024 * 1024;

/// Why a request body was not read whole.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// Over the route's limit.
    #[error("it is over the limit of {limit} bytes")]
    TooLarge {
        /// The route's limit.
        limit: usize,
    },
    /// Not arrived within [`BODY_READ_TIMEOUT`].
    #[error("it did not arrive within {BODY_READ_TIMEOUT:?}")]
    TimedOut,
    /// The connection failed while it was read.
    #[error("{0}")]
    Broken(String),
}

/// Reads a request body, holding at most `limit` bytes: the one place a
/// body is read, so a request never holds more memory than its route
/// allows, however big a body its client sends. A body over the limit is
/// refused at once when its `Content-Length` says so, else once the limit
/// is passed; either way the rest is read and dropped (up to
/// [`MAX_DRAIN`]) so that the answer reaches the client.
pub async fn read_body(body: Body, limit: usize) -> Result<Bytes, BodyError> {
    use futures::StreamExt;
    let declared = hyper::body::Body::size_hint(&body).exact();
    let mut stream = body.into_data_stream();
    let too_large = BodyError::TooLarge { limit };
    if declared.is_some_and(|length| length > limit as u64) {
        if declared.is_some_and(|length| length <= MAX_DRAIN) {
            drain(&mut stream, 0).await;
        }
        return Err(too_large);
    }
    let mut bytes: Vec<u8> = Vec::with_capacity(declared.map_or(0, |n| n as usize));
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| body_error(&e))?;
        let needed = bytes.len() + chunk.len();
        if needed > limit {
            drain(&mut stream, needed as u64).await;
            return Err(too_large);
        }
        // Doubling, but never past the limit: a body just under it must
        // not hold twice its size.
        if needed > bytes.capacity() {
            let grown = (bytes.capacity() * 2).max(needed).min(limit);
            bytes.reserve_exact(grown - bytes.len());
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(bytes))
}

/// Reads and drops the rest of a refused body, up to [`MAX_DRAIN`] bytes
/// in all, within the body's deadline.
async fn drain(stream: &mut axum::body::BodyDataStream, mut read: u64) {
    use futures::StreamExt;
    while read <= MAX_DRAIN {
        match stream.next().await {
            Some(Ok(chunk)) => read += chunk.len() as u64,
            _ => return,
        }
    }
}

fn body_error(e: &axum::Error) -> BodyError {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(error) = cause {
        if error.is::<BodyTimedOut>() {
            return BodyError::TimedOut;
        }
        cause = error.source();
    }
    BodyError::Broken(e.to_string())
}

/// The route of a push endpoint: [`push`] over stage `P`, behind `gate`.
pub fn push_route<P: Push>(gate: &Arc<PushGate>) -> MethodRouter<Arc<P>> {
    axum::routing::post(push::<P>).route_layer(axum::middleware::from_fn_with_state(
        gate.clone(),
        crate::identity::require_pusher,
    ))
}

/// Adds `GET /healthz`, the request span, a body read deadline and a time
/// limit to `app`.
pub fn with_basics(app: Router, request_timeout: Duration) -> Router {
    app.route("/healthz", get(|| async { "ok" }))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            request_timeout,
        ))
        .layer(axum::middleware::from_fn(body_deadline))
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
