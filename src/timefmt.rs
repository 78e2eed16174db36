//! RFC 3339 UTC timestamps for the audit log and the admin API.

use std::time::SystemTime;

use serde::{Deserialize, Deserializer, Serializer};

/// Format as RFC 3339 UTC with milliseconds, e.g. `2026-11-29T21:00:00.123Z`.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// Format as RFC 3339 UTC to the second, e.g. `2026-11-29T21:00:00Z`.
pub fn rfc3339_seconds(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Serialize a time (or an optional one) as RFC 3339.
pub fn ser<S: Serializer, T: AsTime>(t: &T, s: S) -> Result<S::Ok, S::Error> {
    match t.as_time() {
        Some(t) => s.collect_str(&humantime::format_rfc3339_millis(t)),
        None => s.serialize_none(),
    }
}

/// Deserialize an RFC 3339 time.
pub fn de<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_rfc3339_weak(&s).map_err(serde::de::Error::custom)
}

/// A time or an optional time.
pub trait AsTime {
    /// The time, if any.
    fn as_time(&self) -> Option<SystemTime>;
}

impl AsTime for SystemTime {
    fn as_time(&self) -> Option<SystemTime> {
        Some(*self)
    }
}

impl AsTime for Option<SystemTime> {
    fn as_time(&self) -> Option<SystemTime> {
        *self
    }
}

/// Serde as milliseconds since the UNIX epoch (the journal's time format:
/// exact, compact, no parsing ambiguity).
pub mod unix_ms {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use serde::{Deserialize, Deserializer, Serializer};

    /// Serialize.
    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        let ms = t
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_millis();
        s.serialize_u64(u64::try_from(ms).unwrap_or(u64::MAX))
    }

    /// Deserialize.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let ms = u64::deserialize(d)?;
        UNIX_EPOCH
            .checked_add(Duration::from_millis(ms))
            .ok_or_else(|| serde::de::Error::custom("time out of range"))
    }
}

/// Serde of a duration as milliseconds.
pub mod duration_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Serialize.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    /// Deserialize.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}
