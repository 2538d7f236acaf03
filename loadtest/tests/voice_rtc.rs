//! `voice-rtc` end to end against a stand-in for Palaver: the REST calls the
//! scenario makes, and a webrtc-rs peer per call that speaks the session
//! protocol on the `events` data channel (typed turns, replies as paced
//! Opus RTP packets, barge-in, end-session, DELETE to hang up). The real
//! server is exercised by the server crate's `tests/loadtest_smoke.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use bytes::Bytes;
use palaver_loadtest::rtc_caller::{opus_media_engine, opus_track};
use palaver_loadtest::voice_rtc::{self, RtcOptions, TurnInput, VoiceConfig};
use rtc::ice::mdns::MulticastDnsMode;
use rtc::ice::network_type::NetworkType;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use webrtc::data_channel::{DataChannel, DataChannelEvent, RTCDataChannelState};
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCIceGatheringState,
    RTCSessionDescription, SettingEngineBuilder, crypto,
};

/// Audio packets in a reply: 0.6 s.
const REPLY_PACKETS: u16 = 30;

/// The stand-in's state, shared by its HTTP handlers.
#[derive(Default)]
struct Fake {
    next_session: AtomicI64,
    next_peer: AtomicU64,
    peers: Mutex<HashMap<u64, Arc<dyn PeerConnection>>>,
    /// Answer every offer with 401.
    refuse_offers: AtomicBool,
    deletes: AtomicU64,
    user_messages: AtomicU64,
    interruptions: AtomicU64,
}

fn bearer(req: &HttpRequest) -> String {
    req.headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_owned()
}

fn api_error(status: StatusCode, code: &str) -> HttpResponse {
    HttpResponse::build(status).json(json!({"error": {"code": code, "message": code}}))
}

async fn create_assistant() -> HttpResponse {
    HttpResponse::Created().json(json!({"id": 1}))
}

async fn get_assistant() -> HttpResponse {
    HttpResponse::Ok().json(json!({"id": 1, "first_message": null}))
}

async fn create_session(fake: web::Data<Fake>) -> HttpResponse {
    let id = fake.next_session.fetch_add(1, Ordering::Relaxed) + 1;
    HttpResponse::Created().json(json!({
        "id": id,
        "token": format!("join-{id}"),
        "webrtc_url": format!("/v1/sessions/{id}/webrtc"),
    }))
}

/// The events and audio of one call.
struct Call {
    channel: Arc<dyn DataChannel>,
    audio: Arc<TrackLocalStaticRTP>,
    ssrc: u32,
    fake: web::Data<Fake>,
}

impl Call {
    async fn send(&self, event: Value) {
        let _ = self.channel.send_text(&event.to_string()).await;
    }

    /// One reply: its text, then its audio paced at 20 ms, then done.
    fn reply(self: &Arc<Self>, sequence: Arc<Mutex<u16>>) -> JoinHandle<()> {
        let call = self.clone();
        tokio::spawn(async move {
            call.send(json!({"type": "assistant.delta", "text": "Yes."}))
                .await;
            call.send(json!({"type": "assistant.speaking"})).await;
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            for _ in 0..REPLY_PACKETS {
                tick.tick().await;
                let number = {
                    let mut next = sequence.lock().unwrap();
                    *next = next.wrapping_add(1);
                    *next
                };
                let packet = rtc::rtp::Packet {
                    header: rtc::rtp::Header {
                        version: 2,
                        payload_type: 111,
                        sequence_number: number,
                        timestamp: u32::from(number) * 960,
                        ssrc: call.ssrc,
                        ..Default::default()
                    },
                    // An Opus packet of silence; callers need not decode it.
                    payload: Bytes::from_static(&[0xf8, 0xff, 0xfe]),
                };
                if call.audio.write_rtp(packet).await.is_err() {
                    return;
                }
            }
            call.send(json!({"type": "assistant.done", "text": "Yes."}))
                .await;
            call.send(json!({"type": "assistant-message", "text": "Yes."}))
                .await;
            call.send(json!({"type": "turn.metrics", "voice_to_voice_ms": 4}))
                .await;
        })
    }
}

/// The session protocol on the `events` channel.
async fn converse(call: Arc<Call>) {
    let hello = [
        json!({"type": "connected", "session_id": 1}),
        json!({"type": "session.started"}),
    ];
    let mut greeted = false;
    if matches!(
        call.channel.ready_state().await,
        Ok(RTCDataChannelState::Open)
    ) {
        for event in &hello {
            call.send(event.clone()).await;
        }
        greeted = true;
    }
    let sequence = Arc::new(Mutex::new(7u16));
    let mut speaking: Option<JoinHandle<()>> = None;
    while let Some(event) = call.channel.poll().await {
        match event {
            DataChannelEvent::OnOpen if !greeted => {
                for event in &hello {
                    call.send(event.clone()).await;
                }
                greeted = true;
            }
            DataChannelEvent::OnMessage(message) => {
                let message: Value = serde_json::from_slice(&message.data).unwrap_or_default();
                match message["type"].as_str() {
                    Some("user-message") => {
                        call.fake.user_messages.fetch_add(1, Ordering::Relaxed);
                        if let Some(reply) = speaking.take()
                            && !reply.is_finished()
                        {
                            reply.abort();
                            call.fake.interruptions.fetch_add(1, Ordering::Relaxed);
                            call.send(json!({"type": "assistant.interrupted", "heard_text": "Ye"}))
                                .await;
                        }
                        speaking = Some(call.reply(sequence.clone()));
                    }
                    Some("end-session") => {
                        call.send(json!({"type": "session.ended", "reason": "end-session"}))
                            .await;
                        call.send(json!({"type": "session-ended"})).await;
                    }
                    _ => {
                        call.send(json!({"type": "error", "code": "invalid_message"}))
                            .await;
                    }
                }
            }
            DataChannelEvent::OnClose => break,
            _ => {}
        }
    }
    if let Some(reply) = speaking {
        reply.abort();
    }
}

struct Answerer {
    gathering: watch::Sender<RTCIceGatheringState>,
    audio: Arc<TrackLocalStaticRTP>,
    ssrc: u32,
    fake: web::Data<Fake>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Answerer {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        self.gathering.send_replace(state);
    }

    async fn on_data_channel(&self, channel: Arc<dyn DataChannel>) {
        let call = Arc::new(Call {
            channel,
            audio: self.audio.clone(),
            ssrc: self.ssrc,
            fake: self.fake.clone(),
        });
        tokio::spawn(converse(call));
    }
}

/// An ICE-lite answer on loopback, like Palaver's endpoint.
async fn answer(fake: web::Data<Fake>, offer: String) -> (Arc<dyn PeerConnection>, String) {
    let (gathering_tx, mut gathering) = watch::channel(RTCIceGatheringState::New);
    let (audio, ssrc) = opus_track("palaver", "assistant");
    let settings = SettingEngineBuilder::new()
        .with_crypto_provider(Arc::new(crypto::providers::AwsLcRsProvider::new()))
        .with_multicast_dns_mode(MulticastDnsMode::Disabled)
        .with_network_types(vec![NetworkType::Udp4])
        .with_lite(true)
        .build();
    let pc = PeerConnectionBuilder::new()
        .with_media_engine(opus_media_engine().unwrap())
        .with_setting_engine(settings)
        .with_handler(Arc::new(Answerer {
            gathering: gathering_tx,
            audio: audio.clone(),
            ssrc,
            fake,
        }))
        .with_udp_addrs(vec![SocketAddr::from((Ipv4Addr::LOCALHOST, 0))])
        .build()
        .await
        .unwrap();
    let pc: Arc<dyn PeerConnection> = Arc::new(pc);
    pc.add_track(audio).await.unwrap();
    pc.set_remote_description(RTCSessionDescription::offer(offer).unwrap())
        .await
        .unwrap();
    let local = pc.create_answer(None).await.unwrap();
    pc.set_local_description(local).await.unwrap();
    gathering
        .wait_for(|s| *s == RTCIceGatheringState::Complete)
        .await
        .unwrap();
    let sdp = pc.local_description().await.unwrap().sdp;
    (pc, sdp)
}

async fn post_offer(
    path: web::Path<i64>,
    req: HttpRequest,
    body: web::Bytes,
    fake: web::Data<Fake>,
) -> HttpResponse {
    let id = path.into_inner();
    if fake.refuse_offers.load(Ordering::Relaxed) || bearer(&req) != format!("join-{id}") {
        return api_error(StatusCode::UNAUTHORIZED, "unauthorized");
    }
    let offer = String::from_utf8(body.to_vec()).unwrap();
    let (pc, sdp) = answer(fake.clone(), offer).await;
    let peer = fake.next_peer.fetch_add(1, Ordering::Relaxed);
    fake.peers.lock().unwrap().insert(peer, pc);
    HttpResponse::Created()
        .content_type("application/sdp")
        .insert_header(("location", format!("/v1/sessions/{id}/webrtc/{peer}")))
        .body(sdp)
}

async fn delete_peer(path: web::Path<(i64, u64)>, fake: web::Data<Fake>) -> HttpResponse {
    let (_, peer) = path.into_inner();
    fake.deletes.fetch_add(1, Ordering::Relaxed);
    let removed = fake.peers.lock().unwrap().remove(&peer);
    match removed {
        Some(pc) => {
            let _ = pc.close().await;
            HttpResponse::NoContent().finish()
        }
        None => api_error(StatusCode::NOT_FOUND, "not_found"),
    }
}

async fn start_fake() -> (String, web::Data<Fake>, actix_web::dev::ServerHandle) {
    let fake = web::Data::new(Fake::default());
    let data = fake.clone();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .route("/v1/assistants", web::post().to(create_assistant))
            .route("/v1/assistants/{id}", web::get().to(get_assistant))
            .route("/v1/sessions", web::post().to(create_session))
            .route("/v1/sessions/{id}/webrtc", web::post().to(post_offer))
            .route(
                "/v1/sessions/{id}/webrtc/{peer}",
                web::delete().to(delete_peer),
            )
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(1)
    .bind((Ipv4Addr::LOCALHOST, 0))
    .unwrap();
    let addr = server.addrs()[0];
    let server = server.run();
    let handle = server.handle();
    actix_rt::spawn(server);
    (format!("http://{addr}"), fake, handle)
}

#[actix_rt::test]
async fn voice_rtc_runs_turns_and_barge_ins_over_webrtc_and_counts_rtp() {
    let (base, fake, server) = start_fake().await;
    let report = voice_rtc::run(
        VoiceConfig {
            base_url: base.clone(),
            api_key: "pk_test".into(),
            callers: 3,
            turns: 2,
            // round(3 × 0.34) = 1 caller cuts in, into both its replies.
            barge_in_share: 0.34,
            barge_in_after_frames: 5,
            ramp_per_second: 0.0,
            max_duration: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(10),
            // The stand-in takes typed turns only.
            input: TurnInput::Typed,
            ..VoiceConfig::default()
        },
        RtcOptions {
            decode_audio: true,
            ..RtcOptions::default()
        },
    )
    .await
    .unwrap();
    let table = report.table();
    println!("{table}");
    assert_eq!(report.scenario, "voice-rtc");
    assert_eq!(report.failed(), 0, "{table}");
    for op in [
        voice_rtc::CREATE_SESSION,
        voice_rtc::RTC_CONNECT,
        voice_rtc::FIRST_TEXT,
        voice_rtc::FIRST_AUDIO,
        voice_rtc::TURN,
        voice_rtc::FRAME_JITTER,
        voice_rtc::SERVER_V2V,
        voice_rtc::TRANSPORT_OVERHEAD,
        voice_rtc::BARGE_IN_STOP,
        voice_rtc::INTERRUPTED_EVENT,
        voice_rtc::END_SESSION,
    ] {
        let summary = report
            .operations
            .get(op)
            .unwrap_or_else(|| panic!("{op} missing: {table}"));
        assert!(summary.ok > 0, "{op}: {table}");
    }
    assert_eq!(report.operations[voice_rtc::RTC_CONNECT].ok, 3, "{table}");
    assert_eq!(report.operations[voice_rtc::TURN].ok, 6, "{table}");
    // 3 callers × 2 turns: one message each, and one more per barge-in.
    let voice = report.voice.as_ref().unwrap();
    assert_eq!(voice.barge_in_callers, 1, "{table}");
    assert_eq!((voice.turns_completed, voice.turns_not_run), (6, 0));
    assert_eq!((voice.barge_ins_sent, voice.barge_ins_observed), (2, 2));
    assert_eq!(fake.user_messages.load(Ordering::Relaxed), 8);
    assert_eq!(fake.interruptions.load(Ordering::Relaxed), 2);
    assert_eq!(report.operations[voice_rtc::BARGE_IN_STOP].ok, 2);
    // Every finished reply's packets were heard; first audio follows the
    // text at once, and the packets are paced.
    let rtc = voice.rtc.as_ref().unwrap();
    assert!(
        rtc.packets_received >= 6 * u64::from(REPLY_PACKETS),
        "{table}"
    );
    assert_eq!(rtc.packets_received, voice.audio_frames, "{table}");
    assert_eq!(
        (rtc.packets_missing, rtc.packets_dropped_by_callers),
        (0, 0)
    );
    assert!(rtc.decoded && rtc.frames_decoded > 0, "{table}");
    assert_eq!(rtc.decode_errors, 0, "{table}");
    assert_eq!(rtc.invalid_events, 0, "{table}");
    assert!(report.operations[voice_rtc::FIRST_AUDIO].p50_ms < 500.0);
    assert!(report.operations[voice_rtc::FRAME_JITTER].p50_ms < 15.0);
    // Every call ended with end-session: nobody had to DELETE.
    assert_eq!(fake.deletes.load(Ordering::Relaxed), 0);
    assert!(voice.load_generator.is_some());
    assert!(table.contains("rtp:") && table.contains("load generator pid"));
    let json = serde_json::to_value(&report).unwrap();
    assert!(json["voice"]["rtc"]["packets_received"].is_u64());

    // A refused offer is an rtc-connect failure with its reason; nothing
    // else is attempted.
    fake.refuse_offers.store(true, Ordering::Relaxed);
    let report = voice_rtc::run(
        VoiceConfig {
            base_url: base,
            api_key: "pk_test".into(),
            callers: 2,
            turns: 1,
            ramp_per_second: 0.0,
            input: TurnInput::Typed,
            ..VoiceConfig::default()
        },
        RtcOptions::default(),
    )
    .await
    .unwrap();
    let table = report.table();
    let connect = &report.operations[voice_rtc::RTC_CONNECT];
    assert_eq!((connect.ok, connect.failed), (0, 2), "{table}");
    assert_eq!(connect.failures["status 401 unauthorized"], 2, "{table}");
    assert_eq!(report.voice.as_ref().unwrap().turns_not_run, 2);
    server.stop(false).await;
}

#[actix_rt::test]
async fn voice_rtc_refuses_a_configuration_it_cannot_run() {
    for config in [
        VoiceConfig {
            callers: 0,
            ..VoiceConfig::default()
        },
        VoiceConfig {
            barge_in_share: 1.5,
            ..VoiceConfig::default()
        },
    ] {
        let result = voice_rtc::run(config, RtcOptions::default()).await;
        assert!(
            matches!(result, Err(palaver_loadtest::rest::RunError::Config(_))),
            "{result:?}"
        );
    }
}
