//! A rooms WebSocket client frame: parsed as the server parses it, and
//! either a message or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palaver_protocol::rooms::{self, ClientMessage};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match rooms::parse(text) {
        Ok(ClientMessage::Send { body, idempotency_key, .. }) => {
            assert!(body.len() + idempotency_key.map_or(0, |k| k.len()) <= text.len());
        }
        Ok(ClientMessage::Typing { .. } | ClientMessage::Presence { .. }) | Err(_) => {}
    }
});
