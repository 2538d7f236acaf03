//! rooms, room_members, room_messages: chat between users of one
//! organization.
//!
//! A room row carries its `organization_id`; members and messages belong to
//! a room. Every entry point that starts from ids a client sent goes through
//! [`get`] or [`access`] with the caller's [`OrgId`] first; the functions
//! taking only a [`RoomId`] expect that check to have happened.
//!
//! A room may have one assistant of its organization (`rooms.assistant_id`,
//! checked against the org by the caller, see [`set_assistant`]); its
//! replies are messages with `sender_assistant_id` instead of a user.
//!
//! Writes return what a live fan-out needs (the stored message with its
//! `room_id`, whether it was new, the member row that changed, the receipt
//! and whether it moved), so a room actor can broadcast exactly what was
//! stored, after it was stored.

use std::collections::HashMap;

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::PageRequest;
use crate::db::{Conn, StoreError, WriteTransaction, with_conn};
use crate::ids::{AssistantId, OrgId, RoomId, RoomMessageId, UserId};
use crate::model::{RoomKind, RoomRole};
use crate::schema::{room_members, room_messages, rooms, users};

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = rooms)]
pub struct Room {
    pub id: RoomId,
    pub organization_id: OrgId,
    pub kind: RoomKind,
    /// Set for group rooms.
    pub name: Option<String>,
    /// `"<lower user id>:<higher user id>"` for direct rooms.
    pub direct_key: Option<String>,
    pub created_by_user_id: Option<UserId>,
    /// The newest message, deleted or not.
    pub last_message_id: Option<RoomMessageId>,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
    /// The assistant that answers in the room, if any.
    pub assistant_id: Option<AssistantId>,
    /// When the assistant joined (set with `assistant_id`).
    pub assistant_added_at: Option<NaiveDateTime>,
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = room_members)]
pub struct Member {
    pub room_id: RoomId,
    pub user_id: UserId,
    pub role: RoomRole,
    /// 0 until the member has read something.
    pub last_read_message_id: i64,
    pub joined_at: NaiveDateTime,
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = room_messages)]
pub struct RoomMessage {
    pub id: RoomMessageId,
    pub room_id: RoomId,
    /// `None` once the sender's user was deleted, and for the assistant's
    /// messages.
    pub sender_user_id: Option<UserId>,
    /// Set when the room's assistant sent it.
    pub sender_assistant_id: Option<AssistantId>,
    /// `None` once deleted.
    pub body: Option<String>,
    /// JSON array of `{kind, url}`, written by the server.
    pub attachments: String,
    pub idempotency_key: Option<String>,
    pub created_at: NaiveDateTime,
    pub edited_at: Option<NaiveDateTime>,
    pub deleted_at: Option<NaiveDateTime>,
}

/// One page of rows and the cursor of the next page, if any.
pub type Paged<T> = (Vec<T>, Option<i64>);

/// The one direct room a pair of users can have, whoever opened it.
pub fn direct_key(a: UserId, b: UserId) -> String {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    format!("{lo}:{hi}")
}

#[derive(Insertable)]
#[diesel(table_name = rooms)]
struct RoomRow<'a> {
    organization_id: OrgId,
    kind: RoomKind,
    name: Option<&'a str>,
    direct_key: Option<&'a str>,
    created_by_user_id: Option<UserId>,
    created_at: NaiveDateTime,
    updated_at: NaiveDateTime,
    assistant_id: Option<AssistantId>,
    assistant_added_at: Option<NaiveDateTime>,
}

/// The ids among `ids` that are not users of `org`.
pub fn missing_users(
    conn: &mut Conn<'_>,
    org: OrgId,
    ids: &[UserId],
) -> Result<Vec<UserId>, StoreError> {
    let found: Vec<UserId> = with_conn!(conn, |c| {
        users::table
            .filter(users::organization_id.eq(org))
            .filter(users::id.eq_any(ids))
            .select(users::id)
            .load(c)
    })?;
    Ok(ids
        .iter()
        .copied()
        .filter(|id| !found.contains(id))
        .collect())
}

/// Creates a group room with its members and, if given, its assistant (the
/// caller checked they are users and an assistant of `org`).
pub fn create_group(
    conn: &mut Conn<'_>,
    org: OrgId,
    name: &str,
    created_by: Option<UserId>,
    members: &[(UserId, RoomRole)],
    assistant: Option<AssistantId>,
) -> Result<(Room, Vec<Member>), StoreError> {
    let now = super::now();
    let row = RoomRow {
        organization_id: org,
        kind: RoomKind::Group,
        name: Some(name),
        direct_key: None,
        created_by_user_id: created_by,
        created_at: now,
        updated_at: now,
        assistant_id: assistant,
        assistant_added_at: assistant.map(|_| now),
    };
    with_conn!(conn, |c| {
        c.write_transaction(|c| {
            let room: Room = diesel::insert_into(rooms::table)
                .values(&row)
                .returning(Room::as_returning())
                .get_result(c)?;
            let mut rows = Vec::with_capacity(members.len());
            for &(user_id, role) in members {
                let member = Member {
                    room_id: room.id,
                    user_id,
                    role,
                    last_read_message_id: 0,
                    joined_at: now,
                };
                diesel::insert_into(room_members::table)
                    .values(&member)
                    .execute(c)?;
                rows.push(member);
            }
            Ok((room, rows))
        })
    })
}

/// The direct room of `a` and `b`, created (with both as members) unless it
/// exists; `true` when it was created now.
pub fn open_direct(
    conn: &mut Conn<'_>,
    org: OrgId,
    a: UserId,
    b: UserId,
    created_by: Option<UserId>,
) -> Result<(Room, bool), StoreError> {
    let key = direct_key(a, b);
    let now = super::now();
    let row = RoomRow {
        organization_id: org,
        kind: RoomKind::Direct,
        name: None,
        direct_key: Some(&key),
        created_by_user_id: created_by,
        created_at: now,
        updated_at: now,
        assistant_id: None,
        assistant_added_at: None,
    };
    let find = |conn: &mut Conn<'_>| -> Result<Option<Room>, StoreError> {
        with_conn!(conn, |c| {
            rooms::table
                .filter(rooms::organization_id.eq(org))
                .filter(rooms::direct_key.eq(&key))
                .select(Room::as_select())
                .first(c)
                .optional()
        })
        .map_err(Into::into)
    };
    let created = with_conn!(conn, |c| {
        c.write_transaction(|c| {
            let existing: Option<Room> = rooms::table
                .filter(rooms::organization_id.eq(org))
                .filter(rooms::direct_key.eq(&key))
                .select(Room::as_select())
                .first(c)
                .optional()?;
            if let Some(room) = existing {
                return Ok::<_, StoreError>((room, false));
            }
            let room: Room = diesel::insert_into(rooms::table)
                .values(&row)
                .returning(Room::as_returning())
                .get_result(c)?;
            for user_id in [a, b] {
                diesel::insert_into(room_members::table)
                    .values(&Member {
                        room_id: room.id,
                        user_id,
                        role: RoomRole::Member,
                        last_read_message_id: 0,
                        joined_at: now,
                    })
                    .execute(c)?;
            }
            Ok((room, true))
        })
    });
    match created {
        // Two Postgres transactions opened the same pair at once: the
        // loser's insert broke the unique key; the winner's room is there.
        Err(StoreError::Conflict(_)) => find(conn)?
            .map(|room| (room, false))
            .ok_or(StoreError::NotFound),
        other => other,
    }
}

/// A room of `org`.
pub fn get(conn: &mut Conn<'_>, org: OrgId, id: RoomId) -> Result<Room, StoreError> {
    with_conn!(conn, |c| {
        rooms::table
            .filter(rooms::organization_id.eq(org))
            .filter(rooms::id.eq(id))
            .select(Room::as_select())
            .first(c)
    })
    .map_err(Into::into)
}

/// Sets (or with `None` removes) the assistant of a room of `org`; the
/// caller checked the assistant is one of `org`'s. Setting the assistant it
/// already has keeps its `assistant_added_at`.
pub fn set_assistant(
    conn: &mut Conn<'_>,
    org: OrgId,
    id: RoomId,
    assistant: Option<AssistantId>,
) -> Result<Room, StoreError> {
    let now = super::now();
    with_conn!(conn, |c| {
        c.write_transaction(|c| {
            let current: Room = rooms::table
                .filter(rooms::organization_id.eq(org))
                .filter(rooms::id.eq(id))
                .select(Room::as_select())
                .first(c)?;
            if current.assistant_id == assistant {
                return Ok(current);
            }
            diesel::update(rooms::table.find(id))
                .set((
                    rooms::assistant_id.eq(assistant),
                    rooms::assistant_added_at.eq(assistant.map(|_| now)),
                ))
                .returning(Room::as_returning())
                .get_result(c)
                .map_err(StoreError::from)
        })
    })
}

/// `user`'s membership of `room`, if any.
pub fn member(
    conn: &mut Conn<'_>,
    room: RoomId,
    user: UserId,
) -> Result<Option<Member>, StoreError> {
    with_conn!(conn, |c| {
        room_members::table
            .filter(room_members::room_id.eq(room))
            .filter(room_members::user_id.eq(user))
            .select(Member::as_select())
            .first(c)
            .optional()
    })
    .map_err(Into::into)
}

/// A room of `org` as `user` may see it: with their membership, or
/// [`StoreError::NotFound`] when they are not a member (the same answer as
/// for a room that does not exist). Without a user (an API key) the room
/// alone.
pub fn access(
    conn: &mut Conn<'_>,
    org: OrgId,
    id: RoomId,
    user: Option<UserId>,
) -> Result<(Room, Option<Member>), StoreError> {
    let room = get(conn, org, id)?;
    match user {
        None => Ok((room, None)),
        Some(user) => match member(conn, id, user)? {
            Some(m) => Ok((room, Some(m))),
            None => Err(StoreError::NotFound),
        },
    }
}

/// Unread messages per room for `user`: others' messages, not deleted,
/// newer than the member's last read one. Rooms with none are absent.
pub fn unread_counts(
    conn: &mut Conn<'_>,
    user: UserId,
    room_ids: &[RoomId],
) -> Result<HashMap<RoomId, i64>, StoreError> {
    if room_ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<(RoomId, i64)> = with_conn!(conn, |c| {
        room_messages::table
            .inner_join(
                room_members::table.on(room_members::room_id
                    .eq(room_messages::room_id)
                    .and(room_members::user_id.eq(user))),
            )
            .filter(room_messages::room_id.eq_any(room_ids))
            .filter(room_messages::id.gt(room_members::last_read_message_id))
            .filter(room_messages::deleted_at.is_null())
            .filter(
                room_messages::sender_user_id
                    .ne(user)
                    .or(room_messages::sender_user_id.is_null()),
            )
            .group_by(room_messages::room_id)
            .select((room_messages::room_id, diesel::dsl::count_star()))
            .load(c)
    })?;
    Ok(rows.into_iter().collect())
}

/// The rooms `user` is a member of, newest first, with their membership.
pub fn list_for_user(
    conn: &mut Conn<'_>,
    org: OrgId,
    user: UserId,
    page: PageRequest,
) -> Result<Paged<(Room, Member)>, StoreError> {
    let rows = with_conn!(conn, |c| {
        let mut query = rooms::table
            .inner_join(room_members::table)
            .filter(rooms::organization_id.eq(org))
            .filter(room_members::user_id.eq(user))
            .select((Room::as_select(), Member::as_select()))
            .order(rooms::id.desc())
            .limit(page.fetch_limit())
            .into_boxed();
        if let Some(after) = page.after {
            query = query.filter(rooms::id.lt(after));
        }
        query.load::<(Room, Member)>(c)
    })?;
    Ok(page.finish(rows, |(r, _)| r.id.0))
}

/// Every room of `org`, newest first.
pub fn list_all(
    conn: &mut Conn<'_>,
    org: OrgId,
    page: PageRequest,
) -> Result<Paged<Room>, StoreError> {
    let rows = with_conn!(conn, |c| {
        let mut query = rooms::table
            .filter(rooms::organization_id.eq(org))
            .select(Room::as_select())
            .order(rooms::id.desc())
            .limit(page.fetch_limit())
            .into_boxed();
        if let Some(after) = page.after {
            query = query.filter(rooms::id.lt(after));
        }
        query.load(c)
    })?;
    Ok(page.finish(rows, |r| r.id.0))
}

/// Members of a room, highest user id first, paged by user id.
pub fn members(
    conn: &mut Conn<'_>,
    room: RoomId,
    page: PageRequest,
) -> Result<Paged<Member>, StoreError> {
    let rows = with_conn!(conn, |c| {
        let mut query = room_members::table
            .filter(room_members::room_id.eq(room))
            .select(Member::as_select())
            .order(room_members::user_id.desc())
            .limit(page.fetch_limit())
            .into_boxed();
        if let Some(after) = page.after {
            query = query.filter(room_members::user_id.lt(after));
        }
        query.load(c)
    })?;
    Ok(page.finish(rows, |m| m.user_id.0))
}

/// Every member's user id: who a room event fans out to.
pub fn member_ids(conn: &mut Conn<'_>, room: RoomId) -> Result<Vec<UserId>, StoreError> {
    with_conn!(conn, |c| {
        room_members::table
            .filter(room_members::room_id.eq(room))
            .select(room_members::user_id)
            .order(room_members::user_id)
            .load(c)
    })
    .map_err(Into::into)
}

/// Adds a member; one already in the room is [`StoreError::Conflict`].
pub fn add_member(
    conn: &mut Conn<'_>,
    room: RoomId,
    user: UserId,
    role: RoomRole,
) -> Result<Member, StoreError> {
    let member = Member {
        room_id: room,
        user_id: user,
        role,
        last_read_message_id: 0,
        joined_at: super::now(),
    };
    let inserted = with_conn!(conn, |c| {
        diesel::insert_into(room_members::table)
            .values(&member)
            .execute(c)
    });
    match inserted {
        Ok(_) => Ok(member),
        Err(err) => Err(match StoreError::from(err) {
            StoreError::Conflict(_) => {
                StoreError::Conflict(format!("user {user} is already a member of room {room}"))
            }
            other => other,
        }),
    }
}

/// Removes a member and returns the row removed.
pub fn remove_member(
    conn: &mut Conn<'_>,
    room: RoomId,
    user: UserId,
) -> Result<Member, StoreError> {
    with_conn!(conn, |c| {
        diesel::delete(
            room_members::table
                .filter(room_members::room_id.eq(room))
                .filter(room_members::user_id.eq(user)),
        )
        .returning(Member::as_returning())
        .get_result(c)
    })
    .map_err(Into::into)
}

/// A message to post; `attachments` is the JSON array to store.
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = room_messages)]
pub struct NewRoomMessage<'a> {
    pub room_id: RoomId,
    pub sender_user_id: Option<UserId>,
    pub sender_assistant_id: Option<AssistantId>,
    pub body: Option<&'a str>,
    pub attachments: &'a str,
    pub idempotency_key: Option<&'a str>,
    pub created_at: NaiveDateTime,
}

/// Stores a message, unless its sender already posted one with the same
/// idempotency key in this room: then that one comes back with `false`.
/// The sender has read up to their own message; the room's
/// `last_message_id` moves to it.
pub fn post(
    conn: &mut Conn<'_>,
    new: &NewRoomMessage<'_>,
) -> Result<(RoomMessage, bool), StoreError> {
    with_conn!(conn, |c| {
        c.write_transaction(|c| {
            if let (Some(key), Some(sender)) = (new.idempotency_key, new.sender_user_id) {
                let existing: Option<RoomMessage> = room_messages::table
                    .filter(room_messages::room_id.eq(new.room_id))
                    .filter(room_messages::sender_user_id.eq(sender))
                    .filter(room_messages::idempotency_key.eq(key))
                    .select(RoomMessage::as_select())
                    .first(c)
                    .optional()?;
                if let Some(message) = existing {
                    return Ok((message, false));
                }
            }
            let message: RoomMessage = diesel::insert_into(room_messages::table)
                .values(new)
                .returning(RoomMessage::as_returning())
                .get_result(c)?;
            diesel::update(rooms::table.find(new.room_id))
                .set((
                    rooms::last_message_id.eq(message.id),
                    rooms::updated_at.eq(message.created_at),
                ))
                .execute(c)?;
            if let Some(sender) = new.sender_user_id {
                diesel::update(
                    room_members::table
                        .filter(room_members::room_id.eq(new.room_id))
                        .filter(room_members::user_id.eq(sender))
                        .filter(room_members::last_read_message_id.lt(message.id.0)),
                )
                .set(room_members::last_read_message_id.eq(message.id.0))
                .execute(c)?;
            }
            Ok((message, true))
        })
    })
}

/// One message of a room (deleted ones too).
pub fn get_message(
    conn: &mut Conn<'_>,
    room: RoomId,
    id: RoomMessageId,
) -> Result<RoomMessage, StoreError> {
    with_conn!(conn, |c| {
        room_messages::table
            .filter(room_messages::room_id.eq(room))
            .filter(room_messages::id.eq(id))
            .select(RoomMessage::as_select())
            .first(c)
    })
    .map_err(Into::into)
}

/// Replaces the body of a message that is not deleted and sets
/// `edited_at`; a deleted one is [`StoreError::InvalidState`].
pub fn edit_message(
    conn: &mut Conn<'_>,
    room: RoomId,
    id: RoomMessageId,
    body: &str,
) -> Result<RoomMessage, StoreError> {
    let now = super::now();
    with_conn!(conn, |c| {
        c.write_transaction(|c| {
            let current: RoomMessage = room_messages::table
                .filter(room_messages::room_id.eq(room))
                .filter(room_messages::id.eq(id))
                .select(RoomMessage::as_select())
                .first(c)?;
            if current.deleted_at.is_some() {
                return Err(StoreError::InvalidState(format!(
                    "message {id} was deleted; it cannot be edited"
                )));
            }
            diesel::update(room_messages::table.find(id))
                .set((
                    room_messages::body.eq(body),
                    room_messages::edited_at.eq(now),
                ))
                .returning(RoomMessage::as_returning())
                .get_result(c)
                .map_err(StoreError::from)
        })
    })
}

/// Soft-deletes a message: body and attachments go, the row stays with
/// `deleted_at`. Deleting a deleted message returns it unchanged.
pub fn delete_message(
    conn: &mut Conn<'_>,
    room: RoomId,
    id: RoomMessageId,
) -> Result<RoomMessage, StoreError> {
    let now = super::now();
    with_conn!(conn, |c| {
        c.write_transaction(|c| {
            let current: RoomMessage = room_messages::table
                .filter(room_messages::room_id.eq(room))
                .filter(room_messages::id.eq(id))
                .select(RoomMessage::as_select())
                .first(c)?;
            if current.deleted_at.is_some() {
                return Ok(current);
            }
            diesel::update(room_messages::table.find(id))
                .set((
                    room_messages::body.eq(None::<String>),
                    room_messages::attachments.eq("[]"),
                    room_messages::deleted_at.eq(now),
                ))
                .returning(RoomMessage::as_returning())
                .get_result(c)
                .map_err(StoreError::from)
        })
    })
}

/// A member's read position after [`mark_read`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadReceipt {
    pub room_id: RoomId,
    pub user_id: UserId,
    pub last_read_message_id: RoomMessageId,
    /// Whether the position moved (a receipt for an older message does not).
    pub moved: bool,
}

/// Moves `user`'s read position in `room` up to `message` (never back). The
/// message must be in the room and `user` a member.
pub fn mark_read(
    conn: &mut Conn<'_>,
    room: RoomId,
    user: UserId,
    message: RoomMessageId,
) -> Result<ReadReceipt, StoreError> {
    with_conn!(conn, |c| {
        c.write_transaction(|c| {
            let exists: i64 = room_messages::table
                .filter(room_messages::room_id.eq(room))
                .filter(room_messages::id.eq(message))
                .count()
                .get_result(c)?;
            if exists == 0 {
                return Err(StoreError::NotFound);
            }
            let moved = diesel::update(
                room_members::table
                    .filter(room_members::room_id.eq(room))
                    .filter(room_members::user_id.eq(user))
                    .filter(room_members::last_read_message_id.lt(message.0)),
            )
            .set(room_members::last_read_message_id.eq(message.0))
            .execute(c)?;
            let last: i64 = room_members::table
                .filter(room_members::room_id.eq(room))
                .filter(room_members::user_id.eq(user))
                .select(room_members::last_read_message_id)
                .first(c)?;
            Ok(ReadReceipt {
                room_id: room,
                user_id: user,
                last_read_message_id: RoomMessageId(last),
                moved: moved > 0,
            })
        })
    })
}

/// History, newest first: messages older than `page.after`.
pub fn history(
    conn: &mut Conn<'_>,
    room: RoomId,
    page: PageRequest,
) -> Result<Paged<RoomMessage>, StoreError> {
    let rows = with_conn!(conn, |c| {
        let mut query = room_messages::table
            .filter(room_messages::room_id.eq(room))
            .select(RoomMessage::as_select())
            .order(room_messages::id.desc())
            .limit(page.fetch_limit())
            .into_boxed();
        if let Some(after) = page.after {
            query = query.filter(room_messages::id.lt(after));
        }
        query.load(c)
    })?;
    Ok(page.finish(rows, |m| m.id.0))
}

/// The newest `limit` messages of a room that still have a body (not
/// deleted, not attachments only), oldest first: the conversation the
/// room's assistant answers.
pub fn recent_turns(
    conn: &mut Conn<'_>,
    room: RoomId,
    limit: i64,
) -> Result<Vec<RoomMessage>, StoreError> {
    let mut rows: Vec<RoomMessage> = with_conn!(conn, |c| {
        room_messages::table
            .filter(room_messages::room_id.eq(room))
            .filter(room_messages::deleted_at.is_null())
            .filter(room_messages::body.is_not_null())
            .select(RoomMessage::as_select())
            .order(room_messages::id.desc())
            .limit(limit)
            .load(c)
    })?;
    rows.reverse();
    Ok(rows)
}

/// What a reconnecting client missed, oldest first: messages newer than
/// `since`, at most `limit`; the cursor is the last id returned.
pub fn since(
    conn: &mut Conn<'_>,
    room: RoomId,
    since: RoomMessageId,
    limit: i64,
) -> Result<Paged<RoomMessage>, StoreError> {
    let page = PageRequest { after: None, limit };
    let rows = with_conn!(conn, |c| {
        room_messages::table
            .filter(room_messages::room_id.eq(room))
            .filter(room_messages::id.gt(since))
            .select(RoomMessage::as_select())
            .order(room_messages::id)
            .limit(page.fetch_limit())
            .load(c)
    })?;
    Ok(page.finish(rows, |m| m.id.0))
}
