//! The holes a hostile client found (issue 13), each closed and kept closed:
//! the session socket's message rate, strange HTTP methods in the metrics,
//! slow bodies, unknown fields on `end-session`, the HTTP layer's own error
//! answers, client-supplied hosts in the session URLs, concurrent joins and
//! creations on Postgres, the OpenAPI document's enums and 405s.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use awc::ws::{Frame, Message};
use common::TestServer;
use common::voice::{Socket, call_with, connect, messages};
use futures_util::{SinkExt, StreamExt};
use palaver::model::Transport;
use palaver::store;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn send_text(socket: &mut Socket, value: Value) {
    socket
        .send(Message::Text(value.to_string().into()))
        .await
        .unwrap();
}

/// The JSON text frames that arrive within `wait` (or until the socket
/// closes).
async fn events_within(socket: &mut Socket, wait: Duration) -> Vec<Value> {
    let mut events = Vec::new();
    let until = tokio::time::Instant::now() + wait;
    while let Ok(Some(frame)) = tokio::time::timeout_at(until, socket.next()).await {
        match frame {
            Ok(Frame::Text(bytes)) => events.push(serde_json::from_slice(&bytes).unwrap()),
            Ok(Frame::Close(_)) | Err(_) => break,
            Ok(_) => {}
        }
    }
    events
}

fn of_type<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == kind).collect()
}

#[actix_web::test]
async fn a_flood_of_user_messages_on_a_session_socket_is_rate_limited() {
    let call = call_with(vec![Ok("Sure.".into())], json!({}), |s| {
        s.limits.requests_per_second = 2;
        s.limits.burst = 5;
    })
    .await;
    let mut socket = connect(&call, "&audio=false").await;
    for i in 0..60 {
        send_text(
            &mut socket,
            json!({"type": "user-message", "text": format!("m{i}")}),
        )
        .await;
    }
    let events = events_within(&mut socket, Duration::from_secs(2)).await;
    let limited = of_type(&events, "error")
        .into_iter()
        .filter(|e| e["code"] == "rate_limited")
        .count();
    assert!(limited >= 50, "{limited} of 60 refused: {events:?}");
    let stored = messages(&call)
        .await
        .into_iter()
        .filter(|m| m["role"] == "user")
        .count();
    assert!(stored <= 10, "{stored} user messages stored from the flood");

    // The bucket refills: a message a little later is taken.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    send_text(
        &mut socket,
        json!({"type": "user-message", "text": "later"}),
    )
    .await;
    let events = events_within(&mut socket, Duration::from_secs(3)).await;
    assert!(
        of_type(&events, "transcript.final")
            .iter()
            .any(|e| e["text"] == "later"),
        "{events:?}"
    );
    assert!(of_type(&events, "error").is_empty(), "{events:?}");
}

#[actix_web::test]
async fn end_session_with_an_unknown_field_is_refused_and_the_call_goes_on() {
    let call = call_with(vec![Ok("Sure.".into())], json!({}), |_| {}).await;
    let mut socket = connect(&call, "&audio=false").await;
    send_text(&mut socket, json!({"type": "end-session", "x": 1})).await;
    let events = events_within(&mut socket, Duration::from_millis(700)).await;
    let errors = of_type(&events, "error");
    assert_eq!(errors.len(), 1, "{events:?}");
    assert_eq!(errors[0]["code"], "invalid_message");
    assert!(
        errors[0]["message"]
            .as_str()
            .unwrap()
            .contains("unknown field"),
        "{events:?}"
    );
    assert_eq!(common::voice::session(&call).await["status"], "active");

    send_text(&mut socket, json!({"type": "end-session"})).await;
    let events = events_within(&mut socket, Duration::from_secs(5)).await;
    assert_eq!(of_type(&events, "session.ended").len(), 1, "{events:?}");
    // The end is stored just after the event goes out.
    assert_eq!(
        common::voice::wait_ended(&call).await["end_reason"],
        "end-session"
    );
}

#[actix_web::test]
async fn made_up_http_methods_share_one_metric_label() {
    let server = TestServer::start().await;
    for i in 0..40 {
        let method = Method::from_bytes(format!("BREW{i}").as_bytes()).unwrap();
        let reply = server
            .client
            .request(method, server.url(&format!("/made-up-{i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), StatusCode::NOT_FOUND);
    }
    let text = server.metrics_text().await;
    assert!(!text.contains("BREW"), "a made-up method became a label");
    assert!(
        !text.contains("made-up"),
        "an unmatched path became a label"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("palaver_http_requests_total")
                && l.contains("method=\"other\"")
                && l.contains("route=\"unmatched\"")
                && l.ends_with(" 40")),
        "{text}"
    );
    server.stop().await;
}

#[actix_web::test]
async fn metrics_say_how_much_memory_sqlite_holds() {
    let server = TestServer::start().await;
    let text = server.metrics_text().await;
    let gauge = text
        .lines()
        .find(|l| l.starts_with("palaver_sqlite_memory_bytes "));
    if server.state.db.backend() == palaver::db::Backend::Sqlite {
        // Its page caches and schema, at least some kilobytes once the
        // migrations ran and the organization table was read.
        let bytes: f64 = gauge
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no palaver_sqlite_memory_bytes in {text}"));
        assert!(bytes > 10_000.0, "{bytes}");
    } else {
        assert_eq!(gauge, None, "SQLite memory reported on Postgres");
    }
    server.stop().await;
}

/// Sends `head` (and then `trickle`, a byte at a time every `every`) on a
/// raw connection; returns the whole response and whether the server
/// closed the connection after it, reading for at most `wait`.
async fn raw_exchange(
    addr: SocketAddr,
    head: &[u8],
    trickle: usize,
    every: Duration,
    wait: Duration,
) -> (String, bool) {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(head).await.unwrap();
    let (mut reader, mut writer) = tcp.into_split();
    let trickler = tokio::spawn(async move {
        for _ in 0..trickle {
            tokio::time::sleep(every).await;
            if writer.write_all(b" ").await.is_err() {
                break;
            }
        }
        writer
    });
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    let until = tokio::time::Instant::now() + wait;
    let closed = loop {
        match tokio::time::timeout_at(until, reader.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => response.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    trickler.abort();
    (String::from_utf8_lossy(&response).into_owned(), closed)
}

/// The JSON body of a raw HTTP response.
fn json_body(response: &str) -> Value {
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no complete response: {response:?}"));
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{response}"
    );
    serde_json::from_str(body).unwrap_or_else(|_| panic!("body is not JSON: {response}"))
}

#[actix_web::test]
async fn a_body_trickled_a_byte_at_a_time_is_cut_off_with_408() {
    let server = TestServer::start_with(|s| s.server.body_read_timeout_ms = 600).await;
    // An unauthenticated route, as the attacker used.
    let head = b"POST /v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                 Content-Length: 200000\r\n\r\n{";
    let (response, closed) = raw_exchange(
        server.addr,
        head,
        50,
        Duration::from_millis(150),
        Duration::from_secs(6),
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    assert_eq!(json_body(&response)["error"]["code"], "body_timeout");
    assert!(closed, "the connection stayed open after the 408");
    server.stop().await;
}

#[actix_web::test]
async fn requests_the_http_layer_refuses_get_the_json_error_shape() {
    let server = TestServer::start().await;
    let many_headers: String = (0..120).map(|i| format!("X-Filler-{i}: {i}\r\n")).collect();
    let cases = [
        (
            "a Content-Length that is not a number",
            "POST /v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n".to_owned(),
            "400",
            "malformed_request",
        ),
        (
            "Content-Length with Transfer-Encoding",
            "POST /v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\
             Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                .to_owned(),
            "400",
            "malformed_request",
        ),
        (
            "too many headers",
            format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{many_headers}\r\n"),
            "431",
            "headers_too_large",
        ),
        (
            "a malformed request line",
            "GET /healthz HTTP/9.9 nonsense\r\nHost: x\r\n\r\n".to_owned(),
            "400",
            "malformed_request",
        ),
    ];
    for (what, request, status, code) in cases {
        let (response, _) = raw_exchange(
            server.addr,
            request.as_bytes(),
            0,
            Duration::ZERO,
            Duration::from_secs(5),
        )
        .await;
        assert!(
            response.starts_with(&format!("HTTP/1.1 {status}")),
            "{what}: {response}"
        );
        let body = json_body(&response);
        assert_eq!(body["error"]["code"], code, "{what}: {response}");
        assert!(body["error"]["message"].as_str().is_some(), "{what}");
    }
    // A well-formed request on a fresh connection is served as usual.
    let (response, _) = raw_exchange(
        server.addr,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        0,
        Duration::ZERO,
        Duration::from_secs(5),
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    server.stop().await;
}

async fn created_urls(server: &TestServer, key: &str, assistant: i64) -> (String, String) {
    let reply = server
        .client
        .post(server.url("/v1/sessions"))
        .bearer_auth(key)
        .header("Host", "evil.example")
        .header("X-Forwarded-Host", "evil.example")
        .header("X-Forwarded-Proto", "https")
        .header("Forwarded", "host=evil.example;proto=https")
        .json(&json!({ "assistant_id": assistant }))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::CREATED);
    let body: Value = reply.json().await.unwrap();
    (
        body["ws_url"].as_str().unwrap().to_owned(),
        body["webrtc_url"].as_str().unwrap().to_owned(),
    )
}

#[actix_web::test]
async fn session_urls_ignore_a_clients_host_headers_unless_it_is_a_trusted_proxy() {
    let server = TestServer::start().await;
    let t = server.tenant("hosts").await;
    let assistant = server.assistant(&t.key, "a").await;
    let (ws_url, webrtc_url) = created_urls(&server, &t.key, assistant).await;
    assert!(
        ws_url.starts_with(&format!("ws://{}/", server.addr)),
        "{ws_url}"
    );
    assert!(
        webrtc_url.starts_with(&format!("http://{}/", server.addr)),
        "{webrtc_url}"
    );
    server.stop().await;

    let proxied = TestServer::start_with(|s| {
        s.server.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    })
    .await;
    let t = proxied.tenant("hosts").await;
    let assistant = proxied.assistant(&t.key, "a").await;
    let (ws_url, webrtc_url) = created_urls(&proxied, &t.key, assistant).await;
    assert!(ws_url.starts_with("wss://evil.example/"), "{ws_url}");
    assert!(
        webrtc_url.starts_with("https://evil.example/"),
        "{webrtc_url}"
    );
    proxied.stop().await;
}

#[actix_web::test]
async fn concurrent_creations_never_pass_the_open_session_limit() {
    let server = TestServer::start_with(|s| s.limits.max_open_sessions_per_org = 3).await;
    // Over the API: the limit answers 429.
    let t = server.tenant("burst").await;
    let assistant = server.assistant(&t.key, "a").await;
    let attempts = (0..12).map(|_| {
        server.call(
            Method::POST,
            "/v1/sessions",
            Some(&t.key),
            Some(json!({ "assistant_id": assistant })),
        )
    });
    let statuses: Vec<StatusCode> = futures_util::future::join_all(attempts)
        .await
        .into_iter()
        .map(|(status, _)| status)
        .collect();
    let created = statuses
        .iter()
        .filter(|s| **s == StatusCode::CREATED)
        .count();
    assert_eq!(created, 3, "{statuses:?}");
    assert!(
        statuses
            .iter()
            .all(|s| *s == StatusCode::CREATED || *s == StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
    // The store itself, as hard as the pool allows, organization after
    // organization.
    for round in 0..10 {
        let t = server.tenant(&format!("burst-{round}")).await;
        let assistant = palaver::ids::AssistantId(server.assistant(&t.key, "a").await);
        let org = t.org;
        let creations = (0..8).map(|_| {
            server.state.db.run(move |c| {
                let new = store::sessions::NewSession {
                    organization_id: org,
                    assistant_id: assistant,
                    created_by_user_id: None,
                    status: palaver::model::SessionStatus::Created,
                    transport: None,
                    created_at: store::now(),
                    metadata: "{}",
                    metrics: "{}",
                };
                let limit = store::sessions::OpenSessionLimit {
                    max_open: 3,
                    created_after: store::now() - chrono::TimeDelta::minutes(10),
                };
                store::sessions::create(c, &new, limit)
            })
        });
        let results = futures_util::future::join_all(creations).await;
        let created = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(created, 3, "round {round}: {results:?}");
    }
    server.stop().await;
}

#[actix_web::test]
async fn concurrent_joins_of_one_session_activate_it_once() {
    let server = TestServer::start().await;
    let t = server.tenant("joins").await;
    let assistant = server.assistant(&t.key, "a").await;
    let org = t.org;
    for round in 0..15 {
        let (id, _) = server.session(&t.key, assistant).await;
        let id = palaver::ids::SessionId(id);
        let joins = (0..6).map(|_| {
            server
                .state
                .db
                .run(move |c| store::sessions::activate(c, org, id, Transport::Websocket))
        });
        let results = futures_util::future::join_all(joins).await;
        let joined = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(joined, 1, "round {round}: {results:?}");
    }
    server.stop().await;
}

#[actix_web::test]
async fn the_openapi_document_names_enum_values_as_the_server_speaks_them() {
    let server = TestServer::start().await;
    let (status, doc) = server
        .call(Method::GET, "/v1/openapi.json", None, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    let spoken = |all: Vec<&str>| all.into_iter().map(Value::from).collect::<Vec<_>>();
    use palaver::model::*;
    let expected = [
        (
            "Role",
            spoken(Role::ALL.iter().map(|v| v.as_str()).collect()),
        ),
        (
            "SessionStatus",
            spoken(SessionStatus::ALL.iter().map(|v| v.as_str()).collect()),
        ),
        (
            "Transport",
            spoken(Transport::ALL.iter().map(|v| v.as_str()).collect()),
        ),
        (
            "LlmProvider",
            spoken(LlmProvider::ALL.iter().map(|v| v.as_str()).collect()),
        ),
        (
            "RoomKind",
            spoken(RoomKind::ALL.iter().map(|v| v.as_str()).collect()),
        ),
        (
            "MessageRole",
            spoken(MessageRole::ALL.iter().map(|v| v.as_str()).collect()),
        ),
    ];
    for (name, values) in expected {
        let schema = schemas
            .get(name)
            .unwrap_or_else(|| panic!("no schema {name}"));
        assert_eq!(schema["enum"].as_array().unwrap(), &values, "{name}");
    }
    // And no other enum of the document is spelt in Rust either.
    for (name, schema) in schemas {
        for value in schema["enum"].as_array().into_iter().flatten() {
            let text = value.as_str().unwrap_or_default();
            assert!(
                !text.chars().next().is_some_and(char::is_uppercase),
                "{name}: {text}"
            );
        }
    }
    server.stop().await;
}

#[actix_web::test]
async fn a_known_path_with_the_wrong_method_is_405_with_allow() {
    let server = TestServer::start().await;
    let t = server.tenant("methods").await;
    for (method, path, allowed) in [
        (Method::POST, "/healthz", vec!["GET"]),
        (Method::DELETE, "/v1/sessions", vec!["GET", "POST"]),
        (Method::PUT, "/v1/sessions/7", vec!["GET"]),
        (Method::POST, "/v1/openapi.json", vec!["GET"]),
        // Matches `PATCH /v1/rooms/{id}`'s pattern, but `ws` is no id.
        (Method::PATCH, "/v1/rooms/ws", vec!["GET"]),
    ] {
        let reply = server
            .client
            .request(method.clone(), server.url(path))
            .bearer_auth(&t.key)
            .send()
            .await
            .unwrap();
        assert_eq!(
            reply.status(),
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}"
        );
        let allow = reply.headers()["allow"].to_str().unwrap().to_owned();
        for m in allowed {
            assert!(allow.contains(m), "{method} {path}: Allow: {allow}");
        }
        let body: Value = reply.json().await.unwrap();
        assert_eq!(body["error"]["code"], "method_not_allowed");
    }
    let (status, body) = server
        .call(Method::GET, "/v1/nothing-here", None, None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    server.stop().await;
}

#[actix_web::test]
async fn a_whole_number_written_as_a_float_is_the_integer_json_says_it_is() {
    let server = TestServer::start().await;
    let t = server.tenant("numbers").await;
    let assistant = server.assistant(&t.key, "a").await;
    let (status, body) = server
        .post(
            "/v1/sessions",
            &t.key,
            json!({ "assistant_id": assistant as f64 }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = server
        .post("/v1/sessions", &t.key, json!({ "assistant_id": 2.5 }))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["field"], "assistant_id", "{body}");
    server.stop().await;
}
