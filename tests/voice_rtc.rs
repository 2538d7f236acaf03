//! Voice sessions over real WebRTC, end to end: an independent client (the
//! `webrtc` crate, in `palaver-loadtest`) offers Opus and an `events` data
//! channel, the server answers through its str0m endpoint, and the server's
//! real OpenAI adapters talk to a fake OpenAI-compatible server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::TestServer;
use common::voice::{Call, HEARD, call, call_with, spoken, wait_ended, wait_messages};
use palaver_loadtest::rtc_caller::{
    ConnectionState, ReceivedAudio, RtcCaller, RtcCallerConfig, RtcCallerError,
};
use palaver_media::AudioFrame;
use reqwest::StatusCode;
use serde_json::{Value, json};

fn base(server: &TestServer) -> String {
    format!("http://{}", server.addr)
}

async fn join(call: &Call) -> RtcCaller {
    RtcCaller::connect(&base(&call.server), call.session, &call.token)
        .await
        .expect("the WebRTC call connects")
}

/// What the caller saw: events and audio packets with their arrival times.
#[derive(Default)]
struct Seen {
    events: Vec<(Instant, Value)>,
    audio: Vec<ReceivedAudio>,
}

impl Seen {
    fn types(&self) -> Vec<String> {
        self.events
            .iter()
            .map(|(_, e)| e["type"].as_str().unwrap_or("?").to_owned())
            .collect()
    }

    fn first(&self, kind: &str) -> Option<&Value> {
        self.events
            .iter()
            .find(|(_, e)| e["type"] == kind)
            .map(|(_, e)| e)
    }

    fn nth_at(&self, kind: &str, n: usize) -> Option<Instant> {
        self.events
            .iter()
            .filter(|(_, e)| e["type"] == kind)
            .nth(n)
            .map(|(at, _)| *at)
    }

    /// Takes what already arrived, without waiting.
    fn drain(&mut self, caller: &RtcCaller) {
        while let Some(event) = caller.try_recv_event() {
            self.events.push((Instant::now(), event));
        }
        while let Some(audio) = caller.try_recv_audio() {
            self.audio.push(audio);
        }
    }

    /// Collects until an event of type `until` (bounded).
    async fn until(&mut self, caller: &RtcCaller, until: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        loop {
            self.drain(caller);
            if self.first(until).is_some() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no `{until}` within 20 s; saw {:?}",
                self.types()
            );
            tick.tick().await;
        }
    }

    /// Collects until at least 90 % of `text`'s speech has arrived as loud
    /// frames (the fake voice: 40 ms of tone per character, 20 ms frames),
    /// within 10 s, or fails saying how much did.
    async fn hears_all_of(&mut self, caller: &RtcCaller, text: &str) {
        let expected = text.chars().count() * 2;
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.loud_frames() < expected * 9 / 10 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            self.drain(caller);
        }
        assert!(
            self.loud_frames() >= expected * 9 / 10,
            "{} loud frames of about {expected} for {text:?}; stats {:?}",
            self.loud_frames(),
            caller.stats()
        );
    }

    /// Frames with sound in them (the fake voice is a loud tone).
    fn loud_frames(&self) -> usize {
        self.audio
            .iter()
            .filter(|a| a.frame.as_ref().is_some_and(|f| f.rms() > 0.05))
            .count()
    }
}

/// Streams frames in real time, as a microphone would, collecting what
/// the server sends meanwhile.
async fn speak(caller: &RtcCaller, seen: &mut Seen, frames: &[AudioFrame]) {
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    for frame in frames {
        tick.tick().await;
        caller.send_audio(frame).await.expect("send audio");
        seen.drain(caller);
    }
}

#[actix_web::test]
async fn a_typed_turn_over_webrtc_is_spoken_back_as_opus_and_stored() {
    let reply = "Hi there. How can I help you today?";
    let call = call(vec![Ok(reply.into())], json!({})).await;
    let caller = join(&call).await;
    assert!(
        caller
            .location()
            .starts_with(&format!("/v1/sessions/{}/webrtc/", call.session)),
        "{}",
        caller.location()
    );
    assert!(
        caller.answer_sdp().contains("opus/48000"),
        "{}",
        caller.answer_sdp()
    );
    let mut seen = Seen::default();
    seen.until(&caller, "session.started").await;
    assert_eq!(seen.first("connected").unwrap()["session_id"], call.session);
    caller.send_user_message("Hello").await.unwrap();
    seen.until(&caller, "assistant-message").await;
    assert_eq!(seen.first("assistant.done").unwrap()["text"], reply);
    seen.hears_all_of(&caller, reply).await;
    assert_eq!(caller.stats().decode_errors, 0);
    let stored = wait_messages(&call, 2).await;
    assert_eq!(stored[0]["content"], "Hello");
    assert_eq!(stored[1]["content"], reply);
    let (_, session) = call
        .server
        .get(&format!("/v1/sessions/{}", call.session), &call.key)
        .await;
    assert_eq!(session["transport"], "webrtc");
    assert_eq!(session["status"], "active");

    // The node's WebRTC socket shows in /metrics.
    let metrics = reqwest::get(call.server.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let datagrams_in = metrics
        .lines()
        .find(|l| l.starts_with("palaver_rtc_datagrams_total{direction=\"in\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no inbound datagram counter in /metrics:\n{metrics}"));
    assert!(datagrams_in > 0.0);
    assert!(metrics.contains("palaver_rtc_peers"), "{metrics}");

    // Hanging up through the Location ends the session.
    caller.hangup().await.expect("hang up");
    let ended = wait_ended(&call).await;
    assert_eq!(ended["end_reason"], "hang-up");
}

#[actix_web::test]
async fn the_first_message_waits_for_a_slow_callers_media_and_is_heard_whole() {
    let greeting = "Welcome to the Grand Hotel.";
    let call = call(vec![], json!({"first_message": greeting})).await;
    // The caller applies the answer (starts ICE and DTLS) 1.5 s after it
    // came: longer than the greeting (27 characters, 1.08 s of speech).
    // Played from the answer on, the caller would hear nothing of it.
    let config = RtcCallerConfig {
        answer_delay: Duration::from_millis(1_500),
        ..RtcCallerConfig::default()
    };
    let caller = RtcCaller::connect_with(&base(&call.server), call.session, &call.token, config)
        .await
        .expect("the WebRTC call connects");
    let mut seen = Seen::default();
    seen.until(&caller, "assistant.done").await;
    assert_eq!(seen.first("assistant.done").unwrap()["text"], greeting);
    seen.hears_all_of(&caller, greeting).await;
    let stored = wait_messages(&call, 1).await;
    assert_eq!(stored[0]["content"], greeting);
    assert_eq!(stored[0]["interrupted"], false);
    caller.hangup().await.expect("hang up");
}

#[actix_web::test]
async fn caller_speech_over_webrtc_is_transcribed_and_answered() {
    let call = call(
        vec![Ok("It is noon.".into())],
        json!({"stt": {"provider": "openai"}}),
    )
    .await;
    let caller = join(&call).await;
    let mut seen = Seen::default();
    seen.until(&caller, "session.started").await;
    speak(&caller, &mut seen, &spoken("what time is it")).await;
    seen.until(&caller, "assistant.done").await;
    assert_eq!(seen.first("transcript.final").unwrap()["text"], HEARD);
    assert_eq!(seen.first("assistant.done").unwrap()["text"], "It is noon.");
    let uploads = call.fake.uploads.lock().unwrap().clone();
    assert_eq!(uploads.len(), 1, "one utterance, one transcription");
    // Real speech survived Opus both ways: at least half a second uploaded.
    assert!(uploads[0] > 16_000, "{} bytes uploaded", uploads[0]);
    let metrics = seen.first("turn.metrics").expect("turn metrics").clone();
    assert!(metrics["voice_to_voice_ms"].is_u64(), "{metrics}");
    let stored = wait_messages(&call, 2).await;
    assert_eq!(stored[0]["content"], HEARD);
}

#[actix_web::test]
async fn caller_speech_over_webrtc_interrupts_the_assistant() {
    let long = "one two three four five six seven eight nine ten eleven twelve thirteen \
                fourteen fifteen sixteen seventeen eighteen nineteen twenty";
    let call = call(
        vec![Ok(long.into()), Ok("Sure.".into())],
        json!({"stt": {"provider": "openai"}, "min_interruption_ms": 200}),
    )
    .await;
    let caller = join(&call).await;
    let mut seen = Seen::default();
    seen.until(&caller, "session.started").await;
    caller.send_user_message("Count to twenty").await.unwrap();
    seen.until(&caller, "assistant.speaking").await;
    speak(&caller, &mut seen, &spoken("stop please, that is enough")).await;
    seen.until(&caller, "assistant-message").await;
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
    // The outbound audio stopped: between the interruption and the answer
    // to it (the caller was still talking) no audio arrived. Half a second
    // of slack either side covers packets already on the wire.
    let interrupted = seen.nth_at("assistant.interrupted", 0).unwrap();
    let answer_starts = seen
        .nth_at("assistant.speaking", 1)
        .expect("the second reply");
    let window = (interrupted + Duration::from_millis(500))
        ..answer_starts
            .checked_sub(Duration::from_millis(500))
            .unwrap();
    assert!(
        window.end > window.start + Duration::from_millis(500),
        "the caller talked past the interruption for less than 1.5 s: {:?}",
        answer_starts - interrupted
    );
    let late = seen.audio.iter().filter(|a| window.contains(&a.at)).count();
    assert_eq!(late, 0, "audio kept coming after the barge-in");
    let stored = wait_messages(&call, 4).await;
    assert_eq!(stored[1]["interrupted"], true);
    assert_eq!(stored[1]["heard_text"], heard.as_str());
    assert_eq!(stored[2]["content"], HEARD);
}

#[actix_web::test]
async fn end_session_on_the_data_channel_ends_the_call() {
    let call = call(vec![Ok("Bye.".into())], json!({})).await;
    let caller = join(&call).await;
    let mut seen = Seen::default();
    seen.until(&caller, "session.started").await;
    caller
        .send_event(&json!({"type": "nonsense"}))
        .await
        .unwrap();
    seen.until(&caller, "error").await;
    assert_eq!(seen.first("error").unwrap()["code"], "invalid_message");
    caller.end_session().await.unwrap();
    seen.until(&caller, "session-ended").await;
    assert_eq!(
        seen.first("session.ended").unwrap()["reason"],
        "end-session"
    );
    // The server hangs up the peer connection too.
    let state = tokio::time::timeout(Duration::from_secs(20), caller.wait_disconnected())
        .await
        .expect("the server closes the call");
    assert_ne!(state, ConnectionState::Connected);
}

/// Posts `body` as an offer and returns the status and JSON error.
async fn post_offer(
    server: &TestServer,
    session: i64,
    token: Option<&str>,
    content_type: &str,
    body: impl Into<reqwest::Body>,
) -> (StatusCode, Value) {
    let mut request = reqwest::Client::new()
        .post(server.url(&format!("/v1/sessions/{session}/webrtc")))
        .header("content-type", content_type)
        .body(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let reply = request.send().await.unwrap();
    let status = reply.status();
    let text = reply.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

const SDP_HEAD: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n";

#[actix_web::test]
async fn bad_offers_get_clear_errors_and_leave_the_session_joinable() {
    let call = call(vec![Ok("Hello.".into())], json!({})).await;
    let server = &call.server;
    let session = call.session;
    let token = Some(call.token.as_str());

    let (status, body) = post_offer(server, session, token, "application/sdp", "hello").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "invalid_sdp");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("v=0"),
        "{body}"
    );

    let video = format!("{SDP_HEAD}m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 VP8/90000\r\n");
    let (status, body) = post_offer(server, session, token, "application/sdp", video).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no audio m-line"),
        "{body}"
    );

    let pcmu = format!("{SDP_HEAD}m=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=rtpmap:0 PCMU/8000\r\n");
    let (status, body) = post_offer(server, session, token, "application/sdp", pcmu).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("Opus"),
        "{body}"
    );

    // Opus named, but not SDP str0m can negotiate (no ICE credentials).
    let broken =
        format!("{SDP_HEAD}m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n");
    let (status, body) = post_offer(server, session, token, "application/sdp", broken).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "invalid_sdp");

    let (status, body) = post_offer(
        server,
        session,
        token,
        "application/json",
        "{\"sdp\":\"v=0\"}",
    )
    .await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{body}");

    let huge = format!("{SDP_HEAD}{}", "a=x-filler:0\r\n".repeat(40_000));
    let (status, body) = post_offer(server, session, token, "application/sdp", huge).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");

    let (status, body) = post_offer(server, session, None, "application/sdp", "hello").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");

    let (status, body) =
        post_offer(server, 999_999, Some(&call.key), "application/sdp", "v=0").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    // Another organization's session is not found, with a valid offer too.
    let other = server.tenant("other").await;
    let caller = join(&call).await;
    let offer = caller.offer_sdp().to_owned();
    let (status, body) = post_offer(
        server,
        session,
        Some(&other.key),
        "application/sdp",
        offer.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    // None of the refusals used the session up: the caller above joined.
    // A second offer for the live session is a conflict.
    let (status, body) = post_offer(server, session, token, "application/sdp", offer).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");

    // DELETE: another peer id is not found; the right one hangs up.
    let wrong = format!("/v1/sessions/{session}/webrtc/999999");
    let reply = reqwest::Client::new()
        .delete(server.url(&wrong))
        .bearer_auth(&call.key)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::NOT_FOUND);
    let location = caller.location().to_owned();
    let reply = reqwest::Client::new()
        .delete(server.url(&location))
        .bearer_auth(&other.key)
        .send()
        .await
        .unwrap();
    assert_eq!(
        reply.status(),
        StatusCode::NOT_FOUND,
        "another org cannot hang up"
    );
    let reply = reqwest::Client::new()
        .delete(server.url(&location))
        .bearer_auth(&call.key)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::NO_CONTENT);
    caller.close().await;
}

#[actix_web::test]
async fn an_ended_session_cannot_be_joined_over_webrtc() {
    let call = call(vec![Ok("Hello.".into())], json!({})).await;
    let (status, body) = call
        .server
        .post(
            &format!("/v1/sessions/{}/end", call.session),
            &call.key,
            json!({}),
        )
        .await;
    assert!(status.is_success(), "{body}");
    let error = RtcCaller::connect(&base(&call.server), call.session, &call.token)
        .await
        .expect_err("an ended session refuses the offer");
    match error {
        RtcCallerError::Refused { status, .. } => assert_eq!(status, 409, "{error}"),
        other => panic!("expected 409, got {other}"),
    }
}

#[actix_web::test]
async fn a_caller_that_vanishes_may_rejoin_over_a_websocket_or_is_let_go() {
    let call = call_with(
        vec![Ok("Hello.".into()), Ok("Still here.".into())],
        json!({}),
        |s| s.server.reconnect_grace_s = 2,
    )
    .await;
    let caller = join(&call).await;
    let mut seen = Seen::default();
    seen.until(&caller, "session.started").await;
    // No DELETE, no end-session: the peer connection just closes.
    caller.close().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, session) = call
        .server
        .get(&format!("/v1/sessions/{}", call.session), &call.key)
        .await;
    assert_eq!(session["status"], "active", "{session}");

    // Back over the other transport, with the same token.
    let url = format!(
        "ws://{}/v1/sessions/{}/ws?token={}&audio=false",
        call.server.addr, call.session, call.token
    );
    let (_, mut socket) = awc::Client::new().ws(url).connect().await.unwrap();
    let mut events: Vec<Value> = Vec::new();
    while events.last().is_none_or(|e| e["type"] != "session.resumed") {
        events.push(next_text(&mut socket).await);
    }
    {
        use futures_util::SinkExt;
        let text = json!({"type": "user-message", "text": "Are you there?"}).to_string();
        socket
            .send(awc::ws::Message::Text(text.into()))
            .await
            .unwrap();
    }
    let stored = wait_messages(&call, 2).await;
    assert_eq!(stored[0]["content"], "Are you there?", "{stored:?}");
    assert_eq!(stored[1]["content"], "Hello.", "{stored:?}");

    // Gone again, for good this time.
    drop(socket);
    let session = wait_ended(&call).await;
    assert_eq!(session["end_reason"], "connection-lost");
}

#[actix_web::test]
async fn an_offer_that_never_connects_is_hung_up_after_the_connect_timeout() {
    let call = call_with(vec![Ok("Hello.".into())], json!({}), |s| {
        s.rtc.connect_timeout_ms = 1_000;
    })
    .await;
    // A real offer, posted to a second session whose caller never runs ICE:
    // the ICE credentials are another peer's, so nobody will ever connect.
    let caller = join(&call).await;
    let (second, token) = call
        .server
        .session(&call.key, assistant_of(&call).await)
        .await;
    let (status, answer) = post_offer(
        &call.server,
        second,
        Some(&token),
        "application/sdp",
        caller.offer_sdp().to_owned(),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    let path = format!("/v1/sessions/{second}");
    let mut session = Value::Null;
    for _ in 0..100 {
        (_, session) = call.server.get(&path, &call.key).await;
        if session["status"] != "active" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(session["status"], "ended", "{session}");
    assert_eq!(session["end_reason"], "connect-timeout", "{session}");
    // The caller that did connect is still in its call.
    let (_, first) = call
        .server
        .get(&format!("/v1/sessions/{}", call.session), &call.key)
        .await;
    assert_eq!(first["status"], "active", "{first}");
    caller.close().await;
}

async fn assistant_of(call: &Call) -> i64 {
    let (_, session) = call
        .server
        .get(&format!("/v1/sessions/{}", call.session), &call.key)
        .await;
    session["assistant_id"].as_i64().unwrap()
}

/// The next JSON text frame of a WebSocket (bounded at 10 s).
async fn next_text(socket: &mut actix_codec::Framed<awc::BoxedSocket, awc::ws::Codec>) -> Value {
    use futures_util::StreamExt;
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("a frame within 10 s");
        match frame {
            Some(Ok(awc::ws::Frame::Text(bytes))) => {
                return serde_json::from_slice(&bytes).unwrap();
            }
            Some(Ok(_)) => {}
            other => panic!("the socket ended: {other:?}"),
        }
    }
}
