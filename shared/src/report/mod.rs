//! The contact sheet of a batch: one self-contained HTML page that shows
//! every job of the batch as a card, with its thumbnails, state and cost.
//!
//! This module only renders: it takes a [`Sheet`], a plain view model that
//! the caller fills from whatever it reads (the store, the delivery folder),
//! and returns the page as a string. Nothing here touches the disk or the
//! network.
//!
//! The page is meant to be written into the folder the files were delivered
//! to, and opened from there (`file://` or any static server):
//!
//! - Everything it needs is inline (CSS, JS, the data); it asks nothing of
//!   the internet, and its Content-Security-Policy forbids it to.
//! - Thumbnails point at the delivered files by relative URL; images load
//!   lazily and videos only on demand, so a sheet of 10,000 jobs opens fast.
//! - The cards are embedded once, as JSON, and drawn a page at a time by the
//!   script, with a text filter, a status filter and page links.
//! - Every user-provided string reaches the DOM as text, never as markup.

pub mod build;

use serde::Serialize;
use std::fmt::Write as _;

/// The stylesheet of the page, inlined into its `<style>`.
const CSS: &str = include_str!("sheet.css");

/// Everything the contact sheet of one batch shows.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Sheet {
    /// The heading and `<title>` of the page, e.g. the batch name.
    pub title: String,
    /// When the sheet was made, RFC 3339; shown as given.
    pub generated_at: String,
    /// The summary shown above the cards.
    pub totals: Totals,
    /// One card per job, in the order they are shown.
    pub cards: Vec<Card>,
}

/// The summary of a batch, shown at the top of the sheet.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Totals {
    /// How many jobs are in each status, in the order shown.
    pub by_status: Vec<(String, u64)>,
    /// US dollars reserved by the cost guard for jobs not yet settled.
    pub reserved_usd: f64,
    /// US dollars spent on model calls.
    pub spent_usd: f64,
    /// How many files were delivered.
    pub files: u64,
    /// How many outputs a reviewer approved.
    pub approved: u64,
    /// How many outputs a reviewer rejected.
    pub rejected: u64,
}

/// One job of the batch, as its card shows it.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Card {
    /// The job id; the card's anchor is `#job-<id>`.
    pub id: String,
    /// `"image"` or `"video"`; decides how the card's files are shown.
    pub kind: String,
    /// The job's status, e.g. `"delivered"` or `"failed"`.
    pub status: String,
    /// The prompt the job was generated from.
    pub prompt: String,
    /// The negative prompt, when the job has one.
    pub negative_prompt: Option<String>,
    /// The model that generated (or was to generate) the job.
    pub model: String,
    /// Attempts made so far.
    pub attempts: u32,
    /// Attempts allowed before the job fails for good.
    pub max_attempts: u32,
    /// Why the job failed, as `"code: message"`.
    pub error: Option<String>,
    /// What the job is waiting for, when it is waiting.
    pub waiting: Option<String>,
    /// What the job cost, in US dollars, once known.
    pub cost_usd: Option<f64>,
    /// The delivered files, as paths relative to the folder the page is
    /// written to, `/`-separated and *not* URL-encoded: the renderer
    /// percent-encodes each segment itself, so `a b#1.png` is fine as is.
    pub files: Vec<String>,
    /// For a video: an image to show before it plays (e.g. the file of the
    /// parent image job), a relative path like [`files`](Self::files).
    pub poster: Option<String>,
    /// The reviewer's verdict, once there is one.
    pub review: Option<Review>,
    /// The id of the job this one was made from (a video's source image).
    pub parent: Option<String>,
    /// The ids of the jobs made from this one.
    pub children: Vec<String>,
    /// When the job was created, RFC 3339; shown as given.
    pub created_at: String,
    /// Whose job it is, for any tenant but the default one (a sheet of
    /// several tenants' jobs, `asmr report --all-tenants`, names them).
    pub tenant: Option<String>,
}

/// A reviewer's verdict on a job's output.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Review {
    /// Whether the output was approved (`false`: rejected).
    pub approved: bool,
    /// Why, when the reviewer said.
    pub reason: Option<String>,
}

/// A card as the page's script receives it: the card itself, plus the URLs
/// and the money already formatted, so the script does no encoding of its
/// own.
#[derive(Serialize)]
struct CardData<'a> {
    #[serde(flatten)]
    card: &'a Card,
    /// `files`, percent-encoded, in the same order.
    urls: Vec<String>,
    /// `poster`, percent-encoded.
    poster_url: Option<String>,
    /// `cost_usd` as shown, e.g. `"$0.04"`.
    cost: Option<String>,
}

impl<'a> CardData<'a> {
    fn new(card: &'a Card) -> Self {
        Self {
            card,
            urls: card.files.iter().map(|f| relative_url(f)).collect(),
            poster_url: card.poster.as_deref().map(relative_url),
            cost: card.cost_usd.map(usd),
        }
    }
}

/// The whole page for `sheet`: one HTML document with its style, script and
/// data inline.
pub fn render(sheet: &Sheet) -> String {
    let mut html = String::with_capacity(4096 + sheet.cards.len() * 800);
    html.push_str("<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    html.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    html.push_str(&CONTENT_SECURITY_POLICY);
    let _ = writeln!(html, "<title>{}</title>", escape(&sheet.title));
    let _ = writeln!(html, "<style>\n{CSS}</style>\n</head>\n<body>");
    header(&mut html, sheet);
    html.push_str(CONTROLS);
    html.push_str("<main id=\"grid\" class=\"grid\" aria-live=\"polite\"></main>\n");
    html.push_str("<nav class=\"pager\" id=\"pager-bottom\" aria-label=\"pages\"></nav>\n");
    html.push_str(
        "<noscript><p class=\"noscript\">This contact sheet draws its cards with \
         JavaScript; turn it on to see them.</p></noscript>\n",
    );
    html.push_str("<script type=\"application/json\" id=\"cards\">");
    html.push_str(&cards_json(&sheet.cards));
    html.push_str("</script>\n");
    let _ = writeln!(html, "<script>{SCRIPT}</script>\n</body>\n</html>");
    html
}

/// The text of the page's one script element, exactly as its hash in the
/// Content-Security-Policy covers it.
const SCRIPT: &str = concat!("\n", include_str!("sheet.js"));

/// Lets the page load its own files and nothing from anywhere else: no
/// fetches, no fonts, no frames, no form posts, whatever a card contains.
/// The one script that runs is the page's own, named by its SHA-256: a
/// script that a card's text smuggled into the page would not run, even if
/// it escaped the escaping.
static CONTENT_SECURITY_POLICY: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let hash = script_hash(SCRIPT);
    format!(
        "<meta http-equiv=\"Content-Security-Policy\" \
         content=\"default-src 'none'; img-src 'self' file: data: blob:; media-src 'self' file: blob:; \
         style-src 'unsafe-inline'; script-src 'sha256-{hash}'; base-uri 'none'; form-action 'none'\">\n"
    )
});

/// The base64 SHA-256 of an inline script, as a Content-Security-Policy
/// names it (`'sha256-HASH'`): only that exact script text runs.
pub(crate) fn script_hash(script: &str) -> String {
    use base64::Engine;
    use sha2::Digest;
    base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(script))
}

/// The filter and page controls; the script fills them in.
const CONTROLS: &str = "<div class=\"controls\">\n\
    <input id=\"filter\" type=\"search\" placeholder=\"Filter by prompt or job id\" \
    aria-label=\"filter by prompt or job id\" autocomplete=\"off\">\n\
    <select id=\"status\" aria-label=\"filter by status\"><option value=\"\">all statuses</option></select>\n\
    <span id=\"count\" class=\"count\"></span>\n\
    <nav class=\"pager\" id=\"pager-top\" aria-label=\"pages\"></nav>\n\
    </div>\n";

/// The page heading and the totals.
fn header(html: &mut String, sheet: &Sheet) {
    let totals = &sheet.totals;
    let _ = write!(
        html,
        "<header>\n<h1>{}</h1>\n<p class=\"generated\">Generated <time datetime=\"{}\">{}</time></p>\n",
        escape(&sheet.title),
        escape(&sheet.generated_at),
        escape(&sheet.generated_at),
    );
    html.push_str("<dl class=\"totals\" id=\"totals\">\n");
    for (status, count) in &totals.by_status {
        total(
            html,
            &format!("status-{}", class_token(status)),
            status,
            &count.to_string(),
        );
    }
    total(html, "reserved", "reserved", &usd(totals.reserved_usd));
    total(html, "spent", "spent", &usd(totals.spent_usd));
    total(html, "files", "files", &totals.files.to_string());
    total(html, "approved", "approved", &totals.approved.to_string());
    total(html, "rejected", "rejected", &totals.rejected.to_string());
    html.push_str("</dl>\n</header>\n");
}

/// One entry of the totals: a label over its value.
fn total(html: &mut String, class: &str, label: &str, value: &str) {
    let _ = writeln!(
        html,
        "<div class=\"total {}\"><dt>{}</dt><dd>{}</dd></div>",
        escape(class),
        escape(label),
        escape(value)
    );
}

/// The cards as a JSON array that is safe inside a `<script>` element: every
/// `<`, `>` and `&` is written as a `\u` escape, so no string in it can
/// close the element (`</script>`) or open a comment (`<!--`).
fn cards_json(cards: &[Card]) -> String {
    let data: Vec<CardData<'_>> = cards.iter().map(CardData::new).collect();
    // Serializing plain strings, numbers and vectors cannot fail.
    let json = serde_json::to_string(&data).unwrap_or_else(|_| "[]".into());
    let mut safe = String::with_capacity(json.len() + json.len() / 64);
    for c in json.chars() {
        match c {
            '<' => safe.push_str("\\u003c"),
            '>' => safe.push_str("\\u003e"),
            '&' => safe.push_str("\\u0026"),
            c => safe.push(c),
        }
    }
    safe
}

/// `text` with the characters that mean something in HTML text or in a
/// quoted attribute replaced by their entities.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A status reduced to letters, digits and `-`, for use in a class name.
fn class_token(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect()
}

/// A relative path as a relative URL: each `/`-separated segment
/// percent-encoded, so spaces, `#`, `?`, `%` and non-ASCII names all reach
/// the right file, and a segment like `javascript:x` cannot be read as a
/// scheme.
pub fn relative_url(path: &str) -> String {
    let mut url = String::with_capacity(path.len() + 8);
    for (i, segment) in path.split('/').enumerate() {
        if i > 0 {
            url.push('/');
        }
        for byte in segment.bytes() {
            if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
                url.push(char::from(byte));
            } else {
                let _ = write!(url, "%{byte:02X}");
            }
        }
    }
    url
}

/// An amount of US dollars as shown on the sheet: at least two decimals, up
/// to four when the amount has them (`$0.04`, `$0.0035`, `$12.50`).
pub fn usd(amount: f64) -> String {
    let four = format!("{:.4}", amount.abs());
    let trimmed = four.trim_end_matches('0');
    let decimals = trimmed.split('.').nth(1).map_or(0, str::len);
    let shown = if decimals < 2 {
        format!("{:.2}", amount.abs())
    } else {
        trimmed.to_string()
    };
    let sign = if amount < 0.0 && shown.bytes().any(|b| (b'1'..=b'9').contains(&b)) {
        "-"
    } else {
        ""
    };
    format!("{sign}${shown}")
}

#[cfg(test)]
mod tests;
