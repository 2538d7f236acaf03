//! session_messages: the transcript, one row per turn, written as the turn
//! happens.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use crate::db::{Conn, StoreError, WriteTransaction, with_conn};
use crate::ids::{MessageId, SessionId};
use crate::model::MessageRole;
use crate::schema::session_messages;

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = session_messages)]
pub struct Message {
    pub id: MessageId,
    pub session_id: SessionId,
    pub seq: i32,
    pub role: MessageRole,
    pub content: String,
    pub heard_text: Option<String>,
    pub interrupted: bool,
    pub started_at: NaiveDateTime,
    pub ended_at: Option<NaiveDateTime>,
    #[diesel(embed)]
    pub latency: TurnLatency,
}

/// Per-turn latencies in milliseconds, measured at the transport.
#[derive(Debug, Clone, Copy, Default, PartialEq, Queryable, Selectable, Insertable)]
#[diesel(table_name = session_messages)]
pub struct TurnLatency {
    /// End of user speech -> final transcript.
    pub transcript_latency_ms: Option<i32>,
    /// End of user speech -> first LLM token.
    pub first_token_latency_ms: Option<i32>,
    /// End of user speech -> first TTS audio.
    pub first_audio_latency_ms: Option<i32>,
    /// End of user speech -> first audio frame sent.
    pub voice_to_voice_ms: Option<i32>,
}

/// A message to append; the store assigns the next `seq`.
#[derive(Debug, Clone)]
pub struct NewMessage<'a> {
    pub role: MessageRole,
    pub content: &'a str,
    pub heard_text: Option<&'a str>,
    pub interrupted: bool,
    pub started_at: NaiveDateTime,
    pub ended_at: Option<NaiveDateTime>,
    pub latency: TurnLatency,
}

#[derive(Insertable)]
#[diesel(table_name = session_messages)]
struct MessageRow<'a> {
    session_id: SessionId,
    seq: i32,
    role: MessageRole,
    content: &'a str,
    heard_text: Option<&'a str>,
    interrupted: bool,
    started_at: NaiveDateTime,
    ended_at: Option<NaiveDateTime>,
    #[diesel(embed)]
    latency: TurnLatency,
}

/// Appends a message with the next sequence number of its session. The
/// caller has already checked that the session belongs to its organization.
pub fn append(
    conn: &mut Conn<'_>,
    session: SessionId,
    new: &NewMessage<'_>,
) -> Result<Message, StoreError> {
    with_conn!(conn, |c| {
        c.write_transaction(|c| {
            let last: Option<i32> = session_messages::table
                .filter(session_messages::session_id.eq(session))
                .select(diesel::dsl::max(session_messages::seq))
                .first(c)?;
            let row = MessageRow {
                session_id: session,
                seq: last.unwrap_or(0) + 1,
                role: new.role,
                content: new.content,
                heard_text: new.heard_text,
                interrupted: new.interrupted,
                started_at: new.started_at,
                ended_at: new.ended_at,
                latency: new.latency,
            };
            diesel::insert_into(session_messages::table)
                .values(&row)
                .returning(Message::as_returning())
                .get_result(c)
                .map_err(StoreError::from)
        })
    })
}

/// Messages in order of `seq`, those after `after_seq`, at most `limit`
/// (plus one, to tell whether more follow).
pub fn list(
    conn: &mut Conn<'_>,
    session: SessionId,
    after_seq: i32,
    limit: i64,
) -> Result<(Vec<Message>, Option<i32>), StoreError> {
    let limit = limit.clamp(1, super::MAX_PAGE);
    let mut rows = with_conn!(conn, |c| {
        session_messages::table
            .filter(session_messages::session_id.eq(session))
            .filter(session_messages::seq.gt(after_seq))
            .order(session_messages::seq)
            .limit(limit + 1)
            .select(Message::as_select())
            .load(c)
    })?;
    if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        let next = rows.last().map(|m| m.seq);
        Ok((rows, next))
    } else {
        Ok((rows, None))
    }
}
