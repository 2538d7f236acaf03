//! Queries, one module per table. Every function takes a [`Conn`] so it also
//! runs inside a caller's transaction, and every lookup of a tenant's row
//! takes the [`OrgId`] it must belong to: a row of another organization is
//! [`StoreError::NotFound`], exactly like a row that does not exist.
//!
//! [`Conn`]: crate::db::Conn
//! [`OrgId`]: crate::ids::OrgId
//! [`StoreError::NotFound`]: crate::db::StoreError::NotFound

pub mod api_keys;
pub mod assistants;
pub mod messages;
pub mod orgs;
pub mod rooms;
pub mod sessions;
pub mod users;

use chrono::{NaiveDateTime, SubsecRound, Utc};

/// The current time as stored: UTC, microsecond precision (what Postgres
/// keeps), so a value reads back equal to what was written.
pub fn now() -> NaiveDateTime {
    Utc::now().naive_utc().trunc_subsecs(6)
}

/// Largest page a list query returns.
pub const MAX_PAGE: i64 = 100;

/// A keyset page request: rows after the cursor, at most `limit` of them.
#[derive(Debug, Clone, Copy)]
pub struct PageRequest {
    /// Exclusive bound on the id (lists run newest first, so "after" means a
    /// smaller id).
    pub after: Option<i64>,
    pub limit: i64,
}

impl PageRequest {
    /// Fetch one more than asked to learn whether a next page exists.
    pub fn fetch_limit(&self) -> i64 {
        self.limit.clamp(1, MAX_PAGE) + 1
    }

    /// Cuts the extra row off and returns the next cursor, if any.
    pub fn finish<T>(&self, mut rows: Vec<T>, id_of: impl Fn(&T) -> i64) -> (Vec<T>, Option<i64>) {
        let limit = self.limit.clamp(1, MAX_PAGE) as usize;
        if rows.len() > limit {
            rows.truncate(limit);
            let next = rows.last().map(id_of);
            (rows, next)
        } else {
            (rows, None)
        }
    }
}
