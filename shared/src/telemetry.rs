//! Logging: JSON lines for Cloud Logging (`severity`, `message`, span fields
//! such as `job_id` and `message_id`) through `tracing-stackdriver`, or a
//! readable format when stdout is a terminal. `RUST_LOG` filters (default
//! `info`).
//!
//! A request's trace id (from `traceparent` or `X-Cloud-Trace-Context`, see
//! [`crate::server::trace_id`]) is a field of its span. Cloud Logging groups
//! the lines of one request when they carry it as
//! `logging.googleapis.com/trace: projects/P/traces/T`, a key
//! `tracing-stackdriver` only writes through OpenTelemetry, so each JSON line
//! gets it here on its way out ([`link_trace`]), with the project from
//! `GOOGLE_CLOUD_PROJECT`.

use serde_json::{Map, Value};
use std::io::{IsTerminal, Write};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The key Cloud Logging reads a log entry's trace from.
pub const TRACE_KEY: &str = "logging.googleapis.com/trace";

/// Installs the global subscriber. Calling it twice is harmless.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let _ = if std::io::stdout().is_terminal() {
        registry
            .with(tracing_subscriber::fmt::layer().with_target(false))
            .try_init()
    } else {
        let project = std::env::var("GOOGLE_CLOUD_PROJECT")
            .ok()
            .filter(|p| !p.trim().is_empty());
        registry
            .with(tracing_stackdriver::layer().with_writer(TraceLinked { project }))
            .try_init()
    };
}

/// Writes JSON log lines to stdout with the trace key added.
#[derive(Clone)]
struct TraceLinked {
    project: Option<String>,
}

impl<'a> MakeWriter<'a> for TraceLinked {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter {
            project: self.project.clone(),
        }
    }
}

/// One event's writer: the formatter hands it the whole line at once.
struct LineWriter {
    project: Option<String>,
}

impl Write for LineWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut out = std::io::stdout().lock();
        match &self.project {
            Some(project) => out.write_all(&link_trace(buf, project))?,
            None => out.write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stdout().flush()
    }
}

/// `line` (one JSON log entry and its newline) with
/// `logging.googleapis.com/trace` added when one of its spans carries a
/// `trace` field; anything else comes back unchanged.
pub fn link_trace(line: &[u8], project: &str) -> Vec<u8> {
    let Ok(Value::Object(mut entry)) = serde_json::from_slice::<Value>(line) else {
        return line.to_vec();
    };
    if entry.contains_key(TRACE_KEY) {
        return line.to_vec();
    }
    let Some(trace) = trace_of(&entry) else {
        return line.to_vec();
    };
    entry.insert(
        TRACE_KEY.to_string(),
        Value::String(format!("projects/{project}/traces/{trace}")),
    );
    match serde_json::to_vec(&entry) {
        Ok(mut out) => {
            out.push(b'\n');
            out
        }
        Err(_) => line.to_vec(),
    }
}

/// The innermost non-empty `trace` field of the entry's spans.
fn trace_of(entry: &Map<String, Value>) -> Option<String> {
    let from = |span: &Value| {
        span.get("trace")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .map(str::to_string)
    };
    entry
        .get("span")
        .and_then(from)
        .or_else(|| entry.get("spans")?.as_array()?.iter().rev().find_map(from))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

    #[test]
    fn a_line_inside_a_traced_request_names_its_trace() {
        let line = format!(
            "{{\"time\":\"t\",\"span\":{{\"name\":\"request\",\"trace\":\"{TRACE}\"}},\"spans\":[],\"severity\":\"INFO\",\"message\":\"hi\",\"jobId\":\"j\"}}\n"
        );
        let out = link_trace(line.as_bytes(), "proj");
        assert!(out.ends_with(b"\n"));
        let entry: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(entry[TRACE_KEY], format!("projects/proj/traces/{TRACE}"));
        assert_eq!(entry["message"], "hi");
        assert_eq!(entry["jobId"], "j");
    }

    #[test]
    fn the_trace_is_found_in_an_outer_span_too() {
        let line = format!(
            "{{\"span\":{{\"name\":\"claim\"}},\"spans\":[{{\"name\":\"request\",\"trace\":\"{TRACE}\"}},{{\"name\":\"claim\"}}]}}\n"
        );
        let entry: Value = serde_json::from_slice(&link_trace(line.as_bytes(), "p")).unwrap();
        assert_eq!(entry[TRACE_KEY], format!("projects/p/traces/{TRACE}"));
    }

    #[test]
    fn lines_without_a_trace_or_not_json_pass_unchanged() {
        for line in [
            "{\"span\":{\"name\":\"request\",\"trace\":\"\"},\"message\":\"x\"}\n",
            "{\"message\":\"no span\"}\n",
            "not json at all\n",
            "[1,2]\n",
        ] {
            assert_eq!(link_trace(line.as_bytes(), "p"), line.as_bytes(), "{line}");
        }
    }
}
