//! Connection pools for the two storage backends and the one way to run a
//! query: [`Db::run`] hands a [`Conn`] to a closure on the blocking pool, and
//! [`with_conn!`] compiles the closure's Diesel query once per backend.
//!
//! Query code lives in `store/`; this module owns pools, migrations and the
//! SQLite pragmas, nothing about tables.

use std::sync::Arc;
use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, CustomizeConnection, Pool};
use diesel::{PgConnection, SqliteConnection};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use crate::config::DatabaseSettings;

const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");
const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");

/// A borrowed connection of either backend.
#[allow(missing_debug_implementations)]
pub enum Conn<'a> {
    Sqlite(&'a mut SqliteConnection),
    Pg(&'a mut PgConnection),
}

/// Runs `$body` with `$c` bound to the backend's concrete connection, so one
/// Diesel expression serves both backends.
macro_rules! with_conn {
    ($conn:expr, |$c:ident| $body:expr) => {
        match $conn {
            $crate::db::Conn::Sqlite(inner) => {
                let $c: &mut diesel::SqliteConnection = &mut **inner;
                $body
            }
            $crate::db::Conn::Pg(inner) => {
                let $c: &mut diesel::PgConnection = &mut **inner;
                $body
            }
        }
    };
}
pub(crate) use with_conn;

/// A transaction that reads, decides and writes as if it ran alone: the
/// checks a store function makes (a session is still `created`, an
/// organization is under its limit) still hold when it writes.
///
/// On SQLite it takes the write lock up front: a deferred transaction that
/// reads and then writes fails with SQLITE_BUSY when another writer got in
/// between; `BEGIN IMMEDIATE` waits for the lock instead. On Postgres it is
/// SERIALIZABLE, retried when Postgres refuses to commit it because a
/// concurrent one broke its reads (at READ COMMITTED two joins of one
/// session both saw it `created`, and a burst of creations all counted
/// below the limit). The body may therefore run more than once.
pub(crate) trait WriteTransaction: Connection {
    fn write_transaction<T, E, F>(&mut self, f: F) -> Result<T, E>
    where
        F: FnMut(&mut Self) -> Result<T, E>,
        E: TransactionError;
}

/// An error a [`WriteTransaction`] body returns: it must tell a
/// serialization failure (try again) from the rest.
pub(crate) trait TransactionError: From<diesel::result::Error> {
    fn is_serialization_failure(&self) -> bool;
}

impl TransactionError for diesel::result::Error {
    fn is_serialization_failure(&self) -> bool {
        matches!(
            self,
            diesel::result::Error::DatabaseError(
                diesel::result::DatabaseErrorKind::SerializationFailure,
                _
            )
        )
    }
}

impl TransactionError for StoreError {
    fn is_serialization_failure(&self) -> bool {
        matches!(self, StoreError::Query(err) if err.is_serialization_failure())
    }
}

/// Tries of a Postgres write transaction before its serialization failure
/// is returned (as a 500): each retry runs after a short, growing pause.
const SERIALIZABLE_TRIES: u32 = 10;

impl WriteTransaction for SqliteConnection {
    fn write_transaction<T, E, F>(&mut self, f: F) -> Result<T, E>
    where
        F: FnMut(&mut Self) -> Result<T, E>,
        E: TransactionError,
    {
        self.immediate_transaction(f)
    }
}

impl WriteTransaction for PgConnection {
    fn write_transaction<T, E, F>(&mut self, mut f: F) -> Result<T, E>
    where
        F: FnMut(&mut Self) -> Result<T, E>,
        E: TransactionError,
    {
        let mut tried = 1;
        loop {
            match self.build_transaction().serializable().run(&mut f) {
                Err(err) if err.is_serialization_failure() && tried < SERIALIZABLE_TRIES => {
                    ::metrics::counter!("palaver_db_serialization_retries_total").increment(1);
                    // Spread the retries of transactions that collided.
                    let jitter = u64::from(crate::auth::random_bytes::<1>()[0] % 4);
                    std::thread::sleep(Duration::from_millis(u64::from(tried) * 2 + jitter));
                    tried += 1;
                }
                result => return result,
            }
        }
    }
}

/// Which backend a [`Db`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Storage failures, as the rest of the server sees them.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// No row matched (or it belongs to another organization).
    #[error("not found")]
    NotFound,
    /// A uniqueness rule was broken.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The row is in a state that does not allow the change (e.g. ending an
    /// ended session).
    #[error("{0}")]
    InvalidState(String),
    /// An organization limit would be exceeded.
    #[error("{0}")]
    LimitReached(String),
    /// No connection could be had within the pool timeout.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// Applying migrations failed.
    #[error("migration failed: {0}")]
    Migration(String),
    /// Any other database error.
    #[error("database error: {0}")]
    Query(diesel::result::Error),
}

impl From<diesel::result::Error> for StoreError {
    fn from(err: diesel::result::Error) -> Self {
        use diesel::result::{DatabaseErrorKind, Error};
        match err {
            Error::NotFound => StoreError::NotFound,
            Error::DatabaseError(DatabaseErrorKind::UniqueViolation, info) => {
                StoreError::Conflict(info.message().to_owned())
            }
            other => StoreError::Query(other),
        }
    }
}

#[derive(Clone)]
enum Pools {
    Sqlite(Pool<ConnectionManager<SqliteConnection>>),
    Pg(Pool<ConnectionManager<PgConnection>>),
}

/// The database: a pool of one backend, cheap to clone.
#[derive(Clone)]
pub struct Db {
    pools: Arc<Pools>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("backend", &self.backend())
            .finish()
    }
}

#[derive(Debug)]
struct SqlitePragmas;

impl CustomizeConnection<SqliteConnection, diesel::r2d2::Error> for SqlitePragmas {
    fn on_acquire(&self, conn: &mut SqliteConnection) -> Result<(), diesel::r2d2::Error> {
        // WAL is set once per file by `enable_wal`, before the pool opens:
        // connections opened together would race for the exclusive lock the
        // switch needs.
        conn.batch_execute(
            "PRAGMA busy_timeout = 5000; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;",
        )
        .map_err(diesel::r2d2::Error::QueryError)
    }
}

impl Db {
    /// Opens the pool named by the settings: Postgres for a `postgres://`
    /// URL, otherwise the SQLite file (its folder is created if missing).
    pub fn connect(settings: &DatabaseSettings) -> Result<Self, StoreError> {
        let timeout = Duration::from_secs(settings.pool_timeout_s.max(1));
        let url = settings.url.as_ref().map(|u| u.expose().to_owned());
        let pools = match url {
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                let pool = Pool::builder()
                    .max_size(settings.pool_size.max(1))
                    .connection_timeout(timeout)
                    .build(ConnectionManager::<PgConnection>::new(url))
                    .map_err(|e| StoreError::Unavailable(redact_url_error(&e.to_string())))?;
                Pools::Pg(pool)
            }
            other => {
                let path = match other {
                    Some(url) => url.trim_start_matches("sqlite://").to_owned(),
                    None => settings.sqlite_path.to_string_lossy().into_owned(),
                };
                if let Some(dir) = std::path::Path::new(&path).parent()
                    && !dir.as_os_str().is_empty()
                {
                    std::fs::create_dir_all(dir).map_err(|e| {
                        StoreError::Unavailable(format!(
                            "cannot create folder {} for the SQLite database: {e}",
                            dir.display()
                        ))
                    })?;
                }
                enable_wal(&path)?;
                let pool = Pool::builder()
                    .max_size(settings.pool_size.max(1))
                    .connection_timeout(timeout)
                    .connection_customizer(Box::new(SqlitePragmas))
                    .build(ConnectionManager::<SqliteConnection>::new(path))
                    .map_err(|e| StoreError::Unavailable(e.to_string()))?;
                Pools::Sqlite(pool)
            }
        };
        Ok(Self {
            pools: Arc::new(pools),
        })
    }

    /// Bytes SQLite holds in this process now (its page caches above all),
    /// for `/metrics`; `None` on Postgres.
    pub fn sqlite_memory_bytes(&self) -> Option<i64> {
        (self.backend() == Backend::Sqlite).then(|| {
            // SAFETY: sqlite3_memory_used takes no arguments and reads a
            // counter under SQLite's own mutex; the bundled SQLite is
            // thread-safe, so any thread may call it at any time.
            #[allow(unsafe_code)]
            unsafe {
                libsqlite3_sys::sqlite3_memory_used()
            }
        })
    }

    pub fn backend(&self) -> Backend {
        match &*self.pools {
            Pools::Sqlite(_) => Backend::Sqlite,
            Pools::Pg(_) => Backend::Postgres,
        }
    }

    /// Applies pending embedded migrations; returns how many ran.
    pub fn migrate(&self) -> Result<usize, StoreError> {
        self.run_blocking(|conn| {
            let applied = match conn {
                Conn::Sqlite(c) => c.run_pending_migrations(SQLITE_MIGRATIONS).map(|v| v.len()),
                Conn::Pg(c) => c
                    .run_pending_migrations(POSTGRES_MIGRATIONS)
                    .map(|v| v.len()),
            };
            applied.map_err(|e| StoreError::Migration(e.to_string()))
        })
    }

    /// Runs `f` with a pooled connection on the current thread.
    pub fn run_blocking<T>(
        &self,
        f: impl FnOnce(&mut Conn<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        match &*self.pools {
            Pools::Sqlite(pool) => {
                let mut pooled = pool
                    .get()
                    .map_err(|e| StoreError::Unavailable(e.to_string()))?;
                f(&mut Conn::Sqlite(&mut pooled))
            }
            Pools::Pg(pool) => {
                let mut pooled = pool
                    .get()
                    .map_err(|e| StoreError::Unavailable(redact_url_error(&e.to_string())))?;
                f(&mut Conn::Pg(&mut pooled))
            }
        }
    }

    /// Runs `f` on tokio's blocking pool so actor and HTTP threads never wait
    /// on the database.
    pub async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(&mut Conn<'_>) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        let db = self.clone();
        tokio::task::spawn_blocking(move || db.run_blocking(f))
            .await
            .map_err(|e| StoreError::Unavailable(format!("database task failed: {e}")))?
    }

    /// `SELECT 1`, for readiness checks.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.run(|conn| with_conn!(conn, |c| c.batch_execute("SELECT 1")).map_err(StoreError::from))
            .await
    }

    /// (connections open, connections idle).
    pub fn pool_state(&self) -> (u32, u32) {
        let state = match &*self.pools {
            Pools::Sqlite(pool) => pool.state(),
            Pools::Pg(pool) => pool.state(),
        };
        (state.connections, state.idle_connections)
    }

    /// Flushes what must be flushed before the process exits: on SQLite the
    /// WAL is checkpointed into the main file.
    pub fn close(&self) {
        if self.backend() == Backend::Sqlite {
            let checkpoint = self.run_blocking(|conn| {
                with_conn!(conn, |c| c.batch_execute("PRAGMA wal_checkpoint(TRUNCATE)"))
                    .map_err(StoreError::from)
            });
            if let Err(err) = checkpoint {
                tracing::warn!(%err, "SQLite checkpoint at shutdown failed");
            }
        }
    }
}

/// Puts the SQLite file in WAL mode (a property of the file, kept across
/// connections), through one connection of its own.
fn enable_wal(path: &str) -> Result<(), StoreError> {
    let mut conn = SqliteConnection::establish(path)
        .map_err(|e| StoreError::Unavailable(format!("cannot open SQLite database {path}: {e}")))?;
    conn.batch_execute("PRAGMA busy_timeout = 5000; PRAGMA journal_mode = WAL;")
        .map_err(|e| StoreError::Unavailable(format!("cannot enable WAL on {path}: {e}")))
}

/// Connection errors from libpq can echo the URL; never let a password out.
fn redact_url_error(message: &str) -> String {
    message
        .split_whitespace()
        .map(|word| {
            if let Some(at) = word.find('@')
                && let Some(scheme) = word.find("://")
            {
                return format!("{}://***{}", &word[..scheme], &word[at..]);
            }
            word.to_owned()
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_passwords_are_redacted_from_errors() {
        let msg = redact_url_error("could not connect to postgres://bob:hunter2@db:5432/x now");
        assert!(!msg.contains("hunter2"), "{msg}");
        assert!(msg.contains("@db:5432/x"), "{msg}");
    }
}
