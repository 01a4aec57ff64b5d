//! Client-visible failures and their one rendering: `application/problem+json` (RFC 9457).
//!
//! Every error the gateway itself produces ends here as an [`ApiError`]; `status()` and `code()`
//! are the only place a failure becomes an HTTP status, and they match exhaustively so a new
//! variant forces a decision. The codes are SPEC section 4's and are stable.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use crate::auth::AuthError;
use crate::auth::policy::Denied;
use crate::body::ResBody;
use crate::ratelimit::route::{policy_value, state_value};
use crate::store::StoreError;

/// Whose fault a failure is; it decides the log level and nothing else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Client,
    Upstream,
    Internal,
}

/// One wrong field of a request body (`validation_failed`'s `errors[]`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// The IETF `RateLimit-Policy` / `RateLimit` items of a 429 (draft-ietf-httpapi-ratelimit-headers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitInfo {
    /// The policy item's name (route name, `default`, `login`, ...).
    pub policy: String,
    /// Requests allowed per window.
    pub quota: u32,
    /// Window in seconds.
    pub window_secs: u64,
    /// Seconds until a request is allowed again (rounded up, at least 1).
    pub retry_after_secs: u64,
}

/// `RateLimit-Policy` (draft-ietf-httpapi-ratelimit-headers).
pub static RATELIMIT_POLICY: http::HeaderName = http::HeaderName::from_static("ratelimit-policy");
/// `RateLimit` (draft-ietf-httpapi-ratelimit-headers).
pub static RATELIMIT: http::HeaderName = http::HeaderName::from_static("ratelimit");

impl RateLimitInfo {
    /// The `RateLimit-Policy` and `RateLimit` values when nothing is left in the window.
    pub fn header_values(&self) -> (String, String) {
        (
            policy_value(&self.policy, self.quota, self.window_secs),
            state_value(&self.policy, 0, self.retry_after_secs),
        )
    }
}

/// The `mfa_token` of an `mfa_required` answer: shown to the client in the body, never in
/// a log (its `Debug` is redacted).
#[derive(Clone, PartialEq, Eq)]
pub struct MfaToken(pub String);

impl std::fmt::Debug for MfaToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MfaToken(<redacted>)")
    }
}

/// A failure answered by the gateway itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("{} field(s) are invalid", errors.len())]
    ValidationFailed { errors: Vec<FieldError> },
    #[error("password and password_confirmation differ")]
    PasswordsDoNotMatch,
    #[error("password {0}")]
    WeakPassword(String),
    #[error("this route requires a credential")]
    MissingCredentials,
    #[error("wrong email, username or password")]
    InvalidCredentials,
    #[error(
        "a second factor is required: send the mfa_token with a TOTP or recovery code to mfa/verify"
    )]
    MfaRequired { mfa_token: MfaToken },
    #[error("{0}")]
    InvalidToken(String),
    #[error("the access token has expired")]
    TokenExpired,
    #[error("the session of this token has ended")]
    SessionRevoked,
    #[error("the API key is not valid")]
    InvalidApiKey,
    #[error("publishable keys are not allowed here")]
    PublishableKeyNotAllowed,
    #[error("cross-site request refused: Origin or X-CSRF-Token required")]
    CsrfFailed,
    #[error("not allowed")]
    Forbidden,
    #[error("this account is disabled")]
    AccountDisabled,
    #[error("the email address of this account is not verified yet")]
    EmailNotVerified,
    #[error("{field} is already taken")]
    AlreadyExists { field: &'static str },
    #[error("TOTP MFA is already enabled; disable it first to enrol a new secret")]
    MfaAlreadyEnabled,
    #[error("too many requests; retry in {} s", .0.retry_after_secs)]
    RateLimited(RateLimitInfo),
    #[error("no route matches this request")]
    NoRoute,
    #[error("method not allowed")]
    MethodNotAllowed { allow: Vec<http::Method> },
    #[error("not found")]
    NotFound,
    #[error("request body larger than {limit} bytes")]
    BodyTooLarge { limit: u64 },
    #[error("request headers larger than {limit} bytes")]
    HeadersTooLarge { limit: u64 },
    #[error("upstream unavailable: {0}")]
    UpstreamUnavailable(String),
    #[error("upstream did not answer within {0:?}")]
    UpstreamTimeout(std::time::Duration),
    #[error("service unavailable: {0}")]
    StoreUnavailable(String),
    #[error("the gateway is overloaded: {0}")]
    Overloaded(String),
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidRequest(_)
            | ApiError::ValidationFailed { .. }
            | ApiError::PasswordsDoNotMatch
            | ApiError::WeakPassword(_) => StatusCode::BAD_REQUEST,
            ApiError::MissingCredentials
            | ApiError::InvalidCredentials
            | ApiError::MfaRequired { .. }
            | ApiError::InvalidToken(_)
            | ApiError::TokenExpired
            | ApiError::SessionRevoked
            | ApiError::InvalidApiKey => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden
            | ApiError::AccountDisabled
            | ApiError::EmailNotVerified
            | ApiError::PublishableKeyNotAllowed
            | ApiError::CsrfFailed => StatusCode::FORBIDDEN,
            ApiError::AlreadyExists { .. } | ApiError::MfaAlreadyEnabled => StatusCode::CONFLICT,
            ApiError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::NoRoute | ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ApiError::UpstreamUnavailable(_) => StatusCode::BAD_GATEWAY,
            ApiError::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::StoreUnavailable(_) | ApiError::Overloaded(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable machine-readable code (SPEC section 4).
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::InvalidRequest(_) => "invalid_request",
            ApiError::ValidationFailed { .. } => "validation_failed",
            ApiError::PasswordsDoNotMatch => "passwords_do_not_match",
            ApiError::WeakPassword(_) => "weak_password",
            ApiError::MissingCredentials => "missing_credentials",
            ApiError::InvalidCredentials => "invalid_credentials",
            ApiError::MfaRequired { .. } => "mfa_required",
            ApiError::InvalidToken(_) => "invalid_token",
            ApiError::TokenExpired => "token_expired",
            ApiError::SessionRevoked => "session_revoked",
            ApiError::InvalidApiKey => "invalid_api_key",
            ApiError::PublishableKeyNotAllowed => "publishable_key_not_allowed",
            ApiError::CsrfFailed => "csrf_failed",
            ApiError::Forbidden => "forbidden",
            ApiError::AccountDisabled => "account_disabled",
            ApiError::EmailNotVerified => "email_not_verified",
            ApiError::AlreadyExists { .. } | ApiError::MfaAlreadyEnabled => "already_exists",
            ApiError::RateLimited(_) => "rate_limited",
            ApiError::NoRoute => "no_route",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::NotFound => "not_found",
            ApiError::BodyTooLarge { .. } => "body_too_large",
            ApiError::HeadersTooLarge { .. } => "headers_too_large",
            ApiError::UpstreamUnavailable(_) => "upstream_unavailable",
            ApiError::UpstreamTimeout(_) => "upstream_timeout",
            ApiError::StoreUnavailable(_) => "store_unavailable",
            ApiError::Overloaded(_) => "overloaded",
            ApiError::Internal(_) => "internal_error",
        }
    }

    pub fn title(&self) -> &'static str {
        match self {
            ApiError::InvalidRequest(_) => "Invalid request",
            ApiError::ValidationFailed { .. } => "Validation failed",
            ApiError::PasswordsDoNotMatch => "Passwords do not match",
            ApiError::WeakPassword(_) => "Weak password",
            ApiError::MissingCredentials => "Missing credentials",
            ApiError::InvalidCredentials => "Invalid credentials",
            ApiError::MfaRequired { .. } => "MFA required",
            ApiError::InvalidToken(_) => "Invalid token",
            ApiError::TokenExpired => "Token expired",
            ApiError::SessionRevoked => "Session revoked",
            ApiError::InvalidApiKey => "Invalid API key",
            ApiError::PublishableKeyNotAllowed => "Publishable key not allowed",
            ApiError::CsrfFailed => "CSRF check failed",
            ApiError::Forbidden => "Forbidden",
            ApiError::AccountDisabled => "Account disabled",
            ApiError::EmailNotVerified => "Email not verified",
            ApiError::AlreadyExists { .. } | ApiError::MfaAlreadyEnabled => "Already exists",
            ApiError::RateLimited(_) => "Rate limited",
            ApiError::NoRoute => "No route",
            ApiError::MethodNotAllowed { .. } => "Method not allowed",
            ApiError::NotFound => "Not found",
            ApiError::BodyTooLarge { .. } => "Body too large",
            ApiError::HeadersTooLarge { .. } => "Headers too large",
            ApiError::UpstreamUnavailable(_) => "Upstream unavailable",
            ApiError::UpstreamTimeout(_) => "Upstream timeout",
            ApiError::StoreUnavailable(_) => "Store unavailable",
            ApiError::Overloaded(_) => "Overloaded",
            ApiError::Internal(_) => "Internal error",
        }
    }

    pub fn fault(&self) -> Fault {
        match self {
            ApiError::InvalidRequest(_)
            | ApiError::ValidationFailed { .. }
            | ApiError::PasswordsDoNotMatch
            | ApiError::WeakPassword(_)
            | ApiError::MissingCredentials
            | ApiError::InvalidCredentials
            | ApiError::MfaRequired { .. }
            | ApiError::InvalidToken(_)
            | ApiError::TokenExpired
            | ApiError::SessionRevoked
            | ApiError::InvalidApiKey
            | ApiError::PublishableKeyNotAllowed
            | ApiError::CsrfFailed
            | ApiError::Forbidden
            | ApiError::AccountDisabled
            | ApiError::EmailNotVerified
            | ApiError::AlreadyExists { .. }
            | ApiError::MfaAlreadyEnabled
            | ApiError::RateLimited(_)
            | ApiError::NoRoute
            | ApiError::MethodNotAllowed { .. }
            | ApiError::NotFound
            | ApiError::BodyTooLarge { .. }
            | ApiError::HeadersTooLarge { .. } => Fault::Client,
            ApiError::UpstreamUnavailable(_) | ApiError::UpstreamTimeout(_) => Fault::Upstream,
            ApiError::StoreUnavailable(_) | ApiError::Overloaded(_) | ApiError::Internal(_) => {
                Fault::Internal
            }
        }
    }

    /// Detail shown to the client. Internal details stay in the logs.
    fn detail(&self) -> String {
        match self {
            ApiError::Internal(_) => "the gateway failed to handle this request".to_owned(),
            ApiError::StoreUnavailable(_) => "the account store is unreachable".to_owned(),
            ApiError::Overloaded(_) => "too many requests are waiting; retry shortly".to_owned(),
            ApiError::UpstreamUnavailable(_) => "no upstream target could be reached".to_owned(),
            other => other.to_string(),
        }
    }

    /// Renders the problem document.
    pub fn into_response(self) -> Response<ResBody> {
        let status = self.status();
        let mut body = serde_json::json!({
            "type": "about:blank",
            "status": status.as_u16(),
            "code": self.code(),
            "title": self.title(),
            "detail": self.detail(),
        });
        match (&self, body.as_object_mut()) {
            (ApiError::ValidationFailed { errors }, Some(obj)) => {
                obj.insert("errors".into(), serde_json::json!(errors));
            }
            (ApiError::MfaRequired { mfa_token }, Some(obj)) => {
                obj.insert("mfa_token".into(), serde_json::json!(mfa_token.0));
            }
            _ => {}
        }
        let mut resp = Response::new(ResBody::full(Bytes::from(body.to_string())));
        *resp.status_mut() = status;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        match &self {
            // RFC 6750 section 3: no error attribute when no credential was sent, and
            // `invalid_token` when one was sent and refused.
            ApiError::MissingCredentials => {
                resp.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ApiError::InvalidToken(_)
            | ApiError::TokenExpired
            | ApiError::SessionRevoked
            | ApiError::InvalidApiKey => {
                resp.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer error=\"invalid_token\""),
                );
            }
            ApiError::Overloaded(_) => {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ApiError::RateLimited(info) => {
                let headers = resp.headers_mut();
                headers.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(info.retry_after_secs),
                );
                let (policy, state) = info.header_values();
                if let (Ok(p), Ok(s)) = (
                    HeaderValue::from_str(&policy),
                    HeaderValue::from_str(&state),
                ) {
                    headers.insert(RATELIMIT_POLICY.clone(), p);
                    headers.insert(RATELIMIT.clone(), s);
                }
            }
            _ => {}
        }
        if let ApiError::MethodNotAllowed { allow } = &self {
            let joined = allow
                .iter()
                .map(http::Method::as_str)
                .collect::<Vec<_>>()
                .join(", ");
            if let Ok(v) = HeaderValue::from_str(&joined) {
                resp.headers_mut().insert(header::ALLOW, v);
            }
        }
        resp
    }
}

impl From<Denied> for ApiError {
    /// How a refusal of the route policy is answered (SPEC section 4).
    fn from(d: Denied) -> Self {
        match d {
            Denied::Missing => ApiError::MissingCredentials,
            Denied::PublishableKey => ApiError::PublishableKeyNotAllowed,
            Denied::Forbidden => ApiError::Forbidden,
            Denied::Csrf => ApiError::CsrfFailed,
            Denied::Invalid(e) => e.into(),
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::InvalidApiKey => ApiError::InvalidApiKey,
            AuthError::Token(e) if e.is_expired() => ApiError::TokenExpired,
            AuthError::Token(e) => ApiError::InvalidToken(e.to_string()),
            AuthError::SessionRevoked => ApiError::SessionRevoked,
            AuthError::Store(StoreError::Unavailable(e)) => ApiError::StoreUnavailable(e),
            AuthError::Store(
                e @ (StoreError::NotFound
                | StoreError::Conflict { .. }
                | StoreError::InvalidCursor
                | StoreError::Internal(_)),
            ) => ApiError::Internal(e.to_string()),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    /// Walks every variant against the SPEC section 4 table.
    #[test]
    fn every_variant_has_the_spec_status_and_code() {
        let table: Vec<(ApiError, u16, &str)> = vec![
            (ApiError::InvalidRequest("x".into()), 400, "invalid_request"),
            (
                ApiError::ValidationFailed { errors: vec![] },
                400,
                "validation_failed",
            ),
            (ApiError::PasswordsDoNotMatch, 400, "passwords_do_not_match"),
            (ApiError::WeakPassword("x".into()), 400, "weak_password"),
            (ApiError::MissingCredentials, 401, "missing_credentials"),
            (ApiError::InvalidCredentials, 401, "invalid_credentials"),
            (
                ApiError::MfaRequired {
                    mfa_token: MfaToken("t".into()),
                },
                401,
                "mfa_required",
            ),
            (ApiError::MfaAlreadyEnabled, 409, "already_exists"),
            (ApiError::InvalidToken("x".into()), 401, "invalid_token"),
            (ApiError::TokenExpired, 401, "token_expired"),
            (ApiError::SessionRevoked, 401, "session_revoked"),
            (ApiError::Forbidden, 403, "forbidden"),
            (ApiError::InvalidApiKey, 401, "invalid_api_key"),
            (
                ApiError::PublishableKeyNotAllowed,
                403,
                "publishable_key_not_allowed",
            ),
            (ApiError::CsrfFailed, 403, "csrf_failed"),
            (ApiError::AccountDisabled, 403, "account_disabled"),
            (ApiError::EmailNotVerified, 403, "email_not_verified"),
            (
                ApiError::AlreadyExists { field: "email" },
                409,
                "already_exists",
            ),
            (
                ApiError::RateLimited(RateLimitInfo {
                    policy: "login".into(),
                    quota: 5,
                    window_secs: 900,
                    retry_after_secs: 3,
                }),
                429,
                "rate_limited",
            ),
            (ApiError::NoRoute, 404, "no_route"),
            (
                ApiError::MethodNotAllowed { allow: vec![] },
                405,
                "method_not_allowed",
            ),
            (ApiError::NotFound, 404, "not_found"),
            (ApiError::BodyTooLarge { limit: 1 }, 413, "body_too_large"),
            (
                ApiError::HeadersTooLarge { limit: 1 },
                431,
                "headers_too_large",
            ),
            (
                ApiError::UpstreamUnavailable("x".into()),
                502,
                "upstream_unavailable",
            ),
            (
                ApiError::UpstreamTimeout(std::time::Duration::from_secs(1)),
                504,
                "upstream_timeout",
            ),
            (
                ApiError::StoreUnavailable("x".into()),
                503,
                "store_unavailable",
            ),
            (ApiError::Overloaded("x".into()), 503, "overloaded"),
            (ApiError::Internal("x".into()), 500, "internal_error"),
        ];
        for (err, status, code) in table {
            assert_eq!(err.status().as_u16(), status, "{err:?}");
            assert_eq!(err.code(), code, "{err:?}");
        }
    }

    #[tokio::test]
    async fn renders_problem_json_with_allow() {
        let resp = ApiError::MethodNotAllowed {
            allow: vec![http::Method::GET, http::Method::POST],
        }
        .into_response();
        assert_eq!(resp.status(), 405);
        assert_eq!(resp.headers()["allow"], "GET, POST");
        assert_eq!(resp.headers()["content-type"], "application/problem+json");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["code"], "method_not_allowed");
        assert_eq!(v["status"], 405);
    }

    #[tokio::test]
    async fn rate_limited_and_validation_carry_their_extras() {
        let resp = ApiError::RateLimited(RateLimitInfo {
            policy: "login".into(),
            quota: 5,
            window_secs: 900,
            retry_after_secs: 42,
        })
        .into_response();
        assert_eq!(resp.headers()["retry-after"], "42");
        assert_eq!(resp.headers()["ratelimit-policy"], "\"login\";q=5;w=900");
        assert_eq!(resp.headers()["ratelimit"], "\"login\";r=0;t=42");
        let resp = ApiError::ValidationFailed {
            errors: vec![FieldError::new("email", "is not an email address")],
        }
        .into_response();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["errors"][0]["field"], "email");
        let resp = ApiError::TokenExpired.into_response();
        assert_eq!(
            resp.headers()["www-authenticate"],
            "Bearer error=\"invalid_token\""
        );
    }

    #[tokio::test]
    async fn mfa_required_carries_its_token_in_the_body_only() {
        let err = ApiError::MfaRequired {
            mfa_token: MfaToken("the-token".into()),
        };
        assert!(!format!("{err:?} {err}").contains("the-token"));
        let resp = err.into_response();
        assert!(resp.headers().get("www-authenticate").is_none());
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            (
                v["status"].as_u64(),
                v["code"].as_str(),
                v["mfa_token"].as_str()
            ),
            (Some(401), Some("mfa_required"), Some("the-token"))
        );
    }

    #[test]
    fn internal_details_are_not_shown() {
        let e = ApiError::Internal("db password is hunter2".into());
        assert!(!e.detail().contains("hunter2"));
    }
}
