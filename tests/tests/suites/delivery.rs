//! The downloader: storage events in, verified copies out, jobs delivered.
//! Each test runs on the local world (embedded store, directory buckets) and,
//! with the `emulators` feature, on the emulator world (Firestore,
//! fake-gcs-server).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use async_trait::async_trait;
use base64::Engine;
use bytes::Bytes;
use futures::future::join_all;
use shared::deliver::copy::partial_path;
use shared::deliver::service::router;
use shared::deliver::{Downloader, DownloaderSettings};
use shared::domain::Lease;
use shared::domain::destination::{Destination, Target};
use shared::domain::download::DownloadStatus;
use shared::domain::gs_uri::GsUri;
use shared::domain::values::{JobKind, JobStatus};
use shared::objects::{ByteStream, ObjectMeta, ObjectStore, ReadRange};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tests::fake_vertex::FakeOptions;
use tests::stages::{World, post_raw, serve};

fn settings(world: &World, destination: Destination) -> DownloaderSettings {
    DownloaderSettings {
        output_buckets: vec![world.bucket.clone()],
        destination,
        concurrency: 5,
        timeout: Duration::from_secs(60),
        lease: Duration::from_secs(30),
        image_priority: 10,
        video_priority: 0,
    }
}

/// A job whose outputs exist in the output bucket and which is completed.
async fn completed_job(world: &World, outputs: &[(&str, Vec<u8>)]) -> (String, Vec<ObjectMeta>) {
    completed_job_in(world, "images", outputs).await
}

/// The same under `images/` or `videos/`.
async fn completed_job_in(
    world: &World,
    folder: &str,
    outputs: &[(&str, Vec<u8>)],
) -> (String, Vec<ObjectMeta>) {
    let kind = if folder == "videos" {
        JobKind::Video
    } else {
        JobKind::Image
    };
    let id = world.job("delivered prompt", kind, &[]).await;
    let mut metas = Vec::new();
    for (suffix, data) in outputs {
        let name = format!("{folder}/{id}/{suffix}");
        let meta = world
            .objects
            .write(
                &world.bucket,
                &name,
                Bytes::from(data.clone()),
                "image/png",
                &BTreeMap::new(),
            )
            .await
            .unwrap();
        metas.push(meta);
    }
    let lease = Lease::new("w", Duration::from_secs(60));
    world.store.claim_job(&id, &lease).await.unwrap();
    let uris = metas.iter().map(|m| m.uri()).collect();
    world.store.complete_job(&id, "w", uris).await.unwrap();
    (id, metas)
}

/// The Pub/Sub push of a bucket notification, as GCS sends it.
fn notification(meta: &ObjectMeta, event_type: &str, message_id: &str) -> String {
    let resource = object_resource(meta);
    serde_json::json!({
        "message": {
            "attributes": {
                "eventType": event_type,
                "bucketId": meta.bucket,
                "objectId": meta.name,
                "objectGeneration": meta.generation.to_string(),
                "payloadFormat": "JSON_API_V1",
                "notificationConfig": "projects/_/buckets/out/notificationConfigs/1",
            },
            "data": base64::engine::general_purpose::STANDARD.encode(resource.to_string()),
            "messageId": message_id,
            "publishTime": "2026-11-28T10:00:00Z",
        },
        "subscription": "projects/asmr-test/subscriptions/gcs-events-push",
    })
    .to_string()
}

fn object_resource(meta: &ObjectMeta) -> serde_json::Value {
    serde_json::json!({
        "kind": "storage#object",
        "bucket": meta.bucket,
        "name": meta.name,
        "generation": meta.generation.to_string(),
        "size": meta.size.to_string(),
        "crc32c": meta.crc32c.to_string(),
        "contentType": meta.content_type,
    })
}

async fn read_file(path: &Path) -> Vec<u8> {
    tokio::fs::read(path).await.unwrap()
}

fn bytes(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

async fn a_finalize_event_copies_the_file_and_delivers_the_job(world: World) {
    let root = tempfile::tempdir().unwrap();
    let downloader = Arc::new(Downloader::new(
        world.store.clone(),
        world.objects.clone(),
        settings(&world, Destination::Directory(root.path().into())),
    ));
    let url = serve(router(downloader)).await;
    let data = [bytes(300_000, 1), bytes(10, 2)];
    let (id, metas) = completed_job(
        &world,
        &[("0.png", data[0].clone()), ("1.png", data[1].clone())],
    )
    .await;

    assert_eq!(
        post_raw(&url, notification(&metas[0], "OBJECT_FINALIZE", "e1")).await,
        200
    );
    assert_eq!(
        world.store.job(&id).await.unwrap().status(),
        JobStatus::Completed,
        "one of two delivered"
    );
    assert_eq!(
        post_raw(&url, notification(&metas[1], "OBJECT_FINALIZE", "e2")).await,
        200
    );

    for (n, data) in data.iter().enumerate() {
        let path = root.path().join(format!("images/{id}/{n}.png"));
        assert_eq!(&read_file(&path).await, data, "{}", path.display());
    }
    let job = world.store.job(&id).await.unwrap();
    assert_eq!(job.status(), JobStatus::Delivered);
    assert_eq!(job.deliveries().len(), 2);
    assert_eq!(
        job.deliveries()[0].destination,
        Target::File(root.path().join(format!("images/{id}/0.png")))
    );
    let downloads = world
        .store
        .list_downloads(None, 10, None)
        .await
        .unwrap()
        .items;
    assert_eq!(downloads.len(), 2);
    assert!(
        downloads
            .iter()
            .all(|d| d.status() == DownloadStatus::Completed && d.attempts() == 1)
    );
    assert!(no_partial_files(root.path()), "no temporary file is left");
}

/// The one download record of `world`.
async fn only_download(world: &World) -> shared::domain::download::Download {
    let mut downloads = world
        .store
        .list_downloads(None, 10, None)
        .await
        .unwrap()
        .items;
    assert_eq!(downloads.len(), 1, "{downloads:?}");
    downloads.remove(0)
}

fn no_partial_files(root: &Path) -> bool {
    !tests::harness::files_below(root)
        .iter()
        .any(|path| path.to_string_lossy().ends_with(".asmr-partial"))
}

async fn an_eventarc_cloud_event_is_handled_the_same_way(world: World) {
    let root = tempfile::tempdir().unwrap();
    let downloader = Arc::new(Downloader::new(
        world.store.clone(),
        world.objects.clone(),
        settings(&world, Destination::Directory(root.path().into())),
    ));
    let url = serve(router(downloader)).await;
    let (id, metas) = completed_job(&world, &[("0.png", bytes(5000, 3))]).await;
    let meta = &metas[0];
    let status = reqwest::Client::new()
        .post(format!("{url}/"))
        .header("ce-specversion", "1.0")
        .header("ce-type", "google.cloud.storage.object.v1.finalized")
        .header(
            "ce-source",
            format!(
                "//storage.googleapis.com/projects/_/buckets/{}",
                meta.bucket
            ),
        )
        .header("ce-subject", format!("objects/{}", meta.name))
        .header("ce-id", "cloud-event-1")
        .header("ce-time", "2026-11-28T10:00:00Z")
        .header("content-type", "application/json")
        .body(object_resource(meta).to_string())
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
    assert_eq!(
        read_file(&root.path().join(format!("images/{id}/0.png"))).await,
        bytes(5000, 3)
    );
    assert_eq!(
        world.store.job(&id).await.unwrap().status(),
        JobStatus::Delivered
    );
}

async fn the_same_event_three_times_makes_one_copy_and_one_record(world: World) {
    let root = tempfile::tempdir().unwrap();
    let downloader = Arc::new(Downloader::new(
        world.store.clone(),
        world.objects.clone(),
        settings(&world, Destination::Directory(root.path().into())),
    ));
    let url = serve(router(downloader)).await;
    let (id, metas) = completed_job(&world, &[("0.png", bytes(2_000_000, 4))]).await;
    let body = notification(&metas[0], "OBJECT_FINALIZE", "same");
    let statuses = join_all((0..3).map(|_| post_raw(&url, body.clone()))).await;
    // A delivery that finds another copier at work asks to come back (503);
    // once the copy is verified every redelivery is acknowledged.
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 503),
        "{statuses:?}"
    );
    assert!(statuses.contains(&200));
    assert_eq!(post_raw(&url, body.clone()).await, 200);
    let downloads = world
        .store
        .list_downloads(None, 10, None)
        .await
        .unwrap()
        .items;
    assert_eq!(downloads.len(), 1, "one record");
    assert_eq!(
        (downloads[0].status(), downloads[0].attempts()),
        (DownloadStatus::Completed, 1),
        "one copy"
    );
    assert_eq!(
        read_file(&root.path().join(format!("images/{id}/0.png"))).await,
        bytes(2_000_000, 4)
    );
}

async fn a_copy_completed_but_not_recorded_on_its_job_is_recorded_on_redelivery(world: World) {
    let root = tempfile::tempdir().unwrap();
    let downloader = Arc::new(Downloader::new(
        world.store.clone(),
        world.objects.clone(),
        settings(&world, Destination::Directory(root.path().into())),
    ));
    let url = serve(router(downloader.clone())).await;
    let (id, metas) = completed_job(&world, &[("0.png", bytes(5_000, 9))]).await;
    // A copier that stopped right after completing the download, before it
    // recorded the delivery on the job.
    let name = &metas[0].name;
    let created = world
        .store
        .create_download(shared::domain::download::NewDownload {
            job_id: id.clone(),
            bucket: world.bucket.clone(),
            object: name.clone(),
            generation: Some(metas[0].generation),
            destination: downloader.settings().destination.target_of(name).unwrap(),
            file_type: shared::domain::download::FileType::Image,
            priority: 10,
            size: Some(metas[0].size),
            crc32c: Some(metas[0].crc32c),
            tenant: Default::default(),
        })
        .await
        .unwrap();
    let lease = Lease::new("stopped", Duration::from_secs(60));
    world
        .store
        .claim_download(created.record.id(), &lease)
        .await
        .unwrap();
    world
        .store
        .complete_download(created.record.id(), "stopped", 5_000)
        .await
        .unwrap();
    assert_eq!(
        world.store.job(&id).await.unwrap().status(),
        JobStatus::Completed
    );

    assert_eq!(
        post_raw(&url, notification(&metas[0], "OBJECT_FINALIZE", "again")).await,
        200
    );
    let job = world.store.job(&id).await.unwrap();
    assert_eq!(
        job.status(),
        JobStatus::Delivered,
        "the redelivery finished it"
    );
    assert_eq!(job.deliveries().len(), 1);
    let downloads = world
        .store
        .list_downloads(None, 10, None)
        .await
        .unwrap()
        .items;
    assert_eq!(downloads.len(), 1, "no second record");
}

async fn other_events_buckets_paths_and_jobs_are_acknowledged_and_ignored(world: World) {
    let root = tempfile::tempdir().unwrap();
    let downloader = Arc::new(Downloader::new(
        world.store.clone(),
        world.objects.clone(),
        settings(&world, Destination::Directory(root.path().into())),
    ));
    let url = serve(router(downloader)).await;
    let (_, metas) = completed_job(&world, &[("0.png", bytes(10, 5))]).await;
    let mut other_bucket = metas[0].clone();
    other_bucket.bucket = "someone-elses-bucket".into();
    let mut other_path = metas[0].clone();
    other_path.name = "logs/today.txt".into();
    let mut no_job = metas[0].clone();
    no_job.name = "images/nojobwiththisid/0.png".into();
    for body in [
        notification(&metas[0], "OBJECT_DELETE", "d"),
        notification(&metas[0], "OBJECT_METADATA_UPDATE", "m"),
        notification(&other_bucket, "OBJECT_FINALIZE", "b"),
        notification(&other_path, "OBJECT_FINALIZE", "p"),
        notification(&no_job, "OBJECT_FINALIZE", "j"),
        "not json".to_string(),
        r#"{"message": {"messageId": "1", "attributes": {"eventType": "OBJECT_FINALIZE"}}}"#
            .to_string(),
    ] {
        assert_eq!(post_raw(&url, body.clone()).await, 200, "{body}");
    }
    assert!(
        world
            .store
            .list_downloads(None, 10, None)
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert_eq!(
        std::fs::read_dir(root.path()).unwrap().count(),
        0,
        "nothing copied"
    );
}

/// Hostile names of a job's output, each uploaded for real, with where it
/// must land under the destination (`None`: refused, nothing written).
fn hostile_names() -> Vec<(String, Option<&'static str>)> {
    vec![
        ("../../../escaped".into(), None),
        ("../../escaped".into(), None),
        ("/escaped".into(), None),
        ("a\\..\\..\\escaped".into(), None),
        ("\u{0}escaped".into(), None),
        ("./escaped".into(), None),
        ("x".repeat(300), None),
        ("x.asmr-partial".into(), None),
        (
            "%2e%2e/%2e%2e/escaped".into(),
            Some("%2e%2e/%2e%2e/escaped"),
        ),
        ("..escaped".into(), Some("..escaped")),
        ("y".repeat(255), Some("a 255-byte name")),
    ]
}

/// The objects exist, so a path check that let one through would copy it:
/// every name is refused by the rules or lands exactly where it says.
#[cfg(feature = "emulators")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_object_names_never_escape_the_destination() {
    let world = tests::stages::emulators(FakeOptions::default()).await;
    let outer = tempfile::tempdir().unwrap();
    let root = outer.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let downloader = Arc::new(Downloader::new(
        world.store.clone(),
        world.objects.clone(),
        settings(&world, Destination::Directory(root.clone())),
    ));
    let url = serve(router(downloader)).await;
    let (id, metas) = completed_job(&world, &[("0.png", bytes(10, 6))]).await;
    let mut delivered = Vec::new();
    for (n, (name, lands)) in hostile_names().into_iter().enumerate() {
        let full = format!("images/{id}/{name}");
        let data = format!("content {n}").into_bytes();
        let generation = tests::objects::upload_as_named(&world.bucket, &full, data.clone()).await;
        let meta = ObjectMeta {
            name: full.clone(),
            generation,
            size: data.len() as u64,
            crc32c: shared::crc::Crc32c::of(&data),
            ..metas[0].clone()
        };
        let answer = post_raw(
            &url,
            notification(&meta, "OBJECT_FINALIZE", &format!("h{n}")),
        )
        .await;
        assert_eq!(answer, 200, "{name:?}");
        if lands.is_some() {
            let path = root.join(format!("images/{id}")).join(&name);
            assert_eq!(std::fs::read(&path).unwrap(), data, "{name:?}");
            delivered.push(full);
        }
    }
    let outside: Vec<_> = std::fs::read_dir(outer.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        outside,
        vec![std::ffi::OsString::from("root")],
        "nothing next to the root"
    );
    // Under the root: exactly the copies meant to land there, and the
    // manifest.
    let mut files = tests::harness::files_below(&root);
    files.retain(|f| !f.ends_with(shared::manifest::MANIFEST_NAME));
    let mut want: Vec<_> = delivered
        .iter()
        .map(|full| root.join(full.split('/').collect::<std::path::PathBuf>()))
        .collect();
    files.sort();
    want.sort();
    assert_eq!(files, want);
}

/// A destination with a directory outside it that planted links point at.
struct Planted {
    _outer: tempfile::TempDir,
    root: std::path::PathBuf,
    outside: std::path::PathBuf,
}

impl Planted {
    fn new() -> Self {
        let outer = tempfile::tempdir().unwrap();
        let root = outer.path().join("root");
        let outside = outer.path().join("outside");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("victim"), b"precious\n").unwrap();
        Self {
            root,
            outside,
            _outer: outer,
        }
    }

    /// The directory outside is as it was: one file, unchanged.
    fn untouched(&self, case: &str) {
        let names: Vec<_> = std::fs::read_dir(&self.outside)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["victim"], "{case}: something was made outside");
        assert_eq!(
            std::fs::read(self.outside.join("victim")).unwrap(),
            b"precious\n",
            "{case}: the file outside was written"
        );
    }
}

async fn planted_links_in_the_destination_fail_the_copy_and_nothing_is_written_outside(
    world: World,
) {
    use std::os::unix::fs::symlink;
    // (case, what is planted where, relative to the root and the job)
    type Plant = fn(&Planted, &str, i64);
    let cases: [(&str, Plant); 4] = [
        ("images is a link", |p, _, _| {
            symlink(&p.outside, p.root.join("images")).unwrap();
        }),
        ("the job's folder is a link", |p, id, _| {
            std::fs::create_dir_all(p.root.join("images")).unwrap();
            symlink(&p.outside, p.root.join(format!("images/{id}"))).unwrap();
        }),
        ("the partial file is a link", |p, id, generation| {
            let target = p.root.join(format!("images/{id}/0.png"));
            std::fs::create_dir_all(target.parent().unwrap()).unwrap();
            symlink(
                p.outside.join("victim"),
                partial_path(&target, Some(generation)),
            )
            .unwrap();
        }),
        ("manifest.jsonl is a link", |p, _, _| {
            symlink(p.outside.join("victim"), p.root.join("manifest.jsonl")).unwrap();
        }),
    ];
    for (case, plant) in cases {
        let planted = Planted::new();
        let downloader = Arc::new(Downloader::new(
            world.store.clone(),
            world.objects.clone(),
            settings(&world, Destination::Directory(planted.root.clone())),
        ));
        let url = serve(router(downloader)).await;
        let (id, metas) = completed_job(&world, &[("0.png", bytes(5_000, 3))]).await;
        plant(&planted, &id, metas[0].generation);
        let answer = post_raw(&url, notification(&metas[0], "OBJECT_FINALIZE", case)).await;
        assert_eq!(answer, 200, "{case}: failed for good, not redelivered");
        planted.untouched(case);
        let download = world
            .store
            .list_downloads(None, 100, None)
            .await
            .unwrap()
            .items
            .into_iter()
            .find(|d| d.job_id() == id)
            .unwrap();
        assert_eq!(download.status(), DownloadStatus::Failed, "{case}");
        let error = download.error().unwrap();
        assert_eq!(error.code, "unsafe_path", "{case}: {}", error.message);
        assert!(
            error.message.contains("symbolic link"),
            "{case}: {}",
            error.message
        );
        assert_eq!(
            world.store.job(&id).await.unwrap().status(),
            JobStatus::Completed,
            "{case}: not delivered"
        );
    }
}

async fn a_partial_file_held_by_another_copier_is_left_to_it(world: World) {
    let root = tempfile::tempdir().unwrap();
    let downloader = Arc::new(Downloader::new(
        world.store.clone(),
        world.objects.clone(),
        settings(&world, Destination::Directory(root.path().into())),
    ));
    let url = serve(router(downloader)).await;
    let data = bytes(300_000, 4);
    let (id, metas) = completed_job(&world, &[("0.png", data.clone())]).await;
    // A copier whose lease was taken over while it stalled still holds its
    // partial file, locked.
    let target = root.path().join(format!("images/{id}/0.png"));
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    let partial = partial_path(&target, Some(metas[0].generation));
    let stalled = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&partial)
        .unwrap();
    stalled.lock().unwrap();
    let body = notification(&metas[0], "OBJECT_FINALIZE", "busy");
    assert_eq!(post_raw(&url, body.clone()).await, 503, "asked again later");
    assert!(!target.exists());
    let download = &only_download(&world).await;
    let error = download.error().unwrap();
    assert_eq!(error.code, "busy", "{}", error.message);
    // Once it is gone, the copy goes through whole.
    drop(stalled);
    assert_eq!(post_raw(&url, body).await, 200);
    assert_eq!(read_file(&target).await, data);
}

/// Appends junk to the partial file while the copy reads, as a copier that
/// does not take the lock (or an old one) would.
struct SplicingWriter(Arc<dyn ObjectStore>, std::path::PathBuf);

async fn a_copy_spliced_by_another_writer_is_caught_by_reading_the_file_back(world: World) {
    let root = tempfile::tempdir().unwrap();
    let data = bytes(200_000, 5);
    let (id, metas) = completed_job(&world, &[("0.png", data.clone())]).await;
    let target = root.path().join(format!("images/{id}/0.png"));
    let partial = partial_path(&target, Some(metas[0].generation));
    let objects: Arc<dyn ObjectStore> = Arc::new(SplicingWriter(world.objects.clone(), partial));
    let downloader = Arc::new(Downloader::new(
        world.store.clone(),
        objects,
        settings(&world, Destination::Directory(root.path().into())),
    ));
    let url = serve(router(downloader)).await;
    let body = notification(&metas[0], "OBJECT_FINALIZE", "splice");
    // Its own count says the object's size and CRC32C; the file says
    // otherwise, and the file decides.
    assert_eq!(post_raw(&url, body.clone()).await, 503);
    assert!(!target.exists(), "nothing renamed into place");
    let download = &only_download(&world).await;
    let error = download.error().unwrap();
    assert_eq!(error.code, "size_mismatch", "{}", error.message);
    assert!(no_partial_files(root.path()), "the spliced file is gone");
}

async fn a_resumed_copy_reads_only_its_own_generation(world: World) {
    let root = tempfile::tempdir().unwrap();
    let dir = Destination::Directory(root.path().into());
    let first = bytes(500_000, 6);
    let (id, metas) = completed_job(&world, &[("0.png", first.clone())]).await;
    // The first generation's copy fails halfway (its stream breaks) and is
    // left for a later attempt, 200 KB on disk.
    let broken = Arc::new(Downloader::new(
        world.store.clone(),
        Arc::new(Corrupting(world.objects.clone())),
        settings(&world, dir.clone()),
    ));
    let url = serve(router(broken)).await;
    let answer = post_raw(&url, notification(&metas[0], "OBJECT_FINALIZE", "old")).await;
    assert_eq!(answer, 503);
    let target = root.path().join(format!("images/{id}/0.png"));
    std::fs::write(
        partial_path(&target, Some(metas[0].generation)),
        &first[..200_000],
    )
    .unwrap();
    // Then the object is written again.
    let second = bytes(500_000, 99);
    let rewritten = world
        .objects
        .write(
            &world.bucket,
            &metas[0].name,
            Bytes::from(second.clone()),
            "image/png",
            &BTreeMap::new(),
        )
        .await
        .unwrap();
    // The drain takes the first generation's download up again: its bytes
    // are gone, and the second's are never spliced onto them.
    let healthy = Arc::new(Downloader::new(
        world.store.clone(),
        world.objects.clone(),
        settings(&world, dir),
    ));
    healthy.drain(None).await.unwrap();
    assert!(!target.exists());
    let old = &world
        .store
        .list_downloads(None, 10, None)
        .await
        .unwrap()
        .items[0];
    assert_eq!(old.status(), DownloadStatus::Failed);
    assert_eq!(old.error().unwrap().code, "not_found", "{:?}", old.error());
    // The second generation's own event delivers the second generation.
    let url = serve(router(healthy)).await;
    let answer = post_raw(&url, notification(&rewritten, "OBJECT_FINALIZE", "new")).await;
    assert_eq!(answer, 200);
    assert_eq!(read_file(&target).await, second);
}

/// Corrupts every read: one byte flipped in the first chunk.
struct Corrupting(Arc<dyn ObjectStore>);

/// Records the ranges read.
struct Recording(Arc<dyn ObjectStore>, Mutex<Vec<ReadRange>>);

/// Counts reads in flight (a read lasts until its stream is dropped) and
/// remembers the most at once.
struct Gauge(
    Arc<dyn ObjectStore>,
    Arc<(
        std::sync::atomic::AtomicUsize,
        std::sync::atomic::AtomicUsize,
    )>,
);

struct InFlight(
    Arc<(
        std::sync::atomic::AtomicUsize,
        std::sync::atomic::AtomicUsize,
    )>,
);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

macro_rules! delegate {
    ($ty:ident, $read:expr) => {
        #[async_trait]
        impl ObjectStore for $ty {
            fn describe(&self) -> String {
                self.0.describe()
            }
            async fn ensure_bucket(&self, bucket: &str) -> shared::error::Result<()> {
                self.0.ensure_bucket(bucket).await
            }
            async fn write(
                &self,
                b: &str,
                n: &str,
                d: Bytes,
                c: &str,
                m: &BTreeMap<String, String>,
            ) -> shared::error::Result<ObjectMeta> {
                self.0.write(b, n, d, c, m).await
            }
            async fn read(
                &self,
                bucket: &str,
                name: &str,
                range: ReadRange,
            ) -> shared::error::Result<ByteStream> {
                let read: fn(&$ty, ByteStream, ReadRange) -> ByteStream = $read;
                let stream = self.0.read(bucket, name, range).await?;
                Ok(read(self, stream, range))
            }
            async fn metadata(
                &self,
                b: &str,
                n: &str,
            ) -> shared::error::Result<Option<ObjectMeta>> {
                self.0.metadata(b, n).await
            }
            async fn list(&self, b: &str, p: &str) -> shared::error::Result<Vec<ObjectMeta>> {
                self.0.list(b, p).await
            }
            async fn delete(&self, b: &str, n: &str) -> shared::error::Result<bool> {
                self.0.delete(b, n).await
            }
            async fn copy(
                &self,
                from: &GsUri,
                to: &GsUri,
                m: &BTreeMap<String, String>,
            ) -> shared::error::Result<ObjectMeta> {
                self.0.copy(from, to, m).await
            }
            async fn compose(
                &self,
                b: &str,
                sources: &[&str],
                to: &str,
                c: &str,
                generation: i64,
            ) -> shared::error::Result<Option<ObjectMeta>> {
                self.0.compose(b, sources, to, c, generation).await
            }
        }
    };
}

delegate!(Corrupting, |_, stream, _| {
    use futures::StreamExt;
    let mut first = true;
    Box::pin(stream.map(move |chunk| {
        chunk.map(|bytes| {
            if std::mem::take(&mut first) && !bytes.is_empty() {
                let mut v = bytes.to_vec();
                v[0] ^= 0xff;
                Bytes::from(v)
            } else {
                bytes
            }
        })
    }))
});
delegate!(Gauge, |this, stream, _| {
    use futures::StreamExt;
    use std::sync::atomic::Ordering::SeqCst;
    let now = this.1.0.fetch_add(1, SeqCst) + 1;
    this.1.1.fetch_max(now, SeqCst);
    let guard = InFlight(this.1.clone());
    // Slow, so that copies overlap if the limit lets them.
    Box::pin(
        futures::stream::once(tokio::time::sleep(Duration::from_millis(150)))
            .flat_map(move |()| {
                let _keep = &guard;
                futures::stream::empty()
            })
            .chain(stream),
    )
});
delegate!(SplicingWriter, |this, stream, _| {
    use futures::StreamExt;
    let partial = this.1.clone();
    let mut first = true;
    Box::pin(stream.map(move |chunk| {
        if std::mem::take(&mut first) {
            use std::io::Write;
            let mut other = std::fs::OpenOptions::new()
                .append(true)
                .open(&partial)
                .unwrap();
            other.write_all(b"bytes of another writer").unwrap();
        }
        chunk
    }))
});
delegate!(Recording, |this, stream, range| {
    this.1.lock().unwrap().push(range);
    stream
});

async fn a_corrupted_copy_is_retried_then_failed_with_the_reason(world: World) {
    let root = tempfile::tempdir().unwrap();
    let objects: Arc<dyn ObjectStore> = Arc::new(Corrupting(world.objects.clone()));
    let downloader = Arc::new(Downloader::new(
        world.store.clone(),
        objects,
        settings(&world, Destination::Directory(root.path().into())),
    ));
    let url = serve(router(downloader)).await;
    let (id, metas) = completed_job(&world, &[("0.png", bytes(100_000, 7))]).await;
    let body = notification(&metas[0], "OBJECT_FINALIZE", "c");
    assert_eq!(
        post_raw(&url, body.clone()).await,
        503,
        "attempt 1 fails, redeliver"
    );
    assert_eq!(
        post_raw(&url, body.clone()).await,
        503,
        "attempt 2 fails, redeliver"
    );
    assert_eq!(
        post_raw(&url, body.clone()).await,
        200,
        "attempt 3 fails for good"
    );
    assert_eq!(post_raw(&url, body.clone()).await, 200, "and stays failed");
    let download = &only_download(&world).await;
    assert_eq!(
        (download.status(), download.attempts()),
        (DownloadStatus::Failed, 3)
    );
    let error = download.error().unwrap();
    assert_eq!(error.code, "attempts_exhausted");
    assert!(error.message.contains("crc_mismatch"), "{}", error.message);
    assert!(
        !root.path().join(format!("images/{id}/0.png")).exists(),
        "no file at the final path"
    );
    assert!(no_partial_files(root.path()));
    assert_eq!(
        world.store.job(&id).await.unwrap().status(),
        JobStatus::Completed,
        "not delivered"
    );
}

async fn an_interrupted_copy_resumes_from_the_bytes_on_disk(world: World) {
    let root = tempfile::tempdir().unwrap();
    let recording = Arc::new(Recording(world.objects.clone(), Mutex::new(Vec::new())));
    let downloader = Arc::new(Downloader::new(
        world.store.clone(),
        recording.clone(),
        settings(&world, Destination::Directory(root.path().into())),
    ));
    let url = serve(router(downloader)).await;
    let data = bytes(1_000_000, 8);
    let (id, metas) = completed_job(&world, &[("0.png", data.clone())]).await;
    // What a copier killed halfway leaves behind.
    let target = root.path().join(format!("images/{id}/0.png"));
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    std::fs::write(
        partial_path(&target, Some(metas[0].generation)),
        &data[..400_000],
    )
    .unwrap();
    assert_eq!(
        post_raw(&url, notification(&metas[0], "OBJECT_FINALIZE", "r")).await,
        200
    );
    assert_eq!(
        *recording.1.lock().unwrap(),
        vec![ReadRange::from(400_000).of_generation(Some(metas[0].generation))],
        "one ranged read from the first missing byte, of the generation on disk"
    );
    assert_eq!(read_file(&target).await, data);
    assert!(no_partial_files(root.path()));
}

async fn a_bucket_destination_is_a_server_side_copy(world: World) {
    let archive = format!("{}-archive", world.bucket);
    world.objects.ensure_bucket(&archive).await.unwrap();
    let destination = Destination::Bucket {
        bucket: archive.clone(),
        prefix: "asmr/".into(),
    };
    let downloader = Arc::new(Downloader::new(
        world.store.clone(),
        world.objects.clone(),
        settings(&world, destination),
    ));
    let url = serve(router(downloader)).await;
    let (id, metas) = completed_job(&world, &[("0.png", bytes(70_000, 9))]).await;
    assert_eq!(
        post_raw(&url, notification(&metas[0], "OBJECT_FINALIZE", "a")).await,
        200
    );
    let name = format!("asmr/images/{id}/0.png");
    let copy = world
        .objects
        .metadata(&archive, &name)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((copy.size, copy.crc32c), (metas[0].size, metas[0].crc32c));
    let job = world.store.job(&id).await.unwrap();
    assert_eq!(job.status(), JobStatus::Delivered);
    assert_eq!(
        job.deliveries()[0].destination,
        format!("gs://{archive}/{name}").parse().unwrap()
    );
}

async fn a_bucket_copy_carries_its_prompt_and_has_one_manifest_line(world: World) {
    let archive = format!("{}-archive", world.bucket);
    world.objects.ensure_bucket(&archive).await.unwrap();
    let destination = Destination::Bucket {
        bucket: archive.clone(),
        prefix: "asmr/".into(),
    };
    let downloader = Arc::new(Downloader::new(
        world.store.clone(),
        world.objects.clone(),
        settings(&world, destination),
    ));
    let url = serve(router(downloader)).await;
    let outputs = [("0.png", bytes(5_000, 1)), ("1.png", bytes(6_000, 2))];
    let (id, metas) = completed_job(&world, &outputs).await;
    for (n, meta) in metas.iter().enumerate() {
        let message = format!("m{n}");
        assert_eq!(
            post_raw(&url, notification(meta, "OBJECT_FINALIZE", &message)).await,
            200
        );
    }
    // A redelivered event adds no line.
    assert_eq!(
        post_raw(&url, notification(&metas[0], "OBJECT_FINALIZE", "m0")).await,
        200
    );
    let copy = world
        .objects
        .metadata(&archive, &format!("asmr/images/{id}/0.png"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(copy.metadata["asmr-job-id"], id);
    assert_eq!(copy.metadata["asmr-prompt"], "delivered prompt");
    assert!(!copy.metadata["asmr-model"].is_empty());
    assert_eq!(copy.content_type, "image/png");

    let manifest = world
        .objects
        .read(&archive, "asmr/manifest.jsonl", ReadRange::ALL)
        .await
        .unwrap();
    let text: Vec<u8> = futures::StreamExt::collect::<Vec<_>>(manifest)
        .await
        .into_iter()
        .flat_map(|chunk| chunk.unwrap().to_vec())
        .collect();
    let lines: Vec<shared::manifest::ManifestLine> = String::from_utf8(text)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let mut paths: Vec<_> = lines.iter().map(|l| l.path.clone()).collect();
    paths.sort();
    assert_eq!(
        paths,
        [format!("images/{id}/0.png"), format!("images/{id}/1.png")]
    );
    assert!(
        lines
            .iter()
            .all(|l| l.prompt == "delivered prompt" && l.job_id == id)
    );
    let listed = world.objects.list(&archive, "asmr/").await.unwrap();
    assert!(
        listed.iter().all(|m| !m.name.contains(".manifest-parts/")),
        "no part of the manifest is left behind"
    );
}

async fn a_retried_download_is_copied_by_a_drain_images_first(world: World) {
    let root = tempfile::tempdir().unwrap();
    let dir = Destination::Directory(root.path().into());
    let broken = Arc::new(Downloader::new(
        world.store.clone(),
        Arc::new(Corrupting(world.objects.clone())),
        settings(&world, dir.clone()),
    ));
    let url = serve(router(broken)).await;
    let (video_job, video) =
        completed_job_in(&world, "videos", &[("t/sample_0.mp4", bytes(50_000, 10))]).await;
    let (image_job, image) = completed_job(&world, &[("0.png", bytes(40_000, 11))]).await;
    for meta in [&video[0], &image[0]] {
        // Each redelivery is another attempt; the third fails for good.
        let body = notification(meta, "OBJECT_FINALIZE", "x");
        let mut answers = Vec::new();
        loop {
            let status = post_raw(&url, body.clone()).await;
            answers.push(status);
            if status != 503 {
                break;
            }
            assert!(answers.len() < 10, "never failed for good: {answers:?}");
        }
        assert_eq!(answers, [503, 503, 200], "{}", meta.name);
    }
    let failed = world
        .store
        .list_downloads(Some(DownloadStatus::Failed), 10, None)
        .await
        .unwrap()
        .items;
    assert_eq!(failed.len(), 2);
    for download in &failed {
        world.store.retry_download(download.id()).await.unwrap();
    }
    let mut one_at_a_time = settings(&world, dir);
    one_at_a_time.concurrency = 1;
    let healthy = Downloader::new(world.store.clone(), world.objects.clone(), one_at_a_time);
    let report = healthy.drain(None).await.unwrap();
    assert_eq!((report.processed, report.retried), (2, 0));
    let done = world
        .store
        .list_downloads(Some(DownloadStatus::Completed), 10, None)
        .await
        .unwrap()
        .items;
    let by_job = |job: &str| {
        done.iter()
            .find(|d| d.job_id() == job)
            .unwrap()
            .completed_at()
            .unwrap()
    };
    // One copy at a time, so the two finish at distinct times: a tie
    // would not show which came first.
    assert!(
        by_job(&image_job) < by_job(&video_job),
        "images are copied first, though the video's event came first"
    );
    for id in [&image_job, &video_job] {
        assert_eq!(
            world.store.job(id).await.unwrap().status(),
            JobStatus::Delivered
        );
    }
}

async fn no_more_than_the_configured_number_of_copies_run_at_once(world: World) {
    let root = tempfile::tempdir().unwrap();
    let gauge = Arc::new(Gauge(world.objects.clone(), Arc::default()));
    let mut limited = settings(&world, Destination::Directory(root.path().into()));
    limited.concurrency = 2;
    let url = serve(router(Arc::new(Downloader::new(
        world.store.clone(),
        gauge.clone(),
        limited,
    ))))
    .await;
    let mut bodies = Vec::new();
    for n in 0..6u8 {
        let (_, metas) = completed_job(&world, &[("0.png", bytes(1000, n))]).await;
        bodies.push(notification(&metas[0], "OBJECT_FINALIZE", &n.to_string()));
    }
    let statuses = join_all(bodies.into_iter().map(|body| post_raw(&url, body))).await;
    assert_eq!(statuses, vec![200; 6]);
    assert_eq!(
        gauge.1.1.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "at most DOWNLOAD_CONCURRENCY copies at once"
    );
}

macro_rules! scenarios {
    ($world:ident, $make:path) => {
        mod $world {
            use super::*;

            async fn world() -> World {
                $make(FakeOptions::default()).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_finalize_event_copies_the_file_and_delivers_the_job() {
                super::a_finalize_event_copies_the_file_and_delivers_the_job(world().await).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn an_eventarc_cloud_event_is_handled_the_same_way() {
                super::an_eventarc_cloud_event_is_handled_the_same_way(world().await).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn the_same_event_three_times_makes_one_copy_and_one_record() {
                super::the_same_event_three_times_makes_one_copy_and_one_record(world().await).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_copy_completed_but_not_recorded_on_its_job_is_recorded_on_redelivery() {
                super::a_copy_completed_but_not_recorded_on_its_job_is_recorded_on_redelivery(
                    world().await,
                )
                .await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn other_events_buckets_paths_and_jobs_are_acknowledged_and_ignored() {
                super::other_events_buckets_paths_and_jobs_are_acknowledged_and_ignored(
                    world().await,
                )
                .await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn planted_links_in_the_destination_fail_the_copy_and_nothing_is_written_outside()
            {
                super::planted_links_in_the_destination_fail_the_copy_and_nothing_is_written_outside(
                    world().await,
                )
                .await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_partial_file_held_by_another_copier_is_left_to_it() {
                super::a_partial_file_held_by_another_copier_is_left_to_it(world().await).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_copy_spliced_by_another_writer_is_caught_by_reading_the_file_back() {
                super::a_copy_spliced_by_another_writer_is_caught_by_reading_the_file_back(
                    world().await,
                )
                .await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_resumed_copy_reads_only_its_own_generation() {
                super::a_resumed_copy_reads_only_its_own_generation(world().await).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_corrupted_copy_is_retried_then_failed_with_the_reason() {
                super::a_corrupted_copy_is_retried_then_failed_with_the_reason(world().await).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn an_interrupted_copy_resumes_from_the_bytes_on_disk() {
                super::an_interrupted_copy_resumes_from_the_bytes_on_disk(world().await).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_retried_download_is_copied_by_a_drain_images_first() {
                super::a_retried_download_is_copied_by_a_drain_images_first(world().await).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn no_more_than_the_configured_number_of_copies_run_at_once() {
                super::no_more_than_the_configured_number_of_copies_run_at_once(world().await).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_bucket_destination_is_a_server_side_copy() {
                super::a_bucket_destination_is_a_server_side_copy(world().await).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_bucket_copy_carries_its_prompt_and_has_one_manifest_line() {
                super::a_bucket_copy_carries_its_prompt_and_has_one_manifest_line(world().await)
                    .await
            }
        }
    };
}

scenarios!(local, tests::stages::local);
#[cfg(feature = "emulators")]
scenarios!(emulators, tests::stages::emulators);
