//! The SMTP backend: `accounts.email.smtp_url` parsed into a lettre transport.
//!
//! | URL | connection | default port |
//! |---|---|---|
//! | `smtp://host` | plain (for a relay on loopback or a trusted network) | 25 |
//! | `smtp://host?tls=opportunistic` | STARTTLS when the server offers it, else plain | 25 |
//! | `smtp+starttls://host` (or `smtp://host?tls=required`) | STARTTLS, required | 587 |
//! | `smtps://host` | TLS from the first byte (implicit TLS) | 465 |
//!
//! `user:password@` in the URL are the AUTH credentials, percent-decoded (write `@` as `%40`,
//! `:` as `%3A`, ...). A path (`smtp://host/mail.example.com`) is the EHLO name. TLS is rustls
//! with the ring provider and Mozilla's roots, plus any extra roots the caller passes. The
//! password never appears in `Debug` output or error messages.

use std::time::Duration;

use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::{AsyncSmtpTransport, Tokio1Executor};

use super::MailError;

/// How the connection is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpSecurity {
    Plain,
    OpportunisticStartTls,
    StartTls,
    ImplicitTls,
}

/// A parsed `smtp_url`.
#[derive(Clone, PartialEq, Eq)]
pub struct SmtpEndpoint {
    pub host: String,
    pub port: u16,
    pub security: SmtpSecurity,
    pub username: Option<String>,
    password: Option<String>,
    pub hello_name: Option<String>,
}

impl std::fmt::Debug for SmtpEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpEndpoint")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("security", &self.security)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("hello_name", &self.hello_name)
            .finish()
    }
}

impl std::fmt::Display for SmtpEndpoint {
    /// `host:port (starttls)`, for logs: no credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let security = match self.security {
            SmtpSecurity::Plain => "plain",
            SmtpSecurity::OpportunisticStartTls => "opportunistic starttls",
            SmtpSecurity::StartTls => "starttls",
            SmtpSecurity::ImplicitTls => "tls",
        };
        if self.host.contains(':') {
            write!(f, "[{}]:{} ({security})", self.host, self.port)
        } else {
            write!(f, "{}:{} ({security})", self.host, self.port)
        }
    }
}

impl SmtpEndpoint {
    /// Parses an `smtp://`, `smtp+starttls://` or `smtps://` URL (see the module docs).
    pub fn parse(text: &str) -> Result<SmtpEndpoint, MailError> {
        // Errors describe the problem without echoing the URL: it may hold a password.
        let bad = |reason: &str| MailError::SmtpUrl(reason.to_owned());
        let url = url::Url::parse(text).map_err(|e| MailError::SmtpUrl(e.to_string()))?;
        let mut tls_param = None;
        for (key, value) in url.query_pairs() {
            match key.as_ref() {
                "tls" if tls_param.is_none() => tls_param = Some(value.into_owned()),
                _ => {
                    return Err(MailError::SmtpUrl(format!(
                        "unknown or repeated query parameter `{key}` (only `tls` is known)"
                    )));
                }
            }
        }
        let (security, default_port) = match (url.scheme(), tls_param.as_deref()) {
            ("smtp", None | Some("none")) => (SmtpSecurity::Plain, 25),
            ("smtp", Some("opportunistic")) => (SmtpSecurity::OpportunisticStartTls, 25),
            ("smtp", Some("required")) | ("smtp+starttls", None) => (SmtpSecurity::StartTls, 587),
            ("smtps", None) => (SmtpSecurity::ImplicitTls, 465),
            ("smtp", Some(_)) => {
                return Err(bad("`tls` must be none, opportunistic or required"));
            }
            ("smtp+starttls" | "smtps", Some(_)) => {
                return Err(bad("`tls` is only for smtp:// URLs"));
            }
            _ => return Err(bad("the scheme must be smtp, smtps or smtp+starttls")),
        };
        let host = match url.host() {
            Some(url::Host::Domain(d)) if !d.is_empty() => d.to_owned(),
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            _ => return Err(bad("the URL has no host")),
        };
        if url.fragment().is_some() {
            return Err(bad("an SMTP URL has no #fragment"));
        }
        let decode = |part: &str, what: &str| {
            percent_encoding::percent_decode_str(part)
                .decode_utf8()
                .map(|s| s.into_owned())
                .map_err(|_| MailError::SmtpUrl(format!("the {what} is not valid UTF-8")))
        };
        let username = match url.username() {
            "" => None,
            user => Some(decode(user, "user name")?),
        };
        let password = url.password().map(|p| decode(p, "password")).transpose()?;
        if username.is_none() && password.is_some() {
            return Err(bad("a password without a user name"));
        }
        let hello_name = match url.path().trim_matches('/') {
            "" => None,
            name => Some(decode(name, "EHLO name")?),
        };
        Ok(SmtpEndpoint {
            host,
            port: url.port().unwrap_or(default_port),
            security,
            username,
            password,
            hello_name,
        })
    }

    /// Whether the host is a loopback address or `localhost`.
    pub fn is_loopback(&self) -> bool {
        self.host == "localhost"
            || self
                .host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }

    /// The lettre transport for this endpoint. `extra_roots_pem` are trusted in addition to
    /// Mozilla's roots (a private relay's CA).
    pub(crate) fn transport(
        &self,
        timeout: Duration,
        extra_roots_pem: Option<&[u8]>,
    ) -> Result<AsyncSmtpTransport<Tokio1Executor>, MailError> {
        let tls_parameters = || {
            let mut builder = TlsParameters::builder(self.host.clone());
            if let Some(pem) = extra_roots_pem {
                builder = builder.add_root_certificate(extra_roots(pem)?);
            }
            builder.build_rustls().map_err(MailError::from)
        };
        let tls = match self.security {
            SmtpSecurity::Plain => Tls::None,
            SmtpSecurity::OpportunisticStartTls => Tls::Opportunistic(tls_parameters()?),
            SmtpSecurity::StartTls => Tls::Required(tls_parameters()?),
            SmtpSecurity::ImplicitTls => Tls::Wrapper(tls_parameters()?),
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&self.host)
            .port(self.port)
            .timeout(Some(timeout))
            .tls(tls);
        if let Some(user) = &self.username {
            builder = builder.credentials(Credentials::new(
                user.clone(),
                self.password.clone().unwrap_or_default(),
            ));
        }
        if let Some(name) = &self.hello_name {
            builder = builder.hello_name(ClientId::Domain(name.clone()));
        }
        Ok(builder.build())
    }
}

/// PEM text with at least one certificate.
fn extra_roots(pem: &[u8]) -> Result<Certificate, MailError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let count = CertificateDer::pem_slice_iter(pem)
        .try_fold(0usize, |n, cert| cert.map(|_| n + 1))
        .map_err(|e| MailError::ExtraRoots(e.to_string()))?;
    if count == 0 {
        return Err(MailError::ExtraRoots("no PEM certificate found".into()));
    }
    Ok(Certificate::from_pem(pem)?)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(text: &str) -> SmtpEndpoint {
        SmtpEndpoint::parse(text).unwrap()
    }

    fn error(text: &str) -> String {
        SmtpEndpoint::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn schemes_pick_security_and_default_port() {
        let e = parse("smtp://127.0.0.1:2525");
        assert_eq!(
            (e.host.as_str(), e.port, e.security),
            ("127.0.0.1", 2525, SmtpSecurity::Plain)
        );
        assert!(e.username.is_none() && e.hello_name.is_none());
        assert_eq!(parse("smtp://mail.example.com").port, 25);
        let e = parse("smtp+starttls://mail.example.com");
        assert_eq!((e.port, e.security), (587, SmtpSecurity::StartTls));
        let e = parse("smtps://mail.example.com");
        assert_eq!((e.port, e.security), (465, SmtpSecurity::ImplicitTls));
        assert_eq!(
            parse("smtp://m.example.com?tls=required").security,
            SmtpSecurity::StartTls
        );
        assert_eq!(
            parse("smtp://m.example.com?tls=opportunistic").security,
            SmtpSecurity::OpportunisticStartTls
        );
        let e = parse("smtp://[::1]:25/gw.example.com");
        assert_eq!(e.host, "::1");
        assert!(e.is_loopback());
        assert_eq!(e.hello_name.as_deref(), Some("gw.example.com"));
        assert_eq!(e.to_string(), "[::1]:25 (plain)");
        assert!(!parse("smtps://mail.example.com").is_loopback());
    }

    #[test]
    fn credentials_are_percent_decoded_and_never_shown() {
        let e = parse("smtps://apikey%40corp:p%40ss%3Aw%2Frd%20%C3%A9@mail.example.com");
        assert_eq!(e.username.as_deref(), Some("apikey@corp"));
        assert_eq!(e.password.as_deref(), Some("p@ss:w/rd é"));
        let shown = format!("{e:?} {e}");
        assert!(
            !shown.contains("p@ss") && !shown.contains("w/rd"),
            "{shown}"
        );
        assert!(shown.contains("<redacted>"));
        let e = parse("smtp://user@127.0.0.1");
        assert_eq!(
            (e.username.as_deref(), e.password.as_deref()),
            (Some("user"), None)
        );
    }

    #[test]
    fn bad_urls_are_explained_without_echoing_them() {
        assert_eq!(
            error("http://u:secret@x"),
            "invalid SMTP URL: the scheme must be smtp, smtps or smtp+starttls"
        );
        assert_eq!(
            error("smtp://u:secret@x?tls=always"),
            "invalid SMTP URL: `tls` must be none, opportunistic or required"
        );
        assert_eq!(
            error("smtps://u:secret@x?tls=required"),
            "invalid SMTP URL: `tls` is only for smtp:// URLs"
        );
        assert_eq!(
            error("smtp://u:secret@x?timeout=3"),
            "invalid SMTP URL: unknown or repeated query parameter `timeout` (only `tls` is known)"
        );
        assert_eq!(
            error("smtp://:secret@x"),
            "invalid SMTP URL: a password without a user name"
        );
        assert_eq!(
            error("smtp://u:%FF@x"),
            "invalid SMTP URL: the password is not valid UTF-8"
        );
        assert!(!error("smtp://u:secret@").contains("secret"));
        assert!(!error("smtp://u:secret@x#frag").contains("secret"));
    }

    #[test]
    fn transports_build_for_every_security() {
        for url in [
            "smtp://127.0.0.1:2525",
            "smtp://127.0.0.1?tls=opportunistic",
            "smtp+starttls://user:pw@mail.example.com/gw.example.com",
            "smtps://mail.example.com",
        ] {
            parse(url)
                .transport(Duration::from_secs(5), None)
                .unwrap_or_else(|e| panic!("{url}: {e}"));
        }
        let err = parse("smtps://mail.example.com")
            .transport(Duration::from_secs(5), Some(b"not a pem"))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "extra SMTP root certificates: no PEM certificate found"
        );
    }
}
