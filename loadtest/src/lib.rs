//! palaver-loadtest: drives a running Palaver server over the wire, like real
//! clients do, and reports latency percentiles.
//!
//! # Layout
//!
//! - [`rest`]: the control-plane scenario: concurrent clients create and end
//!   sessions (or list assistants) through the REST API.
//! - [`voice_ws`]: voice sessions over the server's WebSocket transport:
//!   callers type their turns (and some cut in), timed at the transport.
//! - [`fake_providers`]: an OpenAI-compatible fake (chat, speech,
//!   transcription) with configurable latency, for the server to talk to.
//! - [`resources`]: the server process's CPU and memory, from `/proc`.
//! - [`report`]: HdrHistogram percentiles per operation, printed and as JSON.
//!
//! The WebRTC and chat scenarios join with that work. This crate never links
//! the server: everything goes through HTTP and WebSocket.

pub mod fake_providers;
pub mod report;
pub mod resources;
pub mod rest;
pub mod rtc_caller;
pub mod voice_ws;
