//! What clients send on Palaver's live sockets, parsed. The server reads
//! every client text frame through these functions, and the fuzz targets
//! (`fuzz/`) feed them whatever a stranger could send; nothing here panics
//! on any input.
//!
//! - [`session`]: a voice session's WebSocket and WebRTC data channel.
//! - [`rooms`]: the rooms WebSocket.

pub mod rooms;
pub mod session;
