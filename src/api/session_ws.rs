//! `GET /v1/sessions/{id}/ws`: a voice session over a WebSocket.
//!
//! Client text frames: `{"type":"user-message","text":…}`,
//! `{"type":"end-session"}`. Server text frames: `connected`, the session
//! events (`session.started`, `transcript.final`, `assistant.delta`,
//! `assistant.speaking`, `assistant.interrupted`, `assistant.done`,
//! `turn.metrics`, `error`, `session.ended`), `assistant-message` and
//! `session-ended`. Binary frames from the server are 20 ms of assistant
//! audio, 16 kHz mono PCM16 little-endian (640 bytes).

use std::time::{Duration, Instant};

use actix::{Actor, Addr};
use actix_web::{HttpRequest, HttpResponse, get, web};
use actix_ws::{AggregatedMessage, CloseCode, CloseReason};
use futures_util::StreamExt;
use palaver_actors::conversation::{EndReason, Event};
use palaver_actors::session::{CallerAudio, Hangup, SessionActor, ToClient, UserText};
use palaver_media::AudioFrame;
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::IntoParams;
use utoipa_actix_web::service_config::ServiceConfig;

use super::error::{ApiError, ErrorBody, not_found};
use super::extract::{self, Caller};
use super::sessions::visible_session;
use crate::ids::SessionId;
use crate::model::Transport;
use crate::state::AppState;
use crate::store;
use crate::voice::{self, DbSessionStore};

/// How often the server pings; a client silent for `CLIENT_TIMEOUT` is gone.
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(10);
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
/// Messages queued for a client that reads slowly (about 5 s of audio).
const CLIENT_QUEUE: usize = 256;
/// Largest client text frame.
const MAX_CLIENT_MESSAGE: usize = 64 * 1024;

pub fn configure(cfg: &mut ServiceConfig<'_>) {
    cfg.service(session_ws);
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct WsQuery {
    /// The session's join token (browsers cannot set headers on a
    /// WebSocket); an `Authorization` header works too.
    pub token: Option<String>,
    /// `false` for a text-only session: replies come as text, no audio.
    pub audio: Option<bool>,
}

/// A client text frame.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
enum ClientMessage {
    UserMessage { text: String },
    EndSession,
}

#[utoipa::path(
    tag = "sessions",
    params(("id" = i64, Path, description = "Session id"), WsQuery),
    responses(
        (status = 101, description = "Switching protocols: the session is live"),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "Already joined or ended"),
        (status = 503, body = ErrorBody, description = "The assistant's language model is unavailable"),
    ),
    security(("bearer" = []))
)]
#[get("/sessions/{id}/ws")]
async fn session_ws(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
    id: web::Path<i64>,
    query: web::Query<WsQuery>,
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
    let id = SessionId(*id);
    let session = visible_session(&state, &caller, id).await?;
    let org = caller.org;
    let assistant_id = session.assistant_id;
    let assistant = state
        .db
        .run(move |c| store::assistants::get(c, org, assistant_id))
        .await
        .map_err(not_found("assistant", assistant_id))?;

    let (client_tx, client_rx) = tokio::sync::mpsc::channel(CLIENT_QUEUE);
    let connected_at = store::now();
    let session_store = DbSessionStore {
        db: state.db.clone(),
        org,
        session: id,
        connected_at,
    };
    let speak = query.audio.unwrap_or(true);
    let (setup, degraded) = voice::session_setup(
        &state.settings,
        &assistant.settings,
        speak,
        std::sync::Arc::new(session_store),
        client_tx,
    )
    .map_err(|err| {
        ApiError::Unavailable(format!(
            "the assistant's language model (`{}`) cannot be used: {err}",
            assistant.settings.llm_provider
        ))
    })?;
    state
        .db
        .run(move |c| store::sessions::activate(c, org, id, Transport::Websocket))
        .await?;

    let (response, socket, stream) =
        actix_ws::handle(&req, body).map_err(|e| ApiError::BadRequest {
            code: "not_a_websocket",
            message: e.to_string(),
            field: None,
        })?;
    let stream = stream
        .max_frame_size(MAX_CLIENT_MESSAGE)
        .aggregate_continuations();
    let actor = SessionActor::new(setup).start();
    state.live.insert(id, actor.clone());
    tracing::info!(session = %id, org = %org, audio = speak, "session joined over WebSocket");
    let live = state.clone();
    actix_web::rt::spawn(async move {
        run_socket(id, socket, stream, client_rx, actor, degraded).await;
        live.live.remove(id);
    });
    Ok(response)
}

/// The JSON text frame for a session event.
pub fn event_json(event: &Event) -> Value {
    match event {
        Event::TranscriptPartial { text } => json!({"type": "transcript.partial", "text": text}),
        Event::TranscriptFinal { text } => json!({"type": "transcript.final", "text": text}),
        Event::AssistantDelta { text } => json!({"type": "assistant.delta", "text": text}),
        Event::AssistantSpeaking => json!({"type": "assistant.speaking"}),
        Event::AssistantInterrupted { heard_text } => {
            json!({"type": "assistant.interrupted", "heard_text": heard_text})
        }
        Event::AssistantDone { text } => json!({"type": "assistant.done", "text": text}),
        Event::TurnMetrics { latency } => json!({
            "type": "turn.metrics",
            "transcript_ms": latency.transcript_ms,
            "first_token_ms": latency.first_token_ms,
            "first_audio_ms": latency.first_audio_ms,
            "voice_to_voice_ms": latency.voice_to_voice_ms,
        }),
        Event::BargeIn {
            onset_to_decision_ms,
        } => {
            json!({"type": "barge-in", "onset_to_decision_ms": onset_to_decision_ms})
        }
        Event::Error { code, message } => {
            json!({"type": "error", "code": code, "message": message})
        }
        Event::SessionEnded { reason } => {
            json!({"type": "session.ended", "reason": reason.as_str()})
        }
        other => json!({"type": "unknown", "debug": format!("{other:?}")}),
    }
}

fn error_frame(code: &str, message: impl Into<String>) -> String {
    json!({"type": "error", "code": code, "message": message.into()}).to_string()
}

async fn run_socket(
    id: SessionId,
    mut socket: actix_ws::Session,
    mut stream: actix_ws::AggregatedMessageStream,
    mut from_actor: tokio::sync::mpsc::Receiver<ToClient>,
    actor: Addr<SessionActor>,
    degraded: voice::Degraded,
) {
    let mut last_heard = Instant::now();
    let mut heartbeat = tokio::time::interval(HEARTBEAT_INTERVAL);
    let mut audio_input_reported = false;
    let mut pcm = [0u8; AudioFrame::BYTES];
    let _ = socket
        .text(json!({"type": "connected", "session_id": id}).to_string())
        .await;
    let _ = socket
        .text(json!({"type": "session.started"}).to_string())
        .await;
    let hears = degraded.hearing.is_none();
    if let Some(err) = &degraded.voice {
        let _ = socket
            .text(error_frame(
                err.code(),
                format!("replies come as text only: {err}"),
            ))
            .await;
    }
    let close = loop {
        tokio::select! {
            outgoing = from_actor.recv() => match outgoing {
                Some(ToClient::Event(event)) => {
                    voice::record_event_metrics(&event);
                    let ended = matches!(event, Event::SessionEnded { .. });
                    let done_text = match &event {
                        Event::AssistantDone { text } => Some(text.clone()),
                        _ => None,
                    };
                    if socket.text(event_json(&event).to_string()).await.is_err() {
                        break None;
                    }
                    if let Some(text) = done_text {
                        let _ = socket.text(json!({"type": "assistant-message", "text": text}).to_string()).await;
                    }
                    if ended {
                        let _ = socket.text(json!({"type": "session-ended"}).to_string()).await;
                        break Some(CloseReason { code: CloseCode::Normal, description: None });
                    }
                }
                Some(ToClient::Audio(frame)) => {
                    frame.write_le_bytes(&mut pcm);
                    if socket.binary(web::Bytes::copy_from_slice(&pcm)).await.is_err() {
                        break None;
                    }
                }
                // The actor stopped.
                None => break Some(CloseReason { code: CloseCode::Normal, description: None }),
            },
            incoming = stream.next() => {
                last_heard = Instant::now();
                match incoming {
                    Some(Ok(AggregatedMessage::Text(text))) => match serde_json::from_str::<ClientMessage>(&text) {
                        Ok(ClientMessage::UserMessage { text }) => actor.do_send(UserText(text)),
                        Ok(ClientMessage::EndSession) => actor.do_send(Hangup(EndReason::EndSession)),
                        Err(err) => {
                            let _ = socket.text(error_frame("invalid_message", format!(
                                "expected {{\"type\":\"user-message\",\"text\":…}} or {{\"type\":\"end-session\"}}: {err}"
                            ))).await;
                        }
                    },
                    Some(Ok(AggregatedMessage::Binary(bytes))) => {
                        let reply = if bytes.len() != AudioFrame::BYTES {
                            Some(error_frame("wrong_frame_size", format!(
                                "audio frames are {} bytes (20 ms of 16 kHz mono PCM16), got {}",
                                AudioFrame::BYTES, bytes.len()
                            )))
                        } else if hears {
                            // The length was checked above, so this cannot fail.
                            if let Ok(frame) = AudioFrame::from_le_bytes(&bytes) {
                                actor.do_send(CallerAudio(frame));
                            }
                            None
                        } else if !audio_input_reported {
                            audio_input_reported = true;
                            let why = degraded.hearing.as_ref().map(ToString::to_string).unwrap_or_default();
                            Some(error_frame(
                                "audio_input_unavailable",
                                format!("caller audio cannot be transcribed ({why}); send user-message text"),
                            ))
                        } else {
                            None
                        };
                        if let Some(reply) = reply {
                            let _ = socket.text(reply).await;
                        }
                    }
                    Some(Ok(AggregatedMessage::Ping(bytes))) => {
                        let _ = socket.pong(&bytes).await;
                    }
                    Some(Ok(AggregatedMessage::Pong(_))) => {}
                    Some(Ok(AggregatedMessage::Close(_))) | None => {
                        actor.do_send(Hangup(EndReason::Hangup));
                        break None;
                    }
                    Some(Err(err)) => {
                        tracing::info!(session = %id, %err, "WebSocket protocol error; ending the session");
                        actor.do_send(Hangup(EndReason::Hangup));
                        break Some(CloseReason { code: CloseCode::Protocol, description: Some(err.to_string()) });
                    }
                }
            }
            _ = heartbeat.tick() => {
                if last_heard.elapsed() > CLIENT_TIMEOUT {
                    tracing::info!(session = %id, "client silent for {} s; hanging up", CLIENT_TIMEOUT.as_secs());
                    actor.do_send(Hangup(EndReason::Hangup));
                    break Some(CloseReason { code: CloseCode::Away, description: Some("client timeout".into()) });
                }
                let _ = socket.ping(b"").await;
            }
        }
    };
    if let Some(reason) = close {
        let _ = socket.close(Some(reason)).await;
    }
}
