//! What the session transports share: joining a session (checks, provider
//! setup, activation, the actor) and the JSON protocol spoken over a
//! WebSocket or a WebRTC data channel.

use actix::{Actor, Addr};
use palaver_actors::conversation::{EndReason, Event};
use palaver_actors::session::{Hangup, SessionActor, SessionSetup, ToClient, UserText};
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::{ApiError, not_found};
use super::extract::Caller;
use super::sessions::visible_session;
use crate::ids::{OrgId, SessionId};
use crate::model::Transport;
use crate::state::AppState;
use crate::store;
use crate::voice::{self, DbSessionStore, Degraded};

/// Messages queued for a client that reads slowly (about 5 s of audio).
const CLIENT_QUEUE: usize = 256;

/// A session checked and set up, not yet joined: nothing is stored and no
/// actor runs until [`Joining::start`], so a transport can still refuse
/// (a bad SDP offer, a failed handshake) without using the session up.
#[derive(Debug)]
pub struct Joining {
    pub id: SessionId,
    pub org: OrgId,
    setup: SessionSetup,
    degraded: Degraded,
    client_rx: tokio::sync::mpsc::Receiver<ToClient>,
}

/// A joined session: its actor, what it sends the client, and what it
/// cannot do.
#[derive(Debug)]
pub struct Joined {
    pub actor: Addr<SessionActor>,
    pub from_actor: tokio::sync::mpsc::Receiver<ToClient>,
    pub degraded: Degraded,
}

impl Joining {
    /// Checks the caller may join `id` and builds its providers. `speak`
    /// false makes a text-only session.
    pub async fn prepare(
        state: &AppState,
        caller: &Caller,
        id: SessionId,
        speak: bool,
    ) -> Result<Self, ApiError> {
        let session = visible_session(state, caller, id).await?;
        let org = caller.org;
        let assistant_id = session.assistant_id;
        let assistant = state
            .db
            .run(move |c| store::assistants::get(c, org, assistant_id))
            .await
            .map_err(not_found("assistant", assistant_id))?;
        let (client_tx, client_rx) = tokio::sync::mpsc::channel(CLIENT_QUEUE);
        let session_store = DbSessionStore {
            db: state.db.clone(),
            org,
            session: id,
            connected_at: store::now(),
        };
        let (setup, degraded) = voice::session_setup(
            &state.settings,
            &assistant.settings,
            speak,
            std::sync::Arc::new(session_store),
            client_tx,
        )
        .await
        .map_err(|err| {
            ApiError::Unavailable(format!(
                "the assistant's language model (`{}`) cannot be used: {err}",
                assistant.settings.llm_provider
            ))
        })?;
        Ok(Self {
            id,
            org,
            setup,
            degraded,
            client_rx,
        })
    }

    /// Marks the session active over `transport` (409 if it was joined or
    /// ended before) and starts its actor.
    pub async fn start(self, state: &AppState, transport: Transport) -> Result<Joined, ApiError> {
        let (org, id) = (self.org, self.id);
        state
            .db
            .run(move |c| store::sessions::activate(c, org, id, transport))
            .await?;
        let mut setup = self.setup;
        // Over WebRTC the answer goes out before ICE and DTLS complete: the
        // first message waits for the audio path (`MediaConnected`).
        setup.conversation.wait_for_media = transport == Transport::Webrtc;
        let actor = SessionActor::new(setup).start();
        state.live.insert(id, actor.clone());
        Ok(Joined {
            actor,
            from_actor: self.client_rx,
            degraded: self.degraded,
        })
    }
}

/// A client text message.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
enum ClientMessage {
    UserMessage { text: String },
    EndSession,
}

/// Acts on one client text message; returns the `error` frame for one the
/// server cannot read (the connection stays up).
pub fn client_text(text: &str, actor: &Addr<SessionActor>) -> Option<String> {
    match serde_json::from_str::<ClientMessage>(text) {
        Ok(ClientMessage::UserMessage { text }) => {
            actor.do_send(UserText(text));
            None
        }
        Ok(ClientMessage::EndSession) => {
            actor.do_send(Hangup(EndReason::EndSession));
            None
        }
        Err(err) => Some(error_frame(
            "invalid_message",
            format!(
                "expected {{\"type\":\"user-message\",\"text\":…}} or {{\"type\":\"end-session\"}}: {err}"
            ),
        )),
    }
}

/// The frames a client gets on joining: `connected`, `session.started`, and
/// an `error` for a voice that cannot be used.
pub fn hello_frames(id: SessionId, degraded: &Degraded) -> Vec<String> {
    let mut frames = vec![
        json!({"type": "connected", "session_id": id}).to_string(),
        json!({"type": "session.started"}).to_string(),
    ];
    if let Some(err) = &degraded.voice {
        frames.push(error_frame(
            err.code(),
            format!("replies come as text only: {err}"),
        ));
    }
    frames
}

/// The `error` frame for caller audio that cannot be transcribed.
pub fn hearing_frame(degraded: &Degraded) -> Option<String> {
    degraded.hearing.as_ref().map(|why| {
        error_frame(
            "audio_input_unavailable",
            format!("caller audio cannot be transcribed ({why}); send user-message text"),
        )
    })
}

/// The frames one session event becomes: the event itself, then
/// `assistant-message` after `assistant.done` or `session-ended` after
/// `session.ended`. Records the event's metrics.
pub fn event_frames(event: &Event) -> EventFrames {
    voice::record_event_metrics(event);
    let (follow_up, ends) = match event {
        Event::AssistantDone { text } => (
            Some(json!({"type": "assistant-message", "text": text}).to_string()),
            false,
        ),
        Event::SessionEnded { .. } => (Some(json!({"type": "session-ended"}).to_string()), true),
        _ => (None, false),
    };
    EventFrames {
        event: event_json(event).to_string(),
        follow_up,
        ends,
    }
}

/// See [`event_frames`].
#[derive(Debug)]
pub struct EventFrames {
    pub event: String,
    pub follow_up: Option<String>,
    /// The session ended: close the connection after these.
    pub ends: bool,
}

impl EventFrames {
    pub fn into_frames(self) -> impl Iterator<Item = String> {
        std::iter::once(self.event).chain(self.follow_up)
    }
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
        Event::TurnMetrics {
            latency,
            interrupted,
        } => json!({
            "type": "turn.metrics",
            "transcript_ms": latency.transcript_ms,
            "first_token_ms": latency.first_token_ms,
            "first_audio_ms": latency.first_audio_ms,
            "voice_to_voice_ms": latency.voice_to_voice_ms,
            "interrupted": interrupted,
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

pub fn error_frame(code: &str, message: impl Into<String>) -> String {
    json!({"type": "error", "code": code, "message": message.into()}).to_string()
}
