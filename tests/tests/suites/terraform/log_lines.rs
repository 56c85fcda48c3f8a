//! Log lines as the stages print them: the real binaries run one small
//! scenario on the local adapters (embedded store, directory buckets, the
//! fake Vertex AI), each under the name terraform deploys it as, and every
//! JSON line of their stdout is kept with that name. Two events only happen
//! against Pub/Sub (a dead letter handled, a job event that could not be
//! published); their lines are made here from the code's own macro calls.

use serde_json::{Value, json};
use shared::objects::ObjectStore;
use shared::objects::local::LocalObjectStore;
use shared::store::{Store, StoreConfig};
use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tests::fake_vertex::{FakeOptions, FakeVertex};
use tests::harness::binary;
use tests::process::{free_port, wait_healthy};
use tests::stages::post_raw;

/// One JSON log line and the deployed stage (terraform's key in
/// local.services or local.jobs) that printed it.
pub struct Line {
    pub stage: String,
    pub json: Value,
}

/// Every line the scenario printed, and the two made from the code.
pub async fn capture() -> Vec<Line> {
    let state = tempfile::tempdir().unwrap();
    let buckets = tempfile::tempdir().unwrap();
    let archive = tempfile::tempdir().unwrap();
    let objects = Arc::new(LocalObjectStore::new(buckets.path().to_path_buf()));
    objects.ensure_bucket("out").await.unwrap();
    let fake = FakeVertex::start(FakeOptions {
        polls_until_done: 1,
        objects: Some(objects.clone()),
        ..FakeOptions::default()
    })
    .await;
    let env = Env {
        vars: vec![
            ("ASMR_BACKEND", "embedded".into()),
            ("ASMR_STATE_DIR", path(state.path())),
            ("ASMR_OBJECTS_DIR", path(buckets.path())),
            ("ASMR_JOB_EVENTS", "false".into()),
            ("GOOGLE_CLOUD_PROJECT", "asmr-test".into()),
            ("GCS_OUTPUT_BUCKET", "out".into()),
            ("VERTEX_BASE_URL", fake.base_url()),
            ("VERTEX_ACCESS_TOKEN", fake.token().to_string()),
            ("DRY_RUN", "false".into()),
            ("BASE_DELAY", "10ms".into()),
            ("MAX_DELAY", "50ms".into()),
            ("POLLING_INTERVAL", "100ms".into()),
            ("DOWNLOAD_DESTINATION", path(archive.path())),
            ("RUST_LOG", "info".into()),
        ],
    };
    let mut lines = Vec::new();

    // intake: jobs in over HTTP, one at a time so that they are claimed in
    // this order, and a push that is not a request.
    let intake = env.serve("intake", &[], &[]).await;
    let operator = Store::open(&StoreConfig::Embedded {
        state_dir: state.path().to_path_buf(),
    })
    .await
    .unwrap();
    let http = tests::http::keyed_client(&tests::stages::api_key(&operator, "default").await);
    let mut ids = Vec::new();
    for (kind, prompt) in [
        ("image", "[blocked] soap cut into cubes"),
        ("image", "rain on a tin roof 0"),
        ("image", "rain on a tin roof 1"),
        ("image", "rain on a tin roof 2"),
        ("video", "waves on pebbles"),
        ("video", "[op-fails] waves on sand"),
    ] {
        let answer: Value = http
            .post(format!("{}/v1/jobs", intake.url))
            .json(&json!({"kind": kind, "prompt": prompt}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        ids.push(answer["jobs"][0]["id"].as_str().unwrap().to_string());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rejected = reqwest::Client::new()
        .post(format!("{}/", intake.url))
        .body("not a push")
        .send()
        .await
        .unwrap();
    assert!(rejected.status().is_success());
    lines.extend(intake.stop("intake"));

    // The image drain: a 429 first, the blocked prompt refused, two images
    // within the day's budget, the third refused by it.
    fake.fail_next(1, 429);
    lines.extend(env.run(
        "image-drain",
        "image-generator",
        &["drain"],
        &[
            ("MODEL_PRICES", "gemini-2.5-flash-image*=0.05"),
            ("BUDGET_USD_PER_DAY", "0.10"),
        ],
    ));
    // The video drain submits both videos; the poller finishes one and
    // fails the other.
    lines.extend(env.run("video-drain", "video-generator", &["drain"], &[]));
    lines.extend(env.run(
        "video-poller",
        "video-poller",
        &[],
        &[("POLLER_MAX_RUNTIME", "3s")],
    ));

    // The downloader: the first image of a completed job, as its bucket
    // notification, then an object that is not there.
    let store = Store::open(&StoreConfig::Embedded {
        state_dir: state.path().to_path_buf(),
    })
    .await
    .unwrap();
    let mut images = Vec::new();
    for id in &ids[..4] {
        images.push(store.job(id).await.unwrap());
    }
    let job = images
        .iter()
        .find(|j| !j.outputs().is_empty())
        .unwrap_or_else(|| panic!("the image drain made no image: {images:?}"));
    let unfinished = images.iter().find(|j| j.outputs().is_empty()).unwrap();
    let downloader = env.serve("downloader", &["serve"], &[]).await;
    for (n, uri) in job.outputs().iter().enumerate() {
        let uri = uri.clone();
        let meta = objects
            .metadata(&uri.bucket, &uri.name)
            .await
            .unwrap()
            .unwrap();
        let status = post_raw(&downloader.url, notification(&meta, &format!("n{n}"))).await;
        assert!(status < 300, "the downloader answered {status}");
    }
    // A copy that fails for good: the object is there, but where it must
    // land a file stands in the way of its folder, attempt after attempt.
    let source = job.outputs()[0].clone();
    let blocked = objects
        .copy(
            &source,
            &shared::domain::gs_uri::GsUri {
                bucket: source.bucket.clone(),
                name: format!("images/{}/9.png", unfinished.id()),
            },
            &std::collections::BTreeMap::new(),
        )
        .await
        .unwrap();
    std::fs::create_dir_all(archive.path().join("images")).unwrap();
    std::fs::write(
        archive.path().join("images").join(unfinished.id()),
        b"in the way",
    )
    .unwrap();
    for attempt in 0..3 {
        post_raw(
            &downloader.url,
            notification(&blocked, &format!("blocked{attempt}")),
        )
        .await;
    }
    lines.extend(downloader.stop("downloader"));

    lines.extend(env.run("janitor", "janitor", &[], &[]));

    lines.extend(made_from_the_code(&lines));
    lines
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

struct Env {
    vars: Vec<(&'static str, String)>,
}

struct Served {
    child: Child,
    url: String,
}

impl Env {
    fn command(&self, binary_name: &str, args: &[&str], extra: &[(&str, &str)]) -> Command {
        let mut command = Command::new(binary(binary_name));
        command
            .env_clear()
            .envs(self.vars.iter().map(|(k, v)| (*k, v.as_str())))
            .envs(extra.iter().copied())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        command
    }

    /// A job: runs to the end; its lines.
    fn run(
        &self,
        stage: &str,
        binary_name: &str,
        args: &[&str],
        extra: &[(&str, &str)],
    ) -> Vec<Line> {
        let output = tokio::task::block_in_place(|| {
            self.command(binary_name, args, extra).output().unwrap()
        });
        assert!(output.status.success(), "{stage} failed");
        parse(stage, &output.stdout)
    }

    /// A service on a free port, healthy.
    async fn serve(&self, binary_name: &str, args: &[&str], extra: &[(&str, &str)]) -> Served {
        let port = free_port().to_string();
        let mut extra = extra.to_vec();
        extra.push(("PORT", &port));
        let child = self.command(binary_name, args, &extra).spawn().unwrap();
        let url = format!("http://127.0.0.1:{port}");
        wait_healthy(&url).await;
        Served { child, url }
    }
}

impl Served {
    /// SIGTERM, as Cloud Run stops an instance; its lines.
    fn stop(mut self, stage: &str) -> Vec<Line> {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "{stage} did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut out = Vec::new();
        self.child
            .stdout
            .take()
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        parse(stage, &out)
    }
}

fn parse(stage: &str, stdout: &[u8]) -> Vec<Line> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| Line {
            stage: stage.to_string(),
            json: serde_json::from_str(l).unwrap_or_else(|e| panic!("{stage} printed {l}: {e}")),
        })
        .collect()
}

/// The Pub/Sub push of a bucket notification, as Cloud Storage sends it.
fn notification(meta: &shared::objects::ObjectMeta, message_id: &str) -> String {
    use base64::Engine;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let resource = json!({
        "kind": "storage#object",
        "bucket": meta.bucket,
        "name": meta.name,
        "generation": meta.generation.to_string(),
        "size": meta.size.to_string(),
        "crc32c": meta.crc32c.to_string(),
        "contentType": meta.content_type,
    });
    json!({
        "message": {
            "attributes": {
                "eventType": "OBJECT_FINALIZE",
                "bucketId": meta.bucket,
                "objectId": meta.name,
                "objectGeneration": meta.generation.to_string(),
                "payloadFormat": "JSON_API_V1",
            },
            "data": b64(resource.to_string().as_bytes()),
            "messageId": message_id,
            "publishTime": "2026-11-28T10:00:00Z",
        },
        "subscription": "projects/asmr-test/subscriptions/gcs-events-push",
    })
    .to_string()
}

/// The lines of the two events only Pub/Sub produces, each from its macro
/// call in the `shared` crate's source (found by its event name, so a renamed event fails
/// here), with every field that call names and a real line's envelope.
fn made_from_the_code(real: &[Line]) -> Vec<Line> {
    let template = real
        .iter()
        .find(|l| l.json.get("severity").is_some())
        .expect("a real line to copy the envelope from");
    [
        ("janitor", "janitor.dead_letter", "janitor/mod.rs"),
        ("image-generator", "job_event.deferred", "store/outbox.rs"),
    ]
    .into_iter()
    .map(|(stage, event, file)| {
        // The workspace's own `shared` crate, read from the repository root.
        let source = super::read(&format!("shared/src/{file}"));
        let call = macro_call(&source, event)
            .unwrap_or_else(|| panic!("shared/src/{file} no longer logs event = \"{event}\""));
        let mut json = template.json.clone();
        let object = json.as_object_mut().unwrap();
        object.retain(|k, _| matches!(k.as_str(), "severity" | "time" | "target"));
        for name in field_names(&call) {
            object.insert(camel(&name), json!("x"));
        }
        object.insert("event".into(), json!(event));
        object.insert(
            "message".into(),
            json!(format!("{event} (made from the code)")),
        );
        Line {
            stage: stage.to_string(),
            json,
        }
    })
    .collect()
}

/// The text of the first tracing macro call (not a comment) that contains
/// `event = "EVENT"`.
fn macro_call(source: &str, event: &str) -> Option<String> {
    source
        .match_indices(&format!("event = \"{event}\""))
        .map(|(at, _)| at)
        .find(|&at| {
            let line = &source[source[..at].rfind('\n').map_or(0, |n| n + 1)..at];
            !line.trim_start().starts_with("//")
        })
        .and_then(|at| {
            let start = source[..at].rfind("tracing::")?;
            let end = at + source[at..].find(");")?;
            Some(source[start..end].to_string())
        })
}

/// `name = value`, `name = %value`, `name` (shorthand) fields of a macro call.
fn field_names(call: &str) -> Vec<String> {
    let inner = &call[call.find('(').unwrap() + 1..];
    inner
        .split(',')
        .map(str::trim)
        .filter_map(|part| {
            let name = part
                .split('=')
                .next()?
                .trim()
                .trim_start_matches(['%', '?']);
            let plain = name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c == '_' || c == '.');
            (plain && !name.is_empty() && !part.starts_with('"')).then(|| name.to_string())
        })
        .collect()
}

/// tracing-stackdriver's key style: `job_id` becomes `jobId`.
fn camel(name: &str) -> String {
    let mut out = String::new();
    let mut upper = false;
    for c in name.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}
