//! Test support: the real `gatehouse` binary started on free loopback ports, small upstreams
//! running inside the test process, and an HTTP client.
//!
//! A gateway's stderr is captured and printed when the test that owns it fails.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod redis;
pub mod upstream;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

pub const BIN: &str = env!("CARGO_BIN_EXE_gatehouse");

pub type TestBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

thread_local! {
    /// The `store:` line gateways started on this thread use instead of a private SQLite
    /// file (see [`with_store`]).
    static STORE: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Runs `test` (a `#[tokio::test]` function: it blocks this thread) with every gateway it
/// starts on this thread configured with `store` (a YAML mapping, e.g. a Redis store), so
/// the same tests run unchanged on another backend.
pub fn with_store(store: &str, test: impl FnOnce()) {
    STORE.with(|s| *s.borrow_mut() = Some(store.to_owned()));
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            STORE.with(|s| *s.borrow_mut() = None);
        }
    }
    let _reset = Reset;
    test();
}

/// The `store:` line of a gateway whose data directory is `dir`.
fn store_line(dir: &Path) -> String {
    match STORE.with(|s| s.borrow().clone()) {
        Some(store) => format!("store: {store}\n"),
        None => format!(
            "store: {{ kind: sqlite, path: {}/gatehouse.db }}\n",
            dir.display()
        ),
    }
}

/// A running `gatehouse` process.
pub struct Gateway {
    pub child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    stderr: Arc<Mutex<String>>,
}

fn read_ready(child: &mut Child) -> serde_json::Value {
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        if let Some(Ok(line)) = lines.next() {
            let _ = tx.send(line);
        }
        // Keep draining so the child never blocks on a full pipe.
        for _ in lines {}
    });
    let line = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("no ready line within 20 s");
    serde_json::from_str(&line).expect("ready line is JSON")
}

fn capture_stderr(child: &mut Child) -> Arc<Mutex<String>> {
    let buf = Arc::new(Mutex::new(String::new()));
    let mut stderr = child.stderr.take().expect("stderr");
    let sink = buf.clone();
    std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = stderr.read(&mut chunk) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&chunk[..n]));
        }
    });
    buf
}

impl Gateway {
    /// Writes `yaml` (with `listen`/`admin_listen` on port 0 added unless present) and starts
    /// `gatehouse serve` on it.
    pub fn start(yaml: &str) -> Gateway {
        Self::start_on(yaml, None, &[])
    }

    /// As [`Gateway::start`], with these environment variables set for the process (a
    /// [`Gateway::restart`] does not keep them).
    pub fn start_with_env(yaml: &str, env: &[(&str, &str)]) -> Gateway {
        Self::start_on(yaml, None, env)
    }

    /// As [`Gateway::start`], with the process pinned to the first CPU this test may use
    /// (`taskset`), as a container limited to one core would run it.
    pub fn start_on_one_cpu(yaml: &str) -> Gateway {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let allowed = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .unwrap();
        let first = allowed.trim().split([',', '-']).next().unwrap().to_owned();
        Self::start_on(yaml, Some(&first), &[])
    }

    fn start_on(yaml: &str, cpu: Option<&str>, env: &[(&str, &str)]) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("gateway.yaml");
        let mut text = String::new();
        if !yaml.contains("listen:") {
            text.push_str("listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\n");
        }
        if !yaml.contains("store:") {
            text.push_str(&store_line(dir.path()));
        }
        text.push_str(yaml);
        std::fs::write(&config_path, &text).unwrap();
        Self::spawn(dir, config_path, cpu, env)
    }

    fn spawn(
        dir: tempfile::TempDir,
        config_path: PathBuf,
        cpu: Option<&str>,
        env: &[(&str, &str)],
    ) -> Gateway {
        let mut command = match cpu {
            // taskset execs the gateway: the child's pid is the gateway's.
            Some(cpu) => {
                let mut c = Command::new("taskset");
                c.args(["-c", cpu, BIN]);
                c
            }
            None => Command::new(BIN),
        };
        // Relative paths of the config (the default mail outbox `data/outbox`, say) land in
        // the test's own directory, not in the checkout.
        let mut child = command
            .args(["serve", "--config"])
            .arg(&config_path)
            .current_dir(dir.path())
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn gatehouse");
        let stderr = capture_stderr(&mut child);
        let ready =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| read_ready(&mut child)));
        let ready = match ready {
            Ok(r) => r,
            Err(e) => {
                std::thread::sleep(Duration::from_millis(200));
                eprintln!("--- gatehouse stderr ---\n{}", stderr.lock().unwrap());
                std::panic::resume_unwind(e);
            }
        };
        Gateway {
            addr: ready["listen"].as_str().unwrap().parse().unwrap(),
            admin: ready["admin"].as_str().unwrap().parse().unwrap(),
            child,
            dir,
            config_path,
            stderr,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Rewrites the config file in place (keeping the bound ports).
    pub fn rewrite_config(&self, yaml: &str) {
        let text = format!(
            "listen: {}\nadmin_listen: {}\n{}{}",
            self.addr,
            self.admin,
            store_line(self.dir.path()),
            yaml
        );
        let tmp = self.dir.path().join(".gateway.yaml.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &self.config_path).unwrap();
    }

    /// Stops the process (SIGTERM, drained) and starts it again on the same config and data
    /// directory; the new process listens on new ports when the config says port 0.
    pub fn restart(mut self) -> Gateway {
        self.signal("TERM");
        assert_eq!(
            self.wait_exit(Duration::from_secs(10)),
            Some(0),
            "{}",
            self.stderr()
        );
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        let config_path = self.config_path.clone();
        drop(self);
        Self::spawn(dir, config_path, None, &[])
    }

    /// Runs `gatehouse ARGS --config <this gateway's config>` with `stdin` and returns
    /// (exit code, stdout, stderr).
    pub fn cli(&self, args: &[&str], stdin: &str) -> (i32, String, String) {
        use std::io::Write;
        let mut child = Command::new(BIN)
            .args(args)
            .arg("--config")
            .arg(&self.config_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Waits until the process exits and returns its exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Waits until stderr contains `needle`.
    pub fn wait_log(&self, needle: &str, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.stderr().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Resets the process's peak RSS (`VmHWM`) to its current RSS (Linux 4.0+:
    /// `clear_refs` value 5).
    pub fn reset_peak_memory(&self) {
        std::fs::write(format!("/proc/{}/clear_refs", self.pid()), "5").unwrap();
    }

    /// `VmRSS` and `VmHWM` (peak) of the process, in KiB.
    pub fn memory_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap()
        };
        (field("VmRSS:"), field("VmHWM:"))
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            std::thread::sleep(Duration::from_millis(50));
            eprintln!(
                "--- gatehouse stderr ({}) ---\n{}",
                self.config_path.display(),
                self.stderr()
            );
        }
    }
}

/// `gatehouse echo` as a separate process.
pub struct Echo {
    child: Child,
    pub addr: SocketAddr,
}

impl Echo {
    pub fn start() -> Echo {
        let mut child = Command::new(BIN)
            .args(["echo", "--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn gatehouse echo");
        let ready = read_ready(&mut child);
        Echo {
            addr: ready["listen"].as_str().unwrap().parse().unwrap(),
            child,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `gatehouse check` and returns (exit code, stdout, stderr).
pub fn check(config: &Path) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(config)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// An HTTP/1.1 client with a connection pool.
pub fn client() -> Client<HttpConnector, TestBody> {
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn empty() -> TestBody {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed()
}

pub fn full(data: impl Into<Bytes>) -> TestBody {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A collected answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    /// The header the upstream echo saw (lower-case name), if any.
    pub fn seen(&self, name: &str) -> Option<String> {
        self.json()["headers"][name].as_str().map(str::to_owned)
    }
}

pub async fn collect(resp: Response<hyper::body::Incoming>) -> Answer {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        headers,
        body,
    }
}

/// Sends a request built from `method`, `url` and headers, and collects the answer.
pub async fn send(method: &str, url: &str, headers: &[(&str, &str)], body: TestBody) -> Answer {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client().request(req.body(body).unwrap()).await.unwrap();
    collect(resp).await
}

/// Sends a JSON body (or none for `Value::Null`) with an optional bearer token.
pub async fn send_json(
    method: &str,
    url: &str,
    bearer: Option<&str>,
    body: &serde_json::Value,
) -> Answer {
    let auth = bearer.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("content-type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("authorization", a.as_str()));
    }
    let body = if body.is_null() {
        empty()
    } else {
        full(body.to_string())
    };
    send(method, url, &headers, body).await
}

pub async fn get(url: &str) -> Answer {
    send("GET", url, &[], empty()).await
}

/// A route config block to the given upstream base URL.
pub fn route(name: &str, path_prefix: &str, upstream: &str) -> String {
    format!(
        "  - name: {name}\n    match: {{ path_prefix: {path_prefix} }}\n    upstream: {{ targets: [{upstream}] }}\n    auth: public\n"
    )
}
