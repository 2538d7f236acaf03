//! The voice scenario, whatever the transport: callers holding voice
//! sessions and speaking (or typing) their turns, timed at the transport.
//!
//! Each caller creates a session over REST, joins it over its transport
//! ([`voice_ws`](crate::voice_ws): the WebSocket; [`voice_rtc`](crate::voice_rtc):
//! WebRTC, events on the `events` data channel and Opus over RTP), waits for
//! `session.started`, and takes its turns.
//!
//! **Spoken turns** ([`TurnInput::Spoken`], the default): from then on the
//! caller's microphone ([`Mic`]) sends one 20 ms frame every 20 ms, paced in
//! real time beside the reader: silence, and for each turn the utterance
//! ([`Utterance`]: a WAV file or a synthetic voiced signal), after which the
//! silence lets the server's VAD end the turn. Times are taken from the
//! moment a frame went out:
//!
//! - `voice-to-voice`: the utterance's last frame sent → the reply's first
//!   audio frame or packet. It includes what the server waits by design:
//!   WebRTC VAD's hangover (it hears "speech" for ~100 ms after it stops),
//!   the assistant's `end_of_turn_ms` of silence, and the providers'
//!   latency. `transport-overhead` (this − the server's own
//!   `voice_to_voice_ms`, which starts at the end of speech its VAD saw)
//!   is then mostly that hangover;
//! - `end-of-turn`: the utterance's last frame sent → `transcript.final`
//!   (the end-of-turn silence and speech to text);
//! - `first-text`, `turn`: as for typed turns, from the utterance's end.
//!
//! A barge-in caller starts the utterance again after hearing
//! `barge_in_after_frames` of the reply: `barge-in-stop` runs from that
//! speech's onset to the cut reply's last frame received (it includes the
//! assistant's `min_interruption_ms`), and the reply to the interruption is
//! timed from the end of that speech. A frame sent at `t` carries the
//! audio of `t − 20 ms … t`, as a microphone's would: speech ends when its
//! last frame is sent, and begins one frame before its first frame is sent
//! (the server counts `min_interruption_ms` of audio from there too).
//!
//! **Typed turns** ([`TurnInput::Typed`]): for every turn the caller sends a
//! `user-message` and reads every event and audio frame as it arrives until
//! the reply is done:
//!
//! - `first-text`: message sent → first `assistant.delta`;
//! - `first-audio`: message sent → first audio frame or packet (the
//!   voice-to-voice of a typed turn, the providers' latency included);
//! - `turn`: message sent → `assistant.done` (the reply's audio is paced in
//!   real time, so this includes playing it out);
//! - `frame-jitter`: |gap − 20 ms| between successive audio frames of a reply;
//! - `server-v2v`: the server's own view, `turn.metrics.voice_to_voice_ms`.
//!
//! Barge-in callers cut into every reply after hearing
//! `barge_in_after_frames` of its frames, with a second message (typed, on
//! either transport, so the figures compare):
//!
//! - `barge-in-stop`: that message sent → the last audio frame of the cut
//!   reply received (frames arriving before `assistant.interrupted` are the
//!   cut reply's; 0 when none arrived after the message);
//! - `interrupted-event`: that message sent → `assistant.interrupted`.
//!
//! The reply to the interruption is then timed like any other.
//!
//! The server streams a reply's text before its audio, so audio frames that
//! arrive before a reply's first `assistant.delta` are not that reply's: they
//! are the previous reply's, sent after its `assistant.done` (or after its
//! `assistant.interrupted`). They are counted as late frames, not as the new
//! reply's first audio. Failures
//! (REST, connect, timeouts, `error` events, missing events) are counted per
//! operation with their reason. The run is bounded by callers × turns and by
//! `max_duration`, after which no turn starts (and whatever is still waiting
//! `idle_timeout` later is cut off, as a failure).
//!
//! All callers are tasks on the current thread, sharing one set of
//! histograms: [`run`] must be awaited inside a [`tokio::task::LocalSet`]
//! (an actix System is one). What a turn's frames mean lives in
//! [`TurnProbe`], a plain struct fed with frames and their arrival times, so
//! its rules are tested without a socket; what differs between transports
//! (joining, sending, reading the next event or frame with its arrival time,
//! hanging up) is a [`Transport`].

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::fake_providers::FakeStats;
use crate::report::{CountPoint, LatencyPoint, OpStats, ProviderFigures, Report, VoiceFigures};
use crate::resources::ProcessSampler;
use crate::rest::{ApiClient, RunError};
use crate::utterance::{Mic, MicEvent, MicFrame, Utterance};

pub const CREATE_SESSION: &str = "create-session";
pub const FIRST_TEXT: &str = "first-text";
pub const FIRST_AUDIO: &str = "first-audio";
/// A spoken turn's end of caller speech → first audio of the reply.
pub const VOICE_TO_VOICE: &str = "voice-to-voice";
/// A spoken turn's end of caller speech → `transcript.final`.
pub const END_OF_TURN: &str = "end-of-turn";
pub const TURN: &str = "turn";
pub const FRAME_JITTER: &str = "frame-jitter";
pub const SERVER_V2V: &str = "server-v2v";
/// `first-audio` − `server-v2v` of the same reply: what the server's own
/// clock does not see (the message's way in, the first frame's way out
/// through the transport on both sides); 1 ms resolution (the server
/// reports whole ms).
pub const TRANSPORT_OVERHEAD: &str = "transport-overhead";
pub const BARGE_IN_STOP: &str = "barge-in-stop";
pub const INTERRUPTED_EVENT: &str = "interrupted-event";
/// `end-session` sent → `session-ended`.
pub const END_SESSION: &str = "end-session";
/// Joining (the SDP offer posted, the WebSocket upgrade sent) → the first
/// audio of the assistant's first message: what a caller waits before it
/// hears anything. Only when the assistant greets.
pub const SETUP: &str = "setup";
/// `error` events from the server, by code (never latencies).
pub const ERROR_EVENTS: &str = "error-events";

/// `DELETE` of a WebRTC call that did not end by itself (failures only).
pub const HANG_UP: &str = "hang-up";

/// The server's audio: 20 ms frames (WebSocket) or packets (WebRTC).
pub(crate) const FRAME_INTERVAL: Duration = Duration::from_millis(20);
/// How often the server process is sampled.
const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);
/// Longest a hang-up may take before it counts as failed.
const HANG_UP_TIMEOUT: Duration = Duration::from_secs(15);
/// After the hard stop, how long callers get to finish before they are
/// aborted (each as a failure naming where it was stuck).
const STUCK_GRACE: Duration = Duration::from_secs(20);

/// How callers take their turns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TurnInput {
    /// They speak: an utterance played as real-time paced audio.
    #[default]
    Spoken,
    /// They type a `user-message`.
    Typed,
}

impl TurnInput {
    pub fn as_str(self) -> &'static str {
        match self {
            TurnInput::Spoken => "spoken",
            TurnInput::Typed => "typed",
        }
    }
}

/// What a voice run does.
#[derive(Debug, Clone)]
pub struct VoiceConfig {
    /// e.g. `http://127.0.0.1:8080`
    pub base_url: String,
    pub api_key: String,
    /// Use this assistant; one with the `openai` STT, LLM and TTS is created
    /// when absent. If it has a first message, callers hear it out before their
    /// first turn.
    pub assistant_id: Option<i64>,
    pub callers: usize,
    /// Replies each caller hears to the end.
    pub turns: u32,
    /// Spoken (the utterance as audio) or typed turns.
    pub input: TurnInput,
    /// What spoken callers say: a WAV file (any rate, mono or stereo); a
    /// synthetic voiced signal when `None`.
    pub utterance: Option<PathBuf>,
    /// Before each turn, the caller waits this long (spoken callers send
    /// silence meanwhile).
    pub pause_between_turns: Duration,
    /// Share of callers (0 to 1) that cut into every reply.
    pub barge_in_share: f64,
    /// Audio frames of a reply a barge-in caller hears before cutting in.
    pub barge_in_after_frames: usize,
    /// Callers started per second; 0 starts them all at once.
    pub ramp_per_second: f64,
    /// No caller or turn starts after this long.
    pub max_duration: Duration,
    /// A caller that receives nothing for this long while waiting has
    /// failed; it is also the grace after `max_duration` before the run is
    /// cut off.
    pub idle_timeout: Duration,
    /// What callers type.
    pub message: String,
    /// What barge-in callers type to cut in.
    pub interruption: String,
    /// Sample this process's CPU and memory (the server's pid).
    pub server_pid: Option<u32>,
    /// The fake providers' base URL (`http://…/v1`), to report their
    /// configured latency and the requests they answered.
    pub fake_providers_url: Option<String>,
    /// The assistant the run creates (not with `assistant_id`).
    pub assistant: AssistantShape,
    /// A caller who hung up after its turns calls again, with a new
    /// session, until `max_duration` (a soak: the same number of calls at
    /// once for the whole run, sessions starting and ending throughout).
    pub repeat_calls: bool,
    /// Report the server's memory growth after this much of the run.
    pub warmup: Option<Duration>,
}

/// What the assistant a run creates is like besides its providers (the
/// `openai` adapters): the server's defaults where `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AssistantShape {
    /// What it says first, before the caller's first turn: `setup` is
    /// timed to its first audio.
    pub first_message: Option<String>,
    /// Silence that ends a caller's turn (the server's default: 500).
    pub end_of_turn_ms: Option<u32>,
    /// Speech that cuts into a reply (the server's default: 300).
    pub min_interruption_ms: Option<u32>,
}

impl AssistantShape {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// The `POST /v1/assistants` body.
    fn body(&self) -> Value {
        let mut body = json!({
            "name": "loadtest voice",
            "llm": {"provider": "openai", "model": "fake-1"},
            "stt": {"provider": "openai", "model": "whisper-1"},
            "tts": {"provider": "openai", "voice_id": "alloy"},
        });
        if let Some(text) = &self.first_message {
            body["first_message"] = json!(text);
        }
        if let Some(ms) = self.end_of_turn_ms {
            body["end_of_turn_ms"] = json!(ms);
        }
        if let Some(ms) = self.min_interruption_ms {
            body["min_interruption_ms"] = json!(ms);
        }
        body
    }
}

impl Default for VoiceConfig {
    fn default() -> Self {
        Self {
            base_url: "http://127.0.0.1:8080".to_owned(),
            api_key: String::new(),
            assistant_id: None,
            callers: 10,
            turns: 3,
            input: TurnInput::Spoken,
            utterance: None,
            pause_between_turns: Duration::ZERO,
            barge_in_share: 0.3,
            barge_in_after_frames: 10,
            ramp_per_second: 20.0,
            max_duration: Duration::from_secs(120),
            idle_timeout: Duration::from_secs(30),
            message: "Do you have a room tonight?".to_owned(),
            interruption: "Sorry, how much is it?".to_owned(),
            server_pid: None,
            fake_providers_url: None,
            assistant: AssistantShape::default(),
            repeat_calls: false,
            warmup: None,
        }
    }
}

/// Whether caller `index` of `callers` barges in: `round(callers × share)`
/// of them, spread evenly.
fn barges_in(index: usize, callers: usize, share: f64) -> bool {
    let callers = callers.max(1);
    let count = (callers as f64 * share.clamp(0.0, 1.0)).round() as usize;
    (index + 1) * count / callers > index * count / callers
}

/// Latencies and counts of the whole run; every caller writes here between
/// two awaits (never across one), all on one thread.
#[derive(Debug, Default)]
struct VoiceStats {
    ops: BTreeMap<&'static str, OpStats>,
    callers_not_started: usize,
    turns_completed: u64,
    /// Turns that failed (each also a `turn` failure with its reason).
    turns_failed: u64,
    turns_not_run: u64,
    barge_ins_sent: u64,
    barge_ins_observed: u64,
    audio_frames: u64,
    late_frames_after_done: u64,
    late_frames_after_interrupted: u64,
    turns_with_late_audio: u64,
    /// The run's start, for the first-audio timeline.
    started: Option<Instant>,
    /// (seconds into the run, first audio in ms) of every reply.
    first_audio_over_time: Vec<LatencyPoint>,
    /// Callers in a call (from creating their session to hanging up), once
    /// a second.
    sessions_over_time: Vec<CountPoint>,
}

impl VoiceStats {
    fn record(&mut self, op: &'static str, latency: Duration) {
        self.ops.entry(op).or_default().record(latency);
        if (op == FIRST_AUDIO || op == VOICE_TO_VOICE)
            && let Some(started) = self.started
        {
            self.first_audio_over_time.push(LatencyPoint {
                t_s: started.elapsed().as_secs_f64(),
                ms: latency.as_secs_f64() * 1000.0,
            });
        }
    }

    fn fail(&mut self, op: &'static str, reason: impl Into<String>) {
        self.ops.entry(op).or_default().fail(reason.into());
    }
}

/// One reply being timed.
#[derive(Debug, Clone, Copy)]
struct ReplyClock {
    /// When the message that asked for it was sent, or the speech that
    /// asked for it ended; `None` while that speech goes on.
    asked_at: Option<Instant>,
    /// Its first `assistant.delta` (or an `error`, after which an apology is
    /// spoken) arrived: audio before that is not its own.
    started: bool,
    first_text: bool,
    first_audio: bool,
    /// `transcript.final` arrived (spoken turns).
    heard: bool,
    /// Message sent → first audio, once it came.
    first_audio_after: Option<Duration>,
    frames: usize,
    last_frame: Option<Instant>,
    /// Its `assistant.done` arrived.
    done: bool,
}

impl ReplyClock {
    fn new(asked_at: Option<Instant>) -> Self {
        Self {
            asked_at,
            started: false,
            first_text: false,
            first_audio: false,
            heard: false,
            first_audio_after: None,
            frames: 0,
            last_frame: None,
            done: false,
        }
    }
}

/// An interruption sent whose `assistant.interrupted` has not come yet.
#[derive(Debug, Clone, Copy)]
struct Cut {
    /// The typed interruption sent, or the first frame of the spoken one.
    sent_at: Instant,
    /// The cut reply's last frame received since.
    last_frame: Option<Instant>,
}

/// What the driver of a turn does next.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    /// Keep reading.
    Read,
    /// Send the interruption now (type it, or start speaking), then tell
    /// [`TurnProbe::interruption_sent`] when it (its first frame) went out.
    Interrupt,
    /// The turn is over: the reply's `turn.metrics` arrived.
    Finished,
    /// The turn cannot go on (the session ended); why.
    Fatal(String),
}

/// How the reply before the current one ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PreviousEnd {
    Done,
    Interrupted,
}

/// Follows one turn through the frames the server sends, recording its
/// latencies. Fed by the socket reader (and, for spoken turns, told when the
/// caller's speech starts and ends); no I/O, no clock of its own.
#[derive(Debug)]
struct TurnProbe {
    spoken: bool,
    /// The caller is speaking (spoken turns): the next reply's clock starts
    /// when that speech ends.
    speaking: bool,
    /// When the caller's latest speech ended.
    speech_ended_at: Option<Instant>,
    reply: ReplyClock,
    /// Frames of the reply to hear before cutting in; `None` for a caller
    /// that does not barge in, and once it did.
    barge_in_after: Option<usize>,
    cutting: Option<Cut>,
    previous_end: PreviousEnd,
    /// Late frames (of an earlier reply) arrived during this turn.
    saw_late_audio: bool,
}

impl TurnProbe {
    /// A typed turn whose message was sent at `asked_at`.
    fn new(asked_at: Instant, barge_in_after: Option<usize>) -> Self {
        Self::with_clock(false, Some(asked_at), barge_in_after)
    }

    /// A spoken turn whose caller is about to speak.
    fn spoken(barge_in_after: Option<usize>) -> Self {
        let mut probe = Self::with_clock(true, None, barge_in_after);
        probe.speaking = true;
        probe
    }

    fn with_clock(spoken: bool, asked_at: Option<Instant>, barge_in_after: Option<usize>) -> Self {
        Self {
            spoken,
            speaking: false,
            speech_ended_at: None,
            reply: ReplyClock::new(asked_at),
            barge_in_after: barge_in_after.map(|n| n.max(1)),
            cutting: None,
            previous_end: PreviousEnd::Done,
            saw_late_audio: false,
        }
    }

    /// The event the turn is waiting for, to name it when it does not come.
    fn waiting_for(&self) -> &'static str {
        if self.cutting.is_some() {
            "assistant.interrupted"
        } else if self.reply.done {
            "turn.metrics"
        } else if !self.reply.first_text {
            "assistant.delta"
        } else if !self.reply.first_audio {
            "audio"
        } else {
            "assistant.done"
        }
    }

    fn interruption_sent(&mut self, at: Instant) {
        if self.spoken {
            self.speaking = true;
        }
        self.cutting = Some(Cut {
            sent_at: at,
            last_frame: None,
        });
    }

    /// The last frame of the caller's speech went out at `at`: the clock of
    /// the reply it asks for starts.
    fn speech_ended(&mut self, at: Instant) {
        self.speaking = false;
        self.speech_ended_at = Some(at);
        if self.reply.asked_at.is_none() {
            self.reply.asked_at = Some(at);
        }
    }

    /// The clock of the reply to an interruption (sent at `sent_at`).
    fn interruption_reply(&self, sent_at: Instant) -> ReplyClock {
        if !self.spoken {
            ReplyClock::new(Some(sent_at))
        } else if self.speaking {
            ReplyClock::new(None)
        } else {
            // The interruption's speech ended before the server decided.
            ReplyClock::new(self.speech_ended_at.filter(|end| *end >= sent_at))
        }
    }

    /// The reply's first-audio operation.
    fn first_audio_op(&self) -> &'static str {
        if self.spoken {
            VOICE_TO_VOICE
        } else {
            FIRST_AUDIO
        }
    }

    fn on_audio(&mut self, at: Instant, stats: &mut VoiceStats) -> Step {
        stats.audio_frames += 1;
        if !self.reply.started && self.cutting.is_none() {
            match self.previous_end {
                PreviousEnd::Done => stats.late_frames_after_done += 1,
                PreviousEnd::Interrupted => stats.late_frames_after_interrupted += 1,
            }
            if !self.saw_late_audio {
                self.saw_late_audio = true;
                stats.turns_with_late_audio += 1;
            }
            return Step::Read;
        }
        let reply = &mut self.reply;
        if let Some(previous) = reply.last_frame {
            let gap = at.saturating_duration_since(previous);
            stats.record(FRAME_JITTER, gap.abs_diff(FRAME_INTERVAL));
        }
        if !reply.first_audio {
            reply.first_audio = true;
            // A reply that began before the speech ended was failed at its
            // first text.
            if let Some(asked_at) = reply.asked_at {
                let after = at.saturating_duration_since(asked_at);
                reply.first_audio_after = Some(after);
                let op = if self.spoken {
                    VOICE_TO_VOICE
                } else {
                    FIRST_AUDIO
                };
                stats.record(op, after);
            }
        }
        reply.frames += 1;
        reply.last_frame = Some(at);
        if let Some(cut) = &mut self.cutting {
            cut.last_frame = Some(at);
        }
        if self.barge_in_after.is_some_and(|n| reply.frames >= n) {
            self.barge_in_after = None;
            return Step::Interrupt;
        }
        Step::Read
    }

    fn on_event(&mut self, at: Instant, event: &Value, stats: &mut VoiceStats) -> Step {
        match event["type"].as_str().unwrap_or_default() {
            "assistant.delta" if !self.reply.first_text => {
                self.reply.started = true;
                self.reply.first_text = true;
                match self.reply.asked_at {
                    Some(asked_at) => {
                        stats.record(FIRST_TEXT, at.saturating_duration_since(asked_at))
                    }
                    None => stats.fail(
                        FIRST_TEXT,
                        "the reply began before the caller's speech ended \
                         (a pause in the utterance ended the turn?)",
                    ),
                }
            }
            "transcript.final" if self.spoken && !self.reply.heard => {
                if let Some(asked_at) = self.reply.asked_at {
                    self.reply.heard = true;
                    stats.record(END_OF_TURN, at.saturating_duration_since(asked_at));
                }
            }
            "assistant.interrupted" => match self.cutting.take() {
                Some(cut) => {
                    let stop = cut
                        .last_frame
                        .map_or(Duration::ZERO, |f| f.saturating_duration_since(cut.sent_at));
                    stats.record(BARGE_IN_STOP, stop);
                    stats.record(INTERRUPTED_EVENT, at.saturating_duration_since(cut.sent_at));
                    stats.barge_ins_observed += 1;
                    self.reply = self.interruption_reply(cut.sent_at);
                    self.previous_end = PreviousEnd::Interrupted;
                }
                None => stats.fail(
                    INTERRUPTED_EVENT,
                    "assistant.interrupted without a barge-in",
                ),
            },
            "assistant.done" => {
                if let Some(cut) = self.cutting.take() {
                    // The reply ended before the interruption reached the
                    // server: nothing was cut, and the interruption gets a
                    // reply of its own (speech only if it was still going
                    // on: one that ended during the reply was a
                    // backchannel, and this reply's metrics end the turn).
                    stats.fail(
                        INTERRUPTED_EVENT,
                        "no assistant.interrupted: the reply ended before the interruption arrived",
                    );
                    if !self.spoken || self.speaking {
                        self.reply = self.interruption_reply(cut.sent_at);
                        self.previous_end = PreviousEnd::Done;
                        return Step::Read;
                    }
                }
                if self.reply.done {
                    return Step::Read;
                }
                if !self.reply.first_text {
                    stats.fail(FIRST_TEXT, "no assistant.delta before assistant.done");
                }
                if !self.reply.first_audio {
                    stats.fail(self.first_audio_op(), "no audio before assistant.done");
                }
                if self.barge_in_after.take().is_some() {
                    stats.fail(
                        INTERRUPTED_EVENT,
                        "no barge-in: the reply was shorter than the frames to hear first",
                    );
                }
                self.reply.done = true;
                if let Some(asked_at) = self.reply.asked_at {
                    stats.record(TURN, at.saturating_duration_since(asked_at));
                }
            }
            // A `turn.metrics` before the reply is done belongs to an earlier
            // reply (one that ended before an interruption arrived).
            "turn.metrics" if self.reply.done => {
                match event["voice_to_voice_ms"].as_u64() {
                    Some(ms) => {
                        let server = Duration::from_millis(ms);
                        stats.record(SERVER_V2V, server);
                        if let Some(client) = self.reply.first_audio_after {
                            stats.record(TRANSPORT_OVERHEAD, client.saturating_sub(server));
                        }
                    }
                    None => stats.fail(SERVER_V2V, "turn.metrics without voice_to_voice_ms"),
                }
                return Step::Finished;
            }
            "error" => {
                self.reply.started = true;
                stats.fail(ERROR_EVENTS, error_reason(event));
            }
            "session.ended" => {
                let reason = event["reason"].as_str().unwrap_or("no reason");
                return Step::Fatal(format!("session ended mid-turn ({reason})"));
            }
            _ => {}
        }
        Step::Read
    }
}

/// `code: message` of an `error` event, short enough to group by.
fn error_reason(event: &Value) -> String {
    let code = event["code"].as_str().unwrap_or("no code");
    let message: String = event["message"]
        .as_str()
        .unwrap_or_default()
        .chars()
        .take(120)
        .collect();
    format!("{code}: {message}")
}
/// What a transport read, and when it arrived.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Incoming {
    /// One 20 ms frame (WebSocket) or RTP packet (WebRTC) of the reply.
    Audio(Instant),
    Event(Instant, Value),
}

impl Incoming {
    pub(crate) fn at(&self) -> Instant {
        match self {
            Incoming::Audio(at) | Incoming::Event(at, _) => *at,
        }
    }
}

/// Why a caller stopped hearing from the server.
#[derive(Debug)]
enum Lost {
    /// Nothing for `idle_timeout`.
    Idle,
    /// The run's hard stop passed.
    CutOff,
    /// Closed, a protocol error, or a frame that breaks the protocol.
    Broken(String),
}

impl Lost {
    fn reason(&self, waiting_for: &str, idle: Duration) -> String {
        match self {
            Lost::Idle => format!(
                "timeout: nothing for {} s while waiting for {waiting_for}",
                idle.as_secs()
            ),
            Lost::CutOff => format!("cut off at --max-seconds while waiting for {waiting_for}"),
            Lost::Broken(why) => format!("{why} while waiting for {waiting_for}"),
        }
    }
}

/// How a caller talks to its session: everything the scenario does not
/// share between the WebSocket and WebRTC. One value per connected caller;
/// all on the scenario's thread, so nothing here needs to be `Send`.
pub(crate) trait Transport: Sized + 'static {
    /// What every caller of a run shares (an HTTP client, options, counters).
    type Setup: 'static;
    /// The report's scenario name.
    const SCENARIO: &'static str;
    /// The operation timing connect → `session.started`.
    const CONNECT: &'static str;

    /// Joins the session `session` (the body of `POST /v1/sessions`: `id`,
    /// `token`, `ws_url`, `webrtc_url`), giving up at `until`.
    async fn connect(setup: &Self::Setup, session: &Value, until: Instant) -> Result<Self, String>;

    /// Sends one JSON message; returns when it started going out.
    async fn send(&mut self, message: &Value) -> Result<Instant, String>;

    /// The utterance and silence as this transport sends them (PCM frames,
    /// Opus packets), prepared once per run.
    type Audio: 'static;

    /// Prepares what [`Transport::send_audio`] sends.
    fn prepare_audio(utterance: &Utterance) -> Result<Self::Audio, String>;

    /// Sends one 20 ms frame of the caller's microphone; returns when it
    /// started going out.
    async fn send_audio(&mut self, audio: &Self::Audio, frame: MicFrame)
    -> Result<Instant, String>;

    /// The next event or audio frame, in arrival order, with its arrival
    /// time. Cancel-safe: the scenario bounds it with timeouts.
    async fn next(&mut self) -> Result<Incoming, String>;

    /// What is wrong with the connection, if anything, to explain a timeout.
    fn condition(&self) -> Option<String> {
        None
    }

    /// Leaves the call (after `session-ended`, or on a failure).
    async fn hang_up(self, setup: &Self::Setup) -> Result<(), String>;

    /// Adds what this transport counted over the run to the report.
    fn report(_setup: &Self::Setup, _voice: &mut VoiceFigures) {}
}

/// What spoken callers say, as the transport sends it.
struct Speech<T: Transport> {
    utterance: Utterance,
    audio: T::Audio,
}

/// What every caller shares.
struct Shared<T: Transport> {
    config: VoiceConfig,
    api: ApiClient,
    setup: T::Setup,
    /// Spoken runs only.
    speech: Option<Speech<T>>,
    assistant: i64,
    /// The assistant speaks a first message callers hear out first.
    greets: bool,
    started: Instant,
    /// No caller or turn starts after this.
    deadline: Instant,
    /// Whatever still waits now is cut off.
    hard_stop: Instant,
    stats: RefCell<VoiceStats>,
    /// What each caller is doing, to name where one got stuck.
    phases: RefCell<Vec<&'static str>>,
}

/// The one-line live status, refreshed every second on stderr while a run
/// goes (only when stderr is a terminal: logs and CI get the final report
/// alone).
async fn progress<T: Transport>(shared: Rc<Shared<T>>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut line = String::with_capacity(160);
    loop {
        tick.tick().await;
        line.clear();
        status_line(
            &mut line,
            shared.started.elapsed(),
            &shared.phases.borrow(),
            &shared.stats.borrow(),
            shared.phases.borrow().len() as u64 * u64::from(shared.config.turns),
        );
        crate::report::show_status(&line);
    }
}

/// A bar of the turns over (completed, or given up) out of `planned`,
/// elapsed time, callers by what they do, turns, failures and the first
/// audio percentiles so far.
fn status_line(
    out: &mut String,
    elapsed: Duration,
    phases: &[&str],
    stats: &VoiceStats,
    planned: u64,
) {
    use std::fmt::Write;
    let (waiting, in_call, done) = count_phases(phases);
    let failures = crate::report::failure_count(&stats.ops);
    let over = (stats.turns_completed + stats.turns_failed + stats.turns_not_run).min(planned);
    crate::report::progress_bar(out, over as f64 / planned.max(1) as f64);
    let _ = write!(
        out,
        " {:>5.0} s · callers {in_call} in call, {waiting} waiting, {done} done · turns {} · failures {failures}",
        elapsed.as_secs_f64(),
        stats.turns_completed,
    );
    let first_audio = [
        (VOICE_TO_VOICE, "voice-to-voice"),
        (FIRST_AUDIO, "first audio"),
    ]
    .into_iter()
    .find_map(|(op, label)| Some((stats.ops.get(op).filter(|o| o.ok() > 0)?, label)));
    if let Some((first_audio, label)) = first_audio {
        let s = first_audio.summary(elapsed);
        let _ = write!(
            out,
            " · {label} p50 {:.1} ms, p99 {:.1} ms",
            s.p50_ms, s.p99_ms
        );
    }
}

/// Callers (waiting to start, in a call, done) by their phases.
fn count_phases(phases: &[&str]) -> (usize, usize, usize) {
    let (mut waiting, mut in_call, mut done) = (0, 0, 0);
    for phase in phases {
        match *phase {
            "waiting to start" => waiting += 1,
            "done" => done += 1,
            _ => in_call += 1,
        }
    }
    (waiting, in_call, done)
}

/// Counts the callers in a call once a second, for the sessions-over-time
/// chart (runs until aborted).
async fn count_sessions<T: Transport>(shared: Rc<Shared<T>>) {
    let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
    // After a stall, one point, not a burst of them at the same moment.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (_, in_call, _) = count_phases(&shared.phases.borrow());
        shared
            .stats
            .borrow_mut()
            .sessions_over_time
            .push(CountPoint {
                t_s: shared.started.elapsed().as_secs_f64(),
                count: in_call,
            });
    }
}

impl<T: Transport> Shared<T> {
    fn phase(&self, index: usize, phase: &'static str) {
        if let Some(slot) = self.phases.borrow_mut().get_mut(index) {
            *slot = phase;
        }
    }

    /// Sends one message, within the idle timeout and the hard stop.
    async fn send(&self, line: &mut T, message: &Value) -> Result<Instant, String> {
        let until = (Instant::now() + self.config.idle_timeout).min(self.hard_stop);
        match tokio::time::timeout_at(until.into(), line.send(message)).await {
            Ok(sent) => sent,
            Err(_) => Err(format!(
                "sending {} timed out",
                message["type"].as_str().unwrap_or("a message")
            )),
        }
    }

    /// Sends one microphone frame, within the idle timeout and the hard
    /// stop.
    async fn send_audio(
        &self,
        line: &mut T,
        audio: &T::Audio,
        frame: MicFrame,
    ) -> Result<Instant, String> {
        let until = (Instant::now() + self.config.idle_timeout).min(self.hard_stop);
        match tokio::time::timeout_at(until.into(), line.send_audio(audio, frame)).await {
            Ok(sent) => sent,
            Err(_) => Err("sending audio timed out".to_owned()),
        }
    }

    fn record(&self, op: &'static str, latency: Duration) {
        self.stats.borrow_mut().record(op, latency);
    }

    fn fail(&self, op: &'static str, reason: impl Into<String>) {
        self.stats.borrow_mut().fail(op, reason);
    }

    /// The line's next event or frame, within the idle timeout and the
    /// run's hard stop; a lost line's reason names what was awaited.
    async fn next(
        &self,
        line: &mut T,
        waiting_for: impl Fn() -> String,
    ) -> Result<Incoming, String> {
        self.next_since(line, Instant::now(), waiting_for).await
    }

    /// [`Shared::next`], idle since `heard_at` (the last thing received):
    /// for a reader that is woken in between (to send audio) and calls
    /// again.
    async fn next_since(
        &self,
        line: &mut T,
        heard_at: Instant,
        waiting_for: impl Fn() -> String,
    ) -> Result<Incoming, String> {
        let idle = self.config.idle_timeout;
        let idle_until = heard_at + idle;
        let (until, lost) = if idle_until < self.hard_stop {
            (idle_until, Lost::Idle)
        } else {
            (self.hard_stop, Lost::CutOff)
        };
        let lost = match tokio::time::timeout_at(until.into(), line.next()).await {
            Ok(Ok(incoming)) => return Ok(incoming),
            Ok(Err(why)) => Lost::Broken(why),
            Err(_) => lost,
        };
        let reason = lost.reason(&waiting_for(), idle);
        Err(match line.condition() {
            Some(condition) => format!("{reason} ({condition})"),
            None => reason,
        })
    }

    /// Reads until an event of type `kind`; returns when it arrived. Error
    /// events on the way are counted; audio is ignored.
    async fn wait_for(&self, line: &mut T, kind: &str) -> Result<Instant, String> {
        loop {
            let incoming = self.next(line, || kind.to_owned()).await?;
            let Incoming::Event(at, event) = incoming else {
                continue;
            };
            let ty = event["type"].as_str().unwrap_or_default();
            if ty == kind {
                return Ok(at);
            }
            match ty {
                "error" => self.fail(ERROR_EVENTS, error_reason(&event)),
                "session.ended" if kind != "session-ended" => {
                    let reason = event["reason"].as_str().unwrap_or("no reason");
                    return Err(format!("session ended ({reason}) while waiting for {kind}"));
                }
                _ => {}
            }
        }
    }

    /// Leaves the call; a refused or stuck hang-up is a failure of its own.
    async fn hang_up(&self, index: usize, line: T) {
        self.phase(index, "hanging up");
        match tokio::time::timeout(HANG_UP_TIMEOUT, line.hang_up(&self.setup)).await {
            Ok(Ok(())) => {}
            Ok(Err(reason)) => self.fail(HANG_UP, reason),
            Err(_) => self.fail(
                HANG_UP,
                format!("timed out after {} s", HANG_UP_TIMEOUT.as_secs()),
            ),
        }
        self.phase(index, "done");
    }
}

fn user_message(text: &str) -> Value {
    json!({"type": "user-message", "text": text})
}

/// One caller, from its place in the ramp to hanging up.
async fn caller<T: Transport>(shared: Rc<Shared<T>>, index: usize) {
    let config = &shared.config;
    let offset = if config.ramp_per_second > 0.0 {
        Duration::from_secs_f64(index as f64 / config.ramp_per_second)
    } else {
        Duration::ZERO
    };
    let turns = u64::from(config.turns);
    let start_at = shared.started + offset;
    if start_at >= shared.deadline {
        let mut stats = shared.stats.borrow_mut();
        stats.callers_not_started += 1;
        stats.turns_not_run += turns;
        return;
    }
    tokio::time::sleep_until(start_at.into()).await;
    let barges = barges_in(index, config.callers, config.barge_in_share);
    let attempted = call(&shared, index, barges).await;
    shared.stats.borrow_mut().turns_not_run += turns.saturating_sub(attempted);
    // Calls after the first count what they ran; the deadline cutting one
    // short is how a repeating run ends, not a turn missed.
    while config.repeat_calls && Instant::now() < shared.deadline {
        if call(&shared, index, barges).await == 0 {
            // It failed before its first turn (counted): no tight loop.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// Joins, runs the turns, hangs up; returns the turns attempted.
async fn call<T: Transport>(shared: &Shared<T>, index: usize, barges: bool) -> u64 {
    let config = &shared.config;
    shared.phase(index, "creating the session");
    let created = shared
        .api
        .request(
            reqwest::Method::POST,
            "/v1/sessions",
            Some(json!({"assistant_id": shared.assistant})),
        )
        .await;
    let session = match created {
        Ok((body, latency)) if body["token"].is_string() => {
            shared.record(CREATE_SESSION, latency);
            body
        }
        Ok(_) => {
            shared.fail(CREATE_SESSION, "no token in the response");
            return 0;
        }
        Err(reason) => {
            shared.fail(CREATE_SESSION, reason);
            return 0;
        }
    };

    shared.phase(index, "connecting");
    let connecting = Instant::now();
    let until = (connecting + config.idle_timeout).min(shared.hard_stop);
    let mut line = match T::connect(&shared.setup, &session, until).await {
        Ok(line) => line,
        Err(reason) => {
            shared.fail(T::CONNECT, reason);
            return 0;
        }
    };
    shared.phase(index, "waiting for session.started");
    if let Err((op, reason)) = join(shared, index, &mut line, connecting).await {
        shared.fail(op, reason);
        shared.hang_up(index, line).await;
        return 0;
    }

    let mut attempted = 0;
    // Spoken callers' microphones send a frame every 20 ms from here on.
    let mut mic = shared.speech.as_ref().map(|speech| {
        let mut ticker = tokio::time::interval(FRAME_INTERVAL);
        // Late ticks are sent at once: media time stays real time.
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        (Mic::new(&speech.utterance), ticker, speech)
    });
    for _ in 0..config.turns {
        if Instant::now() >= shared.deadline {
            break;
        }
        attempted += 1;
        let done = match &mut mic {
            Some((mic, ticker, speech)) => {
                let mut mic = MicLine {
                    mic,
                    ticker,
                    audio: &speech.audio,
                };
                spoken_turn(shared, index, &mut line, barges, &mut mic).await
            }
            None => turn(shared, index, &mut line, barges).await,
        };
        match done {
            Ok(()) => shared.stats.borrow_mut().turns_completed += 1,
            Err(reason) => {
                shared.fail(TURN, reason);
                shared.stats.borrow_mut().turns_failed += 1;
                shared.hang_up(index, line).await;
                return attempted;
            }
        }
    }

    shared.phase(index, "sending end-session");
    match shared
        .send(&mut line, &json!({"type": "end-session"}))
        .await
    {
        Ok(sent) => match shared.wait_for(&mut line, "session-ended").await {
            Ok(at) => shared.record(END_SESSION, at.saturating_duration_since(sent)),
            Err(reason) => shared.fail(END_SESSION, reason),
        },
        Err(reason) => shared.fail(END_SESSION, reason),
    }
    shared.hang_up(index, line).await;
    attempted
}

/// Waits for `session.started` (timed from `connecting` as the transport's
/// connect), then, when the assistant greets, hears its first message out:
/// `setup` runs from `connecting` to that message's first audio (which may
/// come before `session.started` over WebRTC: media and the data channel are
/// separate paths). On failure, the operation that failed and why.
async fn join<T: Transport>(
    shared: &Shared<T>,
    index: usize,
    line: &mut T,
    connecting: Instant,
) -> Result<(), (&'static str, String)> {
    let mut first_audio: Option<Instant> = None;
    let mut started = false;
    loop {
        let waiting_for = if !started {
            "session.started"
        } else if first_audio.is_none() {
            "the first message's audio"
        } else {
            "the first message's assistant.done"
        };
        let op = if started { SETUP } else { T::CONNECT };
        let incoming = shared
            .next(line, || waiting_for.to_owned())
            .await
            .map_err(|r| (op, r))?;
        let (at, event) = match incoming {
            Incoming::Audio(at) => {
                shared.stats.borrow_mut().audio_frames += 1;
                if first_audio.is_none() {
                    first_audio = Some(at);
                    if shared.greets {
                        shared.record(SETUP, at.saturating_duration_since(connecting));
                    }
                }
                continue;
            }
            Incoming::Event(at, event) => (at, event),
        };
        match event["type"].as_str().unwrap_or_default() {
            "session.started" if !started => {
                started = true;
                shared.record(T::CONNECT, at.saturating_duration_since(connecting));
                if !shared.greets {
                    return Ok(());
                }
                shared.phase(index, "hearing the first message");
            }
            "assistant.done" if started => {
                if first_audio.is_none() {
                    return Err((SETUP, "the first message ended with no audio".to_owned()));
                }
                return Ok(());
            }
            "error" => shared.fail(ERROR_EVENTS, error_reason(&event)),
            "session.ended" => {
                let reason = event["reason"].as_str().unwrap_or("no reason");
                return Err((
                    op,
                    format!("session ended ({reason}) while waiting for {waiting_for}"),
                ));
            }
            _ => {}
        }
    }
}

/// A spoken caller's microphone and its 20 ms clock.
struct MicLine<'a, T: Transport> {
    mic: &'a mut Mic,
    ticker: &'a mut tokio::time::Interval,
    audio: &'a T::Audio,
}

/// What woke a spoken caller.
enum Woken {
    /// Time for the microphone's next frame.
    Tick,
    Heard(Result<Incoming, String>),
}

/// One spoken turn: after the pause, the utterance, then silence while the
/// reply (cut into, for a barge-in caller, by speaking again; then the reply
/// to that) plays, up to its `turn.metrics`. The microphone keeps its pace
/// while the reader waits.
async fn spoken_turn<T: Transport>(
    shared: &Shared<T>,
    index: usize,
    line: &mut T,
    barges: bool,
    mic: &mut MicLine<'_, T>,
) -> Result<(), String> {
    let config = &shared.config;
    let speak_at = Instant::now() + config.pause_between_turns;
    let mut said = false;
    // Speech started for a barge-in, whose first frame is the cut's start.
    let mut cutting_in = false;
    let mut probe = TurnProbe::spoken(barges.then_some(config.barge_in_after_frames));
    let mut heard_at = Instant::now();
    shared.phase(index, "speaking");
    loop {
        let woken = tokio::select! {
            biased;
            _ = mic.ticker.tick() => Woken::Tick,
            incoming = shared.next_since(line, heard_at, || probe.waiting_for().to_owned()) => {
                Woken::Heard(incoming)
            }
        };
        let incoming = match woken {
            Woken::Tick => {
                if !said && Instant::now() >= speak_at {
                    said = true;
                    mic.mic.speak();
                }
                let (frame, event) = mic.mic.next_frame();
                let at = shared.send_audio(line, mic.audio, frame).await?;
                let (onset, end) = match event {
                    None => (false, false),
                    Some(MicEvent::Onset) => (true, false),
                    Some(MicEvent::End) => (false, true),
                    Some(MicEvent::OnsetAndEnd) => (true, true),
                };
                if onset && cutting_in {
                    cutting_in = false;
                    // The speech began with this frame's audio, 20 ms
                    // before it went out.
                    probe.interruption_sent(at.checked_sub(FRAME_INTERVAL).unwrap_or(at));
                    shared.stats.borrow_mut().barge_ins_sent += 1;
                    shared.phase(index, "cutting in");
                }
                if end {
                    probe.speech_ended(at);
                    shared.phase(index, "hearing a reply");
                }
                continue;
            }
            Woken::Heard(incoming) => incoming?,
        };
        heard_at = incoming.at();
        let step = {
            let mut stats = shared.stats.borrow_mut();
            match &incoming {
                Incoming::Audio(at) => probe.on_audio(*at, &mut stats),
                Incoming::Event(at, event) => probe.on_event(*at, event, &mut stats),
            }
        };
        match step {
            Step::Read => {}
            Step::Interrupt => {
                cutting_in = true;
                mic.mic.speak();
            }
            Step::Finished => return Ok(()),
            Step::Fatal(reason) => return Err(reason),
        }
    }
}

/// One typed turn: the message, its reply (cut into, for a barge-in caller,
/// then the reply to the interruption) up to its `turn.metrics`.
async fn turn<T: Transport>(
    shared: &Shared<T>,
    index: usize,
    line: &mut T,
    barges: bool,
) -> Result<(), String> {
    let config = &shared.config;
    if !config.pause_between_turns.is_zero() {
        shared.phase(index, "pausing");
        tokio::time::sleep(config.pause_between_turns).await;
    }
    shared.phase(index, "sending a message");
    let asked_at = shared.send(line, &user_message(&config.message)).await?;
    shared.phase(index, "reading a reply");
    let mut probe = TurnProbe::new(asked_at, barges.then_some(config.barge_in_after_frames));
    loop {
        let incoming = shared.next(line, || probe.waiting_for().to_owned()).await?;
        let step = {
            let mut stats = shared.stats.borrow_mut();
            match &incoming {
                Incoming::Audio(at) => probe.on_audio(*at, &mut stats),
                Incoming::Event(at, event) => probe.on_event(*at, event, &mut stats),
            }
        };
        match step {
            Step::Read => {}
            Step::Interrupt => {
                shared.phase(index, "sending an interruption");
                let at = shared
                    .send(line, &user_message(&config.interruption))
                    .await?;
                shared.phase(index, "reading a reply");
                probe.interruption_sent(at);
                shared.stats.borrow_mut().barge_ins_sent += 1;
            }
            Step::Finished => return Ok(()),
            Step::Fatal(reason) => return Err(reason),
        }
    }
}

async fn fake_stats(url: &str) -> Result<FakeStats, String> {
    let url = format!("{}/fake/stats", url.trim_end_matches('/'));
    let response = reqwest::Client::new()
        .get(&url)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map_err(|err| format!("{url}: {err}"))?;
    if !response.status().is_success() {
        return Err(format!("{url}: status {}", response.status().as_u16()));
    }
    response
        .json::<FakeStats>()
        .await
        .map_err(|err| format!("{url}: {err}"))
}

/// Checks what [`run`] cannot work with.
pub(crate) fn validate(config: &VoiceConfig) -> Result<(), RunError> {
    if config.callers == 0 || config.turns == 0 {
        return Err(RunError::Config(
            "callers and turns must be at least 1".into(),
        ));
    }
    if !(0.0..=1.0).contains(&config.barge_in_share) {
        return Err(RunError::Config(
            "the barge-in share is between 0 and 1".into(),
        ));
    }
    if !(config.ramp_per_second >= 0.0 && config.ramp_per_second.is_finite()) {
        return Err(RunError::Config(
            "the ramp is a number of callers per second, 0 or more".into(),
        ));
    }
    if let Some(id) = config.assistant_id
        && !config.assistant.is_default()
    {
        return Err(RunError::Config(format!(
            "the first message, end-of-turn and interruption settings shape the assistant \
             the run creates; assistant {id} is given: set them on it instead \
             (PATCH /v1/assistants/{id})"
        )));
    }
    Ok(())
}

/// Runs the scenario over transport `T` and returns its report. Await it
/// inside a [`tokio::task::LocalSet`]: the callers are tasks on the current
/// thread.
pub(crate) async fn run<T: Transport>(
    config: VoiceConfig,
    setup: T::Setup,
) -> Result<Report, RunError> {
    validate(&config)?;
    let speech = match config.input {
        TurnInput::Typed => None,
        TurnInput::Spoken => {
            let utterance = match &config.utterance {
                Some(path) => {
                    Utterance::from_wav(path).map_err(|err| RunError::Config(err.to_string()))?
                }
                None => Utterance::synthetic(),
            };
            let audio = T::prepare_audio(&utterance)
                .map_err(|why| RunError::Config(format!("cannot prepare the utterance: {why}")))?;
            Some(Speech { utterance, audio })
        }
    };
    let api = ApiClient::new(&config.base_url, &config.api_key, config.callers)?;
    let assistant = match config.assistant_id {
        Some(id) => id,
        None => {
            // The OpenAI-compatible adapters for all three, so that a run
            // against the fake providers exercises the server's real
            // adapters (a new assistant's default is `local`).
            let body = config.assistant.body();
            let (created, _) = api
                .request(reqwest::Method::POST, "/v1/assistants", Some(body))
                .await
                .map_err(|reason| RunError::Setup(format!("create assistant: {reason}")))?;
            created["id"]
                .as_i64()
                .ok_or_else(|| RunError::Setup("no assistant id".into()))?
        }
    };
    let (view, _) = api
        .request(
            reqwest::Method::GET,
            &format!("/v1/assistants/{assistant}"),
            None,
        )
        .await
        .map_err(|reason| RunError::Setup(format!("assistant {assistant}: {reason}")))?;
    let greets = view["first_message"]
        .as_str()
        .is_some_and(|m| !m.trim().is_empty());
    let end_of_turn_ms = view["end_of_turn_ms"].as_u64();
    let min_interruption_ms = view["min_interruption_ms"].as_u64();
    let providers_before = match &config.fake_providers_url {
        Some(url) => Some(fake_stats(url).await.map_err(RunError::Setup)?),
        None => None,
    };
    let sampler = config
        .server_pid
        .map(|pid| ProcessSampler::start(pid, SAMPLE_INTERVAL))
        .transpose()
        .map_err(RunError::Sampler)?;
    // The load generator itself, to tell its cost from the server's (best
    // effort: only where /proc is).
    let own_sampler = ProcessSampler::start(std::process::id(), SAMPLE_INTERVAL).ok();

    let started = Instant::now();
    let deadline = started + config.max_duration;
    let callers = config.callers;
    let utterance_source = speech.as_ref().map(|s| s.utterance.source().to_owned());
    let utterance_ms = speech.as_ref().map(|s| s.utterance.duration_ms());
    let shared = Rc::new(Shared::<T> {
        api,
        setup,
        speech,
        assistant,
        greets,
        started,
        deadline,
        hard_stop: deadline + config.idle_timeout,
        stats: RefCell::new(VoiceStats {
            started: Some(started),
            ..VoiceStats::default()
        }),
        phases: RefCell::new(vec!["waiting to start"; callers]),
        config,
    });
    let tasks: Vec<_> = (0..callers)
        .map(|index| tokio::task::spawn_local(caller(shared.clone(), index)))
        .collect();
    let live = std::io::IsTerminal::is_terminal(&std::io::stderr())
        .then(|| tokio::task::spawn_local(progress(shared.clone())));
    let counting = tokio::task::spawn_local(count_sessions(shared.clone()));
    // Every wait of a caller is bounded, but a transport may still hang (a
    // close that never returns): such callers are aborted, as failures.
    let give_up = shared.hard_stop + STUCK_GRACE;
    for (index, mut task) in tasks.into_iter().enumerate() {
        match tokio::time::timeout_at(give_up.into(), &mut task).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => shared.fail("caller", format!("panicked: {err}")),
            Err(_) => {
                task.abort();
                let phase = shared.phases.borrow().get(index).copied().unwrap_or("?");
                shared.fail(
                    "caller",
                    format!("stuck {phase} past the hard stop; aborted"),
                );
            }
        }
    }
    let elapsed = started.elapsed();
    counting.abort();
    if let Some(live) = live {
        live.abort();
        eprintln!();
    }

    let stats = shared.stats.take();
    let started_callers = callers - stats.callers_not_started;
    let server = sampler.map(|s| {
        let mut figures = s.finish(started_callers);
        if let Some(warmup) = shared.config.warmup {
            figures.rss_growth = figures.rss_growth_after(warmup.as_secs_f64());
        }
        figures
    });
    let load_generator = own_sampler.map(|s| s.finish(started_callers));
    let mut ops = stats.ops;
    let providers = match (&shared.config.fake_providers_url, providers_before) {
        (Some(url), Some(before)) => match fake_stats(url).await {
            Ok(after) => Some(ProviderFigures {
                llm_delay_ms: after.llm_delay_ms,
                llm_token_gap_ms: after.llm_token_gap_ms,
                tts_delay_ms: after.tts_delay_ms,
                stt_delay_ms: after.stt_delay_ms,
                ms_per_char: after.ms_per_char,
                chat_requests: after.chat_requests.saturating_sub(before.chat_requests),
                speech_requests: after.speech_requests.saturating_sub(before.speech_requests),
                transcription_requests: after
                    .transcription_requests
                    .saturating_sub(before.transcription_requests),
            }),
            Err(reason) => {
                ops.entry("fake-providers")
                    .or_default()
                    .fail(format!("stats: {reason}"));
                None
            }
        },
        _ => None,
    };
    let config = &shared.config;
    let mut voice = VoiceFigures {
        input: config.input.as_str().to_owned(),
        utterance: utterance_source,
        utterance_ms,
        end_of_turn_ms,
        min_interruption_ms,
        callers,
        barge_in_callers: (0..callers)
            .filter(|&i| barges_in(i, callers, config.barge_in_share))
            .count(),
        callers_not_started: stats.callers_not_started,
        turns_planned: callers as u64 * u64::from(config.turns),
        turns_completed: stats.turns_completed,
        turns_not_run: stats.turns_not_run,
        barge_ins_sent: stats.barge_ins_sent,
        barge_ins_observed: stats.barge_ins_observed,
        audio_frames: stats.audio_frames,
        late_frames_after_done: stats.late_frames_after_done,
        late_frames_after_interrupted: stats.late_frames_after_interrupted,
        turns_with_late_audio: stats.turns_with_late_audio,
        providers,
        server,
        load_generator,
        first_audio_over_time: stats.first_audio_over_time,
        sessions_over_time: stats.sessions_over_time,
        rtc: None,
    };
    T::report(&shared.setup, &mut voice);
    Ok(Report {
        scenario: T::SCENARIO.to_owned(),
        concurrency: callers,
        elapsed_s: elapsed.as_secs_f64(),
        operations: ops
            .into_iter()
            .map(|(name, op)| (name.to_owned(), op.summary(elapsed)))
            .collect(),
        voice: Some(voice),
        chat: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn event(ty: &str) -> Value {
        json!({"type": ty})
    }

    #[test]
    fn the_status_line_counts_callers_turns_failures_and_first_audio() {
        let mut stats = VoiceStats::default();
        let mut line = String::new();
        status_line(
            &mut line,
            ms(3_000),
            &["waiting to start", "connecting", "done"],
            &stats,
            9,
        );
        assert_eq!(
            line,
            "[....................]   0 %     3 s · callers 1 in call, 1 waiting, 1 done · turns 0 · failures 0"
        );
        stats.turns_completed = 4;
        stats.turns_not_run = 1;
        stats.record("first-audio", ms(12));
        stats.fail("rtc-connect", "timed out");
        line.clear();
        status_line(&mut line, ms(61_400), &["done"], &stats, 20);
        assert_eq!(
            line,
            "[#####...............]  25 %    61 s · callers 0 in call, 0 waiting, 1 done · turns 4 · failures 1 · first audio p50 12.0 ms, p99 12.0 ms"
        );
        stats.record(VOICE_TO_VOICE, ms(480));
        line.clear();
        status_line(&mut line, ms(62_000), &["done"], &stats, 5);
        assert!(line.starts_with("[####################] 100 %"), "{line}");
        // Spoken runs show voice-to-voice instead.
        assert!(line.contains("· voice-to-voice p50 480."), "{line}");
        assert!(!line.contains("first audio"), "{line}");
    }

    fn ok(stats: &VoiceStats, op: &str) -> u64 {
        stats.ops.get(op).map_or(0, OpStats::ok)
    }

    fn failures(stats: &VoiceStats) -> Vec<String> {
        stats
            .ops
            .values()
            .flat_map(|op| op.failures.keys().cloned())
            .collect()
    }

    /// A reply of `frames` paced frames starting at `from`, then done and
    /// its metrics.
    fn play(
        probe: &mut TurnProbe,
        stats: &mut VoiceStats,
        from: Instant,
        frames: u64,
    ) -> Vec<Step> {
        let mut steps = vec![probe.on_event(from, &event("assistant.delta"), stats)];
        for i in 0..frames {
            steps.push(probe.on_audio(from + ms(20 * i), stats));
        }
        steps
    }

    #[test]
    fn a_plain_turn_records_text_audio_jitter_turn_and_server_view() {
        let t0 = Instant::now();
        let mut stats = VoiceStats::default();
        let mut probe = TurnProbe::new(t0, None);
        let steps = play(&mut probe, &mut stats, t0 + ms(100), 50);
        assert!(steps.iter().all(|s| *s == Step::Read));
        assert_eq!(probe.waiting_for(), "assistant.done");
        let done = t0 + ms(1100);
        assert_eq!(
            probe.on_event(done, &event("assistant.done"), &mut stats),
            Step::Read
        );
        assert_eq!(probe.waiting_for(), "turn.metrics");
        let metrics = json!({"type": "turn.metrics", "voice_to_voice_ms": 7});
        assert_eq!(probe.on_event(done, &metrics, &mut stats), Step::Finished);
        for op in [
            FIRST_TEXT,
            FIRST_AUDIO,
            TURN,
            SERVER_V2V,
            TRANSPORT_OVERHEAD,
        ] {
            assert_eq!(ok(&stats, op), 1, "{op}");
        }
        // First audio after 100 ms, of which the server saw 7.
        let overhead = stats.ops[TRANSPORT_OVERHEAD].summary(ms(1));
        assert!((overhead.p50_ms - 93.0).abs() < 0.1, "{overhead:?}");
        assert_eq!(
            ok(&stats, FRAME_JITTER),
            49,
            "one gap per frame after the first"
        );
        assert_eq!(stats.audio_frames, 50);
        assert!(failures(&stats).is_empty(), "{:?}", failures(&stats));
        let first_audio = stats.ops[FIRST_AUDIO].summary(ms(1));
        assert!((first_audio.p50_ms - 100.0).abs() < 0.5, "{first_audio:?}");
        // Paced frames: no jitter (recorded as the 1 µs floor).
        assert!(stats.ops[FRAME_JITTER].summary(ms(1)).max_ms < 0.01);
    }

    #[test]
    fn a_barge_in_is_timed_to_the_last_frame_of_the_cut_reply() {
        let t0 = Instant::now();
        let mut stats = VoiceStats::default();
        let mut probe = TurnProbe::new(t0, Some(10));
        let steps = play(&mut probe, &mut stats, t0 + ms(100), 10);
        assert_eq!(steps.last(), Some(&Step::Interrupt));
        assert_eq!(steps.iter().filter(|s| **s == Step::Interrupt).count(), 1);
        let sent = t0 + ms(300);
        probe.interruption_sent(sent);
        assert_eq!(probe.waiting_for(), "assistant.interrupted");
        // Two more frames of the cut reply were already on their way.
        probe.on_audio(sent + ms(5), &mut stats);
        probe.on_audio(sent + ms(25), &mut stats);
        probe.on_event(sent + ms(30), &event("assistant.interrupted"), &mut stats);
        assert_eq!(stats.barge_ins_observed, 1);
        let stop = stats.ops[BARGE_IN_STOP].summary(ms(1));
        assert!((stop.p50_ms - 25.0).abs() < 0.1, "{stop:?}");
        let event_ms = stats.ops[INTERRUPTED_EVENT].summary(ms(1));
        assert!((event_ms.p50_ms - 30.0).abs() < 0.1, "{event_ms:?}");
        // The reply to the interruption is timed from the interruption, and
        // its first frame is no gap after the cut reply's last.
        let jitter_before = ok(&stats, FRAME_JITTER);
        let second = sent + ms(400);
        let steps = play(&mut probe, &mut stats, second, 20);
        assert!(steps.iter().all(|s| *s == Step::Read), "cuts in once");
        assert_eq!(ok(&stats, FRAME_JITTER), jitter_before + 19);
        probe.on_event(second + ms(400), &event("assistant.done"), &mut stats);
        let metrics = json!({"type": "turn.metrics", "voice_to_voice_ms": 3});
        assert_eq!(
            probe.on_event(second + ms(400), &metrics, &mut stats),
            Step::Finished
        );
        assert_eq!(ok(&stats, FIRST_AUDIO), 2, "both replies had a first frame");
        assert_eq!(ok(&stats, TURN), 1, "only the second reply finished");
        let turn = stats.ops[TURN].summary(ms(1));
        assert!((turn.p50_ms - 800.0).abs() < 1.0, "{turn:?}");
        assert!(failures(&stats).is_empty(), "{:?}", failures(&stats));
    }

    #[test]
    fn frames_before_a_replys_text_are_the_previous_replys_late_frames() {
        let t0 = Instant::now();
        let mut stats = VoiceStats::default();
        let mut probe = TurnProbe::new(t0, None);
        // The tail of the previous reply, after its assistant.done.
        probe.on_audio(t0 + ms(1), &mut stats);
        probe.on_audio(t0 + ms(21), &mut stats);
        assert_eq!(ok(&stats, FIRST_AUDIO), 0);
        assert_eq!(ok(&stats, FRAME_JITTER), 0);
        play(&mut probe, &mut stats, t0 + ms(300), 3);
        let first_audio = stats.ops[FIRST_AUDIO].summary(ms(1));
        assert!((first_audio.p50_ms - 300.0).abs() < 0.5, "{first_audio:?}");
        assert_eq!(ok(&stats, FRAME_JITTER), 2);
        assert_eq!(
            (stats.late_frames_after_done, stats.turns_with_late_audio),
            (2, 1)
        );
        // Frames of a cut reply after its assistant.interrupted.
        let mut probe = TurnProbe::new(t0, Some(1));
        play(&mut probe, &mut stats, t0, 1);
        probe.interruption_sent(t0 + ms(5));
        probe.on_event(t0 + ms(6), &event("assistant.interrupted"), &mut stats);
        probe.on_audio(t0 + ms(20), &mut stats);
        assert_eq!(stats.late_frames_after_interrupted, 1);
        assert_eq!(stats.turns_with_late_audio, 2);
        // Audio after an error (a spoken apology) is the reply's own.
        let mut stats = VoiceStats::default();
        let mut probe = TurnProbe::new(t0, None);
        let error = json!({"type": "error", "code": "llm_failed", "message": "down"});
        probe.on_event(t0 + ms(1), &error, &mut stats);
        probe.on_audio(t0 + ms(30), &mut stats);
        assert_eq!(ok(&stats, FIRST_AUDIO), 1);
        assert_eq!(stats.late_frames_after_done, 0);
    }

    #[test]
    fn no_frame_after_the_interruption_is_a_zero_stop() {
        let t0 = Instant::now();
        let mut stats = VoiceStats::default();
        let mut probe = TurnProbe::new(t0, Some(1));
        play(&mut probe, &mut stats, t0, 1);
        probe.interruption_sent(t0 + ms(10));
        probe.on_event(t0 + ms(12), &event("assistant.interrupted"), &mut stats);
        assert!(stats.ops[BARGE_IN_STOP].summary(ms(1)).max_ms < 0.01);
    }

    #[test]
    fn missing_events_and_errors_are_failures_with_reasons() {
        let t0 = Instant::now();
        let mut stats = VoiceStats::default();
        // A reply too short to cut into, with no audio and an error.
        let mut probe = TurnProbe::new(t0, Some(10));
        let error = json!({"type": "error", "code": "tts_failed", "message": "down"});
        probe.on_event(t0, &error, &mut stats);
        probe.on_event(t0 + ms(5), &event("assistant.delta"), &mut stats);
        probe.on_event(t0 + ms(9), &event("assistant.done"), &mut stats);
        let got = failures(&stats);
        for reason in [
            "tts_failed: down",
            "no audio before assistant.done",
            "no barge-in: the reply was shorter than the frames to hear first",
        ] {
            assert!(got.iter().any(|r| r == reason), "{reason} in {got:?}");
        }
        // An interruption that arrives after the reply ended.
        let mut stats = VoiceStats::default();
        let mut probe = TurnProbe::new(t0, Some(1));
        probe.on_event(t0, &event("assistant.delta"), &mut stats);
        assert_eq!(probe.on_audio(t0, &mut stats), Step::Interrupt);
        probe.interruption_sent(t0 + ms(1));
        probe.on_event(t0 + ms(2), &event("assistant.done"), &mut stats);
        // The first reply's metrics do not end the turn.
        let metrics = json!({"type": "turn.metrics", "voice_to_voice_ms": 1});
        assert_eq!(probe.on_event(t0 + ms(2), &metrics, &mut stats), Step::Read);
        assert_eq!(probe.waiting_for(), "assistant.delta");
        assert_eq!(stats.ops[INTERRUPTED_EVENT].failures.len(), 1);
        // The session ending is fatal.
        let ended = json!({"type": "session.ended", "reason": "idle-timeout"});
        assert_eq!(
            probe.on_event(t0, &ended, &mut stats),
            Step::Fatal("session ended mid-turn (idle-timeout)".into())
        );
    }

    #[test]
    fn a_spoken_turn_is_timed_from_the_end_of_the_callers_speech() {
        let t0 = Instant::now();
        let mut stats = VoiceStats::default();
        let mut probe = TurnProbe::spoken(None);
        assert_eq!(probe.waiting_for(), "assistant.delta");
        // The tail of an earlier reply while the caller speaks: late.
        probe.on_audio(t0 + ms(10), &mut stats);
        let end = t0 + ms(1_200);
        probe.speech_ended(end);
        let heard = json!({"type": "transcript.final", "text": "a room?"});
        probe.on_event(end + ms(510), &heard, &mut stats);
        play(&mut probe, &mut stats, end + ms(530), 5);
        probe.on_event(end + ms(700), &event("assistant.done"), &mut stats);
        let metrics = json!({"type": "turn.metrics", "voice_to_voice_ms": 520});
        assert_eq!(
            probe.on_event(end + ms(700), &metrics, &mut stats),
            Step::Finished
        );
        let v2v = stats.ops[VOICE_TO_VOICE].summary(ms(1));
        assert!((v2v.p50_ms - 530.0).abs() < 0.5, "{v2v:?}");
        let heard = stats.ops[END_OF_TURN].summary(ms(1));
        assert!((heard.p50_ms - 510.0).abs() < 0.5, "{heard:?}");
        assert_eq!(ok(&stats, FIRST_AUDIO), 0, "typed turns only");
        assert_eq!(ok(&stats, TURN), 1);
        let overhead = stats.ops[TRANSPORT_OVERHEAD].summary(ms(1));
        assert!((overhead.p50_ms - 10.0).abs() < 0.1, "{overhead:?}");
        assert_eq!(stats.late_frames_after_done, 1);
        assert_eq!(stats.first_audio_over_time.len(), 0, "no run start set");
        assert!(failures(&stats).is_empty(), "{:?}", failures(&stats));
    }

    #[test]
    fn a_spoken_barge_in_runs_from_speech_onset_and_its_reply_from_its_end() {
        let t0 = Instant::now();
        let mut stats = VoiceStats::default();
        let mut probe = TurnProbe::spoken(Some(10));
        probe.speech_ended(t0);
        let steps = play(&mut probe, &mut stats, t0 + ms(500), 10);
        assert_eq!(steps.last(), Some(&Step::Interrupt));
        // The first frame of the interruption's speech goes out.
        let onset = t0 + ms(710);
        probe.interruption_sent(onset);
        for i in 0..16 {
            probe.on_audio(onset + ms(20 * i), &mut stats);
        }
        probe.on_event(onset + ms(330), &event("assistant.interrupted"), &mut stats);
        let stop = stats.ops[BARGE_IN_STOP].summary(ms(1));
        assert!((stop.p50_ms - 300.0).abs() < 0.5, "{stop:?}");
        // Still speaking: the next reply's clock waits for the speech's end.
        assert_eq!(probe.waiting_for(), "assistant.delta");
        let end = onset + ms(1_200);
        probe.speech_ended(end);
        play(&mut probe, &mut stats, end + ms(540), 3);
        probe.on_event(end + ms(700), &event("assistant.done"), &mut stats);
        let metrics = json!({"type": "turn.metrics", "voice_to_voice_ms": 530});
        assert_eq!(
            probe.on_event(end + ms(700), &metrics, &mut stats),
            Step::Finished
        );
        assert_eq!(ok(&stats, VOICE_TO_VOICE), 2);
        let v2v = stats.ops[VOICE_TO_VOICE].summary(ms(1));
        assert!((v2v.max_ms - 540.0).abs() < 0.5, "{v2v:?}");
        assert_eq!(stats.barge_ins_observed, 1);
        assert!(failures(&stats).is_empty(), "{:?}", failures(&stats));
    }

    #[test]
    fn a_spoken_reply_before_the_speech_ended_and_a_backchannel_are_failures() {
        let t0 = Instant::now();
        let mut stats = VoiceStats::default();
        let mut probe = TurnProbe::spoken(None);
        probe.on_event(t0, &event("assistant.delta"), &mut stats);
        probe.on_audio(t0 + ms(20), &mut stats);
        assert_eq!(ok(&stats, VOICE_TO_VOICE), 0);
        assert!(
            failures(&stats)
                .iter()
                .any(|f| f.starts_with("the reply began before the caller's speech ended")),
            "{:?}",
            failures(&stats)
        );
        // Speech that ended before the server decided to cut in: the reply
        // plays out, and its metrics end the turn.
        let mut stats = VoiceStats::default();
        let mut probe = TurnProbe::spoken(Some(1));
        probe.speech_ended(t0);
        play(&mut probe, &mut stats, t0 + ms(500), 1);
        probe.interruption_sent(t0 + ms(520));
        probe.speech_ended(t0 + ms(600));
        probe.on_event(t0 + ms(900), &event("assistant.done"), &mut stats);
        let metrics = json!({"type": "turn.metrics", "voice_to_voice_ms": 500});
        assert_eq!(
            probe.on_event(t0 + ms(900), &metrics, &mut stats),
            Step::Finished
        );
        assert_eq!(stats.ops[INTERRUPTED_EVENT].failures.len(), 1);
        assert_eq!(ok(&stats, TURN), 1);
    }

    #[test]
    fn barge_in_callers_are_the_share_spread_evenly() {
        let pick = |callers, share| -> Vec<usize> {
            (0..callers)
                .filter(|&i| barges_in(i, callers, share))
                .collect()
        };
        assert_eq!(pick(10, 0.3), vec![3, 6, 9]);
        assert_eq!(pick(3, 0.5), vec![1, 2]);
        assert_eq!(pick(4, 0.0), Vec::<usize>::new());
        assert_eq!(pick(4, 1.0), vec![0, 1, 2, 3]);
        assert_eq!(pick(100, 0.3).len(), 30);
    }
}
