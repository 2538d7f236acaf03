//! `GET /v1/rooms/ws`: one WebSocket per client carrying the live traffic
//! of every room the user is a member of (see [`crate::rooms_live`]).
//!
//! Server text frames (JSON with a `type`):
//! - `connected` `{user_id, presence: [{user_id, status, last_seen}]}`: the
//!   connection is live; the presence of everyone sharing a room with the
//!   user.
//! - `message.new`, `message.updated`, `message.deleted` `{message}`: a
//!   stored message (the [`RoomMessageView`] of the REST API), whoever sent
//!   it (REST or this socket; the sender's own connections get it too).
//! - `typing` `{room_id, user_id, typing}`: `typing: false` when they stop,
//!   send, disconnect or 5 s after their last `typing`.
//! - `read.receipt` `{room_id, user_id, last_read_message_id}`.
//! - `presence` `{user_id, status: online|away|offline, last_seen}`.
//! - `send.ack` `{message, created}`: answers a `send`, after it is stored
//!   and before it fans out.
//! - `error` `{code, message}`: a client message that was refused; the
//!   connection goes on.
//!
//! Client text frames: `{"type":"typing","room_id":…}` (again every few
//! seconds while typing; `"typing":false` to stop),
//! `{"type":"send","room_id":…,"body":…,"idempotency_key":…}`,
//! `{"type":"presence","status":"away"|"online"}`.
//!
//! Reconnecting: the socket carries only what happens while it is open. A
//! client that reconnects asks each room for what it missed with
//! `GET /v1/rooms/{id}/messages?since=<last message id it saw>`; a `send`
//! retried with the same `idempotency_key` is stored once.

use std::time::{Duration, Instant};

use actix_web::{HttpRequest, HttpResponse, get, web};
use actix_ws::{AggregatedMessage, CloseCode, CloseReason};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use utoipa::IntoParams;
use utoipa_actix_web::service_config::ServiceConfig;

use super::error::{ApiError, ErrorBody};
use super::extract::{self, Caller};
use super::rooms::{RoomMessageView, check_body};
use crate::db::StoreError;
use crate::ids::{OrgId, RoomId, UserId};
use crate::rooms_live::{self, Connect, Disconnect, SetAway, SetTyping};
use crate::state::AppState;
use crate::store::{self, rooms::NewRoomMessage};

const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(10);
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest client text frame.
const MAX_CLIENT_MESSAGE: usize = 64 * 1024;

pub fn configure(cfg: &mut ServiceConfig<'_>) {
    cfg.service(rooms_ws);
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RoomsWsQuery {
    /// A user's access token (browsers cannot set headers on a WebSocket);
    /// an `Authorization` header works too.
    pub token: Option<String>,
}

#[utoipa::path(
    tag = "rooms",
    params(RoomsWsQuery),
    responses(
        (status = 101, description = "Switching protocols: live events of the user's rooms"),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody, description = "Not a user: an API key or a session token"),
    ),
    security(("bearer" = []))
)]
#[get("/rooms/ws")]
async fn rooms_ws(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
    query: web::Query<RoomsWsQuery>,
) -> Result<HttpResponse, ApiError> {
    let caller = match (Caller::from_request_sync(&req), &query.token) {
        (Ok(caller), _) => caller,
        (Err(_), Some(token)) => {
            let caller = extract::authenticate(&state, token).await?;
            state.limits.check(caller.rate_key())?;
            caller
        }
        (Err(err), None) => return Err(err),
    };
    caller.require_org_credential()?;
    let user = caller.user_id().ok_or_else(|| {
        ApiError::Forbidden(
            "live rooms need a user: an API key has no user; sign in as one \
             (POST /v1/auth/login) and connect with their access token"
                .into(),
        )
    })?;
    let org = caller.org;
    let (response, socket, stream) =
        actix_ws::handle(&req, body).map_err(|e| ApiError::BadRequest {
            code: "not_a_websocket",
            message: e.to_string(),
            field: None,
        })?;
    let stream = stream
        .max_frame_size(MAX_CLIENT_MESSAGE)
        .aggregate_continuations();
    let state = state.into_inner();
    actix_web::rt::spawn(async move {
        run_socket(&state, org, user, socket, stream).await;
    });
    Ok(response)
}

async fn peers(state: &AppState, user: UserId) -> Vec<UserId> {
    state
        .db
        .run(move |c| rooms_live::peers(c, user))
        .await
        .unwrap_or_else(|err| {
            tracing::warn!(user = %user, %err, "room peers not loaded; presence not announced");
            Vec::new()
        })
}

async fn run_socket(
    state: &AppState,
    org: OrgId,
    user: UserId,
    mut socket: actix_ws::Session,
    mut stream: actix_ws::AggregatedMessageStream,
) {
    let (tx, mut rx) = mpsc::channel(rooms_live::CONNECTION_QUEUE);
    let hub = state.rooms.hub.clone();
    let peers_now = peers(state, user).await;
    let connected = match hub
        .send(Connect {
            user,
            tx,
            peers: peers_now.clone(),
        })
        .await
    {
        Ok(connected) => connected,
        Err(err) => {
            tracing::warn!(%err, "room hub unavailable");
            let _ = socket
                .close(Some(CloseReason {
                    code: CloseCode::Error,
                    description: Some("live rooms unavailable".into()),
                }))
                .await;
            return;
        }
    };
    let connection = connected.connection;
    tracing::info!(user = %user, org = %org, connection, "rooms WebSocket connected");
    // Frames for this connection that come while it waits, held (not left
    // in its bounded queue, which the hub would find full) and sent after
    // the hello.
    let mut held = Vec::new();
    let presence = match &state.cluster {
        Some(cluster) => {
            // Routable from every node before it is told `connected` (its
            // presence is how other nodes find it); then peers connected
            // to other nodes count too.
            let waiting = async {
                cluster.settled().await;
                state.rooms.presence(peers_now).await
            };
            tokio::pin!(waiting);
            loop {
                tokio::select! {
                    presence = &mut waiting => break presence,
                    Some(frame) = rx.recv() => held.push(frame),
                }
            }
        }
        None => connected.presence,
    };
    let hello = json!({
        "type": "connected",
        "user_id": user,
        "presence": presence,
    });
    let mut last_heard = Instant::now();
    let mut heartbeat = tokio::time::interval(HEARTBEAT_INTERVAL);
    let mut close = None;
    for frame in std::iter::once(rooms_live::Frame::from(hello.to_string())).chain(held) {
        if socket.text(frame.to_string()).await.is_err() {
            close = Some(None);
            break;
        }
    }
    while close.is_none() {
        tokio::select! {
            outgoing = rx.recv() => match outgoing {
                Some(frame) => {
                    if socket.text(frame.to_string()).await.is_err() {
                        close = Some(None);
                    }
                }
                // The hub dropped this connection: it fell behind.
                None => close = Some(Some(CloseReason {
                    code: CloseCode::Policy,
                    description: Some("too far behind; reconnect and catch up with since".into()),
                })),
            },
            incoming = stream.next() => {
                last_heard = Instant::now();
                match incoming {
                    Some(Ok(AggregatedMessage::Text(text))) => {
                        if let Some(reply) = client_message(state, org, user, &text).await {
                            let _ = socket.text(reply.to_string()).await;
                        }
                    }
                    Some(Ok(AggregatedMessage::Binary(_))) => {
                        let reply = error("binary_not_supported", "send JSON text frames");
                        let _ = socket.text(reply.to_string()).await;
                    }
                    Some(Ok(AggregatedMessage::Ping(bytes))) => {
                        let _ = socket.pong(&bytes).await;
                    }
                    Some(Ok(AggregatedMessage::Pong(_))) => {}
                    Some(Ok(AggregatedMessage::Close(_))) | None => close = Some(None),
                    Some(Err(err)) => {
                        close = Some(Some(CloseReason {
                            code: CloseCode::Protocol,
                            description: Some(err.to_string()),
                        }));
                    }
                }
            }
            _ = heartbeat.tick() => {
                if last_heard.elapsed() > CLIENT_TIMEOUT {
                    close = Some(Some(CloseReason {
                        code: CloseCode::Away,
                        description: Some("client timeout".into()),
                    }));
                } else {
                    let _ = socket.ping(b"").await;
                }
            }
        }
    }
    hub.do_send(Disconnect {
        user,
        connection,
        peers: peers(state, user).await,
    });
    tracing::info!(user = %user, connection, "rooms WebSocket closed");
    if let Some(Some(reason)) = close {
        let _ = socket.close(Some(reason)).await;
    }
}

fn error(code: &str, message: impl Into<String>) -> Value {
    json!({ "type": "error", "code": code, "message": message.into() })
}

/// The `error` frame for a refused client message: the same code and
/// message the REST API would give; internal details are logged only.
fn api_error(err: ApiError) -> Value {
    let code = match &err {
        ApiError::BadRequest { code, .. } | ApiError::Unauthorized { code, .. } => code,
        ApiError::Validation { .. } => "validation_failed",
        ApiError::Forbidden(_) => "forbidden",
        ApiError::NotFound(_) => "not_found",
        ApiError::Conflict(_) => "conflict",
        ApiError::RateLimited { .. } => "rate_limited",
        ApiError::Unavailable(_) => "unavailable",
        _ => "internal",
    };
    if matches!(code, "internal" | "unavailable") {
        tracing::warn!(%err, "a rooms WebSocket message failed");
        return error(code, "the server could not do that; try again");
    }
    error(code, err.to_string())
}

/// Handles one client frame; the reply for this connection, if any.
async fn client_message(state: &AppState, org: OrgId, user: UserId, text: &str) -> Option<Value> {
    if let Err(retry) = state.limits.check(crate::state::RateKey::User(user)) {
        return Some(api_error(retry.into()));
    }
    use palaver_protocol::rooms::{AwayOrOnline, ClientMessage};
    let message = match palaver_protocol::rooms::parse(text) {
        Ok(message) => message,
        Err(err) => {
            return Some(error(
                "invalid_message",
                format!(
                    "{err}; expected {{\"type\":\"typing\",\"room_id\":…}}, \
                     {{\"type\":\"send\",\"room_id\":…,\"body\":…}} or \
                     {{\"type\":\"presence\",\"status\":\"away\"|\"online\"}}"
                ),
            ));
        }
    };
    match message {
        ClientMessage::Typing { room_id, typing } => {
            let room_id = RoomId(room_id);
            let others = match others_in(state, org, room_id, user).await {
                Ok(others) => others,
                Err(err) => return Some(api_error(err)),
            };
            state.rooms.hub.do_send(SetTyping {
                room: room_id,
                user,
                typing,
                recipients: others,
            });
            None
        }
        ClientMessage::Send {
            room_id,
            body,
            idempotency_key,
        } => match send(state, org, user, RoomId(room_id), body, idempotency_key).await {
            Ok(ack) => Some(ack),
            Err(err) => Some(api_error(err)),
        },
        ClientMessage::Presence { status } => {
            state.rooms.hub.do_send(SetAway {
                user,
                away: matches!(status, AwayOrOnline::Away),
                peers: peers(state, user).await,
            });
            None
        }
    }
}

/// A room the caller may not see is "no room", whatever the reason.
fn no_room(room: RoomId) -> impl FnOnce(StoreError) -> ApiError {
    move |err| match err {
        StoreError::NotFound => ApiError::NotFound(format!("no room with id {room}")),
        other => other.into(),
    }
}

/// The other members of a room `user` belongs to; 404 otherwise.
async fn others_in(
    state: &AppState,
    org: OrgId,
    room: RoomId,
    user: UserId,
) -> Result<Vec<UserId>, ApiError> {
    let members = state
        .db
        .run(move |c| {
            store::rooms::access(c, org, room, Some(user))?;
            store::rooms::member_ids(c, room)
        })
        .await
        .map_err(no_room(room))?;
    Ok(members.into_iter().filter(|m| *m != user).collect())
}

/// Stores a message sent over the socket, fans it out if it is new (and
/// has the room's assistant, if any, answer it), and returns the
/// acknowledgement.
async fn send(
    state: &AppState,
    org: OrgId,
    user: UserId,
    room: RoomId,
    body: String,
    idempotency_key: Option<String>,
) -> Result<Value, ApiError> {
    let (room_row, _) = state
        .db
        .run(move |c| store::rooms::access(c, org, room, Some(user)))
        .await
        .map_err(no_room(room))?;
    if body.trim().is_empty() {
        return Err(ApiError::validation("body", "body must not be empty"));
    }
    check_body(&body)?;
    if let Some(key) = &idempotency_key {
        super::check_len("idempotency_key", key, 1, 200)?;
    }
    let (message, created) = state
        .db
        .run(move |c| {
            store::rooms::post(
                c,
                &NewRoomMessage {
                    room_id: room,
                    sender_user_id: Some(user),
                    sender_assistant_id: None,
                    body: Some(&body),
                    attachments: "[]",
                    idempotency_key: idempotency_key.as_deref(),
                    created_at: store::now(),
                },
            )
        })
        .await?;
    let view = RoomMessageView::from(message);
    let message = serde_json::to_value(&view)
        .map_err(|e| ApiError::Internal(format!("message did not serialize: {e}")))?;
    let ack = json!({ "type": "send.ack", "message": message, "created": created });
    if created {
        state.rooms.stop_typing(room, user);
        let event = json!({ "type": "message.new", "message": message });
        // The ack still goes out first on this connection: its own copy of
        // the event waits in the queue this task reads after writing it.
        state.rooms.publish(&state.db, room, event).await;
        crate::room_assistant::user_posted(state, &room_row);
    }
    Ok(ack)
}
