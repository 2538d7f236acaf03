//! A caller rejoining a call that runs on another node of the cluster.
//!
//! A voice session lives on the node that first joined it (its actor, its
//! audio). When the caller's connection drops and their rejoin lands on a
//! different node (a load balancer without stickiness, a new network), this
//! node routes it to the owner (`palaver:session:{id}` in Redis, its
//! `redis.node_url` in the node registration):
//!
//! - **WebRTC**: the offer is posted to the owner with the caller's own
//!   credentials, and the owner's answer goes back as is. Its ICE
//!   candidates are the owner's, so the media flows straight to the node
//!   running the call; only the offer/answer passes through here.
//! - **WebSocket**: the socket is relayed. This node opens the same
//!   WebSocket to the owner (same credentials, same query) before it
//!   accepts the caller's, so the owner's refusal (401, 404, 409) reaches
//!   the caller as such; then frames go both ways unchanged until either
//!   side closes. A caller who vanishes here looks, to the owner, like a
//!   dropped connection (close 1001), so the call waits for them again.
//!
//! A forwarded request carries [`FORWARDED_BY`] and is never forwarded
//! again, so a stale owner record cannot bounce a request between nodes.

use std::time::{Duration, Instant};

use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse};
use actix_ws::{AggregatedMessage, CloseCode, CloseReason};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::{self, Message, client::IntoClientRequest};

use super::error::ApiError;
use crate::cluster::RemoteNode;
use crate::ids::SessionId;
use crate::state::AppState;

/// Marks a request one node forwarded to another (the value: the sender).
pub const FORWARDED_BY: &str = "x-palaver-forwarded-by";
/// How long the owner may take to answer a forwarded offer or upgrade.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the relay pings the caller; a caller silent for
/// `CALLER_TIMEOUT` is gone (as on a direct socket).
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(10);
const CALLER_TIMEOUT: Duration = Duration::from_secs(30);

/// The node running session `id` when that is another node and this
/// request may be routed there: not itself forwarded, the call not here.
pub async fn owner_elsewhere(
    state: &AppState,
    req: &HttpRequest,
    id: SessionId,
) -> Option<RemoteNode> {
    if req.headers().contains_key(FORWARDED_BY) || state.live.contains(id) {
        return None;
    }
    state.cluster.as_ref()?.session_elsewhere(id).await
}

fn unreachable(id: SessionId, owner: &RemoteNode, err: impl std::fmt::Display) -> ApiError {
    tracing::warn!(session = %id, node = %owner.node, url = %owner.url, %err, "cannot reach the node running the call");
    ApiError::Unavailable(format!(
        "session {id} runs on node {}, which cannot be reached now; try again",
        owner.node
    ))
}

fn this_node(state: &AppState) -> String {
    state
        .cluster
        .as_ref()
        .map(|c| c.node().to_owned())
        .unwrap_or_default()
}

/// Posts the caller's WebRTC offer to the owner; its answer (or refusal)
/// is this request's response.
pub async fn forward_offer(
    state: &AppState,
    req: &HttpRequest,
    owner: &RemoteNode,
    id: SessionId,
    offer: String,
) -> Result<HttpResponse, ApiError> {
    let client = reqwest::Client::builder()
        .timeout(FORWARD_TIMEOUT)
        .build()
        .map_err(|err| ApiError::Internal(format!("HTTP client: {err}")))?;
    let mut request = client
        .post(format!("{}/v1/sessions/{id}/webrtc", owner.url))
        .header(header::CONTENT_TYPE.as_str(), "application/sdp")
        .header(FORWARDED_BY, this_node(state))
        .body(offer);
    if let Some(auth) = req.headers().get(header::AUTHORIZATION) {
        request = request.header(header::AUTHORIZATION.as_str(), auth.as_bytes());
    }
    let response = request
        .send()
        .await
        .map_err(|err| unreachable(id, owner, err))?;
    let status = StatusCode::from_u16(response.status().as_u16())
        .map_err(|err| ApiError::Internal(format!("the owner's status: {err}")))?;
    let mut out = HttpResponse::build(status);
    for name in [header::CONTENT_TYPE, header::LOCATION] {
        if let Some(value) = response.headers().get(name.as_str()) {
            out.insert_header((name, value.as_bytes()));
        }
    }
    let body = response
        .bytes()
        .await
        .map_err(|err| unreachable(id, owner, err))?;
    tracing::info!(session = %id, node = %owner.node, status = status.as_u16(), "WebRTC rejoin routed to the node running the call");
    Ok(out.body(body))
}

/// Opens the caller's WebSocket on the owner, then accepts the caller's
/// and relays between them.
pub async fn relay_socket(
    state: &AppState,
    req: &HttpRequest,
    body: actix_web::web::Payload,
    owner: &RemoteNode,
    id: SessionId,
    max_frame: usize,
) -> Result<HttpResponse, ApiError> {
    // The caller's handshake is checked before the owner attaches the call
    // to the relay (nothing goes out until this handler returns: on the
    // owner's refusal the accepted handshake is dropped for its answer).
    let (response, socket, stream) =
        actix_ws::handle(req, body).map_err(|e| ApiError::BadRequest {
            code: "not_a_websocket",
            message: e.to_string(),
            field: None,
        })?;
    let base = owner
        .url
        .strip_prefix("http")
        .map(|rest| format!("ws{rest}"))
        .ok_or_else(|| unreachable(id, owner, "its node_url is not http(s)"))?;
    let query = match req.query_string() {
        "" => String::new(),
        q => format!("?{q}"),
    };
    let mut request = format!("{base}/v1/sessions/{id}/ws{query}")
        .into_client_request()
        .map_err(|err| unreachable(id, owner, err))?;
    let headers = request.headers_mut();
    if let Some(auth) = req.headers().get(header::AUTHORIZATION)
        && let Ok(value) = auth.to_str().unwrap_or_default().parse()
    {
        headers.insert(header::AUTHORIZATION.as_str(), value);
    }
    if let Ok(value) = this_node(state).parse() {
        headers.insert(FORWARDED_BY, value);
    }
    let connecting = tokio_tungstenite::connect_async(request);
    let upstream = match tokio::time::timeout(FORWARD_TIMEOUT, connecting).await {
        Err(_) => return Err(unreachable(id, owner, "timed out")),
        Ok(Ok((upstream, _))) => upstream,
        // The owner refused the upgrade: its answer is the caller's.
        Ok(Err(tungstenite::Error::Http(refused))) => {
            let status =
                StatusCode::from_u16(refused.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
            let mut out = HttpResponse::build(status);
            if let Some(value) = refused.headers().get(header::CONTENT_TYPE.as_str()) {
                out.insert_header((header::CONTENT_TYPE, value.as_bytes()));
            }
            return Ok(out.body(refused.into_body().unwrap_or_default()));
        }
        Ok(Err(err)) => return Err(unreachable(id, owner, err)),
    };
    let stream = stream.max_frame_size(max_frame).aggregate_continuations();
    tracing::info!(session = %id, node = %owner.node, "WebSocket rejoin relayed to the node running the call");
    actix_web::rt::spawn(relay(id, socket, stream, upstream));
    Ok(response)
}

type Upstream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Frames both ways until either side closes.
async fn relay(
    id: SessionId,
    mut caller: actix_ws::Session,
    mut from_caller: actix_ws::AggregatedMessageStream,
    upstream: Upstream,
) {
    let (mut to_owner, mut from_owner) = upstream.split();
    let mut last_heard = Instant::now();
    let mut heartbeat = tokio::time::interval(HEARTBEAT_INTERVAL);
    let away = |why: &str| {
        Message::Close(Some(tungstenite::protocol::CloseFrame {
            code: tungstenite::protocol::frame::coding::CloseCode::Away,
            reason: why.to_owned().into(),
        }))
    };
    loop {
        tokio::select! {
            incoming = from_caller.next() => {
                last_heard = Instant::now();
                let forwarded = match incoming {
                    Some(Ok(AggregatedMessage::Text(text))) => Message::Text(text.to_string().into()),
                    Some(Ok(AggregatedMessage::Binary(bytes))) => Message::Binary(bytes),
                    Some(Ok(AggregatedMessage::Ping(bytes))) => {
                        let _ = caller.pong(&bytes).await;
                        continue;
                    }
                    Some(Ok(AggregatedMessage::Pong(_))) => continue,
                    Some(Ok(AggregatedMessage::Close(reason))) => {
                        // The caller's own close code decides, on the
                        // owner, between a hang-up and a dropped call.
                        let frame = reason.map(|r| tungstenite::protocol::CloseFrame {
                            code: u16::from(r.code).into(),
                            reason: r.description.unwrap_or_default().into(),
                        });
                        let _ = to_owner.send(Message::Close(frame)).await;
                        break;
                    }
                    None | Some(Err(_)) => {
                        let _ = to_owner.send(away("caller connection lost")).await;
                        break;
                    }
                };
                if to_owner.send(forwarded).await.is_err() {
                    let _ = caller.close(Some(CloseReason {
                        code: CloseCode::Away,
                        description: Some("the node running the call went away".into()),
                    })).await;
                    break;
                }
            }
            outgoing = from_owner.next() => {
                let sent = match outgoing {
                    Some(Ok(Message::Text(text))) => caller.text(text.as_str().to_owned()).await,
                    Some(Ok(Message::Binary(bytes))) => caller.binary(bytes).await,
                    // tungstenite answers the owner's pings itself (on the
                    // next write or flush).
                    Some(Ok(Message::Ping(_))) => {
                        let _ = to_owner.flush().await;
                        Ok(())
                    }
                    Some(Ok(Message::Pong(_) | Message::Frame(_))) => Ok(()),
                    Some(Ok(Message::Close(frame))) => {
                        let reason = frame.map(|f| CloseReason {
                            code: u16::from(f.code).into(),
                            description: (!f.reason.is_empty()).then(|| f.reason.to_string()),
                        });
                        let _ = caller.close(reason).await;
                        break;
                    }
                    None | Some(Err(_)) => {
                        tracing::info!(session = %id, "the node running the call closed the relayed socket");
                        let _ = caller.close(Some(CloseReason {
                            code: CloseCode::Away,
                            description: Some("the node running the call went away".into()),
                        })).await;
                        break;
                    }
                };
                if sent.is_err() {
                    let _ = to_owner.send(away("caller connection lost")).await;
                    break;
                }
            }
            _ = heartbeat.tick() => {
                if last_heard.elapsed() > CALLER_TIMEOUT {
                    tracing::info!(session = %id, "relayed caller silent for {} s; its connection is gone", CALLER_TIMEOUT.as_secs());
                    let _ = to_owner.send(away("caller timeout")).await;
                    let _ = caller.close(Some(CloseReason {
                        code: CloseCode::Away,
                        description: Some("client timeout".into()),
                    })).await;
                    break;
                }
                let _ = caller.ping(b"").await;
            }
        }
    }
}
