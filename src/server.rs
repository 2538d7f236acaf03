//! Starting and stopping the HTTP server: open storage (migrations applied),
//! build the shared state, bind, and shut down gracefully on SIGTERM/SIGINT
//! (stop accepting, let in-flight requests finish, flush the database).

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use actix_service::{IntoServiceFactory, ServiceFactoryExt};
use actix_web::dev::ServerHandle;
use actix_web::middleware::from_fn;
use actix_web::{App, HttpRequest, HttpResponse, web};
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
use crate::wire_errors::JsonErrors;

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
        draining: Default::default(),
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

/// Every documented path with the methods it takes, to tell a path that
/// does not exist (404) from one called with the wrong method (405).
struct RouteMethods(Vec<(Vec<String>, Vec<&'static str>)>);

impl RouteMethods {
    fn from_openapi(doc: &utoipa::openapi::OpenApi) -> Self {
        let mut routes: Vec<(Vec<String>, Vec<&'static str>)> = doc
            .paths
            .paths
            .iter()
            .map(|(path, item)| {
                let methods = [
                    ("GET", item.get.is_some()),
                    ("HEAD", item.head.is_some()),
                    ("POST", item.post.is_some()),
                    ("PUT", item.put.is_some()),
                    ("PATCH", item.patch.is_some()),
                    ("DELETE", item.delete.is_some()),
                    ("OPTIONS", item.options.is_some()),
                    ("TRACE", item.trace.is_some()),
                ];
                let methods = methods.iter().filter(|(_, has)| *has).map(|(m, _)| *m);
                (segments(path), methods.collect())
            })
            .collect();
        routes.push((segments("/v1/openapi.json"), vec!["GET"]));
        Self(routes)
    }

    /// The methods `path` takes, comma-separated, if it is a documented
    /// path: `{param}` matches any one segment, and where several templates
    /// match, the ones with the most literal segments win (`/v1/rooms/ws`
    /// is that path, not `/v1/rooms/{id}`), as in the router.
    fn allowed(&self, path: &str) -> Option<String> {
        let asked = segments(path);
        let mut best = 0;
        let mut allowed: Vec<&str> = Vec::new();
        for (template, methods) in &self.0 {
            let matches = template.len() == asked.len()
                && template
                    .iter()
                    .zip(&asked)
                    .all(|(t, a)| t.starts_with('{') || t == a);
            if !matches {
                continue;
            }
            let literal = template.iter().filter(|t| !t.starts_with('{')).count();
            if literal > best {
                best = literal;
                allowed.clear();
            }
            if literal == best {
                for method in methods {
                    if !allowed.contains(method) {
                        allowed.push(method);
                    }
                }
            }
        }
        (!allowed.is_empty()).then(|| allowed.join(", "))
    }
}

fn segments(path: &str) -> Vec<String> {
    path.trim_end_matches('/')
        .split('/')
        .map(str::to_owned)
        .collect()
}

async fn unknown_route(
    req: HttpRequest,
    routes: web::Data<RouteMethods>,
) -> Result<HttpResponse, ApiError> {
    match routes.allowed(req.path()) {
        Some(allow) => Err(ApiError::MethodNotAllowed {
            message: format!(
                "{} does not take {}; it takes {allow}",
                req.path(),
                req.method()
            ),
            allow,
        }),
        None => Err(ApiError::NotFound(format!(
            "no route for {} {}",
            req.method(),
            req.path()
        ))),
    }
}

/// The application every worker serves: routes, the OpenAPI document,
/// extractor error handlers, the default 404/405 and the middleware.
fn app(
    state: web::Data<AppState>,
) -> App<
    impl actix_web::dev::ServiceFactory<
        actix_web::dev::ServiceRequest,
        Config = (),
        Response = actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    let (app, openapi) = App::new()
        .into_utoipa_app()
        .openapi(ApiDoc::openapi())
        .app_data(state)
        .app_data(web::QueryConfig::default().error_handler(|err, _| {
            ApiError::BadRequest {
                code: "invalid_query",
                message: format!("invalid query string: {err}"),
                field: None,
            }
            .into()
        }))
        .app_data(web::PathConfig::default().error_handler(|err, req| {
            // `PATCH /v1/rooms/ws` reaches `PATCH /v1/rooms/{id}` and fails
            // there: for a method the path does not take, that is a 405.
            let allow = req
                .app_data::<web::Data<RouteMethods>>()
                .and_then(|routes| routes.allowed(req.path()))
                .filter(|allow| !allow.split(", ").any(|m| m == req.method().as_str()));
            match allow {
                Some(allow) => ApiError::MethodNotAllowed {
                    message: format!(
                        "{} does not take {}; it takes {allow}",
                        req.path(),
                        req.method()
                    ),
                    allow,
                }
                .into(),
                None => ApiError::NotFound(format!("no resource at {}: {err}", req.path())).into(),
            }
        }))
        // Before the `/v1` scope, which would otherwise claim the path.
        .route("/v1/openapi.json", web::get().to(openapi_document))
        .configure(api::configure)
        .split_for_parts();
    let mut openapi = openapi;
    api::complete_document(&mut openapi);
    let document = OpenApiDocument(openapi.to_pretty_json().unwrap_or_default());
    app.app_data(web::Data::new(document))
        .app_data(web::Data::new(RouteMethods::from_openapi(&openapi)))
        .default_service(web::to(unknown_route))
        .wrap(from_fn(api::extract::authenticate_request))
        .wrap(from_fn(telemetry::observe))
}

/// How long a client has to send a request's line and headers (408 after).
const CLIENT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an idle keep-alive connection stays open.
const KEEP_ALIVE: Duration = Duration::from_secs(5);
/// How long a closing connection waits for the client to go.
const CLIENT_DISCONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Binds `server.bind` and starts the workers.
///
/// Built from actix-server and actix-http rather than `HttpServer`, for one
/// reason: each accepted connection is wrapped in [`JsonErrors`], so the
/// answers the HTTP/1 layer gives on its own (malformed requests, oversized
/// heads) carry the API's JSON error body too.
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
    let server = actix_web::dev::Server::build()
        .workers(workers)
        .shutdown_timeout(state.settings.server.shutdown_timeout_s)
        .disable_signals()
        .listen("palaver-http", listener, move || {
            let http = actix_http::HttpService::build()
                .keep_alive(KEEP_ALIVE)
                .client_request_timeout(CLIENT_REQUEST_TIMEOUT)
                .client_disconnect_timeout(CLIENT_DISCONNECT_TIMEOUT)
                .local_addr(addr)
                .on_connect_ext(
                    |io: &JsonErrors<actix_web::rt::net::TcpStream>, extensions| {
                        if let Ok(local) = io.get_ref().local_addr() {
                            extensions.insert(api::LocalAddr(local));
                        }
                    },
                )
                .h1(actix_service::map_config(
                    app(app_state.clone())
                        .into_factory()
                        .map_err(|err: actix_web::Error| err.error_response()),
                    |_| actix_web::dev::AppConfig::default(),
                ));
            actix_service::fn_service(|tcp: actix_web::rt::net::TcpStream| async move {
                // Realtime frames are small: without TCP_NODELAY, Nagle's
                // algorithm holds each one until the previous is
                // acknowledged (~20-40 ms).
                if let Err(err) = tcp.set_nodelay(true) {
                    tracing::debug!(%err, "could not set TCP_NODELAY");
                }
                let peer = tcp.peer_addr().ok();
                Ok::<_, actix_http::error::DispatchError>((JsonErrors::new(tcp), peer))
            })
            .and_then(http)
        })
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
        let address = match &state.settings.redis.node_url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => {
                if addr.ip().is_unspecified() {
                    tracing::warn!(
                        bind = %addr,
                        "redis.node_url is unset and server.bind is a wildcard address: other \
                         nodes cannot route a caller's rejoin here; set redis.node_url"
                    );
                }
                format!("http://{addr}")
            }
        };
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

    /// Serves until SIGTERM or SIGINT, then drains (see [`drain`]), stops
    /// serving and closes storage.
    pub async fn serve_until_signal(self) -> std::io::Result<()> {
        let handle = self.handle.clone();
        let state = self.state.clone();
        actix_web::rt::spawn(async move {
            let signal = shutdown_signal().await;
            drain(&state, signal).await;
            tracing::info!("no new connections; finishing in-flight requests");
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

/// What a caller still in a call hears when the node goes down.
pub const SHUTDOWN_GOODBYE: &str =
    "I'm sorry, this line has to close now for maintenance. Please call again. Goodbye.";

/// Drains the node after a shutdown signal: `/readyz` turns 503 at once
/// and new sessions are refused (a load balancer moves traffic away), while
/// the calls in progress get up to `server.drain_timeout_s` to finish by
/// themselves. Those still live then hear [`SHUTDOWN_GOODBYE`] and end with
/// reason `server-shutdown`. Returns once no call runs here (each one's
/// transcript and end stored), or when the goodbyes ran out of time. A
/// second signal cuts the wait short and goes straight to the goodbyes.
pub async fn drain(state: &AppState, signal: &'static str) {
    state
        .draining
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let timeout = Duration::from_secs(state.settings.server.drain_timeout_s);
    let live = state.live.len();
    tracing::info!(
        signal,
        live_sessions = live,
        drain_timeout_s = timeout.as_secs(),
        "draining: /readyz answers 503, new sessions are refused, live calls may finish"
    );
    if live == 0 {
        return;
    }
    let finished = tokio::select! {
        finished = calls_end_within(state, timeout) => finished,
        again = shutdown_signal() => {
            tracing::info!(signal = again, "second signal: not waiting for calls to finish");
            false
        }
    };
    if finished {
        tracing::info!("every call finished");
        return;
    }
    let told = state.live.say_goodbye(
        SHUTDOWN_GOODBYE,
        palaver_actors::conversation::EndReason::ServerShutdown,
    );
    tracing::info!(sessions = told, "saying goodbye to the calls still live");
    let farewell = Duration::from_millis(palaver_actors::conversation::FAREWELL_MAX_MS);
    if calls_end_within(state, farewell + Duration::from_secs(2)).await {
        tracing::info!("every call ended after its goodbye");
        return;
    }
    tracing::warn!(
        sessions = state.live.len(),
        "calls still live after their goodbye; hanging them up"
    );
    state
        .live
        .hang_up_all(palaver_actors::conversation::EndReason::ServerShutdown);
    calls_end_within(state, Duration::from_secs(2)).await;
}

/// Whether every call on this node ended within `timeout`.
async fn calls_end_within(state: &AppState, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while !state.live.is_empty() {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
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
