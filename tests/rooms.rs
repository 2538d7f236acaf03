//! Chat rooms over REST: direct and group rooms, members and roles, messages
//! (attachments, edits, soft deletes, idempotent sends), read receipts and
//! unread counts, history paging and `since`, and what non-members, other
//! organizations, API keys and session tokens get.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{TestServer, code};
use palaver::model::Role;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// Creates a room and returns its body, asserting the status.
async fn room(server: &TestServer, token: &str, body: Value, status: StatusCode) -> Value {
    let (got, room) = server.post("/v1/rooms", token, body.clone()).await;
    assert_eq!(got, status, "POST /v1/rooms {body}: {room}");
    room
}

/// Posts a text message and returns its id.
async fn say(server: &TestServer, token: &str, room: i64, text: &str) -> i64 {
    let (status, msg) = server
        .post(
            &format!("/v1/rooms/{room}/messages"),
            token,
            json!({ "body": text }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{msg}");
    msg["id"].as_i64().unwrap()
}

#[track_caller]
fn assert_error(what: &str, got: (StatusCode, Value), status: StatusCode, error_code: &str) {
    assert_eq!(got.0, status, "{what}: {}", got.1);
    assert_eq!(code(&got.1), error_code, "{what}: {}", got.1);
}

fn ids(page: &Value) -> Vec<i64> {
    page["data"]
        .as_array()
        .unwrap_or_else(|| panic!("not a page: {page}"))
        .iter()
        .map(|item| item["id"].as_i64().expect("item id"))
        .collect()
}

fn room_in(page: &Value, id: i64) -> &Value {
    page["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id)
        .unwrap_or_else(|| panic!("room {id} not in {page}"))
}

#[actix_web::test]
async fn direct_rooms_are_one_per_pair_whoever_opens_them() {
    let server = TestServer::start().await;
    let t = server.tenant("direct").await;
    let other = server.tenant("elsewhere").await;
    let (alice, alice_t) = server.user(t.org, Role::Member).await;
    let (bob, bob_t) = server.user(t.org, Role::Member).await;
    let (carol, carol_t) = server.user(t.org, Role::Admin).await;
    let (stranger, _) = server.user(other.org, Role::Member).await;

    let created = room(
        &server,
        &alice_t,
        json!({ "kind": "direct", "member_ids": [bob.0] }),
        StatusCode::CREATED,
    )
    .await;
    let id = created["id"].as_i64().unwrap();
    assert_eq!(created["kind"], "direct", "{created}");
    assert_eq!(created["name"], Value::Null, "{created}");
    let mut pair = [alice.0, bob.0];
    pair.sort();
    assert_eq!(created["user_ids"], json!(pair), "{created}");
    assert_eq!(created["role"], "member", "{created}");
    assert_eq!(created["unread_count"], 0, "{created}");
    assert_eq!(created["created_by_user_id"], alice.0, "{created}");

    // Again, from either side, listing oneself too, or through an API key:
    // the same room, 200.
    for (token, body) in [
        (&alice_t, json!({ "kind": "direct", "member_ids": [bob.0] })),
        (
            &bob_t,
            json!({ "kind": "direct", "member_ids": [alice.0, bob.0] }),
        ),
        (
            &t.key,
            json!({ "kind": "direct", "member_ids": [bob.0, alice.0] }),
        ),
    ] {
        let again = room(&server, token, body, StatusCode::OK).await;
        assert_eq!(again["id"], id, "{again}");
    }
    let (status, list) = server.get("/v1/rooms", &alice_t).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(ids(&list), vec![id], "{list}");

    // A different pair is a different room; the API key names both users.
    let with_carol = room(
        &server,
        &t.key,
        json!({ "kind": "direct", "member_ids": [alice.0, carol.0] }),
        StatusCode::CREATED,
    )
    .await;
    assert_ne!(with_carol["id"], id);
    assert_eq!(with_carol["role"], Value::Null, "{with_carol}");
    assert_eq!(with_carol["unread_count"], Value::Null, "{with_carol}");
    let (_, list) = server.get("/v1/rooms", &alice_t).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 2, "{list}");

    // Carol (an organization admin) is not in Alice and Bob's room.
    assert_error(
        "outsider",
        server.get(&format!("/v1/rooms/{id}"), &carol_t).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    let (_, list) = server.get("/v1/rooms", &carol_t).await;
    assert_eq!(ids(&list), vec![with_carol["id"].as_i64().unwrap()]);

    // Refused shapes.
    for (token, body, field) in [
        (
            &alice_t,
            json!({ "kind": "direct", "name": "x", "member_ids": [bob.0] }),
            "name",
        ),
        (&alice_t, json!({ "kind": "direct" }), "member_ids"),
        (
            &alice_t,
            json!({ "kind": "direct", "member_ids": [alice.0] }),
            "member_ids",
        ),
        (
            &alice_t,
            json!({ "kind": "direct", "member_ids": [bob.0, carol.0] }),
            "member_ids",
        ),
        (
            &alice_t,
            json!({ "kind": "direct", "member_ids": [bob.0], "owner_id": bob.0 }),
            "owner_id",
        ),
        (
            &t.key,
            json!({ "kind": "direct", "member_ids": [bob.0] }),
            "member_ids",
        ),
        (
            &t.key,
            json!({ "kind": "direct", "member_ids": [bob.0, bob.0] }),
            "member_ids",
        ),
        (&alice_t, json!({ "kind": "chat" }), "kind"),
        (&alice_t, json!({ "member_ids": [bob.0] }), "kind"),
    ] {
        let (status, err) = server.post("/v1/rooms", token, body.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {err}");
        assert_eq!(err["error"]["field"], field, "{body}: {err}");
    }
    // Another organization's user is a 404, and nothing was created.
    assert_error(
        "stranger",
        server
            .post(
                "/v1/rooms",
                &alice_t,
                json!({ "kind": "direct", "member_ids": [stranger.0] }),
            )
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    let (_, list) = server.get("/v1/rooms", &t.key).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 2, "{list}");

    // Nobody leaves or joins a direct room.
    assert_error(
        "add to direct",
        server
            .post(
                &format!("/v1/rooms/{id}/members"),
                &alice_t,
                json!({ "user_id": carol.0 }),
            )
            .await,
        StatusCode::CONFLICT,
        "conflict",
    );
    assert_error(
        "leave direct",
        server
            .delete(&format!("/v1/rooms/{id}/members/{}", alice.0), &alice_t)
            .await,
        StatusCode::CONFLICT,
        "conflict",
    );
    server.stop().await;
}

#[actix_web::test]
async fn group_rooms_have_owners_admins_and_members() {
    let server = TestServer::start().await;
    let t = server.tenant("groups").await;
    let other = server.tenant("others").await;
    let (alice, alice_t) = server.user(t.org, Role::Member).await;
    let (bob, bob_t) = server.user(t.org, Role::Member).await;
    let (carol, carol_t) = server.user(t.org, Role::Member).await;
    let (dave, dave_t) = server.user(t.org, Role::Member).await;
    let (stranger, _) = server.user(other.org, Role::Member).await;

    let team = room(
        &server,
        &alice_t,
        json!({ "kind": "group", "name": "  Team  ", "member_ids": [bob.0, alice.0, bob.0] }),
        StatusCode::CREATED,
    )
    .await;
    let id = team["id"].as_i64().unwrap();
    assert_eq!(team["name"], "Team", "{team}");
    assert_eq!(team["role"], "owner", "{team}");
    assert_eq!(team["user_ids"], Value::Null, "{team}");
    let members_path = format!("/v1/rooms/{id}/members");
    let (status, members) = server.get(&members_path, &bob_t).await;
    assert_eq!(status, StatusCode::OK, "{members}");
    let roles: Vec<(i64, String)> = members["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["user_id"].as_i64().unwrap(),
                m["role"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let mut expected = vec![(alice.0, "owner".to_owned()), (bob.0, "member".to_owned())];
    expected.sort_by_key(|m| std::cmp::Reverse(m.0));
    assert_eq!(roles, expected, "{members}");

    // A member may not add; an owner may, and adds admins.
    assert_error(
        "member adds",
        server
            .post(&members_path, &bob_t, json!({ "user_id": carol.0 }))
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    let (status, added) = server
        .post(
            &members_path,
            &alice_t,
            json!({ "user_id": carol.0, "role": "admin" }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{added}");
    assert_eq!(added["role"], "admin", "{added}");
    assert_eq!(added["last_read_message_id"], Value::Null, "{added}");
    assert_error(
        "added twice",
        server
            .post(&members_path, &alice_t, json!({ "user_id": carol.0 }))
            .await,
        StatusCode::CONFLICT,
        "conflict",
    );
    assert_error(
        "another org's user",
        server
            .post(&members_path, &alice_t, json!({ "user_id": stranger.0 }))
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_error(
        "bad role",
        server
            .post(
                &members_path,
                &alice_t,
                json!({ "user_id": dave.0, "role": "king" }),
            )
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
    // An admin adds members but not owners, and removes members but not owners.
    assert_error(
        "admin adds an owner",
        server
            .post(
                &members_path,
                &carol_t,
                json!({ "user_id": dave.0, "role": "owner" }),
            )
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    let (status, added) = server
        .post(&members_path, &carol_t, json!({ "user_id": dave.0 }))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{added}");
    assert_eq!(added["role"], "member", "{added}");
    let (status, room_for_dave) = server.get(&format!("/v1/rooms/{id}"), &dave_t).await;
    assert_eq!(status, StatusCode::OK, "{room_for_dave}");
    assert_error(
        "admin removes the owner",
        server
            .delete(&format!("{members_path}/{}", alice.0), &carol_t)
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    assert_error(
        "member removes another",
        server
            .delete(&format!("{members_path}/{}", dave.0), &bob_t)
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    let (status, _) = server
        .delete(&format!("{members_path}/{}", dave.0), &carol_t)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_error(
        "removed twice",
        server
            .delete(&format!("{members_path}/{}", dave.0), &carol_t)
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    // Dave is out: the room is a 404 to him now.
    assert_error(
        "removed member reads",
        server
            .get(&format!("/v1/rooms/{id}/messages"), &dave_t)
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    // Anyone may leave.
    let (status, _) = server
        .delete(&format!("{members_path}/{}", bob.0), &bob_t)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, list) = server.get("/v1/rooms", &bob_t).await;
    assert!(ids(&list).is_empty(), "{list}");

    // Group rooms need a name; users own what they create.
    for (token, body, field) in [
        (&alice_t, json!({ "kind": "group" }), "name"),
        (&alice_t, json!({ "kind": "group", "name": "   " }), "name"),
        (
            &alice_t,
            json!({ "kind": "group", "name": "x".repeat(201) }),
            "name",
        ),
        (
            &alice_t,
            json!({ "kind": "group", "name": "x", "owner_id": bob.0 }),
            "owner_id",
        ),
        (&t.key, json!({ "kind": "group", "name": "x" }), "owner_id"),
        (
            &alice_t,
            json!({ "kind": "group", "name": "x", "member_ids": (1..=101).collect::<Vec<i64>>() }),
            "member_ids",
        ),
    ] {
        let (status, err) = server.post("/v1/rooms", token, body.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {err}");
        assert_eq!(err["error"]["field"], field, "{body}: {err}");
    }

    // An API key creates a group for an owner and manages it.
    let ops = room(
        &server,
        &t.key,
        json!({ "kind": "group", "name": "Ops", "owner_id": bob.0, "member_ids": [dave.0] }),
        StatusCode::CREATED,
    )
    .await;
    let ops_id = ops["id"].as_i64().unwrap();
    assert_eq!(ops["created_by_user_id"], Value::Null, "{ops}");
    let (_, mine) = server.get(&format!("/v1/rooms/{ops_id}"), &bob_t).await;
    assert_eq!(mine["role"], "owner", "{mine}");
    let (status, _) = server
        .post(
            &format!("/v1/rooms/{ops_id}/members"),
            &t.key,
            json!({ "user_id": alice.0, "role": "owner" }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = server
        .delete(&format!("/v1/rooms/{ops_id}/members/{}", bob.0), &t.key)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, all) = server.get("/v1/rooms", &t.key).await;
    assert_eq!(ids(&all), vec![ops_id, id], "{all}");
    server.stop().await;
}

#[actix_web::test]
async fn messages_are_posted_once_edited_by_their_author_and_soft_deleted() {
    let server = TestServer::start().await;
    let t = server.tenant("messages").await;
    let (_, alice_t) = server.user(t.org, Role::Member).await;
    let (bob, bob_t) = server.user(t.org, Role::Member).await;
    let (carol, carol_t) = server.user(t.org, Role::Member).await;
    let team = room(
        &server,
        &alice_t,
        json!({ "kind": "group", "name": "Team", "member_ids": [bob.0, carol.0] }),
        StatusCode::CREATED,
    )
    .await;
    let id = team["id"].as_i64().unwrap();
    let messages = format!("/v1/rooms/{id}/messages");

    // A send with an idempotency key, retried: one message, 201 then 200.
    let send = json!({ "body": "hello team", "idempotency_key": "client-1" });
    let (status, first) = server.post(&messages, &bob_t, send.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    assert_eq!(first["sender_id"], bob.0, "{first}");
    assert_eq!(first["room_id"], id, "{first}");
    assert_eq!(first["body"], "hello team", "{first}");
    assert_eq!(first["attachments"], json!([]), "{first}");
    assert_eq!(first["deleted"], false, "{first}");
    assert_eq!(first["edited_at"], Value::Null, "{first}");
    assert_eq!(first["idempotency_key"], "client-1", "{first}");
    let (status, again) = server.post(&messages, &bob_t, send.clone()).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again, first);
    // The key is the sender's own: Alice's same key is her own message.
    let (status, alices) = server.post(&messages, &alice_t, send.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{alices}");
    assert_ne!(alices["id"], first["id"]);
    let (_, page) = server.get(&messages, &carol_t).await;
    assert_eq!(ids(&page).len(), 2, "{page}");
    let (_, r) = server.get(&format!("/v1/rooms/{id}"), &carol_t).await;
    assert_eq!(r["last_message_id"], alices["id"], "{r}");

    // Attachments by reference, with or without text.
    let (status, pic) = server
        .post(
            &messages,
            &carol_t,
            json!({ "attachments": [
                { "kind": "image", "url": "https://cdn.example.com/a.png" },
                { "kind": "voice", "url": "http://files.example.com/v.ogg?x=1" },
            ] }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{pic}");
    assert_eq!(pic["body"], Value::Null, "{pic}");
    assert_eq!(pic["attachments"][1]["kind"], "voice", "{pic}");
    assert_eq!(
        pic["attachments"][0]["url"], "https://cdn.example.com/a.png",
        "{pic}"
    );

    // Refused bodies name the field.
    let many: Vec<Value> = (0..11)
        .map(|i| json!({ "kind": "image", "url": format!("https://x.example/{i}") }))
        .collect();
    for (body, field) in [
        (json!({ "body": "x".repeat(4001) }), "body"),
        (json!({ "body": "" }), "body"),
        (json!({ "body": " \n " }), "body"),
        (json!({}), "body"),
        (json!({ "body": 5 }), "body"),
        (
            json!({ "attachments": [{ "kind": "video", "url": "https://x.example/v" }] }),
            "attachments[0].kind",
        ),
        (
            json!({ "attachments": [{ "kind": "image", "url": "ftp://x.example/a" }] }),
            "attachments[0].url",
        ),
        (
            json!({ "body": "a", "attachments": [{ "kind": "image", "url": "https://ok.example/a" }, { "kind": "image", "url": "https:// spaced.example" }] }),
            "attachments[1].url",
        ),
        (
            json!({ "attachments": [{ "kind": "image", "url": "https://" }] }),
            "attachments[0].url",
        ),
        (
            json!({ "attachments": [{ "kind": "image" }] }),
            "attachments[0].url",
        ),
        (
            json!({ "attachments": [{ "kind": "image", "url": "https://a.example", "size": 1 }] }),
            "attachments[0].size",
        ),
        (json!({ "attachments": many }), "attachments"),
        (
            json!({ "body": "a", "idempotency_key": "" }),
            "idempotency_key",
        ),
        (
            json!({ "body": "a", "idempotency_key": "k".repeat(201) }),
            "idempotency_key",
        ),
    ] {
        let (status, err) = server.post(&messages, &alice_t, body.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {err}");
        assert_eq!(code(&err), "validation_failed", "{body}: {err}");
        assert_eq!(err["error"]["field"], field, "{body}: {err}");
    }
    let (_, err) = server
        .post(&messages, &alice_t, json!({ "body": "x".repeat(4001) }))
        .await;
    let message = err["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("4001") && message.contains("4000"),
        "{err}"
    );
    // Exactly at the limit (in characters, not bytes) is fine.
    let (status, long) = server
        .post(&messages, &alice_t, json!({ "body": "é".repeat(4000) }))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{long}");
    // Beyond the request size limit: 413 before anything is parsed.
    let (status, err) = server
        .post(&messages, &alice_t, json!({ "body": "x".repeat(300_000) }))
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{err}");
    assert_eq!(code(&err), "payload_too_large");

    // Only the author edits.
    let first_id = first["id"].as_i64().unwrap();
    let first_path = format!("{messages}/{first_id}");
    assert_error(
        "edit someone else's",
        server
            .patch(&first_path, &alice_t, json!({ "body": "hijack" }))
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    assert_error(
        "edit to nothing",
        server
            .patch(&first_path, &bob_t, json!({ "body": "  " }))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
    assert_error(
        "edit too long",
        server
            .patch(&first_path, &bob_t, json!({ "body": "x".repeat(4001) }))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
    let (status, edited) = server
        .patch(&first_path, &bob_t, json!({ "body": "hello, team" }))
        .await;
    assert_eq!(status, StatusCode::OK, "{edited}");
    assert_eq!(edited["body"], "hello, team", "{edited}");
    assert!(edited["edited_at"].is_string(), "{edited}");
    assert_eq!(edited["created_at"], first["created_at"], "{edited}");
    // A retried send after the edit still returns the message, not a second one.
    let (status, replay) = server.post(&messages, &bob_t, send.clone()).await;
    assert_eq!(status, StatusCode::OK, "{replay}");
    assert_eq!(replay["id"], first_id, "{replay}");
    assert_eq!(replay["body"], "hello, team", "{replay}");

    // Delete: not by another plain member; by the author or a room admin/owner.
    let pic_path = format!("{messages}/{}", pic["id"]);
    assert_error(
        "member deletes another's",
        server.delete(&pic_path, &bob_t).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    let (status, gone) = server.delete(&pic_path, &alice_t).await;
    assert_eq!(status, StatusCode::OK, "{gone}");
    assert_eq!(gone["deleted"], true, "{gone}");
    assert_eq!(gone["body"], Value::Null, "{gone}");
    assert_eq!(gone["attachments"], json!([]), "{gone}");
    assert!(gone["deleted_at"].is_string(), "{gone}");
    let (status, again) = server.delete(&pic_path, &carol_t).await;
    assert_eq!(status, StatusCode::OK, "deleting again: {again}");
    assert_eq!(again["deleted_at"], gone["deleted_at"], "{again}");
    assert_error(
        "edit a deleted message",
        server
            .patch(&pic_path, &carol_t, json!({ "body": "back" }))
            .await,
        StatusCode::CONFLICT,
        "conflict",
    );
    let (status, own) = server.delete(&first_path, &bob_t).await;
    assert_eq!(status, StatusCode::OK, "{own}");
    // History keeps deleted messages as tombstones.
    let (_, page) = server.get(&messages, &bob_t).await;
    let tombstone = room_in(&page, pic["id"].as_i64().unwrap());
    assert_eq!(tombstone["deleted"], true, "{page}");
    assert_eq!(tombstone["body"], Value::Null, "{page}");

    // Unknown or foreign message ids are 404s.
    for path in [format!("{messages}/999999"), format!("{messages}/abc")] {
        assert_error(
            &path,
            server.patch(&path, &alice_t, json!({ "body": "x" })).await,
            StatusCode::NOT_FOUND,
            "not_found",
        );
        assert_error(
            &path,
            server.delete(&path, &alice_t).await,
            StatusCode::NOT_FOUND,
            "not_found",
        );
    }
    let other_room = room(
        &server,
        &alice_t,
        json!({ "kind": "direct", "member_ids": [bob.0] }),
        StatusCode::CREATED,
    )
    .await;
    let other_msg = say(&server, &alice_t, other_room["id"].as_i64().unwrap(), "dm").await;
    assert_error(
        "a message of another room",
        server
            .delete(&format!("{messages}/{other_msg}"), &alice_t)
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
    );

    // API keys read and moderate, but posting and editing need a user.
    let (status, page) = server.get(&messages, &t.key).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let (status, err) = server
        .post(&messages, &t.key, json!({ "body": "bot" }))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("needs a user"),
        "{err}"
    );
    let alices_path = format!("{messages}/{}", alices["id"]);
    assert_error(
        "API key edits",
        server
            .patch(&alices_path, &t.key, json!({ "body": "x" }))
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    let (status, gone) = server.delete(&alices_path, &t.key).await;
    assert_eq!(status, StatusCode::OK, "{gone}");
    assert_eq!(gone["deleted"], true, "{gone}");
    server.stop().await;
}

#[actix_web::test]
async fn read_receipts_move_forward_and_drive_unread_counts() {
    let server = TestServer::start().await;
    let t = server.tenant("receipts").await;
    let (alice, alice_t) = server.user(t.org, Role::Member).await;
    let (bob, bob_t) = server.user(t.org, Role::Member).await;
    let dm = room(
        &server,
        &alice_t,
        json!({ "kind": "direct", "member_ids": [bob.0] }),
        StatusCode::CREATED,
    )
    .await["id"]
        .as_i64()
        .unwrap();
    let group = room(
        &server,
        &bob_t,
        json!({ "kind": "group", "name": "G", "member_ids": [alice.0] }),
        StatusCode::CREATED,
    )
    .await["id"]
        .as_i64()
        .unwrap();

    let m1 = say(&server, &alice_t, dm, "one").await;
    let m2 = say(&server, &alice_t, dm, "two").await;
    let m3 = say(&server, &alice_t, dm, "three").await;
    say(&server, &alice_t, group, "group one").await;

    let (_, bobs) = server.get("/v1/rooms", &bob_t).await;
    assert_eq!(room_in(&bobs, dm)["unread_count"], 3, "{bobs}");
    assert_eq!(room_in(&bobs, dm)["last_read_message_id"], Value::Null);
    assert_eq!(room_in(&bobs, group)["unread_count"], 1, "{bobs}");
    // Her own messages are not unread to Alice, and posting marks them read.
    let (_, alices) = server.get("/v1/rooms", &alice_t).await;
    assert_eq!(room_in(&alices, dm)["unread_count"], 0, "{alices}");
    assert_eq!(room_in(&alices, dm)["last_read_message_id"], m3);

    let read = format!("/v1/rooms/{dm}/read");
    let (status, receipt) = server
        .post(&read, &bob_t, json!({ "message_id": m2 }))
        .await;
    assert_eq!(status, StatusCode::OK, "{receipt}");
    assert_eq!(
        receipt,
        json!({ "room_id": dm, "user_id": bob.0, "last_read_message_id": m2, "unread_count": 1 })
    );
    // Never backwards.
    let (status, receipt) = server
        .post(&read, &bob_t, json!({ "message_id": m1 }))
        .await;
    assert_eq!(status, StatusCode::OK, "{receipt}");
    assert_eq!(receipt["last_read_message_id"], m2, "{receipt}");
    assert_eq!(receipt["unread_count"], 1, "{receipt}");
    let (_, r) = server.get(&format!("/v1/rooms/{dm}"), &bob_t).await;
    assert_eq!(r["unread_count"], 1, "{r}");
    assert_eq!(r["last_read_message_id"], m2, "{r}");
    // Members see each other's read positions.
    let (_, members) = server
        .get(&format!("/v1/rooms/{dm}/members"), &alice_t)
        .await;
    let bob_member = members["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["user_id"] == bob.0)
        .unwrap();
    assert_eq!(bob_member["last_read_message_id"], m2, "{members}");

    // A deleted message is no longer unread.
    let (status, _) = server
        .delete(&format!("/v1/rooms/{dm}/messages/{m3}"), &alice_t)
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, r) = server.get(&format!("/v1/rooms/{dm}"), &bob_t).await;
    assert_eq!(r["unread_count"], 0, "{r}");
    let m4 = say(&server, &alice_t, dm, "four").await;
    let (_, r) = server.get(&format!("/v1/rooms/{dm}"), &bob_t).await;
    assert_eq!(r["unread_count"], 1, "{r}");
    // Reading a deleted message is fine (it is still in the room).
    let (status, receipt) = server
        .post(&read, &bob_t, json!({ "message_id": m3 }))
        .await;
    assert_eq!(status, StatusCode::OK, "{receipt}");
    assert_eq!(receipt["unread_count"], 1, "{receipt}");
    // Bob answering reads everything before his answer.
    let m5 = say(&server, &bob_t, dm, "five").await;
    assert!(m5 > m4);
    let (_, r) = server.get(&format!("/v1/rooms/{dm}"), &bob_t).await;
    assert_eq!(r["unread_count"], 0, "{r}");
    assert_eq!(r["last_read_message_id"], m5, "{r}");
    let (_, r) = server.get(&format!("/v1/rooms/{dm}"), &alice_t).await;
    assert_eq!(r["unread_count"], 1, "{r}");

    // A message of another room, an unknown id, a bad body; API keys have no
    // read position.
    let (_, group_page) = server
        .get(&format!("/v1/rooms/{group}/messages"), &bob_t)
        .await;
    let group_msg = ids(&group_page)[0];
    for id in [group_msg, 999_999] {
        assert_error(
            "foreign message",
            server
                .post(&read, &bob_t, json!({ "message_id": id }))
                .await,
            StatusCode::NOT_FOUND,
            "not_found",
        );
    }
    let (status, err) = server
        .post(&read, &bob_t, json!({ "message_id": "latest" }))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    assert_eq!(err["error"]["field"], "message_id", "{err}");
    let (status, err) = server.post(&read, &bob_t, json!({})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    assert_eq!(err["error"]["field"], "message_id", "{err}");
    assert_error(
        "API key receipt",
        server
            .post(&read, &t.key, json!({ "message_id": m4 }))
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    server.stop().await;
}

#[actix_web::test]
async fn history_pages_newest_first_and_since_returns_what_was_missed() {
    let server = TestServer::start().await;
    let t = server.tenant("history").await;
    let (_, alice_t) = server.user(t.org, Role::Member).await;
    let (bob, bob_t) = server.user(t.org, Role::Member).await;
    let dm = room(
        &server,
        &alice_t,
        json!({ "kind": "direct", "member_ids": [bob.0] }),
        StatusCode::CREATED,
    )
    .await["id"]
        .as_i64()
        .unwrap();
    // Another room's messages interleave and must not show up.
    let other = room(
        &server,
        &alice_t,
        json!({ "kind": "group", "name": "noise" }),
        StatusCode::CREATED,
    )
    .await["id"]
        .as_i64()
        .unwrap();
    let mut sent = Vec::new();
    for n in 0..25 {
        let who = if n % 2 == 0 { &alice_t } else { &bob_t };
        sent.push(say(&server, who, dm, &format!("message {n}")).await);
        if n % 5 == 0 {
            say(&server, &alice_t, other, "noise").await;
        }
    }
    let history = format!("/v1/rooms/{dm}/messages");

    // Newest first, 10 at a time.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("{history}?limit=10&after={c}"),
            None => format!("{history}?limit=10"),
        };
        let (status, page) = server.get(&path, &bob_t).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        seen.extend(ids(&page));
        pages += 1;
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let mut newest_first = sent.clone();
    newest_first.reverse();
    assert_eq!(seen, newest_first);

    // A client that saw up to message 5 catches up, oldest first, in pages.
    let mut missed = Vec::new();
    let mut since = sent[4];
    loop {
        let (status, page) = server
            .get(&format!("{history}?since={since}&limit=8"), &alice_t)
            .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        missed.extend(ids(&page));
        match page["next_cursor"].as_str() {
            Some(c) => since = c.parse().unwrap(),
            None => break,
        }
    }
    assert_eq!(missed, sent[5..].to_vec());
    let (_, page) = server.get(&format!("{history}?since=0"), &alice_t).await;
    assert_eq!(ids(&page), sent[..20].to_vec(), "default page of 20");
    let (_, page) = server
        .get(&format!("{history}?since={}", sent[24]), &alice_t)
        .await;
    assert!(ids(&page).is_empty(), "{page}");
    assert_eq!(page["next_cursor"], Value::Null, "{page}");
    // Edits and deletes keep a message's place.
    let (status, _) = server
        .delete(&format!("{history}/{}", sent[10]), &alice_t)
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, page) = server
        .get(&format!("{history}?since={}&limit=1", sent[9]), &bob_t)
        .await;
    assert_eq!(page["data"][0]["id"], sent[10], "{page}");
    assert_eq!(page["data"][0]["deleted"], true, "{page}");

    for (query, status, error) in [
        (
            "since=abc",
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            "since=-1",
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            "since=1&after=5",
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            "limit=0",
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            "since=1&limit=101",
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            "after=x",
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        ("bogus=1", StatusCode::BAD_REQUEST, "invalid_query"),
    ] {
        assert_error(
            query,
            server.get(&format!("{history}?{query}"), &alice_t).await,
            status,
            error,
        );
    }
    server.stop().await;
}

/// A request: method, path, optional JSON body.
type Probe = (Method, String, Option<Value>);

const B_ROOM_NAME: &str = "bravo war room 4e1d";
const B_TEXT: &str = "bravo secret chat 77aa";

#[actix_web::test]
async fn non_members_and_other_organizations_get_404_and_session_tokens_403() {
    let server = TestServer::start().await;
    let a = server.tenant("alpha").await;
    let b = server.tenant("bravo").await;
    let (_, a_admin_t) = server.user(a.org, Role::Admin).await;
    let (a_member, a_member_t) = server.user(a.org, Role::Member).await;
    let (b_user, b_user_t) = server.user(b.org, Role::Member).await;
    let (b_other, _) = server.user(b.org, Role::Member).await;

    let b_room = room(
        &server,
        &b_user_t,
        json!({ "kind": "group", "name": B_ROOM_NAME, "member_ids": [b_other.0] }),
        StatusCode::CREATED,
    )
    .await["id"]
        .as_i64()
        .unwrap();
    let b_msg = say(&server, &b_user_t, b_room, B_TEXT).await;
    // A's own room, which A's organization admin is not a member of.
    let a_room = room(
        &server,
        &a_member_t,
        json!({ "kind": "group", "name": "alpha private" }),
        StatusCode::CREATED,
    )
    .await["id"]
        .as_i64()
        .unwrap();
    let a_msg = say(&server, &a_member_t, a_room, "alpha words").await;

    let probes = |room: i64, msg: i64, user: i64| -> Vec<Probe> {
        vec![
            (Method::GET, format!("/v1/rooms/{room}"), None),
            (Method::GET, format!("/v1/rooms/{room}/members"), None),
            (
                Method::POST,
                format!("/v1/rooms/{room}/members"),
                Some(json!({ "user_id": a_member.0 })),
            ),
            (
                Method::DELETE,
                format!("/v1/rooms/{room}/members/{user}"),
                None,
            ),
            (Method::GET, format!("/v1/rooms/{room}/messages"), None),
            (
                Method::GET,
                format!("/v1/rooms/{room}/messages?since=0"),
                None,
            ),
            (
                Method::POST,
                format!("/v1/rooms/{room}/messages"),
                Some(json!({ "body": "intrusion" })),
            ),
            (
                Method::PATCH,
                format!("/v1/rooms/{room}/messages/{msg}"),
                Some(json!({ "body": "defaced" })),
            ),
            (
                Method::DELETE,
                format!("/v1/rooms/{room}/messages/{msg}"),
                None,
            ),
            (
                Method::POST,
                format!("/v1/rooms/{room}/read"),
                Some(json!({ "message_id": msg })),
            ),
        ]
    };
    let mut cases: Vec<(&str, &str, Vec<Probe>)> = vec![
        (
            "A's key on B's room",
            a.key.as_str(),
            probes(b_room, b_msg, b_user.0),
        ),
        (
            "A's admin on B's room",
            a_admin_t.as_str(),
            probes(b_room, b_msg, b_user.0),
        ),
        (
            "A's admin, not a member, on A's room",
            a_admin_t.as_str(),
            probes(a_room, a_msg, a_member.0),
        ),
    ];
    // A message id of another org inside one's own room.
    cases.push((
        "A's member: B's message in A's room",
        a_member_t.as_str(),
        vec![
            (
                Method::PATCH,
                format!("/v1/rooms/{a_room}/messages/{b_msg}"),
                Some(json!({ "body": "x" })),
            ),
            (
                Method::DELETE,
                format!("/v1/rooms/{a_room}/messages/{b_msg}"),
                None,
            ),
            (
                Method::POST,
                format!("/v1/rooms/{a_room}/read"),
                Some(json!({ "message_id": b_msg })),
            ),
            (
                Method::POST,
                format!("/v1/rooms/{a_room}/members"),
                Some(json!({ "user_id": b_user.0 })),
            ),
            (
                Method::POST,
                "/v1/rooms".into(),
                Some(json!({ "kind": "direct", "member_ids": [b_user.0] })),
            ),
            (
                Method::POST,
                "/v1/rooms".into(),
                Some(json!({ "kind": "group", "name": "g", "member_ids": [b_user.0] })),
            ),
        ],
    ));
    for (who, token, probes) in cases {
        for (method, path, body) in probes {
            let (status, reply) = server.call(method.clone(), &path, Some(token), body).await;
            assert_eq!(
                status,
                StatusCode::NOT_FOUND,
                "{who}: {method} {path}: {reply}"
            );
            assert_eq!(code(&reply), "not_found", "{who}: {method} {path}: {reply}");
            let text = reply.to_string();
            assert!(
                !text.contains(B_ROOM_NAME) && !text.contains(B_TEXT),
                "{who}: {method} {path} leaks: {text}"
            );
        }
    }
    // Lists hold only one's own rooms.
    for token in [&a.key, &a_admin_t, &a_member_t] {
        let (_, page) = server.get("/v1/rooms?limit=100", token).await;
        assert!(!ids(&page).contains(&b_room), "{page}");
        assert!(!page.to_string().contains(B_ROOM_NAME), "{page}");
    }
    let (_, page) = server.get("/v1/rooms", &a_admin_t).await;
    assert!(ids(&page).is_empty(), "{page}");
    // B's room is untouched.
    let (_, page) = server
        .get(&format!("/v1/rooms/{b_room}/messages"), &b_user_t)
        .await;
    assert_eq!(ids(&page), vec![b_msg], "{page}");
    assert_eq!(page["data"][0]["body"], B_TEXT, "{page}");
    let (_, members) = server
        .get(&format!("/v1/rooms/{b_room}/members"), &b_user_t)
        .await;
    assert_eq!(members["data"].as_array().unwrap().len(), 2, "{members}");

    // Session join tokens reach no room route.
    let assistant = server.assistant(&a.key, "helper").await;
    let (_, session_t) = server.session(&a.key, assistant).await;
    for (method, path) in [
        (Method::GET, "/v1/rooms".to_owned()),
        (Method::GET, format!("/v1/rooms/{a_room}")),
        (Method::GET, format!("/v1/rooms/{a_room}/messages")),
    ] {
        assert_error(
            &path,
            server.call(method, &path, Some(&session_t), None).await,
            StatusCode::FORBIDDEN,
            "forbidden",
        );
    }
    server.stop().await;
}
