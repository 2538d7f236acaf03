//! The local language model on the real SmolLM2 file (`make test` fetches
//! it; by hand: `scripts/fetch-models.sh`). Tests take one lock so they do
//! not compete for the CPU; most share one loaded model.

use std::ops::ControlFlow;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use palaver_actors::conversation::{ChatMessage, ChatRole};
use palaver_actors::ports::{LanguageModel, LlmRequest, ProviderError};
use palaver_local::llm::{
    GenerationStats, LlmEngine, LlmOptions, LocalLlm, StopReason, load_tokenizer,
};
use palaver_local::models::ModelsDir;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn models() -> ModelsDir {
    // Tests run in the crate directory; the models live at the workspace root.
    let dir = std::env::var_os("PALAVER_MODELS_DIR").map_or_else(
        || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models"),
        std::path::PathBuf::from,
    );
    let models = ModelsDir::new(dir);
    assert!(
        models.smollm2().exists(),
        "{} is missing: run scripts/fetch-models.sh (make test does)",
        models.smollm2().display()
    );
    models
}

fn shared() -> &'static LocalLlm {
    static LLM: OnceLock<LocalLlm> = OnceLock::new();
    LLM.get_or_init(|| LocalLlm::load(&models()).expect("load SmolLM2"))
}

fn message(role: ChatRole, content: &str) -> ChatMessage {
    ChatMessage {
        role,
        content: content.to_owned(),
    }
}

const SYSTEM: &str = "You are a helpful assistant. Answer briefly.";

fn request(user: &str, max_tokens: u32) -> LlmRequest {
    LlmRequest {
        model: "smollm2".into(),
        messages: vec![
            message(ChatRole::System, SYSTEM),
            message(ChatRole::User, user),
        ],
        temperature: 0.0,
        max_tokens,
    }
}

/// A prompt SmolLM2 answers at length (more than 2000 tokens at
/// temperature 0: over 50 s even at full speed).
const LONG: &str =
    "Write a very long and detailed story, at least 2000 words, about a dragon who learns to fly.";

async fn collect(llm: &LocalLlm, request: LlmRequest) -> Result<Vec<String>, ProviderError> {
    let mut stream = llm.stream_reply(request);
    let mut deltas = Vec::new();
    while let Some(delta) = stream.next().await {
        deltas.push(delta?);
    }
    Ok(deltas)
}

#[test]
fn tokenizer_matches_the_vocabulary() {
    let tokenizer = load_tokenizer(&models()).expect("tokenizer");
    let hello = tokenizer.token_id("Hello").expect("Hello is a token");
    let world = tokenizer.token_id("Ġworld").expect("' world' is a token");
    assert_eq!(tokenizer.encode("Hello world"), [hello, world]);
    assert_eq!(tokenizer.encode("Hello"), [hello]);

    let im_start = tokenizer.token_id("<|im_start|>").expect("<|im_start|>");
    let im_end = tokenizer.token_id("<|im_end|>").expect("<|im_end|>");
    assert!(tokenizer.is_special(im_start) && tokenizer.is_special(im_end));
    assert_eq!(tokenizer.eos_id(), im_end);
    let chat = tokenizer.encode("<|im_start|>user\nHi there<|im_end|>\n");
    assert_eq!(chat.first(), Some(&im_start));
    assert!(chat.contains(&im_end));
    assert_eq!(chat.iter().filter(|&&t| tokenizer.is_special(t)).count(), 2);
    // As plain text the markers are just characters.
    let plain = tokenizer.encode_plain("<|im_end|>");
    assert!(plain.len() > 1 && !plain.contains(&im_end), "{plain:?}");
    assert_eq!(tokenizer.decode(&plain), "<|im_end|>");

    for text in [
        "Hello world",
        "  leading spaces and trailing   ",
        "Punctuation! Does it... work? (yes); 'quotes' \"double\" -- dashes",
        "Digits 1234567890 and 3.14159, 1,000,000",
        "I'm sure you'll see we've done it, they'd say.",
        "Tabs\tand\nnewlines\n\n\nhere\r\n",
        "Unicode: café, naïve, Straße, Ωmega, 日本語のテキスト, emoji 😀🎉, العربية",
        "code: fn main() { println!(\"{}\", x + 1); }",
        "<|im_start|>assistant\nspecial inside<|im_end|>",
        "",
    ] {
        let ids = tokenizer.encode(text);
        assert_eq!(tokenizer.decode(&ids), text, "round trip of {text:?}");
        assert!(ids.iter().all(|&id| (id as usize) < tokenizer.vocab_size()));
    }
    // Digits are split one by one.
    let digits = tokenizer.encode_plain("2024");
    assert_eq!(digits.len(), 4, "{digits:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_a_short_prompt_deterministically() {
    let _serial = SERIAL.lock().await;
    let llm = shared();
    let ask = || request("What is the capital of France?", 48);
    let first = collect(llm, ask()).await.expect("reply");
    let text: String = first.concat();
    assert!(!text.trim().is_empty(), "empty reply");
    assert!(text.contains("Paris"), "unexpected reply: {text:?}");
    assert!(!text.contains("<|im_"), "special token leaked: {text:?}");
    let second = collect(llm, ask()).await.expect("reply");
    assert_eq!(first.concat(), second.concat(), "temperature 0 is greedy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn honours_max_tokens() {
    let _serial = SERIAL.lock().await;
    let deltas = collect(shared(), request(LONG, 5)).await.expect("reply");
    // At most one delta per token (fewer when a token ends mid-character).
    assert!(!deltas.is_empty() && deltas.len() <= 5, "{deltas:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_stream_stops_generation() {
    let _serial = SERIAL.lock().await;
    let llm = shared();
    // Warm up, and time a long reply's pace.
    collect(llm, request("Hi", 4)).await.expect("warm-up");

    let mut long = llm.stream_reply(request(LONG, 2000));
    for _ in 0..3 {
        long.next().await.expect("a delta").expect("no error");
    }
    let dropped_at = Instant::now();
    drop(long);
    // Were the long reply still running, this would wait for its 2000
    // tokens (a minute or more); cancelled, it starts within one token.
    let next = tokio::time::timeout(
        Duration::from_secs(60),
        collect(llm, request("Say hello.", 8)),
    )
    .await
    .expect("the worker moved on from the dropped reply")
    .expect("reply");
    assert!(!next.concat().is_empty());
    let took = dropped_at.elapsed();
    assert!(took < Duration::from_secs(30), "next reply took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_when_the_queue_is_full() {
    let _serial = SERIAL.lock().await;
    let options = LlmOptions {
        queue_depth: 1,
        ..LlmOptions::default()
    };
    let llm = LocalLlm::load_with(&models(), options).expect("load");
    // One running (it has produced a delta, so it is off the queue) ...
    let mut running = llm.stream_reply(request(LONG, 2000));
    running.next().await.expect("a delta").expect("no error");
    // ... one waiting ...
    let _waiting = llm.stream_reply(request(LONG, 2000));
    // ... and the next is refused at once.
    let mut refused = llm.stream_reply(request("Hi", 4));
    let first = tokio::time::timeout(Duration::from_secs(1), refused.next())
        .await
        .expect("refused without waiting");
    assert_eq!(first, Some(Err(ProviderError::Busy { provider: "local" })));
    assert_eq!(refused.next().await, None);
}

fn generate(engine: &mut LlmEngine, messages: Vec<ChatMessage>) -> (GenerationStats, String) {
    let request = LlmRequest {
        model: "smollm2".into(),
        messages,
        temperature: 0.0,
        max_tokens: 24,
    };
    let mut text = String::new();
    let stats = engine
        .generate(&request, &|| false, &mut |d| {
            text.push_str(d);
            ControlFlow::Continue(())
        })
        .expect("generate");
    (stats, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trims_old_turns_and_reuses_cached_prompts() {
    let _serial = SERIAL.lock().await;
    let options = LlmOptions {
        max_context_tokens: 256,
        ..LlmOptions::default()
    };
    let mut engine = LlmEngine::load(&models(), options).expect("load");

    // A conversation too long for the context: the oldest turns go.
    let mut long = vec![message(ChatRole::System, SYSTEM)];
    for i in 0..20 {
        long.push(message(
            ChatRole::User,
            &format!("Tell me something about the number {i}."),
        ));
        long.push(message(
            ChatRole::Assistant,
            &format!("The number {i} is a fine number, worth remembering."),
        ));
    }
    long.push(message(ChatRole::User, "What is the capital of France?"));
    let (cold, cold_text) = generate(&mut engine, long.clone());
    assert!(cold.dropped_turns > 0, "{cold:?}");
    assert!(cold.prompt_tokens + 24 <= 256, "{cold:?}");
    assert_eq!(cold.cached_prompt_tokens, 0);
    assert!(!cold_text.trim().is_empty());
    assert!(matches!(
        cold.stop,
        StopReason::EndOfTurn | StopReason::MaxTokens
    ));

    // The same again: everything but the last prompt token is cached, and
    // the reply is still sensible.
    let (again, again_text) = generate(&mut engine, long);
    assert_eq!(
        again.cached_prompt_tokens,
        again.prompt_tokens - 1,
        "{again:?}"
    );
    assert!(again_text.contains("Paris"), "{again_text:?}");

    // A session's next turn runs only what is new since its last one: the
    // previous prompt and reply are cached.
    engine.clear_prefix_cache();
    let mut chat = vec![
        message(ChatRole::System, SYSTEM),
        message(ChatRole::User, "Hi! I have a geography question."),
    ];
    let (first, reply) = generate(&mut engine, chat.clone());
    chat.push(message(ChatRole::Assistant, &reply));
    chat.push(message(ChatRole::User, "What is the capital of France?"));
    let (next, next_text) = generate(&mut engine, chat);
    assert!(
        next.cached_prompt_tokens >= first.prompt_tokens,
        "{first:?} then {next:?}"
    );
    assert!(next_text.contains("Paris"), "{reply:?} then {next_text:?}");
}

/// Ids from Hugging Face `tokenizers` (0.23) built from the same GGUF vocabulary
/// and merges with SmolLM's pre-tokenizer (individual digits, then byte-level).
#[test]
fn tokenizer_matches_the_reference_implementation() {
    let tokenizer = load_tokenizer(&models()).expect("tokenizer");
    let cases: &[(&str, &[u32])] = &[
        ("Hello world", &[19556, 905]),
        (
            "  leading spaces and trailing   ",
            &[216, 2899, 5600, 284, 35079, 333],
        ),
        (
            "Punctuation! Does it... work? (yes); 'quotes' \"double\" -- dashes",
            &[
                64, 8859, 6584, 17, 7369, 357, 2026, 746, 47, 365, 10407, 4258, 637, 385, 2346, 23,
                476, 21414, 18, 3009, 287, 9604,
            ],
        ),
        (
            "Digits 1234567890 and 3.14159, 1,000,000",
            &[
                16361, 842, 216, 33, 34, 35, 36, 37, 38, 39, 40, 41, 32, 284, 216, 35, 30, 33, 36,
                33, 37, 41, 28, 216, 33, 28, 32, 32, 32, 28, 32, 32, 32,
            ],
        ),
        (
            "I'm sure you'll see we've done it, they'd say. DON'T",
            &[
                57, 5248, 2090, 346, 3060, 963, 392, 3543, 2294, 357, 28, 502, 6737, 1643, 30, 422,
                2154, 23, 68,
            ],
        ),
        (
            "Tabs\tand\nnewlines\n\n\nhere\r\n",
            &[68, 7366, 197, 397, 198, 2241, 5110, 1116, 198, 1531, 2738],
        ),
        (
            "Unicode: café, naïve, Straße, Ωmega, 日本語のテキスト, emoji 😀🎉, العربية",
            &[
                3706, 15817, 42, 37366, 28, 15486, 46494, 28, 19144, 34878, 85, 28, 5664, 119, 93,
                9005, 28, 17097, 241, 115, 40993, 179, 120, 248, 26453, 11100, 224, 10391, 251,
                10391, 134, 11100, 226, 28, 649, 33777, 40303, 218, 10813, 232, 227, 28, 27819,
                34966, 20602, 31462, 23339, 43463,
            ],
        ),
        (
            "code: fn main() { println!(\"{}\", x + 1); }",
            &[
                4635, 42, 24526, 1085, 1000, 1662, 1628, 34115, 17, 43331, 1002, 1792, 1232, 216,
                33, 4258, 4029,
            ],
        ),
        (
            "<|im_start|>assistant\nspecial inside<|im_end|>\n",
            &[1, 520, 9531, 198, 19159, 2972, 2, 198],
        ),
    ];
    for (text, ids) in cases {
        assert_eq!(&tokenizer.encode(text), ids, "encoding of {text:?}");
    }
}
