//! `/v1/rooms`: chat rooms between users of the organization, their members,
//! messages (with attachments by reference, edits, soft deletes and
//! idempotent sends) and read receipts.
//!
//! Who may do what:
//! - A **user** (access token) sees only the rooms they are a member of;
//!   every other room, of this organization or another, is a 404. Members
//!   read and post; only the author edits a message; the author or a room
//!   owner/admin deletes one; owners and admins manage members.
//! - An **API key** has no user. It acts as an administration tool over
//!   every room of its organization: create rooms (naming their users),
//!   add and remove members, read rooms, members and history, and delete
//!   messages. Posting, editing and read receipts need a user: 403.
//! - A session join token reaches nothing here (403, as everywhere but its
//!   own session).
//!
//! A group room may have one assistant of the organization as a member
//! (`assistant_id`, at creation or `PATCH /v1/rooms/{id}` by an owner, admin
//! or API key): it answers users' text messages ([`crate::room_assistant`]).

use actix_web::{HttpResponse, delete, get, patch, post, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_actix_web::service_config::ServiceConfig;

use super::error::{ApiError, ErrorBody, not_found};
use super::extract::{Caller, ValidJson};
use super::{ListQuery, Page, check_len, check_name, nullable, page_request, utc};
use crate::db::StoreError;
use crate::ids::{AssistantId, OrgId, RoomId, RoomMessageId, UserId};
use crate::model::{AttachmentKind, RoomKind, RoomRole};
use crate::state::AppState;
use crate::store::rooms::{Member, NewRoomMessage, Room, RoomMessage};
use crate::store::{self};

/// Longest message body, in characters.
pub const MESSAGE_MAX_CHARS: usize = 4000;
/// Most attachments on one message.
pub const ATTACHMENTS_MAX: usize = 10;
const URL_MAX_CHARS: usize = 2048;
const NAME_MAX_CHARS: usize = 200;
const IDEMPOTENCY_KEY_MAX_CHARS: usize = 200;
/// Most users named when a room is created.
const MEMBER_IDS_MAX: usize = 100;

pub fn configure(cfg: &mut ServiceConfig<'_>) {
    cfg.service(create_room)
        .service(list_rooms)
        .service(get_room)
        .service(update_room)
        .service(list_members)
        .service(add_member)
        .service(remove_member)
        .service(post_message)
        .service(list_messages)
        .service(edit_message)
        .service(delete_message)
        .service(mark_read);
}

/// A room as the caller sees it.
#[derive(Debug, Serialize, ToSchema)]
pub struct RoomView {
    pub id: RoomId,
    pub kind: RoomKind,
    /// Group rooms only.
    pub name: Option<String>,
    /// Direct rooms only: the two users, lower id first.
    pub user_ids: Option<Vec<UserId>>,
    /// Absent when an API key created it.
    pub created_by_user_id: Option<UserId>,
    /// The assistant that answers in the room (group rooms); absent when
    /// there is none.
    pub assistant_id: Option<AssistantId>,
    /// The newest message (deleted or not); absent before the first.
    pub last_message_id: Option<RoomMessageId>,
    pub created_at: DateTime<Utc>,
    /// Changes with every new message.
    pub updated_at: DateTime<Utc>,
    /// The caller's role in the room; absent for API keys.
    pub role: Option<RoomRole>,
    /// The caller's read position; absent for API keys and before the
    /// first read.
    pub last_read_message_id: Option<RoomMessageId>,
    /// Others' messages, not deleted, newer than the caller's read
    /// position; absent for API keys.
    pub unread_count: Option<i64>,
}

impl RoomView {
    fn new(room: Room, member: Option<&Member>, unread: Option<i64>) -> Self {
        let user_ids = room.direct_key.as_deref().and_then(|key| {
            let (a, b) = key.split_once(':')?;
            Some(vec![UserId(a.parse().ok()?), UserId(b.parse().ok()?)])
        });
        RoomView {
            id: room.id,
            kind: room.kind,
            name: room.name,
            user_ids,
            created_by_user_id: room.created_by_user_id,
            assistant_id: room.assistant_id,
            last_message_id: room.last_message_id,
            created_at: utc(room.created_at),
            updated_at: utc(room.updated_at),
            role: member.map(|m| m.role),
            last_read_message_id: member.and_then(|m| read_position(m.last_read_message_id)),
            unread_count: member.map(|_| unread.unwrap_or(0)),
        }
    }
}

fn read_position(stored: i64) -> Option<RoomMessageId> {
    (stored > 0).then_some(RoomMessageId(stored))
}

/// A member of a room: a user, or the room's assistant (`assistant_id`
/// instead of `user_id`; first on the first page of the member list).
#[derive(Debug, Serialize, ToSchema)]
pub struct MemberView {
    /// Absent for the room's assistant.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<UserId>,
    /// The room's assistant; absent for users.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub assistant_id: Option<AssistantId>,
    /// The assistant is a `member`.
    pub role: RoomRole,
    /// How far this member has read; absent before their first read.
    pub last_read_message_id: Option<RoomMessageId>,
    pub joined_at: DateTime<Utc>,
    /// Live presence (`online`, `away`, `offline`; see `GET /v1/rooms/ws`).
    /// In the member list only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<crate::rooms_live::Status>,
    /// When the member was last connected, if they are offline and this
    /// node saw them. In the member list only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<DateTime<Utc>>,
}

impl From<Member> for MemberView {
    fn from(m: Member) -> Self {
        MemberView {
            user_id: Some(m.user_id),
            assistant_id: None,
            role: m.role,
            last_read_message_id: read_position(m.last_read_message_id),
            joined_at: utc(m.joined_at),
            status: None,
            last_seen: None,
        }
    }
}

/// A file a message refers to; the server stores the reference only.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Attachment {
    pub kind: AttachmentKind,
    /// `https://` or `http://`, at most 2048 characters.
    pub url: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RoomMessageView {
    pub id: RoomMessageId,
    pub room_id: RoomId,
    /// The user who sent it; absent for the assistant's replies and once
    /// the sender's user was deleted.
    pub sender_id: Option<UserId>,
    /// The room's assistant, when it sent the message.
    pub sender_assistant_id: Option<AssistantId>,
    /// Absent when the message has only attachments, and once deleted.
    pub body: Option<String>,
    pub attachments: Vec<Attachment>,
    /// The sender's idempotency key, if they gave one.
    pub idempotency_key: Option<String>,
    pub created_at: DateTime<Utc>,
    pub edited_at: Option<DateTime<Utc>>,
    pub deleted: bool,
    pub deleted_at: Option<DateTime<Utc>>,
}

impl From<RoomMessage> for RoomMessageView {
    fn from(m: RoomMessage) -> Self {
        let attachments = serde_json::from_str(&m.attachments).unwrap_or_else(|err| {
            tracing::warn!(%err, message = %m.id, "stored attachments are not valid; returning []");
            Vec::new()
        });
        RoomMessageView {
            id: m.id,
            room_id: m.room_id,
            sender_id: m.sender_user_id,
            sender_assistant_id: m.sender_assistant_id,
            body: m.body,
            attachments,
            idempotency_key: m.idempotency_key,
            created_at: utc(m.created_at),
            edited_at: m.edited_at.map(utc),
            deleted: m.deleted_at.is_some(),
            deleted_at: m.deleted_at.map(utc),
        }
    }
}

/// Loads a room the caller may see: any room of the organization for an
/// API key, a room they are a member of for a user; 404 otherwise.
async fn room_access(
    state: &AppState,
    caller: &Caller,
    id: RoomId,
) -> Result<(Room, Option<Member>), ApiError> {
    caller.require_org_credential()?;
    let (org, user) = (caller.org, caller.user_id());
    state
        .db
        .run(move |c| store::rooms::access(c, org, id, user))
        .await
        .map_err(not_found("room", id))
}

/// Sends a stored message's change live to the room's connected members
/// (`GET /v1/rooms/ws`).
async fn publish(state: &AppState, room: RoomId, kind: &str, view: &RoomMessageView) {
    let event = serde_json::json!({ "type": kind, "message": view });
    state.rooms.publish(&state.db, room, event).await;
}

/// The caller's user, for what only a person can do.
fn need_user(caller: &Caller, what: &str) -> Result<UserId, ApiError> {
    caller.user_id().ok_or_else(|| {
        ApiError::Forbidden(format!(
            "{what} needs a user: an API key has no user; sign in as one (POST /v1/auth/login) \
             and use their access token"
        ))
    })
}

/// Whether the caller may manage members and delete others' messages: an
/// API key, or a room owner or admin.
fn moderates(member: Option<&Member>) -> bool {
    member.is_none_or(|m| m.role.moderates())
}

/// Refuses user ids that are not users of `org` (404, like any id of
/// another organization).
async fn check_users(state: &AppState, org: OrgId, ids: Vec<UserId>) -> Result<(), ApiError> {
    let missing = state
        .db
        .run(move |c| store::rooms::missing_users(c, org, &ids))
        .await?;
    match missing.first() {
        Some(id) => Err(ApiError::NotFound(format!("no user with id {id}"))),
        None => Ok(()),
    }
}

/// Refuses an assistant id that is not a (not deleted) assistant of `org`:
/// 404, like any id of another organization.
async fn check_assistant(state: &AppState, org: OrgId, id: AssistantId) -> Result<(), ApiError> {
    state
        .db
        .run(move |c| store::assistants::get(c, org, id))
        .await
        .map(drop)
        .map_err(|err| match err {
            StoreError::NotFound => {
                ApiError::NotFound(format!("assistant_id: no assistant with id {id}"))
            }
            other => other.into(),
        })
}

/// A room to create. One struct for both kinds, so that each error names
/// its field; the OpenAPI document shows the two kinds apart (see its
/// [`utoipa::PartialSchema`] below).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRoom {
    pub kind: RoomKind,
    /// Group rooms: 1 to 200 characters. Direct rooms have none.
    pub name: Option<String>,
    /// Direct room: the other user (a user caller) or both users (an API
    /// key). Group room: the members besides the owner (at most 100).
    #[serde(default)]
    pub member_ids: Vec<UserId>,
    /// Group room created with an API key: the user who owns it (required).
    /// A user creating a room owns it.
    pub owner_id: Option<UserId>,
    /// Group room: an assistant of the organization that joins the room and
    /// answers users' text messages.
    pub assistant_id: Option<AssistantId>,
}

impl utoipa::ToSchema for CreateRoom {}

/// The two kinds apart, with the limits [`create_room`] enforces for an
/// API key (a user may also leave themself out of a direct room's
/// `member_ids`, and leave out `owner_id`).
impl utoipa::PartialSchema for CreateRoom {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        let id = |description: &str| serde_json::json!({"type": "integer", "format": "int64", "description": description});
        let doc = serde_json::json!({
            "description": "A room to create; `kind` says which.",
            "oneOf": [
                {
                    "type": "object",
                    "description": "Between two users of the organization; creating it again \
                        answers the existing room (200).",
                    "required": ["kind", "member_ids"],
                    "additionalProperties": false,
                    "properties": {
                        "kind": {"type": "string", "enum": ["direct"]},
                        "member_ids": {
                            "type": "array", "items": id("A user id"),
                            "minItems": 2, "maxItems": 2, "uniqueItems": true,
                            "description": "The two users. A user creating the room may give \
                                only the other one.",
                        },
                        "name": {"type": "null"},
                        "owner_id": {"type": "null"},
                        "assistant_id": {"type": "null"},
                    },
                },
                {
                    "type": "object",
                    "description": "A named room: its owner and up to 100 other members, \
                        optionally with an assistant that answers text messages.",
                    "required": ["kind", "name", "owner_id"],
                    "additionalProperties": false,
                    "properties": {
                        "kind": {"type": "string", "enum": ["group"]},
                        "name": {
                            "type": "string", "minLength": 1, "maxLength": NAME_MAX_CHARS,
                            "pattern": r"[^ \t\n\r]",
                            "description": "Spaces, tabs and line breaks around it are dropped.",
                        },
                        "member_ids": {
                            "type": "array", "items": id("A user id"), "maxItems": MEMBER_IDS_MAX,
                            "description": "The members besides the owner (repeats count once).",
                        },
                        "owner_id": id("The user who owns the room. A user creating the room \
                            owns it and may leave this out (or give their own id)."),
                        "assistant_id": {
                            "type": ["integer", "null"], "format": "int64",
                            "description": "An assistant of the organization",
                        },
                    },
                },
            ],
        });
        serde_json::from_value(doc).expect("the CreateRoom schema is a valid schema")
    }
}

#[utoipa::path(
    tag = "rooms",
    request_body = CreateRoom,
    responses(
        (status = 201, body = RoomView, description = "Created"),
        (status = 200, body = RoomView, description = "The direct room of these two users already existed"),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody, description = "A user or assistant id that is not in the organization"),
        (status = 422, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[post("/rooms")]
async fn create_room(
    state: web::Data<AppState>,
    caller: Caller,
    body: ValidJson<CreateRoom>,
) -> Result<HttpResponse, ApiError> {
    caller.require_org_credential()?;
    let input = body.0;
    let (org, user) = (caller.org, caller.user_id());
    if input.member_ids.len() > MEMBER_IDS_MAX {
        return Err(ApiError::validation(
            "member_ids",
            format!(
                "member_ids names {} users; the limit is {MEMBER_IDS_MAX}",
                input.member_ids.len()
            ),
        ));
    }
    let mut others: Vec<UserId> = Vec::new();
    for id in &input.member_ids {
        if Some(*id) != user && !others.contains(id) {
            others.push(*id);
        }
    }
    match input.kind {
        RoomKind::Direct => {
            let repeated = matches!(input.member_ids.as_slice(), [a, b] if a == b);
            if input.member_ids.len() > 2 || repeated {
                return Err(ApiError::validation(
                    "member_ids",
                    "a direct room names its two users, each once",
                ));
            }
            if input.name.is_some() {
                return Err(ApiError::validation("name", "a direct room has no name"));
            }
            if input.owner_id.is_some() {
                return Err(ApiError::validation(
                    "owner_id",
                    "a direct room has no owner; its two users are members",
                ));
            }
            if input.assistant_id.is_some() {
                return Err(ApiError::validation(
                    "assistant_id",
                    "a direct room is between two users; an assistant joins group rooms",
                ));
            }
            let (a, b) = match (user, others.as_slice()) {
                (Some(me), [other]) => (me, *other),
                (None, [a, b]) => (*a, *b),
                (Some(_), _) => {
                    return Err(ApiError::validation(
                        "member_ids",
                        "a direct room is between you and one other user: give their id in \
                         member_ids",
                    ));
                }
                (None, _) => {
                    return Err(ApiError::validation(
                        "member_ids",
                        "a direct room created with an API key needs exactly two distinct user \
                         ids in member_ids",
                    ));
                }
            };
            check_users(&state, org, vec![a, b]).await?;
            let (room, created) = state
                .db
                .run(move |c| store::rooms::open_direct(c, org, a, b, user))
                .await?;
            let member = match user {
                Some(me) => {
                    let id = room.id;
                    state
                        .db
                        .run(move |c| store::rooms::member(c, id, me))
                        .await?
                }
                None => None,
            };
            let unread = match (user, &member) {
                (Some(me), Some(_)) => {
                    let id = room.id;
                    state
                        .db
                        .run(move |c| store::rooms::unread_counts(c, me, &[id]))
                        .await?
                        .get(&id)
                        .copied()
                }
                _ => None,
            };
            if created {
                tracing::info!(room = %room.id, org = %org, kind = "direct", "room created");
            }
            let view = RoomView::new(room, member.as_ref(), unread);
            Ok(if created {
                HttpResponse::Created().json(view)
            } else {
                HttpResponse::Ok().json(view)
            })
        }
        RoomKind::Group => {
            let name = input
                .name
                .ok_or_else(|| ApiError::validation("name", "a group room needs a name"))?;
            let name = check_name("name", &name, NAME_MAX_CHARS)?.to_owned();
            let owner = match (user, input.owner_id) {
                (Some(me), None) => me,
                (Some(me), Some(owner)) if owner == me => me,
                (Some(_), Some(_)) => {
                    return Err(ApiError::validation(
                        "owner_id",
                        "a user creating a room owns it; owner_id is for API keys",
                    ));
                }
                (None, Some(owner)) => owner,
                (None, None) => {
                    return Err(ApiError::validation(
                        "owner_id",
                        "an API key has no user: name the room's owner in owner_id",
                    ));
                }
            };
            let mut members = vec![(owner, RoomRole::Owner)];
            members.extend(
                others
                    .into_iter()
                    .filter(|id| *id != owner)
                    .map(|id| (id, RoomRole::Member)),
            );
            check_users(&state, org, members.iter().map(|(id, _)| *id).collect()).await?;
            let assistant = input.assistant_id;
            if let Some(id) = assistant {
                check_assistant(&state, org, id).await?;
            }
            let (room, rows) = state
                .db
                .run(move |c| store::rooms::create_group(c, org, &name, user, &members, assistant))
                .await?;
            tracing::info!(room = %room.id, org = %org, kind = "group", members = rows.len(), "room created");
            let member = user.and_then(|me| rows.iter().find(|m| m.user_id == me));
            Ok(HttpResponse::Created().json(RoomView::new(room, member, None)))
        }
    }
}

#[utoipa::path(
    tag = "rooms",
    params(ListQuery),
    responses((status = 200, body = Page<RoomView>), (status = 403, body = ErrorBody)),
    security(("bearer" = []))
)]
#[get("/rooms")]
async fn list_rooms(
    state: web::Data<AppState>,
    caller: Caller,
    query: web::Query<ListQuery>,
) -> Result<web::Json<Page<RoomView>>, ApiError> {
    caller.require_org_credential()?;
    let page = query.page()?;
    let org = caller.org;
    let Some(me) = caller.user_id() else {
        let rows = state
            .db
            .run(move |c| store::rooms::list_all(c, org, page))
            .await?;
        return Ok(web::Json(Page::new(rows, |room| {
            RoomView::new(room, None, None)
        })));
    };
    let (rows, next, unread) = state
        .db
        .run(move |c| {
            let (rows, next) = store::rooms::list_for_user(c, org, me, page)?;
            let ids: Vec<RoomId> = rows.iter().map(|(room, _)| room.id).collect();
            let unread = store::rooms::unread_counts(c, me, &ids)?;
            Ok::<_, StoreError>((rows, next, unread))
        })
        .await?;
    Ok(web::Json(Page::new((rows, next), |(room, member)| {
        let count = unread.get(&room.id).copied();
        RoomView::new(room, Some(&member), count)
    })))
}

#[utoipa::path(
    tag = "rooms",
    params(("id" = i64, Path, description = "Room id")),
    responses((status = 200, body = RoomView), (status = 404, body = ErrorBody)),
    security(("bearer" = []))
)]
#[get("/rooms/{id}")]
async fn get_room(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<i64>,
) -> Result<web::Json<RoomView>, ApiError> {
    let id = RoomId(*id);
    let (room, member) = room_access(&state, &caller, id).await?;
    let unread = unread_in(&state, &caller, id).await?;
    Ok(web::Json(RoomView::new(room, member.as_ref(), unread)))
}

/// The caller's unread count in room `id` (none for an API key).
async fn unread_in(state: &AppState, caller: &Caller, id: RoomId) -> Result<Option<i64>, ApiError> {
    let Some(me) = caller.user_id() else {
        return Ok(None);
    };
    Ok(state
        .db
        .run(move |c| store::rooms::unread_counts(c, me, &[id]))
        .await?
        .get(&id)
        .copied())
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateRoom {
    /// An assistant of the organization to join the room (replacing the one
    /// it has), or `null` to remove it. Absent: unchanged.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<i64>)]
    pub assistant_id: Option<Option<AssistantId>>,
}

#[utoipa::path(
    tag = "rooms",
    params(("id" = i64, Path, description = "Room id")),
    request_body = UpdateRoom,
    responses(
        (status = 200, body = RoomView),
        (status = 403, body = ErrorBody, description = "Not a room owner or admin"),
        (status = 404, body = ErrorBody, description = "No such room, or an assistant id that is not in the organization"),
        (status = 409, body = ErrorBody, description = "A direct room"),
        (status = 422, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[patch("/rooms/{id}")]
async fn update_room(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<i64>,
    body: ValidJson<UpdateRoom>,
) -> Result<web::Json<RoomView>, ApiError> {
    let id = RoomId(*id);
    let (mut room, member) = room_access(&state, &caller, id).await?;
    if let Some(assistant) = body.0.assistant_id {
        if room.kind == RoomKind::Direct {
            return Err(ApiError::Conflict(
                "a direct room is between two users; an assistant joins group rooms".into(),
            ));
        }
        if !moderates(member.as_ref()) {
            return Err(ApiError::Forbidden(
                "only a room owner or admin changes the room's assistant".into(),
            ));
        }
        let org = caller.org;
        if let Some(assistant) = assistant {
            check_assistant(&state, org, assistant).await?;
        }
        room = state
            .db
            .run(move |c| store::rooms::set_assistant(c, org, id, assistant))
            .await
            .map_err(not_found("room", id))?;
        tracing::info!(room = %id, org = %org, assistant = ?assistant, "room assistant set");
    }
    let unread = unread_in(&state, &caller, id).await?;
    Ok(web::Json(RoomView::new(room, member.as_ref(), unread)))
}

#[utoipa::path(
    tag = "rooms",
    params(("id" = i64, Path, description = "Room id"), ListQuery),
    responses((status = 200, body = Page<MemberView>), (status = 404, body = ErrorBody)),
    security(("bearer" = []))
)]
#[get("/rooms/{id}/members")]
async fn list_members(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<i64>,
    query: web::Query<ListQuery>,
) -> Result<web::Json<Page<MemberView>>, ApiError> {
    let id = RoomId(*id);
    let (room, _) = room_access(&state, &caller, id).await?;
    let page = query.page()?;
    let first_page = page.after.is_none();
    let rows = state
        .db
        .run(move |c| store::rooms::members(c, id, page))
        .await?;
    let users = rows.0.iter().map(|m| m.user_id).collect();
    let mut presence = state.rooms.presence(users).await.into_iter();
    let mut members = Page::new(rows, |member| {
        let mut view = MemberView::from(member);
        if let Some(p) = presence.next() {
            view.status = Some(p.status);
            view.last_seen = p.last_seen;
        }
        view
    });
    if let (true, Some(assistant)) = (first_page, room.assistant_id) {
        members.data.insert(
            0,
            MemberView {
                user_id: None,
                assistant_id: Some(assistant),
                role: RoomRole::Member,
                last_read_message_id: None,
                joined_at: utc(room.assistant_added_at.unwrap_or(room.created_at)),
                status: None,
                last_seen: None,
            },
        );
    }
    Ok(web::Json(members))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddMember {
    pub user_id: UserId,
    /// Default `member`. Only an owner (or an API key) adds owners.
    pub role: Option<RoomRole>,
}

#[utoipa::path(
    tag = "rooms",
    params(("id" = i64, Path, description = "Room id")),
    request_body = AddMember,
    responses(
        (status = 201, body = MemberView), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "Already a member, or a direct room"),
    ),
    security(("bearer" = []))
)]
#[post("/rooms/{id}/members")]
async fn add_member(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<i64>,
    body: ValidJson<AddMember>,
) -> Result<HttpResponse, ApiError> {
    let id = RoomId(*id);
    let (room, member) = room_access(&state, &caller, id).await?;
    if room.kind == RoomKind::Direct {
        return Err(ApiError::Conflict(
            "a direct room has exactly its two users; create a group room for more".into(),
        ));
    }
    if !moderates(member.as_ref()) {
        return Err(ApiError::Forbidden(
            "only a room owner or admin adds members".into(),
        ));
    }
    let role = body.0.role.unwrap_or(RoomRole::Member);
    if role == RoomRole::Owner && member.as_ref().is_some_and(|m| m.role != RoomRole::Owner) {
        return Err(ApiError::Forbidden("only a room owner adds owners".into()));
    }
    let user = body.0.user_id;
    check_users(&state, caller.org, vec![user]).await?;
    let row = state
        .db
        .run(move |c| store::rooms::add_member(c, id, user, role))
        .await?;
    Ok(HttpResponse::Created().json(MemberView::from(row)))
}

#[utoipa::path(
    tag = "rooms",
    params(
        ("id" = i64, Path, description = "Room id"),
        ("user_id" = i64, Path, description = "The member's user id"),
    ),
    responses(
        (status = 204, description = "Removed"), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "A direct room"),
    ),
    security(("bearer" = []))
)]
#[delete("/rooms/{id}/members/{user_id}")]
async fn remove_member(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<(i64, i64)>,
) -> Result<HttpResponse, ApiError> {
    let (id, user) = (RoomId(path.0), UserId(path.1));
    let (room, member) = room_access(&state, &caller, id).await?;
    if room.kind == RoomKind::Direct {
        return Err(ApiError::Conflict(
            "a direct room always has its two users; nobody can leave it".into(),
        ));
    }
    let leaving = caller.user_id() == Some(user);
    if !leaving && !moderates(member.as_ref()) {
        return Err(ApiError::Forbidden(
            "only a room owner or admin removes other members".into(),
        ));
    }
    let target = state
        .db
        .run(move |c| store::rooms::member(c, id, user))
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("user {user} is not a member of room {id}")))?;
    if !leaving
        && target.role == RoomRole::Owner
        && member.as_ref().is_some_and(|m| m.role != RoomRole::Owner)
    {
        return Err(ApiError::Forbidden(
            "only a room owner removes an owner".into(),
        ));
    }
    state
        .db
        .run(move |c| store::rooms::remove_member(c, id, user))
        .await
        .map_err(|err| match err {
            StoreError::NotFound => {
                ApiError::NotFound(format!("user {user} is not a member of room {id}"))
            }
            other => other.into(),
        })?;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PostMessage {
    /// At most 4000 characters. Optional when there are attachments.
    pub body: Option<String>,
    /// At most 10.
    #[serde(default)]
    pub attachments: Vec<Attachment>,
    /// Sending again with the same key (same sender, same room) returns the
    /// message stored the first time, with 200 instead of 201.
    pub idempotency_key: Option<String>,
}

pub(crate) fn check_body(body: &str) -> Result<(), ApiError> {
    check_len("body", body, 0, MESSAGE_MAX_CHARS)
}

fn check_attachments(attachments: &[Attachment]) -> Result<(), ApiError> {
    if attachments.len() > ATTACHMENTS_MAX {
        return Err(ApiError::validation(
            "attachments",
            format!(
                "{} attachments; the limit is {ATTACHMENTS_MAX}",
                attachments.len()
            ),
        ));
    }
    for (i, attachment) in attachments.iter().enumerate() {
        let field = format!("attachments[{i}].url");
        let url = attachment.url.as_str();
        check_len(&field, url, 1, URL_MAX_CHARS)?;
        let host = url
            .strip_prefix("https://")
            .or_else(|| url.strip_prefix("http://"))
            .and_then(|rest| rest.split(['/', '?', '#']).next());
        let valid = host.is_some_and(|h| !h.is_empty())
            && !url.chars().any(|ch| ch.is_whitespace() || ch.is_control());
        if !valid {
            return Err(ApiError::validation(
                field,
                "an attachment url must be an http:// or https:// URL with a host and no spaces",
            ));
        }
    }
    Ok(())
}

#[utoipa::path(
    tag = "rooms",
    params(("id" = i64, Path, description = "Room id")),
    request_body = PostMessage,
    responses(
        (status = 201, body = RoomMessageView, description = "Stored"),
        (status = 200, body = RoomMessageView, description = "Already stored under this idempotency key"),
        (status = 403, body = ErrorBody, description = "An API key: posting needs a user"),
        (status = 404, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 422, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[post("/rooms/{id}/messages")]
async fn post_message(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<i64>,
    body: ValidJson<PostMessage>,
) -> Result<HttpResponse, ApiError> {
    let id = RoomId(*id);
    let (room, _) = room_access(&state, &caller, id).await?;
    let sender = need_user(&caller, "posting a message")?;
    let input = body.0;
    let text = input.body.filter(|b| !b.trim().is_empty());
    if let Some(text) = &text {
        check_body(text)?;
    }
    check_attachments(&input.attachments)?;
    if text.is_none() && input.attachments.is_empty() {
        return Err(ApiError::validation(
            "body",
            "body must not be empty (unless the message has attachments)",
        ));
    }
    if let Some(key) = &input.idempotency_key {
        check_len("idempotency_key", key, 1, IDEMPOTENCY_KEY_MAX_CHARS)?;
    }
    let attachments = serde_json::to_string(&input.attachments)
        .map_err(|e| ApiError::Internal(format!("attachments did not serialize: {e}")))?;
    let has_text = text.is_some();
    let (message, created) = state
        .db
        .run(move |c| {
            store::rooms::post(
                c,
                &NewRoomMessage {
                    room_id: id,
                    sender_user_id: Some(sender),
                    sender_assistant_id: None,
                    body: text.as_deref(),
                    attachments: &attachments,
                    idempotency_key: input.idempotency_key.as_deref(),
                    created_at: store::now(),
                },
            )
        })
        .await?;
    let view = RoomMessageView::from(message);
    if created {
        state.rooms.stop_typing(id, sender);
        publish(&state, id, "message.new", &view).await;
        if has_text {
            crate::room_assistant::user_posted(&state, &room);
        }
    }
    Ok(if created {
        HttpResponse::Created().json(view)
    } else {
        HttpResponse::Ok().json(view)
    })
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// Items per page, 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// Newest first: `next_cursor` of the previous page.
    #[param(pattern = r"^[0-9]{1,18}$")]
    pub after: Option<String>,
    /// Oldest first: the messages after this message id (what a
    /// reconnecting client missed); pass `next_cursor` as `since` for more.
    /// Not with `after`.
    #[param(pattern = r"^[0-9]{1,18}$")]
    pub since: Option<String>,
}

#[utoipa::path(
    tag = "rooms",
    params(("id" = i64, Path, description = "Room id"), HistoryQuery),
    responses(
        (status = 200, body = Page<RoomMessageView>), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[get("/rooms/{id}/messages")]
async fn list_messages(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<i64>,
    query: web::Query<HistoryQuery>,
) -> Result<web::Json<Page<RoomMessageView>>, ApiError> {
    let id = RoomId(*id);
    room_access(&state, &caller, id).await?;
    let page = page_request(query.limit, query.after.as_deref())?;
    let rows = match query.since.as_deref() {
        Some(since) => {
            if page.after.is_some() {
                return Err(ApiError::validation(
                    "since",
                    "use either after (newest first) or since (oldest first), not both",
                ));
            }
            let since = super::parse_cursor(since).ok_or_else(|| {
                ApiError::validation("since", "since must be a message id (0 for the beginning)")
            })?;
            state
                .db
                .run(move |c| store::rooms::since(c, id, RoomMessageId(since), page.limit))
                .await?
        }
        None => {
            state
                .db
                .run(move |c| store::rooms::history(c, id, page))
                .await?
        }
    };
    Ok(web::Json(Page::new(rows, RoomMessageView::from)))
}

/// The message `id` of `room`, or 404 naming both.
async fn room_message(
    state: &AppState,
    room: RoomId,
    id: RoomMessageId,
) -> Result<RoomMessage, ApiError> {
    state
        .db
        .run(move |c| store::rooms::get_message(c, room, id))
        .await
        .map_err(|err| match err {
            StoreError::NotFound => {
                ApiError::NotFound(format!("no message with id {id} in room {room}"))
            }
            other => other.into(),
        })
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EditMessage {
    /// The new text, 1 to 4000 characters.
    pub body: String,
}

#[utoipa::path(
    tag = "rooms",
    params(
        ("id" = i64, Path, description = "Room id"),
        ("message_id" = i64, Path, description = "Message id"),
    ),
    request_body = EditMessage,
    responses(
        (status = 200, body = RoomMessageView), (status = 403, body = ErrorBody, description = "Not the author"),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "Deleted"),
        (status = 422, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[patch("/rooms/{id}/messages/{message_id}")]
async fn edit_message(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<(i64, i64)>,
    body: ValidJson<EditMessage>,
) -> Result<web::Json<RoomMessageView>, ApiError> {
    let (id, message_id) = (RoomId(path.0), RoomMessageId(path.1));
    room_access(&state, &caller, id).await?;
    let editor = need_user(&caller, "editing a message")?;
    let text = body.0.body;
    if text.trim().is_empty() {
        return Err(ApiError::validation(
            "body",
            "body must not be empty; delete the message instead",
        ));
    }
    check_body(&text)?;
    let current = room_message(&state, id, message_id).await?;
    if current.sender_user_id != Some(editor) {
        return Err(ApiError::Forbidden(
            "only the author can edit a message".into(),
        ));
    }
    let row = state
        .db
        .run(move |c| store::rooms::edit_message(c, id, message_id, &text))
        .await?;
    let view = RoomMessageView::from(row);
    publish(&state, id, "message.updated", &view).await;
    Ok(web::Json(view))
}

#[utoipa::path(
    tag = "rooms",
    params(
        ("id" = i64, Path, description = "Room id"),
        ("message_id" = i64, Path, description = "Message id"),
    ),
    responses(
        (status = 200, body = RoomMessageView, description = "Deleted (or already deleted)"),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[delete("/rooms/{id}/messages/{message_id}")]
async fn delete_message(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<(i64, i64)>,
) -> Result<web::Json<RoomMessageView>, ApiError> {
    let (id, message_id) = (RoomId(path.0), RoomMessageId(path.1));
    let (_, member) = room_access(&state, &caller, id).await?;
    let current = room_message(&state, id, message_id).await?;
    let author = current.sender_user_id.is_some() && current.sender_user_id == caller.user_id();
    if !author && !moderates(member.as_ref()) {
        return Err(ApiError::Forbidden(
            "only the author or a room owner or admin can delete a message".into(),
        ));
    }
    let already = current.deleted_at.is_some();
    let row = state
        .db
        .run(move |c| store::rooms::delete_message(c, id, message_id))
        .await?;
    let view = RoomMessageView::from(row);
    if !already {
        publish(&state, id, "message.deleted", &view).await;
    }
    Ok(web::Json(view))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MarkRead {
    /// The newest message the member has seen; a receipt for an older one
    /// than already recorded changes nothing.
    pub message_id: RoomMessageId,
}

/// A member's read position.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReadView {
    pub room_id: RoomId,
    pub user_id: UserId,
    pub last_read_message_id: RoomMessageId,
    /// Unread messages left in the room for this member.
    pub unread_count: i64,
}

#[utoipa::path(
    tag = "rooms",
    params(("id" = i64, Path, description = "Room id")),
    request_body = MarkRead,
    responses(
        (status = 200, body = ReadView), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody, description = "No such room, or no such message in it"),
    ),
    security(("bearer" = []))
)]
#[post("/rooms/{id}/read")]
async fn mark_read(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<i64>,
    body: ValidJson<MarkRead>,
) -> Result<web::Json<ReadView>, ApiError> {
    let id = RoomId(*id);
    room_access(&state, &caller, id).await?;
    let me = need_user(&caller, "a read receipt")?;
    let message = body.0.message_id;
    let (receipt, unread) = state
        .db
        .run(move |c| {
            let receipt = store::rooms::mark_read(c, id, me, message)?;
            let unread = store::rooms::unread_counts(c, me, &[id])?;
            Ok((receipt, unread.get(&id).copied().unwrap_or(0)))
        })
        .await
        .map_err(|err| match err {
            StoreError::NotFound => {
                ApiError::NotFound(format!("no message with id {message} in room {id}"))
            }
            other => other.into(),
        })?;
    if receipt.moved {
        let event = serde_json::json!({
            "type": "read.receipt",
            "room_id": receipt.room_id,
            "user_id": receipt.user_id,
            "last_read_message_id": receipt.last_read_message_id,
        });
        state.rooms.publish(&state.db, id, event).await;
    }
    Ok(web::Json(ReadView {
        room_id: receipt.room_id,
        user_id: receipt.user_id,
        last_read_message_id: receipt.last_read_message_id,
        unread_count: unread,
    }))
}
