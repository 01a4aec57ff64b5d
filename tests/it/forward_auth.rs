//! `GET /auth/verify` (forward-auth, SPEC section 5): directly, and with the real peers that
//! call it: nginx `auth_request` and Caddy `forward_auth`.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::{Answer, Echo, Gateway, send, send_json};

const PASSWORD: &str = "correct-horse-battery";

fn gateway(trusted: bool, echo: &Echo) -> Gateway {
    let up = echo.url();
    let trusted = if trusted {
        "trusted_proxies: [127.0.0.1/32]\n"
    } else {
        ""
    };
    Gateway::start(&format!(
        r#"{trusted}routes:
  - {{ name: pub, match: {{ path_prefix: /pub }}, upstream: {{ targets: ["{up}"] }}, auth: public }}
  - {{ name: req, match: {{ path_prefix: /req }}, upstream: {{ targets: ["{up}"] }}, auth: required }}
  - {{ name: admin, match: {{ path_prefix: /admin }}, upstream: {{ targets: ["{up}"] }}, auth: required, roles: [admin] }}
"#
    ))
}

async fn token(gw: &Gateway) -> (String, String) {
    let a = send_json(
        "POST",
        &gw.url("/auth/register"),
        None,
        &json!({"email": "fa@example.com", "password": PASSWORD}),
    )
    .await;
    assert_eq!(a.status, 201, "{:?}", a.body);
    let v = a.json();
    (
        v["access_token"].as_str().unwrap().to_owned(),
        v["user"]["id"].as_str().unwrap().to_owned(),
    )
}

async fn verify(gw: &Gateway, headers: &[(&str, &str)]) -> Answer {
    send(
        "GET",
        &gw.url("/auth/verify"),
        headers,
        crate::support::empty(),
    )
    .await
}

#[tokio::test]
async fn verify_applies_the_forwarded_routes_policy_only_for_trusted_proxies() {
    let echo = Echo::start();
    let gw = gateway(true, &echo);
    let (token, user_id) = token(&gw).await;
    let bearer = format!("Bearer {token}");

    let a = verify(&gw, &[("x-forwarded-uri", "/pub/page?x=1")]).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.headers["x-auth-method"], "anonymous");
    let a = verify(&gw, &[("x-forwarded-uri", "/req/x")]).await;
    assert_eq!(
        (a.status, a.json()["code"].as_str()),
        (401, Some("missing_credentials"))
    );
    let a = verify(
        &gw,
        &[("x-original-uri", "/req/x"), ("authorization", &bearer)],
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.headers["x-user-id"], user_id.as_str());
    assert_eq!(a.headers["x-auth-method"], "jwt");
    let a = verify(
        &gw,
        &[("x-forwarded-uri", "/admin"), ("authorization", &bearer)],
    )
    .await;
    assert_eq!(
        (a.status, a.json()["code"].as_str()),
        (403, Some("forbidden"))
    );
    // No forwarded request to go by: a valid credential is required.
    assert_eq!(verify(&gw, &[]).await.status, 401);
    assert_eq!(verify(&gw, &[("authorization", &bearer)]).await.status, 200);

    // From a peer that is not a trusted proxy the forwarded URI is ignored, so a public
    // route's policy cannot be borrowed.
    let gw = gateway(false, &echo);
    let a = verify(&gw, &[("x-forwarded-uri", "/pub")]).await;
    assert_eq!(a.status, 401);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A peer process, killed on drop; its config directory lives as long as it does.
struct Peer(Child, #[allow(dead_code)] tempfile::TempDir);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_listening(port: u16, child: &mut Child, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited: {status}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} did not listen on {port}");
}

async fn through(port: u16, path: &str, headers: &[(&str, &str)]) -> Answer {
    send(
        "GET",
        &format!("http://127.0.0.1:{port}{path}"),
        headers,
        crate::support::empty(),
    )
    .await
}

async fn exercise_peer(port: u16, token: &str, user_id: &str) {
    let bearer = format!("Bearer {token}");
    // A public route passes without a credential, as anonymous.
    let a = through(port, "/pub/x", &[]).await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(a.seen("x-auth-method").as_deref(), Some("anonymous"));
    // A required route refuses without one, and passes the identity through with one.
    let a = through(port, "/req/x", &[]).await;
    assert_eq!(a.status, 401);
    let a = through(
        port,
        "/req/x",
        &[("authorization", &bearer), ("x-user-id", "forged")],
    )
    .await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(a.seen("x-user-id").as_deref(), Some(user_id));
    assert_eq!(a.seen("x-auth-method").as_deref(), Some("jwt"));
    let a = through(port, "/admin", &[("authorization", &bearer)]).await;
    assert_eq!(a.status, 403);
}

#[tokio::test]
async fn nginx_auth_request() {
    let echo = Echo::start();
    let gw = gateway(true, &echo);
    let (token, user_id) = token(&gw).await;
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let conf = format!(
        r#"daemon off;
master_process off;
worker_processes 1;
error_log {dir}/error.log;
pid {dir}/nginx.pid;
events {{ worker_connections 64; }}
http {{
  access_log off;
  client_body_temp_path {dir};
  proxy_temp_path {dir};
  fastcgi_temp_path {dir};
  uwsgi_temp_path {dir};
  scgi_temp_path {dir};
  server {{
    listen 127.0.0.1:{port};
    location = /_gatehouse {{
      internal;
      proxy_pass http://{gw}/auth/verify;
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      proxy_set_header X-Original-URI $request_uri;
      proxy_set_header X-Forwarded-Method $request_method;
      proxy_set_header X-Forwarded-Host $host;
    }}
    location / {{
      auth_request /_gatehouse;
      auth_request_set $gh_user $upstream_http_x_user_id;
      auth_request_set $gh_method $upstream_http_x_auth_method;
      proxy_set_header X-User-Id $gh_user;
      proxy_set_header X-Auth-Method $gh_method;
      proxy_pass {echo};
    }}
  }}
}}
"#,
        dir = dir.path().display(),
        gw = gw.addr,
        echo = echo.url(),
    );
    let conf_path = dir.path().join("nginx.conf");
    std::fs::write(&conf_path, conf).unwrap();
    // `master_process off`: one process, so killing the child stops nginx. With a master,
    // the SIGKILL of `Peer::drop` left its worker running (and listening) after every test.
    let mut child = Command::new("nginx")
        .arg("-c")
        .arg(&conf_path)
        .arg("-p")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("nginx (Debian package nginx; installed by .ci/run)");
    wait_listening(port, &mut child, "nginx");
    let _nginx = Peer(child, dir);
    exercise_peer(port, &token, &user_id).await;
}

#[tokio::test]
async fn caddy_forward_auth() {
    let echo = Echo::start();
    let gw = gateway(true, &echo);
    let (token, user_id) = token(&gw).await;
    let port = free_port();
    let admin = free_port();
    let dir = tempfile::tempdir().unwrap();
    let conf = format!(
        r#"{{
  admin 127.0.0.1:{admin}
  auto_https off
  storage file_system {dir}
}}
http://127.0.0.1:{port} {{
  forward_auth {gw} {{
    uri /auth/verify
    copy_headers X-User-Id X-Auth-Method
  }}
  reverse_proxy {echo_addr}
}}
"#,
        dir = dir.path().display(),
        gw = gw.addr,
        echo_addr = echo.addr,
    );
    let conf_path = dir.path().join("Caddyfile");
    std::fs::write(&conf_path, conf).unwrap();
    let mut child = Command::new("caddy")
        .args(["run", "--adapter", "caddyfile", "--config"])
        .arg(&conf_path)
        .env("HOME", dir.path())
        .env("XDG_DATA_HOME", dir.path())
        .env("XDG_CONFIG_HOME", dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("caddy (Debian package caddy; installed by .ci/run)");
    wait_listening(port, &mut child, "caddy");
    let _caddy = Peer(child, dir);
    exercise_peer(port, &token, &user_id).await;
}
