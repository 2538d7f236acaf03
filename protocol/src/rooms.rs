//! The rooms WebSocket's client messages.

use serde::Deserialize;

/// A client frame on the rooms WebSocket. Ids are the API's numbers.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum ClientMessage {
    /// Typing started (`typing` true, the default) or stopped in a room.
    Typing {
        room_id: i64,
        #[serde(default = "yes")]
        typing: bool,
    },
    /// A message into a room.
    Send {
        room_id: i64,
        body: String,
        idempotency_key: Option<String>,
    },
    /// The user is away, or back.
    Presence { status: AwayOrOnline },
}

fn yes() -> bool {
    true
}

/// What a client may say of its own presence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AwayOrOnline {
    Away,
    Online,
}

/// Reads one client frame, or says why it is not one.
pub fn parse(text: &str) -> Result<ClientMessage, serde_json::Error> {
    serde_json::from_str(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_parse_and_anything_else_is_refused() {
        assert_eq!(
            parse(r#"{"type":"typing","room_id":3}"#).ok(),
            Some(ClientMessage::Typing {
                room_id: 3,
                typing: true
            })
        );
        assert_eq!(
            parse(r#"{"type":"send","room_id":3,"body":"hi"}"#).ok(),
            Some(ClientMessage::Send {
                room_id: 3,
                body: "hi".into(),
                idempotency_key: None
            })
        );
        assert_eq!(
            parse(r#"{"type":"presence","status":"away"}"#).ok(),
            Some(ClientMessage::Presence {
                status: AwayOrOnline::Away
            })
        );
        for bad in [
            r#"{"type":"typing"}"#,
            r#"{"type":"send","room_id":3}"#,
            r#"{"type":"presence","status":"offline"}"#,
            r#"{"type":"typing","room_id":3,"x":1}"#,
            "null",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
