//! [`LocalWhisper`]: the [`SpeechRecognizer`] port on the embedded Whisper
//! tiny.en ([`crate::whisper`]), for assistants whose STT provider is
//! `local`.
//!
//! One model per process, owned by one dedicated worker thread (inference
//! never runs on the actor threads or Tokio's workers). Recognitions talk
//! to it through a bounded job queue:
//!
//! - A recognition is a Tokio task that buffers the utterance's frames.
//!   Every [`LocalWhisperConfig::partial_interval_ms`] of new audio it asks
//!   for a *partial* (the whole utterance so far, re-decoded), but only when
//!   the worker has nothing queued: partials are skipped, never queued up,
//!   when the worker is busy.
//! - At [`SttInput::EndOfUtterance`] it queues a *final* (a partial still in
//!   flight is abandoned). A final that finds the queue full yields
//!   [`ProviderError::Busy`] for that utterance.
//! - One job per recognition is in flight at a time; transcripts come out in
//!   utterance order, finals with `is_final: true`.
//! - An utterance is capped at Whisper's 30 s window; past that the oldest
//!   audio is dropped. An end of utterance with no audio yields an empty
//!   final at once; audio Whisper judges to be silence yields an empty
//!   final too.
//! - Dropping the transcript stream ends the task; the worker notices the
//!   abandoned job (between tokens) and moves on.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use futures_util::stream;
use palaver_actors::media::SAMPLE_RATE;
use palaver_actors::ports::{
    ProviderError, Recognition, SpeechRecognizer, SttInput, SttOptions, Transcript,
};
use tokio::sync::{mpsc, oneshot};

use crate::models::{ModelError, ModelsDir};
use crate::whisper::{EncoderWindow, Whisper, WhisperError};

/// The provider name in errors.
pub const PROVIDER: &str = "local";

/// The longest utterance heard: Whisper's window.
pub const MAX_UTTERANCE_MS: u32 = 30_000;

/// Frames queued towards a recognition task (ten seconds). The session
/// actor hands frames over without waiting and drops what does not fit,
/// the end of the utterance included (that turn then never ends), and on a
/// busy machine it can hand over a second or more of frames in one go
/// after its thread was held up (seen on two cores, with Whisper, the
/// language model and Piper at work), so room for a burst is kept; it costs
/// nothing until used (640 bytes a frame).
const AUDIO_QUEUE_FRAMES: usize = 500;

/// Transcripts waiting for the session to read them.
const TRANSCRIPT_QUEUE: usize = 8;

/// How the local recognizer runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalWhisperConfig {
    /// The encoder window (see [`EncoderWindow`]).
    pub window: EncoderWindow,
    /// New audio between two partials; 0 turns partials off.
    pub partial_interval_ms: u32,
    /// No partial for an utterance shorter than this.
    pub min_partial_ms: u32,
    /// Jobs waiting for the worker, across every session; a final beyond
    /// it is answered [`ProviderError::Busy`].
    pub queue_depth: usize,
}

impl Default for LocalWhisperConfig {
    fn default() -> Self {
        Self {
            window: EncoderWindow::Fit { margin_ms: 2000 },
            partial_interval_ms: 700,
            // Under a second, Whisper mostly guesses ("the S-2-D").
            min_partial_ms: 1000,
            queue_depth: 4,
        }
    }
}

/// The local Whisper recognizer: cheap to clone (all clones share the one
/// model and worker thread); the worker stops when the last clone and the
/// last recognition are gone.
#[derive(Debug, Clone)]
pub struct LocalWhisper {
    engine: Arc<Engine>,
}

impl LocalWhisper {
    /// Loads Whisper from [`ModelsDir::whisper`] and starts the worker,
    /// with the default [`LocalWhisperConfig`]. Each call loads the model
    /// again (about 150 MB and a second): the server keeps one per process
    /// (`palaver::providers::local`).
    pub fn load(models: &ModelsDir) -> Result<Self, ModelError> {
        Ok(Self::new(
            Arc::new(Whisper::load(models)?),
            LocalWhisperConfig::default(),
        ))
    }

    /// Starts a worker thread on a loaded model (which other workers may
    /// share: it is read-only).
    pub fn new(whisper: Arc<Whisper>, config: LocalWhisperConfig) -> Self {
        let queue = Arc::new(JobQueue {
            state: Mutex::new(QueueState {
                jobs: VecDeque::new(),
                open: true,
            }),
            ready: Condvar::new(),
        });
        let worker_queue = Arc::clone(&queue);
        let window = config.window;
        let spawned = std::thread::Builder::new()
            .name("palaver-whisper".to_owned())
            .spawn(move || run_worker(&whisper, window, &worker_queue));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the local speech recognition worker");
            queue.close();
        }
        Self {
            engine: Arc::new(Engine { queue, config }),
        }
    }

    pub fn config(&self) -> &LocalWhisperConfig {
        &self.engine.config
    }
}

impl SpeechRecognizer for LocalWhisper {
    /// Spawns the recognition task on the current Tokio runtime; outside
    /// one, the transcript stream yields a single
    /// [`ProviderError::Unavailable`].
    fn start(&self, options: SttOptions) -> Recognition {
        let language = options.language.to_ascii_lowercase();
        if !(language.is_empty() || language == "en" || language.starts_with("en-")) {
            tracing::warn!(
                language = %options.language,
                "the local Whisper model (tiny.en) hears English only"
            );
        }
        let (audio_tx, audio_rx) = mpsc::channel(AUDIO_QUEUE_FRAMES);
        let (transcript_tx, transcript_rx) = mpsc::channel(TRANSCRIPT_QUEUE);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(run_recognition(
                    Arc::clone(&self.engine),
                    audio_rx,
                    transcript_tx,
                ));
            }
            Err(_) => {
                let err = unavailable("speech recognition started outside a Tokio runtime");
                // The channel is empty and has room for this one item.
                let _ = transcript_tx.try_send(Err(err));
            }
        }
        let transcripts = stream::unfold(transcript_rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        Recognition {
            audio: audio_tx,
            transcripts: Box::pin(transcripts),
        }
    }
}

fn unavailable(message: impl Into<String>) -> ProviderError {
    ProviderError::Unavailable {
        provider: PROVIDER,
        message: message.into(),
    }
}

#[derive(Debug)]
struct Engine {
    queue: Arc<JobQueue>,
    config: LocalWhisperConfig,
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.queue.close();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JobKind {
    Partial,
    Final,
}

type Reply = Result<String, ProviderError>;

#[derive(Debug)]
struct Job {
    kind: JobKind,
    pcm: Vec<f32>,
    reply: oneshot::Sender<Reply>,
}

#[derive(Debug)]
struct QueueState {
    jobs: VecDeque<Job>,
    /// False once the engine is dropped or the worker has died.
    open: bool,
}

#[derive(Debug)]
struct JobQueue {
    state: Mutex<QueueState>,
    ready: Condvar,
}

impl JobQueue {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        // A panic while holding this lock leaves the queue consistent
        // (every change is one push or pop), so poisoning is ignored.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues a job. A partial is taken only by an idle queue; a final
    /// displaces a waiting partial when the queue is full.
    fn submit(
        &self,
        kind: JobKind,
        pcm: Vec<f32>,
        depth: usize,
    ) -> Result<oneshot::Receiver<Reply>, ProviderError> {
        let mut state = self.lock();
        if !state.open {
            return Err(unavailable("the speech recognition worker has stopped"));
        }
        let admitted = match kind {
            JobKind::Partial => state.jobs.is_empty(),
            JobKind::Final => {
                if state.jobs.len() >= depth.max(1) {
                    // Its recognition sees the dropped reply as a skipped partial.
                    if let Some(i) = state.jobs.iter().position(|j| j.kind == JobKind::Partial) {
                        state.jobs.remove(i);
                    }
                }
                state.jobs.len() < depth.max(1)
            }
        };
        if !admitted {
            return Err(ProviderError::Busy { provider: PROVIDER });
        }
        let (reply, answer) = oneshot::channel();
        state.jobs.push_back(Job { kind, pcm, reply });
        self.ready.notify_one();
        Ok(answer)
    }

    /// The next job, waiting for one; `None` once closed.
    fn next(&self) -> Option<Job> {
        let mut state = self.lock();
        loop {
            if !state.open {
                return None;
            }
            if let Some(job) = state.jobs.pop_front() {
                return Some(job);
            }
            state = self
                .ready
                .wait(state)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    /// Refuses new jobs and drops the waiting ones (their recognitions see
    /// the dropped replies).
    fn close(&self) {
        let mut state = self.lock();
        state.open = false;
        state.jobs.clear();
        self.ready.notify_all();
    }
}

/// Closes the queue when the worker ends, even by a panic, so
/// recognitions get an error instead of waiting forever.
struct CloseOnExit<'a>(&'a JobQueue);

impl Drop for CloseOnExit<'_> {
    fn drop(&mut self) {
        self.0.close();
    }
}

fn run_worker(whisper: &Whisper, window: EncoderWindow, queue: &JobQueue) {
    let _close = CloseOnExit(queue);
    while let Some(job) = queue.next() {
        if job.reply.is_closed() {
            continue;
        }
        let started = Instant::now();
        let result = whisper.transcribe_until(&job.pcm, window, &|| job.reply.is_closed());
        let reply = match result {
            Ok(transcription) => {
                tracing::debug!(
                    kind = ?job.kind,
                    audio_ms = job.pcm.len() * 1000 / SAMPLE_RATE as usize,
                    encoder_positions = transcription.encoder_positions,
                    encode_ms = transcription.encode_time.as_millis() as u64,
                    decode_ms = transcription.decode_time.as_millis() as u64,
                    tokens = transcription.tokens.len(),
                    no_speech_prob = transcription.no_speech_prob,
                    "local transcription"
                );
                if transcription.is_probably_silence() {
                    Ok(String::new())
                } else {
                    Ok(transcription.text)
                }
            }
            Err(WhisperError::Cancelled) => continue,
            Err(e) => {
                tracing::warn!(error = %e, elapsed_ms = started.elapsed().as_millis() as u64, "local transcription failed");
                Err(unavailable(e.to_string()))
            }
        };
        let _ = job.reply.send(reply);
    }
}

/// The utterance being heard, capped at [`MAX_UTTERANCE_MS`].
#[derive(Debug, Default)]
struct Utterance {
    samples: VecDeque<i16>,
    /// Samples received since the last partial was asked for.
    since_partial: usize,
}

impl Utterance {
    fn push(&mut self, frame: &[i16]) {
        let cap = (u64::from(MAX_UTTERANCE_MS) * u64::from(SAMPLE_RATE) / 1000) as usize;
        self.samples.extend(frame);
        let excess = self.samples.len().saturating_sub(cap);
        self.samples.drain(..excess);
        self.since_partial += frame.len();
    }

    fn pcm(&self) -> Vec<f32> {
        self.samples
            .iter()
            .map(|&s| f32::from(s) / 32768.0)
            .collect()
    }

    fn take(&mut self) -> Vec<f32> {
        let pcm = self.pcm();
        self.samples.clear();
        self.since_partial = 0;
        pcm
    }
}

struct InFlight {
    kind: JobKind,
    answer: oneshot::Receiver<Reply>,
}

/// The task that owns one recognition's audio receiver.
async fn run_recognition(
    engine: Arc<Engine>,
    mut audio: mpsc::Receiver<SttInput>,
    transcripts: mpsc::Sender<Result<Transcript, ProviderError>>,
) {
    let config = &engine.config;
    let ms_to_samples = |ms: u32| (u64::from(ms) * u64::from(SAMPLE_RATE) / 1000) as usize;
    let partial_every = ms_to_samples(config.partial_interval_ms);
    let min_partial = ms_to_samples(config.min_partial_ms);
    let mut utterance = Utterance::default();
    // Ended utterances waiting for their final.
    let mut finals: VecDeque<Vec<f32>> = VecDeque::new();
    let mut in_flight: Option<InFlight> = None;
    let mut last_partial = String::new();
    let mut audio_open = true;
    loop {
        // A partial of an utterance that has ended is no longer wanted:
        // dropping its answer makes the worker abandon it.
        if !finals.is_empty()
            && in_flight
                .as_ref()
                .is_some_and(|j| j.kind == JobKind::Partial)
        {
            in_flight = None;
        }
        if in_flight.is_none() {
            if let Some(pcm) = finals.pop_front() {
                last_partial.clear();
                if pcm.is_empty() {
                    let empty = Transcript {
                        text: String::new(),
                        is_final: true,
                    };
                    if transcripts.send(Ok(empty)).await.is_err() {
                        return;
                    }
                    continue;
                }
                match engine.queue.submit(JobKind::Final, pcm, config.queue_depth) {
                    Ok(answer) => {
                        in_flight = Some(InFlight {
                            kind: JobKind::Final,
                            answer,
                        })
                    }
                    Err(err) => {
                        if transcripts.send(Err(err)).await.is_err() {
                            return;
                        }
                        continue;
                    }
                }
            } else if audio_open
                && partial_every > 0
                && utterance.since_partial >= partial_every
                && utterance.samples.len() >= min_partial
            {
                utterance.since_partial = 0;
                // Skipped, not retried, when the worker is busy.
                if let Ok(answer) =
                    engine
                        .queue
                        .submit(JobKind::Partial, utterance.pcm(), config.queue_depth)
                {
                    in_flight = Some(InFlight {
                        kind: JobKind::Partial,
                        answer,
                    });
                }
            }
        }
        if !audio_open
            && finals.is_empty()
            && in_flight
                .as_ref()
                .is_none_or(|j| j.kind == JobKind::Partial)
        {
            return;
        }
        let answer = async {
            match in_flight.as_mut() {
                Some(job) => (job.kind, (&mut job.answer).await),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            () = transcripts.closed() => return,
            (kind, reply) = answer => {
                in_flight = None;
                let item = match (kind, reply) {
                    (JobKind::Final, Ok(reply)) => reply.map(|text| Transcript { text, is_final: true }),
                    (JobKind::Final, Err(_)) => Err(unavailable("the speech recognition worker has stopped")),
                    (JobKind::Partial, Ok(Ok(text))) if !text.is_empty() && text != last_partial && finals.is_empty() => {
                        last_partial.clone_from(&text);
                        Ok(Transcript { text, is_final: false })
                    }
                    // An empty, repeated, stale or failed partial is not worth sending.
                    (JobKind::Partial, _) => continue,
                };
                if transcripts.send(item).await.is_err() {
                    return;
                }
            }
            input = audio.recv(), if audio_open => match input {
                Some(SttInput::Audio(frame)) => utterance.push(&frame.samples),
                Some(SttInput::EndOfUtterance) => finals.push_back(utterance.take()),
                None => audio_open = false,
            },
        }
    }
}
