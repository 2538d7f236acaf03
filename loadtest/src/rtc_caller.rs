//! One WebRTC caller, on an independent stack: webrtc-rs (`webrtc` 0.21, the
//! async layer over the sans-IO `rtc` core), not the server's str0m, so the
//! two sides check each other.
//!
//! # Signalling (WHIP-like, non-trickle)
//!
//! [`RtcCaller::connect`] builds a peer connection with one `sendrecv` audio
//! transceiver (Opus 48000/2, 20 ms) and an `events` data channel (ordered,
//! reliable), waits until ICE gathering is complete, and posts the whole
//! offer: `POST {base}/v1/sessions/{id}/webrtc` with `Content-Type:
//! application/sdp` and `Authorization: Bearer {token}`. The server answers
//! `201 Created` with the SDP answer and `Location:
//! /v1/sessions/{id}/webrtc/{peer}`; [`RtcCaller::hangup`] deletes that
//! resource. Any other status is an [`RtcCallerError::Refused`] carrying the
//! server's `{"error":{"code","message"}}`.
//!
//! # Network
//!
//! No STUN or TURN: host candidates only, UDP over IPv4. webrtc-rs binds the
//! sockets it is given and never offers loopback for a wildcard bind, so the
//! caller binds `127.0.0.1:0` when the server is on loopback (the server is
//! ICE-lite with one host candidate there) and `0.0.0.0:0`, one socket per
//! non-loopback interface, otherwise; [`RtcCallerConfig::bind_addr`]
//! overrides that. mDNS is off: it would bind UDP 5353 per caller and turn
//! host candidates into `.local` names.
//!
//! # Media
//!
//! [`RtcCaller::send_audio`] takes one 20 ms, 16 kHz [`AudioFrame`],
//! resamples it to 48 kHz, Opus-encodes it and sends one RTP packet; the
//! caller paces (one call per 20 ms). What the server sends back is decoded
//! to 16 kHz frames stamped with their arrival [`Instant`]
//! ([`RtcCaller::recv_audio`]); [`RtcCaller::stats`] counts packets and bytes
//! either way. Server events arrive as JSON on the data channel
//! ([`RtcCaller::recv_event`]); [`RtcCaller::send_event`] sends one.
//!
//! Everything runs on the current Tokio runtime, multi-threaded or the
//! current-thread one of an actix System: webrtc-rs spawns one driver task
//! per peer connection that owns its UDP sockets and timers, so nothing here
//! polls a socket.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use palaver_media::AudioFrame;
use palaver_media::codec::{
    CodecError, EncoderConfig, MAX_PACKET_BYTES, OpusDecoder, OpusEncoder, Pcm48Frame,
};
use palaver_media::resample::{Downsampler48To16, ResampleError, Upsampler16To48};
use rtc::ice::mdns::MulticastDnsMode;
use rtc::ice::network_type::NetworkType;
use rtc::peer_connection::configuration::media_engine::MIME_TYPE_OPUS;
use rtc::rtp;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters,
    RtpCodecKind,
};
use serde_json::Value;
use tokio::sync::{Mutex, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::timeout_at;
use webrtc::data_channel::{DataChannel, DataChannelEvent};
use webrtc::media_stream::MediaStreamTrack;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCConfigurationBuilder, RTCIceGatheringState, RTCPeerConnectionState, RTCSessionDescription,
    SettingEngine, SettingEngineBuilder, crypto,
};
use webrtc::rtp_transceiver::RtpSender;

pub use webrtc::peer_connection::RTCPeerConnectionState as ConnectionState;

/// The data channel the server's events travel on.
pub const EVENTS_CHANNEL: &str = "events";
/// Payload type offered for Opus (what browsers use).
pub const OPUS_PAYLOAD_TYPE: u8 = 111;
/// RTP clock ticks per 20 ms Opus frame at 48 kHz.
const RTP_TICKS_PER_FRAME: u32 = 960;
/// How long [`RtcCaller::hangup`] waits for the server's answer.
const HANGUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest server error body kept in an error.
const MAX_ERROR_BODY: usize = 1000;

/// Why a caller could not connect, send or hang up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RtcCallerError {
    /// The base URL does not parse.
    #[error("invalid server URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    /// webrtc-rs refused a step (`what` names it).
    #[error("webrtc {what} failed: {source}")]
    WebRtc {
        what: &'static str,
        #[source]
        source: webrtc::error::Error,
    },
    /// The HTTP request did not complete (connection refused, reset, ...).
    #[error("{method} {url} failed: {source}")]
    Http {
        method: &'static str,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The server answered the offer with something other than 201.
    #[error(
        "server refused the offer: {status} {}: {message}",
        code.as_deref().unwrap_or("(no code)")
    )]
    Refused {
        status: u16,
        /// `error.code` of the JSON body, when it had one.
        code: Option<String>,
        /// `error.message`, or the raw body (cut to 1000 bytes).
        message: String,
    },
    /// 201 without a `Location` header: the call could never be hung up.
    #[error("server answered 201 without a Location header")]
    MissingLocation,
    /// The answer is not usable SDP, or negotiated no Opus for our sender.
    #[error("bad SDP answer: {0}")]
    BadAnswer(String),
    /// A step of connecting took longer than the connect timeout.
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout { what: &'static str, after: Duration },
    /// The peer connection failed or closed while connecting.
    #[error("the peer connection went {0} while connecting")]
    ConnectionFailed(ConnectionState),
    /// The `events` data channel closed.
    #[error("the events data channel is closed")]
    ChannelClosed,
    /// Opus could not be set up or could not encode.
    #[error("opus: {0}")]
    Codec(#[from] CodecError),
    /// The resampler could not be built.
    #[error("resampler: {0}")]
    Resample(#[from] ResampleError),
    /// `DELETE {Location}` answered something other than 204 or 404.
    #[error("hang-up refused: {status}: {body}")]
    Hangup { status: u16, body: String },
}

fn webrtc_err(what: &'static str) -> impl FnOnce(webrtc::error::Error) -> RtcCallerError {
    move |source| RtcCallerError::WebRtc { what, source }
}

/// How a caller connects and what it does with the audio it hears.
#[derive(Debug, Clone)]
pub struct RtcCallerConfig {
    /// Upper bound for the whole of [`RtcCaller::connect`]: gathering, the
    /// HTTP exchange, ICE + DTLS, and the data channel opening.
    pub connect_timeout: Duration,
    /// The local UDP address to bind. `None`: `127.0.0.1:0` when the server's
    /// host is loopback (`localhost`, `127.x`), else `0.0.0.0:0`.
    pub bind_addr: Option<SocketAddr>,
    /// The Opus encoder for what the caller says.
    pub encoder: EncoderConfig,
    /// Decode what the server sends to 16 kHz frames. Off, [`ReceivedAudio`]
    /// still arrives per packet (timing, counters) with no `frame`.
    pub decode_audio: bool,
    /// Received audio held for [`RtcCaller::recv_audio`] (50 per second);
    /// beyond it new packets are counted in `audio_dropped` and let go.
    pub audio_queue: usize,
    /// The HTTP client for the offer and the hang-up (one per caller if
    /// `None`; share one across many callers).
    pub http: Option<reqwest::Client>,
    /// Wait this long between receiving the answer and applying it, as a
    /// caller on a slow network (or a busy client) would: ICE and DTLS
    /// start that much later. Within `connect_timeout`.
    pub answer_delay: Duration,
}

impl Default for RtcCallerConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            bind_addr: None,
            encoder: EncoderConfig::default(),
            decode_audio: true,
            audio_queue: 500,
            http: None,
            answer_delay: Duration::ZERO,
        }
    }
}

/// One RTP packet of the server's audio, as it arrived.
#[derive(Debug, Clone)]
pub struct ReceivedAudio {
    /// When the packet reached the caller (after SRTP, before decoding).
    pub at: Instant,
    pub sequence: u16,
    pub rtp_timestamp: u32,
    /// The decoded 20 ms at 16 kHz; `None` when decoding is off or the
    /// packet did not decode (counted in `decode_errors`).
    pub frame: Option<AudioFrame>,
}

/// Counters of one caller, from [`RtcCaller::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RtcStats {
    pub rtp_packets_sent: u64,
    /// Opus payload bytes sent.
    pub rtp_bytes_sent: u64,
    pub rtp_packets_received: u64,
    /// RTP payload bytes received (Opus, without RTP headers).
    pub rtp_bytes_received: u64,
    pub audio_frames_decoded: u64,
    pub decode_errors: u64,
    /// Received packets let go because nobody read [`RtcCaller::recv_audio`].
    pub audio_dropped: u64,
    pub events_received: u64,
    /// Data channel messages that were not JSON (not delivered).
    pub invalid_events: u64,
}

#[derive(Debug, Default)]
struct Counters {
    rtp_packets_sent: AtomicU64,
    rtp_bytes_sent: AtomicU64,
    rtp_packets_received: AtomicU64,
    rtp_bytes_received: AtomicU64,
    audio_frames_decoded: AtomicU64,
    decode_errors: AtomicU64,
    audio_dropped: AtomicU64,
    events_received: AtomicU64,
    invalid_events: AtomicU64,
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

impl Counters {
    fn snapshot(&self) -> RtcStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        RtcStats {
            rtp_packets_sent: get(&self.rtp_packets_sent),
            rtp_bytes_sent: get(&self.rtp_bytes_sent),
            rtp_packets_received: get(&self.rtp_packets_received),
            rtp_bytes_received: get(&self.rtp_bytes_received),
            audio_frames_decoded: get(&self.audio_frames_decoded),
            decode_errors: get(&self.decode_errors),
            audio_dropped: get(&self.audio_dropped),
            events_received: get(&self.events_received),
            invalid_events: get(&self.invalid_events),
        }
    }
}

/// The encoder side: everything `send_audio` touches, allocated once.
struct Outbound {
    encoder: OpusEncoder,
    upsampler: Upsampler16To48,
    pcm48: Pcm48Frame,
    packet: [u8; MAX_PACKET_BYTES],
    sequence: u16,
    timestamp: u32,
    first: bool,
}

/// The decoder side, handed to the task that reads the server's track.
struct Inbound {
    audio_tx: mpsc::Sender<ReceivedAudio>,
    counters: Arc<Counters>,
    decoder: Option<(OpusDecoder, Downsampler48To16)>,
}

/// What webrtc-rs's callbacks report, kept where `connect` can wait on it.
struct Signals {
    gathering: watch::Sender<RTCIceGatheringState>,
    connection: watch::Sender<RTCPeerConnectionState>,
    /// Taken by the first audio track the server sends.
    inbound: StdMutex<Option<Inbound>>,
    audio_task: StdMutex<Option<JoinHandle<()>>>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Signals {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        self.gathering.send_replace(state);
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        self.connection.send_replace(state);
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        if track.kind().await != RtpCodecKind::Audio {
            return;
        }
        let inbound = self.inbound.lock().ok().and_then(|mut slot| slot.take());
        if let Some(inbound) = inbound {
            let task = tokio::spawn(receive_audio(track, inbound));
            if let Ok(mut slot) = self.audio_task.lock() {
                *slot = Some(task);
            }
        }
    }
}

/// Encodes 16 kHz frames, in order, as one Opus stream (48 kHz, 20 ms per
/// packet), the way [`RtcCaller::send_audio`] would: encoding an utterance
/// once per run instead of once per caller and turn keeps the load
/// generator's CPU for the callers.
pub fn encode_opus_stream(
    frames: &[AudioFrame],
    config: EncoderConfig,
) -> Result<Vec<Bytes>, RtcCallerError> {
    let mut encoder = OpusEncoder::new(config)?;
    let mut upsampler = Upsampler16To48::upsample_16k_to_48k()?;
    let mut pcm48: Pcm48Frame = [0; palaver_media::codec::OPUS_FRAME_SAMPLES];
    let mut packet = [0u8; MAX_PACKET_BYTES];
    frames
        .iter()
        .map(|frame| -> Result<Bytes, RtcCallerError> {
            upsampler.process(&frame.samples, &mut pcm48);
            let len = encoder.encode(&pcm48, &mut packet)?;
            Ok(Bytes::copy_from_slice(&packet[..len]))
        })
        .collect()
}

/// Reads the server's audio track until it ends: counts, decodes, queues.
async fn receive_audio(track: Arc<dyn TrackRemote>, mut inbound: Inbound) {
    let mut pcm48: Pcm48Frame = [0; palaver_media::codec::OPUS_FRAME_SAMPLES];
    while let Some(event) = track.poll().await {
        let packet = match event {
            TrackRemoteEvent::OnRtpPacket(packet) => packet,
            TrackRemoteEvent::OnEnded => break,
            _ => continue,
        };
        let at = Instant::now();
        let counters = &inbound.counters;
        bump(&counters.rtp_packets_received, 1);
        bump(&counters.rtp_bytes_received, packet.payload.len() as u64);
        let frame = match inbound.decoder.as_mut() {
            Some(_) if packet.payload.is_empty() => None,
            Some((decoder, downsampler)) => match decoder.decode(&packet.payload, &mut pcm48) {
                Ok(()) => {
                    let mut frame = AudioFrame::silence();
                    downsampler.process(&pcm48, &mut frame.samples);
                    bump(&counters.audio_frames_decoded, 1);
                    Some(frame)
                }
                Err(_) => {
                    bump(&counters.decode_errors, 1);
                    None
                }
            },
            None => None,
        };
        let received = ReceivedAudio {
            at,
            sequence: packet.header.sequence_number,
            rtp_timestamp: packet.header.timestamp,
            frame,
        };
        match inbound.audio_tx.try_send(received) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => bump(&counters.audio_dropped, 1),
            // The caller is gone; keep draining so the driver is not held up.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

/// Reads the `events` channel: reports it open, forwards JSON messages.
async fn pump_events(
    channel: Arc<dyn DataChannel>,
    open: watch::Sender<ChannelState>,
    events_tx: mpsc::UnboundedSender<(Instant, Value)>,
    counters: Arc<Counters>,
) {
    while let Some(event) = channel.poll().await {
        match event {
            DataChannelEvent::OnOpen => {
                open.send_replace(ChannelState::Open);
            }
            DataChannelEvent::OnMessage(message) => {
                let at = Instant::now();
                match serde_json::from_slice::<Value>(&message.data) {
                    Ok(value) => {
                        bump(&counters.events_received, 1);
                        // A caller that stopped reading events is fine.
                        let _ = events_tx.send((at, value));
                    }
                    Err(_) => bump(&counters.invalid_events, 1),
                }
            }
            DataChannelEvent::OnClose => break,
            _ => {}
        }
    }
    open.send_replace(ChannelState::Closed);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChannelState {
    Connecting,
    Open,
    Closed,
}

/// One connected WebRTC caller. Every method takes `&self`, so one task can
/// send audio while others wait for audio and events.
pub struct RtcCaller {
    pc: Arc<dyn PeerConnection>,
    track: Arc<TrackLocalStaticRTP>,
    events: Arc<dyn DataChannel>,
    ssrc: u32,
    payload_type: u8,
    outbound: StdMutex<Outbound>,
    audio_rx: Mutex<mpsc::Receiver<ReceivedAudio>>,
    /// Events with their arrival times.
    events_rx: Mutex<mpsc::UnboundedReceiver<(Instant, Value)>>,
    counters: Arc<Counters>,
    signals: Arc<Signals>,
    connection: watch::Receiver<RTCPeerConnectionState>,
    events_task: JoinHandle<()>,
    http: reqwest::Client,
    token: String,
    location: String,
    hangup_url: String,
    offer_sdp: String,
    answer_sdp: String,
}

impl fmt::Debug for RtcCaller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RtcCaller")
            .field("location", &self.location)
            .field("ssrc", &self.ssrc)
            .field("payload_type", &self.payload_type)
            .field("connection", &*self.connection.borrow())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// Everything built before the offer is posted.
struct Prepared {
    pc: Arc<dyn PeerConnection>,
    track: Arc<TrackLocalStaticRTP>,
    sender: Arc<dyn RtpSender>,
    events: Arc<dyn DataChannel>,
    ssrc: u32,
    signals: Arc<Signals>,
    gathering: watch::Receiver<RTCIceGatheringState>,
    connection: watch::Receiver<RTCPeerConnectionState>,
    channel_open: watch::Receiver<ChannelState>,
    events_task: JoinHandle<()>,
}

impl RtcCaller {
    /// Connects with the default [`RtcCallerConfig`].
    pub async fn connect(
        base_url: &str,
        session_id: i64,
        token: &str,
    ) -> Result<Self, RtcCallerError> {
        Self::connect_with(base_url, session_id, token, RtcCallerConfig::default()).await
    }

    /// Offers, posts the offer, applies the answer, and returns once the peer
    /// connection is connected and the `events` channel is open (or fails
    /// after `config.connect_timeout`). A failure after the server accepted
    /// the offer deletes the server's peer again (best effort).
    pub async fn connect_with(
        base_url: &str,
        session_id: i64,
        token: &str,
        config: RtcCallerConfig,
    ) -> Result<Self, RtcCallerError> {
        let deadline = tokio::time::Instant::now() + config.connect_timeout;
        let base_url = base_url.trim_end_matches('/');
        let bind = match config.bind_addr {
            Some(addr) => addr,
            None => default_bind(base_url)?,
        };
        let outbound = Outbound {
            encoder: OpusEncoder::new(config.encoder)?,
            upsampler: Upsampler16To48::upsample_16k_to_48k()?,
            pcm48: [0; palaver_media::codec::OPUS_FRAME_SAMPLES],
            packet: [0; MAX_PACKET_BYTES],
            sequence: random_u32() as u16,
            timestamp: random_u32(),
            first: true,
        };
        let decoder = if config.decode_audio {
            Some((
                OpusDecoder::new()?,
                Downsampler48To16::downsample_48k_to_16k()?,
            ))
        } else {
            None
        };
        let counters = Arc::new(Counters::default());
        let (audio_tx, audio_rx) = mpsc::channel(config.audio_queue.max(1));
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let inbound = Inbound {
            audio_tx,
            counters: counters.clone(),
            decoder,
        };

        let prepared = prepare(bind, inbound, events_tx, counters.clone()).await?;
        let offer_sdp = match gather_offer(&prepared, deadline, config.connect_timeout).await {
            Ok(sdp) => sdp,
            Err(e) => {
                prepared.close().await;
                return Err(e);
            }
        };

        let http = config.http.unwrap_or_default();
        let url = format!("{base_url}/v1/sessions/{session_id}/webrtc");
        let posted = timeout_at(deadline, post_offer(&http, &url, token, &offer_sdp)).await;
        let (location, answer_sdp) = match posted {
            Ok(Ok(answered)) => answered,
            Ok(Err(e)) => {
                prepared.close().await;
                return Err(e);
            }
            Err(_) => {
                prepared.close().await;
                return Err(RtcCallerError::Timeout {
                    what: "the answer to the offer",
                    after: config.connect_timeout,
                });
            }
        };
        let hangup_url = resolve_location(base_url, &location);
        if !config.answer_delay.is_zero() {
            tokio::time::sleep_until(
                deadline.min(tokio::time::Instant::now() + config.answer_delay),
            )
            .await;
        }

        let payload_type =
            match finish(&prepared, &answer_sdp, deadline, config.connect_timeout).await {
                Ok(pt) => pt,
                Err(e) => {
                    prepared.close().await;
                    let _ = delete(&http, &hangup_url, token).await;
                    return Err(e);
                }
            };

        let Prepared {
            pc,
            track,
            events,
            ssrc,
            signals,
            connection,
            events_task,
            ..
        } = prepared;
        Ok(Self {
            pc,
            track,
            events,
            ssrc,
            payload_type,
            outbound: StdMutex::new(outbound),
            audio_rx: Mutex::new(audio_rx),
            events_rx: Mutex::new(events_rx),
            counters,
            signals,
            connection,
            events_task,
            http,
            token: token.to_owned(),
            location,
            hangup_url,
            offer_sdp,
            answer_sdp,
        })
    }

    /// Encodes one 20 ms frame and sends it as one RTP packet. Call once per
    /// 20 ms; the RTP timestamp advances 960 ticks per call regardless.
    pub async fn send_audio(&self, frame: &AudioFrame) -> Result<(), RtcCallerError> {
        let payload = {
            let mut guard = self
                .outbound
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let out = &mut *guard;
            out.upsampler.process(&frame.samples, &mut out.pcm48);
            let len = out.encoder.encode(&out.pcm48, &mut out.packet)?;
            Bytes::copy_from_slice(&out.packet[..len])
        };
        self.send_opus(payload).await
    }

    /// Sends one Opus packet (20 ms, already encoded: see
    /// [`encode_opus_stream`]) as one RTP packet. Call once per 20 ms; the
    /// RTP timestamp advances 960 ticks per call regardless.
    pub async fn send_opus(&self, payload: Bytes) -> Result<(), RtcCallerError> {
        let header = {
            let mut out = self
                .outbound
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let header = rtp::Header {
                version: 2,
                // The first packet of a talk spurt (RFC 3551 §4.1).
                marker: out.first,
                payload_type: self.payload_type,
                sequence_number: out.sequence,
                timestamp: out.timestamp,
                ssrc: self.ssrc,
                ..Default::default()
            };
            out.first = false;
            out.sequence = out.sequence.wrapping_add(1);
            out.timestamp = out.timestamp.wrapping_add(RTP_TICKS_PER_FRAME);
            header
        };
        let bytes = payload.len() as u64;
        self.track
            .write_rtp(rtp::Packet { header, payload })
            .await
            .map_err(webrtc_err("write_rtp"))?;
        bump(&self.counters.rtp_packets_sent, 1);
        bump(&self.counters.rtp_bytes_sent, bytes);
        Ok(())
    }

    /// The next packet of the server's audio, or `None` once the call is
    /// over and everything received was read.
    pub async fn recv_audio(&self) -> Option<ReceivedAudio> {
        self.audio_rx.lock().await.recv().await
    }

    /// Received audio already queued, without waiting.
    pub fn try_recv_audio(&self) -> Option<ReceivedAudio> {
        self.audio_rx.try_lock().ok()?.try_recv().ok()
    }

    /// The next event from the server, or `None` once the `events` channel
    /// closed and everything received was read.
    pub async fn recv_event(&self) -> Option<Value> {
        self.recv_event_at().await.map(|(_, event)| event)
    }

    /// An event already received, without waiting.
    pub fn try_recv_event(&self) -> Option<Value> {
        self.try_recv_event_at().map(|(_, event)| event)
    }

    /// [`RtcCaller::recv_event`] with the event's arrival [`Instant`] (when
    /// the data channel delivered it, like [`ReceivedAudio::at`]), so a
    /// reader that falls behind can still order events and audio.
    pub async fn recv_event_at(&self) -> Option<(Instant, Value)> {
        self.events_rx.lock().await.recv().await
    }

    /// [`RtcCaller::try_recv_event`] with the event's arrival [`Instant`].
    pub fn try_recv_event_at(&self) -> Option<(Instant, Value)> {
        self.events_rx.try_lock().ok()?.try_recv().ok()
    }

    /// Sends one JSON message on the `events` channel.
    pub async fn send_event(&self, event: &Value) -> Result<(), RtcCallerError> {
        self.events
            .send_text(&event.to_string())
            .await
            .map_err(|source| match source {
                webrtc::error::Error::ErrDataChannelClosed => RtcCallerError::ChannelClosed,
                source => RtcCallerError::WebRtc {
                    what: "data channel send",
                    source,
                },
            })
    }

    /// `{"type":"user-message","text":...}`: a typed turn.
    pub async fn send_user_message(&self, text: &str) -> Result<(), RtcCallerError> {
        self.send_event(&serde_json::json!({"type": "user-message", "text": text}))
            .await
    }

    /// `{"type":"end-session"}`: asks the server to end the session.
    pub async fn end_session(&self) -> Result<(), RtcCallerError> {
        self.send_event(&serde_json::json!({"type": "end-session"}))
            .await
    }

    /// Counters so far.
    pub fn stats(&self) -> RtcStats {
        self.counters.snapshot()
    }

    /// The peer connection's state now.
    pub fn connection_state(&self) -> ConnectionState {
        *self.connection.borrow()
    }

    /// Waits until the peer connection is disconnected, failed or closed
    /// (the server hung up, or the network went away).
    pub async fn wait_disconnected(&self) -> ConnectionState {
        let mut connection = self.connection.clone();
        let ended = connection
            .wait_for(|state| {
                matches!(
                    state,
                    RTCPeerConnectionState::Disconnected
                        | RTCPeerConnectionState::Failed
                        | RTCPeerConnectionState::Closed
                )
            })
            .await;
        match ended {
            Ok(state) => *state,
            // The handler (and with it the sender) is gone: closed.
            Err(_) => RTCPeerConnectionState::Closed,
        }
    }

    /// The `Location` the server answered (`/v1/sessions/{id}/webrtc/{peer}`).
    pub fn location(&self) -> &str {
        &self.location
    }

    /// The payload type the server accepted for Opus.
    pub fn payload_type(&self) -> u8 {
        self.payload_type
    }

    /// The offer as posted (after gathering: it holds the candidates).
    pub fn offer_sdp(&self) -> &str {
        &self.offer_sdp
    }

    /// The server's answer.
    pub fn answer_sdp(&self) -> &str {
        &self.answer_sdp
    }

    /// `DELETE {Location}` (404, already gone, is fine), then closes the
    /// peer connection. The connection is closed even if the DELETE fails.
    pub async fn hangup(self) -> Result<(), RtcCallerError> {
        let delete = delete(&self.http, &self.hangup_url, &self.token);
        let deleted = match tokio::time::timeout(HANGUP_TIMEOUT, delete).await {
            Ok(deleted) => deleted,
            Err(_) => Err(RtcCallerError::Timeout {
                what: "the answer to the hang-up",
                after: HANGUP_TIMEOUT,
            }),
        };
        self.shutdown().await;
        deleted
    }

    /// Closes the peer connection without telling the server over HTTP (it
    /// sees DTLS close, then ICE time out): a caller that just drops.
    pub async fn close(self) {
        self.shutdown().await;
    }

    async fn shutdown(&self) {
        let _ = self.pc.close().await;
        stop_tasks(&self.events_task, &self.signals);
    }
}

impl Drop for RtcCaller {
    fn drop(&mut self) {
        // The peer connection stops its driver when dropped; the reader
        // tasks would end with it, but need not wait for that.
        stop_tasks(&self.events_task, &self.signals);
    }
}

impl Prepared {
    async fn close(&self) {
        let _ = self.pc.close().await;
        stop_tasks(&self.events_task, &self.signals);
    }
}

fn stop_tasks(events_task: &JoinHandle<()>, signals: &Signals) {
    events_task.abort();
    if let Ok(mut task) = signals.audio_task.lock()
        && let Some(task) = task.take()
    {
        task.abort();
    }
}

/// The settings every caller's peer connection uses.
///
/// ICE checks every 20 ms instead of webrtc-rs's 200 ms: its agent moves the
/// handshake on (nomination, then DTLS, then SCTP, then the data channel) on
/// that tick, so the default made every connect take ~820 ms although the
/// server answered each step within a millisecond (its debug log shows the
/// 200 ms gaps). Browsers nominate at once; 20 ms keeps the figure about the
/// server. 70 attempts keep webrtc-rs's 1.4 s per candidate.
pub fn setting_engine() -> SettingEngine {
    SettingEngineBuilder::new()
        .with_crypto_provider(Arc::new(crypto::providers::AwsLcRsProvider::new()))
        .with_multicast_dns_mode(MulticastDnsMode::Disabled)
        .with_network_types(vec![NetworkType::Udp4])
        .with_ice_connection_attempts(Some(ICE_CHECK_INTERVAL), Some(70))
        .build()
}

/// How often a caller's ICE agent checks (and moves its handshake on).
pub const ICE_CHECK_INTERVAL: Duration = Duration::from_millis(20);

/// Opus 48000/2 (as SDP spells it; the audio is mono) on payload type 111,
/// and nothing else.
pub fn opus_media_engine() -> Result<MediaEngine, RtcCallerError> {
    let mut engine = MediaEngine::default();
    engine
        .register_codec(
            RTCRtpCodecParameters {
                rtp_codec: opus_codec(),
                payload_type: OPUS_PAYLOAD_TYPE,
            },
            RtpCodecKind::Audio,
        )
        .map_err(webrtc_err("register_codec"))?;
    Ok(engine)
}

fn opus_codec() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_TYPE_OPUS.to_owned(),
        clock_rate: 48_000,
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
        rtcp_feedback: vec![],
    }
}

/// A local Opus track with a fresh SSRC, for `add_track`.
pub fn opus_track(stream_id: &str, track_id: &str) -> (Arc<TrackLocalStaticRTP>, u32) {
    let ssrc = random_u32();
    let track = TrackLocalStaticRTP::new(MediaStreamTrack::new(
        stream_id.to_owned(),
        track_id.to_owned(),
        track_id.to_owned(),
        RtpCodecKind::Audio,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                ssrc: Some(ssrc),
                ..Default::default()
            },
            codec: opus_codec(),
            ..Default::default()
        }],
    ));
    (Arc::new(track), ssrc)
}

async fn prepare(
    bind: SocketAddr,
    inbound: Inbound,
    events_tx: mpsc::UnboundedSender<(Instant, Value)>,
    counters: Arc<Counters>,
) -> Result<Prepared, RtcCallerError> {
    let (gathering_tx, gathering) = watch::channel(RTCIceGatheringState::New);
    let (connection_tx, connection) = watch::channel(RTCPeerConnectionState::New);
    let signals = Arc::new(Signals {
        gathering: gathering_tx,
        connection: connection_tx,
        inbound: StdMutex::new(Some(inbound)),
        audio_task: StdMutex::new(None),
    });
    let pc = PeerConnectionBuilder::new()
        // No ICE servers: host candidates only.
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_media_engine(opus_media_engine()?)
        .with_setting_engine(setting_engine())
        .with_handler(signals.clone())
        .with_udp_addrs(vec![bind])
        .build()
        .await
        .map_err(webrtc_err("peer connection build"))?;
    let pc: Arc<dyn PeerConnection> = Arc::new(pc);

    let (track, ssrc) = opus_track("palaver-caller", "caller-audio");
    let built = async {
        // add_track makes a sendrecv transceiver: we speak and listen.
        let sender = pc
            .add_track(track.clone())
            .await
            .map_err(webrtc_err("add_track"))?;
        let events = pc
            .create_data_channel(EVENTS_CHANNEL, None)
            .await
            .map_err(webrtc_err("create_data_channel"))?;
        Ok::<_, RtcCallerError>((sender, events))
    }
    .await;
    let (sender, events) = match built {
        Ok(built) => built,
        Err(e) => {
            let _ = pc.close().await;
            return Err(e);
        }
    };
    let (open_tx, channel_open) = watch::channel(ChannelState::Connecting);
    let events_task = tokio::spawn(pump_events(events.clone(), open_tx, events_tx, counters));
    Ok(Prepared {
        pc,
        track,
        sender,
        events,
        ssrc,
        signals,
        gathering,
        connection,
        channel_open,
        events_task,
    })
}

/// Creates the offer and waits for gathering to finish: the SDP to post.
async fn gather_offer(
    prepared: &Prepared,
    deadline: tokio::time::Instant,
    after: Duration,
) -> Result<String, RtcCallerError> {
    let pc = &prepared.pc;
    let offer = pc
        .create_offer(None)
        .await
        .map_err(webrtc_err("create_offer"))?;
    pc.set_local_description(offer)
        .await
        .map_err(webrtc_err("set_local_description"))?;
    let mut gathering = prepared.gathering.clone();
    let complete = gathering.wait_for(|state| *state == RTCIceGatheringState::Complete);
    match timeout_at(deadline, complete).await {
        Ok(Ok(_)) => {}
        Ok(Err(_)) => {
            return Err(RtcCallerError::ConnectionFailed(
                RTCPeerConnectionState::Closed,
            ));
        }
        Err(_) => {
            return Err(RtcCallerError::Timeout {
                what: "ICE gathering",
                after,
            });
        }
    }
    let local = pc.local_description().await.ok_or(RtcCallerError::WebRtc {
        what: "local_description",
        source: webrtc::error::Error::Other("no local description after gathering".to_owned()),
    })?;
    Ok(local.sdp)
}

/// Posts the offer: `(Location, answer SDP)` on 201.
async fn post_offer(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    offer: &str,
) -> Result<(String, String), RtcCallerError> {
    let http_err = |source| RtcCallerError::Http {
        method: "POST",
        url: url.to_owned(),
        source,
    };
    let response = http
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/sdp")
        .header(reqwest::header::AUTHORIZATION, format!("Bearer {token}"))
        .body(offer.to_owned())
        .send()
        .await
        .map_err(http_err)?;
    let status = response.status();
    let location = response
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let body = response.text().await.map_err(http_err)?;
    if status != reqwest::StatusCode::CREATED {
        return Err(refused(status.as_u16(), &body));
    }
    let location = location.ok_or(RtcCallerError::MissingLocation)?;
    Ok((location, body))
}

fn refused(status: u16, body: &str) -> RtcCallerError {
    let parsed = serde_json::from_str::<Value>(body).ok();
    let error = parsed.as_ref().and_then(|v| v.get("error"));
    let field = |name: &str| {
        error
            .and_then(|e| e.get(name))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    RtcCallerError::Refused {
        status,
        code: field("code"),
        message: field("message").unwrap_or_else(|| truncate(body)),
    }
}

fn truncate(body: &str) -> String {
    if body.len() <= MAX_ERROR_BODY {
        return body.to_owned();
    }
    let mut end = MAX_ERROR_BODY;
    while !body.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &body[..end])
}

/// Applies the answer and waits for ICE + DTLS and the data channel.
/// Returns the payload type negotiated for Opus.
async fn finish(
    prepared: &Prepared,
    answer_sdp: &str,
    deadline: tokio::time::Instant,
    after: Duration,
) -> Result<u8, RtcCallerError> {
    let answer = RTCSessionDescription::answer(answer_sdp.to_owned())
        .map_err(|e| RtcCallerError::BadAnswer(e.to_string()))?;
    prepared
        .pc
        .set_remote_description(answer)
        .await
        .map_err(|e| RtcCallerError::BadAnswer(e.to_string()))?;
    let parameters = prepared
        .sender
        .get_parameters()
        .await
        .map_err(webrtc_err("get_parameters"))?;
    let payload_type = parameters
        .rtp_parameters
        .codecs
        .iter()
        .find(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case(MIME_TYPE_OPUS))
        .map(|c| c.payload_type)
        .ok_or_else(|| RtcCallerError::BadAnswer("no Opus negotiated for audio".to_owned()))?;

    let mut connection = prepared.connection.clone();
    let settled = connection.wait_for(|state| {
        matches!(
            state,
            RTCPeerConnectionState::Connected
                | RTCPeerConnectionState::Failed
                | RTCPeerConnectionState::Closed
        )
    });
    match timeout_at(deadline, settled).await {
        Ok(Ok(state)) if *state == RTCPeerConnectionState::Connected => {}
        Ok(Ok(state)) => return Err(RtcCallerError::ConnectionFailed(*state)),
        Ok(Err(_)) => {
            return Err(RtcCallerError::ConnectionFailed(
                RTCPeerConnectionState::Closed,
            ));
        }
        Err(_) => {
            return Err(RtcCallerError::Timeout {
                what: "ICE and DTLS to connect",
                after,
            });
        }
    }

    let mut channel = prepared.channel_open.clone();
    let opened = channel.wait_for(|state| *state != ChannelState::Connecting);
    match timeout_at(deadline, opened).await {
        Ok(Ok(state)) if *state == ChannelState::Open => Ok(payload_type),
        Ok(_) => Err(RtcCallerError::ChannelClosed),
        Err(_) => Err(RtcCallerError::Timeout {
            what: "the events data channel to open",
            after,
        }),
    }
}

async fn delete(http: &reqwest::Client, url: &str, token: &str) -> Result<(), RtcCallerError> {
    let response = http
        .delete(url)
        .header(reqwest::header::AUTHORIZATION, format!("Bearer {token}"))
        .send()
        .await
        .map_err(|source| RtcCallerError::Http {
            method: "DELETE",
            url: url.to_owned(),
            source,
        })?;
    let status = response.status();
    if status.is_success() || status == reqwest::StatusCode::NOT_FOUND {
        return Ok(());
    }
    let body = response.text().await.unwrap_or_default();
    Err(RtcCallerError::Hangup {
        status: status.as_u16(),
        body: truncate(&body),
    })
}

/// `Location` is a path on the server (or, tolerated, an absolute URL).
fn resolve_location(base_url: &str, location: &str) -> String {
    if location.starts_with("http://") || location.starts_with("https://") {
        return location.to_owned();
    }
    // The path is absolute: it replaces any path in the base URL.
    match reqwest::Url::parse(base_url).and_then(|base| base.join(location)) {
        Ok(url) => url.to_string(),
        Err(_) => format!("{base_url}{location}"),
    }
}

/// Loopback servers get a loopback socket (webrtc-rs never offers loopback
/// for a wildcard bind); others every non-loopback IPv4 interface.
fn default_bind(base_url: &str) -> Result<SocketAddr, RtcCallerError> {
    let url = reqwest::Url::parse(base_url).map_err(|e| RtcCallerError::InvalidUrl {
        url: base_url.to_owned(),
        reason: e.to_string(),
    })?;
    let Some(host) = url.host_str() else {
        return Err(RtcCallerError::InvalidUrl {
            url: base_url.to_owned(),
            reason: "no host".to_owned(),
        });
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    let ip = if loopback {
        Ipv4Addr::LOCALHOST
    } else {
        Ipv4Addr::UNSPECIFIED
    };
    Ok(SocketAddr::new(IpAddr::V4(ip), 0))
}

/// A random SSRC or sequence start, from std's per-process random hash keys
/// and a counter (no `rand` dependency for four bytes).
fn random_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    (hasher.finish() >> 16) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::StatusCode;
    use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
    use serde_json::json;
    use std::collections::HashMap;
    use webrtc::data_channel::RTCDataChannelState;

    const GOOD_TOKEN: &str = "good-token";
    const PATIENCE: Duration = Duration::from_secs(10);

    /// The test's stand-in for Palaver: answers each offer with a second
    /// webrtc-rs peer connection that echoes audio and events.
    #[derive(Default)]
    struct EchoPeers {
        peers: StdMutex<HashMap<u64, Arc<dyn PeerConnection>>>,
        next: AtomicU64,
    }

    impl EchoPeers {
        fn count(&self) -> usize {
            self.peers.lock().map(|p| p.len()).unwrap_or(usize::MAX)
        }
    }

    struct EchoHandler {
        gathering: watch::Sender<RTCIceGatheringState>,
        output: Arc<TrackLocalStaticRTP>,
        output_ssrc: u32,
    }

    #[async_trait::async_trait]
    impl PeerConnectionEventHandler for EchoHandler {
        async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
            self.gathering.send_replace(state);
        }

        async fn on_track(&self, track: Arc<dyn TrackRemote>) {
            let (output, ssrc) = (self.output.clone(), self.output_ssrc);
            tokio::spawn(async move {
                while let Some(event) = track.poll().await {
                    if let TrackRemoteEvent::OnRtpPacket(mut packet) = event {
                        packet.header.ssrc = ssrc;
                        if output.write_rtp(packet).await.is_err() {
                            break;
                        }
                    }
                }
            });
        }

        async fn on_data_channel(&self, channel: Arc<dyn DataChannel>) {
            tokio::spawn(async move {
                let greeting = json!({"type": "connected", "transport": "webrtc"}).to_string();
                let mut greeted = false;
                if matches!(channel.ready_state().await, Ok(RTCDataChannelState::Open)) {
                    greeted = channel.send_text(&greeting).await.is_ok();
                }
                while let Some(event) = channel.poll().await {
                    match event {
                        DataChannelEvent::OnOpen if !greeted => {
                            greeted = channel.send_text(&greeting).await.is_ok();
                        }
                        DataChannelEvent::OnMessage(message) => {
                            let of = serde_json::from_slice::<Value>(&message.data)
                                .unwrap_or(Value::Null);
                            let echo = json!({"type": "echo", "of": of}).to_string();
                            if channel.send_text(&echo).await.is_err() {
                                break;
                            }
                        }
                        DataChannelEvent::OnClose => break,
                        _ => {}
                    }
                }
            });
        }
    }

    fn api_error(status: StatusCode, code: &str, message: &str) -> HttpResponse {
        HttpResponse::build(status).json(json!({"error": {"code": code, "message": message}}))
    }

    fn authorized(req: &HttpRequest) -> bool {
        req.headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v == format!("Bearer {GOOD_TOKEN}"))
    }

    async fn answer(offer: String) -> Result<(Arc<dyn PeerConnection>, String), RtcCallerError> {
        let (gathering_tx, mut gathering) = watch::channel(RTCIceGatheringState::New);
        let (output, output_ssrc) = opus_track("echo", "echo-audio");
        let handler = Arc::new(EchoHandler {
            gathering: gathering_tx,
            output: output.clone(),
            output_ssrc,
        });
        // ICE-lite with one loopback host candidate, like Palaver's endpoint.
        let settings = SettingEngineBuilder::new()
            .with_crypto_provider(Arc::new(crypto::providers::AwsLcRsProvider::new()))
            .with_multicast_dns_mode(MulticastDnsMode::Disabled)
            .with_network_types(vec![NetworkType::Udp4])
            .with_lite(true)
            .build();
        let pc = PeerConnectionBuilder::new()
            .with_media_engine(opus_media_engine()?)
            .with_setting_engine(settings)
            .with_handler(handler)
            .with_udp_addrs(vec![SocketAddr::from((Ipv4Addr::LOCALHOST, 0))])
            .build()
            .await
            .map_err(webrtc_err("echo build"))?;
        let pc: Arc<dyn PeerConnection> = Arc::new(pc);
        pc.add_track(output)
            .await
            .map_err(webrtc_err("echo add_track"))?;
        let offer = RTCSessionDescription::offer(offer).map_err(webrtc_err("echo parse offer"))?;
        pc.set_remote_description(offer)
            .await
            .map_err(webrtc_err("echo set_remote_description"))?;
        let answer = pc
            .create_answer(None)
            .await
            .map_err(webrtc_err("echo create_answer"))?;
        pc.set_local_description(answer)
            .await
            .map_err(webrtc_err("echo set_local_description"))?;
        let complete = gathering.wait_for(|s| *s == RTCIceGatheringState::Complete);
        if !matches!(tokio::time::timeout(PATIENCE, complete).await, Ok(Ok(_))) {
            return Err(RtcCallerError::Timeout {
                what: "echo gathering",
                after: PATIENCE,
            });
        }
        let sdp = pc
            .local_description()
            .await
            .map(|d| d.sdp)
            .unwrap_or_default();
        Ok((pc, sdp))
    }

    async fn post_offer(
        path: web::Path<i64>,
        req: HttpRequest,
        body: web::Bytes,
        peers: web::Data<EchoPeers>,
    ) -> HttpResponse {
        if !authorized(&req) {
            return api_error(StatusCode::UNAUTHORIZED, "unauthorized", "bad token");
        }
        let is_sdp = req
            .headers()
            .get("content-type")
            .is_some_and(|v| v.as_bytes() == b"application/sdp");
        let Ok(offer) = String::from_utf8(body.to_vec()) else {
            return api_error(StatusCode::BAD_REQUEST, "bad_sdp", "not UTF-8");
        };
        if !is_sdp {
            return api_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "bad_type", "want SDP");
        }
        match answer(offer).await {
            Ok((pc, sdp)) => {
                let peer = peers.next.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut map) = peers.peers.lock() {
                    map.insert(peer, pc);
                }
                HttpResponse::Created()
                    .content_type("application/sdp")
                    .insert_header((
                        "location",
                        format!("/v1/sessions/{}/webrtc/{peer}", path.into_inner()),
                    ))
                    .body(sdp)
            }
            Err(e) => api_error(StatusCode::BAD_REQUEST, "bad_sdp", &e.to_string()),
        }
    }

    async fn delete_peer(
        path: web::Path<(i64, u64)>,
        req: HttpRequest,
        peers: web::Data<EchoPeers>,
    ) -> HttpResponse {
        if !authorized(&req) {
            return api_error(StatusCode::UNAUTHORIZED, "unauthorized", "bad token");
        }
        let (_, peer) = path.into_inner();
        let removed = peers
            .peers
            .lock()
            .ok()
            .and_then(|mut map| map.remove(&peer));
        match removed {
            Some(pc) => {
                let _ = pc.close().await;
                HttpResponse::NoContent().finish()
            }
            None => api_error(StatusCode::NOT_FOUND, "not_found", "no such peer"),
        }
    }

    async fn start_echo_server() -> (String, web::Data<EchoPeers>, actix_web::dev::ServerHandle) {
        let peers = web::Data::new(EchoPeers::default());
        let data = peers.clone();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .route("/v1/sessions/{id}/webrtc", web::post().to(post_offer))
                .route(
                    "/v1/sessions/{id}/webrtc/{peer}",
                    web::delete().to(delete_peer),
                )
        })
        .workers(1)
        .disable_signals()
        .shutdown_timeout(1)
        .bind((Ipv4Addr::LOCALHOST, 0))
        .expect("bind the echo server");
        let addr = server.addrs()[0];
        let server = server.run();
        let handle = server.handle();
        actix_rt::spawn(server);
        (format!("http://{addr}"), peers, handle)
    }

    /// 440 Hz at 16 kHz, a third of full scale, continuous across frames.
    struct Tone {
        phase: f64,
    }

    impl Tone {
        fn next_frame(&mut self) -> AudioFrame {
            let step = 2.0 * std::f64::consts::PI * 440.0 / 16_000.0;
            let mut frame = AudioFrame::silence();
            for sample in frame.samples.iter_mut() {
                *sample = (self.phase.sin() * 0.3 * f64::from(i16::MAX)) as i16;
                self.phase = (self.phase + step) % (2.0 * std::f64::consts::PI);
            }
            frame
        }
    }

    async fn next_event(caller: &RtcCaller) -> Value {
        tokio::time::timeout(PATIENCE, caller.recv_event())
            .await
            .expect("an event within the timeout")
            .expect("the events channel is open")
    }

    #[actix_rt::test]
    async fn rtc_caller_talks_to_a_webrtc_rs_echo_server() {
        let (base, peers, server) = start_echo_server().await;

        let refused = RtcCaller::connect(&base, 7, "wrong-token")
            .await
            .expect_err("a bad token is refused");
        match &refused {
            RtcCallerError::Refused {
                status: 401, code, ..
            } => assert_eq!(code.as_deref(), Some("unauthorized")),
            other => panic!("expected a 401 refusal, got {other}"),
        }
        assert_eq!(
            refused.to_string(),
            "server refused the offer: 401 unauthorized: bad token"
        );

        let caller = RtcCaller::connect(&base, 7, GOOD_TOKEN)
            .await
            .expect("the caller connects to the echo server");
        println!("offer:\n{}", caller.offer_sdp());
        println!("answer:\n{}", caller.answer_sdp());
        assert!(
            caller.answer_sdp().contains("a=ice-lite"),
            "the echo server is ICE-lite"
        );
        assert!(
            caller.location().starts_with("/v1/sessions/7/webrtc/"),
            "{}",
            caller.location()
        );
        assert_eq!(caller.payload_type(), OPUS_PAYLOAD_TYPE);
        assert_eq!(caller.connection_state(), ConnectionState::Connected);
        assert_eq!(peers.count(), 1);
        let offer = caller.offer_sdp();
        assert!(offer.contains("a=rtpmap:111 opus/48000/2"), "{offer}");
        assert!(offer.contains("a=sendrecv"), "{offer}");
        assert!(offer.contains("m=application"), "{offer}");
        assert!(
            offer.contains("127.0.0.1"),
            "the offer holds the loopback candidate"
        );

        // Events both ways.
        let greeting = next_event(&caller).await;
        assert_eq!(greeting["type"], "connected", "{greeting}");
        caller
            .send_user_message("hello there")
            .await
            .expect("send an event");
        let echo = next_event(&caller).await;
        assert_eq!(echo["type"], "echo", "{echo}");
        assert_eq!(
            echo["of"],
            json!({"type": "user-message", "text": "hello there"})
        );

        // Two seconds of tone out; the echo comes back as Opus and decodes.
        let mut tone = Tone { phase: 0.0 };
        let mut ticker = tokio::time::interval(Duration::from_millis(20));
        for _ in 0..100 {
            ticker.tick().await;
            caller
                .send_audio(&tone.next_frame())
                .await
                .expect("send a frame");
        }
        let (mut decoded, mut loudest) = (0, 0.0f32);
        while decoded < 100 {
            let Ok(Some(audio)) = tokio::time::timeout(PATIENCE, caller.recv_audio()).await else {
                break;
            };
            if let Some(frame) = audio.frame {
                decoded += 1;
                loudest = loudest.max(frame.rms());
            }
        }
        let stats = caller.stats();
        println!("decoded {decoded} frames, loudest rms {loudest:.3}; {stats:?}");
        assert!(decoded >= 50, "only {decoded} frames came back: {stats:?}");
        assert!(loudest > 0.05, "the echo is silent: rms {loudest}");
        assert_eq!(stats.rtp_packets_sent, 100);
        assert!(stats.rtp_packets_received >= 50, "{stats:?}");
        assert!(stats.rtp_bytes_received > 0, "{stats:?}");
        assert_eq!(stats.decode_errors, 0, "{stats:?}");
        assert_eq!(stats.events_received, 2, "{stats:?}");

        caller.hangup().await.expect("hang up");
        assert_eq!(peers.count(), 0, "the DELETE reached the server");
        server.stop(false).await;
    }

    #[test]
    fn refusals_carry_the_servers_code_and_message() {
        let e = refused(
            422,
            r#"{"error":{"code":"no_opus","message":"the offer has no Opus"}}"#,
        );
        assert_eq!(
            e.to_string(),
            "server refused the offer: 422 no_opus: the offer has no Opus"
        );
        let e = refused(502, "Bad Gateway");
        assert_eq!(
            e.to_string(),
            "server refused the offer: 502 (no code): Bad Gateway"
        );
    }

    #[test]
    fn location_and_bind_follow_the_base_url() {
        assert_eq!(
            resolve_location("http://127.0.0.1:8080", "/v1/sessions/3/webrtc/9"),
            "http://127.0.0.1:8080/v1/sessions/3/webrtc/9"
        );
        assert_eq!(
            resolve_location("http://h:1/prefix", "http://other/x"),
            "http://other/x"
        );
        let bind = |url| default_bind(url).expect("a valid URL");
        assert_eq!(bind("http://127.0.0.1:8080").to_string(), "127.0.0.1:0");
        assert_eq!(bind("http://localhost:8080").to_string(), "127.0.0.1:0");
        assert_eq!(bind("http://[::1]:8080").to_string(), "127.0.0.1:0");
        assert_eq!(bind("http://10.1.2.3:8080").to_string(), "0.0.0.0:0");
        assert!(default_bind("not a url").is_err());
    }
}
