//! Accuracy and speed of the local Whisper on synthesised speech: a fixed
//! set of 50 voice-assistant sentences spoken by several espeak-ng voices
//! and speeds and by the Piper voice, with fitted encoder windows (and the
//! full 30 s window with `--full`).
//!
//! ```sh
//! CANDLE_NUM_THREADS=1 cargo run -p palaver-local --example whisper_bench -- \
//!     [--margins 2000] [--voices en-us@140,en-us@175,en-gb,en-us+f3,piper] [--full] [--all]
//! ```
//!
//! A voice is an espeak-ng voice name with an optional `@words-per-minute`
//! (default 150), or `piper` with an optional `@speed` (default 1.0, the
//! voice's own pace; Piper's 22,050 Hz output is resampled to 16 kHz the way
//! a session does). Needs `models/` (scripts/fetch-models.sh, or
//! `PALAVER_MODELS_DIR`), `espeak-ng` and `sox`. Prints the misheard
//! utterances (every utterance with `--all`), then per window one line per
//! voice and an overall line: sentences, audio seconds, mean WER, mean and
//! p95 latency per utterance, real-time factor (processing time / audio
//! time).

use std::process::Command;
use std::time::Instant;

use palaver_local::models::ModelsDir;
use palaver_local::tts::PiperVoice;
use palaver_local::whisper::wer::word_error_rate;
use palaver_local::whisper::{EncoderWindow, Whisper};
use palaver_media::wav::{MonoPcm, to_frames_16k};

type BoxError = Box<dyn std::error::Error>;

/// What a voice assistant hears: bookings, weather, directions, support,
/// reminders; short and long, numbers, names, questions.
const SENTENCES: [&str; 50] = [
    // Bookings.
    "I would like to book a room for next weekend.",
    "Can I get a table for four at seven thirty tonight?",
    "Please cancel my reservation for Friday.",
    "I need to change my flight to Tuesday morning.",
    "Is there a double room available from the third to the fifth of June?",
    "Book me a haircut with Maria on Saturday afternoon.",
    "How much does it cost to stay two nights?",
    "My booking reference is seven two nine four.",
    "Could you move my appointment with Doctor Patel to next Thursday?",
    "We are a group of twelve people and we need a quiet room.",
    // Weather.
    "What is the weather like today?",
    "Will it rain in London tomorrow?",
    "The weather is nice today and the sun is shining.",
    "Should I take an umbrella this afternoon?",
    "How cold will it be on Sunday night?",
    "Is there a storm warning for the coast this weekend?",
    "What will the temperature be in Paris at noon?",
    "It is going to be windy with a chance of snow in the mountains.",
    // Directions and travel.
    "Can you tell me where the nearest train station is?",
    "How long does it take to drive to the airport?",
    "Turn left at the next corner and then go straight for two blocks.",
    "Where is the closest pharmacy that is open now?",
    "Is the number nine bus running on time?",
    "Take me to the museum on Oxford Street.",
    "What is the fastest way to get to the city centre by bike?",
    "How far is it from Boston to New York?",
    "Find a parking garage near the concert hall.",
    "When does the last train leave for Manchester?",
    // Support.
    "My internet connection keeps dropping every few minutes.",
    "I forgot my password and I cannot log in.",
    "The package I ordered last week has not arrived yet.",
    "Can I speak to a real person, please?",
    "I was charged twice for the same order.",
    "How do I reset my router to the factory settings?",
    "The screen on my phone is cracked and the touch does not work.",
    "I would like to return these shoes because they are too small.",
    "Why is my bill so much higher this month?",
    "Please send the invoice to my email address.",
    // Reminders, messages, everyday requests.
    "Please remind me to call my mother tomorrow morning.",
    "Set an alarm for six fifteen.",
    "Send a message to John saying I will be ten minutes late.",
    "Add milk, eggs and bread to my shopping list.",
    "What time is it in Tokyo right now?",
    "Play some relaxing music in the kitchen.",
    "The meeting has been moved to the large conference room.",
    "Thank you very much for your help with the project.",
    "Yes, that is correct.",
    "No, thanks.",
    "Sorry, I did not catch that, could you say it again?",
    "Let me think about it and I will call you back after lunch on Wednesday.",
];

#[derive(Clone, Copy, Debug, PartialEq)]
enum Engine {
    /// espeak-ng at this many words per minute.
    Espeak(u32),
    /// Piper at this speed (1.0: the voice's own pace).
    Piper(f32),
}

#[derive(Clone, Debug)]
struct Voice {
    label: String,
    name: String,
    engine: Engine,
}

fn parse_voice(spec: &str) -> Result<Voice, BoxError> {
    let (name, rate) = match spec.split_once('@') {
        Some((name, rate)) => (name, Some(rate)),
        None => (spec, None),
    };
    let engine = if name == "piper" {
        Engine::Piper(rate.map_or(Ok(1.0), str::parse)?)
    } else {
        Engine::Espeak(rate.map_or(Ok(150), str::parse)?)
    };
    let label = match engine {
        Engine::Espeak(wpm) => format!("espeak-ng {name} @{wpm}"),
        Engine::Piper(speed) => format!("piper @{speed}"),
    };
    Ok(Voice {
        label,
        name: name.to_owned(),
        engine,
    })
}

/// Totals over a set of utterances.
#[derive(Default)]
struct Stats {
    latencies_ms: Vec<f64>,
    total_wer: f64,
    audio_s: f64,
    encode_ms: f64,
    decode_ms: f64,
    decode_steps: usize,
}

impl Stats {
    fn add(&mut self, other: &Stats) {
        self.latencies_ms.extend_from_slice(&other.latencies_ms);
        self.total_wer += other.total_wer;
        self.audio_s += other.audio_s;
        self.encode_ms += other.encode_ms;
        self.decode_ms += other.decode_ms;
        self.decode_steps += other.decode_steps;
    }

    fn line(&self, label: &str) -> String {
        let n = self.latencies_ms.len().max(1) as f64;
        let total_ms: f64 = self.latencies_ms.iter().sum();
        let mut sorted = self.latencies_ms.clone();
        sorted.sort_by(f64::total_cmp);
        // Nearest rank.
        let rank = ((sorted.len() as f64 * 0.95).ceil() as usize).saturating_sub(1);
        let p95 = sorted.get(rank).copied().unwrap_or(0.0);
        format!(
            "{label:<24} {:>3} sentences {:>6.1} s audio  WER {:>5.1}%  latency mean {:>4.0} ms p95 {:>4.0} ms (encoder mean {:.0} ms, decoder {:.1} ms/token)  RTF {:.3}",
            self.latencies_ms.len(),
            self.audio_s,
            100.0 * self.total_wer / n,
            total_ms / n,
            p95,
            self.encode_ms / n,
            self.decode_ms / self.decode_steps.max(1) as f64,
            total_ms / 1000.0 / self.audio_s.max(f64::MIN_POSITIVE),
        )
    }
}

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let switch = |name: &str| args.iter().any(|a| a == name);
    let margins: Vec<u32> = flag("--margins")
        .unwrap_or_else(|| "2000".to_owned())
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let voices: Vec<Voice> = flag("--voices")
        .or_else(|| flag("--voice"))
        .unwrap_or_else(|| "en-us@140,en-us@175,en-gb,en-us+f3,piper".to_owned())
        .split(',')
        .map(parse_voice)
        .collect::<Result<_, _>>()?;
    let all = switch("--all");

    let models = ModelsDir::from_env();
    let started = Instant::now();
    let whisper = Whisper::load(&models)?;
    println!("whisper loaded in {} ms", started.elapsed().as_millis());
    let mut piper = if voices.iter().any(|v| matches!(v.engine, Engine::Piper(_))) {
        let voice = PiperVoice::load(&models)?;
        println!("piper {} at {} Hz", voice.name(), voice.sample_rate());
        Some(voice)
    } else {
        None
    };

    let started = Instant::now();
    let mut audio: Vec<Vec<Vec<f32>>> = Vec::with_capacity(voices.len());
    for voice in &voices {
        let pcm = SENTENCES
            .iter()
            .map(|s| speak(voice, piper.as_mut(), s))
            .collect::<Result<Vec<_>, _>>()?;
        let seconds: f64 = pcm.iter().map(|a| a.len() as f64 / 16_000.0).sum();
        println!(
            "{}: {} utterances, {seconds:.1} s of audio",
            voice.label,
            pcm.len()
        );
        audio.push(pcm);
    }
    println!("synthesised in {:.1} s", started.elapsed().as_secs_f64());

    let mut windows = Vec::new();
    if switch("--full") {
        windows.push(EncoderWindow::Full);
    }
    windows.extend(
        margins
            .iter()
            .map(|&margin_ms| EncoderWindow::Fit { margin_ms }),
    );
    if let Some(first) = audio.first().and_then(|pcm| pcm.first()) {
        // Warm caches and allocator.
        whisper.transcribe(first, windows.first().copied().unwrap_or_default())?;
    }

    let mut summaries = Vec::new();
    for &window in &windows {
        let mut overall = Stats::default();
        let mut lines = Vec::new();
        for (voice, pcm) in voices.iter().zip(&audio) {
            let mut stats = Stats::default();
            for (sentence, samples) in SENTENCES.iter().zip(pcm) {
                let started = Instant::now();
                let heard = whisper.transcribe(samples, window)?;
                let ms = started.elapsed().as_secs_f64() * 1000.0;
                let wer = word_error_rate(sentence, &heard.text);
                if all || wer > 0.0 {
                    println!(
                        "  {window:?} {} {ms:>5.0} ms wer {wer:.2} {sentence:?} heard {:?}",
                        voice.label, heard.text
                    );
                }
                stats.latencies_ms.push(ms);
                stats.total_wer += wer;
                stats.audio_s += samples.len() as f64 / 16_000.0;
                stats.encode_ms += heard.encode_time.as_secs_f64() * 1000.0;
                stats.decode_ms += heard.decode_time.as_secs_f64() * 1000.0;
                // The two prompt tokens, then each text token.
                stats.decode_steps += heard.tokens.len() + 2;
            }
            lines.push(stats.line(&voice.label));
            overall.add(&stats);
        }
        lines.push(overall.line("overall"));
        summaries.push((window, lines));
    }
    for (window, lines) in summaries {
        println!("{window:?}:");
        for line in lines {
            println!("  {line}");
        }
    }
    Ok(())
}

/// `text` spoken by `voice`, at 16 kHz mono, as f32.
fn speak(voice: &Voice, piper: Option<&mut PiperVoice>, text: &str) -> Result<Vec<f32>, BoxError> {
    let samples = match (voice.engine, piper) {
        (Engine::Piper(speed), Some(piper)) => {
            let audio = piper.speak(text, speed)?;
            let frames = to_frames_16k(&MonoPcm {
                sample_rate: audio.sample_rate,
                samples: audio.samples,
            })?;
            frames.iter().flat_map(|f| f.samples).collect()
        }
        (Engine::Piper(_), None) => return Err("the Piper voice is not loaded".into()),
        (Engine::Espeak(wpm), _) => espeak(&voice.name, wpm, text)?,
    };
    Ok(samples.iter().map(|&s| f32::from(s) / 32768.0).collect())
}

/// `text` spoken by espeak-ng, resampled by sox to 16 kHz mono.
fn espeak(voice: &str, wpm: u32, text: &str) -> Result<Vec<i16>, BoxError> {
    let dir = std::env::temp_dir();
    let raw = dir.join(format!("whisper-bench-{}-raw.wav", std::process::id()));
    let wav = dir.join(format!("whisper-bench-{}-16k.wav", std::process::id()));
    let ok = Command::new("espeak-ng")
        .args(["-v", voice, "-s", &wpm.to_string(), "-w"])
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
        return Err(format!("espeak-ng -v {voice} or sox failed").into());
    }
    let pcm = palaver_media::wav::read_mono(&wav)?;
    let _ = std::fs::remove_file(&raw);
    let _ = std::fs::remove_file(&wav);
    Ok(pcm.samples)
}
