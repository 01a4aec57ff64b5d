//! The embedded [`Store`] backend: one SQLite file (rusqlite, bundled), the default store
//! that needs no other service.
//!
//! Owns: the schema and its migrations, connection setup (WAL, `busy_timeout`, foreign
//! keys, `synchronous = FULL`), moving every SQLite call off the async runtime's threads,
//! and mapping SQLite errors onto [`StoreError`]. Must not touch: anything above L0
//! (HTTP, config parsing, hashing, the clock).
//!
//! Threading: one writer connection plus a small pool of read-only connections.
//! - SQLite allows one writer at a time anyway; funnelling all writes through one
//!   connection behind an async FIFO mutex (`tokio::sync::Mutex`) means waiting writers
//!   queue as cheap futures instead of occupying blocking-pool threads in `busy_timeout`
//!   sleeps, and transactions never fail with `SQLITE_BUSY` against each other within a
//!   process. Every write transaction is `BEGIN IMMEDIATE`, so another process on the same
//!   file (the CLI's `users create` next to a running server) waits for the lock instead of
//!   deadlocking on a read-to-write upgrade.
//! - WAL lets readers run beside the writer, so the hot lookups of the proxy path's cache
//!   misses (key by hash, session, user) take one of `readers` connections and never wait
//!   for a write. A read sees every write that completed before it started.
//! - Each call runs on `tokio::task::spawn_blocking` holding its connection; the lease or
//!   mutex guard moves into the blocking task, so a caller that is cancelled mid-call
//!   cannot return a connection that is still in use.
//!
//! An in-memory database (tests) is private to one connection, so it has no readers and
//! reads go through the writer.
//!
//! Migrations: an ordered list in this file; `PRAGMA user_version` records how many ran.
//! Each runs in its own immediate transaction that re-reads the version first, so two
//! processes opening a fresh file at once apply each step exactly once. A file whose
//! version is newer than this binary knows is refused rather than misread.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::types::Type;
use rusqlite::{
    Connection, ErrorCode, OpenFlags, OptionalExtension, Row, TransactionBehavior, ffi, params,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{
    ApiKey, ApiKeyKind, ConflictField, MAX_PAGE, OAuthIdentity, OneTimeKind, OneTimeToken,
    PurgeCounts, RefreshToken, RotateOutcome, Session, SigningKey, Store, StoreError, TokenHash,
    UnixMillis, User, UserPage, UserPatch, UserQuery, normalize_email,
};

/// Tuning of the SQLite backend (plain data; the config layer fills it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqliteOptions {
    /// Read-only connections for lookups (0: reads share the writer).
    pub readers: usize,
    /// How long a statement waits for a lock held by another process before failing with
    /// [`StoreError::Unavailable`].
    pub busy_timeout: Duration,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        // Four readers cover a 2-4 core machine's runtime threads; lookups are
        // sub-millisecond, so more connections would mostly hold memory.
        SqliteOptions {
            readers: 4,
            busy_timeout: Duration::from_secs(5),
        }
    }
}

/// The SQLite-backed [`Store`].
pub struct SqliteStore {
    writer: Arc<tokio::sync::Mutex<Connection>>,
    readers: Option<Arc<ReaderPool>>,
}

struct ReaderPool {
    idle: Mutex<Vec<Connection>>,
    // One permit per connection in `idle`: holding a permit guarantees a connection.
    permits: Arc<Semaphore>,
}

/// A reader connection borrowed from the pool; returned on drop, also when the blocking
/// task unwinds.
struct Lease {
    conn: Option<Connection>,
    pool: Arc<ReaderPool>,
    _permit: OwnedSemaphorePermit,
}

impl Lease {
    fn conn(&self) -> Result<&Connection, StoreError> {
        self.conn
            .as_ref()
            .ok_or_else(|| StoreError::Internal("reader lease without a connection".into()))
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        // Runs before `_permit` is released, so a new holder of the permit finds it.
        if let Some(conn) = self.conn.take() {
            self.pool
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(conn);
        }
    }
}

impl ReaderPool {
    async fn lease(self: &Arc<Self>) -> Result<Lease, StoreError> {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Internal("reader pool closed".into()))?;
        let conn = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
            .ok_or_else(|| StoreError::Internal("reader pool empty under a permit".into()))?;
        Ok(Lease {
            conn: Some(conn),
            pool: Arc::clone(self),
            _permit: permit,
        })
    }
}

impl SqliteStore {
    /// Opens (creating it and its parent directories if needed) the database at `path`
    /// with default options and brings its schema up to date. Blocking: call at startup or
    /// from `spawn_blocking`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with(path, &SqliteOptions::default())
    }

    /// [`SqliteStore::open`] with explicit options.
    pub fn open_with(path: impl AsRef<Path>, options: &SqliteOptions) -> Result<Self, StoreError> {
        let path = path.as_ref();
        if let Some(parent) = path.parent()
            && !parent.as_os_str().is_empty()
        {
            std::fs::create_dir_all(parent).map_err(|e| {
                StoreError::Unavailable(format!("cannot create {}: {e}", parent.display()))
            })?;
        }
        let mut writer = Connection::open(path)?;
        configure(&writer, options)?;
        // WAL: readers never block the writer nor the other way round. The pragma answers
        // with the mode in force; anything else means the file cannot do WAL.
        let mode: String = writer.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Internal(format!(
                "{} cannot use WAL (journal_mode is {mode})",
                path.display()
            )));
        }
        // FULL rather than NORMAL: in WAL mode NORMAL may lose the last commits on power
        // loss, and an acknowledged account write (a revoked session) must stay written.
        writer.pragma_update(None, "synchronous", "FULL")?;
        migrate(&mut writer)?;

        let mut idle = Vec::with_capacity(options.readers);
        for _ in 0..options.readers {
            let reader = Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_ONLY
                    | OpenFlags::SQLITE_OPEN_URI
                    | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?;
            configure(&reader, options)?;
            idle.push(reader);
        }
        let readers = (!idle.is_empty()).then(|| {
            Arc::new(ReaderPool {
                permits: Arc::new(Semaphore::new(idle.len())),
                idle: Mutex::new(idle),
            })
        });
        Ok(SqliteStore {
            writer: Arc::new(tokio::sync::Mutex::new(writer)),
            readers,
        })
    }

    /// A private in-memory database with the current schema (tests, throwaway runs).
    pub fn open_in_memory() -> Result<Self, StoreError> {
        let mut conn = Connection::open_in_memory()?;
        configure(&conn, &SqliteOptions::default())?;
        migrate(&mut conn)?;
        Ok(SqliteStore {
            writer: Arc::new(tokio::sync::Mutex::new(conn)),
            readers: None,
        })
    }

    /// Runs `f` on the writer connection on the blocking pool, after every earlier write.
    async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let mut guard = Arc::clone(&self.writer).lock_owned().await;
        run_blocking(move || f(&mut guard)).await
    }

    /// Runs `f` on a reader connection (the writer when there are none) on the blocking
    /// pool.
    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        match &self.readers {
            None => self.write(move |conn| f(conn)).await,
            Some(pool) => {
                let lease = pool.lease().await?;
                run_blocking(move || f(lease.conn()?)).await
            }
        }
    }
}

async fn run_blocking<T, F>(f: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, StoreError> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Internal(format!("store task failed: {e}")))?
}

fn configure(conn: &Connection, options: &SqliteOptions) -> Result<(), StoreError> {
    conn.busy_timeout(options.busy_timeout)?;
    // Off by default in SQLite; the cascades of `delete_user` depend on it.
    conn.pragma_update(None, "foreign_keys", true)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(())
}

/// Schema steps, applied in order; step `i` leaves `user_version = i + 1`. Never edit a
/// released step: append a new one.
const MIGRATIONS: &[&str] = &[
    // 1: initial schema. Timestamps are unix milliseconds; lists are JSON arrays; hashes
    // are 32-byte blobs.
    r#"
    CREATE TABLE users (
        id             TEXT PRIMARY KEY,
        email          TEXT UNIQUE,
        username       TEXT UNIQUE,
        name           TEXT,
        external_id    TEXT UNIQUE,
        email_verified INTEGER NOT NULL,
        roles          TEXT NOT NULL,
        disabled       INTEGER NOT NULL,
        password_hash  TEXT,
        mfa            BLOB,
        created_at     INTEGER NOT NULL,
        updated_at     INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX users_by_creation ON users (created_at, id);

    CREATE TABLE sessions (
        id           TEXT PRIMARY KEY,
        user_id      TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
        created_at   INTEGER NOT NULL,
        last_used_at INTEGER NOT NULL,
        expires_at   INTEGER NOT NULL,
        user_agent   TEXT,
        ip           TEXT,
        amr          TEXT NOT NULL,
        revoked_at   INTEGER
    ) STRICT;
    CREATE INDEX sessions_by_user ON sessions (user_id);

    CREATE TABLE refresh_tokens (
        token_hash BLOB PRIMARY KEY,
        session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        used_at    INTEGER
    ) STRICT, WITHOUT ROWID;
    CREATE INDEX refresh_tokens_by_session ON refresh_tokens (session_id);

    CREATE TABLE api_keys (
        id           TEXT PRIMARY KEY,
        user_id      TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
        kind         TEXT NOT NULL CHECK (kind IN ('secret', 'publishable')),
        name         TEXT NOT NULL,
        prefix       TEXT NOT NULL,
        key_hash     BLOB NOT NULL UNIQUE,
        scopes       TEXT,
        created_at   INTEGER NOT NULL,
        expires_at   INTEGER,
        revoked_at   INTEGER,
        last_used_at INTEGER
    ) STRICT;
    CREATE INDEX api_keys_by_user ON api_keys (user_id);

    CREATE TABLE signing_keys (
        kid         TEXT PRIMARY KEY,
        alg         TEXT NOT NULL,
        private_key BLOB NOT NULL,
        public_jwk  TEXT NOT NULL,
        created_at  INTEGER NOT NULL,
        not_after   INTEGER,
        retired_at  INTEGER
    ) STRICT;

    CREATE TABLE one_time_tokens (
        token_hash BLOB PRIMARY KEY,
        kind       TEXT NOT NULL,
        user_id    TEXT REFERENCES users (id) ON DELETE CASCADE,
        email      TEXT,
        payload    TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL
    ) STRICT, WITHOUT ROWID;
    CREATE INDEX one_time_tokens_by_user ON one_time_tokens (user_id, kind);
    "#,
    // 2: OAuth identities (provider account -> user), unique per (provider, subject).
    r#"
    CREATE TABLE oauth_identities (
        provider   TEXT NOT NULL,
        subject    TEXT NOT NULL,
        user_id    TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
        email      TEXT,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (provider, subject)
    ) STRICT, WITHOUT ROWID;
    CREATE INDEX oauth_identities_by_user ON oauth_identities (user_id, created_at);
    "#,
];

/// The schema version this binary writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    for (index, step) in MIGRATIONS.iter().enumerate() {
        let target = i64::try_from(index + 1)
            .map_err(|_| StoreError::Internal("too many migrations".into()))?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let current: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if current > SCHEMA_VERSION {
            return Err(StoreError::Internal(format!(
                "database schema version {current} is newer than this binary supports \
                 ({SCHEMA_VERSION})"
            )));
        }
        if current >= target {
            continue;
        }
        tx.execute_batch(step)?;
        tx.pragma_update(None, "user_version", target)?;
        tx.commit()?;
    }
    Ok(())
}

impl From<rusqlite::Error> for StoreError {
    fn from(err: rusqlite::Error) -> Self {
        if let rusqlite::Error::SqliteFailure(failure, message) = &err {
            match failure.code {
                ErrorCode::ConstraintViolation => {
                    if let Some(mapped) = constraint_error(failure.extended_code, message) {
                        return mapped;
                    }
                }
                // The file is locked by another process past `busy_timeout`, or the disk
                // or filesystem fails: the backend is down for now, not broken.
                ErrorCode::DatabaseBusy
                | ErrorCode::DatabaseLocked
                | ErrorCode::CannotOpen
                | ErrorCode::DiskFull
                | ErrorCode::SystemIoFailure
                | ErrorCode::ReadOnly
                | ErrorCode::PermissionDenied
                | ErrorCode::FileLockingProtocolFailed => {
                    return StoreError::Unavailable(err.to_string());
                }
                _ => {}
            }
        }
        StoreError::Internal(err.to_string())
    }
}

fn constraint_error(extended_code: i32, message: &Option<String>) -> Option<StoreError> {
    if extended_code == ffi::SQLITE_CONSTRAINT_FOREIGNKEY {
        // A new row points at a user or session that does not exist.
        return Some(StoreError::NotFound);
    }
    if extended_code != ffi::SQLITE_CONSTRAINT_UNIQUE
        && extended_code != ffi::SQLITE_CONSTRAINT_PRIMARYKEY
    {
        return None;
    }
    // SQLite names the column: "UNIQUE constraint failed: users.email".
    let column = message.as_deref()?.rsplit(": ").next()?;
    let field = match column {
        "users.id" | "sessions.id" | "api_keys.id" => ConflictField::Id,
        "users.email" => ConflictField::Email,
        "users.username" => ConflictField::Username,
        "users.external_id" => ConflictField::ExternalId,
        "api_keys.key_hash" => ConflictField::KeyHash,
        "refresh_tokens.token_hash" | "one_time_tokens.token_hash" => ConflictField::TokenHash,
        "signing_keys.kid" => ConflictField::Kid,
        "oauth_identities.provider, oauth_identities.subject" => ConflictField::OAuthIdentity,
        _ => return None,
    };
    Some(StoreError::Conflict { field })
}

// ---- row mapping ----

fn conversion_error(
    index: usize,
    err: impl std::error::Error + Send + Sync + 'static,
) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(index, Type::Text, Box::new(err))
}

fn json_list(row: &Row<'_>, index: usize) -> rusqlite::Result<Vec<String>> {
    let text: String = row.get(index)?;
    serde_json::from_str(&text).map_err(|e| conversion_error(index, e))
}

fn json_list_opt(row: &Row<'_>, index: usize) -> rusqlite::Result<Option<Vec<String>>> {
    let text: Option<String> = row.get(index)?;
    text.map(|t| serde_json::from_str(&t).map_err(|e| conversion_error(index, e)))
        .transpose()
}

fn to_json<T: serde::Serialize + ?Sized>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Internal(format!("encode json: {e}")))
}

#[derive(Debug, thiserror::Error)]
#[error("unknown {what} {value:?} in the database")]
struct UnknownValue {
    what: &'static str,
    value: String,
}

const USER_COLUMNS: &str = "id, email, username, name, external_id, email_verified, roles, \
                            disabled, password_hash, mfa, created_at, updated_at";

fn user_from_row(row: &Row<'_>) -> rusqlite::Result<User> {
    Ok(User {
        id: row.get(0)?,
        email: row.get(1)?,
        username: row.get(2)?,
        name: row.get(3)?,
        external_id: row.get(4)?,
        email_verified: row.get(5)?,
        roles: json_list(row, 6)?,
        disabled: row.get(7)?,
        password_hash: row.get(8)?,
        mfa: row.get(9)?,
        created_at: row.get(10)?,
        updated_at: row.get(11)?,
    })
}

const SESSION_COLUMNS: &str =
    "id, user_id, created_at, last_used_at, expires_at, user_agent, ip, amr, revoked_at";

fn session_from_row(row: &Row<'_>) -> rusqlite::Result<Session> {
    Ok(Session {
        id: row.get(0)?,
        user_id: row.get(1)?,
        created_at: row.get(2)?,
        last_used_at: row.get(3)?,
        expires_at: row.get(4)?,
        user_agent: row.get(5)?,
        ip: row.get(6)?,
        amr: json_list(row, 7)?,
        revoked_at: row.get(8)?,
    })
}

const API_KEY_COLUMNS: &str = "id, user_id, kind, name, prefix, key_hash, scopes, created_at, \
                               expires_at, revoked_at, last_used_at";

fn api_key_from_row(row: &Row<'_>) -> rusqlite::Result<ApiKey> {
    let kind: String = row.get(2)?;
    let kind = ApiKeyKind::parse(&kind).ok_or_else(|| {
        conversion_error(
            2,
            UnknownValue {
                what: "api key kind",
                value: kind.clone(),
            },
        )
    })?;
    Ok(ApiKey {
        id: row.get(0)?,
        user_id: row.get(1)?,
        kind,
        name: row.get(3)?,
        prefix: row.get(4)?,
        key_hash: row.get(5)?,
        scopes: json_list_opt(row, 6)?,
        created_at: row.get(7)?,
        expires_at: row.get(8)?,
        revoked_at: row.get(9)?,
        last_used_at: row.get(10)?,
    })
}

const SIGNING_KEY_COLUMNS: &str =
    "kid, alg, private_key, public_jwk, created_at, not_after, retired_at";

fn signing_key_from_row(row: &Row<'_>) -> rusqlite::Result<SigningKey> {
    Ok(SigningKey {
        kid: row.get(0)?,
        alg: row.get(1)?,
        private_key: row.get(2)?,
        public_jwk: row.get(3)?,
        created_at: row.get(4)?,
        not_after: row.get(5)?,
        retired_at: row.get(6)?,
    })
}

const IDENTITY_COLUMNS: &str = "provider, subject, user_id, email, created_at";

fn identity_from_row(row: &Row<'_>) -> rusqlite::Result<OAuthIdentity> {
    Ok(OAuthIdentity {
        provider: row.get(0)?,
        subject: row.get(1)?,
        user_id: row.get(2)?,
        email: row.get(3)?,
        created_at: row.get(4)?,
    })
}

const ONE_TIME_COLUMNS: &str = "token_hash, kind, user_id, email, payload, created_at, expires_at";

fn one_time_from_row(row: &Row<'_>) -> rusqlite::Result<OneTimeToken> {
    let kind: String = row.get(1)?;
    let kind = OneTimeKind::parse(&kind).ok_or_else(|| {
        conversion_error(
            1,
            UnknownValue {
                what: "one-time token kind",
                value: kind.clone(),
            },
        )
    })?;
    let payload: String = row.get(4)?;
    Ok(OneTimeToken {
        token_hash: row.get(0)?,
        kind,
        user_id: row.get(2)?,
        email: row.get(3)?,
        payload: serde_json::from_str(&payload).map_err(|e| conversion_error(4, e))?,
        created_at: row.get(5)?,
        expires_at: row.get(6)?,
    })
}

fn select_user(conn: &Connection, column: &str, value: &str) -> Result<Option<User>, StoreError> {
    // `column` is one of a fixed set chosen by this file, never caller input.
    let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE {column} = ?1");
    Ok(conn
        .prepare_cached(&sql)?
        .query_row([value], user_from_row)
        .optional()?)
}

fn select_session(conn: &Connection, id: &str) -> Result<Option<Session>, StoreError> {
    let sql = format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE id = ?1");
    Ok(conn
        .prepare_cached(&sql)?
        .query_row([id], session_from_row)
        .optional()?)
}

fn insert_refresh(conn: &Connection, token: &RefreshToken) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO refresh_tokens (token_hash, session_id, created_at, expires_at, used_at) \
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        token.token_hash,
        token.session_id,
        token.created_at,
        token.expires_at,
        token.used_at
    ])?;
    Ok(())
}

fn parse_cursor(cursor: &str) -> Result<(UnixMillis, String), StoreError> {
    let (created_at, id) = cursor.split_once('.').ok_or(StoreError::InvalidCursor)?;
    let created_at = created_at.parse().map_err(|_| StoreError::InvalidCursor)?;
    if id.is_empty() {
        return Err(StoreError::InvalidCursor);
    }
    Ok((created_at, id.to_owned()))
}

#[async_trait]
impl Store for SqliteStore {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.read(|conn| {
            Ok(conn
                .query_row("SELECT 1", [], |r| r.get::<_, i64>(0))
                .map(|_| ())?)
        })
        .await
    }

    async fn create_user(&self, user: &User) -> Result<(), StoreError> {
        let mut user = user.clone();
        user.email = user.email.as_deref().map(normalize_email);
        let roles = to_json(&user.roles)?;
        self.write(move |conn| {
            conn.execute(
                &format!(
                    "INSERT INTO users ({USER_COLUMNS}) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"
                ),
                params![
                    user.id,
                    user.email,
                    user.username,
                    user.name,
                    user.external_id,
                    user.email_verified,
                    roles,
                    user.disabled,
                    user.password_hash,
                    user.mfa,
                    user.created_at,
                    user.updated_at
                ],
            )?;
            Ok(())
        })
        .await
    }

    async fn get_user(&self, id: &str) -> Result<Option<User>, StoreError> {
        let id = id.to_owned();
        self.read(move |conn| select_user(conn, "id", &id)).await
    }

    async fn get_user_by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        let email = normalize_email(email);
        self.read(move |conn| select_user(conn, "email", &email))
            .await
    }

    async fn get_user_by_username(&self, username: &str) -> Result<Option<User>, StoreError> {
        let username = username.to_owned();
        self.read(move |conn| select_user(conn, "username", &username))
            .await
    }

    async fn get_user_by_external_id(&self, external_id: &str) -> Result<Option<User>, StoreError> {
        let external_id = external_id.to_owned();
        self.read(move |conn| select_user(conn, "external_id", &external_id))
            .await
    }

    async fn update_user(
        &self,
        id: &str,
        patch: &UserPatch,
        now: UnixMillis,
    ) -> Result<User, StoreError> {
        let id = id.to_owned();
        let patch = patch.clone();
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut user = select_user(&tx, "id", &id)?.ok_or(StoreError::NotFound)?;
            let UserPatch {
                name,
                username,
                email,
                external_id,
                email_verified,
                roles,
                disabled,
                password_hash,
                mfa,
            } = patch;
            if let Some(v) = name {
                user.name = v;
            }
            if let Some(v) = username {
                user.username = v;
            }
            if let Some(v) = email {
                user.email = v.as_deref().map(normalize_email);
            }
            if let Some(v) = external_id {
                user.external_id = v;
            }
            if let Some(v) = email_verified {
                user.email_verified = v;
            }
            if let Some(v) = roles {
                user.roles = v;
            }
            if let Some(v) = disabled {
                user.disabled = v;
            }
            if let Some(v) = password_hash {
                user.password_hash = v;
            }
            if let Some(v) = mfa {
                user.mfa = v;
            }
            user.updated_at = now;
            tx.execute(
                "UPDATE users SET email = ?2, username = ?3, name = ?4, external_id = ?5, \
                 email_verified = ?6, roles = ?7, disabled = ?8, password_hash = ?9, mfa = ?10, \
                 updated_at = ?11 WHERE id = ?1",
                params![
                    user.id,
                    user.email,
                    user.username,
                    user.name,
                    user.external_id,
                    user.email_verified,
                    to_json(&user.roles)?,
                    user.disabled,
                    user.password_hash,
                    user.mfa,
                    user.updated_at
                ],
            )?;
            tx.commit()?;
            Ok(user)
        })
        .await
    }

    async fn swap_user_mfa(
        &self,
        id: &str,
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
        now: UnixMillis,
    ) -> Result<bool, StoreError> {
        let id = id.to_owned();
        let expected = expected.map(<[u8]>::to_vec);
        let new = new.map(<[u8]>::to_vec);
        self.write(move |conn| {
            // `IS` compares NULL with NULL as equal; one statement, so no other writer can
            // slip in between the comparison and the update.
            let changed = conn.execute(
                "UPDATE users SET mfa = ?3, updated_at = ?4 WHERE id = ?1 AND mfa IS ?2",
                params![id, expected, new, now],
            )?;
            if changed > 0 {
                return Ok(true);
            }
            let exists = conn
                .prepare_cached("SELECT 1 FROM users WHERE id = ?1")?
                .query_row([&id], |_| Ok(()))
                .optional()?
                .is_some();
            if exists {
                Ok(false)
            } else {
                Err(StoreError::NotFound)
            }
        })
        .await
    }

    async fn delete_user(&self, id: &str) -> Result<(), StoreError> {
        let id = id.to_owned();
        self.write(move |conn| {
            // Sessions (and through them refresh tokens), API keys and one-time tokens go
            // with the user: ON DELETE CASCADE, in the same implicit transaction.
            match conn.execute("DELETE FROM users WHERE id = ?1", [&id])? {
                0 => Err(StoreError::NotFound),
                _ => Ok(()),
            }
        })
        .await
    }

    async fn list_users(&self, query: &UserQuery) -> Result<UserPage, StoreError> {
        let limit = query.limit.clamp(1, MAX_PAGE);
        let after = query.cursor.as_deref().map(parse_cursor).transpose()?;
        let email_contains = query.email_contains.as_deref().map(normalize_email);
        let role = query.role.clone();
        self.read(move |conn| {
            let (after_created, after_id) = match after {
                Some((created, id)) => (Some(created), Some(id)),
                None => (None, None),
            };
            let fetch = i64::try_from(limit + 1).unwrap_or(i64::MAX);
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {USER_COLUMNS} FROM users \
                 WHERE (?1 IS NULL OR instr(email, ?1) > 0) \
                   AND (?2 IS NULL OR EXISTS \
                        (SELECT 1 FROM json_each(users.roles) WHERE json_each.value = ?2)) \
                   AND (?3 IS NULL OR (created_at, id) > (?3, ?4)) \
                 ORDER BY created_at, id LIMIT ?5"
            ))?;
            let mut users = stmt
                .query_map(
                    params![email_contains, role, after_created, after_id, fetch],
                    user_from_row,
                )?
                .collect::<Result<Vec<_>, _>>()?;
            // One row more than the page was fetched to know whether another page exists.
            let next_cursor = if users.len() > limit {
                users.truncate(limit);
                users.last().map(|u| format!("{}.{}", u.created_at, u.id))
            } else {
                None
            };
            Ok(UserPage { users, next_cursor })
        })
        .await
    }

    async fn create_session(
        &self,
        session: &Session,
        first_refresh: Option<&RefreshToken>,
    ) -> Result<(), StoreError> {
        if let Some(token) = first_refresh
            && token.session_id != session.id
        {
            return Err(StoreError::Internal(
                "first refresh token belongs to another session".into(),
            ));
        }
        let session = session.clone();
        let first_refresh = first_refresh.cloned();
        let amr = to_json(&session.amr)?;
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute(
                &format!(
                    "INSERT INTO sessions ({SESSION_COLUMNS}) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
                ),
                params![
                    session.id,
                    session.user_id,
                    session.created_at,
                    session.last_used_at,
                    session.expires_at,
                    session.user_agent,
                    session.ip,
                    amr,
                    session.revoked_at
                ],
            )?;
            if let Some(token) = &first_refresh {
                insert_refresh(&tx, token)?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn get_session(&self, id: &str) -> Result<Option<Session>, StoreError> {
        let id = id.to_owned();
        self.read(move |conn| select_session(conn, &id)).await
    }

    async fn is_session_revoked(&self, id: &str, now: UnixMillis) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.read(move |conn| {
            let usable: Option<bool> = conn
                .prepare_cached(
                    "SELECT revoked_at IS NULL AND expires_at > ?2 FROM sessions WHERE id = ?1",
                )?
                .query_row(params![id, now], |r| r.get(0))
                .optional()?;
            Ok(usable != Some(true))
        })
        .await
    }

    async fn touch_session(&self, id: &str, now: UnixMillis) -> Result<(), StoreError> {
        let id = id.to_owned();
        self.write(move |conn| {
            match conn
                .prepare_cached(
                    "UPDATE sessions SET last_used_at = max(last_used_at, ?2) WHERE id = ?1",
                )?
                .execute(params![id, now])?
            {
                0 => Err(StoreError::NotFound),
                _ => Ok(()),
            }
        })
        .await
    }

    async fn list_active_sessions(
        &self,
        user_id: &str,
        now: UnixMillis,
    ) -> Result<Vec<Session>, StoreError> {
        let user_id = user_id.to_owned();
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {SESSION_COLUMNS} FROM sessions \
                 WHERE user_id = ?1 AND revoked_at IS NULL AND expires_at > ?2 \
                 ORDER BY last_used_at DESC, id"
            ))?;
            let sessions = stmt
                .query_map(params![user_id, now], session_from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(sessions)
        })
        .await
    }

    async fn revoke_session(
        &self,
        id: &str,
        owner: Option<&str>,
        now: UnixMillis,
    ) -> Result<(), StoreError> {
        let id = id.to_owned();
        let owner = owner.map(str::to_owned);
        self.write(move |conn| {
            match conn.execute(
                "UPDATE sessions SET revoked_at = coalesce(revoked_at, ?3) \
                 WHERE id = ?1 AND (?2 IS NULL OR user_id = ?2)",
                params![id, owner, now],
            )? {
                0 => Err(StoreError::NotFound),
                _ => Ok(()),
            }
        })
        .await
    }

    async fn revoke_user_sessions(
        &self,
        user_id: &str,
        except: Option<&str>,
        now: UnixMillis,
    ) -> Result<u64, StoreError> {
        let user_id = user_id.to_owned();
        let except = except.map(str::to_owned);
        self.write(move |conn| {
            let n = conn.execute(
                "UPDATE sessions SET revoked_at = ?3 \
                 WHERE user_id = ?1 AND revoked_at IS NULL AND (?2 IS NULL OR id <> ?2)",
                params![user_id, except, now],
            )?;
            Ok(n as u64)
        })
        .await
    }

    async fn rotate_refresh(
        &self,
        presented: &TokenHash,
        new_hash: &TokenHash,
        now: UnixMillis,
        grace: Duration,
        new_expires_at: UnixMillis,
    ) -> Result<RotateOutcome, StoreError> {
        let presented = *presented;
        let new_hash = *new_hash;
        let grace = i64::try_from(grace.as_millis()).unwrap_or(i64::MAX);
        self.write(move |conn| {
            // Immediate: the read of `used_at` and the writes that depend on it form one
            // step, so concurrent rotations of one token see each other's first use.
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let token: Option<(String, UnixMillis, Option<UnixMillis>)> = tx
                .prepare_cached(
                    "SELECT session_id, expires_at, used_at FROM refresh_tokens \
                     WHERE token_hash = ?1",
                )?
                .query_row([presented], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .optional()?;
            let Some((session_id, token_expires_at, used_at)) = token else {
                return Ok(RotateOutcome::NotFound);
            };
            let Some(mut session) = select_session(&tx, &session_id)? else {
                // Unreachable with foreign keys on; answer as if the token were gone.
                return Ok(RotateOutcome::NotFound);
            };
            if session.revoked_at.is_some() {
                return Ok(RotateOutcome::Revoked { session_id });
            }
            if token_expires_at <= now || session.expires_at <= now {
                return Ok(RotateOutcome::Expired { session_id });
            }
            let retry = match used_at {
                None => {
                    tx.prepare_cached(
                        "UPDATE refresh_tokens SET used_at = ?2 WHERE token_hash = ?1",
                    )?
                    .execute(params![presented, now])?;
                    false
                }
                // The window runs from the first use; a retry does not move it, so a thief
                // cannot keep a stolen token alive by presenting it again and again.
                Some(first_use) if now.saturating_sub(first_use) <= grace => true,
                Some(_) => {
                    tx.execute(
                        "UPDATE sessions SET revoked_at = ?2 WHERE id = ?1",
                        params![session_id, now],
                    )?;
                    tx.execute(
                        "UPDATE refresh_tokens SET used_at = coalesce(used_at, ?2) \
                         WHERE session_id = ?1",
                        params![session_id, now],
                    )?;
                    tx.commit()?;
                    return Ok(RotateOutcome::ReuseDetected { session_id });
                }
            };
            insert_refresh(
                &tx,
                &RefreshToken {
                    token_hash: new_hash,
                    session_id: session_id.clone(),
                    created_at: now,
                    expires_at: new_expires_at,
                    used_at: None,
                },
            )?;
            tx.prepare_cached(
                "UPDATE sessions SET last_used_at = max(last_used_at, ?2) WHERE id = ?1",
            )?
            .execute(params![session_id, now])?;
            tx.commit()?;
            session.last_used_at = session.last_used_at.max(now);
            Ok(RotateOutcome::Rotated { session, retry })
        })
        .await
    }

    async fn create_api_key(&self, key: &ApiKey) -> Result<(), StoreError> {
        let key = key.clone();
        let scopes = key.scopes.as_deref().map(to_json).transpose()?;
        self.write(move |conn| {
            conn.execute(
                &format!(
                    "INSERT INTO api_keys ({API_KEY_COLUMNS}) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"
                ),
                params![
                    key.id,
                    key.user_id,
                    key.kind.as_str(),
                    key.name,
                    key.prefix,
                    key.key_hash,
                    scopes,
                    key.created_at,
                    key.expires_at,
                    key.revoked_at,
                    key.last_used_at
                ],
            )?;
            Ok(())
        })
        .await
    }

    async fn get_api_key(&self, id: &str) -> Result<Option<ApiKey>, StoreError> {
        let id = id.to_owned();
        self.read(move |conn| {
            Ok(conn
                .prepare_cached(&format!(
                    "SELECT {API_KEY_COLUMNS} FROM api_keys WHERE id = ?1"
                ))?
                .query_row([id], api_key_from_row)
                .optional()?)
        })
        .await
    }

    async fn get_api_key_by_hash(&self, hash: &TokenHash) -> Result<Option<ApiKey>, StoreError> {
        let hash = *hash;
        self.read(move |conn| {
            Ok(conn
                .prepare_cached(&format!(
                    "SELECT {API_KEY_COLUMNS} FROM api_keys WHERE key_hash = ?1"
                ))?
                .query_row([hash], api_key_from_row)
                .optional()?)
        })
        .await
    }

    async fn list_api_keys(&self, user_id: &str) -> Result<Vec<ApiKey>, StoreError> {
        let user_id = user_id.to_owned();
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {API_KEY_COLUMNS} FROM api_keys WHERE user_id = ?1 \
                 ORDER BY created_at, id"
            ))?;
            let keys = stmt
                .query_map([user_id], api_key_from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(keys)
        })
        .await
    }

    async fn revoke_api_key(
        &self,
        id: &str,
        owner: Option<&str>,
        now: UnixMillis,
    ) -> Result<(), StoreError> {
        let id = id.to_owned();
        let owner = owner.map(str::to_owned);
        self.write(move |conn| {
            match conn.execute(
                "UPDATE api_keys SET revoked_at = coalesce(revoked_at, ?3) \
                 WHERE id = ?1 AND (?2 IS NULL OR user_id = ?2)",
                params![id, owner, now],
            )? {
                0 => Err(StoreError::NotFound),
                _ => Ok(()),
            }
        })
        .await
    }

    async fn revoke_user_api_keys(
        &self,
        user_id: &str,
        now: UnixMillis,
    ) -> Result<u64, StoreError> {
        let user_id = user_id.to_owned();
        self.write(move |conn| {
            let n = conn.execute(
                "UPDATE api_keys SET revoked_at = ?2 WHERE user_id = ?1 AND revoked_at IS NULL",
                params![user_id, now],
            )?;
            Ok(n as u64)
        })
        .await
    }

    async fn record_session_use(&self, uses: &[(String, UnixMillis)]) -> Result<(), StoreError> {
        if uses.is_empty() {
            return Ok(());
        }
        let uses = uses.to_vec();
        self.write(move |conn| {
            // One transaction for the batch: one fsync instead of one per session.
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            {
                let mut stmt = tx.prepare_cached(
                    "UPDATE sessions SET last_used_at = max(last_used_at, ?2) WHERE id = ?1",
                )?;
                for (id, at) in &uses {
                    stmt.execute(params![id, at])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn record_api_key_use(&self, uses: &[(String, UnixMillis)]) -> Result<(), StoreError> {
        if uses.is_empty() {
            return Ok(());
        }
        let uses = uses.to_vec();
        self.write(move |conn| {
            // One transaction for the batch: one fsync instead of one per key.
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            {
                let mut stmt = tx.prepare_cached(
                    "UPDATE api_keys SET last_used_at = max(coalesce(last_used_at, ?2), ?2) \
                     WHERE id = ?1",
                )?;
                for (id, at) in &uses {
                    stmt.execute(params![id, at])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn insert_signing_key_if_absent(
        &self,
        key: &SigningKey,
    ) -> Result<SigningKey, StoreError> {
        let key = key.clone();
        self.write(move |conn| {
            // Immediate: the check and the insert hold the write lock together, so of two
            // processes bootstrapping the same file one inserts and the other reads it.
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let current = tx
                .query_row(
                    &format!(
                        "SELECT {SIGNING_KEY_COLUMNS} FROM signing_keys WHERE retired_at IS NULL \
                         ORDER BY created_at DESC, kid DESC LIMIT 1"
                    ),
                    [],
                    signing_key_from_row,
                )
                .optional()?;
            if let Some(current) = current {
                return Ok(current);
            }
            tx.execute(
                &format!(
                    "INSERT INTO signing_keys ({SIGNING_KEY_COLUMNS}) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, NULL)"
                ),
                params![
                    key.kid,
                    key.alg,
                    key.private_key,
                    key.public_jwk,
                    key.created_at,
                    key.not_after
                ],
            )?;
            tx.commit()?;
            Ok(SigningKey {
                retired_at: None,
                ..key
            })
        })
        .await
    }

    async fn rotate_signing_key(
        &self,
        new_key: &SigningKey,
        old_not_after: UnixMillis,
    ) -> Result<(), StoreError> {
        let key = new_key.clone();
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute(
                "UPDATE signing_keys SET retired_at = ?1, not_after = ?2 \
                 WHERE retired_at IS NULL",
                params![key.created_at, old_not_after],
            )?;
            tx.execute(
                &format!(
                    "INSERT INTO signing_keys ({SIGNING_KEY_COLUMNS}) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, NULL)"
                ),
                params![
                    key.kid,
                    key.alg,
                    key.private_key,
                    key.public_jwk,
                    key.created_at,
                    key.not_after
                ],
            )?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn list_signing_keys(&self) -> Result<Vec<SigningKey>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {SIGNING_KEY_COLUMNS} FROM signing_keys \
                 ORDER BY retired_at IS NOT NULL, coalesce(retired_at, created_at) DESC, \
                          created_at DESC, kid"
            ))?;
            let keys = stmt
                .query_map([], signing_key_from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(keys)
        })
        .await
    }

    async fn retire_signing_key(
        &self,
        kid: &str,
        retired_at: UnixMillis,
        not_after: Option<UnixMillis>,
    ) -> Result<(), StoreError> {
        let kid = kid.to_owned();
        self.write(move |conn| {
            match conn.execute(
                "UPDATE signing_keys SET retired_at = coalesce(retired_at, ?2), not_after = ?3 \
                 WHERE kid = ?1",
                params![kid, retired_at, not_after],
            )? {
                0 => Err(StoreError::NotFound),
                _ => Ok(()),
            }
        })
        .await
    }

    async fn create_oauth_identity(&self, identity: &OAuthIdentity) -> Result<(), StoreError> {
        let identity = identity.clone();
        self.write(move |conn| {
            conn.execute(
                &format!(
                    "INSERT INTO oauth_identities ({IDENTITY_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5)"
                ),
                params![
                    identity.provider,
                    identity.subject,
                    identity.user_id,
                    identity.email,
                    identity.created_at
                ],
            )?;
            Ok(())
        })
        .await
    }

    async fn get_oauth_identity(
        &self,
        provider: &str,
        subject: &str,
    ) -> Result<Option<OAuthIdentity>, StoreError> {
        let (provider, subject) = (provider.to_owned(), subject.to_owned());
        self.read(move |conn| {
            Ok(conn
                .prepare_cached(&format!(
                    "SELECT {IDENTITY_COLUMNS} FROM oauth_identities \
                     WHERE provider = ?1 AND subject = ?2"
                ))?
                .query_row(params![provider, subject], identity_from_row)
                .optional()?)
        })
        .await
    }

    async fn list_oauth_identities(&self, user_id: &str) -> Result<Vec<OAuthIdentity>, StoreError> {
        let user_id = user_id.to_owned();
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {IDENTITY_COLUMNS} FROM oauth_identities WHERE user_id = ?1 \
                 ORDER BY created_at, provider, subject"
            ))?;
            let rows = stmt
                .query_map([user_id], identity_from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
        .await
    }

    async fn delete_oauth_identity(
        &self,
        user_id: &str,
        provider: &str,
        subject: &str,
    ) -> Result<(), StoreError> {
        let (user_id, provider, subject) =
            (user_id.to_owned(), provider.to_owned(), subject.to_owned());
        self.write(move |conn| {
            match conn.execute(
                "DELETE FROM oauth_identities \
                 WHERE user_id = ?1 AND provider = ?2 AND subject = ?3",
                params![user_id, provider, subject],
            )? {
                0 => Err(StoreError::NotFound),
                _ => Ok(()),
            }
        })
        .await
    }

    async fn create_one_time_token(&self, token: &OneTimeToken) -> Result<(), StoreError> {
        let token = token.clone();
        let email = token.email.as_deref().map(normalize_email);
        let payload = to_json(&token.payload)?;
        self.write(move |conn| {
            conn.execute(
                &format!(
                    "INSERT INTO one_time_tokens ({ONE_TIME_COLUMNS}) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
                ),
                params![
                    token.token_hash,
                    token.kind.as_str(),
                    token.user_id,
                    email,
                    payload,
                    token.created_at,
                    token.expires_at
                ],
            )?;
            Ok(())
        })
        .await
    }

    async fn get_one_time_token(
        &self,
        hash: &TokenHash,
        kind: OneTimeKind,
        now: UnixMillis,
    ) -> Result<Option<OneTimeToken>, StoreError> {
        let hash = *hash;
        self.read(move |conn| {
            Ok(conn
                .prepare_cached(&format!(
                    "SELECT {ONE_TIME_COLUMNS} FROM one_time_tokens \
                     WHERE token_hash = ?1 AND kind = ?2 AND expires_at > ?3"
                ))?
                .query_row(params![hash, kind.as_str(), now], one_time_from_row)
                .optional()?)
        })
        .await
    }

    async fn consume_one_time_token(
        &self,
        hash: &TokenHash,
        kind: OneTimeKind,
        now: UnixMillis,
    ) -> Result<Option<OneTimeToken>, StoreError> {
        let hash = *hash;
        self.write(move |conn| {
            // One statement: the check and the removal cannot be split by another consumer.
            Ok(conn
                .prepare_cached(&format!(
                    "DELETE FROM one_time_tokens \
                     WHERE token_hash = ?1 AND kind = ?2 AND expires_at > ?3 \
                     RETURNING {ONE_TIME_COLUMNS}"
                ))?
                .query_row(params![hash, kind.as_str(), now], one_time_from_row)
                .optional()?)
        })
        .await
    }

    async fn delete_one_time_tokens(
        &self,
        user_id: &str,
        kind: OneTimeKind,
    ) -> Result<u64, StoreError> {
        let user_id = user_id.to_owned();
        self.write(move |conn| {
            let n = conn.execute(
                "DELETE FROM one_time_tokens WHERE user_id = ?1 AND kind = ?2",
                params![user_id, kind.as_str()],
            )?;
            Ok(n as u64)
        })
        .await
    }

    async fn delete_one_time_tokens_for_email(
        &self,
        email: &str,
        kind: OneTimeKind,
    ) -> Result<u64, StoreError> {
        let email = normalize_email(email);
        self.write(move |conn| {
            // No index on `email`: the table holds only live links and is purged of expired
            // ones, and this runs once per invitation.
            let n = conn.execute(
                "DELETE FROM one_time_tokens WHERE email = ?1 AND kind = ?2",
                params![email, kind.as_str()],
            )?;
            Ok(n as u64)
        })
        .await
    }

    async fn purge_expired(&self, now: UnixMillis) -> Result<PurgeCounts, StoreError> {
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let refresh_tokens =
                tx.execute("DELETE FROM refresh_tokens WHERE expires_at <= ?1", [now])? as u64;
            let sessions = tx.execute(
                "DELETE FROM sessions WHERE expires_at <= ?1 OR revoked_at <= ?1",
                [now],
            )? as u64;
            let one_time_tokens =
                tx.execute("DELETE FROM one_time_tokens WHERE expires_at <= ?1", [now])? as u64;
            let signing_keys = tx.execute(
                "DELETE FROM signing_keys \
                 WHERE retired_at IS NOT NULL AND not_after IS NOT NULL AND not_after <= ?1",
                [now],
            )? as u64;
            tx.commit()?;
            Ok(PurgeCounts {
                sessions,
                refresh_tokens,
                one_time_tokens,
                signing_keys,
            })
        })
        .await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::store::conformance;

    fn memory() -> Arc<dyn Store> {
        Arc::new(SqliteStore::open_in_memory().unwrap())
    }

    fn file(dir: &tempfile::TempDir) -> Arc<dyn Store> {
        Arc::new(SqliteStore::open(dir.path().join("gatehouse.db")).unwrap())
    }

    /// One test per suite function, against a private in-memory database and against a
    /// file with the reader pool in use.
    macro_rules! conformance_tests {
        ($($name:ident),* $(,)?) => {
            mod in_memory {
                use super::*;
                $(
                    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                    async fn $name() {
                        conformance::$name(memory()).await;
                    }
                )*
            }
            mod on_file {
                use super::*;
                $(
                    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                    async fn $name() {
                        let dir = tempfile::tempdir().unwrap();
                        conformance::$name(file(&dir)).await;
                    }
                )*
            }
        };
    }

    conformance_tests!(
        ping,
        users_create_get_and_uniqueness,
        users_update,
        users_delete_cascades,
        users_list_pagination_and_filters,
        sessions_lifecycle,
        refresh_rotation_outcomes,
        refresh_concurrent_rotation,
        api_keys_lifecycle,
        signing_keys_bootstrap_and_rotation,
        signing_keys_bootstrap_race,
        one_time_tokens_single_use,
        one_time_tokens_concurrent_consume,
        one_time_tokens_concurrent_insert,
        users_mfa_swap,
        oauth_identities_lifecycle,
        purge_expired,
    );

    /// The whole suite on one shared file, as the Redis backend will run it on one server.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn whole_suite_shares_one_store() {
        let dir = tempfile::tempdir().unwrap();
        conformance::run_all(file(&dir)).await;
    }

    fn user_version(path: &Path) -> i64 {
        let conn = Connection::open(path).unwrap();
        conn.pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn data_survives_reopen_and_migrations_are_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        // Parent directories are created.
        let path = dir.path().join("nested/deeper/gatehouse.db");
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).unwrap());
        let user = User {
            id: crate::store::new_id(),
            email: Some("Persist@Example.com".into()),
            username: Some("persist".into()),
            name: None,
            external_id: None,
            email_verified: true,
            roles: vec!["admin".into()],
            disabled: false,
            password_hash: Some("$argon2id$v=19$x".into()),
            mfa: None,
            created_at: conformance::T0,
            updated_at: conformance::T0,
        };
        store.create_user(&user).await.unwrap();
        let session = Session {
            id: crate::store::new_id(),
            user_id: user.id.clone(),
            created_at: conformance::T0,
            last_used_at: conformance::T0,
            expires_at: conformance::T0 + 1000,
            user_agent: None,
            ip: None,
            amr: vec!["pwd".into()],
            revoked_at: None,
        };
        let token = RefreshToken {
            token_hash: conformance::random_hash(),
            session_id: session.id.clone(),
            created_at: conformance::T0,
            expires_at: conformance::T0 + 1000,
            used_at: None,
        };
        store.create_session(&session, Some(&token)).await.unwrap();
        let key = SigningKey {
            kid: "k1".into(),
            alg: "EdDSA".into(),
            private_key: vec![1, 2, 3],
            public_jwk: "{}".into(),
            created_at: conformance::T0,
            not_after: None,
            retired_at: None,
        };
        store.insert_signing_key_if_absent(&key).await.unwrap();
        drop(store);
        assert_eq!(user_version(&path), SCHEMA_VERSION);

        for _ in 0..2 {
            let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).unwrap());
            let mut expected = user.clone();
            expected.email = Some("persist@example.com".into());
            assert_eq!(store.get_user(&user.id).await.unwrap(), Some(expected));
            assert_eq!(
                store.get_session(&session.id).await.unwrap(),
                Some(session.clone())
            );
            assert_eq!(store.list_signing_keys().await.unwrap(), vec![key.clone()]);
            drop(store);
            assert_eq!(user_version(&path), SCHEMA_VERSION);
        }
        let store = SqliteStore::open(&path).unwrap();
        let outcome = store
            .rotate_refresh(
                &token.token_hash,
                &conformance::random_hash(),
                conformance::T0 + 1,
                Duration::from_secs(10),
                conformance::T0 + 1000,
            )
            .await
            .unwrap();
        assert!(matches!(
            outcome,
            RotateOutcome::Rotated { retry: false, .. }
        ));
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("future.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
                .unwrap();
        }
        match SqliteStore::open(&path) {
            Err(StoreError::Internal(message)) => assert!(message.contains("newer"), "{message}"),
            Err(other) => panic!("unexpected error {other:?}"),
            Ok(_) => panic!("a newer schema was accepted"),
        }
    }

    #[test]
    fn the_file_is_in_wal_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pragmas.db");
        let _store = SqliteStore::open(&path).unwrap();
        let conn = Connection::open(&path).unwrap();
        let mode: String = conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }

    #[test]
    fn an_unopenable_path_is_unavailable() {
        let dir = tempfile::tempdir().unwrap();
        // A regular file where a parent directory should be.
        let blocker = dir.path().join("blocker");
        std::fs::write(&blocker, b"x").unwrap();
        match SqliteStore::open(blocker.join("gatehouse.db")) {
            Err(StoreError::Unavailable(_)) => {}
            Err(other) => panic!("unexpected error {other:?}"),
            Ok(_) => panic!("opened a database under a file"),
        }
    }

    #[test]
    fn constraint_messages_map_to_fields() {
        let unique = ffi::SQLITE_CONSTRAINT_UNIQUE;
        let message = |m: &str| Some(m.to_owned());
        assert!(matches!(
            constraint_error(unique, &message("UNIQUE constraint failed: users.email")),
            Some(StoreError::Conflict {
                field: ConflictField::Email
            })
        ));
        assert!(matches!(
            constraint_error(ffi::SQLITE_CONSTRAINT_FOREIGNKEY, &None),
            Some(StoreError::NotFound)
        ));
        assert!(constraint_error(unique, &message("UNIQUE constraint failed: x.y")).is_none());
        assert!(constraint_error(ffi::SQLITE_CONSTRAINT_CHECK, &None).is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn readers_run_beside_a_long_write() {
        // A reader must not wait for the writer: hold the writer lock and read.
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(dir.path().join("r.db")).unwrap());
        let guard = Arc::clone(&store.writer).lock_owned().await;
        let read = tokio::time::timeout(Duration::from_secs(5), store.ping()).await;
        drop(guard);
        assert!(matches!(read, Ok(Ok(()))), "{read:?}");
    }
}
