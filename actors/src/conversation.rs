//! The conversation state machine of one voice session, sans-IO.
//!
//! It owns turn taking, barge-in and what the caller heard. It has no
//! sockets, clocks or providers: the session actor feeds it timestamped
//! [`Input`]s (speech onset/offset from the VAD stage, transcripts, LLM
//! tokens, TTS audio, frames sent by the pacer, timer expiries) and drains
//! [`Output`]s (events for the client, provider requests, audio control,
//! messages to store) with [`Conversation::poll_output`] until it is empty,
//! then sleeps until [`Conversation::poll_timeout`]. Time is milliseconds
//! since the session started, supplied by the caller, so tests drive it with
//! simulated time.
//!
//! It must not touch: audio samples (the media crate does), storage or the
//! network (the actor does).

use std::collections::VecDeque;

/// Milliseconds since the session started.
pub type Millis = u64;

/// Identifies one assistant reply (one LLM request).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TurnId(pub u64);

/// Identifies one piece of text sent to TTS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub u64);

/// How the assistant behaves; derived from the stored assistant settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ConversationConfig {
    pub system_prompt: String,
    /// Said when the caller connects.
    pub first_message: Option<String>,
    /// Whether caller speech may cut the first message short.
    pub first_message_interruptible: bool,
    /// Whether caller speech may cut any reply short.
    pub interruptions_enabled: bool,
    /// Caller speech must last this long to interrupt.
    pub min_interruption_ms: Millis,
    /// And the partial transcript must hold this many words (0: no minimum).
    pub min_interruption_words: usize,
    /// Silence after caller speech that ends the caller's turn.
    pub end_of_turn_ms: Millis,
    /// The session ends after this long with nobody speaking.
    pub idle_timeout_ms: Millis,
    /// The session ends after this long in any case.
    pub max_duration_ms: Millis,
    /// Said when a provider fails.
    pub apology: String,
    /// A TTS chunk is cut at a word boundary once this long, even without
    /// sentence punctuation.
    pub max_chunk_chars: usize,
    /// Whether replies are spoken. A text-only session (a WebSocket client
    /// that sends no audio) gets replies as text: nothing is synthesised and
    /// a reply counts as delivered once generated.
    pub speak: bool,
    /// The caller's audio path is not up yet (WebRTC before ICE and DTLS
    /// complete). The first message is synthesized at once, but the
    /// session plays no audio before [`Input::MediaConnected`] (so the
    /// caller hears it from its first word, and what was heard counts from
    /// there), and the caller's idle time starts then.
    pub wait_for_media: bool,
    /// The most history, in estimated tokens (about four characters each),
    /// a language model request carries: the system prompt and the newest
    /// messages that fit. A long session (or a client typing thousands of
    /// messages) then costs bounded memory and a bounded copy per turn.
    pub history_token_budget: usize,
    /// How long a caller whose connection dropped may rejoin
    /// ([`Input::TransportLost`]) before the session ends with reason
    /// `connection-lost`; 0 ends it at once, with reason `hang-up`.
    pub reconnect_grace_ms: Millis,
}

/// Tokens a message is estimated to cost: about four characters a token,
/// plus the few a chat template adds per message.
fn estimated_tokens(message: &ChatMessage) -> usize {
    message.content.len().div_ceil(4) + 4
}

impl Default for ConversationConfig {
    fn default() -> Self {
        Self {
            system_prompt: String::new(),
            first_message: None,
            first_message_interruptible: true,
            interruptions_enabled: true,
            min_interruption_ms: 300,
            min_interruption_words: 0,
            end_of_turn_ms: 500,
            idle_timeout_ms: 30_000,
            max_duration_ms: 600_000,
            apology: "Sorry, I'm having trouble answering right now.".to_owned(),
            max_chunk_chars: 200,
            speak: true,
            wait_for_media: false,
            history_token_budget: 4_000,
            reconnect_grace_ms: 20_000,
        }
    }
}

/// Longest a goodbye may take before the session ends anyway (a voice that
/// fails or media that never connects must not hold a shutdown).
pub const FAREWELL_MAX_MS: Millis = 10_000;

/// Who said a history message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatRole {
    System,
    User,
    Assistant,
}

/// One message of the history sent to the language model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    pub role: ChatRole,
    pub content: String,
}

/// When a TTS provider says a word is spoken within its chunk's audio.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WordTiming {
    pub word: String,
    /// End of the word, from the start of the chunk's audio.
    pub end_ms: u32,
}

/// What happened, as the session actor tells it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Input {
    /// The VAD stage detected caller speech starting.
    SpeechStarted,
    /// The VAD stage detected caller speech ending.
    SpeechEnded,
    /// Speech to text; several finals may make up one utterance.
    Transcript { text: String, is_final: bool },
    /// A typed caller turn (no audio).
    UserText { text: String },
    /// Text generated for `turn`.
    LlmToken { turn: TurnId, text: String },
    /// The language model finished `turn`.
    LlmDone { turn: TurnId },
    /// The language model failed for `turn` (timeout, HTTP error, …).
    LlmFailed { turn: TurnId, message: String },
    /// Audio synthesised for `chunk`, `audio_ms` long, optionally with word
    /// timings relative to the chunk's first sample. May come in pieces.
    TtsAudio {
        chunk: ChunkId,
        audio_ms: u32,
        words: Option<Vec<WordTiming>>,
    },
    /// All audio of `chunk` has been delivered.
    TtsDone { chunk: ChunkId },
    /// Synthesis of `chunk` failed.
    TtsFailed { chunk: ChunkId, message: String },
    /// The pacer sent `audio_ms` of assistant audio to the caller.
    AudioSent { audio_ms: u32 },
    /// The caller hung up, or the API ended the session.
    Hangup { reason: EndReason },
    /// Say `text`, then end with `reason` (a node shutting down): a reply
    /// in progress is cut short as an interruption would, the caller's
    /// speech no longer takes turns, and the session ends once the goodbye
    /// was heard, or [`FAREWELL_MAX_MS`] later whatever happened.
    Goodbye { text: String, reason: EndReason },
    /// The caller's audio path came up (see
    /// [`ConversationConfig::wait_for_media`]); later ones change nothing.
    MediaConnected,
    /// The caller's connection dropped without a hang-up. The conversation
    /// waits `reconnect_grace_ms` for them: the reply goes on being
    /// prepared but no audio plays, so what they did not hear is still
    /// queued when they come back ([`Input::TransportRestored`], then
    /// [`Input::MediaConnected`] once their audio path is up).
    TransportLost,
    /// The caller rejoined: the session no longer ends at the grace
    /// deadline.
    TransportRestored,
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EndReason {
    /// The caller hung up (DELETE, WebRTC close, WebSocket close).
    Hangup,
    /// The client sent `end-session`.
    EndSession,
    /// Ended through the REST API.
    EndedByApi,
    /// Nobody spoke for `idle_timeout_ms`.
    IdleTimeout,
    /// The session reached `max_duration_ms`.
    MaxDuration,
    /// The caller's media (WebRTC ICE and DTLS) never came up.
    ConnectTimeout,
    /// The node is shutting down: the caller heard a goodbye first.
    ServerShutdown,
    /// The caller's connection dropped and they did not rejoin within
    /// `reconnect_grace_ms`.
    ConnectionLost,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Hangup => "hang-up",
            EndReason::EndSession => "end-session",
            EndReason::EndedByApi => "ended-by-api",
            EndReason::IdleTimeout => "idle-timeout",
            EndReason::MaxDuration => "max-duration",
            EndReason::ConnectTimeout => "connect-timeout",
            EndReason::ServerShutdown => "server-shutdown",
            EndReason::ConnectionLost => "connection-lost",
        }
    }
}

/// Latencies of one turn, in ms from the end of the caller's speech.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TurnLatency {
    pub transcript_ms: Option<u32>,
    pub first_token_ms: Option<u32>,
    pub first_audio_ms: Option<u32>,
    pub voice_to_voice_ms: Option<u32>,
}

/// Events for the client (data channel / WebSocket).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    TranscriptPartial {
        text: String,
    },
    TranscriptFinal {
        text: String,
    },
    AssistantDelta {
        text: String,
    },
    /// The first audio of a reply went out.
    AssistantSpeaking,
    /// The caller cut the reply short; `heard_text` is what they heard.
    AssistantInterrupted {
        heard_text: String,
    },
    AssistantDone {
        text: String,
    },
    /// A reply's latencies: when it finished, or (`interrupted`) when the
    /// caller cut it off, with the stages it had reached by then.
    TurnMetrics {
        latency: TurnLatency,
        interrupted: bool,
    },
    /// Barge-in timing: speech onset -> decision.
    BargeIn {
        onset_to_decision_ms: u32,
    },
    Error {
        code: &'static str,
        message: String,
    },
    SessionEnded {
        reason: EndReason,
    },
}

/// A transcript message to persist now (so a crash loses at most the turn in
/// flight).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredMessage {
    pub role: ChatRole,
    pub content: String,
    /// What the caller heard of an interrupted assistant message.
    pub heard_text: Option<String>,
    pub interrupted: bool,
    pub started_at: Millis,
    pub ended_at: Millis,
    pub latency: TurnLatency,
}

/// What the session actor must do.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Output {
    Event(Event),
    /// Generate a reply to `messages` (system prompt first).
    StartLlm {
        turn: TurnId,
        messages: Vec<ChatMessage>,
    },
    /// Stop generating `turn`; later tokens of it are ignored anyway.
    CancelLlm {
        turn: TurnId,
    },
    /// Speak `text`; its audio comes back as [`Input::TtsAudio`].
    Synthesize {
        chunk: ChunkId,
        text: String,
    },
    /// Stop all synthesis in flight.
    CancelTts,
    /// Drop queued assistant audio: nothing more goes out from the next tick.
    ClearAudio,
    Store(StoredMessage),
    /// Close the session (after draining the outputs before this one).
    End {
        reason: EndReason,
    },
}

/// Where the conversation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Listening,
    UserSpeaking,
    /// A reply is being prepared; no audio of it has gone out yet.
    Thinking,
    Speaking,
    Ended,
}

/// A chunk of reply text and what is known of its audio.
#[derive(Debug)]
struct SpokenChunk {
    id: ChunkId,
    text: String,
    audio_ms: u32,
    words: Option<Vec<WordTiming>>,
    done: bool,
}

/// The assistant reply in progress.
#[derive(Debug)]
struct Reply {
    turn: TurnId,
    interruptible: bool,
    /// False for the first message, which needs no LLM.
    llm_running: bool,
    /// All text generated so far.
    text: String,
    /// Text not yet sent to TTS.
    pending: String,
    chunks: Vec<SpokenChunk>,
    /// Assistant audio sent to the caller so far.
    sent_ms: u64,
    started_at: Millis,
    /// End of the caller speech this reply answers (latency origin).
    speech_ended_at: Option<Millis>,
    latency: TurnLatency,
    failed: bool,
    /// False in a text-only session.
    spoken: bool,
}

impl Reply {
    fn queued_ms(&self) -> u64 {
        self.chunks.iter().map(|c| u64::from(c.audio_ms)).sum()
    }

    fn finished(&self) -> bool {
        !self.llm_running
            && self.pending.trim().is_empty()
            && self.chunks.iter().all(|c| c.done)
            && self.sent_ms >= self.queued_ms()
    }

    /// Exactly the text whose audio went out: whole chunks, then the words of
    /// the current chunk that were spoken (by word timings when the TTS gave
    /// them, else in proportion to the audio sent).
    fn heard_text(&self) -> String {
        if !self.spoken {
            // Text-only: what was generated is what the caller got.
            return self.text.split_whitespace().collect::<Vec<_>>().join(" ");
        }
        let mut heard: Vec<&str> = Vec::new();
        let mut left = self.sent_ms;
        for chunk in &self.chunks {
            if left == 0 {
                break;
            }
            let audio = u64::from(chunk.audio_ms);
            if chunk.done && left >= audio {
                heard.extend(chunk.text.split_whitespace());
                left -= audio;
                continue;
            }
            // Partly sent (or its audio still arriving).
            let sent_in_chunk = left.min(audio);
            match &chunk.words {
                Some(words) => heard.extend(
                    words
                        .iter()
                        .take_while(|w| u64::from(w.end_ms) <= sent_in_chunk)
                        .map(|w| w.word.as_str()),
                ),
                None => heard.extend(proportional_words(&chunk.text, sent_in_chunk, audio)),
            }
            break;
        }
        heard.join(" ")
    }
}

/// The whole words of `text` spoken within `sent` of `total` ms of audio,
/// assuming speech proceeds evenly through the characters.
fn proportional_words(text: &str, sent: u64, total: u64) -> impl Iterator<Item = &str> {
    let chars = text.chars().count() as u64;
    let spoken = (chars * sent).checked_div(total).unwrap_or(0);
    // Characters up to the end of the current word.
    let mut end = 0u64;
    text.split_whitespace().take_while(move |word| {
        end += word.chars().count() as u64;
        let heard = end <= spoken;
        end += 1;
        heard
    })
}

/// The caller's utterance in progress.
#[derive(Debug, Default)]
struct Utterance {
    started_at: Millis,
    /// Finals so far.
    text: String,
    /// The latest partial after the finals.
    partial: String,
    speaking: bool,
    ended_at: Option<Millis>,
    final_at: Option<Millis>,
}

impl Utterance {
    fn words(&self) -> usize {
        self.text.split_whitespace().count() + self.partial.split_whitespace().count()
    }
}

/// A barge-in being considered: caller speech that started during a reply.
#[derive(Debug, Clone, Copy)]
struct PendingInterruption {
    onset: Millis,
    /// When the speech has lasted `min_interruption_ms`.
    decide_at: Millis,
}

impl PendingInterruption {
    fn due(&self, now: Millis) -> bool {
        now >= self.decide_at
    }
}

/// One voice session's conversation.
#[derive(Debug)]
pub struct Conversation {
    config: ConversationConfig,
    phase: Phase,
    history: Vec<ChatMessage>,
    /// [`estimated_tokens`] of `history`, kept within
    /// [`ConversationConfig::history_token_budget`].
    history_tokens: usize,
    outputs: VecDeque<Output>,
    utterance: Option<Utterance>,
    reply: Option<Reply>,
    interruption: Option<PendingInterruption>,
    next_turn: u64,
    next_chunk: u64,
    last_activity: Millis,
    /// Time of the latest input or timeout handled.
    last_input: Millis,
    /// [`ConversationConfig::wait_for_media`], until it connects.
    awaiting_media: bool,
    /// Saying goodbye ([`Input::Goodbye`]): end with this reason once it
    /// is heard, or at this time.
    farewell: Option<(EndReason, Millis)>,
    /// The caller's connection dropped ([`Input::TransportLost`]): the
    /// session ends at this time unless they rejoin.
    rejoin_deadline: Option<Millis>,
}

impl Conversation {
    /// Starts the conversation at time 0: speaks the first message if the
    /// assistant has one.
    pub fn new(config: ConversationConfig) -> Self {
        let mut history = Vec::new();
        if !config.system_prompt.trim().is_empty() {
            history.push(ChatMessage {
                role: ChatRole::System,
                content: config.system_prompt.clone(),
            });
        }
        let awaiting_media = config.wait_for_media;
        let history_tokens = history.iter().map(estimated_tokens).sum();
        let mut conversation = Self {
            config,
            phase: Phase::Listening,
            history,
            history_tokens,
            outputs: VecDeque::new(),
            utterance: None,
            reply: None,
            interruption: None,
            next_turn: 1,
            next_chunk: 1,
            last_activity: 0,
            last_input: 0,
            awaiting_media,
            farewell: None,
            rejoin_deadline: None,
        };
        if let Some(first) = conversation.config.first_message.clone() {
            conversation.say_first_message(0, first);
        }
        conversation
    }

    fn say_first_message(&mut self, now: Millis, first: String) {
        self.say(now, first, self.config.first_message_interruptible);
    }

    /// Speaks `text` as a reply that needs no language model.
    fn say(&mut self, now: Millis, text: String, interruptible: bool) {
        let turn = self.take_turn_id();
        self.reply = Some(Reply {
            turn,
            interruptible,
            llm_running: false,
            text: text.clone(),
            pending: String::new(),
            chunks: Vec::new(),
            sent_ms: 0,
            started_at: now,
            speech_ended_at: None,
            latency: TurnLatency::default(),
            failed: false,
            spoken: self.config.speak,
        });
        self.phase = Phase::Thinking;
        self.emit(Event::AssistantDelta { text: text.clone() });
        self.synthesize(text);
        self.maybe_finish_reply(now);
    }

    /// The media is up: the caller's idle time starts now, not at the offer
    /// (the session starts playing what it holds).
    fn on_media_connected(&mut self, now: Millis) {
        if std::mem::take(&mut self.awaiting_media) {
            self.last_activity = self.last_activity.max(now);
        }
    }

    /// The caller dropped: audio holds until they are back, a half-said
    /// utterance is forgotten, and the session waits for them.
    fn on_transport_lost(&mut self, now: Millis) {
        if self.config.reconnect_grace_ms == 0 {
            self.end(now, EndReason::Hangup);
            return;
        }
        self.awaiting_media = true;
        self.interruption = None;
        self.utterance = None;
        if self.reply.is_none() {
            self.phase = Phase::Listening;
        }
        self.rejoin_deadline = Some(now + self.config.reconnect_grace_ms);
    }

    /// Whether the caller's media has yet to connect (see
    /// [`ConversationConfig::wait_for_media`]), or is gone until the caller
    /// rejoins: no audio plays until then.
    pub fn awaiting_media(&self) -> bool {
        self.awaiting_media
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The history the next LLM request would see.
    pub fn history(&self) -> &[ChatMessage] {
        &self.history
    }

    /// Adds a message to the history, then forgets the oldest messages
    /// after the system prompt until the history fits its token budget (the
    /// newest message stays, whatever its size).
    fn remember(&mut self, role: ChatRole, content: String) {
        let message = ChatMessage { role, content };
        self.history_tokens += estimated_tokens(&message);
        self.history.push(message);
        let first = usize::from(
            self.history
                .first()
                .is_some_and(|m| m.role == ChatRole::System),
        );
        let mut forget = 0;
        let mut tokens = self.history_tokens;
        while tokens > self.config.history_token_budget && first + forget + 1 < self.history.len() {
            tokens -= estimated_tokens(&self.history[first + forget]);
            forget += 1;
        }
        if forget > 0 {
            self.history.drain(first..first + forget);
            self.history_tokens = tokens;
        }
    }

    /// The next output to act on, in order.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When [`Conversation::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Millis> {
        if self.phase == Phase::Ended {
            return None;
        }
        let mut next = self.config.max_duration_ms;
        if let Some(p) = self.interruption.filter(|p| p.decide_at > self.last_input) {
            next = next.min(p.decide_at);
        }
        if let Some(ended) = self
            .utterance
            .as_ref()
            .filter(|u| !u.speaking)
            .and_then(|u| u.ended_at)
        {
            next = next.min(ended + self.config.end_of_turn_ms);
        }
        if self.phase == Phase::Listening
            && self.utterance.is_none()
            && self.rejoin_deadline.is_none()
        {
            next = next.min(self.last_activity + self.config.idle_timeout_ms);
        }
        if let Some((_, deadline)) = self.farewell {
            next = next.min(deadline);
        }
        if let Some(deadline) = self.rejoin_deadline {
            next = next.min(deadline);
        }
        Some(next)
    }

    /// Acts on timers that are due at `now`.
    pub fn handle_timeout(&mut self, now: Millis) {
        self.last_input = self.last_input.max(now);
        if self.phase == Phase::Ended {
            return;
        }
        if now >= self.config.max_duration_ms {
            self.end(now, EndReason::MaxDuration);
            return;
        }
        if let Some((reason, deadline)) = self.farewell
            && now >= deadline
        {
            self.end(now, reason);
            return;
        }
        if self.rejoin_deadline.is_some_and(|deadline| now >= deadline) {
            self.end(now, EndReason::ConnectionLost);
            return;
        }
        if self.interruption.is_some_and(|p| p.due(now)) {
            self.consider_interruption(now);
        }
        self.maybe_end_turn(now);
        if self.phase == Phase::Listening
            && self.utterance.is_none()
            && self.rejoin_deadline.is_none()
            && now >= self.last_activity + self.config.idle_timeout_ms
        {
            self.end(now, EndReason::IdleTimeout);
        }
    }

    /// Feeds one input that happened at `now`.
    pub fn handle_input(&mut self, now: Millis, input: Input) {
        if self.phase == Phase::Ended {
            return;
        }
        match input {
            Input::SpeechStarted => self.on_speech_started(now),
            Input::SpeechEnded => self.on_speech_ended(now),
            Input::Transcript { text, is_final } => self.on_transcript(now, text, is_final),
            Input::UserText { text } => self.on_user_text(now, text),
            Input::LlmToken { turn, text } => self.on_llm_token(now, turn, text),
            Input::LlmDone { turn } => self.on_llm_done(now, turn),
            Input::LlmFailed { turn, message } => self.on_llm_failed(now, turn, message),
            Input::TtsAudio {
                chunk,
                audio_ms,
                words,
            } => self.on_tts_audio(now, chunk, audio_ms, words),
            Input::TtsDone { chunk } => self.on_tts_done(now, chunk),
            Input::TtsFailed { chunk, message } => self.on_tts_failed(now, chunk, message),
            Input::AudioSent { audio_ms } => self.on_audio_sent(now, audio_ms),
            Input::Hangup { reason } => self.end(now, reason),
            Input::Goodbye { text, reason } => self.on_goodbye(now, text, reason),
            Input::MediaConnected => self.on_media_connected(now),
            Input::TransportLost => self.on_transport_lost(now),
            Input::TransportRestored => self.rejoin_deadline = None,
        }
        self.handle_timeout(now);
    }

    fn emit(&mut self, event: Event) {
        self.outputs.push_back(Output::Event(event));
    }

    fn take_turn_id(&mut self) -> TurnId {
        let id = TurnId(self.next_turn);
        self.next_turn += 1;
        id
    }

    fn synthesize(&mut self, text: String) {
        let text = text.trim().to_owned();
        if text.is_empty() || !self.config.speak {
            return;
        }
        let id = ChunkId(self.next_chunk);
        self.next_chunk += 1;
        if let Some(reply) = self.reply.as_mut() {
            reply.chunks.push(SpokenChunk {
                id,
                text: text.clone(),
                audio_ms: 0,
                words: None,
                done: false,
            });
        }
        self.outputs
            .push_back(Output::Synthesize { chunk: id, text });
    }

    fn chunk_mut(&mut self, id: ChunkId) -> Option<&mut SpokenChunk> {
        self.reply.as_mut()?.chunks.iter_mut().find(|c| c.id == id)
    }

    // --- the caller ---------------------------------------------------------

    fn on_speech_started(&mut self, now: Millis) {
        self.last_activity = now;
        match &mut self.utterance {
            Some(u) => {
                // The caller resumed before the end of turn: same utterance.
                u.speaking = true;
                u.ended_at = None;
            }
            None => {
                self.utterance = Some(Utterance {
                    started_at: now,
                    speaking: true,
                    ..Default::default()
                })
            }
        }
        match self.reply.as_ref().map(|r| r.interruptible) {
            Some(true) if self.config.interruptions_enabled => {
                if self.interruption.is_none() {
                    self.interruption = Some(PendingInterruption {
                        onset: now,
                        decide_at: now + self.config.min_interruption_ms,
                    });
                }
            }
            Some(_) => {}
            None => self.phase = Phase::UserSpeaking,
        }
    }

    fn on_speech_ended(&mut self, now: Millis) {
        self.last_activity = now;
        // Speech that stopped before the threshold was a cough or an "mm-hm".
        self.interruption = None;
        if self.reply.is_some() {
            // Backchannel during the reply: not a turn.
            self.utterance = None;
            return;
        }
        if let Some(u) = self.utterance.as_mut() {
            u.speaking = false;
            u.ended_at = Some(now);
        }
    }

    fn on_transcript(&mut self, now: Millis, text: String, is_final: bool) {
        let Some(u) = self.utterance.as_mut() else {
            return;
        };
        if is_final {
            if !text.trim().is_empty() {
                if !u.text.is_empty() {
                    u.text.push(' ');
                }
                u.text.push_str(text.trim());
            }
            u.partial.clear();
            u.final_at = Some(now);
        } else {
            u.partial = text.trim().to_owned();
        }
        if self.reply.is_some() {
            // Words may complete a pending interruption whose time has come.
            if self.interruption.is_some_and(|p| p.due(now)) {
                self.consider_interruption(now);
            }
            return;
        }
        let shown = match (u.text.is_empty(), u.partial.is_empty()) {
            (_, true) => u.text.clone(),
            (true, false) => u.partial.clone(),
            (false, false) => format!("{} {}", u.text, u.partial),
        };
        if !is_final && !shown.is_empty() {
            self.emit(Event::TranscriptPartial { text: shown });
        }
    }

    fn on_user_text(&mut self, now: Millis, text: String) {
        let text = text.trim().to_owned();
        if text.is_empty() {
            return;
        }
        if self.farewell.is_some() {
            // Too late for an answer, not for the transcript.
            self.store_user_text(text, now, now);
            return;
        }
        if self.reply.is_some() {
            // A typed message interrupts like speech past every threshold.
            self.interrupt(now, now);
        }
        self.utterance = None;
        self.commit_user_turn(now, text, now, now, None);
    }

    /// Ends the caller's turn once the silence lasted `end_of_turn_ms` and a
    /// final transcript has arrived.
    fn maybe_end_turn(&mut self, now: Millis) {
        if self.reply.is_some() {
            return;
        }
        let Some(u) = &self.utterance else { return };
        let Some(ended_at) = u.ended_at else { return };
        if u.speaking || now < ended_at + self.config.end_of_turn_ms || u.final_at.is_none() {
            return;
        }
        let Some(u) = self.utterance.take() else {
            return;
        };
        if u.text.trim().is_empty() {
            // Noise the STT heard as nothing: no turn.
            self.phase = Phase::Listening;
            self.last_activity = now;
            return;
        }
        let transcript_ms = u.final_at.map(|f| f.saturating_sub(ended_at) as u32);
        self.commit_user_turn(now, u.text, u.started_at, ended_at, transcript_ms);
    }

    fn commit_user_turn(
        &mut self,
        now: Millis,
        text: String,
        started_at: Millis,
        speech_ended_at: Millis,
        transcript_ms: Option<u32>,
    ) {
        self.store_user_text(text.clone(), started_at, speech_ended_at);
        self.remember(ChatRole::User, text);
        let turn = self.take_turn_id();
        self.reply = Some(Reply {
            turn,
            interruptible: true,
            llm_running: true,
            text: String::new(),
            pending: String::new(),
            chunks: Vec::new(),
            sent_ms: 0,
            started_at: now,
            speech_ended_at: Some(speech_ended_at),
            latency: TurnLatency {
                transcript_ms,
                ..TurnLatency::default()
            },
            failed: false,
            spoken: self.config.speak,
        });
        self.phase = Phase::Thinking;
        self.outputs.push_back(Output::StartLlm {
            turn,
            messages: self.history.clone(),
        });
    }

    /// Shows the caller's words as final and stores them.
    fn store_user_text(&mut self, text: String, started_at: Millis, ended_at: Millis) {
        self.emit(Event::TranscriptFinal { text: text.clone() });
        self.outputs.push_back(Output::Store(StoredMessage {
            role: ChatRole::User,
            content: text,
            heard_text: None,
            interrupted: false,
            started_at,
            ended_at,
            latency: TurnLatency::default(),
        }));
    }

    // --- barge-in -------------------------------------------------------

    fn consider_interruption(&mut self, now: Millis) {
        let Some(pending) = self.interruption else {
            return;
        };
        let still_speaking = self.utterance.as_ref().is_some_and(|u| u.speaking);
        if !still_speaking {
            self.interruption = None;
            return;
        }
        let words = self.utterance.as_ref().map_or(0, Utterance::words);
        if words < self.config.min_interruption_words {
            // Long enough but too few words yet: the next transcript decides.
            return;
        }
        self.interrupt(now, pending.onset);
    }

    /// Cuts the reply short: providers cancelled, queued audio dropped, the
    /// message stored with exactly what was heard.
    fn interrupt(&mut self, now: Millis, onset: Millis) {
        self.interruption = None;
        let Some(reply) = self.reply.take() else {
            return;
        };
        let heard = self.cut_reply(&reply, now);
        self.emit(Event::AssistantInterrupted {
            heard_text: heard.clone(),
        });
        self.emit(Event::BargeIn {
            onset_to_decision_ms: now.saturating_sub(onset) as u32,
        });
        if reply.speech_ended_at.is_some() {
            self.emit(Event::TurnMetrics {
                latency: reply.latency,
                interrupted: true,
            });
        }
        if !heard.is_empty() {
            // The model must not believe it said what the caller never heard.
            self.remember(ChatRole::Assistant, heard);
        }
        self.phase = if self.utterance.as_ref().is_some_and(|u| u.speaking) {
            Phase::UserSpeaking
        } else {
            Phase::Listening
        };
        self.last_activity = now;
    }

    // --- the reply ------------------------------------------------------

    fn current_turn(&self, turn: TurnId) -> bool {
        self.reply
            .as_ref()
            .is_some_and(|r| r.turn == turn && r.llm_running)
    }

    fn since_speech_end(reply: &Reply, now: Millis) -> Option<u32> {
        reply
            .speech_ended_at
            .map(|end| now.saturating_sub(end) as u32)
    }

    fn on_llm_token(&mut self, now: Millis, turn: TurnId, text: String) {
        if !self.current_turn(turn) || text.is_empty() {
            return;
        }
        let max_chars = self.config.max_chunk_chars;
        let mut ready = Vec::new();
        if let Some(reply) = self.reply.as_mut() {
            if reply.latency.first_token_ms.is_none() {
                reply.latency.first_token_ms = Self::since_speech_end(reply, now);
            }
            reply.text.push_str(&text);
            reply.pending.push_str(&text);
            while let Some(cut) = sentence_cut(&reply.pending, max_chars) {
                let rest = reply.pending.split_off(cut);
                ready.push(std::mem::replace(&mut reply.pending, rest));
            }
        }
        self.emit(Event::AssistantDelta { text });
        for chunk in ready {
            self.synthesize(chunk);
        }
    }

    fn on_llm_done(&mut self, now: Millis, turn: TurnId) {
        if !self.current_turn(turn) {
            return;
        }
        let rest = self.reply.as_mut().map(|r| {
            r.llm_running = false;
            std::mem::take(&mut r.pending)
        });
        if let Some(rest) = rest {
            self.synthesize(rest);
        }
        self.maybe_finish_reply(now);
    }

    fn on_llm_failed(&mut self, now: Millis, turn: TurnId, message: String) {
        if !self.current_turn(turn) {
            return;
        }
        self.emit(Event::Error {
            code: "llm_failed",
            message,
        });
        let apology = self.config.apology.clone();
        let rest = self.reply.as_mut().map(|r| {
            r.llm_running = false;
            r.failed = true;
            if !r.text.is_empty() && !r.text.ends_with(char::is_whitespace) {
                r.text.push(' ');
            }
            r.text.push_str(&apology);
            std::mem::take(&mut r.pending)
        });
        if let Some(rest) = rest {
            self.synthesize(rest);
            self.synthesize(apology);
        }
        self.maybe_finish_reply(now);
    }

    fn on_tts_audio(
        &mut self,
        now: Millis,
        chunk: ChunkId,
        audio_ms: u32,
        words: Option<Vec<WordTiming>>,
    ) {
        if let Some(reply) = self.reply.as_mut()
            && reply.latency.first_audio_ms.is_none()
            && audio_ms > 0
        {
            reply.latency.first_audio_ms = Self::since_speech_end(reply, now);
        }
        let Some(c) = self.chunk_mut(chunk) else {
            return;
        };
        if let Some(new_words) = words {
            let offset = c.audio_ms;
            let shifted = new_words.into_iter().map(|w| WordTiming {
                end_ms: w.end_ms + offset,
                ..w
            });
            c.words.get_or_insert_with(Vec::new).extend(shifted);
        }
        c.audio_ms += audio_ms;
    }

    fn on_tts_done(&mut self, now: Millis, chunk: ChunkId) {
        if let Some(c) = self.chunk_mut(chunk) {
            c.done = true;
        }
        self.maybe_finish_reply(now);
    }

    fn on_tts_failed(&mut self, now: Millis, chunk: ChunkId, message: String) {
        let Some(c) = self.chunk_mut(chunk) else {
            return;
        };
        // Nothing more of this chunk will be heard.
        c.done = true;
        self.emit(Event::Error {
            code: "tts_failed",
            message,
        });
        self.maybe_finish_reply(now);
    }

    fn on_audio_sent(&mut self, now: Millis, audio_ms: u32) {
        let Some(reply) = self.reply.as_mut() else {
            return;
        };
        let first = reply.sent_ms == 0;
        reply.sent_ms += u64::from(audio_ms);
        if first {
            reply.latency.voice_to_voice_ms = Self::since_speech_end(reply, now);
            self.phase = Phase::Speaking;
            self.emit(Event::AssistantSpeaking);
        }
        self.maybe_finish_reply(now);
    }

    fn maybe_finish_reply(&mut self, now: Millis) {
        if !self.reply.as_ref().is_some_and(Reply::finished) {
            return;
        }
        let Some(reply) = self.reply.take() else {
            return;
        };
        let text = reply.text.trim().to_owned();
        let heard = reply.heard_text();
        self.emit(Event::AssistantDone { text: text.clone() });
        if reply.speech_ended_at.is_some() {
            self.emit(Event::TurnMetrics {
                latency: reply.latency,
                interrupted: false,
            });
        }
        // A reply whose audio did not all go out (TTS failure) stores what
        // was heard, like an interruption does.
        let partial = heard.split_whitespace().count() < text.split_whitespace().count();
        self.outputs.push_back(Output::Store(StoredMessage {
            role: ChatRole::Assistant,
            content: text.clone(),
            heard_text: partial.then(|| heard.clone()),
            interrupted: false,
            started_at: reply.started_at,
            ended_at: now,
            latency: reply.latency,
        }));
        let remembered = if partial { heard } else { text };
        if !remembered.is_empty() {
            self.remember(ChatRole::Assistant, remembered);
        }
        self.interruption = None;
        self.phase = if self.utterance.as_ref().is_some_and(|u| u.speaking) {
            Phase::UserSpeaking
        } else {
            Phase::Listening
        };
        self.utterance = self.utterance.take().filter(|u| u.speaking);
        self.last_activity = now;
        if let Some((reason, _)) = self.farewell {
            self.end(now, reason);
        }
    }

    /// Cuts any reply short, then says `text` and ends with `reason`.
    fn on_goodbye(&mut self, now: Millis, text: String, reason: EndReason) {
        if self.farewell.is_some() {
            return;
        }
        self.farewell = Some((reason, now + FAREWELL_MAX_MS));
        self.interruption = None;
        self.utterance = None;
        if let Some(reply) = self.reply.take() {
            let heard = self.cut_reply(&reply, now);
            self.emit(Event::AssistantInterrupted {
                heard_text: heard.clone(),
            });
            if !heard.is_empty() {
                self.remember(ChatRole::Assistant, heard);
            }
        }
        self.say(now, text, false);
    }

    /// Stops a reply that will not finish: providers cancelled, queued audio
    /// dropped, the message stored as interrupted with what was heard, which
    /// is returned.
    fn cut_reply(&mut self, reply: &Reply, now: Millis) -> String {
        if reply.llm_running {
            self.outputs
                .push_back(Output::CancelLlm { turn: reply.turn });
        }
        self.outputs.push_back(Output::CancelTts);
        self.outputs.push_back(Output::ClearAudio);
        let heard = reply.heard_text();
        if !reply.text.trim().is_empty() {
            self.outputs.push_back(Output::Store(StoredMessage {
                role: ChatRole::Assistant,
                content: reply.text.trim().to_owned(),
                heard_text: Some(heard.clone()),
                interrupted: true,
                started_at: reply.started_at,
                ended_at: now,
                latency: reply.latency,
            }));
        }
        heard
    }

    fn end(&mut self, now: Millis, reason: EndReason) {
        if let Some(reply) = self.reply.take() {
            self.cut_reply(&reply, now);
        }
        self.interruption = None;
        self.utterance = None;
        self.phase = Phase::Ended;
        self.emit(Event::SessionEnded { reason });
        self.outputs.push_back(Output::End { reason });
    }
}

/// Where to cut `pending` into a chunk to speak now: after a sentence end
/// (`.`, `!`, `?`, `;`, `:` or a newline) that is followed by whitespace, or
/// at the last word boundary once the text is `max_chars` long.
fn sentence_cut(pending: &str, max_chars: usize) -> Option<usize> {
    let bytes = pending.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        let ends_sentence = matches!(b, b'.' | b'!' | b'?' | b';' | b':') || b == b'\n';
        if ends_sentence && bytes.get(i + 1).is_some_and(u8::is_ascii_whitespace) {
            let cut = i + 1;
            // A chunk of punctuation alone would be synthesised as silence.
            if pending[..cut].chars().any(char::is_alphanumeric) {
                return Some(cut);
            }
        }
    }
    if pending.chars().count() >= max_chars {
        return pending
            .trim_end()
            .rfind(char::is_whitespace)
            .filter(|&cut| cut > 0);
    }
    None
}

#[cfg(test)]
mod tests;
