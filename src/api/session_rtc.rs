//! `POST /v1/sessions/{id}/webrtc`: a voice session over WebRTC.
//!
//! The client posts its SDP offer (`application/sdp`, non-trickle: ICE
//! gathering finished) with one audio m-line offering Opus and, for events,
//! a data channel labelled `events`. The answer comes back with `201` and a
//! `Location` to `DELETE` to hang up. The assistant's voice is Opus on the
//! same m-line; the data channel carries the same JSON as the WebSocket
//! transport (`connected`, the session events, `assistant-message`,
//! `session-ended` from the server; `user-message`, `end-session` from the
//! client).
//!
//! Media flows through the node's one UDP socket ([`RtcEndpoint`]); this
//! module runs one task per call that decodes the caller's Opus into 16 kHz
//! frames for the [`SessionActor`](palaver_actors::session::SessionActor)
//! and encodes its paced 16 kHz frames back into Opus.
//!
//! [`RtcEndpoint`]: palaver_media::rtc::RtcEndpoint

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, delete, post, web};
use palaver_actors::conversation::EndReason;
use palaver_actors::session::{CallerAudio, Hangup, MediaConnected, ToClient};
use palaver_media::rtc::{CallAudio, OfferError, PeerEvent, RtcPeer};
use utoipa_actix_web::service_config::ServiceConfig;

use super::error::{ApiError, ErrorBody};
use super::extract::{SdpBody, SessionCaller};
use super::live::{
    Joined, Joining, JoiningCaller, TransportEnd, client_text, event_frames, hearing_frame,
    hello_frames, rejoin, waiting_for_rejoin,
};
use super::session_forward;
use super::sessions::visible_session;
use crate::ids::SessionId;
use crate::model::Transport;
use crate::state::AppState;
use crate::voice;

pub fn configure(cfg: &mut ServiceConfig<'_>) {
    cfg.service(create_peer).service(delete_peer);
}

fn offer_error(err: OfferError) -> ApiError {
    let message = err.to_string();
    match err {
        OfferError::Malformed(_) | OfferError::Rejected(_) => ApiError::BadRequest {
            code: "invalid_sdp",
            message,
            field: None,
        },
        OfferError::NoAudio | OfferError::NoOpus => ApiError::Validation {
            message,
            field: None,
        },
        OfferError::EndpointClosed => ApiError::Unavailable(message),
    }
}

/// Join a session over WebRTC.
///
/// The body is the SDP offer; the answer is the body of the `201`.
#[utoipa::path(
    tag = "sessions",
    params(("id" = i64, Path, description = "Session id")),
    request_body(content = String, content_type = "application/sdp", description = "SDP offer with an Opus audio m-line (sendrecv) and a data channel `events`"),
    responses(
        (status = 201, body = String, content_type = "application/sdp",
            description = "SDP answer; `Location` is the URL to DELETE to hang up",
            headers(("Location" = String, description = "`/v1/sessions/{id}/webrtc/{peer}`"))),
        (status = 400, body = ErrorBody, description = "Malformed SDP"),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "Already joined or ended"),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
        (status = 422, body = ErrorBody, description = "No audio m-line, or no Opus"),
        (status = 503, body = ErrorBody, description = "The assistant's language model is unavailable"),
    ),
    security(("bearer" = []))
)]
#[post("/sessions/{id}/webrtc")]
async fn create_peer(
    req: HttpRequest,
    state: web::Data<AppState>,
    JoiningCaller(admitted): JoiningCaller,
    id: web::Path<i64>,
    offer: SdpBody,
) -> Result<HttpResponse, ApiError> {
    let id = SessionId(*id);
    // A rejoin of a call another node runs goes there.
    if let Some(owner) = session_forward::owner_elsewhere(&state, &req, id).await {
        return session_forward::forward_offer(&state, &req, &owner, id, offer.0).await;
    }
    let call_audio = || {
        CallAudio::new(voice::rtc_encoder(&state.settings.rtc))
            .map_err(|e| ApiError::Internal(format!("call audio: {e}")))
    };
    let caller = admitted.caller;
    let (answer, peer, call_audio, joined) = if waiting_for_rejoin(&state, &caller, id).await? {
        let call_audio = call_audio()?;
        let (answer, peer) = state.rtc.accept(&offer.0).map_err(offer_error)?;
        (answer, peer, call_audio, rejoin(&state, id, false)?)
    } else {
        let caller = admitted.joining()?;
        let joining = Joining::prepare(&state, &caller, id, true).await?;
        let call_audio = call_audio()?;
        // The offer is answered before the session is used up; a peer
        // dropped on a later error hangs itself up.
        let (answer, peer) = state.rtc.accept(&offer.0).map_err(offer_error)?;
        let org = joining.org;
        let joined = joining.start(&state, Transport::Webrtc).await?;
        tracing::info!(session = %id, org = %org, peer = %peer.id(), "session joined over WebRTC");
        (answer, peer, call_audio, joined)
    };
    let peer_id = peer.id();
    state.live.set_rtc_peer(id, peer_id.0);
    let live = state.clone();
    actix_web::rt::spawn(async move {
        run_peer(&live, id, peer, call_audio, joined).await;
    });
    Ok(HttpResponse::Created()
        .content_type("application/sdp")
        .insert_header((
            header::LOCATION,
            format!("/v1/sessions/{id}/webrtc/{peer_id}"),
        ))
        .body(answer))
}

/// Hang up a WebRTC call: the session ends with reason `hang-up`.
#[utoipa::path(
    tag = "sessions",
    params(
        ("id" = i64, Path, description = "Session id"),
        ("peer" = u64, Path, description = "Peer id from the `Location` of the answer"),
    ),
    responses(
        (status = 204, description = "Hung up"),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody, description = "No such session, or no live call with this peer"),
    ),
    security(("bearer" = []))
)]
#[delete("/sessions/{id}/webrtc/{peer}")]
async fn delete_peer(
    state: web::Data<AppState>,
    SessionCaller(caller): SessionCaller,
    path: web::Path<(i64, u64)>,
) -> Result<HttpResponse, ApiError> {
    let (id, peer) = path.into_inner();
    let id = SessionId(id);
    visible_session(&state, &caller, id).await?;
    if !state.live.hang_up_rtc(id, peer) {
        // The call may run on another node: hang it up there.
        let forwarded = match &state.cluster {
            Some(cluster) => cluster
                .forward_hangup(id, Some(peer), EndReason::Hangup)
                .await
                .is_some(),
            None => false,
        };
        if !forwarded {
            return Err(ApiError::NotFound(format!(
                "session {id} has no live WebRTC call with peer {peer}"
            )));
        }
    }
    Ok(HttpResponse::NoContent().finish())
}

/// One call: caller audio in, assistant audio and events out, until the
/// session ends or the peer goes away.
async fn run_peer(
    state: &AppState,
    id: SessionId,
    mut peer: RtcPeer,
    mut audio: CallAudio,
    joined: Joined,
) {
    let mut joined = joined;
    for frame in hello_frames(id, &joined) {
        peer.send_text(frame);
    }
    let hears = joined.degraded.hearing.is_none();
    let actor = joined.actor.clone();
    let degraded = joined.degraded.clone();
    let from_actor = &mut joined.from_actor;
    let mut audio_input_reported = false;
    // Told once: on the peer's `Connected`, or on its first packet should
    // that event ever be missed (the greeting waits for it).
    let mut media_connected = false;
    let mut codec_errors = 0u64;
    let connect_timeout = std::time::Duration::from_millis(state.settings.rtc.connect_timeout_ms);
    let connect_deadline = tokio::time::sleep(connect_timeout);
    let mut connect_timed_out = false;
    tokio::pin!(connect_deadline);
    let end = loop {
        tokio::select! {
            () = &mut connect_deadline, if !media_connected && !connect_timed_out => {
                tracing::info!(
                    session = %id, peer = %peer.id(), timeout_ms = connect_timeout.as_millis() as u64,
                    "WebRTC caller did not complete ICE and DTLS in time; hanging up"
                );
                // The loop ends on the actor's `session.ended`.
                actor.do_send(Hangup(EndReason::ConnectTimeout));
                connect_timed_out = true;
            },
            outgoing = from_actor.recv() => match outgoing {
                Some(ToClient::Event(event)) => {
                    let frames = event_frames(&event);
                    let ends = frames.ends;
                    for frame in frames.into_frames() {
                        peer.send_text(frame);
                    }
                    if ends {
                        break TransportEnd::SessionOver;
                    }
                }
                Some(ToClient::Audio(frame)) => match audio.encode(&frame) {
                    Ok(packet) => peer.send_audio(packet),
                    Err(err) => {
                        codec_errors += 1;
                        if codec_errors == 1 {
                            tracing::warn!(session = %id, %err, "cannot encode the assistant's audio");
                        }
                    }
                },
                // The actor stopped.
                None => break TransportEnd::SessionOver,
            },
            incoming = peer.recv() => match incoming {
                Some(PeerEvent::Audio { payload, contiguous }) => {
                    if !std::mem::replace(&mut media_connected, true) {
                        actor.do_send(MediaConnected);
                    }
                    if hears {
                        let decoded = audio.decode(&payload, contiguous, |frame| {
                            actor.do_send(CallerAudio(frame.clone()));
                        });
                        if let Err(err) = decoded {
                            codec_errors += 1;
                            if codec_errors == 1 {
                                tracing::info!(session = %id, %err, "cannot decode the caller's audio");
                            }
                        }
                    } else if !audio_input_reported {
                        audio_input_reported = true;
                        if let Some(frame) = hearing_frame(&degraded) {
                            peer.send_text(frame);
                        }
                    }
                }
                Some(PeerEvent::Text(text)) => {
                    if let Some(reply) = client_text(state, id, &text, &actor) {
                        peer.send_text(reply);
                    }
                }
                Some(PeerEvent::Connected) => {
                    tracing::debug!(session = %id, peer = %peer.id(), "WebRTC connected");
                    if !std::mem::replace(&mut media_connected, true) {
                        actor.do_send(MediaConnected);
                    }
                }
                Some(PeerEvent::ChannelOpen) => {}
                Some(PeerEvent::Closed { reason }) => {
                    tracing::info!(session = %id, peer = %peer.id(), %reason, "WebRTC call ended by the network");
                    break TransportEnd::Dropped;
                }
                None => break TransportEnd::Dropped,
            },
        }
    };
    // Queued after the last frames, so they go out first.
    peer.close();
    joined.close(state, id, end);
}
