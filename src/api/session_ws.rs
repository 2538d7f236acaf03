//! `GET /v1/sessions/{id}/ws`: a voice session over a WebSocket.
//!
//! Client text frames: `{"type":"user-message","text":…}`,
//! `{"type":"end-session"}`. Server text frames: `connected`, the session
//! events (`session.started`, `transcript.final`, `assistant.delta`,
//! `assistant.speaking`, `assistant.interrupted`, `assistant.done`,
//! `turn.metrics`, `error`, `session.ended`), `assistant-message` and
//! `session-ended`. `turn.metrics` follows every reply, completed or cut
//! off: `transcript_ms`, `first_token_ms`, `first_audio_ms`,
//! `voice_to_voice_ms` (from the end of the caller's speech; `null` for a
//! stage the reply never reached) and `interrupted`.
//!
//! Binary frames are 20 ms of audio both ways: by default 16 kHz mono PCM16
//! little-endian (640 bytes). A client that sends
//! `{"type":"audio-format","encoding":"opus"}` (best as its first message)
//! switches both directions to one Opus packet (48 kHz clock, mono) per
//! frame from then on; the server confirms with an `audio-format` event.

use std::time::{Duration, Instant};

use actix_web::{HttpRequest, HttpResponse, get, web};
use actix_ws::{AggregatedMessage, CloseCode, CloseReason};
use bytes::BytesMut;
use futures_util::StreamExt;
use palaver_actors::session::{CallerAudio, ToClient};
use palaver_media::AudioFrame;
use palaver_media::codec::{EncoderConfig, MAX_PACKET_BYTES};
use palaver_media::rtc::CallAudio;
use palaver_protocol::session::{Encoding, audio_format_request};
use serde::Deserialize;
use serde_json::json;
use utoipa::IntoParams;
use utoipa_actix_web::service_config::ServiceConfig;

use super::error::{ApiError, ErrorBody};
use super::extract::{self, Caller};
use super::live::{
    Admitted, Joined, Joining, TransportEnd, client_text, error_frame, event_frames, hearing_frame,
    hello_frames, rejoin, waiting_for_rejoin,
};
use super::session_forward;
use crate::ids::SessionId;
use crate::model::Transport;
use crate::state::AppState;
use crate::voice;

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
    let id = SessionId(*id);
    let token = query.token.clone().or_else(|| extract::bearer(&req).ok());
    let authenticated = match (Caller::from_request_sync(&req), &query.token) {
        (Ok(caller), _) => Ok(caller),
        (Err(_), Some(token)) => match extract::authenticate(&state, token).await {
            Ok(caller) => state
                .limits
                .check(caller.rate_key())
                .map(|()| caller)
                .map_err(Into::into),
            Err(err) => Err(err),
        },
        (Err(err), None) => Err(err),
    };
    let admitted = Admitted::new(&state, id, token.as_deref(), authenticated).await?;
    let caller = admitted.caller;
    // A rejoin of a call another node runs is relayed there.
    if let Some(owner) = session_forward::owner_elsewhere(&state, &req, id).await {
        return session_forward::relay_socket(&state, &req, body, &owner, id, MAX_CLIENT_MESSAGE)
            .await;
    }
    let speak = query.audio.unwrap_or(true);
    let handshake = |req: &HttpRequest, body: web::Payload| {
        actix_ws::handle(req, body).map_err(|e| ApiError::BadRequest {
            code: "not_a_websocket",
            message: e.to_string(),
            field: None,
        })
    };
    let (response, socket, stream, joined) = if waiting_for_rejoin(&state, &caller, id).await? {
        let (response, socket, stream) = handshake(&req, body)?;
        (response, socket, stream, rejoin(&state, id, true)?)
    } else {
        let caller = admitted.joining()?;
        let joining = Joining::prepare(&state, &caller, id, speak).await?;
        // The handshake is checked before the session is used up.
        let (response, socket, stream) = handshake(&req, body)?;
        let org = joining.org;
        let joined = joining.start(&state, Transport::Websocket).await?;
        tracing::info!(session = %id, org = %org, audio = speak, "session joined over WebSocket");
        (response, socket, stream, joined)
    };
    let stream = stream
        .max_frame_size(MAX_CLIENT_MESSAGE)
        .aggregate_continuations();
    let encoder = voice::rtc_encoder(&state.settings.rtc);
    let live = state.clone();
    actix_web::rt::spawn(async move {
        run_socket(&live, id, socket, stream, joined, encoder).await;
    });
    Ok(response)
}

async fn run_socket(
    state: &AppState,
    id: SessionId,
    mut socket: actix_ws::Session,
    mut stream: actix_ws::AggregatedMessageStream,
    joined: Joined,
    encoder: EncoderConfig,
) {
    let mut joined = joined;
    let mut last_heard = Instant::now();
    let mut heartbeat = tokio::time::interval(HEARTBEAT_INTERVAL);
    let mut audio_input_reported = false;
    let mut audio = WsAudio::new(encoder);
    for frame in hello_frames(id, &joined) {
        let _ = socket.text(frame).await;
    }
    let hears = joined.degraded.hearing.is_none();
    let actor = joined.actor.clone();
    let from_actor = &mut joined.from_actor;
    let degraded = joined.degraded.clone();
    let normal = || {
        Some(CloseReason {
            code: CloseCode::Normal,
            description: None,
        })
    };
    let (close, end) = loop {
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
                        break (None, TransportEnd::Dropped);
                    }
                    if ends {
                        break (normal(), TransportEnd::SessionOver);
                    }
                }
                Some(ToClient::Audio(frame)) => match audio.outgoing(&frame) {
                    Some(bytes) => {
                        if socket.binary(bytes).await.is_err() {
                            break (None, TransportEnd::Dropped);
                        }
                    }
                    None => tracing::debug!(session = %id, "an outbound frame did not encode"),
                },
                // The actor stopped.
                None => break (normal(), TransportEnd::SessionOver),
            },
            incoming = stream.next() => {
                last_heard = Instant::now();
                match incoming {
                    Some(Ok(AggregatedMessage::Text(text))) => {
                        let reply = match audio_format_request(&text) {
                            Some(encoding) => Some(audio.switch(encoding)),
                            None => client_text(state, id, &text, &actor),
                        };
                        if let Some(reply) = reply {
                            let _ = socket.text(reply).await;
                        }
                    }
                    Some(Ok(AggregatedMessage::Binary(bytes))) => {
                        // The frame is checked whether or not it can be heard.
                        let decoded = audio.incoming(&bytes, |frame| {
                            if hears {
                                actor.do_send(CallerAudio(frame.clone()));
                            }
                        });
                        let reply = match decoded {
                            Err(reply) => Some(reply),
                            Ok(()) if !hears && !audio_input_reported => {
                                audio_input_reported = true;
                                hearing_frame(&degraded)
                            }
                            Ok(()) => None,
                        };
                        if let Some(reply) = reply {
                            let _ = socket.text(reply).await;
                        }
                    }
                    Some(Ok(AggregatedMessage::Ping(bytes))) => {
                        let _ = socket.pong(&bytes).await;
                    }
                    Some(Ok(AggregatedMessage::Pong(_))) => {}
                    // A normal close is a hang-up; a tab going away or a
                    // close with an error code may come back.
                    Some(Ok(AggregatedMessage::Close(reason))) => {
                        let hung_up = reason.as_ref().is_none_or(|r| r.code == CloseCode::Normal);
                        break (None, if hung_up { TransportEnd::HungUp } else { TransportEnd::Dropped });
                    }
                    None => {
                        tracing::info!(session = %id, "WebSocket closed without a close frame");
                        break (None, TransportEnd::Dropped);
                    }
                    // The connection went (the HTTP layer reports a lost
                    // connection as an I/O error of the body).
                    Some(Err(actix_ws::ProtocolError::Io(err))) => {
                        tracing::info!(session = %id, %err, "WebSocket connection lost");
                        break (None, TransportEnd::Dropped);
                    }
                    Some(Err(err)) => {
                        tracing::info!(session = %id, %err, "WebSocket protocol error; ending the session");
                        break (
                            Some(CloseReason { code: CloseCode::Protocol, description: Some(err.to_string()) }),
                            TransportEnd::HungUp,
                        );
                    }
                }
            }
            _ = heartbeat.tick() => {
                if last_heard.elapsed() > CLIENT_TIMEOUT {
                    tracing::info!(session = %id, "client silent for {} s; its connection is gone", CLIENT_TIMEOUT.as_secs());
                    break (
                        Some(CloseReason { code: CloseCode::Away, description: Some("client timeout".into()) }),
                        TransportEnd::Dropped,
                    );
                }
                let _ = socket.ping(b"").await;
            }
        }
    };
    if let Some(reason) = close {
        let _ = socket.close(Some(reason)).await;
    }
    joined.close(state, id, end);
}

/// The binary frames of one WebSocket session, PCM16 or Opus. Outgoing
/// frames are cut from one reusable buffer, so steady-state audio does not
/// allocate once the client has read the earlier frames.
struct WsAudio {
    encoder: EncoderConfig,
    opus: Option<CallAudio>,
    out: BytesMut,
}

/// Room for about a second of outgoing PCM before the buffer is reclaimed.
const OUT_BUFFER: usize = 50 * AudioFrame::BYTES;

impl WsAudio {
    fn new(encoder: EncoderConfig) -> Self {
        Self {
            encoder,
            opus: None,
            out: BytesMut::with_capacity(OUT_BUFFER),
        }
    }

    /// Switches both directions to `encoding`; returns the confirmation (or
    /// the error) for the client.
    fn switch(&mut self, encoding: Encoding) -> String {
        match encoding {
            Encoding::Pcm16 => self.opus = None,
            Encoding::Opus if self.opus.is_some() => {}
            Encoding::Opus => match CallAudio::new(self.encoder) {
                Ok(codec) => self.opus = Some(codec),
                Err(err) => return error_frame("audio_format_unavailable", err.to_string()),
            },
        }
        let (name, rate) = match encoding {
            Encoding::Pcm16 => ("pcm16", 16_000),
            Encoding::Opus => ("opus", 48_000),
        };
        json!({
            "type": "audio-format", "encoding": name, "sample_rate": rate,
            "channels": 1, "frame_ms": 20,
        })
        .to_string()
    }

    fn outgoing(&mut self, frame: &AudioFrame) -> Option<web::Bytes> {
        self.out.reserve(AudioFrame::BYTES.max(MAX_PACKET_BYTES));
        match &mut self.opus {
            None => {
                let mut pcm = [0u8; AudioFrame::BYTES];
                frame.write_le_bytes(&mut pcm);
                self.out.extend_from_slice(&pcm);
            }
            Some(codec) => self.out.extend_from_slice(codec.encode(frame).ok()?),
        }
        Some(self.out.split().freeze())
    }

    /// Decodes one client frame; the `error` frame for one that is wrong.
    fn incoming(&mut self, bytes: &[u8], emit: impl FnMut(&AudioFrame)) -> Result<(), String> {
        match &mut self.opus {
            None => match AudioFrame::from_le_bytes(bytes) {
                Ok(frame) => {
                    let mut emit = emit;
                    emit(&frame);
                    Ok(())
                }
                Err(_) => Err(error_frame(
                    "wrong_frame_size",
                    format!(
                        "audio frames are {} bytes (20 ms of 16 kHz mono PCM16), got {}; \
                         send {{\"type\":\"audio-format\",\"encoding\":\"opus\"}} first for Opus",
                        AudioFrame::BYTES,
                        bytes.len()
                    ),
                )),
            },
            // An empty or oversized frame is no Opus packet; libopus would
            // take an empty one for a loss.
            Some(_) if bytes.is_empty() || bytes.len() > MAX_PACKET_BYTES => Err(error_frame(
                "invalid_opus",
                format!(
                    "binary frames are one 20 ms Opus packet each (1 to {MAX_PACKET_BYTES} bytes), got {} bytes",
                    bytes.len()
                ),
            )),
            Some(codec) => codec.decode(bytes, true, emit).map_err(|err| {
                error_frame(
                    "invalid_opus",
                    format!("binary frames are one 20 ms Opus packet each: {err}"),
                )
            }),
        }
    }
}
