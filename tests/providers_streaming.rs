//! The Deepgram and ElevenLabs adapters against fake provider servers on
//! `127.0.0.1:0` that speak the real protocols: a WebSocket server
//! (tokio-tungstenite's) that checks the upgrade and answers audio with
//! results as Deepgram does, and an HTTP/1.1 server written by hand so that
//! each test controls exactly how ElevenLabs' JSON lines are cut into
//! pieces.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use palaver::config::{ProviderSettings, Secret, Settings};
use palaver::providers::{DeepgramLive, PROVIDER_NAMES, Providers};
use palaver_actors::conversation::WordTiming;
use palaver_actors::media::{AudioFrame, FRAME_SAMPLES};
use palaver_actors::ports::{
    BoxStream, ProviderError, SpeechRecognizer, SpeechSynthesizer, SttInput, SttOptions,
    Transcript, TtsAudio, TtsRequest,
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// Bound on waits for something that must happen; only a broken adapter
/// reaches it.
const MUST_HAPPEN_WITHIN: Duration = Duration::from_secs(10);

/// The short idle timeout of the stall tests.
const SHORT_TIMEOUT_MS: u64 = 300;

const DEEPGRAM_KEY: &str = "dg-test-key";
const ELEVENLABS_KEY: &str = "xi-test-key";

/// Bytes of one 20 ms frame of 16 kHz PCM16.
const FRAME_BYTES: usize = 640;

fn settings() -> ProviderSettings {
    ProviderSettings {
        deepgram_api_key: Some(Secret::new(DEEPGRAM_KEY)),
        elevenlabs_api_key: Some(Secret::new(ELEVENLABS_KEY)),
        elevenlabs_model: "eleven_test".to_owned(),
        request_timeout_ms: 30_000,
        first_byte_timeout_ms: 5_000,
        idle_timeout_ms: 5_000,
        ..ProviderSettings::default()
    }
}

// ---------------------------------------------------------------------------
// The fake Deepgram: a WebSocket server.

/// The upgrade request as the fake server saw it.
#[derive(Debug, Clone)]
struct Upgrade {
    /// Path and query, e.g. `/v1/listen?model=nova-3&…`.
    target: String,
    authorization: Option<String>,
}

/// How the fake answers the upgrade of connection `index`: `None` accepts
/// it, `Some((status, body))` refuses it with that HTTP answer.
type UpgradeAnswer = Arc<dyn Fn(usize) -> Option<(u16, String)> + Send + Sync>;

type DeepgramHandler = Arc<
    dyn Fn(WebSocketStream<TcpStream>) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync,
>;

struct FakeDeepgram {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    upgrades: mpsc::UnboundedReceiver<Upgrade>,
}

impl FakeDeepgram {
    /// Accepts every upgrade and serves the socket with `handler`.
    async fn start<F, Fut>(handler: F) -> Self
    where
        F: Fn(WebSocketStream<TcpStream>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        Self::start_answering(|_| None, handler).await
    }

    async fn start_answering<A, F, Fut>(answer: A, handler: F) -> Self
    where
        A: Fn(usize) -> Option<(u16, String)> + Send + Sync + 'static,
        F: Fn(WebSocketStream<TcpStream>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let answer: UpgradeAnswer = Arc::new(answer);
        let handler: DeepgramHandler = Arc::new(move |socket| Box::pin(handler(socket)));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let (upgrades_tx, upgrades) = mpsc::unbounded_channel();
        let counter = connections.clone();
        tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    return;
                };
                let index = counter.fetch_add(1, Ordering::SeqCst);
                let refusal = answer(index);
                let handler = handler.clone();
                let upgrades_tx = upgrades_tx.clone();
                tokio::spawn(async move {
                    // The error type is tungstenite's, an HTTP response.
                    #[allow(clippy::result_large_err)]
                    let callback = |request: &Request, response: Response| {
                        upgrades_tx
                            .send(Upgrade {
                                target: request.uri().to_string(),
                                authorization: request
                                    .headers()
                                    .get("authorization")
                                    .and_then(|v| v.to_str().ok())
                                    .map(str::to_owned),
                            })
                            .ok();
                        match refusal {
                            None => Ok(response),
                            Some((status, body)) => Err(error_response(status, body)),
                        }
                    };
                    if let Ok(socket) = tokio_tungstenite::accept_hdr_async(socket, callback).await
                    {
                        handler(socket).await;
                    }
                });
            }
        });
        Self {
            addr,
            connections,
            upgrades,
        }
    }

    fn settings(&self) -> ProviderSettings {
        ProviderSettings {
            deepgram_url: format!("ws://{}/v1/listen", self.addr),
            ..settings()
        }
    }

    fn recognizer(&self) -> Arc<dyn SpeechRecognizer> {
        Providers::from_settings(&self.settings())
            .speech_recognizer("deepgram")
            .expect("deepgram configured")
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    async fn next_upgrade(&mut self) -> Upgrade {
        tokio::time::timeout(MUST_HAPPEN_WITHIN, self.upgrades.recv())
            .await
            .expect("an upgrade in time")
            .expect("server running")
    }
}

fn error_response(status: u16, body: String) -> ErrorResponse {
    http::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Some(body))
        .expect("response")
}

/// A `Results` message as Deepgram sends it.
fn results(transcript: &str, is_final: bool, from_finalize: bool) -> Message {
    let value = json!({
        "type": "Results",
        "channel_index": [0, 1],
        "duration": 0.5,
        "start": 0.0,
        "is_final": is_final,
        "speech_final": false,
        "from_finalize": from_finalize,
        "channel": {"alternatives": [{"transcript": transcript, "confidence": 0.98, "words": []}]},
        "metadata": {"request_id": "req-1", "model_info": {"name": "nova-3"}},
    });
    Message::text(value.to_string())
}

fn metadata() -> Message {
    Message::text(json!({"type": "Metadata", "request_id": "req-1", "duration": 0.3}).to_string())
}

/// The `type` of a control message from the client.
fn control_type(text: &Utf8Bytes) -> String {
    let value: Value = serde_json::from_str(text.as_str()).expect("control messages are JSON");
    value["type"].as_str().expect("a type").to_owned()
}

/// What the fake Deepgram saw of one socket.
#[derive(Debug, Default)]
struct Heard {
    /// The size of each binary message.
    frame_sizes: Vec<usize>,
    audio: Vec<u8>,
    /// The `type` of each text message, KeepAlives left out.
    controls: Vec<String>,
    /// The client sent a close frame or hung up.
    closed_by_client: bool,
}

/// Reads the client's messages, answering as `on_frame` and `on_control`
/// say, until CloseStream (answered with metadata and a normal close) or
/// the client closes.
async fn serve_socket(
    mut socket: WebSocketStream<TcpStream>,
    on_frame: impl Fn(usize) -> Vec<Message>,
    on_control: impl Fn(&str) -> Vec<Message>,
) -> Heard {
    let mut heard = Heard::default();
    loop {
        match socket.next().await {
            Some(Ok(Message::Binary(bytes))) => {
                heard.frame_sizes.push(bytes.len());
                heard.audio.extend_from_slice(&bytes);
                for reply in on_frame(heard.frame_sizes.len()) {
                    socket.send(reply).await.expect("send");
                }
            }
            Some(Ok(Message::Text(text))) => {
                let kind = control_type(&text);
                if kind == "KeepAlive" {
                    continue;
                }
                for reply in on_control(&kind) {
                    socket.send(reply).await.expect("send");
                }
                heard.controls.push(kind.clone());
                if kind == "CloseStream" {
                    socket.send(metadata()).await.expect("send");
                    socket.close(None).await.ok();
                    // Drain to the client's answer to the close.
                    while let Some(Ok(_)) = socket.next().await {}
                    return heard;
                }
            }
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                heard.closed_by_client = true;
                return heard;
            }
            Some(Ok(_)) => {}
        }
    }
}

fn frame(number: usize) -> AudioFrame {
    let mut frame = AudioFrame::silence();
    for (i, sample) in frame.samples.iter_mut().enumerate() {
        *sample = ((number * FRAME_SAMPLES + i) % 30_000) as i16 - 15_000;
    }
    frame
}

fn options() -> SttOptions {
    SttOptions {
        model: String::new(),
        language: "en".to_owned(),
    }
}

/// Every transcript until the recognition ends.
async fn collect_transcripts(
    transcripts: BoxStream<Result<Transcript, ProviderError>>,
) -> Vec<Result<Transcript, ProviderError>> {
    tokio::time::timeout(MUST_HAPPEN_WITHIN, transcripts.collect::<Vec<_>>())
        .await
        .expect("the recognition ends")
}

fn partial(text: &str) -> Result<Transcript, ProviderError> {
    Ok(Transcript {
        text: text.to_owned(),
        is_final: false,
    })
}

fn final_(text: &str) -> Result<Transcript, ProviderError> {
    Ok(Transcript {
        text: text.to_owned(),
        is_final: true,
    })
}

// ---------------------------------------------------------------------------
// Deepgram live transcription.

#[tokio::test]
async fn deepgram_streams_partials_and_finals_and_finalize_closes_the_utterance() {
    let (heard_tx, heard_rx) = oneshot::channel();
    let heard_tx = std::sync::Mutex::new(Some(heard_tx));
    let mut server = FakeDeepgram::start(move |socket| {
        let heard_tx = heard_tx.lock().unwrap().take();
        async move {
            let heard = serve_socket(
                socket,
                |frames| match frames {
                    5 => vec![results("hel", false, false), results("", false, false)],
                    10 => vec![
                        results("Hello there.", true, false),
                        // Silence after it: an empty final nobody asked for.
                        results("", true, false),
                        metadata(),
                    ],
                    12 => vec![results("General", false, false)],
                    _ => Vec::new(),
                },
                |control| match control {
                    "Finalize" => vec![results("General Kenobi!", true, true)],
                    _ => Vec::new(),
                },
            )
            .await;
            if let Some(tx) = heard_tx {
                tx.send(heard).ok();
            }
        }
    })
    .await;
    let recognition = server.recognizer().start(options());
    const FRAMES: usize = 15;

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
    drop(recognition.audio);
    let transcripts = collect_transcripts(recognition.transcripts).await;

    assert_eq!(
        transcripts,
        vec![
            partial("hel"),
            final_("Hello there."),
            partial("General"),
            final_("General Kenobi!"),
        ]
    );
    let upgrade = server.next_upgrade().await;
    assert_eq!(
        upgrade.target,
        "/v1/listen?model=nova-3&language=en&encoding=linear16&sample_rate=16000&channels=1\
         &interim_results=true&punctuate=true&endpointing=false"
    );
    assert_eq!(upgrade.authorization.as_deref(), Some("Token dg-test-key"));
    let heard = tokio::time::timeout(MUST_HAPPEN_WITHIN, heard_rx)
        .await
        .expect("the server finished")
        .expect("report");
    assert_eq!(heard.frame_sizes, vec![FRAME_BYTES; FRAMES]);
    assert_eq!(heard.audio.len(), FRAMES * FRAME_BYTES);
    let expected: Vec<u8> = (0..FRAMES)
        .flat_map(|n| frame(n).samples)
        .flat_map(i16::to_le_bytes)
        .collect();
    assert_eq!(heard.audio, expected, "little-endian PCM16, in order");
    assert_eq!(heard.controls, ["Finalize", "CloseStream"]);
    assert!(
        !heard.closed_by_client,
        "the server closed after CloseStream"
    );
    assert_eq!(server.connections(), 1);
}

#[tokio::test]
async fn deepgram_finalize_with_nothing_heard_gives_an_empty_final() {
    let server = FakeDeepgram::start(|socket| async move {
        serve_socket(
            socket,
            |_| Vec::new(),
            |control| match control {
                // An older Deepgram: the answer is not marked from_finalize.
                "Finalize" => vec![metadata(), results("", true, false)],
                _ => Vec::new(),
            },
        )
        .await;
    })
    .await;
    let mut recognition = server.recognizer().start(SttOptions {
        model: "nova-2-phonecall".to_owned(),
        language: String::new(),
    });

    recognition
        .audio
        .send(SttInput::EndOfUtterance)
        .await
        .expect("send");
    let first = tokio::time::timeout(MUST_HAPPEN_WITHIN, recognition.transcripts.next())
        .await
        .expect("the final in time");
    drop(recognition.audio);
    let rest = collect_transcripts(recognition.transcripts).await;

    assert_eq!(first, Some(final_("")));
    assert_eq!(rest, Vec::new());
}

#[tokio::test]
async fn deepgram_401_on_upgrade_is_a_status_error_with_its_message() {
    let mut server = FakeDeepgram::start_answering(
        |_| {
            let body = json!({
                "err_code": "INVALID_AUTH",
                "err_msg": "Invalid credentials.",
                "request_id": "req-401",
            });
            Some((401, body.to_string()))
        },
        |_socket| async {},
    )
    .await;
    let recognition = server.recognizer().start(options());

    let transcripts = collect_transcripts(recognition.transcripts).await;

    assert_eq!(
        transcripts,
        vec![Err(ProviderError::Status {
            provider: "deepgram",
            status: 401,
            message: "Invalid credentials.".to_owned(),
        })]
    );
    assert_eq!(server.connections(), 1, "a refused key is not retried");
    assert_eq!(
        server.next_upgrade().await.authorization.as_deref(),
        Some("Token dg-test-key")
    );
}

#[tokio::test]
async fn deepgram_upgrade_answered_503_is_retried_once() {
    let server = FakeDeepgram::start_answering(
        |index| (index == 0).then(|| (503, "overloaded".to_owned())),
        |socket| async move {
            serve_socket(
                socket,
                |frames| match frames {
                    1 => vec![results("second try", true, false)],
                    _ => Vec::new(),
                },
                |_| Vec::new(),
            )
            .await;
        },
    )
    .await;
    let mut recognition = server.recognizer().start(options());

    recognition
        .audio
        .send(SttInput::Audio(frame(0)))
        .await
        .expect("send");
    let first = tokio::time::timeout(MUST_HAPPEN_WITHIN, recognition.transcripts.next())
        .await
        .expect("a transcript in time");

    assert_eq!(first, Some(final_("second try")));
    assert_eq!(server.connections(), 2);
}

#[tokio::test]
async fn deepgram_refused_connection_is_a_transport_error() {
    // A port that was just free: nothing listens there.
    let addr = {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        listener.local_addr().expect("addr")
    };
    let settings = ProviderSettings {
        deepgram_url: format!("ws://{addr}/v1/listen"),
        ..settings()
    };
    let recognizer = Providers::from_settings(&settings)
        .speech_recognizer("deepgram")
        .expect("deepgram configured");

    let transcripts = collect_transcripts(recognizer.start(options()).transcripts).await;

    assert_eq!(transcripts.len(), 1, "{transcripts:?}");
    assert!(
        matches!(
            &transcripts[0],
            Err(ProviderError::Transport {
                provider: "deepgram",
                ..
            })
        ),
        "{transcripts:?}"
    );
}

#[tokio::test]
async fn deepgram_closing_the_socket_unasked_is_a_transport_error() {
    let server = FakeDeepgram::start(|mut socket| async move {
        let _ = socket.next().await;
        let frame = CloseFrame {
            code: CloseCode::Policy,
            reason: Utf8Bytes::from_static("DATA-0000: the payload cannot be decoded as audio"),
        };
        socket.close(Some(frame)).await.ok();
        while let Some(Ok(_)) = socket.next().await {}
    })
    .await;
    let recognition = server.recognizer().start(options());

    recognition
        .audio
        .send(SttInput::Audio(frame(0)))
        .await
        .expect("send");
    let transcripts = collect_transcripts(recognition.transcripts).await;

    assert_eq!(transcripts.len(), 1, "{transcripts:?}");
    let Err(ProviderError::Transport { provider, message }) = &transcripts[0] else {
        panic!("a transport error: {transcripts:?}");
    };
    assert_eq!(*provider, "deepgram");
    assert!(message.contains("1008"), "{message}");
    assert!(message.contains("DATA-0000"), "{message}");
}

#[tokio::test]
async fn dropping_the_transcripts_closes_the_socket() {
    let (closed_tx, closed_rx) = oneshot::channel();
    let closed_tx = std::sync::Mutex::new(Some(closed_tx));
    let server = FakeDeepgram::start(move |socket| {
        let closed_tx = closed_tx.lock().unwrap().take();
        async move {
            let heard = serve_socket(
                socket,
                |frames| match frames {
                    1 => vec![results("Wait", false, false)],
                    _ => Vec::new(),
                },
                |_| Vec::new(),
            )
            .await;
            if let Some(tx) = closed_tx {
                tx.send(heard).ok();
            }
        }
    })
    .await;
    let mut recognition = server.recognizer().start(options());

    recognition
        .audio
        .send(SttInput::Audio(frame(0)))
        .await
        .expect("send");
    let first = tokio::time::timeout(MUST_HAPPEN_WITHIN, recognition.transcripts.next())
        .await
        .expect("a partial in time");
    assert_eq!(first, Some(partial("Wait")));
    // The session hangs up its side; the audio sender is still held.
    drop(recognition.transcripts);

    let heard = tokio::time::timeout(MUST_HAPPEN_WITHIN, closed_rx)
        .await
        .expect("the server saw the socket close")
        .expect("report");
    assert!(heard.closed_by_client);
    assert!(heard.controls.is_empty(), "{:?}", heard.controls);
    // The recognition is over: its audio receiver is gone.
    let closed = tokio::time::timeout(MUST_HAPPEN_WITHIN, recognition.audio.closed()).await;
    assert!(closed.is_ok(), "the task dropped its receiver");
}

#[tokio::test]
async fn deepgram_keepalive_is_sent_while_no_audio_flows() {
    let (keepalives_tx, mut keepalives) = mpsc::unbounded_channel();
    let server = FakeDeepgram::start(move |mut socket| {
        let keepalives_tx = keepalives_tx.clone();
        async move {
            while let Some(Ok(message)) = socket.next().await {
                if let Message::Text(text) = message {
                    keepalives_tx.send(control_type(&text)).ok();
                }
            }
        }
    })
    .await;
    let deepgram = DeepgramLive::new(&server.settings())
        .expect("configured")
        .with_keepalive_interval(Duration::from_millis(50));

    let recognition = deepgram.start(options());
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let kind = tokio::time::timeout(MUST_HAPPEN_WITHIN, keepalives.recv())
            .await
            .expect("a KeepAlive in time")
            .expect("server running");
        seen.push(kind);
    }

    assert_eq!(seen, ["KeepAlive", "KeepAlive", "KeepAlive"]);
    drop(recognition);
}

#[tokio::test]
async fn deepgram_finalize_unanswered_times_out_after_the_idle_limit() {
    let server = FakeDeepgram::start(|socket| async move {
        // Hears everything, answers nothing.
        serve_socket(socket, |_| Vec::new(), |_| Vec::new()).await;
    })
    .await;
    let settings = ProviderSettings {
        idle_timeout_ms: SHORT_TIMEOUT_MS,
        ..server.settings()
    };
    let recognizer = Providers::from_settings(&settings)
        .speech_recognizer("deepgram")
        .expect("deepgram configured");
    let mut recognition = recognizer.start(options());

    recognition
        .audio
        .send(SttInput::EndOfUtterance)
        .await
        .expect("send");
    let first = tokio::time::timeout(MUST_HAPPEN_WITHIN, recognition.transcripts.next())
        .await
        .expect("an error in time");

    assert_eq!(
        first,
        Some(Err(ProviderError::Timeout {
            provider: "deepgram",
            after_ms: SHORT_TIMEOUT_MS,
        }))
    );
}

// ---------------------------------------------------------------------------
// The fake ElevenLabs: HTTP/1.1 by hand.

/// A request as the fake server read it.
#[derive(Debug, Clone)]
struct Captured {
    method: String,
    target: String,
    /// Lower-cased names.
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

/// One accepted connection, its request already read.
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
        self.socket.write_all(head.as_bytes()).await.expect("head");
        self.socket.write_all(body).await.expect("body");
        self.socket.shutdown().await.ok();
    }

    /// A chunked 200 response, each of `pieces` its own chunk, flushed on
    /// its own.
    async fn stream(mut self, content_type: &str, pieces: &[&[u8]]) {
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
        );
        self.socket.write_all(head.as_bytes()).await.expect("head");
        for piece in pieces {
            let mut framed = format!("{:x}\r\n", piece.len()).into_bytes();
            framed.extend_from_slice(piece);
            framed.extend_from_slice(b"\r\n");
            self.socket.write_all(&framed).await.expect("chunk");
            self.socket.flush().await.expect("flush");
            // Let each piece reach the client on its own.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        self.socket.write_all(b"0\r\n\r\n").await.expect("end");
        self.socket.shutdown().await.ok();
    }
}

type HttpHandler = Arc<dyn Fn(Exchange) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

struct FakeElevenLabs {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    requests: mpsc::UnboundedReceiver<Captured>,
}

impl FakeElevenLabs {
    async fn start<F, Fut>(handler: F) -> Self
    where
        F: Fn(Exchange) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let handler: HttpHandler = Arc::new(move |exchange| Box::pin(handler(exchange)));
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

    fn voice(&self) -> Arc<dyn SpeechSynthesizer> {
        let settings = ProviderSettings {
            elevenlabs_base_url: format!("http://{}/v1", self.addr),
            ..settings()
        };
        Providers::from_settings(&settings)
            .speech_synthesizer("elevenlabs")
            .expect("elevenlabs configured")
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

/// Reads a request head and its content-length body.
async fn read_request(socket: &mut TcpStream) -> Option<Captured> {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
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
    let mut body = buf[head_end + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let method = request_line.next()?.to_owned();
    let target = request_line.next()?.to_owned();
    let headers: HashMap<String, String> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    let length: usize = headers
        .get("content-length")
        .map_or(0, |length| length.parse().expect("content-length"));
    while body.len() < length {
        let mut piece = [0u8; 65536];
        let n = socket.read(&mut piece).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&piece[..n]);
    }
    body.truncate(length);
    Some(Captured {
        method,
        target,
        headers,
        body,
    })
}

/// One line of ElevenLabs' stream: `bytes` of audio and the timing of
/// `characters`, each given with its end time in seconds.
fn stream_line(bytes: &[u8], characters: &[(char, f64)]) -> String {
    let ends: Vec<f64> = characters.iter().map(|&(_, end)| end).collect();
    let starts: Vec<f64> = ends.iter().map(|end| end - 0.02).collect();
    let chars: Vec<String> = characters.iter().map(|&(c, _)| c.to_string()).collect();
    let alignment = json!({
        "characters": chars,
        "character_start_times_seconds": starts,
        "character_end_times_seconds": ends,
    });
    let line = json!({
        "audio_base64": base64::engine::general_purpose::STANDARD.encode(bytes),
        "alignment": alignment,
        "normalized_alignment": alignment,
    });
    format!("{line}\n")
}

fn request(text: &str) -> TtsRequest {
    TtsRequest {
        text: text.to_owned(),
        voice_id: "voice-1".to_owned(),
        settings: json!({"stability": 0.5, "speed": 1.1, "pitch": 3}),
    }
}

async fn collect_speech(
    voice: &dyn SpeechSynthesizer,
    text: &str,
) -> Vec<Result<TtsAudio, ProviderError>> {
    tokio::time::timeout(
        MUST_HAPPEN_WITHIN,
        voice.synthesize(request(text)).collect::<Vec<_>>(),
    )
    .await
    .expect("synthesis ends")
}

fn timing(word: &str, end_ms: u32) -> WordTiming {
    WordTiming {
        word: word.to_owned(),
        end_ms,
    }
}

// ---------------------------------------------------------------------------
// ElevenLabs speech.

#[tokio::test]
async fn elevenlabs_lines_split_anywhere_give_the_audio_and_word_timings() {
    // 0.6 s of 24 kHz audio, cut into lines at odd byte counts.
    let sent: Vec<i16> = (0..14_400)
        .map(|i| ((i * 7919) % 65_536 - 32_768) as i16)
        .collect();
    let pcm: Vec<u8> = sent.iter().flat_map(|s| s.to_le_bytes()).collect();
    let (first, rest) = pcm.split_at(9_601);
    let (second, third) = rest.split_at(9_598);
    let body = [
        stream_line(
            first,
            &[
                ('H', 0.03),
                ('e', 0.06),
                ('l', 0.09),
                ('l', 0.12),
                ('o', 0.15),
                (' ', 0.16),
                ('t', 0.18),
                ('h', 0.20),
            ],
        ),
        stream_line(
            second,
            &[
                ('e', 0.23),
                ('r', 0.26),
                ('e', 0.29),
                (',', 0.31),
                (' ', 0.33),
                ('f', 0.36),
                ('r', 0.38),
                ('i', 0.40),
            ],
        ),
        stream_line(third, &[('e', 0.45), ('n', 0.50), ('d', 0.55), ('.', 0.58)]),
    ]
    .concat();
    let mut server = FakeElevenLabs::start(move |exchange: Exchange| {
        let body = body.clone().into_bytes();
        async move {
            // Cut mid-line, mid-base64, mid-"alignment" and at a line end.
            let line_end = body.iter().position(|&b| b == b'\n').expect("a line") + 1;
            let mut cuts = vec![5, 1_000, line_end - 40, line_end, line_end + 13_000];
            cuts.sort_unstable();
            let mut pieces = Vec::new();
            let mut from = 0;
            for cut in cuts.into_iter().chain([body.len()]) {
                pieces.push(&body[from..cut]);
                from = cut;
            }
            exchange.stream("application/json", &pieces).await;
        }
    })
    .await;
    let voice = server.voice();

    let pieces = collect_speech(voice.as_ref(), "Hello there, friend.").await;

    let pieces: Vec<TtsAudio> = pieces.into_iter().map(|p| p.expect("no error")).collect();
    assert_eq!(pieces.len(), 3, "one piece a line: {pieces:?}");
    let received: Vec<i16> = pieces.iter().flat_map(|p| p.samples.clone()).collect();
    assert_eq!(received, sent);
    assert!(pieces.iter().all(|p| p.sample_rate == 24_000));
    // 9 601 bytes: 4 800 samples (200 ms) and a byte carried; 4 799
    // samples (199 ms as the session counts it); 4 801 samples.
    let durations: Vec<u32> = pieces.iter().map(TtsAudio::duration_ms).collect();
    assert_eq!(durations, [200, 199, 200]);
    assert_eq!(pieces[0].words, Some(vec![timing("Hello", 150)]));
    // "there," ended 310 ms into the request, 200 ms into the audio before.
    assert_eq!(pieces[1].words, Some(vec![timing("there,", 110)]));
    // "friend." ended at 580 ms; 399 ms went before its piece.
    assert_eq!(pieces[2].words, Some(vec![timing("friend.", 181)]));

    let request = server.next_request().await;
    assert_eq!(request.method, "POST");
    assert_eq!(
        request.target,
        "/v1/text-to-speech/voice-1/stream/with-timestamps?output_format=pcm_24000"
    );
    assert_eq!(
        request.headers.get("xi-api-key").map(String::as_str),
        Some(ELEVENLABS_KEY)
    );
    assert_eq!(request.headers.get("authorization"), None);
    let body: Value = serde_json::from_slice(&request.body).expect("JSON body");
    assert_eq!(
        body,
        json!({
            "text": "Hello there, friend.",
            "model_id": "eleven_test",
            "voice_settings": {"stability": 0.5, "speed": 1.1},
        })
    );
}

#[tokio::test]
async fn elevenlabs_401_surfaces_the_provider_message_without_retry() {
    let server = FakeElevenLabs::start(|exchange: Exchange| async move {
        let body = json!({"detail": {
            "status": "invalid_api_key",
            "message": "Invalid API key",
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
    let voice = server.voice();

    let pieces = collect_speech(voice.as_ref(), "Hi").await;

    assert_eq!(
        pieces,
        vec![Err(ProviderError::Status {
            provider: "elevenlabs",
            status: 401,
            message: "Invalid API key".to_owned(),
        })]
    );
    assert_eq!(server.connections(), 1);
}

#[tokio::test]
async fn elevenlabs_retries_once_after_a_500_before_any_byte() {
    let samples: Vec<i16> = (0..480).map(|i| i * 3 - 700).collect();
    let pcm: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
    let line = stream_line(&pcm, &[('H', 0.01), ('i', 0.02)]);
    let server = FakeElevenLabs::start(move |exchange: Exchange| {
        let line = line.clone();
        async move {
            if exchange.index == 0 {
                exchange
                    .respond(
                        "500 Internal Server Error",
                        "application/json",
                        br#"{"detail":{"status":"internal","message":"try again"}}"#,
                    )
                    .await;
            } else {
                exchange
                    .stream("application/json", &[line.as_bytes()])
                    .await;
            }
        }
    })
    .await;
    let voice = server.voice();

    let pieces = collect_speech(voice.as_ref(), "Hi").await;

    assert_eq!(
        pieces,
        vec![Ok(TtsAudio {
            samples,
            sample_rate: 24_000,
            words: Some(vec![timing("Hi", 20)]),
        })]
    );
    assert_eq!(server.connections(), 2);
}

// ---------------------------------------------------------------------------
// Registry and settings.

#[test]
fn deepgram_and_elevenlabs_without_keys_are_unavailable_with_the_reason() {
    let providers = Providers::from_settings(&ProviderSettings::default());

    let stt = providers
        .speech_recognizer("deepgram")
        .err()
        .expect("no key");
    let tts = providers
        .speech_synthesizer("elevenlabs")
        .err()
        .expect("no key");

    assert_eq!(stt.code(), "provider_unavailable");
    assert!(stt.to_string().contains("DEEPGRAM_API_KEY"), "{stt}");
    assert_eq!(tts.code(), "provider_unavailable");
    assert!(tts.to_string().contains("ELEVENLABS_API_KEY"), "{tts}");
}

#[test]
fn each_provider_offers_only_its_ports() {
    let providers = Providers::from_settings(&settings());

    assert_eq!(PROVIDER_NAMES, ["openai", "deepgram", "elevenlabs"]);
    assert!(providers.speech_recognizer("deepgram").is_ok());
    assert!(providers.speech_synthesizer("elevenlabs").is_ok());
    let err = providers
        .speech_synthesizer("deepgram")
        .err()
        .expect("no voice");
    assert!(
        err.to_string().contains("offers no speech synthesis"),
        "{err}"
    );
    let err = providers
        .language_model("elevenlabs")
        .err()
        .expect("no LLM");
    assert!(
        err.to_string().contains("offers no language model"),
        "{err}"
    );
    let err = providers.speech_recognizer("acme").err().expect("unknown");
    // `local` (the embedded engines, tests/local_voice.rs) is known too.
    assert!(
        err.to_string()
            .contains("known: openai, deepgram, elevenlabs, local"),
        "{err}"
    );
}

#[test]
fn deepgram_and_elevenlabs_keys_come_from_the_environment_and_are_never_printed() {
    let env = [
        ("DEEPGRAM_API_KEY", "dg-from-env-123"),
        ("ELEVENLABS_API_KEY", "xi-from-env-456"),
        ("PALAVER_PROVIDERS_ELEVENLABS_MODEL", "eleven_turbo_v2_5"),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()));

    let settings = Settings::load(None, env).expect("load");

    let providers = &settings.providers;
    assert_eq!(
        providers.deepgram_api_key.as_ref().map(Secret::expose),
        Some("dg-from-env-123")
    );
    assert_eq!(
        providers.elevenlabs_api_key.as_ref().map(Secret::expose),
        Some("xi-from-env-456")
    );
    assert_eq!(providers.elevenlabs_model, "eleven_turbo_v2_5");
    assert_eq!(providers.deepgram_url, "wss://api.deepgram.com/v1/listen");
    assert_eq!(
        providers.elevenlabs_base_url,
        "https://api.elevenlabs.io/v1"
    );
    let built = Providers::from_settings(providers);
    let deepgram = DeepgramLive::new(providers).expect("a wss:// Deepgram with its key");
    let printed = format!("{settings:?} {built:?} {deepgram:?}");
    assert!(!printed.contains("dg-from-env-123"), "{printed}");
    assert!(!printed.contains("xi-from-env-456"), "{printed}");
    assert!(built.speech_recognizer("deepgram").is_ok());
    assert!(built.speech_synthesizer("elevenlabs").is_ok());
}
