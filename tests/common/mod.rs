//! Test harness: a real Palaver server on 127.0.0.1:0 with its own database:
//! a fresh SQLite file, or a fresh Postgres database when
//! `PALAVER_TEST_DATABASE_URL` names a Postgres server (`make test` runs the
//! suite both ways).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;

use actix_web::web;
use diesel::{Connection, PgConnection, RunQueryDsl};
use palaver::api::api_keys::issue_key;
use palaver::api::users::create_user_in;
use palaver::config::{Secret, Settings};
use palaver::ids::{OrgId, UserId};
use palaver::model::Role;
use palaver::server::{self, Running};
use palaver::state::AppState;
use palaver::store;
use reqwest::{Method, StatusCode};
use serde_json::Value;

pub mod rooms;
pub mod voice;

pub const JWT_SECRET: &str = "palaver-test-secret-0123456789abcdef";

/// Database settings for one test: a new Postgres database when the suite
/// runs against Postgres, else a SQLite file in `dir`.
pub fn test_database(dir: &std::path::Path) -> palaver::config::DatabaseSettings {
    let mut db = palaver::config::DatabaseSettings::default();
    match std::env::var("PALAVER_TEST_DATABASE_URL") {
        Ok(base) if !base.is_empty() => db.url = Some(Secret::new(fresh_postgres_database(&base))),
        _ => db.sqlite_path = dir.join("palaver.db"),
    }
    db.pool_size = 4;
    db
}

fn fresh_postgres_database(base: &str) -> String {
    let name = format!(
        "palaver_test_{}",
        palaver::auth::hex(&palaver::auth::random_bytes::<6>())
    );
    let mut admin = PgConnection::establish(base).expect("connect to the test Postgres server");
    diesel::sql_query(format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .expect("create db");
    let (server, _) = base.rsplit_once('/').expect("database URL has a path");
    format!("{server}/{name}")
}

#[derive(Debug)]
pub struct TestServer {
    pub addr: SocketAddr,
    pub base: String,
    pub client: reqwest::Client,
    pub state: web::Data<AppState>,
    running: Running,
    _dir: tempfile::TempDir,
}

/// An organization with an API key (acts as admin).
#[derive(Debug, Clone)]
pub struct Tenant {
    pub org: OrgId,
    pub key: String,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut Settings)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut settings = Settings::default();
        settings.server.bind = "127.0.0.1:0".parse().unwrap();
        settings.server.workers = 1;
        settings.server.shutdown_timeout_s = 1;
        settings.auth.jwt_secret = Some(Secret::new(JWT_SECRET));
        settings.limits.requests_per_second = 10_000;
        settings.limits.burst = 10_000;
        let db_dir = dir.path().to_owned();
        settings.database = tokio::task::spawn_blocking(move || test_database(&db_dir))
            .await
            .unwrap();
        tweak(&mut settings);
        let state = server::prepare(settings).await.expect("server state");
        let running = server::start(state.clone()).expect("server starts");
        let addr = running.addr;
        TestServer {
            addr,
            base: format!("http://{addr}"),
            // A hung server fails the test instead of hanging the suite.
            client: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(30))
                .build()
                .unwrap(),
            state,
            running,
            _dir: dir,
        }
    }

    pub async fn stop(&self) {
        self.running.stop().await;
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A new organization and an API key for it, made the way the CLI does.
    pub async fn tenant(&self, name: &str) -> Tenant {
        let name = name.to_owned();
        let org = self
            .state
            .db
            .run(move |c| store::orgs::create(c, &name))
            .await
            .unwrap();
        let key = issue_key(&self.state.db, org.id, "test".into(), None)
            .await
            .unwrap();
        Tenant {
            org: org.id,
            key: key.key,
        }
    }

    /// A user of `org` with `role`, and an access token for them.
    pub async fn user(&self, org: OrgId, role: Role) -> (UserId, String) {
        let email = format!(
            "{}-{}@example.com",
            role,
            palaver::auth::hex(&palaver::auth::random_bytes::<4>())
        );
        let user = create_user_in(
            &self.state.db,
            org,
            &email,
            None,
            Secret::new("correct horse battery"),
            role,
        )
        .await
        .unwrap();
        let (token, _) = self.state.tokens.issue_access(org, user.id, role);
        (user.id, token)
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.client.request(method, self.url(path));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.expect("request sent");
        let status = resp.status();
        let text = resp.text().await.expect("body read");
        let json = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, json)
    }

    /// The `/metrics` text (Prometheus exposition).
    pub async fn metrics_text(&self) -> String {
        let reply = self.client.get(self.url("/metrics")).send().await;
        reply
            .expect("/metrics answers")
            .text()
            .await
            .expect("/metrics text")
    }

    /// Waits (bounded, 5 s) until `/readyz` says `ready`: with Redis, the
    /// bus subscription comes up just after the start.
    pub async fn wait_ready(&self) {
        let mut ready = Value::Null;
        for _ in 0..50 {
            ready = self.get("/readyz", "").await.1;
            if ready["status"] == "ready" {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("node not ready: {ready}");
    }

    pub async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(token), Some(body)).await
    }

    pub async fn patch(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::PATCH, path, Some(token), Some(body))
            .await
    }

    pub async fn delete(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.call(Method::DELETE, path, Some(token), None).await
    }

    /// Creates an assistant and returns its id.
    pub async fn assistant(&self, token: &str, name: &str) -> i64 {
        let (status, body) = self
            .post("/v1/assistants", token, serde_json::json!({ "name": name }))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["id"].as_i64().unwrap()
    }

    /// Creates a session of `assistant`; returns (session id, join token).
    pub async fn session(&self, token: &str, assistant: i64) -> (i64, String) {
        let (status, body) = self
            .post(
                "/v1/sessions",
                token,
                serde_json::json!({ "assistant_id": assistant }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        (
            body["id"].as_i64().unwrap(),
            body["token"].as_str().unwrap().to_owned(),
        )
    }
}

/// The throw-away Redis of `make test` (`PALAVER_TEST_REDIS_URL`), or
/// `None` after saying that `test` is skipped without it.
pub fn test_redis_url(test: &str) -> Option<String> {
    match std::env::var("PALAVER_TEST_REDIS_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            eprintln!(
                "SKIPPED {test}: PALAVER_TEST_REDIS_URL is not set \
                 (start one with scripts/test-redis.sh start)"
            );
            None
        }
    }
}

/// The value of an unlabelled Prometheus metric in a `/metrics` text (0
/// when absent: a counter appears on its first increment).
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.split(' ').next() == Some(name))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

/// The error code of an error body.
pub fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<no error code>")
}
