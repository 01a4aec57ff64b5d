//! OAuth/OIDC sign-in against a real OpenID Provider: panva's `oidc-provider` (npm, pinned
//! in tests/fixtures/oidc), started per test on loopback. Its development interactions give
//! login and consent forms, which the tests drive over HTTP like a browser: follow
//! redirects, keep cookies, post the forms.
//!
//! The gateway's `tokens.issuer` is `http://gatehouse.test`, so the redirect URI registered
//! at the provider is `http://gatehouse.test/auth/oauth/{provider}/callback`; the "browser"
//! sends that final redirect to the gateway's real address.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{Answer, Echo, Gateway, empty, full, send, send_json};

const SITE: &str = "http://gatehouse.test";
const APP_CALLBACK: &str = "http://app.test/cb";

/// A running `oidc-provider`.
struct Idp {
    child: Child,
    issuer: String,
}

impl Idp {
    fn start() -> Idp {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/oidc");
        assert!(
            dir.join("node_modules/oidc-provider").exists(),
            "oidc-provider is not installed: run `npm ci --prefix tests/fixtures/oidc` (.ci/run does)"
        );
        let config = json!({
            "clients": [
                {
                    "client_id": "gatehouse",
                    "client_secret": "corp-secret",
                    "redirect_uris": [format!("{SITE}/auth/oauth/corp/callback"), APP_CALLBACK],
                },
                {
                    "client_id": "gatehouse-post",
                    "client_secret": "post-secret",
                    "redirect_uris": [format!("{SITE}/auth/oauth/corppost/callback")],
                    "token_endpoint_auth_method": "client_secret_post",
                },
            ],
            "accounts": {
                "alice": {"email": "alice@example.com", "email_verified": true, "name": "Alice Example"},
                "bob": {"email": "bob@example.com", "email_verified": false, "name": "Bob"},
                "carol": {"email": "carol@example.com", "email_verified": true},
            },
        });
        let mut child = Command::new("node")
            .arg(dir.join("provider.mjs"))
            .arg(config.to_string())
            .current_dir(&dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn node (is Node.js installed?)");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            for _ in lines {}
        });
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("oidc-provider did not start within 20 s");
        let ready: Value = serde_json::from_str(&line).unwrap();
        Idp {
            issuer: ready["issuer"].as_str().unwrap().to_owned(),
            child,
        }
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn gateway(idp: &Idp, echo: &Echo, registration: &str) -> Gateway {
    let iss = &idp.issuer;
    let up = echo.url();
    Gateway::start(&format!(
        r#"
tokens: {{ issuer: {SITE}, audience: tests }}
cookies: {{ secure: false }}
accounts:
  registration: {registration}
  allowed_origins: [https://app.example.com]
  oauth:
    corp: {{ kind: oidc, issuer: "{iss}", client_id: gatehouse, client_secret: corp-secret }}
    corppost: {{ kind: oidc, issuer: "{iss}", client_id: gatehouse-post, client_secret: post-secret, token_auth: client_secret_post }}
routes:
  - {{ name: app, match: {{ path_prefix: /app }}, upstream: {{ targets: ["{up}"] }}, auth: required }}
"#
    ))
}

/// Cookies by (name, path), sent when the path matches: enough of a browser for one host.
#[derive(Default, Clone)]
struct Jar(Vec<(String, String, String)>);

impl Jar {
    fn take(&mut self, answer: &Answer) {
        for v in answer.headers.get_all("set-cookie") {
            let text = v.to_str().unwrap();
            let mut parts = text.split(';');
            let (name, value) = parts.next().unwrap().split_once('=').unwrap();
            let mut path = "/".to_owned();
            let mut gone = value.is_empty();
            for attr in parts {
                let attr = attr.trim();
                let lower = attr.to_ascii_lowercase();
                if let Some(p) = lower.strip_prefix("path=") {
                    path = attr[attr.len() - p.len()..].to_owned();
                }
                if lower == "max-age=0" || lower.contains("1970") {
                    gone = true;
                }
            }
            self.0.retain(|(n, p, _)| !(n == name.trim() && *p == path));
            if !gone {
                self.0
                    .push((name.trim().to_owned(), path, value.trim().to_owned()));
            }
        }
    }

    fn header(&self, url: &str) -> String {
        let path = url
            .split("://")
            .nth(1)
            .and_then(|rest| rest.find('/').map(|i| &rest[i..]))
            .unwrap_or("/");
        self.0
            .iter()
            .filter(|(_, p, _)| path.starts_with(p.as_str()))
            .map(|(n, _, v)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn get(&self, name: &str) -> Option<String> {
        self.0
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, _, v)| v.clone())
    }

    async fn request(&mut self, method: &str, url: &str, form: Option<&str>) -> Answer {
        let form_type = [("content-type", "application/x-www-form-urlencoded")];
        let extra: &[(&str, &str)] = if form.is_some() { &form_type } else { &[] };
        self.request_with(method, url, extra, form).await
    }

    async fn request_with(
        &mut self,
        method: &str,
        url: &str,
        extra: &[(&str, &str)],
        body: Option<&str>,
    ) -> Answer {
        let cookie = self.header(url);
        let mut headers = vec![("cookie", cookie.as_str())];
        headers.extend_from_slice(extra);
        let body = body.map_or_else(empty, |f| full(f.to_owned()));
        let answer = send(method, url, &headers, body).await;
        self.take(&answer);
        answer
    }
}

fn location(a: &Answer) -> String {
    a.headers
        .get("location")
        .unwrap_or_else(|| panic!("no Location ({}): {:?}", a.status, a.body))
        .to_str()
        .unwrap()
        .to_owned()
}

fn absolute(base: &str, location: &str) -> String {
    url::Url::parse(base)
        .unwrap()
        .join(location)
        .unwrap()
        .to_string()
}

/// Logs in at the provider as `login`, starting at `url` (an authorization request), and
/// answers the consent form; returns the redirect to the client (code, state, iss).
async fn at_provider(jar: &mut Jar, mut url: String, login: &str) -> String {
    let origin = url::Url::parse(&url)
        .unwrap()
        .origin()
        .ascii_serialization();
    for _ in 0..12 {
        let a = jar.request("GET", &url, None).await;
        if a.status == 200 {
            let html = String::from_utf8_lossy(&a.body).into_owned();
            let action = html
                .split("action=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or_else(|| panic!("no form: {html}"));
            let form = if html.contains("name=\"prompt\" value=\"login\"") {
                format!("prompt=login&login={login}&password=any")
            } else {
                "prompt=consent".to_owned()
            };
            let posted = jar
                .request("POST", &absolute(&url, action), Some(&form))
                .await;
            assert!(
                (300..400).contains(&posted.status),
                "{}: {:?}",
                posted.status,
                posted.body
            );
            url = absolute(&url, &location(&posted));
        } else {
            assert!((300..400).contains(&a.status), "{}: {:?}", a.status, a.body);
            let next = absolute(&url, &location(&a));
            if !next.starts_with(&origin) {
                return next;
            }
            url = next;
        }
    }
    panic!("the provider never redirected back");
}

/// A browser sign-in through the gateway: authorize, provider login and consent, callback.
/// Returns the callback's answer and the gateway's cookies.
async fn browser_sign_in(
    gw: &Gateway,
    provider: &str,
    login: &str,
    redirect_to: &str,
) -> (Answer, Jar, String) {
    let mut gw_jar = Jar::default();
    let start = gw_jar
        .request(
            "GET",
            &gw.url(&format!(
                "/auth/oauth/{provider}/authorize?redirect_to={}",
                urlencode(redirect_to)
            )),
            None,
        )
        .await;
    assert_eq!(start.status, 302, "{:?}", start.body);
    assert!(gw_jar.get("gh_oauth").is_some());
    let mut idp_jar = Jar::default();
    let back = at_provider(&mut idp_jar, location(&start), login).await;
    let callback = back.replacen(SITE, &gw.url(""), 1);
    let answer = gw_jar.request("GET", &callback, None).await;
    (answer, gw_jar, callback)
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn code(a: &Answer) -> String {
    a.json()["code"].as_str().unwrap_or_default().to_owned()
}

async fn me(gw: &Gateway, jar: &Jar) -> Answer {
    let cookie = jar.header(&gw.url("/auth/me"));
    send("GET", &gw.url("/auth/me"), &[("cookie", &cookie)], empty()).await
}

#[tokio::test]
async fn browser_sign_in_sets_a_working_session() {
    let idp = Idp::start();
    let echo = Echo::start();
    let gw = gateway(&idp, &echo, "open");
    let (a, jar, callback) = browser_sign_in(&gw, "corp", "alice", "/app/home").await;
    assert_eq!(a.status, 302, "{:?}", a.body);
    assert_eq!(location(&a), "/app/home");
    let set: Vec<&str> = a
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    let session = set.iter().find(|c| c.starts_with("gh_session=")).unwrap();
    assert!(session.contains("HttpOnly") && session.contains("SameSite=Lax"));
    assert!(set.iter().any(|c| c.starts_with("gh_csrf=")));
    assert!(set.iter().any(|c| c.starts_with("gh_oauth=;")), "{set:?}");

    // The session works on the account API and on a proxied route.
    let m = me(&gw, &jar).await;
    assert_eq!(m.status, 200, "{:?}", m.body);
    let user = m.json();
    assert_eq!(user["email"], "alice@example.com");
    assert_eq!(user["email_verified"], true);
    assert_eq!(user["name"], "Alice Example");
    let cookie = jar.header(&gw.url("/app/x"));
    let p = send("GET", &gw.url("/app/x"), &[("cookie", &cookie)], empty()).await;
    assert_eq!(p.status, 200, "{:?}", p.body);
    assert_eq!(p.seen("x-auth-method").as_deref(), Some("cookie"));
    assert_eq!(p.seen("x-user-id").as_deref(), user["id"].as_str());

    // The same callback again (state replayed, from the same browser): refused.
    let mut replay_jar = Jar::default();
    let state = url::Url::parse(&callback)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "state")
        .unwrap()
        .1
        .into_owned();
    replay_jar
        .0
        .push(("gh_oauth".into(), "/".into(), state.clone()));
    let r = replay_jar.request("GET", &callback, None).await;
    assert_eq!((r.status, code(&r).as_str()), (400, "invalid_request"));

    // A second sign-in of the same identity is the same user.
    let (a, jar2, _) = browser_sign_in(&gw, "corp", "alice", "/").await;
    assert_eq!((a.status, location(&a).as_str()), (302, "/"));
    assert_eq!(me(&gw, &jar2).await.json()["id"], user["id"]);
    let logs = gw.stderr();
    assert!(!logs.contains(&state), "the state leaked into the logs");
    assert!(
        !logs.contains("corp-secret"),
        "the client secret leaked into the logs"
    );
}

#[tokio::test]
async fn callbacks_refuse_foreign_and_missing_state() {
    let idp = Idp::start();
    let echo = Echo::start();
    let gw = gateway(&idp, &echo, "open");
    let mut jar = Jar::default();
    let start = jar
        .request("GET", &gw.url("/auth/oauth/corp/authorize"), None)
        .await;
    assert_eq!(start.status, 302, "{:?}", start.body);
    let to = url::Url::parse(&location(&start)).unwrap();
    assert!(to.as_str().starts_with(&idp.issuer));
    let q: std::collections::HashMap<String, String> = to.query_pairs().into_owned().collect();
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["scope"], "openid email profile");
    assert_eq!(
        q["redirect_uri"],
        format!("{SITE}/auth/oauth/corp/callback")
    );
    assert!(q["nonce"].len() >= 43 && q["state"].len() >= 43);
    let state = &q["state"];

    // Another state than this browser's.
    let a = jar
        .request(
            "GET",
            &gw.url("/auth/oauth/corp/callback?code=x&state=forged"),
            None,
        )
        .await;
    assert_eq!((a.status, code(&a).as_str()), (400, "invalid_request"));
    // The right state from a browser without the cookie (login CSRF).
    let a = send(
        "GET",
        &gw.url(&format!("/auth/oauth/corp/callback?code=x&state={state}")),
        &[],
        empty(),
    )
    .await;
    assert_eq!((a.status, code(&a).as_str()), (400, "invalid_request"));
    // The provider's refusal.
    let a = jar
        .request(
            "GET",
            &gw.url(&format!(
                "/auth/oauth/corp/callback?error=access_denied&state={state}"
            )),
            None,
        )
        .await;
    assert_eq!((a.status, code(&a).as_str()), (400, "invalid_request"));
    assert!(
        a.json()["detail"]
            .as_str()
            .unwrap()
            .contains("access_denied")
    );
    // A bad code with the right state and cookie: the provider refuses it, cleanly.
    let a = jar
        .request(
            "GET",
            &gw.url(&format!(
                "/auth/oauth/corp/callback?code=not-a-code&state={state}"
            )),
            None,
        )
        .await;
    assert_eq!(
        (a.status, code(&a).as_str()),
        (400, "invalid_request"),
        "{:?}",
        a.body
    );
    assert!(
        a.json()["detail"]
            .as_str()
            .unwrap()
            .contains("invalid_grant")
    );
    // That used the state up.
    let a = jar
        .request(
            "GET",
            &gw.url(&format!("/auth/oauth/corp/callback?code=x&state={state}")),
            None,
        )
        .await;
    assert_eq!((a.status, code(&a).as_str()), (400, "invalid_request"));

    // Unknown provider; a redirect_to outside the allowed origins.
    let a = send("GET", &gw.url("/auth/oauth/nope/authorize"), &[], empty()).await;
    assert_eq!((a.status, code(&a).as_str()), (404, "not_found"));
    let a = send(
        "GET",
        &gw.url("/auth/oauth/corp/authorize?redirect_to=https%3A%2F%2Fevil.example.com%2F"),
        &[],
        empty(),
    )
    .await;
    assert_eq!((a.status, code(&a).as_str()), (400, "validation_failed"));
    let a = send(
        "GET",
        &gw.url("/auth/oauth/corp/authorize?redirect_to=https%3A%2F%2Fapp.example.com%2Fdone"),
        &[],
        empty(),
    )
    .await;
    assert_eq!(a.status, 302);
}

/// Runs an authorization request the way an app does itself, returning the code.
async fn app_code(idp: &Idp, login: &str, challenge: &str) -> String {
    let url = format!(
        "{}/auth?response_type=code&client_id=gatehouse&redirect_uri={}&scope=openid%20email%20profile&state=app-state&nonce=app-nonce&code_challenge={challenge}&code_challenge_method=S256",
        idp.issuer,
        urlencode(APP_CALLBACK)
    );
    let mut jar = Jar::default();
    let back = at_provider(&mut jar, url, login).await;
    assert!(back.starts_with(APP_CALLBACK), "{back}");
    url::Url::parse(&back)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "code")
        .unwrap()
        .1
        .into_owned()
}

#[tokio::test]
async fn api_flow_with_a_pkce_verifier() {
    let idp = Idp::start();
    let echo = Echo::start();
    let gw = gateway(&idp, &echo, "open");
    // RFC 7636 appendix B.
    let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
    let url = gw.url("/auth/oauth/corp/callback");

    let code_1 = app_code(&idp, "carol", challenge).await;
    let a = send_json(
        "POST",
        &url,
        None,
        &json!({"code": code_1, "redirect_uri": APP_CALLBACK, "code_verifier": verifier}),
    )
    .await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    let tokens = a.json();
    assert_eq!(tokens["token_type"], "Bearer");
    assert_eq!(tokens["user"]["email"], "carol@example.com");
    let token = tokens["access_token"].as_str().unwrap();
    let m = send_json("GET", &gw.url("/auth/me"), Some(token), &Value::Null).await;
    assert_eq!(m.json()["email"], "carol@example.com");
    // The code is single use at the provider.
    let a = send_json(
        "POST",
        &url,
        None,
        &json!({"code": code_1, "redirect_uri": APP_CALLBACK, "code_verifier": verifier}),
    )
    .await;
    assert_eq!((a.status, code(&a).as_str()), (400, "invalid_request"));

    // Without the verifier the provider refuses the code: a clean 400, not a 500.
    let code_2 = app_code(&idp, "carol", challenge).await;
    let a = send_json(
        "POST",
        &url,
        None,
        &json!({"code": code_2, "redirect_uri": APP_CALLBACK}),
    )
    .await;
    assert_eq!(
        (a.status, code(&a).as_str()),
        (400, "invalid_request"),
        "{:?}",
        a.body
    );
    // Missing fields.
    let a = send_json("POST", &url, None, &json!({})).await;
    assert_eq!((a.status, code(&a).as_str()), (400, "validation_failed"));
    assert!(
        !gw.stderr().contains(&code_2),
        "the code leaked into the logs"
    );
}

#[tokio::test]
async fn existing_accounts_link_by_verified_email_only() {
    let idp = Idp::start();
    let echo = Echo::start();
    let gw = gateway(&idp, &echo, "open");
    let mut ids = Vec::new();
    for email in ["alice@example.com", "bob@example.com"] {
        let a = send_json(
            "POST",
            &gw.url("/auth/register"),
            None,
            &json!({"email": email, "password": "correct horse battery"}),
        )
        .await;
        assert_eq!(a.status, 201, "{:?}", a.body);
        ids.push(a.json()["user"]["id"].as_str().unwrap().to_owned());
    }
    // alice: the provider verified the address -> linked to the existing account.
    let (a, jar, _) = browser_sign_in(&gw, "corp", "alice", "/").await;
    assert_eq!(a.status, 302, "{:?}", a.body);
    let m = me(&gw, &jar).await.json();
    assert_eq!(m["id"], ids[0].as_str());
    assert_eq!(m["email_verified"], true);
    // bob: unverified at the provider -> the account is not taken over.
    let (a, _, _) = browser_sign_in(&gw, "corppost", "bob", "/").await;
    assert_eq!(
        (a.status, code(&a).as_str()),
        (409, "already_exists"),
        "{:?}",
        a.body
    );
}

#[tokio::test]
async fn closed_registration_creates_no_user() {
    let idp = Idp::start();
    let echo = Echo::start();
    let gw = gateway(&idp, &echo, "invite_only");
    // client_secret_post on the way.
    let (a, _, _) = browser_sign_in(&gw, "corppost", "carol", "/").await;
    assert_eq!(
        (a.status, code(&a).as_str()),
        (403, "forbidden"),
        "{:?}",
        a.body
    );
}

/// What the GitHub-shaped server expects and saw.
#[derive(Default)]
struct GithubState {
    /// The PKCE challenge of the authorization request the test "approved".
    challenge: Option<String>,
    /// The redirect URI it was made with.
    redirect_uri: Option<String>,
    /// Codes already exchanged.
    used: Vec<String>,
}

/// A GitHub-shaped OAuth 2 server: `POST /login/oauth/access_token` (credentials in the
/// form, PKCE, errors with status 200 as GitHub sends them), `GET /api/user` and
/// `GET /api/user/emails` behind the access token.
async fn fake_github(state: std::sync::Arc<std::sync::Mutex<GithubState>>) -> std::net::SocketAddr {
    use base64::Engine as _;
    use http_body_util::BodyExt as _;
    use sha2::Digest as _;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let state = state.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: http::Request<hyper::body::Incoming>| {
                        let state = state.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.unwrap().to_bytes();
                            let bearer = parts
                                .headers
                                .get("authorization")
                                .and_then(|v| v.to_str().ok())
                                == Some("Bearer gho_test_token");
                            let answer = match (parts.method.as_str(), parts.uri.path()) {
                                ("POST", "/login/oauth/access_token") => {
                                    let form: std::collections::HashMap<String, String> =
                                        url::form_urlencoded::parse(&body).into_owned().collect();
                                    let mut st = state.lock().unwrap();
                                    let verifier_ok = form.get("code_verifier").is_some_and(|v| {
                                        let digest = sha2::Sha256::digest(v.as_bytes());
                                        Some(
                                            base64::engine::general_purpose::URL_SAFE_NO_PAD
                                                .encode(digest),
                                        ) == st.challenge
                                    });
                                    let code = form.get("code").cloned().unwrap_or_default();
                                    let ok = form.get("client_id").map(String::as_str)
                                        == Some("gh-client")
                                        && form.get("client_secret").map(String::as_str)
                                            == Some("gh-secret")
                                        && code == "gh-code"
                                        && !st.used.contains(&code)
                                        && form.get("redirect_uri") == st.redirect_uri.as_ref()
                                        && verifier_ok;
                                    st.used.push(code);
                                    if ok {
                                        json!({"access_token": "gho_test_token", "token_type": "bearer", "scope": "read:user,user:email"})
                                    } else {
                                        json!({"error": "bad_verification_code", "error_description": "The code passed is incorrect or expired."})
                                    }
                                }
                                ("GET", "/api/user") if bearer => {
                                    json!({"id": 4242, "login": "octo", "name": "Octo Cat", "email": null})
                                }
                                ("GET", "/api/user/emails") if bearer => json!([
                                    {"email": "octo-old@example.com", "primary": false, "verified": true, "visibility": null},
                                    {"email": "octo@example.com", "primary": true, "verified": true, "visibility": "private"},
                                ]),
                                _ => {
                                    return Ok::<_, std::convert::Infallible>(
                                        http::Response::builder()
                                            .status(401)
                                            .body(http_body_util::Full::new(
                                                bytes::Bytes::from_static(
                                                    b"{\"message\":\"Requires authentication\"}",
                                                ),
                                            ))
                                            .unwrap(),
                                    );
                                }
                            };
                            Ok(http::Response::builder()
                                .header("content-type", "application/json")
                                .body(http_body_util::Full::new(bytes::Bytes::from(
                                    answer.to_string(),
                                )))
                                .unwrap())
                        }
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn github_sign_in_through_its_rest_api() {
    let state = std::sync::Arc::new(std::sync::Mutex::new(GithubState::default()));
    let gh = fake_github(state.clone()).await;
    let gw = Gateway::start(&format!(
        r#"
tokens: {{ issuer: {SITE}, audience: tests }}
cookies: {{ secure: false }}
accounts:
  oauth:
    github: {{ client_id: gh-client, client_secret: gh-secret, authorize_url: "http://{gh}/login/oauth/authorize", token_url: "http://{gh}/login/oauth/access_token", api_url: "http://{gh}/api" }}
"#
    ));
    // A sign-in as far as GitHub's authorization page: the gateway's cookies and the URL.
    let begin = || {
        let url = gw.url("/auth/oauth/github/authorize?redirect_to=/welcome");
        async move {
            let mut jar = Jar::default();
            let a = jar.request("GET", &url, None).await;
            assert_eq!(a.status, 302, "{:?}", a.body);
            let to = url::Url::parse(&location(&a)).unwrap();
            let q: std::collections::HashMap<String, String> =
                to.query_pairs().into_owned().collect();
            (jar, to, q)
        }
    };
    let (mut jar, to, q) = begin().await;
    assert!(
        to.as_str()
            .starts_with(&format!("http://{gh}/login/oauth/authorize?"))
    );
    assert_eq!(q["client_id"], "gh-client");
    assert_eq!(q["scope"], "read:user user:email");
    assert_eq!(q["code_challenge_method"], "S256");
    assert!(!q.contains_key("nonce"));
    {
        let mut st = state.lock().unwrap();
        st.challenge = Some(q["code_challenge"].clone());
        st.redirect_uri = Some(q["redirect_uri"].clone());
    }
    // GitHub sends the user back with the code and the state.
    let callback = gw.url(&format!(
        "/auth/oauth/github/callback?code=gh-code&state={}",
        q["state"]
    ));
    let a = jar.request("GET", &callback, None).await;
    assert_eq!(a.status, 302, "{:?}", a.body);
    assert_eq!(location(&a), "/welcome");
    let m = me(&gw, &jar).await.json();
    assert_eq!(m["email"], "octo@example.com");
    assert_eq!(m["email_verified"], true);
    assert_eq!(m["name"], "Octo Cat");

    // A code GitHub refuses (it answers 200 with an error): a clean 400.
    let (mut jar, _, q) = begin().await;
    let a = jar
        .request(
            "GET",
            &gw.url(&format!(
                "/auth/oauth/github/callback?code=gh-code&state={}",
                q["state"]
            )),
            None,
        )
        .await;
    assert_eq!(
        (a.status, code(&a).as_str()),
        (400, "invalid_request"),
        "{:?}",
        a.body
    );
    assert!(
        a.json()["detail"]
            .as_str()
            .unwrap()
            .contains("bad_verification_code")
    );
    assert!(
        !gw.stderr().contains("gho_test_token"),
        "the access token leaked into the logs"
    );
}

#[tokio::test]
async fn signed_in_users_link_and_unlink_providers() {
    let idp = Idp::start();
    let echo = Echo::start();
    let gw = gateway(&idp, &echo, "open");
    let reg = send_json(
        "POST",
        &gw.url("/auth/register"),
        None,
        &json!({"email": "dave@example.com", "password": "correct horse battery"}),
    )
    .await;
    assert_eq!(reg.status, 201, "{:?}", reg.body);
    let dave = reg.json()["user"]["id"].as_str().unwrap().to_owned();
    let token = reg.json()["access_token"].as_str().unwrap().to_owned();
    let bearer = format!("Bearer {token}");

    // Linking needs a signed-in user, and a cookie-authenticated start passes the CSRF check.
    let a = send_json("POST", &gw.url("/auth/oauth/corp/link"), None, &json!({})).await;
    assert_eq!((a.status, code(&a).as_str()), (401, "missing_credentials"));
    let login = send_json(
        "POST",
        &gw.url("/auth/login"),
        None,
        &json!({"email": "dave@example.com", "password": "correct horse battery", "session": "cookie"}),
    )
    .await;
    let mut cookie_jar = Jar::default();
    cookie_jar.take(&login);
    let cookie = cookie_jar.header(&gw.url("/auth/oauth/corp/link"));
    let a = send(
        "POST",
        &gw.url("/auth/oauth/corp/link"),
        &[("cookie", &cookie), ("content-type", "application/json")],
        full("{}"),
    )
    .await;
    assert_eq!((a.status, code(&a).as_str()), (403, "csrf_failed"));

    // Start with the access token; the provider account is alice's (another email: linking
    // is by the user's own choice, not by address).
    let mut jar = Jar::default();
    let start = jar
        .request_with(
            "POST",
            &gw.url("/auth/oauth/corp/link"),
            &[
                ("authorization", &bearer),
                ("content-type", "application/json"),
            ],
            Some(r#"{"redirect_to": "/settings"}"#),
        )
        .await;
    assert_eq!(start.status, 200, "{:?}", start.body);
    let authorize = start.json()["authorize_url"].as_str().unwrap().to_owned();
    let back = at_provider(&mut Jar::default(), authorize, "alice").await;
    let a = jar
        .request("GET", &back.replacen(SITE, &gw.url(""), 1), None)
        .await;
    assert_eq!(
        (a.status, location(&a).as_str()),
        (302, "/settings"),
        "{:?}",
        a.body
    );
    assert!(
        !a.headers
            .get_all("set-cookie")
            .iter()
            .any(|v| v.to_str().unwrap().starts_with("gh_session=")),
        "a link does not sign in anew"
    );
    let list = send(
        "GET",
        &gw.url("/auth/me/identities"),
        &[("authorization", &bearer)],
        empty(),
    )
    .await;
    assert_eq!(list.status, 200, "{:?}", list.body);
    let ids = list.json()["identities"].clone();
    assert_eq!(ids.as_array().unwrap().len(), 1, "{ids}");
    assert_eq!(ids[0]["provider"], "corp");
    assert_eq!(ids[0]["subject"], "alice");

    // Signing in with that provider account is dave now.
    let (a, jar2, _) = browser_sign_in(&gw, "corp", "alice", "/").await;
    assert_eq!(a.status, 302, "{:?}", a.body);
    assert_eq!(me(&gw, &jar2).await.json()["id"], dave.as_str());

    // Unlink (dave has a password to fall back on); then the provider account is a stranger.
    let a = send(
        "DELETE",
        &gw.url("/auth/me/identities/corp"),
        &[("authorization", &bearer)],
        empty(),
    )
    .await;
    assert_eq!(a.status, 204, "{:?}", a.body);
    let a = send(
        "DELETE",
        &gw.url("/auth/me/identities/corp"),
        &[("authorization", &bearer)],
        empty(),
    )
    .await;
    assert_eq!((a.status, code(&a).as_str()), (404, "not_found"));
    let list = send(
        "GET",
        &gw.url("/auth/me/identities"),
        &[("authorization", &bearer)],
        empty(),
    )
    .await;
    assert_eq!(list.json()["identities"], json!([]));
}

/// An account with a second factor signs in with the provider and still needs its code:
/// the callback sets no session, sends the browser on with the `mfa_token` in the fragment,
/// and `POST /auth/mfa/verify` finishes with the cookie session the flow would have set.
#[tokio::test]
async fn oauth_sign_in_asks_for_the_second_factor() {
    let idp = Idp::start();
    let echo = Echo::start();
    let gw = gateway(&idp, &echo, "open");
    let reg = send_json(
        "POST",
        &gw.url("/auth/register"),
        None,
        &json!({"email": "alice@example.com", "password": "correct horse battery"}),
    )
    .await;
    assert_eq!(reg.status, 201, "{:?}", reg.body);
    let access = reg.json()["access_token"].as_str().unwrap().to_owned();
    let enrol = send_json(
        "POST",
        &gw.url("/auth/mfa/totp"),
        Some(&access),
        &Value::Null,
    )
    .await;
    let secret = enrol.json()["secret"].as_str().unwrap().to_owned();
    let confirm = send_json(
        "POST",
        &gw.url("/auth/mfa/totp/confirm"),
        Some(&access),
        &json!({"code": crate::mfa::totp(&secret, 0)}),
    )
    .await;
    assert_eq!(confirm.status, 200, "{:?}", confirm.body);

    let (a, _, _) = browser_sign_in(&gw, "corp", "alice", "/app/home").await;
    assert_eq!(a.status, 302, "{:?}", a.body);
    let to = location(&a);
    let (path, fragment) = to.split_once('#').expect("the mfa_token in the fragment");
    assert_eq!(path, "/app/home");
    assert!(
        a.headers
            .get_all("set-cookie")
            .iter()
            .all(|v| !v.to_str().unwrap().starts_with("gh_session=")),
        "a session before the second factor"
    );
    let mfa_token = url::form_urlencoded::parse(fragment.as_bytes())
        .find(|(k, _)| k == "mfa_token")
        .unwrap()
        .1
        .into_owned();
    // The step the confirmation used is spent: the next one (one step of skew is allowed).
    let done = send_json(
        "POST",
        &gw.url("/auth/mfa/verify"),
        None,
        &json!({"mfa_token": mfa_token, "code": crate::mfa::totp(&secret, 30)}),
    )
    .await;
    assert_eq!(done.status, 200, "{:?}", done.body);
    let session = done
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|c| c.starts_with("gh_session="))
        .expect("the cookie session of the browser flow");
    let cookie = session.split(';').next().unwrap().to_owned();
    let m = send("GET", &gw.url("/auth/me"), &[("cookie", &cookie)], empty()).await;
    assert_eq!(m.status, 200, "{:?}", m.body);
    assert_eq!(m.json()["email"], "alice@example.com");
}
