//! A real headless Chromium for tests of pages, driven over W3C WebDriver.
//!
//! [`Browser::start`] runs Debian's `chromedriver` on a free loopback port
//! and opens one session in a fresh profile; the test then opens pages,
//! runs scripts in them, clicks, takes screenshots and reads the console.
//! Dropping the [`Browser`] ends the session (which quits Chromium) and
//! kills whatever of the driver's process group is left.
//!
//! The binaries are `/usr/bin/chromium` and `/usr/bin/chromedriver` unless
//! `ASMR_TEST_CHROMIUM` and `ASMR_TEST_CHROMEDRIVER` say otherwise;
//! `tests/run` installs Debian's `chromium` and `chromium-driver` when they
//! are missing. Without them the tests fail, saying how to install them:
//! they never skip.

use crate::process::{Running, free_port};
use base64::Engine as _;
use serde_json::{Value, json};
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The key under which WebDriver returns an element reference.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// How long the driver and the browser get to start.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// One Chromium session, ended when dropped.
pub struct Browser {
    http: reqwest::Client,
    /// The session's URL, `http://127.0.0.1:PORT/session/ID`.
    session: String,
    port: u16,
    session_id: String,
    driver: Running,
    _profile: tempfile::TempDir,
}

/// One line of the browser's console.
#[derive(Debug, Clone)]
pub struct ConsoleEntry {
    /// `SEVERE`, `WARNING`, `INFO` or `DEBUG`.
    pub level: String,
    /// The text, prefixed by chromedriver with where it came from.
    pub message: String,
}

/// Where a binary is: the environment variable if set, else the default;
/// panics with how to install it if it is not there.
fn binary(variable: &str, default: &str) -> PathBuf {
    let path = std::env::var_os(variable).map_or_else(|| PathBuf::from(default), PathBuf::from);
    assert!(
        path.is_file(),
        "{} not found ({variable} to use another): the browser tests need Debian's Chromium; \
         install it with `apt-get update && apt-get install -y chromium chromium-driver` \
         (tests/run does so when it runs as root)",
        path.display()
    );
    path
}

/// The command-line switches of the browser: headless, no sandbox (tests
/// run as root), a throwaway profile, and none of the background requests
/// Chromium makes to Google on its own.
fn chromium_args(profile: &Path) -> Vec<String> {
    [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--window-size=1400,1000",
        "--allow-file-access-from-files",
    ]
    .into_iter()
    .map(String::from)
    .chain([format!("--user-data-dir={}", profile.display())])
    .collect()
}

impl Browser {
    /// Starts chromedriver and opens a session in a fresh headless Chromium.
    pub async fn start() -> Browser {
        let chromium = binary("ASMR_TEST_CHROMIUM", "/usr/bin/chromium");
        let chromedriver = binary("ASMR_TEST_CHROMEDRIVER", "/usr/bin/chromedriver");
        let profile = tempfile::tempdir().expect("a temporary directory for the browser profile");
        let port = free_port();
        let child = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("{} does not start: {e}", chromedriver.display()));
        let driver = Running(child);
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        wait_for_driver(&http, &base).await;

        let capabilities = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": chromium, "args": chromium_args(profile.path()) },
            "goog:loggingPrefs": { "browser": "ALL" },
        }}});
        let created = send(
            &http,
            reqwest::Method::POST,
            &format!("{base}/session"),
            Some(capabilities),
        )
        .await;
        let session_id = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("chromedriver opened no session: {created}"))
            .to_string();
        Browser {
            http,
            session: format!("{base}/session/{session_id}"),
            port,
            session_id,
            driver,
            _profile: profile,
        }
    }

    /// Opens `url` and waits for its `load` event.
    pub async fn open(&self, url: &str) {
        self.post("/url", json!({ "url": url })).await;
    }

    /// Opens a local file, with `fragment` (e.g. `job-1`, or empty) after `#`.
    pub async fn open_file(&self, path: &Path, fragment: &str) {
        let path = path
            .canonicalize()
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut url = format!("file://{}", path.display());
        if !fragment.is_empty() {
            url = format!("{url}#{fragment}");
        }
        self.open(&url).await;
    }

    /// Runs `body` as the body of a function in the page, with `args` as
    /// `arguments`, and returns what it returns.
    pub async fn script(&self, body: &str, args: Vec<Value>) -> Value {
        self.post("/execute/sync", json!({ "script": body, "args": args }))
            .await
    }

    /// Polls the expression `expression` until it is truthy and returns its
    /// value; panics with `what` after `limit`.
    pub async fn wait_for(&self, what: &str, expression: &str, limit: Duration) -> Value {
        let deadline = Instant::now() + limit;
        let body = format!("return ({expression});");
        loop {
            let value = self.script(&body, vec![]).await;
            if truthy(&value) {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {limit:?} waiting for {what} (`{expression}` is {value})"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Clicks the first element matching the CSS `selector`, scrolling it
    /// into view first as a user would.
    pub async fn click(&self, selector: &str) {
        let found = self
            .post(
                "/element",
                json!({ "using": "css selector", "value": selector }),
            )
            .await;
        let element = found[ELEMENT_KEY]
            .as_str()
            .unwrap_or_else(|| panic!("no element matches {selector}: {found}"));
        self.post(&format!("/element/{element}/click"), json!({}))
            .await;
    }

    /// Takes a screenshot of the window and writes it to `path` as PNG.
    pub async fn screenshot(&self, path: &Path) {
        let value = send(
            &self.http,
            reqwest::Method::GET,
            &format!("{}/screenshot", self.session),
            None,
        )
        .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(value.as_str().expect("a screenshot is a base64 string"))
            .expect("the screenshot is valid base64");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(path, png).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }

    /// The console lines logged since the last call.
    pub async fn console(&self) -> Vec<ConsoleEntry> {
        let value = self.post("/se/log", json!({ "type": "browser" })).await;
        value
            .as_array()
            .map(|entries| {
                entries
                    .iter()
                    .map(|entry| ConsoleEntry {
                        level: entry["level"].as_str().unwrap_or_default().to_string(),
                        message: entry["message"].as_str().unwrap_or_default().to_string(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Panics if the page logged an error (a `SEVERE` line: an exception, a
    /// failed load, a blocked request) since the last console read.
    pub async fn assert_no_console_errors(&self) {
        let errors: Vec<String> = self
            .console()
            .await
            .into_iter()
            .filter(|entry| entry.level == "SEVERE")
            .map(|entry| entry.message)
            .collect();
        assert!(
            errors.is_empty(),
            "the browser console has errors:\n{}",
            errors.join("\n")
        );
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        send(
            &self.http,
            reqwest::Method::POST,
            &format!("{}{path}", self.session),
            Some(body),
        )
        .await
    }
}

impl Drop for Browser {
    /// Ends the session, which quits Chromium, then kills the driver's
    /// process group in case anything outlived it. Blocking and short: a
    /// drop cannot await, and it may run while a failed test unwinds.
    fn drop(&mut self) {
        delete_session(self.port, &self.session_id);
        let group = format!("-{}", self.driver.0.id());
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
    }
}

/// `DELETE /session/ID` over a plain socket, waiting for the whole reply
/// (chromedriver answers once the browser has quit) but no more than a few
/// seconds. chromedriver keeps the connection open after replying, so the
/// reply ends where its `Content-Length` says.
fn delete_session(port: u16, session_id: &str) {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
    let request = format!(
        "DELETE /session/{session_id} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\n\r\n"
    );
    if stream.write_all(request.as_bytes()).is_err() {
        return;
    }
    let mut reply = Vec::new();
    let mut chunk = [0_u8; 4096];
    while !reply_complete(&reply) {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => reply.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Whether `reply` holds an HTTP response's head and all of its body.
fn reply_complete(reply: &[u8]) -> bool {
    let Some(head_end) = reply.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&reply[..head_end]).to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|n| n.trim().parse::<usize>().ok())
        .unwrap_or(0);
    reply.len() >= head_end + 4 + length
}

/// Polls chromedriver's `/status` until it says it is ready.
async fn wait_for_driver(http: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let ready = match http.get(format!("{base}/status")).send().await {
            Ok(response) => response
                .json::<Value>()
                .await
                .is_ok_and(|status| status["value"]["ready"] == true),
            Err(_) => false,
        };
        if ready {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "chromedriver did not answer on {base} within {START_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One WebDriver command; returns its `value`, panics with the driver's
/// error if it failed.
async fn send(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body: Option<Value>,
) -> Value {
    let mut request = http.request(method.clone(), url).timeout(START_TIMEOUT * 2);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("WebDriver {method} {url}: {e}"));
    let status = response.status();
    let mut reply: Value = response
        .json()
        .await
        .unwrap_or_else(|e| panic!("WebDriver {method} {url}: unreadable reply ({e})"));
    assert!(
        status.is_success(),
        "WebDriver {method} {url} failed ({status}): {} {}",
        reply["value"]["error"],
        reply["value"]["message"]
    );
    reply["value"].take()
}

/// JavaScript's truthiness of a value returned by a script.
fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|n| n != 0.0 && !n.is_nan()),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}
