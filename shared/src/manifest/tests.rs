#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use super::append::{Appended, Appender, append_to_bucket, append_to_directory};
use super::rebuild::rebuild;
use super::*;
use crate::deliver::{Downloader, DownloaderSettings};
use crate::domain::Lease;
use crate::domain::destination::{Destination, Target};
use crate::domain::gs_uri::GsUri;
use crate::domain::job::NewJob;
use crate::events::{ObjectEvent, ObjectEventKind};
use crate::objects::ObjectStore;
use crate::objects::local::LocalObjectStore;
use crate::store::Store;
use crate::store::embedded::EmbeddedBackend;
use bytes::Bytes;
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const OUT: &str = "out";
const ARCHIVE: &str = "archive";

fn job(prompt: &str) -> Job {
    let mut new = NewJob::new(prompt, JobKind::Image);
    new.params.seed = Some(7);
    new.params.negative_prompt = Some("people".into());
    Job::new(new, Timestamp::now())
}

fn line(path: &str, content: &[u8]) -> ManifestLine {
    let job = job("rain on a tin roof");
    ManifestLine::new(
        &job,
        path.into(),
        content.len() as u64,
        Crc32c::of(content),
        Timestamp::now(),
    )
}

fn lines_of(path: &Path) -> Vec<ManifestLine> {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.is_empty() || text.ends_with('\n'), "{text:?}");
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect()
}

#[test]
fn a_line_is_one_json_object_with_the_prompt_params_and_cost() {
    let line = line("images/j/0.png", b"png");
    let bytes = line.to_bytes().unwrap();
    assert_eq!(bytes.iter().filter(|b| **b == b'\n').count(), 1);
    let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(json["prompt"], "rain on a tin roof");
    assert_eq!(json["kind"], "image");
    assert_eq!(json["negative_prompt"], "people");
    assert_eq!(json["seed"], 7);
    assert_eq!(json["params"]["seed"], 7);
    assert_eq!(json["parent"], serde_json::Value::Null);
    assert_eq!(json["model"], crate::vertex::DEFAULT_IMAGE_MODEL);
    assert_eq!(json["crc32c"], Crc32c::of(b"png").to_string());
    assert!(json["cost_usd"].as_f64().unwrap() > 0.0);
    assert!(json["delivered_at"].as_str().unwrap().ends_with('Z'));
    let back: ManifestLine = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(back, line);
}

#[test]
fn the_prompt_in_the_metadata_is_cut_on_a_character_boundary_to_fit() {
    let long = "é".repeat(4000);
    let metadata = archive_metadata(&job(&long));
    let prompt = &metadata[PROMPT_METADATA];
    assert!(prompt.len() <= MAX_METADATA_VALUE_BYTES);
    assert!(prompt.len() > 3000, "{}", prompt.len());
    assert!(long.starts_with(prompt.as_str()));
    let total: usize = metadata.iter().map(|(k, v)| k.len() + v.len()).sum();
    assert!(total + SOURCE_METADATA_RESERVE <= MAX_METADATA_BYTES);
    let short = archive_metadata(&job("rain"));
    assert_eq!(short[PROMPT_METADATA], "rain");
    assert_eq!(short[MODEL_METADATA], crate::vertex::DEFAULT_IMAGE_MODEL);
    assert_eq!(short.len(), 3);
}

#[test]
fn paths_are_relative_to_the_destination_root() {
    let dir = Destination::Directory("/mnt/a".into());
    let file = Target::File("/mnt/a/images/j/0.png".into());
    assert_eq!(dir.relative(&file).as_deref(), Some("images/j/0.png"));
    assert_eq!(dir.relative(&Target::File("/mnt/b/x".into())), None);
    let bucket = Destination::Bucket {
        bucket: "arch".into(),
        prefix: "asmr/".into(),
    };
    let object = Target::Object(GsUri::parse("gs://arch/asmr/videos/j/0.mp4").unwrap());
    assert_eq!(bucket.relative(&object).as_deref(), Some("videos/j/0.mp4"));
    let elsewhere = Target::Object(GsUri::parse("gs://other/asmr/x").unwrap());
    assert_eq!(bucket.relative(&elsewhere), None);
}

#[tokio::test]
async fn a_torn_tail_is_cut_back_before_the_next_line() {
    let root = tempfile::tempdir().unwrap();
    let first = line("images/a/0.png", b"a");
    append_to_directory(root.path(), &first).await.unwrap();
    let path = root.path().join(MANIFEST_NAME);
    // A writer died halfway through its line.
    let torn = line("images/b/0.png", b"b").to_bytes().unwrap();
    let mut text = std::fs::read(&path).unwrap();
    text.extend_from_slice(&torn[..torn.len() / 2]);
    std::fs::write(&path, text).unwrap();

    let second = line("images/c/0.png", b"c");
    assert_eq!(
        append_to_directory(root.path(), &second).await.unwrap(),
        Appended::Written
    );
    assert_eq!(lines_of(&path), [first, second]);
}

#[tokio::test]
async fn a_torn_first_line_longer_than_the_tail_is_cut_whole() {
    let root = tempfile::tempdir().unwrap();
    let path = root.path().join(MANIFEST_NAME);
    std::fs::write(&path, vec![b'x'; 3 * append::TAIL_BYTES as usize]).unwrap();
    let one = line("images/a/0.png", b"a");
    append_to_directory(root.path(), &one).await.unwrap();
    assert_eq!(lines_of(&path), [one]);
}

#[tokio::test]
async fn a_line_of_the_same_path_and_crc32c_is_not_appended_twice() {
    let root = tempfile::tempdir().unwrap();
    let once = line("images/a/0.png", b"a");
    assert_eq!(
        append_to_directory(root.path(), &once).await.unwrap(),
        Appended::Written
    );
    // Redelivered later: another time, the same file.
    let again = line("images/a/0.png", b"a");
    assert_eq!(
        append_to_directory(root.path(), &again).await.unwrap(),
        Appended::Duplicate
    );
    // The same path with other bytes is another file.
    let changed = line("images/a/0.png", b"A");
    assert_eq!(
        append_to_directory(root.path(), &changed).await.unwrap(),
        Appended::Written
    );
    assert_eq!(lines_of(&root.path().join(MANIFEST_NAME)), [once, changed]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_tasks_appending_fifty_lines_each_leave_four_hundred_whole_lines() {
    let root = tempfile::tempdir().unwrap();
    let tasks = (0..8).map(|task| {
        let root = root.path().to_path_buf();
        tokio::spawn(async move {
            for n in 0..50 {
                let prompt = format!("task {task} line {n} {}", "long ".repeat(200));
                let mut line = line(&format!("images/t{task}/{n}.png"), b"x");
                line.prompt = prompt;
                append_to_directory(&root, &line).await.unwrap();
            }
        })
    });
    for task in futures::future::join_all(tasks).await {
        task.unwrap();
    }
    let lines = lines_of(&root.path().join(MANIFEST_NAME));
    assert_eq!(lines.len(), 400);
    let paths: BTreeSet<_> = lines.iter().map(|l| l.path.clone()).collect();
    assert_eq!(paths.len(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appending_a_thousand_lines_reports_the_cost_of_each() {
    let root = tempfile::tempdir().unwrap();
    let started = Instant::now();
    for n in 0..1000 {
        append_to_directory(root.path(), &line(&format!("images/j/{n}.png"), b"x"))
            .await
            .unwrap();
    }
    let per_line = started.elapsed() / 1000;
    println!(
        "directory manifest: {per_line:?} per appended line (lock, tail check, write, fdatasync)"
    );
    assert_eq!(lines_of(&root.path().join(MANIFEST_NAME)).len(), 1000);

    let objects = local_objects().await;
    let appender = Appender::default();
    let started = Instant::now();
    for n in 0..200 {
        let line = line(&format!("images/j/{n}.png"), b"x");
        append_to_bucket(&appender, objects.1.as_ref(), ARCHIVE, "", &line)
            .await
            .unwrap();
    }
    let per_line = started.elapsed() / 200;
    println!(
        "bucket manifest (local adapter): {per_line:?} per appended line (part, compose, delete)"
    );
}

async fn local_objects() -> (tempfile::TempDir, Arc<dyn ObjectStore>) {
    let dir = tempfile::tempdir().unwrap();
    let objects = LocalObjectStore::new(dir.path().to_path_buf());
    objects.ensure_bucket(OUT).await.unwrap();
    objects.ensure_bucket(ARCHIVE).await.unwrap();
    (dir, Arc::new(objects))
}

async fn read_object(objects: &dyn ObjectStore, bucket: &str, name: &str) -> Vec<u8> {
    use futures::StreamExt;
    let mut stream = objects
        .read(bucket, name, crate::objects::ReadRange::ALL)
        .await
        .unwrap();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        bytes.extend_from_slice(&chunk.unwrap());
    }
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lines_appended_to_a_bucket_by_compose_are_all_there_once() {
    let (_dir, objects) = local_objects().await;
    // An appender each: four processes racing on the manifest's generation.
    let tasks = (0..4).map(|task| {
        let objects = objects.clone();
        tokio::spawn(async move {
            let appender = Appender::default();
            for n in 0..10 {
                let line = line(&format!("images/t{task}/{n}.png"), b"x");
                let appended =
                    append_to_bucket(&appender, objects.as_ref(), ARCHIVE, "asmr/", &line)
                        .await
                        .unwrap();
                assert_eq!(appended, Appended::Written);
            }
        })
    });
    for task in futures::future::join_all(tasks).await {
        task.unwrap();
    }
    let again = line("images/t0/0.png", b"x");
    assert_eq!(
        append_to_bucket(
            &Appender::default(),
            objects.as_ref(),
            ARCHIVE,
            "asmr/",
            &again
        )
        .await
        .unwrap(),
        Appended::Duplicate
    );
    let text = read_object(objects.as_ref(), ARCHIVE, "asmr/manifest.jsonl").await;
    let lines: Vec<ManifestLine> = text
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 40);
    let paths: BTreeSet<_> = lines.iter().map(|l| l.path.clone()).collect();
    assert_eq!(paths.len(), 40);
    let listed = objects.list(ARCHIVE, "").await.unwrap();
    let names: Vec<_> = listed.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["asmr/manifest.jsonl"], "no part is left behind");
}

/// An object store that counts the composes it is asked for.
struct CountingComposes {
    inner: Arc<dyn ObjectStore>,
    composes: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl ObjectStore for CountingComposes {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    async fn ensure_bucket(&self, bucket: &str) -> crate::error::Result<()> {
        self.inner.ensure_bucket(bucket).await
    }
    async fn write(
        &self,
        bucket: &str,
        name: &str,
        data: Bytes,
        content_type: &str,
        metadata: &std::collections::BTreeMap<String, String>,
    ) -> crate::error::Result<crate::objects::ObjectMeta> {
        self.inner
            .write(bucket, name, data, content_type, metadata)
            .await
    }
    async fn read(
        &self,
        bucket: &str,
        name: &str,
        range: crate::objects::ReadRange,
    ) -> crate::error::Result<crate::objects::ByteStream> {
        self.inner.read(bucket, name, range).await
    }
    async fn metadata(
        &self,
        bucket: &str,
        name: &str,
    ) -> crate::error::Result<Option<crate::objects::ObjectMeta>> {
        self.inner.metadata(bucket, name).await
    }
    async fn list(
        &self,
        bucket: &str,
        prefix: &str,
    ) -> crate::error::Result<Vec<crate::objects::ObjectMeta>> {
        self.inner.list(bucket, prefix).await
    }
    async fn delete(&self, bucket: &str, name: &str) -> crate::error::Result<bool> {
        self.inner.delete(bucket, name).await
    }
    async fn copy(
        &self,
        from: &GsUri,
        to: &GsUri,
        metadata: &std::collections::BTreeMap<String, String>,
    ) -> crate::error::Result<crate::objects::ObjectMeta> {
        self.inner.copy(from, to, metadata).await
    }
    async fn compose(
        &self,
        bucket: &str,
        sources: &[&str],
        destination: &str,
        content_type: &str,
        if_generation_match: i64,
    ) -> crate::error::Result<Option<crate::objects::ObjectMeta>> {
        self.composes
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner
            .compose(
                bucket,
                sources,
                destination,
                content_type,
                if_generation_match,
            )
            .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lines_waiting_for_one_manifest_in_one_process_are_composed_together() {
    let (_dir, inner) = local_objects().await;
    let objects = Arc::new(CountingComposes {
        inner,
        composes: Default::default(),
    });
    let appender = Arc::new(Appender::default());
    let appends = (0..40).map(|n| {
        let (objects, appender) = (objects.clone(), appender.clone());
        tokio::spawn(async move {
            let line = line(&format!("images/j{n}/0.png"), b"x");
            append_to_bucket(&appender, objects.as_ref(), ARCHIVE, "", &line).await
        })
    });
    for appended in futures::future::join_all(appends).await {
        assert_eq!(appended.unwrap().unwrap(), Appended::Written);
    }
    let text = read_object(objects.as_ref(), ARCHIVE, MANIFEST_NAME).await;
    let paths: BTreeSet<String> = text
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice::<ManifestLine>(l).unwrap().path)
        .collect();
    assert_eq!(paths.len(), 40);
    assert_eq!(text.iter().filter(|b| **b == b'\n').count(), 40);
    let composes = objects.composes.load(std::sync::atomic::Ordering::SeqCst);
    println!("40 concurrent appends, {composes} composes");
    assert!(
        composes < 40,
        "{composes} composes for 40 lines: none were batched"
    );
}

#[tokio::test]
async fn a_compose_on_a_stale_generation_changes_nothing() {
    let (_dir, objects) = local_objects().await;
    let none = BTreeMap::new();
    let a = objects
        .write(ARCHIVE, "a", Bytes::from_static(b"a"), "text/plain", &none)
        .await
        .unwrap();
    objects
        .write(ARCHIVE, "b", Bytes::from_static(b"b"), "text/plain", &none)
        .await
        .unwrap();
    let stale = objects
        .compose(ARCHIVE, &["a", "b"], "a", "text/plain", a.generation - 1)
        .await
        .unwrap();
    assert_eq!(stale, None);
    let absent = objects
        .compose(ARCHIVE, &["a", "b"], "a", "text/plain", 0)
        .await
        .unwrap();
    assert_eq!(absent, None, "0 means: only if it does not exist");
    let composed = objects
        .compose(ARCHIVE, &["a", "b"], "a", "text/plain", a.generation)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(composed.crc32c, Crc32c::of(b"ab"));
    assert_eq!(read_object(objects.as_ref(), ARCHIVE, "a").await, b"ab");
    let missing = objects
        .compose(ARCHIVE, &["nope"], "c", "text/plain", 0)
        .await
        .unwrap_err();
    assert!(
        matches!(missing, crate::error::Error::NotFound { .. }),
        "{missing}"
    );
}

fn settings(destination: Destination) -> DownloaderSettings {
    DownloaderSettings {
        output_buckets: vec![OUT.into()],
        destination,
        concurrency: 4,
        timeout: Duration::from_secs(30),
        lease: Duration::from_secs(30),
        image_priority: 10,
        video_priority: 0,
    }
}

/// A completed job with `count` outputs in the output bucket, and their
/// finalize events.
async fn completed_job(
    store: &Store,
    objects: &dyn ObjectStore,
    prompt: &str,
    count: usize,
) -> Vec<ObjectEvent> {
    let id = store
        .create_job(NewJob::new(prompt, JobKind::Image))
        .await
        .unwrap()
        .record
        .id()
        .to_string();
    let mut events = Vec::new();
    for n in 0..count {
        let name = format!("images/{id}/{n}.png");
        let data = Bytes::from(format!("{prompt} {n}").repeat(100));
        let meta = objects
            .write(OUT, &name, data, "image/png", &BTreeMap::new())
            .await
            .unwrap();
        events.push(ObjectEvent {
            kind: ObjectEventKind::Finalized,
            bucket: OUT.into(),
            name,
            generation: Some(meta.generation),
            event_id: format!("e-{id}-{n}"),
        });
    }
    let lease = Lease::new("w", Duration::from_secs(60));
    store.claim_job(&id, &lease).await.unwrap();
    let uris = events.iter().map(|e| e.uri()).collect();
    store.complete_job(&id, "w", uris).await.unwrap();
    events
}

/// Every field but `delivered_at`, which the rebuild takes from the
/// download record, completed just after the line was appended.
fn comparable(mut line: ManifestLine) -> String {
    line.delivered_at = Timestamp::parse("2000-01-01T00:00:00Z").unwrap();
    String::from_utf8(line.to_bytes().unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rebuilt_manifest_has_the_lines_the_downloader_appended() {
    let (_dir, objects) = local_objects().await;
    let store = Store::new(Arc::new(EmbeddedBackend::in_memory().unwrap()));
    let out = tempfile::tempdir().unwrap();
    let destination = Destination::Directory(out.path().join("delivered"));
    let downloader = Downloader::new(
        store.clone(),
        objects.clone(),
        settings(destination.clone()),
    );
    let mut events = Vec::new();
    for (prompt, count) in [("rain", 2), ("wind in pines", 1), ("a purring cat", 3)] {
        events.extend(completed_job(&store, objects.as_ref(), prompt, count).await);
    }
    for event in &events {
        let handled = downloader.handle(event).await;
        assert!(
            matches!(handled, crate::ack::Handled::Done(_)),
            "{handled:?}"
        );
    }
    // A redelivered event adds nothing.
    downloader.handle(&events[0]).await;

    let appended = lines_of(&out.path().join("delivered").join(MANIFEST_NAME));
    assert_eq!(appended.len(), 6);
    let rebuilt_dir = out.path().join("rebuilt");
    let report = rebuild(
        &store,
        &crate::store::tenants::Scope::Everyone,
        &destination,
        &rebuilt_dir,
    )
    .await
    .unwrap();
    assert_eq!((report.jobs, report.lines), (3, 6));
    assert!(report.skipped.is_empty(), "{:?}", report.skipped);
    let rebuilt = lines_of(&rebuilt_dir.join(MANIFEST_NAME));
    for (a, r) in appended.iter().zip(&rebuilt) {
        assert!(r.delivered_at >= a.delivered_at);
    }
    let appended: BTreeSet<_> = appended.into_iter().map(comparable).collect();
    let rebuilt: BTreeSet<_> = rebuilt.into_iter().map(comparable).collect();
    assert_eq!(appended, rebuilt);
    // Each file is on disk at the path its line names.
    for line in &appended {
        let line: ManifestLine = serde_json::from_str(line).unwrap();
        let on_disk = std::fs::read(out.path().join("delivered").join(&line.path)).unwrap();
        assert_eq!(Crc32c::of(&on_disk), line.crc32c);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archived_copy_carries_the_job_prompt_and_model_and_keeps_the_source_metadata() {
    let (_dir, objects) = local_objects().await;
    let store = Store::new(Arc::new(EmbeddedBackend::in_memory().unwrap()));
    let destination = Destination::Bucket {
        bucket: ARCHIVE.into(),
        prefix: "asmr/".into(),
    };
    let downloader = Downloader::new(
        store.clone(),
        objects.clone(),
        settings(destination.clone()),
    );
    let events = completed_job(&store, objects.as_ref(), "rain on a tin roof", 2).await;
    for event in &events {
        let handled = downloader.handle(event).await;
        assert!(
            matches!(handled, crate::ack::Handled::Done(_)),
            "{handled:?}"
        );
    }
    let copy = objects
        .metadata(ARCHIVE, &format!("asmr/{}", events[0].name))
        .await
        .unwrap()
        .unwrap();
    let job_id = crate::domain::download::OutputName::parse(&events[0].name)
        .unwrap()
        .job_id
        .to_string();
    assert_eq!(copy.metadata[crate::objects::JOB_ID_METADATA], job_id);
    assert_eq!(copy.metadata[PROMPT_METADATA], "rain on a tin roof");
    assert_eq!(
        copy.metadata[MODEL_METADATA],
        crate::vertex::DEFAULT_IMAGE_MODEL
    );
    assert_eq!(copy.content_type, "image/png");

    let text = read_object(objects.as_ref(), ARCHIVE, "asmr/manifest.jsonl").await;
    let lines: Vec<ManifestLine> = text
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    let paths: BTreeSet<_> = lines.iter().map(|l| l.path.as_str()).collect();
    let expected: BTreeSet<_> = events.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(paths, expected);

    let rebuilt = tempfile::tempdir().unwrap();
    let report = rebuild(
        &store,
        &crate::store::tenants::Scope::Everyone,
        &destination,
        rebuilt.path(),
    )
    .await
    .unwrap();
    assert_eq!(report.lines, 2);
}

#[test]
fn a_copy_with_metadata_merges_it_over_the_source_metadata() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (_dir, objects) = local_objects().await;
        let source = BTreeMap::from([
            ("keep".to_string(), "me".to_string()),
            ("asmr-job-id".to_string(), "old".to_string()),
        ]);
        let written = objects
            .write(OUT, "a.png", Bytes::from_static(b"a"), "image/png", &source)
            .await
            .unwrap();
        let extra = BTreeMap::from([("asmr-job-id".to_string(), "new".to_string())]);
        let to = GsUri {
            bucket: ARCHIVE.into(),
            name: "a.png".into(),
        };
        let copy = objects.copy(&written.uri(), &to, &extra).await.unwrap();
        assert_eq!(copy.metadata["keep"], "me");
        assert_eq!(copy.metadata["asmr-job-id"], "new");
        assert_eq!(
            objects.metadata(ARCHIVE, "a.png").await.unwrap(),
            Some(copy)
        );
    });
}

/// A deployment whose IMAGE_MODEL is not the default: the generator
/// records the model it ran on the job, and the manifest line and the
/// contact sheet's card name that model and price the job by it. A job
/// that names its own model keeps it.
#[tokio::test]
async fn every_view_prices_a_job_by_the_model_its_generator_ran() {
    use crate::generate::images::{DryRunImages, ImageGenerator};
    use crate::generate::{GeneratorSettings, handle};
    const ULTRA: &str = "imagen-4.0-ultra-generate-001";
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(Arc::new(EmbeddedBackend::in_memory().unwrap()));
    let objects = Arc::new(LocalObjectStore::new(dir.path().join("buckets")));
    objects.ensure_bucket(OUT).await.unwrap();
    let generator = ImageGenerator::new(
        store.clone(),
        objects,
        Arc::new(DryRunImages),
        GeneratorSettings {
            output_bucket: OUT.into(),
            default_model: ULTRA.into(),
            dry_run: true,
            lease_ttl: Duration::from_secs(60),
            operation_timeout: Duration::from_secs(60),
            retry: crate::vertex::RetryPolicy::default(),
        },
    );
    let plain = store
        .create_job(NewJob::new("rain", JobKind::Image))
        .await
        .unwrap()
        .record;
    let mut named = NewJob::new("snow", JobKind::Image);
    named.params.model = Some("imagen-4.0-fast-generate-001".into());
    let named = store.create_job(named).await.unwrap().record;
    for job in [&plain, &named] {
        handle(&generator, job.id()).await;
    }
    let prices = crate::cost::PriceTable::list_prices();
    for (job, model, usd) in [
        (&plain, ULTRA, 0.06),
        (&named, "imagen-4.0-fast-generate-001", 0.02),
    ] {
        let done = store.job(job.id()).await.unwrap();
        assert_eq!(done.status(), crate::domain::values::JobStatus::Completed);
        assert_eq!(done.model(), Some(model));
        let line = ManifestLine::new(&done, "x.png".into(), 1, Crc32c::of(b"x"), Timestamp::now());
        assert_eq!((line.model.as_str(), line.cost_usd), (model, usd));
        let sheet =
            crate::report::build::sheet("t", std::slice::from_ref(&done), &[], dir.path(), &prices);
        assert_eq!(sheet.cards[0].model, model);
    }
}
