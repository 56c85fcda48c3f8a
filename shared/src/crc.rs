//! CRC32C as it travels: Cloud Storage, its notifications and the
//! download records write it as the base64 of its four big-endian bytes.
//! The one encoder and decoder of that text.

use base64::Engine as _;

/// The text of `crc`: base64 of its big-endian bytes (`"mnG7TA=="` for the
/// CRC32C of `hello`).
pub fn to_base64(crc: u32) -> String {
    base64::engine::general_purpose::STANDARD.encode(crc.to_be_bytes())
}

/// Reads the text back; says why when it is not base64 of four bytes.
pub fn from_base64(text: &str) -> Result<u32, String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| format!("crc32c {text:?} is not base64: {e}"))?;
    let bytes: [u8; 4] = bytes
        .try_into()
        .map_err(|bytes: Vec<u8>| format!("crc32c {text:?} is {} bytes, not 4", bytes.len()))?;
    Ok(u32::from_be_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_is_base64_of_the_big_endian_bytes_and_reads_back() {
        // The JSON API's own example: "hello" has CRC32C 0x9a71bb4c.
        let hello = crc32c::crc32c(b"hello");
        assert_eq!(to_base64(hello), "mnG7TA==");
        assert_eq!(from_base64("mnG7TA=="), Ok(hello));
        assert_eq!(from_base64(&to_base64(7)), Ok(7));
        assert!(
            from_base64("mnG7")
                .unwrap_err()
                .contains("is 3 bytes, not 4")
        );
        assert!(
            from_base64("not base64!")
                .unwrap_err()
                .contains("is not base64")
        );
    }
}
