//! The one function through which object names become filesystem paths.
//!
//! GCS object names are arbitrary UTF-8 up to 1024 bytes; a path built from
//! one must never leave the directory it is joined to, whatever the object
//! is called. Names are taken literally (GCS does not URL-decode them, so
//! `%2e%2e` is a harmless file name) and refused when any segment could
//! climb, be absolute, hide a separator, or collide with a temporary file.

use std::path::{Component, Path, PathBuf};

/// The longest name accepted, in bytes (GCS's own limit).
pub const MAX_NAME_BYTES: usize = 1024;
/// The longest segment, in bytes (most filesystems' limit).
pub const MAX_SEGMENT_BYTES: usize = 255;
/// Prefix of the temporary files of atomic writes.
pub const TEMP_PREFIX: &str = ".asmr-tmp-";
/// Suffix of the temporary files of resumable copies.
pub const PARTIAL_SUFFIX: &str = ".asmr-partial";

/// Why a name cannot be a path.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("object name {name:?} cannot be a file path: {reason}")]
pub struct PathError {
    /// The name (cut to 80 characters).
    pub name: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

fn refuse(name: &str, reason: &'static str) -> PathError {
    PathError {
        name: name.chars().take(80).collect(),
        reason,
    }
}

/// Checks `name` and returns it as a relative path of plain segments.
pub fn relative_path(name: &str) -> Result<PathBuf, PathError> {
    if name.is_empty() {
        return Err(refuse(name, "it is empty"));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(refuse(name, "it is longer than 1024 bytes"));
    }
    if name.chars().any(char::is_control) {
        return Err(refuse(name, "it contains a control character"));
    }
    if name.contains('\\') {
        return Err(refuse(name, "it contains a backslash"));
    }
    if name.starts_with('/') {
        return Err(refuse(name, "it is absolute"));
    }
    let mut path = PathBuf::new();
    for segment in name.split('/') {
        match segment {
            "" => return Err(refuse(name, "it has an empty segment")),
            "." | ".." => return Err(refuse(name, "it has a . or .. segment")),
            _ => {}
        }
        if segment.len() > MAX_SEGMENT_BYTES {
            return Err(refuse(name, "a segment is longer than 255 bytes"));
        }
        if segment.len() >= 2
            && segment.as_bytes()[1] == b':'
            && segment.as_bytes()[0].is_ascii_alphabetic()
        {
            return Err(refuse(name, "it starts like a drive letter"));
        }
        if segment.starts_with(TEMP_PREFIX) || segment.ends_with(PARTIAL_SUFFIX) {
            return Err(refuse(name, "it looks like a temporary file"));
        }
        path.push(segment);
    }
    // Belt and braces: what was pushed must be plain segments only.
    if !path.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(refuse(name, "it is not a plain relative path"));
    }
    Ok(path)
}

/// `root` joined with the checked `name`: always a path under `root`.
pub fn join_under(root: &Path, name: &str) -> Result<PathBuf, PathError> {
    Ok(root.join(relative_path(name)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(name: &str, accepted: bool) {
        let result = relative_path(name);
        assert_eq!(result.is_ok(), accepted, "{name:?}: {result:?}");
        let root = Path::new("/srv/archive");
        if let Ok(path) = join_under(root, name) {
            assert!(path.starts_with(root), "{name:?} -> {}", path.display());
            assert!(
                path.components()
                    .skip(root.components().count())
                    .all(|c| matches!(c, Component::Normal(_))),
                "{name:?} -> {}",
                path.display()
            );
        }
    }

    #[test]
    fn a_hostile_corpus_never_leaves_the_root() {
        let long_segment = "a".repeat(256);
        let long_name = format!("{}/x", "abcdefgh/".repeat(120));
        let corpus: &[(&str, bool)] = &[
            ("images/j/0.png", true),
            ("videos/j/20261128101010/sample_0.mp4", true),
            ("images/j/with space.png", true),
            ("images/j/ünïcödé.png", true),
            ("images/j/%2e%2e/x", true), // literal, GCS does not decode
            ("images/j/‥/x", true),      // a look-alike, not a parent
            ("images/j/．．/x", true),
            ("images/j/..png", true),
            ("images/j/...", true),
            ("images/j/.hidden", true),
            ("a", true),
            ("", false),
            ("/", false),
            ("/etc/passwd", false),
            ("//x", false),
            ("..", false),
            ("../x", false),
            ("x/..", false),
            ("a/../../b", false),
            ("a/./b", false),
            ("./a", false),
            (".", false),
            ("a//b", false),
            ("a/", false),
            ("..\\..\\x", false),
            ("a\\b", false),
            ("C:\\x", false),
            ("C:x", false),
            ("c:/x", false),
            ("a/\0b", false),
            ("a\0", false),
            ("a/\nb", false),
            ("a/\rb", false),
            ("a/\tb", false),
            ("a/\u{1b}[31m", false),
            ("a/\u{7f}", false),
            ("a/\u{85}", false),
            ("images/j/.asmr-tmp-123", false),
            ("images/j/0.png.asmr-partial", false),
            ("images/j/../../../../etc/shadow", false),
            ("images/j/./../x", false),
        ];
        for (name, accepted) in corpus {
            check(name, *accepted);
        }
        check(&format!("a/{long_segment}"), false);
        check(&"a".repeat(255), true);
        check(&long_name, false);
        assert!(corpus.len() >= 40);
    }

    #[test]
    fn errors_name_the_object_and_the_reason() {
        let err = relative_path("a/../b").unwrap_err();
        assert_eq!(
            err.to_string(),
            "object name \"a/../b\" cannot be a file path: it has a . or .. segment"
        );
    }
}
