//! `/v1/sessions`: create a voice session (and the join token a browser uses),
//! list, read, end, and read its transcript.

use actix_web::{HttpRequest, HttpResponse, get, post, web};
use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_actix_web::service_config::ServiceConfig;

use super::error::{ApiError, ErrorBody, not_found};
use super::extract::{Caller, SessionCaller, ValidJson};
use super::{Page, json_column, json_object, page_request, public_base, utc};
use crate::ids::{AssistantId, MessageId, SessionId};
use crate::model::{MessageRole, SessionStatus, Transport};
use crate::state::AppState;
use crate::store::messages::{Message, TurnLatency};
use crate::store::sessions::{NewSession, OpenSessionLimit, Session, SessionFilter};
use crate::store::{self};

const METADATA_MAX_BYTES: usize = 16 * 1024;

pub fn configure(cfg: &mut ServiceConfig<'_>) {
    cfg.service(create_session)
        .service(list_sessions)
        .service(get_session)
        .service(end_session)
        .service(list_messages);
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SessionView {
    pub id: SessionId,
    pub assistant_id: AssistantId,
    pub status: SessionStatus,
    /// Set when a caller connects.
    pub transport: Option<Transport>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    /// Why it ended: `hang-up`, `end-session`, `idle-timeout`,
    /// `max-duration`, `ended-by-api`, or an error code.
    pub end_reason: Option<String>,
    #[schema(value_type = Object)]
    pub metadata: serde_json::Value,
    /// Session-level latency summary written by the voice pipeline.
    #[schema(value_type = Object)]
    pub metrics: serde_json::Value,
}

impl From<Session> for SessionView {
    fn from(row: Session) -> Self {
        SessionView {
            id: row.id,
            assistant_id: row.assistant_id,
            status: row.status,
            transport: row.transport,
            created_at: utc(row.created_at),
            started_at: row.started_at.map(utc),
            ended_at: row.ended_at.map(utc),
            end_reason: row.end_reason,
            metadata: json_column(&row.metadata),
            metrics: json_column(&row.metrics),
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSession {
    pub assistant_id: AssistantId,
    /// The transport the caller intends to use; decided on connect if absent.
    pub transport: Option<Transport>,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
}

/// A new session and what a browser needs to join it.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionCreated {
    #[serde(flatten)]
    pub session: SessionView,
    /// Join token for this session only: hand it to the browser instead of an
    /// API key (`Authorization: Bearer <token>`).
    pub token: String,
    pub token_expires_at: DateTime<Utc>,
    /// `POST` an SDP offer here (`Content-Type: application/sdp`).
    pub webrtc_url: String,
    /// Open a WebSocket here.
    pub ws_url: String,
}

#[utoipa::path(
    tag = "sessions",
    request_body = CreateSession,
    responses(
        (status = 201, body = SessionCreated), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 429, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[post("/sessions")]
async fn create_session(
    req: HttpRequest,
    state: web::Data<AppState>,
    caller: Caller,
    body: ValidJson<CreateSession>,
) -> Result<HttpResponse, ApiError> {
    super::error::refuse_if_draining(&state)?;
    let input = body.0;
    let metadata = match &input.metadata {
        Some(value) => json_object("metadata", value, METADATA_MAX_BYTES)?,
        None => "{}".to_owned(),
    };
    let org = caller.org;
    let assistant = input.assistant_id;
    state
        .db
        .run(move |c| store::assistants::get(c, org, assistant))
        .await
        .map_err(not_found("assistant", assistant))?;
    let limit = OpenSessionLimit {
        max_open: i64::from(state.settings.limits.max_open_sessions_per_org),
        created_after: store::now() - TimeDelta::seconds(state.tokens.session_token_ttl_s() as i64),
    };
    let user = caller.user_id();
    let row = state
        .db
        .run(move |c| {
            let new = NewSession {
                organization_id: org,
                assistant_id: assistant,
                created_by_user_id: user,
                status: SessionStatus::Created,
                transport: input.transport,
                created_at: store::now(),
                metadata: &metadata,
                metrics: "{}",
            };
            store::sessions::create(c, &new, limit)
        })
        .await?;
    let (token, token_expires_at) = state.tokens.issue_session(org, row.id);
    let base = public_base(&req, &state.settings.server);
    let ws_base = base.replacen("http", "ws", 1);
    tracing::info!(session = %row.id, assistant = %assistant, org = %org, "session created");
    Ok(HttpResponse::Created().json(SessionCreated {
        webrtc_url: format!("{base}/v1/sessions/{}/webrtc", row.id),
        ws_url: format!("{ws_base}/v1/sessions/{}/ws", row.id),
        session: row.into(),
        token,
        token_expires_at,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SessionListQuery {
    /// Only sessions in this status.
    pub status: Option<SessionStatus>,
    /// Only sessions of this assistant.
    pub assistant_id: Option<i64>,
    /// Items per page, 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    #[param(pattern = r"^[0-9]{1,18}$")]
    pub after: Option<String>,
}

#[utoipa::path(
    tag = "sessions",
    params(SessionListQuery),
    responses((status = 200, body = Page<SessionView>), (status = 400, body = ErrorBody)),
    security(("bearer" = []))
)]
#[get("/sessions")]
async fn list_sessions(
    state: web::Data<AppState>,
    caller: Caller,
    query: web::Query<SessionListQuery>,
) -> Result<web::Json<Page<SessionView>>, ApiError> {
    caller.require_org_credential()?;
    let page = page_request(query.limit, query.after.as_deref())?;
    let filter = SessionFilter {
        status: query.status,
        assistant_id: query.assistant_id.map(AssistantId),
    };
    let org = caller.org;
    let rows = state
        .db
        .run(move |c| store::sessions::list(c, org, filter, page))
        .await?;
    Ok(web::Json(Page::new(rows, SessionView::from)))
}

/// Loads a session the caller may see, or 404.
pub(crate) async fn visible_session(
    state: &AppState,
    caller: &Caller,
    id: SessionId,
) -> Result<Session, ApiError> {
    if !caller.can_see_session(id) {
        return Err(ApiError::NotFound(format!("no session with id {id}")));
    }
    let org = caller.org;
    state
        .db
        .run(move |c| store::sessions::get(c, org, id))
        .await
        .map_err(not_found("session", id))
}

#[utoipa::path(
    tag = "sessions",
    params(("id" = i64, Path, description = "Session id")),
    responses((status = 200, body = SessionView), (status = 404, body = ErrorBody)),
    security(("bearer" = []))
)]
#[get("/sessions/{id}")]
async fn get_session(
    state: web::Data<AppState>,
    SessionCaller(caller): SessionCaller,
    id: web::Path<i64>,
) -> Result<web::Json<SessionView>, ApiError> {
    let row = visible_session(&state, &caller, SessionId(*id)).await?;
    Ok(web::Json(row.into()))
}

#[utoipa::path(
    tag = "sessions",
    params(("id" = i64, Path, description = "Session id")),
    responses(
        (status = 200, body = SessionView), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "The session already ended"),
    ),
    security(("bearer" = []))
)]
#[post("/sessions/{id}/end")]
async fn end_session(
    state: web::Data<AppState>,
    SessionCaller(caller): SessionCaller,
    id: web::Path<i64>,
) -> Result<web::Json<SessionView>, ApiError> {
    let id = SessionId(*id);
    visible_session(&state, &caller, id).await?;
    let org = caller.org;
    let row = state
        .db
        .run(move |c| store::sessions::end(c, org, id, SessionStatus::Ended, "ended-by-api"))
        .await
        .map_err(not_found("session", id))?;
    let reason = palaver_actors::conversation::EndReason::EndedByApi;
    let hung_up = state.live.hang_up(id, reason);
    // A call running on another node is hung up there.
    let forwarded_to = match (&state.cluster, hung_up) {
        (Some(cluster), false) => cluster.forward_hangup(id, None, reason).await,
        _ => None,
    };
    tracing::info!(
        session = %id, org = %org, reason = "ended-by-api", live = hung_up,
        forwarded_to = forwarded_to.as_deref().unwrap_or("-"), "session ended"
    );
    Ok(web::Json(row.into()))
}

/// One turn of the transcript.
#[derive(Debug, Serialize, ToSchema)]
pub struct MessageView {
    pub id: MessageId,
    /// 1, 2, 3, … within the session.
    pub seq: i32,
    pub role: MessageRole,
    /// Everything the assistant meant to say (or the caller's transcript).
    pub content: String,
    /// For an interrupted assistant turn: exactly what the caller heard.
    pub heard_text: Option<String>,
    pub interrupted: bool,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub latency: LatencyView,
}

/// Milliseconds from the end of the caller's speech.
#[derive(Debug, Serialize, ToSchema)]
pub struct LatencyView {
    pub transcript_ms: Option<i32>,
    pub first_token_ms: Option<i32>,
    pub first_audio_ms: Option<i32>,
    pub voice_to_voice_ms: Option<i32>,
}

impl From<TurnLatency> for LatencyView {
    fn from(l: TurnLatency) -> Self {
        LatencyView {
            transcript_ms: l.transcript_latency_ms,
            first_token_ms: l.first_token_latency_ms,
            first_audio_ms: l.first_audio_latency_ms,
            voice_to_voice_ms: l.voice_to_voice_ms,
        }
    }
}

impl From<Message> for MessageView {
    fn from(m: Message) -> Self {
        MessageView {
            id: m.id,
            seq: m.seq,
            role: m.role,
            content: m.content,
            heard_text: m.heard_text,
            interrupted: m.interrupted,
            started_at: utc(m.started_at),
            ended_at: m.ended_at.map(utc),
            latency: m.latency.into(),
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct MessageListQuery {
    /// Items per page, 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page (a `seq`).
    #[param(pattern = r"^[0-9]{1,9}$")]
    pub after: Option<String>,
}

#[utoipa::path(
    tag = "sessions",
    params(("id" = i64, Path, description = "Session id"), MessageListQuery),
    responses((status = 200, body = Page<MessageView>), (status = 404, body = ErrorBody)),
    security(("bearer" = []))
)]
#[get("/sessions/{id}/messages")]
async fn list_messages(
    state: web::Data<AppState>,
    SessionCaller(caller): SessionCaller,
    id: web::Path<i64>,
    query: web::Query<MessageListQuery>,
) -> Result<web::Json<Page<MessageView>>, ApiError> {
    let id = SessionId(*id);
    visible_session(&state, &caller, id).await?;
    let page = page_request(query.limit, query.after.as_deref())?;
    // A `seq`: at most 9 digits, as the document says.
    let digits = query
        .after
        .as_deref()
        .map_or(0, |a| a.trim_end_matches('\n').len());
    let after_seq = i32::try_from(page.after.unwrap_or(0))
        .ok()
        .filter(|_| digits <= 9)
        .ok_or_else(|| ApiError::validation("after", "after is out of range"))?;
    let (rows, next) = state
        .db
        .run(move |c| store::messages::list(c, id, after_seq, page.limit))
        .await?;
    Ok(web::Json(Page {
        data: rows.into_iter().map(MessageView::from).collect(),
        next_cursor: next.map(|seq| seq.to_string()),
    }))
}
