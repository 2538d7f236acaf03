//! Live chat rooms on this node: who is connected, typing indicators and
//! presence, and the fan-out of room events to the connected members.
//!
//! One actix actor, [`RoomHub`], owns all live state of the node: every
//! user's open `/v1/rooms/ws` connections, each user's presence and the
//! typing indicators with their expiry timers. Nothing here is stored; the
//! messages themselves are stored before anything is published.
//!
//! Who receives a room event is decided when it is published: the room's
//! members as stored at that moment ([`store::rooms::member_ids`]), so a
//! user who is not (or no longer) a member never receives it, and the hub
//! keeps no per-room subscription state that could go stale.
//!
//! Publishing goes through the [`RoomBus`] trait. [`LocalBus`] hands a
//! [`Deliver`] straight to the hub; with Redis, [`ClusterBus`] also
//! publishes it on the cluster bus, and every other node's subscriber hands
//! it to its own hub ([`crate::cluster`]). Typing frames and presence
//! changes cross nodes the same way: the hub hands them to the cluster,
//! which decides (from every node's view) whether a user's presence changed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, Addr, AsyncContext, Context, Handler, Message, SpawnHandle};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use serde::Serialize;
use serde_json::json;
use tokio::sync::mpsc;

use crate::cluster::Cluster;
use crate::db::{Db, StoreError, with_conn};
use crate::ids::{RoomId, UserId};
use crate::schema::room_members;
use crate::store;

/// A typing indicator ends by itself this long after the last `typing`.
pub const TYPING_TTL: Duration = Duration::from_secs(5);
/// Frames queued for one connection; a client that falls this far behind is
/// disconnected (it catches up with `GET /v1/rooms/{id}/messages?since=`).
pub const CONNECTION_QUEUE: usize = 256;

/// One server event, serialized once and shared by every recipient.
pub type Frame = Arc<str>;

/// A frame for the live connections of some users.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct Deliver {
    pub recipients: Vec<UserId>,
    pub frame: Frame,
}

/// Where room events go: [`LocalBus`] (this node's hub) on a single node,
/// [`ClusterBus`] (this node's hub and every other node's) with Redis.
pub trait RoomBus: Send + Sync + std::fmt::Debug {
    fn publish(&self, event: Deliver);
}

/// Delivers straight to this node's hub.
#[derive(Debug, Clone)]
pub struct LocalBus(pub Addr<RoomHub>);

impl RoomBus for LocalBus {
    fn publish(&self, event: Deliver) {
        self.0.do_send(event);
    }
}

/// Delivers to this node's hub and publishes to the other nodes.
#[derive(Debug, Clone)]
pub struct ClusterBus {
    hub: Addr<RoomHub>,
    cluster: Cluster,
}

impl RoomBus for ClusterBus {
    fn publish(&self, event: Deliver) {
        self.cluster.publish_remote(&event.recipients, &event.frame);
        self.hub.do_send(event);
    }
}

/// A user's presence as other users see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Online,
    Away,
    Offline,
}

#[derive(Debug, Clone, Serialize)]
pub struct PresenceView {
    pub user_id: UserId,
    pub status: Status,
    /// When the user was last connected; absent while they are.
    pub last_seen: Option<DateTime<Utc>>,
}

impl PresenceView {
    pub fn frame(&self) -> Frame {
        json!({
            "type": "presence",
            "user_id": self.user_id,
            "status": self.status,
            "last_seen": self.last_seen,
        })
        .to_string()
        .into()
    }
}

#[derive(Debug, Default)]
struct UserLive {
    connections: HashMap<u64, mpsc::Sender<Frame>>,
    away: bool,
    last_seen: Option<DateTime<Utc>>,
}

impl UserLive {
    fn status(&self) -> Status {
        match (self.connections.is_empty(), self.away) {
            (true, _) => Status::Offline,
            (false, true) => Status::Away,
            (false, false) => Status::Online,
        }
    }
}

struct Typing {
    recipients: Vec<UserId>,
    expiry: SpawnHandle,
}

/// The live state of this node's rooms (see the module documentation).
#[derive(Default)]
pub struct RoomHub {
    users: HashMap<UserId, UserLive>,
    typing: HashMap<(RoomId, UserId), Typing>,
    next_connection: u64,
    /// The other nodes, with Redis.
    cluster: Option<Cluster>,
}

impl std::fmt::Debug for RoomHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoomHub")
            .field("users", &self.users.len())
            .field("typing", &self.typing.len())
            .finish()
    }
}

impl Actor for RoomHub {
    type Context = Context<Self>;
}

impl RoomHub {
    fn presence(&self, user: UserId) -> PresenceView {
        match self.users.get(&user) {
            Some(live) => PresenceView {
                user_id: user,
                status: live.status(),
                last_seen: live.last_seen.filter(|_| live.connections.is_empty()),
            },
            None => PresenceView {
                user_id: user,
                status: Status::Offline,
                last_seen: None,
            },
        }
    }

    fn deliver(&mut self, recipients: &[UserId], frame: &Frame) {
        for user in recipients {
            let Some(live) = self.users.get_mut(user) else {
                continue;
            };
            live.connections.retain(|id, tx| match tx.try_send(frame.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::info!(user = %user, connection = id, "room connection fell behind; disconnecting it");
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            });
        }
    }

    /// Delivers a typing frame here and on the other nodes.
    fn fan_out(&mut self, recipients: &[UserId], frame: &Frame) {
        if let Some(cluster) = &self.cluster {
            cluster.publish_remote(recipients, frame);
        }
        self.deliver(recipients, frame);
    }

    /// Tells `peers` about `user`'s presence if it changed from `before` on
    /// this node. With a cluster, the cluster decides whether it changed
    /// overall (they may still be online on another node) and tells them.
    fn announce(&mut self, user: UserId, before: Status, peers: &[UserId]) {
        let now = self.presence(user);
        if now.status != before {
            let others: Vec<UserId> = peers.iter().copied().filter(|p| *p != user).collect();
            match &self.cluster {
                Some(cluster) => cluster.presence_changed(user, now.status, others),
                None => self.deliver(&others, &now.frame()),
            }
        }
    }
}

/// A new connection of `user`; answers its id and the presence of `peers`.
#[derive(Debug, Message)]
#[rtype(result = "Connected")]
pub struct Connect {
    pub user: UserId,
    pub tx: mpsc::Sender<Frame>,
    /// The users who share a room with `user`: they learn it is online.
    pub peers: Vec<UserId>,
}

#[derive(Debug, actix::MessageResponse)]
pub struct Connected {
    pub connection: u64,
    /// The presence of each peer, as this node knows it.
    pub presence: Vec<PresenceView>,
}

impl Handler<Connect> for RoomHub {
    type Result = Connected;

    fn handle(&mut self, msg: Connect, _: &mut Context<Self>) -> Connected {
        self.next_connection += 1;
        let connection = self.next_connection;
        let before = self.presence(msg.user).status;
        let live = self.users.entry(msg.user).or_default();
        if live.connections.is_empty() {
            live.away = false;
        }
        live.connections.insert(connection, msg.tx);
        self.announce(msg.user, before, &msg.peers);
        let presence = msg
            .peers
            .iter()
            .filter(|p| **p != msg.user)
            .map(|p| self.presence(*p))
            .collect();
        Connected {
            connection,
            presence,
        }
    }
}

/// A connection closed.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Disconnect {
    pub user: UserId,
    pub connection: u64,
    pub peers: Vec<UserId>,
}

impl Handler<Disconnect> for RoomHub {
    type Result = ();

    fn handle(&mut self, msg: Disconnect, ctx: &mut Context<Self>) {
        let before = self.presence(msg.user).status;
        let Some(live) = self.users.get_mut(&msg.user) else {
            return;
        };
        live.connections.remove(&msg.connection);
        if live.connections.is_empty() {
            live.last_seen = Some(Utc::now());
            live.away = false;
            // Whatever they were typing ends with them.
            let ended: Vec<(RoomId, UserId)> = self
                .typing
                .keys()
                .filter(|(_, u)| *u == msg.user)
                .copied()
                .collect();
            for key in ended {
                if let Some(typing) = self.typing.remove(&key) {
                    ctx.cancel_future(typing.expiry);
                    self.fan_out(&typing.recipients, &typing_frame(key.0, key.1, false));
                }
            }
        }
        self.announce(msg.user, before, &msg.peers);
    }
}

/// A user marks themselves away (or back online).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct SetAway {
    pub user: UserId,
    pub away: bool,
    pub peers: Vec<UserId>,
}

impl Handler<SetAway> for RoomHub {
    type Result = ();

    fn handle(&mut self, msg: SetAway, _: &mut Context<Self>) {
        let before = self.presence(msg.user).status;
        if let Some(live) = self.users.get_mut(&msg.user) {
            live.away = msg.away;
        }
        self.announce(msg.user, before, &msg.peers);
    }
}

/// `user` is typing in `room` (or stopped).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct SetTyping {
    pub room: RoomId,
    pub user: UserId,
    pub typing: bool,
    /// The room's other members.
    pub recipients: Vec<UserId>,
}

pub fn typing_frame(room: RoomId, user: UserId, typing: bool) -> Frame {
    json!({ "type": "typing", "room_id": room, "user_id": user, "typing": typing })
        .to_string()
        .into()
}

impl Handler<SetTyping> for RoomHub {
    type Result = ();

    fn handle(&mut self, msg: SetTyping, ctx: &mut Context<Self>) {
        let key = (msg.room, msg.user);
        let was = self.typing.remove(&key);
        if let Some(old) = &was {
            ctx.cancel_future(old.expiry);
        }
        if msg.typing {
            let expiry = ctx.run_later(TYPING_TTL, move |hub, _| {
                if let Some(typing) = hub.typing.remove(&key) {
                    hub.fan_out(&typing.recipients, &typing_frame(key.0, key.1, false));
                }
            });
            if was.is_none() {
                self.fan_out(&msg.recipients, &typing_frame(msg.room, msg.user, true));
            }
            self.typing.insert(
                key,
                Typing {
                    recipients: msg.recipients,
                    expiry,
                },
            );
        } else if let Some(old) = was {
            self.fan_out(&old.recipients, &typing_frame(msg.room, msg.user, false));
        }
    }
}

impl Handler<Deliver> for RoomHub {
    type Result = ();

    fn handle(&mut self, msg: Deliver, _: &mut Context<Self>) {
        self.deliver(&msg.recipients, &msg.frame);
    }
}

/// The presence of some users, in the same order.
#[derive(Debug, Message)]
#[rtype(result = "Vec<PresenceView>")]
pub struct GetPresence(pub Vec<UserId>);

impl Handler<GetPresence> for RoomHub {
    type Result = actix::MessageResult<GetPresence>;

    fn handle(&mut self, msg: GetPresence, _: &mut Context<Self>) -> Self::Result {
        actix::MessageResult(msg.0.into_iter().map(|u| self.presence(u)).collect())
    }
}

/// The handle in [`crate::state::AppState`]: the hub and the bus room
/// events are published on.
#[derive(Debug, Clone)]
pub struct LiveRooms {
    pub hub: Addr<RoomHub>,
    pub bus: Arc<dyn RoomBus>,
    cluster: Option<Cluster>,
}

impl LiveRooms {
    /// Starts this node's hub on the current actix arbiter, publishing to
    /// the other nodes of `cluster` when there is one.
    pub fn start(cluster: Option<Cluster>) -> Self {
        let hub = RoomHub {
            cluster: cluster.clone(),
            ..RoomHub::default()
        }
        .start();
        let bus: Arc<dyn RoomBus> = match &cluster {
            Some(cluster) => Arc::new(ClusterBus {
                hub: hub.clone(),
                cluster: cluster.clone(),
            }),
            None => Arc::new(LocalBus(hub.clone())),
        };
        LiveRooms { bus, hub, cluster }
    }

    /// `user` stopped typing in `room` (they sent a message).
    pub fn stop_typing(&self, room: RoomId, user: UserId) {
        self.hub.do_send(SetTyping {
            room,
            user,
            typing: false,
            recipients: Vec::new(),
        });
    }

    /// The presence of `users`: cluster-wide with Redis, else (or while
    /// Redis is unreachable) as this node knows it (offline when the hub
    /// does not answer).
    pub async fn presence(&self, users: Vec<UserId>) -> Vec<PresenceView> {
        if let Some(cluster) = &self.cluster
            && let Ok(views) = cluster.presence(&users).await
        {
            return views;
        }
        let fallback: Vec<PresenceView> = users
            .iter()
            .map(|u| PresenceView {
                user_id: *u,
                status: Status::Offline,
                last_seen: None,
            })
            .collect();
        self.hub.send(GetPresence(users)).await.unwrap_or(fallback)
    }

    /// Publishes `event` (a JSON object with a `type`) to the members of
    /// `room`. The event is already stored; a failure to look up the
    /// members is logged, not returned (clients catch up with `since`).
    pub async fn publish(&self, db: &Db, room: RoomId, event: serde_json::Value) {
        match db.run(move |c| store::rooms::member_ids(c, room)).await {
            Ok(recipients) => self.bus.publish(Deliver {
                recipients,
                frame: event.to_string().into(),
            }),
            Err(err) => {
                tracing::warn!(room = %room, %err, "room members not loaded; live event not sent")
            }
        }
    }
}

/// Everyone who shares a room with `user` (not `user`). Users belong to one
/// organization, and so do their rooms.
pub fn peers(conn: &mut crate::db::Conn<'_>, user: UserId) -> Result<Vec<UserId>, StoreError> {
    let rows: Vec<UserId> = with_conn!(conn, |c| {
        let mine: Vec<RoomId> = room_members::table
            .filter(room_members::user_id.eq(user))
            .select(room_members::room_id)
            .load(c)?;
        room_members::table
            .filter(room_members::room_id.eq_any(mine))
            .filter(room_members::user_id.ne(user))
            .select(room_members::user_id)
            .distinct()
            .order(room_members::user_id)
            .load(c)
    })?;
    Ok(rows)
}
