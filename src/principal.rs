//! Who is calling: plain data produced by authentication and read by policy and header
//! injection, and its rendering as SPEC section 3's identity headers (used by the proxy and
//! by forward-auth alike).

use http::header::{HeaderMap, HeaderName, HeaderValue};

static X_AUTH_METHOD: HeaderName = HeaderName::from_static("x-auth-method");
static X_USER_ROLES: HeaderName = HeaderName::from_static("x-user-roles");

/// How a request was authenticated (`X-Auth-Method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    ApiKey,
    Jwt,
    Cookie,
    PublishableKey,
    Anonymous,
}

impl AuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::ApiKey => "api_key",
            AuthMethod::Jwt => "jwt",
            AuthMethod::Cookie => "cookie",
            AuthMethod::PublishableKey => "publishable_key",
            AuthMethod::Anonymous => "anonymous",
        }
    }
}

/// The caller of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub method: AuthMethod,
    pub user_id: Option<String>,
    pub email: Option<String>,
    pub username: Option<String>,
    pub roles: Vec<String>,
    pub scopes: Option<Vec<String>>,
    pub key_id: Option<String>,
    pub session_id: Option<String>,
}

impl Principal {
    /// The principal of a request without (or with an ignored) credential.
    pub fn anonymous() -> Self {
        Principal {
            method: AuthMethod::Anonymous,
            user_id: None,
            email: None,
            username: None,
            roles: Vec::new(),
            scopes: None,
            key_id: None,
            session_id: None,
        }
    }

    pub fn is_anonymous(&self) -> bool {
        self.method == AuthMethod::Anonymous
    }

    /// Sets the identity headers (`X-Auth-Method`, `X-User-*`, `X-Auth-Key-Id`,
    /// `X-Auth-Session-Id`); the caller has deleted any client-sent ones first.
    pub fn write_headers(&self, headers: &mut HeaderMap) {
        headers.insert(
            X_AUTH_METHOD.clone(),
            HeaderValue::from_static(self.method.as_str()),
        );
        let pairs: [(&str, Option<&str>); 5] = [
            ("x-user-id", self.user_id.as_deref()),
            ("x-user-email", self.email.as_deref()),
            ("x-user-name", self.username.as_deref()),
            ("x-auth-key-id", self.key_id.as_deref()),
            ("x-auth-session-id", self.session_id.as_deref()),
        ];
        for (name, value) in pairs {
            if let Some(v) = value.and_then(|v| HeaderValue::from_str(v).ok()) {
                headers.insert(HeaderName::from_static(name), v);
            }
        }
        if !self.roles.is_empty()
            && let Ok(v) = HeaderValue::from_str(&self.roles.join(","))
        {
            headers.insert(X_USER_ROLES.clone(), v);
        }
    }
}
