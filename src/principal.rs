//! Who is calling: plain data produced by authentication and read by policy and header
//! injection. No behaviour beyond small accessors lives here.

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
}
