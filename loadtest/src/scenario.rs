//! A run described in a TOML file (`palaver-loadtest run --scenario
//! FILE.toml`): a `[voice]` table runs the voice scenario, a `[chat]` table
//! the chat scenario, both together `mixed` (at the same time, against the
//! same server). The tables take the command line's flags, `-` written `_`
//! (`--barge-in-share` is `barge_in_share`); a field left out has the
//! flag's default. Unknown fields are refused, naming the field and where
//! it is. The API key is never in the file: `--api-key` or
//! `PALAVER_API_KEY`.
//!
//! `loadtest/scenarios/mixed.toml` is an example with every field. In short:
//!
//! ```toml
//! url = "http://127.0.0.1:8080"
//!
//! [voice]
//! transport = "ws"        # or "rtc"
//! callers = 50
//! turns = 3
//! input = "spoken"        # or "typed"
//! barge_in_share = 0.3
//!
//! [chat]
//! users = 40
//! rooms = 8
//! messages_per_second = 50
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::chat::{self, ChatConfig};
use crate::report::Report;
use crate::rest::RunError;
use crate::voice::{AssistantShape, TurnInput, VoiceConfig};
use crate::voice_rtc::{self, RtcOptions};
use crate::voice_ws;

/// The whole file.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ScenarioFile {
    /// Server base URL (default `http://127.0.0.1:8080`).
    pub url: Option<String>,
    /// Sample this process (the server) for CPU and RSS.
    pub server_pid: Option<u32>,
    /// The fake providers' base URL, to report their latency.
    pub providers_url: Option<String>,
    /// Also write the report as JSON here.
    pub json: Option<PathBuf>,
    /// Also write the report as a self-contained HTML page here.
    pub html: Option<PathBuf>,
    pub voice: Option<VoiceTable>,
    pub chat: Option<ChatTable>,
}

/// Which transport voice callers use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VoiceTransport {
    /// The WebSocket (`voice-ws`).
    #[default]
    Ws,
    /// WebRTC (`voice-rtc`).
    Rtc,
}

/// `[voice]`: the flags of `voice-ws` and `voice-rtc`.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VoiceTable {
    pub transport: Option<VoiceTransport>,
    pub assistant_id: Option<i64>,
    pub callers: Option<usize>,
    pub turns: Option<u32>,
    pub input: Option<TurnInput>,
    pub utterance: Option<PathBuf>,
    pub pause_ms: Option<u64>,
    pub barge_in_share: Option<f64>,
    pub barge_in_after_frames: Option<usize>,
    pub ramp_per_second: Option<f64>,
    pub max_seconds: Option<u64>,
    pub idle_timeout_seconds: Option<u64>,
    pub message: Option<String>,
    pub interruption: Option<String>,
    /// The assistant the run creates (not with `assistant_id`).
    pub first_message: Option<String>,
    pub end_of_turn_ms: Option<u32>,
    pub min_interruption_ms: Option<u32>,
    /// Callers call again after hanging up, until `max_seconds` (a soak).
    pub repeat_calls: Option<bool>,
    /// Report the server's RSS growth from this many seconds in.
    pub warmup_seconds: Option<u64>,
    /// WebRTC only.
    pub decode_audio: Option<bool>,
    /// WebRTC only.
    pub audio_queue: Option<usize>,
}

/// `[chat]`: the flags of `chat`.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ChatTable {
    pub users: Option<usize>,
    pub rooms: Option<usize>,
    pub messages_per_second: Option<f64>,
    pub messages: Option<u64>,
    pub max_seconds: Option<u64>,
    pub typing_share: Option<f64>,
    pub presence_per_minute: Option<f64>,
    pub drain_seconds: Option<u64>,
    pub message_chars: Option<usize>,
    /// Nodes the users' sockets connect to, round robin (a cluster).
    pub socket_urls: Option<Vec<String>>,
}

/// Why a scenario file cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScenarioError {
    #[error("cannot read the scenario {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// Not TOML, an unknown field, or a field of the wrong type: the
    /// message names it, with its line and column.
    #[error("scenario {path}: {message}")]
    Invalid { path: String, message: String },
    #[error("scenario {0}: it has neither a [voice] nor a [chat] table: nothing to run")]
    Empty(String),
    #[error(
        "scenario {0}: WebRTC options (decode_audio, audio_queue) in [voice] need transport = \"rtc\""
    )]
    RtcOptionsWithoutRtc(String),
}

/// A scenario, ready to run.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// With the transport's options when it is WebRTC.
    pub voice: Option<(VoiceConfig, Option<RtcOptions>)>,
    pub chat: Option<ChatConfig>,
    pub json: Option<PathBuf>,
    pub html: Option<PathBuf>,
}

impl ScenarioFile {
    /// Reads and checks a file.
    pub fn read(path: &Path) -> Result<Self, ScenarioError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: name.clone(),
            source,
        })?;
        Self::parse(&text, &name)
    }

    /// Parses the text of a file named `name`.
    pub fn parse(text: &str, name: &str) -> Result<Self, ScenarioError> {
        let file: ScenarioFile = toml::from_str(text).map_err(|err| ScenarioError::Invalid {
            path: name.to_owned(),
            message: err.to_string().trim_end().to_owned(),
        })?;
        if file.voice.is_none() && file.chat.is_none() {
            return Err(ScenarioError::Empty(name.to_owned()));
        }
        if let Some(voice) = &file.voice
            && voice.transport.unwrap_or_default() != VoiceTransport::Rtc
            && (voice.decode_audio.is_some() || voice.audio_queue.is_some())
        {
            return Err(ScenarioError::RtcOptionsWithoutRtc(name.to_owned()));
        }
        Ok(file)
    }

    /// The runs it describes, with the API key. When both run, the voice
    /// run samples the server (`server_pid`).
    pub fn into_scenario(self, api_key: &str) -> Scenario {
        let base_url = self.url.unwrap_or_else(|| VoiceConfig::default().base_url);
        let both = self.voice.is_some() && self.chat.is_some();
        let voice = self.voice.map(|v| {
            let d = VoiceConfig::default();
            let config = VoiceConfig {
                base_url: base_url.clone(),
                api_key: api_key.to_owned(),
                assistant_id: v.assistant_id,
                callers: v.callers.unwrap_or(d.callers),
                turns: v.turns.unwrap_or(d.turns),
                input: v.input.unwrap_or(d.input),
                utterance: v.utterance,
                pause_between_turns: v
                    .pause_ms
                    .map_or(d.pause_between_turns, Duration::from_millis),
                barge_in_share: v.barge_in_share.unwrap_or(d.barge_in_share),
                barge_in_after_frames: v.barge_in_after_frames.unwrap_or(d.barge_in_after_frames),
                ramp_per_second: v.ramp_per_second.unwrap_or(d.ramp_per_second),
                max_duration: v.max_seconds.map_or(d.max_duration, Duration::from_secs),
                idle_timeout: v
                    .idle_timeout_seconds
                    .map_or(d.idle_timeout, Duration::from_secs),
                message: v.message.unwrap_or(d.message),
                interruption: v.interruption.unwrap_or(d.interruption),
                server_pid: self.server_pid,
                fake_providers_url: self.providers_url.clone(),
                assistant: AssistantShape {
                    first_message: v.first_message,
                    end_of_turn_ms: v.end_of_turn_ms,
                    min_interruption_ms: v.min_interruption_ms,
                },
                repeat_calls: v.repeat_calls.unwrap_or(d.repeat_calls),
                warmup: v.warmup_seconds.map(Duration::from_secs).or(d.warmup),
            };
            let rtc = (v.transport.unwrap_or_default() == VoiceTransport::Rtc).then(|| {
                let d = RtcOptions::default();
                RtcOptions {
                    decode_audio: v.decode_audio.unwrap_or(d.decode_audio),
                    audio_queue: v.audio_queue.unwrap_or(d.audio_queue),
                }
            });
            (config, rtc)
        });
        let chat = self.chat.map(|c| {
            let d = ChatConfig::default();
            ChatConfig {
                base_url: base_url.clone(),
                api_key: api_key.to_owned(),
                users: c.users.unwrap_or(d.users),
                rooms: c.rooms.unwrap_or(d.rooms),
                messages_per_second: c.messages_per_second.unwrap_or(d.messages_per_second),
                messages: c.messages.unwrap_or(d.messages),
                max_duration: c.max_seconds.map_or(d.max_duration, Duration::from_secs),
                typing_share: c.typing_share.unwrap_or(d.typing_share),
                presence_per_minute: c.presence_per_minute.unwrap_or(d.presence_per_minute),
                drain: c.drain_seconds.map_or(d.drain, Duration::from_secs),
                message_chars: c.message_chars.unwrap_or(d.message_chars),
                // In a mixed run the voice run samples the server.
                server_pid: if both { None } else { self.server_pid },
                node_pids: Vec::new(),
                socket_urls: c.socket_urls.unwrap_or_default(),
            }
        });
        Scenario {
            voice,
            chat,
            json: self.json,
            html: self.html,
        }
    }
}

/// Runs a scenario: its voice run, its chat run, or both at once (mixed,
/// one report). Await it inside an actix System: awc (the WebSocket
/// callers, chat) needs one, and webrtc-rs runs on its Tokio runtime.
pub async fn run(scenario: Scenario) -> Result<Report, RunError> {
    let voice = async {
        match scenario.voice {
            Some((config, None)) => Some(voice_ws::run(config).await),
            Some((config, Some(options))) => Some(voice_rtc::run(config, options).await),
            None => None,
        }
    };
    let chat = async {
        match scenario.chat {
            Some(config) => Some(chat::run(config).await),
            None => None,
        }
    };
    match futures_util::future::join(voice, chat).await {
        (Some(voice), Some(chat)) => Ok(Report::merge(voice?, chat?)),
        (Some(only), None) | (None, Some(only)) => only,
        (None, None) => Err(RunError::Config("the scenario runs nothing".into())),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_mixed_scenario_fills_what_it_leaves_out_with_the_flags_defaults() {
        let file = ScenarioFile::parse(
            r#"
            url = "http://127.0.0.1:9000"
            server_pid = 42

            [voice]
            transport = "rtc"
            callers = 50
            input = "typed"
            pause_ms = 250
            decode_audio = true
            first_message = "Hello, front desk."
            end_of_turn_ms = 300

            [chat]
            users = 40
            rooms = 8
            messages_per_second = 12.5
            "#,
            "mixed.toml",
        )
        .unwrap();
        let scenario = file.into_scenario("pk_test");
        let (voice, rtc) = scenario.voice.unwrap();
        assert_eq!(voice.base_url, "http://127.0.0.1:9000");
        assert_eq!(voice.api_key, "pk_test");
        assert_eq!(voice.callers, 50);
        assert_eq!(voice.input, TurnInput::Typed);
        assert_eq!(voice.pause_between_turns, Duration::from_millis(250));
        assert_eq!(voice.turns, VoiceConfig::default().turns);
        assert_eq!(voice.server_pid, Some(42));
        assert_eq!(
            voice.assistant,
            AssistantShape {
                first_message: Some("Hello, front desk.".into()),
                end_of_turn_ms: Some(300),
                min_interruption_ms: None,
            }
        );
        let rtc = rtc.unwrap();
        assert!(rtc.decode_audio);
        assert_eq!(rtc.audio_queue, RtcOptions::default().audio_queue);
        let chat = scenario.chat.unwrap();
        assert_eq!((chat.users, chat.rooms), (40, 8));
        assert_eq!(chat.messages_per_second, 12.5);
        assert_eq!(chat.typing_share, ChatConfig::default().typing_share);
        assert_eq!(chat.server_pid, None, "the voice run samples the server");

        // Alone, each table is its scenario; voice defaults to the WebSocket.
        let voice_only = ScenarioFile::parse("[voice]\ncallers = 3\n", "v.toml")
            .unwrap()
            .into_scenario("k");
        assert!(voice_only.chat.is_none());
        assert!(voice_only.voice.unwrap().1.is_none(), "ws");
    }

    #[test]
    fn the_example_scenario_in_the_repository_parses() {
        let text = include_str!("../scenarios/mixed.toml");
        let scenario = ScenarioFile::parse(text, "mixed.toml")
            .unwrap()
            .into_scenario("k");
        let (voice, rtc) = scenario.voice.unwrap();
        assert_eq!(
            (voice.callers, voice.input, rtc.is_none()),
            (20, TurnInput::Spoken, true)
        );
        assert_eq!(voice.pause_between_turns, Duration::from_millis(500));
        assert_eq!(scenario.chat.unwrap().users, 40);
        assert_eq!(scenario.json, Some(PathBuf::from("mixed.json")));
    }

    #[test]
    fn mistakes_are_refused_naming_the_field_and_the_file() {
        let err = |text: &str| {
            ScenarioFile::parse(text, "bad.toml")
                .unwrap_err()
                .to_string()
        };
        let unknown = err("[voice]\ncalers = 3\n");
        assert!(unknown.contains("bad.toml"), "{unknown}");
        assert!(unknown.contains("unknown field `calers`"), "{unknown}");
        assert!(unknown.contains("line 2"), "{unknown}");
        let wrong_type = err("[chat]\nusers = \"many\"\n");
        assert!(
            wrong_type.contains("users") || wrong_type.contains("line 2"),
            "{wrong_type}"
        );
        assert!(wrong_type.contains("invalid type"), "{wrong_type}");
        let top = err("callers = 3\n[voice]\n");
        assert!(top.contains("unknown field `callers`"), "{top}");
        let bad_input = err("[voice]\ninput = \"sung\"\n");
        assert!(bad_input.contains("sung"), "{bad_input}");
        assert!(err("url = \"http://h\"\n").contains("neither a [voice] nor a [chat]"));
        assert!(err("[voice]\ndecode_audio = true\n").contains("transport = \"rtc\""));
        let missing = ScenarioFile::read(Path::new("/nonexistent/scenario.toml")).unwrap_err();
        assert!(missing.to_string().contains("/nonexistent/scenario.toml"));
    }
}
