//! Small domain enums stored as text in both backends and written in
//! snake_case in JSON.

use std::fmt;
use std::str::FromStr;

use diesel::backend::Backend;
use diesel::deserialize::{self, FromSql, FromSqlRow};
use diesel::expression::AsExpression;
use diesel::serialize::{self, Output, ToSql};
use diesel::sql_types::Text;
use serde::{Deserialize, Serialize};

// `$text` is a `tt`, not a `literal`: a `literal` fragment reaches the
// derive macros wrapped in an invisible group, which serde reads but
// utoipa silently skips, so the OpenAPI document named every value by its
// Rust variant (`Openai`) instead of what the server speaks (`openai`).
macro_rules! text_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:tt),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize,
            AsExpression, FromSqlRow, utoipa::ToSchema,
        )]
        #[diesel(sql_type = Text)]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $text)] $variant),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(format!(
                        "unknown {} `{other}`, expected one of: {}",
                        stringify!($name),
                        [$($text),+].join(", ")
                    )),
                }
            }
        }

        impl<DB: Backend> ToSql<Text, DB> for $name
        where
            str: ToSql<Text, DB>,
        {
            fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, DB>) -> serialize::Result {
                self.as_str().to_sql(out)
            }
        }

        impl<DB: Backend> FromSql<Text, DB> for $name
        where
            String: FromSql<Text, DB>,
        {
            fn from_sql(bytes: DB::RawValue<'_>) -> deserialize::Result<Self> {
                let text = String::from_sql(bytes)?;
                text.parse().map_err(Into::into)
            }
        }
    };
}

text_enum!(
    /// What a user may do inside their organization.
    Role {
        /// Everything, including API keys, users and the organization.
        Admin => "admin",
        /// Every assistant and session of the organization.
        Manager => "manager",
        /// Their own assistants; sessions of any assistant.
        Member => "member",
    }
);

impl Role {
    /// Whether this role may change assistants other users created.
    pub fn manages_others(self) -> bool {
        matches!(self, Role::Admin | Role::Manager)
    }
}

text_enum!(
    /// Where a voice session is in its life.
    SessionStatus {
        /// Created through the API; no caller connected yet.
        Created => "created",
        /// A caller is connected.
        Active => "active",
        /// Ended normally (hang-up, end-session, timeout, API).
        Ended => "ended",
        /// Ended by an error.
        Failed => "failed",
    }
);

impl SessionStatus {
    pub fn is_open(self) -> bool {
        matches!(self, SessionStatus::Created | SessionStatus::Active)
    }
}

text_enum!(
    /// How the caller's audio reaches the server.
    Transport {
        Webrtc => "webrtc",
        Websocket => "websocket",
    }
);

text_enum!(
    /// Who said a transcript message.
    MessageRole {
        System => "system",
        User => "user",
        Assistant => "assistant",
        Tool => "tool",
    }
);

text_enum!(
    /// Language model backends.
    LlmProvider {
        /// The embedded local model: no key, no network.
        Local => "local",
        /// Any OpenAI-compatible chat completions endpoint (OpenAI, Groq,
        /// vLLM, Ollama, llama.cpp server) at `base_url`.
        Openai => "openai",
    }
);

text_enum!(
    /// Speech-to-text backends.
    SttProvider {
        Local => "local",
        Openai => "openai",
        Deepgram => "deepgram",
    }
);

text_enum!(
    /// Text-to-speech backends.
    TtsProvider {
        Local => "local",
        Openai => "openai",
        Elevenlabs => "elevenlabs",
        Fish => "fish",
    }
);

text_enum!(
    /// Whether a chat room is between two users or a group.
    RoomKind {
        /// Exactly two users; at most one per pair.
        Direct => "direct",
        /// Named, any number of members.
        Group => "group",
    }
);

text_enum!(
    /// What a member may do inside a chat room.
    RoomRole {
        /// Everything an admin may, and add or remove admins and owners.
        Owner => "owner",
        /// Add and remove members; delete anyone's messages.
        Admin => "admin",
        /// Read, post, edit and delete their own messages.
        Member => "member",
    }
);

impl RoomRole {
    /// Whether this member may manage members and delete others' messages.
    pub fn moderates(self) -> bool {
        matches!(self, RoomRole::Owner | RoomRole::Admin)
    }
}

text_enum!(
    /// What a chat message attachment refers to.
    AttachmentKind {
        Voice => "voice",
        Image => "image",
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trips_and_unknown_values_name_the_choices() {
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>(), Ok(*role));
        }
        let err = "owner".parse::<Role>().expect_err("unknown role");
        assert!(err.contains("admin, manager, member"), "{err}");
    }
}
