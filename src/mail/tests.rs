//! Mailer tests against its real backends: the outbox folder, and a real SMTP server on
//! loopback (Python's aiosmtpd, `testdata/smtp_sink.py`). Delivered messages are read back
//! with Python's `email` package (`testdata/read_eml.py`), a MIME parser independent of
//! lettre. Python 3 and aiosmtpd are required (`.ci/run` installs aiosmtpd): without them the
//! tests fail and say so, they are never skipped.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use time::OffsetDateTime;

use super::*;

const SINK: &str = include_str!("testdata/smtp_sink.py");
const READ_EML: &str = include_str!("testdata/read_eml.py");
const LINK: &str = "https://app.example.com/auth/verify?token=tok_abc123&next=%2Fhome";

// Keys not set here keep the decoder's defaults (`..defaults` may be empty today).
#[allow(clippy::needless_update)]
fn email_config(outbox: &Path) -> EmailConfig {
    let defaults = crate::config::parse("", Path::new("mail-test.yaml"), &|_| None)
        .unwrap()
        .accounts
        .email;
    EmailConfig {
        smtp_url: None,
        from: "Acme <no-reply@acme.test>".into(),
        outbox_dir: outbox.to_owned(),
        templates_dir: None,
        ..defaults
    }
}

fn smtp_config(url: String) -> EmailConfig {
    EmailConfig {
        smtp_url: Some(url),
        ..email_config(Path::new("/nonexistent/outbox"))
    }
}

fn start(config: &EmailConfig, options: MailerOptions) -> Mailer {
    Mailer::start_with(config, Arc::new(Metrics::new()), options).unwrap()
}

fn quick_retry(attempts: u32) -> MailerOptions {
    MailerOptions {
        retry: RetryPolicy {
            attempts,
            first_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(400),
        },
        attempt_timeout: Duration::from_secs(10),
        ..MailerOptions::default()
    }
}

fn verify(to: &str) -> Message {
    Message::new(
        to,
        MessageKind::VerifyEmail {
            link: LINK.into(),
            expires_in: Duration::from_secs(86_400),
        },
    )
}

async fn flushed(mailer: &Mailer) -> MailStats {
    flushed_or(mailer, String::new).await
}

/// Waits for the queue to drain; on timeout, fails showing `context` (a server's log).
async fn flushed_or(mailer: &Mailer, context: impl FnOnce() -> String) -> MailStats {
    if tokio::time::timeout(Duration::from_secs(30), mailer.flush())
        .await
        .is_err()
    {
        panic!(
            "mail queue not drained in 30 s: {:?}\n{}",
            mailer.stats(),
            context()
        );
    }
    mailer.stats()
}

/// Fails (never skips) when Python or one of its modules is missing.
fn require_python(module: &str) {
    let hint = format!(
        "the mail tests need python3 with its `{module}` module (aiosmtpd: python3 -m pip \
         install aiosmtpd, as .ci/run does)"
    );
    match Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .output()
    {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!("{hint}: {}", String::from_utf8_lossy(&out.stderr)),
        Err(e) => panic!("{hint}: cannot run python3: {e}"),
    }
}

/// `.eml` files of `dir`, sorted by name (outbox names sort by time, sink names by arrival).
fn eml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| entries.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|e| e == "eml"));
    files.sort();
    files
}

/// Parses `.eml` files with Python's `email` package.
fn read_eml(files: &[PathBuf]) -> Vec<Value> {
    require_python("email");
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("read_eml.py");
    std::fs::write(&script, READ_EML).unwrap();
    let out = Command::new("python3")
        .arg(&script)
        .args(files)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "read_eml.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let parsed: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    for m in &parsed {
        assert_eq!(m["defects"], serde_json::json!([]), "MIME defects in {m}");
    }
    parsed
}

fn part<'a>(message: &'a Value, content_type: &str) -> &'a str {
    message["parts"]
        .as_array()
        .and_then(|parts| parts.iter().find(|p| p["type"] == content_type))
        .and_then(|p| p["body"].as_str())
        .unwrap_or_else(|| panic!("no {content_type} part in {message}"))
}

/// A multipart/alternative message with exactly a text and an HTML part, no placeholder left.
fn assert_well_formed(m: &Value) {
    assert_eq!(m["type"], "multipart/alternative", "{m}");
    let types: Vec<&str> = m["parts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["text/plain", "text/html"]);
    assert_eq!(m["date"], true);
    assert_eq!(m["auto_submitted"], "auto-generated");
    assert!(m["message_id"].as_str().unwrap().ends_with("@acme.test>"));
    for text in [
        m["subject"].as_str().unwrap(),
        part(m, "text/plain"),
        part(m, "text/html"),
    ] {
        assert!(!text.contains("{{") && !text.contains("}}"), "{text}");
    }
}

#[tokio::test]
async fn outbox_writes_a_multipart_message_with_values_filled_and_escaped() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = dir.path().join("outbox");
    let mailer = start(&email_config(&outbox), MailerOptions::default());
    assert_eq!(mailer.backend(), format!("outbox {}", outbox.display()));
    mailer
        .send(verify("ada@example.com").with_user_name("Ada <b>\"Lovelace\"</b> & Co"))
        .unwrap();
    let stats = flushed(&mailer).await;
    assert_eq!(
        stats,
        MailStats {
            sent: 1,
            ..MailStats::default()
        }
    );
    let files = eml_files(&outbox);
    assert_eq!(files.len(), 1, "{files:?}");
    let name = files[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.contains("-verify_email-"), "{name}");
    // Only the finished file: no temporary left behind.
    assert_eq!(std::fs::read_dir(&outbox).unwrap().count(), 1);

    let m = &read_eml(&files)[0];
    assert_well_formed(m);
    assert_eq!(m["from"], "Acme <no-reply@acme.test>");
    assert!(
        m["to"].as_str().unwrap().contains("<ada@example.com>"),
        "{}",
        m["to"]
    );
    assert_eq!(m["subject"], "Verify your email address for Acme");
    let text = part(m, "text/plain");
    assert!(text.contains("Hi Ada <b>\"Lovelace\"</b> & Co,"), "{text}");
    assert!(text.contains(LINK), "{text}");
    assert!(text.contains("expires in 24 hours"), "{text}");
    let html = part(m, "text/html");
    assert!(
        html.contains("Hi Ada &lt;b&gt;&quot;Lovelace&quot;&lt;/b&gt; &amp; Co,"),
        "{html}"
    );
    assert!(
        html.contains(&format!("href=\"{}\"", LINK.replace('&', "&amp;"))),
        "{html}"
    );
    assert!(!html.contains("<b>"), "{html}");
}

#[tokio::test]
async fn outbox_uses_templates_from_the_configured_directory() {
    let dir = tempfile::tempdir().unwrap();
    let templates = dir.path().join("templates");
    std::fs::create_dir(&templates).unwrap();
    std::fs::write(
        templates.join("magic_link.subject.txt"),
        "Sign in to {{app_name}} now\n",
    )
    .unwrap();
    std::fs::write(
        templates.join("magic_link.html"),
        "<html><body><p>Hello {{ name }}</p><a href=\"{{link}}\">Sign in</a> \
         ({{expires_in}})</body></html>\n",
    )
    .unwrap();
    let config = EmailConfig {
        templates_dir: Some(templates),
        ..email_config(&dir.path().join("outbox"))
    };
    let mailer = start(&config, MailerOptions::default());
    mailer
        .send(
            Message::new(
                "grace@example.com",
                MessageKind::MagicLink {
                    link: LINK.into(),
                    expires_in: Duration::from_secs(600),
                },
            )
            .with_user_name("Grace & <i>Hopper</i>"),
        )
        .unwrap();
    assert_eq!(flushed(&mailer).await.sent, 1);
    let m = &read_eml(&eml_files(&dir.path().join("outbox")))[0];
    assert_well_formed(m);
    assert_eq!(m["subject"], "Sign in to Acme now");
    assert_eq!(
        part(m, "text/html").trim_end(),
        format!(
            "<html><body><p>Hello Grace &amp; &lt;i&gt;Hopper&lt;/i&gt;</p><a href=\"{}\">Sign \
             in</a> (10 minutes)</body></html>",
            LINK.replace('&', "&amp;")
        )
    );
    // Not overridden: the built-in text part.
    let text = part(m, "text/plain");
    assert!(
        text.contains("Open this link to sign in to Acme as grace@example.com"),
        "{text}"
    );
}

#[tokio::test]
async fn a_bad_template_override_fails_at_start() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("welcome.html"), "<p>{{link}}</p>").unwrap();
    let config = EmailConfig {
        templates_dir: Some(dir.path().to_owned()),
        ..email_config(&dir.path().join("outbox"))
    };
    let err = Mailer::start_with(&config, Arc::new(Metrics::new()), MailerOptions::default())
        .unwrap_err();
    assert!(matches!(err, MailError::Template { .. }), "{err}");
    assert!(err.to_string().contains("welcome.html"), "{err}");
}

#[tokio::test]
async fn every_kind_renders_to_a_complete_message() {
    let dir = tempfile::tempdir().unwrap();
    let mailer = start(&email_config(dir.path()), MailerOptions::default());
    let at = OffsetDateTime::from_unix_timestamp(1_767_225_600).unwrap();
    let hour = Duration::from_secs(3600);
    let kinds = [
        MessageKind::Welcome,
        MessageKind::VerifyEmail {
            link: LINK.into(),
            expires_in: hour,
        },
        MessageKind::ResetPassword {
            link: LINK.into(),
            expires_in: hour,
        },
        MessageKind::MagicLink {
            link: LINK.into(),
            expires_in: hour,
        },
        MessageKind::Invitation {
            link: LINK.into(),
            expires_in: hour,
            invited_by: Some("Ada".into()),
        },
        MessageKind::PasswordChanged { at },
        MessageKind::NewSignIn {
            at,
            ip: Some("192.0.2.7".into()),
            user_agent: Some("Firefox".into()),
        },
        MessageKind::AccountExists,
    ];
    let names: Vec<&str> = kinds.iter().map(MessageKind::name).collect();
    for kind in kinds {
        mailer.send(Message::new("u@example.com", kind)).unwrap();
        // One at a time, so that file names (by time) keep the order.
        flushed(&mailer).await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let files = eml_files(dir.path());
    assert_eq!(files.len(), names.len());
    let messages = read_eml(&files);
    for ((file, m), name) in files.iter().zip(&messages).zip(&names) {
        assert!(
            file.to_string_lossy().contains(&format!("-{name}-")),
            "{file:?}"
        );
        assert_well_formed(m);
        let text = part(m, "text/plain");
        if text.contains("link") {
            assert!(text.contains(LINK), "{name}: {text}");
        }
    }
    assert_eq!(messages[4]["subject"], "Ada invited you to Acme");
    let sign_in = part(&messages[6], "text/plain");
    assert!(sign_in.contains("2026-01-01 00:00 UTC"), "{sign_in}");
    assert!(sign_in.contains("192.0.2.7") && sign_in.contains("Firefox"));
}

#[tokio::test]
async fn a_full_queue_drops_without_waiting_and_counts() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Arc::new(Metrics::new());
    let mailer = Mailer::start_with(
        &email_config(dir.path()),
        Arc::clone(&metrics),
        MailerOptions {
            queue_capacity: 1,
            ..MailerOptions::default()
        },
    )
    .unwrap();
    // On this single-threaded runtime the worker cannot run between these calls, so the
    // second and third find the queue full.
    assert!(mailer.send(verify("a@example.com")).is_ok());
    assert!(matches!(
        mailer.send(verify("b@example.com")),
        Err(MailError::QueueFull)
    ));
    assert!(matches!(
        mailer.send(verify("c@example.com")),
        Err(MailError::QueueFull)
    ));
    assert_eq!(mailer.stats().pending, 1);
    let stats = flushed(&mailer).await;
    assert_eq!((stats.sent, stats.dropped, stats.pending), (1, 2, 0));
    assert_eq!(eml_files(dir.path()).len(), 1);
    let text = metrics.encode();
    assert!(text.contains(r#"gatehouse_mail_messages_total{result="sent"} 1"#));
    assert!(text.contains(r#"gatehouse_mail_messages_total{result="dropped"} 2"#));
}

#[tokio::test]
async fn bad_recipients_are_errors_to_the_caller() {
    let dir = tempfile::tempdir().unwrap();
    let mailer = start(&email_config(dir.path()), MailerOptions::default());
    let err = mailer.send(verify("not an address")).unwrap_err();
    assert!(
        matches!(
            err,
            MailError::Address {
                what: "recipient",
                ..
            }
        ),
        "{err}"
    );
    let stats = flushed(&mailer).await;
    assert_eq!((stats.sent, stats.failed), (0, 1));
    assert!(eml_files(dir.path()).is_empty());
}

#[tokio::test]
async fn an_unwritable_outbox_is_retried_then_given_up() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, "not a directory").unwrap();
    let mailer = start(&email_config(&blocker.join("outbox")), quick_retry(3));
    mailer.send(verify("a@example.com")).unwrap();
    let stats = flushed(&mailer).await;
    assert_eq!((stats.sent, stats.failed, stats.retried), (0, 1, 2));
}

#[test]
fn backoff_grows_by_three_up_to_the_cap() {
    let delays: Vec<u64> = (1..=5)
        .map(|n| RetryPolicy::default().delay_after(n).as_secs())
        .collect();
    assert_eq!(delays, [1, 3, 9, 27, 30]);
}

#[test]
fn starting_outside_a_runtime_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let err = Mailer::start(&email_config(dir.path()), Arc::new(Metrics::new())).unwrap_err();
    assert!(matches!(err, MailError::NoRuntime), "{err}");
}

// ---- SMTP -------------------------------------------------------------------------------

/// The aiosmtpd sink, killed on drop.
struct SmtpSink {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

#[derive(Default)]
struct SinkOptions<'a> {
    port: Option<u16>,
    credentials: Option<(&'a str, &'a str)>,
    /// `starttls` or `tls`, with (cert, key) PEM files.
    tls: Option<(&'a str, &'a Path, &'a Path)>,
    reject_prefix: Option<&'a str>,
}

impl SmtpSink {
    fn start(options: SinkOptions<'_>) -> SmtpSink {
        require_python("aiosmtpd");
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("smtp_sink.py");
        std::fs::write(&script, SINK).unwrap();
        let received = dir.path().join("received");
        std::fs::create_dir(&received).unwrap();
        let stderr = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
        let mut cmd = Command::new("python3");
        cmd.arg(&script)
            .arg("--dir")
            .arg(&received)
            .arg("--port")
            .arg(options.port.unwrap_or(0).to_string());
        if let Some((user, password)) = options.credentials {
            cmd.args(["--user", user, "--password", password]);
        }
        if let Some((mode, cert, key)) = options.tls {
            cmd.args(["--mode", mode])
                .arg("--cert")
                .arg(cert)
                .arg("--key")
                .arg(key);
        }
        if let Some(prefix) = options.reject_prefix {
            cmd.args(["--reject-prefix", prefix]);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start python3 smtp_sink.py: {e}"));
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_default();
        let mut sink = SmtpSink {
            child,
            port: 0,
            dir,
        };
        match line.trim().parse() {
            Ok(port) => sink.port = port,
            Err(_) => panic!(
                "the SMTP sink did not start (first line {line:?}); its stderr:\n{}",
                sink.stderr()
            ),
        }
        sink
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    fn received(&self) -> PathBuf {
        self.dir.path().join("received")
    }

    /// Envelopes (from the sink) and parsed messages, in arrival order.
    fn messages(&self) -> Vec<(Value, Value)> {
        let files = eml_files(&self.received());
        let parsed = if files.is_empty() {
            Vec::new()
        } else {
            read_eml(&files)
        };
        files
            .iter()
            .zip(parsed)
            .map(|(file, m)| {
                let meta = std::fs::read(file.with_extension("json")).unwrap();
                (serde_json::from_slice(&meta).unwrap(), m)
            })
            .collect()
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test]
async fn smtp_delivers_with_credentials_from_the_url() {
    let sink = SmtpSink::start(SinkOptions {
        credentials: Some(("mailer@acme.test", "p@ss:w/rd é")),
        ..SinkOptions::default()
    });
    let url = format!(
        "smtp://mailer%40acme.test:p%40ss%3Aw%2Frd%20%C3%A9@127.0.0.1:{}",
        sink.port
    );
    let mailer = start(&smtp_config(url), quick_retry(2));
    assert_eq!(
        mailer.backend(),
        format!("smtp 127.0.0.1:{} (plain)", sink.port)
    );
    let reset = Message::new(
        "ada@example.com",
        MessageKind::ResetPassword {
            link: LINK.into(),
            expires_in: Duration::from_secs(3600),
        },
    )
    .with_user_name("Ada");
    mailer.send(reset).unwrap();
    let stats = flushed_or(&mailer, || sink.stderr()).await;
    assert_eq!(
        (stats.sent, stats.failed),
        (1, 0),
        "sink stderr:\n{}",
        sink.stderr()
    );
    let messages = sink.messages();
    assert_eq!(messages.len(), 1);
    let (envelope, m) = &messages[0];
    assert_eq!(envelope["login"], "mailer@acme.test");
    assert_eq!(envelope["mail_from"], "no-reply@acme.test");
    assert_eq!(envelope["rcpt_tos"], serde_json::json!(["ada@example.com"]));
    assert_eq!(envelope["tls"], false);
    assert_well_formed(m);
    assert_eq!(m["to"], "Ada <ada@example.com>");
    assert_eq!(m["subject"], "Reset your Acme password");
    assert!(part(m, "text/plain").contains(LINK));
    assert!(part(m, "text/html").contains(&LINK.replace('&', "&amp;")));

    // A wrong password is a permanent rejection (535): given up at once, not retried.
    let wrong = format!("smtp://mailer%40acme.test:nope@127.0.0.1:{}", sink.port);
    let mailer = start(&smtp_config(wrong), quick_retry(3));
    mailer.send(verify("ada@example.com")).unwrap();
    let stats = flushed(&mailer).await;
    assert_eq!((stats.sent, stats.failed, stats.retried), (0, 1, 0));
    assert_eq!(sink.messages().len(), 1);
}

#[tokio::test]
async fn smtp_rejected_recipient_is_not_retried() {
    let sink = SmtpSink::start(SinkOptions {
        reject_prefix: Some("ghost"),
        ..SinkOptions::default()
    });
    let mailer = start(
        &smtp_config(format!("smtp://127.0.0.1:{}", sink.port)),
        quick_retry(4),
    );
    mailer.send(verify("ghost@example.com")).unwrap();
    mailer.send(verify("real@example.com")).unwrap();
    let stats = flushed(&mailer).await;
    assert_eq!((stats.sent, stats.failed, stats.retried), (1, 1, 0));
    let messages = sink.messages();
    assert_eq!(messages.len(), 1);
    assert_eq!(
        messages[0].0["rcpt_tos"],
        serde_json::json!(["real@example.com"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_retries_until_the_server_is_up() {
    require_python("aiosmtpd");
    let port = free_port();
    let mailer = start(
        &smtp_config(format!("smtp://127.0.0.1:{port}")),
        quick_retry(40),
    );
    mailer.send(verify("late@example.com")).unwrap();
    // Nothing listens yet: the first try is refused and a retry is scheduled.
    let started = Instant::now();
    while mailer.stats().retried == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no failed try: {:?}",
            mailer.stats()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sink = tokio::task::spawn_blocking(move || {
        SmtpSink::start(SinkOptions {
            port: Some(port),
            ..SinkOptions::default()
        })
    })
    .await
    .unwrap();
    let stats = flushed_or(&mailer, || sink.stderr()).await;
    assert_eq!(
        (stats.sent, stats.failed),
        (1, 0),
        "{stats:?}; sink stderr:\n{}",
        sink.stderr()
    );
    assert!(stats.retried >= 1);
    let messages = sink.messages();
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].1["to"], "late@example.com");
    assert!(part(&messages[0].1, "text/plain").contains(LINK));
}

#[tokio::test]
async fn a_server_that_never_answers_is_cut_off_by_the_attempt_deadline() {
    // Accepts connections and says nothing: lettre alone would wait for the greeting forever.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let mut connections = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            connections.push(tcp);
        }
    });
    let options = MailerOptions {
        attempt_timeout: Duration::from_millis(300),
        ..quick_retry(2)
    };
    let mailer = start(&smtp_config(format!("smtp://127.0.0.1:{port}")), options);
    mailer.send(verify("silent@example.com")).unwrap();
    let started = Instant::now();
    let stats = flushed(&mailer).await;
    assert_eq!((stats.sent, stats.failed, stats.retried), (0, 1, 1));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    held.abort();
}

/// A CA and a certificate for 127.0.0.1 signed by it, as PEM files in `dir`; returns
/// (CA PEM, cert path, key path).
fn tls_files(dir: &Path) -> (String, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, leaf.pem()).unwrap();
    std::fs::write(&key, leaf_key.serialize_pem()).unwrap();
    (ca_cert.pem(), cert, key)
}

#[tokio::test]
async fn smtp_over_implicit_tls_and_starttls_with_rustls() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = tls_files(dir.path());
    for (mode, scheme) in [("tls", "smtps"), ("starttls", "smtp+starttls")] {
        let sink = SmtpSink::start(SinkOptions {
            credentials: Some(("user", "secret")),
            tls: Some((mode, &cert, &key)),
            ..SinkOptions::default()
        });
        let url = format!("{scheme}://user:secret@127.0.0.1:{}", sink.port);
        let trusted = MailerOptions {
            extra_root_certs_pem: Some(ca.clone().into_bytes()),
            ..quick_retry(2)
        };
        let mailer = start(&smtp_config(url.clone()), trusted);
        mailer.send(verify("tls@example.com")).unwrap();
        let stats = flushed_or(&mailer, || sink.stderr()).await;
        assert_eq!(
            (stats.sent, stats.failed),
            (1, 0),
            "{mode}: sink stderr:\n{}",
            sink.stderr()
        );
        let messages = sink.messages();
        assert_eq!(messages.len(), 1, "{mode}");
        assert_eq!(messages[0].0["tls"], true, "{mode}");
        assert_eq!(messages[0].0["login"], "user", "{mode}");
        assert_eq!(
            messages[0].1["subject"],
            "Verify your email address for Acme"
        );

        // Without the private CA the server's certificate is refused: nothing is sent.
        let mailer = start(&smtp_config(url), quick_retry(1));
        mailer.send(verify("tls@example.com")).unwrap();
        let stats = flushed(&mailer).await;
        assert_eq!((stats.sent, stats.failed), (0, 1), "{mode}");
        assert_eq!(sink.messages().len(), 1, "{mode}");
    }
}
