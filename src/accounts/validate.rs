//! Field rules of the account API (SPEC section 5): what a valid email, username, name and
//! password look like. Pure functions; the callers collect every issue before answering.

use crate::auth::password::{PolicyViolation, check_policy};

/// One wrong field and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldIssue {
    pub field: &'static str,
    pub message: String,
    /// What kind of issue it is, so a lone password problem can get its own code.
    pub kind: IssueKind,
}

/// Lets the HTTP layer answer `passwords_do_not_match` or `weak_password` when that is the
/// only problem, and `validation_failed` otherwise (SPEC section 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssueKind {
    Invalid,
    Mismatch,
    WeakPassword,
}

impl FieldIssue {
    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        FieldIssue {
            field,
            message: message.into(),
            kind: IssueKind::Invalid,
        }
    }
}

/// Longest accepted email (RFC 5321's path limit).
const MAX_EMAIL: usize = 254;
/// Longest accepted display name, in characters.
const MAX_NAME: usize = 200;

/// A syntactic check only: one `@`, a non-empty local part, a dotted domain, no spaces or
/// control characters. Whether the address works is what verification mails prove.
pub fn email(value: &str, issues: &mut Vec<FieldIssue>) {
    let v = value.trim();
    let ok = v.len() <= MAX_EMAIL
        && !v.chars().any(|c| c.is_whitespace() || c.is_control())
        && match v.split_once('@') {
            Some((local, domain)) => {
                !local.is_empty()
                    && !domain.contains('@')
                    && domain.contains('.')
                    && !domain.starts_with('.')
                    && !domain.ends_with('.')
                    && !domain.contains("..")
            }
            None => false,
        };
    if !ok {
        issues.push(FieldIssue::invalid("email", "is not a valid email address"));
    }
}

/// SPEC section 5: 3–32 of `[A-Za-z0-9_-]`, case-sensitive.
pub fn username(value: &str, issues: &mut Vec<FieldIssue>) {
    let ok = (3..=32).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !ok {
        issues.push(FieldIssue::invalid(
            "username",
            "must be 3 to 32 letters, digits, '_' or '-'",
        ));
    }
}

/// A display name: not blank, bounded, no control characters.
pub fn name(value: &str, issues: &mut Vec<FieldIssue>) {
    let ok = !value.trim().is_empty()
        && value.chars().count() <= MAX_NAME
        && !value.chars().any(char::is_control);
    if !ok {
        issues.push(FieldIssue::invalid(
            "name",
            format!("must be 1 to {MAX_NAME} characters without control characters"),
        ));
    }
}

/// The names of a new account: an email or a username (at least one), each valid when
/// given, and a valid display name when given.
pub fn identity(
    email: Option<&str>,
    username: Option<&str>,
    display_name: Option<&str>,
    issues: &mut Vec<FieldIssue>,
) {
    if email.is_none() && username.is_none() {
        issues.push(FieldIssue::invalid(
            "email",
            "email or username is required",
        ));
    }
    if let Some(e) = email {
        self::email(e, issues);
    }
    if let Some(u) = username {
        self::username(u, issues);
    }
    if let Some(n) = display_name {
        name(n, issues);
    }
}

/// A new password against the configured policy, under the given field name.
pub fn new_password(
    field: &'static str,
    value: &str,
    min_length: usize,
    issues: &mut Vec<FieldIssue>,
) {
    if let Err(violation) = check_policy(value, min_length) {
        issues.push(FieldIssue {
            field,
            message: violation.message(),
            kind: match violation {
                PolicyViolation::TooShort { .. }
                | PolicyViolation::TooLong { .. }
                | PolicyViolation::Common => IssueKind::WeakPassword,
            },
        });
    }
}

/// `password_confirmation`, when sent, must equal `password`.
pub fn confirmation(password: &str, confirmation: Option<&str>, issues: &mut Vec<FieldIssue>) {
    if confirmation.is_some_and(|c| c != password) {
        issues.push(FieldIssue {
            field: "password_confirmation",
            message: "does not match password".into(),
            kind: IssueKind::Mismatch,
        });
    }
}

/// Everything a self-made account must get right (sign-up, accepting an invitation): its
/// names ([`identity`]), a password (required, the policy) and the confirmation when one was
/// sent. All issues at once.
pub struct SignUp<'a> {
    pub email: Option<&'a str>,
    pub username: Option<&'a str>,
    pub name: Option<&'a str>,
    pub password: &'a str,
    pub confirmation: Option<&'a str>,
}

impl SignUp<'_> {
    pub fn issues(&self, min_length: usize) -> Vec<FieldIssue> {
        let mut issues = Vec::new();
        identity(self.email, self.username, self.name, &mut issues);
        if self.password.is_empty() {
            issues.push(FieldIssue::invalid("password", "is required"));
        } else {
            new_password("password", self.password, min_length, &mut issues);
            confirmation(self.password, self.confirmation, &mut issues);
        }
        issues
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issues_of(f: impl FnOnce(&mut Vec<FieldIssue>)) -> Vec<FieldIssue> {
        let mut v = Vec::new();
        f(&mut v);
        v
    }

    #[test]
    fn emails() {
        for good in ["a@b.co", "first.last+tag@sub.example.com", " A@B.CO "] {
            assert!(issues_of(|i| email(good, i)).is_empty(), "{good}");
        }
        for bad in [
            "", "a", "@b.co", "a@", "a@b", "a@@b.co", "a b@c.co", "a@.b.co", "a@b..co", "a@b.co.",
        ] {
            assert_eq!(issues_of(|i| email(bad, i)).len(), 1, "{bad}");
        }
        assert_eq!(
            issues_of(|i| email(&format!("{}@b.co", "a".repeat(260)), i)).len(),
            1
        );
    }

    #[test]
    fn usernames() {
        for good in ["abc", "A_b-9", &"x".repeat(32)] {
            assert!(issues_of(|i| username(good, i)).is_empty(), "{good}");
        }
        for bad in ["ab", &"x".repeat(33), "a b", "é_é", "a.b", "a@b"] {
            assert_eq!(issues_of(|i| username(bad, i)).len(), 1, "{bad}");
        }
    }

    #[test]
    fn names_and_confirmation() {
        assert!(issues_of(|i| name("Ada Lovelace", i)).is_empty());
        assert_eq!(issues_of(|i| name("  ", i)).len(), 1);
        assert_eq!(issues_of(|i| name("a\u{0}b", i)).len(), 1);
        assert!(issues_of(|i| confirmation("x", None, i)).is_empty());
        assert!(issues_of(|i| confirmation("x", Some("x"), i)).is_empty());
        let mism = issues_of(|i| confirmation("x", Some("y"), i));
        assert_eq!(mism[0].kind, IssueKind::Mismatch);
    }

    #[test]
    fn weak_passwords_are_marked() {
        let v = issues_of(|i| new_password("password", "short", 8, i));
        assert_eq!(v[0].kind, IssueKind::WeakPassword);
        let v = issues_of(|i| new_password("password", "password1", 8, i));
        assert_eq!(v[0].kind, IssueKind::WeakPassword);
        assert!(issues_of(|i| new_password("password", "vivid-otter-canyon-42", 8, i)).is_empty());
    }
}
