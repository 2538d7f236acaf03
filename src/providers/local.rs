//! The `local` provider: the embedded engines of `palaver-local`, loaded
//! once per process from the models directory (`PALAVER_MODELS_DIR`, else
//! `models/` under the working directory) and shared by every session.
//!
//! [`LocalEngines`] holds one slot per port: speech recognition (Whisper
//! tiny.en), the language model (SmolLM2-135M-Instruct) and speech
//! synthesis (Piper, espeak-ng as the fallback voice). Each engine loads on
//! its first use, once, and is remembered as the engine or as why it cannot
//! be used (files missing). A missing engine never stops the server:
//! `/readyz` says what is missing ([`readiness`]) and a session that names
//! it is told why. Adding an engine is a `Slot` field, its load in the
//! port's method, and a line each in [`LocalEngines::preload`],
//! [`LocalEngines::readiness`] and [`load`].
//!
//! Model names are not looked up: each port has one engine, so an
//! assistant's `llm.model` / `stt.model` (by default
//! `smollm2-135m-instruct` / `whisper-tiny.en`) are labels only.
//!
//! Loading blocks for a second or so per engine, so it never runs on an
//! async thread: `serve` calls [`preload`], which loads everything on a
//! background thread while the server starts, and a session joining before
//! that finished waits for it in [`load`] (on Tokio's blocking pool, not on
//! an actix worker). The port methods themselves block until the engine is
//! loaded; call them from async code only after [`load`]. `/readyz` never
//! loads.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use palaver_actors::ports::{LanguageModel, ProviderError, SpeechRecognizer, SpeechSynthesizer};
use palaver_local::llm::LocalLlm;
use palaver_local::models::{ModelError, ModelsDir};
use palaver_local::stt::LocalWhisper;
use palaver_local::tts::{LocalSpeech, SpeechOptions};
use serde::Serialize;
use utoipa::ToSchema;

const PROVIDER: &str = "local";

/// Per engine: `ready: …`, `fallback: …` (serving with a lesser engine,
/// and why), `missing: …` (what to do), `failed: …` (the files are there
/// but did not load), `loading`, or `not loaded yet (…)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct LocalReadiness {
    /// Speech synthesis (Piper, espeak-ng as the fallback).
    pub tts: String,
    /// The language model.
    pub llm: String,
    /// Speech recognition.
    pub stt: String,
}

/// One engine, loaded once: the engine or why not, and its `/readyz` line.
struct Slot<T: ?Sized> {
    loaded: OnceLock<(Result<Arc<T>, ProviderError>, String)>,
}

impl<T: ?Sized> Slot<T> {
    const fn new() -> Self {
        Self {
            loaded: OnceLock::new(),
        }
    }

    fn get_or_load(
        &self,
        load: impl FnOnce() -> (Result<Arc<T>, ProviderError>, String),
    ) -> Result<Arc<T>, ProviderError> {
        self.loaded.get_or_init(load).0.clone()
    }

    fn is_loaded(&self) -> bool {
        self.loaded.get().is_some()
    }

    fn status(&self, loading: bool) -> String {
        match self.loaded.get() {
            Some((_, status)) => status.clone(),
            None if loading => "loading".into(),
            None => "not loaded yet (loads when a session first names `local`)".into(),
        }
    }
}

/// The embedded engines, each loaded on first use.
pub struct LocalEngines {
    models: ModelsDir,
    speech: Slot<dyn SpeechSynthesizer>,
    hearing: Slot<dyn SpeechRecognizer>,
    language: Slot<dyn LanguageModel>,
    /// Set by [`LocalEngines::preload`]: slots not yet filled are loading.
    preloading: AtomicBool,
}

impl std::fmt::Debug for LocalEngines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalEngines")
            .field("models", &self.models)
            .field("readiness", &self.readiness())
            .finish_non_exhaustive()
    }
}

impl LocalEngines {
    /// Engines from `models`; nothing loads until first use.
    pub fn new(models: ModelsDir) -> Self {
        Self {
            models,
            speech: Slot::new(),
            hearing: Slot::new(),
            language: Slot::new(),
            preloading: AtomicBool::new(false),
        }
    }

    /// The Piper voice (espeak-ng's when Piper cannot load).
    pub fn speech_synthesizer(&self) -> Result<Arc<dyn SpeechSynthesizer>, ProviderError> {
        self.speech.get_or_load(|| {
            match LocalSpeech::load(&self.models, SpeechOptions::default()) {
                Ok(speech) => {
                    tracing::info!(status = %speech.status(), "local speech loaded");
                    let status = speech.status();
                    (Ok(Arc::new(speech) as Arc<dyn SpeechSynthesizer>), status)
                }
                Err(err) => {
                    tracing::warn!(%err, "local speech is not available");
                    (Err(unavailable(err.to_string())), format!("missing: {err}"))
                }
            }
        })
    }

    /// SmolLM2-135M-Instruct (whatever model name the request gives).
    pub fn language_model(&self) -> Result<Arc<dyn LanguageModel>, ProviderError> {
        self.language
            .get_or_load(|| match LocalLlm::load(&self.models) {
                Ok(llm) => {
                    let file = llm
                        .path()
                        .file_name()
                        .map(|f| f.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    tracing::info!(%file, "local language model loaded");
                    (
                        Ok(Arc::new(llm) as Arc<dyn LanguageModel>),
                        format!("ready: smollm2-135m-instruct ({file})"),
                    )
                }
                Err(err) => not_loaded("language model", &err),
            })
    }

    /// Whisper tiny.en (English only, whatever model name the session
    /// gives): the process's one [`LocalWhisper`].
    pub fn speech_recognizer(&self) -> Result<Arc<dyn SpeechRecognizer>, ProviderError> {
        self.hearing
            .get_or_load(|| match LocalWhisper::load(&self.models) {
                Ok(whisper) => {
                    tracing::info!(config = ?whisper.config(), "local speech recognition loaded");
                    (
                        Ok(Arc::new(whisper) as Arc<dyn SpeechRecognizer>),
                        "ready: whisper tiny.en".to_owned(),
                    )
                }
                Err(err) => not_loaded("speech recognition", &err),
            })
    }

    /// Loads every engine now (the caller waits).
    pub fn preload(&self) {
        self.preloading.store(true, Ordering::Release);
        // A failure is remembered in the slot and shown by `readiness`.
        let _ = self.speech_synthesizer();
        let _ = self.speech_recognizer();
        let _ = self.language_model();
    }

    /// Whether every engine `ports` names has loaded (or failed to).
    fn is_loaded(&self, ports: LocalPorts) -> bool {
        (!ports.llm || self.language.is_loaded())
            && (!ports.stt || self.hearing.is_loaded())
            && (!ports.tts || self.speech.is_loaded())
    }

    /// Loads the engines `ports` names (the caller waits).
    fn load(&self, ports: LocalPorts) {
        if ports.tts {
            let _ = self.speech_synthesizer();
        }
        if ports.stt {
            let _ = self.speech_recognizer();
        }
        if ports.llm {
            let _ = self.language_model();
        }
    }

    /// Each engine's state. Never blocks and never loads.
    pub fn readiness(&self) -> LocalReadiness {
        let loading = self.preloading.load(Ordering::Acquire);
        LocalReadiness {
            tts: self.speech.status(loading),
            llm: self.language.status(loading),
            stt: self.hearing.status(loading),
        }
    }
}

/// Which of the local engines a caller is about to use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LocalPorts {
    pub llm: bool,
    pub stt: bool,
    pub tts: bool,
}

/// The process's engines (models from `PALAVER_MODELS_DIR` or `models/`).
pub fn engines() -> &'static LocalEngines {
    static ENGINES: OnceLock<LocalEngines> = OnceLock::new();
    ENGINES.get_or_init(|| LocalEngines::new(ModelsDir::from_env()))
}

/// Starts loading every engine on a background thread, once.
pub fn preload() {
    static STARTED: AtomicBool = AtomicBool::new(false);
    if STARTED.swap(true, Ordering::AcqRel) {
        return;
    }
    let started = std::thread::Builder::new()
        .name("palaver-local-load".into())
        .spawn(|| engines().preload());
    if let Err(err) = started {
        tracing::warn!(%err, "cannot preload the local engines; the first session loads them");
    }
}

/// Makes sure the process's engines that `ports` names are loaded (or
/// known not to load), so that asking [`crate::providers::Providers`] for
/// them afterwards does not block. Returns at once when they are; else
/// loads (or waits for [`preload`]) on Tokio's blocking pool, never on the
/// calling async thread.
pub async fn load(ports: LocalPorts) {
    if engines().is_loaded(ports) {
        return;
    }
    if let Err(err) = tokio::task::spawn_blocking(move || engines().load(ports)).await {
        // The port methods load (blocking) on first use instead.
        tracing::warn!(%err, "loading the local engines failed");
    }
}

/// What `/readyz` reports for the process's engines.
pub fn readiness() -> LocalReadiness {
    engines().readiness()
}

fn unavailable(message: String) -> ProviderError {
    ProviderError::Unavailable {
        provider: PROVIDER,
        message,
    }
}

/// Why `port`'s engine did not load: the error a session gets, and the
/// `/readyz` line (what to run, for missing files).
fn not_loaded<T: ?Sized>(port: &str, err: &ModelError) -> (Result<Arc<T>, ProviderError>, String) {
    tracing::warn!(%err, "local {port} is not available");
    let status = match err {
        ModelError::Missing { .. } | ModelError::Program { .. } => format!("missing: {err}"),
        ModelError::Invalid { .. } => format!("failed: {err}"),
    };
    (Err(unavailable(format!("{port}: {err}"))), status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_models_the_voice_falls_back_and_the_rest_says_what_to_fetch() {
        let engines = LocalEngines::new(ModelsDir::new("/nonexistent/palaver-models"));
        let readiness = engines.readiness();
        for status in [&readiness.tts, &readiness.llm, &readiness.stt] {
            assert!(status.starts_with("not loaded yet"), "{readiness:?}");
        }
        let all = LocalPorts {
            llm: true,
            stt: true,
            tts: true,
        };
        assert!(!engines.is_loaded(all));

        // Asking for one port loads that one only.
        let err = engines.language_model().err().expect("no model files");
        assert_eq!(err.code(), "provider_unavailable");
        assert!(err.to_string().contains("scripts/fetch-models.sh"), "{err}");
        assert!(engines.readiness().tts.starts_with("not loaded yet"));
        assert!(engines.is_loaded(LocalPorts {
            llm: true,
            ..LocalPorts::default()
        }));

        engines.preload();
        assert!(engines.is_loaded(all));
        let readiness = engines.readiness();
        // espeak-ng is installed wherever the tests run (scripts/setup-deps.sh).
        assert!(
            readiness.tts.starts_with("fallback: espeak-ng")
                && readiness.tts.contains("scripts/fetch-models.sh"),
            "{readiness:?}"
        );
        for status in [&readiness.llm, &readiness.stt] {
            assert!(
                status.starts_with("missing: ") && status.contains("scripts/fetch-models.sh"),
                "{readiness:?}"
            );
        }
        assert!(readiness.stt.contains("whisper-tiny-en"), "{readiness:?}");
        assert!(readiness.llm.contains("SmolLM2"), "{readiness:?}");
        assert!(engines.speech_synthesizer().is_ok());
        let err = engines.speech_recognizer().err().expect("no model files");
        assert!(err.to_string().contains("speech recognition"), "{err}");
    }
}
