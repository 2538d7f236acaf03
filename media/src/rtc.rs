//! The WebRTC endpoint: every peer's media through one UDP socket.
//!
//! [`RtcEndpoint::start`] binds the socket and runs one driver thread that
//! owns every peer's [`str0m::Rtc`] (ICE-lite, DTLS, SRTP, SCTP). The driver
//! routes each datagram to the peer that accepts it, feeds timeouts only to
//! the peers whose deadline passed, and hands what the peers produce to the
//! session side through channels: Opus payloads and data-channel text in,
//! Opus payloads and text out. Encoding and decoding happen on the session
//! side ([`CallAudio`]), so one slow session never delays another's packets.
//!
//! [`RtcEndpoint::accept`] turns an SDP offer into an answer and an
//! [`RtcPeer`]: the offer must carry an audio m-line with Opus; a data
//! channel labelled [`EVENTS_CHANNEL`] carries JSON text both ways.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use str0m::change::SdpOffer;
use str0m::channel::ChannelId;
use str0m::format::Codec;
use str0m::media::{Frequency, MediaKind, MediaTime, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc, RtcConfig};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::codec::{CodecError, EncoderConfig, OpusDecoder, OpusEncoder};
use crate::codec::{MAX_PACKET_BYTES, OPUS_FRAME_SAMPLES, WIDEBAND_FRAME_SAMPLES};
use crate::frame::AudioFrame;

/// The data channel that carries session events as JSON text.
pub const EVENTS_CHANNEL: &str = "events";
/// Opus RTP clock ticks in one 20 ms frame.
const TICKS_PER_FRAME: u64 = OPUS_FRAME_SAMPLES as u64;
/// Largest datagram read from the socket.
const MAX_DATAGRAM: usize = 2048;
/// Events queued for a session task that reads slowly; audio beyond this is
/// dropped (and counted), which is what a late packet is anyway.
const PEER_QUEUE: usize = 512;
/// The driver wakes at least this often with nothing to do.
const IDLE_WAKE: Duration = Duration::from_millis(100);
/// Text queued for a data channel that has not opened yet.
const MAX_PENDING_TEXT: usize = 256;
/// How long a hang-up waits for the events channel to deliver what was
/// queued (the `session-ended` goodbye) before closing DTLS.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Where the endpoint listens and what address it tells peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtcEndpointConfig {
    /// The one UDP socket every peer's media goes through.
    pub bind: SocketAddr,
    /// The address put in the ICE host candidate, when `bind` is a wildcard
    /// (`0.0.0.0`) or the server sits behind 1:1 NAT.
    pub public_ip: Option<IpAddr>,
}

/// Why an endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum RtcStartError {
    #[error("binding the WebRTC UDP socket on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error(
        "the WebRTC socket is bound to the wildcard address {0}: set the public IP callers reach it on (rtc.public_ip)"
    )]
    NoPublicIp(SocketAddr),
    #[error("the WebRTC host candidate {addr} is not usable: {message}")]
    Candidate { addr: SocketAddr, message: String },
    #[error("generating the DTLS certificate: {0}")]
    Certificate(String),
    #[error("starting the WebRTC driver thread: {0}")]
    Thread(io::Error),
}

/// Why an offer was refused; each maps to one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum OfferError {
    /// Not SDP at all, or SDP str0m cannot read (400).
    #[error("malformed SDP offer: {0}")]
    Malformed(String),
    /// No `m=audio` line (422).
    #[error("the offer has no audio m-line; Palaver needs one sendrecv Opus audio track")]
    NoAudio,
    /// An audio line, but no Opus (422).
    #[error(
        "the offer's audio m-line does not offer Opus (opus/48000/2); Palaver speaks only Opus"
    )]
    NoOpus,
    /// Readable SDP that negotiation refused (400).
    #[error("the offer cannot be answered: {0}")]
    Rejected(String),
    /// The driver is gone (server shutting down) (503).
    #[error("the WebRTC endpoint is shutting down")]
    EndpointClosed,
}

/// A peer's number on this endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub u64);

impl std::fmt::Display for PeerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// What happens on a peer, for its session.
#[derive(Debug)]
pub enum PeerEvent {
    /// ICE and DTLS are up: media can flow.
    Connected,
    /// The data channel for events opened.
    ChannelOpen,
    /// One Opus payload from the caller, in order. `contiguous` is false
    /// when packets before it were lost.
    Audio {
        payload: Arc<[u8]>,
        contiguous: bool,
    },
    /// A text message on the events channel.
    Text(String),
    /// The peer is gone (hang-up, ICE timeout, DTLS failure); `reason` says
    /// which. Nothing follows.
    Closed { reason: String },
}

enum Command {
    Add(Box<NewPeer>),
    Audio { peer: PeerId, payload: Arc<[u8]> },
    Text { peer: PeerId, text: String },
    Close { peer: PeerId },
}

struct NewPeer {
    id: PeerId,
    rtc: Rtc,
    events: mpsc::Sender<PeerEvent>,
}

/// Counters of the whole endpoint, for metrics.
#[derive(Debug, Default)]
pub struct EndpointStats {
    pub peers: AtomicU64,
    pub datagrams_in: AtomicU64,
    pub datagrams_unrouted: AtomicU64,
    pub datagrams_out: AtomicU64,
    pub send_errors: AtomicU64,
    pub audio_dropped: AtomicU64,
}

/// The endpoint's handle; cheap to clone. The driver thread ends when the
/// last handle (and every peer) is dropped.
#[derive(Debug, Clone)]
pub struct RtcEndpoint {
    inner: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    commands: mpsc::UnboundedSender<Command>,
    local_addr: SocketAddr,
    candidate: SocketAddr,
    cert: str0m::config::DtlsCert,
    next_peer: AtomicU64,
    stats: Arc<EndpointStats>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Add(p) => write!(f, "Add({})", p.id),
            Self::Audio { peer, payload } => write!(f, "Audio({peer}, {} bytes)", payload.len()),
            Self::Text { peer, text } => write!(f, "Text({peer}, {} bytes)", text.len()),
            Self::Close { peer } => write!(f, "Close({peer})"),
        }
    }
}

impl RtcEndpoint {
    /// Binds the socket and starts the driver thread.
    pub fn start(config: RtcEndpointConfig) -> Result<Self, RtcStartError> {
        let provider = str0m::crypto::from_feature_flags();
        let cert = provider
            .dtls_provider
            .generate_certificate()
            .ok_or_else(|| RtcStartError::Certificate("the crypto provider made none".into()))?;
        provider.install_process_default();

        let socket =
            std::net::UdpSocket::bind(config.bind).map_err(|source| RtcStartError::Bind {
                addr: config.bind,
                source,
            })?;
        let local_addr = socket.local_addr().map_err(|source| RtcStartError::Bind {
            addr: config.bind,
            source,
        })?;
        let candidate = match config.public_ip {
            Some(ip) => SocketAddr::new(ip, local_addr.port()),
            None if local_addr.ip().is_unspecified() => {
                return Err(RtcStartError::NoPublicIp(local_addr));
            }
            None => local_addr,
        };
        Candidate::host(candidate, "udp").map_err(|e| RtcStartError::Candidate {
            addr: candidate,
            message: e.to_string(),
        })?;
        socket
            .set_nonblocking(true)
            .map_err(|source| RtcStartError::Bind {
                addr: config.bind,
                source,
            })?;

        let (commands, rx) = mpsc::unbounded_channel();
        let stats = Arc::new(EndpointStats::default());
        let driver_stats = stats.clone();
        std::thread::Builder::new()
            .name("palaver-rtc".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(err) => {
                        tracing::error!(%err, "cannot start the WebRTC driver's runtime");
                        return;
                    }
                };
                runtime.block_on(async move {
                    match UdpSocket::from_std(socket) {
                        Ok(socket) => {
                            Driver::new(socket, local_addr, rx, driver_stats)
                                .run()
                                .await
                        }
                        Err(err) => tracing::error!(%err, "cannot register the WebRTC socket"),
                    }
                });
            })
            .map_err(RtcStartError::Thread)?;
        tracing::info!(bind = %local_addr, candidate = %candidate, "WebRTC endpoint listening (ICE-lite, UDP)");
        Ok(Self {
            inner: Arc::new(Shared {
                commands,
                local_addr,
                candidate,
                cert,
                next_peer: AtomicU64::new(1),
                stats,
            }),
        })
    }

    /// The socket's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// The address in the ICE candidate handed to peers.
    pub fn candidate_addr(&self) -> SocketAddr {
        self.inner.candidate
    }

    pub fn stats(&self) -> &EndpointStats {
        &self.inner.stats
    }

    /// Answers an SDP offer and adds the peer to the driver.
    pub fn accept(&self, offer_sdp: &str) -> Result<(String, RtcPeer), OfferError> {
        let (answer, rtc) = negotiate(offer_sdp, &self.inner.cert, self.inner.candidate)?;
        let id = PeerId(self.inner.next_peer.fetch_add(1, Ordering::Relaxed));
        let (events_tx, events) = mpsc::channel(PEER_QUEUE);
        self.inner
            .commands
            .send(Command::Add(Box::new(NewPeer {
                id,
                rtc,
                events: events_tx,
            })))
            .map_err(|_| OfferError::EndpointClosed)?;
        Ok((
            answer,
            RtcPeer {
                id,
                commands: self.inner.commands.clone(),
                events,
            },
        ))
    }
}

/// The session side of one peer. Dropping it hangs the peer up.
#[derive(Debug)]
pub struct RtcPeer {
    id: PeerId,
    commands: mpsc::UnboundedSender<Command>,
    events: mpsc::Receiver<PeerEvent>,
}

impl RtcPeer {
    pub fn id(&self) -> PeerId {
        self.id
    }

    /// Queues one 20 ms Opus packet for the caller. Dropped before the peer
    /// connects, as a phone line would.
    pub fn send_audio(&self, payload: &[u8]) {
        let _ = self.commands.send(Command::Audio {
            peer: self.id,
            payload: Arc::from(payload),
        });
    }

    /// Queues a text message on the events channel (held until it opens).
    pub fn send_text(&self, text: String) {
        let _ = self.commands.send(Command::Text {
            peer: self.id,
            text,
        });
    }

    /// The next event; `None` once the driver is gone.
    pub async fn recv(&mut self) -> Option<PeerEvent> {
        self.events.recv().await
    }

    /// Hangs up: DTLS close, the peer leaves the driver.
    pub fn close(&self) {
        let _ = self.commands.send(Command::Close { peer: self.id });
    }
}

impl Drop for RtcPeer {
    fn drop(&mut self) {
        self.close();
    }
}

/// What [`RtcEndpoint::accept`] does before the peer joins the driver: the
/// cheap checks, str0m's parse of the offer and its answer. No socket, no
/// thread.
fn negotiate(
    offer_sdp: &str,
    cert: &str0m::config::DtlsCert,
    candidate: SocketAddr,
) -> Result<(String, Rtc), OfferError> {
    check_offer(offer_sdp)?;
    let offer =
        SdpOffer::from_sdp_string(offer_sdp).map_err(|e| OfferError::Malformed(e.to_string()))?;
    let mut rtc = RtcConfig::new()
        .set_ice_lite(true)
        .set_dtls_cert(cert.clone())
        .clear_codecs()
        .enable_opus(true, false)
        .build(Instant::now());
    let candidate = Candidate::host(candidate, "udp")
        .map_err(|e| OfferError::Rejected(format!("host candidate: {e}")))?;
    rtc.add_local_candidate(candidate);
    let answer = rtc
        .sdp_api()
        .accept_offer(offer)
        .map_err(|e| OfferError::Rejected(e.to_string()))?
        .to_sdp_string();
    if !answer_has_audio(&answer) {
        return Err(OfferError::NoOpus);
    }
    Ok((answer, rtc))
}

/// The answer a node would give `offer_sdp` (with a certificate made once
/// per process and a placeholder candidate), or why it refuses the offer:
/// the join path's negotiation without a running endpoint, for the fuzz
/// targets (`fuzz/`).
pub fn answer_offer(offer_sdp: &str) -> Result<String, OfferError> {
    static CERT: std::sync::OnceLock<Option<str0m::config::DtlsCert>> = std::sync::OnceLock::new();
    let cert = CERT
        .get_or_init(|| {
            let provider = str0m::crypto::from_feature_flags();
            let cert = provider.dtls_provider.generate_certificate();
            provider.install_process_default();
            cert
        })
        .as_ref()
        .ok_or(OfferError::EndpointClosed)?;
    negotiate(offer_sdp, cert, SocketAddr::from(([127, 0, 0, 1], 9))).map(|(answer, _)| answer)
}

/// Cheap checks that give a precise answer before negotiation does.
fn check_offer(sdp: &str) -> Result<(), OfferError> {
    let trimmed = sdp.trim_start();
    if !trimmed.starts_with("v=0") {
        return Err(OfferError::Malformed(
            "an SDP offer starts with `v=0` (send the offer's `sdp` text as the body, Content-Type: application/sdp)".into(),
        ));
    }
    let mut audio_lines = 0;
    let mut opus = false;
    let mut in_audio = false;
    for line in sdp.lines() {
        let line = line.trim_end();
        if let Some(rest) = line.strip_prefix("m=") {
            in_audio = rest.starts_with("audio ");
            audio_lines += usize::from(in_audio);
        } else if in_audio
            && let Some(map) = line.strip_prefix("a=rtpmap:")
            && let Some((_, codec)) = map.split_once(' ')
            && codec.to_ascii_lowercase().starts_with("opus/48000")
        {
            opus = true;
        }
    }
    match (audio_lines, opus) {
        (0, _) => Err(OfferError::NoAudio),
        (_, false) => Err(OfferError::NoOpus),
        _ => Ok(()),
    }
}

/// True when the answer accepted an audio m-line (port not 0).
fn answer_has_audio(answer: &str) -> bool {
    answer.lines().any(|line| {
        line.strip_prefix("m=audio ")
            .and_then(|rest| rest.split(' ').next())
            .is_some_and(|port| port != "0")
    })
}

struct Peer {
    id: PeerId,
    rtc: Rtc,
    events: mpsc::Sender<PeerEvent>,
    /// The negotiated audio m-line and Opus payload type.
    audio: Option<(Mid, Pt)>,
    channel: Option<ChannelId>,
    pending_text: VecDeque<String>,
    /// RTP time of the next outbound frame.
    media_time: u64,
    deadline: Instant,
    closed_reason: Option<String>,
    /// Hanging up: close once the events channel is flushed, or at this
    /// time at the latest.
    closing: Option<Instant>,
}

impl Peer {
    /// Starts closing a peer that is hanging up once its queued text went
    /// out; true when it did (drain it again to send the goodbye).
    fn close_if_flushed(&mut self, now: Instant) -> bool {
        let Some(limit) = self.closing else {
            return false;
        };
        let flushed = self
            .channel
            .and_then(|id| self.rtc.channel(id))
            .is_none_or(|mut channel| channel.buffered_amount() == 0);
        if !(flushed || now >= limit) {
            return false;
        }
        self.closing = None;
        if self.rtc.close().is_err() {
            self.rtc.disconnect();
        }
        true
    }

    /// Runs `poll_output` until it asks to wait; returns when to wake.
    fn drain(&mut self, socket: &UdpSocket, stats: &EndpointStats) -> Instant {
        loop {
            if !self.rtc.is_alive() {
                self.closed_reason
                    .get_or_insert_with(|| "the connection closed".into());
                return Instant::now();
            }
            match self.rtc.poll_output() {
                Ok(Output::Timeout(at)) => {
                    self.deadline = at;
                    return at;
                }
                Ok(Output::Transmit(t)) => match socket.try_send_to(&t.contents, t.destination) {
                    Ok(_) => {
                        stats.datagrams_out.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        stats.send_errors.fetch_add(1, Ordering::Relaxed);
                    }
                },
                Ok(Output::Event(event)) => self.on_event(event, stats),
                Err(err) => {
                    tracing::info!(peer = %self.id, %err, "WebRTC peer failed");
                    self.closed_reason = Some(format!("WebRTC error: {err}"));
                    self.rtc.disconnect();
                }
            }
        }
    }

    fn on_event(&mut self, event: Event, stats: &EndpointStats) {
        match event {
            Event::Connected => {
                let _ = self.events.try_send(PeerEvent::Connected);
            }
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                self.closed_reason = Some("ICE disconnected (no packets from the caller)".into());
                self.rtc.disconnect();
            }
            Event::MediaAdded(added) if added.kind == MediaKind::Audio && self.audio.is_none() => {
                let pt = self.rtc.writer(added.mid).and_then(|writer| {
                    writer
                        .payload_params()
                        .find(|p| p.spec().codec == Codec::Opus)
                        .map(|p| p.pt())
                });
                if let Some(pt) = pt {
                    self.audio = Some((added.mid, pt));
                }
            }
            Event::MediaData(data) if self.audio.is_some_and(|(mid, _)| mid == data.mid) => {
                let event = PeerEvent::Audio {
                    payload: data.data,
                    contiguous: data.contiguous,
                };
                if self.events.try_send(event).is_err() {
                    stats.audio_dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            Event::ChannelOpen(id, label) if label == EVENTS_CHANNEL => {
                self.channel = Some(id);
                let _ = self.events.try_send(PeerEvent::ChannelOpen);
                while let Some(text) = self.pending_text.pop_front() {
                    self.write_text(&text);
                }
            }
            Event::ChannelData(data) if Some(data.id) == self.channel && !data.binary => {
                match String::from_utf8(data.data) {
                    Ok(text) => {
                        let _ = self.events.try_send(PeerEvent::Text(text));
                    }
                    Err(_) => {
                        tracing::debug!(peer = %self.id, "non-UTF-8 text on the events channel")
                    }
                }
            }
            Event::ChannelClose(id) if Some(id) == self.channel => self.channel = None,
            _ => {}
        }
    }

    fn write_audio(&mut self, payload: Arc<[u8]>) {
        let Some((mid, pt)) = self.audio else {
            return;
        };
        if !self.rtc.is_connected() {
            return;
        }
        let time = MediaTime::new(self.media_time, Frequency::FORTY_EIGHT_KHZ);
        self.media_time += TICKS_PER_FRAME;
        if let Some(writer) = self.rtc.writer(mid)
            && let Err(err) = writer.write(pt, Instant::now(), time, payload)
        {
            tracing::debug!(peer = %self.id, %err, "dropping an outbound audio packet");
        }
    }

    fn write_text(&mut self, text: &str) {
        let written = self
            .channel
            .and_then(|id| self.rtc.channel(id))
            .map(|mut channel| channel.write(false, text.as_bytes()));
        match written {
            Some(Ok(_)) => {}
            Some(Err(err)) => {
                tracing::debug!(peer = %self.id, %err, "cannot write to the events channel")
            }
            None if self.pending_text.len() < MAX_PENDING_TEXT => {
                self.pending_text.push_back(text.to_owned())
            }
            None => {}
        }
    }
}

struct Driver {
    socket: UdpSocket,
    local_addr: SocketAddr,
    commands: mpsc::UnboundedReceiver<Command>,
    peers: HashMap<PeerId, Peer>,
    /// The peer a remote address last reached, so most datagrams skip the
    /// scan over every peer's `accepts`.
    routes: HashMap<SocketAddr, PeerId>,
    stats: Arc<EndpointStats>,
}

impl Driver {
    fn new(
        socket: UdpSocket,
        local_addr: SocketAddr,
        commands: mpsc::UnboundedReceiver<Command>,
        stats: Arc<EndpointStats>,
    ) -> Self {
        Self {
            socket,
            local_addr,
            commands,
            peers: HashMap::new(),
            routes: HashMap::new(),
            stats,
        }
    }

    async fn run(mut self) {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let mut touched: Vec<PeerId> = Vec::new();
        let mut next_wake = Instant::now() + IDLE_WAKE;
        loop {
            let sleep = tokio::time::sleep_until(next_wake.into());
            tokio::select! {
                received = self.socket.recv_from(&mut buf) => match received {
                    Ok((len, source)) => {
                        self.stats.datagrams_in.fetch_add(1, Ordering::Relaxed);
                        if let Some(peer) = self.route(&buf[..len], source) {
                            touched.push(peer);
                        }
                    }
                    Err(err) => tracing::debug!(%err, "WebRTC socket read error"),
                },
                command = self.commands.recv() => match command {
                    None => break,
                    Some(command) => {
                        if let Some(peer) = self.command(command) {
                            touched.push(peer);
                        }
                        // Take whatever else is queued in the same wake.
                        while let Ok(command) = self.commands.try_recv() {
                            if let Some(peer) = self.command(command) {
                                touched.push(peer);
                            }
                        }
                    }
                },
                () = sleep => {}
            }
            let now = Instant::now();
            for peer in self.peers.values_mut() {
                if peer.deadline <= now {
                    if let Err(err) = peer.rtc.handle_input(Input::Timeout(now)) {
                        peer.closed_reason = Some(format!("WebRTC error: {err}"));
                        peer.rtc.disconnect();
                    }
                    touched.push(peer.id);
                }
            }
            touched.sort_unstable();
            touched.dedup();
            for id in touched.drain(..) {
                if let Some(peer) = self.peers.get_mut(&id) {
                    peer.drain(&self.socket, &self.stats);
                    if peer.close_if_flushed(now) {
                        peer.drain(&self.socket, &self.stats);
                    }
                    if peer.closing.is_some() {
                        // Check again soon.
                        peer.deadline = peer.deadline.min(now + Duration::from_millis(20));
                    }
                }
            }
            self.reap();
            next_wake = self
                .peers
                .values()
                .map(|p| p.deadline)
                .min()
                .unwrap_or(now + IDLE_WAKE)
                .min(now + IDLE_WAKE);
        }
        for (_, mut peer) in self.peers.drain() {
            peer.rtc.disconnect();
            let _ = peer.events.try_send(PeerEvent::Closed {
                reason: "the server is shutting down".into(),
            });
        }
        tracing::info!("WebRTC endpoint stopped");
    }

    fn route(&mut self, datagram: &[u8], source: SocketAddr) -> Option<PeerId> {
        let Ok(contents) = datagram.try_into() else {
            self.stats
                .datagrams_unrouted
                .fetch_add(1, Ordering::Relaxed);
            return None;
        };
        let input = Input::Receive(
            Instant::now(),
            Receive {
                proto: Protocol::Udp,
                source,
                destination: self.local_addr,
                contents,
            },
        );
        let cached = self
            .routes
            .get(&source)
            .copied()
            .filter(|id| self.peers.get(id).is_some_and(|p| p.rtc.accepts(&input)));
        let id = match cached {
            Some(id) => id,
            None => {
                let found = self
                    .peers
                    .values()
                    .find(|p| p.rtc.accepts(&input))
                    .map(|p| p.id);
                let Some(id) = found else {
                    self.stats
                        .datagrams_unrouted
                        .fetch_add(1, Ordering::Relaxed);
                    return None;
                };
                self.routes.insert(source, id);
                id
            }
        };
        let peer = self.peers.get_mut(&id)?;
        if let Err(err) = peer.rtc.handle_input(input) {
            tracing::debug!(peer = %id, %err, "WebRTC input refused");
        }
        Some(id)
    }

    fn command(&mut self, command: Command) -> Option<PeerId> {
        match command {
            Command::Add(new) => {
                let NewPeer { id, rtc, events } = *new;
                self.peers.insert(
                    id,
                    Peer {
                        id,
                        rtc,
                        events,
                        audio: None,
                        channel: None,
                        pending_text: VecDeque::new(),
                        media_time: 0,
                        deadline: Instant::now(),
                        closed_reason: None,
                        closing: None,
                    },
                );
                self.stats
                    .peers
                    .store(self.peers.len() as u64, Ordering::Relaxed);
                Some(id)
            }
            Command::Audio { peer, payload } => {
                let p = self.peers.get_mut(&peer)?;
                p.write_audio(payload);
                Some(peer)
            }
            Command::Text { peer, text } => {
                let p = self.peers.get_mut(&peer)?;
                p.write_text(&text);
                Some(peer)
            }
            Command::Close { peer } => {
                let p = self.peers.get_mut(&peer)?;
                p.closed_reason
                    .get_or_insert_with(|| "hung up by the server".into());
                if !p.rtc.is_connected() {
                    p.rtc.disconnect();
                } else if p.closing.is_none() {
                    // Let the events already queued (the goodbye) arrive.
                    p.closing = Some(Instant::now() + CLOSE_GRACE);
                }
                Some(peer)
            }
        }
    }

    /// Drops the peers that died and tells their sessions why.
    fn reap(&mut self) {
        let before = self.peers.len();
        self.peers.retain(|_, peer| {
            if peer.rtc.is_alive() {
                return true;
            }
            let reason = peer
                .closed_reason
                .take()
                .unwrap_or_else(|| "the connection closed".into());
            tracing::info!(peer = %peer.id, %reason, "WebRTC peer gone");
            let _ = peer.events.try_send(PeerEvent::Closed { reason });
            false
        });
        if self.peers.len() != before {
            let peers = &self.peers;
            self.routes.retain(|_, id| peers.contains_key(id));
            self.stats
                .peers
                .store(self.peers.len() as u64, Ordering::Relaxed);
        }
    }
}

/// One call's audio on the session side: the caller's Opus to 16 kHz
/// frames, and 16 kHz frames to Opus for the caller. Preallocated; nothing
/// here allocates per frame.
///
/// Both codec states run at 16 kHz, the pipeline's rate: the decoder writes
/// 16 kHz frames directly (libopus drops the band above 8 kHz inside its
/// decoder) and the encoder codes the 16 kHz frames as wideband Opus, so no
/// 16 <-> 48 kHz resampling happens here and no bits or CPU go to a band the
/// audio does not have. The packets are ordinary Opus on the 48 kHz RTP
/// clock; the caller's decoder plays them at whatever rate it runs. Whatever
/// `max_bandwidth` the [`EncoderConfig`] names, the band is at most
/// wideband (8 kHz). The encoder's [`OpusMode`](crate::codec::OpusMode)
/// decides the CPU per frame: SILK with FEC, or CELT only at a fraction of
/// the cost and without FEC (`BENCHMARKS.md`, media section).
#[derive(Debug)]
pub struct CallAudio {
    decoder: OpusDecoder<WIDEBAND_FRAME_SAMPLES>,
    encoder: OpusEncoder<WIDEBAND_FRAME_SAMPLES>,
    frame: AudioFrame,
    packet: [u8; MAX_PACKET_BYTES],
}

/// Why a call's codecs could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum CallAudioError {
    #[error(transparent)]
    Codec(#[from] CodecError),
}

impl CallAudio {
    pub fn new(encoder: EncoderConfig) -> Result<Self, CallAudioError> {
        Ok(Self {
            decoder: OpusDecoder::at_16k()?,
            encoder: OpusEncoder::wideband(encoder)?,
            frame: AudioFrame::silence(),
            packet: [0; MAX_PACKET_BYTES],
        })
    }

    /// Decodes one caller packet. When packets were lost just before it
    /// (`contiguous == false`), the lost frame is first rebuilt from this
    /// packet's FEC and handed to `emit`, then the packet itself. A packet
    /// that fails to decode is concealed, so the stream never has a hole.
    pub fn decode(
        &mut self,
        payload: &[u8],
        contiguous: bool,
        mut emit: impl FnMut(&AudioFrame),
    ) -> Result<(), CodecError> {
        if !contiguous
            && self
                .decoder
                .recover(payload, &mut self.frame.samples)
                .is_ok()
        {
            emit(&self.frame);
        }
        if self
            .decoder
            .decode(payload, &mut self.frame.samples)
            .is_err()
        {
            self.decoder.conceal(&mut self.frame.samples)?;
        }
        emit(&self.frame);
        Ok(())
    }

    /// Encodes one 16 kHz frame for the caller; returns the Opus packet.
    pub fn encode(&mut self, frame: &AudioFrame) -> Result<&[u8], CodecError> {
        let len = self.encoder.encode(&frame.samples, &mut self.packet)?;
        Ok(&self.packet[..len])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER_HEAD: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n";

    #[test]
    fn offers_without_audio_or_opus_are_refused_with_the_reason() {
        assert!(matches!(
            check_offer("hello"),
            Err(OfferError::Malformed(_))
        ));
        let video_only =
            format!("{OFFER_HEAD}m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 VP8/90000\r\n");
        assert!(matches!(check_offer(&video_only), Err(OfferError::NoAudio)));
        let pcmu_only =
            format!("{OFFER_HEAD}m=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=rtpmap:0 PCMU/8000\r\n");
        assert!(matches!(check_offer(&pcmu_only), Err(OfferError::NoOpus)));
        let opus =
            format!("{OFFER_HEAD}m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n");
        assert!(check_offer(&opus).is_ok());
    }

    #[test]
    fn an_answer_that_rejected_audio_has_no_audio() {
        assert!(answer_has_audio(
            "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"
        ));
        assert!(!answer_has_audio(
            "v=0\r\nm=audio 0 UDP/TLS/RTP/SAVPF 0\r\n"
        ));
        assert!(!answer_has_audio(
            "v=0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n"
        ));
    }

    #[test]
    fn call_audio_round_trips_a_tone() {
        let mut call = CallAudio::new(EncoderConfig::default()).expect("codecs");
        let mut tone = AudioFrame::silence();
        let mut decoded_rms = 0.0f32;
        for n in 0..25 {
            for (i, s) in tone.samples.iter_mut().enumerate() {
                let t = (n * 320 + i) as f32 / 16_000.0;
                *s = (8000.0 * (2.0 * std::f32::consts::PI * 440.0 * t).sin()) as i16;
            }
            let packet = call.encode(&tone).expect("encode").to_vec();
            let mut frames = 0;
            call.decode(&packet, n % 10 != 5, |frame| {
                frames += 1;
                decoded_rms = frame.rms();
            })
            .expect("decode");
            // A gap before the packet yields the recovered frame too.
            assert_eq!(frames, if n % 10 == 5 { 2 } else { 1 });
        }
        // A full-scale-relative RMS: the tone is 8000/32768 peak, about 0.17.
        assert!(decoded_rms > 0.1, "decoded tone rms {decoded_rms}");
    }

    #[test]
    fn call_audio_sends_wideband_opus_that_a_48k_decoder_plays() {
        use crate::codec::OpusMode;
        for mode in [OpusMode::Voip, OpusMode::LowDelay] {
            // The server's settings name no band: the default's fullband
            // cap is narrowed to the 8 kHz a 16 kHz frame holds.
            let mut call = CallAudio::new(EncoderConfig {
                mode,
                ..EncoderConfig::default()
            })
            .expect("codecs");
            let mut browser = OpusDecoder::new().expect("decoder");
            let mut pcm = [0i16; OPUS_FRAME_SAMPLES];
            let mut tone = AudioFrame::silence();
            for n in 0..25 {
                for (i, s) in tone.samples.iter_mut().enumerate() {
                    let t = (n * 320 + i) as f32 / 16_000.0;
                    *s = (8000.0 * (2.0 * std::f32::consts::PI * 440.0 * t).sin()) as i16;
                }
                let packet = call.encode(&tone).expect("encode");
                assert_eq!(
                    opus::packet::get_bandwidth(packet).expect("toc"),
                    opus::Bandwidth::Wideband,
                    "{mode:?}"
                );
                browser.decode(packet, &mut pcm).expect("decode");
            }
            // 20 ms of a 440 Hz tone at 48 kHz: 8.8 cycles, 17 or 18 sign
            // changes, at about the level that went in.
            let crossings = pcm.windows(2).filter(|w| (w[0] < 0) != (w[1] < 0)).count();
            assert!((17..=18).contains(&crossings), "{mode:?}: {crossings}");
            let rms = (pcm.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>()
                / OPUS_FRAME_SAMPLES as f64)
                .sqrt();
            assert!(
                (rms / (8000.0 / 2f64.sqrt()) - 1.0).abs() < 0.2,
                "{mode:?}: {rms}"
            );
        }
    }

    #[tokio::test]
    async fn a_wildcard_bind_needs_a_public_ip() {
        let err = RtcEndpoint::start(RtcEndpointConfig {
            bind: "0.0.0.0:0".parse().expect("addr"),
            public_ip: None,
        })
        .expect_err("wildcard without public ip");
        assert!(err.to_string().contains("rtc.public_ip"), "{err}");
        let endpoint = RtcEndpoint::start(RtcEndpointConfig {
            bind: "127.0.0.1:0".parse().expect("addr"),
            public_ip: None,
        })
        .expect("endpoint");
        assert_eq!(endpoint.candidate_addr(), endpoint.local_addr());
        assert!(matches!(
            endpoint.accept("v=0\r\nnot really sdp"),
            Err(OfferError::NoAudio)
        ));
    }

    #[test]
    fn a_browser_offer_is_answered_without_an_endpoint_and_garbage_is_refused() {
        let offer = include_str!("../../fuzz/seeds/sdp_offer/chrome-like.sdp");
        let answer = answer_offer(offer).expect("answered");
        assert!(answer.starts_with("v=0"), "{answer}");
        assert!(answer.contains("opus/48000/2"), "{answer}");
        assert!(answer.contains("a=ice-lite"), "{answer}");
        for garbage in [
            "",
            "v=0",
            "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n",
        ] {
            assert!(answer_offer(garbage).is_err(), "{garbage:?}");
        }
    }
}
