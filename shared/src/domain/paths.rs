//! The one function through which object names become filesystem paths.
//!
//! GCS object names are arbitrary UTF-8 up to 1024 bytes; a path built from
//! one must never leave the directory it is joined to, whatever the object
//! is called. Names are taken literally, byte for byte: GCS does not
//! URL-decode them (so `%2e%2e` is a harmless file name), and neither do we
//! Unicode-normalise them (NFC and NFD spellings stay two different names, as
//! they are two objects). A name is refused when any segment could climb, be
//! absolute, hide a separator, or collide with the temporary files of the
//! local object store ([`TEMP_PREFIX`]) or the downloader
//! ([`PARTIAL_SUFFIX`]).
//!
//! The local object store maps its buckets through [`relative_path`], and the
//! downloader writes `images/{job}/0.png` under its destination with
//! [`join_under`]; nothing else turns an object name into a path.

use std::fmt;
use std::path::{Component, Path, PathBuf};

/// The longest name accepted, in bytes (GCS's own limit).
pub const MAX_NAME_BYTES: usize = 1024;
/// The longest segment, in bytes (most filesystems' limit).
pub const MAX_SEGMENT_BYTES: usize = 255;
/// Prefix of the temporary files of atomic writes (the local object store's).
pub const TEMP_PREFIX: &str = ".asmr-tmp-";
/// Suffix of the temporary files of resumable copies (the downloader's).
pub const PARTIAL_SUFFIX: &str = ".asmr-partial";

/// What is wrong with a name; its text completes "object name … cannot be a
/// file path: ".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathProblem {
    /// The name is empty.
    Empty,
    /// Longer than [`MAX_NAME_BYTES`].
    TooLong,
    /// NUL or another control character.
    ControlCharacter,
    /// A backslash, a separator on Windows.
    Backslash,
    /// Starts with `/`.
    Absolute,
    /// `a//b` or a trailing `/`.
    EmptySegment,
    /// A `.` or `..` segment.
    DotSegment,
    /// A segment longer than [`MAX_SEGMENT_BYTES`].
    SegmentTooLong,
    /// A segment starting like `C:`, a drive prefix on Windows.
    DrivePrefix,
    /// A segment named like a temporary file of the project's own.
    Reserved,
}

impl fmt::Display for PathProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathProblem::Empty => "it is empty",
            PathProblem::TooLong => "it is longer than 1024 bytes",
            PathProblem::ControlCharacter => "it contains a control character",
            PathProblem::Backslash => "it contains a backslash",
            PathProblem::Absolute => "it is absolute",
            PathProblem::EmptySegment => "it has an empty segment",
            PathProblem::DotSegment => "it has a . or .. segment",
            PathProblem::SegmentTooLong => "a segment is longer than 255 bytes",
            PathProblem::DrivePrefix => "a segment starts like a drive letter",
            PathProblem::Reserved => {
                "a segment is named like a temporary file (.asmr-tmp-* or *.asmr-partial)"
            }
        })
    }
}

/// Why a name cannot be a path.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("object name {name:?} cannot be a file path: {problem}")]
pub struct PathError {
    /// The name (cut to 80 characters).
    pub name: String,
    /// What is wrong with it.
    pub problem: PathProblem,
}

fn refuse(name: &str, problem: PathProblem) -> PathError {
    PathError {
        name: name.chars().take(80).collect(),
        problem,
    }
}

/// Checks `name` and returns it as a relative path of plain segments: the
/// same bytes, split at `/`.
pub fn relative_path(name: &str) -> Result<PathBuf, PathError> {
    if name.is_empty() {
        return Err(refuse(name, PathProblem::Empty));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(refuse(name, PathProblem::TooLong));
    }
    // C0, DEL and C1: NUL ends a C path, and the others corrupt logs and
    // terminals that show the path.
    if name.chars().any(char::is_control) {
        return Err(refuse(name, PathProblem::ControlCharacter));
    }
    if name.contains('\\') {
        return Err(refuse(name, PathProblem::Backslash));
    }
    if name.starts_with('/') {
        return Err(refuse(name, PathProblem::Absolute));
    }
    let mut path = PathBuf::new();
    for segment in name.split('/') {
        match segment {
            "" => return Err(refuse(name, PathProblem::EmptySegment)),
            "." | ".." => return Err(refuse(name, PathProblem::DotSegment)),
            _ => {}
        }
        if segment.len() > MAX_SEGMENT_BYTES {
            return Err(refuse(name, PathProblem::SegmentTooLong));
        }
        // Every segment, not just the first: on Windows, pushing `C:x` onto
        // a path throws away what was there.
        if let [letter, b':', ..] = segment.as_bytes()
            && letter.is_ascii_alphabetic()
        {
            return Err(refuse(name, PathProblem::DrivePrefix));
        }
        if segment.starts_with(TEMP_PREFIX) || segment.ends_with(PARTIAL_SUFFIX) {
            return Err(refuse(name, PathProblem::Reserved));
        }
        path.push(segment);
    }
    // Belt and braces: what was pushed must be plain segments only.
    if !path.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(refuse(name, PathProblem::DotSegment));
    }
    Ok(path)
}

/// `root` joined with the checked `name`: lexically always a path under
/// `root`, because the joined part has plain segments only (no root, prefix,
/// `.` or `..`). Symbolic links under `root` are the caller's business.
pub fn join_under(root: &Path, name: &str) -> Result<PathBuf, PathError> {
    Ok(root.join(relative_path(name)?))
}

/// `path` as an absolute path without `.` or `..`, so that it compares
/// equal to the paths deliveries record, from whichever folder the caller
/// runs in. Lexical: the folder need not exist yet, and symbolic links are
/// kept as named (a page written to `../sheets/` is compared with the files
/// by what the path names).
pub fn absolute(path: &Path) -> std::io::Result<PathBuf> {
    let mut normal = PathBuf::new();
    for component in std::path::absolute(path)?.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                normal.pop();
            }
            other => normal.push(other),
        }
    }
    Ok(normal)
}

#[cfg(test)]
mod tests {
    use super::PathProblem::*;
    use super::*;

    /// What a name should give.
    #[derive(Clone, Copy, Debug)]
    enum Expect {
        /// Accepted, as the same bytes.
        Kept,
        /// Refused for this reason.
        Refused(PathProblem),
    }
    use Expect::{Kept, Refused};

    const ROOT: &str = "/srv/archive";

    /// The hostile corpus, with what each name should give.
    fn corpus() -> Vec<(String, Expect)> {
        let fixed: &[(&str, Expect)] = &[
            // Valid names, as the pipeline writes them and as people do.
            ("images/j/0.png", Kept),
            ("videos/j/20261128/sample_0.mp4", Kept),
            ("videos/j/20261128101010/sample_0.mp4", Kept),
            ("images/j/with space.png", Kept),
            ("dir with space/a+b=c&d?e#f;g,h@i!j'k(l)m*n~o.txt", Kept),
            ("a", Kept),
            ("images/j/ünïcödé.png", Kept),
            ("unicode/éß漢字🙂.txt", Kept),
            // NFC and NFD spellings of é: both kept, as given.
            ("nfc/caf\u{e9}.png", Kept),
            ("nfd/cafe\u{301}.png", Kept),
            // GCS names are not URL-decoded, so these are literal names.
            ("%2e%2e/x", Kept),
            ("images/j/%2e%2e/x", Kept),
            ("%2e%2e%2f%2e%2e%2fetc%2fpasswd", Kept),
            ("..%2f..%2fx", Kept),
            // Look-alikes of `..` are plain names, and stay under the root.
            ("‥/x", Kept),
            ("images/j/‥/x", Kept),
            ("．．/x", Kept),
            ("images/j/．．/．/x", Kept),
            // Dots that are not whole segments.
            ("images/j/..png", Kept),
            ("images/j/...", Kept),
            ("..dots../.hidden", Kept),
            ("a..", Kept),
            ("images/j/.hidden", Kept),
            // Colons past the first byte, and lone letters, are no drive.
            ("images/j/a1:b", Kept),
            ("1:x", Kept),
            // Names like, but not, the reserved ones.
            ("images/j/asmr-tmp-1", Kept),
            ("images/j/0.asmr-partial.png", Kept),
            // Traversal.
            ("..", Refused(DotSegment)),
            (".", Refused(DotSegment)),
            ("../x", Refused(DotSegment)),
            ("x/..", Refused(DotSegment)),
            ("a/../../b", Refused(DotSegment)),
            ("images/j/../../../../etc/shadow", Refused(DotSegment)),
            ("./a", Refused(DotSegment)),
            ("a/./b", Refused(DotSegment)),
            ("images/j/./../x", Refused(DotSegment)),
            // Absolute.
            ("/", Refused(Absolute)),
            ("/etc/passwd", Refused(Absolute)),
            ("//x", Refused(Absolute)),
            ("/../x", Refused(Absolute)),
            // Empty, and empty segments.
            ("", Refused(Empty)),
            ("a//b", Refused(EmptySegment)),
            ("a/", Refused(EmptySegment)),
            ("images/j/", Refused(EmptySegment)),
            // Backslash tricks, for a Windows reader of the same tree.
            ("..\\..\\x", Refused(Backslash)),
            ("a\\b", Refused(Backslash)),
            ("images\\..\\x", Refused(Backslash)),
            ("\\\\server\\share\\x", Refused(Backslash)),
            ("C:\\x", Refused(Backslash)),
            // Drive prefixes.
            ("C:x", Refused(DrivePrefix)),
            ("c:/x", Refused(DrivePrefix)),
            ("C:", Refused(DrivePrefix)),
            ("images/Z:evil", Refused(DrivePrefix)),
            // NUL and control characters.
            ("a\0", Refused(ControlCharacter)),
            ("a/\0b", Refused(ControlCharacter)),
            ("../\0", Refused(ControlCharacter)),
            ("a/\nb", Refused(ControlCharacter)),
            ("a/\rb", Refused(ControlCharacter)),
            ("a/\tb", Refused(ControlCharacter)),
            ("a/\u{1b}[31m", Refused(ControlCharacter)),
            ("a/\u{7f}", Refused(ControlCharacter)),
            ("a/\u{85}", Refused(ControlCharacter)),
            // The project's own temporary files.
            ("images/j/.asmr-tmp-123", Refused(Reserved)),
            (".asmr-tmp-", Refused(Reserved)),
            ("images/j/0.png.asmr-partial", Refused(Reserved)),
            (".asmr-partial", Refused(Reserved)),
            ("images/.asmr-tmp-x/0.png", Refused(Reserved)),
        ];
        let generated = [
            // Lengths, in bytes, not characters.
            ("a".repeat(255), Kept),
            (format!("a/{}", "a".repeat(256)), Refused(SegmentTooLong)),
            (format!("x/{}", "é".repeat(128)), Refused(SegmentTooLong)),
            ("a/".repeat(511) + "ab", Kept), // 1024 bytes
            ("a/".repeat(512) + "a", Refused(TooLong)),
            (format!("{}/x", "abcdefgh/".repeat(120)), Refused(TooLong)),
        ];
        fixed
            .iter()
            .map(|(name, expect)| (name.to_string(), *expect))
            .chain(generated)
            .collect()
    }

    fn check(name: &str, expected: Expect) {
        let result = relative_path(name);
        match (expected, &result) {
            (Kept, Ok(path)) => assert_eq!(path.to_str(), Some(name), "{name:?}"),
            (Refused(problem), Err(e)) => {
                assert_eq!(e.problem, problem, "{name:?}: {e}");
                assert!(name.starts_with(e.name.as_str()), "{name:?}: {e}");
            }
            _ => panic!("{name:?}: expected {expected:?}, got {result:?}"),
        }
        assert_eq!(
            join_under(Path::new(ROOT), name).map(|_| ()),
            result.map(|_| ()),
            "{name:?}: join_under and relative_path disagree"
        );
    }

    /// The property every path handed out must have.
    fn assert_under_root(root: &Path, name: &str, path: &Path) {
        assert!(path.starts_with(root), "{name:?} -> {}", path.display());
        let below = path.strip_prefix(root).unwrap_or(path);
        assert!(
            below
                .components()
                .all(|c| matches!(c, Component::Normal(_)) && c.as_os_str() != ".."),
            "{name:?} -> {}",
            path.display()
        );
        assert!(below.components().count() >= 1, "{name:?} is the root");
    }

    #[test]
    fn a_hostile_corpus_is_kept_or_refused_for_the_right_reason() {
        let corpus = corpus();
        assert!(corpus.len() >= 40, "only {} names", corpus.len());
        for (name, expected) in &corpus {
            check(name, *expected);
        }
    }

    #[test]
    fn every_accepted_name_of_the_corpus_lands_under_the_root() {
        for root in [ROOT, "relative/root", "/"] {
            let root = Path::new(root);
            for (name, _) in corpus() {
                if let Ok(path) = join_under(root, &name) {
                    assert_under_root(root, &name, &path);
                }
            }
        }
    }

    #[test]
    fn every_short_name_made_of_hostile_pieces_lands_under_the_root_or_is_refused() {
        // All sequences of up to four pieces: 12^4 + 12^3 + ... names, each
        // either refused or a path under the root.
        const PIECES: &[&str] = &[
            "..", ".", "/", "\\", "a", "‥", "．", "C:", "\0", "%2e", ":", " ",
        ];
        let root = Path::new(ROOT);
        let mut names = vec![String::new()];
        let mut accepted = 0;
        for _ in 0..4 {
            let mut longer = Vec::with_capacity(names.len() * PIECES.len());
            for name in &names {
                for piece in PIECES {
                    let candidate = format!("{name}{piece}");
                    if let Ok(path) = join_under(root, &candidate) {
                        accepted += 1;
                        assert_under_root(root, &candidate, &path);
                        assert_eq!(path.strip_prefix(root).ok(), Some(Path::new(&candidate)));
                    }
                    longer.push(candidate);
                }
            }
            names = longer;
        }
        assert!(accepted > 1000, "only {accepted} accepted");
    }

    #[test]
    fn errors_name_the_object_and_the_reason_in_one_sentence() {
        let err = relative_path("a/../b").unwrap_err();
        assert_eq!(
            err.to_string(),
            "object name \"a/../b\" cannot be a file path: it has a . or .. segment"
        );
        let long = format!("{}/x", "b".repeat(2000));
        let err = relative_path(&long).unwrap_err();
        assert_eq!(err.name.len(), 80);
        assert!(err.to_string().ends_with("it is longer than 1024 bytes"));
    }
}
