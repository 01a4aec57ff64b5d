//! Outgoing mail: [`Mailer`] renders a [`Message`] from templates and delivers it in the
//! background, through SMTP (lettre) when `accounts.email.smtp_url` is set, else as `.eml`
//! files in `accounts.email.outbox_dir`.
//!
//! Owns: the templates ([`Templates`]), MIME building, the send queue, delivery with retry and
//! the mail counters. Must not: look up users or tokens (the caller passes what a message
//! shows), hold up or fail a request because mail is slow or down, or log a message's body,
//! its links (they carry one-time tokens) or the SMTP credentials.
//!
//! [`Mailer::send`] renders at once (a bad address is an error to the caller), then puts the
//! message on a bounded queue without waiting: when the queue is full the message is dropped,
//! logged and counted. A worker task delivers up to `concurrency` messages at a time, each in
//! up to `retry.attempts` tries with exponential backoff; a permanent SMTP rejection (5xx) is
//! not retried. Counts: [`Mailer::stats`] and `gatehouse_mail_messages_total{result}`.

pub mod message;
mod outbox;
pub mod smtp;
mod template;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lettre::address::{Address, AddressError, Envelope};
use lettre::message::header::{Header, HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use tokio::sync::{Notify, Semaphore, mpsc};

use crate::config::EmailConfig;
use crate::metrics::{MailResult, Metrics};

pub use message::{Message, MessageKind};
pub use smtp::{SmtpEndpoint, SmtpSecurity};
pub use template::Templates;

const LOG: &str = "gatehouse::mail";

/// Everything that can go wrong in this module.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    /// `accounts.email.smtp_url` cannot be used (the text never includes the URL).
    #[error("invalid SMTP URL: {0}")]
    SmtpUrl(String),
    #[error("invalid {what} address \"{address}\": {source}")]
    Address {
        what: &'static str,
        address: String,
        #[source]
        source: AddressError,
    },
    #[error("mail template {}: {reason}", path.display())]
    Template { path: PathBuf, reason: String },
    #[error("cannot read mail template {}: {source}", path.display())]
    TemplateIo {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// [`MailerOptions::extra_root_certs_pem`] holds no usable certificate.
    #[error("extra SMTP root certificates: {0}")]
    ExtraRoots(String),
    #[error("cannot build the message: {0}")]
    Build(#[from] lettre::error::Error),
    #[error("SMTP: {0}")]
    Smtp(#[from] lettre::transport::smtp::Error),
    #[error("cannot write to the outbox {}: {source}", dir.display())]
    Outbox {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("the mail queue is full")]
    QueueFull,
    #[error("the mailer has stopped")]
    Stopped,
    #[error("the mailer must be started inside a tokio runtime")]
    NoRuntime,
}

impl MailError {
    /// Whether trying again cannot help: the server rejected the message for good (5xx) or
    /// the client refused it.
    fn is_permanent(&self) -> bool {
        match self {
            MailError::Smtp(e) => e.is_permanent() || e.is_client(),
            _ => false,
        }
    }
}

/// Tries and waits between tries: the wait after try `n` is `first_delay * 3^(n-1)`, at most
/// `max_delay`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries in all, at least 1.
    pub attempts: u32,
    pub first_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    /// 5 tries, waiting 1 s, 3 s, 9 s and 27 s between them (40 s in all).
    fn default() -> Self {
        RetryPolicy {
            attempts: 5,
            first_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The wait after failed try `attempt` (1-based).
    pub fn delay_after(&self, attempt: u32) -> Duration {
        let factor = 3u32.saturating_pow(attempt.saturating_sub(1));
        self.first_delay.saturating_mul(factor).min(self.max_delay)
    }
}

/// Tuning of a [`Mailer`]; `Default` is what the gateway uses.
#[derive(Debug, Clone)]
pub struct MailerOptions {
    /// Messages waiting for delivery before `send` drops new ones.
    pub queue_capacity: usize,
    /// Messages delivered at the same time.
    pub concurrency: usize,
    pub retry: RetryPolicy,
    /// Deadline of one delivery try: connecting, TLS, the whole SMTP dialogue (lettre bounds
    /// only the TCP connect), or the outbox write. A try that runs out is retried.
    pub attempt_timeout: Duration,
    /// PEM certificates trusted for `smtps://` and STARTTLS in addition to Mozilla's roots
    /// (a private relay's CA; tests).
    pub extra_root_certs_pem: Option<Vec<u8>>,
}

impl Default for MailerOptions {
    fn default() -> Self {
        MailerOptions {
            queue_capacity: 1024,
            concurrency: 4,
            retry: RetryPolicy::default(),
            attempt_timeout: Duration::from_secs(30),
            extra_root_certs_pem: None,
        }
    }
}

/// Counts since the mailer started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MailStats {
    /// Delivered to the SMTP server, or written to the outbox.
    pub sent: u64,
    /// Given up on: every try failed, the server rejected it, or it could not be built.
    pub failed: u64,
    /// Not queued because the queue was full.
    pub dropped: u64,
    /// Failed tries that were tried again.
    pub retried: u64,
    /// Queued or being delivered now.
    pub pending: u64,
}

/// Sends mail in the background. Cheap to clone; the worker stops once every clone is dropped
/// and the queue is empty.
#[derive(Clone)]
pub struct Mailer {
    inner: Arc<Inner>,
}

struct Inner {
    queue: mpsc::Sender<Job>,
    from: Mailbox,
    /// The sender's display name, `{{app_name}}` in templates.
    app_name: String,
    /// The sender's domain, right-hand side of Message-IDs.
    id_domain: String,
    templates: Templates,
    /// `smtp host:port (security)` or `outbox DIR`, for logs.
    backend: String,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailer")
            .field("backend", &self.inner.backend)
            .field("from", &self.inner.from.to_string())
            .finish_non_exhaustive()
    }
}

struct Counters {
    sent: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
    retried: AtomicU64,
    pending: AtomicU64,
    /// Woken whenever `pending` drops to zero.
    idle: Notify,
    metrics: Arc<Metrics>,
}

impl Counters {
    fn count(&self, result: MailResult) {
        let counter = match result {
            MailResult::sent => &self.sent,
            MailResult::failed => &self.failed,
            MailResult::dropped => &self.dropped,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.metrics.mail(result);
    }

    /// One queued message is done with (delivered, given up on, or not queued after all).
    fn finish(&self) {
        if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle.notify_waiters();
        }
    }
}

/// One rendered message on its way.
struct Job {
    /// Local part of the Message-ID: names the message in logs and its outbox file.
    id: String,
    kind: &'static str,
    /// The recipient's domain: logs name it rather than the whole address.
    to_domain: String,
    envelope: Envelope,
    /// The RFC 5322 message as sent.
    raw: bytes::Bytes,
}

enum Backend {
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    Outbox(PathBuf),
}

impl Backend {
    async fn deliver(&self, job: &Job) -> Result<(), MailError> {
        match self {
            Backend::Smtp(transport) => {
                transport.send_raw(&job.envelope, &job.raw).await?;
                Ok(())
            }
            Backend::Outbox(dir) => {
                let millis = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis());
                let stem = format!("{millis:013}-{}-{}", job.kind, job.id);
                let (target, raw) = (dir.clone(), job.raw.clone());
                tokio::task::spawn_blocking(move || outbox::write(&target, &stem, &raw))
                    .await
                    .unwrap_or_else(|join| Err(std::io::Error::other(join.to_string())))
                    .map(drop)
                    .map_err(|source| MailError::Outbox {
                        dir: dir.clone(),
                        source,
                    })
            }
        }
    }
}

/// `Auto-Submitted: auto-generated` (RFC 3834): vacation responders do not answer.
#[derive(Clone)]
struct AutoSubmitted;

impl Header for AutoSubmitted {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("Auto-Submitted")
    }

    fn parse(_: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(AutoSubmitted)
    }

    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), "auto-generated".to_owned())
    }
}

impl Mailer {
    /// Starts a mailer for `config` with the default [`MailerOptions`]. Must run inside a tokio
    /// runtime (it spawns the delivery worker); reads the template files, so call it at start
    /// rather than on a request.
    pub fn start(config: &EmailConfig, metrics: Arc<Metrics>) -> Result<Mailer, MailError> {
        Mailer::start_with(config, metrics, MailerOptions::default())
    }

    pub fn start_with(
        config: &EmailConfig,
        metrics: Arc<Metrics>,
        options: MailerOptions,
    ) -> Result<Mailer, MailError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| MailError::NoRuntime)?;
        let from: Mailbox = config.from.parse().map_err(|source| MailError::Address {
            what: "sender",
            address: config.from.clone(),
            source,
        })?;
        let templates = Templates::load(config.templates_dir.as_deref())?;
        let (backend, description) = match &config.smtp_url {
            Some(url) => {
                let endpoint = SmtpEndpoint::parse(url)?;
                if endpoint.username.is_some()
                    && endpoint.security == SmtpSecurity::Plain
                    && !endpoint.is_loopback()
                {
                    tracing::warn!(
                        target: LOG,
                        relay = %endpoint,
                        "SMTP credentials will cross the network unencrypted: use smtps:// or \
                         smtp+starttls://"
                    );
                }
                let transport = endpoint.transport(
                    options.attempt_timeout,
                    options.extra_root_certs_pem.as_deref(),
                )?;
                (Backend::Smtp(transport), format!("smtp {endpoint}"))
            }
            None => (
                Backend::Outbox(config.outbox_dir.clone()),
                format!("outbox {}", config.outbox_dir.display()),
            ),
        };
        let counters = Arc::new(Counters {
            sent: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            pending: AtomicU64::new(0),
            idle: Notify::new(),
            metrics,
        });
        let (queue, receiver) = mpsc::channel(options.queue_capacity.max(1));
        runtime.spawn(deliver_queue(
            receiver,
            Arc::new(backend),
            Arc::clone(&counters),
            Delivery {
                retry: options.retry,
                attempt_timeout: options.attempt_timeout,
            },
            options.concurrency.max(1),
        ));
        tracing::info!(
            target: LOG,
            backend = %description,
            from = %from,
            templates_overridden = templates.overridden().len(),
            "mailer started"
        );
        let app_name = from
            .name
            .clone()
            .filter(|n| !n.trim().is_empty())
            .unwrap_or_else(|| "Gatehouse".to_owned());
        let id_domain = from.email.domain().to_owned();
        Ok(Mailer {
            inner: Arc::new(Inner {
                queue,
                from,
                app_name,
                id_domain,
                templates,
                backend: description,
                counters,
            }),
        })
    }

    /// Renders `message` and queues it for delivery; never waits. `Err` when the recipient
    /// address is invalid, or when the queue is full or closed (the message is then dropped,
    /// logged and counted; callers answering a request usually carry on regardless).
    pub fn send(&self, message: Message) -> Result<(), MailError> {
        let kind = message.kind.name();
        let counters = &self.inner.counters;
        let job = match self.build(&message) {
            Ok(job) => job,
            Err(e) => {
                counters.count(MailResult::failed);
                tracing::warn!(target: LOG, kind, error = %e, "mail not sent: cannot build it");
                return Err(e);
            }
        };
        let id = job.id.clone();
        counters.pending.fetch_add(1, Ordering::AcqRel);
        match self.inner.queue.try_send(job) {
            Ok(()) => {
                tracing::debug!(target: LOG, kind, id, "mail queued");
                Ok(())
            }
            Err(e) => {
                counters.count(MailResult::dropped);
                counters.finish();
                let (error, reason) = match e {
                    mpsc::error::TrySendError::Full(_) => (MailError::QueueFull, "queue full"),
                    mpsc::error::TrySendError::Closed(_) => (MailError::Stopped, "mailer stopped"),
                };
                tracing::warn!(target: LOG, kind, id, reason, "mail dropped");
                Err(error)
            }
        }
    }

    /// Waits until every message queued so far has been delivered or given up on (retries
    /// included). For tests and graceful shutdown; bound it with a timeout there.
    pub async fn flush(&self) {
        let counters = &self.inner.counters;
        loop {
            let idle = counters.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if counters.pending.load(Ordering::Acquire) == 0 {
                return;
            }
            idle.await;
        }
    }

    pub fn stats(&self) -> MailStats {
        let c = &self.inner.counters;
        MailStats {
            sent: c.sent.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            retried: c.retried.load(Ordering::Relaxed),
            pending: c.pending.load(Ordering::Acquire),
        }
    }

    /// `smtp host:port (security)` or `outbox DIR`.
    pub fn backend(&self) -> &str {
        &self.inner.backend
    }

    /// The message as it would be sent (RFC 5322 bytes), without sending it: for previews.
    pub fn render(&self, message: &Message) -> Result<Vec<u8>, MailError> {
        self.build(message).map(|job| job.raw.to_vec())
    }

    fn build(&self, message: &Message) -> Result<Job, MailError> {
        let inner = &self.inner;
        let address: Address = message.to.parse().map_err(|source| MailError::Address {
            what: "recipient",
            address: message.to.clone(),
            source,
        })?;
        let display_name = message
            .user_name
            .as_deref()
            .map(|n| n.chars().filter(|c| !c.is_control()).collect::<String>())
            .filter(|n| !n.trim().is_empty());
        let to_domain = address.domain().to_owned();
        let rendered = inner.templates.render(message, &inner.app_name);
        let id = uuid::Uuid::new_v4().simple().to_string();
        let email = lettre::Message::builder()
            .from(inner.from.clone())
            .to(Mailbox::new(display_name, address))
            .subject(rendered.subject)
            .message_id(Some(format!("<{id}@{}>", inner.id_domain)))
            .header(AutoSubmitted)
            .multipart(MultiPart::alternative_plain_html(
                rendered.text,
                rendered.html,
            ))?;
        Ok(Job {
            id,
            kind: message.kind.name(),
            to_domain,
            envelope: email.envelope().clone(),
            raw: email.formatted().into(),
        })
    }
}

/// The worker: takes jobs off the queue and delivers up to `concurrency` at once. Ends when
/// every sender is gone and the queue is empty.
async fn deliver_queue(
    mut receiver: mpsc::Receiver<Job>,
    backend: Arc<Backend>,
    counters: Arc<Counters>,
    delivery: Delivery,
    concurrency: usize,
) {
    let slots = Arc::new(Semaphore::new(concurrency));
    while let Some(job) = receiver.recv().await {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            // The semaphore is never closed; give the job up rather than lose count of it.
            counters.count(MailResult::failed);
            counters.finish();
            continue;
        };
        let backend = Arc::clone(&backend);
        let counters = Arc::clone(&counters);
        tokio::spawn(async move {
            deliver(&backend, &job, &counters, delivery).await;
            drop(slot);
            counters.finish();
        });
    }
}

/// How each job is delivered.
#[derive(Debug, Clone, Copy)]
struct Delivery {
    retry: RetryPolicy,
    attempt_timeout: Duration,
}

async fn deliver(backend: &Backend, job: &Job, counters: &Counters, delivery: Delivery) {
    let Delivery {
        retry,
        attempt_timeout,
    } = delivery;
    let attempts = retry.attempts.max(1);
    let (kind, id, to_domain) = (job.kind, job.id.as_str(), job.to_domain.as_str());
    for attempt in 1..=attempts {
        let result = tokio::time::timeout(attempt_timeout, backend.deliver(job))
            .await
            .unwrap_or(Err(MailError::Timeout(attempt_timeout)));
        // Errors are logged by their Display: server replies and I/O errors, never the body.
        match result {
            Ok(()) => {
                counters.count(MailResult::sent);
                tracing::info!(target: LOG, kind, id, to_domain, attempt, "mail sent");
                return;
            }
            Err(e) if e.is_permanent() || attempt == attempts => {
                counters.count(MailResult::failed);
                tracing::error!(
                    target: LOG, kind, id, to_domain, attempt, error = %e,
                    "mail not delivered; giving up"
                );
                return;
            }
            Err(e) => {
                counters.retried.fetch_add(1, Ordering::Relaxed);
                let wait = retry.delay_after(attempt);
                tracing::warn!(
                    target: LOG, kind, id, to_domain, attempt, retry_in_ms = wait.as_millis() as u64,
                    error = %e, "mail delivery failed; retrying"
                );
                tokio::time::sleep(wait).await;
            }
        }
    }
}
