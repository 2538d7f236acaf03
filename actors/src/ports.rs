//! The provider ports: what a session needs from speech-to-text, a language
//! model and text-to-speech, whoever provides them (a cloud API, the embedded
//! local models, a fake in tests). Adapters live in the server crate.
//!
//! Every call returns a stream; dropping the stream cancels the request (the
//! HTTP response or the local inference is abandoned), which is how barge-in
//! stops a reply within one token or one audio chunk.

use std::pin::Pin;

use futures_core::Stream;

use crate::conversation::{ChatMessage, WordTiming};

/// A boxed stream, the return type of every port.
pub type BoxStream<T> = Pin<Box<dyn Stream<Item = T> + Send + 'static>>;

/// Why a provider call failed. The session turns it into an `error` event
/// and an apology; it never ends the session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProviderError {
    /// No answer within the configured time.
    #[error("{provider} timed out after {after_ms} ms")]
    Timeout {
        provider: &'static str,
        after_ms: u64,
    },
    /// The provider answered with an error status.
    #[error("{provider} answered HTTP {status}: {message}")]
    Status {
        provider: &'static str,
        status: u16,
        message: String,
    },
    /// The connection failed or broke mid-stream.
    #[error("{provider} connection failed: {message}")]
    Transport {
        provider: &'static str,
        message: String,
    },
    /// The provider sent something that does not follow its protocol.
    #[error("{provider} sent an invalid response: {message}")]
    Protocol {
        provider: &'static str,
        message: String,
    },
    /// The provider is not usable here (missing key, model not installed).
    #[error("{provider} is not available: {message}")]
    Unavailable {
        provider: &'static str,
        message: String,
    },
    /// Too many requests in flight for a bounded local engine.
    #[error("{provider} is busy; try again shortly")]
    Busy { provider: &'static str },
}

impl ProviderError {
    /// A stable snake_case code for the `error` event.
    pub fn code(&self) -> &'static str {
        match self {
            ProviderError::Timeout { .. } => "provider_timeout",
            ProviderError::Status { .. } => "provider_error",
            ProviderError::Transport { .. } => "provider_unreachable",
            ProviderError::Protocol { .. } => "provider_protocol",
            ProviderError::Unavailable { .. } => "provider_unavailable",
            ProviderError::Busy { .. } => "provider_busy",
        }
    }
}

/// One reply to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct LlmRequest {
    pub model: String,
    /// System prompt first, then the turns (assistant turns as heard).
    pub messages: Vec<ChatMessage>,
    pub temperature: f64,
    pub max_tokens: u32,
}

/// A language model that streams its reply as text deltas.
pub trait LanguageModel: Send + Sync {
    /// Streams text deltas until the reply is complete; an `Err` item ends
    /// the stream.
    fn stream_reply(&self, request: LlmRequest) -> BoxStream<Result<String, ProviderError>>;
}

/// Text to speak.
#[derive(Debug, Clone, PartialEq)]
pub struct TtsRequest {
    pub text: String,
    pub voice_id: String,
    /// Provider-specific settings (speed, stability, …), a JSON object.
    pub settings: serde_json::Value,
}

/// A piece of synthesised speech: mono PCM16 at `sample_rate`.
#[derive(Debug, Clone, PartialEq)]
pub struct TtsAudio {
    pub samples: Vec<i16>,
    pub sample_rate: u32,
    /// Word end times relative to the first sample of *this piece*, when the
    /// provider reports them.
    pub words: Option<Vec<WordTiming>>,
}

impl TtsAudio {
    pub fn duration_ms(&self) -> u32 {
        (self.samples.len() as u64 * 1000 / u64::from(self.sample_rate.max(1))) as u32
    }
}

/// A voice that streams audio for a piece of text.
pub trait SpeechSynthesizer: Send + Sync {
    fn synthesize(&self, request: TtsRequest) -> BoxStream<Result<TtsAudio, ProviderError>>;
}

/// A transcript of the caller's current utterance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transcript {
    pub text: String,
    /// Final for this segment; partials are replaced by later results.
    pub is_final: bool,
}

/// Audio into a recognition, one utterance at a time.
#[derive(Debug, Clone, PartialEq)]
// Frames travel by value: boxing would allocate on the per-frame hot path.
#[allow(clippy::large_enum_variant)]
pub enum SttInput {
    /// 20 ms of 16 kHz mono PCM16 caller audio.
    Audio(palaver_media::AudioFrame),
    /// The caller stopped speaking: finish the utterance with a final.
    EndOfUtterance,
}

/// Options for one recognition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SttOptions {
    pub model: String,
    /// BCP 47 tag, e.g. `en`.
    pub language: String,
}

/// A live recognition: audio goes in through the sender, transcripts come
/// out of the stream. Dropping both ends it.
pub struct Recognition {
    pub audio: tokio::sync::mpsc::Sender<SttInput>,
    pub transcripts: BoxStream<Result<Transcript, ProviderError>>,
}

impl std::fmt::Debug for Recognition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recognition").finish_non_exhaustive()
    }
}

/// Speech to text. Streaming providers (Deepgram) send partials as audio
/// arrives; per-utterance providers buffer and answer at
/// [`SttInput::EndOfUtterance`].
pub trait SpeechRecognizer: Send + Sync {
    fn start(&self, options: SttOptions) -> Recognition;
}
