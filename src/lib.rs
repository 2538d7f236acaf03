//! Palaver: a realtime voice session server.
//!
//! # Layout
//!
//! - [`config`]: typed [`Settings`](config::Settings): defaults, TOML file,
//!   `PALAVER_*` environment overrides.
//! - [`db`]: the SQLite / Postgres pools, migrations, and [`Db::run`](db::Db::run),
//!   the one way to run a query off the async threads.
//! - [`schema`], [`ids`], [`model`]: tables, newtype ids, small enums.
//! - [`store`]: queries, one module per table, each scoped by organization.
//! - [`auth`]: API keys, passwords (argon2), JWTs.
//! - [`providers`]: adapters for the provider ports (OpenAI-compatible
//!   chat completions, speech and transcription) and the registry that
//!   hands them out by name.
//! - [`api`]: the HTTP routes, extractors and the error type at the edge.
//! - [`state`]: what handlers share; [`server`]: start and graceful stop.
//! - [`rooms_live`]: this node's live rooms (connections, typing, presence);
//!   [`cluster`]: many nodes as one over Redis (fan-out, presence, session
//!   owners).
//! - [`telemetry`]: logs, metrics, request ids.
//! - [`cli`]: the `palaver` command line.
//!
//! The voice pipeline lives in the `palaver-actors` and `palaver-media`
//! crates; this crate depends on them, never the other way round.

pub mod api;
pub mod auth;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod db;
pub mod ids;
pub mod model;
pub mod providers;
pub mod room_assistant;
pub mod rooms_live;
pub mod schema;
pub mod server;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod voice;
pub mod wire_errors;
