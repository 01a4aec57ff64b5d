#![allow(clippy::unwrap_used)]

use serde_json::json;

use super::*;

const NOW: i64 = 1_800_000_000;

fn provider(kind: OAuthKind, token_auth: TokenAuth) -> OAuthProvider {
    OAuthProvider {
        name: "corp".into(),
        kind,
        client_id: "client one".into(),
        client_secret: "s3cret:&=".into(),
        issuer: Some("https://sso.example.com/".into()),
        token_auth,
        authorize_url: None,
        token_url: None,
        userinfo_url: None,
        api_url: None,
        scopes: vec![],
    }
}

fn claims(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(m) => m,
        _ => panic!("not an object"),
    }
}

fn good() -> Map<String, Value> {
    claims(json!({
        "iss": "https://sso.example.com",
        "aud": "client one",
        "sub": "u-1",
        "nonce": "n-1",
        "exp": NOW + 300,
        "iat": NOW - 5,
    }))
}

fn expect(nonce: Option<&str>) -> IdTokenExpectation<'_> {
    IdTokenExpectation {
        issuer: "https://sso.example.com",
        client_id: "client one",
        nonce,
        now_secs: NOW,
    }
}

#[test]
fn issuers_of_presets_and_configs() {
    let p = provider(OAuthKind::Oidc, TokenAuth::ClientSecretBasic);
    assert_eq!(issuer(&p).unwrap(), "https://sso.example.com");
    let mut g = provider(OAuthKind::Google, TokenAuth::ClientSecretBasic);
    g.issuer = None;
    assert_eq!(issuer(&g).unwrap(), "https://accounts.google.com");
    let mut l = provider(OAuthKind::Linkedin, TokenAuth::ClientSecretBasic);
    l.issuer = None;
    assert_eq!(issuer(&l).unwrap(), "https://www.linkedin.com/oauth");
    let mut h = provider(OAuthKind::Github, TokenAuth::ClientSecretBasic);
    h.issuer = None;
    assert_eq!(issuer(&h).unwrap(), "https://github.com");
}

#[test]
fn discovery_with_overrides_and_issuer_check() {
    let doc = json!({
        "issuer": "https://sso.example.com",
        "authorization_endpoint": "https://sso.example.com/auth",
        "token_endpoint": "https://sso.example.com/token",
        "userinfo_endpoint": "https://sso.example.com/me",
        "jwks_uri": "https://sso.example.com/jwks",
    })
    .to_string();
    let mut p = provider(OAuthKind::Oidc, TokenAuth::ClientSecretBasic);
    let e = endpoints_from_discovery(&p, "https://sso.example.com", doc.as_bytes()).unwrap();
    assert_eq!(e.token_endpoint, "https://sso.example.com/token");
    assert_eq!(
        e.userinfo_endpoint.as_deref(),
        Some("https://sso.example.com/me")
    );
    p.token_url = Some("https://other.example.com/token".into());
    p.authorize_url = Some("https://other.example.com/authorize".into());
    let e = endpoints_from_discovery(&p, "https://sso.example.com", doc.as_bytes()).unwrap();
    assert_eq!(e.token_endpoint, "https://other.example.com/token");
    assert_eq!(
        e.authorization_endpoint,
        "https://other.example.com/authorize"
    );
    // A document of another issuer (mix-up), or one lacking the JWKS, is refused.
    assert!(endpoints_from_discovery(&p, "https://evil.example.com", doc.as_bytes()).is_err());
    let no_jwks = json!({"issuer": "https://sso.example.com", "token_endpoint": "x",
        "authorization_endpoint": "y"})
    .to_string();
    assert!(endpoints_from_discovery(&p, "https://sso.example.com", no_jwks.as_bytes()).is_err());
    assert!(endpoints_from_discovery(&p, "https://sso.example.com", b"<html>").is_err());
}

#[test]
fn pkce_s256_matches_rfc_7636_appendix_b() {
    assert_eq!(
        pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
        "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    );
    let v = pkce_verifier();
    assert_eq!(v.len(), 43);
    assert_ne!(v, pkce_verifier());
}

#[test]
fn the_authorization_url_carries_everything() {
    let p = provider(OAuthKind::Oidc, TokenAuth::ClientSecretBasic);
    let e = Endpoints {
        issuer: "https://sso.example.com".into(),
        authorization_endpoint: "https://sso.example.com/auth?tenant=a".into(),
        token_endpoint: String::new(),
        userinfo_endpoint: None,
        jwks_uri: String::new(),
        emails_endpoint: None,
    };
    let url = authorization_url(
        &p,
        &e,
        &AuthorizationRequest {
            redirect_uri: "https://gw.example.com/auth/oauth/corp/callback",
            state: "st",
            nonce: Some("no"),
            code_challenge: "ch",
        },
    )
    .unwrap();
    let parsed = url::Url::parse(&url).unwrap();
    let q: HashMap<String, String> = parsed.query_pairs().into_owned().collect();
    assert_eq!(q["tenant"], "a");
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["client_id"], "client one");
    assert_eq!(
        q["redirect_uri"],
        "https://gw.example.com/auth/oauth/corp/callback"
    );
    assert_eq!(q["scope"], "openid email profile");
    assert_eq!(q["state"], "st");
    assert_eq!(q["nonce"], "no");
    assert_eq!(q["code_challenge"], "ch");
    assert_eq!(q["code_challenge_method"], "S256");
}

#[test]
fn configured_scopes_always_include_openid() {
    let mut p = provider(OAuthKind::Oidc, TokenAuth::ClientSecretBasic);
    p.scopes = vec!["email".into(), "groups".into()];
    assert_eq!(scopes(&p), "openid email groups");
    p.scopes = vec!["email".into(), "openid".into()];
    assert_eq!(scopes(&p), "email openid");
}

#[test]
fn token_requests_authenticate_per_config() {
    let p = provider(OAuthKind::Oidc, TokenAuth::ClientSecretBasic);
    let (headers, body) = token_request(&p, "c/1", "https://gw/cb", Some("ver"));
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    assert_eq!(form["grant_type"], "authorization_code");
    assert_eq!(form["code"], "c/1");
    assert_eq!(form["redirect_uri"], "https://gw/cb");
    assert_eq!(form["code_verifier"], "ver");
    assert!(!form.contains_key("client_secret"));
    let basic = headers[header::AUTHORIZATION].to_str().unwrap();
    let decoded = STANDARD
        .decode(basic.strip_prefix("Basic ").unwrap())
        .unwrap();
    // RFC 6749 2.3.1: each half form-encoded before base64.
    assert_eq!(decoded, b"client+one:s3cret%3A%26%3D");
    assert!(headers[header::AUTHORIZATION].is_sensitive());

    let p = provider(OAuthKind::Oidc, TokenAuth::ClientSecretPost);
    let (headers, body) = token_request(&p, "c", "https://gw/cb", None);
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    assert_eq!(form["client_id"], "client one");
    assert_eq!(form["client_secret"], "s3cret:&=");
    assert!(!form.contains_key("code_verifier"));
    assert!(!headers.contains_key(header::AUTHORIZATION));
}

#[test]
fn token_answers_and_refusals() {
    let ok = token_response(
        http::StatusCode::OK,
        br#"{"id_token":"a.b.c","access_token":"at","token_type":"Bearer"}"#,
    )
    .unwrap();
    assert_eq!(ok.id_token.as_deref(), Some("a.b.c"));
    let refused = token_response(
        http::StatusCode::BAD_REQUEST,
        br#"{"error":"invalid_grant","error_description":"grant request is invalid"}"#,
    );
    assert!(matches!(refused, Err(OAuthError::CodeRejected(e)) if e == "invalid_grant"));
    assert!(matches!(
        token_response(http::StatusCode::BAD_GATEWAY, b"oops"),
        Err(OAuthError::Unreachable(_))
    ));
    assert!(matches!(
        token_response(http::StatusCode::OK, b"<html>"),
        Err(OAuthError::BadResponse(_))
    ));
}

#[test]
fn a_good_id_token_passes() {
    check_id_token_claims(&good(), &expect(Some("n-1"))).unwrap();
    // Without a nonce to compare (API flow), the nonce claim is not looked at.
    check_id_token_claims(&good(), &expect(None)).unwrap();
}

#[test]
fn id_token_claims_table() {
    type Edit = fn(&mut Map<String, Value>);
    let cases: &[(&str, Edit, IdTokenError)] = &[
        (
            "other issuer",
            |c| {
                c.insert("iss".into(), json!("https://evil.example.com"));
            },
            IdTokenError::WrongIssuer,
        ),
        (
            "no issuer",
            |c| {
                c.remove("iss");
            },
            IdTokenError::WrongIssuer,
        ),
        (
            "other audience",
            |c| {
                c.insert("aud".into(), json!("someone-else"));
            },
            IdTokenError::WrongAudience,
        ),
        (
            "several audiences without azp",
            |c| {
                c.insert("aud".into(), json!(["client one", "api"]));
            },
            IdTokenError::WrongAuthorizedParty,
        ),
        (
            "azp of another client",
            |c| {
                c.insert("azp".into(), json!("someone-else"));
            },
            IdTokenError::WrongAuthorizedParty,
        ),
        (
            "wrong nonce",
            |c| {
                c.insert("nonce".into(), json!("n-2"));
            },
            IdTokenError::WrongNonce,
        ),
        (
            "no nonce",
            |c| {
                c.remove("nonce");
            },
            IdTokenError::WrongNonce,
        ),
        (
            "expired",
            |c| {
                c.insert("exp".into(), json!(NOW - 61));
            },
            IdTokenError::Expired,
        ),
        (
            "exp as a string",
            |c| {
                c.insert("exp".into(), json!((NOW + 300).to_string()));
            },
            IdTokenError::InvalidClaim("exp"),
        ),
        (
            "no iat",
            |c| {
                c.remove("iat");
            },
            IdTokenError::InvalidClaim("iat"),
        ),
        (
            "issued in the future",
            |c| {
                c.insert("iat".into(), json!(NOW + 120));
            },
            IdTokenError::BadIssueTime,
        ),
        (
            "issued long ago",
            |c| {
                c.insert("iat".into(), json!(NOW - 3600));
            },
            IdTokenError::BadIssueTime,
        ),
        (
            "empty sub",
            |c| {
                c.insert("sub".into(), json!(""));
            },
            IdTokenError::InvalidClaim("sub"),
        ),
    ];
    for (name, edit, want) in cases {
        let mut c = good();
        edit(&mut c);
        assert_eq!(
            check_id_token_claims(&c, &expect(Some("n-1"))).as_ref(),
            Err(want),
            "{name}"
        );
    }
    // Several audiences with our azp pass; expiry within the leeway passes.
    let mut c = good();
    c.insert("aud".into(), json!(["client one", "api"]));
    c.insert("azp".into(), json!("client one"));
    c.insert("exp".into(), json!(NOW - 30));
    check_id_token_claims(&c, &expect(Some("n-1"))).unwrap();
}

#[test]
fn identities_take_email_and_verification_from_one_source() {
    let mut c = good();
    c.insert("email".into(), json!("Ada@Example.com"));
    c.insert("email_verified".into(), json!("true"));
    c.insert("given_name".into(), json!("Ada"));
    c.insert("family_name".into(), json!("Lovelace"));
    let id = identity("corp", &c, None).unwrap();
    assert_eq!(id.subject, "u-1");
    assert_eq!(id.email.as_deref(), Some("Ada@Example.com"));
    assert!(id.email_verified);
    assert_eq!(id.name.as_deref(), Some("Ada Lovelace"));

    // No email in the ID token: userinfo's email and flag; an unverified flag stays false.
    let info =
        claims(json!({"sub": "u-1", "email": "a@x.test", "email_verified": false, "name": "A"}));
    let id = identity("corp", &good(), Some(&info)).unwrap();
    assert_eq!(id.email.as_deref(), Some("a@x.test"));
    assert!(!id.email_verified);
    assert_eq!(id.name.as_deref(), Some("A"));

    // A verified flag without an email verifies nothing.
    let mut c = good();
    c.insert("email_verified".into(), json!(true));
    let id = identity("corp", &c, None).unwrap();
    assert_eq!(id.email, None);
    assert!(!id.email_verified);
}

#[test]
fn github_endpoints_scopes_and_token_requests() {
    let mut p = provider(OAuthKind::Github, TokenAuth::ClientSecretBasic);
    p.issuer = None;
    let e = github_endpoints(&p);
    assert_eq!(
        e.authorization_endpoint,
        "https://github.com/login/oauth/authorize"
    );
    assert_eq!(
        e.token_endpoint,
        "https://github.com/login/oauth/access_token"
    );
    assert_eq!(
        e.userinfo_endpoint.as_deref(),
        Some("https://api.github.com/user")
    );
    assert_eq!(
        e.emails_endpoint.as_deref(),
        Some("https://api.github.com/user/emails")
    );
    p.api_url = Some("http://127.0.0.1:9/api/".into());
    p.token_url = Some("http://127.0.0.1:9/token".into());
    let e = github_endpoints(&p);
    assert_eq!(
        e.emails_endpoint.as_deref(),
        Some("http://127.0.0.1:9/api/user/emails")
    );
    assert_eq!(e.token_endpoint, "http://127.0.0.1:9/token");
    assert_eq!(scopes(&p), "read:user user:email");
    p.scopes = vec!["user:email".into()];
    assert_eq!(scopes(&p), "user:email", "no openid for GitHub");
    // GitHub gets its credentials in the form, whatever token_auth says.
    let (headers, body) = token_request(&p, "c", "https://gw/cb", Some("v"));
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    assert_eq!(form["client_secret"], "s3cret:&=");
    assert!(!headers.contains_key(header::AUTHORIZATION));
    // No nonce in GitHub's authorization URL.
    let url = authorization_url(
        &p,
        &e,
        &AuthorizationRequest {
            redirect_uri: "https://gw/cb",
            state: "st",
            nonce: None,
            code_challenge: "ch",
        },
    )
    .unwrap();
    assert!(
        !url.contains("nonce") && url.contains("code_challenge=ch"),
        "{url}"
    );
}

#[test]
fn github_refusals_come_with_status_200() {
    let refused = token_response(
        http::StatusCode::OK,
        br#"{"error":"bad_verification_code","error_description":"The code passed is incorrect or expired."}"#,
    );
    assert!(matches!(refused, Err(OAuthError::CodeRejected(e)) if e == "bad_verification_code"));
}

#[test]
fn github_identities() {
    let user =
        claims(json!({"id": 583231, "login": "octocat", "name": null, "email": "public@x.test"}));
    let emails = [
        json!({"email": "old@x.test", "primary": false, "verified": true}),
        json!({"email": "main@x.test", "primary": true, "verified": true}),
    ];
    let id = github_identity("github", &user, Some(&emails)).unwrap();
    assert_eq!(id.subject, "583231");
    assert_eq!(id.email.as_deref(), Some("main@x.test"));
    assert!(id.email_verified);
    assert_eq!(id.name.as_deref(), Some("octocat"));
    // An unverified primary: another verified address wins.
    let emails = [
        json!({"email": "main@x.test", "primary": true, "verified": false}),
        json!({"email": "other@x.test", "primary": false, "verified": true}),
    ];
    let id = github_identity("github", &user, Some(&emails)).unwrap();
    assert_eq!(id.email.as_deref(), Some("other@x.test"));
    // Nothing verified (or no emails scope): the public email, unverified.
    let emails = [json!({"email": "main@x.test", "primary": true, "verified": false})];
    for listed in [Some(&emails[..]), None] {
        let id = github_identity("github", &user, listed).unwrap();
        assert_eq!(id.email.as_deref(), Some("public@x.test"));
        assert!(!id.email_verified);
    }
    assert!(github_identity("github", &claims(json!({"login": "x"})), None).is_err());
}

#[test]
fn linkedin_gets_its_credentials_in_the_form() {
    let mut p = provider(OAuthKind::Linkedin, TokenAuth::ClientSecretBasic);
    p.issuer = None;
    let (headers, body) = token_request(&p, "c", "https://gw/cb", Some("v"));
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    assert_eq!(form["client_id"], "client one");
    assert!(!headers.contains_key(header::AUTHORIZATION));
    assert_eq!(scopes(&p), "openid email profile");
}
