//! A `gs://bucket/name` address: where an output lives in Cloud Storage, a
//! value every layer passes around and none owns.

use std::fmt;

/// A `gs://bucket/name` address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct GsUri {
    /// The bucket name, without `gs://`.
    pub bucket: String,
    /// Object name or prefix (may be empty).
    pub name: String,
}

impl GsUri {
    /// Parses `gs://bucket/name`; `None` if it is not one.
    pub fn parse(text: &str) -> Option<Self> {
        let rest = text.strip_prefix("gs://")?;
        let (bucket, name) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return None;
        }
        Some(Self {
            bucket: bucket.to_string(),
            name: name.to_string(),
        })
    }
}

impl std::str::FromStr for GsUri {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        Self::parse(text).ok_or_else(|| format!("{text:?} is not gs://bucket/name"))
    }
}

impl fmt::Display for GsUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "gs://{}/{}", self.bucket, self.name)
    }
}

/// Records carry the `gs://bucket/name` text.
impl serde::Serialize for GsUri {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for GsUri {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        GsUri::parse(&text)
            .ok_or_else(|| serde::de::Error::custom(format!("{text:?} is not gs://bucket/name")))
    }
}
