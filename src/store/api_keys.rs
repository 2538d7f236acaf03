//! api_keys: only a hash and a short visible prefix are stored.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::PageRequest;
use crate::db::{Conn, StoreError, with_conn};
use crate::ids::{ApiKeyId, OrgId, UserId};
use crate::schema::api_keys;

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = api_keys)]
pub struct ApiKey {
    pub id: ApiKeyId,
    pub organization_id: OrgId,
    pub name: String,
    pub prefix: String,
    pub key_hash: String,
    pub created_by_user_id: Option<UserId>,
    pub created_at: NaiveDateTime,
    pub last_used_at: Option<NaiveDateTime>,
    pub revoked_at: Option<NaiveDateTime>,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = api_keys)]
pub struct NewApiKey<'a> {
    pub organization_id: OrgId,
    pub name: &'a str,
    pub prefix: &'a str,
    pub key_hash: &'a str,
    pub created_by_user_id: Option<UserId>,
    pub created_at: NaiveDateTime,
}

pub fn create(conn: &mut Conn<'_>, new: &NewApiKey<'_>) -> Result<ApiKey, StoreError> {
    with_conn!(conn, |c| {
        diesel::insert_into(api_keys::table)
            .values(new)
            .returning(ApiKey::as_returning())
            .get_result(c)
    })
    .map_err(Into::into)
}

/// The unrevoked key with this visible prefix, if any.
pub fn find_active_by_prefix(
    conn: &mut Conn<'_>,
    prefix: &str,
) -> Result<Option<ApiKey>, StoreError> {
    with_conn!(conn, |c| {
        api_keys::table
            .filter(api_keys::prefix.eq(prefix))
            .filter(api_keys::revoked_at.is_null())
            .select(ApiKey::as_select())
            .first(c)
            .optional()
    })
    .map_err(Into::into)
}

/// Records use; callers throttle this so a busy key is not a write per request.
pub fn touch(conn: &mut Conn<'_>, id: ApiKeyId, at: NaiveDateTime) -> Result<(), StoreError> {
    with_conn!(conn, |c| {
        diesel::update(api_keys::table.find(id))
            .set(api_keys::last_used_at.eq(at))
            .execute(c)
    })?;
    Ok(())
}

pub fn list(
    conn: &mut Conn<'_>,
    org: OrgId,
    page: PageRequest,
) -> Result<(Vec<ApiKey>, Option<i64>), StoreError> {
    let rows = with_conn!(conn, |c| {
        let mut query = api_keys::table
            .filter(api_keys::organization_id.eq(org))
            .select(ApiKey::as_select())
            .order(api_keys::id.desc())
            .limit(page.fetch_limit())
            .into_boxed();
        if let Some(after) = page.after {
            query = query.filter(api_keys::id.lt(after));
        }
        query.load(c)
    })?;
    Ok(page.finish(rows, |k| k.id.0))
}

/// Revokes the key (idempotent: revoking twice keeps the first time).
pub fn revoke(conn: &mut Conn<'_>, org: OrgId, id: ApiKeyId) -> Result<ApiKey, StoreError> {
    let now = super::now();
    with_conn!(conn, |c| {
        diesel::update(
            api_keys::table
                .filter(api_keys::organization_id.eq(org))
                .filter(api_keys::id.eq(id))
                .filter(api_keys::revoked_at.is_null()),
        )
        .set(api_keys::revoked_at.eq(now))
        .execute(c)?;
        api_keys::table
            .filter(api_keys::organization_id.eq(org))
            .filter(api_keys::id.eq(id))
            .select(ApiKey::as_select())
            .first(c)
    })
    .map_err(Into::into)
}
