//! Whisper (tiny.en) on candle: one utterance of 16 kHz audio in, its text
//! out. This module owns the model files' formats and the inference; the
//! streaming [`SpeechRecognizer`](palaver_actors::ports::SpeechRecognizer)
//! around it (worker thread, queue, partials) is `crate::stt`.
//!
//! Layout:
//! - `ct2`: the CTranslate2 `model.bin` reader (f16 weights widened to f32).
//! - [`mel`]: the log-mel features, with the Slaney filter bank.
//! - `model`: the encoder and the KV-cached decoder.
//! - [`tokenizer`]: token ids back to text.
//! - [`wer`]: word error rate, for tests and benchmarks.
//!
//! Decoding is greedy from `<|startoftranscript|><|notimestamps|>` (the
//! English-only models have no language or task tokens), suppressing the
//! tokens of `config.json`'s `suppress_ids`, every special and timestamp
//! token, and `suppress_ids_begin` at the first step, until
//! `<|endoftext|>`.

mod ct2;
pub mod mel;
mod model;
pub mod tokenizer;
pub mod wer;

use std::path::Path;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::models::{ModelError, ModelsDir};
use mel::{HOP, LogMel, SAMPLE_RATE};
use model::{Decoder, Encoder};
use tokenizer::Tokenizer;

const ENGINE: &str = "whisper";

/// Mel frames per encoder position (the second convolution has stride 2).
const MEL_FRAMES_PER_POSITION: usize = 2;

/// Tokens a transcript may hold at most, whatever its length: Whisper's own
/// sample length (half the text context).
const MAX_TOKENS: usize = 224;

/// How much of the 30 s window the encoder runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum EncoderWindow {
    /// The whole 30 s window (1500 positions), as the model was trained:
    /// the most accurate, and the cost of 30 s of audio for any utterance.
    #[default]
    Full,
    /// Only the positions that hold the audio plus `margin_ms` of the
    /// silence after it (whisper.cpp's `audio_ctx`), the positional
    /// embedding sliced to match: cost grows with the utterance.
    Fit { margin_ms: u32 },
}

impl EncoderWindow {
    /// Encoder positions for `samples` of audio, at most `max`.
    fn positions(self, samples: usize, max: usize) -> usize {
        match self {
            EncoderWindow::Full => max,
            EncoderWindow::Fit { margin_ms } => {
                let per_position = HOP * MEL_FRAMES_PER_POSITION;
                let margin = (margin_ms as usize * SAMPLE_RATE / 1000).div_ceil(per_position);
                (samples.div_ceil(per_position) + margin).clamp(1, max)
            }
        }
    }
}

/// Why a transcription did not finish.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WhisperError {
    /// A tensor operation failed (a shape bug, or out of memory).
    #[error("whisper inference failed: {0}")]
    Inference(#[from] candle_core::Error),
    /// The caller gave up (its cancel check answered true).
    #[error("the transcription was cancelled")]
    Cancelled,
}

/// One utterance's result.
#[derive(Debug, Clone, PartialEq)]
pub struct Transcription {
    pub text: String,
    pub tokens: Vec<u32>,
    /// The model's probability that the audio holds no speech.
    pub no_speech_prob: f32,
    /// Mean log probability of the chosen tokens (the end token included).
    pub avg_logprob: f32,
    /// Encoder positions run (1500 for the full window).
    pub encoder_positions: usize,
    pub encode_time: Duration,
    pub decode_time: Duration,
}

impl Transcription {
    /// Whisper's own silence test: likely no speech, and not confidently
    /// decoded either (what it says then is usually a hallucination such
    /// as "Thank you.").
    pub fn is_probably_silence(&self) -> bool {
        self.no_speech_prob > 0.6 && self.avg_logprob < -1.0
    }
}

#[derive(Debug, Deserialize)]
struct Config {
    #[serde(default)]
    suppress_ids: Vec<u32>,
    #[serde(default)]
    suppress_ids_begin: Vec<u32>,
}

/// A loaded Whisper model: load once, share (it is `Send + Sync`, and
/// [`Whisper::transcribe`] takes `&self`).
#[derive(Debug)]
pub struct Whisper {
    encoder: Encoder,
    decoder: Decoder,
    tokenizer: Tokenizer,
    mel: LogMel,
    /// Per vocabulary id: never chosen.
    suppressed: Vec<bool>,
    /// Not chosen as the first token either (a blank, the end).
    suppressed_at_begin: Vec<u32>,
}

impl Whisper {
    /// Loads `model.bin`, `config.json` and `vocabulary.txt` from
    /// [`ModelsDir::whisper`].
    pub fn load(models: &ModelsDir) -> Result<Self, ModelError> {
        Self::load_dir(&models.whisper())
    }

    /// Loads from a directory in the CTranslate2 layout.
    pub fn load_dir(dir: &Path) -> Result<Self, ModelError> {
        let read = |name: &str| -> Result<Vec<u8>, ModelError> {
            let path = ModelsDir::require(ENGINE, dir.join(name))?;
            std::fs::read(&path).map_err(|e| invalid(&path, e.to_string()))
        };
        let model_path = dir.join("model.bin");
        let model = ct2::Ct2Model::parse(&read("model.bin")?)
            .map_err(|message| invalid(&model_path, message))?;
        let (encoder, decoder) =
            model::load(&model).map_err(|message| invalid(&model_path, message))?;
        drop(model);

        let config_path = dir.join("config.json");
        let config: Config = serde_json::from_slice(&read("config.json")?)
            .map_err(|e| invalid(&config_path, e.to_string()))?;
        let vocab_path = dir.join("vocabulary.txt");
        let vocab = String::from_utf8(read("vocabulary.txt")?)
            .map_err(|e| invalid(&vocab_path, e.to_string()))?;
        let tokenizer =
            Tokenizer::from_vocabulary(&vocab).map_err(|message| invalid(&vocab_path, message))?;

        let special = tokenizer.special();
        let mut suppressed = vec![false; tokenizer.vocab_size()];
        for id in config.suppress_ids {
            if let Some(s) = suppressed.get_mut(id as usize) {
                *s = true;
            }
        }
        // Specials and timestamps (everything after the end token).
        for s in suppressed.iter_mut().skip(special.end_of_text as usize + 1) {
            *s = true;
        }
        let mel = LogMel::new().map_err(|e| invalid(dir, e.to_string()))?;
        Ok(Self {
            encoder,
            decoder,
            tokenizer,
            mel,
            suppressed,
            suppressed_at_begin: config.suppress_ids_begin,
        })
    }

    /// The text of one utterance of 16 kHz mono audio (samples in -1..1;
    /// only its last 30 s are heard).
    pub fn transcribe(
        &self,
        pcm: &[f32],
        window: EncoderWindow,
    ) -> Result<Transcription, WhisperError> {
        self.transcribe_until(pcm, window, &|| false)
    }

    /// [`Whisper::transcribe`], giving up with [`WhisperError::Cancelled`]
    /// as soon as `cancelled` answers true (checked between tokens).
    pub fn transcribe_until(
        &self,
        pcm: &[f32],
        window: EncoderWindow,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Transcription, WhisperError> {
        let max_positions = self.encoder.max_positions();
        let max_samples = max_positions * MEL_FRAMES_PER_POSITION * HOP;
        let pcm = &pcm[pcm.len().saturating_sub(max_samples)..];
        let positions = window.positions(pcm.len(), max_positions);

        let started = Instant::now();
        let features = self.mel.compute(pcm, positions * MEL_FRAMES_PER_POSITION)?;
        let audio = self.encoder.forward(&features)?;
        let encode_time = started.elapsed();
        if cancelled() {
            return Err(WhisperError::Cancelled);
        }

        let started = Instant::now();
        let special = self.tokenizer.special();
        let mut state = self.decoder.start(&audio)?;
        let at_start = self.decoder.step(&mut state, special.start_of_transcript)?;
        let no_speech_prob = log_softmax_at(&at_start, special.no_speech as usize).exp();
        let mut logits = self.decoder.step(&mut state, special.no_timestamps)?;

        let duration_s = pcm.len() / SAMPLE_RATE + 1;
        // Twice the tokens of fast speech (about four a second), a bound on
        // the loops a greedy decoder falls into.
        let max_tokens = (8 + 8 * duration_s)
            .min(MAX_TOKENS)
            .min(self.decoder.max_positions().saturating_sub(3));
        let mut tokens = Vec::new();
        let mut sum_logprob = 0.0f32;
        loop {
            for (logit, &suppress) in logits.iter_mut().zip(&self.suppressed) {
                if suppress {
                    *logit = f32::NEG_INFINITY;
                }
            }
            if tokens.is_empty() {
                for &id in &self.suppressed_at_begin {
                    if let Some(logit) = logits.get_mut(id as usize) {
                        *logit = f32::NEG_INFINITY;
                    }
                }
            }
            let next = argmax(&logits);
            sum_logprob += log_softmax_at(&logits, next);
            let next = next as u32;
            if next == special.end_of_text || tokens.len() >= max_tokens {
                break;
            }
            tokens.push(next);
            if let Some(repeat) = repeated_tail(&tokens) {
                // A greedy loop: keep the first copy, stop.
                tokens.truncate(tokens.len() - repeat);
                break;
            }
            if cancelled() {
                return Err(WhisperError::Cancelled);
            }
            logits = self.decoder.step(&mut state, next)?;
        }
        Ok(Transcription {
            text: self.tokenizer.decode(&tokens),
            avg_logprob: sum_logprob / (tokens.len() + 1) as f32,
            tokens,
            no_speech_prob,
            encoder_positions: positions,
            encode_time,
            decode_time: started.elapsed(),
        })
    }
}

/// Tokens to cut when `tokens` ends in a loop: a block of at least
/// [`MIN_REPEATED_BLOCK`] tokens twice in a row, or a shorter one
/// [`SHORT_BLOCK_REPEATS`] times (so "no, no" survives but not a phrase
/// the decoder got stuck on). Keeps one copy.
fn repeated_tail(tokens: &[u32]) -> Option<usize> {
    let n = tokens.len();
    for block in 1..=n / 2 {
        let copies = if block >= MIN_REPEATED_BLOCK {
            2
        } else {
            SHORT_BLOCK_REPEATS
        };
        if block * copies > n {
            continue;
        }
        let last = &tokens[n - block..];
        let repeated = (2..=copies).all(|c| &tokens[n - c * block..n - (c - 1) * block] == last);
        if repeated {
            return Some(block * (copies - 1));
        }
    }
    None
}

/// See [`repeated_tail`].
const MIN_REPEATED_BLOCK: usize = 6;
const SHORT_BLOCK_REPEATS: usize = 4;

fn invalid(path: &Path, message: String) -> ModelError {
    ModelError::Invalid {
        engine: ENGINE,
        path: path.to_owned(),
        message,
    }
}

fn argmax(values: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best
}

/// `log_softmax(values)[index]`, with `-inf` entries ignored.
fn log_softmax_at(values: &[f32], index: usize) -> f32 {
    let max = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = values.iter().map(|v| (v - max).exp()).sum();
    values.get(index).copied().unwrap_or(f32::NEG_INFINITY) - max - sum.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fitted_window_covers_the_audio_and_the_margin() {
        assert_eq!(EncoderWindow::Full.positions(16_000, 1500), 1500);
        // 1 s = 50 positions, plus 1 s of margin.
        let fit = EncoderWindow::Fit { margin_ms: 1000 };
        assert_eq!(fit.positions(16_000, 1500), 100);
        assert_eq!(fit.positions(16_001, 1500), 101);
        assert_eq!(fit.positions(40 * 16_000, 1500), 1500);
        assert_eq!(EncoderWindow::Fit { margin_ms: 0 }.positions(0, 1500), 1);
    }

    #[test]
    fn loops_are_cut_to_one_copy() {
        assert_eq!(repeated_tail(&[1, 2, 3]), None);
        // "no, no" is speech.
        assert_eq!(repeated_tail(&[7, 8, 7, 8]), None);
        assert_eq!(repeated_tail(&[9, 7, 7, 7, 7]), Some(3));
        let sentence = [1, 2, 3, 4, 5, 6];
        let twice: Vec<u32> = sentence.iter().chain(&sentence).copied().collect();
        assert_eq!(repeated_tail(&twice), Some(6));
        assert_eq!(repeated_tail(&twice[..11]), None);
    }

    #[test]
    fn log_softmax_and_argmax() {
        let v = [0.0f32, 1.0, f32::NEG_INFINITY, 1.0f32.ln()];
        assert_eq!(argmax(&v), 1);
        let total: f32 = (0..v.len()).map(|i| log_softmax_at(&v, i).exp()).sum();
        assert!((total - 1.0).abs() < 1e-6);
    }
}
