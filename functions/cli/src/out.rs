//! Where output goes. Data (ids, tables, JSON) goes to stdout so it can be
//! piped; everything said to the operator goes to stderr.

use anyhow::Error;
use serde::Serialize;
use shared::time::Timestamp;
use std::fmt::Display;
use std::io::{self, Write};
use std::process::ExitCode;

/// Writes one line of data to stdout.
pub fn line(text: impl Display) -> io::Result<()> {
    writeln!(io::stdout().lock(), "{text}")
}

/// Writes text (ending with its own newline) to stdout.
pub fn text(text: &str) -> io::Result<()> {
    io::stdout().lock().write_all(text.as_bytes())
}

/// Writes a message for the operator to stderr. A closed stderr is not worth
/// failing a command for.
pub fn note(text: impl Display) {
    let _ = writeln!(io::stderr().lock(), "{text}");
}

/// Writes `value` as indented JSON to stdout.
pub fn json_pretty<T: Serialize + ?Sized>(value: &T) -> anyhow::Result<()> {
    let mut stdout = io::stdout().lock();
    serde_json::to_writer_pretty(&mut stdout, value)?;
    writeln!(stdout)?;
    Ok(())
}

/// Writes `value` as JSON on one line, spaced like `{"a": 1, "b": [1, 2]}`.
pub fn json_line<T: Serialize + ?Sized>(value: &T) -> anyhow::Result<()> {
    let mut stdout = io::stdout().lock();
    let mut serializer = serde_json::Serializer::with_formatter(&mut stdout, Spaced);
    value.serialize(&mut serializer)?;
    writeln!(stdout)?;
    Ok(())
}

/// Compact JSON with a space after `:` and `,`.
struct Spaced;

impl serde_json::ser::Formatter for Spaced {
    fn begin_array_value<W: ?Sized + Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }
    fn begin_object_key<W: ?Sized + Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }
    fn begin_object_value<W: ?Sized + Write>(&mut self, writer: &mut W) -> io::Result<()> {
        writer.write_all(b": ")
    }
}

/// Reports the outcome of a command: one `error: ...` line and exit 1 on failure.
/// A reader that went away (`asmr list | head`) is not an error.
pub fn exit_code(outcome: anyhow::Result<()>) -> ExitCode {
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            note(format_args!("error: {}", one_sentence(&err)));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, like anyhow's `{:#}`, but without
/// repeating a cause its parent already printed: `shared::error::Error` variants
/// both show their source and return it from `source()`.
fn one_sentence(err: &Error) -> String {
    let mut message = String::new();
    let mut previous = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if previous.contains(&text) {
            continue;
        }
        if !message.is_empty() {
            message.push_str(": ");
        }
        message.push_str(&text);
        previous = text;
    }
    // Keep it one line even if a cause spans several.
    message.replace(['\r', '\n'], " ")
}

fn is_broken_pipe(err: &Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
            || cause
                .downcast_ref::<serde_json::Error>()
                .and_then(serde_json::Error::io_error_kind)
                == Some(io::ErrorKind::BrokenPipe)
    })
}

/// A plain text table: columns separated by two spaces, padded to the widest
/// cell, numbers aligned right. The last column is not padded.
pub struct Table {
    rows: Vec<Vec<String>>,
    right: Vec<bool>,
}

impl Table {
    /// A table with this header row.
    pub fn new(header: &[&str]) -> Self {
        Self {
            rows: vec![header.iter().map(ToString::to_string).collect()],
            right: vec![false; header.len()],
        }
    }

    /// Aligns the given columns to the right.
    pub fn right(mut self, columns: &[usize]) -> Self {
        for &column in columns {
            if let Some(right) = self.right.get_mut(column) {
                *right = true;
            }
        }
        self
    }

    /// Adds a row.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table, one line per row, each ending with a newline.
    pub fn render(&self) -> String {
        let columns = self.right.len();
        let mut widths = vec![0; columns];
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let mut text = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate().take(columns) {
                if i > 0 {
                    line.push_str("  ");
                }
                let pad = widths[i].saturating_sub(cell.chars().count());
                let last = i + 1 == columns;
                if self.right[i] {
                    line.extend(std::iter::repeat_n(' ', pad));
                    line.push_str(cell);
                } else {
                    line.push_str(cell);
                    if !last {
                        line.extend(std::iter::repeat_n(' ', pad));
                    }
                }
            }
            text.push_str(line.trim_end());
            text.push('\n');
        }
        text
    }
}

/// `text` on one line (every whitespace run becomes one space), cut to at
/// most `max` characters with a `…` when it was longer.
pub fn one_line(text: &str, max: usize) -> String {
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= max {
        return flat;
    }
    let mut cut: String = flat.chars().take(max.saturating_sub(1)).collect();
    cut.truncate(cut.trim_end().len());
    cut.push('…');
    cut
}

/// `text` cut in the middle to at most `max` characters, with a `…` where
/// the cut is: the start and the end of a path or URI say the most.
pub fn middle(text: &str, max: usize) -> String {
    let chars: Vec<char> = text.chars().collect();
    if chars.len() <= max {
        return text.to_string();
    }
    let keep = max.saturating_sub(1);
    let head = keep / 2;
    let tail = keep - head;
    let mut cut: String = chars[..head].iter().collect();
    cut.push('…');
    cut.extend(&chars[chars.len() - tail..]);
    cut
}

/// A byte count for people: `512 B`, `1.5 KiB`, `12.3 MiB` (powers of 1024,
/// one decimal above bytes).
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    // 1023.96 KiB would print as 1024.0 KiB: that is 1.0 MiB.
    while value >= 1023.95 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// A time to the second, without the zone (tables say UTC in the header).
pub fn short_time(at: Timestamp) -> String {
    at.as_datetime().format("%Y-%m-%d %H:%M:%S").to_string()
}

/// `n` and the noun, plural when `n` is not 1.
pub fn count(n: usize, singular: &str, plural: &str) -> String {
    format!("{n} {}", if n == 1 { singular } else { plural })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_and_numbers() {
        let mut table = Table::new(&["status", "image", "total"]).right(&[1, 2]);
        table.row(vec!["pending".into(), "3".into(), "12".into()]);
        table.row(vec!["cancelled".into(), "10".into(), "1".into()]);
        assert_eq!(
            table.render(),
            "status     image  total\n\
             pending        3     12\n\
             cancelled     10      1\n"
        );
    }

    #[test]
    fn the_last_column_is_not_padded() {
        let mut table = Table::new(&["id", "prompt"]);
        table.row(vec!["a".into(), "long prompt".into()]);
        table.row(vec!["bb".into(), "x".into()]);
        assert_eq!(table.render(), "id  prompt\na   long prompt\nbb  x\n");
    }

    fn check(input: &str, max: usize, expected: &str) {
        assert_eq!(one_line(input, max), expected, "one_line({input:?}, {max})");
    }

    #[test]
    fn one_line_flattens_and_truncates() {
        check("rain on a roof", 60, "rain on a roof");
        check("rain\non a\t roof\n", 60, "rain on a roof");
        check("abcdefghij", 10, "abcdefghij");
        check("abcdefghijk", 10, "abcdefghi…");
        check("abcd efghijk", 6, "abcd…");
        check("ééééééé", 5, "éééé…");
    }

    #[test]
    fn middle_keeps_both_ends() {
        assert_eq!(middle("gs://b/o.png", 20), "gs://b/o.png");
        assert_eq!(middle("abcdefghij", 10), "abcdefghij");
        assert_eq!(middle("abcdefghijk", 10), "abcd…ghijk");
        assert_eq!(middle("abcdefghijk", 9), "abcd…hijk");
        assert_eq!(middle("éééééééééé", 4), "é…éé");
    }

    #[test]
    fn byte_counts_read_in_binary_units() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1024), "1.0 KiB");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(12_897_485), "12.3 MiB");
        assert_eq!(bytes(1024 * 1024 - 1), "1.0 MiB");
        assert_eq!(bytes(3 << 30), "3.0 GiB");
        assert_eq!(bytes(u64::MAX), "16.0 EiB");
    }

    #[test]
    fn errors_read_as_one_line_without_repeats() {
        let invalid = shared::error::Error::from(shared::domain::invalid::ValidationError::new(
            "prompt", "is empty",
        ));
        assert_eq!(
            one_sentence(&invalid.into()),
            "invalid input: prompt: is empty"
        );
        let err =
            anyhow::Error::from(io::Error::other("line one\nline two")).context("reading f.txt");
        assert_eq!(one_sentence(&err), "reading f.txt: line one line two");
    }

    #[test]
    fn json_lines_are_spaced() {
        let mut buffer = Vec::new();
        let mut serializer = serde_json::Serializer::with_formatter(&mut buffer, Spaced);
        serde_json::json!({"a": {"b": 1}, "c": [1, 2]})
            .serialize(&mut serializer)
            .unwrap();
        assert_eq!(
            String::from_utf8(buffer).unwrap(),
            r#"{"a": {"b": 1}, "c": [1, 2]}"#
        );
    }
}
