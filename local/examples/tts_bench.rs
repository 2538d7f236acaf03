//! Time to first audio and real-time factor of the local voice, for a
//! short and a long reply, through the same port the sessions use.
//!
//! ```text
//! cargo run -p palaver-local --example tts_bench [-- --runs 5 --threads 2 --espeak]
//! ```
//!
//! `--espeak` measures the fallback voice instead of Piper (it loads with a
//! models directory that does not exist). `PALAVER_MODELS_DIR` picks the
//! models (default `models/`).

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use palaver_actors::ports::{SpeechSynthesizer, TtsRequest};
use palaver_local::models::ModelsDir;
use palaver_local::tts::{LocalSpeech, SpeechOptions};

const SHORT: &str = "Sure, I can help with that.";
const LONG: &str = "Your appointment is booked for Tuesday at three in the afternoon, \
    and you will get a reminder by text message the day before, \
    so there is nothing else you need to do right now.";
const PARAGRAPH: &str = "Thanks for calling. I found your order from last week. \
    It shipped yesterday and should arrive on Friday. \
    If it does not, call us back and we will send a new one at no cost.";

#[derive(Debug, Default)]
struct Run {
    first_audio: Duration,
    total: Duration,
    audio: Duration,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut runs = 5usize;
    let mut espeak = false;
    let mut options = SpeechOptions::default();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--runs" => runs = args.next().ok_or("--runs needs a number")?.parse()?,
            "--espeak" => espeak = true,
            "--threads" => {
                options.threads = args.next().ok_or("--threads needs a number")?.parse()?
            }
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let models = if espeak {
        ModelsDir::new("/nonexistent/palaver-models")
    } else {
        ModelsDir::from_env()
    };
    let loading = Instant::now();
    let speech = LocalSpeech::load(&models, options)?;
    println!(
        "{} loaded in {} ms ({} ONNX threads, {} cores)",
        speech.voice(),
        loading.elapsed().as_millis(),
        options.threads,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    // Warm-up: the first inference allocates ONNX Runtime's arenas.
    measure(&speech, "Warming up.").await?;
    for (name, text) in [("short", SHORT), ("long", LONG), ("3 sentences", PARAGRAPH)] {
        let mut all = Vec::new();
        for _ in 0..runs.max(1) {
            all.push(measure(&speech, text).await?);
        }
        let median = |f: &dyn Fn(&Run) -> Duration| {
            let mut v: Vec<Duration> = all.iter().map(f).collect();
            v.sort();
            v[v.len() / 2]
        };
        let first = median(&|r| r.first_audio);
        let total = median(&|r| r.total);
        let audio = median(&|r| r.audio);
        println!(
            "{name:>12} ({} chars): first audio {:>4} ms, total {:>5} ms for {:>5} ms of audio, RTF {:.3} (median of {})",
            text.len(),
            first.as_millis(),
            total.as_millis(),
            audio.as_millis(),
            total.as_secs_f64() / audio.as_secs_f64().max(1e-9),
            all.len()
        );
    }
    Ok(())
}

async fn measure(speech: &LocalSpeech, text: &str) -> Result<Run, Box<dyn std::error::Error>> {
    let started = Instant::now();
    let mut stream = speech.synthesize(TtsRequest {
        text: text.to_owned(),
        voice_id: String::new(),
        settings: serde_json::json!({}),
    });
    let mut run = Run::default();
    while let Some(piece) = stream.next().await {
        let piece = piece?;
        if run.first_audio.is_zero() {
            run.first_audio = started.elapsed();
        }
        run.audio += Duration::from_millis(u64::from(piece.duration_ms()));
    }
    run.total = started.elapsed();
    Ok(run)
}
