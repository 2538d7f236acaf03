//! Live rooms over `GET /v1/rooms/ws`, against a real server: messages
//! posted over REST or the socket, edits, deletes and read receipts fan out
//! to the connected members once; typing starts and ends by itself;
//! presence follows connections; non-members and other organizations see
//! nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use awc::ws::Message;
use common::TestServer;
use futures_util::SinkExt;
use palaver::model::Role;
use reqwest::StatusCode;
use serde_json::{Value, json};

use common::rooms::Client;

fn message_id(event: &Value) -> i64 {
    event["message"]["id"].as_i64().unwrap()
}

async fn group(server: &TestServer, token: &str, members: &[i64]) -> i64 {
    let (status, room) = server
        .post(
            "/v1/rooms",
            token,
            json!({ "kind": "group", "name": "live", "member_ids": members }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{room}");
    room["id"].as_i64().unwrap()
}

async fn say(server: &TestServer, token: &str, room: i64, body: Value) -> (StatusCode, Value) {
    server
        .post(&format!("/v1/rooms/{room}/messages"), token, body)
        .await
}

#[actix_web::test]
async fn messages_edits_deletes_and_receipts_fan_out_once_to_members_only() {
    let server = TestServer::start().await;
    let t = server.tenant("live").await;
    let (alice, alice_t) = server.user(t.org, Role::Member).await;
    let (bob, bob_t) = server.user(t.org, Role::Member).await;
    let (_carol, carol_t) = server.user(t.org, Role::Member).await;
    let room = group(&server, &alice_t, &[bob.0]).await;
    // Carol has a room of her own with nobody else, so she is connected but
    // in no room with Alice and Bob.
    group(&server, &carol_t, &[]).await;

    let mut alice_ws = Client::connect(server.addr, &alice_t).await;
    let mut bob_ws = Client::connect(server.addr, &bob_t).await;
    let mut carol_ws = Client::connect(server.addr, &carol_t).await;

    // Over REST, with an idempotency key, sent twice: one message.new.
    let body = json!({ "body": "hello over REST", "idempotency_key": "k-1" });
    let (status, first) = say(&server, &alice_t, room, body.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    let (status, again) = say(&server, &alice_t, room, body).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    let rest_id = first["id"].as_i64().unwrap();
    let event = bob_ws.expect("message.new", |_| true).await;
    assert_eq!(message_id(&event), rest_id, "{event}");
    assert_eq!(event["message"]["body"], "hello over REST");
    assert_eq!(event["message"]["sender_id"], alice.0);
    assert_eq!(event["message"]["room_id"], room);

    // Over the socket: stored, acknowledged, then fanned out.
    let send = json!({ "type": "send", "room_id": room, "body": "hello over the socket", "idempotency_key": "k-2" });
    alice_ws.send(send.clone()).await;
    let ack = alice_ws.expect("send.ack", |_| true).await;
    assert_eq!(ack["created"], true, "{ack}");
    let ws_id = message_id(&ack);
    // A retry of the same send is acknowledged with the same message and
    // not fanned out again.
    alice_ws.send(send).await;
    let ack = alice_ws.expect("send.ack", |_| true).await;
    assert_eq!(ack["created"], false, "{ack}");
    assert_eq!(message_id(&ack), ws_id, "{ack}");
    let event = bob_ws
        .expect("message.new", |e| message_id(e) == ws_id)
        .await;
    assert_eq!(event["message"]["body"], "hello over the socket");
    // It is stored: history has both.
    let (_, history) = server
        .get(&format!("/v1/rooms/{room}/messages?since=0"), &bob_t)
        .await;
    let ids: Vec<i64> = history["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, vec![rest_id, ws_id], "{history}");

    // Edit, read receipt, delete.
    let (status, edited) = server
        .patch(
            &format!("/v1/rooms/{room}/messages/{rest_id}"),
            &alice_t,
            json!({ "body": "hello, edited" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{edited}");
    let event = bob_ws
        .expect("message.updated", |e| message_id(e) == rest_id)
        .await;
    assert_eq!(event["message"]["body"], "hello, edited");
    assert!(event["message"]["edited_at"].is_string(), "{event}");

    let (status, read) = server
        .post(
            &format!("/v1/rooms/{room}/read"),
            &bob_t,
            json!({ "message_id": ws_id }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{read}");
    let event = alice_ws.expect("read.receipt", |_| true).await;
    assert_eq!(event["room_id"], room);
    assert_eq!(event["user_id"], bob.0);
    assert_eq!(event["last_read_message_id"], ws_id);

    let (status, deleted) = server
        .delete(&format!("/v1/rooms/{room}/messages/{ws_id}"), &alice_t)
        .await;
    assert_eq!(status, StatusCode::OK, "{deleted}");
    let event = bob_ws
        .expect("message.deleted", |e| message_id(e) == ws_id)
        .await;
    assert_eq!(event["message"]["deleted"], true, "{event}");
    assert_eq!(event["message"]["body"], Value::Null, "{event}");

    // Bob saw each message once, whichever way it was sent.
    let rest = bob_ws.drain(Duration::from_millis(500)).await;
    let news: Vec<i64> = bob_ws
        .seen
        .iter()
        .chain(rest.iter())
        .filter(|e| e["type"] == "message.new")
        .map(message_id)
        .collect();
    assert_eq!(news, vec![rest_id, ws_id], "{:?}", bob_ws.seen);

    // Carol, not a member, saw none of it, and cannot type or send there.
    let carol_saw = carol_ws.drain(Duration::from_millis(500)).await;
    assert!(
        carol_ws
            .seen
            .iter()
            .chain(carol_saw.iter())
            .all(|e| e["type"] == "connected"),
        "{:?}",
        carol_ws.seen
    );
    carol_ws
        .send(json!({ "type": "send", "room_id": room, "body": "let me in" }))
        .await;
    let refused = carol_ws.expect("error", |_| true).await;
    assert_eq!(refused["code"], "not_found", "{refused}");
    carol_ws
        .send(json!({ "type": "typing", "room_id": room }))
        .await;
    let refused = carol_ws.expect("error", |_| true).await;
    assert_eq!(refused["code"], "not_found", "{refused}");
    let leaked = bob_ws.drain(Duration::from_millis(500)).await;
    assert!(
        leaked
            .iter()
            .all(|e| e["type"] != "message.new" && e["type"] != "typing"),
        "{leaked:?}"
    );

    // A malformed client message is answered, and the connection goes on.
    bob_ws.send(json!({ "type": "dance" })).await;
    let refused = bob_ws.expect("error", |_| true).await;
    assert_eq!(refused["code"], "invalid_message", "{refused}");
    say(&server, &alice_t, room, json!({ "body": "still here" })).await;
    bob_ws
        .expect("message.new", |e| e["message"]["body"] == "still here")
        .await;
}

#[actix_web::test]
async fn typing_arrives_and_ends_by_itself_on_a_message_or_on_stop() {
    let server = TestServer::start().await;
    let t = server.tenant("typing").await;
    let (alice, alice_t) = server.user(t.org, Role::Member).await;
    let (bob, bob_t) = server.user(t.org, Role::Member).await;
    let room = group(&server, &alice_t, &[bob.0]).await;
    let mut alice_ws = Client::connect(server.addr, &alice_t).await;
    let mut bob_ws = Client::connect(server.addr, &bob_t).await;

    alice_ws
        .send(json!({ "type": "typing", "room_id": room }))
        .await;
    let started = bob_ws.expect("typing", |_| true).await;
    assert_eq!(started["room_id"], room);
    assert_eq!(started["user_id"], alice.0);
    assert_eq!(started["typing"], true);
    // Nobody told it to stop: it ends by itself (after about 5 s).
    let ended = bob_ws.expect("typing", |_| true).await;
    assert_eq!(ended["user_id"], alice.0);
    assert_eq!(ended["typing"], false, "{ended}");

    // Typing again while the indicator is on renews it without repeating
    // it; a message from the typer ends it.
    alice_ws
        .send(json!({ "type": "typing", "room_id": room }))
        .await;
    bob_ws.expect("typing", |e| e["typing"] == true).await;
    alice_ws
        .send(json!({ "type": "typing", "room_id": room }))
        .await;
    // On the same socket as the renewal, so the server takes them in order
    // (a message over REST could overtake it, and the late renewal would
    // start a new indicator).
    alice_ws
        .send(json!({ "type": "send", "room_id": room, "body": "done typing", "idempotency_key": "t-1" }))
        .await;
    alice_ws.expect("send.ack", |_| true).await;
    let ended = bob_ws.expect("typing", |_| true).await;
    assert_eq!(
        ended["typing"], false,
        "renewal repeated the start: {ended}"
    );
    bob_ws
        .expect("message.new", |e| e["message"]["body"] == "done typing")
        .await;

    // An explicit stop.
    alice_ws
        .send(json!({ "type": "typing", "room_id": room }))
        .await;
    bob_ws.expect("typing", |e| e["typing"] == true).await;
    alice_ws
        .send(json!({ "type": "typing", "room_id": room, "typing": false }))
        .await;
    bob_ws.expect("typing", |e| e["typing"] == false).await;

    // The typer does not get their own indicator.
    let own = alice_ws.drain(Duration::from_millis(300)).await;
    assert!(
        alice_ws
            .seen
            .iter()
            .chain(own.iter())
            .all(|e| e["type"] != "typing"),
        "{:?}",
        alice_ws.seen
    );
}

#[actix_web::test]
async fn presence_follows_connections_and_away() {
    let server = TestServer::start().await;
    let t = server.tenant("presence").await;
    let (alice, alice_t) = server.user(t.org, Role::Member).await;
    let (bob, bob_t) = server.user(t.org, Role::Member).await;
    let room = group(&server, &alice_t, &[bob.0]).await;
    let member = |page: &Value, user: i64| {
        page["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["user_id"] == user)
            .cloned()
            .unwrap_or_else(|| panic!("{user} not in {page}"))
    };
    let members_path = format!("/v1/rooms/{room}/members");

    let mut alice_ws = Client::connect(server.addr, &alice_t).await;
    let hello = alice_ws.seen[0].clone();
    assert_eq!(hello["user_id"], alice.0, "{hello}");
    assert_eq!(
        hello["presence"],
        json!([{ "user_id": bob.0, "status": "offline", "last_seen": null }]),
        "{hello}"
    );

    let mut bob_ws = Client::connect(server.addr, &bob_t).await;
    assert_eq!(bob_ws.seen[0]["presence"][0]["status"], "online");
    let online = alice_ws.expect("presence", |_| true).await;
    assert_eq!(online["user_id"], bob.0);
    assert_eq!(online["status"], "online");

    bob_ws
        .send(json!({ "type": "presence", "status": "away" }))
        .await;
    let away = alice_ws.expect("presence", |_| true).await;
    assert_eq!(away["status"], "away", "{away}");
    bob_ws
        .send(json!({ "type": "presence", "status": "online" }))
        .await;
    alice_ws
        .expect("presence", |e| e["status"] == "online")
        .await;
    // The member list carries it too.
    let (_, members) = server.get(&members_path, &alice_t).await;
    assert_eq!(member(&members, bob.0)["status"], "online", "{members}");
    assert_eq!(member(&members, alice.0)["status"], "online", "{members}");

    // A second connection changes nothing; closing both makes Bob offline.
    let mut bob_phone = Client::connect(server.addr, &bob_t).await;
    bob_ws.socket.send(Message::Close(None)).await.unwrap();
    drop(bob_ws);
    let quiet = alice_ws.drain(Duration::from_millis(500)).await;
    assert!(quiet.iter().all(|e| e["type"] != "presence"), "{quiet:?}");
    bob_phone.socket.send(Message::Close(None)).await.unwrap();
    drop(bob_phone);
    let offline = alice_ws.expect("presence", |_| true).await;
    assert_eq!(offline["user_id"], bob.0);
    assert_eq!(offline["status"], "offline", "{offline}");
    assert!(offline["last_seen"].is_string(), "{offline}");
    let (_, members) = server.get(&members_path, &alice_t).await;
    let bob_member = member(&members, bob.0);
    assert_eq!(bob_member["status"], "offline", "{members}");
    assert_eq!(bob_member["last_seen"], offline["last_seen"], "{members}");
}

#[actix_web::test]
async fn only_users_of_the_organization_connect_and_see_its_rooms() {
    let server = TestServer::start().await;
    let t = server.tenant("home").await;
    let other = server.tenant("elsewhere").await;
    let (_alice, alice_t) = server.user(t.org, Role::Member).await;
    let (bob, _) = server.user(t.org, Role::Member).await;
    let (_, stranger_t) = server.user(other.org, Role::Admin).await;
    let room = group(&server, &alice_t, &[bob.0]).await;

    // An API key has no user.
    let refused = awc::Client::new()
        .ws(format!("ws://{}/v1/rooms/ws?token={}", server.addr, t.key))
        .connect()
        .await;
    assert!(
        matches!(refused, Err(awc::error::WsClientError::InvalidResponseStatus(s)) if s == StatusCode::FORBIDDEN.as_u16()),
        "{:?}",
        refused.err()
    );
    // No credential at all.
    let refused = awc::Client::new()
        .ws(format!("ws://{}/v1/rooms/ws", server.addr))
        .connect()
        .await;
    assert!(
        matches!(refused, Err(awc::error::WsClientError::InvalidResponseStatus(s)) if s == StatusCode::UNAUTHORIZED.as_u16()),
        "{:?}",
        refused.err()
    );
    // A bearer header works as well as ?token=.
    let (_, _socket) = awc::Client::new()
        .ws(format!("ws://{}/v1/rooms/ws", server.addr))
        .bearer_auth(&alice_t)
        .connect()
        .await
        .expect("a bearer header is accepted");

    // Another organization's user connects, but the room is not theirs.
    let mut stranger = Client::connect(server.addr, &stranger_t).await;
    stranger
        .send(json!({ "type": "typing", "room_id": room }))
        .await;
    let refused = stranger.expect("error", |_| true).await;
    assert_eq!(refused["code"], "not_found", "{refused}");
    stranger
        .send(json!({ "type": "send", "room_id": room, "body": "hi" }))
        .await;
    let refused = stranger.expect("error", |_| true).await;
    assert_eq!(refused["code"], "not_found", "{refused}");
    say(&server, &alice_t, room, json!({ "body": "private" })).await;
    let saw = stranger.drain(Duration::from_millis(500)).await;
    assert!(saw.is_empty(), "{saw:?}");
    // Nothing was stored by the stranger.
    let (_, history) = server
        .get(&format!("/v1/rooms/{room}/messages"), &alice_t)
        .await;
    assert_eq!(history["data"].as_array().unwrap().len(), 1, "{history}");
}
