//! A dropped caller who rejoins through another node of the cluster is
//! routed to the node running the call (issue 13): a WebRTC offer is
//! answered by the owner (its media then flows there), a WebSocket is
//! relayed to it. Two in-process nodes share a database and a Redis
//! (`PALAVER_TEST_REDIS_URL`, which `make test` starts).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::TestServer;
use common::voice::start_fake;
use futures_util::{SinkExt, StreamExt};
use palaver::config::{Secret, Settings};
use palaver::ids::SessionId;
use palaver_loadtest::rtc_caller::RtcCaller;
use reqwest::StatusCode;
use serde_json::{Value, json};

fn clustered(s: &mut Settings, redis: &str, fake_url: &str) {
    s.redis.url = Some(Secret::new(redis.to_owned()));
    s.redis.heartbeat_ms = 200;
    s.redis.node_ttl_ms = 2_000;
    s.server.reconnect_grace_s = 20;
    s.providers.openai_base_url = fake_url.to_owned();
    s.providers.openai_api_key = Some(Secret::new("sk-test"));
}

/// Polls (bounded) until `done` holds.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "not within 10 s: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

type Socket = actix_codec::Framed<awc::BoxedSocket, awc::ws::Codec>;

async fn next_event(socket: &mut Socket) -> Value {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(20), socket.next())
            .await
            .expect("an event within 20 s")
            .expect("the socket is open")
            .expect("a valid frame");
        if let awc::ws::Frame::Text(text) = frame {
            return serde_json::from_slice(&text).unwrap();
        }
    }
}

async fn ws_until(socket: &mut Socket, kind: &str) -> Vec<Value> {
    let mut seen = Vec::new();
    while seen.last().is_none_or(|e: &Value| e["type"] != kind) {
        seen.push(next_event(socket).await);
    }
    seen
}

async fn ws_say(socket: &mut Socket, text: &str) {
    let message = json!({"type": "user-message", "text": text}).to_string();
    socket
        .send(awc::ws::Message::Text(message.into()))
        .await
        .unwrap();
}

async fn rtc_until(caller: &RtcCaller, kind: &str) -> Vec<Value> {
    let mut seen = Vec::new();
    while seen.last().is_none_or(|e: &Value| e["type"] != kind) {
        let event = tokio::time::timeout(Duration::from_secs(20), caller.recv_event())
            .await
            .unwrap_or_else(|_| panic!("no `{kind}` within 20 s; saw {seen:?}"))
            .expect("the data channel is open");
        seen.push(event);
    }
    seen
}

#[actix_web::test]
async fn a_rejoin_that_lands_on_another_node_reaches_the_call_over_either_transport() {
    let Some(redis) = common::test_redis_url(
        "a_rejoin_that_lands_on_another_node_reaches_the_call_over_either_transport",
    ) else {
        return;
    };
    let (fake_url, fake) = start_fake(vec![
        Ok("Hello there.".into()),
        Ok("Over WebRTC now.".into()),
        Ok("Welcome back.".into()),
    ])
    .await;
    let a = TestServer::start_with(|s| clustered(s, &redis, &fake_url)).await;
    let database = a.state.settings.database.clone();
    let b = TestServer::start_with(|s| {
        clustered(s, &redis, &fake_url);
        s.database = database;
    })
    .await;
    a.wait_ready().await;
    b.wait_ready().await;
    let tenant = a.tenant("rejoin").await;
    let (status, assistant) = a
        .post(
            "/v1/assistants",
            &tenant.key,
            json!({
                "name": "Front desk",
                "llm": {"provider": "openai", "model": "fake-1"},
                "stt": {"provider": "openai"},
                "tts": {"provider": "openai", "voice_id": "alloy"},
            }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{assistant}");
    let (session, token) = a
        .session(&tenant.key, assistant["id"].as_i64().unwrap())
        .await;
    let id = SessionId(session);
    let ws_url = |node: &TestServer| {
        format!(
            "ws://{}/v1/sessions/{session}/ws?token={token}&audio=false",
            node.addr
        )
    };

    // The call starts on node a, over a WebSocket, and its network goes.
    let (_, mut socket) = awc::Client::new().ws(ws_url(&a)).connect().await.unwrap();
    ws_until(&mut socket, "session.started").await;
    ws_say(&mut socket, "Hi").await;
    ws_until(&mut socket, "assistant-message").await;
    drop(socket);
    eventually("node a waits for the caller", || {
        a.state.live.is_detached(id)
    })
    .await;

    // Back through node b, over WebRTC: the offer goes to a, whose answer
    // (and media) reach the caller; b never runs the call.
    let caller = RtcCaller::connect(&b.base, session, &token)
        .await
        .expect("the WebRTC rejoin through node b connects");
    let hello = rtc_until(&caller, "session.resumed").await;
    assert_eq!(hello[0]["type"], "connected", "{hello:?}");
    assert!(!b.state.live.contains(id));
    caller.send_user_message("Can you hear me?").await.unwrap();
    let reply = rtc_until(&caller, "assistant-message").await;
    assert_eq!(
        reply.last().unwrap()["text"],
        "Over WebRTC now.",
        "{reply:?}"
    );
    // The peer just goes (no DELETE): a waits again.
    caller.close().await;
    eventually("node a waits for the caller again", || {
        a.state.live.is_detached(id)
    })
    .await;

    // And through node b over a WebSocket: relayed to a.
    let (_, mut socket) = awc::Client::new()
        .ws(ws_url(&b))
        .connect()
        .await
        .expect("the WebSocket rejoin through node b is relayed");
    let hello = ws_until(&mut socket, "session.resumed").await;
    assert_eq!(hello[0]["type"], "connected", "{hello:?}");
    ws_say(&mut socket, "Still there?").await;
    let reply = ws_until(&mut socket, "assistant-message").await;
    assert_eq!(reply.last().unwrap()["text"], "Welcome back.", "{reply:?}");
    assert!(!b.state.live.contains(id));
    // A second connection through b while the relay carries the call is
    // refused with a's answer.
    let refused = awc::Client::new().ws(ws_url(&b)).connect().await;
    match refused {
        Err(awc::error::WsClientError::InvalidResponseStatus(status)) => {
            assert_eq!(status.as_u16(), 409)
        }
        Err(other) => panic!("a second rejoin was not refused with 409: {other}"),
        Ok(_) => panic!("a second rejoin joined a live call"),
    }
    socket
        .send(awc::ws::Message::Text(
            json!({"type": "end-session"}).to_string().into(),
        ))
        .await
        .unwrap();
    ws_until(&mut socket, "session.ended").await;

    // The whole conversation is stored once, in order, by node a.
    let path = format!("/v1/sessions/{session}/messages?limit=100");
    let mut stored = Vec::new();
    for _ in 0..200 {
        let (_, body) = b.get(&path, &tenant.key).await;
        stored = body["data"].as_array().cloned().unwrap_or_default();
        if stored.len() >= 6 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let said: Vec<&str> = stored
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(
        said,
        [
            "Hi",
            "Hello there.",
            "Can you hear me?",
            "Over WebRTC now.",
            "Still there?",
            "Welcome back."
        ]
    );
    assert_eq!(fake.chats.lock().unwrap().len(), 3);
    let (_, ended) = b.get(&format!("/v1/sessions/{session}"), &tenant.key).await;
    assert_eq!(ended["status"], "ended", "{ended}");
    a.stop().await;
    b.stop().await;
}
