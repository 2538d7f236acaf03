//! A voice session's client text message (WebSocket text frame or WebRTC
//! data-channel message): parsed as the server parses it, and either a
//! message or an error, never a panic. A message's text comes from the
//! frame (JSON escapes only shorten it).
#![no_main]

use libfuzzer_sys::fuzz_target;
use palaver_protocol::session::{self, ClientMessage};

fuzz_target!(|data: &[u8]| {
    // WebSocket text frames and data-channel strings are UTF-8.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = session::audio_format_request(text);
    match session::parse(text) {
        Ok(ClientMessage::UserMessage { text: said }) => assert!(said.len() <= text.len()),
        Ok(ClientMessage::EndSession {}) | Err(_) => {}
    }
});
