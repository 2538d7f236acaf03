//! What the OpenAI adapters share: one pooled HTTP client, the base URL and
//! bearer key, the timeouts, the single retry, and turning every failure
//! into a [`ProviderError`].
//!
//! The timeouts of one call:
//! - *first byte*: connecting, the response head and the first body byte
//!   of a streamed answer, per attempt;
//! - *idle*: the silence between two body pieces once streaming started;
//! - *request*: the whole call, retry and streaming included.
//!
//! A call is retried once, and only when nothing of its answer was used:
//! the request could not be sent (connection refused, reset before the
//! head) or the head said 5xx or 429. Never after a body byte reached the
//! caller.

use std::time::Duration;

use bytes::Bytes;
use palaver_actors::ports::ProviderError;
use reqwest::StatusCode;
use tokio::time::{Instant, timeout_at};

use crate::config::{ProviderSettings, Secret};

/// The `provider` of every error these adapters report.
pub(crate) const PROVIDER: &str = "openai";

/// OpenAI's own host, where a key is mandatory.
const OPENAI_HOST: &str = "api.openai.com";

/// Pause before the one retry, so a provider shedding load gets a moment.
const RETRY_BACKOFF: Duration = Duration::from_millis(200);

/// Most of an error body read to find its message.
const ERROR_BODY_LIMIT: usize = 16 * 1024;

/// Longest provider message passed on in an error.
const ERROR_MESSAGE_CHARS: usize = 500;

/// The time limits of one provider call (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub request: Duration,
    pub first_byte: Duration,
    pub idle: Duration,
}

impl Timeouts {
    pub fn from_settings(settings: &ProviderSettings) -> Self {
        Self {
            request: Duration::from_millis(settings.request_timeout_ms),
            first_byte: Duration::from_millis(settings.first_byte_timeout_ms),
            idle: Duration::from_millis(settings.idle_timeout_ms),
        }
    }
}

/// A configured OpenAI-compatible API. Cheap to clone: clones share the
/// connection pool.
#[derive(Debug, Clone)]
pub struct OpenAiApi {
    client: reqwest::Client,
    /// Without a trailing slash; paths are appended as `/chat/completions`.
    base_url: String,
    api_key: Option<Secret>,
    timeouts: Timeouts,
}

impl OpenAiApi {
    /// Checks the settings and builds the HTTP client. Fails with
    /// [`ProviderError::Unavailable`] when the base URL is not a URL, or is
    /// OpenAI's own and no key is set.
    pub fn new(settings: &ProviderSettings) -> Result<Self, ProviderError> {
        let base_url = settings.openai_base_url.trim_end_matches('/').to_owned();
        let parsed = reqwest::Url::parse(&base_url).map_err(|e| ProviderError::Unavailable {
            provider: PROVIDER,
            message: format!("providers.openai_base_url `{base_url}` is not a URL: {e}"),
        })?;
        let api_key = settings
            .openai_api_key
            .clone()
            .filter(|key| !key.expose().trim().is_empty());
        if api_key.is_none() && parsed.host_str() == Some(OPENAI_HOST) {
            return Err(ProviderError::Unavailable {
                provider: PROVIDER,
                message: "no API key: set OPENAI_API_KEY or providers.openai_api_key".to_owned(),
            });
        }
        let timeouts = Timeouts::from_settings(settings);
        let client = reqwest::Client::builder()
            .connect_timeout(timeouts.first_byte)
            .build()
            .map_err(|e| ProviderError::Unavailable {
                provider: PROVIDER,
                message: format!("cannot build the HTTP client: {}", describe(&e)),
            })?;
        Ok(Self {
            client,
            base_url,
            api_key,
            timeouts,
        })
    }

    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    /// A `POST` to `path` (e.g. `/chat/completions`) with the bearer key.
    pub(crate) fn post(&self, path: &str) -> reqwest::RequestBuilder {
        let request = self.client.post(format!("{}{path}", self.base_url));
        match &self.api_key {
            // `bearer_auth` marks the header sensitive, so it is never logged.
            Some(key) => request.bearer_auth(key.expose()),
            None => request,
        }
    }

    /// Sends the request `build` makes, retrying once as the module docs
    /// say, and returns a successful response. The head must arrive within
    /// `head_within` of each attempt (and within the request timeout of
    /// `call_started`); a non-2xx head becomes [`ProviderError::Status`]
    /// with the provider's message.
    pub(crate) async fn send(
        &self,
        call_started: Instant,
        head_within: Duration,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<Sent, ProviderError> {
        let mut retried = false;
        loop {
            let attempt_started = Instant::now();
            let (deadline, after_ms) =
                self.bounded(call_started, attempt_started + head_within, head_within);
            let why_retry = match timeout_at(deadline, build().send()).await {
                Err(_) => return Err(timeout(after_ms)),
                Ok(Ok(response)) if response.status().is_success() => {
                    return Ok(Sent {
                        response,
                        attempt_started,
                    });
                }
                Ok(Ok(response)) => {
                    let status = response.status();
                    if retried
                        || !(status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS)
                    {
                        return Err(self.status_error(response, call_started).await);
                    }
                    format!("HTTP {status}")
                }
                Ok(Err(err)) if err.is_builder() => {
                    return Err(ProviderError::Unavailable {
                        provider: PROVIDER,
                        message: format!("cannot build the request: {}", describe(&err)),
                    });
                }
                Ok(Err(err)) if retried => return Err(self.send_error(&err)),
                Ok(Err(err)) => describe(&err),
            };
            retried = true;
            tracing::warn!(provider = PROVIDER, reason = %why_retry, "provider call failed before answering; retrying once");
            let total_deadline = call_started + self.timeouts.request;
            tokio::time::sleep_until((Instant::now() + RETRY_BACKOFF).min(total_deadline)).await;
        }
    }

    /// Reads a whole (small) body, e.g. a transcription's JSON, within the
    /// request timeout of `call_started`.
    pub(crate) async fn read_body(
        &self,
        response: reqwest::Response,
        call_started: Instant,
        limit: usize,
    ) -> Result<Vec<u8>, ProviderError> {
        let deadline = call_started + self.timeouts.request;
        match timeout_at(deadline, read_limited(response, limit)).await {
            Err(_) => Err(timeout(millis(self.timeouts.request))),
            Ok(result) => result,
        }
    }

    /// A reader of a streamed body that applies the first-byte, idle and
    /// request timeouts.
    pub(crate) fn stream_body(&self, sent: Sent, call_started: Instant) -> BodyReader {
        BodyReader {
            first_byte_deadline: Some(sent.attempt_started + self.timeouts.first_byte),
            total_deadline: call_started + self.timeouts.request,
            response: sent.response,
            timeouts: self.timeouts,
        }
    }

    /// The earlier of `own_deadline` and the end of the whole call, with the
    /// limit to report if it passes.
    fn bounded(
        &self,
        call_started: Instant,
        own_deadline: Instant,
        own: Duration,
    ) -> (Instant, u64) {
        let total_deadline = call_started + self.timeouts.request;
        if own_deadline <= total_deadline {
            (own_deadline, millis(own))
        } else {
            (total_deadline, millis(self.timeouts.request))
        }
    }

    fn send_error(&self, err: &reqwest::Error) -> ProviderError {
        if err.is_timeout() {
            // Only the connect timeout can fire inside reqwest.
            return timeout(millis(self.timeouts.first_byte));
        }
        transport(err)
    }

    /// [`ProviderError::Status`] with the message from the error body, when
    /// one can be read in time.
    async fn status_error(
        &self,
        response: reqwest::Response,
        call_started: Instant,
    ) -> ProviderError {
        let status = response.status();
        let (deadline, _) = self.bounded(
            call_started,
            Instant::now() + self.timeouts.idle,
            self.timeouts.idle,
        );
        let body = match timeout_at(deadline, read_limited(response, ERROR_BODY_LIMIT)).await {
            Ok(Ok(body)) => body,
            Ok(Err(_)) | Err(_) => Vec::new(),
        };
        let message = error_message_in_body(&body).unwrap_or_else(|| {
            status
                .canonical_reason()
                .unwrap_or("no reason given")
                .to_owned()
        });
        ProviderError::Status {
            provider: PROVIDER,
            status: status.as_u16(),
            message: self.redact(message),
        }
    }

    /// Some servers echo the key they rejected; never pass it on.
    pub(crate) fn redact(&self, message: String) -> String {
        match &self.api_key {
            Some(key) if message.contains(key.expose()) => message.replace(key.expose(), "***"),
            _ => message,
        }
    }
}

/// A request whose successful head has arrived.
#[derive(Debug)]
pub(crate) struct Sent {
    pub response: reqwest::Response,
    /// When the attempt that succeeded began; the first byte is due
    /// within the first-byte timeout of it.
    pub attempt_started: Instant,
}

/// Reads a streamed body piece by piece under the call's timeouts.
/// Dropping it drops the response, which closes the connection.
#[derive(Debug)]
pub(crate) struct BodyReader {
    response: reqwest::Response,
    /// Until the first non-empty piece arrives.
    first_byte_deadline: Option<Instant>,
    total_deadline: Instant,
    timeouts: Timeouts,
}

impl BodyReader {
    /// The next piece of the body, `None` at its end.
    pub(crate) async fn next_chunk(&mut self) -> Result<Option<Bytes>, ProviderError> {
        let (deadline, after_ms) = match self.first_byte_deadline {
            Some(deadline) => (deadline, millis(self.timeouts.first_byte)),
            None => (
                Instant::now() + self.timeouts.idle,
                millis(self.timeouts.idle),
            ),
        };
        let (deadline, after_ms) = if self.total_deadline < deadline {
            (self.total_deadline, millis(self.timeouts.request))
        } else {
            (deadline, after_ms)
        };
        match timeout_at(deadline, self.response.chunk()).await {
            Err(_) => Err(timeout(after_ms)),
            Ok(Err(err)) => Err(transport(&err)),
            Ok(Ok(Some(chunk))) => {
                if !chunk.is_empty() {
                    self.first_byte_deadline = None;
                }
                Ok(Some(chunk))
            }
            Ok(Ok(None)) => Ok(None),
        }
    }
}

/// The provider's message in an error object: `{"error": {"message": …}}`
/// (OpenAI), `{"error": "…"}`, `{"message": …}` or `{"detail": …}`
/// (other compatible servers).
pub(crate) fn error_message(value: &serde_json::Value) -> Option<String> {
    let error = value.get("error").unwrap_or(value);
    let message = match error {
        serde_json::Value::String(message) => message.as_str(),
        serde_json::Value::Object(fields) => fields
            .get("message")
            .or_else(|| fields.get("detail"))
            .and_then(serde_json::Value::as_str)?,
        _ => return None,
    };
    Some(truncate(message.trim()))
}

/// The message of an error body: JSON as [`error_message`] reads it, else
/// the text itself.
fn error_message_in_body(body: &[u8]) -> Option<String> {
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(body)
        && let Some(message) = error_message(&value)
    {
        return Some(message);
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    (!text.is_empty()).then(|| truncate(text))
}

fn truncate(message: &str) -> String {
    match message.char_indices().nth(ERROR_MESSAGE_CHARS) {
        Some((end, _)) => format!("{}…", &message[..end]),
        None => message.to_owned(),
    }
}

async fn read_limited(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, ProviderError> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| transport(&e))? {
        if body.len() + chunk.len() > limit {
            return Err(ProviderError::Protocol {
                provider: PROVIDER,
                message: format!("the response body is larger than {limit} bytes"),
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

pub(crate) fn timeout(after_ms: u64) -> ProviderError {
    ProviderError::Timeout {
        provider: PROVIDER,
        after_ms,
    }
}

pub(crate) fn protocol(message: impl Into<String>) -> ProviderError {
    ProviderError::Protocol {
        provider: PROVIDER,
        message: message.into(),
    }
}

fn transport(err: &reqwest::Error) -> ProviderError {
    ProviderError::Transport {
        provider: PROVIDER,
        message: describe(err),
    }
}

/// An error and its sources: reqwest's own message ("error sending
/// request") says little without the cause beneath it.
fn describe(err: &dyn std::error::Error) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn error_messages_are_found_in_each_known_shape() {
        let openai =
            json!({"error": {"message": "Incorrect API key", "type": "invalid_request_error"}});
        assert_eq!(error_message(&openai).as_deref(), Some("Incorrect API key"));
        assert_eq!(
            error_message(&json!({"error": "overloaded"})).as_deref(),
            Some("overloaded")
        );
        assert_eq!(
            error_message(&json!({"detail": "Not Found"})).as_deref(),
            Some("Not Found")
        );
        assert_eq!(error_message(&json!({"choices": []})), None);
    }

    #[test]
    fn plain_text_error_bodies_are_passed_on_truncated() {
        assert_eq!(
            error_message_in_body(b" Bad Gateway\n").as_deref(),
            Some("Bad Gateway")
        );
        assert_eq!(error_message_in_body(b""), None);
        let long = "x".repeat(ERROR_MESSAGE_CHARS + 10);
        let message = error_message_in_body(long.as_bytes()).expect("message");
        assert_eq!(message.chars().count(), ERROR_MESSAGE_CHARS + 1);
    }

    #[test]
    fn openai_without_a_key_is_unavailable_but_other_servers_are_not() {
        let mut settings = ProviderSettings::default();
        let err = OpenAiApi::new(&settings).expect_err("no key");
        assert_eq!(err.code(), "provider_unavailable");
        settings.openai_base_url = "http://127.0.0.1:11434/v1/".to_owned();
        let api = OpenAiApi::new(&settings).expect("keyless local server");
        assert_eq!(api.base_url, "http://127.0.0.1:11434/v1");
        settings.openai_base_url = "not a url".to_owned();
        assert!(OpenAiApi::new(&settings).is_err());
    }

    #[test]
    fn an_echoed_key_is_redacted() {
        let settings = ProviderSettings {
            openai_api_key: Some(Secret::new("sk-live-123")),
            ..ProviderSettings::default()
        };
        let api = OpenAiApi::new(&settings).expect("api");
        assert_eq!(api.redact("bad key sk-live-123".to_owned()), "bad key ***");
    }
}
