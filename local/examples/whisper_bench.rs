//! Accuracy and speed of the local Whisper on espeak-ng speech, with the
//! full 30 s encoder window and with fitted windows.
//!
//! ```sh
//! cargo run -p palaver-local --example whisper_bench -- [--margins 500,1000,2000] [--voice en-us]
//! ```
//!
//! Needs `models/` (scripts/fetch-models.sh, or `PALAVER_MODELS_DIR`),
//! `espeak-ng` and `sox`. Prints one line per utterance and a summary per
//! window: mean WER, mean and p95 latency, real-time factor (processing
//! time / audio time).

use std::process::Command;
use std::time::Instant;

use palaver_local::models::ModelsDir;
use palaver_local::whisper::wer::word_error_rate;
use palaver_local::whisper::{EncoderWindow, Whisper};

const SENTENCES: [&str; 10] = [
    "The weather is nice today and the sun is shining.",
    "I would like to book a room for next weekend.",
    "Can you tell me where the nearest train station is?",
    "Please remind me to call my mother tomorrow morning.",
    "The meeting has been moved to the large conference room.",
    "We need more coffee, milk and bread from the store.",
    "How long does it take to drive to the airport?",
    "Thank you very much for your help with the project.",
    "The children played football in the park after school.",
    "My favorite color is blue and I like to swim in the ocean.",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let margins: Vec<u32> = flag("--margins")
        .unwrap_or_else(|| "500,1000,2000".to_owned())
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let voice = flag("--voice").unwrap_or_else(|| "en-us".to_owned());

    let started = Instant::now();
    let whisper = Whisper::load(&ModelsDir::from_env())?;
    println!("loaded in {} ms", started.elapsed().as_millis());

    let audio: Vec<Vec<f32>> = SENTENCES
        .iter()
        .map(|s| speak(&voice, s))
        .collect::<Result<_, _>>()?;
    let audio_s: f64 = audio.iter().map(|a| a.len() as f64 / 16_000.0).sum();
    println!(
        "{} utterances, {audio_s:.1} s of audio, voice {voice}",
        audio.len()
    );
    // Warm caches and allocator.
    whisper.transcribe(&audio[0], EncoderWindow::Full)?;

    let mut windows = vec![EncoderWindow::Full];
    windows.extend(
        margins
            .iter()
            .map(|&margin_ms| EncoderWindow::Fit { margin_ms }),
    );
    for window in windows {
        let mut latencies = Vec::new();
        let mut total_wer = 0.0;
        let mut encode_ms = 0.0;
        let mut decode_ms = 0.0;
        let mut decode_steps = 0usize;
        for (sentence, pcm) in SENTENCES.iter().zip(&audio) {
            let started = Instant::now();
            let heard = whisper.transcribe(pcm, window)?;
            let ms = started.elapsed().as_secs_f64() * 1000.0;
            let wer = word_error_rate(sentence, &heard.text);
            println!(
                "  {window:?} {:>5.0} ms (encoder {:>4} pos {:>5.0} ms) wer {wer:.2} {:?}",
                ms,
                heard.encoder_positions,
                heard.encode_time.as_secs_f64() * 1000.0,
                heard.text
            );
            latencies.push(ms);
            total_wer += wer;
            encode_ms += heard.encode_time.as_secs_f64() * 1000.0;
            decode_ms += heard.decode_time.as_secs_f64() * 1000.0;
            // The two prompt tokens, then each text token.
            decode_steps += heard.tokens.len() + 2;
        }
        let n = latencies.len() as f64;
        let total_ms: f64 = latencies.iter().sum();
        latencies.sort_by(f64::total_cmp);
        let p95 = latencies[((latencies.len() as f64 * 0.95).ceil() as usize).saturating_sub(1)];
        println!(
            "{window:?}: WER {:.1}%  latency mean {:.0} ms p95 {:.0} ms (encoder mean {:.0} ms, decoder {:.1} ms/token)  RTF {:.3}",
            100.0 * total_wer / n,
            total_ms / n,
            p95,
            encode_ms / n,
            decode_ms / decode_steps as f64,
            total_ms / 1000.0 / audio_s
        );
    }
    Ok(())
}

/// `text` spoken by espeak-ng, resampled by sox to 16 kHz mono, as f32.
fn speak(voice: &str, text: &str) -> Result<Vec<f32>, Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir();
    let raw = dir.join(format!("whisper-bench-{}-raw.wav", std::process::id()));
    let wav = dir.join(format!("whisper-bench-{}-16k.wav", std::process::id()));
    let ok = Command::new("espeak-ng")
        .args(["-v", voice, "-s", "150", "-w"])
        .arg(&raw)
        .arg(text)
        .status()?
        .success()
        && Command::new("sox")
            .arg(&raw)
            .args(["-r", "16000", "-c", "1", "-b", "16"])
            .arg(&wav)
            .status()?
            .success();
    if !ok {
        return Err("espeak-ng or sox failed".into());
    }
    let pcm = palaver_media::wav::read_mono(&wav)?;
    let _ = std::fs::remove_file(&raw);
    let _ = std::fs::remove_file(&wav);
    Ok(pcm
        .samples
        .iter()
        .map(|&s| f32::from(s) / 32768.0)
        .collect())
}
