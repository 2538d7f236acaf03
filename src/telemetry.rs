//! Logs, metrics and request ids: the tracing subscriber, the Prometheus
//! recorder, and the middleware that stamps, times and logs every request.

use std::sync::OnceLock;
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing::Instrument;
use tracing_subscriber::EnvFilter;

use crate::auth;
use crate::config::{LogFormat, LogSettings};

pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// Installs the global log subscriber (once per process).
pub fn init_logging(settings: &LogSettings) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let installed = match settings.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
    // A second init (tests start several servers) keeps the first subscriber.
    drop(installed);
}

/// The process-wide Prometheus recorder; installed on first use.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("palaver_http_request_duration_seconds".into()),
                    &[
                        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    ],
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Suffix("_latency_seconds".into()),
                        &[
                            0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.8, 1.2, 2.0, 5.0,
                        ],
                    )
                })
                .map(PrometheusBuilder::build_recorder)
                .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics may be empty");
            }
            describe();
            handle
        })
        .clone()
}

fn describe() {
    metrics::describe_counter!(
        "palaver_session_messages_rate_limited_total",
        "Session client messages (WebSocket or data channel) refused over the session's rate limit"
    );
    metrics::describe_counter!(
        "palaver_http_requests_total",
        "HTTP requests by route and status"
    );
    metrics::describe_histogram!(
        "palaver_http_request_duration_seconds",
        metrics::Unit::Seconds,
        "HTTP request duration by route"
    );
    metrics::describe_gauge!(
        "palaver_sessions_active",
        "Voice sessions with a caller connected"
    );
    metrics::describe_gauge!(
        "palaver_sessions_live",
        "Session actors running on this node"
    );
    metrics::describe_gauge!(
        "palaver_db_pool_connections",
        "Database pool connections by state"
    );
    metrics::describe_gauge!(
        "palaver_sqlite_memory_bytes",
        "Memory SQLite holds in this process (page caches above all; SQLite only)"
    );
    metrics::describe_counter!(
        "palaver_cluster_bus_sent_total",
        "Room events this node published to other nodes, counted once per receiving node"
    );
    metrics::describe_counter!(
        "palaver_cluster_publish_round_trips_total",
        "Redis round trips that published room events (several events each when they queue up)"
    );
    metrics::describe_counter!(
        "palaver_cluster_bus_received_total",
        "Room events and hang-ups this node received from other nodes"
    );
    metrics::describe_counter!(
        "palaver_cluster_bus_dropped_total",
        "Room events not sent to other nodes (queue full or Redis unreachable)"
    );
    metrics::describe_gauge!(
        "palaver_rtc_peers",
        "WebRTC peers on this node's UDP socket"
    );
    metrics::describe_counter!(
        "palaver_rtc_datagrams_total",
        "UDP datagrams through the WebRTC socket, by direction"
    );
    metrics::describe_counter!(
        "palaver_rtc_datagrams_unrouted_total",
        "Datagrams no WebRTC peer accepted (stray or from a peer already gone)"
    );
    metrics::describe_counter!(
        "palaver_rtc_send_errors_total",
        "Datagrams the WebRTC socket could not send (buffer full)"
    );
    metrics::describe_counter!(
        "palaver_rtc_audio_dropped_total",
        "Caller audio packets dropped because a session task fell behind"
    );
}

fn request_id(req: &ServiceRequest) -> String {
    req.headers()
        .get(&REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .map(str::to_owned)
        .unwrap_or_else(|| auth::hex(&auth::random_bytes::<8>()))
}

/// The `method` label of a request: the standard methods by name, any other
/// (a client may send any token) as `other`, so strangers cannot grow the
/// metrics without bound.
fn method_label(method: &actix_web::http::Method) -> &'static str {
    use actix_web::http::Method;
    const KNOWN: [(Method, &str); 9] = [
        (Method::GET, "GET"),
        (Method::POST, "POST"),
        (Method::PUT, "PUT"),
        (Method::PATCH, "PATCH"),
        (Method::DELETE, "DELETE"),
        (Method::HEAD, "HEAD"),
        (Method::OPTIONS, "OPTIONS"),
        (Method::CONNECT, "CONNECT"),
        (Method::TRACE, "TRACE"),
    ];
    KNOWN
        .iter()
        .find(|(known, _)| known == method)
        .map_or("other", |(_, label)| label)
}

/// Stamps a request id, times the request, logs one line and counts it.
pub async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let id = request_id(&req);
    let method = method_label(req.method());
    let path = req.path().to_owned();
    let span = tracing::info_span!("request", request_id = %id, method = %req.method(), %path);
    let result = next.call(req).instrument(span.clone()).await;
    let elapsed = started.elapsed();
    let mut response = result?;
    let status = response.status().as_u16();
    let route = response
        .request()
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_owned());
    metrics::counter!(
        "palaver_http_requests_total",
        "method" => method, "route" => route.clone(), "status" => status.to_string()
    )
    .increment(1);
    metrics::histogram!(
        "palaver_http_request_duration_seconds",
        "method" => method, "route" => route
    )
    .record(elapsed.as_secs_f64());
    span.in_scope(|| {
        let ms = elapsed.as_secs_f64() * 1000.0;
        if status >= 500 {
            tracing::warn!(status, duration_ms = ms, "request failed");
        } else {
            tracing::info!(status, duration_ms = ms, "request");
        }
    });
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    Ok(response)
}
