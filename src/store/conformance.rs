//! The backend-agnostic behaviour suite of [`Store`]: every backend (SQLite now, Redis
//! later) runs these same functions, so the backends cannot drift apart.
//!
//! Owns: the executable definition of the trait's contract (uniqueness, cascades,
//! pagination, rotation outcomes, single use, atomic bootstrap, concurrency). Must not
//! touch: any backend's internals; everything goes through `Arc<dyn Store>`.
//!
//! Each function panics (through `assert!`) on the first broken rule, like a test body.
//! They are compiled into the library, not behind `cfg(test)`, because integration tests
//! in `tests/` (and the Redis backend's) link the library without `cfg(test)`.
//!
//! Every function makes its own random ids, emails, usernames, roles and token hashes, so
//! all of them can share one store (a single redis-server) and run in any order. Time is
//! explicit: the functions pass `now` values around [`T0`], never the wall clock. The
//! exception is the signing-key pair of functions, which assume nobody else writes
//! signing keys to the store while they run.

// This module is test code that must live outside `cfg(test)` (see above): a failed
// `unwrap` here is a failed assertion, exactly as in a test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use super::{
    ApiKey, ApiKeyKind, ConflictField, OAuthIdentity, OneTimeKind, OneTimeToken, RefreshToken,
    RotateOutcome, Session, SigningKey, Store, StoreError, TokenHash, UnixMillis, User, UserPatch,
    UserQuery, new_id,
};

/// The base time of the suite (2023-11-14T22:13:20Z), in milliseconds.
pub const T0: UnixMillis = 1_700_000_000_000;

const HOUR: UnixMillis = 3_600_000;
const DAY: UnixMillis = 24 * HOUR;
const GRACE: Duration = Duration::from_secs(10);

/// Runs every function of the suite, one after the other, on one store.
pub async fn run_all(store: Arc<dyn Store>) {
    ping(Arc::clone(&store)).await;
    users_create_get_and_uniqueness(Arc::clone(&store)).await;
    users_update(Arc::clone(&store)).await;
    users_delete_cascades(Arc::clone(&store)).await;
    users_list_pagination_and_filters(Arc::clone(&store)).await;
    sessions_lifecycle(Arc::clone(&store)).await;
    refresh_rotation_outcomes(Arc::clone(&store)).await;
    refresh_concurrent_rotation(Arc::clone(&store)).await;
    api_keys_lifecycle(Arc::clone(&store)).await;
    signing_keys_bootstrap_and_rotation(Arc::clone(&store)).await;
    signing_keys_bootstrap_race(Arc::clone(&store)).await;
    one_time_tokens_single_use(Arc::clone(&store)).await;
    one_time_tokens_concurrent_consume(Arc::clone(&store)).await;
    one_time_tokens_concurrent_insert(Arc::clone(&store)).await;
    users_mfa_swap(Arc::clone(&store)).await;
    oauth_identities_lifecycle(Arc::clone(&store)).await;
    purge_expired(store).await;
}

// ---- fixtures ----

/// 32 random bytes, standing in for the SHA-256 of a fresh secret.
pub fn random_hash() -> TokenHash {
    let mut hash = [0u8; 32];
    hash[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    hash[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    hash
}

/// A short random token usable in emails, usernames and roles.
fn tag() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
}

fn user(email: Option<String>, username: Option<String>, created_at: UnixMillis) -> User {
    User {
        id: new_id(),
        email,
        username,
        name: Some("Test User".into()),
        external_id: None,
        email_verified: false,
        roles: vec!["user".into()],
        disabled: false,
        password_hash: Some("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into()),
        mfa: None,
        created_at,
        updated_at: created_at,
    }
}

async fn new_user(store: &Arc<dyn Store>) -> User {
    let u = user(Some(format!("{}@example.test", tag())), Some(tag()), T0);
    store.create_user(&u).await.unwrap();
    u
}

fn new_session(user_id: &str, now: UnixMillis) -> Session {
    Session {
        id: new_id(),
        user_id: user_id.to_owned(),
        created_at: now,
        last_used_at: now,
        expires_at: now + 30 * DAY,
        user_agent: Some("conformance/1".into()),
        ip: Some("192.0.2.7".into()),
        amr: vec!["pwd".into()],
        revoked_at: None,
    }
}

fn refresh(session: &Session, now: UnixMillis) -> RefreshToken {
    RefreshToken {
        token_hash: random_hash(),
        session_id: session.id.clone(),
        created_at: now,
        expires_at: now + 30 * DAY,
        used_at: None,
    }
}

/// A user with one session and its first refresh token.
async fn signed_in(store: &Arc<dyn Store>, now: UnixMillis) -> (User, Session, TokenHash) {
    let u = new_user(store).await;
    let s = new_session(&u.id, now);
    let r = refresh(&s, now);
    store.create_session(&s, Some(&r)).await.unwrap();
    (u, s, r.token_hash)
}

fn api_key(user_id: &str, kind: ApiKeyKind, now: UnixMillis) -> ApiKey {
    ApiKey {
        id: new_id(),
        user_id: user_id.to_owned(),
        kind,
        name: "ci".into(),
        prefix: "sk_AbC".into(),
        key_hash: random_hash(),
        scopes: None,
        created_at: now,
        expires_at: None,
        revoked_at: None,
        last_used_at: None,
    }
}

fn one_time(kind: OneTimeKind, user_id: Option<&str>, now: UnixMillis) -> OneTimeToken {
    OneTimeToken {
        token_hash: random_hash(),
        kind,
        user_id: user_id.map(str::to_owned),
        email: None,
        payload: serde_json::json!({"redirect_to": "https://app.example.com/"}),
        created_at: now,
        expires_at: now + HOUR,
    }
}

fn signing_key(now: UnixMillis) -> SigningKey {
    SigningKey {
        kid: new_id(),
        alg: "EdDSA".into(),
        private_key: uuid::Uuid::new_v4().as_bytes().to_vec(),
        public_jwk: r#"{"kty":"OKP","crv":"Ed25519","x":"AAAA"}"#.into(),
        created_at: now,
        not_after: None,
        retired_at: None,
    }
}

fn assert_conflict<T: std::fmt::Debug>(result: Result<T, StoreError>, field: ConflictField) {
    match result {
        Err(StoreError::Conflict { field: got }) => assert_eq!(got, field),
        other => panic!("expected Conflict {{ {field} }}, got {other:?}"),
    }
}

fn assert_not_found<T: std::fmt::Debug>(result: Result<T, StoreError>) {
    match result {
        Err(StoreError::NotFound) => {}
        other => panic!("expected NotFound, got {other:?}"),
    }
}

fn rotated(outcome: RotateOutcome) -> (Session, bool) {
    match outcome {
        RotateOutcome::Rotated { session, retry } => (session, retry),
        other => panic!("expected Rotated, got {other:?}"),
    }
}

// ---- the suite ----

/// `ping` answers on a healthy store.
pub async fn ping(store: Arc<dyn Store>) {
    store.ping().await.unwrap();
    assert!(!store.kind().is_empty());
}

/// Create and the four lookups; emails unique after normalisation, usernames unique and
/// case-sensitive, external ids and ids unique; absent values never collide.
pub async fn users_create_get_and_uniqueness(store: Arc<dyn Store>) {
    let t = tag();
    let mut alice = user(
        Some(format!("  Alice.{t}@Example.COM ")),
        Some(format!("Alice{t}")),
        T0,
    );
    alice.external_id = Some(format!("ext-{t}"));
    alice.mfa = Some(vec![0, 1, 2, 255]);
    store.create_user(&alice).await.unwrap();
    let email = format!("alice.{t}@example.com");

    let by_id = store.get_user(&alice.id).await.unwrap().unwrap();
    assert_eq!(
        by_id.email.as_deref(),
        Some(email.as_str()),
        "email stored normalised"
    );
    assert_eq!(by_id.username, alice.username);
    assert_eq!(by_id.name, alice.name);
    assert_eq!(by_id.external_id, alice.external_id);
    assert_eq!(by_id.roles, alice.roles);
    assert_eq!(by_id.password_hash, alice.password_hash);
    assert_eq!(by_id.mfa, alice.mfa);
    assert_eq!((by_id.created_at, by_id.updated_at), (T0, T0));
    assert!(!by_id.email_verified && !by_id.disabled);

    let by_email = store
        .get_user_by_email(&format!("ALICE.{t}@example.com "))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(by_email.id, alice.id);
    let by_name = store
        .get_user_by_username(&format!("Alice{t}"))
        .await
        .unwrap();
    assert_eq!(by_name.map(|u| u.id), Some(alice.id.clone()));
    assert!(
        store
            .get_user_by_username(&format!("alice{t}"))
            .await
            .unwrap()
            .is_none(),
        "usernames are case-sensitive"
    );
    let by_ext = store
        .get_user_by_external_id(&format!("ext-{t}"))
        .await
        .unwrap();
    assert_eq!(by_ext.map(|u| u.id), Some(alice.id.clone()));
    assert!(store.get_user(&new_id()).await.unwrap().is_none());
    assert!(
        store
            .get_user_by_email("nobody@nowhere.test")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .get_user_by_external_id(&tag())
            .await
            .unwrap()
            .is_none()
    );

    // Same email in another case and with spaces: taken.
    let twin = user(Some(format!("ALICE.{t}@EXAMPLE.com")), None, T0);
    assert_conflict(store.create_user(&twin).await, ConflictField::Email);
    // Same username: taken; the same letters in another case: a different username.
    let twin = user(None, Some(format!("Alice{t}")), T0);
    assert_conflict(store.create_user(&twin).await, ConflictField::Username);
    let lower = user(None, Some(format!("alice{t}")), T0);
    store.create_user(&lower).await.unwrap();
    // Same external id: taken.
    let mut twin = user(None, None, T0);
    twin.external_id = Some(format!("ext-{t}"));
    assert_conflict(store.create_user(&twin).await, ConflictField::ExternalId);
    // Same id: taken.
    let mut twin = user(Some(format!("other.{t}@example.com")), None, T0);
    twin.id = alice.id.clone();
    assert_conflict(store.create_user(&twin).await, ConflictField::Id);
    // Users without email, username or external id do not collide with each other.
    store.create_user(&user(None, None, T0)).await.unwrap();
    store.create_user(&user(None, None, T0)).await.unwrap();
    // A failed create left nothing behind.
    assert!(
        store
            .get_user_by_email(&format!("other.{t}@example.com"))
            .await
            .unwrap()
            .is_none()
    );
}

/// Partial updates, clearing fields, normalisation and uniqueness on update.
pub async fn users_update(store: Arc<dyn Store>) {
    let a = new_user(&store).await;
    let b = new_user(&store).await;
    let t = tag();

    let patch = UserPatch {
        name: Some(Some("Renamed".into())),
        email: Some(Some(format!(" New.{t}@Example.com"))),
        email_verified: Some(true),
        roles: Some(vec!["admin".into(), "user".into()]),
        disabled: Some(true),
        password_hash: Some(Some("$argon2id$v=19$new".into())),
        mfa: Some(Some(b"opaque".to_vec())),
        external_id: Some(Some(format!("ext-{t}"))),
        ..UserPatch::default()
    };
    let updated = store.update_user(&a.id, &patch, T0 + 5).await.unwrap();
    assert_eq!(updated.name.as_deref(), Some("Renamed"));
    assert_eq!(updated.email, Some(format!("new.{t}@example.com")));
    assert!(updated.email_verified && updated.disabled);
    assert_eq!(updated.roles, vec!["admin".to_owned(), "user".to_owned()]);
    assert_eq!(updated.password_hash.as_deref(), Some("$argon2id$v=19$new"));
    assert_eq!(updated.mfa.as_deref(), Some(&b"opaque"[..]));
    assert_eq!(updated.username, a.username, "untouched fields stay");
    assert_eq!((updated.created_at, updated.updated_at), (T0, T0 + 5));
    assert_eq!(store.get_user(&a.id).await.unwrap(), Some(updated.clone()));
    let found = store
        .get_user_by_email(&format!("NEW.{t}@example.com"))
        .await
        .unwrap();
    assert_eq!(found.map(|u| u.id), Some(a.id.clone()));
    assert!(
        store
            .get_user_by_email(a.email.as_deref().unwrap())
            .await
            .unwrap()
            .is_none()
    );

    // Clearing nullable fields.
    let cleared = store
        .update_user(
            &a.id,
            &UserPatch {
                mfa: Some(None),
                name: Some(None),
                ..UserPatch::default()
            },
            T0 + 6,
        )
        .await
        .unwrap();
    assert_eq!((cleared.mfa, cleared.name), (None, None));

    // Taking another user's email or username fails and changes nothing.
    let steal_email = UserPatch {
        email: Some(b.email.as_deref().map(str::to_uppercase)),
        name: Some(Some("Thief".into())),
        ..UserPatch::default()
    };
    assert_conflict(
        store.update_user(&a.id, &steal_email, T0 + 7).await,
        ConflictField::Email,
    );
    let steal_username = UserPatch {
        username: Some(b.username.clone()),
        ..UserPatch::default()
    };
    assert_conflict(
        store.update_user(&a.id, &steal_username, T0 + 7).await,
        ConflictField::Username,
    );
    let after = store.get_user(&a.id).await.unwrap().unwrap();
    assert_eq!((after.name, after.updated_at), (None, T0 + 6));

    // Keeping one's own unique values is not a conflict.
    let same = UserPatch {
        email: Some(after.email.clone()),
        username: Some(after.username.clone()),
        ..UserPatch::default()
    };
    store.update_user(&a.id, &same, T0 + 8).await.unwrap();

    assert_not_found(store.update_user(&new_id(), &same, T0).await);
}

/// Deleting a user removes its sessions, refresh tokens, API keys and one-time tokens,
/// and nothing of another user.
pub async fn users_delete_cascades(store: Arc<dyn Store>) {
    let now = T0;
    let (victim, v_session, v_refresh) = signed_in(&store, now).await;
    let (other, o_session, o_refresh) = signed_in(&store, now).await;
    let v_key = api_key(&victim.id, ApiKeyKind::Secret, now);
    let o_key = api_key(&other.id, ApiKeyKind::Secret, now);
    store.create_api_key(&v_key).await.unwrap();
    store.create_api_key(&o_key).await.unwrap();
    let v_token = one_time(OneTimeKind::PasswordReset, Some(&victim.id), now);
    let o_token = one_time(OneTimeKind::PasswordReset, Some(&other.id), now);
    store.create_one_time_token(&v_token).await.unwrap();
    store.create_one_time_token(&o_token).await.unwrap();

    store.delete_user(&victim.id).await.unwrap();

    assert!(store.get_user(&victim.id).await.unwrap().is_none());
    assert!(
        store
            .get_user_by_email(victim.email.as_deref().unwrap())
            .await
            .unwrap()
            .is_none()
    );
    assert!(store.get_session(&v_session.id).await.unwrap().is_none());
    assert!(store.is_session_revoked(&v_session.id, now).await.unwrap());
    assert!(
        store
            .list_active_sessions(&victim.id, now)
            .await
            .unwrap()
            .is_empty()
    );
    let outcome = store
        .rotate_refresh(&v_refresh, &random_hash(), now + 1, GRACE, now + DAY)
        .await
        .unwrap();
    assert_eq!(outcome, RotateOutcome::NotFound);
    assert!(
        store
            .get_api_key_by_hash(&v_key.key_hash)
            .await
            .unwrap()
            .is_none()
    );
    assert!(store.get_api_key(&v_key.id).await.unwrap().is_none());
    assert!(store.list_api_keys(&victim.id).await.unwrap().is_empty());
    let consumed = store
        .consume_one_time_token(&v_token.token_hash, OneTimeKind::PasswordReset, now)
        .await
        .unwrap();
    assert!(consumed.is_none());

    // The other user is untouched.
    assert!(!store.is_session_revoked(&o_session.id, now).await.unwrap());
    assert!(
        store
            .get_api_key_by_hash(&o_key.key_hash)
            .await
            .unwrap()
            .is_some()
    );
    let (_, retry) = rotated(
        store
            .rotate_refresh(&o_refresh, &random_hash(), now + 1, GRACE, now + DAY)
            .await
            .unwrap(),
    );
    assert!(!retry);
    assert!(
        store
            .get_one_time_token(&o_token.token_hash, OneTimeKind::PasswordReset, now)
            .await
            .unwrap()
            .is_some()
    );

    // The freed email can be registered again; deleting twice is NotFound.
    store
        .create_user(&user(victim.email.clone(), victim.username.clone(), now))
        .await
        .unwrap();
    assert_not_found(store.delete_user(&victim.id).await);
}

/// Cursor pagination visits every matching user once, oldest first (ties by id), and the
/// email and role filters narrow the listing.
pub async fn users_list_pagination_and_filters(store: Arc<dyn Store>) {
    let t = tag();
    let role = format!("role-{t}");
    let mut created = Vec::new();
    for i in 0..7i64 {
        // Pairs share a creation time, so the id tie-break is exercised.
        let mut u = user(Some(format!("p{i}.{t}@list.test")), None, T0 + i / 2);
        if i % 2 == 0 {
            u.roles = vec!["user".into(), role.clone()];
        }
        store.create_user(&u).await.unwrap();
        created.push(u);
    }
    // A user outside the filter, with the role: the email filter must exclude it.
    let mut outsider = user(Some(format!("{t}@elsewhere.test")), None, T0);
    outsider.roles = vec![role.clone()];
    store.create_user(&outsider).await.unwrap();

    let mut expected: Vec<(UnixMillis, String)> = created
        .iter()
        .map(|u| (u.created_at, u.id.clone()))
        .collect();
    expected.sort();

    let mut seen = Vec::new();
    let mut cursor = None;
    let mut pages = 0;
    loop {
        let page = store
            .list_users(&UserQuery {
                email_contains: Some(format!(".{}@LIST", t.to_uppercase())),
                role: None,
                cursor: cursor.clone(),
                limit: 3,
            })
            .await
            .unwrap();
        pages += 1;
        assert!(page.users.len() <= 3);
        seen.extend(page.users.iter().map(|u| (u.created_at, u.id.clone())));
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
        assert!(pages < 10, "pagination does not end");
    }
    assert_eq!(seen, expected, "every user once, in (created_at, id) order");
    assert_eq!(pages, 3);

    // Role filter alone: the four even users and the outsider.
    let page = store
        .list_users(&UserQuery {
            role: Some(role.clone()),
            limit: 100,
            ..UserQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(page.users.len(), 5);
    assert!(page.next_cursor.is_none());
    assert!(page.users.iter().all(|u| u.roles.contains(&role)));
    // A role name that is a prefix of a real one matches nothing.
    let page = store
        .list_users(&UserQuery {
            role: Some(format!("role-{}", &t[..6])),
            limit: 100,
            ..UserQuery::default()
        })
        .await
        .unwrap();
    assert!(page.users.is_empty());
    // Both filters.
    let page = store
        .list_users(&UserQuery {
            email_contains: Some(format!("{t}@list.test")),
            role: Some(role.clone()),
            limit: 100,
            ..UserQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(page.users.len(), 4);
    // A page exactly as large as the rest has no next cursor.
    let page = store
        .list_users(&UserQuery {
            email_contains: Some(format!("{t}@list.test")),
            limit: 7,
            ..UserQuery::default()
        })
        .await
        .unwrap();
    assert_eq!((page.users.len(), page.next_cursor), (7, None));

    let bad = store
        .list_users(&UserQuery {
            cursor: Some("not a cursor".into()),
            limit: 10,
            ..UserQuery::default()
        })
        .await;
    assert!(matches!(bad, Err(StoreError::InvalidCursor)), "{bad:?}");
}

/// Create, get, touch, list active, revoke one (owner-checked), revoke all but one.
pub async fn sessions_lifecycle(store: Arc<dyn Store>) {
    let now = T0;
    let u = new_user(&store).await;
    let other = new_user(&store).await;
    let s1 = new_session(&u.id, now);
    let mut s2 = new_session(&u.id, now + 1);
    s2.amr = vec!["pwd".into(), "mfa".into()];
    let s3 = new_session(&u.id, now + 2);
    let mut expired = new_session(&u.id, now - 2 * DAY);
    expired.expires_at = now - DAY;
    for s in [&s1, &s2, &s3, &expired] {
        store.create_session(s, None).await.unwrap();
    }
    let theirs = new_session(&other.id, now);
    store.create_session(&theirs, None).await.unwrap();

    assert_eq!(store.get_session(&s2.id).await.unwrap(), Some(s2.clone()));
    assert!(store.get_session(&new_id()).await.unwrap().is_none());
    assert_conflict(store.create_session(&s1, None).await, ConflictField::Id);
    assert_not_found(
        store
            .create_session(&new_session(&new_id(), now), None)
            .await,
    );
    let mismatched = refresh(&s1, now);
    let s4 = new_session(&u.id, now);
    assert!(store.create_session(&s4, Some(&mismatched)).await.is_err());
    assert!(store.get_session(&s4.id).await.unwrap().is_none());

    // touch moves last_used_at forward only.
    store.touch_session(&s1.id, now + 10 * HOUR).await.unwrap();
    store.touch_session(&s1.id, now + HOUR).await.unwrap();
    let touched = store.get_session(&s1.id).await.unwrap().unwrap();
    assert_eq!(touched.last_used_at, now + 10 * HOUR);
    assert_not_found(store.touch_session(&new_id(), now).await);

    // Batched uses: forward only, unknown ids skipped, several sessions in one call.
    store
        .record_session_use(&[
            (s3.id.clone(), now + 5),
            (new_id(), now + 7),
            (s3.id.clone(), now + 4),
            (s2.id.clone(), now + 3),
        ])
        .await
        .unwrap();
    store
        .record_session_use(&[(s1.id.clone(), now + HOUR)])
        .await
        .unwrap();
    store.record_session_use(&[]).await.unwrap();
    let last_used = |s: Option<Session>| s.unwrap().last_used_at;
    assert_eq!(
        (
            last_used(store.get_session(&s1.id).await.unwrap()),
            last_used(store.get_session(&s2.id).await.unwrap()),
            last_used(store.get_session(&s3.id).await.unwrap()),
        ),
        (now + 10 * HOUR, now + 3, now + 5)
    );

    let active = store.list_active_sessions(&u.id, now + 1).await.unwrap();
    let ids: Vec<&str> = active.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(
        ids,
        vec![s1.id.as_str(), s3.id.as_str(), s2.id.as_str()],
        "most recent first"
    );
    assert!(
        store.is_session_revoked(&expired.id, now).await.unwrap(),
        "expired"
    );
    assert!(!store.is_session_revoked(&s2.id, now).await.unwrap());
    assert!(
        store.is_session_revoked(&new_id(), now).await.unwrap(),
        "unknown"
    );

    // Owner-checked revoke: someone else's session looks absent.
    assert_not_found(store.revoke_session(&theirs.id, Some(&u.id), now).await);
    assert!(!store.is_session_revoked(&theirs.id, now).await.unwrap());
    store
        .revoke_session(&s2.id, Some(&u.id), now + 5)
        .await
        .unwrap();
    store.revoke_session(&s2.id, None, now + 50).await.unwrap();
    let revoked = store.get_session(&s2.id).await.unwrap().unwrap();
    assert_eq!(
        revoked.revoked_at,
        Some(now + 5),
        "first revocation time kept"
    );
    assert!(!revoked.is_active(now + 6));
    assert!(store.is_session_revoked(&s2.id, now + 6).await.unwrap());
    assert_not_found(store.revoke_session(&new_id(), None, now).await);

    // Revoke all but the current one (password change, "sign out other devices").
    let n = store
        .revoke_user_sessions(&u.id, Some(&s1.id), now + 7)
        .await
        .unwrap();
    assert_eq!(n, 2, "s3 and the expired one; s2 was already revoked");
    let active = store.list_active_sessions(&u.id, now + 8).await.unwrap();
    assert_eq!(
        active.iter().map(|s| s.id.clone()).collect::<Vec<_>>(),
        vec![s1.id.clone()]
    );
    let n = store
        .revoke_user_sessions(&u.id, None, now + 9)
        .await
        .unwrap();
    assert_eq!(n, 1);
    assert!(
        store
            .list_active_sessions(&u.id, now + 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        !store
            .is_session_revoked(&theirs.id, now + 10)
            .await
            .unwrap(),
        "other user's"
    );
}

/// Every outcome of `rotate_refresh` with a controlled clock: first use, retry inside the
/// grace window (siblings, each single-use), reuse after it (whole session revoked),
/// unknown, expired, logged out.
pub async fn refresh_rotation_outcomes(store: Arc<dyn Store>) {
    let now = T0;
    let grace_ms = GRACE.as_millis() as UnixMillis;
    let (_, s, r0) = signed_in(&store, now).await;

    // Unknown token.
    let outcome = store
        .rotate_refresh(&random_hash(), &random_hash(), now, GRACE, now + DAY)
        .await
        .unwrap();
    assert_eq!(outcome, RotateOutcome::NotFound);

    // First use.
    let r1 = random_hash();
    let (session, retry) = rotated(
        store
            .rotate_refresh(&r0, &r1, now + 1000, GRACE, now + DAY)
            .await
            .unwrap(),
    );
    assert!(!retry);
    assert_eq!(session.id, s.id);
    assert_eq!(session.last_used_at, now + 1000);
    assert_eq!(
        store
            .get_session(&s.id)
            .await
            .unwrap()
            .unwrap()
            .last_used_at,
        now + 1000
    );

    // Same token again inside the grace window: a sibling, not a revocation.
    let r1b = random_hash();
    let (session, retry) = rotated(
        store
            .rotate_refresh(&r0, &r1b, now + 1000 + grace_ms, GRACE, now + DAY)
            .await
            .unwrap(),
    );
    assert!(retry);
    assert_eq!(session.id, s.id);

    // Both children are valid, each once.
    let r2 = random_hash();
    let (_, retry) = rotated(
        store
            .rotate_refresh(&r1, &r2, now + 20_000, GRACE, now + DAY)
            .await
            .unwrap(),
    );
    assert!(!retry);
    let r2b = random_hash();
    let (_, retry) = rotated(
        store
            .rotate_refresh(&r1b, &r2b, now + 20_000, GRACE, now + DAY)
            .await
            .unwrap(),
    );
    assert!(!retry);

    // The grace window runs from the first use: r0 one millisecond past it is reuse,
    // although its last retry was later. The whole session dies.
    let outcome = store
        .rotate_refresh(&r0, &random_hash(), now + 1001 + grace_ms, GRACE, now + DAY)
        .await
        .unwrap();
    assert_eq!(
        outcome,
        RotateOutcome::ReuseDetected {
            session_id: s.id.clone()
        }
    );
    let dead = store.get_session(&s.id).await.unwrap().unwrap();
    assert_eq!(dead.revoked_at, Some(now + 1001 + grace_ms));
    assert!(
        store
            .is_session_revoked(&s.id, now + 1002 + grace_ms)
            .await
            .unwrap()
    );
    // Even the newest, never-used tokens of that session stop working.
    for token in [r2, r2b] {
        let outcome = store
            .rotate_refresh(&token, &random_hash(), now + 30_000, GRACE, now + DAY)
            .await
            .unwrap();
        assert_eq!(
            outcome,
            RotateOutcome::Revoked {
                session_id: s.id.clone()
            }
        );
    }

    // Logout: the session's token is refused.
    let (u, s, r) = signed_in(&store, now).await;
    store
        .revoke_session(&s.id, Some(&u.id), now + 1)
        .await
        .unwrap();
    let outcome = store
        .rotate_refresh(&r, &random_hash(), now + 2, GRACE, now + DAY)
        .await
        .unwrap();
    assert_eq!(
        outcome,
        RotateOutcome::Revoked {
            session_id: s.id.clone()
        }
    );

    // An expired token of a live session, and a live token of an expired session.
    let other = new_user(&store).await;
    let s_live = new_session(&other.id, now);
    let mut t_short = refresh(&s_live, now);
    t_short.expires_at = now + 100;
    store.create_session(&s_live, Some(&t_short)).await.unwrap();
    let outcome = store
        .rotate_refresh(
            &t_short.token_hash,
            &random_hash(),
            now + 100,
            GRACE,
            now + DAY,
        )
        .await
        .unwrap();
    assert_eq!(
        outcome,
        RotateOutcome::Expired {
            session_id: s_live.id.clone()
        }
    );
    let mut s_short = new_session(&other.id, now);
    s_short.expires_at = now + 50;
    let t_long = refresh(&s_short, now);
    store.create_session(&s_short, Some(&t_long)).await.unwrap();
    let outcome = store
        .rotate_refresh(
            &t_long.token_hash,
            &random_hash(),
            now + 50,
            GRACE,
            now + DAY,
        )
        .await
        .unwrap();
    assert_eq!(
        outcome,
        RotateOutcome::Expired {
            session_id: s_short.id.clone()
        }
    );
    // Nothing was written by the refused rotations: the session was not touched.
    assert_eq!(
        store
            .get_session(&s_live.id)
            .await
            .unwrap()
            .unwrap()
            .last_used_at,
        now
    );

    // Zero grace: any second presentation is reuse.
    let (_, s, r) = signed_in(&store, now).await;
    rotated(
        store
            .rotate_refresh(&r, &random_hash(), now, Duration::ZERO, now + DAY)
            .await
            .unwrap(),
    );
    let outcome = store
        .rotate_refresh(&r, &random_hash(), now + 1, Duration::ZERO, now + DAY)
        .await
        .unwrap();
    assert_eq!(outcome, RotateOutcome::ReuseDetected { session_id: s.id });

    // A new hash that already exists is a conflict, and the presented token stays unused.
    let (_, _, a) = signed_in(&store, now).await;
    let (_, _, b) = signed_in(&store, now).await;
    assert_conflict(
        store.rotate_refresh(&a, &b, now, GRACE, now + DAY).await,
        ConflictField::TokenHash,
    );
    let (_, retry) = rotated(
        store
            .rotate_refresh(&a, &random_hash(), now, GRACE, now + DAY)
            .await
            .unwrap(),
    );
    assert!(!retry, "the failed rotation did not mark the token used");
}

/// Many concurrent rotations of one fresh token (two tabs, retries) all succeed: exactly
/// one first use, the rest retries inside the grace window; every child works once.
pub async fn refresh_concurrent_rotation(store: Arc<dyn Store>) {
    const RACERS: usize = 8;
    let now = T0;
    let (_, s, r0) = signed_in(&store, now).await;
    let mut tasks = Vec::new();
    for _ in 0..RACERS {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let child = random_hash();
            let outcome = store
                .rotate_refresh(&r0, &child, now + 5, GRACE, now + DAY)
                .await
                .unwrap();
            (child, outcome)
        }));
    }
    let mut first_uses = 0;
    let mut children = Vec::new();
    for task in tasks {
        let (child, outcome) = task.await.unwrap();
        let (session, retry) = rotated(outcome);
        assert_eq!(session.id, s.id);
        if !retry {
            first_uses += 1;
        }
        children.push(child);
    }
    assert_eq!(first_uses, 1, "exactly one rotation is the first use");
    for child in children {
        let (_, retry) = rotated(
            store
                .rotate_refresh(&child, &random_hash(), now + 10, GRACE, now + DAY)
                .await
                .unwrap(),
        );
        assert!(!retry, "every child is fresh");
    }
    assert!(!store.is_session_revoked(&s.id, now + 10).await.unwrap());
}

/// Create, lookups, list, owner-checked revoke, bulk revoke, batched `last_used_at`.
pub async fn api_keys_lifecycle(store: Arc<dyn Store>) {
    let now = T0;
    let u = new_user(&store).await;
    let other = new_user(&store).await;
    let mut secret = api_key(&u.id, ApiKeyKind::Secret, now);
    secret.scopes = Some(vec!["read".into(), "write".into()]);
    secret.expires_at = Some(now + DAY);
    let mut publishable = api_key(&u.id, ApiKeyKind::Publishable, now + 1);
    publishable.scopes = Some(vec![]);
    let unscoped = api_key(&u.id, ApiKeyKind::Secret, now + 2);
    for k in [&secret, &publishable, &unscoped] {
        store.create_api_key(k).await.unwrap();
    }
    let theirs = api_key(&other.id, ApiKeyKind::Secret, now);
    store.create_api_key(&theirs).await.unwrap();

    assert_eq!(
        store.get_api_key_by_hash(&secret.key_hash).await.unwrap(),
        Some(secret.clone())
    );
    assert_eq!(
        store.get_api_key(&publishable.id).await.unwrap(),
        Some(publishable.clone())
    );
    let found = store
        .get_api_key_by_hash(&unscoped.key_hash)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        found.scopes, None,
        "no scopes (full rights) differs from empty scopes"
    );
    assert!(
        store
            .get_api_key_by_hash(&random_hash())
            .await
            .unwrap()
            .is_none()
    );
    assert!(secret.is_active(now + DAY - 1) && !secret.is_active(now + DAY));

    let mut dup = api_key(&u.id, ApiKeyKind::Secret, now);
    dup.key_hash = secret.key_hash;
    assert_conflict(store.create_api_key(&dup).await, ConflictField::KeyHash);
    let mut dup = api_key(&u.id, ApiKeyKind::Secret, now);
    dup.id = secret.id.clone();
    assert_conflict(store.create_api_key(&dup).await, ConflictField::Id);
    assert_not_found(
        store
            .create_api_key(&api_key(&new_id(), ApiKeyKind::Secret, now))
            .await,
    );

    let listed = store.list_api_keys(&u.id).await.unwrap();
    assert_eq!(
        listed,
        vec![secret.clone(), publishable.clone(), unscoped.clone()]
    );

    // Owner-checked revoke.
    assert_not_found(store.revoke_api_key(&theirs.id, Some(&u.id), now).await);
    assert!(
        store
            .get_api_key(&theirs.id)
            .await
            .unwrap()
            .unwrap()
            .revoked_at
            .is_none()
    );
    store
        .revoke_api_key(&secret.id, Some(&u.id), now + 10)
        .await
        .unwrap();
    store
        .revoke_api_key(&secret.id, None, now + 20)
        .await
        .unwrap();
    let revoked = store
        .get_api_key_by_hash(&secret.key_hash)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(revoked.revoked_at, Some(now + 10));
    assert!(!revoked.is_active(now + 11));
    assert_not_found(store.revoke_api_key(&new_id(), None, now).await);

    // Batched last use: moves forward only, unknown ids skipped.
    store
        .record_api_key_use(&[
            (publishable.id.clone(), now + 500),
            (unscoped.id.clone(), now + 700),
            (new_id(), now + 700),
            (publishable.id.clone(), now + 300),
        ])
        .await
        .unwrap();
    store
        .record_api_key_use(&[(unscoped.id.clone(), now + 600)])
        .await
        .unwrap();
    store.record_api_key_use(&[]).await.unwrap();
    let p = store.get_api_key(&publishable.id).await.unwrap().unwrap();
    let q = store.get_api_key(&unscoped.id).await.unwrap().unwrap();
    assert_eq!(
        (p.last_used_at, q.last_used_at),
        (Some(now + 500), Some(now + 700))
    );

    // Disable: every remaining key of the user at once.
    assert_eq!(
        store.revoke_user_api_keys(&u.id, now + 30).await.unwrap(),
        2
    );
    assert!(
        store
            .list_api_keys(&u.id)
            .await
            .unwrap()
            .iter()
            .all(|k| k.revoked_at.is_some())
    );
    assert!(
        store
            .get_api_key(&theirs.id)
            .await
            .unwrap()
            .unwrap()
            .revoked_at
            .is_none()
    );
}

/// Insert-if-absent returns the existing current key; rotation makes a new current key
/// and retires the old one with its `not_after`; listing puts the current key first.
pub async fn signing_keys_bootstrap_and_rotation(store: Arc<dyn Store>) {
    let now = T0;
    let first = signing_key(now);
    let current = store.insert_signing_key_if_absent(&first).await.unwrap();
    let again = store
        .insert_signing_key_if_absent(&signing_key(now + 1))
        .await
        .unwrap();
    assert_eq!(current, again, "the second bootstrap finds the first key");
    assert!(current.retired_at.is_none());
    let keys = store.list_signing_keys().await.unwrap();
    assert_eq!(keys.first(), Some(&current));

    let next = signing_key(now + HOUR);
    store
        .rotate_signing_key(&next, now + 2 * HOUR)
        .await
        .unwrap();
    let keys = store.list_signing_keys().await.unwrap();
    assert_eq!(keys.first(), Some(&next), "the new key signs");
    let old = keys.iter().find(|k| k.kid == current.kid).unwrap();
    assert_eq!(
        (old.retired_at, old.not_after),
        (Some(now + HOUR), Some(now + 2 * HOUR))
    );
    assert_eq!(keys.iter().filter(|k| k.retired_at.is_none()).count(), 1);
    assert_eq!(
        store
            .insert_signing_key_if_absent(&signing_key(now))
            .await
            .unwrap(),
        next,
        "bootstrap after a rotation keeps the rotated key"
    );
    assert_conflict(
        store.rotate_signing_key(&next, now).await,
        ConflictField::Kid,
    );
    assert_eq!(
        store.list_signing_keys().await.unwrap().first(),
        Some(&next)
    );

    // Retiring by hand keeps the first retirement time.
    store
        .retire_signing_key(&current.kid, now + 5 * HOUR, Some(now + 6 * HOUR))
        .await
        .unwrap();
    let keys = store.list_signing_keys().await.unwrap();
    let old = keys.iter().find(|k| k.kid == current.kid).unwrap();
    assert_eq!(
        (old.retired_at, old.not_after),
        (Some(now + HOUR), Some(now + 6 * HOUR))
    );
    assert_not_found(store.retire_signing_key(&new_id(), now, None).await);
}

/// Replicas racing to bootstrap the signing key all end up with the same one.
pub async fn signing_keys_bootstrap_race(store: Arc<dyn Store>) {
    const RACERS: usize = 8;
    let mut tasks = Vec::new();
    for i in 0..RACERS {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            store
                .insert_signing_key_if_absent(&signing_key(T0 + i as UnixMillis))
                .await
                .unwrap()
        }));
    }
    let mut winners = Vec::new();
    for task in tasks {
        winners.push(task.await.unwrap().kid);
    }
    winners.dedup();
    assert_eq!(
        winners.len(),
        1,
        "every racer got the same key: {winners:?}"
    );
    let keys = store.list_signing_keys().await.unwrap();
    let active: Vec<_> = keys.iter().filter(|k| k.retired_at.is_none()).collect();
    assert_eq!(active.len(), 1);
    assert_eq!(active[0].kid, winners[0]);
}

/// One-time tokens: peek, kind check, single use, expiry, voiding a user's older tokens,
/// email-only tokens (invitations).
pub async fn one_time_tokens_single_use(store: Arc<dyn Store>) {
    let now = T0;
    let u = new_user(&store).await;
    let reset = one_time(OneTimeKind::PasswordReset, Some(&u.id), now);
    store.create_one_time_token(&reset).await.unwrap();
    assert_conflict(
        store.create_one_time_token(&reset).await,
        ConflictField::TokenHash,
    );
    assert_not_found(
        store
            .create_one_time_token(&one_time(OneTimeKind::MagicLink, Some(&new_id()), now))
            .await,
    );

    // Peeking does not use it; another kind does not see it.
    let peek = store
        .get_one_time_token(&reset.token_hash, OneTimeKind::PasswordReset, now + 1)
        .await
        .unwrap();
    assert_eq!(peek.as_ref(), Some(&reset));
    assert!(
        store
            .get_one_time_token(&reset.token_hash, OneTimeKind::MagicLink, now + 1)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .consume_one_time_token(&reset.token_hash, OneTimeKind::EmailVerification, now + 1)
            .await
            .unwrap()
            .is_none(),
        "wrong kind"
    );
    let used = store
        .consume_one_time_token(&reset.token_hash, OneTimeKind::PasswordReset, now + 2)
        .await
        .unwrap();
    assert_eq!(used, Some(reset.clone()));
    assert!(
        store
            .consume_one_time_token(&reset.token_hash, OneTimeKind::PasswordReset, now + 3)
            .await
            .unwrap()
            .is_none(),
        "single use"
    );

    // Expired at `expires_at`.
    let link = one_time(OneTimeKind::MagicLink, Some(&u.id), now);
    store.create_one_time_token(&link).await.unwrap();
    assert!(
        store
            .get_one_time_token(&link.token_hash, OneTimeKind::MagicLink, link.expires_at)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .consume_one_time_token(&link.token_hash, OneTimeKind::MagicLink, link.expires_at)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .consume_one_time_token(
                &link.token_hash,
                OneTimeKind::MagicLink,
                link.expires_at - 1
            )
            .await
            .unwrap()
            .is_some()
    );

    // A new reset link voids the older ones of that user and kind only.
    let old1 = one_time(OneTimeKind::PasswordReset, Some(&u.id), now);
    let old2 = one_time(OneTimeKind::PasswordReset, Some(&u.id), now);
    let verify = one_time(OneTimeKind::EmailVerification, Some(&u.id), now);
    for t in [&old1, &old2, &verify] {
        store.create_one_time_token(t).await.unwrap();
    }
    assert_eq!(
        store
            .delete_one_time_tokens(&u.id, OneTimeKind::PasswordReset)
            .await
            .unwrap(),
        2
    );
    assert!(
        store
            .get_one_time_token(&verify.token_hash, OneTimeKind::EmailVerification, now)
            .await
            .unwrap()
            .is_some()
    );

    // Invitations name an email (normalised) and no user.
    let mut invite = one_time(OneTimeKind::Invitation, None, now);
    invite.email = Some(" Invitee@Example.COM".into());
    invite.payload = serde_json::json!({"roles": ["admin"]});
    invite.expires_at = now + 7 * DAY;
    store.create_one_time_token(&invite).await.unwrap();
    let got = store
        .consume_one_time_token(&invite.token_hash, OneTimeKind::Invitation, now + 6 * DAY)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.email.as_deref(), Some("invitee@example.com"));
    assert_eq!(got.payload, serde_json::json!({"roles": ["admin"]}));
    assert_eq!(got.user_id, None);

    // A new invitation voids the older ones to that address (any spelling) and kind only.
    let address = format!("again-{}@example.com", new_id());
    let mut tokens = Vec::new();
    for (kind, to) in [
        (OneTimeKind::Invitation, address.to_uppercase()),
        (OneTimeKind::Invitation, address.clone()),
        (OneTimeKind::MagicLink, address.clone()),
        (OneTimeKind::Invitation, format!("other-{address}")),
    ] {
        let mut t = one_time(kind, None, now);
        t.email = Some(to);
        store.create_one_time_token(&t).await.unwrap();
        tokens.push(t);
    }
    assert_eq!(
        store
            .delete_one_time_tokens_for_email(&format!(" {address} "), OneTimeKind::Invitation)
            .await
            .unwrap(),
        2
    );
    for (t, kept) in tokens.iter().zip([false, false, true, true]) {
        let found = store
            .get_one_time_token(&t.token_hash, t.kind, now)
            .await
            .unwrap();
        assert_eq!(found.is_some(), kept, "{:?}", t.email);
    }
}

/// Twenty concurrent uses of one token: exactly one wins.
pub async fn one_time_tokens_concurrent_consume(store: Arc<dyn Store>) {
    const RACERS: usize = 20;
    let u = new_user(&store).await;
    let token = one_time(OneTimeKind::PasswordReset, Some(&u.id), T0);
    store.create_one_time_token(&token).await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..RACERS {
        let store = Arc::clone(&store);
        let hash = token.token_hash;
        tasks.push(tokio::spawn(async move {
            store
                .consume_one_time_token(&hash, OneTimeKind::PasswordReset, T0 + 1)
                .await
                .unwrap()
        }));
    }
    let mut winners = 0;
    for task in tasks {
        if task.await.unwrap().is_some() {
            winners += 1;
        }
    }
    assert_eq!(winners, 1);
}

/// Twenty concurrent inserts of one hash (MFA replay markers rely on it): exactly one
/// succeeds, every other one is a `TokenHash` conflict, also once the holder has expired
/// but is not purged yet.
pub async fn one_time_tokens_concurrent_insert(store: Arc<dyn Store>) {
    const RACERS: usize = 20;
    let u = new_user(&store).await;
    let marker = one_time(OneTimeKind::MfaUsedCode, Some(&u.id), T0);
    let mut tasks = Vec::new();
    for _ in 0..RACERS {
        let store = Arc::clone(&store);
        let marker = marker.clone();
        tasks.push(tokio::spawn(async move {
            store.create_one_time_token(&marker).await
        }));
    }
    let mut winners = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(()) => winners += 1,
            other => assert_conflict(other, ConflictField::TokenHash),
        }
    }
    assert_eq!(winners, 1);
    let mut later = marker.clone();
    later.created_at = marker.expires_at + 1;
    later.expires_at = marker.expires_at + HOUR;
    assert_conflict(
        store.create_one_time_token(&later).await,
        ConflictField::TokenHash,
    );
}

/// `swap_user_mfa`: a compare and swap of the opaque MFA state; of concurrent swaps from
/// one state exactly one wins.
pub async fn users_mfa_swap(store: Arc<dyn Store>) {
    const RACERS: usize = 20;
    let u = new_user(&store).await;
    assert_eq!(u.mfa, None);
    // From none to a state; a stale expectation changes nothing.
    assert!(
        store
            .swap_user_mfa(&u.id, None, Some(b"pending"), T0 + 1)
            .await
            .unwrap()
    );
    assert!(
        !store
            .swap_user_mfa(&u.id, None, Some(b"other"), T0 + 2)
            .await
            .unwrap()
    );
    let got = store.get_user(&u.id).await.unwrap().unwrap();
    assert_eq!(got.mfa.as_deref(), Some(&b"pending"[..]));
    assert_eq!(got.updated_at, T0 + 1);

    let mut tasks = Vec::new();
    for i in 0..RACERS {
        let store = Arc::clone(&store);
        let id = u.id.clone();
        tasks.push(tokio::spawn(async move {
            let new = format!("state-{i}");
            store
                .swap_user_mfa(&id, Some(b"pending"), Some(new.as_bytes()), T0 + 3)
                .await
                .unwrap()
        }));
    }
    let mut winners = 0;
    for task in tasks {
        if task.await.unwrap() {
            winners += 1;
        }
    }
    assert_eq!(winners, 1);
    let got = store.get_user(&u.id).await.unwrap().unwrap();
    let current = got.mfa.clone().unwrap();
    assert!(current.starts_with(b"state-"));

    // Back to none; unknown users are `NotFound`.
    assert!(
        store
            .swap_user_mfa(&u.id, Some(&current), None, T0 + 4)
            .await
            .unwrap()
    );
    assert_eq!(store.get_user(&u.id).await.unwrap().unwrap().mfa, None);
    assert_not_found(
        store
            .swap_user_mfa(&new_id(), None, Some(b"x"), T0 + 5)
            .await
            .map(|_| ()),
    );
}

/// OAuth identities: unique per (provider, subject) across users, listed per user oldest
/// first, unlinked only by their owner, and deleted with the user.
pub async fn oauth_identities_lifecycle(store: Arc<dyn Store>) {
    let now = T0;
    let alice = new_user(&store).await;
    let bob = new_user(&store).await;
    let provider = format!("idp-{}", tag());
    let identity = |user: &User, subject: &str, at: UnixMillis| OAuthIdentity {
        provider: provider.clone(),
        subject: subject.to_owned(),
        user_id: user.id.clone(),
        email: user.email.clone(),
        created_at: at,
    };
    let a1 = identity(&alice, "sub-1", now);
    let a2 = OAuthIdentity {
        provider: format!("other-{}", tag()),
        ..identity(&alice, "sub-1", now + 1)
    };
    store.create_oauth_identity(&a1).await.unwrap();
    // The same subject at another provider is another identity.
    store.create_oauth_identity(&a2).await.unwrap();
    assert_eq!(
        store
            .get_oauth_identity(&provider, "sub-1")
            .await
            .unwrap()
            .as_ref(),
        Some(&a1)
    );
    assert!(
        store
            .get_oauth_identity(&provider, "SUB-1")
            .await
            .unwrap()
            .is_none(),
        "subjects compare exactly"
    );
    assert!(
        store
            .get_oauth_identity(&provider, "sub-2")
            .await
            .unwrap()
            .is_none()
    );

    // (provider, subject) belongs to one user only, whoever asks.
    for taken in [identity(&bob, "sub-1", now), identity(&alice, "sub-1", now)] {
        match store.create_oauth_identity(&taken).await {
            Err(StoreError::Conflict {
                field: ConflictField::OAuthIdentity,
            }) => {}
            other => panic!("expected an identity conflict, got {other:?}"),
        }
    }
    let ghost = OAuthIdentity {
        user_id: new_id(),
        ..identity(&bob, "sub-ghost", now)
    };
    assert_not_found(store.create_oauth_identity(&ghost).await);

    let b1 = identity(&bob, "sub-b", now);
    store.create_oauth_identity(&b1).await.unwrap();
    assert_eq!(
        store.list_oauth_identities(&alice.id).await.unwrap(),
        vec![a1.clone(), a2.clone()]
    );
    assert_eq!(
        store.list_oauth_identities(&bob.id).await.unwrap(),
        vec![b1.clone()]
    );

    // Only the owner unlinks.
    assert_not_found(
        store
            .delete_oauth_identity(&bob.id, &provider, "sub-1")
            .await,
    );
    store
        .delete_oauth_identity(&alice.id, &provider, "sub-1")
        .await
        .unwrap();
    assert!(
        store
            .get_oauth_identity(&provider, "sub-1")
            .await
            .unwrap()
            .is_none()
    );
    assert_not_found(
        store
            .delete_oauth_identity(&alice.id, &provider, "sub-1")
            .await,
    );
    // Once free, the subject can be linked again, to anyone.
    store
        .create_oauth_identity(&identity(&bob, "sub-1", now + 2))
        .await
        .unwrap();

    // Deleting a user deletes its identities, and only its own.
    store.delete_user(&alice.id).await.unwrap();
    assert!(
        store
            .get_oauth_identity(&a2.provider, "sub-1")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .list_oauth_identities(&alice.id)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.list_oauth_identities(&bob.id).await.unwrap().len(), 2);
}

/// `purge_expired` removes what is dead at the horizon and keeps what still works.
pub async fn purge_expired(store: Arc<dyn Store>) {
    // Far in the future of every other function's data, so sharing a store is harmless:
    // whatever they left is expired by then anyway.
    let now = T0 + 1000 * DAY;
    let u = new_user(&store).await;
    let live = new_session(&u.id, now);
    let live_refresh = refresh(&live, now);
    store
        .create_session(&live, Some(&live_refresh))
        .await
        .unwrap();
    let mut dead = new_session(&u.id, now - 40 * DAY);
    dead.expires_at = now - 10 * DAY;
    store
        .create_session(&dead, Some(&refresh(&dead, now - 40 * DAY)))
        .await
        .unwrap();
    let revoked = new_session(&u.id, now - DAY);
    store.create_session(&revoked, None).await.unwrap();
    store
        .revoke_session(&revoked.id, None, now - HOUR)
        .await
        .unwrap();
    let fresh_token = one_time(OneTimeKind::MagicLink, Some(&u.id), now);
    let stale_token = one_time(OneTimeKind::MagicLink, Some(&u.id), now - 2 * HOUR);
    store.create_one_time_token(&fresh_token).await.unwrap();
    store.create_one_time_token(&stale_token).await.unwrap();

    let counts = store.purge_expired(now).await.unwrap();
    assert!(counts.sessions >= 2 && counts.refresh_tokens >= 1 && counts.one_time_tokens >= 1);
    assert!(store.get_session(&dead.id).await.unwrap().is_none());
    assert!(store.get_session(&revoked.id).await.unwrap().is_none());
    assert!(store.is_session_revoked(&revoked.id, now).await.unwrap());
    assert_eq!(
        store.get_session(&live.id).await.unwrap(),
        Some(live.clone())
    );
    let (_, retry) = rotated(
        store
            .rotate_refresh(
                &live_refresh.token_hash,
                &random_hash(),
                now + 1,
                GRACE,
                now + DAY,
            )
            .await
            .unwrap(),
    );
    assert!(!retry);
    assert!(
        store
            .get_one_time_token(&fresh_token.token_hash, OneTimeKind::MagicLink, now)
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        store.get_user(&u.id).await.unwrap().is_some(),
        "users are never purged"
    );
}
