//! Is the Piper voice intelligible? Its speech, resampled to 16 kHz the way
//! a session does, is transcribed by the local Whisper and compared with
//! the text. Non-silence and duration checks (`tests/tts.rs`) cannot catch
//! wrong phoneme ids, which give fluent gibberish; this does. Real models
//! from `models/` (`scripts/fetch-models.sh`).

use std::path::{Path, PathBuf};

use palaver_actors::media::wav::{MonoPcm, to_frames_16k};
use palaver_local::models::ModelsDir;
use palaver_local::tts::PiperVoice;
use palaver_local::whisper::wer::word_error_rate;
use palaver_local::whisper::{EncoderWindow, Whisper};

/// Whisper tiny.en on a clear voice: a broken front end gives ~100%.
const MAX_SENTENCE_WER: f64 = 0.35;
const MAX_MEAN_WER: f64 = 0.15;

const SENTENCES: [&str; 4] = [
    "The weather is nice today and the sun is shining.",
    "I would like to book a room for next weekend.",
    "Can you tell me where the nearest train station is?",
    "Well, your appointment is on Tuesday, in the afternoon.",
];

fn models() -> ModelsDir {
    let root = std::env::var_os("PALAVER_MODELS_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../models"),
        PathBuf::from,
    );
    let models = ModelsDir::new(root);
    for path in [models.piper_voice(), models.whisper().join("model.bin")] {
        assert!(
            path.exists(),
            "{} is missing: run scripts/fetch-models.sh (make test does)",
            path.display()
        );
    }
    models
}

#[test]
fn whisper_hears_what_piper_says() {
    let models = models();
    let mut voice = PiperVoice::load(&models).expect("Piper loads");
    let whisper = Whisper::load(&models).expect("Whisper loads");
    let mut total = 0.0;
    for sentence in SENTENCES {
        let audio = voice.speak(sentence, 1.0).expect("speaks");
        let frames = to_frames_16k(&MonoPcm {
            sample_rate: audio.sample_rate,
            samples: audio.samples,
        })
        .expect("resamples");
        let pcm: Vec<f32> = frames
            .iter()
            .flat_map(|f| f.samples.iter().map(|&s| f32::from(s) / 32768.0))
            .collect();
        let heard = whisper
            .transcribe(&pcm, EncoderWindow::Full)
            .expect("transcribes");
        let wer = word_error_rate(sentence, &heard.text);
        eprintln!("WER {wer:.2}: {sentence:?} heard as {:?}", heard.text);
        assert!(
            wer <= MAX_SENTENCE_WER,
            "{sentence:?} heard as {:?}",
            heard.text
        );
        total += wer;
    }
    let mean = total / SENTENCES.len() as f64;
    assert!(mean <= MAX_MEAN_WER, "mean WER {mean:.2}");
}
