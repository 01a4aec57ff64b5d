//! User management by administrators through the real binary (SPEC section 5,
//! `/auth/admin/users[/{id}]`): who may call it, listing with cursor pagination and filters,
//! reading, role changes and disabling that reach the proxy path at once, deleting with
//! everything the user owns, and the last admin kept.

use serde_json::{Value, json};

use crate::support::{Answer, Echo, Gateway, empty, send, send_json};

const PASSWORD: &str = "correct-horse-battery";

fn gateway(echo: &Echo) -> Gateway {
    Gateway::start(&format!(
        r#"
tokens: {{ issuer: http://gatehouse.test, audience: tests }}
routes:
  - {{ name: req, match: {{ path_prefix: /req }}, upstream: {{ targets: ["{up}"] }}, auth: required }}
"#,
        up = echo.url()
    ))
}

fn code(a: &Answer) -> String {
    a.json()["code"].as_str().unwrap_or("").to_owned()
}

fn assert_problem(a: &Answer, status: u16, code_: &str) {
    assert_eq!(
        (a.status, code(a).as_str()),
        (status, code_),
        "{}",
        String::from_utf8_lossy(&a.body)
    );
    assert_eq!(a.headers["content-type"], "application/problem+json");
}

/// An admin made with the CLI, as an operator bootstraps one; returns its access token.
pub(crate) async fn admin_token(gw: &Gateway, email: &str) -> String {
    let (status, out, err) = gw.cli(
        &[
            "users", "create", "--email", email, "--name", "Root", "--roles", "admin",
        ],
        "",
    );
    assert_eq!(status, 0, "{err}");
    let password = serde_json::from_str::<Value>(out.trim()).unwrap()["password"]
        .as_str()
        .unwrap()
        .to_owned();
    login(gw, email, &password).await
}

async fn login(gw: &Gateway, email: &str, password: &str) -> String {
    let a = send_json(
        "POST",
        &gw.url("/auth/login"),
        None,
        &json!({"email": email, "password": password}),
    )
    .await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    a.json()["access_token"].as_str().unwrap().to_owned()
}

async fn register(gw: &Gateway, email: &str) -> Value {
    let a = send_json(
        "POST",
        &gw.url("/auth/register"),
        None,
        &json!({"email": email, "password": PASSWORD}),
    )
    .await;
    assert_eq!(a.status, 201, "{:?}", a.body);
    a.json()
}

async fn admin(gw: &Gateway, method: &str, path: &str, token: &str, body: Value) -> Answer {
    send_json(method, &gw.url(path), Some(token), &body).await
}

async fn with_token(gw: &Gateway, token: &str) -> Answer {
    let auth = format!("Bearer {token}");
    send(
        "GET",
        &gw.url("/req/x"),
        &[("authorization", &auth)],
        empty(),
    )
    .await
}

async fn with_key(gw: &Gateway, key: &str) -> Answer {
    send("GET", &gw.url("/req/x"), &[("x-api-key", key)], empty()).await
}

fn emails(page: &Value) -> Vec<String> {
    page["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["email"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
pub(crate) async fn list_read_and_validate() {
    let echo = Echo::start();
    let gw = gateway(&echo);
    let root = admin_token(&gw, "root@example.com").await;
    let plain = register(&gw, "plain@example.com").await;
    let plain_token = plain["access_token"].as_str().unwrap();

    // Admins only; without a credential 401.
    let a = admin(&gw, "GET", "/auth/admin/users", plain_token, Value::Null).await;
    assert_problem(&a, 403, "forbidden");
    let path = format!(
        "/auth/admin/users/{}",
        plain["user"]["id"].as_str().unwrap()
    );
    for method in ["GET", "PATCH", "DELETE"] {
        let body = if method == "PATCH" {
            json!({"roles": ["admin"]})
        } else {
            Value::Null
        };
        let a = admin(&gw, method, &path, plain_token, body).await;
        assert_problem(&a, 403, "forbidden");
    }
    let a = send_json("GET", &gw.url("/auth/admin/users"), None, &Value::Null).await;
    assert_problem(&a, 401, "missing_credentials");

    // 24 more users through partner registration (no password to hash): every fifth with
    // the `ops` role, the odd ones at another domain.
    for i in 0..24 {
        let domain = if i % 2 == 1 {
            "corp.test"
        } else {
            "example.com"
        };
        let roles = if i % 5 == 0 {
            json!(["user", "ops"])
        } else {
            json!([])
        };
        let a = admin(
            &gw,
            "POST",
            "/auth/admin/users",
            &root,
            json!({"email": format!("u{i:02}@{domain}"), "roles": roles, "external_id": format!("ext-{i}")}),
        )
        .await;
        assert_eq!(a.status, 201, "{:?}", a.body);
    }

    // 26 users in pages of 10, oldest first, each user once; the last page has no cursor.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/auth/admin/users?limit=10&cursor={c}"),
            None => "/auth/admin/users?limit=10".to_owned(),
        };
        let a = admin(&gw, "GET", &path, &root, Value::Null).await;
        assert_eq!(a.status, 200, "{:?}", a.body);
        assert_eq!(a.headers["cache-control"], "no-store");
        let page = a.json();
        pages += 1;
        let n = page["users"].as_array().unwrap().len();
        seen.extend(emails(&page));
        match page["next_cursor"].as_str() {
            Some(c) => {
                assert_eq!(n, 10);
                cursor = Some(c.to_owned());
            }
            None => {
                assert!(page["next_cursor"].is_null(), "{page}");
                assert_eq!(n, 6);
                break;
            }
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 26);
    assert_eq!(seen[0], "root@example.com");
    assert_eq!(seen[1], "plain@example.com");
    assert_eq!(seen[2], "u00@example.com");
    assert_eq!(seen[25], "u23@corp.test");
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 26);

    // Filters, alone and together, with pagination.
    let ops = admin(&gw, "GET", "/auth/admin/users?role=ops", &root, Value::Null)
        .await
        .json();
    assert_eq!(
        emails(&ops),
        [
            "u00@example.com",
            "u05@corp.test",
            "u10@example.com",
            "u15@corp.test",
            "u20@example.com"
        ]
    );
    let corp = admin(
        &gw,
        "GET",
        "/auth/admin/users?email=CORP.test&limit=5",
        &root,
        Value::Null,
    )
    .await
    .json();
    assert_eq!(emails(&corp).len(), 5);
    assert!(corp["next_cursor"].is_string());
    let both = admin(
        &gw,
        "GET",
        "/auth/admin/users?email=corp.test&role=ops",
        &root,
        Value::Null,
    )
    .await
    .json();
    assert_eq!(emails(&both), ["u05@corp.test", "u15@corp.test"]);
    let admins = admin(
        &gw,
        "GET",
        "/auth/admin/users?role=admin",
        &root,
        Value::Null,
    )
    .await
    .json();
    assert_eq!(emails(&admins), ["root@example.com"]);

    // The admin view: /auth/me's fields plus the account state.
    let first = &admins["users"][0];
    assert_eq!(first["disabled"], false);
    assert_eq!(first["roles"], json!(["admin"]));
    assert!(first["updated_at"].as_str().unwrap().ends_with('Z'));
    assert!(first["external_id"].is_null());
    assert!(first.get("password_hash").is_none() && first.get("password").is_none());
    let one = admin(
        &gw,
        "GET",
        "/auth/admin/users?email=u03@",
        &root,
        Value::Null,
    )
    .await
    .json();
    let id = one["users"][0]["id"].as_str().unwrap();
    let a = admin(
        &gw,
        "GET",
        &format!("/auth/admin/users/{id}"),
        &root,
        Value::Null,
    )
    .await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(a.json(), one["users"][0]);
    assert_eq!(a.json()["external_id"], "ext-3");

    // Wrong parameters and bodies.
    for query in [
        "limit=0",
        "limit=201",
        "limit=ten",
        "cursor=bogus",
        "role=a,b",
    ] {
        let a = admin(
            &gw,
            "GET",
            &format!("/auth/admin/users?{query}"),
            &root,
            Value::Null,
        )
        .await;
        assert_problem(&a, 400, "validation_failed");
    }
    let unknown = "/auth/admin/users/00000000-0000-4000-8000-000000000000";
    for method in ["GET", "DELETE"] {
        let a = admin(&gw, method, unknown, &root, Value::Null).await;
        assert_problem(&a, 404, "not_found");
    }
    let a = admin(&gw, "PATCH", unknown, &root, json!({"disabled": true})).await;
    assert_problem(&a, 404, "not_found");
    let path = format!("/auth/admin/users/{id}");
    let a = admin(&gw, "PATCH", &path, &root, json!({"roles": ["bad role"]})).await;
    assert_problem(&a, 400, "validation_failed");
    assert_eq!(a.json()["errors"][0]["field"], "roles");
    let a = admin(&gw, "PATCH", &path, &root, json!({"roles": []})).await;
    assert_problem(&a, 400, "validation_failed");
    let a = admin(&gw, "PATCH", &path, &root, json!({"role": ["admin"]})).await;
    assert_problem(&a, 400, "invalid_request");
    let a = admin(&gw, "PUT", &path, &root, Value::Null).await;
    assert_eq!(a.status, 405);

    // A name change, and a clear.
    let a = admin(&gw, "PATCH", &path, &root, json!({"name": "Third"})).await;
    assert_eq!((a.status, a.json()["name"].clone()), (200, json!("Third")));
    let a = admin(&gw, "PATCH", &path, &root, json!({"name": null})).await;
    assert!(a.json()["name"].is_null());
}

#[tokio::test]
pub(crate) async fn changes_reach_the_proxy_path_at_once() {
    let echo = Echo::start();
    let gw = gateway(&echo);
    let root = admin_token(&gw, "root@example.com").await;
    let bob = register(&gw, "bob@example.com").await;
    let bob_id = bob["user"]["id"].as_str().unwrap().to_owned();
    let token = bob["access_token"].as_str().unwrap().to_owned();
    let key = send_json(
        "POST",
        &gw.url("/auth/api-keys"),
        Some(&token),
        &json!({"name": "bob's"}),
    )
    .await
    .json()["key"]
        .as_str()
        .unwrap()
        .to_owned();
    // Both cached by the proxy path.
    for r in [with_token(&gw, &token).await, with_key(&gw, &key).await] {
        assert_eq!(r.status, 200);
        assert_eq!(r.seen("x-user-roles").as_deref(), Some("user"));
    }
    let path = format!("/auth/admin/users/{bob_id}");

    // New roles show in the identity headers of the very next request.
    let a = admin(
        &gw,
        "PATCH",
        &path,
        &root,
        json!({"roles": ["user", "auditor"]}),
    )
    .await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(a.json()["roles"], json!(["user", "auditor"]));
    for r in [with_token(&gw, &token).await, with_key(&gw, &key).await] {
        assert_eq!(r.status, 200);
        assert_eq!(r.seen("x-user-roles").as_deref(), Some("user,auditor"));
    }

    // Disabled: the token and the key are refused at once, and so is a new login.
    let a = admin(&gw, "PATCH", &path, &root, json!({"disabled": true})).await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(a.json()["disabled"], true);
    assert_problem(&with_token(&gw, &token).await, 401, "session_revoked");
    assert_problem(&with_key(&gw, &key).await, 401, "invalid_api_key");
    let a = send_json(
        "POST",
        &gw.url("/auth/login"),
        None,
        &json!({"email": "bob@example.com", "password": PASSWORD}),
    )
    .await;
    assert_problem(&a, 403, "account_disabled");
    let a = send_json(
        "POST",
        &gw.url("/auth/refresh"),
        None,
        &json!({"refresh_token": bob["refresh_token"]}),
    )
    .await;
    assert_problem(&a, 401, "invalid_token");

    // Enabled again: the old session and key stay revoked; a new login works.
    let a = admin(&gw, "PATCH", &path, &root, json!({"disabled": false})).await;
    assert_eq!(a.json()["disabled"], false);
    assert_problem(&with_token(&gw, &token).await, 401, "session_revoked");
    assert_problem(&with_key(&gw, &key).await, 401, "invalid_api_key");
    let fresh = login(&gw, "bob@example.com", PASSWORD).await;
    assert_eq!(with_token(&gw, &fresh).await.status, 200);
    let keys = send_json("GET", &gw.url("/auth/api-keys"), Some(&fresh), &Value::Null)
        .await
        .json();
    assert!(keys["api_keys"][0]["revoked_at"].is_string(), "{keys}");
    let key2 = send_json(
        "POST",
        &gw.url("/auth/api-keys"),
        Some(&fresh),
        &json!({"name": "second"}),
    )
    .await
    .json()["key"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(with_key(&gw, &key2).await.status, 200);

    // Deleted with everything it owns: refused at once, gone from the listing.
    let a = admin(&gw, "DELETE", &path, &root, Value::Null).await;
    assert_eq!(a.status, 204, "{:?}", a.body);
    assert_problem(&with_token(&gw, &fresh).await, 401, "session_revoked");
    assert_problem(&with_key(&gw, &key2).await, 401, "invalid_api_key");
    assert_problem(
        &admin(&gw, "GET", &path, &root, Value::Null).await,
        404,
        "not_found",
    );
    assert_problem(
        &admin(&gw, "DELETE", &path, &root, Value::Null).await,
        404,
        "not_found",
    );
    let all = admin(&gw, "GET", "/auth/admin/users", &root, Value::Null)
        .await
        .json();
    assert_eq!(emails(&all), ["root@example.com"]);
}

#[tokio::test]
pub(crate) async fn the_last_admin_is_kept() {
    let echo = Echo::start();
    let gw = gateway(&echo);
    let root = admin_token(&gw, "root@example.com").await;
    let root_id = send_json("GET", &gw.url("/auth/me"), Some(&root), &Value::Null)
        .await
        .json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let me = format!("/auth/admin/users/{root_id}");
    let a = admin(&gw, "PATCH", &me, &root, json!({"roles": ["user"]})).await;
    assert_problem(&a, 400, "validation_failed");
    assert_eq!(a.json()["errors"][0]["field"], "roles");
    let a = admin(&gw, "PATCH", &me, &root, json!({"disabled": true})).await;
    assert_problem(&a, 400, "validation_failed");
    assert_eq!(a.json()["errors"][0]["field"], "disabled");
    assert_problem(
        &admin(&gw, "DELETE", &me, &root, Value::Null).await,
        400,
        "validation_failed",
    );

    // With a second admin, the first may step down; then it is no admin any more.
    let carol = register(&gw, "carol@example.com").await;
    let carol_path = format!(
        "/auth/admin/users/{}",
        carol["user"]["id"].as_str().unwrap()
    );
    let a = admin(
        &gw,
        "PATCH",
        &carol_path,
        &root,
        json!({"roles": ["admin", "user"]}),
    )
    .await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    let a = admin(&gw, "PATCH", &me, &root, json!({"roles": ["user"]})).await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_problem(
        &admin(&gw, "GET", "/auth/admin/users", &root, Value::Null).await,
        403,
        "forbidden",
    );
    // Carol, now the only admin, cannot delete herself either.
    let carol_token = carol["access_token"].as_str().unwrap();
    assert_problem(
        &admin(&gw, "DELETE", &carol_path, carol_token, Value::Null).await,
        400,
        "validation_failed",
    );
}
