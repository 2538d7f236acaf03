//! palaver-media: audio for Palaver's voice sessions.
//!
//! # Layout
//!
//! - [`frame`]: the pipeline's unit of audio, 20 ms of 16 kHz mono PCM16,
//!   and its level (RMS, dBFS).
//! - [`codec`]: Opus decoder (with concealment and FEC recovery) and encoder
//!   at 48 kHz or 16 kHz (wideband) mono, 20 ms packets, into caller-provided buffers.
//! - [`resample`]: 48 kHz <-> 16 kHz per frame, and any TTS rate (16, 22.05,
//!   24 kHz) to 48 kHz frames from chunks of any length.
//! - [`vad`]: the [`VoiceActivity`] trait, WebRTC's VAD behind it, and the
//!   sans-IO [`SpeechDetector`] that reports speech onset and offset.
//! - [`jitter`]: the inbound jitter buffer: reorders RTP packets by sequence
//!   number and says, per 20 ms slot, play, recover by FEC, or conceal.
//! - [`pacer`]: the sans-IO paced sender: one outbound frame per 20 ms
//!   tick, cleared at once on barge-in, counting what went out.
//! - [`pipeline`]: one session's [`InboundPath`] (Opus -> 16 kHz frame ->
//!   VAD) and [`OutboundPath`] (TTS PCM -> 48 kHz -> pacer -> Opus), on
//!   preallocated buffers.
//! - [`wav`]: WAV files to and from mono PCM16, and to 16 kHz frames.
//! - [`rtc`]: the WebRTC endpoint (str0m: ICE-lite, DTLS, SRTP, SCTP) on one
//!   UDP socket for every peer, and `CallAudio`, a call's Opus codecs.
//!
//! Everything but [`rtc`] is sans-IO and synchronous: time is an argument,
//! there are no sockets, tasks or clocks; the endpoint runs str0m (itself
//! sans-IO) on its own thread. This crate knows nothing of sessions, HTTP or
//! storage; `palaver-actors` builds on it.

pub mod codec;
pub mod frame;
pub mod jitter;
pub mod pacer;
pub mod pipeline;
pub mod resample;
pub mod rtc;
pub mod vad;
pub mod wav;

pub use frame::{AudioFrame, FRAME_MS, FRAME_SAMPLES, SAMPLE_RATE};
pub use pipeline::{InboundPath, OutboundPath};
pub use vad::{SpeechDetector, VoiceActivity};
