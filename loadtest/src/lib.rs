//! palaver-loadtest: drives a running Palaver server over the wire, like real
//! clients do, and reports latency percentiles.
//!
//! # Layout
//!
//! - [`rest`]: the control-plane scenario: concurrent clients create and end
//!   sessions (or list assistants) through the REST API.
//! - [`report`]: HdrHistogram percentiles per operation, printed and as JSON.
//!
//! The voice and chat scenarios (WebRTC callers, barge-in, chat rooms) join
//! with the realtime voice and chat work. This crate never links the server:
//! everything goes through HTTP.

pub mod report;
pub mod rest;
