//! A fake OpenAI-compatible server on 127.0.0.1:0 for voice tests (chat
//! completions as SSE, speech as 24 kHz PCM, transcriptions that hear a
//! fixed phrase), a Palaver server using it, one assistant and one session.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{App, HttpResponse, HttpServer, web};
use palaver::config::Secret;
use reqwest::StatusCode;
use serde_json::{Value, json};

use super::TestServer;

/// Audio the fake voice makes per character of text.
pub const MS_PER_CHAR: usize = 40;

#[derive(Default)]
pub struct Fake {
    /// Request bodies of chat completions, in order.
    pub chats: Mutex<Vec<Value>>,
    /// Replies to give, in order; the last one repeats.
    pub replies: Mutex<Vec<Result<String, u16>>>,
    /// Sizes of the audio uploads received for transcription.
    pub uploads: Mutex<Vec<usize>>,
}

/// What the fake recognizer "hears" in every upload.
pub const HEARD: &str = "What time is it?";

async fn transcribe(fake: web::Data<Fake>, body: web::Bytes) -> HttpResponse {
    let wav_at = body.windows(4).position(|w| w == b"RIFF");
    let is_wav = wav_at.is_some_and(|at| body.get(at + 8..at + 12) == Some(b"WAVE".as_slice()));
    if !is_wav {
        return HttpResponse::BadRequest()
            .json(json!({"error": {"message": "no WAV in the upload"}}));
    }
    fake.uploads.lock().unwrap().push(body.len());
    HttpResponse::Ok().json(json!({"text": HEARD}))
}

async fn chat(fake: web::Data<Fake>, body: web::Json<Value>) -> HttpResponse {
    let index = {
        let mut chats = fake.chats.lock().unwrap();
        chats.push(body.into_inner());
        chats.len() - 1
    };
    let reply = {
        let replies = fake.replies.lock().unwrap();
        replies.get(index).or(replies.last()).cloned().unwrap()
    };
    match reply {
        Err(status) => HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap())
            .json(json!({"error": {"message": "the fake model is down"}})),
        Ok(text) => {
            let mut sse = String::new();
            for word in text.split_inclusive(' ') {
                let chunk = json!({"choices": [{"index": 0, "delta": {"content": word}}]});
                sse.push_str(&format!("data: {chunk}\n\n"));
            }
            sse.push_str(
                "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
            );
            sse.push_str("data: [DONE]\n\n");
            HttpResponse::Ok()
                .content_type("text/event-stream")
                .body(sse)
        }
    }
}

async fn speech(body: web::Json<Value>) -> HttpResponse {
    let text = body["input"].as_str().unwrap_or_default();
    let samples = text.chars().count() * MS_PER_CHAR * 24; // 24 kHz
    let mut pcm = Vec::with_capacity(samples * 2);
    for i in 0..samples {
        let s = ((i as f32 * 0.05).sin() * 8000.0) as i16;
        pcm.extend_from_slice(&s.to_le_bytes());
    }
    HttpResponse::Ok()
        .content_type("application/octet-stream")
        .body(pcm)
}

pub async fn start_fake(replies: Vec<Result<String, u16>>) -> (String, Arc<web::Data<Fake>>) {
    let fake = web::Data::new(Fake {
        replies: Mutex::new(replies),
        ..Fake::default()
    });
    let data = fake.clone();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .route("/v1/chat/completions", web::post().to(chat))
            .route("/v1/audio/speech", web::post().to(speech))
            .route("/v1/audio/transcriptions", web::post().to(transcribe))
    })
    .workers(1)
    .bind("127.0.0.1:0")
    .unwrap();
    let addr = server.addrs()[0];
    actix_web::rt::spawn(server.run());
    (format!("http://{addr}/v1"), Arc::new(fake))
}

pub struct Call {
    pub server: TestServer,
    pub fake: Arc<web::Data<Fake>>,
    pub key: String,
    pub session: i64,
    pub token: String,
}

pub async fn call(replies: Vec<Result<String, u16>>, assistant: Value) -> Call {
    call_with(replies, assistant, |_| {}).await
}

/// [`call`] on a server whose settings `tweak` changes.
pub async fn call_with(
    replies: Vec<Result<String, u16>>,
    assistant: Value,
    tweak: impl FnOnce(&mut palaver::config::Settings),
) -> Call {
    let (fake_url, fake) = start_fake(replies).await;
    let server = TestServer::start_with(|s| {
        s.providers.openai_base_url = fake_url.clone();
        s.providers.openai_api_key = Some(Secret::new("sk-test"));
        tweak(s);
    })
    .await;
    let tenant = server.tenant("acme").await;
    // Every port on the fake (the default, `local`, loads the real engines:
    // tests/local_voice.rs).
    let mut body = json!({
        "name": "Front desk",
        "llm": {"provider": "openai", "model": "fake-1"},
        "stt": {"provider": "openai"},
        "tts": {"provider": "openai", "voice_id": "alloy"},
    });
    body.as_object_mut()
        .unwrap()
        .extend(assistant.as_object().unwrap().clone());
    let (status, created) = server.post("/v1/assistants", &tenant.key, body).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let (session, token) = server
        .session(&tenant.key, created["id"].as_i64().unwrap())
        .await;
    Call {
        server,
        fake,
        key: tenant.key,
        session,
        token,
    }
}

pub async fn messages(call: &Call) -> Vec<Value> {
    let (status, body) = call
        .server
        .get(
            &format!("/v1/sessions/{}/messages?limit=100", call.session),
            &call.key,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["data"].as_array().unwrap().clone()
}

/// Stored messages are written by the actor as the turn happens; wait for
/// `n` of them (bounded).
pub async fn wait_messages(call: &Call, n: usize) -> Vec<Value> {
    for _ in 0..200 {
        let stored = messages(call).await;
        if stored.len() >= n {
            return stored;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("fewer than {n} stored messages: {:?}", messages(call).await);
}

/// A phrase spoken by espeak-ng (installed by `make test`), as 16 kHz
/// frames, followed by a second of silence.
pub fn spoken(phrase: &str) -> Vec<palaver_media::AudioFrame> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("phrase.wav");
    let status = std::process::Command::new("espeak-ng")
        .args(["-v", "en-us", "-s", "160", "-w"])
        .arg(&path)
        .arg(phrase)
        .status()
        .expect("espeak-ng must be installed (make test installs it)");
    assert!(status.success());
    let mut frames = palaver_media::wav::read_frames_16k(&path).unwrap();
    frames.extend(std::iter::repeat_n(
        palaver_media::AudioFrame::silence(),
        50,
    ));
    frames
}

/// Polls the session until it is ended (bounded at 60 s) and returns it.
pub async fn wait_ended(call: &Call) -> Value {
    let path = format!("/v1/sessions/{}", call.session);
    let mut session = Value::Null;
    for _ in 0..600 {
        (_, session) = call.server.get(&path, &call.key).await;
        if session["status"] == "ended" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(session["status"], "ended", "{session}");
    session
}

/// A WebSocket client's socket (awc).
pub type Socket = actix_codec::Framed<awc::BoxedSocket, awc::ws::Codec>;

/// Joins the call's session over a WebSocket with its join token; `query`
/// adds to the URL (e.g. `&audio=false`).
pub async fn connect(call: &Call, query: &str) -> Socket {
    let url = format!(
        "ws://{}/v1/sessions/{}/ws?token={}{query}",
        call.server.addr, call.session, call.token
    );
    let (_, socket) = awc::Client::new()
        .ws(url)
        .connect()
        .await
        .expect("websocket connects");
    socket
}

/// The call's session as the API shows it now.
pub async fn session(call: &Call) -> Value {
    let (_, session) = call
        .server
        .get(&format!("/v1/sessions/{}", call.session), &call.key)
        .await;
    session
}
