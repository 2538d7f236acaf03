//! Starting and stopping the HTTP server: open storage (migrations applied),
//! build the shared state, bind, and shut down gracefully on SIGTERM/SIGINT
//! (stop accepting, let in-flight requests finish, flush the database).

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::ServerHandle;
use actix_web::middleware::from_fn;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use utoipa::OpenApi;
use utoipa_actix_web::AppExt;

use crate::api::error::ApiError;
use crate::api::{self, ApiDoc};
use crate::auth::{TokenSigner, VerifiedKeys};
use crate::cluster::Cluster;
use crate::config::Settings;
use crate::db::{Db, StoreError};
use crate::state::{AppState, LiveSessions, RateLimits};
use crate::telemetry;

/// How long a verified API key is trusted without another argon2 check; a
/// key revoked on another node stops working within this time.
const KEY_CACHE_TTL: Duration = Duration::from_secs(30);
/// API keys remembered at most.
const KEY_CACHE_CAPACITY: usize = 10_000;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    #[error("storage: {0}")]
    Storage(#[from] StoreError),
    #[error("auth: {0}")]
    Auth(#[from] crate::auth::KeyFileError),
    #[error("redis: {0}")]
    Redis(String),
    #[error("cluster: {0}")]
    Cluster(#[from] crate::cluster::ClusterError),
    #[error("webrtc: {0}")]
    Rtc(#[from] palaver_media::rtc::RtcStartError),
    #[error("rtc: {0}")]
    RtcSettings(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Opens storage (applying migrations) and builds the shared state.
pub async fn prepare(settings: Settings) -> Result<web::Data<AppState>, StartError> {
    let db_settings = settings.database.clone();
    let db = tokio::task::spawn_blocking(move || -> Result<Db, StoreError> {
        let db = Db::connect(&db_settings)?;
        let applied = db.migrate()?;
        tracing::info!(backend = ?db.backend(), applied, "storage ready");
        Ok(db)
    })
    .await
    .map_err(|e| StoreError::Unavailable(format!("storage task failed: {e}")))??;
    let tokens = TokenSigner::from_settings(&settings.auth)?;
    let redis = match &settings.redis.url {
        None => None,
        Some(url) => {
            let pool = deadpool_redis::Config::from_url(url.expose())
                .create_pool(Some(deadpool_redis::Runtime::Tokio1))
                .map_err(|e| StartError::Redis(format!("invalid REDIS_URL: {e}")))?;
            Some(pool)
        }
    };
    let rtc = start_rtc(&settings)?;
    let (cluster, cluster_tasks) = match (&settings.redis.url, &redis) {
        (Some(url), Some(pool)) => {
            let (cluster, tasks) = Cluster::new(&settings.redis, url.expose(), pool.clone())?;
            tracing::info!(node = %cluster.node(), "cluster routing over redis");
            (Some(cluster), Some(tasks))
        }
        _ => (None, None),
    };
    let live = Arc::new(LiveSessions::new(cluster.clone()));
    let rooms = crate::rooms_live::LiveRooms::start(cluster.clone());
    if let Some(tasks) = cluster_tasks {
        tasks.spawn(rooms.hub.clone(), live.clone(), db.clone());
    }
    Ok(web::Data::new(AppState {
        rtc,
        limits: RateLimits::new(&settings.limits),
        verified_keys: VerifiedKeys::new(KEY_CACHE_TTL, KEY_CACHE_CAPACITY),
        settings: Arc::new(settings),
        db,
        tokens,
        redis,
        cluster,
        metrics: telemetry::metrics_handle(),
        live,
        rooms,
    }))
}

/// The WebRTC endpoint, after checking the encoder settings it will use.
fn start_rtc(settings: &Settings) -> Result<palaver_media::rtc::RtcEndpoint, StartError> {
    palaver_media::rtc::CallAudio::new(crate::voice::rtc_encoder(&settings.rtc))
        .map_err(|e| StartError::RtcSettings(format!("opus_bitrate_bps / opus_complexity: {e}")))?;
    Ok(palaver_media::rtc::RtcEndpoint::start(
        palaver_media::rtc::RtcEndpointConfig {
            bind: settings.rtc.bind,
            public_ip: settings.rtc.public_ip,
        },
    )?)
}

/// A bound, running server.
pub struct Running {
    pub addr: SocketAddr,
    handle: ServerHandle,
    /// The server future, spawned on the current actix runtime (it serves
    /// only while polled).
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    state: web::Data<AppState>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// The generated OpenAPI document, rendered once per worker.
struct OpenApiDocument(String);

async fn openapi_document(doc: web::Data<OpenApiDocument>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(doc.0.clone())
}

async fn unknown_route(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound(format!(
        "no route for {} {}",
        req.method(),
        req.path()
    )))
}

/// Binds `server.bind` and starts the workers.
pub fn start(state: web::Data<AppState>) -> Result<Running, StartError> {
    let bind = state.settings.server.bind;
    let listener =
        TcpListener::bind(bind).map_err(|source| StartError::Bind { addr: bind, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| StartError::Bind { addr: bind, source })?;
    let workers = match state.settings.server.workers {
        0 => std::thread::available_parallelism()
            .map(usize::from)
            .unwrap_or(2),
        n => n,
    };
    let app_state = state.clone();
    let server = HttpServer::new(move || {
        let (app, openapi) = App::new()
            .into_utoipa_app()
            .openapi(ApiDoc::openapi())
            .app_data(app_state.clone())
            .app_data(web::QueryConfig::default().error_handler(|err, _| {
                ApiError::BadRequest {
                    code: "invalid_query",
                    message: format!("invalid query string: {err}"),
                    field: None,
                }
                .into()
            }))
            .app_data(web::PathConfig::default().error_handler(|err, req| {
                ApiError::NotFound(format!("no resource at {}: {err}", req.path())).into()
            }))
            // Before the `/v1` scope, which would otherwise claim the path.
            .route("/v1/openapi.json", web::get().to(openapi_document))
            .configure(api::configure)
            .split_for_parts();
        let document = OpenApiDocument(openapi.to_pretty_json().unwrap_or_default());
        app.app_data(web::Data::new(document))
            .default_service(web::to(unknown_route))
            .wrap(from_fn(api::extract::authenticate_request))
            .wrap(from_fn(telemetry::observe))
    })
    // Realtime frames are small: without TCP_NODELAY, Nagle's algorithm
    // holds each one until the previous is acknowledged (~20-40 ms).
    .on_connect(|connection, _| {
        if let Some(tcp) = connection.downcast_ref::<actix_web::rt::net::TcpStream>()
            && let Err(err) = tcp.set_nodelay(true)
        {
            tracing::debug!(%err, "could not set TCP_NODELAY");
        }
    })
    .workers(workers)
    .shutdown_timeout(state.settings.server.shutdown_timeout_s)
    .disable_signals()
    .listen(listener)
    .map_err(|source| StartError::Bind { addr: bind, source })?
    .run();
    let limits_state = state.clone();
    actix_web::rt::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            limits_state.limits.forget_idle();
        }
    });
    if let Some(cluster) = &state.cluster {
        let address = state
            .settings
            .server
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{addr}"));
        cluster.set_address(address);
    }
    let handle = server.handle();
    let task = actix_web::rt::spawn(server);
    Ok(Running {
        addr,
        handle,
        task,
        state,
    })
}

impl Running {
    /// Stops gracefully: no new connections, in-flight requests finish.
    pub async fn stop(&self) {
        self.handle.stop(true).await;
    }

    /// Serves until SIGTERM or SIGINT, then drains and closes storage.
    pub async fn serve_until_signal(self) -> std::io::Result<()> {
        let handle = self.handle.clone();
        actix_web::rt::spawn(async move {
            let signal = shutdown_signal().await;
            tracing::info!(
                signal,
                "shutting down: no new connections, finishing in-flight requests"
            );
            handle.stop(true).await;
        });
        let result = self
            .task
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(format!("server task failed: {e}"))));
        if let Some(cluster) = &self.state.cluster {
            cluster.leave().await;
        }
        self.state.db.close();
        tracing::info!("shutdown complete");
        result
    }
}

async fn shutdown_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = tokio::signal::ctrl_c() => "SIGINT",
            },
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                "SIGINT"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "SIGINT"
    }
}
