//! Adapters that implement the provider ports of `palaver-actors`
//! ([`LanguageModel`], [`SpeechSynthesizer`], [`SpeechRecognizer`]) over
//! real provider APIs, and [`Providers`], the registry that hands them out
//! by name.
//!
//! # Layout
//!
//! - `http_api`: what the HTTP adapters share: the client, the key header,
//!   timeouts, the single retry, error mapping ([`Timeouts`]).
//! - [`openai_api`]: OpenAI's API or a compatible server ([`OpenAiApi`]).
//! - [`openai_llm`]: streamed chat completions ([`OpenAiChat`]).
//! - [`openai_tts`]: streamed PCM speech ([`OpenAiSpeech`]).
//! - [`openai_stt`]: per-utterance transcription ([`OpenAiTranscription`]).
//! - [`deepgram_stt`]: live transcription over a WebSocket ([`DeepgramLive`]).
//! - [`elevenlabs_tts`]: streamed PCM speech with word timings
//!   ([`ElevenLabsSpeech`]).
//! - [`local`]: the embedded engines of `palaver-local`, loaded once per
//!   process ([`LocalEngines`]).
//! - `sse`: the sans-IO server-sent events parser.
//!
//! This module owns provider I/O only: it knows nothing of sessions,
//! storage or HTTP routes. Every adapter is cancelled by dropping the stream
//! it returned. No adapter logs a key or puts one in an error.

pub mod deepgram_stt;
pub mod elevenlabs_tts;
mod http_api;
pub mod local;
pub mod openai_api;
pub mod openai_llm;
pub mod openai_stt;
pub mod openai_tts;
mod sse;

use std::sync::Arc;

use palaver_actors::ports::{LanguageModel, ProviderError, SpeechRecognizer, SpeechSynthesizer};

pub use deepgram_stt::DeepgramLive;
pub use elevenlabs_tts::ElevenLabsSpeech;
pub use http_api::Timeouts;
pub use local::LocalEngines;
pub use openai_api::OpenAiApi;
pub use openai_llm::OpenAiChat;
pub use openai_stt::OpenAiTranscription;
pub use openai_tts::OpenAiSpeech;

use crate::config::ProviderSettings;

/// The cloud provider names [`Providers`] knows. Each offers some of the
/// ports: `openai` all three, `deepgram` speech recognition, `elevenlabs`
/// speech synthesis. `local`, the embedded engines ([`local`]), offers all
/// three and needs no configuration.
pub const PROVIDER_NAMES: &[&str] = &["openai", "deepgram", "elevenlabs"];

/// The configured providers, built once from the settings and shared.
/// Cheap to clone. Asking for a `local` port blocks while its engine
/// loads (a second or so, once per process): from async code, await
/// [`local::load`] first.
#[derive(Clone)]
pub struct Providers {
    /// The OpenAI adapters, or why they cannot be used.
    openai: Result<OpenAiAdapters, ProviderError>,
    /// Deepgram live transcription, or why it cannot be used.
    deepgram: Result<Arc<DeepgramLive>, ProviderError>,
    /// ElevenLabs speech, or why it cannot be used.
    elevenlabs: Result<Arc<ElevenLabsSpeech>, ProviderError>,
}

#[derive(Clone)]
struct OpenAiAdapters {
    chat: Arc<OpenAiChat>,
    speech: Arc<OpenAiSpeech>,
    transcription: Arc<OpenAiTranscription>,
}

impl std::fmt::Debug for Providers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Providers")
            .field("openai", &self.openai.as_ref().map(|_| "configured"))
            .field("deepgram", &self.deepgram.as_ref().map(|_| "configured"))
            .field(
                "elevenlabs",
                &self.elevenlabs.as_ref().map(|_| "configured"),
            )
            .finish()
    }
}

impl Providers {
    /// Builds every provider the settings allow. A provider that is not
    /// configured (no key for the provider's own API) is remembered as
    /// unavailable: asking for it fails with the reason, and the server
    /// still starts.
    pub fn from_settings(settings: &ProviderSettings) -> Self {
        let openai = OpenAiApi::new(settings).map(|api| OpenAiAdapters {
            chat: Arc::new(OpenAiChat::new(api.clone())),
            speech: Arc::new(OpenAiSpeech::new(api.clone(), settings.tts_model.clone())),
            transcription: Arc::new(OpenAiTranscription::new(api, settings.stt_model.clone())),
        });
        let deepgram = DeepgramLive::new(settings).map(Arc::new);
        let elevenlabs = ElevenLabsSpeech::new(settings).map(Arc::new);
        for err in [
            openai.as_ref().err(),
            deepgram.as_ref().err(),
            elevenlabs.as_ref().err(),
        ]
        .into_iter()
        .flatten()
        {
            tracing::info!(%err, "provider not configured");
        }
        Self {
            openai,
            deepgram,
            elevenlabs,
        }
    }

    /// The language model of provider `name` alone, built from `settings`:
    /// for a caller that needs no voice or hearing (a room assistant's
    /// reply, a base URL of its own), without making the other providers'
    /// clients or logging which of them are not configured.
    pub fn language_model_only(
        settings: &ProviderSettings,
        name: &str,
    ) -> Result<Arc<dyn LanguageModel>, ProviderError> {
        match name {
            "openai" => Ok(Arc::new(OpenAiChat::new(OpenAiApi::new(settings)?))),
            "local" => local::engines().language_model(),
            _ => Err(unknown(name, "language model")),
        }
    }

    /// The language model of provider `name` (e.g. `openai`).
    pub fn language_model(&self, name: &str) -> Result<Arc<dyn LanguageModel>, ProviderError> {
        match name {
            "openai" => self
                .openai()
                .map(|a| a.chat.clone() as Arc<dyn LanguageModel>),
            "local" => local::engines().language_model(),
            _ => Err(unknown(name, "language model")),
        }
    }

    /// The speech synthesizer of provider `name`.
    pub fn speech_synthesizer(
        &self,
        name: &str,
    ) -> Result<Arc<dyn SpeechSynthesizer>, ProviderError> {
        match name {
            "openai" => self
                .openai()
                .map(|a| a.speech.clone() as Arc<dyn SpeechSynthesizer>),
            "elevenlabs" => self
                .elevenlabs
                .clone()
                .map(|speech| speech as Arc<dyn SpeechSynthesizer>),
            "local" => local::engines().speech_synthesizer(),
            _ => Err(unknown(name, "speech synthesis")),
        }
    }

    /// The speech recognizer of provider `name`.
    pub fn speech_recognizer(
        &self,
        name: &str,
    ) -> Result<Arc<dyn SpeechRecognizer>, ProviderError> {
        match name {
            "openai" => self
                .openai()
                .map(|a| a.transcription.clone() as Arc<dyn SpeechRecognizer>),
            "deepgram" => self
                .deepgram
                .clone()
                .map(|live| live as Arc<dyn SpeechRecognizer>),
            "local" => local::engines().speech_recognizer(),
            _ => Err(unknown(name, "speech recognition")),
        }
    }

    fn openai(&self) -> Result<&OpenAiAdapters, ProviderError> {
        self.openai.as_ref().map_err(Clone::clone)
    }
}

/// Why `name` cannot give `port`: no such provider, or one without it.
fn unknown(name: &str, port: &str) -> ProviderError {
    let message = if PROVIDER_NAMES.contains(&name) {
        format!("provider `{name}` offers no {port}")
    } else {
        format!(
            "no provider named `{name}`; known: {}, local",
            PROVIDER_NAMES.join(", ")
        )
    };
    ProviderError::Unavailable {
        provider: "providers",
        message,
    }
}
