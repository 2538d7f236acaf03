//! What every request handler can reach: settings, storage, token signer,
//! rate limits, Redis, metrics. Built once at start, shared by all workers.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::auth::{TokenSigner, VerifiedKeys};
use crate::config::{LimitSettings, Settings};
use crate::db::Db;
use palaver_actors::conversation::EndReason;
use palaver_actors::session::{Goodbye, Hangup, SessionActor};

use crate::ids::{ApiKeyId, SessionId, UserId};

#[derive(Debug)]
pub struct AppState {
    pub settings: Arc<Settings>,
    pub db: Db,
    pub tokens: TokenSigner,
    /// API keys verified recently (see [`VerifiedKeys`]).
    pub verified_keys: VerifiedKeys,
    pub limits: RateLimits,
    pub redis: Option<deadpool_redis::Pool>,
    /// The other nodes, with Redis: room fan-out, presence, session owners.
    pub cluster: Option<crate::cluster::Cluster>,
    pub metrics: PrometheusHandle,
    /// Sessions with a caller connected to this node.
    pub live: Arc<LiveSessions>,
    /// The UDP endpoint of every WebRTC call on this node.
    pub rtc: palaver_media::rtc::RtcEndpoint,
    /// Live chat rooms: connections, presence, typing, event fan-out.
    pub rooms: crate::rooms_live::LiveRooms,
    /// Set once a shutdown began (see `server::drain`): `/readyz` answers
    /// 503 and no session is created or joined here any more.
    pub draining: std::sync::atomic::AtomicBool,
}

impl AppState {
    pub fn is_draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The session actors running on this node, by session id. With a
/// cluster, each one is claimed for this node while it runs (so hang-ups
/// that land on other nodes find it).
#[derive(Debug, Default)]
pub struct LiveSessions {
    actors: std::sync::Mutex<std::collections::HashMap<SessionId, LiveSession>>,
    cluster: Option<crate::cluster::Cluster>,
}

#[derive(Debug)]
struct LiveSession {
    actor: actix::Addr<SessionActor>,
    /// The WebRTC peer carrying the call, for `DELETE …/webrtc/{peer}`.
    rtc_peer: Option<u64>,
    /// A transport carries the call; false while the caller, dropped, may
    /// rejoin (see [`LiveSessions::reattach`]).
    attached: bool,
    /// What the session could not get when it started, told again to a
    /// caller who rejoins.
    degraded: Arc<crate::voice::Degraded>,
}

impl LiveSessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<SessionId, LiveSession>> {
        self.actors
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn new(cluster: Option<crate::cluster::Cluster>) -> Self {
        Self {
            actors: Default::default(),
            cluster,
        }
    }

    /// How many sessions run here.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Asks every session running here to say `text` and end with
    /// `reason`; returns how many were asked.
    pub fn say_goodbye(&self, text: &str, reason: EndReason) -> usize {
        let live = self.lock();
        for session in live.values() {
            session.actor.do_send(Goodbye {
                text: text.to_owned(),
                reason,
            });
        }
        live.len()
    }

    /// Hangs up every session running here.
    pub fn hang_up_all(&self, reason: EndReason) {
        for session in self.lock().values() {
            session.actor.do_send(Hangup(reason));
        }
    }

    /// The ids of the sessions running here.
    pub fn ids(&self) -> Vec<SessionId> {
        self.lock().keys().copied().collect()
    }

    /// A session whose actor now runs here, with its transport attached.
    /// It stays until [`LiveSessions::remove`], which its actor's end
    /// calls (see `api::live`).
    pub fn insert(
        &self,
        id: SessionId,
        actor: actix::Addr<SessionActor>,
        degraded: Arc<crate::voice::Degraded>,
    ) {
        if let Some(cluster) = &self.cluster {
            cluster.claim_session(id);
        }
        let mut live = self.lock();
        live.insert(
            id,
            LiveSession {
                actor,
                rtc_peer: None,
                attached: true,
                degraded,
            },
        );
        ::metrics::gauge!("palaver_sessions_live").set(live.len() as f64);
    }

    /// Records the WebRTC peer that carries a live session.
    pub fn set_rtc_peer(&self, id: SessionId, peer: u64) {
        if let Some(session) = self.lock().get_mut(&id) {
            session.rtc_peer = Some(peer);
        }
    }

    /// The caller's transport dropped: the session waits for them. The
    /// WebRTC peer that carried it still hangs it up (`DELETE` of its
    /// `Location`) until another transport takes it.
    pub fn detach(&self, id: SessionId) {
        if let Some(session) = self.lock().get_mut(&id) {
            session.attached = false;
        }
    }

    /// Whether `id` runs here (attached to a transport or not).
    pub fn contains(&self, id: SessionId) -> bool {
        self.lock().contains_key(&id)
    }

    /// Whether `id` runs here waiting for its caller to rejoin.
    pub fn is_detached(&self, id: SessionId) -> bool {
        self.lock().get(&id).is_some_and(|s| !s.attached)
    }

    /// Claims a session waiting for its caller for a new transport: its
    /// actor and what it could not get; `None` if it does not run here or
    /// a transport carries it already (two rejoins: one wins).
    pub fn reattach(
        &self,
        id: SessionId,
    ) -> Option<(actix::Addr<SessionActor>, Arc<crate::voice::Degraded>)> {
        let mut live = self.lock();
        let session = live.get_mut(&id).filter(|s| !s.attached)?;
        session.attached = true;
        session.rtc_peer = None;
        Some((session.actor.clone(), session.degraded.clone()))
    }

    pub fn remove(&self, id: SessionId) {
        if let Some(cluster) = &self.cluster {
            cluster.release_session(id);
        }
        let mut live = self.lock();
        live.remove(&id);
        ::metrics::gauge!("palaver_sessions_live").set(live.len() as f64);
    }

    pub fn hang_up(&self, id: SessionId, reason: EndReason) -> bool {
        match self.lock().get(&id) {
            Some(session) => {
                session.actor.do_send(Hangup(reason));
                true
            }
            None => false,
        }
    }

    /// Hangs up the session carried by WebRTC peer `peer`; false when no
    /// live session has that peer.
    pub fn hang_up_rtc(&self, id: SessionId, peer: u64) -> bool {
        match self.lock().get(&id) {
            Some(session) if session.rtc_peer == Some(peer) => {
                session.actor.do_send(Hangup(EndReason::Hangup));
                true
            }
            _ => false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RateKey {
    ApiKey(ApiKeyId),
    User(UserId),
    Session(SessionId),
    /// Unauthenticated routes (signup, login, refresh), by peer address.
    Peer(IpAddr),
}

/// A bucket is empty: come back in `seconds` (at least 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryAfter {
    pub seconds: u64,
}

/// Token buckets per credential (governor's GCRA).
pub struct RateLimits {
    buckets: DefaultKeyedRateLimiter<RateKey>,
}

impl std::fmt::Debug for RateLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimits")
            .field("keys", &self.buckets.len())
            .finish()
    }
}

impl RateLimits {
    pub fn new(settings: &LimitSettings) -> Self {
        let rate = NonZeroU32::new(settings.requests_per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(settings.burst).unwrap_or(rate);
        Self {
            buckets: DefaultKeyedRateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)),
        }
    }

    /// Takes one request from the key's bucket, or says when to come back.
    pub fn check(&self, key: RateKey) -> Result<(), RetryAfter> {
        self.buckets.check_key(&key).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            RetryAfter {
                seconds: wait.as_secs_f64().ceil().max(1.0) as u64,
            }
        })
    }

    /// Forgets buckets that are full again, so idle keys cost no memory.
    pub fn forget_idle(&self) {
        self.buckets.retain_recent();
        self.buckets.shrink_to_fit();
    }
}
