//! Typed settings: embedded defaults, an optional TOML file (`--config`), then
//! environment overrides. Owns nothing at run time; everything else reads it.
//!
//! Every field can be overridden by `PALAVER_<SECTION>_<FIELD>` (for example
//! `PALAVER_SERVER_BIND=0.0.0.0:8080`, `PALAVER_LOG_FORMAT=json`). The
//! conventional `DATABASE_URL`, `REDIS_URL`, `OPENAI_API_KEY`,
//! `DEEPGRAM_API_KEY` and `ELEVENLABS_API_KEY` are honoured too. Unknown
//! keys, in the file or in a `PALAVER_*` variable naming a known section,
//! are rejected with a message that says where they came from.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Sections a `PALAVER_<SECTION>_<FIELD>` variable may name.
const SECTIONS: &[&str] = &[
    "server",
    "database",
    "redis",
    "auth",
    "limits",
    "log",
    "providers",
    "rtc",
];

/// Variables with this prefix belong to the test harness, not to the server.
const TEST_ENV_PREFIX: &str = "PALAVER_TEST_";

/// A value that must never appear in logs or responses.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself; call only where it is used, never to log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(**redacted**)")
    }
}

/// All of Palaver's settings.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub redis: RedisSettings,
    pub auth: AuthSettings,
    pub limits: LimitSettings,
    pub log: LogSettings,
    pub providers: ProviderSettings,
    pub rtc: RtcSettings,
}

/// The HTTP listener.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// Address the HTTP API listens on.
    pub bind: SocketAddr,
    /// Base URL clients use to reach this node; used to build the WebRTC and
    /// WebSocket URLs handed out with a session. Defaults to `http://{bind}`.
    pub public_url: Option<String>,
    /// HTTP worker threads; 0 means one per core.
    pub workers: usize,
    /// Seconds in-flight requests get to finish after SIGTERM/SIGINT, once
    /// the calls have drained (`drain_timeout_s`).
    pub shutdown_timeout_s: u64,
    /// After SIGTERM/SIGINT, seconds the calls in progress get to end by
    /// themselves (no new sessions, `/readyz` 503) before each hears a
    /// short goodbye and ends with reason `server-shutdown`.
    pub drain_timeout_s: u64,
    /// A caller whose connection drops (without hanging up) may rejoin the
    /// session with its join token, over either transport, for this long;
    /// the session then ends with reason `connection-lost`. 0 ends it at
    /// once (reason `hang-up`).
    pub reconnect_grace_s: u64,
    /// Largest accepted request body, in bytes (larger bodies get 413).
    pub body_limit_bytes: usize,
    /// Longest a request body may take to arrive, from the first read to
    /// the last byte; slower ones get 408 and their connection is closed
    /// (a client trickling a byte at a time cannot hold a connection).
    pub body_read_timeout_ms: u64,
    /// Addresses of reverse proxies whose `Forwarded` / `X-Forwarded-*`
    /// headers are believed when building the session URLs handed out
    /// (without `public_url`). From anyone else those headers, and `Host`,
    /// are ignored: the URLs name the address the client connected to.
    pub trusted_proxies: Vec<IpAddr>,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            public_url: None,
            workers: 0,
            shutdown_timeout_s: 30,
            drain_timeout_s: 60,
            reconnect_grace_s: 20,
            body_limit_bytes: 256 * 1024,
            body_read_timeout_ms: 10_000,
            trusted_proxies: Vec::new(),
        }
    }
}

impl ServerSettings {
    pub fn public_url(&self) -> String {
        match &self.public_url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => format!("http://{}", self.bind),
        }
    }
}

/// WebRTC media: one UDP socket for every caller (ICE-lite, host candidate).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RtcSettings {
    /// The UDP socket every WebRTC peer's media goes through. Port 0 picks a
    /// free one; in production fix the port (e.g. `0.0.0.0:3478`) and open
    /// it in the firewall.
    pub bind: SocketAddr,
    /// The address callers reach the socket on, put in the ICE candidate.
    /// Required when `bind` is a wildcard (`0.0.0.0`) or behind 1:1 NAT.
    pub public_ip: Option<IpAddr>,
    /// Opus bitrate of the assistant's voice, in bit/s.
    pub opus_bitrate_bps: i32,
    /// libopus complexity 0..=10 for the assistant's voice: CPU against
    /// quality (0 costs about a third of 5).
    pub opus_complexity: u8,
    /// `voip`: SILK with in-band FEC, robust to packet loss; `low-delay`:
    /// CELT only, about a quarter of the CPU and 4 ms less delay, but a lost
    /// packet can only be concealed (see BENCHMARKS.md, media path).
    pub opus_mode: OpusModeSetting,
    /// A caller whose ICE and DTLS have not completed this long after the
    /// answer went out is hung up (reason `connect-timeout`), so an offer
    /// that never connects does not hold a session open.
    pub connect_timeout_ms: u64,
}

/// See [`RtcSettings::opus_mode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OpusModeSetting {
    #[default]
    Voip,
    LowDelay,
}

impl Default for RtcSettings {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            public_ip: None,
            opus_bitrate_bps: 32_000,
            opus_complexity: 5,
            opus_mode: OpusModeSetting::Voip,
            connect_timeout_ms: 15_000,
        }
    }
}

/// Storage: SQLite by default, Postgres when `url` is `postgres://…`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    /// `postgres://…` for Postgres; unset (or `sqlite://path`) for SQLite.
    pub url: Option<Secret>,
    /// SQLite database file, used when `url` is unset.
    pub sqlite_path: PathBuf,
    /// Connections kept by the pool.
    pub pool_size: u32,
    /// Seconds to wait for a free connection before answering 503.
    pub pool_timeout_s: u64,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: None,
            sqlite_path: PathBuf::from("data/palaver.db"),
            pool_size: 8,
            pool_timeout_s: 5,
        }
    }
}

/// Cluster routing; single node when `url` is unset.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisSettings {
    /// `redis://host:port/db`.
    pub url: Option<Secret>,
    /// This node's name in the cluster; unset: a random one at every start.
    pub node_id: Option<String>,
    /// The base URL the other nodes reach this node's HTTP at (a rejoin of
    /// a call running here that lands elsewhere is routed to it); unset:
    /// `http://` and the address `server.bind` bound.
    pub node_url: Option<String>,
    /// How often this node renews its registration, its users' presence and
    /// its live sessions in Redis (and looks for nodes that died).
    pub heartbeat_ms: u64,
    /// A node that has not renewed its registration for this long is dead:
    /// its users go offline and its sessions lose their owner.
    pub node_ttl_ms: u64,
}

impl Default for RedisSettings {
    fn default() -> Self {
        Self {
            url: None,
            node_id: None,
            node_url: None,
            heartbeat_ms: 5_000,
            node_ttl_ms: 15_000,
        }
    }
}

/// Tokens for users and browsers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// HMAC key for JWTs. When unset, one is generated once and kept in
    /// `jwt_secret_file` so tokens survive restarts of a single node; set it
    /// explicitly (the same on every node) in a cluster.
    pub jwt_secret: Option<Secret>,
    /// Where the generated JWT key is kept when `jwt_secret` is unset.
    pub jwt_secret_file: PathBuf,
    /// Whether anyone may create an organization with `POST /v1/auth/signup`.
    pub allow_signup: bool,
    /// Lifetime of a user's access token.
    pub access_token_ttl_s: u64,
    /// Lifetime of a user's refresh token.
    pub refresh_token_ttl_s: u64,
    /// Lifetime of the join token a browser gets for one session.
    pub session_token_ttl_s: u64,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            jwt_secret: None,
            jwt_secret_file: PathBuf::from("data/jwt.key"),
            allow_signup: true,
            access_token_ttl_s: 15 * 60,
            refresh_token_ttl_s: 30 * 24 * 3600,
            session_token_ttl_s: 10 * 60,
        }
    }
}

/// Abuse limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitSettings {
    /// Sustained requests per second per API key or user.
    pub requests_per_second: u32,
    /// Requests a key may make at once above the sustained rate.
    pub burst: u32,
    /// Sessions an organization may have open (created or active) at once.
    pub max_open_sessions_per_org: u32,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            requests_per_second: 20,
            burst: 40,
            max_open_sessions_per_org: 100,
        }
    }
}

/// Log output.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    /// `text` or `json`.
    pub format: LogFormat,
    /// A tracing filter, e.g. `info` or `palaver=debug,actix_web=info`;
    /// `RUST_LOG` wins when set.
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".to_owned(),
        }
    }
}

/// Speech-to-text, language model and text-to-speech providers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProviderSettings {
    /// Bearer key for the OpenAI API (`OPENAI_API_KEY` is honoured too).
    /// Required when `openai_base_url` is OpenAI's own; optional for an
    /// OpenAI-compatible server that wants no key.
    pub openai_api_key: Option<Secret>,
    /// Base URL of the OpenAI API or of a compatible server (vLLM, Ollama,
    /// LocalAI…), up to and including the version, e.g. `/v1`.
    pub openai_base_url: String,
    /// Longest one provider call may take from sending the request to its
    /// last byte: a whole streamed reply, a whole synthesis, the
    /// transcription of one utterance.
    pub request_timeout_ms: u64,
    /// Longest wait for the first byte of a streamed reply or synthesis,
    /// connecting included (also the connect timeout of every call).
    pub first_byte_timeout_ms: u64,
    /// Longest silence between two pieces of a streamed reply or synthesis.
    pub idle_timeout_ms: u64,
    /// Text-to-speech model, e.g. `tts-1`, `tts-1-hd`, `gpt-4o-mini-tts`.
    pub tts_model: String,
    /// Speech-to-text model used when a session names none, e.g.
    /// `whisper-1`, `gpt-4o-mini-transcribe`.
    pub stt_model: String,
    /// Key for Deepgram's live transcription (`DEEPGRAM_API_KEY` is
    /// honoured too). Required when `deepgram_url` is Deepgram's own;
    /// optional for a self-hosted Deepgram that wants none.
    pub deepgram_api_key: Option<Secret>,
    /// Deepgram's live transcription WebSocket, without a query:
    /// `wss://api.deepgram.com/v1/listen`, or a self-hosted one.
    pub deepgram_url: String,
    /// Key for ElevenLabs' speech API (`ELEVENLABS_API_KEY` is honoured
    /// too). Required when `elevenlabs_base_url` is ElevenLabs' own.
    pub elevenlabs_api_key: Option<Secret>,
    /// Base URL of the ElevenLabs API, up to and including the version,
    /// e.g. `/v1`.
    pub elevenlabs_base_url: String,
    /// ElevenLabs text-to-speech model, e.g. `eleven_flash_v2_5`,
    /// `eleven_turbo_v2_5`, `eleven_multilingual_v2`.
    pub elevenlabs_model: String,
    /// Load the embedded engines (Whisper, SmolLM2, Piper: ~2 s of both
    /// cores and ~450 MiB) in the background when `serve` starts. Off, the
    /// first session on a `local` provider loads what it needs (that call
    /// waits); a node whose assistants all use hosted providers never does.
    pub preload_local: bool,
}

impl Default for ProviderSettings {
    fn default() -> Self {
        Self {
            openai_api_key: None,
            openai_base_url: "https://api.openai.com/v1".to_owned(),
            request_timeout_ms: 60_000,
            first_byte_timeout_ms: 10_000,
            idle_timeout_ms: 10_000,
            tts_model: "tts-1".to_owned(),
            stt_model: "whisper-1".to_owned(),
            deepgram_api_key: None,
            deepgram_url: "wss://api.deepgram.com/v1/listen".to_owned(),
            elevenlabs_api_key: None,
            elevenlabs_base_url: "https://api.elevenlabs.io/v1".to_owned(),
            elevenlabs_model: "eleven_flash_v2_5".to_owned(),
            preload_local: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Why the settings could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The `--config` file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("config file {path} is not valid TOML: {message}")]
    Parse { path: PathBuf, message: String },
    /// An environment variable names a field that does not exist.
    #[error(
        "environment variable {var} names no setting: section `{section}` has no field `{field}`"
    )]
    UnknownEnvField {
        var: String,
        section: String,
        field: String,
    },
    /// The merged settings do not fit the schema (unknown key, wrong type).
    #[error("invalid settings ({origin}): {message}")]
    Invalid { origin: String, message: String },
}

impl Settings {
    /// Defaults, then the file (if any), then the environment.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut tree =
            toml::Table::try_from(Settings::default()).map_err(|e| ConfigError::Invalid {
                origin: "defaults".into(),
                message: e.to_string(),
            })?;
        let mut origin = "defaults".to_owned();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?;
            let file_table: toml::Table =
                text.parse()
                    .map_err(|e: toml::de::Error| ConfigError::Parse {
                        path: path.to_owned(),
                        message: e.message().to_owned(),
                    })?;
            // Validate the file on its own first so an unknown key is blamed on it.
            Settings::deserialize(toml::Value::Table(file_table.clone())).map_err(|e| {
                ConfigError::Invalid {
                    origin: format!("config file {}", path.display()),
                    message: e.message().to_owned(),
                }
            })?;
            merge(&mut tree, file_table);
            origin = format!("config file {} and environment", path.display());
        }
        apply_env(&mut tree, env)?;
        Settings::deserialize(toml::Value::Table(tree)).map_err(|e| ConfigError::Invalid {
            origin,
            message: e.message().to_owned(),
        })
    }

    /// True when storage is Postgres.
    pub fn uses_postgres(&self) -> bool {
        self.database.url.as_ref().is_some_and(|url| {
            let url = url.expose();
            url.starts_with("postgres://") || url.starts_with("postgresql://")
        })
    }
}

fn merge(base: &mut toml::Table, overlay: toml::Table) {
    for (key, value) in overlay {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(base_table)), toml::Value::Table(overlay_table)) => {
                merge(base_table, overlay_table)
            }
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

fn apply_env(
    tree: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    for (var, value) in env {
        let (section, field) = match var.as_str() {
            "DATABASE_URL" => ("database".to_owned(), "url".to_owned()),
            "REDIS_URL" => ("redis".to_owned(), "url".to_owned()),
            "OPENAI_API_KEY" => ("providers".to_owned(), "openai_api_key".to_owned()),
            "DEEPGRAM_API_KEY" => ("providers".to_owned(), "deepgram_api_key".to_owned()),
            "ELEVENLABS_API_KEY" => ("providers".to_owned(), "elevenlabs_api_key".to_owned()),
            _ => {
                let Some(rest) = var.strip_prefix("PALAVER_") else {
                    continue;
                };
                if var.starts_with(TEST_ENV_PREFIX) {
                    continue;
                }
                let rest = rest.to_ascii_lowercase();
                let Some(section) = SECTIONS
                    .iter()
                    .find(|s| rest.starts_with(&format!("{s}_")))
                    .copied()
                else {
                    continue;
                };
                (section.to_owned(), rest[section.len() + 1..].to_owned())
            }
        };
        let Some(toml::Value::Table(section_table)) = tree.get_mut(&section) else {
            continue;
        };
        let value = match section_table.get(&field) {
            Some(default) => typed_like(default, &value).ok_or_else(|| ConfigError::Invalid {
                origin: format!("environment variable {var}"),
                message: format!("expected {}, got `{value}`", default.type_str()),
            })?,
            None if optional_field(&section, &field) => toml::Value::String(value),
            None => {
                return Err(ConfigError::UnknownEnvField {
                    var,
                    section,
                    field,
                });
            }
        };
        section_table.insert(field, value);
    }
    Ok(())
}

/// Optional fields are absent from the serialized defaults, so list them.
fn optional_field(section: &str, field: &str) -> bool {
    matches!(
        (section, field),
        ("server", "public_url")
            | ("database", "url")
            | ("redis", "url")
            | ("redis", "node_id")
            | ("redis", "node_url")
            | ("auth", "jwt_secret")
            | ("providers", "openai_api_key")
            | ("providers", "deepgram_api_key")
            | ("providers", "elevenlabs_api_key")
            | ("rtc", "public_ip")
    )
}

/// An environment value as TOML, typed like the field's default: a port
/// stays a number and a numeric-looking secret stays a string.
fn typed_like(default: &toml::Value, raw: &str) -> Option<toml::Value> {
    Some(match default {
        toml::Value::Integer(_) => toml::Value::Integer(raw.trim().parse().ok()?),
        toml::Value::Float(_) => toml::Value::Float(raw.trim().parse().ok()?),
        toml::Value::Boolean(_) => toml::Value::Boolean(raw.trim().parse().ok()?),
        _ => toml::Value::String(raw.to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_serve_sqlite_on_loopback() {
        let s = Settings::load(None, env(&[])).expect("defaults load");
        assert_eq!(s.server.bind.to_string(), "127.0.0.1:8080");
        assert!(!s.uses_postgres());
        assert_eq!(s.database.sqlite_path, PathBuf::from("data/palaver.db"));
    }

    #[test]
    fn env_overrides_file_and_conventional_urls_are_honoured() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("palaver.toml");
        std::fs::write(&path, "[server]\nbind = \"127.0.0.1:9000\"\nworkers = 3\n").expect("write");
        let s = Settings::load(
            Some(&path),
            env(&[
                ("PALAVER_SERVER_WORKERS", "5"),
                ("PALAVER_LOG_FORMAT", "json"),
                ("DATABASE_URL", "postgres://u@localhost/db"),
                ("PALAVER_AUTH_JWT_SECRET", "s3cret"),
                ("PALAVER_TEST_DATABASE_URL", "ignored"),
            ]),
        )
        .expect("load");
        assert_eq!(s.server.bind.port(), 9000);
        assert_eq!(s.server.workers, 5);
        assert_eq!(s.log.format, LogFormat::Json);
        assert!(s.uses_postgres());
        assert_eq!(
            s.auth.jwt_secret.as_ref().map(Secret::expose),
            Some("s3cret")
        );
    }

    #[test]
    fn unknown_file_key_is_rejected_naming_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "[server]\nbnid = \"x\"\n").expect("write");
        let err = Settings::load(Some(&path), env(&[]))
            .expect_err("must fail")
            .to_string();
        assert!(err.contains("bad.toml"), "{err}");
        assert!(err.contains("bnid"), "{err}");
    }

    #[test]
    fn unknown_env_field_is_rejected_naming_the_variable() {
        let err = Settings::load(None, env(&[("PALAVER_SERVER_BNID", "x")]))
            .expect_err("must fail")
            .to_string();
        assert!(err.contains("PALAVER_SERVER_BNID"), "{err}");
    }

    #[test]
    fn wrongly_typed_env_value_is_rejected_naming_the_variable() {
        let err = Settings::load(None, env(&[("PALAVER_SERVER_WORKERS", "many")]))
            .expect_err("must fail")
            .to_string();
        assert!(
            err.contains("PALAVER_SERVER_WORKERS") && err.contains("integer"),
            "{err}"
        );
    }

    #[test]
    fn env_values_take_the_type_of_their_field() {
        let s = Settings::load(
            None,
            env(&[
                ("PALAVER_AUTH_JWT_SECRET", "123456"),
                ("PALAVER_AUTH_ALLOW_SIGNUP", "false"),
            ]),
        )
        .expect("load");
        assert_eq!(
            s.auth.jwt_secret.as_ref().map(Secret::expose),
            Some("123456")
        );
        assert!(!s.auth.allow_signup);
    }

    #[test]
    fn secrets_are_redacted_in_debug_output() {
        let s = Settings::load(
            None,
            env(&[
                ("DATABASE_URL", "postgres://u:hunter2@h/db"),
                ("PALAVER_AUTH_JWT_SECRET", "k"),
            ]),
        )
        .expect("load");
        let printed = format!("{s:?}");
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(printed.contains("redacted"));
    }
}
