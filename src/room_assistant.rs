//! The assistant of a chat room: when a user posts a text message in a room
//! that has one (`rooms.assistant_id`), the assistant answers with its
//! language model, found through the same provider registry voice sessions
//! use ([`crate::voice::language_model`]).
//!
//! - **Never on the request path.** The reply is generated in a spawned
//!   task: the user's `201` or `send.ack` never waits for the model.
//! - **One reply at a time per room** (on this node). A message that arrives
//!   while the assistant is answering is *coalesced*: once the reply is
//!   stored, the assistant answers once more from the history as it is then
//!   (every message that came meanwhile), instead of once per message. So a
//!   room costs at most one running and one pending reply, however fast its
//!   users type.
//! - **The conversation** is the room's newest [`HISTORY_TURNS`] messages
//!   with a body (deleted ones left out), users' as `user` turns and
//!   assistants' as `assistant` turns, after the assistant's
//!   `system_prompt`, with its `llm` model, temperature and `max_tokens`.
//!   The assistant answers only a user: when the newest message is a
//!   user's, or (the coalesced reply) when users wrote after what its last
//!   reply read; that reply is stored after those messages, so for the
//!   model it goes back to where it was asked ([`conversation`]). Never its
//!   own message.
//! - **Live frames**, published on the room bus like every room event (so
//!   they cross nodes): `typing` for the assistant (`assistant_id` instead of
//!   `user_id`) while it generates, the stored reply as `message.new`, then
//!   `typing` false. A provider that fails or times out (the whole reply is
//!   bounded by `providers.request_timeout_ms`) stores nothing: members get
//!   `{"type":"error","code":<provider error code>,"message",…,"room_id"}`,
//!   the typing ends and the failure is logged with the room id.
//!
//! This module owns that loop only: it reads and writes through
//! [`store::rooms`] and publishes through [`LiveRooms`]; it knows nothing of
//! HTTP or sockets.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::Duration;

use actix::Addr;
use futures_util::StreamExt;
use palaver_actors::conversation::{ChatMessage, ChatRole};
use palaver_actors::ports::{LlmRequest, ProviderError};
use serde_json::json;

use crate::api::rooms::{MESSAGE_MAX_CHARS, RoomMessageView};
use crate::config::Settings;
use crate::db::{Db, StoreError};
use crate::ids::{AssistantId, OrgId, RoomId, RoomMessageId};
use crate::rooms_live::{LiveRooms, RoomHub};
use crate::state::AppState;
use crate::store::assistants::{Assistant, AssistantSettings};
use crate::store::rooms::{NewRoomMessage, Room, RoomMessage};
use crate::store::{self};

/// How many of the room's newest messages the assistant reads.
pub const HISTORY_TURNS: i64 = 20;

/// A room being answered on a node: the node's hub (several servers can
/// share one process, as in the tests) and the room.
type Answering = (Addr<RoomHub>, RoomId);

/// The rooms whose assistant is answering, each with whether another
/// message arrived meanwhile (answer again when done). Entries live only
/// while a reply task runs.
static ANSWERING: LazyLock<Mutex<HashMap<Answering, bool>>> = LazyLock::new(Default::default);

fn answering() -> std::sync::MutexGuard<'static, HashMap<Answering, bool>> {
    ANSWERING.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A user's text message was stored (and published) in `room`: if the room
/// has an assistant, have it answer, in the background.
pub fn user_posted(state: &AppState, room: &Room) {
    if room.assistant_id.is_none() {
        return;
    }
    let key = (state.rooms.hub.clone(), room.id);
    {
        let mut rooms = answering();
        if let Some(again) = rooms.get_mut(&key) {
            *again = true;
            return;
        }
        rooms.insert(key.clone(), false);
    }
    let replier = Replier {
        db: state.db.clone(),
        settings: state.settings.clone(),
        rooms: state.rooms.clone(),
    };
    let (org, id) = (room.organization_id, room.id);
    tokio::spawn(async move {
        let mut turn = Turn { key, done: false };
        let mut previous = None;
        loop {
            previous = replier.answer(org, id, previous).await;
            let mut rooms = answering();
            match rooms.get_mut(&turn.key) {
                Some(again) if *again => *again = false,
                _ => {
                    rooms.remove(&turn.key);
                    turn.done = true;
                    return;
                }
            }
        }
    });
}

/// The answering entry of one reply task. Dropped before the task removed
/// it itself (a panic, a runtime shutting down), it removes it, so the room
/// is never left waiting for a task that is gone.
struct Turn {
    key: Answering,
    done: bool,
}

impl Drop for Turn {
    fn drop(&mut self) {
        if !self.done {
            answering().remove(&self.key);
        }
    }
}

/// What one reply answered, for the coalesced reply after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Answered {
    /// The newest message the reply's model read.
    read_up_to: RoomMessageId,
    /// The stored reply.
    reply: RoomMessageId,
}

/// The turns to send, oldest first, or `None` when there is nobody to
/// answer. `turns` are the room's newest messages in id order; `previous`
/// is what this task's last reply answered, if it stored one. Messages
/// users wrote while that reply was generated have lower ids than the
/// reply, so it is moved back to just after what it read: the model sees
/// its answer to the earlier messages, then the ones it has yet to answer.
fn conversation(
    mut turns: Vec<RoomMessage>,
    previous: Option<Answered>,
) -> Option<Vec<RoomMessage>> {
    let by_user = |m: &RoomMessage| m.sender_assistant_id.is_none();
    let Some(previous) = previous else {
        return turns.last().is_some_and(by_user).then_some(turns);
    };
    if !turns
        .iter()
        .any(|m| by_user(m) && m.id > previous.read_up_to)
    {
        return None;
    }
    if let Some(at) = turns.iter().position(|m| m.id == previous.reply) {
        let reply = turns.remove(at);
        let after = turns
            .iter()
            .position(|m| m.id > previous.read_up_to)
            .unwrap_or(turns.len());
        turns.insert(after, reply);
    }
    Some(turns)
}

/// What a reply task needs of the server.
#[derive(Debug, Clone)]
struct Replier {
    db: Db,
    settings: Arc<Settings>,
    rooms: LiveRooms,
}

impl Replier {
    /// Answers the room once, if it still has an assistant and a user to
    /// answer (see [`conversation`]); what it answered, if it stored a reply.
    async fn answer(
        &self,
        org: OrgId,
        room: RoomId,
        previous: Option<Answered>,
    ) -> Option<Answered> {
        let loaded = self
            .db
            .run(move |c| {
                let Some(id) = store::rooms::get(c, org, room)?.assistant_id else {
                    return Ok(None);
                };
                let assistant = match store::assistants::get(c, org, id) {
                    Ok(assistant) => assistant,
                    // Deleted since it joined: the room has nobody to answer.
                    Err(StoreError::NotFound) => return Ok(None),
                    Err(err) => return Err(err),
                };
                let turns = store::rooms::recent_turns(c, room, HISTORY_TURNS)?;
                Ok(Some((assistant, turns)))
            })
            .await;
        let (assistant, turns) = match loaded {
            Ok(Some(found)) => found,
            Ok(None) => return None,
            Err(err) => {
                tracing::warn!(room = %room, %err, "room assistant not loaded; no reply");
                return None;
            }
        };
        let turns = conversation(turns, previous)?;
        let read_up_to = turns.iter().map(|m| m.id).max()?;
        let id = assistant.id;
        self.typing(room, id, true).await;
        let answered = match reply(&self.settings, &assistant, &turns).await {
            Ok(text) => self
                .store_reply(room, id, text)
                .await
                .map(|reply| Answered { read_up_to, reply }),
            Err(err) => {
                tracing::warn!(
                    room = %room, assistant = %id, code = err.code(), %err,
                    "room assistant could not answer"
                );
                let event = json!({
                    "type": "error",
                    "code": err.code(),
                    "message": err.to_string(),
                    "room_id": room,
                    "assistant_id": id,
                });
                self.rooms.publish(&self.db, room, event).await;
                None
            }
        };
        self.typing(room, id, false).await;
        answered
    }

    async fn typing(&self, room: RoomId, assistant: AssistantId, typing: bool) {
        let event = json!({
            "type": "typing",
            "room_id": room,
            "assistant_id": assistant,
            "typing": typing,
        });
        self.rooms.publish(&self.db, room, event).await;
    }

    /// Stores the reply as the assistant's message, then publishes it; its
    /// id, unless it could not be stored.
    async fn store_reply(
        &self,
        room: RoomId,
        assistant: AssistantId,
        text: String,
    ) -> Option<RoomMessageId> {
        let stored = self
            .db
            .run(move |c| {
                store::rooms::post(
                    c,
                    &NewRoomMessage {
                        room_id: room,
                        sender_user_id: None,
                        sender_assistant_id: Some(assistant),
                        body: Some(&text),
                        attachments: "[]",
                        idempotency_key: None,
                        created_at: store::now(),
                    },
                )
            })
            .await;
        match stored {
            Ok((message, _)) => {
                let id = message.id;
                tracing::info!(room = %room, assistant = %assistant, message = %id, "room assistant answered");
                let view = RoomMessageView::from(message);
                let event = json!({ "type": "message.new", "message": view });
                self.rooms.publish(&self.db, room, event).await;
                Some(id)
            }
            // The room was deleted meanwhile, or the database is away: the
            // reply is lost, nothing half-stored.
            Err(err) => {
                tracing::warn!(room = %room, assistant = %assistant, %err, "room assistant reply not stored");
                None
            }
        }
    }
}

/// The request for the assistant's next turn in a room.
fn llm_request(assistant: &AssistantSettings, turns: &[RoomMessage]) -> LlmRequest {
    let mut messages = Vec::with_capacity(turns.len() + 1);
    if !assistant.system_prompt.trim().is_empty() {
        messages.push(ChatMessage {
            role: ChatRole::System,
            content: assistant.system_prompt.clone(),
        });
    }
    messages.extend(turns.iter().filter_map(|m| {
        let role = if m.sender_assistant_id.is_some() {
            ChatRole::Assistant
        } else {
            ChatRole::User
        };
        Some(ChatMessage {
            role,
            content: m.body.clone()?,
        })
    }));
    LlmRequest {
        model: assistant.llm_model.clone(),
        messages,
        temperature: assistant.llm_temperature,
        max_tokens: u32::try_from(assistant.llm_max_tokens).unwrap_or(256),
    }
}

/// The whole reply, trimmed and cut to a message's length, or why there is
/// none (an empty reply is a protocol error: there is nothing to store).
async fn reply(
    settings: &Settings,
    assistant: &Assistant,
    turns: &[RoomMessage],
) -> Result<String, ProviderError> {
    let model = crate::voice::language_model(settings, &assistant.settings).await?;
    let mut stream = model.stream_reply(llm_request(&assistant.settings, turns));
    let limit_ms = settings.providers.request_timeout_ms.max(1);
    let collect = async {
        let mut text = String::new();
        while let Some(delta) = stream.next().await {
            text.push_str(&delta?);
        }
        Ok::<_, ProviderError>(text)
    };
    let text = tokio::time::timeout(Duration::from_millis(limit_ms), collect)
        .await
        .map_err(|_| ProviderError::Timeout {
            provider: assistant.settings.llm_provider.as_str(),
            after_ms: limit_ms,
        })??;
    let text = text.trim();
    if text.is_empty() {
        return Err(ProviderError::Protocol {
            provider: assistant.settings.llm_provider.as_str(),
            message: "the model's reply was empty".into(),
        });
    }
    Ok(text.chars().take(MESSAGE_MAX_CHARS).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::UserId;

    fn message(id: i64, user: Option<i64>, assistant: Option<i64>, body: &str) -> RoomMessage {
        let at = chrono::DateTime::UNIX_EPOCH.naive_utc();
        RoomMessage {
            id: RoomMessageId(id),
            room_id: RoomId(1),
            sender_user_id: user.map(UserId),
            sender_assistant_id: assistant.map(AssistantId),
            body: Some(body.into()),
            attachments: "[]".into(),
            idempotency_key: None,
            created_at: at,
            edited_at: None,
            deleted_at: None,
        }
    }

    #[test]
    fn the_request_is_the_system_prompt_then_the_turns_by_sender() {
        let mut assistant = crate::api::assistants::default_settings();
        assistant.system_prompt = "You are the front desk.".into();
        assistant.llm_model = "fake-1".into();
        assistant.llm_temperature = 0.3;
        assistant.llm_max_tokens = 99;
        let turns = [
            message(1, Some(7), None, "hi"),
            message(2, None, Some(3), "hello, how can I help?"),
            message(3, Some(8), None, "what time is it?"),
        ];
        let request = llm_request(&assistant, &turns);
        let roles: Vec<ChatRole> = request.messages.iter().map(|m| m.role).collect();
        assert_eq!(
            roles,
            [
                ChatRole::System,
                ChatRole::User,
                ChatRole::Assistant,
                ChatRole::User
            ]
        );
        assert_eq!(request.messages[0].content, "You are the front desk.");
        assert_eq!(request.messages[3].content, "what time is it?");
        assert_eq!(
            (
                request.model.as_str(),
                request.temperature,
                request.max_tokens
            ),
            ("fake-1", 0.3, 99)
        );

        assistant.system_prompt = "  ".into();
        assert_eq!(llm_request(&assistant, &turns).messages.len(), 3);
    }

    fn ids(turns: Option<Vec<RoomMessage>>) -> Option<Vec<i64>> {
        turns.map(|t| t.iter().map(|m| m.id.0).collect())
    }

    #[test]
    fn the_assistant_answers_users_never_itself() {
        let user = |id| message(id, Some(7), None, "hi");
        let mine = |id| message(id, None, Some(3), "hello");
        assert_eq!(ids(conversation(vec![user(1)], None)), Some(vec![1]));
        assert_eq!(ids(conversation(vec![user(1), mine(2)], None)), None);
        assert_eq!(ids(conversation(vec![], None)), None);
        // A deleted user's message is still a user's.
        let orphan = message(3, None, None, "from a deleted user");
        assert_eq!(
            ids(conversation(vec![user(1), mine(2), orphan], None)),
            Some(vec![1, 2, 3])
        );
    }

    #[test]
    fn the_coalesced_reply_reads_its_earlier_answer_where_it_was_asked() {
        let user = |id| message(id, Some(7), None, "hi");
        let mine = |id| message(id, None, Some(3), "hello");
        // 1 was answered by 4; 2 and 3 came while 4 was generated.
        let answered = Answered {
            read_up_to: RoomMessageId(1),
            reply: RoomMessageId(4),
        };
        let turns = vec![user(1), user(2), user(3), mine(4)];
        assert_eq!(
            ids(conversation(turns, Some(answered))),
            Some(vec![1, 4, 2, 3])
        );
        // Nothing came meanwhile: nothing to answer.
        let turns = vec![user(1), mine(4)];
        assert_eq!(ids(conversation(turns, Some(answered))), None);
        // The earlier answer left the window (or was deleted): the rest as is.
        let turns = vec![user(2), user(3)];
        assert_eq!(ids(conversation(turns, Some(answered))), Some(vec![2, 3]));
    }
}
