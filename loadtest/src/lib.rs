//! palaver-loadtest: drives a running Palaver server over the wire, like real
//! clients do, and reports latency percentiles.
//!
//! # Layout
//!
//! - [`rest`]: the control-plane scenario: concurrent clients create and end
//!   sessions (or list assistants) through the REST API.
//! - [`voice`]: the voice scenario whatever the transport: callers speak
//!   (or type) their turns and some cut in, timed at the transport;
//!   voice-to-voice, first text, turn, barge-in stop, frame jitter,
//!   failures with reasons.
//! - [`utterance`]: what spoken callers say (a WAV, or a synthetic voiced
//!   signal) and the microphone that plays it in 20 ms frames.
//! - [`voice_ws`]: that scenario over the server's WebSocket transport.
//! - [`voice_rtc`]: that scenario over WebRTC ([`rtc_caller`]: webrtc-rs
//!   callers, Opus both ways, events on a data channel).
//! - [`fake_providers`]: an OpenAI-compatible fake (chat, speech,
//!   transcription) with configurable latency, for the server to talk to.
//! - [`resources`]: the server process's CPU and memory, from `/proc`.
//! - [`report`]: HdrHistogram percentiles per operation, printed and as JSON.
//! - [`html`]: the same report as one self-contained HTML page with inline
//!   SVG charts (percentiles, CPU and memory over time).
//!
//! - [`chat`]: users in group rooms on the live rooms WebSocket, messages
//!   at a steady rate with typing and presence churn; send → ack and
//!   send → delivery at every other member.
//! - [`scenario`]: a run described in a TOML file (`[voice]`, `[chat]`,
//!   both for `mixed`).
//!
//! This crate never links the server: everything goes through HTTP,
//! WebSocket and WebRTC.

pub mod chat;
pub mod fake_providers;
pub mod html;
pub mod report;
pub mod resources;
pub mod rest;
pub mod rtc_caller;
pub mod scenario;
pub mod utterance;
pub mod voice;
pub mod voice_rtc;
pub mod voice_ws;
mod ws_client;
