//! Human-friendly durations (`500ms`, `30s`, `1m30s`, `7d`) and sizes (`64KiB`, `10MB`).
//!
//! Pure string parsing with overflow checks; the messages are what `gatehouse check` shows, so
//! they name the offending text and give examples of what is accepted.

use std::time::Duration;

const DURATION_HINT: &str = "expected e.g. 500ms, 30s, 15m, 7d";
const SIZE_HINT: &str = "expected e.g. 512B, 64KiB, 10MiB, 1GiB";

/// Parses a duration: one or more `<integer><unit>` parts (`ms`, `s`, `m`, `h`, `d`), e.g.
/// `500ms`, `30s`, `1m30s`; or a bare `0`.
///
/// # Errors
/// A message naming the text when it is malformed or does not fit in a [`Duration`].
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    let invalid = || format!("invalid duration \"{text}\": {DURATION_HINT}");
    let too_large = || format!("duration \"{text}\" is too large");
    if s.is_empty() {
        return Err(format!("empty duration: {DURATION_HINT}"));
    }
    if s.bytes().all(|b| b == b'0') {
        return Ok(Duration::ZERO);
    }
    let mut rest = s;
    let mut total_ms: u64 = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(invalid());
        }
        let (number, tail) = rest.split_at(digits);
        let unit_len = tail.bytes().take_while(u8::is_ascii_alphabetic).count();
        let (unit, tail) = tail.split_at(unit_len);
        let ms_per_unit: u64 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "" => {
                return Err(format!(
                    "invalid duration \"{text}\": missing unit after {number}; {DURATION_HINT}"
                ));
            }
            _ => return Err(invalid()),
        };
        let n: u64 = number.parse().map_err(|_| too_large())?;
        total_ms = n
            .checked_mul(ms_per_unit)
            .and_then(|part| total_ms.checked_add(part))
            .ok_or_else(too_large)?;
        rest = tail;
    }
    Ok(Duration::from_millis(total_ms))
}

/// Parses a size in bytes: an integer with an optional unit, `B`, `KB`/`MB`/`GB`/`TB`
/// (powers of 1000) or `KiB`/`MiB`/`GiB`/`TiB` (powers of 1024). A bare integer is bytes.
///
/// # Errors
/// A message naming the text when it is malformed or does not fit in a `u64`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let s = text.trim();
    let invalid = || format!("invalid size \"{text}\": {SIZE_HINT}");
    let too_large = || format!("size \"{text}\" is too large");
    if s.is_empty() {
        return Err(format!("empty size: {SIZE_HINT}"));
    }
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(invalid());
    }
    let (number, unit) = s.split_at(digits);
    let multiplier: u64 = match unit.trim_start() {
        "" | "B" => 1,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        _ => return Err(invalid()),
    };
    let n: u64 = number.parse().map_err(|_| too_large())?;
    n.checked_mul(multiplier).ok_or_else(too_large)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(
            parse_duration("7d").unwrap(),
            Duration::from_secs(7 * 86_400)
        );
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(
            parse_duration("1h2m3s4ms").unwrap(),
            Duration::from_millis(3_723_004)
        );
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration(" 10s ").unwrap(), Duration::from_secs(10));
    }

    #[test]
    fn duration_errors() {
        assert_eq!(
            parse_duration("3x").unwrap_err(),
            "invalid duration \"3x\": expected e.g. 500ms, 30s, 15m, 7d"
        );
        assert_eq!(
            parse_duration("30").unwrap_err(),
            "invalid duration \"30\": missing unit after 30; expected e.g. 500ms, 30s, 15m, 7d"
        );
        assert!(
            parse_duration("")
                .unwrap_err()
                .starts_with("empty duration")
        );
        for bad in ["s", "-1s", "1.5s", "1 s", "1s ms", "10S", "1m30"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_duration("999999999999999999d").unwrap_err(),
            "duration \"999999999999999999d\" is too large"
        );
        assert!(parse_duration("99999999999999999999999ms").is_err());
        assert!(parse_duration("18446744073709551615ms1ms").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512B").unwrap(), 512);
        assert_eq!(parse_size("512").unwrap(), 512);
        assert_eq!(parse_size("64KiB").unwrap(), 65_536);
        assert_eq!(parse_size("10MiB").unwrap(), 10 * 1024 * 1024);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("2KB").unwrap(), 2_000);
        assert_eq!(parse_size("3MB").unwrap(), 3_000_000);
        assert_eq!(parse_size("1GB").unwrap(), 1_000_000_000);
        assert_eq!(parse_size("10 MiB").unwrap(), 10 << 20);
        assert_eq!(parse_size("0").unwrap(), 0);
    }

    #[test]
    fn size_errors() {
        assert_eq!(
            parse_size("10X").unwrap_err(),
            "invalid size \"10X\": expected e.g. 512B, 64KiB, 10MiB, 1GiB"
        );
        for bad in ["", "KiB", "-1", "1.5MiB", "10kib", "10 M"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_size("20000000TiB").unwrap_err(),
            "size \"20000000TiB\" is too large"
        );
        assert!(parse_size("99999999999999999999").is_err());
    }
}
