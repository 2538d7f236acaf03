//! Local speech synthesis: the Piper voice (a VITS model run by ONNX
//! Runtime, phonemes from espeak-ng) and espeak-ng's own voice as the
//! fallback when Piper cannot load; [`LocalSpeech`] serves either as the
//! [`SpeechSynthesizer`] port.
//!
//! The voice loads once per process and is shared by every session. It
//! runs on one dedicated worker thread, never on an actor thread; ONNX
//! Runtime spreads each inference over the cores. Requests are admitted up
//! to [`SpeechOptions::capacity`] at a time (queued or being spoken);
//! beyond that a request fails at once with [`ProviderError::Busy`], so
//! nothing grows without bound. The worker speaks one sentence at a time,
//! taking turns between the requests in flight so a long reply does not
//! hold up another session's first sentence, and sends each sentence's
//! audio as soon as it exists (a long first sentence goes in two pieces,
//! its first clause first, for a sooner first audio). Dropping a stream
//! cancels its request before its next sentence.
//!
//! This module owns sentence splitting, the Piper model's inputs and
//! outputs, and the worker; espeak-ng's command lines are in
//! [`crate::espeak`], the ONNX Runtime library in [`crate::onnx`].

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use palaver_actors::conversation::WordTiming;
use palaver_actors::ports::{BoxStream, ProviderError, SpeechSynthesizer, TtsAudio, TtsRequest};
use unicode_normalization::UnicodeNormalization;

use crate::espeak::{self, EspeakError};
use crate::models::{ModelError, ModelsDir};

/// The provider name in errors (`local speech is busy; …`).
const PROVIDER: &str = "local speech";

/// The engine name in load errors and `/readyz`.
const ENGINE: &str = "piper";

/// A sentence longer than this is cut at a clause (or word) boundary, so
/// the first audio never waits for a whole paragraph-long sentence.
const MAX_SENTENCE_CHARS: usize = 240;

/// A request's first sentence longer than this is spoken in two pieces,
/// cut at its first clause break: its first audio then waits for a clause
/// instead of the whole sentence (a 176-character sentence: 0.9 s to
/// 0.3 s here), at the cost of a slightly clipped pause at the cut.
const FIRST_PIECE_CHARS: usize = 60;

/// Neither side of that cut may be shorter than this.
const MIN_PIECE_CHARS: usize = 20;

/// Piper's peak normalisation, a little below full scale: headroom for the
/// session's resampler, whose ringing would clip a full-scale peak.
const PEAK: f32 = 0.9 * i16::MAX as f32;

/// How the local voice is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpeechOptions {
    /// Requests admitted at once (queued or being spoken); more fail with
    /// [`ProviderError::Busy`].
    pub capacity: usize,
    /// ONNX Runtime threads inside one Piper inference.
    pub threads: usize,
}

impl Default for SpeechOptions {
    fn default() -> Self {
        Self {
            capacity: 16,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get().min(4)),
        }
    }
}

/// Why one sentence could not be spoken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VoiceError {
    /// espeak-ng failed (phonemes for Piper, or the fallback voice).
    #[error(transparent)]
    Espeak(#[from] EspeakError),
    /// ONNX Runtime failed to run the Piper model.
    #[error("piper inference failed: {0}")]
    Inference(String),
}

impl From<VoiceError> for ProviderError {
    fn from(err: VoiceError) -> Self {
        ProviderError::Unavailable {
            provider: PROVIDER,
            message: err.to_string(),
        }
    }
}

// ---------------------------------------------------------------------------
// Sentences and clauses

/// `text` as the sentences to speak one by one: split after `.`, `!`, `?`
/// (not after a known abbreviation or an initial) and at line breaks; a
/// sentence over [`MAX_SENTENCE_CHARS`] is cut at its last clause
/// punctuation (else a space) before the limit. Pieces with nothing to
/// pronounce (`...`, `—`) are dropped.
pub fn split_sentences(text: &str) -> Vec<String> {
    let mut sentences = Vec::new();
    for line in text.lines() {
        let chars: Vec<(usize, char)> = line.char_indices().collect();
        let mut start = 0;
        let mut i = 0;
        while i < chars.len() {
            let (_, c) = chars[i];
            if matches!(c, '.' | '!' | '?' | '…') {
                let mut j = i + 1;
                while j < chars.len() && is_terminator_tail(chars[j].1) {
                    j += 1;
                }
                let at_break = j == chars.len() || chars[j].1.is_whitespace();
                let byte_end = chars.get(j).map_or(line.len(), |&(b, _)| b);
                if at_break && !(c == '.' && ends_with_abbreviation(&line[start..chars[i].0])) {
                    push_sentence(&mut sentences, &line[start..byte_end]);
                    start = byte_end;
                }
                i = j;
            } else {
                i += 1;
            }
        }
        push_sentence(&mut sentences, &line[start..]);
    }
    sentences
}

fn is_terminator_tail(c: char) -> bool {
    matches!(
        c,
        '.' | '!' | '?' | '…' | '"' | '\'' | '”' | '’' | ')' | ']' | '»'
    )
}

/// Whether the text before a full stop ends with an abbreviation (`Dr`,
/// `e.g`) or an initial (`J`), after which a `.` does not end a sentence.
fn ends_with_abbreviation(before: &str) -> bool {
    const ABBREVIATIONS: &[&str] = &[
        "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "mt", "vs", "e.g", "i.e", "approx",
        "inc", "ltd", "fig",
    ];
    let Some(word) = before.split_whitespace().next_back() else {
        return false;
    };
    let word = word.trim_start_matches(|c: char| !c.is_alphanumeric());
    let mut letters = word.chars();
    if let (Some(first), None) = (letters.next(), letters.next()) {
        return first.is_uppercase();
    }
    ABBREVIATIONS.contains(&word.to_lowercase().as_str())
}

fn push_sentence(sentences: &mut Vec<String>, piece: &str) {
    let mut rest = piece.trim();
    while rest.chars().count() > MAX_SENTENCE_CHARS {
        let cut = long_sentence_cut(rest);
        push_pronounceable(sentences, &rest[..cut]);
        rest = rest[cut..].trim_start();
    }
    push_pronounceable(sentences, rest);
}

fn push_pronounceable(sentences: &mut Vec<String>, piece: &str) {
    let piece = piece.trim();
    if piece.chars().any(char::is_alphanumeric) {
        sentences.push(piece.to_owned());
    }
}

/// Where to cut a too-long sentence: after the last clause punctuation in
/// its first [`MAX_SENTENCE_CHARS`] (if not too near the start), else at
/// the last space, else at the limit.
fn long_sentence_cut(sentence: &str) -> usize {
    let limit = sentence
        .char_indices()
        .nth(MAX_SENTENCE_CHARS)
        .map_or(sentence.len(), |(b, _)| b);
    let head = &sentence[..limit];
    let clause = head
        .char_indices()
        .filter(|&(b, c)| {
            matches!(c, ',' | ';' | ':' | '—')
                && head[b + c.len_utf8()..].starts_with(char::is_whitespace)
        })
        .map(|(b, c)| b + c.len_utf8())
        .next_back()
        .filter(|&b| b >= limit / 3);
    clause
        .or_else(|| head.rfind(char::is_whitespace).filter(|&b| b > 0))
        .unwrap_or(limit)
}

/// Cuts `sentences[0]` after its first clause break (`,` `;` `:` then a
/// space) when it is over [`FIRST_PIECE_CHARS`] and both pieces keep
/// [`MIN_PIECE_CHARS`].
fn split_first_clause(sentences: &mut VecDeque<String>) {
    let Some(first) = sentences.front() else {
        return;
    };
    let chars = first.chars().count();
    if chars <= FIRST_PIECE_CHARS {
        return;
    }
    let cut = first
        .char_indices()
        .enumerate()
        .filter(|&(n, (b, c))| {
            // Characters up to and including the break, and after it.
            let (head, rest) = (n + 1, chars - (n + 1));
            matches!(c, ',' | ';' | ':')
                && head >= MIN_PIECE_CHARS
                && rest >= MIN_PIECE_CHARS
                && first[b + c.len_utf8()..].starts_with(char::is_whitespace)
        })
        .map(|(_, (b, c))| b + c.len_utf8())
        .next();
    if let Some(cut) = cut {
        let rest = first[cut..].trim_start().to_owned();
        let head = first[..cut].to_owned();
        sentences[0] = head;
        sentences.insert(1, rest);
    }
}

/// The punctuation that ends each clause of `sentence`, as espeak-ng splits
/// clauses: `, ; : . ! ?` (`…` as `.`) followed by a space or the end.
fn clause_terminators(sentence: &str) -> Vec<char> {
    let chars: Vec<char> = sentence.chars().collect();
    let mut terminators = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if matches!(c, ',' | ';' | ':' | '.' | '!' | '?' | '…') {
            let mut j = i + 1;
            while j < chars.len() && is_terminator_tail(chars[j]) {
                j += 1;
            }
            if j == chars.len() || chars[j].is_whitespace() {
                terminators.push(if c == '…' { '.' } else { c });
            }
            i = j;
        } else {
            i += 1;
        }
    }
    terminators
}

/// The phoneme text Piper was trained on: espeak-ng's clauses, each
/// followed by its punctuation (commas and the like then a space), as
/// piper-phonemize writes them. espeak-ng's command line drops the
/// punctuation, so it is taken back from the text when the clause counts
/// agree; when they do not (espeak-ng split a long clause itself), the
/// clauses are joined by spaces and only the final punctuation is kept.
fn piper_phoneme_text(sentence: &str, clauses: &[String]) -> String {
    let mut terminators: Vec<Option<char>> =
        clause_terminators(sentence).into_iter().map(Some).collect();
    let ends_with_terminator = sentence
        .trim_end()
        .trim_end_matches(is_closing)
        .ends_with([',', ';', ':', '.', '!', '?', '…']);
    if !ends_with_terminator {
        terminators.push(None);
    }
    if terminators.len() != clauses.len() {
        let last = sentence
            .trim_end_matches(is_closing)
            .chars()
            .next_back()
            .filter(|c| matches!(c, '.' | '!' | '?'));
        terminators = vec![None; clauses.len()];
        if let Some(slot) = terminators.last_mut() {
            *slot = last;
        }
    }
    let mut text = String::new();
    for (i, (clause, terminator)) in clauses.iter().zip(&terminators).enumerate() {
        text.push_str(clause);
        if let Some(t) = terminator {
            text.push(*t);
        }
        if i + 1 < clauses.len() {
            text.push(' ');
        }
    }
    text
}

fn is_closing(c: char) -> bool {
    matches!(c, '"' | '\'' | '”' | '’' | ')' | ']' | '»')
}

/// Estimated word end times for `duration_ms` of speech of `sentence`:
/// the time is shared out by each word's phonemes when espeak-ng's words
/// line up with the text's (else by its letters), with a short pause after
/// clause punctuation. Estimates, but per sentence, so a barge-in's
/// `heard_text` is right to the sentence and close within it.
fn estimate_word_ends(sentence: &str, clauses: &[String], duration_ms: u32) -> Vec<WordTiming> {
    const PAUSE_WEIGHT: u64 = 3;
    let words: Vec<&str> = sentence.split_whitespace().collect();
    let phoneme_words: Vec<&str> = clauses.iter().flat_map(|c| c.split_whitespace()).collect();
    let weights: Vec<u64> = if phoneme_words.len() == words.len() {
        phoneme_words
            .iter()
            .map(|p| p.chars().filter(|c| !matches!(c, 'ˈ' | 'ˌ')).count().max(1) as u64)
            .collect()
    } else {
        words
            .iter()
            .map(|w| w.chars().filter(|c| c.is_alphanumeric()).count().max(1) as u64)
            .collect()
    };
    let pauses: Vec<u64> = words
        .iter()
        .map(|w| {
            let w = w.trim_end_matches(is_closing);
            if w.ends_with([',', ';', ':', '.', '!', '?', '…']) {
                PAUSE_WEIGHT
            } else {
                0
            }
        })
        .collect();
    let total: u64 = weights.iter().sum::<u64>() + pauses.iter().sum::<u64>();
    let mut elapsed = 0u64;
    words
        .iter()
        .zip(weights.iter().zip(&pauses))
        .map(|(word, (weight, pause))| {
            elapsed += weight;
            let end_ms = (elapsed * u64::from(duration_ms))
                .checked_div(total)
                .unwrap_or(0);
            elapsed += pause;
            WordTiming {
                word: (*word).to_owned(),
                end_ms: end_ms as u32,
            }
        })
        .collect()
}

/// `settings.speed` (1.0 normal), within what both voices can do.
fn speed_of(settings: &serde_json::Value) -> f32 {
    settings
        .get("speed")
        .and_then(serde_json::Value::as_f64)
        .filter(|s| s.is_finite() && *s > 0.0)
        .map_or(1.0, |s| s.clamp(0.5, 2.0) as f32)
}

// ---------------------------------------------------------------------------
// The Piper voice

/// The parts of a Piper voice's `.onnx.json` this module uses.
#[derive(Debug, serde::Deserialize)]
struct PiperJson {
    audio: PiperAudio,
    espeak: PiperEspeak,
    #[serde(default)]
    inference: PiperInference,
    phoneme_type: Option<String>,
    phoneme_id_map: HashMap<String, Vec<i64>>,
}

#[derive(Debug, serde::Deserialize)]
struct PiperAudio {
    sample_rate: u32,
}

#[derive(Debug, serde::Deserialize)]
struct PiperEspeak {
    voice: String,
}

#[derive(Debug, Clone, Copy, serde::Deserialize)]
#[serde(default)]
struct PiperInference {
    noise_scale: f32,
    length_scale: f32,
    noise_w: f32,
}

impl Default for PiperInference {
    fn default() -> Self {
        Self {
            noise_scale: 0.667,
            length_scale: 1.0,
            noise_w: 0.8,
        }
    }
}

/// A Piper voice's phoneme table and settings, from its `.onnx.json`.
#[derive(Debug, Clone)]
struct PiperConfig {
    sample_rate: u32,
    espeak_voice: String,
    scales: PiperInference,
    ids: HashMap<char, Vec<i64>>,
    bos: Vec<i64>,
    eos: Vec<i64>,
    pad: Vec<i64>,
}

impl PiperConfig {
    fn parse(json: &str) -> Result<Self, String> {
        let json: PiperJson = serde_json::from_str(json).map_err(|err| err.to_string())?;
        if let Some(kind) = json.phoneme_type.as_deref()
            && kind != "espeak"
        {
            return Err(format!(
                "phoneme_type `{kind}` is not supported (only `espeak`)"
            ));
        }
        let ids: HashMap<char, Vec<i64>> = json
            .phoneme_id_map
            .into_iter()
            .filter_map(|(key, ids)| {
                let mut chars = key.chars();
                match (chars.next(), chars.next()) {
                    (Some(c), None) => Some((c, ids)),
                    _ => None,
                }
            })
            .collect();
        let special = |c: char| {
            ids.get(&c)
                .cloned()
                .ok_or_else(|| format!("phoneme_id_map has no `{c}`"))
        };
        Ok(Self {
            sample_rate: json.audio.sample_rate,
            espeak_voice: json.espeak.voice,
            scales: json.inference,
            bos: special('^')?,
            eos: special('$')?,
            pad: special('_')?,
            ids,
        })
    }

    /// The model's input for `phonemes`: `^`, each phoneme (NFD, as Piper
    /// was trained) followed by the pad `_`, then `$`. Phonemes the voice
    /// does not know are skipped, as Piper does.
    fn phoneme_ids(&self, phonemes: &str) -> Vec<i64> {
        let mut out = Vec::with_capacity(phonemes.len() * 2 + 4);
        out.extend_from_slice(&self.bos);
        out.extend_from_slice(&self.pad);
        for c in phonemes.nfd() {
            if let Some(ids) = self.ids.get(&c) {
                out.extend_from_slice(ids);
                out.extend_from_slice(&self.pad);
            }
        }
        out.extend_from_slice(&self.eos);
        out
    }
}

/// The Piper voice: its ONNX session and phoneme table.
pub struct PiperVoice {
    name: String,
    session: ort::session::Session,
    config: PiperConfig,
    /// Multi-speaker models take a speaker id (we always use speaker 0).
    takes_speaker: bool,
}

impl std::fmt::Debug for PiperVoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PiperVoice")
            .field("name", &self.name)
            .field("sample_rate", &self.config.sample_rate)
            .finish_non_exhaustive()
    }
}

impl PiperVoice {
    /// Loads `models/piper-joe` with the default thread count.
    pub fn load(models: &ModelsDir) -> Result<Self, ModelError> {
        Self::load_with_threads(models, SpeechOptions::default().threads)
    }

    /// Loads the voice, its `.onnx.json`, ONNX Runtime, and checks that
    /// espeak-ng (its phonemizer) runs with the voice's language.
    pub fn load_with_threads(models: &ModelsDir, threads: usize) -> Result<Self, ModelError> {
        let model = ModelsDir::require(ENGINE, models.piper_voice())?;
        let json_path = PathBuf::from(format!("{}.json", model.display()));
        let json_path = ModelsDir::require(ENGINE, json_path)?;
        let json = std::fs::read_to_string(&json_path).map_err(|err| ModelError::Invalid {
            engine: ENGINE,
            path: json_path.clone(),
            message: err.to_string(),
        })?;
        let config = PiperConfig::parse(&json).map_err(|message| ModelError::Invalid {
            engine: ENGINE,
            path: json_path.clone(),
            message,
        })?;
        espeak::check(&config.espeak_voice).map_err(|err| ModelError::Program {
            engine: ENGINE,
            program: espeak::PROGRAM,
            message: err.to_string(),
        })?;
        let environment = crate::onnx::environment(models)?;
        let session = crate::onnx::cpu_session(&environment, ENGINE, &model, threads)?;
        let takes_speaker = session.inputs().iter().any(|input| input.name() == "sid");
        Ok(Self {
            name: voice_name(&model),
            session,
            config,
            takes_speaker,
        })
    }

    /// E.g. `en_US-joe-medium`.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn sample_rate(&self) -> u32 {
        self.config.sample_rate
    }

    /// Speaks one sentence. `speed` 1.0 is the voice's own pace.
    pub fn speak(&mut self, sentence: &str, speed: f32) -> Result<TtsAudio, VoiceError> {
        let clauses = espeak::phonemize(&self.config.espeak_voice, sentence)?;
        if clauses.is_empty() {
            return Ok(self.audio(Vec::new(), Vec::new()));
        }
        let ids = self
            .config
            .phoneme_ids(&piper_phoneme_text(sentence, &clauses));
        let samples = self.infer(ids, speed)?;
        let duration_ms = (samples.len() as u64 * 1000 / u64::from(self.sample_rate())) as u32;
        let words = estimate_word_ends(sentence, &clauses, duration_ms);
        Ok(self.audio(samples, words))
    }

    fn audio(&self, samples: Vec<i16>, words: Vec<WordTiming>) -> TtsAudio {
        TtsAudio {
            samples,
            sample_rate: self.sample_rate(),
            words: Some(words),
        }
    }

    fn infer(&mut self, ids: Vec<i64>, speed: f32) -> Result<Vec<i16>, VoiceError> {
        use ort::value::Tensor;
        let failed = |err: ort::Error| VoiceError::Inference(err.to_string());
        let n = ids.len();
        let scales = self.config.scales;
        let mut inputs = ort::inputs![
            "input" => Tensor::from_array(([1usize, n], ids)).map_err(failed)?,
            "input_lengths" => Tensor::from_array(([1usize], vec![n as i64])).map_err(failed)?,
            "scales" => Tensor::from_array((
                [3usize],
                vec![scales.noise_scale, scales.length_scale / speed, scales.noise_w],
            ))
            .map_err(failed)?,
        ];
        if self.takes_speaker {
            inputs.push((
                "sid".into(),
                Tensor::from_array(([1usize], vec![0i64]))
                    .map_err(failed)?
                    .into(),
            ));
        }
        let outputs = self.session.run(inputs).map_err(failed)?;
        let (_, audio) = outputs[0].try_extract_tensor::<f32>().map_err(failed)?;
        Ok(to_pcm16(audio))
    }
}

fn voice_name(model: &Path) -> String {
    model
        .file_stem()
        .and_then(|stem| stem.to_str())
        .unwrap_or("piper")
        .to_owned()
}

/// Piper's float audio as PCM16, peak-normalised as Piper does (with
/// headroom, see [`PEAK`]); near-silence is not blown up.
fn to_pcm16(audio: &[f32]) -> Vec<i16> {
    let peak = audio.iter().fold(
        0.0f32,
        |max, s| if s.is_finite() { max.max(s.abs()) } else { max },
    );
    let gain = PEAK / peak.max(0.01);
    audio
        .iter()
        .map(|s| {
            let s = if s.is_finite() { *s } else { 0.0 };
            (s * gain)
                .round()
                .clamp(f32::from(i16::MIN), f32::from(i16::MAX)) as i16
        })
        .collect()
}

// ---------------------------------------------------------------------------
// The fallback voice

/// espeak-ng's own (formant) voice: robotic, but needs no model files.
#[derive(Debug, Clone)]
pub struct EspeakVoice {
    voice: String,
}

impl EspeakVoice {
    /// The `en-us` voice, if espeak-ng runs.
    pub fn load() -> Result<Self, ModelError> {
        let voice = "en-us".to_owned();
        espeak::check(&voice).map_err(|err| ModelError::Program {
            engine: "espeak-ng",
            program: espeak::PROGRAM,
            message: err.to_string(),
        })?;
        Ok(Self { voice })
    }

    pub fn speak(&mut self, sentence: &str, speed: f32) -> Result<TtsAudio, VoiceError> {
        let (samples, sample_rate) = espeak::synthesize(&self.voice, sentence, speed)?;
        let duration_ms = (samples.len() as u64 * 1000 / u64::from(sample_rate.max(1))) as u32;
        Ok(TtsAudio {
            words: Some(estimate_word_ends(sentence, &[], duration_ms)),
            samples,
            sample_rate,
        })
    }
}

/// The voice a [`LocalSpeech`] speaks with.
#[derive(Debug)]
#[non_exhaustive]
pub enum LocalVoice {
    Piper(Box<PiperVoice>),
    Espeak(EspeakVoice),
}

impl LocalVoice {
    fn speak(&mut self, sentence: &str, speed: f32) -> Result<TtsAudio, VoiceError> {
        match self {
            LocalVoice::Piper(voice) => voice.speak(sentence, speed),
            LocalVoice::Espeak(voice) => voice.speak(sentence, speed),
        }
    }

    fn describe(&self) -> String {
        match self {
            LocalVoice::Piper(voice) => format!("piper {}", voice.name()),
            LocalVoice::Espeak(voice) => format!("espeak-ng {}", voice.voice),
        }
    }
}

// ---------------------------------------------------------------------------
// The port

/// One admitted request; dropping it frees its place.
struct Permit(Arc<AtomicUsize>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A request on the worker: the sentences still to speak and where their
/// audio goes.
struct Job {
    sentences: VecDeque<String>,
    speed: f32,
    /// Holds one slot per sentence, so the worker never waits on it.
    reply: tokio::sync::mpsc::Sender<Result<TtsAudio, ProviderError>>,
    _permit: Permit,
}

/// The local voice as a [`SpeechSynthesizer`]: one per process, shared by
/// every session (cheap to share behind an `Arc`).
pub struct LocalSpeech {
    jobs: mpsc::Sender<Job>,
    admitted: Arc<AtomicUsize>,
    capacity: usize,
    sentences_spoken: Arc<AtomicU64>,
    voice: String,
    fallback_reason: Option<String>,
}

impl std::fmt::Debug for LocalSpeech {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalSpeech")
            .field("voice", &self.voice)
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl LocalSpeech {
    /// The Piper voice from `models`, or espeak-ng's voice when Piper
    /// cannot load (the reason is kept for [`LocalSpeech::status`] and
    /// logged). Fails only when neither can speak.
    pub fn load(models: &ModelsDir, options: SpeechOptions) -> Result<Self, SpeechLoadError> {
        match PiperVoice::load_with_threads(models, options.threads) {
            Ok(voice) => Ok(Self::start(LocalVoice::Piper(Box::new(voice)), options)),
            Err(piper) => {
                let voice = match EspeakVoice::load() {
                    Ok(voice) => voice,
                    Err(espeak) => {
                        tracing::warn!(%piper, %espeak, "no local voice");
                        return Err(SpeechLoadError {
                            piper: Box::new(piper),
                            espeak: Box::new(espeak),
                        });
                    }
                };
                tracing::warn!(%piper, "the Piper voice did not load; speaking with espeak-ng");
                let mut speech = Self::start(LocalVoice::Espeak(voice), options);
                speech.fallback_reason = Some(piper.to_string());
                Ok(speech)
            }
        }
    }

    /// Serves `voice` on a new worker thread.
    pub fn start(voice: LocalVoice, options: SpeechOptions) -> Self {
        // Unbounded as a type, bounded by admission: at most `capacity`
        // jobs exist at once (a job holds its permit until it is done).
        let (jobs, queue) = mpsc::channel();
        let sentences_spoken = Arc::new(AtomicU64::new(0));
        let description = voice.describe();
        let spoken = sentences_spoken.clone();
        let worker = std::thread::Builder::new()
            .name("palaver-tts".into())
            .spawn(move || run_worker(voice, queue, spoken));
        if let Err(err) = worker {
            // Without a thread the receiver is gone, so every request
            // answers "stopped" instead of hanging.
            tracing::error!(%err, "cannot start the local speech worker");
        }
        Self {
            jobs,
            admitted: Arc::new(AtomicUsize::new(0)),
            capacity: options.capacity.max(1),
            sentences_spoken,
            voice: description,
            fallback_reason: None,
        }
    }

    /// What `/readyz` says: the voice, and why it is the fallback if so.
    pub fn status(&self) -> String {
        match &self.fallback_reason {
            None => format!("ready: {}", self.voice),
            Some(reason) => format!("fallback: {} (piper did not load: {reason})", self.voice),
        }
    }

    /// The voice speaking, e.g. `piper en_US-joe-medium`.
    pub fn voice(&self) -> &str {
        &self.voice
    }

    /// Whether this is espeak-ng standing in for Piper.
    pub fn is_fallback(&self) -> bool {
        self.fallback_reason.is_some()
    }

    /// Requests admitted and not yet finished or dropped.
    pub fn in_flight(&self) -> usize {
        self.admitted.load(Ordering::Acquire)
    }

    /// Sentences spoken since start (for tests and metrics).
    pub fn sentences_spoken(&self) -> u64 {
        self.sentences_spoken.load(Ordering::Acquire)
    }

    fn admit(&self) -> Option<Permit> {
        self.admitted
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.capacity).then_some(n + 1)
            })
            .ok()
            .map(|_| Permit(self.admitted.clone()))
    }
}

/// Neither voice can speak: Piper's reason (what to fetch) first.
#[derive(Debug, thiserror::Error)]
#[error("{piper}; the espeak-ng fallback cannot run either: {espeak}")]
pub struct SpeechLoadError {
    pub piper: Box<ModelError>,
    pub espeak: Box<ModelError>,
}

impl SpeechSynthesizer for LocalSpeech {
    /// `request.settings.speed` (0.5 to 2.0) sets the pace; `voice_id` is
    /// ignored (one voice per process).
    fn synthesize(&self, request: TtsRequest) -> BoxStream<Result<TtsAudio, ProviderError>> {
        let mut sentences: VecDeque<String> = split_sentences(&request.text).into();
        split_first_clause(&mut sentences);
        if sentences.is_empty() {
            return Box::pin(futures_util::stream::empty());
        }
        let Some(permit) = self.admit() else {
            return Box::pin(futures_util::stream::iter([Err(ProviderError::Busy {
                provider: PROVIDER,
            })]));
        };
        let (reply, mut audio) = tokio::sync::mpsc::channel(sentences.len());
        let job = Job {
            sentences,
            speed: speed_of(&request.settings),
            reply,
            _permit: permit,
        };
        if self.jobs.send(job).is_err() {
            return Box::pin(futures_util::stream::iter([Err(
                ProviderError::Unavailable {
                    provider: PROVIDER,
                    message: "the speech worker has stopped".into(),
                },
            )]));
        }
        Box::pin(futures_util::stream::poll_fn(move |cx| audio.poll_recv(cx)))
    }
}

/// The worker: takes turns between the admitted requests, one sentence
/// each, until every [`LocalSpeech`] handle is gone.
fn run_worker(mut voice: LocalVoice, queue: mpsc::Receiver<Job>, spoken: Arc<AtomicU64>) {
    // The first inference allocates ONNX Runtime's buffers (several times
    // slower than later ones): pay that now, not in a caller's first reply.
    if let Err(err) = voice.speak("Hello.", 1.0) {
        tracing::warn!(%err, "local speech: the warm-up sentence failed");
    }
    let mut active: VecDeque<Job> = VecDeque::new();
    loop {
        if active.is_empty() {
            match queue.recv() {
                Ok(job) => active.push_back(job),
                Err(_) => return,
            }
        }
        active.extend(queue.try_iter());
        let Some(mut job) = active.pop_front() else {
            continue;
        };
        // A dropped stream: stop before its next sentence (dropping the
        // job frees its place).
        if job.reply.is_closed() {
            continue;
        }
        let Some(sentence) = job.sentences.pop_front() else {
            continue;
        };
        let started = Instant::now();
        let result = voice.speak(&sentence, job.speed);
        spoken.fetch_add(1, Ordering::AcqRel);
        if let Ok(audio) = &result {
            let compute_ms = started.elapsed().as_secs_f64() * 1000.0;
            tracing::debug!(
                chars = sentence.len(),
                audio_ms = audio.duration_ms(),
                compute_ms,
                "local speech: sentence spoken"
            );
        }
        let failed = result.is_err();
        let result = result.map_err(ProviderError::from);
        // The channel has a slot per sentence, so this only fails if the
        // stream was dropped meanwhile.
        if job.reply.try_send(result).is_ok() && !failed && !job.sentences.is_empty() {
            active.push_back(job);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentences_split_at_full_stops_but_not_after_abbreviations() {
        assert_eq!(
            split_sentences("Hello there. Dr. Smith paid $12.50! Is J. R. R. Tolkien here? Yes."),
            vec![
                "Hello there.",
                "Dr. Smith paid $12.50!",
                "Is J. R. R. Tolkien here?",
                "Yes."
            ]
        );
        assert_eq!(
            split_sentences("\"Stop!\" she said.\nNext line\n\n... —"),
            vec!["\"Stop!\"", "she said.", "Next line"]
        );
        assert!(split_sentences("  ").is_empty());
    }

    #[test]
    fn a_long_sentence_is_cut_at_a_clause_then_a_space() {
        let clause = "word ".repeat(30); // 150 chars
        let text = format!("{}, {}and the end.", clause.trim_end(), clause);
        let sentences = split_sentences(&text);
        assert_eq!(sentences.len(), 2, "{sentences:?}");
        assert!(sentences[0].ends_with(','), "{sentences:?}");
        let long = "abc ".repeat(200);
        let pieces = split_sentences(&long);
        assert!(
            pieces
                .iter()
                .all(|p| p.chars().count() <= MAX_SENTENCE_CHARS)
        );
        assert_eq!(pieces.concat().replace(' ', ""), long.replace(' ', ""));
        let unbroken = "x".repeat(600);
        assert_eq!(split_sentences(&unbroken).concat(), unbroken);
    }

    #[test]
    fn a_long_first_sentence_is_cut_at_its_first_clause() {
        let cut = |text: &str| {
            let mut sentences: VecDeque<String> = split_sentences(text).into();
            split_first_clause(&mut sentences);
            Vec::from(sentences)
        };
        assert_eq!(
            cut("Your appointment is booked for Tuesday, and you will get a reminder. Bye."),
            vec![
                "Your appointment is booked for Tuesday,",
                "and you will get a reminder.",
                "Bye."
            ]
        );
        // Short enough, or no clause break far enough from both ends.
        assert_eq!(cut("Yes, it is booked."), vec!["Yes, it is booked."]);
        let late = "Your appointment is booked for Tuesday at three in the afternoon, okay?";
        assert_eq!(cut(late), vec![late]);
        let early = "Yes, your appointment is booked for Tuesday at three o'clock.";
        assert_eq!(cut(early), vec![early]);
        assert!(cut("").is_empty());
    }

    #[test]
    fn clause_punctuation_is_put_back_between_espeak_clauses() {
        let clauses = vec!["wˈɛl".to_owned(), "aɪ θˈɪŋk sˈoʊ".to_owned()];
        assert_eq!(
            piper_phoneme_text("Well, I think so.", &clauses),
            "wˈɛl, aɪ θˈɪŋk sˈoʊ."
        );
        assert_eq!(
            piper_phoneme_text("Well, I think so", &clauses),
            "wˈɛl, aɪ θˈɪŋk sˈoʊ"
        );
        // espeak-ng split where the text has no punctuation: keep the end.
        assert_eq!(
            piper_phoneme_text("Well I think so?", &clauses),
            "wˈɛl aɪ θˈɪŋk sˈoʊ?"
        );
        assert_eq!(clause_terminators("a… b, c $1.50 d?!"), vec!['.', ',', '?']);
    }

    fn config() -> PiperConfig {
        PiperConfig::parse(
            r#"{"audio": {"sample_rate": 22050}, "espeak": {"voice": "en-us"},
                "phoneme_type": "espeak",
                "phoneme_id_map": {"_": [0], "^": [1], "$": [2], " ": [3], "c": [20],
                                   "\u0327": [140], "a": [14], "ab": [99]}}"#,
        )
        .expect("parses")
    }

    #[test]
    fn phoneme_ids_are_bracketed_padded_and_nfd() {
        let config = config();
        assert_eq!(config.scales.noise_scale, 0.667);
        // `ç` decomposes to c + combining cedilla; `?` is unknown: skipped.
        assert_eq!(
            config.phoneme_ids("a ç?"),
            vec![1, 0, 14, 0, 3, 0, 20, 0, 140, 0, 2]
        );
    }

    #[test]
    fn a_config_without_the_special_phonemes_or_of_another_type_is_rejected() {
        let missing = r#"{"audio": {"sample_rate": 1}, "espeak": {"voice": "x"},
                          "phoneme_id_map": {"_": [0]}}"#;
        assert!(
            PiperConfig::parse(missing)
                .expect_err("no ^")
                .contains("`^`")
        );
        let text = r#"{"audio": {"sample_rate": 1}, "espeak": {"voice": "x"},
                       "phoneme_type": "text", "phoneme_id_map": {}}"#;
        assert!(PiperConfig::parse(text).is_err());
    }

    #[test]
    fn word_ends_grow_and_finish_by_the_end() {
        let clauses = vec!["wˈɛl".to_owned(), "aɪ θˈɪŋk sˈoʊ".to_owned()];
        let words = estimate_word_ends("Well, I think so.", &clauses, 1000);
        let ends: Vec<u32> = words.iter().map(|w| w.end_ms).collect();
        assert_eq!(
            words.iter().map(|w| w.word.as_str()).collect::<Vec<_>>(),
            vec!["Well,", "I", "think", "so."]
        );
        assert!(ends.windows(2).all(|w| w[0] < w[1]), "{ends:?}");
        assert!(*ends.last().expect("words") < 1000, "{ends:?}");
        // espeak-ng read `$12.50` as several words: fall back to letters.
        let words = estimate_word_ends("It is $12.50", &clauses, 600);
        assert_eq!(words.len(), 3);
        assert_eq!(words[2].end_ms, 600);
    }

    #[test]
    fn speed_comes_from_the_settings_within_bounds() {
        assert_eq!(speed_of(&serde_json::json!({})), 1.0);
        assert_eq!(speed_of(&serde_json::json!({"speed": 1.5})), 1.5);
        assert_eq!(speed_of(&serde_json::json!({"speed": 9})), 2.0);
        assert_eq!(speed_of(&serde_json::json!({"speed": -1})), 1.0);
        assert_eq!(speed_of(&serde_json::json!({"speed": "fast"})), 1.0);
    }

    #[test]
    fn pcm_is_peak_normalised_and_silence_is_not_amplified() {
        let pcm = to_pcm16(&[0.0, 0.5, -0.25, f32::NAN]);
        assert_eq!(
            pcm,
            vec![0, PEAK.round() as i16, -(PEAK / 2.0).round() as i16, 0]
        );
        let quiet = to_pcm16(&[0.001]);
        assert!(quiet[0] < 3500, "{quiet:?}");
    }
}
