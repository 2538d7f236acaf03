//! palaver-actors: the actors of a Palaver node and the ports they call.
//!
//! This crate will own `SessionActor` (the per-session orchestrator around a
//! sans-IO conversation state machine), `RoomActor`, `PresenceActor`, the
//! node registry, and the provider (STT, LLM, TTS) and storage traits those
//! actors call. The server crate (`palaver`) implements the ports; this crate
//! depends only on `palaver-media`, never on the server.
//!
//! It is empty until the realtime voice work lands: nothing here is used by
//! the foundation (REST, storage, auth).

pub use palaver_media as media;
