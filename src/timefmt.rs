//! Times in words: durations in config files (`"100s"`, `"5m"`, `"1h30m"`, `"250ms"`)
//! and UTC timestamps in status output, without pulling in a date crate.

use std::time::Duration;

/// Parses a sequence of `<integer><unit>` parts, units `ms`, `s`, `m`, `h`, `d`.
/// The error says what is wrong in words an admin can act on.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("the duration is empty".into());
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!(
                "`{text}` is not a duration: expected a number at `{rest}`"
            ));
        }
        let (number, after) = rest.split_at(digits);
        let unit_len = after
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let number: u64 = number
            .parse()
            .map_err(|_| format!("`{text}` is not a duration: `{number}` is too large"))?;
        let unit_ms: u64 = match unit.trim() {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "" => {
                return Err(format!(
                    "`{text}` has no unit: write e.g. \"{number}s\" (units: ms, s, m, h, d)"
                ));
            }
            other => {
                return Err(format!(
                    "`{text}` has the unknown unit `{other}` (units: ms, s, m, h, d)"
                ));
            }
        };
        let part = number
            .checked_mul(unit_ms)
            .map(Duration::from_millis)
            .ok_or_else(|| format!("`{text}` is too long"))?;
        total = total
            .checked_add(part)
            .ok_or_else(|| format!("`{text}` is too long"))?;
        rest = after;
    }
    Ok(total)
}

/// The shortest spelling `parse_duration` reads back to the same value (to the millisecond).
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    let mut rest = ms;
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
        ("ms", 1),
    ] {
        if rest >= size {
            out.push_str(&format!("{}{unit}", rest / size));
            rest %= size;
        }
    }
    out
}

/// Year, month, day, hour, minute, second (UTC) of seconds since the Unix epoch.
fn utc_fields(unix_secs: u64) -> (u64, u64, u64, u64, u64, u64) {
    let (year, month, day) = civil_from_days(unix_secs / 86_400);
    let secs = unix_secs % 86_400;
    (year, month, day, secs / 3600, secs / 60 % 60, secs % 60)
}

/// `2026-11-24 08:35:33 UTC` for seconds since the Unix epoch.
pub fn format_utc(unix_secs: u64) -> String {
    let (y, mo, d, h, mi, s) = utc_fields(unix_secs);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02} UTC")
}

/// `2026-11-24 08:35:33.250 UTC` for milliseconds since the Unix epoch.
pub fn format_unix_ms(unix_ms: u64) -> String {
    let text = format_utc(unix_ms / 1000);
    let (time, zone) = text.split_at(text.len() - 4);
    format!("{time}.{:03}{zone}", unix_ms % 1000)
}

/// `20261124T083533Z` (ISO 8601 basic format) for seconds since the Unix
/// epoch: for file names, so no spaces and no colons.
pub fn format_utc_compact(unix_secs: u64) -> String {
    let (y, mo, d, h, mi, s) = utc_fields(unix_secs);
    format!("{y:04}{mo:02}{d:02}T{h:02}{mi:02}{s:02}Z")
}

/// Gregorian date of a day count since 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// Milliseconds since the epoch (0 if the clock is before it).
pub fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_sums() {
        assert_eq!(parse_duration("100s"), Ok(Duration::from_secs(100)));
        assert_eq!(parse_duration("1m40s"), Ok(Duration::from_secs(100)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration(" 2d "), Ok(Duration::from_secs(172_800)));
    }

    #[test]
    fn refuses_what_is_not_a_duration() {
        assert!(parse_duration("").is_err());
        assert!(parse_duration("100").unwrap_err().contains("no unit"));
        assert!(
            parse_duration("10 parsecs")
                .unwrap_err()
                .contains("unknown unit")
        );
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("-5s").is_err());
        assert!(parse_duration("99999999999999999999s").is_err());
        assert!(parse_duration("18446744073709551615d").is_err());
    }

    #[test]
    fn milliseconds_show_after_the_seconds() {
        assert_eq!(
            format_unix_ms(1_764_405_333_250),
            "2025-11-29 08:35:33.250 UTC"
        );
        assert_eq!(format_unix_ms(7), "1970-01-01 00:00:00.007 UTC");
    }

    #[test]
    fn format_round_trips() {
        for text in ["100s", "1m40s", "1h", "250ms", "1d2h3m4s5ms"] {
            let d = parse_duration(text).unwrap();
            assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }
        assert_eq!(format_duration(Duration::from_secs(100)), "1m40s");
    }

    #[test]
    fn utc_dates() {
        assert_eq!(format_utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(format_utc(1_795_509_333), "2026-11-24 08:35:33 UTC");
        assert_eq!(format_utc_compact(0), "19700101T000000Z");
        assert_eq!(format_utc_compact(1_795_509_333), "20261124T083533Z");
    }
}
