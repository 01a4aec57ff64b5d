//! Account lifecycle by email through the real binary: verification and password reset,
//! following the links inside the delivered mail, with the default outbox backend and with
//! a real SMTP server (Python's aiosmtpd) on loopback.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{Answer, Gateway, send_json};

const PASSWORD: &str = "correct-horse-battery";
const NEW_PASSWORD: &str = "purple-monkey-dishwasher";

async fn post(gw: &Gateway, path: &str, bearer: Option<&str>, body: Value) -> Answer {
    send_json("POST", &gw.url(path), bearer, &body).await
}

fn code(a: &Answer) -> String {
    a.json()["code"].as_str().unwrap_or("").to_owned()
}

/// One delivered message, decoded by Python's `email` package (independent of the
/// gateway's MIME writer).
#[derive(Debug, Clone)]
pub(crate) struct Mail {
    pub(crate) to: String,
    pub(crate) subject: String,
    pub(crate) text: String,
    pub(crate) html: String,
}

impl Mail {
    /// The token of the first `...?token=` link in the text part.
    pub(crate) fn token(&self) -> String {
        let at = self.text.find("token=").expect("a link with a token") + "token=".len();
        self.text[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
            .collect()
    }
}

/// Every `.eml`/message file in `dir`, oldest first.
pub(crate) fn read_mails(dir: &Path) -> Vec<Mail> {
    let script = r#"
import email, email.policy, json, os, sys
d = sys.argv[1]
out = []
if os.path.isdir(d):
    files = [os.path.join(d, f) for f in os.listdir(d) if not f.startswith(".")]
    for path in sorted(files, key=lambda p: (os.path.getmtime(p), p)):
        with open(path, "rb") as f:
            m = email.message_from_binary_file(f, policy=email.policy.default)
        text = m.get_body(("plain",))
        html = m.get_body(("html",))
        out.append({"to": str(m["To"]), "subject": str(m["Subject"]),
                    "text": text.get_content() if text else "",
                    "html": html.get_content() if html else ""})
print(json.dumps(out))
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(dir)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let all: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    all.into_iter()
        .map(|m| Mail {
            to: m["to"].as_str().unwrap().to_owned(),
            subject: m["subject"].as_str().unwrap().to_owned(),
            text: m["text"].as_str().unwrap().to_owned(),
            html: m["html"].as_str().unwrap().to_owned(),
        })
        .collect()
}

/// Waits until `dir` holds `n` messages (delivery is queued, never inline).
pub(crate) async fn wait_mails(dir: &Path, n: usize) -> Vec<Mail> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mails = read_mails(dir);
        if mails.len() >= n || Instant::now() > deadline {
            assert_eq!(mails.len(), n, "messages in {}: {mails:#?}", dir.display());
            return mails;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Register, verify by the mailed link, forget and reset the password, sign in by a magic
/// link: the flows a mail backend must carry, whichever it is.
async fn verify_and_reset(gw: &Gateway, mailbox: &Path) {
    let reg = post(
        gw,
        "/auth/register",
        None,
        json!({"email": "ada@example.com", "password": PASSWORD, "name": "Ada"}),
    )
    .await;
    assert_eq!(reg.status, 201, "{:?}", reg.body);
    let reg = reg.json();
    let access = reg["access_token"].as_str().unwrap().to_owned();
    let refresh = reg["refresh_token"].as_str().unwrap().to_owned();
    assert_eq!(reg["user"]["email_verified"], false);

    // The verification mail, and its link.
    let mails = wait_mails(mailbox, 1).await;
    let verify = &mails[0];
    assert!(verify.to.contains("ada@example.com"), "{verify:?}");
    assert!(
        verify.subject.starts_with("Verify your email"),
        "{verify:?}"
    );
    assert!(verify.text.contains("Ada"), "{verify:?}");
    let token = verify.token();
    assert_eq!(token.len(), 43, "256-bit token: {token}");
    assert!(verify.html.contains(&token), "the HTML part links too");
    let ok = post(gw, "/auth/verify-email", None, json!({"token": token})).await;
    assert_eq!(ok.status, 200, "{:?}", ok.body);
    assert_eq!(ok.json()["user"]["email_verified"], true);
    let me = send_json("GET", &gw.url("/auth/me"), Some(&access), &Value::Null).await;
    assert_eq!(me.json()["email_verified"], true);
    // Single use.
    let again = post(gw, "/auth/verify-email", None, json!({"token": token})).await;
    assert_eq!((again.status, code(&again)), (401, "invalid_token".into()));
    // A proven address of a new account gets its welcome, once.
    let mails = wait_mails(mailbox, 2).await;
    assert!(mails[1].to.contains("ada@example.com"), "{:?}", mails[1]);
    assert!(mails[1].subject.starts_with("Welcome"), "{:?}", mails[1]);
    assert!(mails[1].text.contains("Ada"), "{:?}", mails[1]);

    // Forgot-password: the same answer for a known and an unknown address; one mail.
    let known = post(
        gw,
        "/auth/forgot-password",
        None,
        json!({"email": "ada@example.com"}),
    )
    .await;
    let unknown = post(
        gw,
        "/auth/forgot-password",
        None,
        json!({"email": "nobody@example.com"}),
    )
    .await;
    assert_eq!((known.status, &known.body), (202, &unknown.body));
    assert_eq!(unknown.status, 202);
    let mails = wait_mails(mailbox, 3).await;
    let reset = &mails[2];
    assert!(reset.to.contains("ada@example.com"));
    assert!(reset.subject.starts_with("Reset your"), "{reset:?}");
    let token = reset.token();
    assert_ne!(token, verify.token());

    // A weak password is refused without using up the link.
    let weak = post(
        gw,
        "/auth/reset-password",
        None,
        json!({"token": token, "new_password": "password"}),
    )
    .await;
    assert_eq!(weak.status, 400, "{:?}", weak.body);
    let done = post(
        gw,
        "/auth/reset-password",
        None,
        json!({"token": token, "new_password": NEW_PASSWORD}),
    )
    .await;
    assert_eq!(done.status, 204, "{:?}", done.body);
    let reused = post(
        gw,
        "/auth/reset-password",
        None,
        json!({"token": token, "new_password": NEW_PASSWORD}),
    )
    .await;
    assert_eq!(
        (reused.status, code(&reused)),
        (401, "invalid_token".into())
    );

    // Every session ended; the old password is gone, the new one works; a notice was sent.
    let me = send_json("GET", &gw.url("/auth/me"), Some(&access), &Value::Null).await;
    assert_eq!((me.status, code(&me)), (401, "session_revoked".into()));
    let refreshed = post(gw, "/auth/refresh", None, json!({"refresh_token": refresh})).await;
    assert_eq!(refreshed.status, 401);
    let old = post(
        gw,
        "/auth/login",
        None,
        json!({"email": "ada@example.com", "password": PASSWORD}),
    )
    .await;
    assert_eq!(old.status, 401);
    let new = post(
        gw,
        "/auth/login",
        None,
        json!({"email": "ada@example.com", "password": NEW_PASSWORD}),
    )
    .await;
    assert_eq!(new.status, 200, "{:?}", new.body);
    let mails = wait_mails(mailbox, 4).await;
    assert!(mails[3].to.contains("ada@example.com"));
    assert!(
        mails[3].subject.contains("password was changed"),
        "{:?}",
        mails[3]
    );
    assert!(
        !mails[3].text.contains("token="),
        "the notice carries no link"
    );

    // A magic link through the same backend signs in.
    let asked = post(
        gw,
        "/auth/magic-link",
        None,
        json!({"email": "ada@example.com"}),
    )
    .await;
    assert_eq!(asked.status, 202, "{:?}", asked.body);
    let mails = wait_mails(mailbox, 5).await;
    assert!(mails[4].subject.contains("sign-in link"), "{:?}", mails[4]);
    let signed_in = post(
        gw,
        "/auth/magic-link/verify",
        None,
        json!({"token": mails[4].token()}),
    )
    .await;
    assert_eq!(signed_in.status, 200, "{:?}", signed_in.body);
    assert!(signed_in.json()["access_token"].is_string());
}

#[tokio::test]
pub(crate) async fn verify_and_reset_through_the_outbox() {
    let gw = Gateway::start("tokens: { issuer: http://gatehouse.test }\n");
    // The default backend: `.eml` files under `data/outbox`, relative to the working
    // directory (the test's own).
    let outbox = gw.dir.path().join("data/outbox");
    verify_and_reset(&gw, &outbox).await;
    let mails = read_mails(&outbox);
    assert!(
        mails[0]
            .text
            .contains("http://gatehouse.test/auth/verify-email?token="),
        "links lead to the account API by default: {}",
        mails[0].text
    );
}

/// A real SMTP server: aiosmtpd, saving each message to a directory.
struct SmtpSink {
    child: std::process::Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl SmtpSink {
    fn start() -> SmtpSink {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let script = r#"
import asyncio, os, sys, time
from aiosmtpd.controller import Controller

class Save:
    async def handle_DATA(self, server, session, envelope):
        d = sys.argv[2]
        name = os.path.join(d, "%d-%d.eml" % (time.time_ns(), id(envelope)))
        with open(name + ".tmp", "wb") as f:
            f.write(envelope.original_content or envelope.content)
        os.rename(name + ".tmp", name)
        return "250 OK"

c = Controller(Save(), hostname="127.0.0.1", port=int(sys.argv[1]))
c.start()
print("ready", flush=True)
try:
    while True:
        time.sleep(3600)
finally:
    c.stop()
"#;
        let mut child = std::process::Command::new("python3")
            .args(["-c", script, &port.to_string()])
            .arg(dir.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("python3 with aiosmtpd (`pip install aiosmtpd`, see .ci/run)");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        assert_eq!(
            line.trim(),
            "ready",
            "aiosmtpd did not start (`pip install aiosmtpd`)"
        );
        SmtpSink { child, port, dir }
    }

    fn mailbox(&self) -> PathBuf {
        self.dir.path().to_owned()
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn verify_and_reset_through_a_real_smtp_server() {
    let smtp = SmtpSink::start();
    let gw = Gateway::start(&format!(
        "tokens: {{ issuer: http://gatehouse.test }}\naccounts:\n  email: {{ smtp_url: \"smtp://127.0.0.1:{}\", from: \"Gatehouse <no-reply@gatehouse.test>\" }}\n",
        smtp.port
    ));
    verify_and_reset(&gw, &smtp.mailbox()).await;
    // Nothing went to the outbox.
    assert!(read_mails(&gw.dir.path().join("data/outbox")).is_empty());
}

/// The same reset link used by 20 parallel requests: exactly one succeeds.
#[tokio::test]
pub(crate) async fn a_reset_link_works_exactly_once_under_concurrency() {
    let gw = Gateway::start(
        "tokens: { issuer: http://gatehouse.test }\nrate_limits: { email: { requests: 100, per: 1h } }\n",
    );
    let outbox = gw.dir.path().join("data/outbox");
    let reg = post(
        &gw,
        "/auth/register",
        None,
        json!({"email": "race@example.com", "password": PASSWORD}),
    )
    .await;
    assert_eq!(reg.status, 201);
    wait_mails(&outbox, 1).await;
    let a = post(
        &gw,
        "/auth/forgot-password",
        None,
        json!({"email": "race@example.com"}),
    )
    .await;
    assert_eq!(a.status, 202);
    let token = wait_mails(&outbox, 2).await[1].token();
    let attempts = (0..20).map(|i| {
        let url = gw.url("/auth/reset-password");
        let token = token.clone();
        async move {
            send_json(
                "POST",
                &url,
                None,
                &json!({"token": token, "new_password": format!("{NEW_PASSWORD}-{i}")}),
            )
            .await
            .status
        }
    });
    let statuses = futures_util::future::join_all(attempts).await;
    assert_eq!(
        statuses.iter().filter(|s| **s == 204).count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 204 || *s == 401),
        "{statuses:?}"
    );
}

/// A reload rebuilds the mailer: new settings and edited templates take effect without a
/// restart; a template that does not parse refuses the reload and the running mailer stays.
#[tokio::test]
async fn a_reload_rebuilds_the_mailer() {
    const BASE: &str = "tokens: { issuer: http://gatehouse.test }\nrate_limits: { email: { requests: 100, per: 1h } }\n";
    let gw = Gateway::start(BASE);
    let reg = post(
        &gw,
        "/auth/register",
        None,
        json!({"email": "hedy@example.com", "password": PASSWORD}),
    )
    .await;
    assert_eq!(reg.status, 201);
    wait_mails(&gw.dir.path().join("data/outbox"), 1).await;

    let templates = gw.dir.path().join("templates");
    std::fs::create_dir_all(&templates).unwrap();
    std::fs::write(
        templates.join("reset_password.subject.txt"),
        "Your {{app_name}} reset link (edited)",
    )
    .unwrap();
    let other = gw.dir.path().join("other-outbox");
    gw.rewrite_config(&format!(
        "{BASE}accounts:\n  email: {{ outbox_dir: {}, templates_dir: {} }}\n",
        other.display(),
        templates.display()
    ));
    gw.signal("HUP");
    assert!(gw.wait_log("configuration reloaded", Duration::from_secs(5)));
    let forgot = json!({"email": "hedy@example.com"});
    assert_eq!(
        post(&gw, "/auth/forgot-password", None, forgot.clone())
            .await
            .status,
        202
    );
    let mails = wait_mails(&other, 1).await;
    assert_eq!(mails[0].subject, "Your Gatehouse reset link (edited)");

    // A template naming a placeholder that does not exist: refused, the old mailer goes on.
    std::fs::write(templates.join("reset_password.txt"), "{{no_such_thing}}").unwrap();
    gw.signal("HUP");
    assert!(gw.wait_log("new configuration refused", Duration::from_secs(5)));
    assert!(gw.stderr().contains("no_such_thing"), "{}", gw.stderr());
    assert_eq!(
        post(&gw, "/auth/forgot-password", None, forgot)
            .await
            .status,
        202
    );
    let mails = wait_mails(&other, 2).await;
    assert_eq!(mails[1].subject, "Your Gatehouse reset link (edited)");
    assert!(mails[1].text.contains("token="), "{:?}", mails[1]);
}

/// `require_email_verification`: sign-up gives no session, login is refused until the
/// mailed link was followed.
#[tokio::test]
async fn verification_required_before_sign_in() {
    let gw = Gateway::start(
        "tokens: { issuer: http://gatehouse.test }\naccounts: { require_email_verification: true }\n",
    );
    let outbox = gw.dir.path().join("data/outbox");
    let reg = post(
        &gw,
        "/auth/register",
        None,
        json!({"email": "grace@example.com", "password": PASSWORD}),
    )
    .await;
    assert_eq!(reg.status, 201, "{:?}", reg.body);
    let body = reg.json();
    assert!(body.get("access_token").is_none(), "{body}");
    assert_eq!(body["verification_required"], true);
    let refused = login_grace(&gw).await;
    assert_eq!(
        (refused.status, code(&refused)),
        (403, "email_not_verified".into())
    );
    let token = wait_mails(&outbox, 1).await[0].token();
    let ok = post(&gw, "/auth/verify-email", None, json!({"token": token})).await;
    assert_eq!(ok.status, 200);
    assert_eq!(login_grace(&gw).await.status, 200);
}

async fn login_grace(gw: &Gateway) -> Answer {
    post(
        gw,
        "/auth/login",
        None,
        json!({"email": "grace@example.com", "password": PASSWORD}),
    )
    .await
}

/// Magic links: the same answer for any address, a 10-minute single-use link that signs in
/// (`amr: otp`), proves the address and carries a `redirect_to` only when it is safe.
#[tokio::test]
pub(crate) async fn magic_link_sign_in() {
    let gw = Gateway::start(
        "tokens: { issuer: http://gatehouse.test }\naccounts: { allowed_origins: [\"https://app.example.com\"] }\n",
    );
    let outbox = gw.dir.path().join("data/outbox");
    let reg = post(
        &gw,
        "/auth/register",
        None,
        json!({"email": "lin@example.com", "password": PASSWORD}),
    )
    .await;
    assert_eq!(reg.status, 201);
    wait_mails(&outbox, 1).await;

    for bad in [
        "//evil.com",
        "https://evil.com/",
        "/%2F%2Fevil.com",
        "https:evil.com",
    ] {
        let a = post(
            &gw,
            "/auth/magic-link",
            None,
            json!({"email": "lin@example.com", "redirect_to": bad}),
        )
        .await;
        assert_eq!(
            (a.status, code(&a)),
            (400, "validation_failed".into()),
            "{bad}"
        );
    }
    let target = "https://app.example.com/welcome";
    let known = post(
        &gw,
        "/auth/magic-link",
        None,
        json!({"email": "lin@example.com", "redirect_to": target}),
    )
    .await;
    let unknown = post(
        &gw,
        "/auth/magic-link",
        None,
        json!({"email": "nobody@example.com", "redirect_to": target}),
    )
    .await;
    assert_eq!((known.status, &known.body), (202, &unknown.body));
    let mails = wait_mails(&outbox, 2).await;
    let magic = &mails[1];
    assert!(magic.to.contains("lin@example.com"));
    assert!(
        magic
            .text
            .contains("http://gatehouse.test/auth/magic-link?token="),
        "{}",
        magic.text
    );
    let token = magic.token();
    let signed_in = post(
        &gw,
        "/auth/magic-link/verify",
        None,
        json!({"token": token}),
    )
    .await;
    assert_eq!(signed_in.status, 200, "{:?}", signed_in.body);
    let body = signed_in.json();
    assert_eq!(body["redirect_to"], target);
    assert_eq!(body["user"]["email_verified"], true);
    let access = body["access_token"].as_str().unwrap();
    let claims: Value = {
        use base64::Engine;
        let part = access.split('.').nth(1).unwrap();
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(part)
                .unwrap(),
        )
        .unwrap()
    };
    assert_eq!(claims["amr"], json!(["otp"]));
    let me = send_json("GET", &gw.url("/auth/me"), Some(access), &Value::Null).await;
    assert_eq!(me.status, 200);
    let again = post(
        &gw,
        "/auth/magic-link/verify",
        None,
        json!({"token": token}),
    )
    .await;
    assert_eq!((again.status, code(&again)), (401, "invalid_token".into()));
}

/// `conceal_existing`: sign-up answers the same 202 for a free and a taken address; the new
/// account gets its verification link, the existing one's owner a notice.
#[tokio::test]
pub(crate) async fn sign_up_conceals_existing_accounts() {
    let gw = Gateway::start(
        "tokens: { issuer: http://gatehouse.test }\naccounts: { conceal_existing: true }\n",
    );
    let outbox = gw.dir.path().join("data/outbox");
    let body = json!({"email": "joan@example.com", "password": PASSWORD, "name": "Joan"});
    let first = post(&gw, "/auth/register", None, body.clone()).await;
    let again = post(
        &gw,
        "/auth/register",
        None,
        json!({"email": "JOAN@example.com", "password": NEW_PASSWORD}),
    )
    .await;
    assert_eq!(first.status, 202, "{:?}", first.body);
    assert_eq!((again.status, &again.body), (first.status, &first.body));
    assert!(first.json().get("access_token").is_none());

    let mails = wait_mails(&outbox, 2).await;
    assert!(
        mails[0].subject.starts_with("Verify your email"),
        "{:?}",
        mails[0]
    );
    assert!(mails[1].to.contains("joan@example.com"));
    assert!(
        mails[1].subject.contains("tried to sign up"),
        "{:?}",
        mails[1]
    );
    assert!(
        mails[1].text.contains("Joan"),
        "greets the owner: {:?}",
        mails[1]
    );
    assert!(
        !mails[1].text.contains("token="),
        "the notice carries no link"
    );

    // The first password is the account's; the second attempt changed nothing.
    let login = |password: &'static str| {
        post(
            &gw,
            "/auth/login",
            None,
            json!({"email": "joan@example.com", "password": password}),
        )
    };
    assert_eq!(login(PASSWORD).await.status, 200);
    assert_eq!(login(NEW_PASSWORD).await.status, 401);

    // Usernames are not concealed: they are public names, and there is no mail to send.
    let named = json!({"username": "joan", "password": PASSWORD});
    assert_eq!(
        post(&gw, "/auth/register", None, named.clone())
            .await
            .status,
        201
    );
    assert_eq!(post(&gw, "/auth/register", None, named).await.status, 409);
}

/// `accounts.email.new_sign_in`: a sign-in from an address and browser that none of the
/// account's active sessions has gets a notice; a known one does not.
#[tokio::test]
async fn new_sign_ins_are_noticed() {
    let gw = Gateway::start(
        "tokens: { issuer: http://gatehouse.test }\naccounts: { email: { new_sign_in: true } }\n",
    );
    let outbox = gw.dir.path().join("data/outbox");
    let reg = post(
        &gw,
        "/auth/register",
        None,
        json!({"email": "noor@example.com", "password": PASSWORD}),
    )
    .await;
    assert_eq!(reg.status, 201);
    wait_mails(&outbox, 1).await;
    let login = |agent: Option<&'static str>| {
        let url = gw.url("/auth/login");
        async move {
            let mut headers = vec![("content-type", "application/json")];
            if let Some(agent) = agent {
                headers.push(("user-agent", agent));
            }
            let body = json!({"email": "noor@example.com", "password": PASSWORD});
            crate::support::send(
                "POST",
                &url,
                &headers,
                crate::support::full(body.to_string()),
            )
            .await
            .status
        }
    };
    // The sign-up's own session: same address, same (absent) browser: nothing to tell.
    assert_eq!(login(None).await, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(read_mails(&outbox).len(), 1);
    // Another browser: a notice naming it.
    assert_eq!(login(Some("Firefox/140.0 (test)")).await, 200);
    let mails = wait_mails(&outbox, 2).await;
    assert!(
        mails[1].subject.to_lowercase().contains("sign-in"),
        "{:?}",
        mails[1]
    );
    assert!(
        mails[1].text.contains("Firefox/140.0 (test)"),
        "{:?}",
        mails[1]
    );
    assert!(mails[1].text.contains("127.0.0.1"), "{:?}", mails[1]);
    // Now a known one.
    assert_eq!(login(Some("Firefox/140.0 (test)")).await, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(read_mails(&outbox).len(), 2);
}
