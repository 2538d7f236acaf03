//! users

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::PageRequest;
use crate::db::{Conn, StoreError, with_conn};
use crate::ids::{OrgId, UserId};
use crate::model::Role;
use crate::schema::users;

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = users)]
pub struct User {
    pub id: UserId,
    pub organization_id: OrgId,
    pub email: String,
    pub name: Option<String>,
    pub password_hash: String,
    pub role: Role,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = users)]
pub struct NewUser<'a> {
    pub organization_id: OrgId,
    /// Already lower-cased by the caller.
    pub email: &'a str,
    pub name: Option<&'a str>,
    pub password_hash: &'a str,
    pub role: Role,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}

pub fn create(conn: &mut Conn<'_>, new: &NewUser<'_>) -> Result<User, StoreError> {
    let inserted = with_conn!(conn, |c| {
        diesel::insert_into(users::table)
            .values(new)
            .returning(User::as_returning())
            .get_result(c)
    });
    inserted.map_err(|err| match StoreError::from(err) {
        StoreError::Conflict(_) => StoreError::Conflict(
            "a user with this email already exists in this organization".into(),
        ),
        other => other,
    })
}

/// Every user with this email, in any organization (for login).
pub fn find_by_email(conn: &mut Conn<'_>, email: &str) -> Result<Vec<User>, StoreError> {
    with_conn!(conn, |c| {
        users::table
            .filter(users::email.eq(email))
            .order(users::id)
            .select(User::as_select())
            .load(c)
    })
    .map_err(Into::into)
}

pub fn get(conn: &mut Conn<'_>, org: OrgId, id: UserId) -> Result<User, StoreError> {
    with_conn!(conn, |c| {
        users::table
            .filter(users::organization_id.eq(org))
            .filter(users::id.eq(id))
            .select(User::as_select())
            .first(c)
    })
    .map_err(Into::into)
}

pub fn list(
    conn: &mut Conn<'_>,
    org: OrgId,
    page: PageRequest,
) -> Result<(Vec<User>, Option<i64>), StoreError> {
    let rows = with_conn!(conn, |c| {
        let mut query = users::table
            .filter(users::organization_id.eq(org))
            .select(User::as_select())
            .order(users::id.desc())
            .limit(page.fetch_limit())
            .into_boxed();
        if let Some(after) = page.after {
            query = query.filter(users::id.lt(after));
        }
        query.load(c)
    })?;
    Ok(page.finish(rows, |u| u.id.0))
}
