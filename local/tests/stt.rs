//! The local Whisper recognizer on the real model (`models/whisper-tiny-en`,
//! from `scripts/fetch-models.sh`), fed speech synthesised by espeak-ng and
//! resampled to 16 kHz by sox.
//!
//! espeak's voice is robotic and Whisper tiny.en hears it worse than a
//! person (the CTranslate2 reference measured 15–21% WER on it), so the
//! accuracy bounds are loose: they catch a broken front end or decoder
//! (which yield 100% WER or garbage), not a small regression.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::StreamExt;
use palaver_actors::media::{AudioFrame, FRAME_SAMPLES};
use palaver_actors::ports::{
    ProviderError, Recognition, SpeechRecognizer, SttInput, SttOptions, Transcript,
};
use palaver_local::models::ModelsDir;
use palaver_local::stt::{LocalWhisper, LocalWhisperConfig};
use palaver_local::whisper::wer::word_error_rate;
use palaver_local::whisper::{EncoderWindow, Whisper};

/// Highest WER accepted on one espeak sentence, and on the mean of several.
const MAX_SENTENCE_WER: f64 = 0.5;
const MAX_MEAN_WER: f64 = 0.35;

const SENTENCES: [&str; 4] = [
    "The weather is nice today and the sun is shining.",
    "I would like to book a room for next weekend.",
    "Can you tell me where the nearest train station is?",
    "Please remind me to call my mother tomorrow morning.",
];

const LONG_SENTENCE: &str = "Yesterday I went to the market to buy some fresh vegetables, \
     and then I walked along the river with my friends until the sun went down.";

fn models() -> ModelsDir {
    let root = std::env::var_os("PALAVER_MODELS_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models"),
        PathBuf::from,
    );
    let models = ModelsDir::new(root);
    let model = models.whisper().join("model.bin");
    assert!(
        model.exists(),
        "{} is missing: run scripts/fetch-models.sh first",
        model.display()
    );
    models
}

/// One model for every test in this binary (loading takes a second).
fn whisper() -> Arc<Whisper> {
    static WHISPER: OnceLock<Arc<Whisper>> = OnceLock::new();
    Arc::clone(WHISPER.get_or_init(|| Arc::new(Whisper::load(&models()).expect("whisper loads"))))
}

/// `text` spoken by espeak-ng (en-us, 150 wpm) as 16 kHz mono PCM16.
fn speak(text: &str) -> Vec<i16> {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir();
    let raw = dir.join(format!("palaver-stt-{}-{n}-espeak.wav", std::process::id()));
    let wav = dir.join(format!("palaver-stt-{}-{n}-16k.wav", std::process::id()));
    let status = Command::new("espeak-ng")
        .args(["-v", "en-us", "-s", "150", "-w"])
        .arg(&raw)
        .arg(text)
        .status()
        .expect("espeak-ng runs (apt-get install espeak-ng)");
    assert!(status.success(), "espeak-ng failed");
    let status = Command::new("sox")
        .arg(&raw)
        .args(["-r", "16000", "-c", "1", "-b", "16"])
        .arg(&wav)
        .status()
        .expect("sox runs (apt-get install sox)");
    assert!(status.success(), "sox failed");
    let pcm = palaver_actors::media::wav::read_mono(&wav).expect("a WAV");
    let _ = std::fs::remove_file(&raw);
    let _ = std::fs::remove_file(&wav);
    assert_eq!(pcm.sample_rate, 16_000);
    pcm.samples
}

fn to_f32(samples: &[i16]) -> Vec<f32> {
    samples.iter().map(|&s| f32::from(s) / 32768.0).collect()
}

fn frames(samples: &[i16]) -> Vec<AudioFrame> {
    samples
        .chunks(FRAME_SAMPLES)
        .map(|chunk| {
            let mut frame = AudioFrame::silence();
            frame.samples[..chunk.len()].copy_from_slice(chunk);
            frame
        })
        .collect()
}

fn recognizer(config: LocalWhisperConfig) -> LocalWhisper {
    LocalWhisper::new(whisper(), config)
}

fn options() -> SttOptions {
    SttOptions {
        model: String::new(),
        language: "en".to_owned(),
    }
}

/// Sends one utterance's frames into `recognition`, then its end.
async fn say(recognition: &Recognition, frames: &[AudioFrame]) {
    for frame in frames {
        recognition
            .audio
            .send(SttInput::Audio(frame.clone()))
            .await
            .expect("audio");
    }
    recognition
        .audio
        .send(SttInput::EndOfUtterance)
        .await
        .expect("end");
}

async fn next(recognition: &mut Recognition) -> Result<Transcript, ProviderError> {
    tokio::time::timeout(Duration::from_secs(60), recognition.transcripts.next())
        .await
        .expect("a transcript within 60 s")
        .expect("the stream stays open")
}

#[test]
fn transcribes_espeak_sentences_with_either_window() {
    let whisper = whisper();
    for window in [EncoderWindow::Full, EncoderWindow::Fit { margin_ms: 2000 }] {
        let mut total = 0.0;
        for sentence in SENTENCES {
            let heard = whisper
                .transcribe(&to_f32(&speak(sentence)), window)
                .expect("transcribes");
            let wer = word_error_rate(sentence, &heard.text);
            eprintln!("{window:?}: {wer:.2} {:?} -> {:?}", sentence, heard.text);
            assert!(
                wer <= MAX_SENTENCE_WER,
                "{window:?}: {sentence:?} heard as {:?}",
                heard.text
            );
            assert!(!heard.is_probably_silence());
            total += wer;
        }
        let mean = total / SENTENCES.len() as f64;
        assert!(mean < MAX_MEAN_WER, "{window:?}: mean WER {mean:.2}");
    }
}

#[test]
fn silence_transcribes_to_nothing_much() {
    let heard = whisper()
        .transcribe(&vec![0.0; 32_000], EncoderWindow::Full)
        .expect("transcribes");
    assert!(
        heard.is_probably_silence() || heard.tokens.len() <= 3,
        "silence heard as {heard:?}"
    );
}

#[tokio::test]
async fn a_final_arrives_after_end_of_utterance() {
    let stt = recognizer(LocalWhisperConfig {
        partial_interval_ms: 0,
        ..LocalWhisperConfig::default()
    });
    let mut recognition = stt.start(options());
    let sentence = SENTENCES[1];
    say(&recognition, &frames(&speak(sentence))).await;
    let transcript = next(&mut recognition).await.expect("a transcript");
    assert!(transcript.is_final);
    let wer = word_error_rate(sentence, &transcript.text);
    assert!(wer <= MAX_SENTENCE_WER, "heard {:?}", transcript.text);

    // The next utterance on the same recognition, then one with no audio.
    let sentence = SENTENCES[2];
    say(&recognition, &frames(&speak(sentence))).await;
    recognition
        .audio
        .send(SttInput::EndOfUtterance)
        .await
        .expect("end");
    let second = next(&mut recognition).await.expect("a transcript");
    assert!(second.is_final);
    assert!(
        word_error_rate(sentence, &second.text) <= MAX_SENTENCE_WER,
        "heard {:?}",
        second.text
    );
    let empty = next(&mut recognition).await.expect("a transcript");
    assert_eq!(
        empty,
        Transcript {
            text: String::new(),
            is_final: true
        }
    );
}

#[tokio::test]
async fn partials_arrive_while_a_long_utterance_is_spoken() {
    let stt = recognizer(LocalWhisperConfig {
        partial_interval_ms: 500,
        ..LocalWhisperConfig::default()
    });
    let mut recognition = stt.start(options());
    let audio = speak(LONG_SENTENCE);
    assert!(audio.len() > 5 * 16_000, "a long utterance");
    let sender = recognition.audio.clone();
    // Real time: one frame every 20 ms.
    let speaker = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        for frame in frames(&audio) {
            tick.tick().await;
            sender.send(SttInput::Audio(frame)).await.expect("audio");
        }
        sender.send(SttInput::EndOfUtterance).await.expect("end");
    });
    let mut partials = Vec::new();
    let last = loop {
        let transcript = next(&mut recognition).await.expect("a transcript");
        if transcript.is_final {
            break transcript;
        }
        partials.push(transcript.text);
    };
    speaker.await.expect("speaker");
    eprintln!("partials: {partials:?}\nfinal: {:?}", last.text);
    assert!(partials.len() >= 2, "partials: {partials:?}");
    assert!(partials.iter().all(|p| !p.is_empty()));
    let wer = word_error_rate(LONG_SENTENCE, &last.text);
    assert!(wer <= MAX_SENTENCE_WER, "heard {:?}", last.text);
}

#[tokio::test]
async fn a_full_queue_answers_busy() {
    let stt = recognizer(LocalWhisperConfig {
        partial_interval_ms: 0,
        queue_depth: 1,
        window: EncoderWindow::Full,
        ..LocalWhisperConfig::default()
    });
    let audio = frames(&speak(SENTENCES[0]));
    let mut recognitions: Vec<Recognition> = (0..5).map(|_| stt.start(options())).collect();
    for recognition in &recognitions {
        for frame in &audio {
            recognition
                .audio
                .send(SttInput::Audio(frame.clone()))
                .await
                .expect("audio");
        }
    }
    for recognition in &recognitions {
        recognition
            .audio
            .send(SttInput::EndOfUtterance)
            .await
            .expect("end");
    }
    let mut finals = 0;
    let mut busy = 0;
    for recognition in &mut recognitions {
        match next(recognition).await {
            Ok(t) if t.is_final => finals += 1,
            Err(ProviderError::Busy { provider: "local" }) => busy += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    // One job runs, one waits; the others find the queue full.
    assert!(finals >= 1 && busy >= 1, "finals {finals}, busy {busy}");
}

#[tokio::test]
async fn dropping_a_recognition_abandons_its_work() {
    let stt = recognizer(LocalWhisperConfig {
        partial_interval_ms: 0,
        window: EncoderWindow::Full,
        ..LocalWhisperConfig::default()
    });
    let audio = frames(&speak(LONG_SENTENCE));
    for _ in 0..3 {
        let recognition = stt.start(options());
        say(&recognition, &audio).await;
        drop(recognition);
    }
    // The abandoned finals neither block this one nor reach it.
    let mut recognition = stt.start(options());
    say(&recognition, &frames(&speak(SENTENCES[3]))).await;
    let transcript = next(&mut recognition).await.expect("not busy");
    assert!(transcript.is_final);
    assert!(word_error_rate(SENTENCES[3], &transcript.text) <= MAX_SENTENCE_WER);
}
