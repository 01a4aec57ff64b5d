//! What the account flows ask the mailer to send: a typed [`Message`] (recipient and kind, each
//! kind with the values its templates need) and the placeholder values it renders to.
//!
//! Plain data: no lookups, no I/O. The caller has the user at hand and passes what is needed.

use std::time::Duration;

use time::{OffsetDateTime, UtcOffset};

/// One message to one recipient.
#[derive(Clone, PartialEq, Eq)]
pub struct Message {
    /// The recipient's address, `user@example.com`.
    pub to: String,
    /// The recipient's display name, if known: templates greet by it, else by address.
    pub user_name: Option<String>,
    pub kind: MessageKind,
}

/// Which message, with the values its templates show. Links carry one-time tokens: they are
/// never logged.
#[derive(Clone, PartialEq, Eq)]
pub enum MessageKind {
    /// After registration.
    Welcome,
    /// Proves the address: `link` opens the verify-email flow.
    VerifyEmail { link: String, expires_in: Duration },
    /// Forgot-password: `link` leads to choosing a new password.
    ResetPassword { link: String, expires_in: Duration },
    /// Passwordless sign-in.
    MagicLink { link: String, expires_in: Duration },
    /// An admin invited this address; `invited_by` is shown when given (a name or address).
    Invitation {
        link: String,
        expires_in: Duration,
        invited_by: Option<String>,
    },
    /// Notice after a password change or reset.
    PasswordChanged { at: OffsetDateTime },
    /// Notice of a sign-in (optional feature of the flows).
    NewSignIn {
        at: OffsetDateTime,
        ip: Option<String>,
        user_agent: Option<String>,
    },
    /// Someone tried to register this address, which has an account
    /// (`accounts.conceal_existing`: the answer did not say so, the owner hears of it).
    AccountExists,
}

/// Every kind's name (the stem of its template files) and the placeholders its templates may
/// use, in the order of [`MessageKind::name`].
pub(crate) const KINDS: &[(&str, &[&str])] = &[
    ("welcome", COMMON),
    ("verify_email", LINK),
    ("reset_password", LINK),
    ("magic_link", LINK),
    (
        "invitation",
        &[
            "app_name",
            "name",
            "email",
            "link",
            "expires_in",
            "invited_by",
        ],
    ),
    ("password_changed", &["app_name", "name", "email", "time"]),
    (
        "new_sign_in",
        &["app_name", "name", "email", "time", "ip", "user_agent"],
    ),
    ("account_exists", COMMON),
];

const COMMON: &[&str] = &["app_name", "name", "email"];
const LINK: &[&str] = &["app_name", "name", "email", "link", "expires_in"];

impl Message {
    pub fn new(to: impl Into<String>, kind: MessageKind) -> Message {
        Message {
            to: to.into(),
            user_name: None,
            kind,
        }
    }

    /// Sets the display name used in the greeting and the `To` header.
    pub fn with_user_name(mut self, name: impl Into<String>) -> Message {
        self.user_name = Some(name.into());
        self
    }

    /// The values of the placeholders of this message's templates (see [`KINDS`]).
    pub(crate) fn variables(&self, app_name: &str) -> Vec<(&'static str, String)> {
        let name = self
            .user_name
            .as_deref()
            .filter(|n| !n.trim().is_empty())
            .unwrap_or(&self.to);
        let mut vars = vec![
            ("app_name", app_name.to_owned()),
            ("name", name.to_owned()),
            ("email", self.to.clone()),
        ];
        let unknown = || "unknown".to_owned();
        match &self.kind {
            MessageKind::Welcome | MessageKind::AccountExists => {}
            MessageKind::VerifyEmail { link, expires_in }
            | MessageKind::ResetPassword { link, expires_in }
            | MessageKind::MagicLink { link, expires_in } => {
                vars.push(("link", link.clone()));
                vars.push(("expires_in", human_duration(*expires_in)));
            }
            MessageKind::Invitation {
                link,
                expires_in,
                invited_by,
            } => {
                vars.push(("link", link.clone()));
                vars.push(("expires_in", human_duration(*expires_in)));
                let by = invited_by
                    .clone()
                    .filter(|b| !b.trim().is_empty())
                    .unwrap_or_else(|| "An administrator".to_owned());
                vars.push(("invited_by", by));
            }
            MessageKind::PasswordChanged { at } => vars.push(("time", utc_minute(*at))),
            MessageKind::NewSignIn { at, ip, user_agent } => {
                vars.push(("time", utc_minute(*at)));
                vars.push(("ip", ip.clone().unwrap_or_else(unknown)));
                vars.push(("user_agent", user_agent.clone().unwrap_or_else(unknown)));
            }
        }
        vars
    }
}

// Links carry tokens: Debug shows the kind and recipient only.
impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Message")
            .field("kind", &self.kind.name())
            .field("to", &self.to)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for MessageKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl MessageKind {
    /// The kind's name: the stem of its template files (`verify_email.html`) and its label in
    /// logs and outbox file names.
    pub fn name(&self) -> &'static str {
        match self {
            MessageKind::Welcome => "welcome",
            MessageKind::VerifyEmail { .. } => "verify_email",
            MessageKind::ResetPassword { .. } => "reset_password",
            MessageKind::MagicLink { .. } => "magic_link",
            MessageKind::Invitation { .. } => "invitation",
            MessageKind::PasswordChanged { .. } => "password_changed",
            MessageKind::NewSignIn { .. } => "new_sign_in",
            MessageKind::AccountExists => "account_exists",
        }
    }
}

/// `24 hours`, `1 hour`, `10 minutes`, `7 days`: the largest unit that divides the duration,
/// except that up to two days read better in hours.
pub(crate) fn human_duration(d: Duration) -> String {
    let secs = d.as_secs();
    let plural = |n: u64, unit: &str| {
        if n == 1 {
            format!("1 {unit}")
        } else {
            format!("{n} {unit}s")
        }
    };
    if secs >= 2 * 86_400 && secs.is_multiple_of(86_400) {
        plural(secs / 86_400, "day")
    } else if secs >= 3600 && secs.is_multiple_of(3600) {
        plural(secs / 3600, "hour")
    } else if secs >= 60 && secs.is_multiple_of(60) {
        plural(secs / 60, "minute")
    } else {
        plural(secs, "second")
    }
}

/// `2026-03-01 12:34 UTC`.
fn utc_minute(at: OffsetDateTime) -> String {
    let at = at.to_offset(UtcOffset::UTC);
    format!(
        "{}-{:02}-{:02} {:02}:{:02} UTC",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute()
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_naturally() {
        let cases = [
            (86_400, "24 hours"),
            (3600, "1 hour"),
            (600, "10 minutes"),
            (7 * 86_400, "7 days"),
            (2 * 86_400, "2 days"),
            (90, "90 seconds"),
            (60, "1 minute"),
            (5400, "90 minutes"),
        ];
        for (secs, text) in cases {
            assert_eq!(human_duration(Duration::from_secs(secs)), text);
        }
    }

    #[test]
    fn variables_match_the_declared_placeholders() {
        let at = OffsetDateTime::from_unix_timestamp(1_767_225_600).unwrap();
        let link = || "https://app.example.com/verify?token=t".to_owned();
        let hour = Duration::from_secs(3600);
        let kinds = [
            MessageKind::Welcome,
            MessageKind::VerifyEmail {
                link: link(),
                expires_in: hour,
            },
            MessageKind::ResetPassword {
                link: link(),
                expires_in: hour,
            },
            MessageKind::MagicLink {
                link: link(),
                expires_in: hour,
            },
            MessageKind::Invitation {
                link: link(),
                expires_in: hour,
                invited_by: None,
            },
            MessageKind::PasswordChanged { at },
            MessageKind::NewSignIn {
                at,
                ip: Some("192.0.2.1".into()),
                user_agent: None,
            },
            MessageKind::AccountExists,
        ];
        assert_eq!(kinds.len(), KINDS.len());
        for (kind, (name, placeholders)) in kinds.into_iter().zip(KINDS) {
            assert_eq!(kind.name(), *name);
            let vars = Message::new("a@example.com", kind).variables("App");
            let names: Vec<&str> = vars.iter().map(|(n, _)| *n).collect();
            assert_eq!(names, *placeholders, "{name}");
        }
    }

    #[test]
    fn fallbacks_and_formats() {
        let at = OffsetDateTime::from_unix_timestamp(1_767_225_600).unwrap();
        let m = Message::new(
            "a@example.com",
            MessageKind::NewSignIn {
                at,
                ip: None,
                user_agent: Some("curl/8".into()),
            },
        );
        let vars = m.clone().variables("App");
        let get = |vars: &[(&str, String)], k: &str| {
            vars.iter().find(|(n, _)| *n == k).unwrap().1.clone()
        };
        assert_eq!(get(&vars, "name"), "a@example.com");
        assert_eq!(get(&vars, "time"), "2026-01-01 00:00 UTC");
        assert_eq!(get(&vars, "ip"), "unknown");
        assert_eq!(get(&vars, "user_agent"), "curl/8");
        let vars = m.with_user_name("Ada").variables("App");
        assert_eq!(get(&vars, "name"), "Ada");
        let invite = Message::new(
            "b@example.com",
            MessageKind::Invitation {
                link: "l".into(),
                expires_in: Duration::from_secs(7 * 86_400),
                invited_by: None,
            },
        );
        let vars = invite.variables("App");
        assert_eq!(get(&vars, "invited_by"), "An administrator");
        assert_eq!(get(&vars, "expires_in"), "7 days");
    }

    #[test]
    fn debug_never_shows_the_link() {
        let m = Message::new(
            "a@example.com",
            MessageKind::MagicLink {
                link: "https://x/?token=SECRET".into(),
                expires_in: Duration::from_secs(600),
            },
        );
        let shown = format!("{m:?}");
        assert!(!shown.contains("SECRET"), "{shown}");
        assert!(shown.contains("magic_link"), "{shown}");
    }
}
