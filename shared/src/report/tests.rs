use super::*;

fn card(id: &str, prompt: &str) -> Card {
    Card {
        id: id.into(),
        kind: "image".into(),
        status: "delivered".into(),
        prompt: prompt.into(),
        model: "imagen-4.0-generate-001".into(),
        attempts: 1,
        max_attempts: 3,
        cost_usd: Some(0.04),
        files: vec![format!("images/{id}-0.png")],
        created_at: "2025-01-02T03:04:05Z".into(),
        ..Card::default()
    }
}

fn sheet(cards: Vec<Card>) -> Sheet {
    Sheet {
        title: "batch".into(),
        generated_at: "2025-01-02T04:00:00Z".into(),
        totals: Totals::default(),
        cards,
    }
}

/// The text of the `<script type="application/json" id="cards">` element.
fn embedded_json(html: &str) -> &str {
    let open = "<script type=\"application/json\" id=\"cards\">";
    let start = html.find(open).expect("the page embeds the cards") + open.len();
    let end = start
        + html[start..]
            .find("</script>")
            .expect("the element is closed");
    &html[start..end]
}

#[test]
fn a_prompt_cannot_close_the_script_element_that_holds_the_data() {
    let prompt = "a cat </script><script>alert(1)</script> <!-- & </SCRIPT >";
    let html = render(&sheet(vec![card("a", prompt)]));

    // Only the two script elements of the page close a script.
    assert_eq!(html.to_ascii_lowercase().matches("</script").count(), 2);
    assert!(!embedded_json(&html).contains('<'));
    let cards: serde_json::Value = serde_json::from_str(embedded_json(&html)).unwrap();
    assert_eq!(cards[0]["prompt"], prompt);
}

#[test]
fn html_in_the_title_and_totals_is_escaped() {
    let mut sheet = sheet(vec![]);
    sheet.title = "<img src=x onerror=alert(1)> & \"quotes\"".into();
    sheet.totals.by_status = vec![("<b>odd</b>".into(), 2)];
    let html = render(&sheet);

    assert!(!html.contains("<img src=x"));
    assert!(!html.contains("<b>odd"));
    assert!(
        html.contains("<title>&lt;img src=x onerror=alert(1)&gt; &amp; &quot;quotes&quot;</title>")
    );
    assert!(html.contains("<dt>&lt;b&gt;odd&lt;/b&gt;</dt><dd>2</dd>"));
}

#[test]
fn html_in_a_prompt_reaches_the_script_as_data_only() {
    let html = render(&sheet(vec![card("a", "<img src=x onerror=alert(1)>")]));

    assert!(!html.contains("<img src=x"));
    let cards: serde_json::Value = serde_json::from_str(embedded_json(&html)).unwrap();
    assert_eq!(cards[0]["prompt"], "<img src=x onerror=alert(1)>");
}

#[test]
fn the_script_puts_data_in_the_page_only_as_text() {
    for sink in [
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
    ] {
        assert!(!SCRIPT.contains(sink), "sheet.js uses {sink}");
    }
    assert!(!SCRIPT.to_ascii_lowercase().contains("</script"));
    assert!(!CSS.to_ascii_lowercase().contains("</style"));
}

#[test]
fn only_the_pages_own_script_may_run() {
    use base64::Engine;
    use sha2::Digest;
    let html = render(&sheet(vec![card("a", "sand")]));
    let policy = html
        .split("Content-Security-Policy\" content=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a Content-Security-Policy");
    let scripts = policy
        .split(';')
        .map(str::trim)
        .find_map(|directive| directive.strip_prefix("script-src "))
        .expect("a script-src");
    assert!(!scripts.contains("unsafe-inline"), "{scripts}");
    // The hash is of the text of the one executable script element.
    let executable = html
        .split("<script>")
        .nth(1)
        .and_then(|rest| rest.split("</script>").next())
        .expect("an inline script");
    let hash = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(executable));
    assert_eq!(scripts, format!("'sha256-{hash}'"));
    assert_eq!(html.matches("<script>").count(), 1);
}

#[test]
fn the_page_asks_nothing_of_the_network() {
    let html = render(&sheet(vec![card("a", "sand")]));

    assert!(html.contains("default-src 'none'"));
    for remote in ["http://", "https://", "//fonts", "@import", "url("] {
        assert!(!html.contains(remote), "the page refers to {remote}");
    }
}

#[test]
fn the_totals_are_shown_at_the_top() {
    let mut sheet = sheet(vec![card("a", "sand")]);
    sheet.totals = Totals {
        by_status: vec![("delivered".into(), 7), ("failed".into(), 2)],
        reserved_usd: 1.5,
        spent_usd: 0.0035,
        files: 9,
        approved: 4,
        rejected: 1,
    };
    let html = render(&sheet);
    let header = &html[..html.find("<main").unwrap()];

    for shown in [
        "<dt>delivered</dt><dd>7</dd>",
        "<dt>failed</dt><dd>2</dd>",
        "<dt>reserved</dt><dd>$1.50</dd>",
        "<dt>spent</dt><dd>$0.0035</dd>",
        "<dt>files</dt><dd>9</dd>",
        "<dt>approved</dt><dd>4</dd>",
        "<dt>rejected</dt><dd>1</dd>",
    ] {
        assert!(header.contains(shown), "the header lacks {shown}");
    }
}

#[test]
fn money_shows_two_to_four_decimals() {
    assert_eq!(usd(0.0), "$0.00");
    assert_eq!(usd(0.04), "$0.04");
    assert_eq!(usd(12.5), "$12.50");
    assert_eq!(usd(0.0035), "$0.0035");
    assert_eq!(usd(1.23456), "$1.2346");
    assert_eq!(usd(-0.5), "-$0.50");
    assert_eq!(usd(-0.000_01), "$0.00");
}

#[test]
fn file_paths_become_percent_encoded_relative_urls() {
    assert_eq!(relative_url("images/a b#1?.png"), "images/a%20b%231%3F.png");
    assert_eq!(
        relative_url("videos/été 100%.mp4"),
        "videos/%C3%A9t%C3%A9%20100%25.mp4"
    );
    assert_eq!(
        relative_url("javascript:alert(1)"),
        "javascript%3Aalert%281%29"
    );
    assert_eq!(relative_url("plain-name_1.0~x.png"), "plain-name_1.0~x.png");
}

#[test]
fn the_script_gets_the_urls_and_the_cost_ready_to_use() {
    let mut video = card("v", "waves");
    video.kind = "video".into();
    video.files = vec!["videos/v 0.mp4".into()];
    video.poster = Some("images/p 0.png".into());
    let html = render(&sheet(vec![video]));
    let cards: serde_json::Value = serde_json::from_str(embedded_json(&html)).unwrap();

    assert_eq!(cards[0]["files"][0], "videos/v 0.mp4");
    assert_eq!(cards[0]["urls"][0], "videos/v%200.mp4");
    assert_eq!(cards[0]["poster_url"], "images/p%200.png");
    assert_eq!(cards[0]["cost"], "$0.04");
}

#[test]
fn a_sheet_of_ten_thousand_jobs_stays_small_enough_to_open() {
    let prompt = "a slow macro shot of coloured sand pouring through an hourglass on a wooden \
                  desk, warm late afternoon light from a window, shallow depth of field, soft \
                  bokeh, calm and detailed, cinematic, 35 mm film grain, muted palette";
    let cards: Vec<Card> = (0..10_000)
        .map(|i| {
            let mut card = card(
                &format!("0b9f6c2e-3c1d-4b7a-9e55-{i:012}"),
                &format!("{prompt} {i}"),
            );
            card.negative_prompt = (i % 4 == 0).then(|| "blurry, text, watermark".into());
            card.parent = (i % 10 == 0).then(|| format!("0b9f6c2e-3c1d-4b7a-9e55-{:012}", i + 1));
            card
        })
        .collect();
    assert!(cards[0].prompt.len() >= 200);

    let size = render(&sheet(cards)).len();

    eprintln!("a rendered sheet of 10,000 cards is {size} bytes");
    assert!(size < 12_000_000, "{size} bytes");
}
