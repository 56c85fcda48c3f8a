//! CRC32C as it travels: Cloud Storage, its notifications and the
//! download records write it as the base64 of its four big-endian bytes.
//! [`Crc32c`] is decoded from that text once, where it comes in, and
//! travels typed from there.

use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// A CRC32C checksum. Its text (`Display`, `FromStr`, serde) is the base64
/// of its big-endian bytes, as Cloud Storage writes it; `{:08x}` shows the
/// number. Deserializing also takes the bare number, the form older
/// records used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Crc32c(pub u32);

impl Crc32c {
    /// The checksum of `data`.
    pub fn of(data: &[u8]) -> Self {
        Crc32c(crc32c::crc32c(data))
    }
}

impl fmt::Display for Crc32c {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&base64::engine::general_purpose::STANDARD.encode(self.0.to_be_bytes()))
    }
}

impl fmt::LowerHex for Crc32c {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::LowerHex::fmt(&self.0, f)
    }
}

impl FromStr for Crc32c {
    type Err = String;

    /// Reads the base64 text; says why when it is not base64 of four bytes.
    fn from_str(text: &str) -> Result<Self, String> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|e| format!("crc32c {text:?} is not base64: {e}"))?;
        let bytes: [u8; 4] = bytes
            .try_into()
            .map_err(|bytes: Vec<u8>| format!("crc32c {text:?} is {} bytes, not 4", bytes.len()))?;
        Ok(Crc32c(u32::from_be_bytes(bytes)))
    }
}

impl Serialize for Crc32c {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Crc32c {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Text {
            Number(u32),
            Base64(String),
        }
        match Text::deserialize(deserializer)? {
            Text::Number(n) => Ok(Crc32c(n)),
            Text::Base64(text) => text.parse().map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_is_base64_of_the_big_endian_bytes_and_reads_back() {
        // The JSON API's own example: "hello" has CRC32C 0x9a71bb4c.
        let hello = Crc32c::of(b"hello");
        assert_eq!(hello, Crc32c(0x9a71_bb4c));
        assert_eq!(hello.to_string(), "mnG7TA==");
        assert_eq!(format!("{hello:08x}"), "9a71bb4c");
        assert_eq!("mnG7TA==".parse(), Ok(hello));
        assert_eq!(Crc32c(7).to_string().parse(), Ok(Crc32c(7)));
        assert!(
            "mnG7"
                .parse::<Crc32c>()
                .unwrap_err()
                .contains("is 3 bytes, not 4")
        );
        assert!(
            "not base64!"
                .parse::<Crc32c>()
                .unwrap_err()
                .contains("is not base64")
        );
    }

    #[test]
    fn records_carry_the_text_and_older_records_the_number() {
        let hello = Crc32c::of(b"hello");
        assert_eq!(serde_json::to_string(&hello).unwrap(), "\"mnG7TA==\"");
        let read: Crc32c = serde_json::from_str("\"mnG7TA==\"").unwrap();
        assert_eq!(read, hello);
        let old: Crc32c = serde_json::from_str(&hello.0.to_string()).unwrap();
        assert_eq!(old, hello);
        assert!(serde_json::from_str::<Crc32c>("\"mnG7\"").is_err());
    }
}
