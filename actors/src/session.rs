//! `SessionActor`: one voice session. It owns a [`Conversation`] and wires
//! it to the world: client messages in, provider streams (LLM, TTS) out and
//! back, assistant audio paced one 20 ms frame per tick, transcript rows
//! stored as each turn happens, timers from the conversation's deadlines.
//!
//! It knows no HTTP, SQL or socket: the transport hands it client input and
//! drains [`ToClient`] from a bounded channel; storage is the
//! [`SessionStore`] port.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures_util::StreamExt;
use palaver_media::AudioFrame;
use palaver_media::pacer::{Pacer, PacerConfig};
use palaver_media::resample::StreamResampler;
use palaver_media::vad::{Aggressiveness, SpeechDetectorConfig, SpeechEvent, WebRtcVad};
use palaver_media::{SpeechDetector, VoiceActivity};

use crate::conversation::{
    ChunkId, Conversation, ConversationConfig, EndReason, Event, Input, Millis, Output,
    StoredMessage, TurnId,
};
use crate::ports::{
    LanguageModel, LlmRequest, ProviderError, SpeechRecognizer, SpeechSynthesizer, SttInput,
    SttOptions, Transcript, TtsRequest,
};

/// A boxed future, the return type of the storage port.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// What a session persists. Failures are logged, never fatal to the call.
pub trait SessionStore: Send + Sync + 'static {
    /// Appends one transcript message.
    fn save_message(&self, message: StoredMessage) -> BoxFuture<Result<(), String>>;
    /// Marks the session ended with its reason.
    fn session_ended(&self, reason: EndReason) -> BoxFuture<Result<(), String>>;
}

/// What the transport sends to the client.
#[derive(Debug, Clone, PartialEq)]
// Frames travel by value through a bounded channel: boxing them would
// allocate per frame on the audio path.
#[allow(clippy::large_enum_variant)]
pub enum ToClient {
    Event(Event),
    /// 20 ms of assistant audio, 16 kHz mono PCM16.
    Audio(AudioFrame),
}

/// The language model of a session and its parameters.
#[derive(Clone)]
pub struct LlmSetup {
    pub model: Arc<dyn LanguageModel>,
    pub name: String,
    pub temperature: f64,
    pub max_tokens: u32,
}

impl std::fmt::Debug for LlmSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmSetup")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The voice of a session.
#[derive(Clone)]
pub struct TtsSetup {
    pub synthesizer: Arc<dyn SpeechSynthesizer>,
    pub voice_id: String,
    pub settings: serde_json::Value,
}

impl std::fmt::Debug for TtsSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TtsSetup")
            .field("voice_id", &self.voice_id)
            .finish_non_exhaustive()
    }
}

/// How a session hears.
#[derive(Clone)]
pub struct SttSetup {
    pub recognizer: Arc<dyn SpeechRecognizer>,
    pub options: SttOptions,
}

impl std::fmt::Debug for SttSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SttSetup")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// Everything a session needs to start.
pub struct SessionSetup {
    pub conversation: ConversationConfig,
    pub llm: LlmSetup,
    /// `None` for a text-only session.
    pub tts: Option<TtsSetup>,
    /// `None` when caller audio cannot be transcribed.
    pub stt: Option<SttSetup>,
    pub store: Arc<dyn SessionStore>,
    /// Bounded: a client that stops reading loses audio frames, not memory.
    pub client: tokio::sync::mpsc::Sender<ToClient>,
    /// Dropped with the actor, once its transcript and end are stored:
    /// whoever holds the receiver learns the session is over.
    pub on_stopped: Option<tokio::sync::oneshot::Sender<()>>,
}

impl std::fmt::Debug for SessionSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionSetup")
            .field("conversation", &self.conversation)
            .finish_non_exhaustive()
    }
}

/// A typed caller turn.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct UserText(pub String);

/// 20 ms of caller audio, 16 kHz mono.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct CallerAudio(pub AudioFrame);

/// The caller or the API ends the session.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Hangup(pub EndReason);

/// Say the text, then end the session with the reason (see
/// [`Input::Goodbye`]): a node shutting down lets its callers hear why.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Goodbye {
    pub text: String,
    pub reason: EndReason,
}

/// The caller's connection dropped without a hang-up: the session waits
/// for them to rejoin (see [`Input::TransportLost`]); events meanwhile are
/// held for them.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Detach;

/// The caller rejoined: events and audio go to `client` from now on, the
/// events held meanwhile first. `media_ready`: their audio path is up
/// already (a WebSocket); over WebRTC, [`MediaConnected`] follows.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Attach {
    pub client: tokio::sync::mpsc::Sender<ToClient>,
    pub media_ready: bool,
}

/// Events held for a caller who dropped, at most (the oldest go first).
const HELD_EVENTS: usize = 256;

/// The caller's audio path is up (WebRTC: ICE and DTLS done): audio held
/// until then (the first message, synthesized meanwhile) starts playing.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct MediaConnected;

#[derive(Debug, Message)]
#[rtype(result = "()")]
struct LlmItem {
    turn: TurnId,
    /// `Ok(None)`: the reply is complete.
    item: Result<Option<String>, ProviderError>,
}

#[derive(Debug, Message)]
#[rtype(result = "()")]
struct TtsItem {
    chunk: ChunkId,
    /// `Ok(None)`: the chunk is complete.
    item: Result<Option<crate::ports::TtsAudio>, ProviderError>,
}

#[derive(Debug, Message)]
#[rtype(result = "()")]
struct SttItem(Result<Transcript, ProviderError>);

/// Caller audio kept from before speech onset is detected, so speech to
/// text hears the first syllable (onset is reported `min_speech_ms` late).
const PRE_ROLL_FRAMES: usize = 16;
/// Silence that ends a stretch of speech for the VAD stage; the rest of
/// `end_of_turn_ms` is waited by the conversation.
const VAD_SILENCE_MS: u32 = 200;
/// Speech needed before onset is reported.
const VAD_MIN_SPEECH_MS: u32 = 100;

/// The listening half: VAD, onset/offset, and the live recognition.
struct Ears {
    setup: SttSetup,
    vad: WebRtcVad,
    detector: SpeechDetector,
    /// Media time of caller audio received, in ms.
    audio_ms: u64,
    pre_roll: [AudioFrame; PRE_ROLL_FRAMES],
    pre_roll_len: usize,
    pre_roll_next: usize,
    recognition: Option<tokio::sync::mpsc::Sender<SttInput>>,
    transcripts: Option<SpawnHandle>,
    /// The recognition queue was full: frames are being dropped.
    overflowing: bool,
    /// An end of utterance that found the queue full is on its way (set
    /// when it is in); audio waits behind it, dropped, so it cannot
    /// overtake it.
    end_in_flight: Option<Arc<std::sync::atomic::AtomicBool>>,
}

/// A write for the session's writer task. One queue keeps the transcript in
/// the order the turns happened, and the end after the last message.
enum StoreJob {
    Message(StoredMessage),
    Ended(EndReason, tokio::sync::oneshot::Sender<()>),
}

/// Applies store jobs one after the other (transcript writes are a few per
/// turn, so the queue stays short).
fn spawn_writer(store: Arc<dyn SessionStore>) -> tokio::sync::mpsc::UnboundedSender<StoreJob> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<StoreJob>();
    actix::spawn(async move {
        while let Some(job) = rx.recv().await {
            match job {
                StoreJob::Message(message) => {
                    if let Err(err) = store.save_message(message).await {
                        tracing::error!(%err, "could not store a transcript message");
                    }
                }
                StoreJob::Ended(reason, done) => {
                    if let Err(err) = store.session_ended(reason).await {
                        tracing::error!(%err, "could not mark the session ended");
                    }
                    let _ = done.send(());
                }
            }
        }
    });
    tx
}

/// How often the pacer is polled.
const TICK: Duration = Duration::from_millis(20);

/// TTS audio being turned into 16 kHz frames as the pacer makes room.
struct Speaking {
    chunk: ChunkId,
    resampler: StreamResampler<{ palaver_media::FRAME_SAMPLES }>,
    /// Source samples not yet taken by the resampler.
    pending: Vec<i16>,
    taken: usize,
    /// The provider finished this chunk.
    complete: bool,
    /// Audio of this chunk told to the conversation so far, in ms.
    reported_ms: u64,
    /// 20 ms frames of this chunk put into the pacer.
    frames: u64,
}

pub struct SessionActor {
    conversation: Conversation,
    started: Instant,
    llm: LlmSetup,
    tts: Option<TtsSetup>,
    /// Transcript writes, applied in order by one writer task.
    store: tokio::sync::mpsc::UnboundedSender<StoreJob>,
    client: tokio::sync::mpsc::Sender<ToClient>,
    llm_task: Option<(TurnId, SpawnHandle)>,
    tts_task: Option<(ChunkId, SpawnHandle)>,
    tts_queue: VecDeque<(ChunkId, String)>,
    speaking: VecDeque<Speaking>,
    pacer: Pacer<AudioFrame>,
    ears: Option<Ears>,
    timer: Option<SpawnHandle>,
    ended: bool,
    /// The caller dropped ([`Detach`]): events wait here for them.
    held: Option<VecDeque<Event>>,
    /// See [`SessionSetup::on_stopped`].
    _on_stopped: Option<tokio::sync::oneshot::Sender<()>>,
}

impl std::fmt::Debug for SessionActor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionActor")
            .field("phase", &self.conversation.phase())
            .finish_non_exhaustive()
    }
}

impl SessionActor {
    pub fn new(setup: SessionSetup) -> Self {
        let mut conversation_config = setup.conversation;
        conversation_config.speak = setup.tts.is_some();
        Self {
            conversation: Conversation::new(conversation_config),
            started: Instant::now(),
            llm: setup.llm,
            tts: setup.tts,
            store: spawn_writer(setup.store),
            client: setup.client,
            llm_task: None,
            tts_task: None,
            tts_queue: VecDeque::new(),
            speaking: VecDeque::new(),
            pacer: Pacer::new(PacerConfig::default()),
            ears: setup.stt.map(|setup| Ears {
                setup,
                vad: WebRtcVad::new(Aggressiveness::default()),
                detector: SpeechDetector::new(SpeechDetectorConfig {
                    min_speech_ms: VAD_MIN_SPEECH_MS,
                    silence_ms: VAD_SILENCE_MS,
                }),
                audio_ms: 0,
                pre_roll: std::array::from_fn(|_| AudioFrame::silence()),
                pre_roll_len: 0,
                pre_roll_next: 0,
                recognition: None,
                transcripts: None,
                overflowing: false,
                end_in_flight: None,
            }),
            timer: None,
            ended: false,
            held: None,
            _on_stopped: setup.on_stopped,
        }
    }

    fn now(&self) -> Millis {
        self.started.elapsed().as_millis() as Millis
    }

    fn feed(&mut self, input: Input, ctx: &mut Context<Self>) {
        let now = self.now();
        self.conversation.handle_input(now, input);
        self.drain(ctx);
    }

    fn send(&mut self, message: ToClient) {
        if let Some(held) = self.held.as_mut() {
            if let ToClient::Event(event) = message {
                if held.len() == HELD_EVENTS {
                    held.pop_front();
                }
                held.push_back(event);
            }
            return;
        }
        if let Err(err) = self.client.try_send(message) {
            match err {
                tokio::sync::mpsc::error::TrySendError::Full(ToClient::Audio(_)) => {
                    tracing::debug!("client is not reading; an audio frame was dropped");
                }
                tokio::sync::mpsc::error::TrySendError::Full(_) => {
                    tracing::warn!("client is not reading; an event was dropped");
                }
                tokio::sync::mpsc::error::TrySendError::Closed(_) => {}
            }
        }
    }

    /// Acts on every output of the conversation, then re-arms its timer.
    fn drain(&mut self, ctx: &mut Context<Self>) {
        while let Some(output) = self.conversation.poll_output() {
            match output {
                Output::Event(event) => self.send(ToClient::Event(event)),
                Output::StartLlm { turn, messages } => self.start_llm(turn, messages, ctx),
                Output::CancelLlm { turn } => {
                    if let Some((running, handle)) = self.llm_task.take() {
                        if running == turn {
                            ctx.cancel_future(handle);
                        } else {
                            self.llm_task = Some((running, handle));
                        }
                    }
                }
                Output::Synthesize { chunk, text } => {
                    self.tts_queue.push_back((chunk, text));
                    self.next_tts(ctx);
                }
                Output::CancelTts => {
                    if let Some((_, handle)) = self.tts_task.take() {
                        ctx.cancel_future(handle);
                    }
                    self.tts_queue.clear();
                    self.speaking.clear();
                }
                Output::ClearAudio => {
                    let dropped = self.pacer.clear();
                    tracing::debug!(dropped, "barge-in: queued audio dropped");
                }
                Output::Store(message) => {
                    if self.store.send(StoreJob::Message(message)).is_err() {
                        tracing::error!("transcript writer is gone; a message was not stored");
                    }
                }
                Output::End { reason } => self.finish(reason, ctx),
            }
        }
        self.arm_timer(ctx);
    }

    fn arm_timer(&mut self, ctx: &mut Context<Self>) {
        if let Some(handle) = self.timer.take() {
            ctx.cancel_future(handle);
        }
        let Some(at) = self.conversation.poll_timeout() else {
            return;
        };
        let delay = Duration::from_millis(at.saturating_sub(self.now()));
        self.timer = Some(ctx.run_later(delay, |actor, ctx| {
            actor.timer = None;
            let now = actor.now();
            actor.conversation.handle_timeout(now);
            actor.drain(ctx);
        }));
    }

    fn start_llm(
        &mut self,
        turn: TurnId,
        messages: Vec<crate::conversation::ChatMessage>,
        ctx: &mut Context<Self>,
    ) {
        if let Some((_, handle)) = self.llm_task.take() {
            ctx.cancel_future(handle);
        }
        let request = LlmRequest {
            model: self.llm.name.clone(),
            messages,
            temperature: self.llm.temperature,
            max_tokens: self.llm.max_tokens,
        };
        let mut stream = self.llm.model.stream_reply(request);
        let addr = ctx.address();
        let handle = ctx.spawn(
            async move {
                while let Some(item) = stream.next().await {
                    let failed = item.is_err();
                    addr.do_send(LlmItem {
                        turn,
                        item: item.map(Some),
                    });
                    if failed {
                        return;
                    }
                }
                addr.do_send(LlmItem {
                    turn,
                    item: Ok(None),
                });
            }
            .into_actor(self),
        );
        self.llm_task = Some((turn, handle));
    }

    /// Synthesises queued chunks one at a time, in order.
    fn next_tts(&mut self, ctx: &mut Context<Self>) {
        if self.tts_task.is_some() {
            return;
        }
        let Some(tts) = self.tts.clone() else { return };
        let Some((chunk, text)) = self.tts_queue.pop_front() else {
            return;
        };
        let mut stream = tts.synthesizer.synthesize(TtsRequest {
            text,
            voice_id: tts.voice_id.clone(),
            settings: tts.settings.clone(),
        });
        let addr = ctx.address();
        let handle = ctx.spawn(
            async move {
                while let Some(item) = stream.next().await {
                    let failed = item.is_err();
                    addr.do_send(TtsItem {
                        chunk,
                        item: item.map(Some),
                    });
                    if failed {
                        return;
                    }
                }
                addr.do_send(TtsItem {
                    chunk,
                    item: Ok(None),
                });
            }
            .into_actor(self),
        );
        self.tts_task = Some((chunk, handle));
    }

    /// Moves as much pending TTS audio into the pacer as it has room for.
    /// When a chunk's last frame is in, the conversation learns the chunk is
    /// done, with its exact duration in frames (the provider's piece
    /// durations round down, and the last frame is padded), so a reply is
    /// finished only when its last frame has gone out. Returns whether the
    /// conversation was told anything.
    fn fill_pacer(&mut self) -> bool {
        let mut told = false;
        while let Some(speaking) = self.speaking.front_mut() {
            let room = self.pacer.free_slots();
            if room == 0 {
                break;
            }
            let pacer = &mut self.pacer;
            let frames = &mut speaking.frames;
            let taken =
                speaking
                    .resampler
                    .push(&speaking.pending[speaking.taken..], room, |frame| {
                        // Room was checked; a full pacer drops the frame rather than
                        // growing.
                        if pacer.push(AudioFrame { samples: *frame }).is_ok() {
                            *frames += 1;
                        }
                    });
            speaking.taken += taken;
            if speaking.taken < speaking.pending.len() {
                break;
            }
            speaking.pending.clear();
            speaking.taken = 0;
            if !speaking.complete || speaking.resampler.flush_frames() > self.pacer.free_slots() {
                break;
            }
            let pacer = &mut self.pacer;
            let frames = &mut speaking.frames;
            speaking.resampler.flush(|frame| {
                if pacer.push(AudioFrame { samples: *frame }).is_ok() {
                    *frames += 1;
                }
            });
            let chunk = speaking.chunk;
            let exact_ms = speaking.frames * u64::from(palaver_media::FRAME_MS);
            let missing_ms = exact_ms.saturating_sub(speaking.reported_ms);
            self.speaking.pop_front();
            let now = self.now();
            if missing_ms > 0 {
                let audio_ms = u32::try_from(missing_ms).unwrap_or(u32::MAX);
                self.conversation.handle_input(
                    now,
                    Input::TtsAudio {
                        chunk,
                        audio_ms,
                        words: None,
                    },
                );
            }
            self.conversation
                .handle_input(now, Input::TtsDone { chunk });
            told = true;
        }
        told
    }

    /// One pacer tick: send what is due, tell the conversation.
    fn tick(&mut self, ctx: &mut Context<Self>) {
        // Whether the conversation was told anything this tick.
        let mut told = self.fill_pacer();
        let now = self.now();
        // Until the caller's media connects, audio stays in the pacer, whose
        // schedule starts at its first poll.
        while !self.conversation.awaiting_media()
            && let Some(paced) = self.pacer.poll(now)
        {
            self.send(ToClient::Audio(paced.frame));
            self.conversation.handle_input(
                now,
                Input::AudioSent {
                    audio_ms: palaver_media::FRAME_MS,
                },
            );
            told = true;
        }
        if told {
            self.fill_pacer();
            self.drain(ctx);
        }
    }

    /// Opens the recognition on first speech; its transcripts come back as
    /// [`SttItem`]s.
    fn open_recognition(&mut self, ctx: &mut Context<Self>) {
        let Some(ears) = self.ears.as_mut() else {
            return;
        };
        if ears.recognition.is_some() {
            return;
        }
        let recognition = ears.setup.recognizer.start(ears.setup.options.clone());
        let mut transcripts = recognition.transcripts;
        let addr = ctx.address();
        let handle = ctx.spawn(
            async move {
                while let Some(item) = transcripts.next().await {
                    addr.do_send(SttItem(item));
                }
            }
            .into_actor(self),
        );
        if let Some(ears) = self.ears.as_mut() {
            ears.recognition = Some(recognition.audio);
            ears.transcripts = Some(handle);
        }
    }

    fn hear(&mut self, frame: AudioFrame, ctx: &mut Context<Self>) {
        let Some(ears) = self.ears.as_mut() else {
            return;
        };
        let is_speech = ears.vad.is_speech(&frame);
        ears.audio_ms += u64::from(palaver_media::FRAME_MS);
        let event = ears.detector.on_frame(ears.audio_ms, is_speech);
        let now = self.now();
        match event {
            Some(SpeechEvent::Started { .. }) => {
                // Onset is reported `min_speech_ms` after it happened.
                let onset = now.saturating_sub(u64::from(VAD_MIN_SPEECH_MS));
                self.conversation.handle_input(onset, Input::SpeechStarted);
                self.open_recognition(ctx);
                if let Some(ears) = self.ears.as_mut() {
                    // Replay what came before the onset was confirmed.
                    for i in 0..ears.pre_roll_len {
                        let index = (ears.pre_roll_next + PRE_ROLL_FRAMES - ears.pre_roll_len + i)
                            % PRE_ROLL_FRAMES;
                        let frame = ears.pre_roll[index].clone();
                        Self::to_recognition(ears, SttInput::Audio(frame));
                    }
                    ears.pre_roll_len = 0;
                }
            }
            Some(SpeechEvent::Ended { .. }) => {
                if let Some(ears) = self.ears.as_mut() {
                    Self::to_recognition(ears, SttInput::Audio(frame.clone()));
                    Self::to_recognition(ears, SttInput::EndOfUtterance);
                }
                // Offset is reported after `VAD_SILENCE_MS` of silence.
                let offset = now.saturating_sub(u64::from(VAD_SILENCE_MS));
                self.conversation.handle_input(offset, Input::SpeechEnded);
            }
            _ => {}
        }
        if let Some(ears) = self.ears.as_mut() {
            if ears.detector.in_speech() {
                if !matches!(event, Some(SpeechEvent::Ended { .. })) {
                    Self::to_recognition(ears, SttInput::Audio(frame));
                }
            } else if !matches!(event, Some(SpeechEvent::Ended { .. })) {
                ears.pre_roll[ears.pre_roll_next] = frame;
                ears.pre_roll_next = (ears.pre_roll_next + 1) % PRE_ROLL_FRAMES;
                ears.pre_roll_len = (ears.pre_roll_len + 1).min(PRE_ROLL_FRAMES);
            }
        }
        self.drain(ctx);
    }

    fn to_recognition(ears: &mut Ears, input: SttInput) {
        let Some(sender) = &ears.recognition else {
            return;
        };
        if let Some(delivered) = &ears.end_in_flight {
            if !delivered.load(std::sync::atomic::Ordering::Acquire) {
                // Behind an end that is not in yet: this one would overtake
                // it (audio) or repeat it (another end).
                return;
            }
            ears.end_in_flight = None;
        }
        match sender.try_send(input) {
            Ok(()) => ears.overflowing = false,
            Err(tokio::sync::mpsc::error::TrySendError::Full(SttInput::EndOfUtterance)) => {
                // Audio may be dropped, the end may not: without it the
                // turn never ends. Wait for room off the actor.
                tracing::warn!(
                    "speech to text is falling behind; the end of the utterance waits for it"
                );
                let delivered = Arc::new(std::sync::atomic::AtomicBool::new(false));
                ears.end_in_flight = Some(delivered.clone());
                let sender = sender.clone();
                tokio::spawn(async move {
                    // Closed: the recognition is gone, nothing waits for it.
                    let _ = sender.send(SttInput::EndOfUtterance).await;
                    delivered.store(true, std::sync::atomic::Ordering::Release);
                });
                ears.overflowing = true;
            }
            Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {
                if !ears.overflowing {
                    tracing::warn!("speech to text is falling behind; caller audio is dropped");
                }
                ears.overflowing = true;
            }
            Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => ears.recognition = None,
        }
    }

    fn finish(&mut self, reason: EndReason, ctx: &mut Context<Self>) {
        if self.ended {
            return;
        }
        self.ended = true;
        tracing::info!(reason = reason.as_str(), "session ended");
        // Stop once every message and the end are stored, so the API never
        // shows a live session whose actor is gone.
        let (done, stored) = tokio::sync::oneshot::channel();
        let _ = self.store.send(StoreJob::Ended(reason, done));
        ctx.wait(
            async move { drop(stored.await) }
                .into_actor(self)
                .map(|_, _, ctx: &mut Context<Self>| ctx.stop()),
        );
    }
}

impl Actor for SessionActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(TICK, |actor, ctx| actor.tick(ctx));
        self.drain(ctx);
    }
}

impl Handler<UserText> for SessionActor {
    type Result = ();

    fn handle(&mut self, msg: UserText, ctx: &mut Context<Self>) {
        self.feed(Input::UserText { text: msg.0 }, ctx);
    }
}

impl Handler<CallerAudio> for SessionActor {
    type Result = ();

    fn handle(&mut self, msg: CallerAudio, ctx: &mut Context<Self>) {
        self.hear(msg.0, ctx);
    }
}

impl Handler<SttItem> for SessionActor {
    type Result = ();

    fn handle(&mut self, msg: SttItem, ctx: &mut Context<Self>) {
        let input = match msg.0 {
            Ok(Transcript { text, is_final }) => Input::Transcript { text, is_final },
            Err(err) => {
                tracing::warn!(%err, "speech to text failed");
                self.send(ToClient::Event(Event::Error {
                    code: "stt_failed",
                    message: err.to_string(),
                }));
                // The utterance ends with nothing heard rather than hanging.
                Input::Transcript {
                    text: String::new(),
                    is_final: true,
                }
            }
        };
        self.feed(input, ctx);
    }
}

impl Handler<MediaConnected> for SessionActor {
    type Result = ();

    fn handle(&mut self, _: MediaConnected, ctx: &mut Context<Self>) {
        self.feed(Input::MediaConnected, ctx);
        // What the pacer holds leaves now, not at the next tick.
        self.tick(ctx);
    }
}

impl Handler<Hangup> for SessionActor {
    type Result = ();

    fn handle(&mut self, msg: Hangup, ctx: &mut Context<Self>) {
        self.feed(Input::Hangup { reason: msg.0 }, ctx);
    }
}

impl Handler<Detach> for SessionActor {
    type Result = ();

    fn handle(&mut self, _: Detach, ctx: &mut Context<Self>) {
        if self.ended {
            return;
        }
        tracing::info!("the caller's connection dropped; waiting for them to rejoin");
        self.held.get_or_insert_with(VecDeque::new);
        self.feed(Input::TransportLost, ctx);
    }
}

impl Handler<Attach> for SessionActor {
    type Result = ();

    fn handle(&mut self, msg: Attach, ctx: &mut Context<Self>) {
        self.client = msg.client;
        if let Some(held) = self.held.take() {
            tracing::info!(held = held.len(), "the caller rejoined");
            for event in held {
                self.send(ToClient::Event(event));
            }
        }
        self.feed(Input::TransportRestored, ctx);
        if msg.media_ready {
            self.feed(Input::MediaConnected, ctx);
        }
    }
}

impl Handler<Goodbye> for SessionActor {
    type Result = ();

    fn handle(&mut self, msg: Goodbye, ctx: &mut Context<Self>) {
        self.feed(
            Input::Goodbye {
                text: msg.text,
                reason: msg.reason,
            },
            ctx,
        );
    }
}

impl Handler<LlmItem> for SessionActor {
    type Result = ();

    fn handle(&mut self, msg: LlmItem, ctx: &mut Context<Self>) {
        if self
            .llm_task
            .as_ref()
            .is_some_and(|(turn, _)| *turn == msg.turn)
            && !matches!(msg.item, Ok(Some(_)))
        {
            self.llm_task = None;
        }
        let input = match msg.item {
            Ok(Some(text)) => Input::LlmToken {
                turn: msg.turn,
                text,
            },
            Ok(None) => Input::LlmDone { turn: msg.turn },
            Err(err) => {
                tracing::warn!(%err, "language model failed");
                Input::LlmFailed {
                    turn: msg.turn,
                    message: err.to_string(),
                }
            }
        };
        self.feed(input, ctx);
    }
}

impl Handler<TtsItem> for SessionActor {
    type Result = ();

    fn handle(&mut self, msg: TtsItem, ctx: &mut Context<Self>) {
        // Audio of a cancelled chunk may still be in the mailbox.
        if self
            .tts_task
            .as_ref()
            .is_none_or(|(chunk, _)| *chunk != msg.chunk)
        {
            return;
        }
        match msg.item {
            Ok(Some(audio)) => {
                let audio_ms = audio.duration_ms();
                let fresh = self.speaking.back().is_none_or(|s| s.chunk != msg.chunk);
                if fresh {
                    match StreamResampler::to_16k(audio.sample_rate) {
                        Ok(resampler) => self.speaking.push_back(Speaking {
                            chunk: msg.chunk,
                            resampler,
                            pending: Vec::new(),
                            taken: 0,
                            complete: false,
                            reported_ms: 0,
                            frames: 0,
                        }),
                        Err(err) => {
                            tracing::warn!(%err, "TTS audio at an unusable sample rate");
                            return;
                        }
                    }
                }
                if let Some(speaking) = self.speaking.back_mut() {
                    speaking.pending.extend_from_slice(&audio.samples);
                    speaking.reported_ms += u64::from(audio_ms);
                }
                self.feed(
                    Input::TtsAudio {
                        chunk: msg.chunk,
                        audio_ms,
                        words: audio.words,
                    },
                    ctx,
                );
                // Send what is due now rather than at the next tick: the
                // pacer starts a run at once and keeps 20 ms spacing after.
                self.tick(ctx);
            }
            Ok(None) => {
                self.tts_task = None;
                match self.speaking.iter_mut().find(|s| s.chunk == msg.chunk) {
                    // Done is told once its last frame is in the pacer.
                    Some(speaking) => {
                        speaking.complete = true;
                        self.fill_pacer();
                        self.drain(ctx);
                    }
                    // No audio at all: nothing to wait for.
                    None => self.feed(Input::TtsDone { chunk: msg.chunk }, ctx),
                }
                self.next_tts(ctx);
            }
            Err(err) => {
                self.tts_task = None;
                tracing::warn!(%err, "text to speech failed");
                // What arrived still plays; the chunks behind it must not wait.
                if let Some(speaking) = self.speaking.iter_mut().find(|s| s.chunk == msg.chunk) {
                    speaking.complete = true;
                }
                self.fill_pacer();
                self.feed(
                    Input::TtsFailed {
                        chunk: msg.chunk,
                        message: err.to_string(),
                    },
                    ctx,
                );
                self.next_tts(ctx);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Never asked: the test hands `Ears` its recognition queue itself.
    struct Unused;

    impl SpeechRecognizer for Unused {
        fn start(&self, _: SttOptions) -> crate::ports::Recognition {
            unreachable!("the test sets the recognition queue")
        }
    }

    fn ears(queue: tokio::sync::mpsc::Sender<SttInput>) -> Ears {
        Ears {
            setup: SttSetup {
                recognizer: Arc::new(Unused),
                options: SttOptions {
                    model: "m".into(),
                    language: "en".into(),
                },
            },
            vad: WebRtcVad::new(Aggressiveness::default()),
            detector: SpeechDetector::new(SpeechDetectorConfig {
                min_speech_ms: VAD_MIN_SPEECH_MS,
                silence_ms: VAD_SILENCE_MS,
            }),
            audio_ms: 0,
            pre_roll: std::array::from_fn(|_| AudioFrame::silence()),
            pre_roll_len: 0,
            pre_roll_next: 0,
            recognition: Some(queue),
            transcripts: None,
            overflowing: false,
            end_in_flight: None,
        }
    }

    #[actix_rt::test]
    async fn an_end_of_utterance_that_finds_the_queue_full_still_arrives_after_the_audio() {
        let (tx, mut rx) = tokio::sync::mpsc::channel(2);
        let mut ears = ears(tx);
        SessionActor::to_recognition(&mut ears, SttInput::Audio(AudioFrame::silence()));
        SessionActor::to_recognition(&mut ears, SttInput::Audio(AudioFrame::silence()));
        // Full: the end waits for room; audio behind it is dropped rather
        // than let through ahead of it.
        SessionActor::to_recognition(&mut ears, SttInput::EndOfUtterance);
        SessionActor::to_recognition(&mut ears, SttInput::Audio(AudioFrame::silence()));
        let mut got = Vec::new();
        for _ in 0..3 {
            let next = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await;
            got.push(next.expect("the end of the utterance arrives").unwrap());
        }
        assert!(matches!(got[0], SttInput::Audio(_)));
        assert!(matches!(got[1], SttInput::Audio(_)));
        assert_eq!(got[2], SttInput::EndOfUtterance);
        assert!(
            rx.try_recv().is_err(),
            "the audio behind the end was dropped"
        );
        // Once it is in, audio flows again.
        SessionActor::to_recognition(&mut ears, SttInput::Audio(AudioFrame::silence()));
        assert!(matches!(rx.recv().await.unwrap(), SttInput::Audio(_)));
        assert!(ears.end_in_flight.is_none());
    }
}
