//! Token-signing keys: generation, PKCS#8 import, JWKs and their RFC 7638 `kid`, the
//! [`KeyRing`] that signs and verifies compact JWS, and the key lifecycle in the store
//! (bootstrap, `tokens.signing.key_file`, rotation).
//!
//! Owns: every byte of private key material after the store hands it over, and which key
//! verifies which token (the `kid` -> key -> algorithm binding; the algorithm comes from the
//! key, never from the token). Must not touch: claims and their meaning (`jwt.rs` checks
//! `exp`, `iss`, `aud`, ...), HTTP, external issuers' keys (`trusted.rs`).
//!
//! Private keys never appear in a `Debug`, `Display` or error message of this module.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use pkcs8::der::pem::LineEnding;
use pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _, ObjectIdentifier, PrivateKeyInfo};
use rand_core::OsRng;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, RSA_PKCS1_2048_8192_SHA256, RsaPublicKeyComponents, UnparsedPublicKey,
};
use rsa::pkcs1::EncodeRsaPrivateKey as _;
use rsa::traits::PublicKeyParts as _;
use serde::Serialize;
use serde_json::{Map, Value, json};
use sha2::{Digest as _, Sha256};

use crate::config::{SigningAlg, SigningConfig};
use crate::store::{SigningKey, Store, StoreError, UnixMillis};

/// Why a signing key could not be made, loaded or used.
#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Key material that is not a usable key of the expected algorithm. The message names
    /// what is wrong, never the key.
    #[error("invalid signing key: {0}")]
    InvalidKey(String),
    /// `tokens.signing.key_file` could not be read.
    #[error("cannot read signing key file {path}: {source}")]
    Io {
        /// The configured file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The key list has no key that may sign at this time.
    #[error("no current signing key")]
    NoCurrentKey,
    /// Key generation or signing failed in the crypto backend.
    #[error("signing failed: {0}")]
    Crypto(String),
}

/// Why [`KeyRing::verify`] refused a compact JWS. Claims are not looked at here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JwsError {
    /// Not three base64url parts, a header or payload that is not a JSON object, or a
    /// `crit` header (no extension is understood, RFC 7515 section 4.1.11).
    #[error("malformed token")]
    Malformed,
    /// No `kid`, or one the ring does not hold (never issued, or past its `not_after`).
    #[error("unknown signing key")]
    UnknownKid,
    /// The header's `alg` is not exactly the algorithm of the key its `kid` names (`none`,
    /// `HS256` against a public key, ...).
    #[error("algorithm not allowed for this key")]
    AlgorithmMismatch,
    /// The signature does not verify.
    #[error("bad signature")]
    BadSignature,
}

/// A JWS whose signature verified against a key of the ring.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedJws {
    /// The header's `typ`, unchecked.
    pub typ: Option<String>,
    /// The header's `kid` (known to the ring).
    pub kid: String,
    /// The payload, a JSON object, unchecked.
    pub claims: Map<String, Value>,
}

/// The JWS `alg` name of a signing algorithm (also the stored `SigningKey::alg`).
pub fn alg_name(alg: SigningAlg) -> &'static str {
    match alg {
        SigningAlg::EdDsa => "EdDSA",
        SigningAlg::Es256 => "ES256",
        SigningAlg::Rs256 => "RS256",
    }
}

/// Inverse of [`alg_name`].
pub fn parse_alg(name: &str) -> Option<SigningAlg> {
    match name {
        "EdDSA" => Some(SigningAlg::EdDsa),
        "ES256" => Some(SigningAlg::Es256),
        "RS256" => Some(SigningAlg::Rs256),
        _ => None,
    }
}

fn jws_algorithm(alg: SigningAlg) -> Algorithm {
    match alg {
        SigningAlg::EdDsa => Algorithm::EdDSA,
        SigningAlg::Es256 => Algorithm::ES256,
        SigningAlg::Rs256 => Algorithm::RS256,
    }
}

fn alg_label(alg: SigningAlg) -> &'static str {
    match alg {
        SigningAlg::EdDsa => "an Ed25519 key (EdDSA)",
        SigningAlg::Es256 => "a P-256 key (ES256)",
        SigningAlg::Rs256 => "an RSA key (RS256)",
    }
}

/// RSA keys Gatehouse generates, and the smallest it accepts (RFC 7518 section 3.3).
const RSA_BITS: usize = 2048;

const OID_ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");
const OID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const OID_P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const OID_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");

/// The public half of a signing key, in the JWK members that identify it.
#[derive(Clone, PartialEq, Eq)]
enum PublicKey {
    Ed25519 { x: [u8; 32] },
    P256 { x: [u8; 32], y: [u8; 32] },
    Rsa { n: Vec<u8>, e: Vec<u8> },
}

impl PublicKey {
    fn alg(&self) -> SigningAlg {
        match self {
            PublicKey::Ed25519 { .. } => SigningAlg::EdDsa,
            PublicKey::P256 { .. } => SigningAlg::Es256,
            PublicKey::Rsa { .. } => SigningAlg::Rs256,
        }
    }

    /// RFC 7638 section 3.2: the required members only, lexicographic order, no
    /// whitespace; base64url values need no escaping.
    fn thumbprint(&self) -> String {
        let canonical = match self {
            PublicKey::Ed25519 { x } => {
                format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#, b64(x))
            }
            PublicKey::P256 { x, y } => format!(
                r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
                b64(x),
                b64(y)
            ),
            PublicKey::Rsa { n, e } => {
                format!(r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#, b64(e), b64(n))
            }
        };
        b64(&Sha256::digest(canonical.as_bytes()))
    }

    /// The JWK served in the JWKS: public members, `use`, `alg` and `kid` only.
    fn to_jwk(&self, kid: &str) -> Value {
        let alg = alg_name(self.alg());
        match self {
            PublicKey::Ed25519 { x } => json!({
                "kty": "OKP", "crv": "Ed25519", "x": b64(x),
                "use": "sig", "alg": alg, "kid": kid,
            }),
            PublicKey::P256 { x, y } => json!({
                "kty": "EC", "crv": "P-256", "x": b64(x), "y": b64(y),
                "use": "sig", "alg": alg, "kid": kid,
            }),
            PublicKey::Rsa { n, e } => json!({
                "kty": "RSA", "n": b64(n), "e": b64(e),
                "use": "sig", "alg": alg, "kid": kid,
            }),
        }
    }

    /// Reads the key members of a stored JWK and checks they are a valid key for `alg`.
    fn from_jwk(jwk: &str, alg: SigningAlg) -> Result<Self, SigningError> {
        let jwk: Map<String, Value> = serde_json::from_str(jwk)
            .map_err(|_| SigningError::InvalidKey("public JWK is not a JSON object".into()))?;
        Self::from_jwk_members(&jwk, alg)
    }

    fn from_jwk_members(jwk: &Map<String, Value>, alg: SigningAlg) -> Result<Self, SigningError> {
        let member = |name: &str| -> Result<Vec<u8>, SigningError> {
            let text = jwk.get(name).and_then(Value::as_str).ok_or_else(|| {
                SigningError::InvalidKey(format!("public JWK has no string `{name}`"))
            })?;
            URL_SAFE_NO_PAD.decode(text).map_err(|_| {
                SigningError::InvalidKey(format!("public JWK `{name}` is not base64url"))
            })
        };
        let text = |name: &str| jwk.get(name).and_then(Value::as_str).unwrap_or_default();
        let fixed = |bytes: Vec<u8>, name: &str| -> Result<[u8; 32], SigningError> {
            <[u8; 32]>::try_from(bytes).map_err(|_| {
                SigningError::InvalidKey(format!("public JWK `{name}` is not 32 bytes"))
            })
        };
        let key = match alg {
            SigningAlg::EdDsa if text("kty") == "OKP" && text("crv") == "Ed25519" => {
                let x = fixed(member("x")?, "x")?;
                ed25519_dalek::VerifyingKey::from_bytes(&x).map_err(|_| {
                    SigningError::InvalidKey("public JWK is not an Ed25519 point".into())
                })?;
                PublicKey::Ed25519 { x }
            }
            SigningAlg::Es256 if text("kty") == "EC" && text("crv") == "P-256" => {
                let (x, y) = (fixed(member("x")?, "x")?, fixed(member("y")?, "y")?);
                let mut sec1 = [0u8; 65];
                sec1[0] = 0x04;
                sec1[1..33].copy_from_slice(&x);
                sec1[33..].copy_from_slice(&y);
                p256::PublicKey::from_sec1_bytes(&sec1).map_err(|_| {
                    SigningError::InvalidKey("public JWK is not a P-256 point".into())
                })?;
                PublicKey::P256 { x, y }
            }
            SigningAlg::Rs256 if text("kty") == "RSA" => {
                let (n, e) = (member("n")?, member("e")?);
                let not_rsa = || SigningError::InvalidKey("public JWK is not an RSA key".into());
                let key = rsa::RsaPublicKey::new(
                    rsa::BigUint::from_bytes_be(&n),
                    rsa::BigUint::from_bytes_be(&e),
                )
                .map_err(|_| not_rsa())?;
                check_rsa_size(key.n().bits())?;
                // An even `e` is no RSA key (and ring, which verifies, wants an odd e >= 3;
                // `rsa` has refused e < 2).
                if e.last().is_none_or(|low| low & 1 == 0) {
                    return Err(not_rsa());
                }
                PublicKey::Rsa { n, e }
            }
            _ => {
                return Err(SigningError::InvalidKey(format!(
                    "public JWK is not {}",
                    alg_label(alg)
                )));
            }
        };
        Ok(key)
    }

    /// What verifies signatures of this key, built once per key (a [`VerifyKey`]), from
    /// members [`PublicKey::from_jwk_members`] has validated.
    fn verifier(&self) -> SignatureVerifier {
        match self {
            PublicKey::Ed25519 { x } => SignatureVerifier::EdDsa(DecodingKey::from_ed_der(x)),
            PublicKey::P256 { x, y } => {
                let mut sec1 = [0u8; 65];
                sec1[0] = 0x04;
                sec1[1..33].copy_from_slice(x);
                sec1[33..].copy_from_slice(y);
                SignatureVerifier::Es256(UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, sec1))
            }
            PublicKey::Rsa { n, e } => {
                // ring refuses leading zero bytes, which some JWKS writers leave in `n`.
                let minimal = |b: &[u8]| b[b.iter().take_while(|&&x| x == 0).count()..].to_vec();
                let n = minimal(n);
                SignatureVerifier::Rs256 {
                    signature_len: n.len(),
                    key: RsaPublicKeyComponents { n, e: minimal(e) },
                }
            }
        }
    }
}

fn check_rsa_size(bits: usize) -> Result<(), SigningError> {
    if bits < RSA_BITS {
        return Err(SigningError::InvalidKey(format!(
            "RSA key of {bits} bits; at least {RSA_BITS} required"
        )));
    }
    Ok(())
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A parsed private key: what jsonwebtoken signs with, and its public half.
struct PrivateKey {
    encoding: EncodingKey,
    public: PublicKey,
}

impl PrivateKey {
    /// Parses a PKCS#8 private key (PEM, or DER as some writers store it) that must be a
    /// key for `alg`.
    fn parse(bytes: &[u8], alg: SigningAlg) -> Result<Self, SigningError> {
        let pem_doc;
        let der: &[u8] = if bytes.trim_ascii_start().starts_with(b"-----BEGIN") {
            let text = std::str::from_utf8(bytes)
                .map_err(|_| SigningError::InvalidKey("PEM is not text".into()))?;
            let (label, doc) = pkcs8::SecretDocument::from_pem(text.trim())
                .map_err(|e| SigningError::InvalidKey(format!("unreadable PEM: {e}")))?;
            if label != "PRIVATE KEY" {
                return Err(SigningError::InvalidKey(format!(
                    "PEM holds a `{label}`, not an unencrypted PKCS#8 `PRIVATE KEY` \
                     (convert it with `openssl pkcs8 -topk8 -nocrypt`)"
                )));
            }
            pem_doc = doc;
            pem_doc.as_bytes()
        } else {
            bytes
        };
        let info = PrivateKeyInfo::try_from(der)
            .map_err(|e| SigningError::InvalidKey(format!("not a PKCS#8 private key: {e}")))?;
        match pkcs8_alg(&info) {
            Ok(found) if found == alg => {}
            Ok(found) => {
                return Err(SigningError::InvalidKey(format!(
                    "the key is {} but tokens.signing.alg is {}",
                    alg_label(found),
                    alg_name(alg)
                )));
            }
            Err(found) => {
                return Err(SigningError::InvalidKey(format!(
                    "the key is {found}, not {}",
                    alg_label(alg)
                )));
            }
        }
        let invalid =
            |e: pkcs8::Error| SigningError::InvalidKey(format!("{}: {e}", alg_label(alg)));
        match alg {
            SigningAlg::EdDsa => {
                let key = ed25519_dalek::SigningKey::from_pkcs8_der(der).map_err(invalid)?;
                Ok(PrivateKey {
                    encoding: EncodingKey::from_ed_der(der),
                    public: PublicKey::Ed25519 {
                        x: key.verifying_key().to_bytes(),
                    },
                })
            }
            SigningAlg::Es256 => {
                use p256::elliptic_curve::sec1::ToEncodedPoint as _;
                let key = p256::SecretKey::from_pkcs8_der(der).map_err(invalid)?;
                let point = key.public_key().to_encoded_point(false);
                let coord = |c: Option<&p256::FieldBytes>| -> Result<[u8; 32], SigningError> {
                    c.map(|c| <[u8; 32]>::from(*c))
                        .ok_or_else(|| SigningError::InvalidKey("P-256 point at infinity".into()))
                };
                Ok(PrivateKey {
                    encoding: EncodingKey::from_ec_der(der),
                    public: PublicKey::P256 {
                        x: coord(point.x())?,
                        y: coord(point.y())?,
                    },
                })
            }
            SigningAlg::Rs256 => {
                let key = rsa::RsaPrivateKey::from_pkcs8_der(der).map_err(invalid)?;
                check_rsa_size(key.n().bits())?;
                key.validate()
                    .map_err(|e| SigningError::InvalidKey(format!("RSA key: {e}")))?;
                // jsonwebtoken's RustCrypto signer reads PKCS#1, not PKCS#8.
                let pkcs1 = key
                    .to_pkcs1_der()
                    .map_err(|e| SigningError::Crypto(format!("RSA key encoding: {e}")))?;
                Ok(PrivateKey {
                    encoding: EncodingKey::from_rsa_der(pkcs1.as_bytes()),
                    public: PublicKey::Rsa {
                        n: key.n().to_bytes_be(),
                        e: key.e().to_bytes_be(),
                    },
                })
            }
        }
    }
}

/// The signing algorithm a PKCS#8 key is for, or a description of what it is instead.
fn pkcs8_alg(info: &PrivateKeyInfo<'_>) -> Result<SigningAlg, String> {
    let oid = info.algorithm.oid;
    if oid == OID_ED25519 {
        Ok(SigningAlg::EdDsa)
    } else if oid == OID_RSA {
        Ok(SigningAlg::Rs256)
    } else if oid == OID_EC_PUBLIC_KEY {
        match info.algorithm.parameters_oid() {
            Ok(curve) if curve == OID_P256 => Ok(SigningAlg::Es256),
            Ok(curve) => Err(format!("an EC key on curve {curve}")),
            Err(_) => Err("an EC key without a named curve".to_owned()),
        }
    } else {
        Err(format!("a key of algorithm {oid}"))
    }
}

/// A store record for a key whose PKCS#8 PEM is `pem`; `kid` is its RFC 7638 thumbprint.
fn record(pem: &[u8], alg: SigningAlg, now: UnixMillis) -> Result<SigningKey, SigningError> {
    let parsed = PrivateKey::parse(pem, alg)?;
    let kid = parsed.public.thumbprint();
    Ok(SigningKey {
        public_jwk: parsed.public.to_jwk(&kid).to_string(),
        kid,
        alg: alg_name(alg).to_owned(),
        private_key: pem.to_vec(),
        created_at: now,
        not_after: None,
        retired_at: None,
    })
}

/// A fresh key pair for `alg` (EdDSA: Ed25519; ES256: P-256; RS256: RSA 2048), as a
/// current (unretired) store record: `private_key` is its PKCS#8 PEM, `kid` its RFC 7638
/// thumbprint. CPU-bound (RSA: tens of milliseconds or more): call from `spawn_blocking`.
pub fn generate(alg: SigningAlg, now: UnixMillis) -> Result<SigningKey, SigningError> {
    let crypto = |e: pkcs8::Error| SigningError::Crypto(format!("key encoding: {e}"));
    let pem = match alg {
        SigningAlg::EdDsa => ed25519_dalek::SigningKey::generate(&mut OsRng)
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(crypto)?,
        SigningAlg::Es256 => p256::SecretKey::random(&mut OsRng)
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(crypto)?,
        SigningAlg::Rs256 => rsa::RsaPrivateKey::new(&mut OsRng, RSA_BITS)
            .map_err(|e| SigningError::Crypto(format!("RSA key generation: {e}")))?
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(crypto)?,
    };
    record(pem.as_bytes(), alg, now)
}

/// The key of `tokens.signing.key_file` (an unencrypted PKCS#8 PEM, e.g. a Kubernetes
/// Secret) as a current store record. Refuses a key of another algorithm than `alg`.
pub fn from_pkcs8_pem(
    pem: &[u8],
    alg: SigningAlg,
    now: UnixMillis,
) -> Result<SigningKey, SigningError> {
    record(pem, alg, now)
}

/// A key that verifies tokens.
struct VerifyKey {
    verifier: SignatureVerifier,
    alg: SigningAlg,
    not_after: Option<UnixMillis>,
}

/// A public key ready to check signatures of one algorithm. ES256 and RS256 go through ring
/// (hand-tuned assembly: RS256 ~8x, ES256 ~3x faster than the RustCrypto backend on the
/// proxy's fresh-token path); EdDSA stays on jsonwebtoken's ed25519-dalek.
enum SignatureVerifier {
    EdDsa(DecodingKey),
    /// The uncompressed SEC1 point; the JWS signature is the fixed 64-byte r||s (RFC 7518
    /// section 3.4), not DER.
    Es256(UnparsedPublicKey<[u8; 65]>),
    /// `n` and `e` without leading zero bytes; a signature is exactly as long as `n`.
    Rs256 {
        key: RsaPublicKeyComponents<Vec<u8>>,
        signature_len: usize,
    },
}

/// Longest RS256 signature: the largest modulus `rsa::RsaPublicKey` accepts (4096 bits).
const MAX_SIGNATURE_LEN: usize = 512;

impl SignatureVerifier {
    /// Whether `signature_b64` (base64url, no padding) signs `message`.
    fn verify(&self, message: &[u8], signature_b64: &str) -> bool {
        let mut buf = [0u8; MAX_SIGNATURE_LEN];
        match self {
            SignatureVerifier::EdDsa(decoding) => matches!(
                jsonwebtoken::crypto::verify(signature_b64, message, decoding, Algorithm::EdDSA),
                Ok(true)
            ),
            SignatureVerifier::Es256(key) => decode_signature(signature_b64, 64, &mut buf)
                .is_some_and(|signature| key.verify(message, signature).is_ok()),
            SignatureVerifier::Rs256 { key, signature_len } => {
                decode_signature(signature_b64, *signature_len, &mut buf).is_some_and(|signature| {
                    key.verify(&RSA_PKCS1_2048_8192_SHA256, message, signature)
                        .is_ok()
                })
            }
        }
    }
}

/// The signature bytes when `signature_b64` is canonical base64url without padding of
/// exactly `len` bytes; anything else is refused before any arithmetic.
fn decode_signature<'a>(
    signature_b64: &str,
    len: usize,
    buf: &'a mut [u8; MAX_SIGNATURE_LEN],
) -> Option<&'a [u8]> {
    if signature_b64.len() != (len * 4).div_ceil(3) {
        return None;
    }
    match URL_SAFE_NO_PAD.decode_slice(signature_b64, buf) {
        Ok(decoded) if decoded == len => buf.get(..len),
        _ => None,
    }
}

/// The key that signs.
struct Signer {
    kid: String,
    alg: SigningAlg,
    encoding: EncodingKey,
}

/// The signing key and every key that still verifies, built once from the store's list
/// and shared read-only (the server keeps it in an `ArcSwap`); rebuild it after a rotation.
pub struct KeyRing {
    signer: Signer,
    verifiers: Verifiers,
    jwks: Bytes,
}

/// Keys that verify compact JWS, by `kid`, each bound to one algorithm: a [`KeyRing`]'s,
/// or an external issuer's from its JWKS ([`Verifiers::from_jwks`]).
#[derive(Default)]
pub struct Verifiers {
    keys: HashMap<String, VerifyKey>,
}

impl fmt::Debug for Verifiers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut kids: Vec<&String> = self.keys.keys().collect();
        kids.sort();
        f.debug_struct("Verifiers").field("kids", &kids).finish()
    }
}

/// The algorithm a JWK from an external JWKS verifies: its `alg` member when present (one
/// Gatehouse supports, never an HMAC), else the one its key type implies.
fn jwk_alg(jwk: &Map<String, Value>) -> Result<SigningAlg, String> {
    let text = |name: &str| jwk.get(name).and_then(Value::as_str);
    if let Some(alg) = text("alg") {
        return parse_alg(alg).ok_or_else(|| format!("unsupported alg {alg:?}"));
    }
    match (text("kty"), text("crv")) {
        (Some("OKP"), Some("Ed25519")) => Ok(SigningAlg::EdDsa),
        (Some("EC"), Some("P-256")) => Ok(SigningAlg::Es256),
        (Some("RSA"), _) => Ok(SigningAlg::Rs256),
        (kty, crv) => Err(format!("unsupported key type {kty:?} (crv {crv:?})")),
    }
}

impl Verifiers {
    /// The signature keys of a JWKS document (RFC 7517 section 5): keys with `use` other than
    /// `sig`, without a `kid`, of an unsupported type or algorithm, or malformed are skipped
    /// and listed in the second value (`kid: reason`), so one odd key does not hide the rest.
    /// Fails only when the document is not a JWKS at all.
    pub fn from_jwks(document: &[u8]) -> Result<(Verifiers, Vec<String>), SigningError> {
        #[derive(serde::Deserialize)]
        struct Jwks {
            keys: Vec<Map<String, Value>>,
        }
        let jwks: Jwks = serde_json::from_slice(document)
            .map_err(|e| SigningError::InvalidKey(format!("not a JWKS document: {e}")))?;
        let mut keys = HashMap::with_capacity(jwks.keys.len());
        let mut skipped = Vec::new();
        for jwk in &jwks.keys {
            let kid = jwk.get("kid").and_then(Value::as_str).unwrap_or_default();
            let parsed = (|| {
                if kid.is_empty() {
                    return Err("no kid".to_owned());
                }
                if jwk.get("use").is_some_and(|u| u.as_str() != Some("sig")) {
                    return Err("not a signature key (`use`)".to_owned());
                }
                let alg = jwk_alg(jwk)?;
                let public = PublicKey::from_jwk_members(jwk, alg).map_err(|e| e.to_string())?;
                Ok(VerifyKey {
                    verifier: public.verifier(),
                    alg,
                    not_after: None,
                })
            })();
            match parsed {
                Ok(key) => {
                    keys.entry(kid.to_owned()).or_insert(key);
                }
                Err(reason) => skipped.push(format!("{kid}: {reason}")),
            }
        }
        Ok((Verifiers { keys }, skipped))
    }

    /// How many keys verify.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key verifies.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether a key with this `kid` verifies at `now`.
    pub fn knows(&self, kid: &str, now: UnixMillis) -> bool {
        self.keys
            .get(kid)
            .is_some_and(|k| k.not_after.is_none_or(|t| now < t))
    }

    /// Checks a compact JWS: a `kid` this set holds and that is not past its `not_after`
    /// at `now`, a header `alg` equal to that key's algorithm, no `crit`, and a valid
    /// signature. Claims are returned unchecked: the caller validates them.
    pub fn verify(&self, token: &str, now: UnixMillis) -> Result<VerifiedJws, JwsError> {
        #[derive(serde::Deserialize)]
        struct JoseHeader {
            alg: String,
            #[serde(default)]
            kid: Option<String>,
            #[serde(default)]
            typ: Option<String>,
            #[serde(default)]
            crit: Option<serde::de::IgnoredAny>,
        }
        let mut parts = token.split('.');
        let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwsError::Malformed);
        };
        let header: JoseHeader = URL_SAFE_NO_PAD
            .decode(header_b64)
            .ok()
            .and_then(|json| serde_json::from_slice(&json).ok())
            .ok_or(JwsError::Malformed)?;
        if header.crit.is_some() {
            return Err(JwsError::Malformed);
        }
        let kid = header.kid.ok_or(JwsError::UnknownKid)?;
        let key = self
            .keys
            .get(&kid)
            .filter(|k| k.not_after.is_none_or(|t| now < t))
            .ok_or(JwsError::UnknownKid)?;
        if header.alg != alg_name(key.alg) {
            return Err(JwsError::AlgorithmMismatch);
        }
        let message = &token[..header_b64.len() + 1 + payload_b64.len()];
        if !key.verifier.verify(message.as_bytes(), signature_b64) {
            return Err(JwsError::BadSignature);
        }
        let claims: Map<String, Value> = URL_SAFE_NO_PAD
            .decode(payload_b64)
            .ok()
            .and_then(|json| serde_json::from_slice(&json).ok())
            .ok_or(JwsError::Malformed)?;
        Ok(VerifiedJws {
            typ: header.typ,
            kid,
            claims,
        })
    }
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut kids: Vec<&String> = self.verifiers.keys.keys().collect();
        kids.sort();
        f.debug_struct("KeyRing")
            .field("current_kid", &self.signer.kid)
            .field("alg", &alg_name(self.signer.alg))
            .field("verifying_kids", &kids)
            .finish_non_exhaustive()
    }
}

impl KeyRing {
    /// Builds the ring from keys in the store's order: `keys[0]` signs (it must be
    /// unretired and not past `not_after`); every key not past its `not_after` at `now`
    /// verifies and is published in the JWKS, in the given order. A repeated `kid` keeps
    /// its first entry.
    pub fn new(keys: &[SigningKey], now: UnixMillis) -> Result<KeyRing, SigningError> {
        let expired = |k: &SigningKey| k.not_after.is_some_and(|t| t <= now);
        let current = keys.first().ok_or(SigningError::NoCurrentKey)?;
        if current.retired_at.is_some() || expired(current) {
            return Err(SigningError::NoCurrentKey);
        }
        let signer_alg = stored_alg(current)?;
        let private = PrivateKey::parse(&current.private_key, signer_alg)?;
        if private.public != PublicKey::from_jwk(&current.public_jwk, signer_alg)? {
            return Err(SigningError::InvalidKey(format!(
                "the private key of {} does not match its public JWK",
                current.kid
            )));
        }
        let mut verifiers = HashMap::with_capacity(keys.len());
        let mut jwks = Vec::with_capacity(keys.len());
        for key in keys.iter().filter(|k| !expired(k)) {
            if verifiers.contains_key(&key.kid) {
                continue;
            }
            let alg = stored_alg(key)?;
            let public = PublicKey::from_jwk(&key.public_jwk, alg)?;
            jwks.push(public.to_jwk(&key.kid));
            verifiers.insert(
                key.kid.clone(),
                VerifyKey {
                    verifier: public.verifier(),
                    alg,
                    not_after: key.not_after,
                },
            );
        }
        let jwks = serde_json::to_vec(&json!({ "keys": jwks }))
            .map_err(|e| SigningError::Crypto(format!("JWKS encoding: {e}")))?;
        Ok(KeyRing {
            signer: Signer {
                kid: current.kid.clone(),
                alg: signer_alg,
                encoding: private.encoding,
            },
            verifiers: Verifiers { keys: verifiers },
            jwks: Bytes::from(jwks),
        })
    }

    /// The `kid` new tokens carry.
    pub fn current_kid(&self) -> &str {
        &self.signer.kid
    }

    /// The algorithm new tokens are signed with.
    pub fn alg(&self) -> SigningAlg {
        self.signer.alg
    }

    /// `GET /.well-known/jwks.json`: `{"keys":[...]}` with the public members of every
    /// key that verifies, the current one first.
    pub fn jwks(&self) -> &Bytes {
        &self.jwks
    }

    /// A compact JWS of `claims` with the header `{"alg", "typ": typ, "kid"}`.
    pub fn sign<T: Serialize>(&self, typ: &str, claims: &T) -> Result<String, SigningError> {
        let mut header = Header::new(jws_algorithm(self.signer.alg));
        header.typ = Some(typ.to_owned());
        header.kid = Some(self.signer.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.signer.encoding)
            .map_err(|e| SigningError::Crypto(e.to_string()))
    }

    /// Checks a compact JWS against the ring's verifying keys ([`Verifiers::verify`]).
    pub fn verify(&self, token: &str, now: UnixMillis) -> Result<VerifiedJws, JwsError> {
        self.verifiers.verify(token, now)
    }
}

fn stored_alg(key: &SigningKey) -> Result<SigningAlg, SigningError> {
    parse_alg(&key.alg).ok_or_else(|| {
        SigningError::InvalidKey(format!("key {} has unknown alg {:?}", key.kid, key.alg))
    })
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

async fn generate_off_thread(alg: SigningAlg, now: UnixMillis) -> Result<SigningKey, SigningError> {
    tokio::task::spawn_blocking(move || generate(alg, now))
        .await
        .map_err(|e| SigningError::Crypto(format!("key generation task: {e}")))?
}

/// The keys to build the [`KeyRing`] from, signer first.
///
/// With `cfg.key_file`: that key signs; the store's keys that are still valid keep
/// verifying (tokens signed before the switch to a key file). Otherwise the store's keys:
/// on first start one of `cfg.alg` is generated and stored atomically (replicas racing at
/// first start agree on one); when the current key's algorithm is not `cfg.alg` (the
/// operator changed it) the store is rotated to a new key of `cfg.alg` and the old one keeps
/// verifying for `max_token_lifetime`.
pub async fn load_or_create(
    store: &dyn Store,
    cfg: &SigningConfig,
    max_token_lifetime: Duration,
    now: UnixMillis,
) -> Result<Vec<SigningKey>, SigningError> {
    if let Some(path) = &cfg.key_file {
        let pem = tokio::fs::read(path)
            .await
            .map_err(|source| SigningError::Io {
                path: path.clone(),
                source,
            })?;
        let key = from_pkcs8_pem(&pem, cfg.alg, now)?;
        let mut keys = vec![key];
        for stored in store.list_signing_keys().await? {
            if stored.kid != keys[0].kid && stored.not_after.is_none_or(|t| now < t) {
                keys.push(stored);
            }
        }
        return Ok(keys);
    }
    let mut keys = store.list_signing_keys().await?;
    if keys.first().is_none_or(|k| k.retired_at.is_some()) {
        let key = generate_off_thread(cfg.alg, now).await?;
        store.insert_signing_key_if_absent(&key).await?;
        keys = store.list_signing_keys().await?;
    }
    if keys.first().is_some_and(|k| k.alg != alg_name(cfg.alg)) {
        rotate(store, cfg.alg, max_token_lifetime, now).await?;
        keys = store.list_signing_keys().await?;
    }
    Ok(keys)
}

/// `gatehouse keys rotate-signing`: stores a new current key of `alg`; every previous key
/// is retired now and keeps verifying until `now + max_token_lifetime` (when the longest
/// token it signed has expired). Returns the new key.
pub async fn rotate(
    store: &dyn Store,
    alg: SigningAlg,
    max_token_lifetime: Duration,
    now: UnixMillis,
) -> Result<SigningKey, SigningError> {
    let key = generate_off_thread(alg, now).await?;
    store
        .rotate_signing_key(&key, now.saturating_add(millis(max_token_lifetime)))
        .await?;
    Ok(key)
}

/// Keys generated once per test binary (RSA generation is slow), shared by the tests of
/// this module and `jwt.rs`.
#[cfg(test)]
pub(crate) mod test_keys {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::sync::OnceLock;

    use super::{SigningAlg, SigningKey, generate};

    /// The `now` the shared keys were made at (2023-11-14T22:13:20Z).
    pub(crate) const NOW: i64 = 1_700_000_000_000;

    /// Every algorithm.
    pub(crate) const ALGS: [SigningAlg; 3] =
        [SigningAlg::EdDsa, SigningAlg::Es256, SigningAlg::Rs256];

    /// A key of `alg`; `n` (0 or 1) picks one of two distinct keys.
    pub(crate) fn key(alg: SigningAlg, n: usize) -> SigningKey {
        static KEYS: OnceLock<Vec<SigningKey>> = OnceLock::new();
        let keys = KEYS.get_or_init(|| {
            std::thread::scope(|s| {
                let handles: Vec<_> = ALGS
                    .iter()
                    .flat_map(|&alg| [alg, alg])
                    .map(|alg| s.spawn(move || generate(alg, NOW).unwrap()))
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            })
        });
        let i = ALGS.iter().position(|&a| a == alg).unwrap();
        keys[i * 2 + n].clone()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::test_keys::{ALGS, NOW, key};
    use super::*;
    use crate::store::SqliteStore;

    const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

    fn ring(keys: &[SigningKey]) -> KeyRing {
        KeyRing::new(keys, NOW).unwrap()
    }

    fn jwks_keys(ring: &KeyRing) -> Vec<Map<String, Value>> {
        let doc: Value = serde_json::from_slice(ring.jwks()).unwrap();
        assert_eq!(doc.as_object().unwrap().len(), 1, "only `keys`: {doc}");
        doc["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k.as_object().unwrap().clone())
            .collect()
    }

    fn b64json(v: &Value) -> String {
        b64(v.to_string().as_bytes())
    }

    /// A token with any header, signed (or not) as the caller says.
    fn forge(header: &Value, claims: &Value, signature: &[u8]) -> String {
        format!("{}.{}.{}", b64json(header), b64json(claims), b64(signature))
    }

    #[test]
    fn generated_records_are_complete_pkcs8_pem_with_a_public_jwk() {
        for alg in ALGS {
            let k = key(alg, 0);
            assert_eq!(k.alg, alg_name(alg));
            assert_eq!((k.created_at, k.not_after, k.retired_at), (NOW, None, None));
            let pem = std::str::from_utf8(&k.private_key).unwrap();
            assert!(
                pem.starts_with("-----BEGIN PRIVATE KEY-----\n"),
                "{pem:.40}"
            );
            let jwk: Map<String, Value> = serde_json::from_str(&k.public_jwk).unwrap();
            assert_eq!(jwk["kid"], k.kid.as_str());
            assert_eq!(jwk["alg"], alg_name(alg));
            assert_eq!(jwk["use"], "sig");
            let (kty, members): (&str, &[&str]) = match alg {
                SigningAlg::EdDsa => ("OKP", &["crv", "x"]),
                SigningAlg::Es256 => ("EC", &["crv", "x", "y"]),
                SigningAlg::Rs256 => ("RSA", &["n", "e"]),
            };
            assert_eq!(jwk["kty"], kty);
            for m in members {
                assert!(jwk.contains_key(*m), "{alg:?} JWK lacks {m}");
            }
            assert_eq!(jwk.len(), 4 + members.len(), "{jwk:?}");
            assert_ne!(key(alg, 0).kid, key(alg, 1).kid);
        }
        let rsa = PublicKey::from_jwk(&key(SigningAlg::Rs256, 0).public_jwk, SigningAlg::Rs256);
        assert!(matches!(rsa, Ok(PublicKey::Rsa { n, .. }) if n.len() == 256));
    }

    #[test]
    fn kid_is_the_rfc_7638_thumbprint() {
        // RFC 7638 section 3.1.
        let n = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
        let rfc = PublicKey::Rsa {
            n: URL_SAFE_NO_PAD.decode(n).unwrap(),
            e: URL_SAFE_NO_PAD.decode("AQAB").unwrap(),
        };
        assert_eq!(
            rfc.thumbprint(),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
        // RFC 8037 appendix A.3 (Ed25519).
        let x = URL_SAFE_NO_PAD
            .decode("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo")
            .unwrap();
        let ed = PublicKey::Ed25519 {
            x: x.try_into().unwrap(),
        };
        assert_eq!(
            ed.thumbprint(),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
        // Every generated kid agrees with jsonwebtoken's own thumbprint of the served JWK.
        for alg in ALGS {
            let k = key(alg, 0);
            let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_str(&k.public_jwk).unwrap();
            let theirs = jwk
                .thumbprint(jsonwebtoken::jwk::ThumbprintHash::SHA256)
                .unwrap();
            assert_eq!(k.kid, theirs, "{alg:?}");
        }
    }

    #[test]
    fn sign_and_verify_round_trip_for_every_alg() {
        for alg in ALGS {
            let k = key(alg, 0);
            let ring = ring(std::slice::from_ref(&k));
            assert_eq!(ring.current_kid(), k.kid);
            assert_eq!(ring.alg(), alg);
            let token = ring.sign("at+jwt", &json!({"sub": "u1", "n": 7})).unwrap();
            let header: Value = serde_json::from_slice(
                &URL_SAFE_NO_PAD
                    .decode(token.split('.').next().unwrap())
                    .unwrap(),
            )
            .unwrap();
            assert_eq!(
                header,
                json!({"alg": alg_name(alg), "typ": "at+jwt", "kid": k.kid})
            );
            let v = ring.verify(&token, NOW).unwrap();
            assert_eq!(v.typ.as_deref(), Some("at+jwt"));
            assert_eq!(v.kid, k.kid);
            assert_eq!(Value::Object(v.claims), json!({"sub": "u1", "n": 7}));
        }
    }

    #[test]
    fn jwks_has_public_members_only() {
        for alg in ALGS {
            let k = key(alg, 0);
            let ring = ring(std::slice::from_ref(&k));
            let keys = jwks_keys(&ring);
            assert_eq!(keys.len(), 1);
            assert_eq!(keys[0]["kid"], k.kid.as_str());
            assert_eq!(
                Value::Object(keys[0].clone()),
                serde_json::from_str::<Value>(&k.public_jwk).unwrap()
            );
            for m in PRIVATE_MEMBERS {
                assert!(!keys[0].contains_key(m), "{alg:?} JWKS has `{m}`");
            }
            // Usable as-is by other JWT libraries.
            let set: jsonwebtoken::jwk::JwkSet = serde_json::from_slice(ring.jwks()).unwrap();
            assert_eq!(set.keys[0].common.key_id.as_deref(), Some(k.kid.as_str()));
        }
    }

    #[test]
    fn tampered_tokens_are_refused() {
        for alg in ALGS {
            let ring = ring(&[key(alg, 0)]);
            let token = ring.sign("at+jwt", &json!({"sub": "u1"})).unwrap();
            let parts: Vec<&str> = token.split('.').collect();
            // Another payload under the original signature.
            let other = format!(
                "{}.{}.{}",
                parts[0],
                b64json(&json!({"sub": "admin"})),
                parts[2]
            );
            assert_eq!(
                ring.verify(&other, NOW),
                Err(JwsError::BadSignature),
                "{alg:?}"
            );
            // A flipped bit in the signature.
            let mut sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
            sig[5] ^= 1;
            let flipped = format!("{}.{}.{}", parts[0], parts[1], b64(&sig));
            assert_eq!(
                ring.verify(&flipped, NOW),
                Err(JwsError::BadSignature),
                "{alg:?}"
            );
            // A signature of the wrong length (one base64 character more, or less).
            for odd in [format!("{}A", parts[2]), parts[2][1..].to_owned()] {
                let token = format!("{}.{}.{odd}", parts[0], parts[1]);
                assert_eq!(
                    ring.verify(&token, NOW),
                    Err(JwsError::BadSignature),
                    "{alg:?}"
                );
            }
            // No signature at all.
            let bare = format!("{}.{}.", parts[0], parts[1]);
            assert_eq!(
                ring.verify(&bare, NOW),
                Err(JwsError::BadSignature),
                "{alg:?}"
            );
            // Another key's signature under this key's kid.
            let other_ring = KeyRing::new(&[key(alg, 1)], NOW).unwrap();
            let t2 = other_ring.sign("at+jwt", &json!({"sub": "u1"})).unwrap();
            let sig2 = t2.rsplit('.').next().unwrap();
            let swapped = format!("{}.{}.{}", parts[0], parts[1], sig2);
            assert_eq!(
                ring.verify(&swapped, NOW),
                Err(JwsError::BadSignature),
                "{alg:?}"
            );
        }
    }

    #[test]
    fn alg_none_and_hmac_with_the_public_key_are_refused() {
        for alg in ALGS {
            let k = key(alg, 0);
            let ring = ring(std::slice::from_ref(&k));
            let claims = json!({"sub": "admin"});
            for none in ["none", "None", "NONE"] {
                let token = forge(
                    &json!({"alg": none, "kid": k.kid, "typ": "at+jwt"}),
                    &claims,
                    b"",
                );
                assert_eq!(ring.verify(&token, NOW), Err(JwsError::AlgorithmMismatch));
            }
            // HS256 "signed" with the public key, in every form an attacker can get it.
            for secret in [k.public_jwk.as_bytes(), &ring.jwks()[..]] {
                let mut header = Header::new(Algorithm::HS256);
                header.kid = Some(k.kid.clone());
                header.typ = Some("at+jwt".into());
                let token =
                    jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(secret))
                        .unwrap();
                assert_eq!(ring.verify(&token, NOW), Err(JwsError::AlgorithmMismatch));
            }
            // Another asymmetric alg than the key's own.
            let wrong = if alg == SigningAlg::Rs256 {
                "PS256"
            } else {
                "RS256"
            };
            let token = ring.sign("at+jwt", &claims).unwrap();
            let parts: Vec<&str> = token.split('.').collect();
            let relabelled = format!(
                "{}.{}.{}",
                b64json(&json!({"alg": wrong, "kid": k.kid, "typ": "at+jwt"})),
                parts[1],
                parts[2]
            );
            assert_eq!(
                ring.verify(&relabelled, NOW),
                Err(JwsError::AlgorithmMismatch)
            );
        }
    }

    #[test]
    fn unknown_or_missing_kid_and_malformed_tokens_are_refused() {
        let k = key(SigningAlg::EdDsa, 0);
        let ring = ring(std::slice::from_ref(&k));
        let stranger = KeyRing::new(&[key(SigningAlg::EdDsa, 1)], NOW).unwrap();
        let token = stranger.sign("at+jwt", &json!({})).unwrap();
        assert_eq!(ring.verify(&token, NOW), Err(JwsError::UnknownKid));
        let no_kid = forge(
            &json!({"alg": "EdDSA", "typ": "at+jwt"}),
            &json!({}),
            &[0; 64],
        );
        assert_eq!(ring.verify(&no_kid, NOW), Err(JwsError::UnknownKid));
        let crit = forge(
            &json!({"alg": "EdDSA", "kid": k.kid, "crit": ["b64"], "b64": false}),
            &json!({}),
            &[0; 64],
        );
        assert_eq!(ring.verify(&crit, NOW), Err(JwsError::Malformed));
        // A repeated header member is ambiguous: refused, whichever value comes first.
        let token = ring.sign("at+jwt", &json!({})).unwrap();
        let (_, rest) = token.split_once('.').unwrap();
        let twice = format!(r#"{{"alg":"EdDSA","alg":"none","kid":"{}"}}"#, k.kid);
        let dup = format!("{}.{rest}", b64(twice.as_bytes()));
        assert_eq!(ring.verify(&dup, NOW), Err(JwsError::Malformed));
        let good = ring.sign("at+jwt", &json!({})).unwrap();
        for bad in [
            "",
            "a.b",
            "a.b.c.d",
            "!!.e30.AA",
            &format!("{good}.x"),
            &format!("={good}"),
        ] {
            assert_eq!(ring.verify(bad, NOW), Err(JwsError::Malformed), "{bad}");
        }
        // A signed payload that is not a JSON object.
        let array = ring.sign("at+jwt", &json!([1, 2])).unwrap();
        assert_eq!(ring.verify(&array, NOW), Err(JwsError::Malformed));
    }

    #[test]
    fn a_rotated_out_key_verifies_until_not_after_while_the_new_one_signs() {
        for alg in ALGS {
            let mut old = key(alg, 0);
            let new = key(alg, 1);
            let old_token = ring(std::slice::from_ref(&old))
                .sign("at+jwt", &json!({}))
                .unwrap();
            old.retired_at = Some(NOW);
            old.not_after = Some(NOW + 3_600_000);
            let keys = [new.clone(), old.clone()];
            let rotated = ring(&keys);
            assert_eq!(rotated.current_kid(), new.kid);
            assert_eq!(rotated.verify(&old_token, NOW).unwrap().kid, old.kid);
            let new_token = rotated.sign("at+jwt", &json!({})).unwrap();
            assert_eq!(rotated.verify(&new_token, NOW).unwrap().kid, new.kid);
            let kids: Vec<Value> = jwks_keys(&rotated)
                .iter()
                .map(|k| k["kid"].clone())
                .collect();
            assert_eq!(kids, [json!(new.kid), json!(old.kid)], "current first");
            // The ring outlives not_after: the old key stops verifying then.
            assert_eq!(
                rotated.verify(&old_token, NOW + 3_600_000),
                Err(JwsError::UnknownKid)
            );
            // Built after not_after, the ring drops the key and the JWKS no longer has it.
            let later = KeyRing::new(&keys, NOW + 3_600_000).unwrap();
            assert_eq!(later.verify(&old_token, NOW), Err(JwsError::UnknownKid));
            assert_eq!(jwks_keys(&later).len(), 1);
        }
    }

    #[test]
    fn keyring_refuses_a_list_without_a_usable_signer() {
        assert!(matches!(
            KeyRing::new(&[], NOW),
            Err(SigningError::NoCurrentKey)
        ));
        let mut retired = key(SigningAlg::EdDsa, 0);
        retired.retired_at = Some(NOW);
        retired.not_after = Some(NOW + 1);
        assert!(matches!(
            KeyRing::new(&[retired], NOW),
            Err(SigningError::NoCurrentKey)
        ));
        let mut expired = key(SigningAlg::EdDsa, 0);
        expired.not_after = Some(NOW);
        assert!(matches!(
            KeyRing::new(&[expired], NOW),
            Err(SigningError::NoCurrentKey)
        ));
        // A private key stored under another key's public JWK.
        let mut mixed = key(SigningAlg::EdDsa, 0);
        mixed.public_jwk = key(SigningAlg::EdDsa, 1).public_jwk;
        assert!(matches!(
            KeyRing::new(&[mixed], NOW),
            Err(SigningError::InvalidKey(_))
        ));
        let mut unknown = key(SigningAlg::EdDsa, 0);
        unknown.alg = "HS256".into();
        assert!(matches!(
            KeyRing::new(&[unknown], NOW),
            Err(SigningError::InvalidKey(_))
        ));
    }

    #[test]
    fn from_pkcs8_pem_round_trips_generated_keys() {
        for alg in ALGS {
            let k = key(alg, 0);
            let again = from_pkcs8_pem(&k.private_key, alg, NOW + 5).unwrap();
            assert_eq!(again.kid, k.kid);
            assert_eq!(again.public_jwk, k.public_jwk);
            assert_eq!(again.private_key, k.private_key);
            assert_eq!(again.created_at, NOW + 5);
            // DER, as other writers may store it, parses to the same key.
            let text = std::str::from_utf8(&k.private_key).unwrap();
            let (_, der) = pkcs8::SecretDocument::from_pem(text).unwrap();
            let from_der = PrivateKey::parse(der.as_bytes(), alg).unwrap();
            assert_eq!(from_der.public.thumbprint(), k.kid);
        }
    }

    #[test]
    fn the_ed25519_fixture_loads_and_signs() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/tls/signing-ed25519.pem"
        );
        let pem = std::fs::read(path).unwrap();
        let k = from_pkcs8_pem(&pem, SigningAlg::EdDsa, NOW).unwrap();
        assert_eq!(
            k.kid,
            from_pkcs8_pem(&pem, SigningAlg::EdDsa, NOW).unwrap().kid
        );
        assert_eq!(k.kid.len(), 43);
        let ring = ring(&[k]);
        let token = ring.sign("at+jwt", &json!({"x": 1})).unwrap();
        assert_eq!(ring.verify(&token, NOW).unwrap().claims["x"], 1);
    }

    #[test]
    fn a_key_of_another_alg_is_refused_clearly() {
        let fixture = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/tls/signing-ed25519.pem"
        ))
        .unwrap();
        for have in ALGS {
            for want in ALGS.into_iter().filter(|&a| a != have) {
                let pem = key(have, 0).private_key;
                let err = from_pkcs8_pem(&pem, want, NOW).unwrap_err().to_string();
                assert!(
                    err.contains(alg_name(have)) && err.contains(alg_name(want)),
                    "{have:?} as {want:?}: {err}"
                );
            }
        }
        let err = from_pkcs8_pem(&fixture, SigningAlg::Es256, NOW)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "invalid signing key: the key is an Ed25519 key (EdDSA) but tokens.signing.alg is ES256"
        );
        // Not PKCS#8 / not a key at all: refused, and the error never quotes the key.
        let body = "MC4CAQAwBQYDK2VwBCIEIBNKe1wWhb7S20YbPaqsW+eFJFY8kcpAMK4XkiDQbJpT";
        let sec1 =
            format!("-----BEGIN EC PRIVATE KEY-----\n{body}\n-----END EC PRIVATE KEY-----\n");
        for bad in [
            sec1.as_bytes(),
            b"not a key",
            b"-----BEGIN PRIVATE KEY-----\n!!\n",
        ] {
            let err = from_pkcs8_pem(bad, SigningAlg::EdDsa, NOW).unwrap_err();
            assert!(matches!(err, SigningError::InvalidKey(_)), "{err:?}");
            assert!(!err.to_string().contains("MC4CAQ"), "{err}");
        }
        assert!(
            from_pkcs8_pem(sec1.as_bytes(), SigningAlg::EdDsa, NOW)
                .unwrap_err()
                .to_string()
                .contains("EC PRIVATE KEY")
        );
    }

    #[test]
    fn debug_output_never_shows_private_keys() {
        for alg in ALGS {
            let k = key(alg, 0);
            let ring = ring(std::slice::from_ref(&k));
            let pem = std::str::from_utf8(&k.private_key).unwrap();
            let body_line = pem.lines().nth(1).unwrap();
            for shown in [format!("{ring:?}"), format!("{k:?}")] {
                assert!(!shown.contains(body_line), "{shown}");
                assert!(shown.contains(&k.kid), "{shown}");
            }
        }
    }

    fn sqlite() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("gatehouse.db")).unwrap();
        (dir, store)
    }

    fn cfg(alg: SigningAlg) -> SigningConfig {
        SigningConfig {
            alg,
            key_file: None,
        }
    }

    const DAY: Duration = Duration::from_secs(86_400);

    #[tokio::test]
    async fn load_or_create_bootstraps_once_and_then_loads_the_same_key() {
        let (_dir, store) = sqlite();
        let first = load_or_create(&store, &cfg(SigningAlg::EdDsa), DAY, NOW)
            .await
            .unwrap();
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].alg, "EdDSA");
        assert_eq!(store.list_signing_keys().await.unwrap(), first);
        let second = load_or_create(&store, &cfg(SigningAlg::EdDsa), DAY, NOW + 1000)
            .await
            .unwrap();
        assert_eq!(second, first);
        let ring = KeyRing::new(&second, NOW + 1000).unwrap();
        assert_eq!(ring.current_kid(), first[0].kid);
    }

    #[tokio::test]
    async fn rotate_makes_a_new_current_key_and_the_old_one_keeps_verifying() {
        let (_dir, store) = sqlite();
        let keys = load_or_create(&store, &cfg(SigningAlg::Es256), DAY, NOW)
            .await
            .unwrap();
        let old_ring = KeyRing::new(&keys, NOW).unwrap();
        let old_token = old_ring.sign("at+jwt", &json!({})).unwrap();

        let new = rotate(&store, SigningAlg::Es256, DAY, NOW + 10)
            .await
            .unwrap();
        assert_ne!(new.kid, keys[0].kid);
        let keys = load_or_create(&store, &cfg(SigningAlg::Es256), DAY, NOW + 20)
            .await
            .unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].kid, new.kid);
        assert_eq!(keys[1].kid, old_ring.current_kid());
        assert_eq!(keys[1].retired_at, Some(NOW + 10));
        assert_eq!(keys[1].not_after, Some(NOW + 10 + 86_400_000));
        let ring = KeyRing::new(&keys, NOW + 20).unwrap();
        assert_eq!(ring.current_kid(), new.kid);
        assert_eq!(ring.verify(&old_token, NOW + 20).unwrap().kid, keys[1].kid);
        // A day later the old key is gone from a rebuilt ring.
        let later = KeyRing::new(&keys, NOW + 10 + 86_400_000).unwrap();
        assert_eq!(later.verify(&old_token, NOW), Err(JwsError::UnknownKid));
    }

    #[tokio::test]
    async fn a_changed_alg_rotates_to_a_key_of_the_new_alg() {
        let (_dir, store) = sqlite();
        let ed = load_or_create(&store, &cfg(SigningAlg::EdDsa), DAY, NOW)
            .await
            .unwrap();
        let rs = load_or_create(&store, &cfg(SigningAlg::Rs256), DAY, NOW + 5)
            .await
            .unwrap();
        assert_eq!(rs.len(), 2);
        assert_eq!(rs[0].alg, "RS256");
        assert_eq!(rs[1].kid, ed[0].kid);
        assert_eq!(rs[1].not_after, Some(NOW + 5 + 86_400_000));
        let ring = KeyRing::new(&rs, NOW + 5).unwrap();
        assert_eq!(ring.alg(), SigningAlg::Rs256);
        assert_eq!(jwks_keys(&ring).len(), 2);
    }

    #[tokio::test]
    async fn a_key_file_wins_over_the_store_whose_keys_keep_verifying() {
        let (dir, store) = sqlite();
        let stored = load_or_create(&store, &cfg(SigningAlg::EdDsa), DAY, NOW)
            .await
            .unwrap();
        let file_key = key(SigningAlg::Es256, 0);
        let path = dir.path().join("signing.pem");
        std::fs::write(&path, &file_key.private_key).unwrap();
        let cfg = SigningConfig {
            alg: SigningAlg::Es256,
            key_file: Some(path.clone()),
        };
        let keys = load_or_create(&store, &cfg, DAY, NOW + 1).await.unwrap();
        let kids: Vec<&str> = keys.iter().map(|k| k.kid.as_str()).collect();
        assert_eq!(kids, [file_key.kid.as_str(), stored[0].kid.as_str()]);
        // The store is left as it was: no rotation for the key file's alg.
        assert_eq!(store.list_signing_keys().await.unwrap(), stored);
        let ring = KeyRing::new(&keys, NOW + 1).unwrap();
        assert_eq!(ring.current_kid(), file_key.kid);

        let missing = SigningConfig {
            alg: SigningAlg::Es256,
            key_file: Some(dir.path().join("nope.pem")),
        };
        let err = load_or_create(&store, &missing, DAY, NOW)
            .await
            .unwrap_err();
        assert!(matches!(err, SigningError::Io { .. }), "{err:?}");
        let wrong_alg = SigningConfig {
            alg: SigningAlg::Rs256,
            key_file: Some(path),
        };
        let err = load_or_create(&store, &wrong_alg, DAY, NOW)
            .await
            .unwrap_err();
        assert!(matches!(err, SigningError::InvalidKey(_)), "{err:?}");
    }
}
