//! The one table the benchmarks print, with its notes.

use std::fmt::Write;
use std::time::Duration;

/// One figure.
pub struct Row {
    group: &'static str,
    figure: String,
    measured: String,
    goal: String,
    met: Option<bool>,
}

/// Every figure of a run, in the order measured, and what could not be.
#[derive(Default)]
pub struct Report {
    rows: Vec<Row>,
    notes: Vec<String>,
    unmeasured: Vec<String>,
    /// Wall time of the whole run.
    pub total: Duration,
    /// The cargo profile of the binaries measured (`release`).
    pub profile: String,
}

impl Report {
    /// An empty report.
    pub fn new() -> Self {
        Self::default()
    }

    /// A figure without a goal.
    pub fn figure(&mut self, group: &'static str, figure: impl Into<String>, measured: String) {
        self.rows.push(Row {
            group,
            figure: figure.into(),
            measured,
            goal: String::new(),
            met: None,
        });
    }

    /// A figure with a goal and whether it is met.
    pub fn goal(
        &mut self,
        group: &'static str,
        figure: impl Into<String>,
        measured: String,
        goal: impl Into<String>,
        met: bool,
    ) {
        self.rows.push(Row {
            group,
            figure: figure.into(),
            measured,
            goal: goal.into(),
            met: Some(met),
        });
    }

    /// How a figure was measured, printed under the table.
    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    /// A figure that could not be measured, and why.
    pub fn unmeasured(&mut self, what: impl Into<String>) {
        self.unmeasured.push(what.into());
    }

    /// The goals missed.
    pub fn missed(&self) -> usize {
        self.rows.iter().filter(|r| r.met == Some(false)).count()
    }

    /// The table and its notes as markdown.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|info| {
                info.lines()
                    .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
                    .map(|(_, model)| model.trim().to_string())
            })
            .unwrap_or_else(|| "unknown CPU".into());
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        let _ = writeln!(out, "# Benchmarks\n");
        let _ = writeln!(
            out,
            "Measured by `tests/bench` on {} ({cores} cores, {cpu}), {} binaries, the local emulators; {} in all.\n",
            chrono::Utc::now().format("%Y-%m-%d"),
            self.profile,
            humanize(self.total),
        );
        let _ = writeln!(out, "| group | figure | measured | goal | met |");
        let _ = writeln!(out, "| --- | --- | --- | --- | --- |");
        for row in &self.rows {
            let met = match row.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "",
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {met} |",
                row.group,
                cell(&row.figure),
                cell(&row.measured),
                cell(&row.goal)
            );
        }
        if !self.notes.is_empty() {
            let _ = writeln!(out, "\nHow each figure is measured:\n");
            for note in &self.notes {
                let _ = writeln!(out, "- {note}");
            }
        }
        if !self.unmeasured.is_empty() {
            let _ = writeln!(out, "\nNot measured:\n");
            for what in &self.unmeasured {
                let _ = writeln!(out, "- {what}");
            }
        }
        out
    }
}

/// A table cell: no pipe may end it early.
fn cell(text: &str) -> String {
    text.replace('|', "\\|")
}

/// `1 min 05 s`, `12.3 s` or `450 ms`.
pub fn humanize(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 59.5 {
        let whole = d.as_secs() + u64::from(d.subsec_millis() >= 500);
        format!("{} min {:02} s", whole / 60, whole % 60)
    } else if s >= 1.0 {
        format!("{s:.1} s")
    } else {
        format!("{:.0} ms", s * 1000.0)
    }
}

/// KiB as `23.4 MiB`.
pub fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// Bytes as `10 MiB` or `1 GiB`.
pub fn size(bytes: u64) -> String {
    const MIB: u64 = 1024 * 1024;
    if bytes >= 1024 * MIB && bytes.is_multiple_of(1024 * MIB) {
        format!("{} GiB", bytes / (1024 * MIB))
    } else if bytes.is_multiple_of(MIB) {
        format!("{} MiB", bytes / MIB)
    } else {
        format!("{:.1} MiB", bytes as f64 / MIB as f64)
    }
}
