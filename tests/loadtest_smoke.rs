//! The load-test harness against a real server: a short run must finish with
//! zero failures and a latency recorded for every operation. The voice run
//! talks to the loadtest's own fake providers, started in-process.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::TestServer;
use palaver::config::Secret;
use palaver_loadtest::fake_providers::{self, FakeProvidersConfig};
use palaver_loadtest::rest::{self, RestConfig, RestScenario};
use palaver_loadtest::voice_ws::{self, VoiceConfig};
use reqwest::StatusCode;
use serde_json::json;

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
async fn voice_ws_scenario_runs_clean_records_every_metric_and_barges_in() {
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
                "tts": {"provider": "openai", "voice_id": "alloy"},
            }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{assistant}");

    let report = voice_ws::run(VoiceConfig {
        base_url: server.base.clone(),
        api_key: t.key.clone(),
        assistant_id: assistant["id"].as_i64(),
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
    assert_eq!(report.failed(), 0, "{table}");
    for op in [
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
    ] {
        let summary = report
            .operations
            .get(op)
            .unwrap_or_else(|| panic!("{op} missing: {table}"));
        assert!(summary.ok > 0, "{op}: {table}");
    }
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
        api_key: t.key.clone(),
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
