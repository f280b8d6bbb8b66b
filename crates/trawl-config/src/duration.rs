//! The type of every duration key: a human duration ("30s", "1m 30s",
//! "500ms") that is more than zero.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NonZeroDuration(Duration);

impl NonZeroDuration {
    /// `None` for zero.
    pub const fn new(d: Duration) -> Option<Self> {
        if d.is_zero() {
            None
        } else {
            Some(NonZeroDuration(d))
        }
    }

    pub const fn from_secs(secs: u64) -> Self {
        assert!(secs > 0, "a non-zero duration");
        NonZeroDuration(Duration::from_secs(secs))
    }

    pub const fn get(self) -> Duration {
        self.0
    }
}

impl From<NonZeroDuration> for Duration {
    fn from(d: NonZeroDuration) -> Duration {
        d.0
    }
}

impl FromStr for NonZeroDuration {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let hint = "expected a duration such as \"30s\" or \"500ms\"";
        let d = humantime::parse_duration(text.trim())
            .map_err(|e| format!("invalid duration {text:?}: {e} ({hint})"))?;
        NonZeroDuration::new(d)
            .ok_or_else(|| format!("invalid duration {text:?}: must be more than zero ({hint})"))
    }
}

impl fmt::Display for NonZeroDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        humantime::format_duration(self.0).fmt(f)
    }
}

impl<'de> Deserialize<'de> for NonZeroDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A duration key where zero turns the feature off (`"0"`, `"0s"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationOrOff(pub Option<NonZeroDuration>);

impl<'de> Deserialize<'de> for DurationOrOff {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        if text.trim() == "0" {
            return Ok(DurationOrOff(None));
        }
        humantime::parse_duration(text.trim())
            .map(|d| DurationOrOff(NonZeroDuration::new(d)))
            .map_err(|e| {
                serde::de::Error::custom(format!(
                    "invalid duration {text:?}: {e} (expected a duration such as \"1h\", or \"0\" for off)"
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_turns_a_duration_or_off_off() {
        let parse = |t: &str| {
            DurationOrOff::deserialize(
                serde::de::value::StrDeserializer::<serde::de::value::Error>::new(t),
            )
        };
        assert_eq!(parse("0").unwrap(), DurationOrOff(None));
        assert_eq!(parse("0s").unwrap(), DurationOrOff(None));
        assert_eq!(
            parse("1h").unwrap(),
            DurationOrOff(Some(NonZeroDuration::from_secs(3600)))
        );
        assert!(parse("soon")
            .unwrap_err()
            .to_string()
            .contains("\"0\" for off"));
    }

    #[test]
    fn human_durations_above_zero() {
        let d: NonZeroDuration = "1m 30s".parse().unwrap();
        assert_eq!(d.get(), Duration::from_secs(90));
        assert_eq!(
            "250ms".parse::<NonZeroDuration>().unwrap().get(),
            Duration::from_millis(250)
        );
        for bad in ["0s", "soon", "", "-1s"] {
            let e = bad.parse::<NonZeroDuration>().unwrap_err();
            assert!(e.contains("expected a duration"), "{bad}: {e}");
        }
        assert!("0ms"
            .parse::<NonZeroDuration>()
            .unwrap_err()
            .contains("more than zero"));
    }
}
