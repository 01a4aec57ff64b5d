//! JWTs of external identity providers (`tokens.trusted_issuers`) on the proxy path: an IdP
//! made of PyJWT keys and a JWKS served by the test, the JWKS going away (keys kept), a
//! rotation picked up through an unknown `kid` without restart, and the refetch budget.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::support::{Answer, Echo, Gateway, get, send};

const ISS: &str = "https://idp.test";
const AUD: &str = "orders-api";

/// Keys, JWKS documents and tokens of a test IdP, made by PyJWT + cryptography (an
/// implementation independent of the gateway's).
fn idp() -> Value {
    let script = r#"
import base64, hashlib, hmac, json, sys, time
import jwt
from jwt.algorithms import RSAAlgorithm, ECAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa, ec

iss, aud = sys.argv[1], sys.argv[2]
a = rsa.generate_private_key(public_exponent=65537, key_size=2048)
b = ec.generate_private_key(ec.SECP256R1())

def jwk(algorithm, key, kid, **extra):
    d = json.loads(algorithm.to_jwk(key.public_key()))
    d.update(kid=kid, **extra)
    return d

ja = jwk(RSAAlgorithm, a, "kid-a", use="sig", alg="RS256")
jb = jwk(ECAlgorithm, b, "kid-b")  # no `alg`: inferred from the key type
hs = {"kty": "oct", "kid": "kid-h", "alg": "HS256", "k": "c2VjcmV0"}  # never trusted
enc = jwk(RSAAlgorithm, a, "kid-e", use="enc")  # not a signature key

now = int(time.time())
base = {"iss": iss, "aud": aud, "sub": "idp|ada", "email": "ada@idp.test",
        "preferred_username": "ada", "realm_access": {"roles": ["staff", "user"]},
        "scope": "orders:read", "iat": now, "exp": now + 600}

def t(key, alg, kid, **over):
    c = dict(base)
    c.update(over)
    return jwt.encode(c, key, algorithm=alg, headers={"kid": kid})

def b64(raw):
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

def hs256(claims, kid, secret):
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    body = b64(json.dumps(claims).encode())
    sig = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"

public_pem = a.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
print(json.dumps({
    "jwks_a": {"keys": [ja, hs, enc]},
    "jwks_ab": {"keys": [ja, jb, hs, enc]},
    "good_a": t(a, "RS256", "kid-a"),
    "good_a2": t(a, "RS256", "kid-a", sub="idp|bob"),
    "good_b": t(b, "ES256", "kid-b", sub="idp|cy"),
    "expired": t(a, "RS256", "kid-a", exp=now - 3600, iat=now - 7200),
    "string_exp": t(a, "RS256", "kid-a", exp=str(now + 600)),
    "wrong_aud": t(a, "RS256", "kid-a", aud="another-api"),
    "wrong_iss": t(a, "RS256", "kid-a", iss="https://evil.test"),
    "guest": t(a, "RS256", "kid-a", realm_access={"roles": ["guest"]}),
    "unscoped_for_orders": t(a, "RS256", "kid-a", scope="profile"),
    "unknown_kid": t(a, "RS256", "kid-z"),
    "hs_with_public_key": hs256(dict(base), "kid-a", public_pem),
    "hs_oct_key": hs256(dict(base), "kid-h", b"secret"),
    "alg_none": b64(json.dumps({"alg": "none", "kid": "kid-a"}).encode()) + "."
                + b64(json.dumps(base).encode()) + ".",
}))
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", script, ISS, AUD])
        .output()
        .expect("python3 with PyJWT (`pip install 'pyjwt[crypto]'`, see .ci/run)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A JWKS endpoint: serves `document`, counts requests, and while `down` drops every
/// connection unanswered (as if the IdP were gone).
struct JwksServer {
    addr: SocketAddr,
    document: Arc<Mutex<String>>,
    down: Arc<AtomicBool>,
    requests: Arc<AtomicUsize>,
}

impl JwksServer {
    async fn start(document: &Value) -> JwksServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = JwksServer {
            addr: listener.local_addr().unwrap(),
            document: Arc::new(Mutex::new(document.to_string())),
            down: Arc::new(AtomicBool::new(false)),
            requests: Arc::new(AtomicUsize::new(0)),
        };
        let (document, down, requests) = (
            server.document.clone(),
            server.down.clone(),
            server.requests.clone(),
        );
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                if down.load(Ordering::SeqCst) {
                    drop(conn);
                    continue;
                }
                let (document, requests) = (document.clone(), requests.clone());
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    requests.fetch_add(1, Ordering::SeqCst);
                    let body = document.lock().unwrap().clone();
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = conn.write_all(answer.as_bytes()).await;
                    let _ = conn.shutdown().await;
                });
            }
        });
        server
    }

    fn url(&self) -> String {
        format!("http://{}/jwks.json", self.addr)
    }
}

async fn call(gw: &Gateway, path: &str, token: &str) -> Answer {
    let auth = format!("Bearer {token}");
    send(
        "GET",
        &gw.url(path),
        &[
            ("authorization", auth.as_str()),
            // Forged identity: must never reach the upstream.
            ("x-user-id", "forged"),
            ("x_user_roles", "admin"),
        ],
        crate::support::empty(),
    )
    .await
}

fn code(a: &Answer) -> String {
    a.json()["code"].as_str().unwrap_or("").to_owned()
}

async fn metrics(gw: &Gateway) -> String {
    String::from_utf8(get(&gw.admin_url("/metrics")).await.body.to_vec()).unwrap()
}

/// Polls `/metrics` until a line starts with `prefix`; returns that line.
async fn wait_metric(gw: &Gateway, prefix: &str) -> String {
    for _ in 0..100 {
        if let Some(line) = metrics(gw).await.lines().find(|l| l.starts_with(prefix)) {
            return line.to_owned();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no metric line {prefix:?} in:\n{}", metrics(gw).await);
}

#[tokio::test]
async fn external_idp_tokens_on_the_proxy_path() {
    let idp = idp();
    let tok = |name: &str| idp[name].as_str().unwrap().to_owned();
    let jwks = JwksServer::start(&idp["jwks_a"]).await;
    let echo = Echo::start();
    let up = echo.url();
    let dead = crate::support::upstream::refused();
    let gw = Gateway::start(&format!(
        r#"
tokens:
  issuer: http://gatehouse.test
  audience: tests
  trusted_issuers:
    - {{ issuer: "{ISS}", jwks_uri: "{jwks}", audience: {AUD}, roles_claim: realm_access.roles }}
    - {{ issuer: https://gone.test, jwks_uri: "http://{dead}/jwks.json" }}
rate_limits: {{ default: {{ requests: 10000, per: 1s }} }}
routes:
  - {{ name: orders, match: {{ path_prefix: /orders }}, upstream: {{ targets: ["{up}"] }}, auth: required, roles: [staff], scopes: ["orders:read"] }}
  - {{ name: opt, match: {{ path_prefix: /opt }}, upstream: {{ targets: ["{up}"] }}, auth: optional }}
  - {{ name: keysonly, match: {{ path_prefix: /keysonly }}, upstream: {{ targets: ["{up}"] }}, auth: required, credentials: [api_key] }}
"#,
        jwks = jwks.url()
    ));
    // The JWKS is fetched in the background at start.
    wait_metric(
        &gw,
        &format!("gatehouse_jwks_fetches_total{{issuer=\"{ISS}\",result=\"ok\"}} 1"),
    )
    .await;
    assert_eq!(jwks.requests.load(Ordering::SeqCst), 1);

    // Accepted, identity from the claims, forged headers gone, the token not forwarded.
    let a = call(&gw, "/orders/1", &tok("good_a")).await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.seen("x-user-id").as_deref(), Some("idp|ada"));
    assert_eq!(a.seen("x-user-email").as_deref(), Some("ada@idp.test"));
    assert_eq!(a.seen("x-user-name").as_deref(), Some("ada"));
    assert_eq!(a.seen("x-user-roles").as_deref(), Some("staff,user"));
    assert_eq!(a.seen("x-auth-method").as_deref(), Some("jwt"));
    assert_eq!(a.seen("x_user_roles"), None);
    assert_eq!(a.seen("authorization"), None);
    // Again: from the verified-token cache, same answer.
    let again = call(&gw, "/orders/1", &tok("good_a")).await;
    assert_eq!(again.seen("x-user-id").as_deref(), Some("idp|ada"));

    // Refused: policy, claims, and every forging trick.
    let guest = call(&gw, "/orders/1", &tok("guest")).await;
    assert_eq!((guest.status, code(&guest)), (403, "forbidden".into()));
    let unscoped = call(&gw, "/orders/1", &tok("unscoped_for_orders")).await;
    assert_eq!(
        (unscoped.status, code(&unscoped)),
        (403, "forbidden".into())
    );
    let expired = call(&gw, "/orders/1", &tok("expired")).await;
    assert_eq!(
        (expired.status, code(&expired)),
        (401, "token_expired".into())
    );
    for bad in [
        "string_exp",
        "wrong_aud",
        "wrong_iss",
        "hs_with_public_key",
        "alg_none",
    ] {
        let a = call(&gw, "/orders/1", &tok(bad)).await;
        assert_eq!((a.status, code(&a)), (401, "invalid_token".into()), "{bad}");
        assert!(
            a.headers["www-authenticate"]
                .to_str()
                .unwrap()
                .contains("invalid_token"),
            "{bad}"
        );
    }
    // A route that takes no JWTs, and an optional one that forwards a bad token as anonymous.
    let a = call(&gw, "/keysonly/1", &tok("good_a")).await;
    assert_eq!((a.status, code(&a)), (401, "missing_credentials".into()));
    let a = call(&gw, "/opt/1", &tok("wrong_aud")).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.seen("x-auth-method").as_deref(), Some("anonymous"));
    assert_eq!(a.seen("x-user-id"), None);
    // The account API is for Gatehouse accounts: an external subject has none.
    let me = call(&gw, "/auth/me", &tok("good_a")).await;
    assert_eq!(me.status, 401, "{}", String::from_utf8_lossy(&me.body));
    // None of these needed another JWKS fetch.
    assert_eq!(jwks.requests.load(Ordering::SeqCst), 1);

    // The IdP goes away: tokens signed with keys already known keep working.
    jwks.down.store(true, Ordering::SeqCst);
    let a = call(&gw, "/orders/2", &tok("good_a2")).await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.seen("x-user-id").as_deref(), Some("idp|bob"));

    // It comes back having rotated in a new key: a token with the new `kid` makes the
    // gateway refetch, without a restart.
    *jwks.document.lock().unwrap() = idp["jwks_ab"].to_string();
    jwks.down.store(false, Ordering::SeqCst);
    let a = call(&gw, "/orders/3", &tok("good_b")).await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.seen("x-user-id").as_deref(), Some("idp|cy"));
    assert_eq!(jwks.requests.load(Ordering::SeqCst), 2);

    // Unknown `kid`s within the minute do not refetch, and keys the JWKS holds that are no
    // signature keys of an allowed algorithm (an HMAC secret) are never used.
    for bad in ["unknown_kid", "hs_oct_key", "unknown_kid"] {
        let a = call(&gw, "/orders/4", &tok(bad)).await;
        assert_eq!((a.status, code(&a)), (401, "invalid_token".into()), "{bad}");
    }
    assert_eq!(jwks.requests.load(Ordering::SeqCst), 2);

    // An issuer whose JWKS never answered: its tokens fail, and /metrics says why.
    let ok_line = wait_metric(
        &gw,
        "gatehouse_jwks_fetches_total{issuer=\"https://gone.test\",result=\"error\"}",
    )
    .await;
    let failures: f64 = ok_line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(failures >= 1.0, "{ok_line}");
    let m = metrics(&gw).await;
    assert!(
        m.contains("gatehouse_jwks_age_seconds{issuer=\"https://gone.test\"} -1"),
        "{m}"
    );
    let age = m
        .lines()
        .find(|l| l.starts_with(&format!("gatehouse_jwks_age_seconds{{issuer=\"{ISS}\"}}")))
        .unwrap();
    assert!(!age.ends_with(" -1"), "{age}");
}
