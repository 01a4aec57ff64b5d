//! Gatehouse access tokens (SPEC section 6, the RFC 9068 profile): issuing them and
//! verifying them on the proxy path (SPEC section 3).
//!
//! Owns: the claim set and every rule a token must pass: `typ`, `exp`/`nbf` as JSON numbers
//! with leeway, `iss`, `aud`. The time is always the caller's (`Expectation::now_secs`),
//! never the wall clock. Signature, `kid` and `alg` checks are [`KeyRing::verify`]'s.
//! Must not touch: sessions and revocation (the caller looks `sid` up), HTTP status
//! mapping (`problem`), external issuers (`trusted.rs`).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::auth::signing::{JwsError, KeyRing, SigningError};

/// The header `typ` of access tokens (RFC 9068 section 2.1).
pub const ACCESS_TOKEN_TYP: &str = "at+jwt";
/// `typ` of the session cookie's token: the same claims as an access token, living as long
/// as the session, and never accepted where an access token is expected (or the reverse).
pub const SESSION_COOKIE_TYP: &str = "gh-session+jwt";

/// Clock skew tolerated on `exp` and `nbf` (SPEC section 3).
pub const DEFAULT_LEEWAY_SECS: u64 = 60;

/// The claims of a Gatehouse access token.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct AccessClaims {
    /// `tokens.issuer`.
    pub iss: String,
    /// User id (UUID).
    pub sub: String,
    /// `tokens.audience`. After verification, the expected audience even when the token
    /// named several.
    pub aud: String,
    /// Expiry, seconds since the epoch.
    pub exp: i64,
    /// Issue time, seconds since the epoch.
    pub iat: i64,
    /// Unique token id.
    pub jti: String,
    /// Session id.
    pub sid: String,
    /// The user's roles.
    pub roles: Vec<String>,
    /// Authentication methods (`pwd`, `mfa`, `otp`, `oauth`, `api_key`).
    pub amr: Vec<String>,
    /// The user's email, when known.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub email: Option<String>,
    /// The user's username, when known.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub username: Option<String>,
    /// Space-separated scopes that narrow the token, when any.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub scope: Option<String>,
}

/// What a verified access token must match, and the time to judge it at.
#[derive(Debug, Clone, Copy)]
pub struct Expectation<'a> {
    /// Required `iss`.
    pub issuer: &'a str,
    /// Required member of `aud`.
    pub audience: &'a str,
    /// The current time, seconds since the epoch.
    pub now_secs: i64,
    /// Clock skew tolerated on `exp` and `nbf`.
    pub leeway_secs: u64,
}

impl<'a> Expectation<'a> {
    /// An expectation with the default 60 s leeway.
    pub fn new(issuer: &'a str, audience: &'a str, now_secs: i64) -> Self {
        Expectation {
            issuer,
            audience,
            now_secs,
            leeway_secs: DEFAULT_LEEWAY_SECS,
        }
    }
}

/// Why an access token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// Not a compact JWS with JSON header and payload objects.
    #[error("malformed token")]
    Malformed,
    /// The `kid` is missing or names no key that still verifies.
    #[error("unknown signing key")]
    UnknownKid,
    /// The header `alg` is not the algorithm of the key named by `kid`.
    #[error("algorithm not allowed for this key")]
    AlgorithmMismatch,
    /// The header `typ` is not `at+jwt`.
    #[error("not an access token")]
    WrongType,
    /// The signature does not verify.
    #[error("bad signature")]
    BadSignature,
    /// `exp` (plus leeway) has passed.
    #[error("token expired")]
    Expired,
    /// `nbf` (minus leeway) is still ahead.
    #[error("token not yet valid")]
    NotYetValid,
    /// `iss` is missing or not the expected issuer.
    #[error("wrong issuer")]
    WrongIssuer,
    /// `aud` is missing or does not name the expected audience.
    #[error("wrong audience")]
    WrongAudience,
    /// A claim is missing or has the wrong type (e.g. `exp` as a string).
    #[error("invalid claims: {0}")]
    InvalidClaims(String),
}

impl JwtError {
    /// Whether the token was refused only for having expired (401 `token_expired`; every
    /// other variant is `invalid_token`).
    pub fn is_expired(&self) -> bool {
        matches!(self, JwtError::Expired)
    }
}

impl From<JwsError> for JwtError {
    fn from(e: JwsError) -> Self {
        match e {
            JwsError::Malformed => JwtError::Malformed,
            JwsError::UnknownKid => JwtError::UnknownKid,
            JwsError::AlgorithmMismatch => JwtError::AlgorithmMismatch,
            JwsError::BadSignature => JwtError::BadSignature,
        }
    }
}

/// Signs an access token with the ring's current key, header `typ: at+jwt`.
pub fn issue_access(ring: &KeyRing, claims: &AccessClaims) -> Result<String, SigningError> {
    ring.sign(ACCESS_TOKEN_TYP, claims)
}

/// Verifies an access token: known `kid`, the key's own `alg`, signature, `typ` `at+jwt`
/// (or `application/at+jwt`, any case), `exp` required and `nbf` optional, both JSON
/// numbers, with leeway, then `iss` and `aud` (a string or an array naming it).
pub fn verify_access(
    ring: &KeyRing,
    token: &str,
    expect: &Expectation<'_>,
) -> Result<AccessClaims, JwtError> {
    verify_typed(ring, token, expect, ACCESS_TOKEN_TYP)
}

/// Signs the session cookie's token (`typ` [`SESSION_COOKIE_TYP`]).
pub fn issue_session_cookie(ring: &KeyRing, claims: &AccessClaims) -> Result<String, SigningError> {
    ring.sign(SESSION_COOKIE_TYP, claims)
}

/// Verifies a session cookie's token with the rules of [`verify_access`] and its own `typ`.
pub fn verify_session_cookie(
    ring: &KeyRing,
    token: &str,
    expect: &Expectation<'_>,
) -> Result<AccessClaims, JwtError> {
    verify_typed(ring, token, expect, SESSION_COOKIE_TYP)
}

fn verify_typed(
    ring: &KeyRing,
    token: &str,
    expect: &Expectation<'_>,
    want_typ: &str,
) -> Result<AccessClaims, JwtError> {
    let now_ms = expect.now_secs.saturating_mul(1000);
    let verified = ring.verify(token, now_ms)?;
    let typ_ok = verified.typ.as_deref().is_some_and(|typ| {
        typ.eq_ignore_ascii_case(want_typ)
            || typ
                .get(..12)
                .is_some_and(|p| p.eq_ignore_ascii_case("application/"))
                && typ
                    .get(12..)
                    .is_some_and(|t| t.eq_ignore_ascii_case(want_typ))
    });
    if !typ_ok {
        return Err(JwtError::WrongType);
    }
    let claims = check_claims(verified.claims, expect)?;
    serde_json::from_value(Value::Object(claims))
        .map_err(|e| JwtError::InvalidClaims(e.to_string()))
}

/// The registered-claim rules every accepted token passes, Gatehouse's or a trusted
/// issuer's: `exp` required and `nbf` optional, both JSON numbers, with leeway; `iss` equal
/// to the expected issuer; `aud` a string or an array naming the expected audience (which
/// then replaces it in the returned claims).
pub fn check_claims(
    mut claims: Map<String, Value>,
    expect: &Expectation<'_>,
) -> Result<Map<String, Value>, JwtError> {
    let leeway = i64::try_from(expect.leeway_secs).unwrap_or(i64::MAX);

    // Types first (CVE-2026-25537: a string `exp` must not pass as "no exp"); then time.
    let exp = numeric_date(claims.get("exp"), "exp")?
        .ok_or_else(|| JwtError::InvalidClaims("`exp` is required".into()))?;
    let nbf = numeric_date(claims.get("nbf"), "nbf")?;
    // Fractional dates round towards refusal; `as` saturates. RFC 7519 section 4.1.4:
    // expired on or after `exp`.
    if expect.now_secs >= (exp.floor() as i64).saturating_add(leeway) {
        return Err(JwtError::Expired);
    }
    if nbf.is_some_and(|nbf| expect.now_secs.saturating_add(leeway) < nbf.ceil() as i64) {
        return Err(JwtError::NotYetValid);
    }

    if claims.get("iss").and_then(Value::as_str) != Some(expect.issuer) {
        return Err(JwtError::WrongIssuer);
    }
    let aud_ok = match claims.get("aud") {
        Some(Value::String(aud)) => aud == expect.audience,
        Some(Value::Array(auds)) => auds.iter().any(|aud| aud.as_str() == Some(expect.audience)),
        _ => false,
    };
    if !aud_ok {
        return Err(JwtError::WrongAudience);
    }
    claims.insert("aud".to_owned(), Value::String(expect.audience.to_owned()));
    Ok(claims)
}

/// A NumericDate claim (RFC 7519 section 2): absent, or a JSON number; anything else,
/// including a numeric string, is refused.
fn numeric_date(value: Option<&Value>, name: &str) -> Result<Option<f64>, JwtError> {
    match value {
        None => Ok(None),
        Some(Value::Number(n)) => n
            .as_f64()
            .filter(|v| v.is_finite())
            .map(Some)
            .ok_or_else(|| JwtError::InvalidClaims(format!("`{name}` is out of range"))),
        Some(_) => Err(JwtError::InvalidClaims(format!(
            "`{name}` must be a JSON number"
        ))),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
    use serde_json::json;

    use super::*;
    use crate::auth::signing::test_keys::{ALGS, key};
    use crate::auth::signing::{KeyRing, alg_name};
    use crate::config::SigningAlg;

    const ISS: &str = "https://auth.example.com";
    const AUD: &str = "gatehouse";
    /// Seconds; the shared test keys were made at this time.
    const NOW: i64 = 1_700_000_000;

    fn ring(alg: SigningAlg) -> KeyRing {
        KeyRing::new(&[key(alg, 0)], NOW * 1000).unwrap()
    }

    fn claims() -> AccessClaims {
        AccessClaims {
            iss: ISS.into(),
            sub: "0b7e4c1e-8d4f-4c2a-9a57-1d2f3e4a5b6c".into(),
            aud: AUD.into(),
            exp: NOW + 3600,
            iat: NOW,
            jti: "f3a1c2d4-0000-4000-8000-000000000001".into(),
            sid: "5e55a1d0-0000-4000-8000-000000000002".into(),
            roles: vec!["user".into()],
            amr: vec!["pwd".into()],
            email: Some("ada@example.com".into()),
            username: None,
            scope: None,
        }
    }

    fn expect(now_secs: i64) -> Expectation<'static> {
        Expectation::new(ISS, AUD, now_secs)
    }

    /// Signs arbitrary claims with the ring's key, `typ` as given.
    fn signed(ring: &KeyRing, typ: &str, claims: Value) -> String {
        ring.sign(typ, &claims).unwrap()
    }

    fn with(patch: Value) -> Value {
        let mut c = serde_json::to_value(claims()).unwrap();
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c
    }

    #[test]
    fn issue_and_verify_round_trip_for_every_alg() {
        for alg in ALGS {
            let ring = ring(alg);
            let token = issue_access(&ring, &claims()).unwrap();
            let header: Value = serde_json::from_slice(
                &URL_SAFE_NO_PAD
                    .decode(token.split('.').next().unwrap())
                    .unwrap(),
            )
            .unwrap();
            assert_eq!(header["typ"], "at+jwt");
            assert_eq!(header["alg"], alg_name(alg));
            assert_eq!(header["kid"], ring.current_kid());
            assert_eq!(
                verify_access(&ring, &token, &expect(NOW)).unwrap(),
                claims()
            );
        }
        // `None` fields are left out of the token, not sent as null.
        let token = issue_access(&ring(SigningAlg::EdDsa), &claims()).unwrap();
        let payload: Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(token.split('.').nth(1).unwrap())
                .unwrap(),
        )
        .unwrap();
        assert!(payload.get("username").is_none() && payload.get("scope").is_none());
    }

    #[test]
    fn tokens_verify_with_plain_jsonwebtoken_through_the_jwks() {
        for alg in ALGS {
            let ring = ring(alg);
            let token = issue_access(&ring, &claims()).unwrap();
            let set: jsonwebtoken::jwk::JwkSet = serde_json::from_slice(ring.jwks()).unwrap();
            let jwk = set.find(ring.current_kid()).unwrap();
            let mut validation = Validation::new(jsonwebtoken::decode_header(&token).unwrap().alg);
            validation.set_issuer(&[ISS]);
            validation.set_audience(&[AUD]);
            validation.validate_exp = false; // the test claims are from 2023
            let data = jsonwebtoken::decode::<AccessClaims>(
                &token,
                &DecodingKey::from_jwk(jwk).unwrap(),
                &validation,
            )
            .unwrap();
            assert_eq!(data.claims, claims());
        }
    }

    #[test]
    fn typ_must_be_at_jwt() {
        let ring = ring(SigningAlg::EdDsa);
        let c = with(json!({}));
        for ok in [
            "at+jwt",
            "AT+JWT",
            "application/at+jwt",
            "Application/AT+JWT",
        ] {
            let token = signed(&ring, ok, c.clone());
            assert!(verify_access(&ring, &token, &expect(NOW)).is_ok(), "{ok}");
        }
        for bad in ["JWT", "jwt", "", "at+jwt ", "application/jwt"] {
            let token = signed(&ring, bad, c.clone());
            assert_eq!(
                verify_access(&ring, &token, &expect(NOW)),
                Err(JwtError::WrongType),
                "{bad}"
            );
        }
    }

    #[test]
    fn exp_and_nbf_are_checked_against_the_given_time_with_leeway() {
        let ring = ring(SigningAlg::Es256);
        let token = issue_access(&ring, &claims()).unwrap();
        let exp = NOW + 3600;
        assert!(verify_access(&ring, &token, &expect(exp - 1)).is_ok());
        assert!(verify_access(&ring, &token, &expect(exp + 59)).is_ok());
        let err = verify_access(&ring, &token, &expect(exp + 60)).unwrap_err();
        assert_eq!(err, JwtError::Expired);
        assert!(err.is_expired());
        assert_eq!(
            verify_access(&ring, &token, &expect(exp + 3600)),
            Err(JwtError::Expired)
        );
        let strict = Expectation {
            leeway_secs: 0,
            ..expect(exp)
        };
        assert_eq!(
            verify_access(&ring, &token, &strict),
            Err(JwtError::Expired)
        );

        let future = signed(&ring, "at+jwt", with(json!({"nbf": NOW + 120})));
        let err = verify_access(&ring, &future, &expect(NOW)).unwrap_err();
        assert_eq!(err, JwtError::NotYetValid);
        assert!(!err.is_expired());
        assert!(verify_access(&ring, &future, &expect(NOW + 61)).is_ok());
        let soon = signed(&ring, "at+jwt", with(json!({"nbf": NOW + 59})));
        assert!(verify_access(&ring, &soon, &expect(NOW)).is_ok());
    }

    #[test]
    fn exp_and_nbf_must_be_json_numbers() {
        let ring = ring(SigningAlg::EdDsa);
        // CVE-2026-25537: correctly signed, `exp` far in the future but as a string.
        let string_exp = signed(&ring, "at+jwt", with(json!({"exp": "9999999999"})));
        let err = verify_access(&ring, &string_exp, &expect(NOW)).unwrap_err();
        assert!(
            matches!(err, JwtError::InvalidClaims(ref m) if m.contains("exp")),
            "{err:?}"
        );
        // jsonwebtoken >= 10.3 refuses it too when it validates `exp` itself.
        let set: jsonwebtoken::jwk::JwkSet = serde_json::from_slice(ring.jwks()).unwrap();
        let key = DecodingKey::from_jwk(&set.keys[0]).unwrap();
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_audience(&[AUD]);
        let lib = jsonwebtoken::decode::<Value>(&string_exp, &key, &validation).unwrap_err();
        assert_eq!(
            lib.kind(),
            &jsonwebtoken::errors::ErrorKind::MissingRequiredClaim("exp".into())
        );
        validation.required_spec_claims.clear();
        let lib = jsonwebtoken::decode::<Value>(&string_exp, &key, &validation).unwrap_err();
        assert_eq!(
            lib.kind(),
            &jsonwebtoken::errors::ErrorKind::InvalidClaimFormat("exp".into())
        );

        for patch in [
            json!({"nbf": "0"}),
            json!({"nbf": null, "exp": null}),
            json!({"exp": null}),
            json!({"exp": [NOW + 3600]}),
            json!({"exp": {"value": NOW + 3600}}),
            json!({"exp": true}),
        ] {
            let token = signed(&ring, "at+jwt", with(patch.clone()));
            assert!(
                matches!(
                    verify_access(&ring, &token, &expect(NOW)),
                    Err(JwtError::InvalidClaims(_))
                ),
                "{patch}"
            );
        }
        // Other claims of the wrong type are refused as well.
        let token = signed(&ring, "at+jwt", with(json!({"iat": "1700000000"})));
        assert!(matches!(
            verify_access(&ring, &token, &expect(NOW)),
            Err(JwtError::InvalidClaims(_))
        ));
    }

    #[test]
    fn iss_and_aud_must_match() {
        let ring = ring(SigningAlg::Rs256);
        let cases = [
            (
                json!({"iss": "https://evil.example.com"}),
                JwtError::WrongIssuer,
            ),
            (json!({"iss": null}), JwtError::WrongIssuer),
            (json!({"iss": [ISS]}), JwtError::WrongIssuer),
            (json!({"aud": "other"}), JwtError::WrongAudience),
            (json!({"aud": null}), JwtError::WrongAudience),
            (json!({"aud": ["a", "b"]}), JwtError::WrongAudience),
            (json!({"aud": []}), JwtError::WrongAudience),
        ];
        for (patch, want) in cases {
            let token = signed(&ring, "at+jwt", with(patch.clone()));
            assert_eq!(
                verify_access(&ring, &token, &expect(NOW)),
                Err(want),
                "{patch}"
            );
        }
        let token = signed(&ring, "at+jwt", with(json!({"aud": ["api", AUD]})));
        assert_eq!(
            verify_access(&ring, &token, &expect(NOW)).unwrap(),
            claims()
        );
    }

    #[test]
    fn header_attacks_map_to_their_errors() {
        let ring = ring(SigningAlg::EdDsa);
        let kid = ring.current_kid().to_owned();
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims()).unwrap());
        let none_header = URL_SAFE_NO_PAD.encode(
            json!({"alg": "none", "kid": kid, "typ": "at+jwt"})
                .to_string()
                .as_bytes(),
        );
        let none = format!("{none_header}.{body}.");
        assert_eq!(
            verify_access(&ring, &none, &expect(NOW)),
            Err(JwtError::AlgorithmMismatch)
        );

        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(kid.clone());
        header.typ = Some("at+jwt".into());
        let hs = jsonwebtoken::encode(&header, &claims(), &EncodingKey::from_secret(ring.jwks()))
            .unwrap();
        assert_eq!(
            verify_access(&ring, &hs, &expect(NOW)),
            Err(JwtError::AlgorithmMismatch)
        );

        let other = KeyRing::new(&[key(SigningAlg::EdDsa, 1)], NOW * 1000).unwrap();
        let stranger = issue_access(&other, &claims()).unwrap();
        assert_eq!(
            verify_access(&ring, &stranger, &expect(NOW)),
            Err(JwtError::UnknownKid)
        );

        let token = issue_access(&ring, &claims()).unwrap();
        let (head, _) = token.rsplit_once('.').unwrap();
        let forged_sig = format!("{head}.{}", URL_SAFE_NO_PAD.encode([7u8; 64]));
        assert_eq!(
            verify_access(&ring, &forged_sig, &expect(NOW)),
            Err(JwtError::BadSignature)
        );
        assert_eq!(
            verify_access(&ring, "not a token", &expect(NOW)),
            Err(JwtError::Malformed)
        );
    }

    #[test]
    fn only_expired_counts_as_expired() {
        let all = [
            JwtError::Malformed,
            JwtError::UnknownKid,
            JwtError::AlgorithmMismatch,
            JwtError::WrongType,
            JwtError::BadSignature,
            JwtError::Expired,
            JwtError::NotYetValid,
            JwtError::WrongIssuer,
            JwtError::WrongAudience,
            JwtError::InvalidClaims(String::new()),
        ];
        let expired: Vec<&JwtError> = all.iter().filter(|e| e.is_expired()).collect();
        assert_eq!(expired, [&JwtError::Expired]);
    }
}
