//! Black-box tests of the `asmr` binary: each test runs the real executable
//! against a fresh store and checks stdout, stderr and the exit code. Setup
//! the CLI cannot do (failing a job, claiming one, adding a download) goes
//! through `shared::store::Store` on the same store.
//!
//! Every test body runs on the embedded backend; with the `emulators` feature
//! the same bodies also run on Firestore (FIRESTORE_EMULATOR_HOST must be set,
//! GOOGLE_CLOUD_PROJECT defaults to `asmr-test`), each test under its own
//! collection prefix.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;
use shared::domain::Lease;
use shared::domain::destination::Target;
use shared::domain::download::{DownloadStatus, FileType, NewDownload};
use shared::domain::values::{DeliveredOutput, FILTERED, JobError};
use shared::store::Claim;
use shared::store::rejected::{Rejected, RejectedSource};
use shared::store::{Store, StoreConfig};
use shared::time::Timestamp;
use std::collections::BTreeSet;
use std::future::Future;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// Instantiates each test body once per backend.
macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(#[test]
            fn $name() {
                super::$name(&super::Env::embedded());
            })*
        }

        #[cfg(feature = "emulators")]
        mod firestore {
            $(#[test]
            fn $name() {
                super::$name(&super::Env::firestore());
            })*
        }
    };
}

on_every_backend!(
    add_prints_only_the_job_id,
    adding_the_same_request_id_twice_prints_the_same_id,
    add_sets_kind_priority_params_and_dry_run,
    add_file_adds_valid_lines_and_reports_invalid_ones_by_line_number,
    add_file_prints_ids_in_line_order,
    add_file_that_cannot_be_read_fails,
    bad_input_is_one_clear_error_with_exit_code_1,
    stats_json_has_the_exact_shape_and_counts,
    stats_prints_aligned_tables,
    list_filters_by_status_and_kind,
    list_json_is_an_array_of_job_documents,
    list_stops_at_the_limit_and_says_there_are_more,
    list_shows_prompts_on_one_line,
    show_json_has_status_and_error_at_the_top_level,
    show_prints_key_value_lines,
    show_of_an_unknown_id_is_a_one_line_error,
    cancelling_twice_is_a_clear_error,
    retry_of_one_job_requeues_it,
    retry_failed_requeues_failed_jobs_and_refuses_filtered_ones,
    reset_with_nothing_stuck_says_so,
    reset_requeues_a_stuck_job,
    the_first_stderr_line_names_the_backend,
    downloads_with_none_says_so,
    downloads_json_is_an_array_of_the_records_in_copy_order,
    downloads_filters_by_status,
    downloads_table_shows_progress_sizes_and_errors,
    downloads_stops_at_the_limit_and_says_there_are_more,
    retry_download_requeues_a_failed_download,
    retry_download_refuses_what_is_not_failed,
    stats_counts_downloads_per_status,
    add_queues_jobs_on_pubsub_only_with_firestore,
    rejected_with_none_says_so,
    rejected_lists_refused_requests_newest_first_with_the_reason,
    approve_and_reject_mark_only_finished_images_and_name_each_refused_job,
    promote_makes_one_video_per_image_linked_both_ways_and_again_makes_another,
    promote_dry_run_prints_the_cost_and_creates_nothing,
    promote_approved_promotes_exactly_the_approved_images,
    promoting_a_failed_image_a_video_or_a_missing_id_creates_nothing_and_says_why,
    report_embeds_exactly_the_selected_jobs_and_prints_its_path,
    manifest_rebuilds_one_line_per_delivered_file,
);

// ---- harness ----

/// The environment variables the CLI reads for its configuration. Each run
/// starts without them, so the developer's shell cannot leak into a test.
const CONFIG_VARS: [&str; 8] = [
    "ASMR_BACKEND",
    "ASMR_STATE_DIR",
    "GOOGLE_CLOUD_PROJECT",
    "ASMR_COLLECTION_PREFIX",
    "FIRESTORE_DATABASE",
    "DRY_RUN",
    "ASMR_TOPIC_PREFIX",
    "PUBSUB_EMULATOR_HOST",
];

/// One isolated store and a scratch directory.
struct Env {
    dir: tempfile::TempDir,
    vars: Vec<(&'static str, String)>,
    config: StoreConfig,
    /// How the first line of stderr starts.
    banner: &'static str,
    /// The prefix of the Pub/Sub topics `asmr add` publishes to (firestore).
    topic_prefix: Option<String>,
    runtime: tokio::runtime::Runtime,
}

impl Env {
    fn new(
        vars: Vec<(&'static str, String)>,
        config: StoreConfig,
        banner: &'static str,
        dir: tempfile::TempDir,
    ) -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        Self {
            dir,
            vars,
            config,
            banner,
            topic_prefix: None,
            runtime,
        }
    }

    fn embedded() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let state_dir = dir.path().join("state");
        let vars = vec![
            ("ASMR_BACKEND", "embedded".to_string()),
            ("ASMR_STATE_DIR", state_dir.display().to_string()),
        ];
        Self::new(
            vars,
            StoreConfig::Embedded { state_dir },
            "asmr: backend embedded",
            dir,
        )
    }

    #[cfg(feature = "emulators")]
    fn firestore() -> Self {
        let host = std::env::var("FIRESTORE_EMULATOR_HOST").expect(
            "the emulators feature is on but FIRESTORE_EMULATOR_HOST is not set: start the Firestore emulator (tests/run does)",
        );
        let pubsub = std::env::var("PUBSUB_EMULATOR_HOST").expect(
            "the emulators feature is on but PUBSUB_EMULATOR_HOST is not set: start the Pub/Sub emulator (tests/run does)",
        );
        let project = std::env::var("GOOGLE_CLOUD_PROJECT").unwrap_or_else(|_| "asmr-test".into());
        let prefix = format!("cli{}_", uuid::Uuid::new_v4().simple());
        let vars = vec![
            ("ASMR_BACKEND", "firestore".to_string()),
            ("GOOGLE_CLOUD_PROJECT", project.clone()),
            ("ASMR_COLLECTION_PREFIX", prefix.clone()),
            ("FIRESTORE_EMULATOR_HOST", host),
            ("PUBSUB_EMULATOR_HOST", pubsub.clone()),
            ("ASMR_TOPIC_PREFIX", prefix.clone()),
        ];
        let config = StoreConfig::Firestore(shared::store::firestore::FirestoreConfig {
            project: project.clone(),
            database: "(default)".into(),
            prefix: prefix.clone(),
        });
        let mut env = Self::new(
            vars,
            config,
            "asmr: backend firestore",
            tempfile::tempdir().unwrap(),
        );
        // `asmr add` publishes every new job to its kind's topic.
        env.runtime.block_on(async {
            use shared::bus::Bus;
            let bus = shared::bus::pubsub::PubSubBus::new(shared::bus::pubsub::PubSubConfig {
                project,
                emulator_endpoint: Some(pubsub),
            })
            .await
            .unwrap();
            for topic in shared::bus::Topics::new(prefix.clone()).all() {
                bus.ensure_topic(&topic).await.unwrap();
            }
        });
        env.topic_prefix = Some(prefix);
        env
    }

    /// Runs `asmr ARGS`.
    fn asmr(&self, args: &[&str]) -> Run {
        self.asmr_with(args, &[])
    }

    /// Runs `asmr ARGS` with extra environment variables.
    fn asmr_with(&self, args: &[&str], vars: &[(&str, &str)]) -> Run {
        let mut command = Command::new(env!("CARGO_BIN_EXE_asmr"));
        command.args(args).current_dir(self.dir.path());
        for var in CONFIG_VARS {
            command.env_remove(var);
        }
        command.envs(self.vars.iter().map(|(k, v)| (*k, v.as_str())));
        command.envs(vars.iter().copied());
        let output = command.output().unwrap();
        Run {
            command: format!("asmr {}", args.join(" ")),
            code: output.status.code(),
            stdout: String::from_utf8(output.stdout).unwrap(),
            stderr: String::from_utf8(output.stderr).unwrap(),
            banner: self.banner,
        }
    }

    /// Adds one image job and returns its id.
    fn add(&self, prompt: &str) -> String {
        self.asmr(&["add", "--kind", "image", "--prompt", prompt])
            .ok()
            .id()
    }

    /// Writes a file in the scratch directory.
    fn write(&self, name: &str, contents: &[u8]) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    /// Runs `f` on the store the CLI uses.
    fn store<T, F: Future<Output = T>>(&self, f: impl FnOnce(Store) -> F) -> T {
        self.runtime.block_on(async {
            let store = Store::open(&self.config).await.unwrap();
            f(store).await
        })
    }

    fn fail(&self, id: &str, code: &str) {
        let id = id.to_string();
        let error = JobError::new(code, format!("{code} in a test"), false);
        self.store(|store| async move { store.fail_job(&id, None, error).await.unwrap() });
    }

    fn claim(&self, id: &str) {
        let id = id.to_string();
        let lease = Lease::new("test-worker", Duration::from_secs(600));
        self.store(|store| async move { store.claim_job(&id, &lease).await.unwrap() });
    }

    /// Adds a download of `gs://out/{object}` for `job_id` and returns its id.
    /// Downloads of equal priority copy oldest first, so each gets its own
    /// microsecond.
    fn download(&self, job_id: &str, object: &str, priority: i64, size: Option<u64>) -> String {
        let file_type = match object.split('/').next() {
            Some("images") => FileType::Image,
            Some("videos") => FileType::Video,
            _ => FileType::Other,
        };
        let new = NewDownload {
            job_id: job_id.into(),
            bucket: "out".into(),
            object: object.into(),
            generation: Some(1),
            destination: Target::File(format!("/tmp/{object}").into()),
            file_type,
            priority,
            size,
            crc32c: None,
            tenant: Default::default(),
        };
        let created = self.store(|store| async move { store.create_download(new).await.unwrap() });
        assert!(created.created, "{object} was added twice");
        std::thread::sleep(Duration::from_millis(2));
        created.record.id().to_string()
    }

    /// Starts a copy of the download (one attempt), as the copier would.
    fn claim_download(&self, id: &str) {
        let id = id.to_string();
        self.store(|store| async move {
            let claim = store.claim_download(&id, &copier()).await.unwrap();
            assert!(matches!(claim, Claim::Claimed(_)), "{claim:?}");
        });
    }

    /// Records that a claimed download has `bytes` at the destination.
    fn download_progress(&self, id: &str, bytes: u64) {
        let id = id.to_string();
        self.store(|store| async move {
            store
                .download_progress(&id, &copier(), bytes)
                .await
                .unwrap()
        });
    }

    /// Finishes a claimed download.
    fn complete_download(&self, id: &str, bytes: u64) {
        let id = id.to_string();
        self.store(|store| async move {
            store
                .complete_download(&id, &copier().owner, bytes)
                .await
                .unwrap()
        });
    }

    /// Claims the download and fails it for good with error `code`.
    fn fail_download(&self, id: &str, code: &str) {
        self.claim_download(id);
        let id = id.to_string();
        let error = JobError::new(code, format!("{code} in a test"), false);
        let failed = self.store(|store| async move {
            store
                .fail_download(&id, &copier().owner, error)
                .await
                .unwrap()
        });
        assert_eq!(failed.status(), DownloadStatus::Failed);
    }

    /// The download record as the store has it, as JSON.
    fn download_record(&self, id: &str) -> Value {
        let id = id.to_string();
        let download = self.store(|store| async move { store.download(&id).await.unwrap() });
        serde_json::to_value(download).unwrap()
    }

    /// `asmr downloads --json ARGS`.
    fn downloads(&self, args: &[&str]) -> Vec<Value> {
        let mut full = vec!["downloads", "--json"];
        full.extend_from_slice(args);
        match self.asmr(&full).ok().json() {
            Value::Array(downloads) => downloads,
            other => panic!("not a JSON array: {other}"),
        }
    }

    /// Adds one image job and completes it, as the generator would, with
    /// its image at `gs://out/images/{id}/0.png`.
    fn completed_image(&self, prompt: &str) -> String {
        let id = self.add(prompt);
        self.complete(&id);
        id
    }

    /// Claims the job and completes it with one output in bucket `out`.
    fn complete(&self, id: &str) {
        self.claim(id);
        let kind = self.job(id)["kind"].as_str().unwrap().to_string();
        let output = match kind.as_str() {
            "image" => format!("gs://out/images/{id}/0.png"),
            _ => format!("gs://out/videos/{id}/1/sample_0.mp4"),
        };
        let id = id.to_string();
        self.store(|store| async move {
            store
                .complete_job(&id, "test-worker", vec![output.parse().unwrap()])
                .await
                .unwrap()
        });
    }

    /// Delivers every output of a completed job into `folder`, as the
    /// downloader would: a completed download record with its CRC32C, then
    /// the delivery on the job. Returns the paths relative to `folder`.
    fn deliver(&self, id: &str, folder: &std::path::Path) -> Vec<String> {
        let outputs: Vec<String> = self.job(id)["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o.as_str().unwrap().to_string())
            .collect();
        let mut paths = Vec::new();
        for output in outputs {
            let object = output.strip_prefix("gs://out/").unwrap().to_string();
            let destination = folder.join(&object);
            let new = NewDownload {
                job_id: id.into(),
                bucket: "out".into(),
                object: object.clone(),
                generation: Some(1),
                destination: Target::File(destination.clone()),
                file_type: FileType::Image,
                priority: 0,
                size: Some(5),
                crc32c: Some(shared::crc::Crc32c(0)),
                tenant: Default::default(),
            };
            let download = self.store(|store| async move {
                store
                    .create_download(new)
                    .await
                    .unwrap()
                    .record
                    .id()
                    .to_string()
            });
            self.claim_download(&download);
            self.complete_download(&download, 5);
            let delivery = DeliveredOutput {
                source: output.parse().unwrap(),
                destination: Target::File(destination.clone()),
            };
            let job = id.to_string();
            self.store(|store| async move { store.record_delivery(&job, delivery).await.unwrap() });
            paths.push(object);
        }
        paths
    }

    /// Every job id in the store.
    fn all_ids(&self) -> Vec<String> {
        let jobs = self
            .asmr(&["list", "--json", "--limit", "1000"])
            .ok()
            .json();
        ids_of(jobs.as_array().unwrap())
            .into_iter()
            .map(str::to_string)
            .collect()
    }

    fn stats(&self) -> Value {
        self.asmr(&["stats", "--json"]).ok().json()
    }

    fn job(&self, id: &str) -> Value {
        self.asmr(&["show", id, "--json"]).ok().json()
    }
}

/// The lease of the copier the download tests pretend to be.
fn copier() -> Lease {
    Lease::new("test-copier", Duration::from_secs(600))
}

/// The `id`s of JSON records.
fn ids_of(records: &[Value]) -> Vec<&str> {
    records
        .iter()
        .map(|record| record["id"].as_str().unwrap())
        .collect()
}

/// The cell of a table row that starts at character `at` (the start of its
/// column in the header): up to the next two spaces.
fn cell_at(row: &str, at: usize) -> String {
    let rest: String = row.chars().skip(at).collect();
    match rest.find("  ") {
        Some(end) => rest[..end].to_string(),
        None => rest,
    }
}

/// What one run of the binary did.
struct Run {
    command: String,
    code: Option<i32>,
    stdout: String,
    stderr: String,
    banner: &'static str,
}

impl Run {
    fn context(&self) -> String {
        format!(
            "{} exited with {:?}\n--- stdout\n{}--- stderr\n{}",
            self.command, self.code, self.stdout, self.stderr
        )
    }

    /// Asserts exit code 0.
    fn ok(self) -> Self {
        assert_eq!(self.code, Some(0), "{}", self.context());
        self.check_banner();
        self
    }

    /// Asserts exit code 1 with no panic.
    fn failed(self) -> Self {
        assert_eq!(self.code, Some(1), "{}", self.context());
        assert!(!self.stderr.contains("panicked"), "{}", self.context());
        self
    }

    fn check_banner(&self) {
        let first = self.stderr.lines().next().unwrap_or_default();
        assert!(
            first.starts_with(self.banner),
            "first stderr line should name the backend\n{}",
            self.context()
        );
    }

    /// The stderr lines after the backend line.
    fn messages(&self) -> Vec<&str> {
        self.check_banner();
        self.stderr.lines().skip(1).collect()
    }

    /// The one error line of a failed run, with nothing on stdout.
    fn error(&self) -> &str {
        let messages = self.messages();
        assert_eq!(
            messages.len(),
            1,
            "expected one error line\n{}",
            self.context()
        );
        assert!(messages[0].starts_with("error: "), "{}", self.context());
        assert_eq!(self.stdout, "", "{}", self.context());
        messages[0]
    }

    /// The ids printed on stdout, one per line.
    fn ids(&self) -> Vec<String> {
        let ids: Vec<String> = self.stdout.lines().map(str::to_string).collect();
        for id in &ids {
            assert!(
                id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
                "{id:?} is not a job id\n{}",
                self.context()
            );
        }
        ids
    }

    /// The single id printed on stdout.
    fn id(&self) -> String {
        let ids = self.ids();
        assert_eq!(ids.len(), 1, "expected exactly one id\n{}", self.context());
        ids.into_iter().next().unwrap()
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON: {e}\n{}", self.context()))
    }
}

// ---- add ----

fn add_prints_only_the_job_id(env: &Env) {
    let run = env
        .asmr(&[
            "add",
            "--prompt",
            "soft rain on a tin roof",
            "--kind",
            "image",
        ])
        .ok();
    let id = run.id();
    assert_eq!(run.stdout, format!("{id}\n"));
    assert!(
        run.stderr
            .contains(&format!("added image job {id} (dry run)")),
        "{}",
        run.context()
    );
    assert_eq!(env.job(&id)["prompt"], "soft rain on a tin roof");
}

fn adding_the_same_request_id_twice_prints_the_same_id(env: &Env) {
    let args = [
        "add",
        "--prompt",
        "whispering",
        "--kind",
        "video",
        "--request-id",
        "req-1",
    ];
    let first = env.asmr(&args).ok();
    let second = env.asmr(&args).ok();
    assert_eq!(first.id(), second.id());
    assert!(
        !first.stderr.contains("already existed"),
        "{}",
        first.context()
    );
    assert!(
        second.stderr.contains("already existed"),
        "{}",
        second.context()
    );
    assert_eq!(env.stats()["jobs"]["total"], 1);
}

fn add_sets_kind_priority_params_and_dry_run(env: &Env) {
    let id = env
        .asmr(&[
            "add",
            "--prompt",
            "ocean",
            "--kind",
            "VIDEO_PROD",
            "--priority",
            "-3",
            "--param",
            "aspect_ratio=9:16",
            "--param",
            "duration_seconds=6",
            "--dry-run",
            "false",
        ])
        .ok()
        .id();
    let job = env.job(&id);
    assert_eq!(job["kind"], "video");
    assert_eq!(job["priority"], -3);
    assert_eq!(
        job["params"],
        serde_json::json!({"aspect_ratio": "9:16", "duration_seconds": 6})
    );
    assert_eq!(job["dry_run"], false);

    let id = env
        .asmr(&["add", "--prompt", "sand", "--kind", "IMAGE_TEST"])
        .ok()
        .id();
    assert_eq!(env.job(&id)["kind"], "image");
    assert_eq!(env.job(&id)["dry_run"], true, "dry run is the default");

    let id = env
        .asmr_with(
            &["add", "--prompt", "wind", "--kind", "image"],
            &[("DRY_RUN", "false")],
        )
        .ok()
        .id();
    assert_eq!(env.job(&id)["dry_run"], false, "DRY_RUN=false turns it off");
}

fn add_file_adds_valid_lines_and_reports_invalid_ones_by_line_number(env: &Env) {
    let too_long = "a".repeat(4001);
    let contents = format!(
        "# ASMR prompts\n\
         soft rain on a tin roof\n\
         \n\
         bad \u{7} bell\n\
         \x20  # an indented comment\n\
         \x20 crackling fire  \n\
         {too_long}\n\
         \n\
         pages turning\n"
    );
    let file = env.write("prompts.txt", contents.as_bytes());
    let run = env
        .asmr(&["add", "--file", file.to_str().unwrap(), "--kind", "image"])
        .ok();
    let ids = run.ids();
    assert_eq!(ids.len(), 3, "{}", run.context());
    let prompts: Vec<Value> = ids.iter().map(|id| env.job(id)["prompt"].clone()).collect();
    assert_eq!(
        prompts,
        ["soft rain on a tin roof", "crackling fire", "pages turning"]
    );

    let messages = run.messages();
    assert!(
        messages[0].starts_with("line 4: prompt: contains the control character U+0007"),
        "{}",
        run.context()
    );
    assert_eq!(
        messages[1],
        "line 7: prompt: is 4001 characters long; the limit is 4000"
    );
    assert_eq!(
        messages.last().copied(),
        Some("added 3 jobs, skipped 2 invalid lines")
    );
    assert_eq!(messages.len(), 3, "{}", run.context());
}

fn add_file_prints_ids_in_line_order(env: &Env) {
    // Enough lines to run many creates at once and to pass the progress-bar
    // threshold (the bar hides itself: stderr is not a terminal here).
    let contents: String = (0..150).map(|i| format!("prompt number {i}\n")).collect();
    let file = env.write("many.txt", contents.as_bytes());
    let run = env
        .asmr(&[
            "add",
            "--file",
            file.to_str().unwrap(),
            "--kind",
            "video",
            "--priority",
            "2",
        ])
        .ok();
    let ids = run.ids();
    assert_eq!(ids.len(), 150);
    assert_eq!(run.messages(), ["added 150 jobs, skipped 0 invalid lines"]);

    let listed = env.asmr(&["list", "--json", "--limit", "1000"]).ok().json();
    let prompt_of: std::collections::HashMap<&str, &str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|job| (job["id"].as_str().unwrap(), job["prompt"].as_str().unwrap()))
        .collect();
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(
            prompt_of[id.as_str()],
            format!("prompt number {i}"),
            "id of line {}",
            i + 1
        );
    }
}

fn add_file_that_cannot_be_read_fails(env: &Env) {
    let run = env
        .asmr(&["add", "--file", "missing.txt", "--kind", "image"])
        .failed();
    let error = run.error();
    assert!(
        error.starts_with("error: reading missing.txt: "),
        "{}",
        run.context()
    );
}

fn bad_input_is_one_clear_error_with_exit_code_1(env: &Env) {
    let check = |args: &[&str], expected: &str| {
        let run = env.asmr(args).failed();
        assert_eq!(
            run.error(),
            format!("error: {expected}"),
            "{}",
            run.context()
        );
    };
    let add = |extra: &[&str], expected: &str| {
        let mut args = vec!["add", "--prompt", "rain", "--kind", "image"];
        args.extend_from_slice(extra);
        check(&args, expected);
    };
    check(
        &["add", "--prompt", "rain", "--kind", "gif"],
        r#"invalid input: kind: "gif" is not a job kind; use image or video"#,
    );
    check(
        &["add", "--prompt", "   ", "--kind", "image"],
        "invalid input: prompt: is empty",
    );
    add(
        &["--param", "seed=abc"],
        r#"invalid input: params.seed: "abc" is not a whole number"#,
    );
    add(
        &["--param", "duration_seconds=8"],
        "invalid input: params.duration_seconds: applies to video jobs only",
    );
    add(
        &["--param", "seed"],
        r#"--param "seed" is not KEY=VALUE (known keys: aspect_ratio, sample_count, duration_seconds, negative_prompt, seed, generate_audio, resolution, model)"#,
    );
    add(
        &["--param", "colour=red"],
        r#"invalid input: params: unknown parameter "colour"; known are aspect_ratio, sample_count, duration_seconds, negative_prompt, seed, generate_audio, resolution, model"#,
    );
    check(
        &["list", "--status", "done"],
        r#"invalid input: status: "done" is not a job status; use one of pending, processing, generating, completed, delivered, failed, cancelled"#,
    );
    check(
        &["list", "--kind", "audio"],
        r#"invalid input: kind: "audio" is not a job kind; use image or video"#,
    );

    assert_eq!(env.stats()["jobs"]["total"], 0, "nothing was added");
}

// ---- stats ----

fn stats_json_has_the_exact_shape_and_counts(env: &Env) {
    let empty = env.asmr(&["stats", "--json"]).ok();
    assert_stats_json(
        &empty.stdout,
        r#"{"pending": 0, "processing": 0, "generating": 0, "completed": 0, "delivered": 0, "failed": 0, "cancelled": 0, "total": 0}"#,
        r#"{"pending": 0, "downloading": 0, "completed": 0, "failed": 0, "total": 0}"#,
    );
    let stats: serde_json::Value = serde_json::from_str(&empty.stdout).unwrap();
    assert_eq!(
        stats["activity"]["oldest_pending_age_s"],
        serde_json::Value::Null
    );
    assert_eq!(
        stats["activity"]["model_call_success_rate"],
        serde_json::Value::Null
    );

    let a = env.add("a");
    let b = env.add("b");
    let c = env.add("c");
    let d = env
        .asmr(&["add", "--prompt", "d", "--kind", "video"])
        .ok()
        .id();
    let _e = env.add("e");
    env.asmr(&["cancel", &a]).ok();
    env.asmr(&["retry", &a]).ok(); // pending again
    env.asmr(&["cancel", &b]).ok();
    env.fail(&c, "model_error");
    env.claim(&d);
    env.store(|store| async move {
        store
            .create_download(NewDownload {
                job_id: d,
                bucket: "out".into(),
                object: "videos/d/0.mp4".into(),
                generation: Some(1),
                destination: Target::File("/tmp/d.mp4".into()),
                file_type: FileType::Video,
                priority: 0,
                size: None,
                crc32c: None,
                tenant: Default::default(),
            })
            .await
            .unwrap()
    });

    let run = env.asmr(&["stats", "--json"]).ok();
    assert_stats_json(
        &run.stdout,
        r#"{"pending": 2, "processing": 1, "generating": 0, "completed": 0, "delivered": 0, "failed": 1, "cancelled": 1, "total": 5}"#,
        r#"{"pending": 1, "downloading": 0, "completed": 0, "failed": 0, "total": 1}"#,
    );
    let stats: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let activity = &stats["activity"];
    assert_eq!(activity["last_hour"]["created"], 5, "{activity}");
    assert_eq!(activity["last_hour"]["failed"], 1, "{activity}");
    assert_eq!(activity["failures"], serde_json::json!({"model_error": 1}));
    assert_eq!(
        activity["model_call_success_rate"], 0.0,
        "one call ended, in failure"
    );
    assert_eq!(
        activity["per_minute"]["created"].as_array().unwrap().len(),
        60
    );
    assert!(activity["oldest_pending_age_s"].as_u64().unwrap() < 120);
    assert_eq!(stats.get("jobs_by_tenant"), None, "a view of one tenant");
    let everyone = env.asmr(&["stats", "--json", "--all-tenants"]).ok();
    let everyone: serde_json::Value = serde_json::from_str(&everyone.stdout).unwrap();
    assert_eq!(everyone["jobs_by_tenant"]["default"], stats["jobs"]);
    assert_eq!(stats["jobs_by_kind"]["video"]["processing"], 1);
}

/// `asmr stats --json` of one tenant: its members in order, the jobs and downloads rows
/// as given, no job waiting and nothing spent today.
fn assert_stats_json(stdout: &str, jobs: &str, downloads: &str) {
    let members = [
        "jobs",
        "waiting",
        "jobs_by_kind",
        "downloads",
        "rejected",
        "budget",
        "activity",
    ];
    let at: Vec<usize> = members
        .iter()
        .map(|m| {
            stdout
                .find(&format!("\"{m}\": "))
                .unwrap_or_else(|| panic!("no {m}: {stdout}"))
        })
        .collect();
    assert!(
        at.windows(2).all(|w| w[0] < w[1]),
        "members out of order: {stdout}"
    );
    assert!(stdout.starts_with(&format!(r#"{{"jobs": {jobs}, "waiting": {{"budget_exhausted": 0, "misconfigured": 0, "quota_exhausted": 0, "storage_unavailable": 0}}, "#)), "{stdout}");
    assert!(
        stdout.contains(&format!(r#""downloads": {downloads}, "#)),
        "{stdout}"
    );
    assert!(stdout.contains(&no_budget_json()), "{stdout}");
}

/// The `budget` member of `asmr stats --json` when nothing was spent today.
fn no_budget_json() -> String {
    let today = shared::store::budget::budget_day_of(Timestamp::now());
    format!(
        r#""budget": {{"day": "{today}", "reserved_usd": 0.0, "spent_usd": 0.0, "budget_usd": null, "waiting_jobs": 0}}"#
    )
}

fn stats_prints_aligned_tables(env: &Env) {
    env.add("a");
    env.add("b");
    let v = env
        .asmr(&["add", "--prompt", "v", "--kind", "video"])
        .ok()
        .id();
    env.asmr(&["cancel", &v]).ok();
    let run = env.asmr(&["stats"]).ok();
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines[0], "jobs        image  video  total");
    assert_eq!(lines[1], "pending         2      0      2");
    assert_eq!(lines[7], "cancelled       0      1      1");
    assert_eq!(lines[8], "total           2      1      3");
    assert_eq!(lines[9], "");
    assert_eq!(
        &lines[10..15],
        [
            "pending, waiting on  jobs",
            "budget_exhausted        0",
            "misconfigured           0",
            "quota_exhausted         0",
            "storage_unavailable     0",
        ]
    );
    assert_eq!(lines[15], "");
    assert_eq!(lines[16], "downloads    count");
    assert_eq!(lines[17], "pending          0");
    assert_eq!(lines[21], "total            0");
    assert_eq!(lines[22], "");
    let today = shared::store::budget::budget_day_of(Timestamp::now());
    assert_eq!(
        &lines[23..29],
        [
            format!("budget (UTC {today})       usd"),
            "reserved                    $0.00".to_string(),
            "spent                       $0.00".to_string(),
            "budget                   no limit".to_string(),
            "jobs waiting                    0".to_string(),
            String::new(),
        ]
    );
    assert_eq!(lines[29], "last hour                      count");
    assert_eq!(lines[30], "jobs created                       3");
    let oldest = lines.last().unwrap();
    assert!(
        oldest.starts_with("oldest pending job") && oldest.ends_with(" s"),
        "{oldest}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("model calls that made outputs") && l.ends_with('-'))
    );
}

// ---- list and show ----

fn list_filters_by_status_and_kind(env: &Env) {
    let image = env.add("image one");
    let cancelled = env.add("image two");
    let video = env
        .asmr(&["add", "--prompt", "video one", "--kind", "video"])
        .ok()
        .id();
    env.asmr(&["cancel", &cancelled]).ok();

    let ids_of = |args: &[&str]| -> Vec<String> {
        let mut full = vec!["list", "--json"];
        full.extend_from_slice(args);
        let listed = env.asmr(&full).ok().json();
        listed
            .as_array()
            .unwrap()
            .iter()
            .map(|job| job["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        ids_of(&[]),
        [video.clone(), cancelled.clone(), image.clone()],
        "newest first"
    );
    assert_eq!(
        ids_of(&["--status", "pending"]),
        [video.clone(), image.clone()]
    );
    assert_eq!(
        ids_of(&["--kind", "image"]),
        [cancelled.clone(), image.clone()]
    );
    assert_eq!(
        ids_of(&["--kind", "image", "--status", "cancelled"]),
        [cancelled]
    );
    assert_eq!(
        ids_of(&["--kind", "VIDEO_PROD", "--status", "pending"]),
        [video]
    );
    assert!(ids_of(&["--status", "failed"]).is_empty());

    let run = env.asmr(&["list", "--status", "failed"]).ok();
    assert_eq!(run.stdout, "");
    assert_eq!(run.messages(), ["no jobs match"]);
}

fn list_json_is_an_array_of_job_documents(env: &Env) {
    let run = env.asmr(&["list", "--json"]).ok();
    assert_eq!(run.json(), serde_json::json!([]));

    let id = env.add("rain");
    let listed = env.asmr(&["list", "--json"]).ok().json();
    let jobs = listed.as_array().unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0]["id"], id.as_str());
    assert_eq!(jobs[0]["status"], "pending");
    assert_eq!(jobs[0], env.job(&id), "the same document as show --json");
}

fn list_stops_at_the_limit_and_says_there_are_more(env: &Env) {
    let _oldest = env.add("one");
    let second = env.add("two");
    let newest = env.add("three");
    let run = env.asmr(&["list", "--limit", "2"]).ok();
    let rows: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(rows.len(), 3, "header and two rows\n{}", run.context());
    assert!(
        rows[1].starts_with(&newest) && rows[2].starts_with(&second),
        "{}",
        run.context()
    );
    assert_eq!(
        run.messages(),
        ["2 jobs, newest first; there are more (raise --limit)"]
    );

    let run = env.asmr(&["list", "--limit", "3"]).ok();
    assert_eq!(run.messages(), ["3 jobs, newest first"]);
}

fn list_shows_prompts_on_one_line(env: &Env) {
    let long = format!("the gentle sound of {} and more", "rain ".repeat(20));
    let long_id = env.add(&long);
    let multi_id = env.add("rain\non glass");
    let run = env.asmr(&["list"]).ok();
    let rows: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(rows.len(), 3, "{}", run.context());
    let header = rows[0];
    for column in [
        "id",
        "kind",
        "status",
        "attempts",
        "priority",
        "created (UTC)",
        "prompt",
    ] {
        assert!(header.contains(column), "{header}");
    }
    let prompt_at = header.find("prompt").unwrap();

    let multi = rows[1];
    assert!(multi.starts_with(&multi_id), "{}", run.context());
    let cells: Vec<&str> = multi.split_whitespace().take(5).collect();
    assert_eq!(
        cells,
        [multi_id.as_str(), "image", "pending", "0/3", "0"],
        "{multi}"
    );
    assert_eq!(&multi[prompt_at..], "rain on glass");

    let long_row = rows[2];
    assert!(long_row.starts_with(&long_id), "{}", run.context());
    let shown = &long_row[prompt_at..];
    assert_eq!(shown.chars().count(), 60, "{shown}");
    assert!(
        shown.starts_with("the gentle sound of rain rain") && shown.ends_with('…'),
        "{shown}"
    );
}

fn show_json_has_status_and_error_at_the_top_level(env: &Env) {
    let id = env.add("rain");
    let job = env.job(&id);
    assert_eq!(job["id"], id.as_str());
    assert_eq!(job["status"], "pending");
    assert_eq!(job["error"], Value::Null);

    env.fail(&id, "model_error");
    let job = env.job(&id);
    assert_eq!(job["status"], "failed");
    assert_eq!(job["error"]["code"], "model_error");
    assert_eq!(job["error"]["retryable"], false);
}

fn show_prints_key_value_lines(env: &Env) {
    let id = env
        .asmr(&[
            "add",
            "--prompt",
            "rain\non glass",
            "--kind",
            "video",
            "--param",
            "aspect_ratio=16:9",
            "--request-id",
            "r9",
        ])
        .ok()
        .id();
    env.fail(&id, "model_error");
    let run = env.asmr(&["show", &id]).ok();
    let text = &run.stdout;
    for line in [
        format!("id: {id}"),
        "kind: video".into(),
        "status: failed".into(),
        "prompt: rain\n  on glass".into(),
        "attempts: 0/3".into(),
        "dry_run: true".into(),
        "request_id: r9".into(),
        "params.aspect_ratio: 16:9".into(),
        "outputs: -".into(),
        "deliveries: -".into(),
        "error: model_error: model_error in a test (not retryable)".into(),
    ] {
        assert!(
            text.contains(&format!("{line}\n")),
            "missing {line:?}\n{}",
            run.context()
        );
    }
}

fn show_of_an_unknown_id_is_a_one_line_error(env: &Env) {
    let run = env.asmr(&["show", "nope"]).failed();
    assert_eq!(run.error(), "error: job nope not found");
    let run = env.asmr(&["show", "nope", "--json"]).failed();
    assert_eq!(run.error(), "error: job nope not found");
}

// ---- cancel, retry, reset ----

fn cancelling_twice_is_a_clear_error(env: &Env) {
    let id = env.add("rain");
    let run = env.asmr(&["cancel", &id]).ok();
    assert_eq!(run.id(), id);
    assert_eq!(run.messages(), [format!("cancelled image job {id}")]);
    assert_eq!(env.job(&id)["status"], "cancelled");

    let run = env.asmr(&["cancel", &id]).failed();
    assert_eq!(
        run.error(),
        format!("error: job {id}: cannot cancel a cancelled job")
    );
    let run = env.asmr(&["cancel", "nope"]).failed();
    assert_eq!(run.error(), "error: job nope not found");
}

fn retry_of_one_job_requeues_it(env: &Env) {
    let id = env.add("rain");
    let run = env.asmr(&["retry", &id]).failed();
    assert_eq!(
        run.error(),
        format!("error: job {id}: cannot retry a pending job")
    );

    env.fail(&id, FILTERED);
    let run = env.asmr(&["retry", &id]).failed();
    assert!(
        run.error().contains("--include-filtered"),
        "{}",
        run.context()
    );
    let run = env.asmr(&["retry", &id, "--include-filtered"]).ok();
    assert_eq!(run.id(), id);
    let job = env.job(&id);
    assert_eq!(job["status"], "pending");
    assert_eq!(job["error"], Value::Null);
}

fn retry_failed_requeues_failed_jobs_and_refuses_filtered_ones(env: &Env) {
    let run = env.asmr(&["retry", "--failed"]).ok();
    assert_eq!(run.stdout, "");
    assert_eq!(run.messages(), ["no failed jobs"]);

    let failed = env.add("failed");
    let filtered = env.add("filtered");
    let cancelled = env.add("cancelled");
    let pending = env.add("pending");
    env.fail(&failed, "model_error");
    env.fail(&filtered, FILTERED);
    env.asmr(&["cancel", &cancelled]).ok();

    let run = env.asmr(&["retry", "--failed"]).ok();
    assert_eq!(run.id(), failed);
    let messages = run.messages();
    assert_eq!(messages.len(), 2, "{}", run.context());
    assert!(
        messages[0].starts_with(&format!(
            "refused job {filtered}: the model's safety filters"
        )),
        "{}",
        run.context()
    );
    assert_eq!(
        messages[1],
        "requeued 1 of 2 failed jobs, refused 1 (1 stopped by the safety filters: add --include-filtered to retry those too)"
    );

    let run = env.asmr(&["retry", "--failed", "--include-filtered"]).ok();
    assert_eq!(run.id(), filtered);
    assert_eq!(run.messages(), ["requeued 1 of 1 failed job"]);

    for id in [&failed, &filtered, &pending] {
        assert_eq!(env.job(id)["status"], "pending");
    }
    assert_eq!(
        env.job(&cancelled)["status"],
        "cancelled",
        "--failed leaves cancelled jobs alone"
    );
}

fn reset_with_nothing_stuck_says_so(env: &Env) {
    let id = env.add("rain");
    env.claim(&id); // processing, but only just
    let run = env.asmr(&["reset"]).ok();
    assert_eq!(run.stdout, "");
    assert_eq!(
        run.messages(),
        ["no job stuck in processing or generating for more than 1h"]
    );
    assert_eq!(env.job(&id)["status"], "processing");
}

fn reset_requeues_a_stuck_job(env: &Env) {
    let stuck = env.add("stuck");
    let waiting = env.add("waiting");
    env.claim(&stuck);
    std::thread::sleep(Duration::from_millis(50));
    let run = env.asmr(&["reset", "--older-than", "10ms"]).ok();
    assert_eq!(run.id(), stuck);
    let messages = run.messages();
    assert_eq!(
        messages[0],
        format!("requeued image job {stuck} (attempt 1 of 3 used)")
    );
    assert_eq!(
        messages[1],
        "requeued 1, failed 0 (stuck for more than 10ms)"
    );
    assert_eq!(env.job(&stuck)["status"], "pending");
    assert_eq!(env.job(&waiting)["status"], "pending");
}

fn the_first_stderr_line_names_the_backend(env: &Env) {
    let id = env.add("rain");
    let runs = [
        env.asmr(&["stats"]),
        env.asmr(&["stats", "--json"]),
        env.asmr(&["list"]),
        env.asmr(&["show", &id]),
        env.asmr(&["reset"]),
        env.asmr(&["retry", "--failed"]),
        env.asmr(&["cancel", &id]),
        env.asmr(&["retry", &id]),
        env.asmr(&["show", "nope"]),
        env.asmr(&["downloads"]),
        env.asmr(&["downloads", "--json"]),
        env.asmr(&["retry-download", "nope"]),
        env.asmr(&["rejected"]),
    ];
    for run in runs {
        run.check_banner();
    }
}

fn add_queues_jobs_on_pubsub_only_with_firestore(env: &Env) {
    let run = env
        .asmr(&["add", "--prompt", "rain", "--kind", "video"])
        .ok();
    match &env.topic_prefix {
        Some(prefix) => assert!(
            run.stderr
                .contains(&format!("queued on {prefix}asmr-video-jobs")),
            "{}",
            run.context()
        ),
        None => assert!(!run.stderr.contains("queued"), "{}", run.context()),
    }
    let file = env.write("prompts.txt", b"a\nb\n");
    env.asmr(&["add", "--file", file.to_str().unwrap(), "--kind", "image"])
        .ok();
    assert_eq!(env.stats()["jobs"]["pending"], 3);
}

// ---- rejected ----

/// Records a request intake refused, received `seconds` after `start`.
fn reject(env: &Env, start: Timestamp, seconds: u64, message_id: &str, reason: &str) {
    let record = Rejected::new(
        RejectedSource::Pubsub,
        Some(message_id),
        [("kind".to_string(), "audio".to_string())].into(),
        b"soft rain",
        reason,
        start.plus(Duration::from_secs(seconds)),
    );
    let created = env.store(|store| async move { store.record_rejected(record).await.unwrap() });
    assert!(created.created);
}

fn rejected_with_none_says_so(env: &Env) {
    let run = env.asmr(&["rejected"]).ok();
    assert_eq!(run.stdout, "");
    assert_eq!(run.messages(), ["no rejected requests"]);
    let run = env.asmr(&["rejected", "--json"]).ok();
    assert_eq!(run.json(), serde_json::json!([]));
}

fn rejected_lists_refused_requests_newest_first_with_the_reason(env: &Env) {
    let start = Timestamp::now();
    reject(env, start, 0, "1001", "kind is missing");
    reject(env, start, 2, "1003", "prompt: is empty");
    reject(env, start, 1, "1002", "the request is not\nvalid JSON");

    let run = env.asmr(&["rejected", "--json"]).ok();
    let records = match run.json() {
        Value::Array(records) => records,
        other => panic!("not a JSON array: {other}"),
    };
    assert_eq!(ids_of(&records), ["1003", "1002", "1001"]);
    let newest = &records[0];
    assert_eq!(newest["message_id"], "1003");
    assert_eq!(newest["reason"], "prompt: is empty");
    assert_eq!(newest["source"], "pubsub");
    assert_eq!(newest["attributes"]["kind"], "audio");
    assert_eq!(newest["body"], "soft rain");
    assert!(newest["received_at"].is_string() && newest["expire_at"].is_string());

    let run = env.asmr(&["rejected"]).ok();
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{}", run.context());
    assert!(lines[0].starts_with("received (UTC)"), "{}", run.context());
    let column = lines[0].find("message id").unwrap();
    let reason = lines[0].find("reason").unwrap();
    let cells: Vec<(String, String)> = lines[1..]
        .iter()
        .map(|row| (cell_at(row, column), cell_at(row, reason)))
        .collect();
    assert_eq!(
        cells,
        [
            ("1003".to_string(), "prompt: is empty".to_string()),
            (
                "1002".to_string(),
                "the request is not valid JSON".to_string()
            ),
            ("1001".to_string(), "kind is missing".to_string()),
        ]
    );
    assert_eq!(run.messages(), ["3 rejected requests, newest first"]);

    let run = env.asmr(&["rejected", "--limit", "2", "--json"]).ok();
    assert_eq!(run.json().as_array().unwrap().len(), 2);
    assert_eq!(
        run.messages(),
        ["2 rejected requests, newest first; there are more (raise --limit)"]
    );
}

// ---- downloads ----

fn downloads_with_none_says_so(env: &Env) {
    let run = env.asmr(&["downloads"]).ok();
    assert_eq!(run.stdout, "");
    assert_eq!(run.messages(), ["no downloads match"]);

    let run = env.asmr(&["downloads", "--json"]).ok();
    assert_eq!(run.stdout, "[]\n");
    assert_eq!(run.messages(), ["no downloads match"]);
}

fn downloads_json_is_an_array_of_the_records_in_copy_order(env: &Env) {
    let job = env.add("rain");
    let old = env.download(&job, &format!("images/{job}/0.png"), 0, Some(100));
    let urgent = env.download(&job, &format!("videos/{job}/0.mp4"), 5, None);
    let new = env.download(&job, &format!("images/{job}/1.png"), 0, Some(200));
    env.fail_download(&new, "checksum_mismatch");

    let run = env.asmr(&["downloads", "--json"]).ok();
    assert_eq!(run.messages(), ["3 downloads, in copy order"]);
    let listed = run.json();
    let listed = listed.as_array().unwrap();
    assert_eq!(
        ids_of(listed),
        [urgent.as_str(), old.as_str(), new.as_str()],
        "highest priority first, then oldest"
    );
    for record in listed {
        let id = record["id"].as_str().unwrap();
        assert_eq!(*record, env.download_record(id), "the stored record");
    }

    let urgent = &listed[0];
    assert_eq!(urgent["job_id"], job.as_str());
    assert_eq!(urgent["source"], format!("gs://out/videos/{job}/0.mp4"));
    assert_eq!(urgent["file_type"], "video");
    assert_eq!(urgent["priority"], 5);
    assert_eq!(urgent["status"], "pending");
    assert_eq!(urgent["attempts"], 0);
    assert_eq!(urgent["max_attempts"], 3);
    assert_eq!(urgent["size"], Value::Null);
    assert_eq!(urgent["error"], Value::Null);
    assert_eq!(listed[1]["status"], "pending");
    assert_eq!(listed[1]["size"], 100);
    let failed = &listed[2];
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["attempts"], 1);
    assert_eq!(failed["error"]["code"], "checksum_mismatch");
    assert_eq!(failed["error"]["retryable"], false);
}

fn downloads_filters_by_status(env: &Env) {
    let job = env.add("rain");
    let pending = env.download(&job, "images/a.png", 0, None);
    let failed = env.download(&job, "images/b.png", 0, None);
    let downloading = env.download(&job, "images/c.png", 0, None);
    let completed = env.download(&job, "images/d.png", 0, Some(10));
    env.fail_download(&failed, "not_found");
    env.claim_download(&downloading);
    env.claim_download(&completed);
    env.complete_download(&completed, 10);

    assert_eq!(ids_of(&env.downloads(&["--status", "failed"])), [&failed]);
    assert_eq!(ids_of(&env.downloads(&["--status", "pending"])), [&pending]);
    assert_eq!(
        ids_of(&env.downloads(&["--status", "downloading"])),
        [&downloading]
    );
    assert_eq!(
        ids_of(&env.downloads(&["--status", "COMPLETED"])),
        [&completed]
    );
    assert_eq!(env.downloads(&[]).len(), 4);

    let run = env.asmr(&["downloads", "--status", "failed"]).ok();
    let rows: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(rows.len(), 2, "header and one row\n{}", run.context());
    assert!(rows[1].starts_with(&failed), "{}", run.context());
    assert_eq!(run.messages(), ["1 download, in copy order"]);

    let run = env.asmr(&["downloads", "--status", "done"]).failed();
    assert_eq!(
        run.error(),
        r#"error: invalid input: status: "done" is not a download status; use one of pending, downloading, completed, failed"#
    );
}

fn downloads_table_shows_progress_sizes_and_errors(env: &Env) {
    let job = env.add("rain");
    let video = env.download(&job, &format!("videos/{job}/0.mp4"), 1, Some(12_897_485));
    env.claim_download(&video);
    env.download_progress(&video, 6_448_742);
    let image = env.download(&job, &format!("images/{job}/0.png"), 0, None);
    let long_object = format!("images/{job}/{}.png", "a-very-long-file-name".repeat(4));
    let long = env.download(&job, &long_object, 0, Some(2048));
    env.fail_download(&long, "checksum_mismatch");

    let run = env.asmr(&["downloads"]).ok();
    assert_eq!(run.messages(), ["3 downloads, in copy order"]);
    let rows: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(rows.len(), 4, "{}", run.context());
    let header = rows[0];
    let columns = [
        "id",
        "job",
        "type",
        "status",
        "attempts",
        "progress",
        "created (UTC)",
        "source",
        "error",
    ];
    // Where each header starts (the header row is ASCII).
    let mut at = Vec::new();
    for column in columns {
        let from = at.last().map_or(0, |last| last + 1);
        let start = header[from..].find(column).map(|i| from + i);
        at.push(start.unwrap_or_else(|| panic!("no {column:?} in {header:?}")));
    }
    let (source_at, error_at) = (at[7], at[8]);

    let cells = |row: &str| -> Vec<String> { row.split_whitespace().map(String::from).collect() };

    // The video: highest priority, half copied.
    let row = rows[1];
    assert_eq!(
        cells(row)[..5],
        [video.as_str(), job.as_str(), "video", "downloading", "1/3"],
        "{row}"
    );
    assert!(
        row.contains(" 6.1 MiB/12.3 MiB (49%)  "),
        "{}",
        run.context()
    );
    assert_eq!(
        cell_at(row, source_at),
        format!("gs://out/videos/{job}/0.mp4")
    );
    assert_eq!(cell_at(row, error_at), "-");

    // The image: size unknown, nothing copied yet.
    let row = rows[2];
    assert_eq!(
        cells(row)[..5],
        [image.as_str(), job.as_str(), "image", "pending", "0/3"],
        "{row}"
    );
    assert!(row.contains(" 0 B/?  "), "{}", run.context());
    assert_eq!(
        cell_at(row, source_at),
        format!("gs://out/images/{job}/0.png")
    );
    assert_eq!(cell_at(row, error_at), "-");

    // The failed one: its source cut in the middle, its error code last.
    let row = rows[3];
    assert_eq!(
        cells(row)[..5],
        [long.as_str(), job.as_str(), "image", "failed", "1/3"],
        "{row}"
    );
    assert!(row.contains(" 0 B/2.0 KiB (0%)  "), "{}", run.context());
    let source = cell_at(row, source_at);
    assert_eq!(source.chars().count(), 60, "{source}");
    assert!(
        source.starts_with("gs://out/images/")
            && source.contains('…')
            && source.ends_with("-name.png"),
        "{source}"
    );
    assert_eq!(cell_at(row, error_at), "checksum_mismatch");

    // The progress column is aligned right.
    let progress_end = at[5] + "progress".len();
    for row in &rows[1..] {
        let before_end: String = row.chars().take(progress_end).collect();
        let after_end: String = row.chars().skip(progress_end).take(2).collect();
        assert!(
            before_end.ends_with(')') || before_end.ends_with('?'),
            "{row}"
        );
        assert_eq!(after_end, "  ", "{row}");
    }
}

fn downloads_stops_at_the_limit_and_says_there_are_more(env: &Env) {
    let job = env.add("rain");
    let first = env.download(&job, "images/0.png", 0, None);
    let second = env.download(&job, "images/1.png", 0, None);
    let _third = env.download(&job, "images/2.png", 0, None);

    let run = env.asmr(&["downloads", "--limit", "2"]).ok();
    let rows: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(rows.len(), 3, "header and two rows\n{}", run.context());
    assert!(
        rows[1].starts_with(&first) && rows[2].starts_with(&second),
        "{}",
        run.context()
    );
    assert_eq!(
        run.messages(),
        ["2 downloads, in copy order; there are more (raise --limit)"]
    );
    assert_eq!(ids_of(&env.downloads(&["--limit", "2"])), [&first, &second]);

    let run = env.asmr(&["downloads", "--limit", "3"]).ok();
    assert_eq!(run.messages(), ["3 downloads, in copy order"]);
}

fn retry_download_requeues_a_failed_download(env: &Env) {
    let job = env.add("rain");
    let id = env.download(&job, "videos/v.mp4", 0, Some(4096));
    env.claim_download(&id);
    env.download_progress(&id, 1024);
    let error = JobError::new("not_found", "the object is gone", false);
    let failing = id.clone();
    env.store(|store| async move {
        store
            .fail_download(&failing, &copier().owner, error)
            .await
            .unwrap()
    });
    let before = &env.downloads(&[])[0];
    assert_eq!(before["status"], "failed");
    assert_eq!(before["attempts"], 1);

    let run = env.asmr(&["retry-download", &id]).ok();
    assert_eq!(run.stdout, format!("{id}\n"));
    assert_eq!(
        run.messages(),
        [format!(
            "requeued download {id} (gs://out/videos/v.mp4) with 3 fresh attempts"
        )]
    );

    let after = &env.downloads(&[])[0];
    assert_eq!(after["id"], id.as_str());
    assert_eq!(after["status"], "pending");
    assert_eq!(after["attempts"], 0);
    assert_eq!(after["error"], Value::Null);
    assert_eq!(after["bytes_copied"], 1024, "kept, for the copy to resume");
    assert_eq!(env.stats()["downloads"]["failed"], 0);
    assert_eq!(env.stats()["downloads"]["pending"], 1);
}

fn retry_download_refuses_what_is_not_failed(env: &Env) {
    let job = env.add("rain");
    let pending = env.download(&job, "images/a.png", 0, None);
    let downloading = env.download(&job, "images/b.png", 0, None);
    let completed = env.download(&job, "images/c.png", 0, Some(3));
    env.claim_download(&downloading);
    env.claim_download(&completed);
    env.complete_download(&completed, 3);

    for (id, status) in [
        (&pending, "pending"),
        (&downloading, "downloading"),
        (&completed, "completed"),
    ] {
        let run = env.asmr(&["retry-download", id]).failed();
        assert_eq!(
            run.error(),
            format!("error: download {id}: cannot retry a {status} download")
        );
        assert_eq!(env.download_record(id)["status"], status, "left as it was");
    }

    let run = env.asmr(&["retry-download", "nope"]).failed();
    assert_eq!(run.error(), "error: download nope not found");
    let run = env.asmr(&["retry-download", &job]).failed();
    assert_eq!(
        run.error(),
        format!("error: download {job} not found"),
        "a job id is not a download id"
    );
}

fn stats_counts_downloads_per_status(env: &Env) {
    let job = env.add("rain");
    let ids: Vec<String> = (0..6)
        .map(|i| env.download(&job, &format!("images/{i}.png"), 0, Some(8)))
        .collect();
    env.claim_download(&ids[0]); // downloading
    env.claim_download(&ids[1]);
    env.complete_download(&ids[1], 8); // completed
    env.fail_download(&ids[2], "not_found");
    env.fail_download(&ids[3], "not_found");
    env.asmr(&["retry-download", &ids[3]]).ok(); // pending again
    // ids[4] and ids[5] stay pending.

    let run = env.asmr(&["stats", "--json"]).ok();
    assert_stats_json(
        &run.stdout,
        r#"{"pending": 1, "processing": 0, "generating": 0, "completed": 0, "delivered": 0, "failed": 0, "cancelled": 0, "total": 1}"#,
        r#"{"pending": 3, "downloading": 1, "completed": 1, "failed": 1, "total": 6}"#,
    );
    let stats: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let hour = &stats["activity"]["last_hour"];
    assert_eq!(
        (&hour["delivered"], &hour["downloads_failed"]),
        (&1.into(), &1.into()),
        "{hour}"
    );
    assert_eq!(stats["activity"]["download_completion_rate"], 0.5);

    let run = env.asmr(&["stats"]).ok();
    let table: Vec<&str> = run
        .stdout
        .lines()
        .skip_while(|line| !line.starts_with("downloads"))
        .take_while(|line| !line.is_empty())
        .collect();
    assert_eq!(
        table,
        [
            "downloads    count",
            "pending          3",
            "downloading      1",
            "completed        1",
            "failed           1",
            "total            6",
        ]
    );
}

// ---- backend-independent ----

#[test]
fn usage_errors_keep_clap_exit_code_2() {
    let env = Env::embedded();
    for args in [
        &["retry"][..],
        &["retry", "abc", "--failed"],
        &["add", "--kind", "image"],
        &["add", "--kind", "image", "--prompt", "a", "--file", "f"],
        &["add", "--kind", "image", "--file", "f", "--request-id", "r"],
        &[
            "add",
            "--kind",
            "image",
            "--prompt",
            "a",
            "--dry-run",
            "maybe",
        ],
        &["list", "--limit", "0"],
        &["downloads", "--limit", "0"],
        &["downloads", "--limit", "many"],
        &["rejected", "--limit", "0"],
        &["retry-download"],
        &["retry-download", "a", "b"],
        &["reset", "--older-than", "soon"],
        &["--backend", "sqlite", "stats"],
        &["frobnicate"],
    ] {
        let run = env.asmr(args);
        assert_eq!(run.code, Some(2), "{}", run.context());
        assert_eq!(run.stdout, "", "{}", run.context());
        assert!(run.stderr.starts_with("error: "), "{}", run.context());
    }
}

#[test]
fn the_help_lists_the_download_commands() {
    let env = Env::embedded();
    let run = env.asmr(&["--help"]);
    assert_eq!(run.code, Some(0), "{}", run.context());
    let line_of = |command: &str| {
        run.stdout
            .lines()
            .find(|line| line.trim_start().starts_with(&format!("{command} ")))
            .unwrap_or_else(|| panic!("no {command} in the help\n{}", run.context()))
            .to_string()
    };
    assert!(line_of("downloads").contains("download queue"));
    assert!(line_of("retry-download").contains("failed download"));
    assert!(line_of("stats").contains("downloads"));
}

#[test]
fn firestore_without_a_project_is_a_clear_error() {
    let env = Env::embedded();
    let run = env.asmr(&["--backend", "firestore", "stats"]);
    assert_eq!(run.code, Some(1), "{}", run.context());
    assert_eq!(
        run.stderr,
        "error: the firestore backend needs a project: pass --project or set GOOGLE_CLOUD_PROJECT\n"
    );
}

#[test]
fn the_state_dir_flag_and_env_choose_the_embedded_store() {
    let env = Env::embedded();
    let elsewhere = env.dir.path().join("elsewhere");
    let elsewhere = elsewhere.to_str().unwrap();
    let id = env
        .asmr(&[
            "--state-dir",
            elsewhere,
            "add",
            "--prompt",
            "rain",
            "--kind",
            "image",
        ])
        .ok()
        .id();
    let run = env.asmr(&["list", "--json", "--state-dir", elsewhere]).ok();
    assert!(
        run.stderr
            .starts_with(&format!("asmr: backend embedded (state in {elsewhere}")),
        "{}",
        run.context()
    );
    assert_eq!(run.json()[0]["id"], id.as_str());
    assert_eq!(
        env.asmr(&["list", "--json"]).ok().json(),
        serde_json::json!([]),
        "ASMR_STATE_DIR is another store"
    );
}

// ---- review: approve, reject, promote ----

/// Ids as a set, for comparisons where order does not matter.
fn set<S: AsRef<str>>(ids: &[S]) -> BTreeSet<String> {
    ids.iter().map(|id| id.as_ref().to_string()).collect()
}

/// The `children` of a job document, as ids.
fn children(job: &Value) -> Vec<String> {
    job["children"]
        .as_array()
        .map(|c| {
            c.iter()
                .map(|id| id.as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn approve_and_reject_mark_only_finished_images_and_name_each_refused_job(env: &Env) {
    let completed = env.completed_image("rain on a tin roof");
    let delivered = env.completed_image("sand pouring");
    env.deliver(&delivered, &env.dir.path().join("out"));
    let to_reject = env.completed_image("whispering leaves");
    let video = env
        .asmr(&["add", "--kind", "video", "--prompt", "a video"])
        .ok()
        .id();
    env.complete(&video);
    let pending = env.add("still pending");
    let failed = env.add("failed");
    env.fail(&failed, "model_error");

    let run = env
        .asmr(&[
            "approve",
            &completed,
            &video,
            &delivered,
            &pending,
            &failed,
            "no-such-job",
        ])
        .failed();
    assert_eq!(
        run.ids(),
        [completed.clone(), delivered.clone()],
        "the finished images are marked, in the order given\n{}",
        run.context()
    );
    let messages = run.messages();
    for (id, why) in [
        (&video, "is a video; only images are approved or rejected"),
        (
            &pending,
            "is pending; only a completed or delivered image can be reviewed",
        ),
        (
            &failed,
            "is failed; only a completed or delivered image can be reviewed",
        ),
    ] {
        let expected = format!("error: job {id} {why}");
        assert!(
            messages.contains(&expected.as_str()),
            "{expected:?} missing\n{}",
            run.context()
        );
    }
    assert!(
        messages.iter().any(|m| m.starts_with("error: ")
            && m.contains("no-such-job")
            && m.contains("not found")),
        "{}",
        run.context()
    );
    assert_eq!(
        messages.last().copied(),
        Some("error: 4 of 6 jobs were not approved"),
        "{}",
        run.context()
    );

    let run = env
        .asmr(&["reject", &to_reject, "--reason", "too dark"])
        .ok();
    assert_eq!(run.id(), to_reject);
    let job = env.job(&to_reject);
    assert_eq!(job["review"]["verdict"], "rejected", "{job}");
    assert_eq!(job["review"]["reason"], "too dark", "{job}");

    for id in [&video, &pending, &failed] {
        assert!(env.job(id)["review"].is_null(), "{id} was not marked");
    }
    assert_eq!(env.job(&completed)["review"]["verdict"], "approved");

    let approved = env.asmr(&["list", "--approved", "--json"]).ok().json();
    assert_eq!(
        set(&ids_of(approved.as_array().unwrap())),
        set(&[&completed, &delivered]),
        "list --approved lists exactly the approved images"
    );

    // A second review replaces the first.
    env.asmr(&["reject", &completed]).ok();
    let approved = env.asmr(&["list", "--approved", "--json"]).ok().json();
    assert_eq!(ids_of(approved.as_array().unwrap()), [delivered.as_str()]);
}

fn promote_makes_one_video_per_image_linked_both_ways_and_again_makes_another(env: &Env) {
    let first = env.completed_image("rain on a tin roof");
    let second = env.completed_image("sand pouring");
    let before = env.all_ids().len();

    let run = env.asmr(&["promote", &first, &second]).ok();
    let videos = run.ids();
    assert_eq!(videos.len(), 2, "one video per image\n{}", run.context());
    assert_eq!(env.all_ids().len(), before + 2);
    for (image, video) in [&first, &second].into_iter().zip(&videos) {
        let image_doc = env.job(image);
        let video_doc = env.job(video);
        assert_eq!(
            children(&image_doc),
            std::slice::from_ref(video),
            "{image_doc}"
        );
        assert_eq!(video_doc["parent"], image.as_str(), "{video_doc}");
        assert_eq!(video_doc["kind"], "video");
        assert_eq!(video_doc["prompt"], image_doc["prompt"]);
        assert_eq!(
            video_doc["first_frame"]["gcs_uri"],
            format!("gs://out/images/{image}/0.png"),
            "the image is the video's first frame: {video_doc}"
        );
    }

    let run = env.asmr(&["promote", &first]).ok();
    assert_eq!(
        run.id(),
        videos[0],
        "promoting again prints the existing video"
    );
    assert!(
        run.messages()
            .iter()
            .any(|m| m.contains("has its video already") && m.contains(&videos[0])),
        "{}",
        run.context()
    );
    assert_eq!(
        env.all_ids().len(),
        before + 2,
        "promoting again made nothing"
    );

    let run = env
        .asmr(&["promote", &first, "--again", "--duration", "4"])
        .ok();
    let another = run.id();
    assert!(!videos.contains(&another), "{}", run.context());
    assert_eq!(env.all_ids().len(), before + 3);
    assert_eq!(
        children(&env.job(&first)),
        [videos[0].clone(), another.clone()],
        "the image lists both videos, in order"
    );
    let another = env.job(&another);
    assert_eq!(another["parent"], first.as_str());
    assert_eq!(another["params"]["duration_seconds"], 4, "{another}");
}

fn promote_dry_run_prints_the_cost_and_creates_nothing(env: &Env) {
    let paid = env
        .asmr(&[
            "add",
            "--kind",
            "image",
            "--prompt",
            "a paid image",
            "--dry-run",
            "false",
        ])
        .ok()
        .id();
    env.complete(&paid);
    let placeholder = env.completed_image("a dry-run image");
    let before = env.all_ids();

    let run = env
        .asmr(&[
            "promote",
            &paid,
            &placeholder,
            "--dry-run",
            "--duration",
            "4",
        ])
        .ok();
    assert_eq!(
        run.ids(),
        [paid.clone(), placeholder.clone()],
        "stdout lists the images a video would be made of\n{}",
        run.context()
    );
    let messages = run.messages();
    let line_of = |id: &str| {
        messages
            .iter()
            .find(|m| m.starts_with(&format!("image {id} ->")))
            .unwrap_or_else(|| panic!("no line for {id}\n{}", run.context()))
            .to_string()
    };
    // Veo 3.1 with audio at list price: $0.40 a second.
    assert!(
        line_of(&paid).contains("$1.60 at list price"),
        "{}",
        run.context()
    );
    let dry = line_of(&placeholder);
    assert!(
        dry.contains("$1.60 at list price") && dry.contains("nothing paid"),
        "{dry}"
    );
    assert_eq!(
        messages.last().copied(),
        Some("would make 2 video jobs, $1.60 to pay ($3.20 at list prices); nothing was created"),
        "{}",
        run.context()
    );

    assert_eq!(env.all_ids(), before, "a dry run creates no job");
    assert!(children(&env.job(&paid)).is_empty());
    assert!(children(&env.job(&placeholder)).is_empty());
}

fn promote_approved_promotes_exactly_the_approved_images(env: &Env) {
    let approved: Vec<String> = (0..3)
        .map(|i| env.completed_image(&format!("approved {i}")))
        .collect();
    let rejected = env.completed_image("rejected");
    let unreviewed = env.completed_image("not reviewed");
    let mut args = vec!["approve"];
    args.extend(approved.iter().map(String::as_str));
    env.asmr(&args).ok();
    env.asmr(&["reject", &rejected]).ok();

    let run = env.asmr(&["promote", "--approved"]).ok();
    let videos = run.ids();
    assert_eq!(videos.len(), 3, "{}", run.context());
    let parents: Vec<String> = videos
        .iter()
        .map(|v| env.job(v)["parent"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(set(&parents), set(&approved));
    for id in [&rejected, &unreviewed] {
        assert!(children(&env.job(id)).is_empty(), "{id} was not promoted");
    }

    let run = env.asmr(&["promote", "--approved"]).ok();
    assert_eq!(set(&run.ids()), set(&videos), "no second video of any");
}

fn promoting_a_failed_image_a_video_or_a_missing_id_creates_nothing_and_says_why(env: &Env) {
    let failed = env.add("failed");
    env.fail(&failed, "model_error");
    let filtered = env.add("filtered");
    env.fail(&filtered, FILTERED);
    let video = env
        .asmr(&["add", "--kind", "video", "--prompt", "a video"])
        .ok()
        .id();
    env.complete(&video);
    let before = env.all_ids();

    for dry_run in [false, true] {
        let mut args = vec!["promote", &failed, &filtered, &video, "no-such-job"];
        if dry_run {
            args.push("--dry-run");
        }
        let run = env.asmr(&args).failed();
        assert_eq!(run.stdout, "", "{}", run.context());
        let messages = run.messages();
        for expected in [
            format!(
                "error: job {failed} is failed; only a completed or delivered image is made into a video"
            ),
            format!(
                "error: job {filtered} was stopped by the safety filters; it has no image to make a video of"
            ),
            format!("error: job {video} is a video; only an image is made into a video"),
            "error: job no-such-job not found".to_string(),
        ] {
            assert!(
                messages.iter().any(|m| m.contains(&expected)),
                "{expected:?} missing\n{}",
                run.context()
            );
        }
        assert!(
            messages
                .last()
                .is_some_and(|m| m.starts_with("error: 4 of 4 images were not promoted")),
            "{}",
            run.context()
        );
        assert_eq!(env.all_ids(), before, "nothing was created");
    }

    let images: Vec<String> = (0..2)
        .map(|i| env.completed_image(&format!("image {i}")))
        .collect();
    let before = env.all_ids();
    let run = env
        .asmr(&["promote", &images[0], &images[1], "--param", "colour=blue"])
        .failed();
    assert!(
        run.error().contains("unknown parameter \"colour\""),
        "options Veo would not take are said once\n{}",
        run.context()
    );
    assert_eq!(env.all_ids(), before, "nothing was created");
}

// ---- report and manifest ----

/// The cards a contact sheet embeds, as JSON.
fn cards_of(page: &std::path::Path) -> Vec<Value> {
    let html = std::fs::read_to_string(page).unwrap();
    let start = r#"<script type="application/json" id="cards">"#;
    let from = html.find(start).expect("the page embeds its cards") + start.len();
    let to = from + html[from..].find("</script>").unwrap();
    match serde_json::from_str(&html[from..to]).unwrap() {
        Value::Array(cards) => cards,
        other => panic!("the cards are not an array: {other}"),
    }
}

fn report_embeds_exactly_the_selected_jobs_and_prints_its_path(env: &Env) {
    let approved = env.completed_image("approved");
    let delivered_files = env.deliver(&approved, &env.dir.path().join("out"));
    let completed = env.completed_image("completed");
    let failed = env.add("failed");
    env.fail(&failed, "model_error");
    env.asmr(&["approve", &approved]).ok();
    let video = env.asmr(&["promote", &approved]).ok().id();

    let report = |args: &[&str]| -> BTreeSet<String> {
        let mut full = vec!["report", "--out", "sheets/report.html"];
        full.extend_from_slice(args);
        let run = env.asmr(&full).ok();
        assert_eq!(run.stdout, "sheets/report.html\n", "{}", run.context());
        let cards = cards_of(&env.dir.path().join("sheets/report.html"));
        set(&ids_of(&cards))
    };

    assert_eq!(report(&[]), set(&[&approved, &completed, &failed, &video]));
    assert_eq!(report(&["--status", "failed"]), set(&[&failed]));
    assert_eq!(report(&["--kind", "video"]), set(&[&video]));
    assert_eq!(report(&["--approved"]), set(&[&approved]));
    assert_eq!(
        report(&["--since", "2999-01-01T00:00:00Z"]),
        BTreeSet::new()
    );
    assert_eq!(report(&["--since", "1h"]).len(), 4);

    // Files are linked relative to the page; a video's poster is its
    // parent's image even when the image is not on the sheet.
    report(&["--kind", "video"]);
    let cards = cards_of(&env.dir.path().join("sheets/report.html"));
    assert_eq!(
        cards[0]["poster"],
        format!("../out/{}", delivered_files[0]),
        "{}",
        cards[0]
    );
    report(&["--approved"]);
    let cards = cards_of(&env.dir.path().join("sheets/report.html"));
    assert_eq!(
        cards[0]["files"],
        serde_json::json!([format!("../out/{}", delivered_files[0])])
    );

    let run = env.asmr(&["report", "--since", "yesterday"]).failed();
    assert!(
        run.error().contains("--since \"yesterday\""),
        "{}",
        run.context()
    );
}

fn manifest_rebuilds_one_line_per_delivered_file(env: &Env) {
    let folder = env.dir.path().join("delivered");
    let mut expected = BTreeSet::new();
    for prompt in ["rain", "sand", "leaves"] {
        let id = env.completed_image(prompt);
        expected.extend(env.deliver(&id, &folder));
    }
    env.completed_image("completed, not delivered");
    let failed = env.add("failed");
    env.fail(&failed, "model_error");

    // Relative to where the command runs, as an operator would type it.
    let run = env
        .asmr(&[
            "manifest",
            "--out",
            "rebuilt",
            "--destination",
            "./delivered/../delivered",
        ])
        .ok();
    assert_eq!(run.stdout, "rebuilt/manifest.jsonl\n", "{}", run.context());
    let text = std::fs::read_to_string(env.dir.path().join("rebuilt/manifest.jsonl")).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let paths: BTreeSet<String> = lines
        .iter()
        .map(|l| l["path"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        lines.len(),
        3,
        "one line per delivered file, none twice: {text}"
    );
    assert_eq!(paths, expected);
    assert!(lines.iter().all(|l| l["crc32c"] == "AAAAAA=="), "{text}");
}

/// `asmr run` (embedded store only) delivers and writes its own manifest;
/// `asmr manifest` from the store rebuilds the same lines into another
/// folder.
#[test]
fn manifest_rebuilt_from_the_store_matches_the_manifest_of_a_run() {
    let env = Env::embedded();
    env.write(
        "prompts.txt",
        b"rain on a tin roof\nsand pouring\nwhispering leaves\n",
    );
    let run = env.asmr(&["run", "prompts.txt", "--chain", "--out", "out", "--json"]);
    assert_eq!(run.code, Some(0), "{}", run.context());
    let report = run.json();
    let folder = PathBuf::from(report["out_dir"].as_str().unwrap());
    assert_eq!(folder.parent(), Some(env.dir.path().join("out").as_path()));

    let paths = |manifest: PathBuf| -> BTreeSet<String> {
        std::fs::read_to_string(&manifest)
            .unwrap_or_else(|e| panic!("{}: {e}", manifest.display()))
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["path"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    };
    let own = paths(folder.join("manifest.jsonl"));
    assert_eq!(own.len(), 6, "three images and their videos: {own:?}");

    let destination = format!("out/{}", folder.file_name().unwrap().to_str().unwrap());
    let run = env
        .asmr(&[
            "manifest",
            "--out",
            "rebuilt",
            "--destination",
            &destination,
        ])
        .ok();
    assert_eq!(run.stdout, "rebuilt/manifest.jsonl\n", "{}", run.context());
    assert_eq!(paths(env.dir.path().join("rebuilt/manifest.jsonl")), own);
}
