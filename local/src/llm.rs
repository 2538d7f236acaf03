//! The embedded language model: SmolLM2-135M-Instruct (GGUF, Q4_1) behind
//! the actors' [`LanguageModel`] port.
//!
//! Layout:
//! - [`LlmEngine`]: the model ([`crate::llama`]), its tokenizer
//!   ([`crate::bpe`]), the ChatML prompt, sampling and the system-prompt
//!   cache. It is synchronous: one request at a time, deltas to a callback.
//! - [`LocalLlm`]: what sessions hold (cheap to clone). It owns one worker
//!   thread that runs the engine off the actor threads and a bounded queue in
//!   front of it: a request that finds the queue full is answered
//!   [`ProviderError::Busy`] at once, so load never grows memory or latency
//!   without bound. Dropping a reply stream cancels it: the worker checks
//!   between tokens (and between prefill chunks) and moves on to the next
//!   request.
//!
//! The model loads once per process; every session shares it. The worker
//! stops when the last clone of its [`LocalLlm`] is dropped.
//!
//! Threads: candle's quantized kernels run on a process-wide spinning pool
//! sized by `CANDLE_NUM_THREADS` (else `RAYON_NUM_THREADS`, else the physical
//! cores). On a small machine shared with other work (speech engines, the
//! server itself), set `CANDLE_NUM_THREADS=1`: with two threads on a busy
//! two-core box every one of the ~600 kernel calls per token waits for a
//! descheduled helper, and decoding falls from ~30 to under 5 tokens/s.

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_core::Stream;
use palaver_actors::conversation::{ChatMessage, ChatRole};
use palaver_actors::ports::{BoxStream, LanguageModel, LlmRequest, ProviderError};

use crate::bpe::BpeTokenizer;
use crate::llama::{KvCache, Llama, LlamaConfig};
use crate::models::{ModelError, ModelsDir};

/// The provider name in errors and logs.
const PROVIDER: &str = "local";
/// The engine name in [`ModelError`]s.
const ENGINE: &str = "language model";

/// The system prompt SmolLM2's chat template adds when there is none.
const DEFAULT_SYSTEM_PROMPT: &str =
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face";

/// Prompt positions run through the model per step: bounds the prefill's
/// scratch memory and how long a dropped stream's prefill keeps running.
const PREFILL_CHUNK: usize = 256;

/// Deltas buffered between the worker and a reply stream's reader.
const DELTA_BUFFER: usize = 64;

/// How many token sequences (system prompts, whole conversations) keep
/// their keys and values.
const PREFIX_CACHE_ENTRIES: usize = 8;

/// Tuning for the local language model; [`Default`] is what the server runs.
#[derive(Debug, Clone, PartialEq)]
pub struct LlmOptions {
    /// Requests that may wait while one runs; the next is answered `Busy`.
    pub queue_depth: usize,
    /// Prompt plus reply tokens per request, at most the model's own context
    /// length. Oldest turns are dropped (the system prompt stays) to fit.
    pub max_context_tokens: usize,
    /// Keep keys and values between requests: each system prompt's, and
    /// each finished reply's whole sequence (prompt and reply), so a session's
    /// next turn only runs what is new since its last one.
    pub cache_prompts: bool,
    /// Positions the prompt cache may hold in all (~46 KB each for SmolLM2);
    /// least recently used sequences go first.
    pub prompt_cache_tokens: usize,
    /// Dividing the logits of recently seen tokens; SmolLM2 loops without it.
    pub repeat_penalty: f32,
    /// How many recent tokens (prompt and reply) the penalty covers.
    pub repeat_last_n: usize,
    /// Sampling (temperature > 0) keeps the `top_k` likeliest tokens, then
    /// the smallest set of them whose probability reaches `top_p`.
    pub top_k: usize,
    pub top_p: f32,
    /// Seed for sampling; `None` seeds from the clock.
    pub seed: Option<u64>,
    /// Convert the file's Q4_1 matrices to Q8_0 at load: candle has SIMD
    /// kernels for Q8_0 only, so this is much faster for ~50 MB more memory.
    pub requantize_q8_0: bool,
}

impl Default for LlmOptions {
    fn default() -> Self {
        Self {
            queue_depth: 4,
            max_context_tokens: 2048,
            cache_prompts: true,
            prompt_cache_tokens: 4096,
            repeat_penalty: 1.1,
            repeat_last_n: 64,
            top_k: 40,
            top_p: 0.95,
            seed: None,
            requantize_q8_0: true,
        }
    }
}

/// Inference failed inside the engine (a tensor operation); the message is
/// for the log.
#[derive(Debug, thiserror::Error)]
#[error("local language model failed: {0}")]
pub struct InferenceError(String);

impl From<candle_core::Error> for InferenceError {
    fn from(err: candle_core::Error) -> Self {
        Self(err.to_string())
    }
}

/// Why a reply ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StopReason {
    /// The model ended its turn (`<|im_end|>` or another special token).
    EndOfTurn,
    /// `max_tokens` were generated.
    MaxTokens,
    /// The context length was reached.
    ContextFull,
    /// The consumer stopped listening (the stream was dropped).
    Cancelled,
}

/// What one [`LlmEngine::generate`] did, for logs and benchmarks.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationStats {
    /// Tokens in the prompt, after trimming.
    pub prompt_tokens: usize,
    /// Of those, how many came from the system-prompt cache.
    pub cached_prompt_tokens: usize,
    /// Turns dropped (oldest first) to fit the context.
    pub dropped_turns: usize,
    /// Tokens generated, the stop token excluded.
    pub generated_tokens: usize,
    /// From the call to the first token sampled (prefill).
    pub time_to_first_token: Duration,
    /// From the first token sampled to the end.
    pub decode_time: Duration,
    pub stop: StopReason,
}

impl GenerationStats {
    /// Tokens per second after the first one.
    pub fn tokens_per_second(&self) -> f64 {
        let secs = self.decode_time.as_secs_f64();
        if self.generated_tokens < 2 || secs <= 0.0 {
            return 0.0;
        }
        (self.generated_tokens - 1) as f64 / secs
    }
}

/// The model, its tokenizer and the sampling loop: one request at a time on
/// the calling thread. [`LocalLlm`] runs one on a worker thread.
#[derive(Debug)]
pub struct LlmEngine {
    model: Llama,
    tokenizer: BpeTokenizer,
    options: LlmOptions,
    /// Keys and values of recent token sequences (the tokens they hold),
    /// most recently used last.
    prefixes: VecDeque<(Vec<u32>, KvCache)>,
    /// Special tokens of the ChatML template.
    im_start: u32,
    im_end: u32,
    requests: u64,
}

impl LlmEngine {
    /// Loads SmolLM2 from `models/`.
    pub fn load(models: &ModelsDir, options: LlmOptions) -> Result<Self, ModelError> {
        let path = ModelsDir::require(ENGINE, models.smollm2())?;
        Self::load_file(&path, options)
    }

    /// Loads a llama GGUF file with a ChatML vocabulary.
    pub fn load_file(path: &Path, options: LlmOptions) -> Result<Self, ModelError> {
        let invalid = |message: String| ModelError::Invalid {
            engine: ENGINE,
            path: path.to_path_buf(),
            message,
        };
        let mut file =
            std::io::BufReader::new(std::fs::File::open(path).map_err(|e| invalid(e.to_string()))?);
        let content = candle_core::quantized::gguf_file::Content::read(&mut file)
            .map_err(|e| invalid(format!("not a GGUF file: {e}")))?;
        let tokenizer = BpeTokenizer::from_gguf(&content).map_err(invalid)?;
        let model = Llama::load(&content, &mut file, options.requantize_q8_0)
            .map_err(|e| invalid(e.to_string()))?;
        let special = |text: &str| {
            tokenizer
                .token_id(text)
                .filter(|&id| tokenizer.is_special(id))
                .ok_or_else(|| invalid(format!("the vocabulary has no {text} token (not ChatML)")))
        };
        let im_start = special("<|im_start|>")?;
        let im_end = special("<|im_end|>")?;
        let mut options = options;
        options.max_context_tokens = options.max_context_tokens.clamp(16, model.config().n_ctx);
        tracing::info!(
            path = %path.display(),
            layers = model.config().n_layer,
            context = model.config().n_ctx,
            // candle's CPU threads: RAYON_NUM_THREADS, else the physical
            // cores (CANDLE_NUM_THREADS overrides it for quantized kernels).
            threads = candle_core::utils::get_num_threads(),
            candle_num_threads = std::env::var("CANDLE_NUM_THREADS").ok(),
            "local language model loaded"
        );
        Ok(Self {
            model,
            tokenizer,
            options,
            prefixes: VecDeque::new(),
            im_start,
            im_end,
            requests: 0,
        })
    }

    pub fn tokenizer(&self) -> &BpeTokenizer {
        &self.tokenizer
    }

    pub fn config(&self) -> &LlamaConfig {
        self.model.config()
    }

    pub fn options(&self) -> &LlmOptions {
        &self.options
    }

    /// Forgets the cached prompts.
    pub fn clear_prefix_cache(&mut self) {
        self.prefixes.clear();
    }

    /// Generates a reply to `request`, calling `on_delta` with each piece of
    /// text (whole UTF-8 characters only). `on_delta` returning
    /// [`ControlFlow::Break`] cancels the rest; so does `cancelled` returning
    /// true, checked before every model step.
    pub fn generate(
        &mut self,
        request: &LlmRequest,
        cancelled: &dyn Fn() -> bool,
        on_delta: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> Result<GenerationStats, InferenceError> {
        let started = Instant::now();
        self.requests += 1;
        let limit = self.options.max_context_tokens;
        let reply_budget = match request.max_tokens {
            0 => limit / 4,
            n => n as usize,
        };
        let prompt = self.prompt(&request.messages, limit - reply_budget.min(limit / 2));
        let mut stats = GenerationStats {
            prompt_tokens: prompt.tokens.len(),
            cached_prompt_tokens: 0,
            dropped_turns: prompt.dropped_turns,
            generated_tokens: 0,
            time_to_first_token: Duration::ZERO,
            decode_time: Duration::ZERO,
            stop: StopReason::Cancelled,
        };

        // Keys and values of the longest start this prompt shares with an
        // earlier request's (its system prompt, or the conversation so far).
        let system = &prompt.tokens[..prompt.system_len];
        let mut cache = match self.take_prefix(&prompt.tokens)? {
            Some(cache) => {
                stats.cached_prompt_tokens = cache.len();
                cache
            }
            None => KvCache::new(self.model.config()),
        };
        let mut logits = Vec::new();
        let mut fed = cache.len();
        while fed < prompt.tokens.len() {
            if cancelled() {
                return Ok(stats);
            }
            // Stop a chunk at the end of the system prompt so its cache can
            // be copied out exactly.
            let mut end = (fed + PREFILL_CHUNK).min(prompt.tokens.len());
            if fed < prompt.system_len && end > prompt.system_len {
                end = prompt.system_len;
            }
            // The last prompt token runs alone, as it does when the rest
            // of the prompt is cached: a batch and a single row go through
            // different quantized kernels whose logits differ in the last
            // bits, enough to change a greedy reply between a first request
            // and the same request answered from the cache.
            if end == prompt.tokens.len() && end - fed > 1 {
                end -= 1;
            }
            logits = self.model.forward(&prompt.tokens[fed..end], &mut cache)?;
            fed = end;
            if fed == prompt.system_len && stats.cached_prompt_tokens < prompt.system_len {
                self.keep_prefix(system.to_vec(), cache.prefix(prompt.system_len)?);
            }
        }

        if logits.is_empty() {
            return Err(InferenceError("the prompt left nothing to run".into()));
        }
        let max_new = match request.max_tokens {
            0 => usize::MAX,
            n => n as usize,
        };
        let mut sampler = Sampler::new(&self.options, request.temperature, self.seed());
        // Prompt and reply so far; all but the last are in `cache`.
        let mut recent: Vec<u32> = prompt.tokens.clone();
        let mut text = Utf8Stream::default();
        let mut first_token_at = None;
        let stop = loop {
            let token = sampler.sample(&mut logits, &recent);
            let now = Instant::now();
            if first_token_at.is_none() {
                first_token_at = Some(now);
                stats.time_to_first_token = now - started;
            }
            if token == self.im_end
                || token == self.tokenizer.eos_id()
                || self.tokenizer.is_special(token)
            {
                break StopReason::EndOfTurn;
            }
            stats.generated_tokens += 1;
            recent.push(token);
            let delta = text.push(self.tokenizer.token_bytes(token));
            if !delta.is_empty() && on_delta(&delta).is_break() {
                break StopReason::Cancelled;
            }
            if stats.generated_tokens >= max_new {
                break StopReason::MaxTokens;
            }
            if cache.len() >= self.model.config().n_ctx.min(limit) {
                break StopReason::ContextFull;
            }
            if cancelled() {
                break StopReason::Cancelled;
            }
            logits = self.model.forward(&[token], &mut cache)?;
        };
        // What the cache holds: the prompt and the reply tokens fed back.
        recent.truncate(cache.len());
        self.keep_prefix(recent, cache);
        let rest = text.finish();
        if stop != StopReason::Cancelled && !rest.is_empty() {
            let _ = on_delta(&rest);
        }
        stats.stop = stop;
        if let Some(at) = first_token_at {
            stats.decode_time = at.elapsed();
        }
        Ok(stats)
    }

    fn seed(&self) -> u64 {
        match self.options.seed {
            Some(seed) => seed.wrapping_add(self.requests),
            None => {
                static COUNTER: AtomicU64 = AtomicU64::new(0);
                let clock = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64);
                clock ^ COUNTER.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            }
        }
    }

    /// A copy of the cached keys and values for the longest start of
    /// `prompt` any cached sequence shares, if any. At least the last prompt
    /// token is left to run, for its logits.
    fn take_prefix(&mut self, prompt: &[u32]) -> Result<Option<KvCache>, InferenceError> {
        if !self.options.cache_prompts || prompt.len() < 2 {
            return Ok(None);
        }
        let best = self
            .prefixes
            .iter()
            .enumerate()
            .map(|(at, (tokens, _))| (at, common_prefix(tokens, prompt)))
            .max_by_key(|&(_, len)| len);
        let Some((at, len)) = best.filter(|&(_, len)| len > 0) else {
            return Ok(None);
        };
        let len = len.min(prompt.len() - 1);
        // Most recently used goes last.
        let Some(entry) = self.prefixes.remove(at) else {
            return Ok(None);
        };
        let copy = entry.1.prefix(len)?;
        self.prefixes.push_back(entry);
        Ok(Some(copy))
    }

    /// Keeps `cache`, which holds `tokens`, replacing the sequences it
    /// extends, then evicts the least recently used beyond the budget.
    fn keep_prefix(&mut self, tokens: Vec<u32>, cache: KvCache) {
        if !self.options.cache_prompts || tokens.is_empty() || tokens.len() != cache.len() {
            return;
        }
        self.prefixes
            .retain(|(held, _)| !(held.len() <= tokens.len() && tokens.starts_with(held)));
        if self
            .prefixes
            .iter()
            .any(|(held, _)| held.starts_with(&tokens))
        {
            // A longer sequence already covers it.
            return;
        }
        self.prefixes.push_back((tokens, cache));
        let budget = self.options.prompt_cache_tokens;
        while self.prefixes.len() > PREFIX_CACHE_ENTRIES
            || self.prefixes.iter().map(|(t, _)| t.len()).sum::<usize>() > budget
        {
            if self.prefixes.pop_front().is_none() {
                break;
            }
        }
    }

    /// The ChatML prompt for `messages`, at most `limit` tokens: the oldest
    /// turns after the system prompt go first; a single turn that is still
    /// too long keeps its end.
    fn prompt(&self, messages: &[ChatMessage], limit: usize) -> Prompt {
        let (system, turns) = match messages.split_first() {
            Some((first, rest)) if first.role == ChatRole::System => (first.content.as_str(), rest),
            _ => (DEFAULT_SYSTEM_PROMPT, messages),
        };
        let mut system_tokens = self.message(ChatRole::System, system);
        let header = self.header(ChatRole::Assistant);
        let mut turns: VecDeque<Vec<u32>> = turns
            .iter()
            .map(|m| self.message(m.role, &m.content))
            .collect();
        // A system prompt longer than half the room keeps its beginning.
        let system_room = limit / 2;
        if system_tokens.len() > system_room {
            system_tokens.truncate(system_room.saturating_sub(2));
            system_tokens.extend(self.message_end());
        }
        let mut total =
            system_tokens.len() + header.len() + turns.iter().map(Vec::len).sum::<usize>();
        let mut dropped_turns = 0;
        while total > limit && turns.len() > 1 {
            if let Some(turn) = turns.pop_front() {
                total -= turn.len();
                dropped_turns += 1;
            }
        }
        if total > limit
            && let Some(turn) = turns.front_mut()
        {
            // Keep the role header and the end of the content.
            let cut = total - limit;
            let head = 2; // <|im_start|> and the role word
            if turn.len() > head + cut {
                turn.drain(head..head + cut);
            }
        }
        let system_len = system_tokens.len();
        let mut tokens = system_tokens;
        for turn in turns {
            tokens.extend(turn);
        }
        tokens.extend(header);
        Prompt {
            tokens,
            system_len,
            dropped_turns,
        }
    }

    /// `<|im_start|>{role}\n{content}<|im_end|>\n`, content as plain text.
    fn message(&self, role: ChatRole, content: &str) -> Vec<u32> {
        let mut tokens = vec![self.im_start];
        tokens.extend(
            self.tokenizer
                .encode_plain(&format!("{}\n{content}", role_name(role))),
        );
        tokens.extend(self.message_end());
        tokens
    }

    fn message_end(&self) -> Vec<u32> {
        let mut tokens = vec![self.im_end];
        tokens.extend(self.tokenizer.encode_plain("\n"));
        tokens
    }

    /// `<|im_start|>{role}\n`: where the model takes over.
    fn header(&self, role: ChatRole) -> Vec<u32> {
        let mut tokens = vec![self.im_start];
        tokens.extend(
            self.tokenizer
                .encode_plain(&format!("{}\n", role_name(role))),
        );
        tokens
    }
}

/// How many leading tokens `a` and `b` share.
fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

fn role_name(role: ChatRole) -> &'static str {
    match role {
        ChatRole::System => "system",
        ChatRole::User => "user",
        ChatRole::Assistant => "assistant",
    }
}

struct Prompt {
    tokens: Vec<u32>,
    /// The first `system_len` tokens are the system message.
    system_len: usize,
    dropped_turns: usize,
}

/// Loads just the tokenizer (the GGUF metadata, not the weights).
pub fn load_tokenizer(models: &ModelsDir) -> Result<BpeTokenizer, ModelError> {
    let path = ModelsDir::require(ENGINE, models.smollm2())?;
    let invalid = |message: String| ModelError::Invalid {
        engine: ENGINE,
        path: path.clone(),
        message,
    };
    let mut file =
        std::io::BufReader::new(std::fs::File::open(&path).map_err(|e| invalid(e.to_string()))?);
    let content = candle_core::quantized::gguf_file::Content::read(&mut file)
        .map_err(|e| invalid(format!("not a GGUF file: {e}")))?;
    BpeTokenizer::from_gguf(&content).map_err(invalid)
}

/// Greedy at temperature 0, else temperature, top-k, top-p; always the
/// repetition penalty.
struct Sampler {
    temperature: f32,
    top_k: usize,
    top_p: f32,
    penalty: f32,
    last_n: usize,
    rng: XorShift,
    /// Scratch: candidate ids, reused across tokens.
    candidates: Vec<u32>,
}

impl Sampler {
    fn new(options: &LlmOptions, temperature: f64, seed: u64) -> Self {
        Self {
            temperature: temperature.max(0.0) as f32,
            top_k: options.top_k.max(1),
            top_p: options.top_p.clamp(0.0, 1.0),
            penalty: options.repeat_penalty,
            last_n: options.repeat_last_n,
            rng: XorShift::new(seed),
            candidates: Vec::new(),
        }
    }

    fn sample(&mut self, logits: &mut [f32], recent: &[u32]) -> u32 {
        if self.penalty != 1.0 && self.last_n > 0 {
            let window = &recent[recent.len().saturating_sub(self.last_n)..];
            let mut seen: Vec<u32> = window.to_vec();
            seen.sort_unstable();
            seen.dedup();
            for id in seen {
                if let Some(l) = logits.get_mut(id as usize) {
                    *l = if *l > 0.0 {
                        *l / self.penalty
                    } else {
                        *l * self.penalty
                    };
                }
            }
        }
        if self.temperature <= 1e-4 {
            return argmax(logits);
        }
        let k = self.top_k.min(logits.len());
        self.candidates.clear();
        self.candidates.extend(0..logits.len() as u32);
        let by_logit_desc = |a: &u32, b: &u32| logits[*b as usize].total_cmp(&logits[*a as usize]);
        if k < self.candidates.len() {
            self.candidates.select_nth_unstable_by(k - 1, by_logit_desc);
            self.candidates.truncate(k);
        }
        self.candidates.sort_unstable_by(by_logit_desc);
        let Some(&best) = self.candidates.first() else {
            return 0;
        };
        let max = logits[best as usize];
        let mut probs: Vec<f32> = self
            .candidates
            .iter()
            .map(|&id| ((logits[id as usize] - max) / self.temperature).exp())
            .collect();
        let sum: f32 = probs.iter().sum();
        // Smallest prefix reaching top_p.
        let mut kept = 0;
        let mut mass = 0.0;
        for p in &mut probs {
            *p /= sum;
            mass += *p;
            kept += 1;
            if mass >= self.top_p {
                break;
            }
        }
        let mut r = self.rng.next_f32() * mass;
        for (i, p) in probs.iter().take(kept).enumerate() {
            r -= p;
            if r <= 0.0 {
                return self.candidates[i];
            }
        }
        self.candidates[kept - 1]
    }
}

fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, l) in logits.iter().enumerate() {
        if *l > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// xorshift64*: tiny, seedable, plenty for sampling.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1).
    fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// Turns token bytes into text without ever splitting a character: bytes of
/// an unfinished character wait for the next token.
#[derive(Debug, Default)]
struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(text) => {
                    out.push_str(text);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    out.push_str(std::str::from_utf8(&self.pending[..valid]).unwrap_or_default());
                    match e.error_len() {
                        // Unfinished character at the end: wait for more.
                        None => {
                            self.pending.drain(..valid);
                            return out;
                        }
                        // Bytes that can never be UTF-8.
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..valid + bad);
                        }
                    }
                }
            }
        }
    }

    /// What is left at the end of the reply (an unfinished character).
    fn finish(&mut self) -> String {
        let rest = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        rest
    }
}

/// One request waiting for the worker.
struct Job {
    request: LlmRequest,
    deltas: tokio::sync::mpsc::Sender<Result<String, ProviderError>>,
    queued_at: Instant,
}

/// The local language model as sessions use it: cheap to clone, every clone
/// feeding the same worker thread and model.
#[derive(Debug, Clone)]
pub struct LocalLlm {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    jobs: SyncSender<Job>,
    path: PathBuf,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").finish_non_exhaustive()
    }
}

impl LocalLlm {
    /// Loads SmolLM2 from `models/` with the default options and starts its
    /// worker thread.
    pub fn load(models: &ModelsDir) -> Result<Self, ModelError> {
        Self::load_with(models, LlmOptions::default())
    }

    pub fn load_with(models: &ModelsDir, options: LlmOptions) -> Result<Self, ModelError> {
        let path = models.smollm2();
        let engine = LlmEngine::load(models, options)?;
        Self::start(engine, path)
    }

    /// Runs `engine` on a new worker thread.
    fn start(engine: LlmEngine, path: PathBuf) -> Result<Self, ModelError> {
        // sync_channel(n) holds n waiting jobs; the one running is off it.
        let (jobs, queue) = std::sync::mpsc::sync_channel::<Job>(engine.options.queue_depth);
        std::thread::Builder::new()
            .name("palaver-llm".into())
            .spawn(move || worker(engine, queue))
            .map_err(|e| ModelError::Invalid {
                engine: ENGINE,
                path: path.clone(),
                message: format!("cannot start the inference thread: {e}"),
            })?;
        Ok(Self {
            shared: Arc::new(Shared { jobs, path }),
        })
    }

    /// The model file in use.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }
}

impl LanguageModel for LocalLlm {
    fn stream_reply(&self, request: LlmRequest) -> BoxStream<Result<String, ProviderError>> {
        let (deltas, rx) = tokio::sync::mpsc::channel(DELTA_BUFFER);
        let job = Job {
            request,
            deltas,
            queued_at: Instant::now(),
        };
        let refused = match self.shared.jobs.try_send(job) {
            Ok(()) => return Box::pin(ReplyStream { rx }),
            Err(TrySendError::Full(_)) => ProviderError::Busy { provider: PROVIDER },
            Err(TrySendError::Disconnected(_)) => ProviderError::Unavailable {
                provider: PROVIDER,
                message: "the inference thread has stopped".into(),
            },
        };
        Box::pin(futures_util::stream::iter([Err::<String, ProviderError>(
            refused,
        )]))
    }
}

/// The deltas of one reply, as the worker produces them.
struct ReplyStream {
    rx: tokio::sync::mpsc::Receiver<Result<String, ProviderError>>,
}

impl Stream for ReplyStream {
    type Item = Result<String, ProviderError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

/// The worker thread: one job at a time until every [`LocalLlm`] is gone.
fn worker(mut engine: LlmEngine, queue: std::sync::mpsc::Receiver<Job>) {
    while let Ok(job) = queue.recv() {
        if job.deltas.is_closed() {
            // Dropped while it waited.
            continue;
        }
        let waited = job.queued_at.elapsed();
        let deltas = &job.deltas;
        // A panic inside the tensor code must not take every later request
        // down with the thread: it fails this one, and the worker goes on
        // with the caches of the failed request forgotten.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            engine.generate(
                &job.request,
                &|| deltas.is_closed(),
                &mut |delta| match deltas.blocking_send(Ok(delta.to_owned())) {
                    Ok(()) => ControlFlow::Continue(()),
                    Err(_) => ControlFlow::Break(()),
                },
            )
        }))
        .unwrap_or_else(|_| {
            engine.clear_prefix_cache();
            Err(InferenceError("inference panicked".into()))
        });
        match result {
            Ok(stats) => tracing::debug!(
                waited_ms = waited.as_millis() as u64,
                prompt_tokens = stats.prompt_tokens,
                cached_prompt_tokens = stats.cached_prompt_tokens,
                dropped_turns = stats.dropped_turns,
                generated_tokens = stats.generated_tokens,
                first_token_ms = stats.time_to_first_token.as_millis() as u64,
                tokens_per_second = stats.tokens_per_second(),
                stop = ?stats.stop,
                "local reply done"
            ),
            Err(err) => {
                tracing::error!(%err, "local language model failed");
                let _ = deltas.blocking_send(Err(ProviderError::Unavailable {
                    provider: PROVIDER,
                    message: err.to_string(),
                }));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_stream_never_splits_a_character() {
        let mut s = Utf8Stream::default();
        let bytes = "é😀".as_bytes();
        assert_eq!(s.push(&bytes[..1]), "");
        assert_eq!(s.push(&bytes[1..3]), "é");
        assert_eq!(s.push(&bytes[3..5]), "");
        assert_eq!(s.push(&bytes[5..]), "😀");
        assert_eq!(s.push(&[0xFF, b'a']), "\u{FFFD}a");
        assert_eq!(s.push(&[0xE2, 0x82]), "");
        assert_eq!(s.finish(), "\u{FFFD}");
    }

    #[test]
    fn greedy_sampling_takes_the_best_after_the_penalty() {
        let options = LlmOptions::default();
        let mut sampler = Sampler::new(&options, 0.0, 1);
        let mut logits = vec![0.0, 2.0, 2.1, -1.0];
        // Token 2 was just said: 2.1 / 1.1 < 2.0.
        assert_eq!(sampler.sample(&mut logits, &[2]), 1);
    }

    #[test]
    fn sampling_stays_in_the_nucleus_and_is_seeded() {
        let options = LlmOptions {
            top_p: 0.5,
            ..LlmOptions::default()
        };
        let draw = |seed| {
            let mut sampler = Sampler::new(&options, 1.0, seed);
            (0..50)
                .map(|_| sampler.sample(&mut [0.0, 5.0, 0.0, 4.0], &[]))
                .collect::<Vec<_>>()
        };
        let a = draw(7);
        assert!(a.iter().all(|&t| t == 1 || t == 3), "{a:?}");
        assert_eq!(a, draw(7));
    }
}
