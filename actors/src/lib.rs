//! palaver-actors: the actors of a Palaver node and the ports they call.
//!
//! # Layout
//!
//! - [`conversation`]: the sans-IO conversation state machine of one voice
//!   session: turn taking, barge-in, `heard_text`, per-turn latencies.
//! - [`session`]: `SessionActor`, one voice session: the conversation wired
//!   to provider streams, the paced audio sender, storage and the client.
//! - [`ports`]: the provider traits (speech to text, language model, text to
//!   speech) a session calls; adapters live in the server crate.
//!
//! `SessionActor` (the actix actor wrapping a [`conversation::Conversation`]),
//! `RoomActor`, `PresenceActor`, the node registry and the provider ports
//! join this crate with the realtime voice work. The server crate
//! (`palaver`) implements the ports; this crate depends only on
//! `palaver-media`, never on the server.

pub mod conversation;
pub mod ports;
pub mod session;

pub use palaver_media as media;
