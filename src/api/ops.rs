//! Operations endpoints: liveness, readiness, Prometheus metrics.

use actix_web::{HttpResponse, get, web};
use serde::Serialize;
use utoipa::ToSchema;

use crate::state::AppState;
use crate::store;

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    pub status: &'static str,
    pub version: &'static str,
}

/// The process is up and serving HTTP.
#[utoipa::path(tag = "operations", responses((status = 200, body = Health)))]
#[get("/healthz")]
pub async fn healthz() -> web::Json<Health> {
    web::Json(Health {
        status: "ok",
        version: env!("CARGO_PKG_VERSION"),
    })
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    /// `ready`, `degraded` (serving, but node-local: Redis is unreachable),
    /// `draining` (shutting down: live calls finish, no new sessions), or
    /// `unready`.
    pub status: &'static str,
    /// `ok`, or why not.
    pub database: String,
    /// `ok`, `not_configured`, or why not.
    pub redis: String,
    /// With Redis: this node's id and whether cross-node routing works.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<crate::cluster::ClusterStatus>,
    /// The embedded engines (the `local` provider), each `ready: …`,
    /// `fallback: …`, `missing: …`, `loading` or `not loaded yet (…)`.
    /// Informational: a missing engine does not make the node unready.
    pub local: crate::providers::local::LocalReadiness,
}

/// Whether this node can serve traffic: the database answers. A configured
/// Redis that does not answer makes the node `degraded`, not unready: it
/// still serves its own callers and rooms (taking every node out of a load
/// balancer because Redis is down would stop everything).
#[utoipa::path(
    tag = "operations",
    responses(
        (status = 200, body = Readiness),
        (status = 503, body = Readiness, description = "A dependency is down, or the node is draining"),
    )
)]
#[get("/readyz")]
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let database = match state.db.ping().await {
        Ok(()) => "ok".to_owned(),
        Err(err) => format!("unreachable: {err}"),
    };
    let redis = match &state.redis {
        None => "not_configured".to_owned(),
        Some(pool) => match redis_ping(pool).await {
            Ok(()) => "ok".to_owned(),
            Err(err) => format!("unreachable: {err}"),
        },
    };
    let cluster = state.cluster.as_ref().map(|c| c.status());
    let draining = state.is_draining();
    let ready = database == "ok" && !draining;
    let degraded = !(redis == "ok" || redis == "not_configured")
        || cluster.as_ref().is_some_and(|c| c.status != "ok");
    let body = Readiness {
        status: match (ready, degraded) {
            (false, _) if draining => "draining",
            (false, _) => "unready",
            (true, true) => "degraded",
            (true, false) => "ready",
        },
        database,
        redis,
        cluster,
        local: crate::providers::local::readiness(),
    };
    if ready {
        if degraded {
            tracing::warn!(redis = %body.redis, "degraded: serving node-local only");
        }
        HttpResponse::Ok().json(body)
    } else {
        if !draining {
            tracing::warn!(database = %body.database, redis = %body.redis, "not ready");
        }
        HttpResponse::ServiceUnavailable().json(body)
    }
}

async fn redis_ping(pool: &deadpool_redis::Pool) -> Result<(), String> {
    let check = async {
        let mut conn = pool.get().await.map_err(|e| e.to_string())?;
        deadpool_redis::redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    };
    tokio::time::timeout(std::time::Duration::from_secs(2), check)
        .await
        .map_err(|_| "no answer within 2 s".to_owned())?
}

/// Prometheus text exposition.
#[utoipa::path(
    tag = "operations",
    responses((status = 200, content_type = "text/plain", body = String))
)]
#[get("/metrics")]
pub async fn prometheus_metrics(state: web::Data<AppState>) -> HttpResponse {
    let (open, idle) = state.db.pool_state();
    ::metrics::gauge!("palaver_db_pool_connections", "state" => "open").set(f64::from(open));
    ::metrics::gauge!("palaver_db_pool_connections", "state" => "idle").set(f64::from(idle));
    if let Some(bytes) = state.db.sqlite_memory_bytes() {
        ::metrics::gauge!("palaver_sqlite_memory_bytes").set(bytes as f64);
    }
    let rtc = state.rtc.stats();
    let read =
        |counter: &std::sync::atomic::AtomicU64| counter.load(std::sync::atomic::Ordering::Relaxed);
    ::metrics::gauge!("palaver_rtc_peers").set(read(&rtc.peers) as f64);
    ::metrics::counter!("palaver_rtc_datagrams_total", "direction" => "in")
        .absolute(read(&rtc.datagrams_in));
    ::metrics::counter!("palaver_rtc_datagrams_total", "direction" => "out")
        .absolute(read(&rtc.datagrams_out));
    ::metrics::counter!("palaver_rtc_datagrams_unrouted_total")
        .absolute(read(&rtc.datagrams_unrouted));
    ::metrics::counter!("palaver_rtc_send_errors_total").absolute(read(&rtc.send_errors));
    ::metrics::counter!("palaver_rtc_audio_dropped_total").absolute(read(&rtc.audio_dropped));
    match state.db.run(store::sessions::count_active).await {
        Ok(active) => ::metrics::gauge!("palaver_sessions_active").set(active as f64),
        Err(err) => tracing::warn!(%err, "could not count active sessions for /metrics"),
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render())
}
