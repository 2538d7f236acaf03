//! Wires a stored session to a `SessionActor`: the conversation settings
//! from its assistant, the providers it names, and the storage port over the
//! database.

use std::sync::Arc;

use chrono::{NaiveDateTime, TimeDelta};
use palaver_actors::conversation::{ChatRole, ConversationConfig, EndReason, StoredMessage};
use palaver_actors::ports::{LanguageModel, ProviderError, SttOptions};
use palaver_actors::session::{
    BoxFuture, LlmSetup, SessionSetup, SessionStore, SttSetup, ToClient, TtsSetup,
};

use crate::config::Settings;
use crate::db::{Db, StoreError};
use crate::ids::{OrgId, SessionId};
use crate::model::{LlmProvider, MessageRole, SessionStatus, SttProvider, TtsProvider};
use crate::providers::Providers;
use crate::providers::local::{self, LocalPorts};
use crate::store::assistants::AssistantSettings;
use crate::store::messages::{NewMessage, TurnLatency};
use crate::store::{self};

/// Stores a session's transcript and end as they happen.
#[derive(Debug, Clone)]
pub struct DbSessionStore {
    pub db: Db,
    pub org: OrgId,
    pub session: SessionId,
    /// When the caller connected: message times are offsets from it.
    pub connected_at: NaiveDateTime,
}

fn at(base: NaiveDateTime, ms: u64) -> NaiveDateTime {
    base + TimeDelta::milliseconds(ms as i64)
}

impl SessionStore for DbSessionStore {
    fn save_message(&self, message: StoredMessage) -> BoxFuture<Result<(), String>> {
        let store = self.clone();
        Box::pin(async move {
            store
                .db
                .run(move |c| {
                    let role = match message.role {
                        ChatRole::System => MessageRole::System,
                        ChatRole::User => MessageRole::User,
                        ChatRole::Assistant => MessageRole::Assistant,
                    };
                    let ms = |v: Option<u32>| v.map(|v| v as i32);
                    store::messages::append(
                        c,
                        store.session,
                        &NewMessage {
                            role,
                            content: &message.content,
                            heard_text: message.heard_text.as_deref(),
                            interrupted: message.interrupted,
                            started_at: at(store.connected_at, message.started_at),
                            ended_at: Some(at(store.connected_at, message.ended_at)),
                            latency: TurnLatency {
                                transcript_latency_ms: ms(message.latency.transcript_ms),
                                first_token_latency_ms: ms(message.latency.first_token_ms),
                                first_audio_latency_ms: ms(message.latency.first_audio_ms),
                                voice_to_voice_ms: ms(message.latency.voice_to_voice_ms),
                            },
                        },
                    )
                    .map(drop)
                })
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn session_ended(&self, reason: EndReason) -> BoxFuture<Result<(), String>> {
        let store = self.clone();
        Box::pin(async move {
            let ended = store
                .db
                .run(move |c| {
                    store::sessions::end(
                        c,
                        store.org,
                        store.session,
                        SessionStatus::Ended,
                        reason.as_str(),
                    )
                })
                .await;
            match ended {
                // Already ended through the API: nothing to record.
                Ok(_) | Err(StoreError::InvalidState(_)) => Ok(()),
                Err(err) => Err(err.to_string()),
            }
        })
    }
}

/// Records what a session event says about latency in the Prometheus
/// histograms (buckets set in `telemetry`). Every transport calls this for
/// every event it forwards.
pub fn record_event_metrics(event: &palaver_actors::conversation::Event) {
    use palaver_actors::conversation::Event;
    let seconds = |ms: u32| f64::from(ms) / 1000.0;
    match event {
        // Completed replies only: an interrupted one's stages stop short.
        Event::TurnMetrics {
            latency,
            interrupted: false,
        } => {
            for (stage, value) in [
                ("transcript", latency.transcript_ms),
                ("first_token", latency.first_token_ms),
                ("first_audio", latency.first_audio_ms),
                ("voice_to_voice", latency.voice_to_voice_ms),
            ] {
                if let Some(ms) = value {
                    ::metrics::histogram!("palaver_turn_latency_seconds", "stage" => stage)
                        .record(seconds(ms));
                }
            }
        }
        Event::BargeIn {
            onset_to_decision_ms,
        } => {
            ::metrics::histogram!("palaver_barge_in_decision_latency_seconds")
                .record(seconds(*onset_to_decision_ms));
        }
        Event::Error { code, .. } => {
            ::metrics::counter!("palaver_session_errors_total", "code" => *code).increment(1);
        }
        _ => {}
    }
}

/// The conversation an assistant's settings describe.
pub fn conversation_config(assistant: &AssistantSettings) -> ConversationConfig {
    let ms = |v: i32| u64::try_from(v).unwrap_or(0);
    ConversationConfig {
        system_prompt: assistant.system_prompt.clone(),
        first_message: assistant.first_message.clone(),
        first_message_interruptible: assistant.first_message_interruptible,
        interruptions_enabled: assistant.interruptions_enabled,
        min_interruption_ms: ms(assistant.min_interruption_ms),
        min_interruption_words: usize::try_from(assistant.min_interruption_words).unwrap_or(0),
        end_of_turn_ms: ms(assistant.end_of_turn_ms),
        idle_timeout_ms: ms(assistant.idle_timeout_s) * 1000,
        max_duration_ms: ms(assistant.max_duration_s) * 1000,
        ..ConversationConfig::default()
    }
}

/// What a session could not get, told to the client when it connects.
#[derive(Debug, Default)]
pub struct Degraded {
    /// The voice cannot be used: replies come as text only.
    pub voice: Option<ProviderError>,
    /// Speech to text cannot be used: caller audio is not transcribed.
    pub hearing: Option<ProviderError>,
}

/// The embedded engines a session of `assistant` uses (`speak`: with a
/// voice).
fn local_ports(assistant: &AssistantSettings, speak: bool) -> LocalPorts {
    LocalPorts {
        llm: assistant.llm_provider == LlmProvider::Local,
        stt: assistant.stt_provider == SttProvider::Local,
        tts: speak && assistant.tts_provider == TtsProvider::Local,
    }
}

/// The assistant's language model: its `llm.base_url` overrides
/// `providers.openai_base_url`; the local one is loaded first if needed,
/// off the async threads. Voice sessions and room assistants both get
/// theirs here.
pub async fn language_model(
    settings: &Settings,
    assistant: &AssistantSettings,
) -> Result<Arc<dyn LanguageModel>, ProviderError> {
    local::load(LocalPorts {
        llm: assistant.llm_provider == LlmProvider::Local,
        ..LocalPorts::default()
    })
    .await;
    let name = assistant.llm_provider.as_str();
    match &assistant.llm_base_url {
        Some(base_url) => {
            let mut provider_settings = settings.providers.clone();
            provider_settings.openai_base_url = base_url.clone();
            Providers::language_model_only(&provider_settings, name)
        }
        None => Providers::language_model_only(&settings.providers, name),
    }
}

/// Everything a session needs, or why its language model cannot be used.
/// A voice or speech recognition that cannot be used degrades the session
/// and is reported in [`Degraded`], so the client can say why. The local
/// engines the assistant names are loaded here, off the async threads
/// (a session joining while the server still preloads them waits), the
/// language model first: a session that cannot start loads nothing else.
pub async fn session_setup(
    settings: &Settings,
    assistant: &AssistantSettings,
    speak: bool,
    store: Arc<dyn SessionStore>,
    client: tokio::sync::mpsc::Sender<ToClient>,
) -> Result<(SessionSetup, Degraded), ProviderError> {
    let llm = language_model(settings, assistant).await?;
    // Only for a session that can start: its hearing and voice.
    local::load(local_ports(assistant, speak)).await;
    let voice = Providers::from_settings(&settings.providers);
    let (tts, voice_problem) = if speak {
        match voice.speech_synthesizer(assistant.tts_provider.as_str()) {
            Ok(synthesizer) => (
                Some(TtsSetup {
                    synthesizer,
                    voice_id: assistant.tts_voice_id.clone(),
                    settings: serde_json::from_str(&assistant.tts_settings)
                        .unwrap_or(serde_json::Value::Object(Default::default())),
                }),
                None,
            ),
            Err(err) => (None, Some(err)),
        }
    } else {
        (None, None)
    };
    let (stt, hearing_problem) = match voice.speech_recognizer(assistant.stt_provider.as_str()) {
        Ok(recognizer) => (
            Some(SttSetup {
                recognizer,
                options: SttOptions {
                    model: assistant.stt_model.clone(),
                    language: assistant.stt_language.clone(),
                },
            }),
            None,
        ),
        Err(err) => (None, Some(err)),
    };
    let mut conversation = conversation_config(assistant);
    conversation.reconnect_grace_ms = settings.server.reconnect_grace_s * 1000;
    let setup = SessionSetup {
        conversation,
        llm: LlmSetup {
            model: llm,
            name: assistant.llm_model.clone(),
            temperature: assistant.llm_temperature,
            max_tokens: u32::try_from(assistant.llm_max_tokens).unwrap_or(256),
        },
        tts,
        stt,
        store,
        client,
        on_stopped: None,
    };
    Ok((
        setup,
        Degraded {
            voice: voice_problem,
            hearing: hearing_problem,
        },
    ))
}

/// The Opus encoder settings for the assistant's voice over WebRTC.
pub fn rtc_encoder(settings: &crate::config::RtcSettings) -> palaver_media::codec::EncoderConfig {
    palaver_media::codec::EncoderConfig {
        bitrate_bps: settings.opus_bitrate_bps,
        complexity: settings.opus_complexity,
        mode: match settings.opus_mode {
            crate::config::OpusModeSetting::Voip => palaver_media::codec::OpusMode::Voip,
            crate::config::OpusModeSetting::LowDelay => palaver_media::codec::OpusMode::LowDelay,
        },
        ..Default::default()
    }
}
