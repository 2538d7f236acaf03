//! sessions

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::PageRequest;
use crate::db::{Conn, StoreError, WriteTransaction, with_conn};
use crate::ids::{AssistantId, OrgId, SessionId, UserId};
use crate::model::{SessionStatus, Transport};
use crate::schema::sessions;

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = sessions)]
pub struct Session {
    pub id: SessionId,
    pub organization_id: OrgId,
    pub assistant_id: AssistantId,
    pub created_by_user_id: Option<UserId>,
    pub status: SessionStatus,
    pub transport: Option<Transport>,
    pub created_at: NaiveDateTime,
    pub started_at: Option<NaiveDateTime>,
    pub ended_at: Option<NaiveDateTime>,
    pub end_reason: Option<String>,
    /// JSON object, the caller's own.
    pub metadata: String,
    /// JSON object written by the voice pipeline.
    pub metrics: String,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = sessions)]
pub struct NewSession<'a> {
    pub organization_id: OrgId,
    pub assistant_id: AssistantId,
    pub created_by_user_id: Option<UserId>,
    pub status: SessionStatus,
    pub transport: Option<Transport>,
    pub created_at: NaiveDateTime,
    pub metadata: &'a str,
    pub metrics: &'a str,
}

/// What bounds how many sessions an organization may hold open.
#[derive(Debug, Clone, Copy)]
pub struct OpenSessionLimit {
    pub max_open: i64,
    /// Sessions still `created` (nobody joined) before this instant no longer
    /// count: their join token has expired.
    pub created_after: NaiveDateTime,
}

/// Creates a session unless the organization is at its limit of open ones;
/// the count and the insert happen under one write lock.
pub fn create(
    conn: &mut Conn<'_>,
    new: &NewSession<'_>,
    limit: OpenSessionLimit,
) -> Result<Session, StoreError> {
    with_conn!(conn, |c| {
        c.write_transaction(|c| {
            let open: i64 = sessions::table
                .filter(sessions::organization_id.eq(new.organization_id))
                .filter(
                    sessions::status
                        .eq(SessionStatus::Active)
                        .or(sessions::status
                            .eq(SessionStatus::Created)
                            .and(sessions::created_at.gt(limit.created_after))),
                )
                .count()
                .get_result(c)?;
            if open >= limit.max_open {
                return Err(StoreError::LimitReached(format!(
                    "this organization already has {open} open sessions (limit {}); end one first",
                    limit.max_open
                )));
            }
            diesel::insert_into(sessions::table)
                .values(new)
                .returning(Session::as_returning())
                .get_result(c)
                .map_err(StoreError::from)
        })
    })
}

pub fn get(conn: &mut Conn<'_>, org: OrgId, id: SessionId) -> Result<Session, StoreError> {
    with_conn!(conn, |c| {
        sessions::table
            .filter(sessions::organization_id.eq(org))
            .filter(sessions::id.eq(id))
            .select(Session::as_select())
            .first(c)
    })
    .map_err(Into::into)
}

/// Optional filters of the session list.
#[derive(Debug, Clone, Copy, Default)]
pub struct SessionFilter {
    pub status: Option<SessionStatus>,
    pub assistant_id: Option<AssistantId>,
}

pub fn list(
    conn: &mut Conn<'_>,
    org: OrgId,
    filter: SessionFilter,
    page: PageRequest,
) -> Result<(Vec<Session>, Option<i64>), StoreError> {
    let rows = with_conn!(conn, |c| {
        let mut query = sessions::table
            .filter(sessions::organization_id.eq(org))
            .select(Session::as_select())
            .order(sessions::id.desc())
            .limit(page.fetch_limit())
            .into_boxed();
        if let Some(status) = filter.status {
            query = query.filter(sessions::status.eq(status));
        }
        if let Some(assistant) = filter.assistant_id {
            query = query.filter(sessions::assistant_id.eq(assistant));
        }
        if let Some(after) = page.after {
            query = query.filter(sessions::id.lt(after));
        }
        query.load(c)
    })?;
    Ok(page.finish(rows, |s| s.id.0))
}

/// Marks an open session ended (or failed) with a reason. Ending a session
/// that already ended is [`StoreError::InvalidState`].
pub fn end(
    conn: &mut Conn<'_>,
    org: OrgId,
    id: SessionId,
    status: SessionStatus,
    reason: &str,
) -> Result<Session, StoreError> {
    debug_assert!(!status.is_open());
    let now = super::now();
    with_conn!(conn, |c| {
        c.write_transaction(|c| {
            let current: Session = sessions::table
                .filter(sessions::organization_id.eq(org))
                .filter(sessions::id.eq(id))
                .select(Session::as_select())
                .first(c)?;
            if !current.status.is_open() {
                return Err(StoreError::InvalidState(format!(
                    "session {id} already {} ({})",
                    current.status,
                    current
                        .end_reason
                        .as_deref()
                        .unwrap_or("no reason recorded")
                )));
            }
            diesel::update(sessions::table.find(id))
                .set((
                    sessions::status.eq(status),
                    sessions::ended_at.eq(now),
                    sessions::end_reason.eq(reason),
                ))
                .returning(Session::as_returning())
                .get_result(c)
                .map_err(StoreError::from)
        })
    })
}

/// Sessions with a caller connected right now, across all organizations.
pub fn count_active(conn: &mut Conn<'_>) -> Result<i64, StoreError> {
    with_conn!(conn, |c| {
        sessions::table
            .filter(sessions::status.eq(SessionStatus::Active))
            .count()
            .get_result(c)
    })
    .map_err(Into::into)
}

/// Marks a `created` session `active` as a caller connects. A session that
/// is already active or ended is [`StoreError::InvalidState`].
pub fn activate(
    conn: &mut Conn<'_>,
    org: OrgId,
    id: SessionId,
    transport: Transport,
) -> Result<Session, StoreError> {
    let now = super::now();
    with_conn!(conn, |c| {
        c.write_transaction(|c| {
            let current: Session = sessions::table
                .filter(sessions::organization_id.eq(org))
                .filter(sessions::id.eq(id))
                .select(Session::as_select())
                .first(c)?;
            if current.status != SessionStatus::Created {
                return Err(StoreError::InvalidState(format!(
                    "session {id} is {}; a session can be joined once",
                    current.status
                )));
            }
            diesel::update(sessions::table.find(id))
                .set((
                    sessions::status.eq(SessionStatus::Active),
                    sessions::started_at.eq(now),
                    sessions::transport.eq(transport),
                ))
                .returning(Session::as_returning())
                .get_result(c)
                .map_err(StoreError::from)
        })
    })
}
