//! Two real server processes (`palaver serve`) on different ports, one
//! database and one Redis, acting as one: users connected to different
//! nodes chat, see typing, receipts and presence; a node that is killed is
//! reaped and its users go offline; a hang-up that lands on the wrong node
//! is forwarded; Redis restarting mid-run degrades both nodes to node-local
//! operation and they recover by themselves.
//!
//! Each test owns its Redis (a `redis-server` child on a free loopback
//! port, no persistence), so it can kill and restart it. The database is a
//! fresh SQLite file, or a fresh Postgres database when the suite runs on
//! Postgres. Users and tokens are made by an in-process server on the same
//! database that is not part of the cluster.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::TestServer;
use common::rooms::Client;
use palaver::model::Role;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_palaver");
/// Short, so a dead node is noticed within seconds, and still far above a
/// heartbeat so a busy machine does not kill a live node.
const HEARTBEAT_MS: u64 = 200;
const NODE_TTL_MS: u64 = 2_000;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A throw-away `redis-server` on loopback that the test can kill and
/// restart on the same port.
struct Redis {
    port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Redis {
    fn start() -> Redis {
        let mut redis = Redis {
            port: free_port(),
            child: None,
            dir: tempfile::tempdir().unwrap(),
        };
        redis.spawn();
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (scripts/setup-deps.sh test installs it)");
        self.child = Some(child);
        for _ in 0..100 {
            if self.ping() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server on port {} never answered PING", self.port);
    }

    fn ping(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let mut reply = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut reply).is_ok()
            && &reply == b"+PONG\r\n"
    }

    /// `HGET key field` over a plain socket (RESP), `None` when absent.
    fn hget(&self, key: &str, field: &str) -> Option<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let command = format!(
            "*3\r\n$4\r\nHGET\r\n${}\r\n{key}\r\n${}\r\n{field}\r\n",
            key.len(),
            field.len()
        );
        stream.write_all(command.as_bytes()).ok()?;
        let mut reader = BufReader::new(stream);
        let mut header = String::new();
        reader.read_line(&mut header).ok()?;
        // `$-1` (absent) or `$<len>` then the value.
        let len: usize = header.trim_end().strip_prefix('$')?.parse().ok()?;
        let mut value = String::new();
        reader.read_line(&mut value).ok()?;
        Some(value.trim_end().chars().take(len).collect())
    }

    /// Kills the server: every key is gone with it.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One `palaver serve` process.
struct Node {
    name: &'static str,
    child: Child,
    addr: SocketAddr,
    base: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl Node {
    fn start(name: &'static str, admin: &TestServer, redis: &Redis) -> Node {
        let db = &admin.state.settings.database;
        let mut command = Command::new(BIN);
        command
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("PALAVER_SERVER_BIND", "127.0.0.1:0")
            .env("PALAVER_SERVER_WORKERS", "1")
            .env("PALAVER_SERVER_SHUTDOWN_TIMEOUT_S", "1")
            .env("PALAVER_LOG_FORMAT", "json")
            .env("PALAVER_AUTH_JWT_SECRET", common::JWT_SECRET)
            .env("PALAVER_LIMITS_REQUESTS_PER_SECOND", "10000")
            .env("PALAVER_LIMITS_BURST", "10000")
            .env("REDIS_URL", redis.url())
            .env("PALAVER_REDIS_NODE_ID", name)
            .env("PALAVER_REDIS_HEARTBEAT_MS", HEARTBEAT_MS.to_string())
            .env("PALAVER_REDIS_NODE_TTL_MS", NODE_TTL_MS.to_string())
            // An OpenAI-compatible provider that is never called: joining a
            // session needs one configured, typed turns are not taken here.
            .env("PALAVER_PROVIDERS_OPENAI_API_KEY", "sk-test-unused")
            .env("PALAVER_PROVIDERS_OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
            .env("PALAVER_DATABASE_SQLITE_PATH", &db.sqlite_path)
            // No local models: these nodes take no spoken turns, and
            // loading three engines per node would only cost CPU.
            .env("PALAVER_MODELS_DIR", "/nonexistent/palaver-models")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(url) = &db.url {
            command.env("DATABASE_URL", url.expose());
        }
        let mut child = command.spawn().expect("palaver serve starts");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let lines = log.clone();
        // Keeps reading after the address is known, so the pipe never fills.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(entry) = serde_json::from_str::<Value>(&line)
                    && entry["message"] == "listening"
                    && let Some(Ok(addr)) = entry["addr"].as_str().map(str::parse::<SocketAddr>)
                {
                    let _ = addr_tx.send(addr);
                }
                lines.lock().unwrap().push(line);
            }
        });
        let addr = match addr_rx.recv_timeout(Duration::from_secs(60)) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "node {name} did not start listening; its log:\n{}",
                    log.lock().unwrap().join("\n")
                )
            }
        };
        Node {
            name,
            child,
            addr,
            base: format!("http://{addr}"),
            log,
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = reqwest::Client::new()
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token)
            .timeout(Duration::from_secs(30));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.base))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    async fn readiness(&self) -> Value {
        self.call(Method::GET, "/readyz", "", None).await.1
    }

    /// Waits until `/readyz` says `status` (20 s at most).
    async fn wait_until(&self, status: &str) -> Value {
        let mut last = Value::Null;
        for _ in 0..200 {
            last = self.readiness().await;
            if last["status"] == status {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "node {} never became {status}; last /readyz: {last}; log:\n{}",
            self.name,
            self.log.lock().unwrap().join("\n")
        );
    }

    fn log_contains(&self, needle: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(needle))
    }

    /// Whether the log says `needle` within 10 s (the log is read from the
    /// process's stderr by another thread, a little behind).
    async fn logs(&self, needle: &str) -> bool {
        for _ in 0..100 {
            if self.log_contains(needle) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    /// SIGTERM: a graceful stop, then waits for the process to exit.
    fn terminate(&mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let _ = self.child.wait();
    }

    /// SIGKILL: no goodbye, its registration simply stops being renewed.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The admin server (users, rooms), a Redis, nodes `a` and `b`.
async fn cluster() -> (TestServer, Redis, Node, Node) {
    let admin = TestServer::start().await;
    let redis = Redis::start();
    // One after the other: the first applies nothing new (the admin server
    // migrated), but never two migrations at once.
    let a = Node::start("a", &admin, &redis);
    let b = Node::start("b", &admin, &redis);
    a.wait_until("ready").await;
    b.wait_until("ready").await;
    (admin, redis, a, b)
}

async fn group(admin: &TestServer, token: &str, members: &[i64]) -> i64 {
    let (status, room) = admin
        .post(
            "/v1/rooms",
            token,
            json!({ "kind": "group", "name": "across nodes", "member_ids": members }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{room}");
    room["id"].as_i64().unwrap()
}

/// The next JSON event of a session's WebSocket (20 s at most).
async fn next_event(call: &mut common::rooms::Socket) -> Option<Value> {
    use futures_util::StreamExt;
    loop {
        match tokio::time::timeout(Duration::from_secs(20), call.next()).await {
            Ok(Some(Ok(awc::ws::Frame::Text(bytes)))) => {
                return Some(serde_json::from_slice(&bytes).unwrap());
            }
            Ok(Some(Ok(_))) => {}
            _ => return None,
        }
    }
}

/// Waits until `node`'s member list of `room` shows `user` as `status`
/// (presence as the whole cluster sees it; 10 s at most).
async fn wait_member_status(node: &Node, token: &str, room: i64, user: i64, status: &str) {
    let mut members = Value::Null;
    for _ in 0..100 {
        members = node
            .call(
                Method::GET,
                &format!("/v1/rooms/{room}/members"),
                token,
                None,
            )
            .await
            .1;
        let found = members["data"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|m| m["user_id"] == user && m["status"] == status);
        if found {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "user {user} never showed {status} on node {}: {members}",
        node.name
    );
}

fn presence_of(event: &Value, user: i64, status: &str) -> bool {
    event["user_id"] == user && event["status"] == status
}

#[actix_web::test]
async fn users_on_different_nodes_chat_type_read_and_see_presence_until_a_node_dies() {
    let (admin, redis, a, mut b) = cluster().await;
    // A third node with nobody connected: room events never go to it.
    let c = Node::start("c", &admin, &redis);
    c.wait_until("ready").await;
    let t = admin.tenant("cluster").await;
    let (alice, alice_t) = admin.user(t.org, Role::Member).await;
    let (bob, bob_t) = admin.user(t.org, Role::Member).await;
    let room = group(&admin, &alice_t, &[bob.0]).await;

    let mut alice_ws = Client::connect(a.addr, &alice_t).await;
    wait_member_status(&b, &bob_t, room, alice.0, "online").await;
    let mut bob_ws = Client::connect(b.addr, &bob_t).await;

    // Presence crosses nodes both ways: Alice (on a) hears Bob (on b) come
    // online, and Bob's hello already shows Alice online.
    alice_ws
        .expect("presence", |e| presence_of(e, bob.0, "online"))
        .await;
    let hello = &bob_ws.seen[0];
    assert!(
        hello["presence"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| presence_of(p, alice.0, "online")),
        "{hello}"
    );

    // A message sent on b's socket reaches a's, once.
    bob_ws
        .send(json!({ "type": "send", "room_id": room, "body": "hi from b", "idempotency_key": "b-1" }))
        .await;
    let ack = bob_ws.expect("send.ack", |_| true).await;
    let sent = alice_ws
        .expect("message.new", |e| e["message"]["body"] == "hi from b")
        .await;
    assert_eq!(sent["message"]["id"], ack["message"]["id"]);

    // Typing on a is seen on b.
    alice_ws
        .send(json!({ "type": "typing", "room_id": room }))
        .await;
    bob_ws
        .expect("typing", |e| e["user_id"] == alice.0 && e["typing"] == true)
        .await;

    // A read receipt stored through a's REST API reaches b.
    let message_id = ack["message"]["id"].as_i64().unwrap();
    let (status, body) = a
        .call(
            Method::POST,
            &format!("/v1/rooms/{room}/read"),
            &alice_t,
            Some(json!({ "message_id": message_id })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    bob_ws
        .expect("read.receipt", |e| {
            e["user_id"] == alice.0 && e["last_read_message_id"] == message_id
        })
        .await;

    // A message posted over a's REST API reaches b's socket exactly once
    // (a delivers its own; b gets it from the bus).
    let (status, posted) = a
        .call(
            Method::POST,
            &format!("/v1/rooms/{room}/messages"),
            &alice_t,
            Some(json!({ "body": "hi from a" })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{posted}");
    bob_ws
        .expect("message.new", |e| e["message"]["id"] == posted["id"])
        .await;
    let later = bob_ws.drain(Duration::from_millis(500)).await;
    assert!(
        !later.iter().any(|e| e["message"]["id"] == posted["id"]),
        "delivered twice: {later:?}"
    );
    wait_member_status(&a, &alice_t, room, bob.0, "online").await;

    let bus_received =
        |metrics: &str| common::metric(metrics, "palaver_cluster_bus_received_total");
    assert!(bus_received(&a.metrics().await) > 0.0);
    assert_eq!(
        bus_received(&c.metrics().await),
        0.0,
        "c has no recipients connected"
    );

    // Node b dies without a goodbye: once its registration lapses, a reaps
    // it and Alice hears that Bob went offline; the member list agrees.
    b.kill();
    let offline = alice_ws
        .expect("presence", |e| presence_of(e, bob.0, "offline"))
        .await;
    assert!(offline["last_seen"].is_string(), "{offline}");
    wait_member_status(&a, &alice_t, room, bob.0, "offline").await;
    // Whichever live node noticed first reaped it (and said so).
    let reaped = "a node stopped renewing its registration";
    let mut said = false;
    for _ in 0..100 {
        said = a.log_contains(reaped) || c.log_contains(reaped);
        if said {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(said, "neither a nor c logged reaping b");
    // a itself is still ready: it lost a peer, not Redis.
    assert_eq!(a.readiness().await["status"], "ready");
}

#[actix_web::test]
async fn a_user_online_on_two_nodes_stays_online_until_both_connections_close() {
    let (admin, _redis, a, mut b) = cluster().await;
    let t = admin.tenant("cluster").await;
    let (_alice, alice_t) = admin.user(t.org, Role::Member).await;
    let (bob, bob_t) = admin.user(t.org, Role::Member).await;
    group(&admin, &alice_t, &[bob.0]).await;

    let mut alice_ws = Client::connect(a.addr, &alice_t).await;
    let bob_laptop = Client::connect(a.addr, &bob_t).await;
    alice_ws
        .expect("presence", |e| presence_of(e, bob.0, "online"))
        .await;
    let bob_phone = Client::connect(b.addr, &bob_t).await;
    // Closing the laptop (on a) leaves Bob online through the phone (on b).
    drop(bob_laptop);
    let quiet = alice_ws.drain(Duration::from_millis(1_500)).await;
    assert!(
        !quiet.iter().any(|e| presence_of(e, bob.0, "offline")),
        "bob is still connected on b: {quiet:?}"
    );
    // Node b stops gracefully: it leaves the cluster, and Bob (whose phone
    // was connected there) goes offline without waiting for b's TTL.
    b.terminate();
    alice_ws
        .expect("presence", |e| presence_of(e, bob.0, "offline"))
        .await;
    assert!(b.logs("left the cluster").await);
    drop(bob_phone);
}

#[actix_web::test]
async fn a_hang_up_that_lands_on_another_node_is_forwarded_to_the_call() {
    let (admin, _redis, a, b) = cluster().await;
    let t = admin.tenant("cluster").await;
    let (status, assistant) = admin
        .post(
            "/v1/assistants",
            &t.key,
            json!({
                "name": "Across nodes",
                "llm": { "provider": "openai", "model": "fake-1" },
                "tts": { "provider": "openai", "voice_id": "alloy" },
            }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{assistant}");
    let (id, token) = admin
        .session(&t.key, assistant["id"].as_i64().unwrap())
        .await;

    // The caller is on a, text only.
    let (_, mut call) = awc::Client::builder()
        .timeout(Duration::from_secs(30))
        .finish()
        .ws(format!(
            "ws://{}/v1/sessions/{id}/ws?token={token}&audio=false",
            a.addr
        ))
        .connect()
        .await
        .unwrap_or_else(|err| {
            panic!(
                "the session's WebSocket did not connect: {err}; node a's log:\n{}",
                a.log.lock().unwrap().join("\n")
            )
        });
    let mut events = Vec::new();
    loop {
        let event = next_event(&mut call)
            .await
            .unwrap_or_else(|| panic!("no session.started; saw {events:?}"));
        events.push(event.clone());
        if event["type"] == "session.started" {
            break;
        }
    }

    // Ending it through b's API ends the call running on a.
    let (status, ended) = b
        .call(
            Method::POST,
            &format!("/v1/sessions/{id}/end"),
            &t.key,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{ended}");
    loop {
        let event = next_event(&mut call)
            .await
            .unwrap_or_else(|| panic!("no session.ended; saw {events:?}"));
        events.push(event.clone());
        if event["type"] == "session.ended" {
            assert_eq!(event["reason"], "ended-by-api", "{event}");
            break;
        }
    }
    assert!(a.logs("hang-up forwarded from another node").await);
}

#[actix_web::test]
async fn losing_redis_degrades_to_node_local_and_both_nodes_recover_when_it_returns() {
    let (admin, mut redis, a, b) = cluster().await;
    let t = admin.tenant("cluster").await;
    let (_alice, alice_t) = admin.user(t.org, Role::Member).await;
    let (bob, bob_t) = admin.user(t.org, Role::Member).await;
    let room = group(&admin, &alice_t, &[bob.0]).await;
    let mut alice_ws = Client::connect(a.addr, &alice_t).await;
    let mut bob_ws = Client::connect(b.addr, &bob_t).await;
    alice_ws
        .expect("presence", |e| presence_of(e, bob.0, "online"))
        .await;

    let post = |body: &'static str| {
        let (a, token) = (&a, alice_t.clone());
        async move {
            let (status, posted) = a
                .call(
                    Method::POST,
                    &format!("/v1/rooms/{room}/messages"),
                    &token,
                    Some(json!({ "body": body })),
                )
                .await;
            assert_eq!(status, StatusCode::CREATED, "{posted}");
            posted["id"].as_i64().unwrap()
        }
    };

    // Redis goes away (with every key): both nodes say so and go on
    // serving their own connections.
    redis.kill();
    let degraded = a.wait_until("degraded").await;
    assert!(
        degraded["cluster"]["reason"]
            .as_str()
            .unwrap()
            .starts_with("node-local only"),
        "{degraded}"
    );
    b.wait_until("degraded").await;
    assert!(a.logs("redis unreachable").await);
    let during = post("while redis is away").await;
    alice_ws
        .expect("message.new", |e| e["message"]["id"] == during)
        .await;

    // It comes back empty: the nodes resubscribe and write their state
    // again by themselves.
    redis.restart();
    a.wait_until("ready").await;
    b.wait_until("ready").await;
    assert!(a.logs("redis reachable again").await);
    let after = post("after redis came back").await;
    bob_ws
        .expect("message.new", |e| e["message"]["id"] == after)
        .await;
    // Presence was written again too: a sees Bob (on b) online.
    wait_member_status(&a, &alice_t, room, bob.0, "online").await;
    // The message stored while Redis was away is there for Bob to catch up.
    let (_, history) = b
        .call(
            Method::GET,
            &format!("/v1/rooms/{room}/messages?since=0"),
            &bob_t,
            None,
        )
        .await;
    assert!(
        history["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == during),
        "{history}"
    );
}

#[actix_web::test]
async fn a_rooms_connection_is_routable_from_every_node_once_it_is_told_connected() {
    let (admin, redis, a, b) = cluster().await;
    let t = admin.tenant("routable").await;
    let (_, alice_t) = admin.user(t.org, Role::Member).await;
    let mut members = Vec::new();
    for _ in 0..30 {
        members.push(admin.user(t.org, Role::Member).await);
    }
    let ids: Vec<i64> = members.iter().map(|(id, _)| id.0).collect();
    let room = group(&admin, &alice_t, &ids).await;
    let mut alice_ws = Client::connect(a.addr, &alice_t).await;
    // Thirty connect to b at once. Other nodes find a user by its presence
    // in Redis: the moment each hears `connected`, b's field must be
    // there, or a message sent to it right then would never leave a.
    let joined = futures_util::future::join_all(members.iter().map(|(id, token)| {
        let redis = &redis;
        let b = &b;
        async move {
            let ws = Client::connect(b.addr, token).await;
            let field = redis.hget(&format!("palaver:presence:{}", id.0), "b");
            (ws, field)
        }
    }))
    .await;
    let mut sockets = Vec::new();
    for (ws, field) in joined {
        assert_eq!(field.as_deref(), Some("online"));
        sockets.push(ws);
    }
    alice_ws
        .send(json!({ "type": "send", "room_id": room, "body": "welcome all", "idempotency_key": "a-1" }))
        .await;
    for ws in &mut sockets {
        ws.expect("message.new", |e| e["message"]["body"] == "welcome all")
            .await;
    }
}
