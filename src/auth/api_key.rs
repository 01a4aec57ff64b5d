//! The API key format (SPEC section 3): generating keys, checking a presented key's shape and
//! checksum, and the digest the store keeps.
//!
//! A key is `sk_` (secret) or `pk_` (publishable), then a 43-character base62 body (32 random
//! bytes, big-endian, left-padded with `0`), then a 6-character base62 checksum (CRC-32/IEEE of
//! prefix and body, left-padded with `0`): 52 ASCII characters in all. The idea is GitHub's
//! token format: a mistyped, truncated or made-up key is refused by [`parse`] without any store
//! lookup, and a key is recognisable in logs and by secret scanners.
//!
//! Owns: the alphabet, the lengths, the checksum. Leaf module: it knows nothing of users, HTTP
//! or how keys are stored beyond [`TokenHash`]. The plain key is never formatted by this
//! module's `Debug` output, nor carried in an error.

use std::fmt;

use sha2::{Digest, Sha256};

use crate::store::{ApiKeyKind, TokenHash};

/// Length in bytes (all ASCII) of every key: 3 (prefix) + 43 (body) + 6 (checksum).
pub const KEY_LEN: usize = PREFIX_LEN + BODY_LEN + CHECKSUM_LEN;

/// Length of [`GeneratedKey::prefix`]: the kind prefix and the first 9 body characters.
pub const DISPLAY_PREFIX_LEN: usize = 12;

const SECRET_PREFIX: &[u8; PREFIX_LEN] = b"sk_";
const PUBLISHABLE_PREFIX: &[u8; PREFIX_LEN] = b"pk_";
const PREFIX_LEN: usize = 3;
// 62^43 > 2^256 > 62^42: 43 digits hold any 32 bytes, 42 do not.
const BODY_LEN: usize = 43;
const BODY_BYTES: usize = 32;
// 62^6 > 2^32 > 62^5.
const CHECKSUM_LEN: usize = 6;
const CHECKED_LEN: usize = PREFIX_LEN + BODY_LEN;

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A freshly generated key: what key issuance stores and shows.
pub struct GeneratedKey {
    /// The plain key, shown to its owner once and never stored.
    pub key: String,
    /// SHA-256 of the whole key string: what the store keeps and looks keys up by.
    pub hash: TokenHash,
    /// The first [`DISPLAY_PREFIX_LEN`] characters (e.g. `sk_4fGh7Jk2x`), stored so that users
    /// can recognise a key in a list. They reveal about 54 of the 256 random bits.
    pub prefix: String,
}

impl fmt::Debug for GeneratedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GeneratedKey")
            .field("key", &"[redacted]")
            .field("hash", &Hex(&self.hash))
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// A presented key whose format and checksum are valid. Says nothing about whether the key
/// exists: that is the store's lookup by `hash`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ParsedKey {
    /// From the prefix.
    pub kind: ApiKeyKind,
    /// SHA-256 of the whole key string.
    pub hash: TokenHash,
}

impl fmt::Debug for ParsedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParsedKey")
            .field("kind", &self.kind)
            .field("hash", &Hex(&self.hash))
            .finish()
    }
}

/// Why a presented string is not a well-formed API key. Variants are listed in the order
/// [`parse`] checks them; none carries the presented string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyFormatError {
    /// Starts with neither `sk_` nor `pk_`.
    #[error("API key must start with sk_ or pk_")]
    Prefix,
    /// Not exactly [`KEY_LEN`] bytes long.
    #[error("API key has the wrong length")]
    Length,
    /// A character after the prefix is not base62 (`0-9A-Za-z`).
    #[error("API key contains a character outside 0-9A-Za-z")]
    Charset,
    /// The checksum does not match: a mistyped or made-up key.
    #[error("API key checksum does not match")]
    Checksum,
}

/// A new random key of `kind`: 256 bits from the thread-local CSPRNG (ChaCha12, reseeded from
/// the OS; the generator the crate uses for every token).
pub fn generate(kind: ApiKeyKind) -> GeneratedKey {
    let random: [u8; BODY_BYTES] = rand::random();
    let mut key = [0u8; KEY_LEN];
    key[..PREFIX_LEN].copy_from_slice(prefix_of(kind));
    key[PREFIX_LEN..CHECKED_LEN].copy_from_slice(&encode_body(&random));
    let sum = crc32(&key[..CHECKED_LEN]);
    key[CHECKED_LEN..].copy_from_slice(&encode_checksum(sum));
    // Every byte written above is ASCII (prefix and ALPHABET).
    let key: String = key.iter().map(|&b| char::from(b)).collect();
    GeneratedKey {
        hash: hash_key(&key),
        prefix: key[..DISPLAY_PREFIX_LEN].to_owned(),
        key,
    }
}

/// Checks `candidate` (the header value, already trimmed) as an API key: prefix, length,
/// charset, checksum, in that order (cheapest first), without allocating. The SHA-256 is only
/// computed once the checksum has passed, so a flood of bad keys costs a CRC each.
pub fn parse(candidate: &str) -> Result<ParsedKey, KeyFormatError> {
    let bytes = candidate.as_bytes();
    let kind = if bytes.starts_with(SECRET_PREFIX) {
        ApiKeyKind::Secret
    } else if bytes.starts_with(PUBLISHABLE_PREFIX) {
        ApiKeyKind::Publishable
    } else {
        return Err(KeyFormatError::Prefix);
    };
    if bytes.len() != KEY_LEN {
        return Err(KeyFormatError::Length);
    }
    // Bytes, not chars: a multibyte character is simply a non-alphanumeric byte here, and no
    // str slicing can land inside one.
    if !bytes[PREFIX_LEN..].iter().all(u8::is_ascii_alphanumeric) {
        return Err(KeyFormatError::Charset);
    }
    let presented = decode_checksum(&bytes[CHECKED_LEN..]);
    // Not constant-time on purpose: the checksum is a public function of the key's first 46
    // characters, so comparing it leaks nothing an attacker could not compute.
    if presented != u64::from(crc32(&bytes[..CHECKED_LEN])) {
        return Err(KeyFormatError::Checksum);
    }
    Ok(ParsedKey {
        kind,
        hash: hash_key(candidate),
    })
}

/// Whether `s` claims to be an API key (starts with `sk_` or `pk_`), as opposed to a JWT in
/// `Authorization: Bearer`. Says nothing about validity: use [`parse`].
pub fn looks_like_key(s: &str) -> bool {
    let b = s.as_bytes();
    b.starts_with(SECRET_PREFIX) || b.starts_with(PUBLISHABLE_PREFIX)
}

/// SHA-256 of the whole key string: the stored digest.
pub fn hash_key(key: &str) -> TokenHash {
    Sha256::digest(key.as_bytes()).into()
}

fn prefix_of(kind: ApiKeyKind) -> &'static [u8; PREFIX_LEN] {
    match kind {
        ApiKeyKind::Secret => SECRET_PREFIX,
        ApiKeyKind::Publishable => PUBLISHABLE_PREFIX,
    }
}

/// `bytes` as a big-endian number in base62, most significant digit first, left-padded to
/// [`BODY_LEN`] digits. Schoolbook division by 62, once per digit; only key generation pays it.
fn encode_body(bytes: &[u8; BODY_BYTES]) -> [u8; BODY_LEN] {
    let mut n = *bytes;
    let mut out = [ALPHABET[0]; BODY_LEN];
    for digit in out.iter_mut().rev() {
        let mut rem: u32 = 0;
        for b in n.iter_mut() {
            let cur = (rem << 8) | u32::from(*b);
            // cur < 62 * 256, so the quotient fits a byte.
            *b = (cur / 62) as u8;
            rem = cur % 62;
        }
        *digit = ALPHABET[rem as usize];
    }
    out
}

fn encode_checksum(mut sum: u32) -> [u8; CHECKSUM_LEN] {
    let mut out = [ALPHABET[0]; CHECKSUM_LEN];
    for digit in out.iter_mut().rev() {
        *digit = ALPHABET[(sum % 62) as usize];
        sum /= 62;
    }
    out
}

/// The value of [`CHECKSUM_LEN`] base62 digits (already known to be alphanumeric). Up to
/// 62^6 - 1, more than a `u32` holds, so a non-canonical checksum never equals a CRC.
fn decode_checksum(digits: &[u8]) -> u64 {
    digits
        .iter()
        .fold(0u64, |acc, &d| acc * 62 + u64::from(digit_value(d)))
}

fn digit_value(d: u8) -> u8 {
    match d {
        b'0'..=b'9' => d - b'0',
        b'A'..=b'Z' => d - b'A' + 10,
        b'a'..=b'z' => d - b'a' + 36,
        // Unreachable after the charset check; any value keeps the function total and the
        // checksum comparison then fails.
        _ => u8::MAX,
    }
}

// CRC-32/IEEE (reflected, polynomial 0xEDB88320, as in zlib and PNG), no crate for it in the
// tree. A 1 KiB table built at compile time, one lookup per byte: rustc 1.95's LLVM turns the
// textbook bitwise loop into the same table in release builds (measured: equal speed), but not
// at every opt-level, and rejecting bad keys is the path a flood takes. Any single-character
// change is a burst of at most 8 bits, which a CRC-32 always detects.
const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

fn crc32(data: &[u8]) -> u32 {
    !data.iter().fold(!0u32, |crc, &b| {
        CRC_TABLE[usize::from((crc as u8) ^ b)] ^ (crc >> 8)
    })
}

/// Lowercase hex for `Debug` of digests.
struct Hex<'a>(&'a [u8]);

impl fmt::Debug for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    /// Inverse of `encode_body`, for the round-trip tests only (parse never decodes the body).
    fn decode_body(digits: &[u8; BODY_LEN]) -> Option<[u8; BODY_BYTES]> {
        let mut n = [0u8; BODY_BYTES];
        for &d in digits {
            let v = ALPHABET.iter().position(|&a| a == d)? as u32;
            // n = n * 62 + v, from the least significant byte up.
            let mut carry = v;
            for b in n.iter_mut().rev() {
                let cur = u32::from(*b) * 62 + carry;
                *b = cur as u8;
                carry = cur >> 8;
            }
            if carry != 0 {
                return None; // more than 256 bits
            }
        }
        Some(n)
    }

    /// The textbook bitwise CRC-32, as an oracle for the table-driven one.
    fn crc32_bitwise(data: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    #[test]
    fn crc32_matches_the_standard_check_value_and_the_bitwise_form() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
        for _ in 0..100 {
            let data: [u8; 46] = rand::random();
            assert_eq!(crc32(&data), crc32_bitwise(&data));
        }
    }

    #[test]
    fn generated_keys_parse_back_with_their_kind_and_hash() {
        for kind in [ApiKeyKind::Secret, ApiKeyKind::Publishable] {
            let g = generate(kind);
            assert_eq!(g.key.len(), KEY_LEN);
            assert_eq!(g.key.len(), 52);
            assert!(g.key.is_ascii());
            assert!(looks_like_key(&g.key));
            let want_prefix = match kind {
                ApiKeyKind::Secret => "sk_",
                ApiKeyKind::Publishable => "pk_",
            };
            assert!(g.key.starts_with(want_prefix), "{}", g.key);
            assert_eq!(g.prefix, g.key[..DISPLAY_PREFIX_LEN]);
            assert_eq!(g.prefix.len(), 12);
            assert_eq!(g.hash, hash_key(&g.key));
            let parsed = parse(&g.key).unwrap();
            assert_eq!(parsed.kind, kind);
            assert_eq!(parsed.hash, g.hash);
        }
    }

    #[test]
    fn hash_is_sha256_of_the_whole_key() {
        let g = generate(ApiKeyKind::Secret);
        let want: [u8; 32] = Sha256::digest(g.key.as_bytes()).into();
        assert_eq!(g.hash, want);
        // Known vector: SHA-256("abc").
        assert_eq!(
            format!("{:?}", Hex(&hash_key("abc"))),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn a_thousand_keys_are_distinct() {
        let keys: HashSet<String> = (0..1000)
            .map(|_| generate(ApiKeyKind::Secret).key)
            .collect();
        assert_eq!(keys.len(), 1000);
    }

    #[test]
    fn every_single_character_substitution_is_rejected() {
        for kind in [ApiKeyKind::Secret, ApiKeyKind::Publishable] {
            let key = generate(kind).key.into_bytes();
            let mut tried = 0;
            for pos in 0..KEY_LEN {
                // Every base62 character, plus `_` (the prefix's own separator).
                for &c in ALPHABET.iter().chain(b"_") {
                    if c == key[pos] {
                        continue;
                    }
                    let mut changed = key.clone();
                    changed[pos] = c;
                    let changed = String::from_utf8(changed).unwrap();
                    let err = parse(&changed).expect_err(&changed);
                    match pos {
                        0..=2 => assert!(
                            matches!(err, KeyFormatError::Prefix | KeyFormatError::Checksum),
                            "{changed}: {err:?}"
                        ),
                        _ if c == b'_' => assert_eq!(err, KeyFormatError::Charset, "{changed}"),
                        _ => assert_eq!(err, KeyFormatError::Checksum, "{changed}"),
                    }
                    tried += 1;
                }
            }
            assert_eq!(tried, KEY_LEN * 62);
        }
    }

    #[test]
    fn swapping_the_kind_prefix_breaks_the_checksum() {
        let g = generate(ApiKeyKind::Secret);
        let swapped = format!("pk_{}", &g.key[3..]);
        assert_eq!(parse(&swapped), Err(KeyFormatError::Checksum));
    }

    #[test]
    fn truncated_and_extended_keys_are_rejected() {
        let key = generate(ApiKeyKind::Secret).key;
        for len in 0..KEY_LEN {
            let err = parse(&key[..len]).unwrap_err();
            let want = if len < 3 {
                KeyFormatError::Prefix
            } else {
                KeyFormatError::Length
            };
            assert_eq!(err, want, "len {len}");
        }
        for extra in ["0", "a", "00000", " ", "\n", &key] {
            let long = format!("{key}{extra}");
            assert_eq!(parse(&long), Err(KeyFormatError::Length), "{long:?}");
        }
        assert_eq!(parse(&format!(" {key}")), Err(KeyFormatError::Prefix));
    }

    #[test]
    fn wrong_prefixes_are_rejected() {
        let g = generate(ApiKeyKind::Secret);
        let body = &g.key[3..];
        for p in ["SK_", "Sk_", "sk-", "rk_", "xk_", "sk ", "ghp", "pk-"] {
            let k = format!("{p}{body}");
            assert_eq!(parse(&k), Err(KeyFormatError::Prefix), "{k}");
            assert!(!looks_like_key(&k), "{k}");
        }
        assert_eq!(parse(""), Err(KeyFormatError::Prefix));
        assert_eq!(parse("sk"), Err(KeyFormatError::Prefix));
        assert_eq!(
            parse("eyJhbGciOiJFUzI1NiJ9.e30.c2ln"),
            Err(KeyFormatError::Prefix)
        );
        assert!(!looks_like_key("eyJhbGciOiJFUzI1NiJ9.e30.c2ln"));
        assert!(looks_like_key("sk_"));
        assert!(looks_like_key("pk_x"));
    }

    #[test]
    fn non_ascii_input_is_rejected_without_panicking() {
        let key = generate(ApiKeyKind::Publishable).key;
        // Same byte length as a key, with a multibyte character straddling the checksum
        // boundary and the display-prefix boundary.
        for (at, ch) in [(45, "é"), (11, "é"), (50, "é"), (3, "€"), (48, "😀")] {
            let mut s = String::from(&key[..at]);
            s.push_str(ch);
            s.push_str(&key[at + ch.len()..]);
            assert_eq!(s.len(), KEY_LEN);
            assert_eq!(parse(&s), Err(KeyFormatError::Charset), "{s}");
        }
        // Other lengths, prefixes and controls.
        for s in [
            "é",
            "s\u{301}k_",
            "sk_😀",
            "sk_\0\0\0",
            "ѕk_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ] {
            assert!(parse(s).is_err(), "{s:?}");
        }
        let nul = format!("sk_{}", "\0".repeat(KEY_LEN - 3));
        assert_eq!(parse(&nul), Err(KeyFormatError::Charset));
    }

    #[test]
    fn base62_round_trips_at_the_edges() {
        let zero = [0u8; BODY_BYTES];
        let enc = encode_body(&zero);
        assert_eq!(enc, [b'0'; BODY_LEN]);
        assert_eq!(decode_body(&enc), Some(zero));

        let max = [0xFFu8; BODY_BYTES];
        let enc = encode_body(&max);
        // 2^256 - 1 needs all 43 digits: the leading one is not the padding digit.
        assert_ne!(enc[0], b'0');
        assert_eq!(decode_body(&enc), Some(max));
        // ... and 62^43 - 1 does not fit in 256 bits: the width is exactly enough.
        assert_eq!(decode_body(&[b'z'; BODY_LEN]), None);

        let mut one = [0u8; BODY_BYTES];
        one[BODY_BYTES - 1] = 1;
        let enc = encode_body(&one);
        assert_eq!(&enc[..BODY_LEN - 1], &[b'0'; BODY_LEN - 1][..]);
        assert_eq!(enc[BODY_LEN - 1], b'1');
        assert_eq!(decode_body(&enc), Some(one));

        for _ in 0..200 {
            let r: [u8; BODY_BYTES] = rand::random();
            assert_eq!(decode_body(&encode_body(&r)), Some(r));
        }
    }

    #[test]
    fn checksum_encoding_is_fixed_width_and_round_trips() {
        for sum in [0, 1, 61, 62, 0xDEAD_BEEF, u32::MAX] {
            let enc = encode_checksum(sum);
            assert!(enc.iter().all(u8::is_ascii_alphanumeric));
            assert_eq!(decode_checksum(&enc), u64::from(sum));
        }
        assert_eq!(&encode_checksum(0), b"000000");
        assert_eq!(&encode_checksum(61), b"00000z");
        // The largest six-digit value exceeds any CRC, so it can never match one.
        assert!(decode_checksum(b"zzzzzz") > u64::from(u32::MAX));
    }

    #[test]
    fn a_key_with_an_out_of_range_checksum_is_rejected() {
        let key = generate(ApiKeyKind::Secret).key;
        let forged = format!("{}zzzzzz", &key[..CHECKED_LEN]);
        assert_eq!(parse(&forged), Err(KeyFormatError::Checksum));
    }

    #[test]
    fn debug_output_redacts_the_plain_key() {
        let g = generate(ApiKeyKind::Secret);
        let shown = format!("{g:?}");
        assert!(!shown.contains(&g.key), "{shown}");
        assert!(!shown.contains(&g.key[DISPLAY_PREFIX_LEN..]), "{shown}");
        assert!(shown.contains("[redacted]"), "{shown}");
        let parsed = format!("{:?}", parse(&g.key).unwrap());
        assert!(!parsed.contains(&g.key[3..]), "{parsed}");
        // Errors never carry the input.
        let err = parse("sk_nope").unwrap_err();
        assert!(!format!("{err} {err:?}").contains("nope"));
    }
}
