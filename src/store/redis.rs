//! The shared [`Store`] backend: Redis (SPEC section 7), for several replicas that must
//! behave as one gateway.
//!
//! Owns: the key layout, the Lua scripts that make every multi-key change atomic, the
//! connection (multiplexed and reconnecting with backoff through the `redis` crate's
//! `ConnectionManager`, or a cluster connection), and mapping Redis errors onto
//! [`StoreError`] (a connection that is down or times out is `Unavailable`, so callers
//! answer 503 `store_unavailable`). Must not touch: anything above L0.
//!
//! Layout: every key of the account domain carries one hash tag, `gatehouse:{acct}:...`,
//! so in Redis Cluster they all live in one slot and a Lua script may touch any of them
//! atomically (uniqueness of email/username/external id, refresh rotation with reuse
//! detection, single-use consumption, cascading deletes). The account data is small and
//! its hot reads are cached by every replica, so one slot is not the bottleneck; the
//! per-request traffic that needs spreading (rate-limit counters) uses other keys.
//!
//! Records are hashes, one field per column; an absent field is `None`:
//! - `u:{id}` user; `ue:{email}`, `un:{username}`, `ux:{external_id}` -> id; `users`, a
//!   sorted set of `{created_at:020}:{id}` members (all scores 0, so lexicographic order
//!   is `(created_at, id)`, the pagination order; the member is the cursor);
//! - `s:{id}` session; `us:{user}` its ids; `x:s` ids scored by when they stop being
//!   usable (expiry, or revocation if earlier), for purging;
//! - `r:{hash}` refresh token; `sr:{session}` its hashes; `x:r` hashes by expiry;
//! - `k:{id}` API key; `kh:{hash}` -> id; `uk:{user}` its ids;
//! - `sk:{kid}` signing key; `sks` the kids;
//! - `o:{hash}` one-time token; `uo:{user}` and `oe:{email}` its hashes by owner and by
//!   address; `x:o` hashes by expiry;
//! - `oi:{provider}:{subject}` OAuth identity (provider names hold no `:`); `uoi:{user}`
//!   its `{provider}:{subject}` members.
//!
//! Hashes of secrets appear in key names as lowercase hex. Time is never Redis's own:
//! expiry is compared with the `now` the caller passes (as in the SQLite backend), and
//! expired records are removed by [`Store::purge_expired`], not by Redis TTLs.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::StreamExt;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisError, RedisFuture, RedisResult, Script, Value};

use super::counters::{GcraReply, SharedCounters, WindowState};
use super::{
    ApiKey, ApiKeyKind, ConflictField, Invalidation, MAX_PAGE, OAuthIdentity, OneTimeKind,
    OneTimeToken, PurgeCounts, RefreshToken, RotateOutcome, Session, SigningKey, Store, StoreError,
    TokenHash, UnixMillis, User, UserPage, UserPatch, UserQuery, normalize_email, to_hex,
};
use crate::metrics::{Metrics, StoreErrorKind, StoreLink};

const LOG: &str = "gatehouse::store";

/// Connection settings of the Redis backend (plain data; the config layer fills it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisOptions {
    /// `redis://` or `rediss://` URL (for a cluster: any one node).
    pub url: String,
    /// Redis Cluster instead of a single server.
    pub cluster: bool,
    /// Key prefix; must contain the one hash tag of the data set (`{...}`).
    pub prefix: String,
    /// How long connecting may take before the store counts as unavailable.
    pub connect_timeout: Duration,
    /// How long one command may take before the store counts as unavailable.
    pub response_timeout: Duration,
    /// Extra trusted roots (PEM) for `rediss://`, on top of Mozilla's: tests with a private
    /// CA. Not a config key.
    pub tls_root_pem: Option<Vec<u8>>,
}

impl RedisOptions {
    /// Options for `url` with the default prefix and timeouts.
    pub fn new(url: impl Into<String>, cluster: bool) -> RedisOptions {
        RedisOptions {
            url: url.into(),
            cluster,
            prefix: DEFAULT_PREFIX.to_owned(),
            // A request waits at most this long for an unreachable store before its 503.
            connect_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_secs(1),
            tls_root_pem: None,
        }
    }
}

/// The prefix of every key, with the hash tag that keeps them in one cluster slot.
pub const DEFAULT_PREFIX: &str = "gatehouse:{acct}:";

/// Users fetched per round trip while a filtered listing fills a page.
const LIST_BATCH: usize = 200;
/// Records removed per kind and script run by `purge_expired` (keeps each script short).
const PURGE_BATCH: u64 = 500;

/// A single server (multiplexed, reconnecting) or a cluster.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// The Redis-backed [`Store`].
pub struct RedisStore {
    conn: Conn,
    /// What the invalidation subscriber connects with (in a cluster, classic pub/sub reaches
    /// every node, so the first one will do).
    pubsub: redis::Client,
    /// The pub/sub channel of cache invalidations.
    channel: String,
    prefix: String,
    /// A key of the data set's slot: scripts name it so a cluster client routes them to
    /// the node holding every key they touch.
    anchor: String,
    scripts: Scripts,
    metrics: Option<Arc<Metrics>>,
    /// Whether the last request failed for want of a connection (to log and count the
    /// transitions, not every failure).
    down: AtomicBool,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .field("cluster", &matches!(self.conn, Conn::Cluster(_)))
            .finish_non_exhaustive()
    }
}

fn unavailable(e: RedisError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// Connection trouble (down, refused, timed out, cluster not ready) is `Unavailable`:
/// retrying later may work. A script or protocol error is a bug: `Internal`.
fn map_err(e: RedisError) -> StoreError {
    if e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_cluster_error()
        || matches!(
            e.kind(),
            redis::ErrorKind::Server(
                redis::ServerErrorKind::BusyLoading
                    | redis::ServerErrorKind::ClusterDown
                    | redis::ServerErrorKind::TryAgain
                    | redis::ServerErrorKind::MasterDown
                    | redis::ServerErrorKind::ReadOnly
            )
        )
    {
        unavailable(e)
    } else {
        StoreError::Internal(format!("redis: {e}"))
    }
}

impl RedisStore {
    /// Connects (the first connection must succeed; later outages are reconnected in the
    /// background with exponential backoff) and checks the server answers.
    pub async fn connect(options: &RedisOptions) -> Result<RedisStore, StoreError> {
        if !(options.prefix.contains('{') && options.prefix.contains('}')) {
            return Err(StoreError::Internal(format!(
                "redis key prefix {:?} has no hash tag",
                options.prefix
            )));
        }
        let certificates = || redis::TlsCertificates {
            client_tls: None,
            root_cert: options.tls_root_pem.clone(),
        };
        let client = match options.tls_root_pem {
            Some(_) => redis::Client::build_with_tls(options.url.as_str(), certificates()),
            None => redis::Client::open(options.url.as_str()),
        }
        .map_err(map_err)?;
        let conn = if options.cluster {
            let mut builder = redis::cluster::ClusterClient::builder(vec![options.url.as_str()])
                .connection_timeout(options.connect_timeout)
                .response_timeout(options.response_timeout)
                .retries(2);
            if options.tls_root_pem.is_some() {
                builder = builder.certs(certificates());
            }
            let cluster = builder.build().map_err(map_err)?;
            Conn::Cluster(cluster.get_async_connection().await.map_err(map_err)?)
        } else {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(options.connect_timeout))
                .set_response_timeout(Some(options.response_timeout))
                .set_number_of_retries(2)
                .set_min_delay(Duration::from_millis(50))
                .set_max_delay(Duration::from_secs(2));
            Conn::Single(
                client
                    .clone()
                    .get_connection_manager_with_config(config)
                    .await
                    .map_err(map_err)?,
            )
        };
        let store = RedisStore {
            conn,
            pubsub: client,
            channel: format!("{}invalidate", options.prefix),
            prefix: options.prefix.clone(),
            anchor: format!("{}anchor", options.prefix),
            scripts: Scripts::new(),
            metrics: None,
            down: AtomicBool::new(false),
        };
        store.ping().await?;
        Ok(store)
    }

    /// Reports request latency, errors and reconnections to `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> RedisStore {
        self.metrics = Some(metrics);
        self
    }

    /// Awaits one request to Redis, timing it and noting whether the store went down or
    /// came back.
    async fn observe<T>(
        &self,
        request: impl std::future::Future<Output = RedisResult<T>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let result = request.await;
        if let Some(m) = &self.metrics {
            m.store_request(started.elapsed().as_secs_f64());
        }
        match result {
            Ok(v) => {
                if self.down.swap(false, Ordering::AcqRel) {
                    tracing::info!(target: LOG, "redis reachable again");
                    if let Some(m) = &self.metrics {
                        m.store_reconnect(StoreLink::commands);
                    }
                }
                Ok(v)
            }
            Err(e) => {
                let err = map_err(e);
                let kind = match &err {
                    StoreError::Unavailable(why) => {
                        if !self.down.swap(true, Ordering::AcqRel) {
                            tracing::warn!(target: LOG, error = %why, "redis unreachable: requests that need the store get 503 until it is back");
                        }
                        StoreErrorKind::unavailable
                    }
                    _ => StoreErrorKind::internal,
                };
                if let Some(m) = &self.metrics {
                    m.store_error(kind);
                }
                Err(err)
            }
        }
    }

    async fn query<T: redis::FromRedisValue>(&self, cmd: &Cmd) -> Result<T, StoreError> {
        let mut conn = self.conn.clone();
        self.observe(cmd.query_async(&mut conn)).await
    }

    /// Revokes one session (`s:`, kept in the purge set `x:s`) or API key (`k:`), checking
    /// the owner when one is given.
    async fn revoke_one(
        &self,
        record: &str,
        id: &str,
        owner: Option<&str>,
        now: UnixMillis,
        purge_set: &str,
    ) -> Result<(), StoreError> {
        let args = vec![
            Arg::text(record),
            Arg::text(id),
            Arg::opt(owner),
            Arg::num(now),
            Arg::text(purge_set),
        ];
        let v = self.run(&self.scripts.revoke_one, args).await?;
        answer(&v)?.check()?;
        Ok(())
    }

    /// Revokes every unrevoked record of a user listed in `owner_set` but `except`;
    /// answers how many.
    async fn revoke_all(
        &self,
        owner_set: &str,
        record: &str,
        user_id: &str,
        except: Option<&str>,
        now: UnixMillis,
        purge_set: &str,
    ) -> Result<u64, StoreError> {
        let args = vec![
            Arg::text(owner_set),
            Arg::text(record),
            Arg::text(user_id),
            Arg::opt(except),
            Arg::num(now),
            Arg::text(purge_set),
        ];
        let v = self.run(&self.scripts.revoke_all, args).await?;
        count(answer(&v)?.check()?.nth(0)?)
    }

    /// Flushes a batch of last uses of sessions (`s:`) or API keys (`k:`).
    async fn record_use(
        &self,
        record: &str,
        uses: &[(String, UnixMillis)],
    ) -> Result<(), StoreError> {
        if uses.is_empty() {
            return Ok(());
        }
        let mut args = Vec::with_capacity(uses.len() * 2 + 1);
        args.push(Arg::text(record));
        for (id, at) in uses {
            args.push(Arg::text(id.as_str()));
            args.push(Arg::num(*at));
        }
        self.run(&self.scripts.record_use, args).await?;
        Ok(())
    }

    /// Runs `script` with the prefix as `ARGV[1]` followed by `args`.
    async fn run(&self, script: &Script, args: Vec<Arg>) -> Result<Value, StoreError> {
        let mut invocation = script.key(&self.anchor);
        invocation.arg(&self.prefix);
        for a in &args {
            match a {
                Arg::Text(s) => invocation.arg(s.as_str()),
                Arg::Bytes(b) => invocation.arg(b.as_slice()),
            };
        }
        let mut conn = self.conn.clone();
        self.observe(invocation.invoke_async(&mut conn)).await
    }

    fn key(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.prefix)
    }

    async fn hgetall(&self, suffix: &str) -> Result<Option<Fields>, StoreError> {
        let v: Value = self
            .query(redis::cmd("HGETALL").arg(self.key(suffix)))
            .await?;
        let f = Fields::from_value(&v)?;
        Ok((!f.is_empty()).then_some(f))
    }

    async fn by_index(&self, index: &str, record: &str) -> Result<Option<Fields>, StoreError> {
        let v = self
            .run(
                &self.scripts.by_index,
                vec![Arg::text(index), Arg::text(record)],
            )
            .await?;
        let f = Fields::from_value(&v)?;
        Ok((!f.is_empty()).then_some(f))
    }

    async fn members(&self, set: &str, record: &str) -> Result<Vec<Fields>, StoreError> {
        let v = self
            .run(
                &self.scripts.members,
                vec![Arg::text(set), Arg::text(record)],
            )
            .await?;
        items(&v)?.iter().map(Fields::from_value).collect()
    }
}

/// A script argument after the prefix.
enum Arg {
    Text(String),
    Bytes(Vec<u8>),
}

impl Arg {
    fn text(s: impl Into<String>) -> Arg {
        Arg::Text(s.into())
    }

    fn num(n: i64) -> Arg {
        Arg::Text(n.to_string())
    }

    fn opt(s: Option<&str>) -> Arg {
        Arg::Text(s.unwrap_or("").to_owned())
    }
}

fn unhex(text: &str) -> Result<TokenHash, StoreError> {
    let bad = || StoreError::Internal(format!("bad hash {text:?} in redis"));
    if text.len() != 64 {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, pair) in text.as_bytes().chunks(2).enumerate() {
        let s = std::str::from_utf8(pair).map_err(|_| bad())?;
        out[i] = u8::from_str_radix(s, 16).map_err(|_| bad())?;
    }
    Ok(out)
}

fn json<T: serde::Serialize + ?Sized>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Internal(format!("encode json: {e}")))
}

/// The `users` member (and cursor) of a user: zero-padded so byte order is time order.
fn user_member(created_at: UnixMillis, id: &str) -> String {
    format!("{:020}:{id}", created_at.max(0))
}

fn valid_cursor(cursor: &str) -> bool {
    let b = cursor.as_bytes();
    b.len() > 21 && b[..20].iter().all(u8::is_ascii_digit) && b[20] == b':'
}

// ---- reading script answers ----

fn items(v: &Value) -> Result<&[Value], StoreError> {
    match v {
        Value::Array(items) | Value::Set(items) => Ok(items),
        Value::Nil => Ok(&[]),
        other => Err(StoreError::Internal(format!(
            "redis: expected an array, got {other:?}"
        ))),
    }
}

fn bytes(v: &Value) -> Result<Vec<u8>, StoreError> {
    match v {
        Value::BulkString(b) => Ok(b.clone()),
        Value::SimpleString(s) => Ok(s.clone().into_bytes()),
        Value::Int(i) => Ok(i.to_string().into_bytes()),
        Value::Okay => Ok(b"OK".to_vec()),
        other => Err(StoreError::Internal(format!(
            "redis: expected a string, got {other:?}"
        ))),
    }
}

fn text(v: &Value) -> Result<String, StoreError> {
    String::from_utf8(bytes(v)?).map_err(|_| StoreError::Internal("redis: non-UTF-8 text".into()))
}

/// A script's answer: a status word and what follows it.
struct Answer<'a> {
    status: String,
    rest: &'a [Value],
}

fn answer(v: &Value) -> Result<Answer<'_>, StoreError> {
    let all = items(v)?;
    let (first, rest) = all
        .split_first()
        .ok_or_else(|| StoreError::Internal("redis: empty script answer".into()))?;
    Ok(Answer {
        status: text(first)?,
        rest,
    })
}

impl Answer<'_> {
    /// Maps the common failure statuses; `Ok(self)` for anything else.
    fn check(self) -> Result<Self, StoreError> {
        match self.status.as_str() {
            "notfound" => Err(StoreError::NotFound),
            "conflict" => {
                let field = match self.rest.first().map(text).transpose()?.as_deref() {
                    Some("id") => ConflictField::Id,
                    Some("email") => ConflictField::Email,
                    Some("username") => ConflictField::Username,
                    Some("external_id") => ConflictField::ExternalId,
                    Some("key_hash") => ConflictField::KeyHash,
                    Some("token_hash") => ConflictField::TokenHash,
                    Some("kid") => ConflictField::Kid,
                    Some("oauth_identity") => ConflictField::OAuthIdentity,
                    other => {
                        return Err(StoreError::Internal(format!(
                            "redis: unknown conflict field {other:?}"
                        )));
                    }
                };
                Err(StoreError::Conflict { field })
            }
            _ => Ok(self),
        }
    }

    fn nth(&self, i: usize) -> Result<&Value, StoreError> {
        self.rest
            .get(i)
            .ok_or_else(|| StoreError::Internal(format!("redis: answer {} too short", self.status)))
    }
}

/// One hash's fields.
struct Fields(HashMap<String, Vec<u8>>);

impl Fields {
    fn from_value(v: &Value) -> Result<Fields, StoreError> {
        let mut map = HashMap::new();
        match v {
            Value::Map(pairs) => {
                for (k, v) in pairs {
                    map.insert(text(k)?, bytes(v)?);
                }
            }
            other => {
                let all = items(other)?;
                for pair in all.chunks(2) {
                    if let [k, v] = pair {
                        map.insert(text(k)?, bytes(v)?);
                    }
                }
            }
        }
        Ok(Fields(map))
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn opt(&self, name: &str) -> Result<Option<String>, StoreError> {
        self.0
            .get(name)
            .map(|b| {
                String::from_utf8(b.clone())
                    .map_err(|_| StoreError::Internal(format!("redis: field {name} not UTF-8")))
            })
            .transpose()
    }

    fn req(&self, name: &str) -> Result<String, StoreError> {
        self.opt(name)?
            .ok_or_else(|| StoreError::Internal(format!("redis: record without {name}")))
    }

    fn opt_num(&self, name: &str) -> Result<Option<i64>, StoreError> {
        self.opt(name)?
            .map(|s| {
                s.parse()
                    .map_err(|_| StoreError::Internal(format!("redis: field {name} not a number")))
            })
            .transpose()
    }

    fn num(&self, name: &str) -> Result<i64, StoreError> {
        self.opt_num(name)?
            .ok_or_else(|| StoreError::Internal(format!("redis: record without {name}")))
    }

    fn flag(&self, name: &str) -> Result<bool, StoreError> {
        Ok(self.opt(name)?.as_deref() == Some("1"))
    }

    fn list(&self, name: &str) -> Result<Option<Vec<String>>, StoreError> {
        self.opt(name)?
            .map(|s| {
                serde_json::from_str(&s)
                    .map_err(|e| StoreError::Internal(format!("redis: field {name}: {e}")))
            })
            .transpose()
    }

    fn raw(&self, name: &str) -> Option<Vec<u8>> {
        self.0.get(name).cloned()
    }
}

// ---- records <-> fields ----

fn flag(b: bool) -> &'static str {
    if b { "1" } else { "0" }
}

/// `name value` pairs of the fields that are present.
struct Pairs(Vec<Arg>);

impl Pairs {
    fn new() -> Pairs {
        Pairs(Vec::new())
    }

    fn put(&mut self, name: &str, value: impl Into<String>) -> &mut Self {
        self.0.push(Arg::text(name));
        self.0.push(Arg::Text(value.into()));
        self
    }

    fn put_opt(&mut self, name: &str, value: Option<impl Into<String>>) -> &mut Self {
        if let Some(v) = value {
            self.put(name, v);
        }
        self
    }

    fn put_bytes(&mut self, name: &str, value: Option<&[u8]>) -> &mut Self {
        if let Some(v) = value {
            self.0.push(Arg::text(name));
            self.0.push(Arg::Bytes(v.to_vec()));
        }
        self
    }
}

fn user_pairs(u: &User) -> Result<Pairs, StoreError> {
    let mut p = Pairs::new();
    p.put("id", u.id.as_str())
        .put_opt("email", u.email.as_deref())
        .put_opt("username", u.username.as_deref())
        .put_opt("name", u.name.as_deref())
        .put_opt("external_id", u.external_id.as_deref())
        .put("email_verified", flag(u.email_verified))
        .put("roles", json(&u.roles)?)
        .put("disabled", flag(u.disabled))
        .put_opt("password_hash", u.password_hash.as_deref())
        .put_bytes("mfa", u.mfa.as_deref())
        .put("created_at", u.created_at.to_string())
        .put("updated_at", u.updated_at.to_string());
    Ok(p)
}

fn user_from(f: &Fields) -> Result<User, StoreError> {
    Ok(User {
        id: f.req("id")?,
        email: f.opt("email")?,
        username: f.opt("username")?,
        name: f.opt("name")?,
        external_id: f.opt("external_id")?,
        email_verified: f.flag("email_verified")?,
        roles: f.list("roles")?.unwrap_or_default(),
        disabled: f.flag("disabled")?,
        password_hash: f.opt("password_hash")?,
        mfa: f.raw("mfa"),
        created_at: f.num("created_at")?,
        updated_at: f.num("updated_at")?,
    })
}

fn session_pairs(s: &Session) -> Result<Pairs, StoreError> {
    let mut p = Pairs::new();
    p.put("id", s.id.as_str())
        .put("user_id", s.user_id.as_str())
        .put("created_at", s.created_at.to_string())
        .put("last_used_at", s.last_used_at.to_string())
        .put("expires_at", s.expires_at.to_string())
        .put_opt("user_agent", s.user_agent.as_deref())
        .put_opt("ip", s.ip.as_deref())
        .put("amr", json(&s.amr)?)
        .put_opt("revoked_at", s.revoked_at.map(|t| t.to_string()));
    Ok(p)
}

fn session_from(f: &Fields) -> Result<Session, StoreError> {
    Ok(Session {
        id: f.req("id")?,
        user_id: f.req("user_id")?,
        created_at: f.num("created_at")?,
        last_used_at: f.num("last_used_at")?,
        expires_at: f.num("expires_at")?,
        user_agent: f.opt("user_agent")?,
        ip: f.opt("ip")?,
        amr: f.list("amr")?.unwrap_or_default(),
        revoked_at: f.opt_num("revoked_at")?,
    })
}

fn refresh_pairs(t: &RefreshToken) -> Pairs {
    let mut p = Pairs::new();
    p.put("session_id", t.session_id.as_str())
        .put("created_at", t.created_at.to_string())
        .put("expires_at", t.expires_at.to_string())
        .put_opt("used_at", t.used_at.map(|t| t.to_string()));
    p
}

fn identity_pairs(i: &OAuthIdentity) -> Pairs {
    let mut p = Pairs::new();
    p.put("provider", i.provider.as_str())
        .put("subject", i.subject.as_str())
        .put("user_id", i.user_id.as_str())
        .put_opt("email", i.email.as_deref())
        .put("created_at", i.created_at.to_string());
    p
}

fn identity_from(f: &Fields) -> Result<OAuthIdentity, StoreError> {
    Ok(OAuthIdentity {
        provider: f.req("provider")?,
        subject: f.req("subject")?,
        user_id: f.req("user_id")?,
        email: f.opt("email")?,
        created_at: f.num("created_at")?,
    })
}

fn api_key_pairs(k: &ApiKey) -> Result<Pairs, StoreError> {
    let mut p = Pairs::new();
    p.put("id", k.id.as_str())
        .put("user_id", k.user_id.as_str())
        .put("kind", k.kind.as_str())
        .put("name", k.name.as_str())
        .put("prefix", k.prefix.as_str())
        .put("key_hash", to_hex(&k.key_hash))
        .put_opt("scopes", k.scopes.as_ref().map(json).transpose()?)
        .put("created_at", k.created_at.to_string())
        .put_opt("expires_at", k.expires_at.map(|t| t.to_string()))
        .put_opt("revoked_at", k.revoked_at.map(|t| t.to_string()))
        .put_opt("last_used_at", k.last_used_at.map(|t| t.to_string()));
    Ok(p)
}

fn api_key_from(f: &Fields) -> Result<ApiKey, StoreError> {
    let kind = f.req("kind")?;
    Ok(ApiKey {
        id: f.req("id")?,
        user_id: f.req("user_id")?,
        kind: ApiKeyKind::parse(&kind)
            .ok_or_else(|| StoreError::Internal(format!("redis: unknown key kind {kind:?}")))?,
        name: f.req("name")?,
        prefix: f.req("prefix")?,
        key_hash: unhex(&f.req("key_hash")?)?,
        scopes: f.list("scopes")?,
        created_at: f.num("created_at")?,
        expires_at: f.opt_num("expires_at")?,
        revoked_at: f.opt_num("revoked_at")?,
        last_used_at: f.opt_num("last_used_at")?,
    })
}

fn signing_pairs(k: &SigningKey) -> Pairs {
    let mut p = Pairs::new();
    p.put("kid", k.kid.as_str())
        .put("alg", k.alg.as_str())
        .put_bytes("private_key", Some(&k.private_key))
        .put("public_jwk", k.public_jwk.as_str())
        .put("created_at", k.created_at.to_string())
        .put_opt("not_after", k.not_after.map(|t| t.to_string()))
        .put_opt("retired_at", k.retired_at.map(|t| t.to_string()));
    p
}

fn signing_from(f: &Fields) -> Result<SigningKey, StoreError> {
    Ok(SigningKey {
        kid: f.req("kid")?,
        alg: f.req("alg")?,
        private_key: f.raw("private_key").unwrap_or_default(),
        public_jwk: f.req("public_jwk")?,
        created_at: f.num("created_at")?,
        not_after: f.opt_num("not_after")?,
        retired_at: f.opt_num("retired_at")?,
    })
}

fn one_time_pairs(t: &OneTimeToken) -> Result<Pairs, StoreError> {
    let mut p = Pairs::new();
    p.put("token_hash", to_hex(&t.token_hash))
        .put("kind", t.kind.as_str())
        .put_opt("user_id", t.user_id.as_deref())
        .put_opt("email", t.email.as_deref().map(normalize_email))
        .put("payload", json(&t.payload)?)
        .put("created_at", t.created_at.to_string())
        .put("expires_at", t.expires_at.to_string());
    Ok(p)
}

fn one_time_from(f: &Fields) -> Result<OneTimeToken, StoreError> {
    let kind = f.req("kind")?;
    let payload = f.req("payload")?;
    Ok(OneTimeToken {
        token_hash: unhex(&f.req("token_hash")?)?,
        kind: OneTimeKind::parse(&kind)
            .ok_or_else(|| StoreError::Internal(format!("redis: unknown token kind {kind:?}")))?,
        user_id: f.opt("user_id")?,
        email: f.opt("email")?,
        payload: serde_json::from_str(&payload)
            .map_err(|e| StoreError::Internal(format!("redis: token payload: {e}")))?,
        created_at: f.num("created_at")?,
        expires_at: f.num("expires_at")?,
    })
}

// ---- scripts ----

/// Every script gets the key prefix as `ARGV[1]`. Numbers arrive as decimal strings and
/// are written back as those strings (Lua's own number formatting is never stored).
struct Scripts {
    create_user: Script,
    update_user: Script,
    swap_mfa: Script,
    delete_user: Script,
    by_index: Script,
    members: Script,
    list_users: Script,
    create_session: Script,
    touch_session: Script,
    revoke_one: Script,
    revoke_all: Script,
    rotate_refresh: Script,
    create_api_key: Script,
    record_use: Script,
    signing_insert: Script,
    signing_rotate: Script,
    signing_retire: Script,
    one_time_create: Script,
    one_time_consume: Script,
    one_time_delete_kind: Script,
    one_time_delete_email: Script,
    oauth_link: Script,
    oauth_unlink: Script,
    purge: Script,
}

impl Scripts {
    fn new() -> Scripts {
        Scripts {
            create_user: Script::new(CREATE_USER),
            update_user: Script::new(UPDATE_USER),
            swap_mfa: Script::new(SWAP_MFA),
            delete_user: Script::new(&format!("{DROP_ONE_TIME}{DELETE_USER}")),
            by_index: Script::new(BY_INDEX),
            members: Script::new(MEMBERS),
            list_users: Script::new(LIST_USERS),
            create_session: Script::new(CREATE_SESSION),
            touch_session: Script::new(TOUCH_SESSION),
            revoke_one: Script::new(REVOKE_ONE),
            revoke_all: Script::new(REVOKE_ALL),
            rotate_refresh: Script::new(ROTATE_REFRESH),
            create_api_key: Script::new(CREATE_API_KEY),
            record_use: Script::new(RECORD_USE),
            signing_insert: Script::new(&format!("{CURRENT_SIGNING_KEY}{SIGNING_INSERT}")),
            signing_rotate: Script::new(SIGNING_ROTATE),
            signing_retire: Script::new(SIGNING_RETIRE),
            one_time_create: Script::new(ONE_TIME_CREATE),
            one_time_consume: Script::new(&format!("{DROP_ONE_TIME}{ONE_TIME_CONSUME}")),
            one_time_delete_kind: Script::new(&format!("{DROP_ONE_TIME}{ONE_TIME_DELETE_KIND}")),
            one_time_delete_email: Script::new(&format!("{DROP_ONE_TIME}{ONE_TIME_DELETE_EMAIL}")),
            oauth_link: Script::new(OAUTH_LINK),
            oauth_unlink: Script::new(OAUTH_UNLINK),
            purge: Script::new(&format!("{DROP_ONE_TIME}{PURGE}")),
        }
    }
}

/// ARGV: prefix, `{provider}:{subject}`, user id, then the record's field/value pairs.
const OAUTH_LINK: &str = r#"
local p, m, uid = ARGV[1], ARGV[2], ARGV[3]
if redis.call('EXISTS', p..'u:'..uid) == 0 then return {'notfound'} end
if redis.call('EXISTS', p..'oi:'..m) == 1 then return {'conflict', 'oauth_identity'} end
redis.call('HSET', p..'oi:'..m, unpack(ARGV, 4))
redis.call('SADD', p..'uoi:'..uid, m)
return {'ok'}
"#;

/// ARGV: prefix, `{provider}:{subject}`, user id: unlinks only the owner's identity.
const OAUTH_UNLINK: &str = r#"
local p, m, uid = ARGV[1], ARGV[2], ARGV[3]
if redis.call('HGET', p..'oi:'..m, 'user_id') ~= uid then return {'notfound'} end
redis.call('DEL', p..'oi:'..m)
redis.call('SREM', p..'uoi:'..uid, m)
return {'ok'}
"#;

/// ARGV: prefix, id, email, username, external_id ('' = none), users member, then the
/// record's field/value pairs.
const CREATE_USER: &str = r#"
local p, id, email, username, ext = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if redis.call('EXISTS', p..'u:'..id) == 1 then return {'conflict', 'id'} end
if email ~= '' and redis.call('EXISTS', p..'ue:'..email) == 1 then return {'conflict', 'email'} end
if username ~= '' and redis.call('EXISTS', p..'un:'..username) == 1 then return {'conflict', 'username'} end
if ext ~= '' and redis.call('EXISTS', p..'ux:'..ext) == 1 then return {'conflict', 'external_id'} end
redis.call('HSET', p..'u:'..id, unpack(ARGV, 7))
if email ~= '' then redis.call('SET', p..'ue:'..email, id) end
if username ~= '' then redis.call('SET', p..'un:'..username, id) end
if ext ~= '' then redis.call('SET', p..'ux:'..ext, id) end
redis.call('ZADD', p..'users', 0, ARGV[6])
return {'ok'}
"#;

/// ARGV: prefix, id, now, then (op, field, value) triples: `set`, `del`, or `uniq` (a
/// unique field: value '' clears it).
const UPDATE_USER: &str = r#"
local p, id, now = ARGV[1], ARGV[2], ARGV[3]
local key = p..'u:'..id
if redis.call('EXISTS', key) == 0 then return {'notfound'} end
local idx = {email = 'ue:', username = 'un:', external_id = 'ux:'}
for i = 4, #ARGV, 3 do
  if ARGV[i] == 'uniq' and ARGV[i + 2] ~= '' then
    local owner = redis.call('GET', p..idx[ARGV[i + 1]]..ARGV[i + 2])
    if owner and owner ~= id then return {'conflict', ARGV[i + 1]} end
  end
end
for i = 4, #ARGV, 3 do
  local op, f, v = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if op == 'uniq' then
    local old = redis.call('HGET', key, f)
    if old then redis.call('DEL', p..idx[f]..old) end
    if v == '' then
      redis.call('HDEL', key, f)
    else
      redis.call('HSET', key, f, v)
      redis.call('SET', p..idx[f]..v, id)
    end
  elseif op == 'set' then
    redis.call('HSET', key, f, v)
  else
    redis.call('HDEL', key, f)
  end
end
redis.call('HSET', key, 'updated_at', now)
return {'ok', redis.call('HGETALL', key)}
"#;

/// ARGV: prefix, id, now, has expected ('1'/'0'), expected, has new ('1'/'0'), new: sets
/// (or removes) the `mfa` field only if it still holds the expected value (or is absent
/// when none is expected).
const SWAP_MFA: &str = r#"
local p, id, now = ARGV[1], ARGV[2], ARGV[3]
local key = p..'u:'..id
if redis.call('EXISTS', key) == 0 then return {'notfound'} end
local cur = redis.call('HGET', key, 'mfa')
if ARGV[4] == '1' then
  if cur ~= ARGV[5] then return {'stale'} end
elseif cur then
  return {'stale'}
end
if ARGV[6] == '1' then
  redis.call('HSET', key, 'mfa', ARGV[7])
else
  redis.call('HDEL', key, 'mfa')
end
redis.call('HSET', key, 'updated_at', now)
return {'ok'}
"#;

/// ARGV: prefix, id. Deletes the user with its sessions (and their refresh tokens), API
/// keys, one-time tokens and OAuth identities.
const DELETE_USER: &str = r#"
local p, id = ARGV[1], ARGV[2]
local key = p..'u:'..id
if redis.call('EXISTS', key) == 0 then return {'notfound'} end
local u = redis.call('HMGET', key, 'email', 'username', 'external_id', 'created_at')
for _, sid in ipairs(redis.call('SMEMBERS', p..'us:'..id)) do
  for _, h in ipairs(redis.call('SMEMBERS', p..'sr:'..sid)) do
    redis.call('DEL', p..'r:'..h)
    redis.call('ZREM', p..'x:r', h)
  end
  redis.call('DEL', p..'sr:'..sid, p..'s:'..sid)
  redis.call('ZREM', p..'x:s', sid)
end
for _, kid in ipairs(redis.call('SMEMBERS', p..'uk:'..id)) do
  local h = redis.call('HGET', p..'k:'..kid, 'key_hash')
  if h then redis.call('DEL', p..'kh:'..h) end
  redis.call('DEL', p..'k:'..kid)
end
for _, h in ipairs(redis.call('SMEMBERS', p..'uo:'..id)) do
  drop_one_time(p, h)
end
for _, m in ipairs(redis.call('SMEMBERS', p..'uoi:'..id)) do
  redis.call('DEL', p..'oi:'..m)
end
redis.call('DEL', p..'us:'..id, p..'uk:'..id, p..'uo:'..id, p..'uoi:'..id, key)
if u[1] then redis.call('DEL', p..'ue:'..u[1]) end
if u[2] then redis.call('DEL', p..'un:'..u[2]) end
if u[3] then redis.call('DEL', p..'ux:'..u[3]) end
local c = u[4] or '0'
redis.call('ZREM', p..'users', string.rep('0', 20 - #c)..c..':'..id)
return {'ok'}
"#;

/// ARGV: prefix, index key, record prefix: the record the index points at, or empty.
const BY_INDEX: &str = r#"
local id = redis.call('GET', ARGV[1]..ARGV[2])
if not id then return {} end
return redis.call('HGETALL', ARGV[1]..ARGV[3]..id)
"#;

/// ARGV: prefix, set key, record prefix: every member's record (missing ones skipped).
const MEMBERS: &str = r#"
local out = {}
for _, id in ipairs(redis.call('SMEMBERS', ARGV[1]..ARGV[2])) do
  local r = redis.call('HGETALL', ARGV[1]..ARGV[3]..id)
  if #r > 0 then out[#out + 1] = r end
end
return out
"#;

/// ARGV: prefix, ZRANGEBYLEX start, count: {member, record} pairs in order.
const LIST_USERS: &str = r#"
local p = ARGV[1]
local out = {}
for _, m in ipairs(redis.call('ZRANGEBYLEX', p..'users', ARGV[2], '+', 'LIMIT', 0, ARGV[3])) do
  out[#out + 1] = {m, redis.call('HGETALL', p..'u:'..string.sub(m, 22))}
end
return out
"#;

/// ARGV: prefix, session id, user id, purge score, refresh hash ('' = none), refresh
/// expiry, number of session pairs (n), n session field/value items, refresh items.
const CREATE_SESSION: &str = r#"
local p, sid, uid, score, rh, rexp, n = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], tonumber(ARGV[7])
if redis.call('EXISTS', p..'u:'..uid) == 0 then return {'notfound'} end
if redis.call('EXISTS', p..'s:'..sid) == 1 then return {'conflict', 'id'} end
if rh ~= '' and redis.call('EXISTS', p..'r:'..rh) == 1 then return {'conflict', 'token_hash'} end
redis.call('HSET', p..'s:'..sid, unpack(ARGV, 8, 7 + n))
redis.call('SADD', p..'us:'..uid, sid)
redis.call('ZADD', p..'x:s', score, sid)
if rh ~= '' then
  redis.call('HSET', p..'r:'..rh, unpack(ARGV, 8 + n))
  redis.call('SADD', p..'sr:'..sid, rh)
  redis.call('ZADD', p..'x:r', rexp, rh)
end
return {'ok'}
"#;

/// ARGV: prefix, session id, now.
const TOUCH_SESSION: &str = r#"
local key = ARGV[1]..'s:'..ARGV[2]
local last = redis.call('HGET', key, 'last_used_at')
if not last then return {'notfound'} end
if tonumber(last) < tonumber(ARGV[3]) then redis.call('HSET', key, 'last_used_at', ARGV[3]) end
return {'ok'}
"#;

/// ARGV: prefix, record prefix, id, owner ('' = any), now, purge set ('' = none).
/// Revoking twice keeps the first time.
const REVOKE_ONE: &str = r#"
local p = ARGV[1]
local key = p..ARGV[2]..ARGV[3]
local r = redis.call('HMGET', key, 'user_id', 'revoked_at')
if not r[1] then return {'notfound'} end
if ARGV[4] ~= '' and r[1] ~= ARGV[4] then return {'notfound'} end
if not r[2] then
  redis.call('HSET', key, 'revoked_at', ARGV[5])
  if ARGV[6] ~= '' then redis.call('ZADD', p..ARGV[6], 'LT', ARGV[5], ARGV[3]) end
end
return {'ok'}
"#;

/// ARGV: prefix, owner set prefix, record prefix, user id, except ('' = none), now, purge
/// set ('' = none): revokes every unrevoked record of the user; answers how many.
const REVOKE_ALL: &str = r#"
local p = ARGV[1]
local n = 0
for _, id in ipairs(redis.call('SMEMBERS', p..ARGV[2]..ARGV[4])) do
  local key = p..ARGV[3]..id
  if id ~= ARGV[5] and redis.call('EXISTS', key) == 1 and redis.call('HEXISTS', key, 'revoked_at') == 0 then
    redis.call('HSET', key, 'revoked_at', ARGV[6])
    if ARGV[7] ~= '' then redis.call('ZADD', p..ARGV[7], 'LT', ARGV[6], id) end
    n = n + 1
  end
end
return {'ok', tostring(n)}
"#;

/// ARGV: prefix, presented hash, new hash, now, grace (ms), new expiry. The order of the
/// checks is the trait's.
const ROTATE_REFRESH: &str = r#"
local p, old, new, now, grace = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local t = redis.call('HMGET', p..'r:'..old, 'session_id', 'expires_at', 'used_at')
if not t[1] then return {'notfound'} end
local sid = t[1]
local skey = p..'s:'..sid
local s = redis.call('HMGET', skey, 'revoked_at', 'expires_at', 'last_used_at')
if not s[2] then return {'notfound'} end
if s[1] then return {'revoked', sid} end
if tonumber(t[2]) <= now or tonumber(s[2]) <= now then return {'expired', sid} end
local retry = '0'
if t[3] then
  if now - tonumber(t[3]) <= grace then
    retry = '1'
  else
    redis.call('HSET', skey, 'revoked_at', ARGV[4])
    redis.call('ZADD', p..'x:s', 'LT', ARGV[4], sid)
    for _, h in ipairs(redis.call('SMEMBERS', p..'sr:'..sid)) do
      if redis.call('HEXISTS', p..'r:'..h, 'used_at') == 0 then
        redis.call('HSET', p..'r:'..h, 'used_at', ARGV[4])
      end
    end
    return {'reuse', sid}
  end
end
if redis.call('EXISTS', p..'r:'..new) == 1 then return {'conflict', 'token_hash'} end
if retry == '0' then redis.call('HSET', p..'r:'..old, 'used_at', ARGV[4]) end
redis.call('HSET', p..'r:'..new, 'session_id', sid, 'created_at', ARGV[4], 'expires_at', ARGV[6])
redis.call('SADD', p..'sr:'..sid, new)
redis.call('ZADD', p..'x:r', ARGV[6], new)
if tonumber(s[3]) < now then redis.call('HSET', skey, 'last_used_at', ARGV[4]) end
return {'rotated', retry, redis.call('HGETALL', skey)}
"#;

/// ARGV: prefix, key id, user id, key hash, field/value pairs.
const CREATE_API_KEY: &str = r#"
local p, kid, uid, h = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if redis.call('EXISTS', p..'u:'..uid) == 0 then return {'notfound'} end
if redis.call('EXISTS', p..'k:'..kid) == 1 then return {'conflict', 'id'} end
if redis.call('EXISTS', p..'kh:'..h) == 1 then return {'conflict', 'key_hash'} end
redis.call('HSET', p..'k:'..kid, unpack(ARGV, 5))
redis.call('SET', p..'kh:'..h, kid)
redis.call('SADD', p..'uk:'..uid, kid)
return {'ok'}
"#;

/// ARGV: prefix, record prefix, then (id, used at) pairs; `last_used_at` only moves
/// forward; unknown ids are skipped.
const RECORD_USE: &str = r#"
for i = 3, #ARGV, 2 do
  local key = ARGV[1]..ARGV[2]..ARGV[i]
  if redis.call('EXISTS', key) == 1 then
    local last = redis.call('HGET', key, 'last_used_at')
    if not last or tonumber(last) < tonumber(ARGV[i + 1]) then
      redis.call('HSET', key, 'last_used_at', ARGV[i + 1])
    end
  end
end
return {'ok'}
"#;

/// The newest unretired signing key (ties: the greater kid), as a Lua function.
const CURRENT_SIGNING_KEY: &str = r#"
local function current(p)
  local best, best_at
  for _, kid in ipairs(redis.call('SMEMBERS', p..'sks')) do
    local k = redis.call('HMGET', p..'sk:'..kid, 'retired_at', 'created_at')
    if k[2] and not k[1] then
      local at = tonumber(k[2])
      if not best or at > best_at or (at == best_at and kid > best) then best, best_at = kid, at end
    end
  end
  return best
end
"#;

/// ARGV: prefix, kid, field/value pairs.
const SIGNING_INSERT: &str = r#"
local p, kid = ARGV[1], ARGV[2]
local cur = current(p)
if cur then return {'existing', redis.call('HGETALL', p..'sk:'..cur)} end
if redis.call('EXISTS', p..'sk:'..kid) == 1 then return {'conflict', 'kid'} end
redis.call('HSET', p..'sk:'..kid, unpack(ARGV, 3))
redis.call('SADD', p..'sks', kid)
return {'inserted'}
"#;

/// ARGV: prefix, kid, retire time (the new key's creation), old keys' not_after, pairs.
const SIGNING_ROTATE: &str = r#"
local p, kid = ARGV[1], ARGV[2]
if redis.call('EXISTS', p..'sk:'..kid) == 1 then return {'conflict', 'kid'} end
for _, other in ipairs(redis.call('SMEMBERS', p..'sks')) do
  local key = p..'sk:'..other
  if redis.call('HEXISTS', key, 'retired_at') == 0 then
    redis.call('HSET', key, 'retired_at', ARGV[3], 'not_after', ARGV[4])
  end
end
redis.call('HSET', p..'sk:'..kid, unpack(ARGV, 5))
redis.call('SADD', p..'sks', kid)
return {'ok'}
"#;

/// ARGV: prefix, kid, retired at (kept if already set), not_after ('' = none).
const SIGNING_RETIRE: &str = r#"
local key = ARGV[1]..'sk:'..ARGV[2]
if redis.call('EXISTS', key) == 0 then return {'notfound'} end
if redis.call('HEXISTS', key, 'retired_at') == 0 then redis.call('HSET', key, 'retired_at', ARGV[3]) end
if ARGV[4] == '' then redis.call('HDEL', key, 'not_after') else redis.call('HSET', key, 'not_after', ARGV[4]) end
return {'ok'}
"#;

/// ARGV: prefix, hash, user id ('' = none), expiry, email ('' = none), field/value pairs.
const ONE_TIME_CREATE: &str = r#"
local p, h, uid, email = ARGV[1], ARGV[2], ARGV[3], ARGV[5]
if uid ~= '' and redis.call('EXISTS', p..'u:'..uid) == 0 then return {'notfound'} end
if redis.call('EXISTS', p..'o:'..h) == 1 then return {'conflict', 'token_hash'} end
redis.call('HSET', p..'o:'..h, unpack(ARGV, 6))
if uid ~= '' then redis.call('SADD', p..'uo:'..uid, h) end
if email ~= '' then redis.call('SADD', p..'oe:'..email, h) end
redis.call('ZADD', p..'x:o', ARGV[4], h)
return {'ok'}
"#;

/// Deletes one-time token `h` and its index entries, as a Lua function; answers 1 if it
/// existed.
const DROP_ONE_TIME: &str = r#"
local function drop_one_time(p, h)
  local t = redis.call('HMGET', p..'o:'..h, 'user_id', 'email')
  if t[1] then redis.call('SREM', p..'uo:'..t[1], h) end
  if t[2] then redis.call('SREM', p..'oe:'..t[2], h) end
  redis.call('ZREM', p..'x:o', h)
  return redis.call('DEL', p..'o:'..h)
end
"#;

/// ARGV: prefix, hash, kind, now: removes and answers the token if it is of this kind
/// and unexpired; else answers empty and changes nothing.
const ONE_TIME_CONSUME: &str = r#"
local p, h = ARGV[1], ARGV[2]
local key = p..'o:'..h
local t = redis.call('HMGET', key, 'kind', 'expires_at', 'user_id')
if not t[1] or t[1] ~= ARGV[3] or tonumber(t[2]) <= tonumber(ARGV[4]) then return {} end
local all = redis.call('HGETALL', key)
drop_one_time(p, h)
return all
"#;

/// ARGV: prefix, user id, kind: deletes the user's tokens of that kind; answers how many.
const ONE_TIME_DELETE_KIND: &str = r#"
local p, uid = ARGV[1], ARGV[2]
local n = 0
for _, h in ipairs(redis.call('SMEMBERS', p..'uo:'..uid)) do
  local kind = redis.call('HGET', p..'o:'..h, 'kind')
  if kind == ARGV[3] then
    n = n + drop_one_time(p, h)
  elseif not kind then
    redis.call('SREM', p..'uo:'..uid, h)
  end
end
return {'ok', tostring(n)}
"#;

/// ARGV: prefix, normalised email, kind: deletes the tokens of that kind sent to the
/// address, whoever they act for; answers how many.
const ONE_TIME_DELETE_EMAIL: &str = r#"
local p, email = ARGV[1], ARGV[2]
local n = 0
for _, h in ipairs(redis.call('SMEMBERS', p..'oe:'..email)) do
  local kind = redis.call('HGET', p..'o:'..h, 'kind')
  if kind == ARGV[3] then
    n = n + drop_one_time(p, h)
  elseif not kind then
    redis.call('SREM', p..'oe:'..email, h)
  end
end
return {'ok', tostring(n)}
"#;

/// ARGV: prefix, now, batch: removes up to `batch` expired refresh tokens, sessions
/// (expired or revoked, with their refresh tokens) and one-time tokens, and the retired
/// signing keys past `not_after`; answers the four counts.
const PURGE: &str = r#"
local p, now, batch = ARGV[1], ARGV[2], ARGV[3]
local function due(z) return redis.call('ZRANGEBYSCORE', p..z, '-inf', now, 'LIMIT', 0, batch) end
local refresh = 0
for _, h in ipairs(due('x:r')) do
  local sid = redis.call('HGET', p..'r:'..h, 'session_id')
  refresh = refresh + redis.call('DEL', p..'r:'..h)
  redis.call('ZREM', p..'x:r', h)
  if sid then redis.call('SREM', p..'sr:'..sid, h) end
end
local sessions = 0
for _, sid in ipairs(due('x:s')) do
  local uid = redis.call('HGET', p..'s:'..sid, 'user_id')
  for _, h in ipairs(redis.call('SMEMBERS', p..'sr:'..sid)) do
    redis.call('DEL', p..'r:'..h)
    redis.call('ZREM', p..'x:r', h)
  end
  redis.call('DEL', p..'sr:'..sid)
  sessions = sessions + redis.call('DEL', p..'s:'..sid)
  redis.call('ZREM', p..'x:s', sid)
  if uid then redis.call('SREM', p..'us:'..uid, sid) end
end
local once = 0
for _, h in ipairs(due('x:o')) do
  once = once + drop_one_time(p, h)
end
local keys = 0
for _, kid in ipairs(redis.call('SMEMBERS', p..'sks')) do
  local k = redis.call('HMGET', p..'sk:'..kid, 'retired_at', 'not_after')
  if k[1] and k[2] and tonumber(k[2]) <= tonumber(now) then
    keys = keys + redis.call('DEL', p..'sk:'..kid)
    redis.call('SREM', p..'sks', kid)
  end
end
return {tostring(refresh), tostring(sessions), tostring(once), tostring(keys)}
"#;

fn count(v: &Value) -> Result<u64, StoreError> {
    text(v)?
        .parse()
        .map_err(|_| StoreError::Internal("redis: count not a number".into()))
}

// ---- invalidation channel ----

fn encode(what: &Invalidation) -> String {
    match what {
        Invalidation::User(id) => format!("u {id}"),
        Invalidation::Session(id) => format!("s {id}"),
        Invalidation::ApiKey(hash) => format!("k {}", to_hex(hash)),
        Invalidation::All => "*".to_owned(),
    }
}

fn decode(message: &str) -> Option<Invalidation> {
    if message == "*" {
        return Some(Invalidation::All);
    }
    let (kind, value) = message.split_once(' ')?;
    match kind {
        "u" => Some(Invalidation::User(value.to_owned())),
        "s" => Some(Invalidation::Session(value.to_owned())),
        "k" => unhex(value).ok().map(Invalidation::ApiKey),
        _ => None,
    }
}

/// Subscribes to the invalidation channel and forwards what arrives, for as long as `tx`
/// has a receiver. A lost subscription is re-made with backoff, and because messages may
/// have been missed meanwhile, [`Invalidation::All`] is sent once it is back.
async fn subscribe(
    client: redis::Client,
    channel: String,
    tx: tokio::sync::mpsc::Sender<Invalidation>,
    metrics: Option<Arc<Metrics>>,
) {
    let mut delay = Duration::from_millis(100);
    let mut interrupted = false;
    while !tx.is_closed() {
        let connected = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, RedisError>(pubsub)
        }
        .await;
        match connected {
            Ok(mut pubsub) => {
                if interrupted {
                    tracing::info!(target: LOG, "invalidation channel back; flushing the cache");
                    if let Some(m) = &metrics {
                        m.store_reconnect(StoreLink::invalidations);
                    }
                    if tx.send(Invalidation::All).await.is_err() {
                        return;
                    }
                }
                delay = Duration::from_millis(100);
                let mut messages = pubsub.on_message();
                while let Some(msg) = messages.next().await {
                    let Some(what) = std::str::from_utf8(msg.get_payload_bytes())
                        .ok()
                        .and_then(decode)
                    else {
                        continue;
                    };
                    if tx.send(what).await.is_err() {
                        return;
                    }
                }
                tracing::warn!(target: LOG, "invalidation channel lost; reconnecting");
            }
            Err(e) => {
                if !interrupted {
                    tracing::warn!(target: LOG, error = %e, "cannot subscribe to the invalidation channel; retrying");
                }
            }
        }
        interrupted = true;
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

#[async_trait]
impl Store for RedisStore {
    fn kind(&self) -> &'static str {
        "redis"
    }

    fn is_shared(&self) -> bool {
        true
    }

    fn counters(&self) -> Option<Arc<dyn SharedCounters>> {
        Some(Arc::new(RedisCounters::new(self)))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let _: Value = self.query(&redis::cmd("PING")).await?;
        Ok(())
    }

    // ---- users ----

    async fn create_user(&self, user: &User) -> Result<(), StoreError> {
        let mut user = user.clone();
        user.email = user.email.as_deref().map(normalize_email);
        let mut args = vec![
            Arg::text(user.id.as_str()),
            Arg::opt(user.email.as_deref()),
            Arg::opt(user.username.as_deref()),
            Arg::opt(user.external_id.as_deref()),
            Arg::text(user_member(user.created_at, &user.id)),
        ];
        args.extend(user_pairs(&user)?.0);
        let v = self.run(&self.scripts.create_user, args).await?;
        answer(&v)?.check()?;
        Ok(())
    }

    async fn get_user(&self, id: &str) -> Result<Option<User>, StoreError> {
        self.hgetall(&format!("u:{id}"))
            .await?
            .as_ref()
            .map(user_from)
            .transpose()
    }

    async fn get_user_by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        let index = format!("ue:{}", normalize_email(email));
        self.by_index(&index, "u:")
            .await?
            .as_ref()
            .map(user_from)
            .transpose()
    }

    async fn get_user_by_username(&self, username: &str) -> Result<Option<User>, StoreError> {
        self.by_index(&format!("un:{username}"), "u:")
            .await?
            .as_ref()
            .map(user_from)
            .transpose()
    }

    async fn get_user_by_external_id(&self, external_id: &str) -> Result<Option<User>, StoreError> {
        self.by_index(&format!("ux:{external_id}"), "u:")
            .await?
            .as_ref()
            .map(user_from)
            .transpose()
    }

    async fn update_user(
        &self,
        id: &str,
        patch: &UserPatch,
        now: UnixMillis,
    ) -> Result<User, StoreError> {
        fn op(args: &mut Vec<Arg>, kind: &str, field: &str, value: Arg) {
            args.push(Arg::text(kind));
            args.push(Arg::text(field));
            args.push(value);
        }
        fn text_op(args: &mut Vec<Arg>, field: &str, value: &Option<Option<String>>, unique: bool) {
            match value {
                None => {}
                Some(v) if unique => op(args, "uniq", field, Arg::opt(v.as_deref())),
                Some(Some(v)) => op(args, "set", field, Arg::text(v.as_str())),
                Some(None) => op(args, "del", field, Arg::text("")),
            }
        }
        let mut args = vec![Arg::text(id), Arg::num(now)];
        let email = patch
            .email
            .as_ref()
            .map(|e| e.as_deref().map(normalize_email));
        text_op(&mut args, "name", &patch.name, false);
        text_op(&mut args, "username", &patch.username, true);
        text_op(&mut args, "email", &email, true);
        text_op(&mut args, "external_id", &patch.external_id, true);
        text_op(&mut args, "password_hash", &patch.password_hash, false);
        if let Some(v) = patch.email_verified {
            op(&mut args, "set", "email_verified", Arg::text(flag(v)));
        }
        if let Some(roles) = &patch.roles {
            op(&mut args, "set", "roles", Arg::Text(json(roles)?));
        }
        if let Some(v) = patch.disabled {
            op(&mut args, "set", "disabled", Arg::text(flag(v)));
        }
        match &patch.mfa {
            None => {}
            Some(Some(bytes)) => op(&mut args, "set", "mfa", Arg::Bytes(bytes.clone())),
            Some(None) => op(&mut args, "del", "mfa", Arg::text("")),
        }
        let v = self.run(&self.scripts.update_user, args).await?;
        let a = answer(&v)?.check()?;
        user_from(&Fields::from_value(a.nth(0)?)?)
    }

    async fn swap_user_mfa(
        &self,
        id: &str,
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
        now: UnixMillis,
    ) -> Result<bool, StoreError> {
        let present = |v: Option<&[u8]>| Arg::text(if v.is_some() { "1" } else { "0" });
        let bytes = |v: Option<&[u8]>| Arg::Bytes(v.unwrap_or_default().to_vec());
        let args = vec![
            Arg::text(id),
            Arg::num(now),
            present(expected),
            bytes(expected),
            present(new),
            bytes(new),
        ];
        let v = self.run(&self.scripts.swap_mfa, args).await?;
        let a = answer(&v)?.check()?;
        Ok(a.status == "ok")
    }

    async fn delete_user(&self, id: &str) -> Result<(), StoreError> {
        let v = self
            .run(&self.scripts.delete_user, vec![Arg::text(id)])
            .await?;
        answer(&v)?.check()?;
        Ok(())
    }

    async fn list_users(&self, query: &UserQuery) -> Result<UserPage, StoreError> {
        let limit = query.limit.clamp(1, MAX_PAGE);
        let mut start = match &query.cursor {
            Some(c) if valid_cursor(c) => format!("({c}"),
            Some(_) => return Err(StoreError::InvalidCursor),
            None => "-".to_owned(),
        };
        let email_contains = query.email_contains.as_deref().map(normalize_email);
        let wanted = |u: &User| {
            email_contains
                .as_deref()
                .is_none_or(|needle| u.email.as_deref().is_some_and(|e| e.contains(needle)))
                && query
                    .role
                    .as_deref()
                    .is_none_or(|role| u.roles.iter().any(|r| r == role))
        };
        let batch = (limit + 1).max(if email_contains.is_some() || query.role.is_some() {
            LIST_BATCH
        } else {
            0
        });
        // One user more than the page is gathered to know whether another page exists.
        let mut users: Vec<(String, User)> = Vec::with_capacity(limit + 1);
        loop {
            let v = self
                .run(
                    &self.scripts.list_users,
                    vec![Arg::text(start.as_str()), Arg::num(batch as i64)],
                )
                .await?;
            let rows = items(&v)?;
            for row in rows {
                let pair = items(row)?;
                let (Some(member), Some(record)) = (pair.first(), pair.get(1)) else {
                    return Err(StoreError::Internal("redis: bad listing row".into()));
                };
                let member = text(member)?;
                start = format!("({member}");
                let fields = Fields::from_value(record)?;
                if fields.is_empty() {
                    continue;
                }
                let user = user_from(&fields)?;
                if wanted(&user) {
                    users.push((member, user));
                    if users.len() > limit {
                        break;
                    }
                }
            }
            if users.len() > limit || rows.len() < batch {
                break;
            }
        }
        let next_cursor = if users.len() > limit {
            users.truncate(limit);
            users.last().map(|(member, _)| member.clone())
        } else {
            None
        };
        Ok(UserPage {
            users: users.into_iter().map(|(_, u)| u).collect(),
            next_cursor,
        })
    }

    // ---- sessions ----

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
        let session_fields = session_pairs(session)?.0;
        let score = session
            .revoked_at
            .map_or(session.expires_at, |r| r.min(session.expires_at));
        let mut args = vec![
            Arg::text(session.id.as_str()),
            Arg::text(session.user_id.as_str()),
            Arg::num(score),
            Arg::text(
                first_refresh
                    .map(|t| to_hex(&t.token_hash))
                    .unwrap_or_default(),
            ),
            Arg::num(first_refresh.map_or(0, |t| t.expires_at)),
            Arg::num(session_fields.len() as i64),
        ];
        args.extend(session_fields);
        if let Some(t) = first_refresh {
            args.extend(refresh_pairs(t).0);
        }
        let v = self.run(&self.scripts.create_session, args).await?;
        answer(&v)?.check()?;
        Ok(())
    }

    async fn get_session(&self, id: &str) -> Result<Option<Session>, StoreError> {
        self.hgetall(&format!("s:{id}"))
            .await?
            .as_ref()
            .map(session_from)
            .transpose()
    }

    async fn is_session_revoked(&self, id: &str, now: UnixMillis) -> Result<bool, StoreError> {
        let (revoked, expires): (Option<String>, Option<i64>) = self
            .query(
                redis::cmd("HMGET")
                    .arg(self.key(&format!("s:{id}")))
                    .arg("revoked_at")
                    .arg("expires_at"),
            )
            .await?;
        Ok(revoked.is_some() || expires.is_none_or(|e| e <= now))
    }

    async fn touch_session(&self, id: &str, now: UnixMillis) -> Result<(), StoreError> {
        let v = self
            .run(
                &self.scripts.touch_session,
                vec![Arg::text(id), Arg::num(now)],
            )
            .await?;
        answer(&v)?.check()?;
        Ok(())
    }

    async fn record_session_use(&self, uses: &[(String, UnixMillis)]) -> Result<(), StoreError> {
        self.record_use("s:", uses).await
    }

    async fn list_active_sessions(
        &self,
        user_id: &str,
        now: UnixMillis,
    ) -> Result<Vec<Session>, StoreError> {
        let mut sessions = self
            .members(&format!("us:{user_id}"), "s:")
            .await?
            .iter()
            .map(session_from)
            .filter(|s| s.as_ref().map_or(true, |s| s.is_active(now)))
            .collect::<Result<Vec<_>, _>>()?;
        sessions.sort_by(|a, b| {
            b.last_used_at
                .cmp(&a.last_used_at)
                .then_with(|| a.id.cmp(&b.id))
        });
        Ok(sessions)
    }

    async fn revoke_session(
        &self,
        id: &str,
        owner: Option<&str>,
        now: UnixMillis,
    ) -> Result<(), StoreError> {
        self.revoke_one("s:", id, owner, now, "x:s").await
    }

    async fn revoke_user_sessions(
        &self,
        user_id: &str,
        except: Option<&str>,
        now: UnixMillis,
    ) -> Result<u64, StoreError> {
        self.revoke_all("us:", "s:", user_id, except, now, "x:s")
            .await
    }

    // ---- refresh tokens ----

    async fn rotate_refresh(
        &self,
        presented: &TokenHash,
        new_hash: &TokenHash,
        now: UnixMillis,
        grace: Duration,
        new_expires_at: UnixMillis,
    ) -> Result<RotateOutcome, StoreError> {
        let grace = i64::try_from(grace.as_millis()).unwrap_or(i64::MAX);
        let v = self
            .run(
                &self.scripts.rotate_refresh,
                vec![
                    Arg::text(to_hex(presented)),
                    Arg::text(to_hex(new_hash)),
                    Arg::num(now),
                    Arg::num(grace),
                    Arg::num(new_expires_at),
                ],
            )
            .await?;
        let a = answer(&v)?;
        if a.status == "notfound" {
            return Ok(RotateOutcome::NotFound);
        }
        let a = a.check()?;
        Ok(match a.status.as_str() {
            "revoked" => RotateOutcome::Revoked {
                session_id: text(a.nth(0)?)?,
            },
            "expired" => RotateOutcome::Expired {
                session_id: text(a.nth(0)?)?,
            },
            "reuse" => RotateOutcome::ReuseDetected {
                session_id: text(a.nth(0)?)?,
            },
            "rotated" => RotateOutcome::Rotated {
                retry: text(a.nth(0)?)? == "1",
                session: session_from(&Fields::from_value(a.nth(1)?)?)?,
            },
            other => {
                return Err(StoreError::Internal(format!(
                    "redis: unknown rotation answer {other:?}"
                )));
            }
        })
    }

    // ---- OAuth identities ----

    async fn create_oauth_identity(&self, identity: &OAuthIdentity) -> Result<(), StoreError> {
        let mut args = vec![
            Arg::Text(format!("{}:{}", identity.provider, identity.subject)),
            Arg::text(identity.user_id.as_str()),
        ];
        args.extend(identity_pairs(identity).0);
        let v = self.run(&self.scripts.oauth_link, args).await?;
        answer(&v)?.check()?;
        Ok(())
    }

    async fn get_oauth_identity(
        &self,
        provider: &str,
        subject: &str,
    ) -> Result<Option<OAuthIdentity>, StoreError> {
        self.hgetall(&format!("oi:{provider}:{subject}"))
            .await?
            .as_ref()
            .map(identity_from)
            .transpose()
    }

    async fn list_oauth_identities(&self, user_id: &str) -> Result<Vec<OAuthIdentity>, StoreError> {
        let mut identities = self
            .members(&format!("uoi:{user_id}"), "oi:")
            .await?
            .iter()
            .map(identity_from)
            .collect::<Result<Vec<_>, _>>()?;
        identities.sort_by(|a, b| {
            (a.created_at, &a.provider, &a.subject).cmp(&(b.created_at, &b.provider, &b.subject))
        });
        Ok(identities)
    }

    async fn delete_oauth_identity(
        &self,
        user_id: &str,
        provider: &str,
        subject: &str,
    ) -> Result<(), StoreError> {
        let v = self
            .run(
                &self.scripts.oauth_unlink,
                vec![
                    Arg::Text(format!("{provider}:{subject}")),
                    Arg::text(user_id),
                ],
            )
            .await?;
        answer(&v)?.check()?;
        Ok(())
    }

    // ---- API keys ----

    async fn create_api_key(&self, key: &ApiKey) -> Result<(), StoreError> {
        let mut args = vec![
            Arg::text(key.id.as_str()),
            Arg::text(key.user_id.as_str()),
            Arg::text(to_hex(&key.key_hash)),
        ];
        args.extend(api_key_pairs(key)?.0);
        let v = self.run(&self.scripts.create_api_key, args).await?;
        answer(&v)?.check()?;
        Ok(())
    }

    async fn get_api_key(&self, id: &str) -> Result<Option<ApiKey>, StoreError> {
        self.hgetall(&format!("k:{id}"))
            .await?
            .as_ref()
            .map(api_key_from)
            .transpose()
    }

    async fn get_api_key_by_hash(&self, hash: &TokenHash) -> Result<Option<ApiKey>, StoreError> {
        self.by_index(&format!("kh:{}", to_hex(hash)), "k:")
            .await?
            .as_ref()
            .map(api_key_from)
            .transpose()
    }

    async fn list_api_keys(&self, user_id: &str) -> Result<Vec<ApiKey>, StoreError> {
        let mut keys = self
            .members(&format!("uk:{user_id}"), "k:")
            .await?
            .iter()
            .map(api_key_from)
            .collect::<Result<Vec<_>, _>>()?;
        keys.sort_by(|a, b| {
            a.created_at
                .cmp(&b.created_at)
                .then_with(|| a.id.cmp(&b.id))
        });
        Ok(keys)
    }

    async fn revoke_api_key(
        &self,
        id: &str,
        owner: Option<&str>,
        now: UnixMillis,
    ) -> Result<(), StoreError> {
        self.revoke_one("k:", id, owner, now, "").await
    }

    async fn revoke_user_api_keys(
        &self,
        user_id: &str,
        now: UnixMillis,
    ) -> Result<u64, StoreError> {
        self.revoke_all("uk:", "k:", user_id, None, now, "").await
    }

    async fn record_api_key_use(&self, uses: &[(String, UnixMillis)]) -> Result<(), StoreError> {
        self.record_use("k:", uses).await
    }

    // ---- signing keys ----

    async fn insert_signing_key_if_absent(
        &self,
        key: &SigningKey,
    ) -> Result<SigningKey, StoreError> {
        let fresh = SigningKey {
            retired_at: None,
            ..key.clone()
        };
        let mut args = vec![Arg::text(fresh.kid.as_str())];
        args.extend(signing_pairs(&fresh).0);
        let v = self.run(&self.scripts.signing_insert, args).await?;
        let a = answer(&v)?.check()?;
        match a.status.as_str() {
            "existing" => signing_from(&Fields::from_value(a.nth(0)?)?),
            _ => Ok(fresh),
        }
    }

    async fn rotate_signing_key(
        &self,
        new_key: &SigningKey,
        old_not_after: UnixMillis,
    ) -> Result<(), StoreError> {
        let fresh = SigningKey {
            retired_at: None,
            ..new_key.clone()
        };
        let mut args = vec![
            Arg::text(fresh.kid.as_str()),
            Arg::num(fresh.created_at),
            Arg::num(old_not_after),
        ];
        args.extend(signing_pairs(&fresh).0);
        let v = self.run(&self.scripts.signing_rotate, args).await?;
        answer(&v)?.check()?;
        Ok(())
    }

    async fn list_signing_keys(&self) -> Result<Vec<SigningKey>, StoreError> {
        let mut keys = self
            .members("sks", "sk:")
            .await?
            .iter()
            .map(signing_from)
            .collect::<Result<Vec<_>, _>>()?;
        // Unretired first; then by when they stopped (or started) signing, newest first.
        keys.sort_by(|a, b| {
            a.retired_at
                .is_some()
                .cmp(&b.retired_at.is_some())
                .then_with(|| {
                    b.retired_at
                        .unwrap_or(b.created_at)
                        .cmp(&a.retired_at.unwrap_or(a.created_at))
                })
                .then_with(|| b.created_at.cmp(&a.created_at))
                .then_with(|| a.kid.cmp(&b.kid))
        });
        Ok(keys)
    }

    async fn retire_signing_key(
        &self,
        kid: &str,
        retired_at: UnixMillis,
        not_after: Option<UnixMillis>,
    ) -> Result<(), StoreError> {
        let v = self
            .run(
                &self.scripts.signing_retire,
                vec![
                    Arg::text(kid),
                    Arg::num(retired_at),
                    Arg::text(not_after.map(|t| t.to_string()).unwrap_or_default()),
                ],
            )
            .await?;
        answer(&v)?.check()?;
        Ok(())
    }

    // ---- one-time tokens ----

    async fn create_one_time_token(&self, token: &OneTimeToken) -> Result<(), StoreError> {
        let mut args = vec![
            Arg::text(to_hex(&token.token_hash)),
            Arg::opt(token.user_id.as_deref()),
            Arg::num(token.expires_at),
            Arg::text(
                token
                    .email
                    .as_deref()
                    .map(normalize_email)
                    .unwrap_or_default(),
            ),
        ];
        args.extend(one_time_pairs(token)?.0);
        let v = self.run(&self.scripts.one_time_create, args).await?;
        answer(&v)?.check()?;
        Ok(())
    }

    async fn get_one_time_token(
        &self,
        hash: &TokenHash,
        kind: OneTimeKind,
        now: UnixMillis,
    ) -> Result<Option<OneTimeToken>, StoreError> {
        let Some(fields) = self.hgetall(&format!("o:{}", to_hex(hash))).await? else {
            return Ok(None);
        };
        let token = one_time_from(&fields)?;
        Ok((token.kind == kind && token.expires_at > now).then_some(token))
    }

    async fn consume_one_time_token(
        &self,
        hash: &TokenHash,
        kind: OneTimeKind,
        now: UnixMillis,
    ) -> Result<Option<OneTimeToken>, StoreError> {
        let v = self
            .run(
                &self.scripts.one_time_consume,
                vec![
                    Arg::text(to_hex(hash)),
                    Arg::text(kind.as_str()),
                    Arg::num(now),
                ],
            )
            .await?;
        let fields = Fields::from_value(&v)?;
        if fields.is_empty() {
            return Ok(None);
        }
        one_time_from(&fields).map(Some)
    }

    async fn delete_one_time_tokens(
        &self,
        user_id: &str,
        kind: OneTimeKind,
    ) -> Result<u64, StoreError> {
        let v = self
            .run(
                &self.scripts.one_time_delete_kind,
                vec![Arg::text(user_id), Arg::text(kind.as_str())],
            )
            .await?;
        count(answer(&v)?.check()?.nth(0)?)
    }

    async fn delete_one_time_tokens_for_email(
        &self,
        email: &str,
        kind: OneTimeKind,
    ) -> Result<u64, StoreError> {
        let v = self
            .run(
                &self.scripts.one_time_delete_email,
                vec![Arg::text(normalize_email(email)), Arg::text(kind.as_str())],
            )
            .await?;
        count(answer(&v)?.check()?.nth(0)?)
    }

    // ---- invalidation across replicas ----

    async fn publish_invalidation(&self, what: &Invalidation) -> Result<(), StoreError> {
        let _: Value = self
            .query(redis::cmd("PUBLISH").arg(&self.channel).arg(encode(what)))
            .await?;
        Ok(())
    }

    fn invalidations(&self) -> Option<tokio::sync::mpsc::Receiver<Invalidation>> {
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        tokio::spawn(subscribe(
            self.pubsub.clone(),
            self.channel.clone(),
            tx,
            self.metrics.clone(),
        ));
        Some(rx)
    }

    // ---- housekeeping ----

    async fn purge_expired(&self, now: UnixMillis) -> Result<PurgeCounts, StoreError> {
        let mut total = PurgeCounts::default();
        // In batches, so no single script holds the server for long.
        loop {
            let v = self
                .run(
                    &self.scripts.purge,
                    vec![Arg::num(now), Arg::num(PURGE_BATCH as i64)],
                )
                .await?;
            let all = items(&v)?;
            let n = |i: usize| all.get(i).map_or(Ok(0), count);
            let (refresh, sessions, once, keys) = (n(0)?, n(1)?, n(2)?, n(3)?);
            total.refresh_tokens += refresh;
            total.sessions += sessions;
            total.one_time_tokens += once;
            total.signing_keys += keys;
            if refresh < PURGE_BATCH && sessions < PURGE_BATCH && once < PURGE_BATCH {
                return Ok(total);
            }
        }
    }
}

// ---- shared rate-limit counters ----

/// Keys of the shared counters: the data set's prefix without its hash tag, so the
/// counters spread over the cluster's slots (each operation is single-key, or its keys
/// carry their own tag) instead of crowding the account data's one slot.
fn counters_prefix(prefix: &str) -> String {
    let mut p: String = prefix.chars().filter(|c| !matches!(c, '{' | '}')).collect();
    p.push_str("rl:");
    p
}

/// GCRA, one request (exact mode). Time is the server's (`TIME`, microseconds): replicas'
/// clocks may differ, the server's is one. Numbers stay below 2^53 (exact in Lua's doubles):
/// now is ~1.8e15 us and the limiter caps `burst x interval` at 100 years (3.2e15 us).
/// `%d` keeps the TAT an integer string (Lua's default `%.14g` would round it).
const GCRA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - burst * interval
if now < allow_at then
  return {0, allow_at - now}
end
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.floor((new_tat - now) / 1000) + 1)
return {1, math.floor((now - allow_at) / interval), new_tat - now}
"#;

/// Adds hits already let through to a TAT (approximate mode) and answers the backlog.
const GCRA_ADD: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local hits = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if tat < now then tat = now end
if hits > 0 then
  tat = tat + hits * interval
  redis.call('SET', KEYS[1], string.format('%d', tat), 'PX', math.floor((tat - now) / 1000) + 1)
end
return tat - now
"#;

/// Fixed windows of the given keys: `{count, ms left}` each.
const WINDOW_PEEK: &str = r#"
local out = {}
for i, k in ipairs(KEYS) do
  local c = tonumber(redis.call('GET', k) or '0') or 0
  local left = redis.call('PTTL', k)
  if left < 0 then c = 0; left = 0 end
  out[i] = {c, left}
end
return out
"#;

/// Counts one event in each key; a new key starts a window of `ARGV[1]` ms.
const WINDOW_HIT: &str = r#"
for _, k in ipairs(KEYS) do
  if redis.call('INCR', k) == 1 or redis.call('PTTL', k) < 0 then
    redis.call('PEXPIRE', k, ARGV[1])
  end
end
return 1
"#;

/// [`SharedCounters`] on the store's connection (multiplexed: concurrent calls share
/// round trips).
pub struct RedisCounters {
    conn: Conn,
    prefix: String,
    gcra: Script,
    gcra_add: Script,
    window_peek: Script,
    window_hit: Script,
    metrics: Option<Arc<Metrics>>,
}

impl std::fmt::Debug for RedisCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCounters")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisCounters {
    fn new(store: &RedisStore) -> RedisCounters {
        RedisCounters {
            conn: store.conn.clone(),
            prefix: counters_prefix(&store.prefix),
            gcra: Script::new(GCRA),
            gcra_add: Script::new(GCRA_ADD),
            window_peek: Script::new(WINDOW_PEEK),
            window_hit: Script::new(WINDOW_HIT),
            metrics: store.metrics.clone(),
        }
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Times the request and counts failures in the store's metrics. Outages are not
    /// logged here: the limiters fall back to local counting and say so once.
    async fn observe<T>(
        &self,
        request: impl std::future::Future<Output = RedisResult<T>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let result = request.await;
        if let Some(m) = &self.metrics {
            m.store_request(started.elapsed().as_secs_f64());
        }
        result.map_err(|e| {
            let err = map_err(e);
            if let Some(m) = &self.metrics {
                m.store_error(match err {
                    StoreError::Unavailable(_) => StoreErrorKind::unavailable,
                    _ => StoreErrorKind::internal,
                });
            }
            err
        })
    }
}

fn reply_u64(v: &Value) -> Result<u64, StoreError> {
    match v {
        Value::Int(n) => Ok(u64::try_from(*n).unwrap_or(0)),
        other => Err(StoreError::Internal(format!(
            "redis: expected an integer, got {other:?}"
        ))),
    }
}

#[async_trait]
impl SharedCounters for RedisCounters {
    async fn gcra(&self, key: &str, interval_us: u64, burst: u32) -> Result<GcraReply, StoreError> {
        let mut conn = self.conn.clone();
        let mut invocation = self.gcra.key(self.key(key));
        invocation.arg(interval_us.max(1)).arg(burst.max(1));
        let v: Value = self.observe(invocation.invoke_async(&mut conn)).await?;
        let parts = items(&v)?;
        match parts {
            [allowed, remaining, reset] if reply_u64(allowed)? == 1 => Ok(GcraReply::Allowed {
                remaining: u32::try_from(reply_u64(remaining)?).unwrap_or(u32::MAX),
                reset_us: reply_u64(reset)?,
            }),
            [_, retry] => Ok(GcraReply::Limited {
                retry_us: reply_u64(retry)?,
            }),
            _ => Err(StoreError::Internal(format!(
                "redis: unexpected GCRA reply {v:?}"
            ))),
        }
    }

    async fn gcra_add(
        &self,
        batch: &[(&str, u32)],
        interval_us: u64,
    ) -> Result<Vec<u64>, StoreError> {
        // Concurrent invocations on the multiplexed connection go out as one pipeline (and a
        // cluster connection routes each to its key's node), so a batch costs one round trip.
        let calls = batch.iter().map(|(key, hits)| {
            let mut conn = self.conn.clone();
            let mut invocation = self.gcra_add.key(self.key(key));
            invocation.arg(*hits).arg(interval_us.max(1));
            async move {
                let v: Value = invocation.invoke_async(&mut conn).await?;
                Ok::<Value, RedisError>(v)
            }
        });
        let replies = self
            .observe(async {
                futures_util::future::join_all(calls)
                    .await
                    .into_iter()
                    .collect::<RedisResult<Vec<Value>>>()
            })
            .await?;
        replies.iter().map(reply_u64).collect()
    }

    async fn window_peek(&self, keys: &[&str]) -> Result<Vec<WindowState>, StoreError> {
        let mut conn = self.conn.clone();
        let mut invocation = self.window_peek.prepare_invoke();
        for k in keys {
            invocation.key(self.key(k));
        }
        let v: Value = self.observe(invocation.invoke_async(&mut conn)).await?;
        items(&v)?
            .iter()
            .map(|pair| match items(pair)? {
                [count, left] => Ok(WindowState {
                    count: u32::try_from(reply_u64(count)?).unwrap_or(u32::MAX),
                    left_ms: reply_u64(left)?,
                }),
                _ => Err(StoreError::Internal(format!(
                    "redis: unexpected window reply {pair:?}"
                ))),
            })
            .collect()
    }

    async fn window_hit(&self, keys: &[&str], per_ms: u64) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let mut invocation = self.window_hit.prepare_invoke();
        for k in keys {
            invocation.key(self.key(k));
        }
        invocation.arg(per_ms.max(1));
        let _: Value = self.observe(invocation.invoke_async(&mut conn)).await?;
        Ok(())
    }

    async fn window_reset(&self, key: &str) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("DEL");
        cmd.arg(self.key(key));
        let _: Value = self.observe(cmd.query_async(&mut conn)).await?;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::process::{Child, Command, Stdio};
    use std::sync::Arc;
    use std::time::Instant;

    use super::*;
    use crate::store::conformance;

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    /// A private redis-server on a free loopback port, without persistence; killed on drop.
    struct Server {
        child: Child,
        port: u16,
        _dir: tempfile::TempDir,
    }

    impl Server {
        fn start(extra: &[&str]) -> Server {
            let dir = tempfile::tempdir().unwrap();
            let port = free_port();
            let child = Command::new("redis-server")
                .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(dir.path())
                .args(extra)
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("redis-server (apt-get install redis-server; see .ci/run)");
            let server = Server {
                child,
                port,
                _dir: dir,
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            // A TLS-only server listens on its --tls-port.
            let listening = extra
                .iter()
                .position(|a| *a == "--tls-port")
                .and_then(|i| extra.get(i + 1))
                .and_then(|p| p.parse().ok())
                .unwrap_or(port);
            while std::net::TcpStream::connect(("127.0.0.1", listening)).is_err() {
                assert!(Instant::now() < deadline, "redis-server did not start");
                std::thread::sleep(Duration::from_millis(20));
            }
            server
        }

        fn url(&self) -> String {
            format!("redis://127.0.0.1:{}/", self.port)
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    async fn store(server: &Server) -> Arc<dyn Store> {
        Arc::new(
            RedisStore::connect(&RedisOptions::new(server.url(), false))
                .await
                .unwrap(),
        )
    }

    #[tokio::test]
    async fn shared_counters_gcra_windows_and_expiry() {
        let server = Server::start(&[]);
        let s = store(&server).await;
        let c = s.counters().expect("redis shares counters");
        // 10 per minute: 6 s per request, a burst of 10.
        let six = 6_000_000;
        for n in 0..10u32 {
            match c.gcra("r:api:k", six, 10).await.unwrap() {
                GcraReply::Allowed {
                    remaining,
                    reset_us,
                } => {
                    assert_eq!(remaining, 9 - n);
                    let want = u64::from(n + 1) * six;
                    assert!(
                        reset_us <= want && reset_us + 1_000_000 > want,
                        "{reset_us}"
                    );
                }
                other => panic!("request {n}: {other:?}"),
            }
        }
        let GcraReply::Limited { retry_us } = c.gcra("r:api:k", six, 10).await.unwrap() else {
            panic!("11th allowed");
        };
        assert!(retry_us > 4_000_000 && retry_us <= six, "{retry_us}");
        assert!(c.gcra("r:api:other", six, 10).await.unwrap() != GcraReply::Limited { retry_us });

        // Batches add hits without refusing and read the backlog back.
        let backlog = c
            .gcra_add(&[("r:web:a", 3), ("r:web:b", 0)], 1_000_000)
            .await
            .unwrap();
        assert_eq!(backlog.len(), 2);
        assert!(
            backlog[0] > 2_000_000 && backlog[0] <= 3_000_000,
            "{backlog:?}"
        );
        assert_eq!(backlog[1], 0);

        // Keys spread (no hash tag) and expire.
        let mut conn = s_conn(&server).await;
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("*rl:*")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(keys.iter().all(|k| !k.contains('{')), "{keys:?}");
        for k in &keys {
            let ttl: i64 = redis::cmd("PTTL")
                .arg(k)
                .query_async(&mut conn)
                .await
                .unwrap();
            assert!(ttl > 0, "{k} has no expiry");
        }

        // Fixed windows (login failures).
        let keys = ["l:{1.2.3.4}:a:x", "l:{1.2.3.4}"];
        assert_eq!(
            c.window_peek(&keys).await.unwrap(),
            vec![WindowState::default(); 2]
        );
        c.window_hit(&keys, 60_000).await.unwrap();
        c.window_hit(&keys[1..], 60_000).await.unwrap();
        let w = c.window_peek(&keys).await.unwrap();
        assert_eq!((w[0].count, w[1].count), (1, 2));
        assert!(w[1].left_ms > 50_000 && w[1].left_ms <= 60_000);
        c.window_reset(keys[0]).await.unwrap();
        assert_eq!(c.window_peek(&keys).await.unwrap()[0].count, 0);
    }

    async fn s_conn(server: &Server) -> redis::aio::MultiplexedConnection {
        redis::Client::open(server.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    /// One test per suite function, each on its own server.
    macro_rules! conformance_tests {
        ($($name:ident),* $(,)?) => {
            mod single {
                use super::*;
                $(
                    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                    async fn $name() {
                        let server = Server::start(&[]);
                        conformance::$name(store(&server).await).await;
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn whole_suite_shares_one_server() {
        let server = Server::start(&[]);
        conformance::run_all(store(&server).await).await;
    }

    /// Three masters made into a cluster with `redis-cli --cluster create`; the suite runs
    /// through a cluster connection (scripts routed by the hash tag's slot).
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn whole_suite_on_a_cluster() {
        let nodes: Vec<Server> = (0..3)
            .map(|_| Server::start(&["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"]))
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli");
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // Every node must agree the cluster is up before a client maps the slots.
        let deadline = Instant::now() + Duration::from_secs(20);
        for n in &nodes {
            loop {
                let info = Command::new("redis-cli")
                    .args(["-p", &n.port.to_string(), "cluster", "info"])
                    .output()
                    .unwrap();
                if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
                    break;
                }
                assert!(Instant::now() < deadline, "cluster did not come up");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let store = RedisStore::connect(&RedisOptions::new(nodes[1].url(), true))
            .await
            .unwrap();
        conformance::run_all(Arc::new(store)).await;
    }

    /// `rediss://`: a redis-server speaking TLS only, with a certificate of a private CA the
    /// store is told to trust; the whole suite runs through it. Without the CA the connection
    /// is refused (Mozilla's roots do not know it).
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn whole_suite_over_tls() {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let dir = tempfile::tempdir().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .signed_by(&leaf_key, &issuer)
            .unwrap();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert, leaf.pem()).unwrap();
        std::fs::write(&key, leaf_key.serialize_pem()).unwrap();
        let tls_port = free_port();
        let server = Server::start(&[
            "--port",
            "0",
            "--tls-port",
            &tls_port.to_string(),
            "--tls-cert-file",
            cert.to_str().unwrap(),
            "--tls-key-file",
            key.to_str().unwrap(),
            "--tls-auth-clients",
            "no",
        ]);
        let url = format!("rediss://localhost:{tls_port}/");
        let mut options = RedisOptions::new(url.clone(), false);
        options.connect_timeout = Duration::from_millis(500);
        let untrusted = RedisStore::connect(&options).await;
        assert!(
            untrusted.is_err(),
            "a certificate of an unknown CA was accepted"
        );
        options.tls_root_pem = Some(ca.pem().into_bytes());
        let store = RedisStore::connect(&options).await.unwrap();
        conformance::run_all(Arc::new(store)).await;
        drop(server);
    }

    #[test]
    fn invalidations_round_trip() {
        for what in [
            Invalidation::User("u-1".into()),
            Invalidation::Session("s 2".into()),
            Invalidation::ApiKey(conformance::random_hash()),
            Invalidation::All,
        ] {
            assert_eq!(decode(&encode(&what)), Some(what));
        }
        assert_eq!(decode("x y"), None);
        assert_eq!(decode("k nothex"), None);
    }

    #[test]
    fn hashes_round_trip_through_hex() {
        let h = conformance::random_hash();
        assert_eq!(unhex(&to_hex(&h)).unwrap(), h);
        assert!(unhex("zz").is_err());
    }

    #[test]
    fn members_sort_as_creation_order() {
        let a = user_member(999, "b");
        let b = user_member(1000, "a");
        let c = user_member(1000, "b");
        assert!(a < b && b < c);
        assert!(valid_cursor(&c) && !valid_cursor("not a cursor") && !valid_cursor("1.x"));
    }

    #[tokio::test]
    async fn an_unreachable_server_is_unavailable() {
        let port = free_port();
        let mut options = RedisOptions::new(format!("redis://:s3cret-pw@127.0.0.1:{port}/"), false);
        options.connect_timeout = Duration::from_millis(300);
        let err = RedisStore::connect(&options).await.unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
        // The error is logged at start: it must not carry the URL's password.
        assert!(!format!("{err} {err:?}").contains("s3cret-pw"), "{err:?}");
    }

    #[tokio::test]
    async fn a_refused_password_is_not_echoed() {
        let server = Server::start(&["--requirepass", "the-right-one"]);
        let options = RedisOptions::new(
            format!("redis://:wrong-pw-123@127.0.0.1:{}/", server.port),
            false,
        );
        let err = RedisStore::connect(&options).await.unwrap_err();
        let text = format!("{err} {err:?}");
        assert!(
            !text.contains("wrong-pw-123") && !text.contains("the-right-one"),
            "{text}"
        );
    }
}
