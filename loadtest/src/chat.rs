//! The `chat` scenario: users in group rooms, connected to the server's live
//! rooms WebSocket (`/v1/rooms/ws`), sending messages at a steady rate with
//! typing and presence churn, timed at the socket.
//!
//! Setup goes through the REST API with the organization's key, as an
//! operator would: `users` users (`POST /v1/users`), each signed in
//! (`POST /v1/auth/login`) for an access token, and `rooms` group rooms,
//! user `i` in room `i % rooms` (`POST /v1/rooms`, the room's first user its
//! owner). Every user then connects its socket and waits for `connected`;
//! only when all are connected does anyone send, so every member of a room
//! hears every message of it.
//!
//! Each user sends `{"type":"send"}` to its room at `messages_per_second /
//! users` per second (the users' phases spread evenly over one interval), a
//! share of them announced with `{"type":"typing"}` shortly before, and
//! switches its
//! presence to `away` and back at `presence_per_minute`. A message's body
//! carries a marker naming its sender and number, so that every receiver
//! finds when it was sent:
//!
//! - `chat-send-ack`: `send` written → the sender's `send.ack`;
//! - `chat-delivery`: `send` written → `message.new` at each other member of
//!   the room (the figure the fan-out is sized by);
//! - `chat-connect`: socket connect → `connected`; `chat-create-user`,
//!   `chat-login`, `chat-create-room`: the setup requests.
//!
//! Deliveries that have not come `drain` after sending stopped are failures,
//! and so are missing acks, `error` events and sockets the server closed.
//! The run is bounded by `messages` (over all users) and by `max_duration`,
//! after which nobody sends; it ends once every message is delivered or
//! `drain` has passed.
//!
//! All users are tasks on the current thread (awc's client is not `Send`):
//! [`run`] must be awaited inside an actix System.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::{Duration, Instant};

use awc::ws::{Frame, Message};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};

use crate::report::{ChatFigures, CountPoint, LatencyPoint, OpStats, Report};
use crate::resources::ProcessSampler;
use crate::rest::{ApiClient, RunError};

pub const CHAT_CREATE_USER: &str = "chat-create-user";
pub const CHAT_LOGIN: &str = "chat-login";
pub const CHAT_CREATE_ROOM: &str = "chat-create-room";
pub const CHAT_CONNECT: &str = "chat-connect";
pub const CHAT_SEND_ACK: &str = "chat-send-ack";
pub const CHAT_DELIVERY: &str = "chat-delivery";
/// `error` events from the server, by code (never latencies).
pub const CHAT_ERROR_EVENTS: &str = "chat-error-events";
/// Sockets lost during the run (failures only).
pub const CHAT_SOCKET: &str = "chat-socket";

/// Setup requests in flight at once.
const SETUP_PARALLELISM: usize = 8;
/// How long before a message its `typing` goes out (at most half the
/// user's interval between messages). Never back to back: a `typing` the
/// server does not answer, then the message within the client's Nagle
/// window, would time the client's TCP stack instead of the server.
const TYPING_LEAD: Duration = Duration::from_millis(300);
/// How often a user with nothing to do checks whether the run is over.
const CHECK_INTERVAL: Duration = Duration::from_millis(100);
/// Largest frame a user accepts from the server.
const MAX_FRAME_BYTES: usize = 256 * 1024;
/// Sample the server process this often.
const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// What a chat run does.
#[derive(Debug, Clone)]
pub struct ChatConfig {
    /// e.g. `http://127.0.0.1:8080`
    pub base_url: String,
    /// The organization's API key: creates the users and rooms.
    pub api_key: String,
    pub users: usize,
    pub rooms: usize,
    /// Messages per second over all users.
    pub messages_per_second: f64,
    /// Messages over all users; the run sends no more (0: only time bounds
    /// it).
    pub messages: u64,
    /// Nobody sends after this long.
    pub max_duration: Duration,
    /// Share of messages (0 to 1) announced with `typing` first.
    pub typing_share: f64,
    /// Presence changes (`away`, then `online` again) per user per minute.
    pub presence_per_minute: f64,
    /// After sending stopped, how long deliveries may still take.
    pub drain: Duration,
    /// Characters of filler text per message (besides the marker).
    pub message_chars: usize,
    /// Sample this process's CPU and memory (the server's pid).
    pub server_pid: Option<u32>,
    /// The other nodes of a cluster (with `socket_urls`), sampled the
    /// same way.
    pub node_pids: Vec<u32>,
    /// Where the users' sockets connect (the nodes of a cluster): user `i`
    /// to `socket_urls[(i / rooms) % n]`, so every room spans the nodes and
    /// deliveries cross them; empty: `base_url`. Setup always goes through
    /// `base_url`.
    pub socket_urls: Vec<String>,
}

impl Default for ChatConfig {
    fn default() -> Self {
        Self {
            base_url: "http://127.0.0.1:8080".to_owned(),
            api_key: String::new(),
            users: 20,
            rooms: 4,
            messages_per_second: 20.0,
            messages: 0,
            max_duration: Duration::from_secs(30),
            typing_share: 0.5,
            presence_per_minute: 2.0,
            drain: Duration::from_secs(5),
            message_chars: 60,
            server_pid: None,
            node_pids: Vec::new(),
            socket_urls: Vec::new(),
        }
    }
}

/// A message sent and not yet heard by every other member.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    sent_at: Instant,
    /// Other members of the room (each should get one `message.new`).
    expected: usize,
    delivered: usize,
    acked: bool,
}

impl InFlight {
    fn complete(&self) -> bool {
        self.acked && self.delivered >= self.expected
    }
}

/// Counts and latencies of the run; users write here between awaits.
#[derive(Debug, Default)]
struct ChatStats {
    ops: BTreeMap<&'static str, OpStats>,
    messages_sent: u64,
    messages_acked: u64,
    deliveries_expected: u64,
    deliveries: u64,
    own_echoes: u64,
    typing_sent: u64,
    typing_events: u64,
    presence_sent: u64,
    presence_events: u64,
    /// When the last message was sent.
    last_send: Option<Instant>,
    /// Deliveries since the last once-a-second point.
    delivery_window: OpStats,
    /// The p99 of each second's deliveries.
    delivery_p99_over_time: Vec<LatencyPoint>,
    /// Sockets open, once a second.
    sockets_over_time: Vec<CountPoint>,
}

impl ChatStats {
    fn record(&mut self, op: &'static str, latency: Duration) {
        self.ops.entry(op).or_default().record(latency);
    }

    fn fail(&mut self, op: &'static str, reason: impl Into<String>) {
        self.ops.entry(op).or_default().fail(reason.into());
    }
}

/// The marker of message `seq` of user `user`.
fn marker(user: usize, seq: u64) -> String {
    format!("u{user}m{seq}")
}

/// The sender named by a marker (`u12m3` → 12).
fn marker_sender(marker: &str) -> Option<usize> {
    let rest = marker.strip_prefix('u')?;
    let (user, seq) = rest.split_once('m')?;
    seq.parse::<u64>().ok()?;
    user.parse().ok()
}

/// The body of a message: `loadtest <marker> <filler>`.
fn body(marker: &str, chars: usize) -> String {
    const FILLER: &str = "the quick brown fox jumps over the lazy dog ";
    let filler: String = FILLER.chars().cycle().take(chars).collect();
    format!("loadtest {marker} {}", filler.trim_end())
}

/// The marker in a message body written by [`body`].
fn body_marker(body: &str) -> Option<&str> {
    let mut words = body.split_whitespace();
    (words.next()? == "loadtest").then_some(())?;
    words.next()
}

/// Whether message `seq` of a user is announced with `typing`: `round(share
/// × n)` of every n, spread evenly.
fn types_first(seq: u64, share: f64) -> bool {
    let share = share.clamp(0.0, 1.0);
    ((seq + 1) as f64 * share).floor() > (seq as f64 * share).floor()
}

/// One user's place in the run.
#[derive(Debug, Clone)]
struct Member {
    index: usize,
    id: i64,
    token: String,
    room: usize,
}

/// What every user shares.
struct ChatShared {
    config: ChatConfig,
    /// Room ids, by room index.
    room_ids: Vec<i64>,
    /// Members per room index.
    room_sizes: Vec<usize>,
    /// Sending starts and stops.
    started: Instant,
    stop_sending: Instant,
    /// When the last user stopped sending: deliveries are waited for
    /// `drain` after it (or after `stop_sending`).
    sending_stopped: Cell<Option<Instant>>,
    in_flight: RefCell<HashMap<String, InFlight>>,
    /// Messages left to send over all users (`u64::MAX`: no bound).
    budget: Cell<u64>,
    /// Users that stopped sending.
    users_done_sending: Cell<usize>,
    /// Users whose socket is still open.
    sockets_open: Cell<usize>,
    stats: RefCell<ChatStats>,
}

impl ChatShared {
    fn socket_closed(&self) {
        self.sockets_open
            .set(self.sockets_open.get().saturating_sub(1));
    }

    fn sending_over(&self) -> bool {
        self.users_done_sending.get() >= self.config.users
    }

    /// One more user stopped sending.
    fn user_done_sending(&self) {
        self.users_done_sending
            .set(self.users_done_sending.get() + 1);
        if self.sending_over() && self.sending_stopped.get().is_none() {
            self.sending_stopped.set(Some(Instant::now()));
        }
    }

    /// Nothing is waited for after this.
    fn give_up(&self) -> Instant {
        self.sending_stopped
            .get()
            .unwrap_or(self.stop_sending)
            .min(self.stop_sending)
            + self.config.drain
    }

    /// Sending is over and every message was heard by everyone.
    fn finished(&self) -> bool {
        self.sending_over() && self.in_flight.borrow().is_empty()
    }

    /// Takes one message from the budget.
    fn take_message(&self) -> bool {
        let left = self.budget.get();
        if left == 0 {
            return false;
        }
        if left != u64::MAX {
            self.budget.set(left - 1);
        }
        true
    }

    fn on_event(&self, member: &Member, at: Instant, event: &Value) {
        let mut stats = self.stats.borrow_mut();
        match event["type"].as_str().unwrap_or_default() {
            "message.new" => {
                let Some(marker) = event["message"]["body"].as_str().and_then(body_marker) else {
                    return;
                };
                if marker_sender(marker) == Some(member.index) {
                    stats.own_echoes += 1;
                    return;
                }
                let mut in_flight = self.in_flight.borrow_mut();
                let Some(sent) = in_flight.get_mut(marker) else {
                    stats.fail(CHAT_DELIVERY, "message.new for a message not in flight");
                    return;
                };
                sent.delivered += 1;
                stats.deliveries += 1;
                let latency = at.saturating_duration_since(sent.sent_at);
                stats.record(CHAT_DELIVERY, latency);
                stats.delivery_window.record(latency);
                if sent.complete() {
                    in_flight.remove(marker);
                }
            }
            "send.ack" => {
                let Some(marker) = event["message"]["body"].as_str().and_then(body_marker) else {
                    stats.fail(CHAT_SEND_ACK, "send.ack without a loadtest message");
                    return;
                };
                let mut in_flight = self.in_flight.borrow_mut();
                let Some(sent) = in_flight.get_mut(marker) else {
                    stats.fail(CHAT_SEND_ACK, "send.ack for a message not in flight");
                    return;
                };
                if !sent.acked {
                    sent.acked = true;
                    stats.messages_acked += 1;
                    stats.record(CHAT_SEND_ACK, at.saturating_duration_since(sent.sent_at));
                }
                if sent.complete() {
                    in_flight.remove(marker);
                }
            }
            "typing" => stats.typing_events += 1,
            "presence" => stats.presence_events += 1,
            "error" => {
                let code = event["code"].as_str().unwrap_or("no code");
                let message: String = event["message"]
                    .as_str()
                    .unwrap_or_default()
                    .chars()
                    .take(120)
                    .collect();
                stats.fail(CHAT_ERROR_EVENTS, format!("{code}: {message}"));
            }
            _ => {}
        }
    }
}

type Socket = actix_codec::Framed<awc::BoxedSocket, awc::ws::Codec>;

/// `http(s)://host` → `ws(s)://host`.
fn ws_base(base_url: &str) -> String {
    let base = base_url.trim_end_matches('/');
    if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        base.to_owned()
    }
}

/// Connects a user's socket and waits for `connected`.
async fn connect(ws_base: &str, token: &str, until: Instant) -> Result<Socket, String> {
    let client = crate::ws_client::client(until.saturating_duration_since(Instant::now()));
    let connecting = client
        .ws(format!("{ws_base}/v1/rooms/ws?token={token}"))
        .max_frame_size(MAX_FRAME_BYTES)
        .connect();
    let mut socket = match tokio::time::timeout_at(until.into(), connecting).await {
        Err(_) => return Err("timeout".to_owned()),
        Ok(Err(awc::error::WsClientError::InvalidResponseStatus(status))) => {
            return Err(format!("status {}", status.as_u16()));
        }
        Ok(Err(err)) => return Err(format!("connect: {err}")),
        Ok(Ok((_, socket))) => socket,
    };
    loop {
        match tokio::time::timeout_at(until.into(), read(&mut socket)).await {
            Err(_) => return Err("timeout waiting for connected".to_owned()),
            Ok(Err(why)) => return Err(why),
            Ok(Ok((_, event))) if event["type"] == "connected" => return Ok(socket),
            Ok(Ok(_)) => {}
        }
    }
}

/// The next event off a socket, stamped when it was read; answers pings.
async fn read(socket: &mut Socket) -> Result<(Instant, Value), String> {
    loop {
        let frame = match socket.next().await {
            None => return Err("connection closed".into()),
            Some(Err(err)) => return Err(format!("protocol error: {err}")),
            Some(Ok(frame)) => frame,
        };
        let at = Instant::now();
        match frame {
            Frame::Text(bytes) => {
                return serde_json::from_slice(&bytes)
                    .map(|event| (at, event))
                    .map_err(|_| "an event that is not JSON".into());
            }
            Frame::Ping(bytes) => {
                let _ = socket.send(Message::Pong(bytes)).await;
            }
            Frame::Close(reason) => {
                let code = reason.map_or("no code".to_owned(), |r| format!("{:?}", r.code));
                return Err(format!("closed by the server ({code})"));
            }
            Frame::Pong(_) | Frame::Binary(_) | Frame::Continuation(_) => {}
        }
    }
}

async fn send(socket: &mut Socket, message: &Value) -> Result<Instant, String> {
    let at = Instant::now();
    socket
        .send(Message::Text(message.to_string().into()))
        .await
        .map_err(|err| format!("send failed: {err}"))?;
    Ok(at)
}

/// What a user does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Typing,
    Message,
    Presence,
}

/// One user: sends on its schedule, reads until the run is over.
async fn user(shared: Rc<ChatShared>, member: Member, mut socket: Socket) {
    let config = &shared.config;
    let users = config.users.max(1) as f64;
    let message_every = (config.messages_per_second > 0.0)
        .then(|| Duration::from_secs_f64(users / config.messages_per_second));
    let presence_every = (config.presence_per_minute > 0.0)
        .then(|| Duration::from_secs_f64(60.0 / config.presence_per_minute));
    // Phases spread evenly over one interval, so the rate is steady.
    let phase = member.index as f64 / users;
    let mut next_message = message_every.map(|every| shared.started + every.mul_f64(phase));
    let mut next_presence =
        presence_every.map(|every| shared.started + every.mul_f64(0.5 + phase / 2.0));
    let typing_lead = message_every.map_or(Duration::ZERO, |every| (every / 2).min(TYPING_LEAD));
    // When message `seq`, due at `at`, is announced with `typing`.
    let typing_for = |at: Option<Instant>, seq: u64| {
        let at = at?;
        types_first(seq, config.typing_share).then(|| {
            at.checked_sub(typing_lead)
                .unwrap_or(at)
                .max(Instant::now())
        })
    };
    let mut next_typing = typing_for(next_message, 0);
    let mut away = false;
    let mut seq = 0u64;
    let room_id = shared.room_ids[member.room];
    let expected = shared.room_sizes[member.room].saturating_sub(1);
    let mut sending = true;
    let done_sending = |sending: &mut bool| {
        if std::mem::take(sending) {
            shared.user_done_sending();
        }
    };
    if next_message.is_none() && next_presence.is_none() {
        done_sending(&mut sending);
    }
    loop {
        let now = Instant::now();
        if sending && (now >= shared.stop_sending || shared.budget.get() == 0) {
            done_sending(&mut sending);
        }
        if (!sending && shared.finished()) || now >= shared.give_up() {
            break;
        }
        let due = if sending {
            [
                next_typing.map(|t| (t, Action::Typing)),
                next_message.map(|t| (t, Action::Message)),
                next_presence.map(|t| (t, Action::Presence)),
            ]
            .into_iter()
            .flatten()
            .min_by_key(|(t, _)| *t)
        } else {
            None
        };
        let wake = due
            .map_or(now + CHECK_INTERVAL, |(t, _)| t)
            .min(now + CHECK_INTERVAL);
        let heard = tokio::time::timeout_at(wake.into(), read(&mut socket)).await;
        match heard {
            Ok(Ok((at, event))) => {
                shared.on_event(&member, at, &event);
                continue;
            }
            Ok(Err(why)) => {
                shared.stats.borrow_mut().fail(CHAT_SOCKET, why);
                done_sending(&mut sending);
                shared.socket_closed();
                return;
            }
            Err(_) => {}
        }
        let Some((at, action)) = due else { continue };
        if Instant::now() < at {
            continue;
        }
        let result = match action {
            Action::Typing => {
                next_typing = None;
                if shared.budget.get() == 0 {
                    continue;
                }
                shared.stats.borrow_mut().typing_sent += 1;
                send(&mut socket, &json!({"type": "typing", "room_id": room_id})).await
            }
            Action::Presence => {
                away = !away;
                next_presence = presence_every.map(|every| at + every / 2);
                let status = if away { "away" } else { "online" };
                shared.stats.borrow_mut().presence_sent += 1;
                send(&mut socket, &json!({"type": "presence", "status": status})).await
            }
            Action::Message => {
                next_message = message_every.map(|every| at + every);
                if !shared.take_message() {
                    done_sending(&mut sending);
                    continue;
                }
                send_message(&shared, &mut socket, &member, room_id, seq, expected).await
            }
        };
        if action == Action::Message {
            seq += 1;
            next_typing = typing_for(next_message, seq);
        }
        if let Err(why) = result {
            shared.stats.borrow_mut().fail(CHAT_SOCKET, why);
            done_sending(&mut sending);
            shared.socket_closed();
            return;
        }
    }
    done_sending(&mut sending);
    let _ = socket.send(Message::Close(None)).await;
    shared.socket_closed();
}

/// Once a second: the sockets open and the last second's delivery p99 for
/// the report's time series, and (in a terminal) the status line. Runs
/// until aborted.
async fn every_second(shared: Rc<ChatShared>, live: bool) {
    let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
    // After a stall, one point, not a burst of them at the same moment.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut line = String::with_capacity(160);
    loop {
        tick.tick().await;
        let elapsed = shared.started.elapsed();
        let t_s = elapsed.as_secs_f64();
        let mut stats = shared.stats.borrow_mut();
        let sockets = shared.sockets_open.get();
        stats.sockets_over_time.push(CountPoint {
            t_s,
            count: sockets,
        });
        if stats.delivery_window.ok() > 0 {
            let window = std::mem::take(&mut stats.delivery_window);
            let p99_ms = window.summary(SAMPLE_INTERVAL).p99_ms;
            stats
                .delivery_p99_over_time
                .push(LatencyPoint { t_s, ms: p99_ms });
        }
        if live {
            line.clear();
            let sending = shared.config.max_duration.as_secs_f64().max(1e-9);
            chat_status_line(
                &mut line,
                elapsed,
                (t_s / sending).min(1.0),
                sockets,
                &stats,
            );
            crate::report::show_status(&line);
        }
    }
}

/// A bar of the sending time gone, elapsed time, sockets, messages,
/// deliveries, failures and the delivery percentiles so far.
fn chat_status_line(
    out: &mut String,
    elapsed: Duration,
    share: f64,
    sockets: usize,
    stats: &ChatStats,
) {
    use std::fmt::Write;
    crate::report::progress_bar(out, share);
    let failures = crate::report::failure_count(&stats.ops);
    let _ = write!(
        out,
        " {:>5.0} s · sockets {sockets} open · sent {}, delivered {} of {} · failures {failures}",
        elapsed.as_secs_f64(),
        stats.messages_sent,
        stats.deliveries,
        stats.deliveries_expected,
    );
    if let Some(delivery) = stats.ops.get(CHAT_DELIVERY).filter(|o| o.ok() > 0) {
        let s = delivery.summary(elapsed);
        let _ = write!(
            out,
            " · delivery p50 {:.1} ms, p99 {:.1} ms",
            s.p50_ms, s.p99_ms
        );
    }
}

/// Sends message `seq` and puts it in flight.
async fn send_message(
    shared: &ChatShared,
    socket: &mut Socket,
    member: &Member,
    room_id: i64,
    seq: u64,
    expected: usize,
) -> Result<Instant, String> {
    let config = &shared.config;
    let marker = marker(member.index, seq);
    let message = json!({
        "type": "send",
        "room_id": room_id,
        "body": body(&marker, config.message_chars),
        "idempotency_key": marker,
    });
    // In flight before it is written: a fast server may answer before the
    // write returns. The time is the write's start.
    let sent_at = Instant::now();
    shared.in_flight.borrow_mut().insert(
        marker.clone(),
        InFlight {
            sent_at,
            expected,
            delivered: 0,
            acked: false,
        },
    );
    {
        let mut stats = shared.stats.borrow_mut();
        stats.messages_sent += 1;
        stats.deliveries_expected += expected as u64;
        stats.last_send = Some(sent_at);
    }
    send(socket, &message).await
}

/// Creates and signs in user `index`; `None` (counted) when it failed.
async fn make_user(
    api: &ApiClient,
    http: &reqwest::Client,
    base: &str,
    run: &str,
    index: usize,
    stats: &RefCell<ChatStats>,
) -> Option<(i64, String)> {
    let email = format!("loadtest-{run}-{index}@example.com");
    let password = format!("loadtest-{run}-password");
    let created = api
        .request(
            reqwest::Method::POST,
            "/v1/users",
            Some(json!({
                "email": email,
                "password": password,
                "name": format!("loadtest user {index}"),
                "role": "member",
            })),
        )
        .await;
    let id = match created {
        Ok((body, latency)) => {
            stats.borrow_mut().record(CHAT_CREATE_USER, latency);
            body["id"].as_i64()?
        }
        Err(reason) => {
            stats.borrow_mut().fail(CHAT_CREATE_USER, reason);
            return None;
        }
    };
    let started = Instant::now();
    let response = http
        .post(format!("{base}/v1/auth/login"))
        .json(&json!({"email": email, "password": password}))
        .send()
        .await;
    let token = match response {
        Ok(response) if response.status().is_success() => {
            let body: Value = response.json().await.unwrap_or(Value::Null);
            body["access_token"].as_str().map(str::to_owned)
        }
        Ok(response) => {
            let status = response.status().as_u16();
            stats
                .borrow_mut()
                .fail(CHAT_LOGIN, format!("status {status}"));
            return None;
        }
        Err(err) => {
            stats
                .borrow_mut()
                .fail(CHAT_LOGIN, format!("transport: {err}"));
            return None;
        }
    };
    match token {
        Some(token) => {
            stats.borrow_mut().record(CHAT_LOGIN, started.elapsed());
            Some((id, token))
        }
        None => {
            stats
                .borrow_mut()
                .fail(CHAT_LOGIN, "no access_token in the response");
            None
        }
    }
}

/// Checks what [`run`] cannot work with.
pub(crate) fn validate(config: &ChatConfig) -> Result<(), RunError> {
    if config.users < 2 || config.rooms == 0 {
        return Err(RunError::Config(
            "a chat run needs at least 2 users and 1 room".into(),
        ));
    }
    if config.users < config.rooms * 2 {
        return Err(RunError::Config(format!(
            "{} users cannot fill {} rooms with two members each",
            config.users, config.rooms
        )));
    }
    if config.users.div_ceil(config.rooms) > 101 {
        return Err(RunError::Config(
            "a room holds at most 101 users (the owner and 100 members): add rooms".into(),
        ));
    }
    if !(config.messages_per_second >= 0.0 && config.messages_per_second.is_finite()) {
        return Err(RunError::Config(
            "the message rate is a number of messages per second, 0 or more".into(),
        ));
    }
    if !(0.0..=1.0).contains(&config.typing_share) {
        return Err(RunError::Config(
            "the typing share is between 0 and 1".into(),
        ));
    }
    if !(config.presence_per_minute >= 0.0 && config.presence_per_minute.is_finite()) {
        return Err(RunError::Config(
            "presence changes are a number per minute, 0 or more".into(),
        ));
    }
    Ok(())
}

/// A short id for this run's users, so that runs against one server do not
/// collide.
fn run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{:x}{:x}", nanos & 0xff_ffff_ffff, std::process::id())
}

/// Runs the chat scenario and returns its report. Await it inside an actix
/// System: the users are tasks on the current thread.
pub async fn run(config: ChatConfig) -> Result<Report, RunError> {
    validate(&config)?;
    let base = config.base_url.trim_end_matches('/').to_owned();
    let api = ApiClient::new(&base, &config.api_key, SETUP_PARALLELISM)?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(RunError::Client)?;
    let stats = RefCell::new(ChatStats::default());
    let run = run_id();
    let setup_started = Instant::now();

    // Users, signed in.
    let made: Vec<Option<(i64, String)>> = futures_util::stream::iter(0..config.users)
        .map(|index| make_user(&api, &http, &base, &run, index, &stats))
        .buffered(SETUP_PARALLELISM)
        .collect()
        .await;
    let mut members = Vec::with_capacity(config.users);
    for (index, made) in made.into_iter().enumerate() {
        if let Some((id, token)) = made {
            members.push(Member {
                index,
                id,
                token,
                room: index % config.rooms,
            });
        }
    }
    if members.len() < config.users {
        let stats = stats.into_inner();
        let failed: Vec<String> = stats
            .ops
            .iter()
            .flat_map(|(op, s)| s.failures.keys().map(move |why| format!("{op}: {why}")))
            .collect();
        return Err(RunError::Setup(format!(
            "{} of {} users could not be created and signed in ({})",
            config.users - members.len(),
            config.users,
            failed.join("; ")
        )));
    }

    // Rooms, the first member of each its owner.
    let mut room_ids = Vec::with_capacity(config.rooms);
    let mut room_sizes = Vec::with_capacity(config.rooms);
    for room in 0..config.rooms {
        let ids: Vec<i64> = members
            .iter()
            .filter(|m| m.room == room)
            .map(|m| m.id)
            .collect();
        room_sizes.push(ids.len());
        let (owner, others) = ids.split_first().map_or((0, &[][..]), |(o, r)| (*o, r));
        let created = api
            .request(
                reqwest::Method::POST,
                "/v1/rooms",
                Some(json!({
                    "kind": "group",
                    "name": format!("loadtest {run} room {room}"),
                    "owner_id": owner,
                    "member_ids": others,
                })),
            )
            .await;
        match created {
            Ok((body, latency)) => {
                stats.borrow_mut().record(CHAT_CREATE_ROOM, latency);
                let id = body["id"]
                    .as_i64()
                    .ok_or_else(|| RunError::Setup("a created room has no id".into()))?;
                room_ids.push(id);
            }
            Err(reason) => {
                return Err(RunError::Setup(format!("create room {room}: {reason}")));
            }
        }
    }

    // Sockets, all connected before anyone sends, spread over the nodes.
    let nodes: Vec<String> = if config.socket_urls.is_empty() {
        vec![ws_base(&base)]
    } else {
        config.socket_urls.iter().map(|u| ws_base(u)).collect()
    };
    let rooms = config.rooms.max(1);
    let until = Instant::now() + Duration::from_secs(30);
    // In the members' order: each socket is its member's.
    let sockets: Vec<Result<(Socket, Duration), String>> = futures_util::stream::iter(&members)
        .map(|member| {
            // Users of a room are i, i + rooms, i + 2·rooms…: stepping
            // the node every `rooms` users spreads each room over the nodes.
            let ws = nodes[(member.index / rooms) % nodes.len()].clone();
            async move {
                let started = Instant::now();
                connect(&ws, &member.token, until)
                    .await
                    .map(|socket| (socket, started.elapsed()))
            }
        })
        .buffered(SETUP_PARALLELISM.max(config.users))
        .collect()
        .await;
    let mut connected = Vec::with_capacity(sockets.len());
    for socket in sockets {
        match socket {
            Ok((socket, latency)) => {
                stats.borrow_mut().record(CHAT_CONNECT, latency);
                connected.push(socket);
            }
            Err(reason) => stats.borrow_mut().fail(CHAT_CONNECT, reason),
        }
    }
    if connected.len() < members.len() {
        let stats = stats.into_inner();
        let reasons: Vec<String> = stats
            .ops
            .get(CHAT_CONNECT)
            .map(|op| op.failures.keys().cloned().collect())
            .unwrap_or_default();
        return Err(RunError::Setup(format!(
            "{} of {} users could not connect to /v1/rooms/ws ({})",
            members.len() - connected.len(),
            members.len(),
            reasons.join("; ")
        )));
    }
    let setup_s = setup_started.elapsed().as_secs_f64();

    let sampler = config
        .server_pid
        .map(|pid| ProcessSampler::start(pid, SAMPLE_INTERVAL))
        .transpose()
        .map_err(RunError::Sampler)?;
    let node_samplers = config
        .node_pids
        .iter()
        .map(|&pid| ProcessSampler::start(pid, SAMPLE_INTERVAL))
        .collect::<Result<Vec<_>, _>>()
        .map_err(RunError::Sampler)?;
    let own_sampler = ProcessSampler::start(std::process::id(), SAMPLE_INTERVAL).ok();
    let started = Instant::now();
    let stop_sending = started + config.max_duration;
    let budget = if config.messages == 0 {
        u64::MAX
    } else {
        config.messages
    };
    let users = members.len();
    let shared = Rc::new(ChatShared {
        room_ids,
        room_sizes,
        started,
        stop_sending,
        sending_stopped: Cell::new(None),
        in_flight: RefCell::new(HashMap::new()),
        budget: Cell::new(budget),
        users_done_sending: Cell::new(0),
        sockets_open: Cell::new(users),
        stats,
        config,
    });
    let live = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let ticking = tokio::task::spawn_local(every_second(shared.clone(), live));
    let tasks: Vec<_> = members
        .into_iter()
        .zip(connected)
        .map(|(member, socket)| tokio::task::spawn_local(user(shared.clone(), member, socket)))
        .collect();
    for task in tasks {
        if let Err(err) = task.await {
            shared
                .stats
                .borrow_mut()
                .fail(CHAT_SOCKET, format!("a user task panicked: {err}"));
        }
    }
    let elapsed = started.elapsed();
    ticking.abort();
    if live {
        eprintln!();
    }

    let mut stats = shared.stats.take();
    // The last, partial second.
    let t_s = elapsed.as_secs_f64();
    if stats.delivery_window.ok() > 0 {
        let p99_ms = stats.delivery_window.summary(SAMPLE_INTERVAL).p99_ms;
        stats
            .delivery_p99_over_time
            .push(LatencyPoint { t_s, ms: p99_ms });
    }
    stats.sockets_over_time.push(CountPoint {
        t_s,
        count: shared.sockets_open.get(),
    });
    let mut missing = 0u64;
    for sent in shared.in_flight.borrow().values() {
        if !sent.acked {
            stats.fail(CHAT_SEND_ACK, "no send.ack by the end of the drain");
        }
        for _ in sent.delivered..sent.expected {
            missing += 1;
            stats.fail(
                CHAT_DELIVERY,
                "no message.new at a member by the end of the drain",
            );
        }
    }
    let sending_s = stats
        .last_send
        .map_or(0.0, |last| {
            last.saturating_duration_since(started).as_secs_f64()
        })
        .max(1e-9);
    let config = &shared.config;
    let figures = ChatFigures {
        users,
        rooms: config.rooms,
        setup_s,
        messages_sent: stats.messages_sent,
        messages_acked: stats.messages_acked,
        messages_per_second: stats.messages_sent as f64 / sending_s,
        deliveries_expected: stats.deliveries_expected,
        deliveries: stats.deliveries,
        deliveries_missing: missing,
        deliveries_per_second: stats.deliveries as f64 / elapsed.as_secs_f64().max(1e-9),
        own_echoes: stats.own_echoes,
        typing_sent: stats.typing_sent,
        typing_events: stats.typing_events,
        presence_sent: stats.presence_sent,
        presence_events: stats.presence_events,
        server: sampler.map(|s| s.finish(users)),
        nodes: node_samplers.into_iter().map(|s| s.finish(users)).collect(),
        load_generator: own_sampler.map(|s| s.finish(users)),
        delivery_p99_over_time: stats.delivery_p99_over_time,
        sockets_over_time: stats.sockets_over_time,
    };
    Ok(Report {
        scenario: "chat".to_owned(),
        concurrency: users,
        elapsed_s: elapsed.as_secs_f64(),
        operations: stats
            .ops
            .into_iter()
            .map(|(name, op)| (name.to_owned(), op.summary(elapsed)))
            .collect(),
        voice: None,
        chat: Some(figures),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_status_line_shows_progress_sockets_deliveries_and_failures() {
        let mut stats = ChatStats {
            messages_sent: 12,
            deliveries: 40,
            deliveries_expected: 44,
            ..ChatStats::default()
        };
        stats.record(CHAT_DELIVERY, Duration::from_millis(3));
        stats.fail(CHAT_SOCKET, "closed");
        let mut line = String::new();
        chat_status_line(&mut line, Duration::from_secs(15), 0.5, 19, &stats);
        assert_eq!(
            line,
            "[##########..........]  50 %    15 s · sockets 19 open · sent 12, delivered 40 of 44 \
             · failures 1 · delivery p50 3.0 ms, p99 3.0 ms"
        );
    }

    #[test]
    fn markers_name_their_sender_and_survive_the_body() {
        let m = marker(12, 3);
        assert_eq!(m, "u12m3");
        assert_eq!(marker_sender(&m), Some(12));
        let text = body(&m, 20);
        assert_eq!(text, "loadtest u12m3 the quick brown fox");
        assert_eq!(body_marker(&text), Some("u12m3"));
        assert_eq!(body_marker("hello u12m3"), None);
        assert_eq!(marker_sender("u12"), None);
        assert_eq!(marker_sender("x1m2"), None);
    }

    #[test]
    fn the_typing_share_is_spread_over_the_messages() {
        let typed = |share| (0..10).filter(|&s| types_first(s, share)).count();
        assert_eq!(typed(0.0), 0);
        assert_eq!(typed(0.5), 5);
        assert_eq!(typed(1.0), 10);
        assert_eq!(typed(0.3), 3);
    }

    #[test]
    fn configurations_that_cannot_run_are_refused_with_a_reason() {
        let ok = ChatConfig::default();
        assert!(validate(&ok).is_ok());
        for (config, why) in [
            (
                ChatConfig {
                    users: 1,
                    ..ChatConfig::default()
                },
                "at least 2 users",
            ),
            (
                ChatConfig {
                    users: 5,
                    rooms: 3,
                    ..ChatConfig::default()
                },
                "two members each",
            ),
            (
                ChatConfig {
                    users: 300,
                    rooms: 2,
                    ..ChatConfig::default()
                },
                "at most 101",
            ),
            (
                ChatConfig {
                    typing_share: 1.5,
                    ..ChatConfig::default()
                },
                "typing share",
            ),
        ] {
            let err = validate(&config).unwrap_err().to_string();
            assert!(err.contains(why), "{err}");
        }
        assert_eq!(ws_base("http://127.0.0.1:8080/"), "ws://127.0.0.1:8080");
        assert_eq!(ws_base("https://h"), "wss://h");
    }
}
