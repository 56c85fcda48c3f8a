//! How long to wait before retrying a transient model error inside one call.
//!
//! Truncated exponential back-off with **equal jitter**, as Google asks of
//! clients that hit 429: the n-th retry (0-based) waits half of
//! `min(max_delay, base_delay * 2^n)` plus a random share of the other half.
//! Equal rather than full jitter because most retries here answer a quota
//! error: full jitter can retry almost at once, which only spends another
//! request of the same per-minute quota; equal jitter keeps a floor of half
//! the step while still spreading concurrent callers apart.
//!
//! A `Retry-After` the server sent replaces the computed back-off (the server
//! knows its own recovery time better than a formula), capped at `max_delay`
//! so a hostile or confused header cannot park a worker for an hour.

use super::RetryPolicy;
use chrono::{DateTime, Utc};
use std::time::{Duration, SystemTime};

/// The back-off before retry number `retry` (0 for the first retry), given
/// `unit`, a jitter draw in `[0, 1]`: `unit = 0` gives the floor (half the
/// step), `unit = 1` the full step.
pub(crate) fn backoff(policy: &RetryPolicy, retry: u32, unit: f64) -> Duration {
    let step = policy
        .base_delay
        .checked_mul(2u32.checked_pow(retry).unwrap_or(u32::MAX))
        .unwrap_or(policy.max_delay)
        .min(policy.max_delay);
    let half = step / 2;
    let unit = if unit.is_nan() {
        0.0
    } else {
        unit.clamp(0.0, 1.0)
    };
    // Float rounding may overshoot by a nanosecond; the step is the bound.
    half.saturating_add((step - half).mul_f64(unit)).min(step)
}

/// The delay before the next try: the server's `Retry-After` when it sent
/// one, else the jittered back-off; never longer than `max_delay`.
pub(crate) fn delay_before_retry(
    policy: &RetryPolicy,
    retry: u32,
    retry_after: Option<Duration>,
    unit: f64,
) -> Duration {
    retry_after
        .unwrap_or_else(|| backoff(policy, retry, unit))
        .min(policy.max_delay)
}

/// A fresh jitter draw in `[0, 1)`.
pub(crate) fn jitter() -> f64 {
    rand::random::<f64>()
}

/// Parses a `Retry-After` value: delay-seconds (`120`) or an HTTP date
/// (`Wed, 21 Oct 2015 07:28:00 GMT`), the latter relative to `now`. A date in
/// the past means "now"; anything else unreadable is ignored.
pub(crate) fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = DateTime::parse_from_rfc2822(value)
        .ok()?
        .with_timezone(&Utc);
    let now: DateTime<Utc> = now.into();
    Some((at - now).to_std().unwrap_or(Duration::ZERO))
}

/// Parses a protobuf JSON duration such as `"30s"` or `"1.5s"`, as
/// `google.rpc.RetryInfo.retryDelay` carries it.
pub(crate) fn parse_proto_duration(value: &str) -> Option<Duration> {
    let seconds: f64 = value.trim().strip_suffix('s')?.parse().ok()?;
    Duration::try_from_secs_f64(seconds).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(max_retries: u32, base_ms: u64, max_ms: u64) -> RetryPolicy {
        RetryPolicy {
            max_retries,
            base_delay: Duration::from_millis(base_ms),
            max_delay: Duration::from_millis(max_ms),
            ..RetryPolicy::default()
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn backoff_doubles_from_the_base_and_stops_at_the_cap() {
        // The defaults: 5 s base, 60 s cap.
        let p = RetryPolicy::default();
        let full: Vec<_> = (0..6).map(|n| backoff(&p, n, 1.0).as_secs()).collect();
        assert_eq!(full, [5, 10, 20, 40, 60, 60]);
        let floor: Vec<_> = (0..6).map(|n| backoff(&p, n, 0.0).as_millis()).collect();
        assert_eq!(floor, [2500, 5000, 10_000, 20_000, 30_000, 30_000]);
    }

    #[test]
    fn jitter_stays_between_half_and_the_full_step() {
        let p = policy(3, 100, 1000);
        assert_eq!(backoff(&p, 1, 0.5), ms(150));
        for retry in 0..8 {
            let step = ms(100 * 2u64.pow(retry)).min(ms(1000));
            for _ in 0..200 {
                let d = backoff(&p, retry, jitter());
                assert!(
                    d >= step / 2 && d <= step,
                    "retry {retry}: {d:?} vs {step:?}"
                );
            }
        }
    }

    #[test]
    fn out_of_range_jitter_is_clamped() {
        let p = policy(3, 100, 1000);
        assert_eq!(backoff(&p, 0, -3.0), ms(50));
        assert_eq!(backoff(&p, 0, 7.0), ms(100));
        assert_eq!(backoff(&p, 0, f64::NAN), ms(50));
    }

    #[test]
    fn huge_retry_numbers_do_not_overflow() {
        let p = RetryPolicy::default();
        assert_eq!(backoff(&p, 40, 1.0), p.max_delay);
        assert_eq!(backoff(&p, u32::MAX, 1.0), p.max_delay);
        let big = RetryPolicy {
            max_retries: 1,
            base_delay: Duration::MAX,
            max_delay: Duration::MAX,
            ..RetryPolicy::default()
        };
        assert_eq!(backoff(&big, 3, 1.0), Duration::MAX);
    }

    #[test]
    fn retry_after_replaces_the_backoff_but_not_beyond_the_cap() {
        let p = policy(3, 100, 1000);
        assert_eq!(delay_before_retry(&p, 0, Some(ms(700)), 0.0), ms(700));
        assert_eq!(delay_before_retry(&p, 0, Some(ms(30_000)), 0.0), ms(1000));
        assert_eq!(delay_before_retry(&p, 2, None, 1.0), ms(400));
        assert_eq!(delay_before_retry(&p, 0, Some(Duration::ZERO), 1.0), ms(0));
    }

    #[test]
    fn retry_after_is_seconds_or_an_http_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480); // 2015-10-21T07:28:00Z
        let check = |value: &str, expected: Option<Duration>| {
            assert_eq!(parse_retry_after(value, now), expected, "{value:?}");
        };
        check("120", Some(Duration::from_secs(120)));
        check(" 0 ", Some(Duration::ZERO));
        check(
            "Wed, 21 Oct 2015 07:28:30 GMT",
            Some(Duration::from_secs(30)),
        );
        check("Wed, 21 Oct 2015 07:27:00 GMT", Some(Duration::ZERO));
        check("-5", None);
        check("1.5", None);
        check("soon", None);
        check("", None);
    }

    #[test]
    fn proto_durations_parse() {
        assert_eq!(parse_proto_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_proto_duration("1.5s"), Some(ms(1500)));
        assert_eq!(parse_proto_duration("30"), None);
        assert_eq!(parse_proto_duration("-1s"), None);
    }
}
