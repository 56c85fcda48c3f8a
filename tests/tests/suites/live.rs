//! The live page of `asmr serve`, in a real browser: it shows the store,
//! follows other commands' changes within 2 s without a reload, and paints
//! a store of 10,000 jobs quickly.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tests::browser::Browser;
use tests::harness::{asmr_local, binary};

/// How soon a change in the store must show on the page.
const FOLLOWS_WITHIN: Duration = Duration::from_secs(2);

/// `asmr serve` on a state directory, stopped when dropped.
struct Served {
    child: Child,
    url: String,
}

impl Served {
    /// Starts `asmr --state-dir STATE serve --port 0` and reads the page's
    /// address from its first line.
    fn start(state: &Path) -> Self {
        let mut child = Command::new(binary("asmr"))
            .env_clear()
            .args([
                "--state-dir",
                state.to_str().unwrap(),
                "serve",
                "--port",
                "0",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        let url = first
            .split_whitespace()
            .find(|word| word.starts_with("http://"))
            .unwrap_or_else(|| panic!("no address in {first:?}"))
            .to_string();
        assert!(url.starts_with("http://127.0.0.1:"), "{url}");
        assert!(url.ends_with("/ui"), "{url}");
        Self { child, url }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn fresh(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("live-tests")
        .join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn prompts(dir: &Path, name: &str, n: usize) -> PathBuf {
    let file = dir.join(name);
    let lines: Vec<String> = (0..n).map(|i| format!("{name} prompt {i}")).collect();
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    file
}

/// `asmr add` of `n` image prompts, from a file named `name`.
fn add_images(state: &Path, dir: &Path, name: &str, n: usize) {
    let file = prompts(dir, name, n);
    asmr_local(
        state,
        &["add", "--kind", "image", "--file", file.to_str().unwrap()],
    );
}

/// `asmr run` (a dry run, delivered into `dir/out`) of `n` image prompts.
fn run_images(state: &Path, dir: &Path, name: &str, n: usize) {
    let file = prompts(dir, name, n);
    let out = dir.join("out");
    asmr_local(
        state,
        &[
            "run",
            file.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
    );
}

/// The text of the element with `data-metric="NAME"`.
async fn metric(browser: &Browser, name: &str) -> String {
    browser
        .script(
            "const e = document.querySelector('[data-metric=\"' + arguments[0] + '\"]'); \
             return e ? e.textContent : null;",
            vec![serde_json::json!(name)],
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Waits until `name` reads `value`; how long that took.
async fn until(browser: &Browser, name: &str, value: &str, limit: Duration) -> Duration {
    let started = Instant::now();
    browser
        .wait_for(
            &format!("{name} to read {value}"),
            &format!("(document.querySelector('[data-metric=\"{name}\"]') || {{}}).textContent === '{value}'"),
            limit,
        )
        .await;
    started.elapsed()
}

#[tokio::test]
async fn the_live_page_follows_adds_and_a_local_run_made_by_other_commands_while_it_serves() {
    let dir = fresh("follows");
    let state = dir.join("state");
    add_images(&state, &dir, "seed", 5);
    let served = Served::start(&state);
    let browser = Browser::start().await;
    browser.open(&served.url).await;
    // Painted by the server, before any event.
    assert_eq!(metric(&browser, "jobs.total").await, "5");
    assert_eq!(metric(&browser, "jobs.pending").await, "5");
    browser
        .wait_for(
            "the stream to be live",
            "document.getElementById('connection').dataset.state === 'live'",
            Duration::from_secs(10),
        )
        .await;

    // Another command adds 3 jobs while the page is open; four times, at
    // different moments of the server's one-second reading cycle.
    let mut latencies = Vec::new();
    for round in 1..=4 {
        tokio::time::sleep(Duration::from_millis(250 * (round as u64 - 1))).await;
        add_images(&state, &dir, &format!("more{round}"), 3);
        let total = (5 + 3 * round).to_string();
        let took = until(&browser, "jobs.total", &total, FOLLOWS_WITHIN).await;
        latencies.push(took);
    }
    eprintln!("from `asmr add` done to jobs.total changed in the browser: {latencies:?}");

    // A whole local run (dry) on the same state, while the page serves.
    run_images(&state, &dir, "run", 4);
    let delivered = asmr_local(&state, &["stats", "--json"]);
    let delivered: serde_json::Value = serde_json::from_str(&delivered).unwrap();
    let delivered = delivered["jobs"]["delivered"].to_string();
    assert_ne!(delivered, "0", "the run delivered nothing");
    until(&browser, "jobs.delivered", &delivered, FOLLOWS_WITHIN).await;
    assert_eq!(metric(&browser, "jobs.total").await, "21");
    until(&browser, "activity.last_hour.created", "21", FOLLOWS_WITHIN).await;

    // Every figure of `asmr stats --json` is on the page under its name,
    // reading the same; a series (per minute) carries its numbers in
    // data-value and draws them.
    let stats = asmr_local(&state, &["stats", "--json"]);
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    let mut figures = Vec::new();
    leaves("", &stats, &mut figures);
    assert!(figures.len() > 40, "{figures:?}");
    let page = browser
        .script(
            "const out = {}; document.querySelectorAll('[data-metric]').forEach(e => { \
               out[e.dataset.metric] = e.dataset.value !== undefined \
                 ? {series: JSON.parse(e.dataset.value), points: e.querySelector('polyline').getAttribute('points')} \
                 : e.textContent; }); return out;",
            vec![],
        )
        .await;
    for (name, value) in &figures {
        let shown = &page[name];
        match value {
            serde_json::Value::Array(series) => {
                let sum =
                    |v: &[serde_json::Value]| v.iter().filter_map(|n| n.as_u64()).sum::<u64>();
                let drawn = shown["series"]
                    .as_array()
                    .unwrap_or_else(|| panic!("{name}: {shown}"));
                assert_eq!(
                    (drawn.len(), sum(drawn)),
                    (series.len(), sum(series)),
                    "{name}"
                );
                let points = shown["points"].as_str().unwrap_or_default();
                assert_eq!(
                    points.split(' ').count(),
                    series.len(),
                    "{name} is drawn: {points:?}"
                );
            }
            serde_json::Value::Null => assert_eq!(shown, "\u{2013}", "{name}"),
            serde_json::Value::String(text) => assert_eq!(shown, text.as_str(), "{name}"),
            serde_json::Value::Number(n) => {
                let read: Option<f64> = shown.as_str().and_then(|t| t.parse().ok());
                assert_eq!(read, n.as_f64(), "{name}: {shown}");
            }
            other => assert_eq!(shown, &other.to_string(), "{name}"),
        }
    }
    assert_eq!(stats["activity"]["last_hour"]["created"], 21);
    assert_eq!(stats["activity"]["model_call_success_rate"], 1.0);
    browser.assert_no_console_errors().await;
}

/// The leaves of `value`, named by their path joined with dots: the names
/// the page's `data-metric` attributes carry.
fn leaves(prefix: &str, value: &serde_json::Value, out: &mut Vec<(String, serde_json::Value)>) {
    match value {
        serde_json::Value::Object(fields) => {
            for (key, value) in fields {
                let name = match prefix {
                    "" => key.clone(),
                    _ => format!("{prefix}.{key}"),
                };
                leaves(&name, value, out);
            }
        }
        leaf => out.push((prefix.to_string(), leaf.clone())),
    }
}

#[tokio::test]
async fn a_store_of_ten_thousand_jobs_paints_in_under_one_and_a_half_seconds() {
    let dir = fresh("ten-thousand");
    let state = dir.join("state");
    add_images(&state, &dir, "many", 10_000);
    let served = Served::start(&state);
    let browser = Browser::start().await;
    // One visit first, so the browser process itself is warm.
    browser.open("about:blank").await;
    let started = Instant::now();
    browser.open(&served.url).await;
    let loaded = started.elapsed();
    assert_eq!(metric(&browser, "jobs.total").await, "10000");
    let paint = browser
        .script(
            "const p = performance.getEntriesByName('first-contentful-paint')[0]; \
             return p ? p.startTime : null;",
            vec![],
        )
        .await;
    eprintln!(
        "a store of 10,000 jobs: page loaded {loaded:?} after navigating, first contentful paint at {paint} ms"
    );
    assert!(
        loaded < Duration::from_millis(1500),
        "{loaded:?} to load the page"
    );
    browser.assert_no_console_errors().await;
}

/// The job `id` as `asmr show --json` prints it.
fn show(state: &Path, id: &str) -> serde_json::Value {
    serde_json::from_str(&asmr_local(state, &["show", id, "--json"])).unwrap()
}

/// Clicks the button of `action` on the card of `id` and waits until the
/// card says it is done.
async fn click(browser: &Browser, id: &str, action: &str) {
    browser
        .click(&format!(
            "button[data-action=\"{action}\"][data-job=\"{id}\"]"
        ))
        .await;
    browser
        .wait_for(
            &format!("{action} of {id} to be done"),
            &format!("document.getElementById('job-{id}').dataset.done === '{action}'"),
            Duration::from_secs(10),
        )
        .await;
}

async fn key(browser: &Browser, key: &str) {
    browser
        .script(
            "document.dispatchEvent(new KeyboardEvent('keydown', { key: arguments[0], bubbles: true }));",
            vec![serde_json::json!(key)],
        )
        .await;
}

#[tokio::test]
async fn images_are_reviewed_and_promoted_by_clicking_through_the_stores_own_checks() {
    let dir = fresh("review");
    let state = dir.join("state");
    run_images(&state, &dir, "review", 6);
    // A pending image is no card: it cannot be reviewed yet.
    add_images(&state, &dir, "pending", 1);
    let served = Served::start(&state);
    let browser = Browser::start().await;
    browser.open(&served.url).await;
    browser
        .wait_for(
            "six cards with their images",
            "document.querySelectorAll('.card').length === 6 && \
             Array.from(document.querySelectorAll('.card img')).every(i => i.complete && i.naturalWidth > 0)",
            Duration::from_secs(10),
        )
        .await;
    let ids: Vec<String> = serde_json::from_value(
        browser
            .script(
                "return Array.from(document.querySelectorAll('.card')).map(c => c.dataset.job);",
                vec![],
            )
            .await,
    )
    .unwrap();

    // Approve, and reject with a reason: stored as the CLI stores them.
    click(&browser, &ids[0], "approve").await;
    assert_eq!(show(&state, &ids[0])["verdict"], "approved");
    browser
        .script(
            "document.getElementById('reason').value = arguments[0];",
            vec![serde_json::json!("too dark")],
        )
        .await;
    click(&browser, &ids[1], "reject").await;
    let rejected = show(&state, &ids[1]);
    assert_eq!(rejected["verdict"], "rejected");
    assert_eq!(rejected["review"]["reason"], "too dark", "{rejected}");

    // Promote twice: one video job, linked to its image.
    click(&browser, &ids[0], "promote").await;
    click(&browser, &ids[0], "promote").await;
    let videos: Vec<serde_json::Value> =
        serde_json::from_str(&asmr_local(&state, &["list", "--kind", "video", "--json"])).unwrap();
    assert_eq!(videos.len(), 1, "{videos:?}");
    assert_eq!(videos[0]["parent"], ids[0].as_str());
    assert_eq!(show(&state, &ids[0])["children"][0], videos[0]["id"]);

    // The keyboard: three times next (to the third card), then approve.
    key(&browser, "j").await;
    key(&browser, "j").await;
    key(&browser, "j").await;
    key(&browser, "a").await;
    browser
        .wait_for(
            "the keyboard's approval",
            &format!(
                "document.getElementById('job-{}').dataset.done === 'approve'",
                ids[2]
            ),
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(show(&state, &ids[2])["verdict"], "approved");

    // In bulk: select all, approve the selection.
    browser.click("#select-all").await;
    browser.click("button[data-bulk=\"approve\"]").await;
    browser
        .wait_for(
            "every card approved",
            "Array.from(document.querySelectorAll('.card')).every(c => c.dataset.verdict === 'approved')",
            Duration::from_secs(20),
        )
        .await;
    for id in &ids {
        assert_eq!(show(&state, id)["verdict"], "approved", "{id}");
    }
    let figures = asmr_local(&state, &["stats", "--json"]);
    let figures: serde_json::Value = serde_json::from_str(&figures).unwrap();
    until(
        &browser,
        "jobs.total",
        &figures["jobs"]["total"].to_string(),
        FOLLOWS_WITHIN,
    )
    .await;
    browser.assert_no_console_errors().await;
}
