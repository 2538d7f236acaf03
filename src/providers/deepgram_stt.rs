//! [`DeepgramLive`]: the [`SpeechRecognizer`] port over Deepgram's live
//! transcription WebSocket (`/v1/listen`), one socket per recognition.
//!
//! A recognition is a task that owns the socket and the audio receiver:
//! - each [`SttInput::Audio`] frame goes out as one binary message, 640
//!   bytes of 16 kHz mono little-endian PCM16;
//! - [`SttInput::EndOfUtterance`] sends `{"type":"Finalize"}`: Deepgram
//!   flushes what it heard as a final marked `from_finalize`;
//! - `{"type":"KeepAlive"}` goes out after [`KEEPALIVE_INTERVAL`] without
//!   audio, since Deepgram closes a socket that goes quiet for ten seconds;
//! - dropping the audio sender sends `{"type":"CloseStream"}`; the
//!   transcripts still owed are delivered and the stream ends when
//!   Deepgram closes the socket.
//!
//! Results come back as [`Transcript`]s: interim results as partials
//! (empty ones skipped), finals as finals. The final that answers a
//! Finalize (`from_finalize`, or the first final after one) is always
//! passed on, even empty, so the session learns that the utterance ended
//! with nothing more said; other empty finals are silence and skipped.
//!
//! Errors: a refused connection or a failed upgrade (HTTP 401 for a bad
//! key) is reported with the provider's message and retried once like an
//! HTTP call when it may help (no connection, 5xx, 429); a socket that
//! closes before CloseStream is a [`ProviderError::Transport`]; a Finalize
//! or CloseStream unanswered for the idle timeout is a
//! [`ProviderError::Timeout`]. Any error ends the recognition; the session
//! opens a new one.
//!
//! Dropping the transcript stream closes the socket. The key travels only
//! in the `Authorization` header, marked sensitive, and is redacted from
//! any message the provider echoes.

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt, stream};
use palaver_actors::media::{FRAME_SAMPLES, SAMPLE_RATE};
use palaver_actors::ports::{
    ProviderError, Recognition, SpeechRecognizer, SttInput, SttOptions, Transcript,
};
use reqwest::header::{AUTHORIZATION, HeaderValue};
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use super::http_api::{
    KeyHeader, ProviderEndpoint, RETRY_BACKOFF, Timeouts, describe, is_retryable, millis, redact,
    status_error,
};
use crate::config::{ProviderSettings, Secret};

/// The `provider` of every error this adapter reports.
pub(crate) const PROVIDER: &str = "deepgram";

/// Deepgram's own host, where a key is mandatory.
const DEEPGRAM_HOST: &str = "api.deepgram.com";

/// The model used when [`SttOptions::model`] is empty.
pub const DEFAULT_MODEL: &str = "nova-3";

/// Longest stretch without audio before a KeepAlive is sent; Deepgram
/// closes a socket after ten seconds without either.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);

/// Bytes of one 20 ms frame as sent.
const FRAME_BYTES: usize = FRAME_SAMPLES * 2;

/// Frames queued towards the task: bounded, as media must be, and two
/// seconds deep so that speech is not dropped while the socket opens.
const AUDIO_QUEUE_FRAMES: usize = 100;

/// Transcripts waiting for the session to read them.
const TRANSCRIPT_QUEUE: usize = 16;

/// Time given to a closing handshake when the recognition is abandoned.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

const FINALIZE: &str = r#"{"type":"Finalize"}"#;
const KEEPALIVE: &str = r#"{"type":"KeepAlive"}"#;
const CLOSE_STREAM: &str = r#"{"type":"CloseStream"}"#;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Deepgram's live transcription (or a self-hosted Deepgram) as a
/// [`SpeechRecognizer`]. Cheap to clone.
#[derive(Clone)]
pub struct DeepgramLive {
    /// The listen endpoint without a query, `ws://` or `wss://`.
    url: reqwest::Url,
    api_key: Option<Secret>,
    /// `Token {key}`, marked sensitive.
    authorization: Option<HeaderValue>,
    /// Built once for `wss://`; `None` for a plain `ws://` server.
    tls: Option<Arc<rustls::ClientConfig>>,
    timeouts: Timeouts,
    keepalive_interval: Duration,
}

impl std::fmt::Debug for DeepgramLive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeepgramLive")
            .field("url", &self.url.as_str())
            .field("api_key", &self.api_key)
            .field("tls", &self.tls.is_some())
            .field("timeouts", &self.timeouts)
            .field("keepalive_interval", &self.keepalive_interval)
            .finish()
    }
}

impl DeepgramLive {
    /// Checks the settings and, for `wss://`, builds the TLS configuration
    /// (trusting what the platform trusts, as the HTTP adapters do). Fails
    /// with [`ProviderError::Unavailable`] when the URL is not a WebSocket
    /// URL, or is Deepgram's own and no key is set.
    pub fn new(settings: &ProviderSettings) -> Result<Self, ProviderError> {
        let endpoint = ProviderEndpoint {
            provider: PROVIDER,
            url_setting: "providers.deepgram_url",
            url: &settings.deepgram_url,
            api_key: settings.deepgram_api_key.as_ref(),
            own_host: DEEPGRAM_HOST,
            key_hint: "DEEPGRAM_API_KEY or providers.deepgram_api_key",
        };
        let (url, api_key) = endpoint.check()?;
        let url = reqwest::Url::parse(&url).map_err(|e| unavailable(e.to_string()))?;
        let tls = match url.scheme() {
            "wss" => Some(tls_config()?),
            "ws" => None,
            other => {
                return Err(unavailable(format!(
                    "providers.deepgram_url must be ws:// or wss://, not {other}://"
                )));
            }
        };
        let authorization = api_key
            .as_ref()
            .map(|key| {
                KeyHeader::Token
                    .header(PROVIDER, key)
                    .map(|(_, value)| value)
            })
            .transpose()?;
        Ok(Self {
            url,
            api_key,
            authorization,
            tls,
            timeouts: Timeouts::from_settings(settings),
            keepalive_interval: KEEPALIVE_INTERVAL,
        })
    }

    /// The same recognizer with KeepAlives after `interval` without audio
    /// instead of [`KEEPALIVE_INTERVAL`] (tests shorten it).
    pub fn with_keepalive_interval(mut self, interval: Duration) -> Self {
        self.keepalive_interval = interval;
        self
    }

    /// The listen URL of one recognition.
    fn listen_url(&self, options: &SttOptions) -> reqwest::Url {
        let model = if options.model.is_empty() {
            DEFAULT_MODEL
        } else {
            options.model.as_str()
        };
        let mut url = self.url.clone();
        {
            let mut query = url.query_pairs_mut();
            query.append_pair("model", model);
            if !options.language.is_empty() {
                query.append_pair("language", &options.language);
            }
            query
                .append_pair("encoding", "linear16")
                .append_pair("sample_rate", &SAMPLE_RATE.to_string())
                .append_pair("channels", "1")
                .append_pair("interim_results", "true")
                .append_pair("punctuate", "true")
                .append_pair("endpointing", "false");
        }
        url
    }

    /// Opens the socket, retrying once when the attempt failed before
    /// Deepgram said anything final about it (no connection, 5xx, 429).
    /// Each attempt must finish its upgrade within the first-byte timeout.
    async fn connect(&self, url: &reqwest::Url) -> Result<Socket, ProviderError> {
        let mut request = url
            .as_str()
            .into_client_request()
            .map_err(|e| unavailable(format!("cannot build the request: {e}")))?;
        if let Some(authorization) = &self.authorization {
            request
                .headers_mut()
                .insert(AUTHORIZATION, authorization.clone());
        }
        let connector = match &self.tls {
            Some(config) => Connector::Rustls(config.clone()),
            None => Connector::Plain,
        };
        let mut retried = false;
        loop {
            let attempt = tokio_tungstenite::connect_async_tls_with_config(
                request.clone(),
                None,
                true,
                Some(connector.clone()),
            );
            let why_retry = match timeout(self.timeouts.first_byte, attempt).await {
                Err(_) => {
                    return Err(ProviderError::Timeout {
                        provider: PROVIDER,
                        after_ms: millis(self.timeouts.first_byte),
                    });
                }
                Ok(Ok((socket, _))) => return Ok(socket),
                Ok(Err(tungstenite::Error::Http(response))) => {
                    let status = response.status();
                    if retried || !is_retryable(status) {
                        return Err(self.upgrade_refused(&response));
                    }
                    format!("HTTP {status}")
                }
                Ok(Err(tungstenite::Error::Io(err))) if !retried => describe(&err),
                Ok(Err(err)) => return Err(self.transport(&err)),
            };
            retried = true;
            tracing::warn!(provider = PROVIDER, reason = %why_retry, "provider call failed before answering; retrying once");
            tokio::time::sleep(RETRY_BACKOFF).await;
        }
    }

    /// [`ProviderError::Status`] for an upgrade answered with an error:
    /// Deepgram's `err_msg`, else its `dg-error` header, else the reason.
    fn upgrade_refused(
        &self,
        response: &tungstenite::http::Response<Option<Vec<u8>>>,
    ) -> ProviderError {
        let body = response.body().as_deref().unwrap_or_default();
        let header = response
            .headers()
            .get("dg-error")
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default();
        let body = if body.iter().all(u8::is_ascii_whitespace) {
            header.as_bytes()
        } else {
            body
        };
        status_error(PROVIDER, response.status(), body, self.api_key.as_ref())
    }

    fn transport(&self, err: &tungstenite::Error) -> ProviderError {
        ProviderError::Transport {
            provider: PROVIDER,
            message: redact(describe(err), self.api_key.as_ref()),
        }
    }
}

impl SpeechRecognizer for DeepgramLive {
    /// Spawns the recognition task on the current Tokio runtime, which
    /// opens the socket at once; outside one, the transcript stream yields
    /// a single [`ProviderError::Unavailable`].
    fn start(&self, options: SttOptions) -> Recognition {
        let (audio_tx, audio_rx) = mpsc::channel(AUDIO_QUEUE_FRAMES);
        let (transcript_tx, transcript_rx) = mpsc::channel(TRANSCRIPT_QUEUE);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let url = self.listen_url(&options);
                runtime.spawn(run_recognition(self.clone(), url, audio_rx, transcript_tx));
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

type TranscriptSender = mpsc::Sender<Result<Transcript, ProviderError>>;

/// The task that owns one recognition: connects, then runs the socket.
async fn run_recognition(
    deepgram: DeepgramLive,
    url: reqwest::Url,
    audio: mpsc::Receiver<SttInput>,
    transcripts: TranscriptSender,
) {
    let connected = tokio::select! {
        biased;
        () = transcripts.closed() => return,
        connected = deepgram.connect(&url) => connected,
    };
    let socket = match connected {
        Ok(socket) => socket,
        Err(err) => {
            let _ = transcripts.send(Err(err)).await;
            return;
        }
    };
    let live = LiveSocket {
        socket,
        deepgram,
        results: ResultTracker::default(),
        frame_bytes: BytesMut::with_capacity(FRAME_BYTES),
    };
    if let Err(err) = live.run(audio, &transcripts).await {
        let _ = transcripts.send(Err(err)).await;
    }
}

/// An open socket and what the recognition knows about it.
struct LiveSocket {
    socket: Socket,
    deepgram: DeepgramLive,
    results: ResultTracker,
    /// Reused for every frame: tungstenite copies a frame into its own
    /// write buffer and lets go of it, so the next frame reclaims this one
    /// and sending audio allocates no buffer per frame.
    frame_bytes: BytesMut,
}

impl LiveSocket {
    /// Runs until Deepgram closes the socket after CloseStream (`Ok`), the
    /// transcript stream is dropped (`Ok`), or something fails.
    async fn run(
        mut self,
        mut audio: mpsc::Receiver<SttInput>,
        transcripts: &TranscriptSender,
    ) -> Result<(), ProviderError> {
        let idle = self.deepgram.timeouts.idle;
        let keepalive_interval = self.deepgram.keepalive_interval;
        let mut keepalive_due = Instant::now() + keepalive_interval;
        // Set while an answer is owed (to a Finalize or CloseStream).
        let mut answer_due: Option<Instant> = None;
        let mut audio_open = true;
        loop {
            tokio::select! {
                biased;
                () = transcripts.closed() => {
                    // Nobody listens: close politely, but not for long.
                    let _ = timeout(CLOSE_GRACE, self.socket.close(None)).await;
                    return Ok(());
                }
                message = self.socket.next() => {
                    let message = match message {
                        Some(Ok(message)) => message,
                        // Gone without a closing handshake: fine once nothing is owed.
                        Some(Err(_)) | None if !audio_open && !self.results.finalizing() => {
                            return Ok(());
                        }
                        Some(Err(err)) => return Err(self.deepgram.transport(&err)),
                        None => return Err(closed_unexpectedly(None)),
                    };
                    match message {
                        Message::Text(text) => {
                            if let Some(transcript) = self.results.on_message(&text)?
                                && transcripts.send(Ok(transcript)).await.is_err()
                            {
                                return Ok(());
                            }
                        }
                        Message::Close(frame) => {
                            let normal = frame
                                .as_ref()
                                .is_none_or(|frame| frame.code == CloseCode::Normal);
                            if audio_open || !normal {
                                return Err(closed_unexpectedly(frame.as_ref()));
                            }
                            // Answer the closing handshake; the socket is done either way.
                            let _ = timeout(CLOSE_GRACE, self.socket.close(None)).await;
                            return Ok(());
                        }
                        // Pings are answered by tungstenite; Deepgram sends no binary.
                        Message::Binary(_)
                        | Message::Ping(_)
                        | Message::Pong(_)
                        | Message::Frame(_) => {}
                    }
                    answer_due = (!audio_open || self.results.finalizing())
                        .then(|| Instant::now() + idle);
                }
                input = audio.recv(), if audio_open => match input {
                    Some(SttInput::Audio(frame)) => {
                        self.send_frame(&frame.samples).await?;
                        keepalive_due = Instant::now() + keepalive_interval;
                    }
                    Some(SttInput::EndOfUtterance) => {
                        self.send_text(FINALIZE).await?;
                        self.results.finalize_sent();
                        answer_due.get_or_insert_with(|| Instant::now() + idle);
                    }
                    None => {
                        self.send_text(CLOSE_STREAM).await?;
                        audio_open = false;
                        answer_due.get_or_insert_with(|| Instant::now() + idle);
                    }
                },
                () = sleep_until(keepalive_due), if audio_open => {
                    self.send_text(KEEPALIVE).await?;
                    keepalive_due = Instant::now() + keepalive_interval;
                }
                () = sleep_until_some(answer_due) => {
                    return Err(ProviderError::Timeout {
                        provider: PROVIDER,
                        after_ms: millis(idle),
                    });
                }
            }
        }
    }

    async fn send_frame(&mut self, samples: &[i16]) -> Result<(), ProviderError> {
        // Reclaims the buffer the previous frame used once the socket has
        // let go of it.
        self.frame_bytes.reserve(samples.len() * 2);
        for &sample in samples {
            self.frame_bytes.put_i16_le(sample);
        }
        let payload: Bytes = self.frame_bytes.split().freeze();
        self.send(Message::Binary(payload)).await
    }

    async fn send_text(&mut self, text: &'static str) -> Result<(), ProviderError> {
        self.send(Message::Text(Utf8Bytes::from_static(text))).await
    }

    async fn send(&mut self, message: Message) -> Result<(), ProviderError> {
        self.socket
            .send(message)
            .await
            .map_err(|err| self.deepgram.transport(&err))
    }
}

/// Waits until `deadline`, forever when there is none.
async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn closed_unexpectedly(frame: Option<&CloseFrame>) -> ProviderError {
    let message = match frame {
        Some(frame) if !frame.reason.is_empty() => format!(
            "the socket closed unexpectedly (code {}: {})",
            u16::from(frame.code),
            frame.reason.as_str()
        ),
        Some(frame) => format!(
            "the socket closed unexpectedly (code {})",
            u16::from(frame.code)
        ),
        None => "the socket closed unexpectedly".to_owned(),
    };
    ProviderError::Transport {
        provider: PROVIDER,
        message,
    }
}

/// Turns Deepgram's messages into transcripts, knowing which finals answer
/// a Finalize: the sans-IO half of the adapter.
#[derive(Debug, Default)]
pub(crate) struct ResultTracker {
    /// Finalize messages sent whose final has not come yet.
    finalizing: u32,
}

impl ResultTracker {
    pub(crate) fn finalize_sent(&mut self) {
        self.finalizing += 1;
    }

    /// Whether a Finalize still waits for its final.
    pub(crate) fn finalizing(&self) -> bool {
        self.finalizing > 0
    }

    /// The transcript a text message carries, if any.
    pub(crate) fn on_message(&mut self, text: &str) -> Result<Option<Transcript>, ProviderError> {
        let message: ServerMessage =
            serde_json::from_str(text).map_err(|e| ProviderError::Protocol {
                provider: PROVIDER,
                message: format!("a message does not fit the protocol ({e})"),
            })?;
        let ServerMessage::Results(results) = message else {
            // Metadata, SpeechStarted, UtteranceEnd: nothing to pass on.
            return Ok(None);
        };
        let text = results
            .channel
            .alternatives
            .into_iter()
            .next()
            .map(|alternative| alternative.transcript.trim().to_owned())
            .unwrap_or_default();
        if !results.is_final {
            return Ok((!text.is_empty()).then_some(Transcript {
                text,
                is_final: false,
            }));
        }
        let closes_utterance = results.from_finalize || self.finalizing > 0;
        if closes_utterance {
            self.finalizing = self.finalizing.saturating_sub(1);
        }
        Ok(
            (closes_utterance || !text.is_empty()).then_some(Transcript {
                text,
                is_final: true,
            }),
        )
    }
}

/// A message from Deepgram, by its `type`.
#[derive(Debug, Deserialize)]
#[serde(tag = "type")]
enum ServerMessage {
    Results(ResultsMessage),
    #[serde(other)]
    Other,
}

#[derive(Debug, Deserialize)]
struct ResultsMessage {
    #[serde(default)]
    is_final: bool,
    /// This final answers a Finalize.
    #[serde(default)]
    from_finalize: bool,
    channel: ResultsChannel,
}

#[derive(Debug, Deserialize)]
struct ResultsChannel {
    alternatives: Vec<Alternative>,
}

#[derive(Debug, Deserialize)]
struct Alternative {
    transcript: String,
}

/// The TLS configuration of every `wss://` socket: the process's crypto
/// provider (the one reqwest uses when none is installed) and the
/// platform's trust store, as reqwest has.
fn tls_config() -> Result<Arc<rustls::ClientConfig>, ProviderError> {
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|builder| {
            rustls_platform_verifier::BuilderVerifierExt::with_platform_verifier(builder)
        })
        .map_err(|e| unavailable(format!("cannot set up TLS: {e}")))?
        .with_no_client_auth();
    Ok(Arc::new(config))
}

fn unavailable(message: impl Into<String>) -> ProviderError {
    ProviderError::Unavailable {
        provider: PROVIDER,
        message: message.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn results(transcript: &str, is_final: bool, from_finalize: bool) -> String {
        json!({
            "type": "Results",
            "channel_index": [0, 1],
            "duration": 1.0,
            "start": 0.0,
            "is_final": is_final,
            "speech_final": false,
            "from_finalize": from_finalize,
            "channel": {"alternatives": [{"transcript": transcript, "confidence": 0.9, "words": []}]},
        })
        .to_string()
    }

    fn transcript(text: &str, is_final: bool) -> Option<Transcript> {
        Some(Transcript {
            text: text.to_owned(),
            is_final,
        })
    }

    #[test]
    fn interim_results_are_partials_and_empty_ones_are_skipped() {
        let mut tracker = ResultTracker::default();

        assert_eq!(
            tracker.on_message(&results(" hello ", false, false)),
            Ok(transcript("hello", false))
        );
        assert_eq!(tracker.on_message(&results("", false, false)), Ok(None));
        assert_eq!(
            tracker.on_message(&results("hello there", true, false)),
            Ok(transcript("hello there", true))
        );
        // An empty final with no Finalize pending is silence.
        assert_eq!(tracker.on_message(&results("", true, false)), Ok(None));
    }

    #[test]
    fn the_final_answering_a_finalize_is_passed_on_even_empty() {
        let mut tracker = ResultTracker::default();
        tracker.finalize_sent();
        assert!(tracker.finalizing());

        assert_eq!(
            tracker.on_message(&results("", false, false)),
            Ok(None),
            "interims do not answer"
        );
        assert_eq!(
            tracker.on_message(&results("", true, false)),
            Ok(transcript("", true))
        );
        assert!(!tracker.finalizing());
        // A late `from_finalize` final still closes an utterance.
        assert_eq!(
            tracker.on_message(&results("", true, true)),
            Ok(transcript("", true))
        );
        assert!(!tracker.finalizing());
    }

    #[test]
    fn other_messages_are_ignored_and_garbage_is_a_protocol_error() {
        let mut tracker = ResultTracker::default();

        let metadata = json!({"type": "Metadata", "request_id": "r", "duration": 1.5});
        assert_eq!(tracker.on_message(&metadata.to_string()), Ok(None));
        assert_eq!(
            tracker.on_message(r#"{"type":"UtteranceEnd","last_word_end":1.2}"#),
            Ok(None)
        );
        let err = tracker.on_message("not json").expect_err("garbage");
        assert_eq!(err.code(), "provider_protocol");
        let err = tracker
            .on_message(r#"{"type":"Results","is_final":true}"#)
            .expect_err("no channel");
        assert_eq!(err.code(), "provider_protocol");
    }

    fn settings(url: &str, key: Option<&str>) -> ProviderSettings {
        ProviderSettings {
            deepgram_url: url.to_owned(),
            deepgram_api_key: key.map(Secret::new),
            ..ProviderSettings::default()
        }
    }

    #[test]
    fn the_listen_url_names_the_model_language_and_audio_format() {
        let deepgram =
            DeepgramLive::new(&settings("ws://127.0.0.1:9/v1/listen", None)).expect("keyless");

        let url = deepgram.listen_url(&SttOptions {
            model: String::new(),
            language: "pt-BR".to_owned(),
        });

        assert_eq!(
            url.as_str(),
            "ws://127.0.0.1:9/v1/listen?model=nova-3&language=pt-BR&encoding=linear16\
             &sample_rate=16000&channels=1&interim_results=true&punctuate=true&endpointing=false"
        );
        let url = deepgram.listen_url(&SttOptions {
            model: "nova-2 phonecall".to_owned(),
            language: String::new(),
        });
        assert!(
            url.as_str().contains("?model=nova-2+phonecall&encoding="),
            "{url}"
        );
    }

    #[test]
    fn deepgram_itself_needs_a_key_and_a_websocket_url() {
        let err = DeepgramLive::new(&ProviderSettings::default()).expect_err("no key");
        assert_eq!(err.code(), "provider_unavailable");
        assert!(err.to_string().contains("DEEPGRAM_API_KEY"), "{err}");
        let err = DeepgramLive::new(&settings("http://127.0.0.1:9/v1/listen", None))
            .expect_err("not a socket");
        assert!(err.to_string().contains("ws://"), "{err}");
        let deepgram = DeepgramLive::new(&settings("ws://127.0.0.1:9/", Some("dg-secret")))
            .expect("configured");
        assert!(!format!("{deepgram:?}").contains("dg-secret"));
    }

    #[test]
    fn a_frame_is_640_bytes() {
        assert_eq!(FRAME_BYTES, 640);
    }
}
