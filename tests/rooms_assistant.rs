//! An assistant as a member of a chat room, against a real server and fake
//! OpenAI-compatible chat servers on 127.0.0.1:0: a user's message gets a
//! stored reply that fans out over `/v1/rooms/ws` (typing, `message.new`
//! from the assistant, typing ends) and carries the system prompt and the
//! room's turns to the model; one reply at a time per room, messages that
//! arrive meanwhile answered together; a failing or slow provider gives an
//! `error` event and no reply; another organization's assistant is refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use actix_web::{App, HttpResponse, HttpServer, web};
use common::rooms::Client;
use common::voice::start_fake;
use common::{Tenant, TestServer, code};
use palaver::config::Secret;
use palaver::model::Role;
use reqwest::StatusCode;
use serde_json::{Value, json};

const PROMPT: &str = "You are the front desk of the Grand Hotel.";

/// A server whose OpenAI provider is the fake at `fake_url`.
async fn server_with(
    fake_url: String,
    tweak: impl FnOnce(&mut palaver::config::Settings),
) -> TestServer {
    TestServer::start_with(|s| {
        s.providers.openai_base_url = fake_url;
        s.providers.openai_api_key = Some(Secret::new("sk-test"));
        tweak(s);
    })
    .await
}

/// Creates an assistant on the fake model and returns its id.
async fn assistant(server: &TestServer, tenant: &Tenant) -> i64 {
    let (status, body) = server
        .post(
            "/v1/assistants",
            &tenant.key,
            json!({
                "name": "Front desk",
                "system_prompt": PROMPT,
                "llm": {"provider": "openai", "model": "fake-1", "temperature": 0.2, "max_tokens": 64},
                "tts": {"provider": "openai", "voice_id": "alloy"},
            }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["id"].as_i64().unwrap()
}

async fn say(server: &TestServer, token: &str, room: i64, text: &str) -> Value {
    let (status, message) = server
        .post(
            &format!("/v1/rooms/{room}/messages"),
            token,
            json!({ "body": text }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{message}");
    message
}

async fn history(server: &TestServer, token: &str, room: i64) -> Vec<Value> {
    let (status, page) = server
        .get(&format!("/v1/rooms/{room}/messages?limit=100"), token)
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    page["data"].as_array().unwrap().clone()
}

/// Reads until the assistant's typing ends; returns what came meanwhile.
async fn until_typing_ends(client: &mut Client) -> Vec<Value> {
    let mut got = Vec::new();
    loop {
        let event = client
            .next(Duration::from_secs(20))
            .await
            .unwrap_or_else(|| panic!("the assistant's typing did not end; saw {got:?}"));
        if event["type"] == "presence" {
            continue;
        }
        got.push(event.clone());
        if event["type"] == "typing" && !event["assistant_id"].is_null() && event["typing"] == false
        {
            return got;
        }
    }
}

fn kinds(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| {
            let kind = e["type"].as_str().unwrap_or_default();
            match kind {
                "typing" if !e["assistant_id"].is_null() => {
                    format!("assistant typing {}", e["typing"])
                }
                "message.new" if !e["message"]["sender_assistant_id"].is_null() => {
                    "message.new from the assistant".into()
                }
                "message.new" => "message.new".into(),
                other => other.into(),
            }
        })
        .collect()
}

#[actix_web::test]
async fn an_assistant_in_a_room_answers_users_messages_with_its_model() {
    let (fake_url, fake) = start_fake(vec![
        Ok("We are open from seven to eleven.".into()),
        Ok("Breakfast is at eight.".into()),
    ])
    .await;
    let server = server_with(fake_url, |_| {}).await;
    let t = server.tenant("hotel").await;
    let desk = assistant(&server, &t).await;
    let (alice, alice_t) = server.user(t.org, Role::Member).await;
    let (bob, bob_t) = server.user(t.org, Role::Member).await;

    let (status, room) = server
        .post(
            "/v1/rooms",
            &alice_t,
            json!({ "kind": "group", "name": "lobby", "member_ids": [bob.0], "assistant_id": desk }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{room}");
    assert_eq!(room["assistant_id"], desk, "{room}");
    let room = room["id"].as_i64().unwrap();
    let (_, view) = server.get(&format!("/v1/rooms/{room}"), &bob_t).await;
    assert_eq!(view["assistant_id"], desk, "{view}");
    let (_, listed) = server.get("/v1/rooms", &bob_t).await;
    assert_eq!(listed["data"][0]["assistant_id"], desk, "{listed}");

    // The member list shows the assistant first, then the users.
    let (status, members) = server
        .get(&format!("/v1/rooms/{room}/members"), &bob_t)
        .await;
    assert_eq!(status, StatusCode::OK, "{members}");
    let members = members["data"].as_array().unwrap().clone();
    assert_eq!(members.len(), 3, "{members:?}");
    assert_eq!(members[0]["assistant_id"], desk, "{members:?}");
    assert!(members[0].get("user_id").is_none(), "{members:?}");
    assert_eq!(members[0]["role"], "member", "{members:?}");
    let mut users: Vec<i64> = members[1..]
        .iter()
        .map(|m| m["user_id"].as_i64().unwrap())
        .collect();
    users.sort();
    assert_eq!(users, [alice.0.min(bob.0), alice.0.max(bob.0)]);
    assert!(members[1..].iter().all(|m| m.get("assistant_id").is_none()));

    let mut alice_ws = Client::connect(server.addr, &alice_t).await;
    let mut bob_ws = Client::connect(server.addr, &bob_t).await;

    // Over REST: the reply comes after, without the post waiting for it.
    let asked = say(&server, &alice_t, room, "When is the bar open?").await;
    assert!(asked["sender_assistant_id"].is_null(), "{asked}");
    let seen = until_typing_ends(&mut bob_ws).await;
    assert_eq!(
        kinds(&seen),
        [
            "message.new",
            "assistant typing true",
            "message.new from the assistant",
            "assistant typing false"
        ],
        "{seen:?}"
    );
    assert_eq!(seen[1]["room_id"], room, "{seen:?}");
    assert_eq!(seen[1]["assistant_id"], desk, "{seen:?}");
    assert!(seen[1].get("user_id").is_none(), "{seen:?}");
    let reply = &seen[2]["message"];
    assert_eq!(
        reply["body"], "We are open from seven to eleven.",
        "{reply}"
    );
    assert_eq!(reply["sender_assistant_id"], desk, "{reply}");
    assert!(reply["sender_id"].is_null(), "{reply}");
    assert_eq!(reply["room_id"], room, "{reply}");
    // The asker sees the same.
    let alice_seen = until_typing_ends(&mut alice_ws).await;
    assert_eq!(kinds(&alice_seen), kinds(&seen), "{alice_seen:?}");

    // The model got the system prompt, then the user's message.
    {
        let chats = fake.chats.lock().unwrap();
        assert_eq!(chats.len(), 1, "{chats:?}");
        let request = &chats[0];
        assert_eq!(request["model"], "fake-1", "{request}");
        assert_eq!(request["max_tokens"], 64, "{request}");
        assert_eq!(
            request["messages"],
            json!([
                {"role": "system", "content": PROMPT},
                {"role": "user", "content": "When is the bar open?"},
            ]),
            "{request}"
        );
    }

    // The reply is in the history, newest first, and unread for both.
    let stored = history(&server, &bob_t, room).await;
    assert_eq!(stored.len(), 2, "{stored:?}");
    assert_eq!(stored[0]["id"], reply["id"]);
    assert_eq!(stored[0]["sender_assistant_id"], desk);
    assert!(stored[0]["sender_id"].is_null());
    assert!(stored[1]["sender_assistant_id"].is_null());
    assert_eq!(stored[1]["sender_id"], alice.0);
    let (_, alice_view) = server.get(&format!("/v1/rooms/{room}"), &alice_t).await;
    assert_eq!(alice_view["unread_count"], 1, "{alice_view}");

    // Over the socket: acknowledged first, then answered with the
    // conversation so far.
    bob_ws
        .send(json!({ "type": "send", "room_id": room, "body": "And breakfast?" }))
        .await;
    let ack = bob_ws.expect("send.ack", |_| true).await;
    assert_eq!(ack["created"], true, "{ack}");
    let seen = until_typing_ends(&mut bob_ws).await;
    let reply = seen
        .iter()
        .find(|e| e["type"] == "message.new" && e["message"]["sender_assistant_id"] == desk)
        .unwrap_or_else(|| panic!("no reply in {seen:?}"));
    assert_eq!(reply["message"]["body"], "Breakfast is at eight.");
    {
        let chats = fake.chats.lock().unwrap();
        assert_eq!(chats.len(), 2, "{chats:?}");
        assert_eq!(
            chats[1]["messages"],
            json!([
                {"role": "system", "content": PROMPT},
                {"role": "user", "content": "When is the bar open?"},
                {"role": "assistant", "content": "We are open from seven to eleven."},
                {"role": "user", "content": "And breakfast?"},
            ]),
        );
    }
    assert_eq!(history(&server, &alice_t, room).await.len(), 4);

    // The assistant's messages are its own: nobody edits them; a room owner
    // may delete one.
    let reply_id = reply["message"]["id"].as_i64().unwrap();
    let (status, body) = server
        .patch(
            &format!("/v1/rooms/{room}/messages/{reply_id}"),
            &alice_t,
            json!({ "body": "we never close" }),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = server
        .delete(&format!("/v1/rooms/{room}/messages/{reply_id}"), &alice_t)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Nothing more: the assistant never answered its own messages.
    assert_eq!(fake.chats.lock().unwrap().len(), 2);
    let late = bob_ws.drain(Duration::from_millis(300)).await;
    assert!(
        !kinds(&late)
            .iter()
            .any(|k| k.starts_with("assistant typing")),
        "{late:?}"
    );
    server.stop().await;
}

#[actix_web::test]
async fn a_failing_provider_gives_an_error_event_and_stores_no_reply() {
    let (fake_url, fake) = start_fake(vec![Err(500)]).await;
    let server = server_with(fake_url, |_| {}).await;
    let t = server.tenant("hotel").await;
    let desk = assistant(&server, &t).await;
    let (_, alice_t) = server.user(t.org, Role::Member).await;
    let (status, room) = server
        .post(
            "/v1/rooms",
            &alice_t,
            json!({ "kind": "group", "name": "lobby", "assistant_id": desk }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{room}");
    let room = room["id"].as_i64().unwrap();
    let mut alice_ws = Client::connect(server.addr, &alice_t).await;

    say(&server, &alice_t, room, "Is anyone there?").await;
    let seen = until_typing_ends(&mut alice_ws).await;
    assert_eq!(
        kinds(&seen),
        [
            "message.new",
            "assistant typing true",
            "error",
            "assistant typing false"
        ],
        "{seen:?}"
    );
    let error = &seen[2];
    assert_eq!(error["code"], "provider_error", "{error}");
    assert_eq!(error["room_id"], room, "{error}");
    assert_eq!(error["assistant_id"], desk, "{error}");
    assert!(
        error["message"].as_str().unwrap().contains("500"),
        "{error}"
    );
    assert!(!fake.chats.lock().unwrap().is_empty());
    let stored = history(&server, &alice_t, room).await;
    assert_eq!(stored.len(), 1, "no reply stored: {stored:?}");
    assert!(stored[0]["sender_assistant_id"].is_null());

    // The room goes on: the next message is answered (and fails) again.
    say(&server, &alice_t, room, "Hello?").await;
    let seen = until_typing_ends(&mut alice_ws).await;
    assert!(kinds(&seen).contains(&"error".to_owned()), "{seen:?}");
    server.stop().await;
}

/// A fake chat-completions server that holds every request until the test
/// releases it, counting how many are in flight at once.
struct GatedFake {
    requests: Mutex<Vec<Value>>,
    in_flight: AtomicUsize,
    most_in_flight: AtomicUsize,
    released: tokio::sync::Semaphore,
}

async fn gated_chat(fake: web::Data<Arc<GatedFake>>, body: web::Json<Value>) -> HttpResponse {
    let n = {
        let mut requests = fake.requests.lock().unwrap();
        requests.push(body.into_inner());
        requests.len()
    };
    let now = fake.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    fake.most_in_flight.fetch_max(now, Ordering::SeqCst);
    fake.released.acquire().await.unwrap().forget();
    fake.in_flight.fetch_sub(1, Ordering::SeqCst);
    let chunk = json!({"choices": [{"index": 0, "delta": {"content": format!("reply {n}")}}]});
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .body(format!("data: {chunk}\n\ndata: [DONE]\n\n"))
}

async fn start_gated() -> (String, Arc<GatedFake>) {
    let fake = Arc::new(GatedFake {
        requests: Mutex::default(),
        in_flight: AtomicUsize::new(0),
        most_in_flight: AtomicUsize::new(0),
        released: tokio::sync::Semaphore::new(0),
    });
    let data = web::Data::new(fake.clone());
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .route("/v1/chat/completions", web::post().to(gated_chat))
    })
    .workers(1)
    .bind("127.0.0.1:0")
    .unwrap();
    let addr = server.addrs()[0];
    actix_web::rt::spawn(server.run());
    (format!("http://{addr}/v1"), fake)
}

impl GatedFake {
    async fn wait_requests(&self, n: usize) {
        for _ in 0..400 {
            if self.requests.lock().unwrap().len() >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!(
            "fewer than {n} chat requests: {:?}",
            self.requests.lock().unwrap()
        );
    }

    fn user_turns(&self, index: usize) -> Vec<String> {
        self.requests.lock().unwrap()[index]["messages"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["role"] == "user")
            .map(|m| m["content"].as_str().unwrap().to_owned())
            .collect()
    }
}

#[actix_web::test]
async fn one_reply_at_a_time_per_room_and_messages_meanwhile_are_answered_together() {
    let (fake_url, fake) = start_gated().await;
    let server = server_with(fake_url, |_| {}).await;
    let t = server.tenant("hotel").await;
    let desk = assistant(&server, &t).await;
    let (_, alice_t) = server.user(t.org, Role::Member).await;
    let (status, room) = server
        .post(
            "/v1/rooms",
            &alice_t,
            json!({ "kind": "group", "name": "lobby", "assistant_id": desk }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{room}");
    let room = room["id"].as_i64().unwrap();
    let mut alice_ws = Client::connect(server.addr, &alice_t).await;

    say(&server, &alice_t, room, "one").await;
    fake.wait_requests(1).await;
    // The model is still thinking: the posts are not held up, and no second
    // reply starts.
    say(&server, &alice_t, room, "two").await;
    say(&server, &alice_t, room, "three").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(fake.requests.lock().unwrap().len(), 1);
    assert_eq!(fake.user_turns(0), ["one"]);

    fake.released.add_permits(1);
    let seen = until_typing_ends(&mut alice_ws).await;
    assert!(
        seen.iter().any(|e| e["message"]["body"] == "reply 1"),
        "{seen:?}"
    );
    // Then one more reply, to everything that came meanwhile.
    fake.wait_requests(2).await;
    // Its first answer where it was asked, then what came meanwhile.
    let turns: Vec<(String, String)> = fake.requests.lock().unwrap()[1]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .skip(1)
        .map(|m| {
            (
                m["role"].as_str().unwrap().into(),
                m["content"].as_str().unwrap().into(),
            )
        })
        .collect();
    let expected: Vec<(String, String)> = [
        ("user", "one"),
        ("assistant", "reply 1"),
        ("user", "two"),
        ("user", "three"),
    ]
    .iter()
    .map(|(r, c)| ((*r).into(), (*c).into()))
    .collect();
    assert_eq!(turns, expected);
    fake.released.add_permits(1);
    let seen = until_typing_ends(&mut alice_ws).await;
    assert!(
        seen.iter().any(|e| e["message"]["body"] == "reply 2"),
        "{seen:?}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(fake.requests.lock().unwrap().len(), 2);
    assert_eq!(fake.most_in_flight.load(Ordering::SeqCst), 1);

    let bodies: Vec<Value> = history(&server, &alice_t, room)
        .await
        .iter()
        .rev()
        .map(|m| m["body"].clone())
        .collect();
    assert_eq!(bodies, ["one", "two", "three", "reply 1", "reply 2"]);

    // The room is free again: the next message starts a new reply at once.
    say(&server, &alice_t, room, "four").await;
    fake.wait_requests(3).await;
    fake.released.add_permits(1);
    until_typing_ends(&mut alice_ws).await;
    server.stop().await;
}

#[actix_web::test]
async fn a_provider_that_takes_too_long_times_out_with_an_error_event() {
    let (fake_url, fake) = start_gated().await;
    let server = server_with(fake_url, |s| s.providers.request_timeout_ms = 300).await;
    let t = server.tenant("hotel").await;
    let desk = assistant(&server, &t).await;
    let (_, alice_t) = server.user(t.org, Role::Member).await;
    let (_, room) = server
        .post(
            "/v1/rooms",
            &alice_t,
            json!({ "kind": "group", "name": "lobby", "assistant_id": desk }),
        )
        .await;
    let room = room["id"].as_i64().unwrap();
    let mut alice_ws = Client::connect(server.addr, &alice_t).await;
    say(&server, &alice_t, room, "Hello?").await;
    let seen = until_typing_ends(&mut alice_ws).await;
    let error = seen
        .iter()
        .find(|e| e["type"] == "error")
        .unwrap_or_else(|| panic!("no error in {seen:?}"));
    assert_eq!(error["code"], "provider_timeout", "{error}");
    assert_eq!(error["room_id"], room, "{error}");
    assert_eq!(history(&server, &alice_t, room).await.len(), 1);
    // Let the held request go so the fake's worker can stop.
    fake.released.add_permits(10);
    server.stop().await;
}

#[actix_web::test]
async fn a_rooms_assistant_is_one_of_its_organization_set_by_owners_and_admins() {
    let (fake_url, fake) = start_fake(vec![Ok("hi".into())]).await;
    let server = server_with(fake_url, |_| {}).await;
    let a = server.tenant("alpha").await;
    let b = server.tenant("bravo").await;
    let ours = assistant(&server, &a).await;
    let theirs = assistant(&server, &b).await;
    let (owner, owner_t) = server.user(a.org, Role::Member).await;
    let (member, member_t) = server.user(a.org, Role::Member).await;

    // Another organization's assistant, or one that does not exist: 404
    // naming the field, the same answer for both.
    for id in [theirs, 999_999] {
        let (status, body) = server
            .post(
                "/v1/rooms",
                &owner_t,
                json!({ "kind": "group", "name": "g", "assistant_id": id }),
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert_eq!(message, format!("assistant_id: no assistant with id {id}"));
        assert!(!message.contains("Front desk"), "{body}");
    }
    // A direct room has no assistant.
    let (status, body) = server
        .post(
            "/v1/rooms",
            &owner_t,
            json!({ "kind": "direct", "member_ids": [member.0], "assistant_id": ours }),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["field"], "assistant_id", "{body}");

    // A room without one behaves as before: no model is asked.
    let (status, room) = server
        .post(
            "/v1/rooms",
            &owner_t,
            json!({ "kind": "group", "name": "g", "member_ids": [member.0] }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{room}");
    assert!(room["assistant_id"].is_null(), "{room}");
    let room = room["id"].as_i64().unwrap();
    let path = format!("/v1/rooms/{room}");
    say(&server, &member_t, room, "just us").await;
    let (_, members) = server.get(&format!("{path}/members"), &owner_t).await;
    assert_eq!(members["data"].as_array().unwrap().len(), 2, "{members}");

    // Only owners and admins (and API keys) change it.
    let (status, body) = server
        .patch(&path, &member_t, json!({ "assistant_id": ours }))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = server
        .patch(&path, &owner_t, json!({ "assistant_id": theirs }))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(code(&body), "not_found");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("assistant_id:"),
        "{body}"
    );
    let (status, body) = server
        .patch(&path, &owner_t, json!({ "assistant_id": ours }))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["assistant_id"], ours, "{body}");
    assert_eq!(body["role"], "owner", "{body}");
    // Another organization's key sees no such room.
    let (status, _) = server
        .patch(&path, &b.key, json!({ "assistant_id": theirs }))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // An absent field changes nothing.
    let (status, body) = server.patch(&path, &member_t, json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["assistant_id"], ours, "{body}");

    // It answers now, and the member list shows it.
    let (_, members) = server.get(&format!("{path}/members"), &member_t).await;
    assert_eq!(members["data"][0]["assistant_id"], ours, "{members}");
    assert_eq!(members["data"].as_array().unwrap().len(), 3, "{members}");
    let mut ws = Client::connect(server.addr, &member_t).await;
    say(&server, &member_t, room, "are you there?").await;
    until_typing_ends(&mut ws).await;
    assert_eq!(fake.chats.lock().unwrap().len(), 1);
    // It answered from the room's history, messages from before it joined
    // included.
    assert_eq!(
        fake.chats.lock().unwrap()[0]["messages"]
            .as_array()
            .unwrap()
            .len(),
        3
    );

    // Removed (an API key of the organization may too): no more answers.
    let (status, body) = server
        .patch(&path, &a.key, json!({ "assistant_id": null }))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["assistant_id"].is_null(), "{body}");
    say(&server, &member_t, room, "gone?").await;
    let late = ws.drain(Duration::from_millis(400)).await;
    assert!(
        !kinds(&late)
            .iter()
            .any(|k| k.starts_with("assistant typing")),
        "{late:?}"
    );
    assert_eq!(fake.chats.lock().unwrap().len(), 1);
    let (_, members) = server.get(&format!("{path}/members"), &owner_t).await;
    assert!(
        members["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["user_id"].is_i64()),
        "{members}"
    );

    // A direct room has no assistant.
    let (_, direct) = server
        .post(
            "/v1/rooms",
            &owner_t,
            json!({ "kind": "direct", "member_ids": [member.0] }),
        )
        .await;
    let (status, body) = server
        .patch(
            &format!("/v1/rooms/{}", direct["id"]),
            &owner_t,
            json!({ "assistant_id": ours }),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");

    // All of it is in the API document.
    let (status, doc) = server.get("/v1/openapi.json", &owner_t).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        doc["paths"]["/v1/rooms/{id}"]["patch"].is_object(),
        "PATCH /v1/rooms/{{id}}"
    );
    let schemas = &doc["components"]["schemas"];
    assert!(schemas["UpdateRoom"]["properties"]["assistant_id"].is_object());
    // A group room (the second kind) may have one; a direct room not.
    let group = &schemas["CreateRoom"]["oneOf"][1];
    assert_eq!(group["properties"]["kind"]["enum"][0], "group");
    assert!(group["properties"]["assistant_id"].is_object());
    assert!(schemas["RoomView"]["properties"]["assistant_id"].is_object());
    assert!(schemas["MemberView"]["properties"]["assistant_id"].is_object());
    assert!(schemas["RoomMessageView"]["properties"]["sender_assistant_id"].is_object());
    let _ = owner;
    server.stop().await;
}

/// A throw-away `redis-server` on a free loopback port, killed on drop.
struct Redis {
    port: u16,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Redis {
    fn start() -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server runs (scripts/setup-deps.sh test installs it)");
        // Dropped (killed and reaped) if it never listens.
        let redis = Redis {
            port,
            child,
            _dir: dir,
        };
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return redis;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server on port {port} never listened");
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[actix_web::test]
async fn the_assistants_reply_reaches_members_connected_to_another_node() {
    let redis = Redis::start();
    let (fake_url, fake) = start_fake(vec![Ok("Hello from node A.".into())]).await;
    let url = redis.url();
    let node_a = server_with(fake_url.clone(), |s| {
        s.redis.url = Some(Secret::new(url.clone()));
    })
    .await;
    let database = node_a.state.settings.database.clone();
    let node_b = server_with(fake_url, |s| {
        s.redis.url = Some(Secret::new(url));
        s.database = database;
    })
    .await;
    let t = node_a.tenant("hotel").await;
    let desk = assistant(&node_a, &t).await;
    let (_, alice_t) = node_a.user(t.org, Role::Member).await;
    let (bob, bob_t) = node_a.user(t.org, Role::Member).await;
    let (status, room) = node_a
        .post(
            "/v1/rooms",
            &alice_t,
            json!({ "kind": "group", "name": "lobby", "member_ids": [bob.0], "assistant_id": desk }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{room}");
    let room = room["id"].as_i64().unwrap();
    // Bob is on node B; Alice posts on node A, where the reply is made.
    let mut bob_ws = Client::connect(node_b.addr, &bob_t).await;
    // The cluster bus needs a moment to carry node B's subscription.
    tokio::time::sleep(Duration::from_millis(300)).await;
    say(&node_a, &alice_t, room, "Hello?").await;
    let seen = until_typing_ends(&mut bob_ws).await;
    assert_eq!(
        kinds(&seen),
        [
            "message.new",
            "assistant typing true",
            "message.new from the assistant",
            "assistant typing false"
        ],
        "{seen:?}"
    );
    assert_eq!(seen[2]["message"]["body"], "Hello from node A.");
    assert_eq!(fake.chats.lock().unwrap().len(), 1);
    node_b.stop().await;
    node_a.stop().await;
}
