//! Bucket and object names of the local adapter: which are accepted, and
//! the one way an object name becomes a path (so nothing lands outside
//! `ROOT`).

use crate::error::{Error, Result};
use std::path::PathBuf;

/// The longest name segment: file systems allow 255 bytes and the sidecar
/// adds `.json`.
const MAX_SEGMENT_BYTES: usize = 250;

/// The longest bucket name, as in Cloud Storage (without dots).
const MAX_BUCKET_BYTES: usize = 63;

/// Refuses bucket names that are not plain words (which also keeps `.meta`
/// and `..` out).
pub(super) fn check_bucket(bucket: &str, context: &str) -> Result<()> {
    let plain = bucket
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    let ends_ok = bucket
        .bytes()
        .next()
        .zip(bucket.bytes().last())
        .is_some_and(|(first, last)| first.is_ascii_alphanumeric() && last.is_ascii_alphanumeric());
    if plain && ends_ok && bucket.len() <= MAX_BUCKET_BYTES {
        return Ok(());
    }
    Err(Error::objects(
        context,
        format!(
            "bucket name {bucket:?} is not a plain word of at most {MAX_BUCKET_BYTES} lowercase letters, digits, dots, dashes and underscores that starts and ends with a letter or digit"
        ),
        false,
    ))
}

/// The relative path of an object name, by the project's one normalisation
/// ([`crate::domain::paths::relative_path`]), with a shorter segment limit because
/// the sidecar adds `.json`.
pub(super) fn check_name(name: &str, context: &str) -> Result<PathBuf> {
    let relative =
        crate::domain::paths::relative_path(name).map_err(|e| Error::objects(context, e, false))?;
    if name
        .split('/')
        .any(|segment| segment.len() > MAX_SEGMENT_BYTES)
    {
        let shown: String = name.chars().take(80).collect();
        return Err(Error::objects(
            context,
            format!(
                "object name {shown:?} is refused: a segment is longer than {MAX_SEGMENT_BYTES} bytes"
            ),
            false,
        ));
    }
    Ok(relative)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::paths::TEMP_PREFIX;

    #[test]
    fn names_that_could_escape_the_bucket_are_refused() {
        let long = "a".repeat(2000);
        let long_segment = format!("a/{}", "b".repeat(251));
        let temp = format!("a/{TEMP_PREFIX}x");
        for name in [
            "",
            "../x",
            "/etc/passwd",
            "a/../../b",
            "a\\b",
            "a\0b",
            "./a",
            "a/.",
            "a//b",
            "a/",
            long.as_str(),
            long_segment.as_str(),
            temp.as_str(),
        ] {
            assert!(check_name(name, "c").is_err(), "{name:?} was accepted");
        }
        for name in ["a", "images/j/0.png", "..a", "a..", ".hidden", "a b/c+d%e"] {
            check_name(name, "c").unwrap();
        }
    }

    #[test]
    fn only_plain_bucket_names_are_accepted() {
        for bucket in ["", ".meta", "..", "a/b", "Out", "-a", "a-", "a b", "a\0"] {
            assert!(
                check_bucket(bucket, "c").is_err(),
                "{bucket:?} was accepted"
            );
        }
        for bucket in ["out", "asmr-test-1", "a.b_c", "x"] {
            check_bucket(bucket, "c").unwrap();
        }
    }
}
