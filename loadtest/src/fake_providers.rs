//! A fake OpenAI-compatible provider for load tests: chat completions
//! streamed as SSE word by word, speech as 24 kHz PCM16 (`ms_per_char` of
//! audio per character of input), transcriptions that always hear the same
//! text. Each answers after a configurable delay before its first byte, so a
//! run can tell the server's own latency from the providers'.
//!
//! It listens on loopback only and owns nothing of the server: Palaver reaches
//! it through `providers.openai_base_url`, like any other OpenAI-compatible
//! endpoint. `GET {base_url}/fake/stats` returns its settings and how many
//! requests it answered, which the voice scenario reports.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use actix_web::dev::ServerHandle;
use actix_web::{App, HttpResponse, HttpServer, web};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The rate of OpenAI's `pcm` speech format.
const SPEECH_SAMPLE_RATE: usize = 24_000;
/// Bodies the fake accepts (transcription uploads carry WAV audio).
const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;

/// How the fake answers.
#[derive(Debug, Clone)]
pub struct FakeProvidersConfig {
    /// Before the first byte of a chat completion (time to first token).
    pub llm_delay: Duration,
    /// Between two streamed words of a chat completion.
    pub llm_token_gap: Duration,
    /// Before the first byte of synthesized speech.
    pub tts_delay: Duration,
    /// Before a transcription answers.
    pub stt_delay: Duration,
    /// What the model says, every time.
    pub reply: String,
    /// What the recognizer hears, every time.
    pub transcript: String,
    /// Speech length per character of input.
    pub ms_per_char: u32,
    /// HTTP worker threads.
    pub workers: usize,
}

/// A reply of two sentences (two speech requests), about 4.7 s of audio at
/// the default 60 ms per character: long enough to cut into.
pub const DEFAULT_REPLY: &str =
    "Yes, we have a double room free tonight. It is ninety euros, breakfast included.";

impl Default for FakeProvidersConfig {
    fn default() -> Self {
        Self {
            llm_delay: Duration::ZERO,
            llm_token_gap: Duration::ZERO,
            tts_delay: Duration::ZERO,
            stt_delay: Duration::ZERO,
            reply: DEFAULT_REPLY.to_owned(),
            transcript: "Do you have a room tonight?".to_owned(),
            ms_per_char: 60,
            workers: 1,
        }
    }
}

/// What `GET /fake/stats` reports: the settings and the requests answered.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FakeStats {
    pub llm_delay_ms: u64,
    pub llm_token_gap_ms: u64,
    pub tts_delay_ms: u64,
    pub stt_delay_ms: u64,
    pub ms_per_char: u32,
    pub chat_requests: u64,
    pub speech_requests: u64,
    pub transcription_requests: u64,
}

/// Why the fake could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FakeError {
    /// Only loopback addresses are allowed: the fake has no auth.
    #[error("the fake providers listen on loopback only, not {0}")]
    NotLoopback(SocketAddr),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

#[derive(Debug)]
struct FakeState {
    config: FakeProvidersConfig,
    chat_requests: AtomicU64,
    speech_requests: AtomicU64,
    transcription_requests: AtomicU64,
}

impl FakeState {
    fn stats(&self) -> FakeStats {
        let ms = |d: Duration| d.as_millis() as u64;
        FakeStats {
            llm_delay_ms: ms(self.config.llm_delay),
            llm_token_gap_ms: ms(self.config.llm_token_gap),
            tts_delay_ms: ms(self.config.tts_delay),
            stt_delay_ms: ms(self.config.stt_delay),
            ms_per_char: self.config.ms_per_char,
            chat_requests: self.chat_requests.load(Ordering::Relaxed),
            speech_requests: self.speech_requests.load(Ordering::Relaxed),
            transcription_requests: self.transcription_requests.load(Ordering::Relaxed),
        }
    }
}

/// A running fake; stops when [`FakeProviders::stop`] is awaited (or with
/// the actix System it runs on).
pub struct FakeProviders {
    /// `http://127.0.0.1:PORT/v1`: set it as `providers.openai_base_url`.
    pub base_url: String,
    pub addr: SocketAddr,
    handle: ServerHandle,
    state: Arc<FakeState>,
    server: Option<actix_web::dev::Server>,
}

impl std::fmt::Debug for FakeProviders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeProviders")
            .field("base_url", &self.base_url)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl FakeProviders {
    /// The settings and the requests answered so far.
    pub fn stats(&self) -> FakeStats {
        self.state.stats()
    }

    /// Stops accepting and drops open connections.
    pub async fn stop(&self) {
        self.handle.stop(false).await;
    }

    /// Serves until the process gets SIGINT or SIGTERM (the command line).
    pub async fn serve_until_signalled(mut self) -> std::io::Result<()> {
        match self.server.take() {
            Some(server) => server.await,
            None => Ok(()),
        }
    }
}

/// Starts the fake on `bind` (port 0 picks one). Must run inside an actix
/// System (`#[actix_web::test]`, `actix_rt::System`). In-process use
/// ([`start`]) leaves signals alone; [`start_for_cli`] handles them.
pub async fn start(
    bind: SocketAddr,
    config: FakeProvidersConfig,
) -> Result<FakeProviders, FakeError> {
    let mut fake = build(bind, config, false)?;
    if let Some(server) = fake.server.take() {
        actix_rt::spawn(server);
    }
    Ok(fake)
}

/// Like [`start`], but the server stops on SIGINT/SIGTERM; await
/// [`FakeProviders::serve_until_signalled`].
pub fn start_for_cli(
    bind: SocketAddr,
    config: FakeProvidersConfig,
) -> Result<FakeProviders, FakeError> {
    build(bind, config, true)
}

fn build(
    bind: SocketAddr,
    config: FakeProvidersConfig,
    signals: bool,
) -> Result<FakeProviders, FakeError> {
    if !bind.ip().is_loopback() {
        return Err(FakeError::NotLoopback(bind));
    }
    let workers = config.workers.max(1);
    let state = Arc::new(FakeState {
        config,
        chat_requests: AtomicU64::new(0),
        speech_requests: AtomicU64::new(0),
        transcription_requests: AtomicU64::new(0),
    });
    let data = web::Data::from(state.clone());
    let mut server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .app_data(web::PayloadConfig::new(MAX_BODY_BYTES))
            .route("/v1/chat/completions", web::post().to(chat))
            .route("/v1/audio/speech", web::post().to(speech))
            .route("/v1/audio/transcriptions", web::post().to(transcribe))
            .route("/v1/fake/stats", web::get().to(stats))
    })
    // Streamed words must not wait for the previous segment's ACK (Nagle's
    // algorithm against the server's delayed ACKs adds up to 40 ms): the
    // configured delays are the only latency the fake adds.
    .on_connect(|io, _| {
        if let Some(tcp) = io.downcast_ref::<actix_rt::net::TcpStream>() {
            let _ = tcp.set_nodelay(true);
        }
    })
    .workers(workers)
    .shutdown_timeout(1);
    if !signals {
        server = server.disable_signals();
    }
    let server = server
        .bind(bind)
        .map_err(|source| FakeError::Bind { addr: bind, source })?;
    let addr = server.addrs()[0];
    let server = server.run();
    Ok(FakeProviders {
        base_url: format!("http://{addr}/v1"),
        addr,
        handle: server.handle(),
        state,
        server: Some(server),
    })
}

/// One SSE event of a streamed chat completion.
fn sse_chunk(delta: Value, finish_reason: Option<&str>) -> web::Bytes {
    let chunk = json!({
        "object": "chat.completion.chunk",
        "model": "fake-1",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    });
    web::Bytes::from(format!("data: {chunk}\n\n"))
}

async fn chat(state: web::Data<FakeState>) -> HttpResponse {
    state.chat_requests.fetch_add(1, Ordering::Relaxed);
    let config = &state.config;
    tokio::time::sleep(config.llm_delay).await;
    let mut events: Vec<web::Bytes> = config
        .reply
        .split_inclusive(' ')
        .map(|word| sse_chunk(json!({"content": word}), None))
        .collect();
    events.push(sse_chunk(json!({}), Some("stop")));
    events.push(web::Bytes::from_static(b"data: [DONE]\n\n"));
    let gap = config.llm_token_gap;
    let body = futures_util::stream::unfold(
        (events.into_iter(), true),
        move |(mut events, first)| async move {
            let event = events.next()?;
            if !first && !gap.is_zero() {
                tokio::time::sleep(gap).await;
            }
            Some((Ok::<_, std::convert::Infallible>(event), (events, false)))
        },
    );
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("cache-control", "no-cache"))
        .streaming(body)
}

async fn speech(state: web::Data<FakeState>, body: web::Bytes) -> HttpResponse {
    state.speech_requests.fetch_add(1, Ordering::Relaxed);
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let Some(text) = request["input"].as_str() else {
        return HttpResponse::BadRequest().json(
            json!({"error": {"message": "`input` is required", "type": "invalid_request_error"}}),
        );
    };
    let ms = text.chars().count() * state.config.ms_per_char as usize;
    let samples = ms * SPEECH_SAMPLE_RATE / 1000;
    tokio::time::sleep(state.config.tts_delay).await;
    HttpResponse::Ok()
        .content_type("application/octet-stream")
        .body(tone(samples))
}

/// `samples` of a quiet 440 Hz tone, PCM16 little-endian.
fn tone(samples: usize) -> Vec<u8> {
    let step = std::f32::consts::TAU * 440.0 / SPEECH_SAMPLE_RATE as f32;
    let mut pcm = Vec::with_capacity(samples * 2);
    for i in 0..samples {
        let s = ((i as f32 * step).sin() * 6000.0) as i16;
        pcm.extend_from_slice(&s.to_le_bytes());
    }
    pcm
}

async fn transcribe(state: web::Data<FakeState>, body: web::Bytes) -> HttpResponse {
    state.transcription_requests.fetch_add(1, Ordering::Relaxed);
    if body.is_empty() {
        return HttpResponse::BadRequest().json(
            json!({"error": {"message": "no audio uploaded", "type": "invalid_request_error"}}),
        );
    }
    tokio::time::sleep(state.config.stt_delay).await;
    HttpResponse::Ok().json(json!({"text": state.config.transcript}))
}

async fn stats(state: web::Data<FakeState>) -> HttpResponse {
    HttpResponse::Ok().json(state.stats())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn speech_is_the_requested_length_of_pcm16() {
        let pcm = tone(24_000);
        assert_eq!(pcm.len(), 48_000, "one second at 24 kHz, two bytes each");
        assert!(pcm.chunks(2).any(|s| s != [0, 0]), "not silence");
    }

    #[test]
    fn sse_chunks_are_openai_shaped() {
        let chunk = sse_chunk(json!({"content": "Hi "}), None);
        let text = std::str::from_utf8(&chunk).unwrap_or_default();
        let payload = text
            .strip_prefix("data: ")
            .and_then(|t| t.strip_suffix("\n\n"))
            .unwrap_or_default();
        let value: Value = serde_json::from_str(payload).unwrap_or(Value::Null);
        assert_eq!(value["choices"][0]["delta"]["content"], "Hi ");
    }

    #[actix_rt::test]
    async fn only_loopback_is_allowed() {
        let public: SocketAddr = ([0, 0, 0, 0], 0).into();
        assert!(matches!(
            start(public, FakeProvidersConfig::default()).await,
            Err(FakeError::NotLoopback(_))
        ));
    }
}
