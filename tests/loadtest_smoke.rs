//! The load-test harness against a real server: a short run must finish with
//! zero failures and a latency recorded for every operation. The voice runs
//! talk to the loadtest's own fake providers, started in-process; spoken
//! turns go through the server's real VAD and its OpenAI speech-to-text
//! adapter (answered by the fake).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::TestServer;
use palaver::config::Secret;
use palaver_loadtest::chat::{self, ChatConfig};
use palaver_loadtest::fake_providers::{self, FakeProviders, FakeProvidersConfig};
use palaver_loadtest::report::Report;
use palaver_loadtest::rest::{self, RestConfig, RestScenario};
use palaver_loadtest::scenario::ScenarioFile;
use palaver_loadtest::voice_rtc::{self, RtcOptions};
use palaver_loadtest::voice_ws::{self, AssistantShape, TurnInput, VoiceConfig};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// The fake providers, a server talking to them, an organization and an
/// assistant hearing, thinking and speaking through them (the OpenAI
/// adapters), with a short end-of-turn silence so spoken turns are quick.
async fn voice_setup() -> (FakeProviders, TestServer, String, i64) {
    let fake = fake_providers::start(
        "127.0.0.1:0".parse().unwrap(),
        FakeProvidersConfig {
            llm_delay: Duration::from_millis(20),
            tts_delay: Duration::from_millis(10),
            // About 1.6 s of speech per reply: long enough to cut into
            // after 10 frames, short enough for a quick test.
            ms_per_char: 20,
            ..FakeProvidersConfig::default()
        },
    )
    .await
    .unwrap();
    let server = TestServer::start_with(|s| {
        s.providers.openai_base_url = fake.base_url.clone();
        s.providers.openai_api_key = Some(Secret::new("sk-fake"));
        s.limits.max_open_sessions_per_org = 1_000;
        s.limits.requests_per_second = 10_000;
        s.limits.burst = 10_000;
    })
    .await;
    let t = server.tenant("voice-load").await;
    let (status, assistant) = server
        .post(
            "/v1/assistants",
            &t.key,
            json!({
                "name": "Load desk",
                "llm": {"provider": "openai", "model": "fake-1"},
                "stt": {"provider": "openai", "model": "whisper-1"},
                "tts": {"provider": "openai", "voice_id": "alloy"},
                "end_of_turn_ms": 300,
            }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{assistant}");
    (fake, server, t.key, assistant["id"].as_i64().unwrap())
}

/// The assistant a spoken run creates: the fakes for all three providers
/// (the harness's own choice), a first message, a short end-of-turn silence.
fn greeting_assistant() -> AssistantShape {
    AssistantShape {
        first_message: Some("Front desk, good evening.".into()),
        end_of_turn_ms: Some(300),
        min_interruption_ms: None,
    }
}

/// Every operation named has a latency, and nothing failed.
fn assert_recorded(report: &Report, ops: &[&str]) {
    let table = report.table();
    assert_eq!(report.failed(), 0, "{table}");
    for op in ops {
        let summary = report
            .operations
            .get(*op)
            .unwrap_or_else(|| panic!("{op} missing: {table}"));
        assert!(summary.ok > 0, "{op}: {table}");
        assert!(
            summary.p50_ms <= summary.max_ms && !summary.histogram.is_empty(),
            "{op}: {table}"
        );
        let counted: u64 = summary.histogram.iter().map(|b| b.count).sum();
        assert_eq!(counted, summary.ok, "{op}: every latency in a bucket");
    }
}

#[actix_web::test]
async fn rest_scenarios_run_clean_and_record_every_operation() {
    let server = TestServer::start().await;
    let t = server.tenant("load").await;
    for (scenario, ops) in [
        (
            RestScenario::Sessions,
            vec!["create-session", "end-session"],
        ),
        (RestScenario::ListAssistants, vec!["list-assistants"]),
    ] {
        let report = rest::run(RestConfig {
            base_url: server.base.clone(),
            api_key: t.key.clone(),
            scenario,
            iterations: 40,
            clients: 4,
            max_duration: Duration::from_secs(60),
            assistant_id: None,
        })
        .await
        .unwrap();
        assert_eq!(report.failed(), 0, "{}", report.table());
        for op in ops {
            let summary = &report.operations[op];
            assert_eq!(summary.ok, 40, "{op}: {}", report.table());
            assert!(summary.p50_ms > 0.0 && summary.p50_ms <= summary.max_ms);
        }
    }

    // Failures are counted with their reason, not hidden.
    let report = rest::run(RestConfig {
        base_url: server.base.clone(),
        api_key: "pk_0000000000000000000000000000000000000000".into(),
        scenario: RestScenario::ListAssistants,
        iterations: 3,
        clients: 1,
        max_duration: Duration::from_secs(60),
        assistant_id: Some(1),
    })
    .await
    .unwrap();
    assert_eq!(report.failed(), 3);
    assert!(
        report.table().contains("status 401 unauthorized"),
        "{}",
        report.table()
    );
}

#[actix_web::test]
async fn typed_voice_ws_turns_run_clean_record_every_metric_and_barge_in() {
    let (fake, server, key, assistant) = voice_setup().await;
    let report = voice_ws::run(VoiceConfig {
        base_url: server.base.clone(),
        api_key: key.clone(),
        assistant_id: Some(assistant),
        input: TurnInput::Typed,
        callers: 3,
        turns: 2,
        barge_in_share: 0.5,
        ramp_per_second: 0.0,
        max_duration: Duration::from_secs(60),
        server_pid: Some(std::process::id()),
        fake_providers_url: Some(fake.base_url.clone()),
        ..VoiceConfig::default()
    })
    .await
    .unwrap();
    let table = report.table();
    assert_recorded(
        &report,
        &[
            voice_ws::CREATE_SESSION,
            voice_ws::WS_CONNECT,
            voice_ws::FIRST_TEXT,
            voice_ws::FIRST_AUDIO,
            voice_ws::TURN,
            voice_ws::FRAME_JITTER,
            voice_ws::SERVER_V2V,
            voice_ws::BARGE_IN_STOP,
            voice_ws::INTERRUPTED_EVENT,
            voice_ws::END_SESSION,
        ],
    );
    assert_eq!(report.operations[voice_ws::TURN].ok, 6, "{table}");
    assert_eq!(report.operations[voice_ws::CREATE_SESSION].ok, 3);
    let voice = report.voice.as_ref().unwrap();
    assert_eq!(voice.barge_in_callers, 2, "{table}");
    assert_eq!(voice.turns_completed, 6);
    assert_eq!(voice.turns_not_run, 0);
    assert_eq!(voice.barge_ins_sent, 4, "{table}");
    assert_eq!(voice.barge_ins_observed, 4, "{table}");
    assert_eq!(report.operations[voice_ws::BARGE_IN_STOP].ok, 4);
    assert!(voice.audio_frames > 0);
    let providers = voice.providers.as_ref().unwrap();
    assert_eq!((providers.llm_delay_ms, providers.tts_delay_ms), (20, 10));
    // 6 finished replies and 4 cut ones, each asked of the model once.
    assert_eq!(providers.chat_requests, 10, "{table}");
    assert!(providers.speech_requests > 0);
    let resources = voice.server.as_ref().unwrap();
    assert!(resources.samples >= 2 && resources.peak_rss_mib > 0.0);
    // This test process is the server: its actix workers are among its
    // threads, by name.
    assert!(
        resources
            .busiest_threads
            .iter()
            .any(|t| t.name.starts_with("actix")),
        "{:?}",
        resources.busiest_threads
    );
    assert!(table.contains("first-audio") && table.contains("server-added first audio"));
    let json = serde_json::to_value(&report).unwrap();
    assert!(json["operations"]["barge-in-stop"]["p99_ms"].is_number());
    assert!(json["voice"]["server"]["peak_rss_mib"].is_number());
    assert!(json["voice"]["server"]["timeline"][0]["cpu_percent"].is_number());
    // The HTML report of the same run: every operation, the server's
    // charts, nothing fetched from elsewhere.
    let html = palaver_loadtest::html::render(&report);
    for op in report.operations.keys() {
        assert!(html.contains(&format!("<td>{op}</td>")), "{op}");
    }
    assert!(html.contains("aria-label=\"CPU % over time\""));
    // Every reply's first audio is on the timeline, in the order they came.
    assert_eq!(
        voice.first_audio_over_time.len() as u64,
        report.operations[voice_ws::FIRST_AUDIO].ok
    );
    assert!(
        voice
            .first_audio_over_time
            .windows(2)
            .all(|w| w[0].t_s <= w[1].t_s)
    );
    assert!(html.contains("aria-label=\"first audio ms over time\""));
    assert!(!html.contains("http://") && !html.contains("https://"));

    // Failures are counted with their reason, not hidden.
    let report = voice_ws::run(VoiceConfig {
        base_url: server.base.clone(),
        api_key: key.clone(),
        assistant_id: Some(999_999),
        callers: 1,
        turns: 1,
        ..VoiceConfig::default()
    })
    .await;
    assert!(
        matches!(&report, Err(rest::RunError::Setup(why)) if why.contains("status 404")),
        "{report:?}"
    );
    fake.stop().await;
}

#[actix_web::test]
async fn repeating_callers_call_again_until_the_end_of_the_run() {
    let (fake, server, key, assistant) = voice_setup().await;
    let report = voice_ws::run(VoiceConfig {
        base_url: server.base.clone(),
        api_key: key.clone(),
        assistant_id: Some(assistant),
        input: TurnInput::Typed,
        callers: 2,
        turns: 1,
        barge_in_share: 0.0,
        ramp_per_second: 0.0,
        max_duration: Duration::from_secs(3),
        repeat_calls: true,
        // Too short a run for a growth figure: none is made up.
        warmup: Some(Duration::from_secs(1)),
        server_pid: Some(std::process::id()),
        ..VoiceConfig::default()
    })
    .await
    .unwrap();
    let table = report.table();
    let created = report.operations[voice_ws::CREATE_SESSION].ok;
    // Two callers, each calling more than once, every call hung up.
    assert!(created > 2, "{table}");
    assert_eq!(
        report.operations[voice_ws::END_SESSION].ok,
        created,
        "{table}"
    );
    let voice = report.voice.as_ref().unwrap();
    // A call that starts just before the end of the run takes no turn.
    assert!(
        (created - 2..=created).contains(&voice.turns_completed),
        "{table}"
    );
    assert_eq!(report.failed(), 0, "{table}");
    assert_eq!(voice.server.as_ref().unwrap().rss_growth, None);
    fake.stop().await;
}

/// What every spoken run must show: every operation timed, voice-to-voice
/// for every reply, each utterance heard once by the fake's speech to text,
/// every barge-in cutting its reply.
fn assert_spoken(report: &Report, connect: &str, callers: u64, turns: u64, barge_ins: u64) {
    let table = report.table();
    println!("{table}");
    let mut ops = vec![
        voice_ws::CREATE_SESSION,
        connect,
        voice_ws::FIRST_TEXT,
        voice_ws::VOICE_TO_VOICE,
        voice_ws::END_OF_TURN,
        voice_ws::TURN,
        voice_ws::FRAME_JITTER,
        voice_ws::SERVER_V2V,
        voice_ws::TRANSPORT_OVERHEAD,
        voice_ws::END_SESSION,
        voice_ws::SETUP,
    ];
    if barge_ins > 0 {
        ops.extend([voice_ws::BARGE_IN_STOP, voice_ws::INTERRUPTED_EVENT]);
    }
    assert_recorded(report, &ops);
    assert!(
        !report.operations.contains_key(voice_ws::FIRST_AUDIO),
        "typed turns only: {table}"
    );
    let voice = report.voice.as_ref().unwrap();
    assert_eq!(voice.input, "spoken");
    assert!(voice.utterance.as_deref().unwrap().contains("synthetic"));
    assert_eq!(voice.end_of_turn_ms, Some(300));
    assert_eq!(voice.turns_completed, callers * turns, "{table}");
    // Every caller heard the created assistant's first message: `setup`
    // runs from joining to its first audio, so it is never below the fake's
    // TTS delay.
    let ops = &report.operations;
    assert_eq!(ops[voice_ws::SETUP].ok, callers, "{table}");
    assert!(ops[voice_ws::SETUP].p50_ms >= 10.0, "{table}");
    // Everyone was in a call at some second, nobody before the first nor
    // after the last hang-up.
    let counts: Vec<usize> = voice.sessions_over_time.iter().map(|p| p.count).collect();
    assert!(counts.len() >= 2, "{counts:?}");
    assert_eq!(counts.iter().max(), Some(&(callers as usize)), "{counts:?}");
    assert!(counts.iter().all(|&n| n <= callers as usize), "{counts:?}");
    assert_eq!(
        (voice.barge_ins_sent, voice.barge_ins_observed),
        (barge_ins, barge_ins),
        "{table}"
    );
    // Every reply, finished or cut, had its first audio after the caller's
    // speech ended; the server waited its end-of-turn silence before each.
    assert_eq!(
        ops[voice_ws::VOICE_TO_VOICE].ok,
        callers * turns + barge_ins,
        "{table}"
    );
    assert_eq!(
        ops[voice_ws::END_OF_TURN].ok,
        callers * turns + barge_ins,
        "{table}"
    );
    assert!(ops[voice_ws::VOICE_TO_VOICE].p50_ms >= 300.0, "{table}");
    assert!(ops[voice_ws::SERVER_V2V].p50_ms >= 300.0, "{table}");
    assert_eq!(
        voice.first_audio_over_time.len() as u64,
        ops[voice_ws::VOICE_TO_VOICE].ok
    );
    let providers = voice.providers.as_ref().unwrap();
    assert_eq!(
        providers.transcription_requests,
        callers * turns + barge_ins,
        "{table}"
    );
    assert_eq!(
        providers.chat_requests,
        callers * turns + barge_ins,
        "{table}"
    );
    assert!(table.contains("server-added voice-to-voice"), "{table}");
    let html = palaver_loadtest::html::render(report);
    assert!(html.contains("aria-label=\"voice-to-voice latency histogram\""));
    assert!(html.contains("aria-label=\"callers in a call over time\""));
    assert!(html.contains("spoken turns: synthetic"));
}

#[actix_web::test]
async fn spoken_turns_over_the_websocket_are_timed_from_the_end_of_speech() {
    let (fake, server, key, assistant) = voice_setup().await;
    let report = voice_ws::run(VoiceConfig {
        base_url: server.base.clone(),
        api_key: key.clone(),
        // The run creates its assistant, greeting and quick to end a turn.
        assistant: greeting_assistant(),
        input: TurnInput::Spoken,
        callers: 3,
        turns: 2,
        barge_in_share: 0.34,
        ramp_per_second: 0.0,
        max_duration: Duration::from_secs(60),
        server_pid: Some(std::process::id()),
        fake_providers_url: Some(fake.base_url.clone()),
        ..VoiceConfig::default()
    })
    .await
    .unwrap();
    assert_spoken(&report, voice_ws::WS_CONNECT, 3, 2, 2);
    // Barge-in by speech waits the assistant's min_interruption_ms.
    let table = report.table();
    assert!(
        report.operations[voice_ws::BARGE_IN_STOP].p50_ms >= 200.0,
        "{table}"
    );
    assert!(table.contains("server-added barge-in stop"), "{table}");

    // A WAV in which the VAD hears no speech is refused before anything runs.
    let dir = tempfile::tempdir().unwrap();
    let silent = dir.path().join("silence.wav");
    palaver_media::wav::write_mono(&silent, 8_000, &[0; 8_000]).unwrap();
    let refused = voice_ws::run(VoiceConfig {
        base_url: server.base.clone(),
        api_key: key.clone(),
        assistant_id: Some(assistant),
        utterance: Some(silent),
        ..VoiceConfig::default()
    })
    .await;
    assert!(
        matches!(&refused, Err(rest::RunError::Config(why)) if why.contains("no speech")),
        "{refused:?}"
    );
    // So is shaping an assistant the run does not create.
    let refused = voice_ws::run(VoiceConfig {
        base_url: server.base.clone(),
        api_key: key.clone(),
        assistant_id: Some(assistant),
        assistant: greeting_assistant(),
        ..VoiceConfig::default()
    })
    .await;
    assert!(
        matches!(&refused, Err(rest::RunError::Config(why))
            if why.contains(&format!("PATCH /v1/assistants/{assistant}"))),
        "{refused:?}"
    );
    fake.stop().await;
}

#[actix_web::test]
async fn spoken_turns_over_webrtc_send_paced_opus_and_are_timed_from_the_end_of_speech() {
    let (fake, server, key, _) = voice_setup().await;
    let report = voice_rtc::run(
        VoiceConfig {
            base_url: server.base.clone(),
            api_key: key.clone(),
            assistant: greeting_assistant(),
            input: TurnInput::Spoken,
            callers: 2,
            turns: 1,
            barge_in_share: 0.5,
            ramp_per_second: 0.0,
            max_duration: Duration::from_secs(60),
            fake_providers_url: Some(fake.base_url.clone()),
            ..VoiceConfig::default()
        },
        RtcOptions::default(),
    )
    .await
    .unwrap();
    assert_spoken(&report, voice_rtc::RTC_CONNECT, 2, 1, 1);
    let rtc = report.voice.as_ref().unwrap().rtc.as_ref().unwrap();
    assert!(rtc.packets_received > 0, "{}", report.table());
    assert_eq!(rtc.packets_missing, 0, "{}", report.table());
    fake.stop().await;
}

/// The organization's rooms, as the server lists them to its API key.
async fn room_messages(server: &TestServer, key: &str) -> Vec<Value> {
    let (status, rooms) = server.get("/v1/rooms?limit=100", key).await;
    assert_eq!(status, StatusCode::OK, "{rooms}");
    rooms["data"].as_array().cloned().unwrap_or_default()
}

#[actix_web::test]
async fn chat_scenario_delivers_every_message_to_every_other_member() {
    let server = TestServer::start().await;
    let t = server.tenant("chat-load").await;
    let report = chat::run(ChatConfig {
        base_url: server.base.clone(),
        api_key: t.key.clone(),
        users: 6,
        rooms: 2,
        messages_per_second: 30.0,
        messages: 30,
        max_duration: Duration::from_secs(30),
        typing_share: 0.5,
        // Every user goes away and back within the run.
        presence_per_minute: 120.0,
        drain: Duration::from_secs(10),
        server_pid: Some(std::process::id()),
        ..ChatConfig::default()
    })
    .await
    .unwrap();
    let table = report.table();
    println!("{table}");
    let c = report.chat.as_ref().unwrap();
    // Every socket was open from the first second, and all closed at the
    // end; each second with deliveries has its p99.
    assert_eq!(c.sockets_over_time.first().map(|p| p.count), Some(6));
    assert_eq!(c.sockets_over_time.last().map(|p| p.count), Some(0));
    assert!(!c.delivery_p99_over_time.is_empty());
    assert!(c.delivery_p99_over_time.iter().all(|p| p.ms > 0.0));
    let html = palaver_loadtest::html::render(&report);
    assert!(html.contains("aria-label=\"sockets open over time\""));
    assert!(html.contains("aria-label=\"delivery p99 ms per second over time\""));
    assert_recorded(
        &report,
        &[
            chat::CHAT_CREATE_USER,
            chat::CHAT_LOGIN,
            chat::CHAT_CREATE_ROOM,
            chat::CHAT_CONNECT,
            chat::CHAT_SEND_ACK,
            chat::CHAT_DELIVERY,
        ],
    );
    let c = report.chat.as_ref().unwrap();
    assert_eq!((c.users, c.rooms), (6, 2));
    assert_eq!((c.messages_sent, c.messages_acked), (30, 30), "{table}");
    // Rooms of three: each message is owed to the two other members.
    assert_eq!(c.deliveries_expected, 60, "{table}");
    assert_eq!((c.deliveries, c.deliveries_missing), (60, 0), "{table}");
    assert_eq!(report.operations[chat::CHAT_DELIVERY].ok, 60);
    assert_eq!(c.own_echoes, 30, "the sender's own socket hears it too");
    // About half the messages were announced (the budget is shared, so
    // users send four to six each).
    assert!((9..=18).contains(&c.typing_sent), "{table}");
    assert!(
        c.typing_events > 0 && c.presence_sent > 0 && c.presence_events > 0,
        "{table}"
    );
    assert!(c.server.as_ref().unwrap().samples >= 1);
    // The server stored them: two rooms, as many messages as sent.
    let rooms = room_messages(&server, &t.key).await;
    assert_eq!(rooms.len(), 2, "{rooms:?}");
    let mut stored = 0;
    for room in &rooms {
        let id = room["id"].as_i64().unwrap();
        let (status, page) = server
            .get(&format!("/v1/rooms/{id}/messages?limit=100"), &t.key)
            .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        stored += page["data"].as_array().map_or(0, Vec::len);
    }
    assert_eq!(stored, 30);
    let html = palaver_loadtest::html::render(&report);
    assert!(html.contains("aria-label=\"chat-delivery latency histogram\""));
    assert!(html.contains("60/60 deliveries"));
}

#[actix_web::test]
async fn chat_across_two_nodes_delivers_every_message_through_redis() {
    let Some(redis) =
        common::test_redis_url("chat_across_two_nodes_delivers_every_message_through_redis")
    else {
        return;
    };
    let a = TestServer::start_with(|s| {
        s.redis.url = Some(Secret::new(redis.clone()));
        s.redis.heartbeat_ms = 200;
        s.redis.node_ttl_ms = 2_000;
    })
    .await;
    // Node b shares a's database and Redis: one cluster of two.
    let database = a.state.settings.database.clone();
    let b = TestServer::start_with(|s| {
        s.redis.url = Some(Secret::new(redis.clone()));
        s.redis.heartbeat_ms = 200;
        s.redis.node_ttl_ms = 2_000;
        s.database = database;
    })
    .await;
    a.wait_ready().await;
    b.wait_ready().await;
    let t = a.tenant("chat-cluster").await;
    // Each room of three has members on both nodes: two thirds of the
    // deliveries cross from one node to the other.
    let report = chat::run(ChatConfig {
        base_url: a.base.clone(),
        api_key: t.key.clone(),
        users: 6,
        rooms: 2,
        messages_per_second: 30.0,
        messages: 30,
        max_duration: Duration::from_secs(30),
        drain: Duration::from_secs(10),
        socket_urls: vec![a.base.clone(), b.base.clone()],
        // Both nodes live in this test process: sampled as the server and
        // as the other node, each reported on its own.
        server_pid: Some(std::process::id()),
        node_pids: vec![std::process::id()],
        ..ChatConfig::default()
    })
    .await
    .unwrap();
    let table = report.table();
    println!("{table}");
    let c = report.chat.as_ref().unwrap();
    assert_eq!(c.nodes.len(), 1);
    assert!(c.nodes[0].samples >= 2 && c.nodes[0].peak_rss_mib > 0.0);
    assert!(table.contains("other node pid"), "{table}");
    let html = palaver_loadtest::html::render(&report);
    assert!(html.contains("<h2>Other node (pid"), "{html}");
    assert_eq!((c.messages_sent, c.messages_acked), (30, 30), "{table}");
    assert_eq!((c.deliveries, c.deliveries_missing), (60, 0), "{table}");
    assert!(report.operations[chat::CHAT_DELIVERY].p99_ms > 0.0);
    // They did cross: the nodes received room events from each other (no
    // other test of this binary uses Redis).
    let metrics = reqwest::get(a.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let received = common::metric(&metrics, "palaver_cluster_bus_received_total");
    assert!(
        received >= 30.0,
        "{received} room events crossed nodes: {}",
        metrics
            .lines()
            .filter(|l| l.contains("cluster"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[actix_web::test]
async fn a_mixed_scenario_file_runs_voice_and_chat_at_once() {
    let (fake, server, key, assistant) = voice_setup().await;
    let toml = format!(
        r#"
        url = "{}"
        providers_url = "{}"

        [voice]
        assistant_id = {assistant}
        callers = 2
        turns = 1
        barge_in_share = 0.0
        ramp_per_second = 0.0

        [chat]
        users = 4
        rooms = 2
        messages = 10
        messages_per_second = 10.0
        "#,
        server.base, fake.base_url
    );
    let scenario = ScenarioFile::parse(&toml, "mixed.toml")
        .unwrap()
        .into_scenario(&key);
    let report = palaver_loadtest::scenario::run(scenario).await.unwrap();
    assert!(report.scenario.starts_with("mixed"), "{}", report.scenario);
    assert_recorded(
        &report,
        &[
            voice_ws::VOICE_TO_VOICE,
            voice_ws::WS_CONNECT,
            chat::CHAT_DELIVERY,
        ],
    );
    assert_eq!(report.voice.as_ref().unwrap().turns_completed, 2);
    let c = report.chat.as_ref().unwrap();
    assert_eq!(
        (c.messages_sent, c.deliveries, c.deliveries_missing),
        (10, 10, 0)
    );
    fake.stop().await;
}
