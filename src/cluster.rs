//! Many nodes acting as one, through Redis: the node registry, room fan-out,
//! cluster-wide presence and the owner of each live voice session.
//!
//! # Layout (Redis keys, all under `palaver:`)
//!
//! - `node:{id}`: this node's registration (JSON: id, address, start time),
//!   with a TTL (`redis.node_ttl_ms`) renewed every `redis.heartbeat_ms`;
//!   `nodes`: the set of registered nodes, so a dead one can be found.
//! - The bus, one channel per node, `palaver:bus:{id}`: a room event
//!   (message, edit, receipt, typing, presence) published on one node goes,
//!   by [`FAN_OUT`], only to the nodes where a recipient is connected (from
//!   their presence fields), which deliver it to their own connections.
//!   Forwarded hang-ups go to the owner's channel.
//! - `presence:{user}`: a hash, node → `online` | `away`, changed only by
//!   [`PRESENCE_SET`], a script that answers the cluster-wide status before
//!   and after the change (so two nodes never both miss a transition);
//!   fields of dead nodes do not count. `last_seen:{user}`;
//!   `node:{id}:users`: whom a node has connected, for reaping it.
//! - `session:{id}`: the node running a live session (TTL renewed), so a
//!   hang-up (`POST /v1/sessions/{id}/end`, `DELETE …/webrtc/{peer}`) that
//!   lands on another node is forwarded to it.
//!
//! A node that stops renewing its registration (killed, partitioned) is
//! *reaped* by the first live node to notice: its users' presence fields
//! are removed and their peers hear `offline`.
//!
//! Losing Redis degrades to node-local operation: local delivery goes on,
//! presence is this node's view, a warning is logged and `/readyz` says
//! `degraded`. Each heartbeat writes the node's whole state again, and the
//! subscriber reconnects, so a Redis that comes back (even empty, after a
//! restart) is whole again within a heartbeat. Nothing stored is touched:
//! clients that missed live events catch up with `since`.
//!
//! This module owns the keys and the bus protocol; it knows nothing of HTTP.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use actix::Addr;
use chrono::Utc;
use deadpool_redis::redis::{self, AsyncCommands};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::config::RedisSettings;
use crate::db::Db;
use crate::ids::{SessionId, UserId};
use crate::rooms_live::{self, Deliver, Frame, PresenceView, RoomHub, Status};
use crate::state::LiveSessions;
use palaver_actors::conversation::EndReason;

/// Node `id` listens on `palaver:bus:{id}` for room events and hang-ups.
pub const BUS_PREFIX: &str = "palaver:bus:";
const NODES_KEY: &str = "palaver:nodes";
const NODE_PREFIX: &str = "palaver:node:";
/// Bus messages waiting to be published; past this a message is dropped
/// (counted, logged) rather than growing without bound.
const OUTBOUND_QUEUE: usize = 16_384;
/// Presence changes and session claims waiting for the coordinator.
const COMMAND_QUEUE: usize = 16_384;
/// Longest wait for one Redis round trip before it counts as a failure.
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

/// Changes one node's presence field for a user and answers the
/// cluster-wide status before and after, atomically.
///
/// KEYS: presence hash, last-seen key, the node's user set.
/// ARGV: node, new status (`online`, `away`, or empty to remove), node key
/// prefix, now (RFC 3339), a node to count as alive *before* the change
/// (the dead node being reaped; empty otherwise), user id.
/// Returns `{before, after, last_seen}`.
const PRESENCE_SET: &str = r"
local function status(fields, alive)
  local best = 'offline'
  for i = 1, #fields, 2 do
    local node, s = fields[i], fields[i + 1]
    if node == alive or redis.call('EXISTS', ARGV[3] .. node) == 1 then
      if s == 'online' then return 'online' end
      best = 'away'
    end
  end
  return best
end
local before = status(redis.call('HGETALL', KEYS[1]), ARGV[5])
if ARGV[2] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('SREM', KEYS[3], ARGV[6])
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  redis.call('SADD', KEYS[3], ARGV[6])
end
local after = status(redis.call('HGETALL', KEYS[1]), '')
if after == 'offline' and before ~= 'offline' then
  redis.call('SET', KEYS[2], ARGV[4])
end
return {before, after, redis.call('GET', KEYS[2]) or ''}
";

/// Publishes a bus message to every node (but the origin) where one of the
/// recipients is connected, once per node.
/// KEYS: the recipients' presence hashes. ARGV: the message, the origin
/// node, [`BUS_PREFIX`]. Returns how many nodes it was published to.
const FAN_OUT: &str = r"
local seen, sent = {}, 0
for i = 1, #KEYS do
  for _, node in ipairs(redis.call('HKEYS', KEYS[i])) do
    if node ~= ARGV[2] and not seen[node] then
      seen[node] = true
      redis.call('PUBLISH', ARGV[3] .. node, ARGV[1])
      sent = sent + 1
    end
  end
end
return sent
";

/// The cluster-wide status and last-seen time of some users.
/// KEYS: presence hash and last-seen key of each user, in pairs. ARGV: the
/// node key prefix. Returns `{status, last_seen, …}`.
const PRESENCE_GET: &str = r"
local out = {}
for k = 1, #KEYS, 2 do
  local fields = redis.call('HGETALL', KEYS[k])
  local best = 'offline'
  for i = 1, #fields, 2 do
    if redis.call('EXISTS', ARGV[1] .. fields[i]) == 1 then
      if fields[i + 1] == 'online' then best = 'online' break end
      best = 'away'
    end
  end
  out[#out + 1] = best
  out[#out + 1] = redis.call('GET', KEYS[k + 1]) or ''
end
return out
";

/// The scripts, hashed once (`EVALSHA`, loaded again after a restart).
static PRESENCE_SET_SCRIPT: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(PRESENCE_SET));
static PRESENCE_GET_SCRIPT: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(PRESENCE_GET));
static FAN_OUT_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(FAN_OUT));

/// Why the cluster could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("invalid REDIS_URL: {0}")]
    Url(String),
    #[error(
        "redis.heartbeat_ms ({heartbeat_ms}) must be at least 50 and less than half of \
         redis.node_ttl_ms ({node_ttl_ms}), so one late heartbeat does not kill the node"
    )]
    Timing { heartbeat_ms: u64, node_ttl_ms: u64 },
}

/// What travels on a node's bus channel.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
enum BusMessage<'a> {
    /// A room event for the live connections of `recipients`. Borrowed
    /// when sent: one copy per event, into the serialized text.
    Deliver {
        origin: Cow<'a, str>,
        recipients: Cow<'a, [UserId]>,
        frame: Cow<'a, str>,
    },
    /// Hang up a session that `node` runs.
    Hangup {
        origin: Cow<'a, str>,
        node: Cow<'a, str>,
        session: SessionId,
        /// Only the call carried by this WebRTC peer.
        peer: Option<u64>,
        ended_by_api: bool,
    },
}

/// This node's handle on the cluster. Cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    node: String,
    pool: deadpool_redis::Pool,
    heartbeat: Duration,
    node_ttl: Duration,
    address: Mutex<String>,
    health: Mutex<Health>,
    commands: mpsc::Sender<Command>,
    outbound: mpsc::Sender<Outbound>,
}

/// Another node of the cluster, and where it serves HTTP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteNode {
    pub node: String,
    /// Its base URL, without a trailing `/`.
    pub url: String,
}

/// A room event on its way to the other nodes.
struct Outbound {
    recipients: Vec<UserId>,
    message: String,
}

#[derive(Debug, Default)]
struct Health {
    /// The last Redis failure, while it lasts.
    failure: Option<String>,
    /// Whether the bus subscription is up.
    subscribed: bool,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node", &self.inner.node)
            .finish_non_exhaustive()
    }
}

enum Command {
    Presence {
        user: UserId,
        local: Status,
        peers: Vec<UserId>,
    },
    ClaimSession(SessionId),
    ReleaseSession(SessionId),
    /// Answered once every command queued before it is carried out.
    Settled(tokio::sync::oneshot::Sender<()>),
}

/// The cluster's background work, started once the room hub and the live
/// sessions exist ([`ClusterTasks::spawn`]).
pub struct ClusterTasks {
    cluster: Cluster,
    client: redis::Client,
    commands: mpsc::Receiver<Command>,
    outbound: mpsc::Receiver<Outbound>,
}

impl std::fmt::Debug for ClusterTasks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterTasks").finish_non_exhaustive()
    }
}

/// How this node sees the cluster, for `/readyz`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ClusterStatus {
    /// This node's id.
    pub node: String,
    /// `ok`, or `degraded` (node-local only) while Redis is unreachable.
    pub status: &'static str,
    /// Why it is degraded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Cluster {
    /// The cluster handle and its tasks, not started yet. Nothing is
    /// contacted: a Redis that is down at start degrades like one lost
    /// later.
    pub fn new(
        settings: &RedisSettings,
        url: &str,
        pool: deadpool_redis::Pool,
    ) -> Result<(Cluster, ClusterTasks), ClusterError> {
        if settings.heartbeat_ms < 50 || settings.heartbeat_ms * 2 >= settings.node_ttl_ms {
            return Err(ClusterError::Timing {
                heartbeat_ms: settings.heartbeat_ms,
                node_ttl_ms: settings.node_ttl_ms,
            });
        }
        let client = redis::Client::open(url).map_err(|e| ClusterError::Url(e.to_string()))?;
        let node = settings.node_id.clone().unwrap_or_else(|| {
            format!(
                "node-{}",
                crate::auth::hex(&crate::auth::random_bytes::<4>())
            )
        });
        let (commands_tx, commands) = mpsc::channel(COMMAND_QUEUE);
        let (outbound_tx, outbound) = mpsc::channel(OUTBOUND_QUEUE);
        let cluster = Cluster {
            inner: Arc::new(Inner {
                node,
                pool,
                heartbeat: Duration::from_millis(settings.heartbeat_ms),
                node_ttl: Duration::from_millis(settings.node_ttl_ms),
                address: Mutex::new(String::new()),
                health: Mutex::new(Health::default()),
                commands: commands_tx,
                outbound: outbound_tx,
            }),
        };
        let tasks = ClusterTasks {
            cluster: cluster.clone(),
            client,
            commands,
            outbound,
        };
        Ok((cluster, tasks))
    }

    pub fn node(&self) -> &str {
        &self.inner.node
    }

    /// The address this node serves HTTP on, put in its registration.
    pub fn set_address(&self, address: String) {
        *lock(&self.inner.address) = address;
    }

    pub fn status(&self) -> ClusterStatus {
        let health = lock(&self.inner.health);
        let reason = match (&health.failure, health.subscribed) {
            (Some(failure), _) => Some(format!("node-local only: {failure}")),
            (None, false) => Some("node-local only: not subscribed to the bus yet".to_owned()),
            (None, true) => None,
        };
        ClusterStatus {
            node: self.inner.node.clone(),
            status: if reason.is_some() { "degraded" } else { "ok" },
            reason,
        }
    }

    /// Publishes a room event to the other nodes (this node delivers its
    /// own). Never waits: a full queue drops the event, which clients
    /// catch up on with `since`.
    pub fn publish_remote(&self, recipients: &[UserId], frame: &Frame) {
        if recipients.is_empty() {
            return;
        }
        let message = BusMessage::Deliver {
            origin: Cow::Borrowed(&self.inner.node),
            recipients: Cow::Borrowed(recipients),
            frame: Cow::Borrowed(frame),
        };
        let Ok(message) = serde_json::to_string(&message) else {
            return;
        };
        let outbound = Outbound {
            recipients: recipients.to_vec(),
            message,
        };
        if self.inner.outbound.try_send(outbound).is_err() {
            metrics::counter!("palaver_cluster_bus_dropped_total").increment(1);
            tracing::warn!("cluster bus queue full; a live room event was not sent to other nodes");
        }
    }

    /// `user`'s connections on this node now add up to `local`; `peers`
    /// hear of it if the cluster-wide status changes.
    pub fn presence_changed(&self, user: UserId, local: Status, peers: Vec<UserId>) {
        self.command(Command::Presence { user, local, peers });
    }

    /// Waits until the presence changes and session claims queued so far
    /// are written to Redis (or have failed), at most [`REDIS_TIMEOUT`]. A
    /// rooms connection is told `connected` only after this: before its
    /// presence is in Redis, no other node routes room events to it, and
    /// a message sent to it at once would be lost on the way.
    pub async fn settled(&self) {
        // Without Redis nothing routes to anyone, and the queue may be
        // stuck behind calls timing out: no reason to wait.
        if lock(&self.inner.health).failure.is_some() {
            return;
        }
        let (done, settled) = tokio::sync::oneshot::channel();
        if self.inner.commands.try_send(Command::Settled(done)).is_ok() {
            let _ = tokio::time::timeout(REDIS_TIMEOUT, settled).await;
        }
    }

    /// This node runs session `id` now.
    pub fn claim_session(&self, id: SessionId) {
        self.command(Command::ClaimSession(id));
    }

    /// Session `id` no longer runs here.
    pub fn release_session(&self, id: SessionId) {
        self.command(Command::ReleaseSession(id));
    }

    fn command(&self, command: Command) {
        if self.inner.commands.try_send(command).is_err() {
            metrics::counter!("palaver_cluster_commands_dropped_total").increment(1);
            tracing::warn!("cluster command queue full; a presence or session update was dropped");
        }
    }

    /// The node running session `id` when it is another live node, with
    /// the base URL it serves HTTP at (`redis.node_url`); `None` when no
    /// other node runs it or Redis cannot say (the caller is served here).
    pub async fn session_elsewhere(&self, id: SessionId) -> Option<RemoteNode> {
        let looked_up = self
            .redis(|mut c| async move {
                let owner: Option<String> = c.get(session_key(id)).await?;
                let Some(owner) = owner else {
                    return Ok(None);
                };
                let registration: Option<String> = c.get(node_key(&owner)).await?;
                Ok(registration.map(|r| (owner, r)))
            })
            .await;
        let (node, registration) = match looked_up {
            Ok(found) => found?,
            Err(err) => {
                tracing::warn!(session = %id, %err, "cannot look up the session's node");
                return None;
            }
        };
        if node == self.inner.node {
            return None;
        }
        let address = serde_json::from_str::<serde_json::Value>(&registration)
            .ok()
            .and_then(|r| r["address"].as_str().map(str::to_owned))
            .filter(|a| !a.is_empty());
        match address {
            Some(url) => Some(RemoteNode { node, url }),
            None => {
                tracing::warn!(session = %id, %node, "the session's node registered no address");
                None
            }
        }
    }

    /// Forwards a hang-up for session `id` to the node that runs it.
    /// Answers that node's id, or `None` when no live node runs it.
    pub async fn forward_hangup(
        &self,
        id: SessionId,
        peer: Option<u64>,
        reason: EndReason,
    ) -> Option<String> {
        let owner: Option<String> = match self
            .redis(|mut c| async move {
                let owner: Option<String> = c.get(session_key(id)).await?;
                Ok(owner)
            })
            .await
        {
            Ok(owner) => owner,
            Err(err) => {
                tracing::warn!(session = %id, %err, "cannot look up the session's node; hang-up not forwarded");
                return None;
            }
        };
        let owner = owner.filter(|o| *o != self.inner.node)?;
        let message = BusMessage::Hangup {
            origin: Cow::Borrowed(&self.inner.node),
            node: Cow::Borrowed(&owner),
            session: id,
            peer,
            ended_by_api: reason == EndReason::EndedByApi,
        };
        let text = serde_json::to_string(&message).ok()?;
        let channel = format!("{BUS_PREFIX}{owner}");
        match self
            .redis(|mut c| async move {
                let receivers: i64 = c.publish(channel, text).await?;
                Ok(receivers)
            })
            .await
        {
            Ok(_) => Some(owner),
            Err(err) => {
                tracing::warn!(session = %id, node = %owner, %err, "hang-up not forwarded");
                None
            }
        }
    }

    /// Leaves the cluster on a graceful shutdown: the registration goes at
    /// once, so the next live node to beat reaps this one (its users go
    /// offline) instead of waiting for the TTL.
    pub async fn leave(&self) {
        let key = node_key(&self.inner.node);
        match self
            .redis(|mut c| async move { c.del::<_, ()>(key).await })
            .await
        {
            Ok(()) => tracing::info!(node = %self.inner.node, "left the cluster"),
            Err(err) => {
                tracing::warn!(node = %self.inner.node, %err, "could not leave the cluster; it will notice after redis.node_ttl_ms")
            }
        }
    }

    /// The cluster-wide presence of `users`, in order; `Err` when Redis
    /// cannot say (the caller falls back to this node's view).
    pub async fn presence(&self, users: &[UserId]) -> Result<Vec<PresenceView>, String> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let mut script = PRESENCE_GET_SCRIPT.prepare_invoke();
        for user in users {
            script.key(presence_key(*user)).key(last_seen_key(*user));
        }
        script.arg(NODE_PREFIX);
        let flat: Vec<String> = self
            .redis(|mut c| async move { script.invoke_async(&mut c).await })
            .await?;
        Ok(users
            .iter()
            .zip(flat.chunks(2))
            .map(|(user, pair)| view(*user, &pair[0], pair.get(1).map(String::as_str)))
            .collect())
    }

    /// One Redis round trip on a pooled connection, bounded in time; a
    /// failure marks the cluster degraded, a success heals it.
    async fn redis<T, F, Fut>(&self, call: F) -> Result<T, String>
    where
        F: FnOnce(deadpool_redis::Connection) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let work = async {
            let conn = self.inner.pool.get().await.map_err(|e| e.to_string())?;
            call(conn).await.map_err(|e| e.to_string())
        };
        let result = match tokio::time::timeout(REDIS_TIMEOUT, work).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {} ms", REDIS_TIMEOUT.as_millis())),
        };
        match &result {
            Ok(_) => self.healed(),
            Err(err) => self.failed(err),
        }
        result
    }

    fn failed(&self, err: &str) {
        let mut health = lock(&self.inner.health);
        if health.failure.is_none() {
            tracing::warn!(
                node = %self.inner.node,
                err,
                "redis unreachable: rooms, presence and hang-ups are node-local until it is back"
            );
        }
        health.failure = Some(format!("redis unreachable: {err}"));
    }

    fn healed(&self) {
        let mut health = lock(&self.inner.health);
        if health.failure.take().is_some() {
            tracing::info!(node = %self.inner.node, "redis reachable again: cluster routing restored");
        }
    }

    fn set_subscribed(&self, subscribed: bool) {
        lock(&self.inner.health).subscribed = subscribed;
    }
}

impl ClusterTasks {
    /// Starts the coordinator (presence, heartbeat, reaping), the bus
    /// publisher and the bus subscriber on the current runtime.
    pub fn spawn(self, hub: Addr<RoomHub>, live: Arc<LiveSessions>, db: Db) {
        let ClusterTasks {
            cluster,
            client,
            commands,
            outbound,
        } = self;
        tokio::spawn(publisher(cluster.clone(), outbound));
        tokio::spawn(subscriber(
            cluster.clone(),
            client,
            hub.clone(),
            live.clone(),
        ));
        let coordinator = Coordinator {
            cluster,
            hub,
            live,
            db,
            local: HashMap::new(),
            started_at: Utc::now().to_rfc3339(),
        };
        tokio::spawn(coordinator.run(commands));
    }
}

/// Room events one publisher round trip may carry.
const PUBLISH_BATCH: usize = 64;

/// Publishes room events in order, each to the nodes where its recipients
/// are connected ([`FAN_OUT`]). What queued up while the previous round
/// trip was out goes in one pipeline (up to [`PUBLISH_BATCH`]), so a busy
/// node pays one round trip per batch, not per event; an idle one still
/// sends each event at once.
async fn publisher(cluster: Cluster, mut outbound: mpsc::Receiver<Outbound>) {
    let mut batch = Vec::with_capacity(PUBLISH_BATCH);
    while outbound.recv_many(&mut batch, PUBLISH_BATCH).await > 0 {
        let events = batch.len() as u64;
        let invocations: Vec<redis::ScriptInvocation<'static>> = batch
            .drain(..)
            .map(
                |Outbound {
                     recipients,
                     message,
                 }| {
                    let mut script = FAN_OUT_SCRIPT.prepare_invoke();
                    for user in recipients {
                        script.key(presence_key(user));
                    }
                    script.arg(message).arg(cluster.node()).arg(BUS_PREFIX);
                    script
                },
            )
            .collect();
        let result = cluster
            .redis(|mut c| async move { fan_out_batch(&mut c, &invocations).await })
            .await;
        match result {
            Ok((sent, failed)) => {
                metrics::counter!("palaver_cluster_bus_sent_total").increment(sent);
                metrics::counter!("palaver_cluster_publish_round_trips_total").increment(1);
                if failed > 0 {
                    metrics::counter!("palaver_cluster_bus_dropped_total").increment(failed);
                }
            }
            Err(_) => metrics::counter!("palaver_cluster_bus_dropped_total").increment(events),
        }
    }
}

/// Runs a batch of [`FAN_OUT`] invocations as one pipeline; returns the
/// nodes published to and the events that failed. The pipeline is not
/// atomic, so each answer is read on its own: the events a restarted
/// Redis answered NOSCRIPT for (and only those; another node may have
/// loaded the script in the middle of the batch) are sent again, after
/// loading the script, behind the rest.
async fn fan_out_batch(
    c: &mut deadpool_redis::Connection,
    invocations: &[redis::ScriptInvocation<'static>],
) -> redis::RedisResult<(u64, u64)> {
    let mut pending: Vec<&redis::ScriptInvocation<'static>> = invocations.iter().collect();
    let (mut sent, mut failed) = (0u64, 0u64);
    for attempt in 0..2 {
        let mut pipe = redis::pipe();
        for invocation in &pending {
            pipe.invoke_script(invocation);
        }
        let answers =
            redis::aio::ConnectionLike::req_packed_commands(c, &pipe, 0, pending.len()).await?;
        let mut unknown_script = Vec::new();
        for (invocation, answer) in pending.iter().zip(answers) {
            match answer {
                redis::Value::Int(nodes) => sent += nodes.max(0) as u64,
                redis::Value::ServerError(err) if err.code() == "NOSCRIPT" && attempt == 0 => {
                    unknown_script.push(*invocation);
                }
                _ => failed += 1,
            }
        }
        if unknown_script.is_empty() {
            break;
        }
        FAN_OUT_SCRIPT.prepare_invoke().load_async(c).await?;
        pending = unknown_script;
    }
    Ok((sent, failed))
}

/// Holds the bus subscription, reconnecting while Redis is away, and hands
/// other nodes' events to this node's hub.
async fn subscriber(
    cluster: Cluster,
    client: redis::Client,
    hub: Addr<RoomHub>,
    live: Arc<LiveSessions>,
) {
    let retry = cluster.inner.heartbeat.min(Duration::from_secs(1));
    loop {
        let subscribe = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub
                .subscribe(format!("{BUS_PREFIX}{}", cluster.node()))
                .await?;
            redis::RedisResult::Ok(pubsub)
        };
        match tokio::time::timeout(REDIS_TIMEOUT, subscribe).await {
            Ok(Ok(pubsub)) => {
                cluster.set_subscribed(true);
                tracing::info!(node = %cluster.node(), "subscribed to the cluster bus");
                let mut messages = pubsub.into_on_message();
                while let Some(message) = messages.next().await {
                    on_bus_message(&cluster, &hub, &live, message.get_payload_bytes());
                }
                cluster.set_subscribed(false);
                cluster.failed("the bus subscription was closed");
            }
            Ok(Err(err)) => {
                cluster.set_subscribed(false);
                cluster.failed(&err.to_string());
            }
            Err(_) => {
                cluster.set_subscribed(false);
                cluster.failed("no answer to the bus subscription");
            }
        }
        tokio::time::sleep(retry).await;
    }
}

fn on_bus_message(cluster: &Cluster, hub: &Addr<RoomHub>, live: &LiveSessions, payload: &[u8]) {
    let message: BusMessage = match serde_json::from_slice(payload) {
        Ok(message) => message,
        Err(err) => {
            tracing::warn!(%err, "unreadable cluster bus message ignored");
            return;
        }
    };
    metrics::counter!("palaver_cluster_bus_received_total").increment(1);
    match message {
        BusMessage::Deliver {
            origin,
            recipients,
            frame,
        } if origin != cluster.inner.node => {
            hub.do_send(Deliver {
                recipients: recipients.into_owned(),
                frame: frame.into(),
            });
        }
        BusMessage::Hangup {
            origin,
            node,
            session,
            peer,
            ended_by_api,
        } if node == cluster.inner.node => {
            let reason = if ended_by_api {
                EndReason::EndedByApi
            } else {
                EndReason::Hangup
            };
            let hung_up = match peer {
                Some(peer) => live.hang_up_rtc(session, peer),
                None => live.hang_up(session, reason),
            };
            tracing::info!(session = %session, from = %origin, hung_up, "hang-up forwarded from another node");
        }
        _ => {}
    }
}

/// Presence writes, the heartbeat and reaping, one at a time so a user's
/// changes reach Redis in the order they happened.
struct Coordinator {
    cluster: Cluster,
    hub: Addr<RoomHub>,
    live: Arc<LiveSessions>,
    db: Db,
    /// This node's users that are connected, and how.
    local: HashMap<UserId, Status>,
    started_at: String,
}

impl Coordinator {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut tick = tokio::time::interval(self.cluster.inner.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                command = commands.recv() => match command {
                    Some(command) => self.on_command(command).await,
                    None => return,
                },
                _ = tick.tick() => {
                    // Failures are recorded (degraded) by `redis`.
                    let _ = self.heartbeat().await;
                }
            }
        }
    }

    async fn on_command(&mut self, command: Command) {
        match command {
            Command::Presence { user, local, peers } => {
                match local {
                    Status::Offline => self.local.remove(&user),
                    status => self.local.insert(user, status),
                };
                let node = self.cluster.inner.node.clone();
                match self.set_presence(user, &node, local, "").await {
                    Ok((before, after)) if before.status != after.status => {
                        self.fan_out(&peers, &after.frame());
                    }
                    Ok(_) => {}
                    // Without Redis, this node's view is the best there is.
                    Err(_) => {
                        let view = PresenceView {
                            user_id: user,
                            status: local,
                            last_seen: (local == Status::Offline).then(Utc::now),
                        };
                        self.hub.do_send(Deliver {
                            recipients: peers,
                            frame: view.frame(),
                        });
                    }
                }
            }
            Command::ClaimSession(id) => {
                let (node, ttl) = (self.cluster.inner.node.clone(), self.ttl_ms());
                let _ = self
                    .cluster
                    .redis(|mut c| async move {
                        c.pset_ex::<_, _, ()>(session_key(id), node, ttl).await
                    })
                    .await;
            }
            Command::ReleaseSession(id) => {
                let _ = self
                    .cluster
                    .redis(|mut c| async move { c.del::<_, ()>(session_key(id)).await })
                    .await;
            }
            Command::Settled(done) => {
                let _ = done.send(());
            }
        }
    }

    fn ttl_ms(&self) -> u64 {
        self.cluster.inner.node_ttl.as_millis() as u64
    }

    /// Delivers a frame to `recipients` on every node, this one included.
    fn fan_out(&self, recipients: &[UserId], frame: &Frame) {
        self.cluster.publish_remote(recipients, frame);
        self.hub.do_send(Deliver {
            recipients: recipients.to_vec(),
            frame: frame.clone(),
        });
    }

    /// Runs [`PRESENCE_SET`] for `node`'s field of `user`.
    async fn set_presence(
        &self,
        user: UserId,
        node: &str,
        status: Status,
        alive_before: &str,
    ) -> Result<(PresenceView, PresenceView), String> {
        let mut script = PRESENCE_SET_SCRIPT.prepare_invoke();
        script
            .key(presence_key(user))
            .key(last_seen_key(user))
            .key(node_users_key(node))
            .arg(node)
            .arg(match status {
                Status::Online => "online",
                Status::Away => "away",
                Status::Offline => "",
            })
            .arg(NODE_PREFIX)
            .arg(Utc::now().to_rfc3339())
            .arg(alive_before)
            .arg(user.0);
        let reply: Vec<String> = self
            .cluster
            .redis(|mut c| async move { script.invoke_async(&mut c).await })
            .await?;
        let field = |i: usize| reply.get(i).map(String::as_str).unwrap_or("offline");
        let last_seen = reply.get(2).map(String::as_str);
        Ok((
            view(user, field(0), last_seen),
            view(user, field(1), last_seen),
        ))
    }

    /// Writes this node's whole state again (registration, presence, live
    /// sessions), then reaps nodes that stopped renewing theirs.
    async fn heartbeat(&mut self) -> Result<(), String> {
        let inner = &self.cluster.inner;
        let node = inner.node.clone();
        let registration = serde_json::json!({
            "id": node,
            "address": lock(&inner.address).clone(),
            "started_at": self.started_at,
        })
        .to_string();
        let ttl = self.ttl_ms();
        let mut pipe = redis::pipe();
        pipe.pset_ex(node_key(&node), registration, ttl).ignore();
        pipe.sadd(NODES_KEY, &node).ignore();
        for (user, status) in &self.local {
            let status = if *status == Status::Away {
                "away"
            } else {
                "online"
            };
            pipe.hset(presence_key(*user), &node, status).ignore();
            pipe.sadd(node_users_key(&node), user.0).ignore();
        }
        for id in self.live.ids() {
            pipe.pset_ex(session_key(id), &node, ttl).ignore();
        }
        let nodes: Vec<String> = self
            .cluster
            .redis(|mut c| async move {
                pipe.query_async::<()>(&mut c).await?;
                c.smembers(NODES_KEY).await
            })
            .await?;
        for other in nodes.into_iter().filter(|n| *n != node) {
            let key = node_key(&other);
            let alive: bool = self
                .cluster
                .redis(|mut c| async move { c.exists(key).await })
                .await?;
            if !alive {
                self.reap(&other).await?;
            }
        }
        Ok(())
    }

    /// Clears the presence of a node that died and tells its users' peers.
    /// Only the node that wins the reap lock does it.
    async fn reap(&self, dead: &str) -> Result<(), String> {
        let (lock_key, me, ttl) = (
            format!("palaver:reap:{dead}"),
            self.cluster.inner.node.clone(),
            self.ttl_ms() * 4,
        );
        let won: Option<String> = self
            .cluster
            .redis(|mut c| async move {
                redis::cmd("SET")
                    .arg(lock_key)
                    .arg(me)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        if won.is_none() {
            return Ok(());
        }
        let users_key = node_users_key(dead);
        let users: Vec<i64> = self
            .cluster
            .redis(|mut c| async move { c.smembers(users_key).await })
            .await?;
        let mut went_offline = 0;
        for user in users.into_iter().map(UserId) {
            let (before, after) = self.set_presence(user, dead, Status::Offline, dead).await?;
            if before.status != after.status {
                went_offline += 1;
                let peers = self
                    .db
                    .run(move |c| rooms_live::peers(c, user))
                    .await
                    .unwrap_or_default();
                self.fan_out(&peers, &after.frame());
            }
        }
        let (users_key, dead_owned) = (node_users_key(dead), dead.to_owned());
        self.cluster
            .redis(|mut c| async move {
                redis::pipe()
                    .del(users_key)
                    .ignore()
                    .srem(NODES_KEY, dead_owned)
                    .ignore()
                    .query_async::<()>(&mut c)
                    .await
            })
            .await?;
        tracing::warn!(
            node = %dead,
            users_offline = went_offline,
            "a node stopped renewing its registration; its users' presence was cleared"
        );
        Ok(())
    }
}

fn view(user: UserId, status: &str, last_seen: Option<&str>) -> PresenceView {
    let status = match status {
        "online" => Status::Online,
        "away" => Status::Away,
        _ => Status::Offline,
    };
    PresenceView {
        user_id: user,
        status,
        last_seen: last_seen
            .filter(|_| status == Status::Offline)
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc)),
    }
}

fn node_key(node: &str) -> String {
    format!("{NODE_PREFIX}{node}")
}

fn node_users_key(node: &str) -> String {
    format!("{NODE_PREFIX}{node}:users")
}

fn presence_key(user: UserId) -> String {
    format!("palaver:presence:{}", user.0)
}

fn last_seen_key(user: UserId) -> String {
    format!("palaver:last_seen:{}", user.0)
}

fn session_key(id: SessionId) -> String {
    format!("palaver:session:{}", id.0)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn bus_messages_keep_their_shape() {
        let text = serde_json::to_string(&BusMessage::Deliver {
            origin: "a".into(),
            recipients: vec![UserId(1), UserId(2)].into(),
            frame: r#"{"type":"typing"}"#.into(),
        })
        .unwrap();
        assert_eq!(
            text,
            r#"{"kind":"deliver","origin":"a","recipients":[1,2],"frame":"{\"type\":\"typing\"}"}"#
        );
        let back: BusMessage = serde_json::from_str(&text).unwrap();
        assert!(matches!(back, BusMessage::Deliver { recipients, .. } if recipients.len() == 2));
    }

    #[test]
    fn presence_views_carry_last_seen_only_when_offline() {
        let t = "2026-12-02T03:00:00+00:00";
        assert_eq!(view(UserId(1), "online", Some(t)).last_seen, None);
        assert_eq!(view(UserId(1), "away", Some(t)).status, Status::Away);
        let offline = view(UserId(1), "offline", Some(t));
        assert_eq!(offline.status, Status::Offline);
        assert!(offline.last_seen.is_some());
        assert_eq!(view(UserId(1), "offline", Some("")).last_seen, None);
    }

    #[test]
    fn heartbeat_must_fit_well_inside_the_ttl() {
        let pool = deadpool_redis::Config::from_url("redis://127.0.0.1:1")
            .create_pool(Some(deadpool_redis::Runtime::Tokio1))
            .unwrap();
        let settings = RedisSettings {
            heartbeat_ms: 800,
            node_ttl_ms: 1000,
            ..RedisSettings::default()
        };
        let err = Cluster::new(&settings, "redis://127.0.0.1:1", pool).unwrap_err();
        assert!(err.to_string().contains("heartbeat_ms"), "{err}");
    }
}
