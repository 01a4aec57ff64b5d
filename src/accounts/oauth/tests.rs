#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use serde_json::json;

use super::*;
use crate::auth::signing::{self, KeyRing};
use crate::config::SigningAlg;
use crate::oauth::{IdTokenError, IdTokenExpectation, check_id_token_claims};
use crate::store::{SqliteStore, Store};

/// `oauth_sign_in` for an account without a second factor: its session.
async fn signed_in_oauth(
    acc: &Accounts,
    cfg: &Config,
    identity: ExternalIdentity,
    client: &ClientInfo,
    now: UnixMillis,
) -> Result<Issued, AccountError> {
    match acc
        .oauth_sign_in(cfg, identity, SignInRequest::default(), client, now)
        .await?
    {
        SignIn::Issued(issued) => Ok(*issued),
        SignIn::MfaRequired { .. } => panic!("no second factor was set up"),
    }
}

const NOW: UnixMillis = 1_800_000_000_000;
const ISS: &str = "https://sso.example.com";

fn config(registration: &str) -> Config {
    crate::config::parse(
        &format!(
            "accounts:\n  registration: {registration}\n  oauth:\n    corp: {{ kind: oidc, issuer: {ISS}, client_id: gh, client_secret: s }}\n"
        ),
        std::path::Path::new("test.yaml"),
        &|_| None,
    )
    .unwrap()
}

async fn accounts(cfg: &Config) -> Accounts {
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open_in_memory().unwrap());
    Accounts::start(store, cfg, NOW).await.unwrap()
}

fn client() -> ClientInfo {
    ClientInfo {
        ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        user_agent: None,
    }
}

fn identity(subject: &str, email: Option<&str>, verified: bool) -> ExternalIdentity {
    ExternalIdentity {
        provider: "corp".into(),
        subject: subject.into(),
        email: email.map(str::to_owned),
        email_verified: verified,
        name: Some("Ada".into()),
    }
}

/// An IdP key of our own: ID tokens signed with it, its JWKS.
fn idp() -> KeyRing {
    let key = signing::generate(SigningAlg::Es256, NOW).unwrap();
    KeyRing::new(&[key], NOW).unwrap()
}

fn id_claims(nonce: &str, exp_secs: i64) -> Value {
    json!({
        "iss": ISS, "aud": "gh", "sub": "u-1", "nonce": nonce,
        "iat": NOW / 1000 - 5, "exp": exp_secs,
    })
}

fn expect(nonce: &str) -> IdTokenExpectation<'_> {
    IdTokenExpectation {
        issuer: ISS,
        client_id: "gh",
        nonce: Some(nonce),
        now_secs: NOW / 1000,
    }
}

#[test]
fn signed_id_tokens_wrong_nonce_and_expiry() {
    let ring = idp();
    let jwks = ring.jwks().clone();
    let good = ring
        .sign("JWT", &id_claims("n-1", NOW / 1000 + 300))
        .unwrap();
    let claims = JwksCheck.verify(&jwks, &good, NOW).unwrap();
    check_id_token_claims(&claims, &expect("n-1")).unwrap();
    assert_eq!(
        check_id_token_claims(&claims, &expect("n-2")),
        Err(IdTokenError::WrongNonce)
    );
    let expired = ring
        .sign("JWT", &id_claims("n-1", NOW / 1000 - 120))
        .unwrap();
    let claims = JwksCheck.verify(&jwks, &expired, NOW).unwrap();
    assert_eq!(
        check_id_token_claims(&claims, &expect("n-1")),
        Err(IdTokenError::Expired)
    );
    // Another IdP's key: an unknown kid (refetch), then a refusal.
    let other = idp();
    let forged = other
        .sign("JWT", &id_claims("n-1", NOW / 1000 + 300))
        .unwrap();
    assert_eq!(
        JwksCheck.verify(&jwks, &forged, NOW),
        Err(SignatureError::UnknownKey)
    );
    // A tampered payload.
    let mut parts: Vec<&str> = good.split('.').collect();
    let evil = base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        id_claims("n-1", NOW / 1000 + 9999).to_string(),
    );
    parts[1] = &evil;
    assert!(matches!(
        JwksCheck.verify(&jwks, &parts.join("."), NOW),
        Err(SignatureError::Invalid(_))
    ));
}

#[tokio::test]
async fn first_sign_in_creates_then_finds_the_user() {
    let cfg = config("open");
    let acc = accounts(&cfg).await;
    let first = signed_in_oauth(
        &acc,
        &cfg,
        identity("s1", Some("Ada@Example.com"), true),
        &client(),
        NOW,
    )
    .await
    .unwrap();
    assert_eq!(first.session.amr, ["oauth"]);
    assert_eq!(first.user.email.as_deref(), Some("ada@example.com"));
    assert!(first.user.email_verified);
    assert!(first.user.password_hash.is_none());
    let again = signed_in_oauth(
        &acc,
        &cfg,
        identity("s1", Some("new@example.com"), true),
        &client(),
        NOW,
    )
    .await
    .unwrap();
    assert_eq!(again.user.id, first.user.id);
    let linked = acc
        .store
        .list_oauth_identities(&first.user.id)
        .await
        .unwrap();
    assert_eq!(linked.len(), 1);
}

#[tokio::test]
async fn an_existing_email_links_only_when_verified() {
    let cfg = config("open");
    let acc = accounts(&cfg).await;
    let owner = acc
        .create_user(
            &cfg,
            super::super::NewUser {
                email: Some("ada@example.com".into()),
                password: "a long enough password".into(),
                ..Default::default()
            },
            NOW,
        )
        .await
        .unwrap();
    let refused = signed_in_oauth(
        &acc,
        &cfg,
        identity("s1", Some("ada@example.com"), false),
        &client(),
        NOW,
    )
    .await;
    assert!(matches!(
        refused,
        Err(AccountError::Taken(ConflictField::Email))
    ));
    assert!(
        acc.store
            .list_oauth_identities(&owner.id)
            .await
            .unwrap()
            .is_empty()
    );
    let linked = signed_in_oauth(
        &acc,
        &cfg,
        identity("s1", Some("ADA@example.com"), true),
        &client(),
        NOW,
    )
    .await
    .unwrap();
    assert_eq!(linked.user.id, owner.id);
    // The provider proved the address.
    assert!(linked.user.email_verified);
}

#[tokio::test]
async fn closed_registration_signs_in_known_identities_only() {
    for mode in ["invite_only", "admin_only"] {
        let cfg = config(mode);
        let acc = accounts(&cfg).await;
        let refused = signed_in_oauth(
            &acc,
            &cfg,
            identity("s1", Some("x@example.com"), true),
            &client(),
            NOW,
        )
        .await;
        assert!(
            matches!(refused, Err(AccountError::RegistrationClosed)),
            "{mode}"
        );
    }
}

#[tokio::test]
async fn disabled_users_cannot_sign_in() {
    let cfg = config("open");
    let acc = accounts(&cfg).await;
    let first = signed_in_oauth(&acc, &cfg, identity("s1", None, false), &client(), NOW)
        .await
        .unwrap();
    assert_eq!(first.user.email, None);
    acc.store
        .update_user(
            &first.user.id,
            &UserPatch {
                disabled: Some(true),
                ..UserPatch::default()
            },
            NOW,
        )
        .await
        .unwrap();
    let refused = signed_in_oauth(&acc, &cfg, identity("s1", None, false), &client(), NOW).await;
    assert!(matches!(refused, Err(AccountError::Disabled)));
}

#[tokio::test]
async fn callbacks_need_this_browsers_state_once() {
    let cfg = config("open");
    let acc = accounts(&cfg).await;
    // A flow record as `oauth_begin` makes it (without asking the provider for discovery).
    let state = new_secret();
    acc.store
        .create_one_time_token(&OneTimeToken {
            token_hash: secret_hash(&state),
            kind: OneTimeKind::OAuthState,
            user_id: None,
            email: None,
            payload: json!({"provider": "corp", "code_verifier": "v", "nonce": "n"}),
            created_at: NOW,
            expires_at: NOW + 600_000,
        })
        .await
        .unwrap();
    let params = |state: &str| CallbackParams {
        code: Some("c".into()),
        state: Some(state.into()),
        error: None,
        iss: None,
    };
    let denied = acc
        .oauth_callback(
            &cfg,
            "corp",
            CallbackParams {
                error: Some("access_denied".into()),
                ..CallbackParams::default()
            },
            None,
            &client(),
            NOW,
        )
        .await;
    assert!(matches!(denied, Err(AccountError::OAuthDenied(e)) if e == "access_denied"));
    let other_browser = acc
        .oauth_callback(
            &cfg,
            "corp",
            params(&state),
            Some("another"),
            &client(),
            NOW,
        )
        .await;
    assert!(matches!(other_browser, Err(AccountError::OAuthState(_))));
    let no_cookie = acc
        .oauth_callback(&cfg, "corp", params(&state), None, &client(), NOW)
        .await;
    assert!(matches!(no_cookie, Err(AccountError::OAuthState(_))));
    let unknown = acc
        .oauth_callback(
            &cfg,
            "corp",
            params("forged"),
            Some("forged"),
            &client(),
            NOW,
        )
        .await;
    assert!(matches!(unknown, Err(AccountError::OAuthState(_))));
    let mixed_up = acc
        .oauth_callback(
            &cfg,
            "corp",
            CallbackParams {
                iss: Some("https://evil.example.com".into()),
                ..params(&state)
            },
            Some(&state),
            &client(),
            NOW,
        )
        .await;
    assert!(matches!(mixed_up, Err(AccountError::OAuthState(_))));
    // The mix-up attempt consumed the state: it is single use, whatever happened after.
    let replay = acc
        .oauth_callback(&cfg, "corp", params(&state), Some(&state), &client(), NOW)
        .await;
    assert!(matches!(replay, Err(AccountError::OAuthState(_))));
    let unknown_provider = acc
        .oauth_callback(&cfg, "nope", params(&state), Some(&state), &client(), NOW)
        .await;
    assert!(matches!(unknown_provider, Err(AccountError::NotFound)));
}

#[test]
fn redirect_uris_follow_issuer_and_prefix() {
    let cfg = config("open");
    assert_eq!(
        redirect_uri(&cfg, "corp"),
        format!(
            "{}{}/oauth/corp/callback",
            cfg.tokens.issuer.trim_end_matches('/'),
            cfg.accounts.prefix
        )
    );
    assert!(same_secret("abc", "abc"));
    assert!(!same_secret("abc", "abd"));
    assert!(!same_secret("abc", "abcd"));
}

#[tokio::test]
async fn unlinking_keeps_a_way_to_sign_in() {
    let cfg = config("open");
    let acc = accounts(&cfg).await;
    // Created by the provider: no password, one identity.
    let issued = signed_in_oauth(
        &acc,
        &cfg,
        identity("s1", Some("p@example.com"), true),
        &client(),
        NOW,
    )
    .await
    .unwrap();
    let user = issued.user;
    assert!(matches!(
        acc.oauth_unlink(&user, "corp", None).await,
        Err(AccountError::LastSignInMethod)
    ));
    assert!(matches!(
        acc.oauth_unlink(&user, "other", None).await,
        Err(AccountError::NotFound)
    ));
    // With a second identity, one may go (by subject), not the last.
    acc.link(&identity("s2", None, false), &user, NOW)
        .await
        .unwrap();
    // Linking the same identity to the same user again is fine; to another user, 409.
    acc.link(&identity("s2", None, false), &user, NOW)
        .await
        .unwrap();
    let other = signed_in_oauth(&acc, &cfg, identity("s3", None, false), &client(), NOW)
        .await
        .unwrap()
        .user;
    assert!(matches!(
        acc.link(&identity("s2", None, false), &other, NOW).await,
        Err(AccountError::Taken(ConflictField::OAuthIdentity))
    ));
    acc.oauth_unlink(&user, "corp", Some("s1")).await.unwrap();
    assert_eq!(acc.oauth_identities(&user.id).await.unwrap().len(), 1);
    assert!(matches!(
        acc.oauth_unlink(&user, "corp", Some("s2")).await,
        Err(AccountError::LastSignInMethod)
    ));
}
