//! Timestamps as the store keeps them.
//!
//! Every timestamp is UTC, truncated to microseconds (Firestore's precision) and
//! written as RFC 3339 with exactly six fractional digits and a `Z`. That fixed
//! shape makes the text order the time order, which the embedded store relies on
//! when it compares timestamps inside JSON documents.

use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::time::Duration;

/// A UTC instant with microsecond precision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(DateTime<Utc>);

const FORMAT: &str = "%Y-%m-%dT%H:%M:%S%.6fZ";

impl Timestamp {
    /// The current time.
    pub fn now() -> Self {
        Self::from_datetime(Utc::now())
    }

    /// Wraps a chrono time, dropping anything finer than a microsecond.
    pub fn from_datetime(at: DateTime<Utc>) -> Self {
        Self(at.trunc_subsecs(6))
    }

    /// The chrono value, for arithmetic and formatting.
    pub fn as_datetime(&self) -> DateTime<Utc> {
        self.0
    }

    /// Parses any RFC 3339 time (as Firestore, users or older documents write it).
    pub fn parse(text: &str) -> Option<Self> {
        DateTime::parse_from_rfc3339(text)
            .ok()
            .map(|at| Self::from_datetime(at.with_timezone(&Utc)))
    }

    /// This instant plus a duration, saturating at the far future.
    pub fn plus(&self, by: Duration) -> Self {
        let by = chrono::Duration::from_std(by).unwrap_or(chrono::Duration::MAX);
        Self(
            self.0
                .checked_add_signed(by)
                .unwrap_or(DateTime::<Utc>::MAX_UTC),
        )
    }

    /// This instant minus a duration, saturating at the far past.
    pub fn minus(&self, by: Duration) -> Self {
        let by = chrono::Duration::from_std(by).unwrap_or(chrono::Duration::MAX);
        Self(
            self.0
                .checked_sub_signed(by)
                .unwrap_or(DateTime::<Utc>::MIN_UTC),
        )
    }

    /// Seconds since the Unix epoch and the nanoseconds within that second.
    pub fn unix_parts(&self) -> (i64, u32) {
        (self.0.timestamp(), self.0.timestamp_subsec_nanos())
    }

    /// Builds a timestamp from Unix seconds and nanoseconds (Firestore's wire form).
    pub fn from_unix_parts(seconds: i64, nanos: u32) -> Option<Self> {
        DateTime::from_timestamp(seconds, nanos).map(Self::from_datetime)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.format(FORMAT))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text)
            .ok_or_else(|| serde::de::Error::custom(format!("not an RFC 3339 time: {text:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_order_is_time_order() {
        let early = Timestamp::parse("2026-01-02T03:04:05.1Z").unwrap();
        let late = Timestamp::parse("2026-01-02T03:04:05.000200+00:00").unwrap();
        assert!(early > late, "0.1 s is later than 0.0002 s");
        assert_eq!(early.to_string(), "2026-01-02T03:04:05.100000Z");
        assert_eq!(late.to_string(), "2026-01-02T03:04:05.000200Z");
        assert!(early.to_string() > late.to_string());
    }

    #[test]
    fn round_trips_through_json_at_microsecond_precision() {
        let at = Timestamp::from_datetime(
            DateTime::parse_from_rfc3339("2026-11-28T10:00:00.123456789Z")
                .unwrap()
                .with_timezone(&Utc),
        );
        let json = serde_json::to_string(&at).unwrap();
        assert_eq!(json, "\"2026-11-28T10:00:00.123456Z\"");
        assert_eq!(serde_json::from_str::<Timestamp>(&json).unwrap(), at);
    }

    #[test]
    fn rejects_text_that_is_not_a_time() {
        let err = serde_json::from_str::<Timestamp>("\"yesterday\"").unwrap_err();
        assert!(err.to_string().contains("not an RFC 3339 time"), "{err}");
    }

    #[test]
    fn arithmetic_saturates_instead_of_panicking() {
        let now = Timestamp::now();
        assert!(now.plus(Duration::MAX) > now);
        assert!(now.minus(Duration::MAX) < now);
        assert_eq!(
            now.plus(Duration::from_secs(60))
                .minus(Duration::from_secs(60)),
            now
        );
    }
}
