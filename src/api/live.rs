//! What the session transports share: joining a session (checks, provider
//! setup, activation, the actor) and the JSON protocol spoken over a
//! WebSocket or a WebRTC data channel.

use std::sync::Arc;

use actix::{Actor, Addr};
use palaver_actors::conversation::{EndReason, Event};
use palaver_actors::session::{
    Attach, Detach, Hangup, SessionActor, SessionSetup, ToClient, UserText,
};
use serde_json::{Value, json};

use super::error::{ApiError, not_found};
use super::extract::{Caller, CallerKind};
use super::sessions::visible_session;
use crate::ids::{OrgId, SessionId};
use crate::model::Transport;
use crate::state::{AppState, RateKey};
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
/// cannot do. `resumed`: the caller rejoined a session whose connection
/// had dropped.
#[derive(Debug)]
pub struct Joined {
    pub actor: Addr<SessionActor>,
    pub from_actor: tokio::sync::mpsc::Receiver<ToClient>,
    pub degraded: Arc<Degraded>,
    pub resumed: bool,
}

/// How a transport's connection to the caller ended, for [`Joined::close`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportEnd {
    /// The session ended (the loop saw `session.ended`, or the actor
    /// stopped): nothing to tell.
    SessionOver,
    /// The caller hung up on purpose.
    HungUp,
    /// The connection dropped: the session waits `server.reconnect_grace_s`
    /// for the caller to rejoin.
    Dropped,
}

impl Joined {
    /// Tells the session how its transport ended.
    pub fn close(&self, state: &AppState, id: SessionId, end: TransportEnd) {
        match end {
            TransportEnd::SessionOver => {}
            TransportEnd::HungUp => self.actor.do_send(Hangup(EndReason::Hangup)),
            TransportEnd::Dropped => {
                state.live.detach(id);
                self.actor.do_send(Detach);
            }
        }
    }
}

/// A caller coming back to session `id` after their connection dropped,
/// if it waits for them on this node; `None` otherwise (join it anew).
/// The caller must be allowed to see the session (404 as usual).
pub async fn waiting_for_rejoin(
    state: &AppState,
    caller: &Caller,
    id: SessionId,
) -> Result<bool, ApiError> {
    if !state.live.is_detached(id) {
        return Ok(false);
    }
    visible_session(state, caller, id).await?;
    Ok(true)
}

/// A caller whose credential did not pass but who holds the join token of
/// session `id`, expired during the call: they may still come back to it
/// while it waits for them, here or on another node (whose own check then
/// applies). A join token is short-lived (`auth.session_token_ttl_s`) but a
/// call may last hours. `None`: not such a caller. The join route must let
/// such a caller only rejoin or be forwarded (see [`Admitted`]).
pub async fn rejoining_after_expiry(
    state: &AppState,
    token: Option<&str>,
    id: SessionId,
) -> Result<Option<Caller>, ApiError> {
    let claims = token.and_then(|token| state.tokens.expired_join(token));
    let Some(claims) = claims.filter(|c| c.sid == Some(id)) else {
        return Ok(None);
    };
    let caller = Caller {
        org: claims.org,
        kind: CallerKind::Session(id),
    };
    state.limits.check(caller.rate_key())?;
    let waiting = state.live.is_detached(id)
        || match &state.cluster {
            Some(cluster) if !state.live.contains(id) => {
                cluster.session_elsewhere(id).await.is_some()
            }
            _ => false,
        };
    if !waiting {
        return Ok(None);
    }
    tracing::info!(session = %id, "a caller rejoins with the join token that expired during the call");
    Ok(Some(caller))
}

/// Who a join route serves: a caller whose credential passed, or one let
/// in by [`rejoining_after_expiry`], with the refusal they get for anything
/// but a rejoin.
#[derive(Debug)]
pub struct Admitted {
    pub caller: Caller,
    pub expired: Option<ApiError>,
}

impl Admitted {
    /// The caller's credential as it came (`refused` if it did not pass),
    /// or the expired join token of a call waiting for them.
    pub async fn new(
        state: &AppState,
        id: SessionId,
        token: Option<&str>,
        authenticated: Result<Caller, ApiError>,
    ) -> Result<Self, ApiError> {
        match authenticated {
            Ok(caller) => Ok(Self {
                caller,
                expired: None,
            }),
            Err(refused) => match rejoining_after_expiry(state, token, id).await? {
                Some(caller) => Ok(Self {
                    caller,
                    expired: Some(refused),
                }),
                None => Err(refused),
            },
        }
    }

    /// For a join that is not a rejoin: the caller, unless only an expired
    /// token let them in.
    pub fn joining(self) -> Result<Caller, ApiError> {
        match self.expired {
            Some(refused) => Err(refused),
            None => Ok(self.caller),
        }
    }
}

/// The caller of a join route (`POST /v1/sessions/{id}/webrtc`) as an
/// [`Admitted`]: an extractor, so a request without a credential is
/// refused before its body is read.
#[derive(Debug)]
pub struct JoiningCaller(pub Admitted);

impl actix_web::FromRequest for JoiningCaller {
    type Error = ApiError;
    type Future = futures_util::future::LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &actix_web::HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move {
            let authenticated = Caller::from_request_sync(&req);
            let id = req.match_info().get("id").and_then(|v| v.parse().ok());
            let Some(id) = id.map(SessionId) else {
                return authenticated.map(|caller| {
                    Self(Admitted {
                        caller,
                        expired: None,
                    })
                });
            };
            let state = super::extract::state(&req)?;
            let token = super::extract::bearer(&req).ok();
            Admitted::new(&state, id, token.as_deref(), authenticated)
                .await
                .map(Self)
        })
    }
}

/// Hands the session waiting for its caller to a new transport (call
/// [`waiting_for_rejoin`] first). `media_ready`: the transport's audio
/// path is up already (a WebSocket). 409 when another rejoin won.
pub fn rejoin(state: &AppState, id: SessionId, media_ready: bool) -> Result<Joined, ApiError> {
    let (actor, degraded) = state.live.reattach(id).ok_or_else(|| {
        ApiError::Conflict(format!("session {id} was rejoined by another connection"))
    })?;
    let (client_tx, client_rx) = tokio::sync::mpsc::channel(CLIENT_QUEUE);
    actor.do_send(Attach {
        client: client_tx,
        media_ready,
    });
    tracing::info!(session = %id, "caller rejoined");
    Ok(Joined {
        actor,
        from_actor: client_rx,
        degraded,
        resumed: true,
    })
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
        super::error::refuse_if_draining(state)?;
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
        // The assistant's own base URL is its settings' fault, not an
        // outage: 409 with what to fix, never a 5xx.
        if let Some(url) = &assistant.settings.llm_base_url {
            let usable = reqwest::Url::parse(url)
                .map_err(|err| err.to_string())
                .and_then(|u| match u.host_str() {
                    Some(host) if !host.is_empty() => Ok(()),
                    _ => Err("it has no host".to_owned()),
                });
            if let Err(why) = usable {
                return Err(ApiError::Conflict(format!(
                    "assistant {assistant_id}'s llm.base_url `{url}` cannot be used ({why}); \
                     change it with PATCH /v1/assistants/{assistant_id}"
                )));
            }
        }
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
        // The session leaves this node's live list when its actor stops,
        // which it does once its transcript and its end are stored: not
        // when a transport ends (the caller may rejoin), and never before
        // the writes (a draining node closes storage after the list empties).
        let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel();
        setup.on_stopped = Some(stopped_tx);
        let actor = SessionActor::new(setup).start();
        let degraded = Arc::new(self.degraded);
        state.live.insert(id, actor.clone(), degraded.clone());
        let live = state.live.clone();
        actix_web::rt::spawn(async move {
            let _ = stopped_rx.await;
            live.remove(id);
        });
        Ok(Joined {
            actor,
            from_actor: self.client_rx,
            degraded,
            resumed: false,
        })
    }
}

/// Acts on one client text message of session `id`; returns the `error`
/// frame for one the server cannot read, or one over the session's rate
/// limit (the connection stays up). Every text message counts against the
/// session's bucket (`limits.requests_per_second`, `limits.burst`), the one
/// its join token's REST calls draw from: each `user-message` starts a turn.
pub fn client_text(
    state: &AppState,
    id: SessionId,
    text: &str,
    actor: &Addr<SessionActor>,
) -> Option<String> {
    if let Err(retry) = state.limits.check(RateKey::Session(id)) {
        ::metrics::counter!("palaver_session_messages_rate_limited_total").increment(1);
        return Some(error_frame(
            "rate_limited",
            format!(
                "too many messages on this session; try again in {} s",
                retry.seconds
            ),
        ));
    }
    match palaver_protocol::session::parse(text) {
        Ok(palaver_protocol::session::ClientMessage::UserMessage { text }) => {
            actor.do_send(UserText(text));
            None
        }
        Ok(palaver_protocol::session::ClientMessage::EndSession {}) => {
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

/// The frames a client gets on joining: `connected`, `session.started` (or
/// `session.resumed` for a caller who rejoined), and an `error` for a voice
/// that cannot be used.
pub fn hello_frames(id: SessionId, joined: &Joined) -> Vec<String> {
    let degraded = &joined.degraded;
    let started = if joined.resumed {
        "session.resumed"
    } else {
        "session.started"
    };
    let mut frames = vec![
        json!({"type": "connected", "session_id": id}).to_string(),
        json!({"type": started}).to_string(),
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
