//! Time to first token and decode speed of the local language model, for a
//! ~150-token prompt: with nothing cached, with its system prompt cached (as
//! after another caller of the same assistant), and for the next turn of the
//! same conversation (prompt and reply cached).
//!
//! ```sh
//! cargo run -p palaver-local --example llm_bench [-- [RUNS] [--keep-q4_1]]
//! ```
//!
//! `--keep-q4_1` runs the file's Q4_1 matrices as they are instead of
//! converting them to Q8_0 at load (the default).
//!
//! (The dev profile builds candle at opt-level 3, so this is close to a
//! release build.) Models come from `PALAVER_MODELS_DIR`, else `models/`.

use std::ops::ControlFlow;

use palaver_actors::conversation::{ChatMessage, ChatRole};
use palaver_actors::ports::LlmRequest;
use palaver_local::llm::{GenerationStats, LlmEngine, LlmOptions};
use palaver_local::models::ModelsDir;

const SYSTEM: &str = "You are the front desk of the Harbour View Hotel, a small family-run hotel \
    by the sea. Answer callers briefly and warmly, in one or two sentences, because your answers \
    are spoken aloud. Check-in is from 3 pm and check-out is by 11 am. Breakfast is served from \
    7 to 10 in the garden room. Parking is free for guests. Pets are welcome for a small fee. \
    If you do not know something, offer to take a message for the manager.";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let keep_q4_1 = args.iter().any(|a| a == "--keep-q4_1");
    let runs: usize = args
        .iter()
        .find(|a| !a.starts_with("--"))
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(3);
    let options = LlmOptions {
        requantize_q8_0: !keep_q4_1,
        ..LlmOptions::default()
    };
    let loading = std::time::Instant::now();
    let mut engine = LlmEngine::load(&ModelsDir::from_env(), options)?;
    println!(
        "loaded in {:.2} s (Q4_1 kept: {keep_q4_1})",
        loading.elapsed().as_secs_f64()
    );
    let request = LlmRequest {
        model: "smollm2".into(),
        messages: vec![
            ChatMessage {
                role: ChatRole::System,
                content: SYSTEM.into(),
            },
            ChatMessage {
                role: ChatRole::User,
                content: "Hello! I am arriving tomorrow evening with my dog and my car. \
                          Can I park at the hotel, is the dog allowed, and when is breakfast?"
                    .into(),
            },
        ],
        temperature: 0.0,
        max_tokens: 128,
    };
    let once = |engine: &mut LlmEngine,
                request: &LlmRequest|
     -> Result<(GenerationStats, String), Box<dyn std::error::Error>> {
        let mut text = String::new();
        let stats = engine.generate(request, &|| false, &mut |d| {
            text.push_str(d);
            ControlFlow::Continue(())
        })?;
        Ok((stats, text))
    };
    // Another caller of the same assistant: same system prompt, other words.
    let mut other_caller = request.clone();
    other_caller.messages[1].content = "Hi, do you have a room with a sea view?".into();
    other_caller.max_tokens = 1;

    // Warm-up (page cache, allocator), and the reply the follow-up builds on.
    let (_, reply) = once(&mut engine, &request)?;
    println!("reply: {reply:?}\n");
    let mut follow_up = request.clone();
    follow_up.messages.push(ChatMessage {
        role: ChatRole::Assistant,
        content: reply,
    });
    follow_up.messages.push(ChatMessage {
        role: ChatRole::User,
        content: "Thank you. Is there a restaurant nearby for dinner?".into(),
    });

    for scenario in ["no cache", "system prompt cached", "follow-up turn"] {
        let mut ttft = Vec::new();
        let mut tps = Vec::new();
        for _ in 0..runs {
            engine.clear_prefix_cache();
            let measured = match scenario {
                "no cache" => &request,
                "system prompt cached" => {
                    once(&mut engine, &other_caller)?;
                    &request
                }
                _ => {
                    once(&mut engine, &request)?;
                    &follow_up
                }
            };
            let (stats, _) = once(&mut engine, measured)?;
            println!(
                "{scenario:<20} prompt={} cached={} generated={} ttft={:.0} ms decode={:.1} tok/s stop={:?}",
                stats.prompt_tokens,
                stats.cached_prompt_tokens,
                stats.generated_tokens,
                stats.time_to_first_token.as_secs_f64() * 1000.0,
                stats.tokens_per_second(),
                stats.stop,
            );
            ttft.push(stats.time_to_first_token.as_secs_f64() * 1000.0);
            tps.push(stats.tokens_per_second());
        }
        println!(
            "{scenario}: median ttft {:.0} ms, median {:.1} tok/s\n",
            median(&mut ttft),
            median(&mut tps)
        );
    }
    Ok(())
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}
