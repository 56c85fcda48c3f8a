//! The contact sheet (`shared::report`) in a real headless Chromium: a sheet
//! of a few hundred jobs over real delivered files, written to a folder under
//! the target dir and opened from disk, checked through the DOM. Needs
//! Chromium and chromedriver (`tests/run` installs them), not the emulators.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{Value, json};
use shared::report::{Card, Review, Sheet, Totals, render};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tests::browser::Browser;

/// Cards per page, as the sheet's script draws them.
const PAGE_SIZE: usize = 120;
/// Jobs in the fixture: three pages.
const JOBS: usize = 300;
/// How long the page gets to draw what a test waits for.
const DRAWN: Duration = Duration::from_secs(20);

const PARENT: &str = "parent-image";
const VIDEO: &str = "video-clip";
const FAILED: &str = "failed-quota";
const HTML_PROMPT_ID: &str = "html-prompt";
const HTML_PROMPT: &str = "<img src=x onerror=alert(1)> a <b>bold</b> fox";
const QUOTA_ERROR: &str = "RESOURCE_EXHAUSTED: quota exceeded for imagen-4.0-generate-001";

/// Where the tests write their sheets: `<target dir>/report-tests`.
fn artifacts() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target tmp dir is inside the target dir")
        .join("report-tests")
}

/// A fresh, empty folder for one test's sheet.
fn folder(test: &str) -> PathBuf {
    let dir = artifacts().join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("images")).unwrap();
    std::fs::create_dir_all(dir.join("videos")).unwrap();
    dir
}

/// Writes a placeholder PNG for `prompt` at `images/<name>.png`; returns the
/// relative path.
fn write_image(dir: &Path, name: &str, prompt: &str) -> String {
    let relative = format!("images/{name}.png");
    std::fs::write(
        dir.join(&relative),
        shared::placeholder::png(prompt, None, 0),
    )
    .unwrap();
    relative
}

fn image_card(id: &str, prompt: &str, files: Vec<String>) -> Card {
    Card {
        id: id.into(),
        kind: "image".into(),
        status: "delivered".into(),
        prompt: prompt.into(),
        model: "imagen-4.0-generate-001".into(),
        attempts: 1,
        max_attempts: 3,
        cost_usd: Some(0.04),
        files,
        created_at: "2025-06-01T09:30:00Z".into(),
        ..Card::default()
    }
}

/// Ordinary jobs to fill the pages: mostly delivered, some failed, some
/// waiting, sharing a few image files.
fn filler(i: usize, files: &[String]) -> Card {
    let prompt = format!(
        "job {i}: a slow macro shot of coloured sand pouring through an hourglass, warm light, \
         shallow depth of field"
    );
    let mut card = image_card(
        &format!("j{i:04}"),
        &prompt,
        vec![files[i % files.len()].clone()],
    );
    match i % 13 {
        0 => {
            card.status = "failed".into();
            card.files.clear();
            card.cost_usd = None;
            card.attempts = 3;
            card.error =
                Some("INVALID_ARGUMENT: the prompt was blocked by the safety filter".into());
        }
        1 => {
            card.status = "waiting".into();
            card.files.clear();
            card.cost_usd = None;
            card.waiting = Some("daily budget reached; resumes at 00:00 UTC".into());
        }
        _ => {}
    }
    card
}

/// The jobs every test looks at, at fixed places: on page 1 an approved, a
/// rejected and an HTML-prompt image and the parent image; on page 2 a job
/// that failed for quota; on page 3 a video made from the parent image.
fn special_cards(dir: &Path) -> Vec<(usize, Card)> {
    let mut approved = image_card(
        "approved-image",
        "a red kite over dunes",
        vec![write_image(dir, "approved", "kite")],
    );
    approved.review = Some(Review {
        approved: true,
        reason: None,
    });
    let mut rejected = image_card(
        "rejected-image",
        "a blue kite over dunes",
        vec![write_image(dir, "rejected", "blue")],
    );
    rejected.review = Some(Review {
        approved: false,
        reason: Some("the kite has two tails".into()),
    });
    let html = image_card(
        HTML_PROMPT_ID,
        HTML_PROMPT,
        vec![write_image(dir, "html", HTML_PROMPT)],
    );
    let parent_file = write_image(dir, "parent", "hourglass on a desk");
    let mut parent = image_card(
        PARENT,
        "an hourglass on a wooden desk",
        vec![parent_file.clone()],
    );
    parent.children = vec![VIDEO.into()];
    let mut failed = image_card(FAILED, "a thousand hourglasses", vec![]);
    failed.status = "failed".into();
    failed.attempts = 3;
    failed.cost_usd = None;
    failed.error = Some(QUOTA_ERROR.into());
    let video_file = "videos/video clip #1.mp4".to_string();
    std::fs::write(dir.join(&video_file), shared::placeholder::mp4(VIDEO, None)).unwrap();
    let video = Card {
        kind: "video".into(),
        model: "veo-3.0-generate-001".into(),
        cost_usd: Some(3.2),
        negative_prompt: Some("shaky camera".into()),
        poster: Some(parent_file),
        parent: Some(PARENT.into()),
        ..image_card(
            VIDEO,
            "the sand starts to pour, slow push in",
            vec![video_file],
        )
    };
    vec![
        (0, approved),
        (1, rejected),
        (2, html),
        (3, parent),
        (180, failed),
        (250, video),
    ]
}

/// The totals of `cards`, as the sheet's header shows them.
fn totals(cards: &[Card]) -> Totals {
    let mut by_status: Vec<(String, u64)> = Vec::new();
    for card in cards {
        match by_status
            .iter_mut()
            .find(|(status, _)| *status == card.status)
        {
            Some((_, n)) => *n += 1,
            None => by_status.push((card.status.clone(), 1)),
        }
    }
    let reviewed = |approved: bool| {
        cards
            .iter()
            .filter(|c| c.review.as_ref().is_some_and(|r| r.approved == approved))
            .count() as u64
    };
    Totals {
        by_status,
        reserved_usd: 0.32,
        spent_usd: cards.iter().filter_map(|c| c.cost_usd).sum(),
        files: cards.iter().map(|c| c.files.len() as u64).sum(),
        approved: reviewed(true),
        rejected: reviewed(false),
    }
}

/// Writes `cards` as a sheet to `dir/report.html` and returns its path.
fn write_sheet(dir: &Path, cards: Vec<Card>) -> PathBuf {
    let sheet = Sheet {
        title: "sand · batch 2025-06-01".into(),
        generated_at: "2025-06-01T12:00:00Z".into(),
        totals: totals(&cards),
        cards,
    };
    let path = dir.join("report.html");
    std::fs::write(&path, render(&sheet)).unwrap();
    path
}

/// A sheet of [`JOBS`] jobs with the [`special_cards`] in it.
fn fixture(test: &str) -> PathBuf {
    let dir = folder(test);
    let shared_files: Vec<String> = (0..6)
        .map(|n| write_image(&dir, &format!("sand-{n}"), &format!("sand {n}")))
        .collect();
    let mut cards: Vec<Card> = (0..JOBS).map(|i| filler(i, &shared_files)).collect();
    for (at, card) in special_cards(&dir) {
        cards[at] = card;
    }
    write_sheet(&dir, cards)
}

/// A browser with `sheet` open at `#fragment` (none if empty), its first
/// cards drawn.
async fn open(sheet: &Path, fragment: &str) -> Browser {
    let browser = Browser::start().await;
    browser.open_file(sheet, fragment).await;
    browser
        .wait_for(
            "the first cards",
            "document.querySelectorAll('.card').length",
            DRAWN,
        )
        .await;
    browser
}

/// Types `text` into the filter box, as a user would, and waits until only
/// matching cards are left.
async fn filter(browser: &Browser, text: &str, expected_id: &str) {
    browser
        .script(
            "const box = document.getElementById('filter'); box.value = arguments[0]; \
             box.dispatchEvent(new Event('input', { bubbles: true }));",
            vec![json!(text)],
        )
        .await;
    let only = format!(
        "document.querySelectorAll('.card').length === 1 && document.getElementById('job-{expected_id}')"
    );
    browser
        .wait_for("the filter to leave one card", &only, DRAWN)
        .await;
}

async fn text_of(browser: &Browser, selector: &str) -> Value {
    browser
        .script(
            "const e = document.querySelector(arguments[0]); return e && e.textContent;",
            vec![json!(selector)],
        )
        .await
}

#[tokio::test]
async fn the_first_page_shows_one_page_of_cards_and_counts_all_pages() {
    let sheet = fixture("first-page");
    let browser = open(&sheet, "").await;

    let cards = browser
        .script("return document.querySelectorAll('.card').length;", vec![])
        .await;
    assert_eq!(cards, PAGE_SIZE);
    assert_eq!(
        text_of(&browser, "#pager-top .page-info").await,
        "page 1 of 3"
    );
    assert_eq!(text_of(&browser, "#count").await, format!("{JOBS} jobs"));
    assert_eq!(text_of(&browser, ".total.approved dd").await, "1");
    assert_eq!(text_of(&browser, ".total.rejected dd").await, "1");
    assert_eq!(
        text_of(&browser, "#job-rejected-image .review.rejected").await,
        "✗ rejected: the kite has two tails"
    );
    assert_eq!(
        text_of(&browser, "#job-approved-image .review.approved").await,
        "✓ approved"
    );

    browser
        .wait_for(
            "the thumbnails in view to load",
            "[...document.querySelectorAll('.card img')].slice(0, 8).every(i => i.complete && i.naturalWidth > 0)",
            DRAWN,
        )
        .await;
    browser
        .screenshot(&artifacts().join("contact-sheet.png"))
        .await;
    browser.assert_no_console_errors().await;
}

#[tokio::test]
async fn a_failed_job_found_through_the_filter_shows_why_it_failed() {
    let sheet = fixture("failed-job");
    let browser = open(&sheet, "").await;
    let on_first_page = browser
        .script(
            &format!("return !!document.getElementById('job-{FAILED}');"),
            vec![],
        )
        .await;
    assert_eq!(on_first_page, false, "the failed job is on a later page");

    filter(&browser, FAILED, FAILED).await;

    let card = format!("#job-{FAILED}");
    assert_eq!(
        text_of(&browser, &format!("{card} .error")).await,
        QUOTA_ERROR
    );
    let status = browser
        .script(
            &format!("return document.querySelector('{card}').dataset.status;"),
            vec![],
        )
        .await;
    assert_eq!(status, "failed");
    assert_eq!(
        text_of(&browser, "#count").await,
        format!("1 of {JOBS} jobs")
    );
    assert_eq!(
        text_of(&browser, "#pager-top .page-info").await,
        "page 1 of 1"
    );
    browser
        .screenshot(&artifacts().join("failed-card.png"))
        .await;
    browser.assert_no_console_errors().await;
}

#[tokio::test]
async fn the_status_filter_leaves_only_jobs_in_that_status() {
    let sheet = fixture("status-filter");
    let browser = open(&sheet, "").await;

    browser
        .script(
            "const s = document.getElementById('status'); s.value = 'waiting'; \
             s.dispatchEvent(new Event('change'));",
            vec![],
        )
        .await;

    let statuses = browser
        .wait_for(
            "only waiting cards",
            "(() => { const s = [...document.querySelectorAll('.card')].map(c => c.dataset.status); \
             return s.length > 0 && s.every(x => x === 'waiting') && s; })()",
            DRAWN,
        )
        .await;
    let waiting = (0..JOBS).filter(|i| i % 13 == 1 && *i != 1).count();
    assert_eq!(statuses.as_array().unwrap().len(), waiting);
    browser.assert_no_console_errors().await;
}

#[tokio::test]
async fn a_video_shows_its_parent_image_as_poster_and_that_image_loads() {
    let sheet = fixture("video-poster");
    let browser = open(&sheet, &format!("job-{VIDEO}")).await;

    let video = browser
        .wait_for(
            "the video card",
            &format!("document.querySelector('#job-{VIDEO} video')"),
            DRAWN,
        )
        .await;
    assert!(video.is_object());
    let attributes = browser
        .script(
            &format!(
                "const card = document.getElementById('job-{VIDEO}'); const v = card.querySelector('video'); \
                 return [card.dataset.kind, v.getAttribute('poster'), v.getAttribute('preload'), v.getAttribute('src'), v.muted];"
            ),
            vec![],
        )
        .await;
    assert_eq!(
        attributes,
        json!([
            "video",
            "images/parent.png",
            "none",
            "videos/video%20clip%20%231.mp4",
            true
        ])
    );
    browser
        .screenshot(&artifacts().join("video-card.png"))
        .await;

    browser.open_file(&sheet, &format!("job-{PARENT}")).await;
    let parent_thumbnail = format!("document.querySelector('#job-{PARENT} img')");
    let width = browser
        .wait_for(
            "the parent's thumbnail to load",
            &format!("{parent_thumbnail} && {parent_thumbnail}.complete && {parent_thumbnail}.naturalWidth"),
            DRAWN,
        )
        .await;
    assert_eq!(width, 1024);
    let src = browser
        .script(
            &format!("return {parent_thumbnail}.getAttribute('src');"),
            vec![],
        )
        .await;
    assert_eq!(src, "images/parent.png", "the poster is the parent's file");
    browser.assert_no_console_errors().await;
}

#[tokio::test]
async fn the_parent_link_of_a_video_brings_the_parent_card_from_another_page() {
    let sheet = fixture("parent-link");
    let browser = open(&sheet, &format!("job-{VIDEO}")).await;
    assert_eq!(
        text_of(&browser, "#pager-top .page-info").await,
        "page 3 of 3"
    );
    let parent_shown = format!("!!document.getElementById('job-{PARENT}')");
    assert_eq!(
        browser
            .script(&format!("return {parent_shown};"), vec![])
            .await,
        false
    );

    browser
        .click(&format!("#job-{VIDEO} a.job-link[data-job='{PARENT}']"))
        .await;

    browser
        .wait_for("the parent card", &parent_shown, DRAWN)
        .await;
    assert_eq!(
        text_of(&browser, "#pager-top .page-info").await,
        "page 1 of 3"
    );
    let location = browser.script("return location.hash;", vec![]).await;
    assert_eq!(location, format!("#job-{PARENT}"));
    browser
        .click(&format!("#job-{PARENT} a.job-link[data-job='{VIDEO}']"))
        .await;
    browser
        .wait_for(
            "the video card again",
            &format!("!!document.getElementById('job-{VIDEO}')"),
            DRAWN,
        )
        .await;
    browser.assert_no_console_errors().await;
}

#[tokio::test]
async fn a_prompt_with_html_shows_literally() {
    let sheet = fixture("html-prompt");
    let browser = open(&sheet, "").await;

    assert_eq!(
        text_of(&browser, &format!("#job-{HTML_PROMPT_ID} .prompt")).await,
        HTML_PROMPT
    );
    let injected = browser
        .script(
            "return document.querySelectorAll('img[src=\"x\"], .prompt b, .prompt img').length;",
            vec![],
        )
        .await;
    assert_eq!(injected, 0);
    browser.assert_no_console_errors().await;
}

#[tokio::test]
async fn a_sheet_of_ten_thousand_jobs_opens_on_its_first_page() {
    let dir = folder("ten-thousand");
    let files: Vec<String> = (0..6)
        .map(|n| write_image(&dir, &format!("sand-{n}"), &format!("sand {n}")))
        .collect();
    let sheet = write_sheet(&dir, (0..10_000).map(|i| filler(i, &files)).collect());
    let bytes = std::fs::metadata(&sheet).unwrap().len();
    let browser = Browser::start().await;

    let started = Instant::now();
    browser.open_file(&sheet, "").await;
    browser
        .wait_for(
            "the first page",
            &format!("document.querySelectorAll('.card').length === {PAGE_SIZE}"),
            DRAWN,
        )
        .await;
    let elapsed = started.elapsed();

    eprintln!(
        "a sheet of 10,000 jobs: {bytes} bytes, first page drawn {elapsed:?} after navigating"
    );
    assert_eq!(
        text_of(&browser, "#pager-top .page-info").await,
        "page 1 of 84"
    );
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?} to open");
    browser.assert_no_console_errors().await;
}

/// `asmr ARGS` on the state in `state`; its stdout, after checking it
/// succeeded.
fn asmr(state: &Path, args: &[&str]) -> String {
    tests::harness::asmr_local(state, args)
}

#[tokio::test]
async fn the_sheet_of_a_chained_run_pairs_each_video_with_its_image_and_shows_why_a_job_failed() {
    use shared::domain::values::{JobError, JobKind};
    const BLOCKED: &str = "a prompt the model blocked";
    let dir = artifacts().join("run-chain");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let state = dir.join("state");
    let prompts = dir.join("prompts.txt");
    std::fs::write(
        &prompts,
        format!(
            "rain on a tin roof\nsand pouring through an hourglass\n{BLOCKED}\n\
             whispering leaves\nfingers tapping on a wooden desk\n"
        ),
    )
    .unwrap();

    // The run finds the blocked prompt's job already failed, as it would
    // after a live run the safety filters stopped.
    let request_id = shared::local_run::request_id(JobKind::Image, BLOCKED, 0);
    let blocked = asmr(
        &state,
        &[
            "add",
            "--kind",
            "image",
            "--prompt",
            BLOCKED,
            "--request-id",
            &request_id,
        ],
    )
    .trim()
    .to_string();
    let store = shared::store::Store::open(&shared::store::StoreConfig::Embedded {
        state_dir: state.clone(),
    })
    .await
    .unwrap();
    store
        .fail_job(
            &blocked,
            None,
            JobError::new("blocked", "the prompt was refused by a test", false),
        )
        .await
        .unwrap();
    drop(store);

    let out = dir.join("out");
    let report: Value = serde_json::from_str(&asmr(
        &state,
        &[
            "run",
            prompts.to_str().unwrap(),
            "--chain",
            "--out",
            out.to_str().unwrap(),
            "--json",
        ],
    ))
    .unwrap();
    assert_eq!(
        report["statuses"],
        json!({"delivered": 8, "failed": 1}),
        "{report}"
    );
    let sheet = PathBuf::from(report["report"].as_str().unwrap());
    let jobs: Value = serde_json::from_str(&asmr(&state, &["list", "--json"])).unwrap();
    let videos: Vec<(String, String)> = jobs
        .as_array()
        .unwrap()
        .iter()
        .filter(|job| job["kind"] == "video")
        .map(|job| {
            (
                job["id"].as_str().unwrap().to_string(),
                job["parent"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(videos.len(), 4);

    let browser = open(&sheet, "").await;
    let cards = browser
        .script("return document.querySelectorAll('.card').length;", vec![])
        .await;
    assert_eq!(
        cards, 9,
        "four images, their four videos and the failed job"
    );

    for (video, parent) in &videos {
        let pair = browser
            .script(
                "const v = document.querySelector('#job-' + arguments[0] + ' video'); \
                 const i = document.querySelector('#job-' + arguments[1] + ' img'); \
                 return [v && v.getAttribute('poster'), i && i.getAttribute('src')];",
                vec![json!(video), json!(parent)],
            )
            .await;
        let image = format!("images/{parent}/0.png");
        assert_eq!(
            pair,
            json!([image, image]),
            "the video's poster is its parent's image file"
        );
        let width = browser
            .wait_for(
                "the parent image to load",
                &format!(
                    "(() => {{ const i = document.querySelector('#job-{parent} img'); \
                     return i.complete && i.naturalWidth; }})()"
                ),
                DRAWN,
            )
            .await;
        assert!(width.as_u64().unwrap() > 0, "{parent}: {width}");
    }

    assert_eq!(
        text_of(&browser, &format!("#job-{blocked} .error")).await,
        "blocked: the prompt was refused by a test"
    );
    assert_eq!(
        browser
            .script(
                &format!("return document.getElementById('job-{blocked}').dataset.status;"),
                vec![]
            )
            .await,
        "failed"
    );

    browser
        .wait_for(
            "every thumbnail to load",
            "[...document.querySelectorAll('.card img')].every(i => i.complete && i.naturalWidth > 0)",
            DRAWN,
        )
        .await;
    browser.screenshot(&artifacts().join("run-chain.png")).await;
    browser.assert_no_console_errors().await;
}
