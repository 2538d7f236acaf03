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

use actix_web::{HttpRequest, HttpResponse, get, web};
use actix_ws::{AggregatedMessage, CloseCode, CloseReason};
use futures_util::StreamExt;
use palaver_actors::conversation::EndReason;
use palaver_actors::session::{CallerAudio, Hangup, ToClient};
use palaver_media::AudioFrame;
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_actix_web::service_config::ServiceConfig;

use super::error::{ApiError, ErrorBody};
use super::extract::{self, Caller};
use super::live::{
    Joined, Joining, client_text, error_frame, event_frames, hearing_frame, hello_frames,
};
use crate::ids::SessionId;
use crate::model::Transport;
use crate::state::AppState;

/// How often the server pings; a client silent for `CLIENT_TIMEOUT` is gone.
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(10);
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
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
    let speak = query.audio.unwrap_or(true);
    let joining = Joining::prepare(&state, &caller, id, speak).await?;
    // The handshake is checked before the session is used up.
    let (response, socket, stream) =
        actix_ws::handle(&req, body).map_err(|e| ApiError::BadRequest {
            code: "not_a_websocket",
            message: e.to_string(),
            field: None,
        })?;
    let org = joining.org;
    let joined = joining.start(&state, Transport::Websocket).await?;
    let stream = stream
        .max_frame_size(MAX_CLIENT_MESSAGE)
        .aggregate_continuations();
    tracing::info!(session = %id, org = %org, audio = speak, "session joined over WebSocket");
    let live = state.clone();
    actix_web::rt::spawn(async move {
        run_socket(id, socket, stream, joined).await;
        live.live.remove(id);
    });
    Ok(response)
}

async fn run_socket(
    id: SessionId,
    mut socket: actix_ws::Session,
    mut stream: actix_ws::AggregatedMessageStream,
    joined: Joined,
) {
    let Joined {
        actor,
        mut from_actor,
        degraded,
    } = joined;
    let mut last_heard = Instant::now();
    let mut heartbeat = tokio::time::interval(HEARTBEAT_INTERVAL);
    let mut audio_input_reported = false;
    let mut pcm = [0u8; AudioFrame::BYTES];
    for frame in hello_frames(id, &degraded) {
        let _ = socket.text(frame).await;
    }
    let hears = degraded.hearing.is_none();
    let close = loop {
        tokio::select! {
            outgoing = from_actor.recv() => match outgoing {
                Some(ToClient::Event(event)) => {
                    let frames = event_frames(&event);
                    let ends = frames.ends;
                    let mut sent = true;
                    for frame in frames.into_frames() {
                        sent = sent && socket.text(frame).await.is_ok();
                    }
                    if !sent {
                        break None;
                    }
                    if ends {
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
                    Some(Ok(AggregatedMessage::Text(text))) => {
                        if let Some(reply) = client_text(&text, &actor) {
                            let _ = socket.text(reply).await;
                        }
                    }
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
                            hearing_frame(&degraded)
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
