//! A voice session's client messages (WebSocket text frames and WebRTC
//! data-channel messages).

use serde::Deserialize;

/// A client text message. `EndSession` has braces so that unknown fields
/// are refused there too (serde lets a unit variant of an internally
/// tagged enum ignore them).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ClientMessage {
    /// A typed turn.
    UserMessage { text: String },
    /// Hang up.
    EndSession {},
}

/// Reads one client message, or says why it is not one.
pub fn parse(text: &str) -> Result<ClientMessage, serde_json::Error> {
    serde_json::from_str(text)
}

/// Audio encodings a WebSocket client may choose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// 16 kHz mono PCM16 little-endian, 640 bytes a frame (the default).
    Pcm16,
    /// One Opus packet (48 kHz clock, mono) a frame.
    Opus,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AudioFormatRequest {
    #[serde(rename = "type")]
    kind: String,
    encoding: Encoding,
}

/// The encoding asked for by a WebSocket's `{"type":"audio-format",
/// "encoding":…}`, if `text` is one; anything else (a malformed one
/// included) is left to [`parse`], which explains.
pub fn audio_format_request(text: &str) -> Option<Encoding> {
    let request: AudioFormatRequest = serde_json::from_str(text).ok()?;
    (request.kind == "audio-format").then_some(request.encoding)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_parse_and_anything_else_is_refused() {
        assert_eq!(
            parse(r#"{"type":"user-message","text":"hi"}"#).ok(),
            Some(ClientMessage::UserMessage { text: "hi".into() })
        );
        assert_eq!(
            parse(r#"{"type":"end-session"}"#).ok(),
            Some(ClientMessage::EndSession {})
        );
        for bad in [
            r#"{"type":"end-session","x":1}"#,
            r#"{"type":"user-message"}"#,
            r#"{"type":"shout"}"#,
            "[]",
            "",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn audio_format_requests_name_an_encoding() {
        assert_eq!(
            audio_format_request(r#"{"type":"audio-format","encoding":"opus"}"#),
            Some(Encoding::Opus)
        );
        assert_eq!(
            audio_format_request(r#"{"type":"audio-format","encoding":"pcm16"}"#),
            Some(Encoding::Pcm16)
        );
        assert_eq!(
            audio_format_request(r#"{"type":"audio-format","encoding":"mp3"}"#),
            None
        );
        assert_eq!(audio_format_request(r#"{"type":"end-session"}"#), None);
    }
}
