//! The object store contract: the same tests, unchanged, against every
//! adapter. `local` always runs; `gcs` runs on fake-gcs-server with the
//! `emulators` feature (tests/run turns it on). Each test gets a bucket of
//! its own.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use futures::StreamExt;
use shared::domain::gs_uri::GsUri;
use shared::error::Error;
use shared::objects::{JOB_ID_METADATA, ObjectMeta, ObjectStore, ReadRange};
use std::collections::BTreeMap;
use tests::objects::{TestObjects, pattern};

const MIB: usize = 1024 * 1024;

fn metadata(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn write(t: &TestObjects, name: &str, data: &[u8], content_type: &str) -> ObjectMeta {
    t.store
        .write(
            &t.bucket,
            name,
            data.to_vec().into(),
            content_type,
            &BTreeMap::new(),
        )
        .await
        .unwrap_or_else(|e| panic!("writing {name}: {e}"))
}

/// The chunks of a read, in order.
async fn chunks(
    store: &dyn ObjectStore,
    bucket: &str,
    name: &str,
    range: ReadRange,
) -> Vec<Vec<u8>> {
    let mut stream = store
        .read(bucket, name, range)
        .await
        .unwrap_or_else(|e| panic!("reading {name} {range:?}: {e}"));
    let mut chunks = Vec::new();
    while let Some(chunk) = stream.next().await {
        chunks.push(
            chunk
                .unwrap_or_else(|e| panic!("reading {name} {range:?}: {e}"))
                .to_vec(),
        );
    }
    chunks
}

async fn read(t: &TestObjects, name: &str, range: ReadRange) -> Vec<u8> {
    chunks(t.store.as_ref(), &t.bucket, name, range)
        .await
        .concat()
}

fn names(objects: &[ObjectMeta]) -> Vec<&str> {
    objects.iter().map(|o| o.name.as_str()).collect()
}

// ---- the tests, each a function of a fresh store and bucket ----

async fn a_written_object_reads_back_with_its_metadata(t: TestObjects) {
    let data = pattern(10_000);
    let custom = metadata(&[(JOB_ID_METADATA, "job-42"), ("prompt-hash", "abc")]);
    let written = t
        .store
        .write(
            &t.bucket,
            "images/job-42/0.png",
            data.clone().into(),
            "image/png",
            &custom,
        )
        .await
        .unwrap();

    assert_eq!(written.bucket, t.bucket);
    assert_eq!(written.name, "images/job-42/0.png");
    assert_eq!(written.size, 10_000);
    assert_eq!(written.crc32c, shared::crc::Crc32c::of(&data));
    assert_eq!(written.content_type, "image/png");
    assert_eq!(written.metadata, custom);
    assert!(written.generation > 0, "generation {}", written.generation);
    assert_eq!(
        written.uri().to_string(),
        format!("gs://{}/images/job-42/0.png", t.bucket)
    );

    let stat = t
        .store
        .metadata(&t.bucket, "images/job-42/0.png")
        .await
        .unwrap();
    assert_eq!(stat.as_ref(), Some(&written));
    assert_eq!(read(&t, "images/job-42/0.png", ReadRange::ALL).await, data);

    // An empty object is an object too.
    let empty = write(&t, "empty.txt", b"", "text/plain").await;
    assert_eq!((empty.size, empty.crc32c), (0, shared::crc::Crc32c(0)));
    assert!(read(&t, "empty.txt", ReadRange::ALL).await.is_empty());
}

async fn ranges_read_exactly_the_bytes_asked_for(t: TestObjects) {
    let data = pattern(1000);
    let len = data.len() as u64;
    write(&t, "clip.bin", &data, "application/octet-stream").await;

    let check = |range: ReadRange, expected: &[u8]| {
        let t = &t;
        let expected = expected.to_vec();
        async move {
            assert_eq!(read(t, "clip.bin", range).await, expected, "{range:?}");
        }
    };
    check(ReadRange::from(0), &data).await;
    check(ReadRange::from(600), &data[600..]).await;
    check(ReadRange::segment(100, 250), &data[100..250]).await;
    check(ReadRange::segment(0, 1), &data[..1]).await;
    check(ReadRange::segment(999, 1000), &data[999..]).await;
    // Empty ranges at the end, and an end past the end is clamped.
    check(ReadRange::segment(len, len), b"").await;
    check(ReadRange::from(len), b"").await;
    check(ReadRange::segment(500, 500), b"").await;
    check(ReadRange::segment(900, 5000), &data[900..]).await;

    // A range that starts past the end, or ends before it starts, is refused
    // for good.
    for range in [
        ReadRange::from(len + 1),
        ReadRange::segment(len + 1, len + 10),
        ReadRange::segment(10, 5),
    ] {
        let e = t
            .store
            .read(&t.bucket, "clip.bin", range)
            .await
            .err()
            .unwrap();
        assert!(
            matches!(
                e,
                Error::Objects {
                    retryable: false,
                    ..
                }
            ),
            "{range:?}: {e}"
        );
        assert!(e.to_string().contains("clip.bin"), "{e}");
    }
}

async fn a_twenty_mib_object_round_trips_as_a_stream_of_chunks(t: TestObjects) {
    let data = pattern(20 * MIB);
    let written = write(&t, "videos/big.mp4", &data, "video/mp4").await;
    assert_eq!(written.size, data.len() as u64);
    assert_eq!(written.crc32c, shared::crc::Crc32c::of(&data));

    let chunks = chunks(
        t.store.as_ref(),
        &t.bucket,
        "videos/big.mp4",
        ReadRange::ALL,
    )
    .await;
    assert!(chunks.len() > 1, "read in {} chunk(s)", chunks.len());
    let largest = chunks.iter().map(Vec::len).max().unwrap_or(0);
    assert!(largest < data.len(), "one chunk held the whole object");
    assert_eq!(chunks.concat(), data);

    // A resumed copy reads the tail only.
    let tail = read(&t, "videos/big.mp4", ReadRange::from(19 * MIB as u64)).await;
    assert_eq!(tail, &data[19 * MIB..]);
}

async fn listing_by_prefix_returns_matching_objects_in_name_order(t: TestObjects) {
    let written: Vec<ObjectMeta> = {
        let mut all = Vec::new();
        for name in [
            "jobs/b/2.png",
            "jobs/a/10.png",
            "jobs/a/1.png",
            "jobs/a/0.png",
            "jobs-x/y.png",
            "jobsx.png",
            "other/z.png",
        ] {
            all.push(write(&t, name, name.as_bytes(), "image/png").await);
        }
        all
    };
    let list = |prefix: &'static str| {
        let t = &t;
        async move { t.store.list(&t.bucket, prefix).await.unwrap() }
    };

    let jobs = list("jobs/").await;
    assert_eq!(
        names(&jobs),
        [
            "jobs/a/0.png",
            "jobs/a/1.png",
            "jobs/a/10.png",
            "jobs/b/2.png"
        ]
    );
    for meta in &jobs {
        let original = written.iter().find(|w| w.name == meta.name).unwrap();
        assert_eq!(meta, original);
    }
    assert_eq!(
        names(&list("jobs/a/1").await),
        ["jobs/a/1.png", "jobs/a/10.png"]
    );
    assert_eq!(
        names(&list("jobs").await),
        [
            "jobs-x/y.png",
            "jobs/a/0.png",
            "jobs/a/1.png",
            "jobs/a/10.png",
            "jobs/b/2.png",
            "jobsx.png"
        ]
    );
    assert_eq!(list("").await.len(), 7);
    assert!(list("nothing/").await.is_empty());
    assert!(list("jobs/c").await.is_empty());
}

async fn an_overwrite_changes_the_generation_and_the_content(t: TestObjects) {
    let first = t
        .store
        .write(
            &t.bucket,
            "images/j/0.png",
            b"first".to_vec().into(),
            "image/png",
            &metadata(&[(JOB_ID_METADATA, "j"), ("attempt", "1")]),
        )
        .await
        .unwrap();
    let second = t
        .store
        .write(
            &t.bucket,
            "images/j/0.png",
            b"second, longer".to_vec().into(),
            "image/webp",
            &metadata(&[(JOB_ID_METADATA, "j")]),
        )
        .await
        .unwrap();
    assert_ne!(second.generation, first.generation);
    assert!(second.generation > first.generation);
    assert_eq!(second.size, 14);
    assert_eq!(second.crc32c, shared::crc::Crc32c::of(b"second, longer"));
    assert_eq!(second.content_type, "image/webp");
    assert_eq!(second.metadata, metadata(&[(JOB_ID_METADATA, "j")]));
    assert_eq!(
        t.store.metadata(&t.bucket, "images/j/0.png").await.unwrap(),
        Some(second.clone())
    );
    assert_eq!(
        read(&t, "images/j/0.png", ReadRange::ALL).await,
        b"second, longer"
    );
    assert_eq!(t.store.list(&t.bucket, "").await.unwrap().len(), 1);

    // A read pinned to a generation reads that one or nothing: a resumed
    // copy of the first never gets the second's bytes.
    let live = ReadRange::from(8).of_generation(Some(second.generation));
    assert_eq!(read(&t, "images/j/0.png", live).await, b"longer");
    let gone = ReadRange::from(2).of_generation(Some(first.generation));
    match t.store.read(&t.bucket, "images/j/0.png", gone).await.err() {
        Some(Error::NotFound { kind: "object", .. }) => {}
        other => panic!("a replaced generation must be NotFound, got {other:?}"),
    }
}

async fn delete_returns_true_then_false_and_the_object_is_gone(t: TestObjects) {
    write(&t, "images/j/0.png", b"x", "image/png").await;
    write(&t, "images/j/1.png", b"y", "image/png").await;
    assert!(t.store.delete(&t.bucket, "images/j/0.png").await.unwrap());
    assert!(!t.store.delete(&t.bucket, "images/j/0.png").await.unwrap());
    assert_eq!(
        t.store.metadata(&t.bucket, "images/j/0.png").await.unwrap(),
        None
    );
    assert!(matches!(
        t.store
            .read(&t.bucket, "images/j/0.png", ReadRange::ALL)
            .await
            .err()
            .unwrap(),
        Error::NotFound { kind: "object", .. }
    ));
    assert_eq!(
        names(&t.store.list(&t.bucket, "").await.unwrap()),
        ["images/j/1.png"]
    );
    assert!(t.store.delete(&t.bucket, "images/j/1.png").await.unwrap());
    assert!(t.store.list(&t.bucket, "").await.unwrap().is_empty());
    // A folder left empty is no object, and does not block one of its name.
    assert!(!t.store.delete(&t.bucket, "images/j").await.unwrap());
    write(&t, "images", b"now a file", "text/plain").await;
    assert_eq!(read(&t, "images", ReadRange::ALL).await, b"now a file");
}

async fn a_missing_object_is_not_found_on_read_and_none_on_metadata(t: TestObjects) {
    let expected_id = format!("gs://{}/nope/0.png", t.bucket);
    for range in [ReadRange::ALL, ReadRange::from(5), ReadRange::segment(0, 0)] {
        match t
            .store
            .read(&t.bucket, "nope/0.png", range)
            .await
            .err()
            .unwrap()
        {
            Error::NotFound { kind, id } => {
                assert_eq!(
                    (kind, id.as_str()),
                    ("object", expected_id.as_str()),
                    "{range:?}"
                );
            }
            e => panic!("{range:?}: expected NotFound, got {e}"),
        }
    }
    assert_eq!(
        t.store.metadata(&t.bucket, "nope/0.png").await.unwrap(),
        None
    );
    assert!(t.store.list(&t.bucket, "nope/").await.unwrap().is_empty());
}

async fn names_with_spaces_and_symbols_round_trip(t: TestObjects) {
    let odd = [
        "dir with space/a+b=c&d?e#f%20g;h,i@j!k'l(m)n*o~p.txt",
        "unicode/éß漢字🙂.txt",
        "..dots../.hidden",
    ];
    for name in odd {
        let written = write(&t, name, name.as_bytes(), "text/plain").await;
        assert_eq!(written.name, name);
        assert_eq!(
            read(&t, name, ReadRange::ALL).await,
            name.as_bytes(),
            "{name}"
        );
        assert_eq!(
            t.store
                .metadata(&t.bucket, name)
                .await
                .unwrap()
                .map(|m| m.name),
            Some(name.to_string())
        );
    }
    let listed = t.store.list(&t.bucket, "dir with space/a+b").await.unwrap();
    assert_eq!(names(&listed), [odd[0]]);
    for name in odd {
        assert!(t.store.delete(&t.bucket, name).await.unwrap(), "{name}");
    }
}

async fn a_bucket_that_does_not_exist_is_reported(t: TestObjects) {
    let missing = tests::objects::unique_bucket();
    let e = t
        .store
        .write(
            &missing,
            "a.txt",
            b"x".to_vec().into(),
            "text/plain",
            &BTreeMap::new(),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, Error::NotFound { kind: "bucket", .. }), "{e}");
    let e = t.store.list(&missing, "").await.unwrap_err();
    assert!(matches!(e, Error::NotFound { kind: "bucket", .. }), "{e}");
    // Creating a bucket twice is fine.
    t.store.ensure_bucket(&t.bucket).await.unwrap();
}

fn uri(bucket: &str, name: &str) -> GsUri {
    GsUri {
        bucket: bucket.to_string(),
        name: name.to_string(),
    }
}

async fn a_copy_within_and_across_buckets_keeps_bytes_and_metadata(t: TestObjects) {
    // Larger than one chunk of any adapter's copy loop.
    let data = pattern(3 * MIB + 17);
    let custom = metadata(&[(JOB_ID_METADATA, "j"), ("prompt-hash", "abc")]);
    let source = t
        .store
        .write(
            &t.bucket,
            "videos/j/sample_0.mp4",
            data.clone().into(),
            "video/mp4",
            &custom,
        )
        .await
        .unwrap();
    let archive = tests::objects::unique_bucket();
    t.store.ensure_bucket(&archive).await.unwrap();

    for to in [
        uri(&t.bucket, "copies/j/sample_0.mp4"),
        uri(&archive, "videos/j/sample_0.mp4"),
    ] {
        let copy = t
            .store
            .copy(&source.uri(), &to, &BTreeMap::new())
            .await
            .unwrap();
        assert_eq!(copy.uri(), to);
        assert_eq!(copy.size, data.len() as u64, "{to}");
        assert_eq!(copy.crc32c, shared::crc::Crc32c::of(&data), "{to}");
        assert_eq!(copy.content_type, "video/mp4", "{to}");
        assert_eq!(copy.metadata, custom, "{to}");
        assert!(copy.generation > 0, "{to}: generation {}", copy.generation);
        assert_ne!(copy.generation, source.generation, "{to}");
        assert_eq!(
            t.store.metadata(&to.bucket, &to.name).await.unwrap(),
            Some(copy),
            "{to}"
        );
        let bytes = chunks(t.store.as_ref(), &to.bucket, &to.name, ReadRange::ALL).await;
        assert!(bytes.concat() == data, "{to}: the bytes differ");
    }
    // The source is untouched.
    assert_eq!(
        t.store
            .metadata(&t.bucket, "videos/j/sample_0.mp4")
            .await
            .unwrap(),
        Some(source)
    );
    assert_eq!(t.store.list(&t.bucket, "").await.unwrap().len(), 2);
}

async fn copying_what_does_not_exist_is_not_found(t: TestObjects) {
    let missing_bucket = tests::objects::unique_bucket();
    let expect = |e: Error, kind: &str, id: &str| match e {
        Error::NotFound { kind: k, id: i } => assert_eq!((k, i.as_str()), (kind, id)),
        e => panic!("expected NotFound {kind} {id}, got {e}"),
    };

    let nope = uri(&t.bucket, "nope/0.png");
    let e = t
        .store
        .copy(&nope, &uri(&t.bucket, "copy.png"), &BTreeMap::new())
        .await
        .unwrap_err();
    expect(e, "object", &nope.to_string());
    // A source in a bucket that does not exist is a missing object too.
    let nowhere = uri(&missing_bucket, "a.png");
    let e = t
        .store
        .copy(&nowhere, &uri(&t.bucket, "copy.png"), &BTreeMap::new())
        .await
        .unwrap_err();
    expect(e, "object", &nowhere.to_string());
    // A destination bucket that does not exist is a missing bucket.
    let source = write(&t, "a.png", b"a", "image/png").await;
    let e = t
        .store
        .copy(
            &source.uri(),
            &uri(&missing_bucket, "a.png"),
            &BTreeMap::new(),
        )
        .await
        .unwrap_err();
    expect(e, "bucket", &format!("gs://{missing_bucket}"));

    assert_eq!(
        names(&t.store.list(&t.bucket, "").await.unwrap()),
        ["a.png"]
    );
}

async fn a_copy_onto_an_existing_object_replaces_it(t: TestObjects) {
    let old = t
        .store
        .write(
            &t.bucket,
            "images/j/0.png",
            b"the old bytes, longer than the new".to_vec().into(),
            "image/webp",
            &metadata(&[("attempt", "1")]),
        )
        .await
        .unwrap();
    let custom = metadata(&[(JOB_ID_METADATA, "j")]);
    let new = t
        .store
        .write(
            &t.bucket,
            "staging/0.png",
            b"new bytes".to_vec().into(),
            "image/png",
            &custom,
        )
        .await
        .unwrap();

    let copy = t
        .store
        .copy(&new.uri(), &old.uri(), &BTreeMap::new())
        .await
        .unwrap();
    assert_eq!(copy.uri(), old.uri());
    assert_eq!(
        (copy.size, copy.crc32c),
        (9, shared::crc::Crc32c::of(b"new bytes"))
    );
    assert_eq!(copy.content_type, "image/png");
    assert_eq!(copy.metadata, custom);
    assert!(copy.generation > old.generation);
    assert_eq!(
        t.store.metadata(&t.bucket, "images/j/0.png").await.unwrap(),
        Some(copy)
    );
    assert_eq!(
        read(&t, "images/j/0.png", ReadRange::ALL).await,
        b"new bytes"
    );
    assert_eq!(
        names(&t.store.list(&t.bucket, "").await.unwrap()),
        ["images/j/0.png", "staging/0.png"]
    );
}

async fn a_copy_sets_the_given_metadata_over_the_source_metadata(t: TestObjects) {
    let source = t
        .store
        .write(
            &t.bucket,
            "images/j/0.png",
            b"pixels".to_vec().into(),
            "image/png",
            &metadata(&[(JOB_ID_METADATA, "j"), ("keep", "me")]),
        )
        .await
        .unwrap();
    let archive = tests::objects::unique_bucket();
    t.store.ensure_bucket(&archive).await.unwrap();
    let to = uri(&archive, "asmr/images/j/0.png");
    let extra = metadata(&[
        (JOB_ID_METADATA, "j2"),
        ("asmr-prompt", "rain on a tin roof, é"),
    ]);

    let copy = t.store.copy(&source.uri(), &to, &extra).await.unwrap();
    assert_eq!(
        copy.metadata,
        metadata(&[
            (JOB_ID_METADATA, "j2"),
            ("asmr-prompt", "rain on a tin roof, é"),
            ("keep", "me"),
        ])
    );
    assert_eq!(copy.content_type, "image/png");
    assert_eq!((copy.size, copy.crc32c), (source.size, source.crc32c));
    assert_eq!(
        t.store.metadata(&to.bucket, &to.name).await.unwrap(),
        Some(copy)
    );
    // The source keeps its own.
    assert_eq!(
        t.store.metadata(&t.bucket, "images/j/0.png").await.unwrap(),
        Some(source)
    );
}

async fn composing_concatenates_the_sources_in_order(t: TestObjects) {
    write(&t, "parts/a", b"first line\n", "text/plain").await;
    write(&t, "parts/b", b"second line\n", "text/plain").await;
    let first = t
        .store
        .compose(
            &t.bucket,
            &["parts/a"],
            "manifest.jsonl",
            "application/x-ndjson",
            0,
        )
        .await
        .unwrap()
        .expect("a manifest that does not exist yet is created at generation 0");
    assert_eq!(
        read(&t, "manifest.jsonl", ReadRange::ALL).await,
        b"first line\n"
    );
    let both = t
        .store
        .compose(
            &t.bucket,
            &["manifest.jsonl", "parts/b"],
            "manifest.jsonl",
            "application/x-ndjson",
            first.generation,
        )
        .await
        .unwrap()
        .expect("the manifest is at the generation just read");
    assert_eq!(
        read(&t, "manifest.jsonl", ReadRange::ALL).await,
        b"first line\nsecond line\n"
    );
    assert_eq!(
        (both.size, both.crc32c),
        (23, shared::crc::Crc32c::of(b"first line\nsecond line\n"))
    );
    // Cloud Storage gives every write of an object a new generation, and
    // the local adapter does too; fake-gcs-server keeps the generation of
    // an existing destination on compose, so there it only must not go back.
    if t.root.is_some() {
        assert!(both.generation > first.generation);
    } else {
        assert!(both.generation >= first.generation);
    }
    assert_eq!(
        t.store.metadata(&t.bucket, "manifest.jsonl").await.unwrap(),
        Some(both)
    );
}

macro_rules! contract {
    ($adapter:ident, $make:path) => {
        mod $adapter {
            #[tokio::test]
            async fn a_written_object_reads_back_with_its_metadata() {
                super::a_written_object_reads_back_with_its_metadata($make().await).await
            }
            #[tokio::test]
            async fn ranges_read_exactly_the_bytes_asked_for() {
                super::ranges_read_exactly_the_bytes_asked_for($make().await).await
            }
            #[tokio::test]
            async fn a_twenty_mib_object_round_trips_as_a_stream_of_chunks() {
                super::a_twenty_mib_object_round_trips_as_a_stream_of_chunks($make().await).await
            }
            #[tokio::test]
            async fn listing_by_prefix_returns_matching_objects_in_name_order() {
                super::listing_by_prefix_returns_matching_objects_in_name_order($make().await).await
            }
            #[tokio::test]
            async fn an_overwrite_changes_the_generation_and_the_content() {
                super::an_overwrite_changes_the_generation_and_the_content($make().await).await
            }
            #[tokio::test]
            async fn delete_returns_true_then_false_and_the_object_is_gone() {
                super::delete_returns_true_then_false_and_the_object_is_gone($make().await).await
            }
            #[tokio::test]
            async fn a_missing_object_is_not_found_on_read_and_none_on_metadata() {
                super::a_missing_object_is_not_found_on_read_and_none_on_metadata($make().await)
                    .await
            }
            #[tokio::test]
            async fn names_with_spaces_and_symbols_round_trip() {
                super::names_with_spaces_and_symbols_round_trip($make().await).await
            }
            #[tokio::test]
            async fn a_bucket_that_does_not_exist_is_reported() {
                super::a_bucket_that_does_not_exist_is_reported($make().await).await
            }
            #[tokio::test]
            async fn a_copy_within_and_across_buckets_keeps_bytes_and_metadata() {
                super::a_copy_within_and_across_buckets_keeps_bytes_and_metadata($make().await)
                    .await
            }
            #[tokio::test]
            async fn copying_what_does_not_exist_is_not_found() {
                super::copying_what_does_not_exist_is_not_found($make().await).await
            }
            #[tokio::test]
            async fn a_copy_onto_an_existing_object_replaces_it() {
                super::a_copy_onto_an_existing_object_replaces_it($make().await).await
            }
            #[tokio::test]
            async fn a_copy_sets_the_given_metadata_over_the_source_metadata() {
                super::a_copy_sets_the_given_metadata_over_the_source_metadata($make().await).await
            }
            #[tokio::test]
            async fn composing_concatenates_the_sources_in_order() {
                super::composing_concatenates_the_sources_in_order($make().await).await
            }
        }
    };
}

contract!(local, tests::objects::local);
#[cfg(feature = "emulators")]
contract!(gcs, tests::objects::gcs);

/// What only the local adapter has to defend: names are paths there.
mod local_only {
    use super::*;
    use shared::objects::local::LocalObjectStore;
    use std::path::Path;

    /// Every path under `dir`, relative to it, sorted.
    fn tree(dir: &Path) -> Vec<String> {
        let mut found = Vec::new();
        let mut pending = vec![dir.to_path_buf()];
        while let Some(d) = pending.pop() {
            for entry in std::fs::read_dir(&d).unwrap() {
                let path = entry.unwrap().path();
                found.push(path.strip_prefix(dir).unwrap().display().to_string());
                if path.is_dir() {
                    pending.push(path);
                }
            }
        }
        found.sort();
        found
    }

    #[tokio::test]
    async fn hostile_names_are_refused_and_nothing_lands_outside_the_bucket() {
        let outer = tempfile::tempdir().unwrap();
        let store = LocalObjectStore::new(outer.path().join("root"));
        store.ensure_bucket("out").await.unwrap();
        let before = tree(outer.path());
        assert_eq!(before, ["root", "root/.meta", "root/.meta/out", "root/out"]);

        let long = "a".repeat(2000);
        let hostile = [
            "../x",
            "/etc/passwd",
            "a/../../b",
            "a\\b",
            "a\0b",
            "./a",
            "a//b",
            "a/",
            "",
            long.as_str(),
        ];
        let check = |name: &str, result: Result<(), Error>| match result {
            Err(Error::Objects {
                retryable: false, ..
            }) => {}
            other => panic!("{name:?}: expected a permanent refusal, got {other:?}"),
        };
        for name in hostile {
            let data = b"evil".to_vec().into();
            check(
                name,
                store
                    .write("out", name, data, "text/plain", &BTreeMap::new())
                    .await
                    .map(drop),
            );
            check(
                name,
                store.read("out", name, ReadRange::ALL).await.map(drop),
            );
            check(name, store.metadata("out", name).await.map(drop));
            check(name, store.delete("out", name).await.map(drop));
            let (hostile, plain) = (uri("out", name), uri("out", "plain.txt"));
            check(
                name,
                store
                    .copy(&hostile, &plain, &BTreeMap::new())
                    .await
                    .map(drop),
            );
            check(
                name,
                store
                    .copy(&plain, &hostile, &BTreeMap::new())
                    .await
                    .map(drop),
            );
        }
        for bucket in ["..", ".meta", "../out", "/tmp", "Out", ""] {
            let data = b"evil".to_vec().into();
            check(
                bucket,
                store
                    .write(bucket, "a", data, "text/plain", &BTreeMap::new())
                    .await
                    .map(drop),
            );
            check(bucket, store.ensure_bucket(bucket).await);
            check(bucket, store.list(bucket, "").await.map(drop));
            let (hostile, plain) = (uri(bucket, "a"), uri("out", "a"));
            check(
                bucket,
                store
                    .copy(&hostile, &plain, &BTreeMap::new())
                    .await
                    .map(drop),
            );
            check(
                bucket,
                store
                    .copy(&plain, &hostile, &BTreeMap::new())
                    .await
                    .map(drop),
            );
        }
        assert_eq!(tree(outer.path()), before, "something was created");
    }

    #[tokio::test]
    async fn objects_are_plain_files_and_sidecars_stay_out_of_the_bucket() {
        let root = tempfile::tempdir().unwrap();
        let store = LocalObjectStore::new(root.path().to_path_buf());
        store.ensure_bucket("out").await.unwrap();
        store
            .write(
                "out",
                "images/j/0.png",
                b"png bytes".to_vec().into(),
                "image/png",
                &metadata(&[(JOB_ID_METADATA, "j")]),
            )
            .await
            .unwrap();
        assert_eq!(
            std::fs::read(root.path().join("out/images/j/0.png")).unwrap(),
            b"png bytes"
        );
        assert_eq!(
            tree(&root.path().join("out")),
            ["images", "images/j", "images/j/0.png"]
        );
        let sidecar: serde_json::Value = serde_json::from_slice(
            &std::fs::read(root.path().join(".meta/out/images/j/0.png.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(sidecar["content_type"], "image/png");
        assert_eq!(sidecar["metadata"][JOB_ID_METADATA], "j");
    }
}

/// What only the Cloud Storage adapter has to show: listings follow page
/// tokens.
#[cfg(feature = "emulators")]
mod gcs_only {
    use super::*;

    #[tokio::test]
    async fn listing_follows_page_tokens() {
        let store = tests::objects::gcs_store().await.with_list_page_size(2);
        let bucket = tests::objects::unique_bucket();
        store.ensure_bucket(&bucket).await.unwrap();
        for i in (0..5).rev() {
            store
                .write(
                    &bucket,
                    &format!("p/{i}"),
                    vec![i].into(),
                    "text/plain",
                    &BTreeMap::new(),
                )
                .await
                .unwrap();
        }
        store
            .write(
                &bucket,
                "q/0",
                b"q".to_vec().into(),
                "text/plain",
                &BTreeMap::new(),
            )
            .await
            .unwrap();
        let listed = store.list(&bucket, "p/").await.unwrap();
        assert_eq!(names(&listed), ["p/0", "p/1", "p/2", "p/3", "p/4"]);
    }
}
