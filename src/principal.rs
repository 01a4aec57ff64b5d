//! Who is calling: plain data produced by authentication and read by policy and header
//! injection, and its rendering as SPEC section 3's identity headers (used by the proxy and
//! by forward-auth alike).

use std::sync::{Arc, LazyLock, OnceLock};

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
    /// The identity headers, rendered on first use: a principal served from the cache is
    /// shared by every request of its credential, so they are rendered once, not per request.
    pub rendered: Rendered,
}

/// A principal's identity headers once rendered. Not part of its identity: equal whatever
/// it holds, and a clone starts empty (the clone may be changed before it is rendered).
#[derive(Default)]
pub struct Rendered(OnceLock<Vec<(HeaderName, HeaderValue)>>);

impl Clone for Rendered {
    fn clone(&self) -> Self {
        Rendered::default()
    }
}

impl PartialEq for Rendered {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Rendered {}

impl std::fmt::Debug for Rendered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "Rendered"
        } else {
            "NotRendered"
        })
    }
}

static ANONYMOUS: LazyLock<Arc<Principal>> = LazyLock::new(|| Arc::new(Principal::anonymous()));

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
            rendered: Rendered::default(),
        }
    }

    /// The anonymous principal, shared.
    pub fn shared_anonymous() -> Arc<Principal> {
        ANONYMOUS.clone()
    }

    pub fn is_anonymous(&self) -> bool {
        self.method == AuthMethod::Anonymous
    }

    /// Sets the identity headers (`X-Auth-Method`, `X-User-*`, `X-Auth-Key-Id`,
    /// `X-Auth-Session-Id`); the caller has deleted any client-sent ones first.
    pub fn write_headers(&self, headers: &mut HeaderMap) {
        for (name, value) in self.identity_fields() {
            headers.insert(name.clone(), value.clone());
        }
    }

    /// The identity headers as (name, value) pairs, rendered once per principal.
    pub fn identity_fields(&self) -> &[(HeaderName, HeaderValue)] {
        self.rendered.0.get_or_init(|| self.render())
    }

    fn render(&self) -> Vec<(HeaderName, HeaderValue)> {
        let mut out = Vec::with_capacity(7);
        out.push((
            X_AUTH_METHOD.clone(),
            HeaderValue::from_static(self.method.as_str()),
        ));
        let pairs: [(&'static str, Option<&str>); 5] = [
            ("x-user-id", self.user_id.as_deref()),
            ("x-user-email", self.email.as_deref()),
            ("x-user-name", self.username.as_deref()),
            ("x-auth-key-id", self.key_id.as_deref()),
            ("x-auth-session-id", self.session_id.as_deref()),
        ];
        for (name, value) in pairs {
            if let Some(v) = value.and_then(|v| HeaderValue::from_str(v).ok()) {
                out.push((HeaderName::from_static(name), v));
            }
        }
        if !self.roles.is_empty()
            && let Ok(v) = HeaderValue::from_str(&self.roles.join(","))
        {
            out.push((X_USER_ROLES.clone(), v));
        }
        out
    }
}
