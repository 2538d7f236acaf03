//! Voice sessions over a real WebSocket, end to end: the server's real
//! OpenAI adapters talk to a fake OpenAI-compatible server on 127.0.0.1:0
//! (chat completions as SSE, speech as 24 kHz PCM), and a WebSocket client
//! plays the caller.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use actix_web::web;
use awc::ws::{Frame, Message};
use common::TestServer;
use common::voice::{HEARD, MS_PER_CHAR, Socket, call, connect, spoken, wait_messages};
use futures_util::{SinkExt, StreamExt};
use palaver_media::codec::{EncoderConfig, OpusDecoder};
use palaver_media::rtc::CallAudio;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// What the client saw: JSON events in order, and binary frames counted at
/// the position they arrived.
#[derive(Debug, Default)]
struct Seen {
    events: Vec<Value>,
    audio_frames: usize,
    /// Audio frames received before each event.
    frames_before: Vec<usize>,
    /// Set once the client asked for Opus: every binary frame must decode.
    opus: Option<OpusDecoder>,
    /// Loudest decoded Opus frame (RMS, 0 to 1).
    loudest: f32,
}

impl Seen {
    fn types(&self) -> Vec<&str> {
        self.events
            .iter()
            .map(|e| e["type"].as_str().unwrap())
            .collect()
    }

    fn first(&self, kind: &str) -> Option<&Value> {
        self.events.iter().find(|e| e["type"] == kind)
    }

    fn frames_before(&self, kind: &str) -> usize {
        let i = self.events.iter().position(|e| e["type"] == kind).unwrap();
        self.frames_before[i]
    }
}

/// Reads until an event of type `until` (or the socket closes).
async fn read_until(socket: &mut Socket, seen: &mut Seen, until: &str) {
    loop {
        let read = tokio::time::timeout(Duration::from_secs(20), read_next(socket, seen))
            .await
            .unwrap_or_else(|_| panic!("no `{until}` within 20 s; saw {:?}", seen.types()));
        match read {
            Some(kind) if kind == until => return,
            Some(_) => {}
            None => panic!("closed before `{until}`; saw {:?}", seen.types()),
        }
    }
}

/// Reads one frame into `seen`: `Some(type)` for an event, `Some("")` for
/// anything else, `None` when the socket closed.
async fn read_next(socket: &mut Socket, seen: &mut Seen) -> Option<String> {
    match socket.next().await {
        Some(Ok(Frame::Text(bytes))) => {
            let event: Value = serde_json::from_slice(&bytes).unwrap();
            let kind = event["type"].as_str().unwrap_or_default().to_owned();
            seen.events.push(event);
            seen.frames_before.push(seen.audio_frames);
            Some(kind)
        }
        Some(Ok(Frame::Binary(bytes))) => {
            match &mut seen.opus {
                None => assert_eq!(bytes.len(), 640, "20 ms of 16 kHz PCM16"),
                Some(decoder) => {
                    let mut pcm = [0i16; 960];
                    decoder
                        .decode(&bytes, &mut pcm)
                        .expect("a 20 ms Opus packet");
                    let energy: f64 = pcm.iter().map(|&s| f64::from(s).powi(2)).sum();
                    let rms = ((energy / 960.0).sqrt() / 32768.0) as f32;
                    seen.loudest = seen.loudest.max(rms);
                }
            }
            seen.audio_frames += 1;
            Some(String::new())
        }
        Some(Ok(Frame::Close(_))) | None => None,
        Some(Ok(_)) => Some(String::new()),
        Some(Err(err)) => panic!("websocket error: {err}"),
    }
}

/// Like [`read_until`], unless `kind` has already been seen.
async fn ensure(socket: &mut Socket, seen: &mut Seen, kind: &str) {
    if seen.first(kind).is_none() {
        read_until(socket, seen, kind).await;
    }
}

async fn say(socket: &mut Socket, text: &str) {
    let message = json!({"type": "user-message", "text": text}).to_string();
    socket.send(Message::Text(message.into())).await.unwrap();
}

#[actix_web::test]
async fn a_typed_turn_streams_text_and_paced_audio_and_is_stored() {
    let reply = "Hi there. How can I help you today?";
    let call = call(
        vec![Ok(reply.into())],
        json!({"system_prompt": "Be brief."}),
    )
    .await;
    let mut socket = connect(&call, "").await;
    let mut seen = Seen::default();
    read_until(&mut socket, &mut seen, "session.started").await;
    assert_eq!(seen.events[0]["type"], "connected");
    assert_eq!(seen.events[0]["session_id"], call.session);

    say(&mut socket, "Hello").await;
    read_until(&mut socket, &mut seen, "turn.metrics").await;
    assert_eq!(seen.first("transcript.final").unwrap()["text"], "Hello");
    let deltas: String = seen
        .events
        .iter()
        .filter(|e| e["type"] == "assistant.delta")
        .map(|e| e["text"].as_str().unwrap())
        .collect();
    assert_eq!(deltas, reply);
    assert_eq!(seen.first("assistant.done").unwrap()["text"], reply);
    assert_eq!(seen.first("assistant-message").unwrap()["text"], reply);
    // All of the reply's audio went out, paced, before it was done.
    let expected_ms = reply
        .split(". ")
        .map(|s| s.chars().count() + 1)
        .sum::<usize>()
        * MS_PER_CHAR;
    assert!(seen.frames_before("assistant.speaking") <= 1);
    let frames = seen.frames_before("assistant.done");
    assert!(
        frames * 20 >= expected_ms - 2 * 20,
        "{frames} frames for ~{expected_ms} ms of speech"
    );
    let metrics = seen.first("turn.metrics").unwrap();
    assert!(
        metrics["first_token_ms"].is_u64() && metrics["voice_to_voice_ms"].is_u64(),
        "{metrics}"
    );

    // The model saw the system prompt and the caller's words.
    let request = call.fake.chats.lock().unwrap()[0].clone();
    assert_eq!(
        request["messages"][0],
        json!({"role": "system", "content": "Be brief."})
    );
    assert_eq!(
        request["messages"][1],
        json!({"role": "user", "content": "Hello"})
    );
    assert_eq!(request["stream"], true);

    let stored = wait_messages(&call, 2).await;
    assert_eq!(
        (stored[0]["role"].as_str(), stored[0]["content"].as_str()),
        (Some("user"), Some("Hello"))
    );
    assert_eq!(stored[1]["role"], "assistant");
    assert_eq!(stored[1]["content"], reply);
    assert_eq!(stored[1]["interrupted"], false);
    assert!(stored[1]["latency"]["voice_to_voice_ms"].is_i64());

    let metrics = call
        .server
        .client
        .get(call.server.url("/metrics"))
        .send()
        .await
        .unwrap();
    let metrics = metrics.text().await.unwrap();
    assert!(
        metrics.contains("palaver_turn_latency_seconds_bucket{stage=\"voice_to_voice\""),
        "turn latencies reach Prometheus"
    );

    let (_, session) = call
        .server
        .get(&format!("/v1/sessions/{}", call.session), &call.key)
        .await;
    assert_eq!(session["status"], "active");
    assert_eq!(session["transport"], "websocket");

    socket
        .send(Message::Text(
            json!({"type": "end-session"}).to_string().into(),
        ))
        .await
        .unwrap();
    read_until(&mut socket, &mut seen, "session-ended").await;
    assert_eq!(
        seen.first("session.ended").unwrap()["reason"],
        "end-session"
    );
    for _ in 0..200 {
        let (_, session) = call
            .server
            .get(&format!("/v1/sessions/{}", call.session), &call.key)
            .await;
        if session["status"] == "ended" {
            assert_eq!(session["end_reason"], "end-session");
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the session was never marked ended");
}

#[actix_web::test]
async fn a_typed_barge_in_stops_the_audio_and_stores_what_was_heard() {
    let long = "one two three four five six seven eight nine ten eleven twelve thirteen \
                fourteen fifteen sixteen seventeen eighteen nineteen twenty";
    let call = call(vec![Ok(long.into()), Ok("Okay.".into())], json!({})).await;
    let mut socket = connect(&call, "").await;
    let mut seen = Seen::default();
    read_until(&mut socket, &mut seen, "session.started").await;
    say(&mut socket, "Count to twenty").await;
    read_until(&mut socket, &mut seen, "assistant.speaking").await;
    // Let about half a second of the reply play, then cut in.
    while seen.audio_frames < 25 {
        match socket.next().await {
            Some(Ok(Frame::Binary(_))) => seen.audio_frames += 1,
            Some(Ok(Frame::Text(bytes))) => {
                seen.events.push(serde_json::from_slice(&bytes).unwrap());
                seen.frames_before.push(seen.audio_frames);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    say(&mut socket, "Stop").await;
    read_until(&mut socket, &mut seen, "assistant.interrupted").await;
    let heard = seen.first("assistant.interrupted").unwrap()["heard_text"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        !heard.is_empty() && long.starts_with(&heard) && heard.len() < long.len(),
        "heard {heard:?}"
    );
    let full_frames = long.chars().count() * MS_PER_CHAR / 20;
    assert!(
        seen.frames_before("assistant.interrupted") < full_frames / 2,
        "audio stopped at the interruption: {} of {full_frames} frames",
        seen.frames_before("assistant.interrupted")
    );
    read_until(&mut socket, &mut seen, "assistant.done").await;
    assert_eq!(seen.events.last().unwrap()["text"], "Okay.");

    let stored = wait_messages(&call, 4).await;
    let cut = &stored[1];
    assert_eq!(cut["role"], "assistant");
    assert_eq!(cut["interrupted"], true);
    assert_eq!(cut["content"], long);
    assert_eq!(cut["heard_text"], heard.as_str());
    assert_eq!(stored[2]["content"], "Stop");
    // The second request carries only what the caller heard.
    let second = call.fake.chats.lock().unwrap()[1].clone();
    let assistant_turns: Vec<&Value> = second["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "assistant")
        .collect();
    assert_eq!(assistant_turns.len(), 1);
    assert_eq!(assistant_turns[0]["content"], heard.as_str());
}

#[actix_web::test]
async fn a_text_only_session_gets_replies_without_audio() {
    let call = call(
        vec![Ok("Sure thing.".into())],
        json!({"first_message": "Welcome!"}),
    )
    .await;
    let mut socket = connect(&call, "&audio=false").await;
    let mut seen = Seen::default();
    read_until(&mut socket, &mut seen, "assistant-message").await;
    assert_eq!(seen.events.last().unwrap()["text"], "Welcome!");
    say(&mut socket, "Book a room").await;
    read_until(&mut socket, &mut seen, "assistant-message").await;
    assert_eq!(seen.events.last().unwrap()["text"], "Sure thing.");
    assert_eq!(seen.audio_frames, 0);
    let stored = wait_messages(&call, 3).await;
    assert_eq!(stored[0]["content"], "Welcome!");
    assert_eq!(stored[2]["content"], "Sure thing.");
    assert_eq!(stored[2]["heard_text"], Value::Null);
}

#[actix_web::test]
async fn bad_client_frames_get_error_events_and_the_session_goes_on() {
    let call = call(vec![Ok("Fine.".into())], json!({})).await;
    let mut socket = connect(&call, "&audio=false").await;
    let mut seen = Seen::default();
    read_until(&mut socket, &mut seen, "session.started").await;
    socket
        .send(Message::Text("{not json".into()))
        .await
        .unwrap();
    read_until(&mut socket, &mut seen, "error").await;
    assert_eq!(seen.events.last().unwrap()["code"], "invalid_message");
    socket
        .send(Message::Binary(vec![0u8; 100].into()))
        .await
        .unwrap();
    seen.events.clear();
    seen.frames_before.clear();
    read_until(&mut socket, &mut seen, "error").await;
    assert_eq!(seen.events.last().unwrap()["code"], "wrong_frame_size");
    say(&mut socket, "Still there?").await;
    read_until(&mut socket, &mut seen, "assistant-message").await;
    assert_eq!(seen.events.last().unwrap()["text"], "Fine.");
}

#[actix_web::test]
async fn a_failing_model_gets_an_apology_and_the_session_goes_on() {
    let call = call(
        vec![Err(500), Err(500), Ok("Back again.".into())],
        json!({}),
    )
    .await;
    let mut socket = connect(&call, "").await;
    let mut seen = Seen::default();
    read_until(&mut socket, &mut seen, "session.started").await;
    say(&mut socket, "Hello?").await;
    read_until(&mut socket, &mut seen, "assistant.done").await;
    let error = seen.first("error").expect("an error event says why");
    assert_eq!(error["code"], "llm_failed");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("the fake model is down"),
        "{error}"
    );
    assert!(
        seen.events.last().unwrap()["text"]
            .as_str()
            .unwrap()
            .contains("Sorry")
    );
    assert!(
        seen.frames_before("assistant.done") > 0,
        "the apology is spoken"
    );
    say(&mut socket, "Hello again").await;
    seen.events.clear();
    seen.frames_before.clear();
    read_until(&mut socket, &mut seen, "assistant.done").await;
    assert_eq!(seen.events.last().unwrap()["text"], "Back again.");
    let stored = wait_messages(&call, 4).await;
    assert_eq!(
        stored[0]["content"], "Hello?",
        "the caller's turn was stored before the failure"
    );
}

#[actix_web::test]
async fn a_session_is_joined_once_and_needs_its_own_token() {
    let call = call(vec![Ok("Hi.".into())], json!({})).await;
    let mut socket = connect(&call, "&audio=false").await;
    let mut seen = Seen::default();
    read_until(&mut socket, &mut seen, "session.started").await;
    let second = awc::Client::new()
        .ws(format!(
            "ws://{}/v1/sessions/{}/ws?token={}",
            call.server.addr, call.session, call.token
        ))
        .connect()
        .await;
    match second {
        Err(awc::error::WsClientError::InvalidResponseStatus(status)) => {
            assert_eq!(status.as_u16(), 409)
        }
        other => panic!("expected 409, got {:?}", other.map(|(r, _)| r.status())),
    }
    let no_token = awc::Client::new()
        .ws(format!(
            "ws://{}/v1/sessions/{}/ws",
            call.server.addr, call.session
        ))
        .connect()
        .await;
    assert!(
        matches!(no_token, Err(awc::error::WsClientError::InvalidResponseStatus(s)) if s.as_u16() == 401)
    );
}

#[actix_web::test]
async fn ending_a_live_session_through_the_api_hangs_up_the_call() {
    let call = call(vec![Ok("Hi.".into())], json!({})).await;
    let mut socket = connect(&call, "&audio=false").await;
    let mut seen = Seen::default();
    read_until(&mut socket, &mut seen, "session.started").await;
    let (status, body) = call
        .server
        .post(
            &format!("/v1/sessions/{}/end", call.session),
            &call.key,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    read_until(&mut socket, &mut seen, "session-ended").await;
    assert_eq!(
        seen.first("session.ended").unwrap()["reason"],
        "ended-by-api"
    );
    let (_, session) = call
        .server
        .get(&format!("/v1/sessions/{}", call.session), &call.key)
        .await;
    assert_eq!(session["end_reason"], "ended-by-api");
}

/// Streams frames in real time, as a caller's microphone would, while
/// collecting what the server sends.
async fn speak_into(socket: &mut Socket, seen: &mut Seen, frames: &[palaver_media::AudioFrame]) {
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let mut pcm = [0u8; palaver_media::AudioFrame::BYTES];
    for frame in frames {
        tick.tick().await;
        frame.write_le_bytes(&mut pcm);
        socket
            .send(Message::Binary(web::Bytes::copy_from_slice(&pcm)))
            .await
            .unwrap();
        // Take what the server sent meanwhile, without waiting.
        while let Ok(Some(Ok(frame))) =
            tokio::time::timeout(Duration::from_millis(0), socket.next()).await
        {
            match frame {
                Frame::Binary(_) => seen.audio_frames += 1,
                Frame::Text(bytes) => {
                    seen.events.push(serde_json::from_slice(&bytes).unwrap());
                    seen.frames_before.push(seen.audio_frames);
                }
                _ => {}
            }
        }
    }
}

#[actix_web::test]
async fn caller_speech_is_transcribed_and_answered() {
    let call = call(
        vec![Ok("It is noon.".into())],
        json!({"stt": {"provider": "openai"}}),
    )
    .await;
    let mut socket = connect(&call, "").await;
    let mut seen = Seen::default();
    read_until(&mut socket, &mut seen, "session.started").await;
    let phrase = spoken("what time is it");
    speak_into(&mut socket, &mut seen, &phrase).await;
    ensure(&mut socket, &mut seen, "assistant.done").await;
    assert_eq!(seen.first("transcript.final").unwrap()["text"], HEARD);
    assert_eq!(seen.first("assistant.done").unwrap()["text"], "It is noon.");
    let uploads = call.fake.uploads.lock().unwrap().clone();
    assert_eq!(uploads.len(), 1, "one utterance, one transcription");
    // The upload holds the speech (at least half a second of 16 kHz PCM16).
    assert!(uploads[0] > 16_000, "{} bytes uploaded", uploads[0]);
    let request = call.fake.chats.lock().unwrap()[0].clone();
    assert_eq!(
        request["messages"].as_array().unwrap().last().unwrap()["content"],
        HEARD
    );
    let stored = wait_messages(&call, 2).await;
    assert_eq!(stored[0]["content"], HEARD);
    assert!(
        stored[1]["latency"]["transcript_ms"].is_i64(),
        "{}",
        stored[1]
    );
}

#[actix_web::test]
async fn caller_speech_interrupts_the_assistant() {
    let long = "one two three four five six seven eight nine ten eleven twelve thirteen \
                fourteen fifteen sixteen seventeen eighteen nineteen twenty";
    let call = call(
        vec![Ok(long.into()), Ok("Sure.".into())],
        json!({"stt": {"provider": "openai"}, "min_interruption_ms": 200}),
    )
    .await;
    let mut socket = connect(&call, "").await;
    let mut seen = Seen::default();
    read_until(&mut socket, &mut seen, "session.started").await;
    say(&mut socket, "Count to twenty").await;
    read_until(&mut socket, &mut seen, "assistant.speaking").await;
    let phrase = spoken("stop please, that is enough");
    speak_into(&mut socket, &mut seen, &phrase).await;
    ensure(&mut socket, &mut seen, "assistant.done").await;
    assert_eq!(seen.first("assistant.done").unwrap()["text"], "Sure.");
    let heard = seen
        .first("assistant.interrupted")
        .expect("the caller's voice cut in")["heard_text"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        long.starts_with(&heard) && heard.len() < long.len(),
        "heard {heard:?}"
    );
    assert!(seen.first("barge-in").is_some());
    let stored = wait_messages(&call, 4).await;
    assert_eq!(stored[1]["interrupted"], true);
    assert_eq!(stored[1]["heard_text"], heard.as_str());
    assert_eq!(
        stored[2]["content"], HEARD,
        "the interruption became the next turn"
    );
}

#[actix_web::test]
async fn an_assistant_whose_model_cannot_be_used_is_refused_with_the_reason() {
    // No OpenAI key configured. (An assistant that names no provider runs
    // on the local engines: tests/local_voice.rs.)
    let server = TestServer::start().await;
    let tenant = server.tenant("acme").await;
    let (status, assistant) = server
        .post(
            "/v1/assistants",
            &tenant.key,
            json!({"name": "No key", "llm": {"provider": "openai"}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{assistant}");
    let (session, token) = server
        .session(&tenant.key, assistant["id"].as_i64().unwrap())
        .await;
    let refused = awc::Client::new()
        .ws(format!(
            "ws://{}/v1/sessions/{session}/ws?token={token}",
            server.addr
        ))
        .connect()
        .await;
    match refused {
        Err(awc::error::WsClientError::InvalidResponseStatus(status)) => {
            assert_eq!(status.as_u16(), 503)
        }
        other => panic!("expected 503, got {:?}", other.map(|(r, _)| r.status())),
    }
    // Plain HTTP shows the reason a person reads.
    let response = server
        .client
        .get(server.url(&format!("/v1/sessions/{session}/ws?token={token}")))
        .header("Connection", "Upgrade")
        .header("Upgrade", "websocket")
        .header("Sec-WebSocket-Version", "13")
        .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap();
    let body: Value = response.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("(`openai`) cannot be used") && message.contains("OPENAI_API_KEY"),
        "{message}"
    );
    // Nothing was joined: the session can still be joined later.
    let (_, row) = server
        .get(&format!("/v1/sessions/{session}"), &tenant.key)
        .await;
    assert_eq!(row["status"], "created");
}

#[actix_web::test]
async fn opus_over_websocket_when_the_client_asks_for_it() {
    let call = call(
        vec![Ok("It is noon.".into())],
        json!({"stt": {"provider": "openai"}}),
    )
    .await;
    let mut socket = connect(&call, "").await;
    let mut seen = Seen::default();
    read_until(&mut socket, &mut seen, "session.started").await;
    let ask = json!({"type": "audio-format", "encoding": "opus"}).to_string();
    socket.send(Message::Text(ask.into())).await.unwrap();
    read_until(&mut socket, &mut seen, "audio-format").await;
    let confirmed = seen.first("audio-format").unwrap().clone();
    assert_eq!(confirmed["encoding"], "opus", "{confirmed}");
    assert_eq!(confirmed["sample_rate"], 48_000);
    seen.opus = Some(OpusDecoder::new().unwrap());

    // The caller's speech goes up as Opus, one packet per 20 ms.
    let mut encoder = CallAudio::new(EncoderConfig::default()).unwrap();
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    for frame in spoken("what time is it") {
        tick.tick().await;
        let packet = encoder.encode(&frame).unwrap().to_vec();
        socket
            .send(Message::Binary(web::Bytes::from(packet)))
            .await
            .unwrap();
    }
    read_until(&mut socket, &mut seen, "assistant.done").await;
    assert_eq!(seen.first("transcript.final").unwrap()["text"], HEARD);
    let uploads = call.fake.uploads.lock().unwrap().clone();
    assert!(uploads[0] > 16_000, "{} bytes uploaded", uploads[0]);
    // And the reply comes down as Opus that decodes to the fake voice.
    // "It is noon." is 11 characters of 40 ms: 22 frames.
    while seen.audio_frames < 20 {
        tokio::time::timeout(Duration::from_secs(20), read_next(&mut socket, &mut seen))
            .await
            .expect("audio within 20 s")
            .expect("open socket");
    }
    assert!(seen.loudest > 0.1, "loudest decoded frame {}", seen.loudest);

    // A frame that is not Opus gets an error and the session goes on.
    socket
        .send(Message::Binary(web::Bytes::from_static(&[])))
        .await
        .unwrap();
    read_until(&mut socket, &mut seen, "error").await;
    assert_eq!(seen.first("error").unwrap()["code"], "invalid_opus");
}

#[actix_web::test]
async fn a_dropped_caller_rejoins_with_the_same_token_and_hears_the_rest_of_the_reply() {
    let long = "one two three four five six seven eight nine ten eleven twelve thirteen \
                fourteen fifteen sixteen seventeen eighteen nineteen twenty.";
    let call = call(vec![Ok(long.into()), Ok("Welcome back.".into())], json!({})).await;
    let mut socket = connect(&call, "").await;
    let mut seen = Seen::default();
    read_until(&mut socket, &mut seen, "session.started").await;
    say(&mut socket, "Count for me").await;
    read_until(&mut socket, &mut seen, "assistant.speaking").await;
    while seen.audio_frames < 25 {
        read_next(&mut socket, &mut seen).await.expect("audio");
    }
    let heard_before = seen.audio_frames;
    // The network goes: no close frame, the connection just ends.
    drop(socket);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(common::voice::session(&call).await["status"], "active");

    let mut socket = connect(&call, "").await;
    let mut again = Seen::default();
    read_until(&mut socket, &mut again, "session.resumed").await;
    assert_eq!(again.events[0]["type"], "connected");
    read_until(&mut socket, &mut again, "assistant.done").await;
    // What was not heard plays after the rejoin, not from the start and
    // not cut: the frames before and after add up to the whole reply
    // (less what was in flight when the connection went).
    let whole = long.chars().count() * MS_PER_CHAR / 20;
    let heard = heard_before + again.audio_frames;
    assert!(
        again.audio_frames > 0 && heard <= whole + 2 && heard + 40 >= whole,
        "{heard_before} + {} frames of {whole}",
        again.audio_frames
    );
    say(&mut socket, "Thanks").await;
    read_until(&mut socket, &mut again, "assistant-message").await;
    let stored = wait_messages(&call, 4).await;
    let said: Vec<(&str, &str, bool)> = stored
        .iter()
        .map(|m| {
            (
                m["role"].as_str().unwrap(),
                m["content"].as_str().unwrap(),
                m["interrupted"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        said,
        [
            ("user", "Count for me", false),
            ("assistant", long, false),
            ("user", "Thanks", false),
            ("assistant", "Welcome back.", false),
        ]
    );
    // The model saw the whole conversation on the second turn.
    let request = call.fake.chats.lock().unwrap()[1].clone();
    assert_eq!(request["messages"][1]["content"], "Count for me");
    assert_eq!(request["messages"][2]["content"], long);

    // A second connection while one carries the call is refused.
    let url = format!(
        "ws://{}/v1/sessions/{}/ws?token={}",
        call.server.addr, call.session, call.token
    );
    let refused = awc::Client::new().ws(url).connect().await;
    assert!(refused.is_err(), "a second connection joined a live call");
}

#[actix_web::test]
async fn a_caller_who_does_not_rejoin_in_time_ends_as_connection_lost() {
    let call = common::voice::call_with(vec![Ok("Hello.".into())], json!({}), |s| {
        s.server.reconnect_grace_s = 1;
    })
    .await;
    let mut socket = connect(&call, "").await;
    let mut seen = Seen::default();
    read_until(&mut socket, &mut seen, "session.started").await;
    drop(socket);
    let session = common::voice::wait_ended(&call).await;
    assert_eq!(session["end_reason"], "connection-lost", "{session}");
    // The session is over: the token cannot bring it back.
    let url = format!(
        "ws://{}/v1/sessions/{}/ws?token={}",
        call.server.addr, call.session, call.token
    );
    assert!(awc::Client::new().ws(url).connect().await.is_err());
}

#[actix_web::test]
async fn a_normal_close_is_a_hang_up() {
    let call = call(vec![Ok("Hello.".into())], json!({})).await;
    let mut socket = connect(&call, "").await;
    let mut seen = Seen::default();
    read_until(&mut socket, &mut seen, "session.started").await;
    socket
        .send(Message::Close(Some(awc::ws::CloseCode::Normal.into())))
        .await
        .unwrap();
    let session = common::voice::wait_ended(&call).await;
    assert_eq!(session["end_reason"], "hang-up", "{session}");
}

#[actix_web::test]
async fn a_join_token_that_expired_during_the_call_still_brings_its_caller_back() {
    let call = call(
        vec![Ok("Hello.".into()), Ok("Still here.".into())],
        json!({}),
    )
    .await;
    let mut socket = connect(&call, "&audio=false").await;
    let mut seen = Seen::default();
    read_until(&mut socket, &mut seen, "session.started").await;
    // The same token as it is once its lifetime is over.
    let tokens = &call.server.state.tokens;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let expired = tokens.sign_claims(&palaver::auth::Claims {
        exp: now - 60,
        ..tokens.verify(&call.token).unwrap()
    });
    // While its call is carried, an expired token reaches nothing.
    let path = format!("/v1/sessions/{}", call.session);
    let (status, body) = call.server.get(&path, &expired).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let url = format!(
        "ws://{}/v1/sessions/{}/ws?token={expired}&audio=false",
        call.server.addr, call.session
    );
    assert_refused(&url, 401).await;

    // The connection drops: the expired token rejoins the waiting call.
    drop(socket);
    let id = palaver::ids::SessionId(call.session);
    for _ in 0..200 {
        if call.server.state.live.is_detached(id) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (_, mut socket) = awc::Client::new()
        .ws(&url)
        .connect()
        .await
        .expect("the expired token rejoins the call");
    let mut again = Seen::default();
    read_until(&mut socket, &mut again, "session.resumed").await;
    say(&mut socket, "Are you there?").await;
    read_until(&mut socket, &mut again, "assistant-message").await;
    let stored = wait_messages(&call, 2).await;
    assert_eq!(stored[0]["content"], "Are you there?", "{stored:?}");

    // Once the call is over, the expired token is refused again.
    socket
        .send(Message::Text(
            json!({"type": "end-session"}).to_string().into(),
        ))
        .await
        .unwrap();
    read_until(&mut socket, &mut again, "session.ended").await;
    common::voice::wait_ended(&call).await;
    assert_refused(&url, 401).await;
}

/// The WebSocket upgrade to `url` is answered with `status`.
async fn assert_refused(url: &str, status: u16) {
    match awc::Client::new().ws(url).connect().await {
        Err(awc::error::WsClientError::InvalidResponseStatus(got)) => {
            assert_eq!(got.as_u16(), status, "{url}")
        }
        Err(other) => panic!("{url}: {other}"),
        Ok(_) => panic!("{url}: the upgrade was accepted"),
    }
}

#[actix_web::test]
async fn an_assistant_base_url_that_is_no_url_refuses_the_join_with_409_not_a_5xx() {
    let call = call(
        vec![Ok("Hello.".into())],
        json!({"llm": {"provider": "openai", "model": "fake-1", "base_url": "http://"}}),
    )
    .await;
    let url = format!(
        "ws://{}/v1/sessions/{}/ws?token={}",
        call.server.addr, call.session, call.token
    );
    assert_refused(&url, 409).await;
}
