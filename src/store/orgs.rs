//! organizations

use chrono::NaiveDateTime;
use diesel::prelude::*;

use crate::db::{Conn, StoreError, with_conn};
use crate::ids::OrgId;
use crate::schema::organizations;

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = organizations)]
pub struct Organization {
    pub id: OrgId,
    pub name: String,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}

#[derive(Insertable)]
#[diesel(table_name = organizations)]
struct NewOrganization<'a> {
    name: &'a str,
    created_at: NaiveDateTime,
    updated_at: NaiveDateTime,
}

pub fn create(conn: &mut Conn<'_>, name: &str) -> Result<Organization, StoreError> {
    let now = super::now();
    let row = NewOrganization {
        name,
        created_at: now,
        updated_at: now,
    };
    with_conn!(conn, |c| {
        diesel::insert_into(organizations::table)
            .values(&row)
            .returning(Organization::as_returning())
            .get_result(c)
    })
    .map_err(Into::into)
}

pub fn get(conn: &mut Conn<'_>, id: OrgId) -> Result<Organization, StoreError> {
    with_conn!(conn, |c| {
        organizations::table
            .find(id)
            .select(Organization::as_select())
            .first(c)
    })
    .map_err(Into::into)
}

pub fn rename(conn: &mut Conn<'_>, id: OrgId, name: &str) -> Result<Organization, StoreError> {
    let now = super::now();
    with_conn!(conn, |c| {
        diesel::update(organizations::table.find(id))
            .set((
                organizations::name.eq(name),
                organizations::updated_at.eq(now),
            ))
            .returning(Organization::as_returning())
            .get_result(c)
    })
    .map_err(Into::into)
}
