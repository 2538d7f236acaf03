//! The `voice-rtc` scenario: the voice scenario of [`voice_ws`], with
//! callers on WebRTC instead of the WebSocket.
//!
//! What a run does and measures is the shared voice scenario ([`voice`]);
//! this module is its WebRTC [`Transport`]. Each caller is an [`RtcCaller`]
//! (webrtc-rs, independent of the server's str0m): it posts its offer to
//! `POST /v1/sessions/{id}/webrtc` with the session's join token, sends
//! `user-message` / `end-session` on the `events` data channel, and hears
//! the reply as Opus RTP packets on its audio m-line. Spoken callers send
//! their microphone as one Opus RTP packet every 20 ms: the utterance and
//! silence are encoded once per run ([`OpusAudio`], 48 kHz like a browser)
//! and every caller sends the same packets, so the load generator's CPU goes
//! to the callers, not to encoding. Interruptions are spoken or typed, as
//! over the WebSocket, so the two transports' figures compare.
//!
//! Timing: an audio packet is stamped when webrtc-rs hands it over (after
//! SRTP, before any decoding), an event when the data channel delivers it;
//! the caller reads both queues and feeds them to the scenario in arrival
//! order, so a caller that falls behind still attributes frames to the right
//! reply. Decoding the Opus is optional ([`RtcOptions::decode_audio`]): only
//! the timing is needed, and decoding costs the load generator CPU.
//!
//! Besides the shared figures, a run counts RTP packets and bytes, packets
//! missing from the sequence numbers or out of order, packets the callers
//! let go unread, and (when decoding) decode errors: [`RtcFigures`].
//!
//! [`run`] must be awaited inside a [`tokio::task::LocalSet`] (an actix
//! System is one). `palaver-loadtest voice-rtc` runs it on a current-thread
//! runtime, where webrtc-rs's per-connection drivers (`tokio::spawn`) share
//! the one thread with the callers: a third of a core at 100 callers. With
//! the callers on a LocalSet inside a multi-threaded runtime instead, runs
//! of 50 or more callers sometimes stalled (every thread idle, the callers'
//! timers never firing; not diagnosed further).
//!
//! [`voice_ws`]: crate::voice_ws
//! [`voice`]: crate::voice

use std::cell::RefCell;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;
use palaver_media::AudioFrame;
use palaver_media::codec::EncoderConfig;
use serde_json::Value;

use crate::report::{Report, RtcFigures, VoiceFigures};
use crate::rest::RunError;
use crate::rtc_caller::{
    ConnectionState, ReceivedAudio, RtcCaller, RtcCallerConfig, RtcCallerError, encode_opus_stream,
};
use crate::utterance::{MicFrame, Utterance};
use crate::voice::{self, Incoming, Transport};

pub use crate::voice::{
    BARGE_IN_STOP, CREATE_SESSION, END_OF_TURN, END_SESSION, ERROR_EVENTS, FIRST_AUDIO, FIRST_TEXT,
    FRAME_JITTER, HANG_UP, INTERRUPTED_EVENT, SERVER_V2V, TRANSPORT_OVERHEAD, TURN, TurnInput,
    VOICE_TO_VOICE, VoiceConfig,
};

/// Offer → `session.started`: ICE gathering, the offer's `POST`, ICE and
/// DTLS, the data channel opening, and the server's first events.
pub const RTC_CONNECT: &str = "rtc-connect";

/// What WebRTC callers do beyond the shared [`VoiceConfig`].
#[derive(Debug, Clone)]
pub struct RtcOptions {
    /// Decode the server's Opus to 16 kHz (CPU on the load generator; the
    /// timing does not need it, decode errors are counted when on).
    pub decode_audio: bool,
    /// Received packets a caller holds unread before letting new ones go
    /// (50 per second of audio).
    pub audio_queue: usize,
}

impl Default for RtcOptions {
    fn default() -> Self {
        Self {
            decode_audio: false,
            audio_queue: 500,
        }
    }
}

/// What every WebRTC caller of a run shares.
pub(crate) struct RtcSetup {
    base_url: String,
    /// One client for every caller's offer and hang-up.
    http: reqwest::Client,
    options: RtcOptions,
    figures: RefCell<RtcFigures>,
}

/// The utterance and silence as Opus packets, encoded once per run and
/// shared by every caller.
pub(crate) struct OpusAudio {
    speech: Vec<Bytes>,
    silence: Bytes,
}

/// Silence frames the encoder hears before the utterance, as a caller's
/// microphone would have before anyone spoke.
const WARM_UP_FRAMES: usize = 10;

impl OpusAudio {
    fn encode(utterance: &Utterance) -> Result<Self, RtcCallerError> {
        let mut frames = vec![AudioFrame::silence(); WARM_UP_FRAMES];
        frames.extend_from_slice(utterance.frames());
        frames.extend(vec![AudioFrame::silence(); WARM_UP_FRAMES]);
        let mut packets = encode_opus_stream(&frames, EncoderConfig::default())?;
        // The last packet: silence, from an encoder that has settled on it.
        let silence = packets.pop().unwrap_or_default();
        packets.truncate(WARM_UP_FRAMES + utterance.frames().len());
        let speech = packets.split_off(WARM_UP_FRAMES);
        Ok(Self { speech, silence })
    }
}

/// Missing and out-of-order packets, from RTP sequence numbers.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct SequenceCheck {
    highest: Option<u16>,
    missing: u64,
    out_of_order: u64,
}

impl SequenceCheck {
    fn packet(&mut self, sequence: u16) {
        let Some(highest) = self.highest else {
            self.highest = Some(sequence);
            return;
        };
        // Sequence numbers wrap: the distance is taken modulo 2^16.
        let ahead = sequence.wrapping_sub(highest) as i16;
        if ahead > 0 {
            self.missing += (ahead - 1) as u64;
            self.highest = Some(sequence);
        } else {
            // Late (it was counted missing when a later one came) or twice.
            self.out_of_order += 1;
            if ahead < 0 {
                self.missing = self.missing.saturating_sub(1);
            }
        }
    }
}

/// A caller's WebRTC call.
pub(crate) struct RtcLine {
    caller: RtcCaller,
    /// Read off the caller's queues, in arrival order, not yet handed out.
    pending: VecDeque<Incoming>,
    audio_open: bool,
    events_open: bool,
    /// The server ended the session (and closes the peer itself).
    ended: bool,
    sequence: SequenceCheck,
}

/// What woke a caller up.
enum Woken {
    Event(Option<(Instant, Value)>),
    /// A packet's arrival and sequence number (the decoded frame, if any,
    /// is not needed).
    Audio(Option<(Instant, u16)>),
}

impl RtcLine {
    fn take_event(&mut self, at: Instant, event: Value, batch: &mut Vec<Incoming>) {
        if matches!(
            event["type"].as_str(),
            Some("session-ended" | "session.ended")
        ) {
            self.ended = true;
        }
        batch.push(Incoming::Event(at, event));
    }

    fn take_audio(&mut self, (at, sequence): (Instant, u16), batch: &mut Vec<Incoming>) {
        self.sequence.packet(sequence);
        batch.push(Incoming::Audio(at));
    }

    fn take(&mut self, woken: Woken, batch: &mut Vec<Incoming>) {
        match woken {
            Woken::Event(Some((at, event))) => self.take_event(at, event, batch),
            Woken::Event(None) => self.events_open = false,
            Woken::Audio(Some(audio)) => self.take_audio(audio, batch),
            Woken::Audio(None) => self.audio_open = false,
        }
    }
}

fn arrival(audio: ReceivedAudio) -> (Instant, u16) {
    (audio.at, audio.sequence)
}

/// A failure's reason, short and free of per-caller details (URLs, ids,
/// remaining time) so that equal failures group.
fn reason(err: &RtcCallerError) -> String {
    match err {
        RtcCallerError::Http { method, source, .. } => {
            let kind = if source.is_timeout() {
                "timeout"
            } else if source.is_connect() {
                "connect"
            } else {
                "transport"
            };
            format!("{method} {kind} error")
        }
        RtcCallerError::Refused { status, code, .. } => {
            format!("status {status} {}", code.as_deref().unwrap_or(""))
        }
        RtcCallerError::Timeout { what, .. } => format!("timeout waiting for {what}"),
        RtcCallerError::Hangup { status, .. } => format!("hang-up refused: status {status}"),
        other => other.to_string(),
    }
}

impl Transport for RtcLine {
    type Setup = RtcSetup;
    const SCENARIO: &'static str = "voice-rtc";
    const CONNECT: &'static str = RTC_CONNECT;

    async fn connect(setup: &RtcSetup, session: &Value, until: Instant) -> Result<Self, String> {
        let (Some(id), Some(token)) = (session["id"].as_i64(), session["token"].as_str()) else {
            return Err("no session id in the session".to_owned());
        };
        let config = RtcCallerConfig {
            connect_timeout: until.saturating_duration_since(Instant::now()),
            decode_audio: setup.options.decode_audio,
            audio_queue: setup.options.audio_queue,
            http: Some(setup.http.clone()),
            ..RtcCallerConfig::default()
        };
        let caller = RtcCaller::connect_with(&setup.base_url, id, token, config)
            .await
            .map_err(|err| reason(&err))?;
        Ok(Self {
            caller,
            pending: VecDeque::new(),
            audio_open: true,
            events_open: true,
            ended: false,
            sequence: SequenceCheck::default(),
        })
    }

    async fn send(&mut self, message: &Value) -> Result<Instant, String> {
        let at = Instant::now();
        self.caller
            .send_event(message)
            .await
            .map_err(|err| format!("send failed: {}", reason(&err)))?;
        Ok(at)
    }

    type Audio = OpusAudio;

    fn prepare_audio(utterance: &Utterance) -> Result<OpusAudio, String> {
        OpusAudio::encode(utterance).map_err(|err| err.to_string())
    }

    async fn send_audio(&mut self, audio: &OpusAudio, frame: MicFrame) -> Result<Instant, String> {
        let packet = match frame {
            MicFrame::Silence => &audio.silence,
            MicFrame::Speech(n) => audio.speech.get(n).unwrap_or(&audio.silence),
        };
        let at = Instant::now();
        self.caller
            .send_opus(packet.clone())
            .await
            .map_err(|err| format!("sending audio failed: {}", reason(&err)))?;
        Ok(at)
    }

    /// Waits for an event or a packet, then takes everything else already
    /// queued on both, and hands them out by arrival time.
    async fn next(&mut self) -> Result<Incoming, String> {
        loop {
            if let Some(incoming) = self.pending.pop_front() {
                return Ok(incoming);
            }
            if !self.events_open {
                return Err("the events data channel closed".to_owned());
            }
            let caller = &self.caller;
            let woken = if self.audio_open {
                tokio::select! {
                    event = caller.recv_event_at() => Woken::Event(event),
                    audio = caller.recv_audio() => Woken::Audio(audio.map(arrival)),
                }
            } else {
                Woken::Event(caller.recv_event_at().await)
            };
            let mut batch = Vec::new();
            self.take(woken, &mut batch);
            while let Some((at, event)) = self.caller.try_recv_event_at() {
                self.take_event(at, event, &mut batch);
            }
            while let Some(audio) = self.caller.try_recv_audio() {
                self.take_audio(arrival(audio), &mut batch);
            }
            // Stable: each queue is in order already.
            batch.sort_by_key(Incoming::at);
            self.pending.extend(batch);
        }
    }

    fn condition(&self) -> Option<String> {
        let state = self.caller.connection_state();
        (state != ConnectionState::Connected).then(|| format!("peer connection {state}"))
    }

    /// Closes the peer connection; `DELETE`s the call first unless the
    /// server already ended the session.
    async fn hang_up(self, setup: &RtcSetup) -> Result<(), String> {
        let stats = self.caller.stats();
        {
            let mut figures = setup.figures.borrow_mut();
            figures.packets_received += stats.rtp_packets_received;
            figures.payload_bytes_received += stats.rtp_bytes_received;
            figures.packets_missing += self.sequence.missing;
            figures.packets_out_of_order += self.sequence.out_of_order;
            figures.packets_dropped_by_callers += stats.audio_dropped;
            figures.frames_decoded += stats.audio_frames_decoded;
            figures.decode_errors += stats.decode_errors;
            figures.events_received += stats.events_received;
            figures.invalid_events += stats.invalid_events;
        }
        if self.ended {
            self.caller.close().await;
            Ok(())
        } else {
            self.caller.hangup().await.map_err(|err| reason(&err))
        }
    }

    fn report(setup: &RtcSetup, voice: &mut VoiceFigures) {
        voice.rtc = Some(setup.figures.borrow().clone());
    }
}

/// Runs the scenario over WebRTC and returns its report. Await it inside a
/// [`tokio::task::LocalSet`]: the callers are tasks on the current thread.
pub async fn run(config: VoiceConfig, options: RtcOptions) -> Result<Report, RunError> {
    voice::validate(&config)?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(config.callers)
        .build()
        .map_err(RunError::Client)?;
    let setup = RtcSetup {
        base_url: config.base_url.trim_end_matches('/').to_owned(),
        http,
        figures: RefCell::new(RtcFigures {
            decoded: options.decode_audio,
            ..RtcFigures::default()
        }),
        options,
    };
    voice::run::<RtcLine>(config, setup).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(sequence: &[u16]) -> (u64, u64) {
        let mut check = SequenceCheck::default();
        for &s in sequence {
            check.packet(s);
        }
        (check.missing, check.out_of_order)
    }

    #[test]
    fn sequence_gaps_are_missing_packets_and_late_ones_are_out_of_order() {
        assert_eq!(check(&[]), (0, 0));
        assert_eq!(check(&[7, 8, 9, 10]), (0, 0));
        assert_eq!(check(&[7, 8, 11, 12]), (2, 0));
        // 9 comes late: not missing after all, but out of order.
        assert_eq!(check(&[7, 8, 10, 9, 11]), (0, 1));
        // A duplicate.
        assert_eq!(check(&[7, 8, 8, 9]), (0, 1));
        // Across the wrap.
        assert_eq!(check(&[65_534, 65_535, 0, 1]), (0, 0));
        assert_eq!(check(&[65_534, 1]), (2, 0));
        assert_eq!(check(&[65_535, 1, 0]), (0, 1));
    }

    #[test]
    fn failure_reasons_leave_out_what_differs_per_caller() {
        let timeout = RtcCallerError::Timeout {
            what: "ICE and DTLS to connect",
            after: Duration::from_millis(29_731),
        };
        assert_eq!(
            reason(&timeout),
            "timeout waiting for ICE and DTLS to connect"
        );
        let refused = RtcCallerError::Refused {
            status: 409,
            code: Some("conflict".into()),
            message: "session 17 is already joined".into(),
        };
        assert_eq!(reason(&refused), "status 409 conflict");
        let hangup = RtcCallerError::Hangup {
            status: 500,
            body: "session 3".into(),
        };
        assert_eq!(reason(&hangup), "hang-up refused: status 500");
    }
}
