//! Input framing shared by the fuzz targets.
//!
//! Targets that need more than a body (request headers, message
//! attributes) read their input as an HTTP-like text: `name: value` lines,
//! a blank line, then the body bytes. Input without a blank line is all
//! body. The seed corpora are written in this form, so a seed reads like
//! the request it stands for.

/// The `name: value` lines before the first blank line, and the bytes after it.
pub fn split(data: &[u8]) -> (Vec<(String, String)>, &[u8]) {
    let Some(end) = data.windows(2).position(|w| w == b"\n\n") else {
        return (Vec::new(), data);
    };
    let head = String::from_utf8_lossy(&data[..end]);
    let fields = head
        .lines()
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_string(), value.trim_start().to_string()))
        .collect();
    (fields, &data[end + 2..])
}

/// The fields as request headers; names or values HTTP refuses are left out.
pub fn headers(fields: &[(String, String)]) -> http::HeaderMap {
    let mut map = http::HeaderMap::new();
    for (name, value) in fields {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_str(value),
        ) {
            map.append(name, value);
        }
    }
    map
}
