//! The REST control-plane scenario: `clients` concurrent clients, each doing
//! its share of `iterations`, bounded by `max_duration`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::report::{OpStats, Report};

/// What each iteration does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RestScenario {
    /// `POST /v1/sessions`, then `POST /v1/sessions/{id}/end`.
    Sessions,
    /// `GET /v1/assistants?limit=20`.
    ListAssistants,
}

impl RestScenario {
    fn name(self) -> &'static str {
        match self {
            RestScenario::Sessions => "sessions",
            RestScenario::ListAssistants => "list-assistants",
        }
    }
}

#[derive(Debug, Clone)]
pub struct RestConfig {
    /// e.g. `http://127.0.0.1:8080`
    pub base_url: String,
    pub api_key: String,
    pub scenario: RestScenario,
    /// Iterations over all clients.
    pub iterations: u64,
    pub clients: usize,
    /// Stop starting iterations after this long.
    pub max_duration: Duration,
    /// Use this assistant; one is created when absent.
    pub assistant_id: Option<i64>,
}

/// Why a run could not start at all.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The HTTP client could not be built (TLS backend, resolver).
    #[error("cannot build the HTTP client: {0}")]
    Client(reqwest::Error),
    /// A request made before the run (creating or reading the assistant,
    /// the fake providers' stats) failed.
    #[error("setup request failed: {0}")]
    Setup(String),
    /// The configuration cannot describe a run (no callers, a share above 1).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// `/proc/<pid>` of the server could not be read.
    #[error("cannot sample the server process: {0}")]
    Sampler(std::io::Error),
}

/// The REST API with one credential; the voice scenario uses it too.
pub(crate) struct ApiClient {
    http: reqwest::Client,
    base: String,
    key: String,
}

impl ApiClient {
    /// `base` e.g. `http://127.0.0.1:8080`; `pool` idle connections kept.
    pub(crate) fn new(base: &str, key: &str, pool: usize) -> Result<Self, RunError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(pool)
            .build()
            .map_err(RunError::Client)?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            key: key.to_owned(),
        })
    }

    /// One timed request: `Ok((body, latency))` for 2xx, `Err(reason)`
    /// otherwise (`status 429 rate_limited`, `timeout`, `transport: …`).
    pub(crate) async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(Value, Duration), String> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.key);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let started = Instant::now();
        let response = req.send().await.map_err(|err| {
            if err.is_timeout() {
                "timeout".to_owned()
            } else {
                format!("transport: {err}")
            }
        })?;
        let status = response.status();
        let body = response.json::<Value>().await.unwrap_or(Value::Null);
        if status.is_success() {
            Ok((body, started.elapsed()))
        } else {
            let code = body["error"]["code"].as_str().unwrap_or("");
            Err(format!("status {} {code}", status.as_u16()))
        }
    }

    /// [`ApiClient::request`], recorded in `stats`.
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        stats: &mut OpStats,
    ) -> Option<Value> {
        match self.request(method, path, body).await {
            Ok((body, latency)) => {
                stats.record(latency);
                Some(body)
            }
            Err(reason) => {
                stats.fail(reason);
                None
            }
        }
    }
}

/// Runs the scenario and returns its report.
pub async fn run(config: RestConfig) -> Result<Report, RunError> {
    let client = std::sync::Arc::new(ApiClient::new(
        &config.base_url,
        &config.api_key,
        config.clients,
    )?);
    let assistant = match config.assistant_id {
        Some(id) => id,
        None => {
            let mut setup = OpStats::new();
            let created = client
                .send(
                    reqwest::Method::POST,
                    "/v1/assistants",
                    Some(json!({"name": "loadtest"})),
                    &mut setup,
                )
                .await
                .ok_or_else(|| RunError::Setup(format!("{:?}", setup.failures)))?;
            created["id"]
                .as_i64()
                .ok_or_else(|| RunError::Setup("no assistant id".into()))?
        }
    };
    let started = Instant::now();
    let deadline = started + config.max_duration;
    let clients = config.clients.max(1);
    let mut tasks = Vec::with_capacity(clients);
    for worker in 0..clients {
        let share = config.iterations / clients as u64
            + u64::from((worker as u64) < config.iterations % clients as u64);
        let client = client.clone();
        let scenario = config.scenario;
        tasks.push(tokio::spawn(async move {
            let mut ops: BTreeMap<&'static str, OpStats> = BTreeMap::new();
            for _ in 0..share {
                if Instant::now() >= deadline {
                    break;
                }
                match scenario {
                    RestScenario::Sessions => {
                        let stats = ops.entry("create-session").or_default();
                        let created = client
                            .send(
                                reqwest::Method::POST,
                                "/v1/sessions",
                                Some(json!({"assistant_id": assistant})),
                                stats,
                            )
                            .await;
                        if let Some(id) = created.and_then(|s| s["id"].as_i64()) {
                            let stats = ops.entry("end-session").or_default();
                            client
                                .send(
                                    reqwest::Method::POST,
                                    &format!("/v1/sessions/{id}/end"),
                                    None,
                                    stats,
                                )
                                .await;
                        }
                    }
                    RestScenario::ListAssistants => {
                        let stats = ops.entry("list-assistants").or_default();
                        client
                            .send(reqwest::Method::GET, "/v1/assistants?limit=20", None, stats)
                            .await;
                    }
                }
            }
            ops
        }));
    }
    let mut merged: BTreeMap<&'static str, OpStats> = BTreeMap::new();
    for task in tasks {
        match task.await {
            Ok(ops) => {
                for (name, stats) in ops {
                    merged.entry(name).or_default().merge(&stats);
                }
            }
            Err(err) => merged
                .entry("worker")
                .or_default()
                .fail(format!("panicked: {err}")),
        }
    }
    let elapsed = started.elapsed();
    Ok(Report {
        scenario: config.scenario.name().to_owned(),
        concurrency: clients,
        elapsed_s: elapsed.as_secs_f64(),
        operations: merged
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.summary(elapsed)))
            .collect(),
        voice: None,
        chat: None,
    })
}
