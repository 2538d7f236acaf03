//! Assistants, sessions and transcripts over real HTTP against a real
//! database (SQLite, or Postgres under `make test`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{TestServer, code};
use palaver::ids::SessionId;
use palaver::model::MessageRole;
use palaver::store::messages::{NewMessage, TurnLatency};
use reqwest::StatusCode;
use serde_json::json;

#[actix_web::test]
async fn assistant_crud_round_trips_every_field() {
    let server = TestServer::start().await;
    let t = server.tenant("acme").await;
    let (status, created) = server
        .post(
            "/v1/assistants",
            &t.key,
            json!({
                "name": "Front desk",
                "first_message": "Hello, Grand Hotel, how can I help?",
                "first_message_interruptible": false,
                "system_prompt": "You are the front desk of the Grand Hotel.",
                "llm": {"provider": "openai", "model": "llama-3.1-8b", "base_url": "http://127.0.0.1:9/v1", "temperature": 0.2, "max_tokens": 120},
                "stt": {"provider": "deepgram", "language": "en-US"},
                "tts": {"provider": "elevenlabs", "voice_id": "voice-123", "settings": {"stability": 0.5}},
                "interruptions_enabled": true,
                "min_interruption_ms": 250,
                "min_interruption_words": 2,
                "end_of_turn_ms": 700,
                "background_denoising": true,
                "idle_timeout_s": 45,
                "max_duration_s": 900,
                "metadata": {"crm_id": "42"}
            }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_i64().unwrap();
    assert_eq!(created["llm"]["base_url"], "http://127.0.0.1:9/v1");
    assert_eq!(
        created["stt"]["model"], "nova-3",
        "deepgram's default model is filled in"
    );
    assert_eq!(created["tts"]["settings"]["stability"], 0.5);
    assert_eq!(created["metadata"]["crm_id"], "42");
    assert_eq!(created["first_message_interruptible"], false);

    let (status, fetched) = server.get(&format!("/v1/assistants/{id}"), &t.key).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(fetched, created, "GET returns exactly what POST stored");

    let (status, patched) = server
        .patch(
            &format!("/v1/assistants/{id}"),
            &t.key,
            json!({"first_message": null, "llm": {"temperature": 1.1}, "end_of_turn_ms": 400}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{patched}");
    assert_eq!(patched["first_message"], serde_json::Value::Null);
    assert_eq!(patched["llm"]["temperature"], 1.1);
    assert_eq!(
        patched["llm"]["model"], "llama-3.1-8b",
        "fields not in the patch are kept"
    );
    assert_eq!(patched["end_of_turn_ms"], 400);

    let (status, _) = server.delete(&format!("/v1/assistants/{id}"), &t.key).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = server.get(&format!("/v1/assistants/{id}"), &t.key).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(code(&body), "not_found");
    let (status, _) = server.delete(&format!("/v1/assistants/{id}"), &t.key).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "deleting twice is a 404");
}

#[actix_web::test]
async fn assistant_validation_names_the_field() {
    let server = TestServer::start().await;
    let t = server.tenant("acme").await;
    for (body, field) in [
        (
            json!({"name": "a", "llm": {"temperature": 2.1}}),
            "llm.temperature",
        ),
        (
            json!({"name": "a", "llm": {"provider": "gpt"}}),
            "llm.provider",
        ),
        (
            json!({"name": "a", "tts": {"provider": "fish"}}),
            "tts.provider",
        ),
        (json!({"name": "a", "max_duration_s": 0}), "max_duration_s"),
        (json!({"name": "x".repeat(101)}), "name"),
    ] {
        let (status, err) = server.post("/v1/assistants", &t.key, body.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body} -> {err}");
        assert_eq!(err["error"]["field"], field, "{body} -> {err}");
    }
}

#[actix_web::test]
async fn lists_page_newest_first_without_gaps_or_repeats() {
    let server = TestServer::start().await;
    let t = server.tenant("acme").await;
    let mut ids = Vec::new();
    for i in 0..7 {
        ids.push(server.assistant(&t.key, &format!("a{i}")).await);
    }
    ids.reverse();
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/assistants?limit=3&after={c}"),
            None => "/v1/assistants?limit=3".to_owned(),
        };
        let (status, page) = server.get(&path, &t.key).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let data = page["data"].as_array().unwrap();
        assert!(data.len() <= 3);
        seen.extend(data.iter().map(|a| a["id"].as_i64().unwrap()));
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, ids);
}

#[actix_web::test]
async fn session_create_hands_out_a_join_token_and_urls() {
    let server = TestServer::start().await;
    let t = server.tenant("acme").await;
    let assistant = server.assistant(&t.key, "a").await;
    let (status, created) = server
        .post(
            "/v1/sessions",
            &t.key,
            json!({"assistant_id": assistant, "transport": "webrtc", "metadata": {"caller": "+15550100"}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_i64().unwrap();
    assert_eq!(created["status"], "created");
    assert_eq!(created["transport"], "webrtc");
    assert_eq!(created["metadata"]["caller"], "+15550100");
    let host = server.addr.to_string();
    assert_eq!(
        created["webrtc_url"],
        format!("http://{host}/v1/sessions/{id}/webrtc")
    );
    assert_eq!(
        created["ws_url"],
        format!("ws://{host}/v1/sessions/{id}/ws")
    );

    // The join token reads its own session, and nothing else.
    let token = created["token"].as_str().unwrap();
    let (status, own) = server.get(&format!("/v1/sessions/{id}"), token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(own["id"], id);
    let (other, _) = server.session(&t.key, assistant).await;
    let (status, _) = server.get(&format!("/v1/sessions/{other}"), token).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = server.get("/v1/sessions", token).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
}

#[actix_web::test]
async fn ending_a_session_records_why_and_twice_is_a_conflict() {
    let server = TestServer::start().await;
    let t = server.tenant("acme").await;
    let assistant = server.assistant(&t.key, "a").await;
    let (id, _) = server.session(&t.key, assistant).await;
    let (status, ended) = server
        .post(&format!("/v1/sessions/{id}/end"), &t.key, json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{ended}");
    assert_eq!(ended["status"], "ended");
    assert_eq!(ended["end_reason"], "ended-by-api");
    assert!(ended["ended_at"].is_string());
    let (status, again) = server
        .post(&format!("/v1/sessions/{id}/end"), &t.key, json!({}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(
        again["error"]["message"]
            .as_str()
            .unwrap()
            .contains("already ended"),
        "{again}"
    );
}

#[actix_web::test]
async fn session_list_filters_by_status_and_assistant() {
    let server = TestServer::start().await;
    let t = server.tenant("acme").await;
    let a = server.assistant(&t.key, "a").await;
    let b = server.assistant(&t.key, "b").await;
    let (a1, _) = server.session(&t.key, a).await;
    let (a2, _) = server.session(&t.key, a).await;
    let (b1, _) = server.session(&t.key, b).await;
    server
        .post(&format!("/v1/sessions/{a1}/end"), &t.key, json!({}))
        .await;

    let ids = |body: &serde_json::Value| -> Vec<i64> {
        body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_i64().unwrap())
            .collect()
    };
    let (_, all) = server.get("/v1/sessions", &t.key).await;
    assert_eq!(ids(&all), vec![b1, a2, a1]);
    let (_, of_a) = server
        .get(&format!("/v1/sessions?assistant_id={a}"), &t.key)
        .await;
    assert_eq!(ids(&of_a), vec![a2, a1]);
    let (_, open_a) = server
        .get(
            &format!("/v1/sessions?assistant_id={a}&status=created"),
            &t.key,
        )
        .await;
    assert_eq!(ids(&open_a), vec![a2]);
    let (_, ended) = server.get("/v1/sessions?status=ended", &t.key).await;
    assert_eq!(ids(&ended), vec![a1]);
}

#[actix_web::test]
async fn open_sessions_are_capped_per_organization() {
    let server = TestServer::start_with(|s| s.limits.max_open_sessions_per_org = 2).await;
    let t = server.tenant("acme").await;
    let assistant = server.assistant(&t.key, "a").await;
    let (first, _) = server.session(&t.key, assistant).await;
    server.session(&t.key, assistant).await;
    let (status, body) = server
        .post("/v1/sessions", &t.key, json!({"assistant_id": assistant}))
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(code(&body), "quota_exceeded");
    // Ending one frees a slot; another organization has its own quota.
    server
        .post(&format!("/v1/sessions/{first}/end"), &t.key, json!({}))
        .await;
    server.session(&t.key, assistant).await;
    let other = server.tenant("other").await;
    let other_assistant = server.assistant(&other.key, "a").await;
    server.session(&other.key, other_assistant).await;
}

#[actix_web::test]
async fn transcript_pages_in_order_with_heard_text_and_latency() {
    let server = TestServer::start().await;
    let t = server.tenant("acme").await;
    let assistant = server.assistant(&t.key, "a").await;
    let (id, token) = server.session(&t.key, assistant).await;
    let session = SessionId(id);
    for i in 1..=5 {
        server
            .state
            .db
            .run(move |c| {
                let content = format!("message {i}");
                palaver::store::messages::append(
                    c,
                    session,
                    &NewMessage {
                        role: if i % 2 == 0 {
                            MessageRole::Assistant
                        } else {
                            MessageRole::User
                        },
                        content: &content,
                        heard_text: (i == 4).then_some("message"),
                        interrupted: i == 4,
                        started_at: palaver::store::now(),
                        ended_at: None,
                        latency: TurnLatency {
                            voice_to_voice_ms: (i % 2 == 0).then_some(480 + i),
                            ..TurnLatency::default()
                        },
                    },
                )
            })
            .await
            .unwrap();
    }
    let (status, first) = server
        .get(&format!("/v1/sessions/{id}/messages?limit=3"), &token)
        .await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let seqs: Vec<i64> = first["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, vec![1, 2, 3]);
    let next = first["next_cursor"].as_str().unwrap();
    let (_, second) = server
        .get(
            &format!("/v1/sessions/{id}/messages?limit=3&after={next}"),
            &t.key,
        )
        .await;
    let rest = second["data"].as_array().unwrap();
    assert_eq!(rest.len(), 2);
    assert_eq!(second["next_cursor"], serde_json::Value::Null);
    let interrupted = &rest[0];
    assert_eq!(interrupted["seq"], 4);
    assert_eq!(interrupted["role"], "assistant");
    assert_eq!(interrupted["interrupted"], true);
    assert_eq!(interrupted["heard_text"], "message");
    assert_eq!(interrupted["latency"]["voice_to_voice_ms"], 484);
}
