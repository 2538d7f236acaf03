//! The local voice on the real model files in `models/` (fetched by
//! `scripts/fetch-models.sh`; `make test` fetches them first, so a missing
//! file fails these tests rather than skipping them).

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use palaver_actors::ports::{ProviderError, SpeechSynthesizer, TtsAudio, TtsRequest};
use palaver_local::models::ModelsDir;
use palaver_local::tts::{LocalSpeech, PiperVoice, SpeechOptions};

fn models() -> ModelsDir {
    let root = std::env::var_os("PALAVER_MODELS_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../models"),
        PathBuf::from,
    );
    let models = ModelsDir::new(root);
    for path in [models.piper_voice(), models.onnxruntime()] {
        assert!(
            path.exists(),
            "{} is missing: run scripts/fetch-models.sh (make test does)",
            path.display()
        );
    }
    models
}

/// One Piper-backed engine for the tests that only speak.
fn shared() -> Arc<LocalSpeech> {
    static SPEECH: OnceLock<Arc<LocalSpeech>> = OnceLock::new();
    SPEECH
        .get_or_init(|| Arc::new(piper_speech(SpeechOptions::default())))
        .clone()
}

fn piper_speech(options: SpeechOptions) -> LocalSpeech {
    let speech = LocalSpeech::load(&models(), options).expect("the local voice loads");
    assert!(
        !speech.is_fallback(),
        "Piper did not load: {}",
        speech.status()
    );
    speech
}

fn request(text: &str) -> TtsRequest {
    TtsRequest {
        text: text.to_owned(),
        voice_id: String::new(),
        settings: serde_json::json!({}),
    }
}

async fn speak_all(speech: &LocalSpeech, text: &str) -> Vec<TtsAudio> {
    let mut stream = speech.synthesize(request(text));
    let mut pieces = Vec::new();
    while let Some(piece) = tokio::time::timeout(Duration::from_secs(60), stream.next())
        .await
        .expect("a sentence within 60 s")
    {
        pieces.push(piece.expect("speaks"));
    }
    pieces
}

fn rms(samples: &[i16]) -> f64 {
    let sum: f64 = samples.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
    (sum / samples.len().max(1) as f64).sqrt()
}

async fn wait_idle(speech: &LocalSpeech) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while speech.in_flight() > 0 {
        assert!(Instant::now() < deadline, "the worker never let go");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const LONG: &str = "The quick brown fox jumps over the lazy dog. \
    Then it runs into the forest, where nobody can find it. \
    Later that evening, the farmer counts his chickens again. \
    He finds that none are missing, and he goes to bed happy. \
    In the morning the fox is back, waiting by the fence. \
    The farmer laughs and throws it an apple. \
    The fox does not like apples. \
    It leaves and never returns.";

#[test]
fn piper_loads_with_its_own_sample_rate() {
    let voice = PiperVoice::load(&models()).expect("Piper loads");
    assert_eq!(voice.sample_rate(), 22_050);
    assert_eq!(voice.name(), "en_US-joe-medium");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tts_audio_is_speech_and_grows_with_the_text() {
    let speech = shared();
    let short = speak_all(&speech, "Hello.").await;
    let long = speak_all(
        &speech,
        "Hello. This sentence is a good deal longer than the first one, \
         and it keeps going for a while.",
    )
    .await;
    assert_eq!(short.len(), 1, "one sentence, one piece");
    assert_eq!(long.len(), 2, "two sentences, two pieces");
    let short_ms: u32 = short.iter().map(TtsAudio::duration_ms).sum();
    let long_ms: u32 = long.iter().map(TtsAudio::duration_ms).sum();
    assert!(short_ms > 200, "`Hello.` lasts {short_ms} ms");
    assert!(
        long_ms > 3 * short_ms,
        "long {long_ms} ms vs short {short_ms} ms"
    );
    for piece in short.iter().chain(&long) {
        assert_eq!(piece.sample_rate, 22_050);
        let level = rms(&piece.samples);
        assert!(level > 1000.0, "RMS {level}: silent?");
        let words = piece.words.as_ref().expect("word timings");
        let ends: Vec<u32> = words.iter().map(|w| w.end_ms).collect();
        assert!(ends.windows(2).all(|w| w[0] <= w[1]), "{ends:?}");
        assert!(
            ends.last().is_some_and(|&end| end <= piece.duration_ms()),
            "{ends:?}"
        );
    }
    let second = long[1].words.as_ref().expect("words");
    assert_eq!(second.first().map(|w| w.word.as_str()), Some("This"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tts_dropping_the_stream_stops_before_the_next_sentence() {
    let speech = piper_speech(SpeechOptions::default());
    let sentences = palaver_local::tts::split_sentences(LONG).len() as u64;
    assert_eq!(sentences, 8);
    let mut stream = speech.synthesize(request(LONG));
    let first = stream.next().await.expect("a piece").expect("speaks");
    assert!(first.duration_ms() > 500);
    drop(stream);
    wait_idle(&speech).await;
    let spoken = speech.sentences_spoken();
    assert!(
        spoken <= 2,
        "{spoken} of {sentences} sentences spoken after the stream was dropped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tts_a_full_queue_answers_busy_and_frees_up() {
    let speech = piper_speech(SpeechOptions {
        capacity: 1,
        ..SpeechOptions::default()
    });
    let mut first = speech.synthesize(request(LONG));
    let mut second = speech.synthesize(request("Me too."));
    match second.next().await {
        Some(Err(ProviderError::Busy { provider })) => assert_eq!(provider, "local speech"),
        other => panic!("expected Busy, got {other:?}"),
    }
    assert!(second.next().await.is_none(), "Busy ends the stream");
    assert!(first.next().await.expect("a piece").is_ok());
    drop(first);
    wait_idle(&speech).await;
    let third = speak_all(&speech, "Now it is my turn.").await;
    assert_eq!(third.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tts_two_requests_take_turns() {
    let speech = piper_speech(SpeechOptions::default());
    let mut long = speech.synthesize(request(LONG));
    let short = speech.synthesize(request("Short one."));
    let short: Vec<_> = tokio::time::timeout(Duration::from_secs(60), short.collect::<Vec<_>>())
        .await
        .expect("in time");
    assert_eq!(short.len(), 1);
    assert!(short[0].is_ok());
    // The short reply waited for one sentence of the long one, not eight.
    let spoken = speech.sentences_spoken();
    assert!(
        spoken <= 3,
        "{spoken} sentences spoken before the short reply"
    );
    let mut long_pieces = 0;
    while let Some(piece) = long.next().await {
        piece.expect("speaks");
        long_pieces += 1;
    }
    assert_eq!(long_pieces, 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tts_falls_back_to_espeak_without_the_models() {
    let speech = LocalSpeech::load(
        &ModelsDir::new("/nonexistent/palaver-models"),
        SpeechOptions::default(),
    )
    .expect("espeak-ng stands in");
    assert!(speech.is_fallback());
    let status = speech.status();
    assert!(
        status.contains("espeak-ng") && status.contains("scripts/fetch-models.sh"),
        "{status}"
    );
    let pieces = speak_all(&speech, "Hello from the fallback voice. Twice.").await;
    assert_eq!(pieces.len(), 2);
    for piece in &pieces {
        assert!(piece.duration_ms() > 300);
        assert!(rms(&piece.samples) > 500.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tts_empty_text_is_an_empty_stream() {
    let speech = shared();
    assert!(speak_all(&speech, "  ... ").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tts_speed_setting_changes_the_pace() {
    let speech = shared();
    let text = "This is a test of the speaking rate.";
    let mut durations = Vec::new();
    for speed in [1.0, 1.6] {
        let mut stream = speech.synthesize(TtsRequest {
            settings: serde_json::json!({ "speed": speed }),
            ..request(text)
        });
        let mut ms = 0;
        while let Some(piece) = stream.next().await {
            ms += piece.expect("speaks").duration_ms();
        }
        durations.push(ms);
    }
    assert!(
        f64::from(durations[1]) < f64::from(durations[0]) * 0.8,
        "1.6x speed: {durations:?} ms"
    );
}
