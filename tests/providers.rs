//! The OpenAI adapters against fake provider servers on `127.0.0.1:0` that
//! speak HTTP/1.1 by hand, so each test controls exactly how the answer is
//! cut into pieces, when it stalls and whether it fails, and can see the
//! client hang up.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use palaver::config::{ProviderSettings, Secret, Settings};
use palaver::providers::Providers;
use palaver_actors::conversation::{ChatMessage, ChatRole};
use palaver_actors::media::{AudioFrame, FRAME_SAMPLES};
use palaver_actors::ports::{
    LanguageModel, LlmRequest, ProviderError, SpeechRecognizer, SttInput, SttOptions, Transcript,
    TtsRequest,
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

/// Bound on waits for something that must happen; only a broken adapter
/// reaches it.
const MUST_HAPPEN_WITHIN: Duration = Duration::from_secs(10);

/// The short timeouts of the stall tests.
const SHORT_TIMEOUT_MS: u64 = 300;

// ---------------------------------------------------------------------------
// The fake provider server.

/// A request as the fake server read it.
#[derive(Debug, Clone)]
struct Captured {
    method: String,
    path: String,
    /// Lower-cased names.
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

impl Captured {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("JSON request body")
    }
}

/// One accepted connection, its request already read (and sent to
/// [`FakeServer::next_request`]).
struct Exchange {
    /// 0 for the first connection the server accepted, 1 for the next…
    index: usize,
    socket: TcpStream,
}

impl Exchange {
    /// A whole response, then the connection is closed.
    async fn respond(mut self, status: &str, content_type: &str, body: &[u8]) {
        let head = format!(
            "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        self.socket
            .write_all(head.as_bytes())
            .await
            .expect("write head");
        self.socket.write_all(body).await.expect("write body");
        self.socket.shutdown().await.ok();
    }

    /// The head of a chunked 200 response.
    async fn start_chunked(&mut self, content_type: &str) {
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
        );
        self.socket
            .write_all(head.as_bytes())
            .await
            .expect("write head");
        self.socket.flush().await.expect("flush");
    }

    /// One HTTP chunk, written and flushed on its own.
    async fn send_chunk(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let mut framed = format!("{:x}\r\n", bytes.len()).into_bytes();
        framed.extend_from_slice(bytes);
        framed.extend_from_slice(b"\r\n");
        self.socket.write_all(&framed).await?;
        self.socket.flush().await
    }

    async fn end_chunked(mut self) {
        self.socket
            .write_all(b"0\r\n\r\n")
            .await
            .expect("last chunk");
        self.socket.shutdown().await.ok();
    }

    /// Waits until the client closes the connection (or resets it).
    async fn client_hangs_up(&mut self) {
        let mut buf = [0u8; 1024];
        loop {
            match self.socket.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }
}

type Handler = Arc<dyn Fn(Exchange) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

struct FakeServer {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    requests: mpsc::UnboundedReceiver<Captured>,
}

impl FakeServer {
    /// Serves every connection with `handler`, on its own task.
    async fn start<F, Fut>(handler: F) -> Self
    where
        F: Fn(Exchange) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let handler: Handler = Arc::new(move |exchange| Box::pin(handler(exchange)));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let (requests_tx, requests) = mpsc::unbounded_channel();
        let counter = connections.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                socket.set_nodelay(true).expect("nodelay");
                let index = counter.fetch_add(1, Ordering::SeqCst);
                let handler = handler.clone();
                let requests_tx = requests_tx.clone();
                tokio::spawn(async move {
                    let Some(request) = read_request(&mut socket).await else {
                        return;
                    };
                    requests_tx.send(request).ok();
                    handler(Exchange { index, socket }).await;
                });
            }
        });
        Self {
            addr,
            connections,
            requests,
        }
    }

    fn settings(&self) -> ProviderSettings {
        ProviderSettings {
            openai_api_key: Some(Secret::new("test-key")),
            openai_base_url: format!("http://{}/v1", self.addr),
            request_timeout_ms: 30_000,
            first_byte_timeout_ms: 5_000,
            idle_timeout_ms: 5_000,
            tts_model: "tts-test".to_owned(),
            stt_model: "stt-test".to_owned(),
            ..ProviderSettings::default()
        }
    }

    /// Settings whose first-byte and idle timeouts are short.
    fn impatient_settings(&self) -> ProviderSettings {
        ProviderSettings {
            first_byte_timeout_ms: SHORT_TIMEOUT_MS,
            idle_timeout_ms: SHORT_TIMEOUT_MS,
            ..self.settings()
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    async fn next_request(&mut self) -> Captured {
        tokio::time::timeout(MUST_HAPPEN_WITHIN, self.requests.recv())
            .await
            .expect("a request in time")
            .expect("server running")
    }
}

/// Reads a request head and its body (content-length or chunked).
async fn read_request(socket: &mut TcpStream) -> Option<Captured> {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(at) = find(&buf, b"\r\n\r\n") {
            break at;
        }
        let mut piece = [0u8; 4096];
        let n = socket.read(&mut piece).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&piece[..n]);
    };
    let head = String::from_utf8(buf[..head_end].to_vec()).expect("ASCII head");
    let mut rest = buf[head_end + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let method = request_line.next()?.to_owned();
    let path = request_line.next()?.to_owned();
    let headers: HashMap<String, String> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    let body = if let Some(length) = headers.get("content-length") {
        let length: usize = length.parse().expect("content-length");
        while rest.len() < length {
            let mut piece = [0u8; 65536];
            let n = socket.read(&mut piece).await.ok()?;
            if n == 0 {
                return None;
            }
            rest.extend_from_slice(&piece[..n]);
        }
        rest.truncate(length);
        rest
    } else if headers
        .get("transfer-encoding")
        .is_some_and(|te| te.contains("chunked"))
    {
        read_chunked(socket, rest).await?
    } else {
        Vec::new()
    };
    Some(Captured {
        method,
        path,
        headers,
        body,
    })
}

async fn read_chunked(socket: &mut TcpStream, mut buf: Vec<u8>) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        while find(&buf, b"\r\n").is_none() {
            fill(socket, &mut buf).await?;
        }
        let line_end = find(&buf, b"\r\n")?;
        let size_text = String::from_utf8(buf[..line_end].to_vec()).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        buf.drain(..line_end + 2);
        while buf.len() < size + 2 {
            fill(socket, &mut buf).await?;
        }
        if size == 0 {
            return Some(body);
        }
        body.extend_from_slice(&buf[..size]);
        buf.drain(..size + 2);
    }
}

async fn fill(socket: &mut TcpStream, buf: &mut Vec<u8>) -> Option<()> {
    let mut piece = [0u8; 65536];
    let n = socket.read(&mut piece).await.ok()?;
    if n == 0 {
        return None;
    }
    buf.extend_from_slice(&piece[..n]);
    Some(())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------------------
// Helpers for the tests.

fn chat_request() -> LlmRequest {
    LlmRequest {
        model: "gpt-test".to_owned(),
        messages: vec![
            ChatMessage {
                role: ChatRole::System,
                content: "You are terse.".to_owned(),
            },
            ChatMessage {
                role: ChatRole::User,
                content: "Say hello.".to_owned(),
            },
            ChatMessage {
                role: ChatRole::Assistant,
                content: "Hel".to_owned(),
            },
        ],
        temperature: 0.7,
        max_tokens: 64,
    }
}

fn sse_delta(text: &str) -> String {
    let chunk = json!({
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}],
    });
    format!("data: {chunk}\n\n")
}

/// A reply as OpenAI streams it: role chunk, deltas, finish, `[DONE]`.
fn sse_reply(deltas: &[&str]) -> String {
    let mut body = String::from(
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n",
    );
    for delta in deltas {
        body.push_str(&sse_delta(delta));
    }
    body.push_str(
        "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
    );
    body.push_str("data: [DONE]\n\n");
    body
}

fn chat(settings: &ProviderSettings) -> Arc<dyn LanguageModel> {
    Providers::from_settings(settings)
        .language_model("openai")
        .expect("openai configured")
}

/// Every item of a reply, errors included.
async fn collect_reply(model: &dyn LanguageModel) -> Vec<Result<String, ProviderError>> {
    let stream = model.stream_reply(chat_request());
    tokio::time::timeout(MUST_HAPPEN_WITHIN, stream.collect::<Vec<_>>())
        .await
        .expect("the reply ends")
}

fn texts(items: &[Result<String, ProviderError>]) -> String {
    items
        .iter()
        .map(|item| item.as_ref().expect("no error").as_str())
        .collect()
}

// ---------------------------------------------------------------------------
// Language model.

#[tokio::test]
async fn chat_reply_split_mid_line_streams_every_delta() {
    let mut server = FakeServer::start(|mut exchange: Exchange| async move {
        let reply = format!(
            ": keep-alive\n\n\n{}",
            sse_reply(&["Hello", ", wörld", "!"])
        );
        let bytes = reply.as_bytes();
        exchange.start_chunked("text/event-stream").await;
        // Cut mid-line, mid-"data:", and inside the two-byte "ö".
        let o_umlaut = reply.find('ö').expect("ö");
        let mut cuts = vec![3, 20, 57, o_umlaut + 1, o_umlaut + 9, bytes.len() - 4];
        cuts.sort_unstable();
        let mut from = 0;
        for cut in cuts.into_iter().chain([bytes.len()]) {
            exchange.send_chunk(&bytes[from..cut]).await.expect("send");
            from = cut;
        }
        exchange.end_chunked().await;
    })
    .await;
    let model = chat(&server.settings());

    let items = collect_reply(model.as_ref()).await;

    assert_eq!(texts(&items), "Hello, wörld!");
    assert_eq!(items.len(), 3, "one item per delta: {items:?}");
    let request = server.next_request().await;
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/v1/chat/completions");
    assert_eq!(
        request.headers.get("authorization").map(String::as_str),
        Some("Bearer test-key")
    );
    assert_eq!(
        request.json(),
        json!({
            "model": "gpt-test",
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Say hello."},
                {"role": "assistant", "content": "Hel"},
            ],
            "temperature": 0.7,
            "max_tokens": 64,
            "stream": true,
        })
    );
}

#[tokio::test]
async fn chat_retries_once_after_a_500() {
    let server = FakeServer::start(|mut exchange: Exchange| async move {
        if exchange.index == 0 {
            let body = br#"{"error":{"message":"The server had an error","type":"server_error"}}"#;
            exchange
                .respond("500 Internal Server Error", "application/json", body)
                .await;
        } else {
            exchange.start_chunked("text/event-stream").await;
            exchange
                .send_chunk(sse_reply(&["second ", "time"]).as_bytes())
                .await
                .expect("send");
            exchange.end_chunked().await;
        }
    })
    .await;
    let model = chat(&server.settings());

    let items = collect_reply(model.as_ref()).await;

    assert_eq!(texts(&items), "second time");
    assert_eq!(server.connections(), 2);
}

#[tokio::test]
async fn chat_retries_only_once() {
    let server = FakeServer::start(|exchange: Exchange| async move {
        let body = br#"{"error":{"message":"Slow down","type":"rate_limit"}}"#;
        exchange
            .respond("429 Too Many Requests", "application/json", body)
            .await;
    })
    .await;
    let model = chat(&server.settings());

    let items = collect_reply(model.as_ref()).await;

    assert_eq!(
        items,
        vec![Err(ProviderError::Status {
            provider: "openai",
            status: 429,
            message: "Slow down".to_owned(),
        })]
    );
    assert_eq!(server.connections(), 2);
}

#[tokio::test]
async fn chat_401_surfaces_the_provider_message_without_retry() {
    let server = FakeServer::start(|exchange: Exchange| async move {
        let body = json!({"error": {
            "message": "Incorrect API key provided: te**key.",
            "type": "invalid_request_error",
            "param": null,
            "code": "invalid_api_key",
        }});
        exchange
            .respond(
                "401 Unauthorized",
                "application/json",
                body.to_string().as_bytes(),
            )
            .await;
    })
    .await;
    let model = chat(&server.settings());

    let items = collect_reply(model.as_ref()).await;

    assert_eq!(
        items,
        vec![Err(ProviderError::Status {
            provider: "openai",
            status: 401,
            message: "Incorrect API key provided: te**key.".to_owned(),
        })]
    );
    assert_eq!(server.connections(), 1);
}

#[tokio::test]
async fn chat_stalled_before_the_first_byte_times_out() {
    let (hung_up_tx, hung_up) = oneshot::channel();
    let hung_up_tx = std::sync::Mutex::new(Some(hung_up_tx));
    let server = FakeServer::start(move |mut exchange: Exchange| {
        let hung_up_tx = hung_up_tx.lock().unwrap().take();
        async move {
            exchange.client_hangs_up().await;
            if let Some(tx) = hung_up_tx {
                tx.send(()).ok();
            }
        }
    })
    .await;
    let model = chat(&server.impatient_settings());

    let items = collect_reply(model.as_ref()).await;

    assert_eq!(
        items,
        vec![Err(ProviderError::Timeout {
            provider: "openai",
            after_ms: SHORT_TIMEOUT_MS,
        })]
    );
    tokio::time::timeout(MUST_HAPPEN_WITHIN, hung_up)
        .await
        .expect("the client hung up")
        .expect("signal");
    assert_eq!(server.connections(), 1, "a stall is not retried");
}

#[tokio::test]
async fn chat_stalled_mid_stream_times_out_after_the_idle_limit() {
    let server = FakeServer::start(|mut exchange: Exchange| async move {
        exchange.start_chunked("text/event-stream").await;
        exchange
            .send_chunk(sse_delta("Hi").as_bytes())
            .await
            .expect("send");
        exchange.client_hangs_up().await;
    })
    .await;
    let model = chat(&server.impatient_settings());

    let items = collect_reply(model.as_ref()).await;

    assert_eq!(
        items,
        vec![
            Ok("Hi".to_owned()),
            Err(ProviderError::Timeout {
                provider: "openai",
                after_ms: SHORT_TIMEOUT_MS,
            }),
        ]
    );
    assert_eq!(server.connections(), 1, "nothing is retried after tokens");
}

#[tokio::test]
async fn dropping_the_reply_after_the_first_token_closes_the_connection() {
    let (hung_up_tx, hung_up) = oneshot::channel();
    let hung_up_tx = std::sync::Mutex::new(Some(hung_up_tx));
    let server = FakeServer::start(move |mut exchange: Exchange| {
        let hung_up_tx = hung_up_tx.lock().unwrap().take();
        async move {
            exchange.start_chunked("text/event-stream").await;
            exchange
                .send_chunk(sse_delta("First").as_bytes())
                .await
                .expect("send");
            exchange.client_hangs_up().await;
            if let Some(tx) = hung_up_tx {
                tx.send(()).ok();
            }
        }
    })
    .await;
    let model = chat(&server.settings());

    let mut reply = model.stream_reply(chat_request());
    let first = tokio::time::timeout(MUST_HAPPEN_WITHIN, reply.next())
        .await
        .expect("first token in time");
    assert_eq!(first, Some(Ok("First".to_owned())));
    drop(reply);

    tokio::time::timeout(MUST_HAPPEN_WITHIN, hung_up)
        .await
        .expect("the server saw the client hang up")
        .expect("signal");
}

#[tokio::test]
async fn chat_error_object_mid_stream_ends_the_reply_with_its_message() {
    let server = FakeServer::start(|mut exchange: Exchange| async move {
        exchange.start_chunked("text/event-stream").await;
        let body = format!(
            "{}data: {{\"error\":{{\"message\":\"The model is overloaded\",\"type\":\"server_error\"}}}}\n\n",
            sse_delta("Hi")
        );
        exchange.send_chunk(body.as_bytes()).await.expect("send");
        exchange.end_chunked().await;
    })
    .await;
    let model = chat(&server.settings());

    let items = collect_reply(model.as_ref()).await;

    assert_eq!(items.len(), 2, "{items:?}");
    assert_eq!(items[0], Ok("Hi".to_owned()));
    assert!(
        matches!(&items[1], Err(ProviderError::Status { message, .. }) if message == "The model is overloaded"),
        "{items:?}"
    );
}

#[tokio::test]
async fn chat_stream_ending_before_done_is_a_protocol_error() {
    let server = FakeServer::start(|mut exchange: Exchange| async move {
        exchange.start_chunked("text/event-stream").await;
        exchange
            .send_chunk(sse_delta("Hal").as_bytes())
            .await
            .expect("send");
        exchange.end_chunked().await;
    })
    .await;
    let model = chat(&server.settings());

    let items = collect_reply(model.as_ref()).await;

    assert_eq!(items.len(), 2, "{items:?}");
    assert_eq!(items[0], Ok("Hal".to_owned()));
    assert!(
        matches!(items[1], Err(ProviderError::Protocol { .. })),
        "{items:?}"
    );
}

#[tokio::test]
async fn chat_refused_connection_is_a_transport_error() {
    // A port that was just free: nothing listens there.
    let addr = {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        listener.local_addr().expect("addr")
    };
    let settings = ProviderSettings {
        openai_base_url: format!("http://{addr}/v1"),
        ..ProviderSettings::default()
    };
    let model = chat(&settings);

    let items = collect_reply(model.as_ref()).await;

    assert_eq!(items.len(), 1, "{items:?}");
    assert!(
        matches!(items[0], Err(ProviderError::Transport { .. })),
        "{items:?}"
    );
}

// ---------------------------------------------------------------------------
// Speech synthesis.

#[tokio::test]
async fn speech_pcm_in_odd_sized_chunks_reassembles_to_the_samples_sent() {
    let sent: Vec<i16> = (0..4801)
        .map(|i| ((i * 7919) % 65_536 - 32_768) as i16)
        .collect();
    let pcm: Vec<u8> = sent.iter().flat_map(|s| s.to_le_bytes()).collect();
    let mut server = FakeServer::start(move |mut exchange: Exchange| {
        let pcm = pcm.clone();
        async move {
            exchange.start_chunked("audio/pcm").await;
            let mut rest = pcm.as_slice();
            for size in [1, 3, 1, 999, 5, 7].into_iter().cycle() {
                if rest.is_empty() {
                    break;
                }
                let (piece, tail) = rest.split_at(size.min(rest.len()));
                exchange.send_chunk(piece).await.expect("send");
                rest = tail;
            }
            exchange.end_chunked().await;
        }
    })
    .await;
    let voice = Providers::from_settings(&server.settings())
        .speech_synthesizer("openai")
        .expect("openai configured");

    let pieces = tokio::time::timeout(
        MUST_HAPPEN_WITHIN,
        voice
            .synthesize(TtsRequest {
                text: "Hello there.".to_owned(),
                voice_id: "alloy".to_owned(),
                settings: json!({"speed": 1.25, "stability": 0.5}),
            })
            .collect::<Vec<_>>(),
    )
    .await
    .expect("synthesis ends");

    let mut received = Vec::new();
    for piece in pieces {
        let audio = piece.expect("no error");
        assert_eq!(audio.sample_rate, 24_000);
        assert_eq!(audio.words, None);
        assert!(!audio.samples.is_empty());
        received.extend(audio.samples);
    }
    assert_eq!(received, sent);
    let request = server.next_request().await;
    assert_eq!(request.path, "/v1/audio/speech");
    assert_eq!(
        request.json(),
        json!({
            "model": "tts-test",
            "input": "Hello there.",
            "voice": "alloy",
            "response_format": "pcm",
            "speed": 1.25,
        })
    );
}

#[tokio::test]
async fn speech_error_status_is_reported() {
    let server = FakeServer::start(|exchange: Exchange| async move {
        let body =
            br#"{"error":{"message":"Invalid voice 'nobody'","type":"invalid_request_error"}}"#;
        exchange
            .respond("400 Bad Request", "application/json", body)
            .await;
    })
    .await;
    let voice = Providers::from_settings(&server.settings())
        .speech_synthesizer("openai")
        .expect("openai configured");

    let pieces = voice
        .synthesize(TtsRequest {
            text: "Hi".to_owned(),
            voice_id: "nobody".to_owned(),
            settings: Value::Null,
        })
        .collect::<Vec<_>>()
        .await;

    assert_eq!(
        pieces,
        vec![Err(ProviderError::Status {
            provider: "openai",
            status: 400,
            message: "Invalid voice 'nobody'".to_owned(),
        })]
    );
}

// ---------------------------------------------------------------------------
// Speech recognition.

/// The parts of a multipart/form-data body by name.
fn multipart_parts(request: &Captured) -> HashMap<String, Vec<u8>> {
    let content_type = request.headers.get("content-type").expect("content-type");
    let boundary = content_type
        .split("boundary=")
        .nth(1)
        .expect("boundary")
        .trim_matches('"');
    let delimiter = format!("--{boundary}");
    let mut parts = HashMap::new();
    let mut rest = request.body.as_slice();
    while let Some(start) = find(rest, delimiter.as_bytes()) {
        rest = &rest[start + delimiter.len()..];
        if rest.starts_with(b"--") {
            break;
        }
        let head_end = find(rest, b"\r\n\r\n").expect("part head");
        let head = String::from_utf8_lossy(&rest[..head_end]).into_owned();
        let body_start = head_end + 4;
        let body_end = find(&rest[body_start..], delimiter.as_bytes()).expect("part end");
        // The part's bytes end with CRLF before the next delimiter.
        let content = rest[body_start..body_start + body_end - 2].to_vec();
        let name = head
            .split("name=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .expect("part name")
            .to_owned();
        parts.insert(name, content);
        rest = &rest[body_start + body_end..];
    }
    parts
}

/// The samples of a mono 16 kHz PCM16 WAV with a 44-byte header, after
/// checking the header says exactly that.
fn wav_samples(wav: &[u8]) -> Vec<i16> {
    let u16_at = |at: usize| u16::from_le_bytes([wav[at], wav[at + 1]]);
    let u32_at = |at: usize| u32::from_le_bytes([wav[at], wav[at + 1], wav[at + 2], wav[at + 3]]);
    assert_eq!(&wav[0..4], b"RIFF");
    assert_eq!(u32_at(4) as usize, wav.len() - 8);
    assert_eq!(&wav[8..16], b"WAVEfmt ");
    assert_eq!(u16_at(20), 1, "PCM");
    assert_eq!(u16_at(22), 1, "mono");
    assert_eq!(u32_at(24), 16_000);
    assert_eq!(u32_at(28), 32_000);
    assert_eq!(u16_at(34), 16);
    assert_eq!(&wav[36..40], b"data");
    assert_eq!(u32_at(40) as usize, wav.len() - 44);
    wav[44..]
        .chunks_exact(2)
        .map(|p| i16::from_le_bytes([p[0], p[1]]))
        .collect()
}

fn frame(number: usize) -> AudioFrame {
    let mut frame = AudioFrame::silence();
    for (i, sample) in frame.samples.iter_mut().enumerate() {
        *sample = ((number * FRAME_SAMPLES + i) % 30_000) as i16 - 15_000;
    }
    frame
}

fn recognizer(settings: &ProviderSettings) -> Arc<dyn SpeechRecognizer> {
    Providers::from_settings(settings)
        .speech_recognizer("openai")
        .expect("openai configured")
}

#[tokio::test]
async fn transcription_uploads_a_wav_of_the_frames_sent_and_returns_the_text() {
    let mut server = FakeServer::start(|exchange: Exchange| async move {
        exchange
            .respond(
                "200 OK",
                "application/json",
                br#"{"text":" Hello, world. "}"#,
            )
            .await;
    })
    .await;
    let recognizer = recognizer(&server.settings());
    let mut recognition = recognizer.start(SttOptions {
        model: String::new(),
        language: "en".to_owned(),
    });
    const FRAMES: usize = 75;

    for n in 0..FRAMES {
        recognition
            .audio
            .send(SttInput::Audio(frame(n)))
            .await
            .expect("send");
    }
    recognition
        .audio
        .send(SttInput::EndOfUtterance)
        .await
        .expect("send");
    let transcript = tokio::time::timeout(MUST_HAPPEN_WITHIN, recognition.transcripts.next())
        .await
        .expect("transcript in time");

    assert_eq!(
        transcript,
        Some(Ok(Transcript {
            text: "Hello, world.".to_owned(),
            is_final: true,
        }))
    );
    let request = server.next_request().await;
    assert_eq!(request.path, "/v1/audio/transcriptions");
    assert_eq!(
        request.headers.get("authorization").map(String::as_str),
        Some("Bearer test-key")
    );
    let parts = multipart_parts(&request);
    assert_eq!(parts["model"], b"stt-test", "the default model");
    assert_eq!(parts["language"], b"en");
    assert_eq!(parts["response_format"], b"json");
    let samples = wav_samples(&parts["file"]);
    assert_eq!(samples.len(), FRAMES * FRAME_SAMPLES);
    let expected: Vec<i16> = (0..FRAMES).flat_map(|n| frame(n).samples).collect();
    assert_eq!(samples, expected);
}

#[tokio::test]
async fn transcription_failure_is_reported_and_the_next_utterance_still_transcribed() {
    let mut server = FakeServer::start(|exchange: Exchange| async move {
        if exchange.index == 0 {
            let body = br#"{"error":{"message":"Audio file is too short","type":"invalid_request_error"}}"#;
            exchange
                .respond("400 Bad Request", "application/json", body)
                .await;
        } else {
            exchange
                .respond("200 OK", "application/json", br#"{"text":"second"}"#)
                .await;
        }
    })
    .await;
    let recognizer = recognizer(&server.settings());
    let recognition = recognizer.start(SttOptions {
        model: "whisper-large".to_owned(),
        language: String::new(),
    });

    let audio = &recognition.audio;
    audio.send(SttInput::Audio(frame(0))).await.expect("send");
    audio.send(SttInput::EndOfUtterance).await.expect("send");
    audio.send(SttInput::EndOfUtterance).await.expect("send");
    for n in 1..4 {
        audio.send(SttInput::Audio(frame(n))).await.expect("send");
    }
    audio.send(SttInput::EndOfUtterance).await.expect("send");
    drop(recognition.audio);
    let transcripts = tokio::time::timeout(
        MUST_HAPPEN_WITHIN,
        recognition.transcripts.collect::<Vec<_>>(),
    )
    .await
    .expect("recognition ends once its audio sender is gone");

    assert_eq!(
        transcripts,
        vec![
            Err(ProviderError::Status {
                provider: "openai",
                status: 400,
                message: "Audio file is too short".to_owned(),
            }),
            // The end of an utterance with no audio: an empty final, no request.
            Ok(Transcript {
                text: String::new(),
                is_final: true,
            }),
            Ok(Transcript {
                text: "second".to_owned(),
                is_final: true,
            }),
        ]
    );
    let first = server.next_request().await;
    let second = server.next_request().await;
    assert_eq!(server.connections(), 2);
    assert_eq!(multipart_parts(&first)["model"], b"whisper-large");
    assert!(!multipart_parts(&first).contains_key("language"));
    assert_eq!(
        wav_samples(&multipart_parts(&first)["file"]).len(),
        FRAME_SAMPLES
    );
    assert_eq!(
        wav_samples(&multipart_parts(&second)["file"]).len(),
        3 * FRAME_SAMPLES
    );
}

// ---------------------------------------------------------------------------
// Registry and settings.

#[test]
fn openai_without_a_key_is_unavailable_with_the_reason() {
    let providers = Providers::from_settings(&ProviderSettings::default());

    let err = providers
        .language_model("openai")
        .err()
        .expect("unavailable");

    assert_eq!(err.code(), "provider_unavailable");
    assert!(err.to_string().contains("OPENAI_API_KEY"), "{err}");
    assert!(providers.speech_synthesizer("openai").is_err());
    assert!(providers.speech_recognizer("openai").is_err());
}

#[test]
fn an_unknown_provider_is_unavailable() {
    let settings = ProviderSettings {
        openai_api_key: Some(Secret::new("k")),
        ..ProviderSettings::default()
    };
    let providers = Providers::from_settings(&settings);

    assert!(providers.language_model("openai").is_ok());
    let err = providers.language_model("acme").err().expect("unknown");
    assert_eq!(err.code(), "provider_unavailable");
    assert!(err.to_string().contains("acme"), "{err}");
}

#[test]
fn openai_api_key_comes_from_the_environment_and_is_never_printed() {
    let env = [
        ("OPENAI_API_KEY", "sk-from-env-123"),
        ("PALAVER_PROVIDERS_IDLE_TIMEOUT_MS", "1500"),
        ("PALAVER_PROVIDERS_OPENAI_BASE_URL", "http://127.0.0.1:9/v1"),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()));

    let settings = Settings::load(None, env).expect("load");

    assert_eq!(
        settings
            .providers
            .openai_api_key
            .as_ref()
            .map(Secret::expose),
        Some("sk-from-env-123")
    );
    assert_eq!(settings.providers.idle_timeout_ms, 1500);
    assert_eq!(settings.providers.openai_base_url, "http://127.0.0.1:9/v1");
    let printed = format!(
        "{settings:?} {:?}",
        Providers::from_settings(&settings.providers)
    );
    assert!(!printed.contains("sk-from-env-123"), "{printed}");
    let api = palaver::providers::OpenAiApi::new(&settings.providers).expect("api");
    assert!(!format!("{api:?}").contains("sk-from-env-123"));
}
