//! What both the coordinator and the agent need: mutual-TLS identities ([`tls`]), etcd
//! membership ([`membership`]), secret references ([`secret`]), name globs ([`glob`]), the
//! log set-up ([`logging`]), Prometheus metrics ([`metrics`]), and byte
//! sizes and durations written the way people write them (`1MiB`, `30s`).

#![forbid(unsafe_code)]

pub mod glob;
pub mod logging;
pub mod membership;
pub mod metrics;
pub mod net;
pub mod secret;
pub mod suggest;
pub mod telemetry;
pub mod tls;
pub mod tool;

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A size in bytes, written as a plain number or with a unit: `512`, `64KiB`, `1MiB`, `2GB`.
///
/// Binary units (`KiB`, `MiB`, `GiB`) are powers of 1024; decimal ones (`KB`, `MB`, `GB`) are
/// powers of 1000. `K`, `M` and `G` alone are read as binary, as most tools do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

/// Why a byte size could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("`{input}` is not a byte size: {why} (write e.g. `512KiB`, `1MiB` or `1048576`)")]
pub struct ByteSizeError {
    input: String,
    why: &'static str,
}

impl ByteSize {
    /// Bytes as a `u64`.
    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl FromStr for ByteSize {
    type Err = ByteSizeError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |why| ByteSizeError {
            input: input.to_owned(),
            why,
        };
        let s = input.trim();
        let split = s
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(s.len());
        let (number, unit) = s.split_at(split);
        if number.is_empty() {
            return Err(err("it does not start with a number"));
        }
        let multiplier: u64 = match unit.trim() {
            "" | "B" => 1,
            "K" | "KiB" | "k" => 1 << 10,
            "M" | "MiB" => 1 << 20,
            "G" | "GiB" => 1 << 30,
            "KB" | "kB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            _ => return Err(err("unknown unit (use B, KiB, MiB, GiB, KB, MB or GB)")),
        };
        let value: f64 = number.parse().map_err(|_| err("the number is malformed"))?;
        let bytes = value * multiplier as f64;
        if !bytes.is_finite() || bytes > u64::MAX as f64 {
            return Err(err("it is too large"));
        }
        if bytes.fract() != 0.0 {
            return Err(err("it is not a whole number of bytes"));
        }
        Ok(ByteSize(bytes as u64))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
        for (size, unit) in UNITS {
            if self.0 >= size && self.0.is_multiple_of(size) {
                return write!(f, "{}{unit}", self.0 / size);
            }
        }
        write!(f, "{}B", self.0)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Number(n) => Ok(ByteSize(n)),
            Raw::Text(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl JsonSchema for ByteSize {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ByteSize".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A size in bytes: a number, or a number with a unit (B, KiB, MiB, GiB, KB, MB, GB), e.g. `1MiB`.",
            "anyOf": [
                {"type": "integer", "minimum": 0},
                {"type": "string", "pattern": "^\\s*[0-9]+(\\.[0-9]+)?\\s*(B|K|k|KiB|M|MiB|G|GiB|KB|kB|MB|GB)?\\s*$"}
            ]
        })
    }
}

/// A duration written for people: `500ms`, `30s`, `5m`, `1h 30m`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    /// The duration itself.
    pub fn get(self) -> Duration {
        self.0
    }
}

impl FromStr for HumanDuration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        humantime::parse_duration(s.trim())
            .map(HumanDuration)
            .map_err(|_| format!("`{s}` is not a duration (write e.g. `500ms`, `30s`, `5m`)"))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for HumanDuration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A duration with a unit: `500ms`, `30s`, `5m`, `1h 30m`.",
            "type": "string"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes_read_binary_and_decimal_units() {
        assert_eq!("1MiB".parse::<ByteSize>().unwrap().bytes(), 1 << 20);
        assert_eq!("1.5KiB".parse::<ByteSize>().unwrap().bytes(), 1536);
        assert_eq!("2MB".parse::<ByteSize>().unwrap().bytes(), 2_000_000);
        assert_eq!("42".parse::<ByteSize>().unwrap().bytes(), 42);
        assert_eq!(" 16 MiB ".parse::<ByteSize>().unwrap().bytes(), 16 << 20);
    }

    #[test]
    fn byte_size_errors_say_what_to_write() {
        let err = "12 parsecs".parse::<ByteSize>().unwrap_err().to_string();
        assert!(err.contains("unknown unit"), "{err}");
        assert!(err.contains("1MiB"), "{err}");
        assert!("MiB".parse::<ByteSize>().is_err());
        assert!("0.3B".parse::<ByteSize>().is_err());
    }

    #[test]
    fn byte_sizes_display_in_the_largest_exact_unit() {
        assert_eq!(ByteSize(1 << 20).to_string(), "1MiB");
        assert_eq!(ByteSize(1536).to_string(), "1536B");
    }

    #[test]
    fn durations_read_human_forms() {
        assert_eq!(
            "30s".parse::<HumanDuration>().unwrap().get(),
            Duration::from_secs(30)
        );
        assert_eq!(
            "1m 30s".parse::<HumanDuration>().unwrap().get(),
            Duration::from_secs(90)
        );
        assert!("soon".parse::<HumanDuration>().is_err());
        assert!("30".parse::<HumanDuration>().is_err());
    }
}
