//! The `palaver` binary as an operator runs it: admin commands, migrations,
//! configuration errors, and serving with a graceful stop on SIGTERM.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStderr, Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_palaver");

/// A working folder with the environment that points the binary at a fresh
/// database (SQLite in the folder, or a new Postgres database).
struct Env {
    dir: tempfile::TempDir,
    vars: Vec<(String, String)>,
}

impl Env {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let db = common::test_database(dir.path());
        let mut vars = vec![
            (
                "PALAVER_AUTH_JWT_SECRET".to_owned(),
                common::JWT_SECRET.to_owned(),
            ),
            ("RUST_LOG".to_owned(), "info".to_owned()),
        ];
        match &db.url {
            Some(url) => vars.push(("DATABASE_URL".to_owned(), url.expose().to_owned())),
            None => vars.push((
                "PALAVER_DATABASE_SQLITE_PATH".to_owned(),
                db.sqlite_path.display().to_string(),
            )),
        }
        Env { dir, vars }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .current_dir(self.dir.path())
            .env_remove("DATABASE_URL");
        for (k, v) in &self.vars {
            cmd.env(k, v);
        }
        cmd
    }

    /// Runs to completion; returns (success, stdout, stderr).
    fn run(&self, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
        }
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

#[test]
fn admin_commands_create_an_org_a_key_and_a_user() {
    let env = Env::new();
    let (ok, stdout, stderr) = env.run(&["migrate"], None);
    assert!(ok, "{stderr}");
    let (ok, org, stderr) = env.run(&["admin", "create-org", "Acme Hotels"], None);
    assert!(ok, "{stderr}");
    assert!(org.parse::<i64>().is_ok(), "stdout is the bare id: {org:?}");
    assert!(stdout.is_empty());
    let (ok, key, stderr) = env.run(&["admin", "create-key", "--org", &org], None);
    assert!(ok, "{stderr}");
    assert!(key.starts_with("pk_") && key.len() == 43, "{key}");
    assert!(stderr.contains("shown only now"), "{stderr}");
    let (ok, user, stderr) = env.run(
        &[
            "admin",
            "create-user",
            "--org",
            &org,
            "--email",
            "ops@acme.test",
            "--role",
            "manager",
        ],
        Some("a long enough password\n"),
    );
    assert!(ok, "{stderr}");
    assert!(user.parse::<i64>().is_ok(), "{user}");
    assert!(
        !stderr.contains("a long enough password"),
        "the password is never echoed"
    );

    let (ok, _, stderr) = env.run(&["admin", "create-key", "--org", "999999"], None);
    assert!(!ok);
    assert!(
        stderr.contains("no organization with id 999999"),
        "{stderr}"
    );
}

#[test]
fn configuration_mistakes_are_reported_with_their_origin() {
    let env = Env::new();
    let config = env.dir.path().join("palaver.toml");
    std::fs::write(&config, "[server]\nbind = \"127.0.0.1:0\"\nwrokers = 2\n").unwrap();
    let (ok, _, stderr) = env.run(&["--config", config.to_str().unwrap(), "migrate"], None);
    assert!(!ok);
    assert!(
        stderr.contains("palaver.toml") && stderr.contains("wrokers"),
        "{stderr}"
    );

    let mut cmd = env.command(&["migrate"]);
    cmd.env("PALAVER_SERVER_BINDD", "x");
    let out = cmd.output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("PALAVER_SERVER_BINDD"));
}

fn wait_for_line(reader: &mut impl BufRead, needle: &str, log: &mut String) -> bool {
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return false,
            Ok(_) => {
                log.push_str(&line);
                if line.contains(needle) {
                    return true;
                }
            }
        }
    }
}

/// `palaver serve` on a free loopback port with JSON logs and `vars`, once
/// it listens: the child (killed on drop), its log so far and the rest of
/// it, and its address.
fn serve(env: &Env, vars: &[(&str, &str)]) -> (KillOnDrop, BufReader<ChildStderr>, String, String) {
    let mut command = env.command(&["serve"]);
    command
        .env("PALAVER_SERVER_BIND", "127.0.0.1:0")
        .env("PALAVER_LOG_FORMAT", "json")
        .envs(vars.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = command.spawn().unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let guard = KillOnDrop(Some(child));
    let mut log = String::new();
    assert!(
        wait_for_line(&mut stderr, "\"listening\"", &mut log),
        "never listened:\n{log}"
    );
    let listening: serde_json::Value =
        serde_json::from_str(log.lines().last().unwrap()).expect("JSON log line");
    let addr = listening["addr"].as_str().unwrap().to_owned();
    (guard, stderr, addr, log)
}

/// Sends SIGTERM to the server.
fn send_sigterm(guard: &KillOnDrop) {
    let pid = guard.0.as_ref().unwrap().id();
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Waits for the server's clean exit after a signal; its whole log.
fn clean_exit(guard: &mut KillOnDrop, stderr: &mut impl BufRead, mut log: String) -> String {
    assert!(
        wait_for_line(stderr, "shutdown complete", &mut log),
        "no clean shutdown:\n{log}"
    );
    let exit = guard.0.take().unwrap().wait().unwrap();
    assert!(exit.success(), "exit status {exit:?}\n{log}");
    log
}

/// Kills the server if the test fails before it exits by itself.
struct KillOnDrop(Option<Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn serve_answers_and_stops_gracefully_on_sigterm() {
    let env = Env::new();
    let (mut guard, mut stderr, addr, log) = serve(&env, &[]);
    let response = http_get(&addr, "/healthz");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");

    send_sigterm(&guard);
    let log = clean_exit(&mut guard, &mut stderr, log);
    assert!(log.contains("SIGTERM"), "{log}");
    assert!(
        !log.contains(common::JWT_SECRET),
        "secrets never reach the log"
    );
}

/// `GET path` on `addr` with a plain socket; the whole response.
fn http_get(addr: &str, path: &str) -> String {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    std::io::Read::read_to_string(&mut stream, &mut response).unwrap();
    response
}

#[test]
fn serve_can_leave_the_local_engines_for_the_first_session_that_needs_them() {
    let env = Env::new();
    let (_guard, _stderr, addr, log) = serve(&env, &[("PALAVER_PROVIDERS_PRELOAD_LOCAL", "false")]);
    assert!(log.contains("not preloading the local engines"), "{log}");
    // Nothing loads by itself: a while later every engine is still waiting
    // for a session (with preloading on, these would read `loading` or,
    // with no model files here, `missing: …`).
    std::thread::sleep(Duration::from_millis(500));
    let response = http_get(&addr, "/readyz");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let body: serde_json::Value =
        serde_json::from_str(response.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    for engine in ["stt", "llm", "tts"] {
        let status = body["local"][engine].as_str().unwrap_or_default();
        assert!(status.starts_with("not loaded yet"), "{engine}: {body}");
    }
}

/// Reads text frames until one of type `kind`; all frames read so far.
async fn ws_until(socket: &mut WsSocket, kind: &str, seen: &mut Vec<serde_json::Value>) {
    use futures_util::StreamExt;
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(20), socket.next())
            .await
            .unwrap_or_else(|_| panic!("no `{kind}` within 20 s: {seen:?}"));
        match frame {
            Some(Ok(awc::ws::Frame::Text(bytes))) => {
                let event: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
                let done = event["type"] == kind;
                seen.push(event);
                if done {
                    return;
                }
            }
            Some(Ok(_)) => {}
            other => panic!("socket ended before `{kind}` ({other:?}): {seen:?}"),
        }
    }
}

type WsSocket = actix_codec::Framed<awc::BoxedSocket, awc::ws::Codec>;

#[actix_web::test]
async fn sigterm_drains_live_calls_then_says_goodbye_and_loses_nothing() {
    use futures_util::SinkExt;
    let (fake_url, _fake) = common::voice::start_fake(vec![Ok("Happy to help.".into())]).await;
    let env = Env::new();
    let (ok, org, stderr) = env.run(&["admin", "create-org", "Drain Co"], None);
    assert!(ok, "{stderr}");
    let (ok, key, stderr) = env.run(&["admin", "create-key", "--org", &org], None);
    assert!(ok, "{stderr}");
    let vars = [
        ("PALAVER_PROVIDERS_OPENAI_BASE_URL", fake_url.as_str()),
        ("OPENAI_API_KEY", "sk-test"),
        ("PALAVER_PROVIDERS_PRELOAD_LOCAL", "false"),
        ("PALAVER_SERVER_DRAIN_TIMEOUT_S", "2"),
    ];
    let (mut guard, mut stderr, addr, log) = serve(&env, &vars);
    let http = reqwest::Client::new();
    let api = |path: &str| format!("http://{addr}{path}");
    let assistant: serde_json::Value = http
        .post(api("/v1/assistants"))
        .bearer_auth(&key)
        .json(&serde_json::json!({
            "name": "Desk",
            "llm": {"provider": "openai", "model": "fake-1"},
            "stt": {"provider": "openai"},
            "tts": {"provider": "openai", "voice_id": "alloy"},
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let create = || {
        http.post(api("/v1/sessions"))
            .bearer_auth(&key)
            .json(&serde_json::json!({"assistant_id": assistant["id"]}))
            .send()
    };
    let session: serde_json::Value = create().await.unwrap().json().await.unwrap();
    let id = session["id"].as_i64().unwrap();
    let url = format!(
        "ws://{addr}/v1/sessions/{id}/ws?token={}&audio=false",
        session["token"].as_str().unwrap()
    );
    let (_, mut socket) = awc::Client::new().ws(url).connect().await.unwrap();
    let mut seen = Vec::new();
    let say = |text: &str| {
        awc::ws::Message::Text(
            serde_json::json!({"type": "user-message", "text": text})
                .to_string()
                .into(),
        )
    };
    socket.send(say("hello")).await.unwrap();
    ws_until(&mut socket, "assistant-message", &mut seen).await;

    send_sigterm(&guard);
    // Out of the load balancer at once; no new sessions...
    let mut ready = reqwest::StatusCode::OK;
    // Bounded at 10 s: the signal is handled at once, but a busy machine
    // may be slow to schedule it.
    for _ in 0..500 {
        ready = http.get(api("/readyz")).send().await.unwrap().status();
        if ready == reqwest::StatusCode::SERVICE_UNAVAILABLE {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(ready, reqwest::StatusCode::SERVICE_UNAVAILABLE);
    let refused = create().await.unwrap();
    assert_eq!(refused.status(), reqwest::StatusCode::SERVICE_UNAVAILABLE);
    // ...while the live call goes on.
    socket.send(say("one more thing")).await.unwrap();
    ws_until(&mut socket, "assistant-message", &mut seen).await;
    // Then the drain timeout: a goodbye, and the end.
    ws_until(&mut socket, "session.ended", &mut seen).await;
    let ended = seen.last().unwrap();
    assert_eq!(ended["reason"], "server-shutdown", "{seen:?}");
    let goodbye = seen
        .iter()
        .rev()
        .find(|e| e["type"] == "assistant.done")
        .unwrap();
    assert_eq!(
        goodbye["text"],
        palaver::server::SHUTDOWN_GOODBYE,
        "{seen:?}"
    );

    let log = clean_exit(&mut guard, &mut stderr, log);
    assert!(log.contains("draining"), "{log}");

    // Everything was stored: read it back from a fresh server.
    let (_guard, _stderr, addr, _) = serve(&env, &vars);
    let get = |path: String| {
        let http = http.clone();
        let key = key.clone();
        let url = format!("http://{addr}{path}");
        async move {
            http.get(url)
                .bearer_auth(key)
                .send()
                .await
                .unwrap()
                .json::<serde_json::Value>()
                .await
                .unwrap()
        }
    };
    let stored = get(format!("/v1/sessions/{id}")).await;
    assert_eq!(stored["status"], "ended", "{stored}");
    assert_eq!(stored["end_reason"], "server-shutdown", "{stored}");
    let page = get(format!("/v1/sessions/{id}/messages?limit=100")).await;
    let said: Vec<(&str, &str)> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
        .collect();
    assert_eq!(
        said,
        [
            ("user", "hello"),
            ("assistant", "Happy to help."),
            ("user", "one more thing"),
            ("assistant", "Happy to help."),
            ("assistant", palaver::server::SHUTDOWN_GOODBYE),
        ],
        "{page}"
    );
}
