//! What the HTTP provider adapters share (OpenAI, ElevenLabs): pooled HTTP
//! clients, the base URL and key, the timeouts, the single retry, and
//! turning every failure into a [`ProviderError`] that names the provider
//! and never its key.
//!
//! Clients are made once per thread and connect timeout, not per session
//! (see [`shared_client`]): a session's adapters are built when it is
//! joined, and a client per join cost several milliseconds of every join
//! (loading the CA roots) and a fresh TCP + TLS handshake to the provider
//! on every session's first request.
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
use reqwest::header::{AUTHORIZATION, HeaderName, HeaderValue};
use tokio::time::{Instant, timeout_at};

use crate::config::{ProviderSettings, Secret};

/// Pause before the one retry, so a provider shedding load gets a moment.
pub(crate) const RETRY_BACKOFF: Duration = Duration::from_millis(200);

/// Most of an error body read to find its message.
pub(crate) const ERROR_BODY_LIMIT: usize = 16 * 1024;

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

/// How a provider wants its key sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyHeader {
    /// `Authorization: Bearer {key}` (OpenAI).
    Bearer,
    /// `Authorization: Token {key}` (Deepgram).
    Token,
    /// The key alone in a header of this name (ElevenLabs' `xi-api-key`).
    Named(&'static str),
}

impl KeyHeader {
    /// The header carrying `key`, marked sensitive so that no log prints it.
    pub(crate) fn header(
        self,
        provider: &'static str,
        key: &Secret,
    ) -> Result<(HeaderName, HeaderValue), ProviderError> {
        let (name, value) = match self {
            KeyHeader::Bearer => (AUTHORIZATION, format!("Bearer {}", key.expose())),
            KeyHeader::Token => (AUTHORIZATION, format!("Token {}", key.expose())),
            KeyHeader::Named(name) => (HeaderName::from_static(name), key.expose().to_owned()),
        };
        let mut value = HeaderValue::from_str(&value).map_err(|_| ProviderError::Unavailable {
            provider,
            message: "the API key holds characters an HTTP header cannot carry".to_owned(),
        })?;
        value.set_sensitive(true);
        Ok((name, value))
    }
}

/// Where a provider lives and how it wants its key: what
/// [`ProviderEndpoint::check`] checks.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ProviderEndpoint<'a> {
    pub provider: &'static str,
    /// The setting `url` came from, e.g. `providers.openai_base_url`.
    pub url_setting: &'static str,
    pub url: &'a str,
    pub api_key: Option<&'a Secret>,
    /// The provider's own host, where a key is mandatory; other hosts are
    /// compatible servers that may want none.
    pub own_host: &'static str,
    /// Where a key can be set, for the message when one is missing.
    pub key_hint: &'static str,
}

impl ProviderEndpoint<'_> {
    /// The URL without a trailing slash, and the key if one is set. Fails
    /// with [`ProviderError::Unavailable`] when the URL is not a URL, or is
    /// the provider's own and no key is set.
    pub(crate) fn check(&self) -> Result<(String, Option<Secret>), ProviderError> {
        let url = self.url.trim_end_matches('/').to_owned();
        let parsed = reqwest::Url::parse(&url).map_err(|e| ProviderError::Unavailable {
            provider: self.provider,
            message: format!("{} `{url}` is not a URL: {e}", self.url_setting),
        })?;
        let api_key = self
            .api_key
            .filter(|key| !key.expose().trim().is_empty())
            .cloned();
        if api_key.is_none() && parsed.host_str() == Some(self.own_host) {
            return Err(ProviderError::Unavailable {
                provider: self.provider,
                message: format!("no API key: set {}", self.key_hint),
            });
        }
        Ok((url, api_key))
    }
}

/// This thread's HTTP client for `connect_timeout`, made on first use.
///
/// Per thread because a pooled connection's task runs on the runtime that
/// opened it: an actix worker is one thread with its own runtime, its
/// sessions' adapters run on it, and its client (so its connections to the
/// providers, kept alive between sessions) lives and dies with it. A test
/// server's threads, and their clients, go when it stops.
fn shared_client(connect_timeout: Duration) -> Result<reqwest::Client, reqwest::Error> {
    thread_local! {
        static CLIENTS: std::cell::RefCell<Vec<(Duration, reqwest::Client)>> =
            const { std::cell::RefCell::new(Vec::new()) };
    }
    CLIENTS.with(|clients| {
        let mut clients = clients.borrow_mut();
        if let Some((_, client)) = clients.iter().find(|(t, _)| *t == connect_timeout) {
            return Ok(client.clone());
        }
        let client = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .build()?;
        clients.push((connect_timeout, client.clone()));
        Ok(client)
    })
}

/// A configured HTTP provider API. Cheap to clone: clones share the
/// connection pool.
#[derive(Debug, Clone)]
pub(crate) struct HttpApi {
    provider: &'static str,
    client: reqwest::Client,
    /// Without a trailing slash; paths are appended as `/chat/completions`.
    base_url: String,
    api_key: Option<Secret>,
    /// The key as the provider wants it, built once.
    key_header: Option<(HeaderName, HeaderValue)>,
    timeouts: Timeouts,
}

impl HttpApi {
    /// Checks the endpoint (see [`ProviderEndpoint::check`]) and builds the
    /// HTTP client.
    pub(crate) fn new(
        endpoint: ProviderEndpoint<'_>,
        key_header: KeyHeader,
        timeouts: Timeouts,
    ) -> Result<Self, ProviderError> {
        let provider = endpoint.provider;
        let (base_url, api_key) = endpoint.check()?;
        let key_header = api_key
            .as_ref()
            .map(|key| key_header.header(provider, key))
            .transpose()?;
        let client =
            shared_client(timeouts.first_byte).map_err(|e| ProviderError::Unavailable {
                provider,
                message: format!("cannot build the HTTP client: {}", describe(&e)),
            })?;
        Ok(Self {
            provider,
            client,
            base_url,
            api_key,
            key_header,
            timeouts,
        })
    }

    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    #[cfg(test)]
    pub(crate) fn base_url(&self) -> &str {
        &self.base_url
    }

    /// A `POST` to `path` (e.g. `/chat/completions`) with the key.
    pub(crate) fn post(&self, path: &str) -> reqwest::RequestBuilder {
        let request = self.client.post(format!("{}{path}", self.base_url));
        match &self.key_header {
            Some((name, value)) => request.header(name.clone(), value.clone()),
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
                Err(_) => return Err(timeout(self.provider, after_ms)),
                Ok(Ok(response)) if response.status().is_success() => {
                    return Ok(Sent {
                        response,
                        attempt_started,
                    });
                }
                Ok(Ok(response)) => {
                    let status = response.status();
                    if retried || !is_retryable(status) {
                        return Err(self.status_error(response, call_started).await);
                    }
                    format!("HTTP {status}")
                }
                Ok(Err(err)) if err.is_builder() => {
                    return Err(ProviderError::Unavailable {
                        provider: self.provider,
                        message: format!("cannot build the request: {}", describe(&err)),
                    });
                }
                Ok(Err(err)) if retried => return Err(self.send_error(&err)),
                Ok(Err(err)) => describe(&err),
            };
            retried = true;
            tracing::warn!(provider = self.provider, reason = %why_retry, "provider call failed before answering; retrying once");
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
        match timeout_at(deadline, read_limited(self.provider, response, limit)).await {
            Err(_) => Err(timeout(self.provider, millis(self.timeouts.request))),
            Ok(result) => result,
        }
    }

    /// A reader of a streamed body that applies the first-byte, idle and
    /// request timeouts.
    pub(crate) fn stream_body(&self, sent: Sent, call_started: Instant) -> BodyReader {
        BodyReader {
            provider: self.provider,
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
            return timeout(self.provider, millis(self.timeouts.first_byte));
        }
        transport(self.provider, err)
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
        let body = match timeout_at(
            deadline,
            read_limited(self.provider, response, ERROR_BODY_LIMIT),
        )
        .await
        {
            Ok(Ok(body)) => body,
            Ok(Err(_)) | Err(_) => Vec::new(),
        };
        status_error(self.provider, status, &body, self.api_key.as_ref())
    }

    /// Some servers echo the key they rejected; never pass it on.
    #[cfg(test)]
    pub(crate) fn redact(&self, message: String) -> String {
        redact(message, self.api_key.as_ref())
    }
}

/// Whether an error head is worth the one retry: the provider is failing or
/// shedding load, and may answer the same request a moment later.
pub(crate) fn is_retryable(status: StatusCode) -> bool {
    status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS
}

/// [`ProviderError::Status`] for an error head and (some of) its body: the
/// provider's message when the body has one, else the status's reason.
pub(crate) fn status_error(
    provider: &'static str,
    status: StatusCode,
    body: &[u8],
    api_key: Option<&Secret>,
) -> ProviderError {
    let message = error_message_in_body(body).unwrap_or_else(|| {
        status
            .canonical_reason()
            .unwrap_or("no reason given")
            .to_owned()
    });
    ProviderError::Status {
        provider,
        status: status.as_u16(),
        message: redact(message, api_key),
    }
}

/// `message` with every occurrence of the key replaced by `***`.
pub(crate) fn redact(message: String, api_key: Option<&Secret>) -> String {
    match api_key {
        Some(key) if !key.expose().is_empty() && message.contains(key.expose()) => {
            message.replace(key.expose(), "***")
        }
        _ => message,
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
    provider: &'static str,
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
            Err(_) => Err(timeout(self.provider, after_ms)),
            Ok(Err(err)) => Err(transport(self.provider, &err)),
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
/// (OpenAI), `{"detail": {"message": …}}` (ElevenLabs), `{"err_msg": …}`
/// (Deepgram), `{"error": "…"}`, `{"message": …}` or `{"detail": "…"}`
/// (other compatible servers).
pub(crate) fn error_message(value: &serde_json::Value) -> Option<String> {
    let error = value
        .get("error")
        .or_else(|| value.get("detail"))
        .unwrap_or(value);
    let message = match error {
        serde_json::Value::String(message) => message.as_str(),
        serde_json::Value::Object(fields) => fields
            .get("message")
            .or_else(|| fields.get("err_msg"))
            .or_else(|| fields.get("detail"))
            .and_then(serde_json::Value::as_str)?,
        _ => return None,
    };
    Some(truncate(message.trim()))
}

/// The message of an error body: JSON as [`error_message`] reads it, else
/// the text itself.
pub(crate) fn error_message_in_body(body: &[u8]) -> Option<String> {
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
    provider: &'static str,
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, ProviderError> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| transport(provider, &e))?
    {
        if body.len() + chunk.len() > limit {
            return Err(ProviderError::Protocol {
                provider,
                message: format!("the response body is larger than {limit} bytes"),
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

pub(crate) fn timeout(provider: &'static str, after_ms: u64) -> ProviderError {
    ProviderError::Timeout { provider, after_ms }
}

fn transport(provider: &'static str, err: &reqwest::Error) -> ProviderError {
    ProviderError::Transport {
        provider,
        message: describe(err),
    }
}

/// An error and its sources: reqwest's own message ("error sending
/// request") says little without the cause beneath it.
pub(crate) fn describe(err: &dyn std::error::Error) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

pub(crate) fn millis(duration: Duration) -> u64 {
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
        let elevenlabs =
            json!({"detail": {"status": "invalid_api_key", "message": "Invalid API key"}});
        assert_eq!(
            error_message(&elevenlabs).as_deref(),
            Some("Invalid API key")
        );
        let deepgram = json!({"err_code": "INVALID_AUTH", "err_msg": "Invalid credentials."});
        assert_eq!(
            error_message(&deepgram).as_deref(),
            Some("Invalid credentials.")
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
    fn a_status_error_without_a_message_gives_the_reason_and_never_the_key() {
        let key = Secret::new("k-123");
        assert_eq!(
            status_error("x", StatusCode::UNAUTHORIZED, b"", Some(&key)),
            ProviderError::Status {
                provider: "x",
                status: 401,
                message: "Unauthorized".to_owned(),
            }
        );
        let echoed = status_error("x", StatusCode::FORBIDDEN, b"bad key k-123", Some(&key));
        assert!(
            matches!(echoed, ProviderError::Status { message, .. } if message == "bad key ***")
        );
    }

    #[test]
    fn keys_go_in_the_header_the_provider_wants_marked_sensitive() {
        let key = Secret::new("k-123");
        let (name, value) = KeyHeader::Named("xi-api-key")
            .header("x", &key)
            .expect("header");
        assert_eq!(name.as_str(), "xi-api-key");
        assert_eq!(value.to_str().ok(), Some("k-123"));
        assert!(value.is_sensitive());
        let (name, value) = KeyHeader::Token.header("x", &key).expect("header");
        assert_eq!(name, AUTHORIZATION);
        assert_eq!(value.to_str().ok(), Some("Token k-123"));
        let err = KeyHeader::Bearer
            .header("x", &Secret::new("k\n123"))
            .expect_err("a line break");
        assert_eq!(err.code(), "provider_unavailable");
        assert!(!err.to_string().contains("123"), "{err}");
    }
}
