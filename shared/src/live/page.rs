//! The live page's markup: figures grouped by their first name, each in an
//! element with `data-metric`, and the script that keeps them current.

use super::Snapshot;
use crate::report::escape;
use serde_json::Value;
use std::fmt::Write as _;
use std::sync::LazyLock;

const CSS: &str = include_str!("live.css");

/// The text of the page's one script element, exactly as its hash in the
/// Content-Security-Policy covers it.
const SCRIPT: &str = concat!("\n", include_str!("live.js"));

/// The review part: its controls; the script fills in the cards.
const REVIEW: &str = "<section id=\"review\" aria-label=\"review\">\n\
    <h2>Images to review</h2>\n\
    <p class=\"keys\">Keys: <kbd>j</kbd>/<kbd>k</kbd> next/previous, <kbd>a</kbd> approve, \
    <kbd>r</kbd> reject, <kbd>p</kbd> promote, <kbd>x</kbd> select.</p>\n\
    <div class=\"toolbar\">\n\
    <input id=\"reason\" type=\"text\" maxlength=\"2000\" placeholder=\"Reason for a rejection\" \
    aria-label=\"reason for a rejection\">\n\
    <button type=\"button\" id=\"select-all\">Select all</button>\n\
    <button type=\"button\" id=\"select-none\">Select none</button>\n\
    <span id=\"selected\">0 selected</span>\n\
    <button type=\"button\" data-bulk=\"approve\">Approve selected</button>\n\
    <button type=\"button\" data-bulk=\"reject\">Reject selected</button>\n\
    <button type=\"button\" data-bulk=\"promote\">Promote selected</button>\n\
    </div>\n\
    <div id=\"cards\" class=\"cards\"></div>\n\
    <button type=\"button\" id=\"more\" hidden>More images</button>\n\
    </section>\n";

/// The groups in the order shown; others follow, sorted.
const GROUPS: [(&str, &str); 8] = [
    ("jobs", "Jobs"),
    ("waiting", "Pending jobs waiting, by reason"),
    ("activity", "The last hour"),
    ("downloads", "Downloads"),
    ("budget", "Money today (UTC)"),
    ("jobs_by_kind", "Jobs per kind"),
    ("jobs_by_tenant", "Jobs per tenant"),
    (
        "jobs_by_model",
        "Jobs per model (once a generator took them)",
    ),
];

/// An empty chart of a series; the script draws it from `data-value`.
const SPARK: &str = "<svg class=\"spark\" viewBox=\"0 0 59 20\" preserveAspectRatio=\"none\" \
    aria-hidden=\"true\"><polyline points=\"\"></polyline></svg>";

/// Connections to the page's own origin only (its stream of figures);
/// the one script that runs is the page's own, named by its SHA-256.
static POLICY: LazyLock<String> = LazyLock::new(|| {
    let hash = crate::report::script_hash(SCRIPT);
    format!(
        "default-src 'none'; connect-src 'self'; style-src 'unsafe-inline'; \
         script-src 'sha256-{hash}'; img-src 'self' data:; base-uri 'none'; \
         form-action 'none'; frame-ancestors 'none'"
    )
});

/// The page's Content-Security-Policy header.
pub fn content_security_policy() -> &'static str {
    POLICY.as_str()
}

/// How a figure reads: numbers and strings as they are, `null` as a dash.
pub fn text_of(value: &Value) -> String {
    match value {
        Value::Null => "–".to_string(),
        Value::String(s) => s.clone(),
        // As the page's script writes numbers: 1.0 reads 1.
        Value::Number(n) => match n.as_f64() {
            Some(x) if n.is_f64() && x.fract() == 0.0 && x.abs() < 1e15 => format!("{}", x as i64),
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}

/// The whole page, showing `snapshot`.
pub fn render(snapshot: &Snapshot) -> String {
    let mut html = String::with_capacity(8 * 1024);
    html.push_str(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>asmr live</title>\n<link rel=\"icon\" href=\"data:,\">\n",
    );
    let _ = writeln!(html, "<style>{CSS}</style>\n</head>");
    html.push_str(
        "<body data-events=\"/ui/events\">\n<header>\n<h1>asmr live</h1>\n\
         <p class=\"state\"><span id=\"connection\" data-state=\"connecting\">connecting…</span> \
         · figures of <time id=\"at\"",
    );
    let _ = writeln!(
        html,
        " datetime=\"{at}\">{at}</time></p>\n<p id=\"error\" class=\"error\" hidden></p>\n</header>\n<main id=\"figures\">",
        at = escape(&snapshot.at)
    );
    let mut names: Vec<&str> = snapshot.figures.keys().map(|name| group_of(name)).collect();
    names.dedup();
    let mut groups: Vec<&str> = GROUPS.iter().map(|(name, _)| *name).collect();
    for name in names {
        if !groups.contains(&name) {
            groups.push(name);
        }
    }
    for group in groups {
        let title = GROUPS
            .iter()
            .find(|(name, _)| *name == group)
            .map_or(group, |(_, title)| *title);
        let _ = writeln!(
            html,
            "<section data-group=\"{g}\">\n<h2>{t}</h2>\n<dl>",
            g = escape(group),
            t = escape(title)
        );
        for (name, value) in snapshot
            .figures
            .iter()
            .filter(|(name, _)| group_of(name) == group)
        {
            let label = escape(label_of(name));
            let name = escape(name);
            if let Value::Array(series) = value {
                // A series (per minute, oldest first): its chart, and the
                // last value as text.
                let _ = writeln!(
                    html,
                    "<div class=\"figure series\"><dt>{label}</dt><dd data-metric=\"{name}\" \
                     data-value=\"{all}\">{SPARK}<span class=\"now\">{last}</span></dd></div>",
                    all = escape(&value.to_string()),
                    last = escape(&series.last().map(text_of).unwrap_or_default()),
                );
                continue;
            }
            // A wait reason says what to do about it, as the local run does;
            // shown while jobs wait for it.
            let advice = match name.strip_prefix("waiting.") {
                Some(reason) => format!(
                    "<p class=\"advice\">{}</p>",
                    escape(crate::domain::values::wait_advice(reason))
                ),
                None => String::new(),
            };
            let zero = if value.as_u64() == Some(0) {
                " data-zero"
            } else {
                ""
            };
            let _ = writeln!(
                html,
                "<div class=\"figure\"{zero}><dt>{label}</dt><dd data-metric=\"{name}\">{value}</dd>{advice}</div>",
                value = escape(&text_of(value)),
            );
        }
        html.push_str("</dl>\n</section>\n");
    }
    html.push_str("</main>\n");
    html.push_str(REVIEW);
    let _ = writeln!(html, "<script>{SCRIPT}</script>\n</body>\n</html>");
    html
}

fn group_of(name: &str) -> &str {
    name.split_once('.').map_or(name, |(group, _)| group)
}

fn label_of(name: &str) -> &str {
    name.split_once('.').map_or(name, |(_, rest)| rest)
}
