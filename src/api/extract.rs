//! Request extractors: [`Caller`] (who is asking, already rate-limited) and
//! [`ValidJson`] (a JSON body within the size limit, with errors that name
//! the offending field).

use std::net::{IpAddr, Ipv4Addr};

use actix_web::HttpMessage;
use actix_web::body::MessageBody;
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::http::header;
use actix_web::middleware::Next;
use actix_web::web::{BytesMut, Data};
use actix_web::{FromRequest, HttpRequest};
use chrono::TimeDelta;
use futures_util::StreamExt;
use futures_util::future::LocalBoxFuture;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::error::ApiError;
use crate::auth::{self, API_KEY_PREFIX, TokenError, TokenKind};
use crate::ids::{ApiKeyId, OrgId, SessionId, UserId};
use crate::model::Role;
use crate::state::{AppState, RateKey};
use crate::store;

/// How often `last_used_at` of an API key is written at most.
const KEY_TOUCH_INTERVAL: TimeDelta = TimeDelta::seconds(60);

/// The authenticated identity behind a request.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub org: OrgId,
    pub kind: CallerKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallerKind {
    /// A server credential of the organization; acts as an admin.
    ApiKey(ApiKeyId),
    User {
        id: UserId,
        role: Role,
    },
    /// A browser holding the join token of one session.
    Session(SessionId),
}

impl Caller {
    /// The role this caller acts with; session tokens have none.
    pub fn role(&self) -> Option<Role> {
        match self.kind {
            CallerKind::ApiKey(_) => Some(Role::Admin),
            CallerKind::User { role, .. } => Some(role),
            CallerKind::Session(_) => None,
        }
    }

    pub fn user_id(&self) -> Option<UserId> {
        match self.kind {
            CallerKind::User { id, .. } => Some(id),
            _ => None,
        }
    }

    /// Refuses session tokens: they only reach their own session.
    pub fn require_org_credential(&self) -> Result<Role, ApiError> {
        self.role().ok_or_else(|| {
            ApiError::Forbidden(
                "a session token can only be used for its own session; use an API key or a \
                 user token"
                    .into(),
            )
        })
    }

    /// Requires admin rights (API keys have them).
    pub fn require_admin(&self) -> Result<(), ApiError> {
        match self.require_org_credential()? {
            Role::Admin => Ok(()),
            role => Err(ApiError::Forbidden(format!(
                "this needs the admin role; you are {}",
                role.as_str()
            ))),
        }
    }

    /// Whether the caller may see this session (a session token sees only
    /// its own). Answer 404 otherwise, never 403, so ids are not probed.
    pub fn can_see_session(&self, session: SessionId) -> bool {
        match self.kind {
            CallerKind::Session(own) => own == session,
            _ => true,
        }
    }

    pub(crate) fn rate_key(&self) -> RateKey {
        match self.kind {
            CallerKind::ApiKey(id) => RateKey::ApiKey(id),
            CallerKind::User { id, .. } => RateKey::User(id),
            CallerKind::Session(id) => RateKey::Session(id),
        }
    }
}

pub(crate) fn state(req: &HttpRequest) -> Result<Data<AppState>, ApiError> {
    req.app_data::<Data<AppState>>()
        .cloned()
        .ok_or_else(|| ApiError::Internal("application state missing".into()))
}

fn missing_credential() -> ApiError {
    ApiError::unauthorized("missing `Authorization: Bearer <API key or token>` header")
}

pub(crate) fn bearer(req: &HttpRequest) -> Result<String, ApiError> {
    let value = req
        .headers()
        .get(header::AUTHORIZATION)
        .ok_or_else(missing_credential)?;
    let value = value
        .to_str()
        .map_err(|_| ApiError::unauthorized("the Authorization header is not valid text"))?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .ok_or_else(|| {
            ApiError::unauthorized("the Authorization header must be `Bearer <token>`")
        })?;
    Ok(token.trim().to_owned())
}

pub(crate) async fn authenticate(state: &AppState, token: &str) -> Result<Caller, ApiError> {
    if token.starts_with(API_KEY_PREFIX) {
        let invalid = || ApiError::unauthorized("invalid or revoked API key");
        let prefix = auth::api_key_prefix(token).ok_or_else(invalid)?.to_owned();
        if let Some((key, org)) = state.verified_keys.get(&prefix, token) {
            return Ok(Caller {
                org,
                kind: CallerKind::ApiKey(key),
            });
        }
        let lookup = prefix.clone();
        let key = state
            .db
            .run(move |c| store::api_keys::find_active_by_prefix(c, &lookup))
            .await?
            .ok_or_else(invalid)?;
        let presented = token.to_owned();
        let hash = key.key_hash.clone();
        let matches = auth::off_thread(move || auth::verify_secret(&presented, &hash))
            .await
            .map_err(ApiError::from)?;
        if !matches {
            return Err(invalid());
        }
        state
            .verified_keys
            .remember(&prefix, token, key.id, key.organization_id);
        let now = store::now();
        if key
            .last_used_at
            .is_none_or(|at| now - at > KEY_TOUCH_INTERVAL)
        {
            let id = key.id;
            state
                .db
                .run(move |c| store::api_keys::touch(c, id, now))
                .await?;
        }
        return Ok(Caller {
            org: key.organization_id,
            kind: CallerKind::ApiKey(key.id),
        });
    }
    let claims = state.tokens.verify(token).map_err(|err| match err {
        TokenError::Expired => ApiError::Unauthorized {
            code: "token_expired",
            message: "token expired; log in again or use /v1/auth/refresh".into(),
        },
        _ => ApiError::unauthorized("invalid token"),
    })?;
    let kind = match (claims.typ, claims.uid, claims.role, claims.sid) {
        (TokenKind::Access, Some(id), Some(role), _) => CallerKind::User { id, role },
        (TokenKind::Session, _, _, Some(sid)) => CallerKind::Session(sid),
        (TokenKind::Refresh, ..) => {
            return Err(ApiError::unauthorized(
                "a refresh token cannot call the API; exchange it at POST /v1/auth/refresh",
            ));
        }
        _ => return Err(ApiError::unauthorized("invalid token")),
    };
    Ok(Caller {
        org: claims.org,
        kind,
    })
}

/// The outcome of authenticating a request, left by [`authenticate_request`]
/// for the [`Caller`] extractor.
struct Authenticated(Result<Caller, ApiError>);

/// Middleware: authenticates every request that carries an `Authorization`
/// header and charges its rate limit *before* any extractor runs. Actix polls
/// a handler's extractors concurrently, so authenticating inside the
/// extractor would let a body error (or a body read) beat a 401.
pub async fn authenticate_request(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    if req.headers().contains_key(header::AUTHORIZATION) {
        let outcome = async {
            let state = state(req.request())?;
            let caller = authenticate(&state, &bearer(req.request())?).await?;
            state.limits.check(caller.rate_key())?;
            Ok(caller)
        }
        .await;
        req.extensions_mut().insert(Authenticated(outcome));
    }
    next.call(req).await
}

impl Caller {
    /// The outcome the authentication middleware left for this request (a
    /// missing `Authorization` header says so).
    pub fn from_request_sync(req: &HttpRequest) -> Result<Caller, ApiError> {
        match req.extensions_mut().remove::<Authenticated>() {
            Some(Authenticated(outcome)) => outcome,
            None if !req.headers().contains_key(header::AUTHORIZATION) => Err(missing_credential()),
            None => Err(ApiError::Internal(
                "authentication middleware is not installed on this route".into(),
            )),
        }
    }
}

/// The extractor of every route that is not one session's: an API key or a
/// user. A session's join token (which a browser holds) is refused here, so
/// a route reaches no more than its session unless it asks for
/// [`SessionCaller`].
impl FromRequest for Caller {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        std::future::ready(Caller::from_request_sync(req).and_then(|caller| {
            caller.require_org_credential()?;
            Ok(caller)
        }))
    }
}

/// The extractor of one session's routes (read it, its transcript, join,
/// hang up): an API key, a user, or that session's join token. The handler
/// must still check the session with [`Caller::can_see_session`] (through
/// `visible_session`).
#[derive(Debug, Clone, Copy)]
pub struct SessionCaller(pub Caller);

impl FromRequest for SessionCaller {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        std::future::ready(Caller::from_request_sync(req).map(SessionCaller))
    }
}

/// Rate-limits an unauthenticated route by the peer's address.
#[derive(Debug, Clone, Copy)]
pub struct PeerLimited;

impl FromRequest for PeerLimited {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let ip = req
            .peer_addr()
            .map(|a| a.ip())
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        std::future::ready(
            state(req)
                .and_then(|state| Ok(state.limits.check(RateKey::Peer(ip))?))
                .map(|_| PeerLimited),
        )
    }
}

/// A JSON body: `Content-Type: application/json`, at most
/// `server.body_limit_bytes`, unknown fields and wrong types refused with
/// the path of the offending field.
#[derive(Debug)]
pub struct ValidJson<T>(pub T);

fn is_json(req: &HttpRequest) -> bool {
    content_type(req).is_some_and(|mime| mime == "application/json" || mime.ends_with("+json"))
}

impl<T: DeserializeOwned + 'static> FromRequest for ValidJson<T> {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let body = LimitedBody::new(req, payload);
        let json = is_json(req);
        Box::pin(async move {
            body.check_declared()?;
            if !json {
                return Err(ApiError::UnsupportedMediaType(
                    "expected `Content-Type: application/json`".into(),
                ));
            }
            parse_json(&body.read().await?).map(ValidJson)
        })
    }
}

/// An SDP body (`Content-Type: application/sdp`), at most
/// `server.body_limit_bytes`, as text.
#[derive(Debug)]
pub struct SdpBody(pub String);

impl FromRequest for SdpBody {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let body = LimitedBody::new(req, payload);
        let sdp = content_type(req).is_some_and(|mime| mime == "application/sdp");
        Box::pin(async move {
            body.check_declared()?;
            if !sdp {
                return Err(ApiError::UnsupportedMediaType(
                    "expected `Content-Type: application/sdp` with the SDP offer as the body"
                        .into(),
                ));
            }
            let bytes = body.read().await?;
            String::from_utf8(bytes.to_vec())
                .map(SdpBody)
                .map_err(|_| ApiError::BadRequest {
                    code: "invalid_sdp",
                    message: "the SDP offer is not UTF-8 text".into(),
                    field: None,
                })
        })
    }
}

/// The request's media type, lower-cased, without parameters.
fn content_type(req: &HttpRequest) -> Option<String> {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|mime| mime.trim().to_ascii_lowercase())
}

/// A request body read up to `server.body_limit_bytes` (413 beyond) within
/// `server.body_read_timeout_ms` (408 beyond).
struct LimitedBody {
    payload: Payload,
    declared: Option<usize>,
    limit: usize,
    timeout_ms: u64,
}

impl LimitedBody {
    fn new(req: &HttpRequest, payload: &mut Payload) -> Self {
        let server = req.app_data::<Data<AppState>>().map(|s| {
            (
                s.settings.server.body_limit_bytes,
                s.settings.server.body_read_timeout_ms,
            )
        });
        let (limit, timeout_ms) = server.unwrap_or((256 * 1024, 10_000));
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        Self {
            payload: payload.take(),
            declared,
            limit,
            timeout_ms,
        }
    }

    /// 413 at once when `Content-Length` is over the limit.
    fn check_declared(&self) -> Result<(), ApiError> {
        if self.declared.is_some_and(|len| len > self.limit) {
            return Err(ApiError::PayloadTooLarge(self.limit));
        }
        Ok(())
    }

    async fn read(self) -> Result<BytesMut, ApiError> {
        let timeout_ms = self.timeout_ms;
        tokio::time::timeout(
            std::time::Duration::from_millis(timeout_ms),
            self.read_all(),
        )
        .await
        .unwrap_or_else(|_| {
            ::metrics::counter!("palaver_http_body_timeouts_total").increment(1);
            Err(ApiError::BodyTimeout(timeout_ms))
        })
    }

    async fn read_all(mut self) -> Result<BytesMut, ApiError> {
        let mut body = BytesMut::new();
        while let Some(chunk) = self.payload.next().await {
            let chunk = chunk.map_err(|e| ApiError::BadRequest {
                code: "invalid_body",
                message: format!("could not read the request body: {e}"),
                field: None,
            })?;
            if body.len() + chunk.len() > self.limit {
                return Err(ApiError::PayloadTooLarge(self.limit));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

/// Deserializes JSON, telling syntax errors (400) from schema errors (422,
/// with the dotted path of the field).
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let syntax = |inner: serde_json::Error| {
        if inner.is_eof() && body.iter().all(u8::is_ascii_whitespace) {
            ApiError::BadRequest {
                code: "invalid_json",
                message: "the request body is empty; expected a JSON object".into(),
                field: None,
            }
        } else {
            ApiError::BadRequest {
                code: "invalid_json",
                message: format!("the request body is not valid JSON: {inner}"),
                field: None,
            }
        }
    };
    let mut de = serde_json::Deserializer::from_slice(body);
    let mut tree = serde_json::Value::deserialize(&mut de).map_err(syntax)?;
    de.end().map_err(syntax)?;
    integral_numbers_as_integers(&mut tree);
    let value = serde_path_to_error::deserialize(tree).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        if inner.is_data() {
            let message = inner.to_string();
            // serde blames a missing field on the object that lacks it,
            // and inside a tagged enum (buffered) it cannot say where an
            // unknown one was: the message names either.
            let missing = ["missing field `", "unknown field `"]
                .iter()
                .find_map(|prefix| message.strip_prefix(prefix))
                .and_then(|rest| rest.split_once('`'))
                .map(|(name, _)| name.to_owned());
            let field = match (path.as_str(), missing) {
                (".", Some(name)) => Some(name),
                // An unknown field of a plain struct: the path names it.
                (path, Some(name)) if path == name || path.ends_with(&format!(".{name}")) => {
                    Some(path.to_owned())
                }
                (parent, Some(name)) => Some(format!("{parent}.{name}")),
                (".", None) => None,
                (_, None) => Some(path),
            };
            ApiError::Validation { message, field }
        } else {
            syntax(inner)
        }
    })?;
    Ok(value)
}

/// JSON has one kind of number: `3.0` is the integer 3 (JSON Schema agrees,
/// so a client generated from the OpenAPI document may send it), while serde
/// takes only `3` for an integer field. Whole numbers that a double holds
/// exactly become integers; anything else (`2.5`) is left to be refused.
fn integral_numbers_as_integers(value: &mut serde_json::Value) {
    use serde_json::Value;
    /// 2^53: every whole double below it is exact.
    const EXACT: f64 = 9_007_199_254_740_992.0;
    match value {
        Value::Number(number) if !number.is_i64() && !number.is_u64() => {
            if let Some(float) = number.as_f64()
                && float.fract() == 0.0
                && float.abs() < EXACT
            {
                *number = serde_json::Number::from(float as i64);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(integral_numbers_as_integers),
        Value::Object(fields) => fields.values_mut().for_each(integral_numbers_as_integers),
        _ => {}
    }
}
