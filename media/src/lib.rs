//! palaver-media: audio for Palaver's voice sessions.
//!
//! # Layout
//!
//! - [`frame`]: the pipeline's unit of audio, 20 ms of 16 kHz mono PCM16,
//!   and its level (RMS, dBFS).
//!
//! Opus, resampling, the jitter buffer, pacing, VAD, WAV and the WebRTC
//! endpoint join this crate with the realtime voice work. This crate knows
//! nothing of sessions, HTTP or storage; `palaver-actors` builds on it.

pub mod frame;

pub use frame::{AudioFrame, FRAME_MS, FRAME_SAMPLES, SAMPLE_RATE};
