//! `asmr run`: the whole pipeline in one process on the embedded adapters,
//! driven through the real `asmr` binary. The dry runs need nothing else;
//! the live ones talk to the fake Vertex AI server.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use tests::fake_vertex::{FAKE_PROJECT, FakeOptions, FakeVertex};
use tests::harness::binary;

/// `n` distinct prompts, and one repeated line, as a prompts file.
fn prompts_file(dir: &Path, n: usize) -> PathBuf {
    let mut text = String::from("# generated prompts\n\n");
    for i in 0..n {
        text.push_str(&format!("slow macro shot of sand number {i} pouring\n"));
    }
    let path = dir.join("prompts.txt");
    std::fs::write(&path, text).unwrap();
    path
}

struct Run {
    state: PathBuf,
    out: PathBuf,
    file: PathBuf,
}

impl Run {
    fn new(dir: &Path, prompts: usize) -> Self {
        Self {
            state: dir.join("state"),
            out: dir.join("out"),
            file: prompts_file(dir, prompts),
        }
    }

    fn command(&self, extra: &[&str]) -> Command {
        let mut command = Command::new(binary("asmr"));
        command.env_clear();
        command.args(["--state-dir", self.state.to_str().unwrap(), "run"]);
        command.arg(&self.file);
        command.args(["--out", self.out.to_str().unwrap(), "--json"]);
        command.args(extra);
        command
    }

    fn live_command(&self, fake: &FakeVertex, extra: &[&str]) -> Command {
        let mut command = self.command(&["--live"]);
        command.args(extra);
        command
            .env("GOOGLE_CLOUD_PROJECT", FAKE_PROJECT)
            .env("VERTEX_BASE_URL", fake.base_url())
            .env("RESOURCE_MANAGER_BASE_URL", fake.base_url())
            .env("OAUTH2_BASE_URL", fake.base_url())
            .env("VERTEX_ACCESS_TOKEN", fake.token());
        command
    }

    /// The delivered files so far: everything under the output directory
    /// but the manifests and contact sheets of the runs.
    fn files(&self) -> Vec<PathBuf> {
        let not_delivered = [
            shared::manifest::MANIFEST_NAME,
            shared::report::build::REPORT_NAME,
        ];
        let mut files = Vec::new();
        let mut dirs = vec![self.out.clone()];
        while let Some(dir) = dirs.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    dirs.push(path);
                } else if !not_delivered
                    .iter()
                    .any(|name| path.file_name() == Some(name.as_ref()))
                {
                    files.push(path);
                }
            }
        }
        files.sort();
        files
    }

    /// The folder the run of this file delivers into: one folder under
    /// the output directory, named after the prompts file.
    fn folder(&self) -> PathBuf {
        let folders: Vec<PathBuf> = std::fs::read_dir(&self.out)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(folders.len(), 1, "one run, one folder: {folders:?}");
        let name = folders[0]
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        assert!(name.starts_with("prompts-"), "{name}");
        folders[0].clone()
    }

    fn asmr(&self, args: &[&str]) -> Value {
        let output = Command::new(binary("asmr"))
            .env_clear()
            .args(["--state-dir", self.state.to_str().unwrap()])
            .args(args)
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", stderr(&output));
        serde_json::from_slice(&output.stdout).unwrap()
    }
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn report(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "the report is not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&output.stdout),
            stderr(output)
        )
    })
}

fn is_png(path: &Path) -> bool {
    std::fs::read(path)
        .unwrap()
        .starts_with(b"\x89PNG\r\n\x1a\n")
}

#[test]
fn fifty_prompts_are_generated_and_delivered_and_a_rerun_adds_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let run = Run::new(dir.path(), 50);

    let output = run.command(&[]).output().unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let first = report(&output);
    assert_eq!(first["statuses"], serde_json::json!({"delivered": 50}));
    assert_eq!(
        (&first["created"], &first["files"], &first["events"]),
        (&50.into(), &50.into(), &50.into())
    );
    assert!(stderr(&output).contains("dry run"), "{}", stderr(&output));
    let files = run.files();
    assert_eq!(files.len(), 50, "{files:?}");
    assert!(files.iter().all(|f| is_png(f)), "every file is a PNG");

    let stats = run.asmr(&["stats", "--json"]);
    assert_eq!(stats["jobs"]["delivered"], 50, "{stats}");
    assert_eq!(stats["downloads"]["completed"], 50, "{stats}");

    let output = run.command(&[]).output().unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let second = report(&output);
    assert_eq!(
        (&second["created"], &second["existing"]),
        (&0.into(), &50.into())
    );
    assert_eq!(second["events"], 0, "nothing new finished");
    assert_eq!(run.files(), files, "the rerun wrote no new file");
    let folder = run.folder();
    let manifest = std::fs::read_to_string(folder.join(shared::manifest::MANIFEST_NAME)).unwrap();
    let lines: Vec<shared::manifest::ManifestLine> = manifest
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len(), 50, "one manifest line per file, none twice");
    for line in &lines {
        assert!(folder.join(&line.path).is_file(), "{}", line.path);
    }
}

#[test]
fn a_video_run_delivers_real_mp4_files_where_veo_would_put_them() {
    let dir = tempfile::tempdir().unwrap();
    let run = Run::new(dir.path(), 3);
    let output = run.command(&["--kind", "video"]).output().unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        report(&output)["statuses"],
        serde_json::json!({"delivered": 3})
    );
    let files = run.files();
    assert_eq!(files.len(), 3);
    let folder = run.folder();
    for file in files {
        let relative = file
            .strip_prefix(&folder)
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        let parts: Vec<&str> = relative.split('/').collect();
        assert_eq!(
            parts.len(),
            4,
            "videos/JOB/TIMESTAMP/sample_0.mp4: {relative}"
        );
        assert_eq!((parts[0], parts[3]), ("videos", "sample_0.mp4"));
        let bytes = std::fs::read(&file).unwrap();
        assert_eq!(&bytes[4..8], b"ftyp", "{relative} is an MP4");
    }
}

#[test]
fn a_second_run_on_a_busy_state_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let run = Run::new(dir.path(), 2);
    std::fs::create_dir_all(&run.state).unwrap();
    let lock = std::fs::File::create(run.state.join("run.lock")).unwrap();
    lock.try_lock().unwrap();
    let output = run.command(&[]).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("another `asmr run` is using it"),
        "{}",
        stderr(&output)
    );
    drop(lock);
    let output = run.command(&[]).output().unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
}

/// Starts a slow live run, stops it with `signal` once `at_least` files are
/// delivered, and returns how many there were then.
fn stop_halfway(run: &Run, fake: &FakeVertex, signal: &str, at_least: usize) -> usize {
    let mut child = run
        .live_command(fake, &["--image-workers", "2"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let delivered = run.files().iter().filter(|f| is_final(f)).count();
        if delivered >= at_least {
            let status = Command::new("kill")
                .args([signal, &child.id().to_string()])
                .status()
                .unwrap();
            assert!(status.success());
            let exit = child.wait().unwrap();
            assert!(!exit.success(), "the run was stopped, not finished");
            return run.files().iter().filter(|f| is_final(f)).count();
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run finished before it could be stopped"
        );
        assert!(Instant::now() < deadline, "the run made no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn is_final(path: &Path) -> bool {
    !path
        .file_name()
        .unwrap()
        .to_string_lossy()
        .ends_with(".asmr-partial")
}

async fn slow_fake() -> FakeVertex {
    FakeVertex::start(FakeOptions {
        latency: Duration::from_millis(150),
        ..FakeOptions::default()
    })
    .await
}

/// Runs to the end and checks the outcome: exactly one model call per
/// prompt, ever; every job delivered (one file each) but at most `in_doubt`
/// whose call was under way when the first run died: those failed as
/// `submit_unknown`, their cost booked, never sent again.
fn finish_and_check(run: &Run, fake: &FakeVertex, in_doubt: usize) {
    let output = run.live_command(fake, &[]).output().unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let report = report(&output);
    let delivered = report["statuses"]["delivered"].as_u64().unwrap_or(0) as usize;
    let failed = report["statuses"]["failed"].as_u64().unwrap_or(0) as usize;
    assert_eq!(delivered + failed, 50, "{report}");
    assert!(failed <= in_doubt, "{report}");
    for failure in report["failures"].as_array().unwrap() {
        let reason = failure["reason"].as_str().unwrap();
        assert!(reason.starts_with("submit_unknown"), "{reason}");
    }
    assert_eq!(report["created"], 0, "the rerun created no job");
    let files = run.files();
    assert_eq!(
        files.len(),
        delivered,
        "one file per delivered job, no partial left: {files:?}"
    );
    assert!(files.iter().all(|f| is_png(f)));
    let jobs = run.asmr(&["list", "--json", "--limit", "1000"]);
    assert_eq!(jobs.as_array().unwrap().len(), 50, "no duplicate job");
    assert_eq!(fake.total_calls(), 50, "one model call per prompt, ever");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_live_run_resumes_without_duplicates() {
    let fake = slow_fake().await;
    let dir = tempfile::tempdir().unwrap();
    let run = Run::new(dir.path(), 50);
    let delivered = tokio::task::block_in_place(|| stop_halfway(&run, &fake, "-KILL", 10));
    assert!(
        (10..50).contains(&delivered),
        "{delivered} delivered at the kill"
    );
    tokio::task::block_in_place(|| finish_and_check(&run, &fake, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_stops_a_live_run_that_the_next_run_finishes() {
    let fake = slow_fake().await;
    let dir = tempfile::tempdir().unwrap();
    let run = Run::new(dir.path(), 50);
    let delivered = tokio::task::block_in_place(|| stop_halfway(&run, &fake, "-INT", 10));
    assert!(
        (10..50).contains(&delivered),
        "{delivered} delivered at Ctrl-C"
    );
    // Ctrl-C lets the calls in flight finish: nothing is left in doubt.
    tokio::task::block_in_place(|| finish_and_check(&run, &fake, 0));
}

/// The jobs in the run's state, by kind.
fn jobs_by_kind(run: &Run) -> (Vec<Value>, Vec<Value>) {
    let jobs = run.asmr(&["list", "--json", "--limit", "1000"]);
    jobs.as_array()
        .unwrap()
        .iter()
        .cloned()
        .partition(|job| job["kind"] == "image")
}

#[test]
fn a_chained_dry_run_makes_one_video_of_each_image_and_a_rerun_makes_nothing_new() {
    const PROMPTS: usize = 4;
    let dir = tempfile::tempdir().unwrap();
    let run = Run::new(dir.path(), PROMPTS);

    let output = run.command(&["--chain"]).output().unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let first = report(&output);
    assert_eq!(
        first["statuses"],
        serde_json::json!({"delivered": 2 * PROMPTS}),
        "{first}"
    );
    let folder = run.folder();
    assert_eq!(first["out_dir"], folder.to_str().unwrap(), "{first}");
    assert_eq!(
        first["report"],
        folder
            .join(shared::report::build::REPORT_NAME)
            .to_str()
            .unwrap()
    );
    assert!(folder.join(shared::report::build::REPORT_NAME).is_file());

    let (images, videos) = jobs_by_kind(&run);
    assert_eq!((images.len(), videos.len()), (PROMPTS, PROMPTS));
    for image in &images {
        let children = image["children"].as_array().unwrap();
        assert_eq!(children.len(), 1, "one video of each image: {image}");
        let video = videos
            .iter()
            .find(|v| v["id"] == children[0])
            .unwrap_or_else(|| panic!("the child of {} is not a video", image["id"]));
        assert_eq!(video["parent"], image["id"], "linked both ways: {video}");
        assert_eq!(video["status"], "delivered");
    }

    let files = run.files();
    let pngs = files.iter().filter(|f| is_png(f)).count();
    let mp4s = files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "mp4"))
        .count();
    assert_eq!(
        (pngs, mp4s, files.len()),
        (PROMPTS, PROMPTS, 2 * PROMPTS),
        "{files:?}"
    );
    let manifest = std::fs::read_to_string(folder.join(shared::manifest::MANIFEST_NAME)).unwrap();
    let lines: Vec<shared::manifest::ManifestLine> = manifest
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len(), 2 * PROMPTS, "{manifest}");
    let with_parent = lines.iter().filter(|l| l.parent.is_some()).count();
    assert_eq!(with_parent, PROMPTS, "each video's line names its image");

    let output = run.command(&["--chain"]).output().unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let second = report(&output);
    assert_eq!(second["created"], 0, "{second}");
    assert_eq!(
        second["out_dir"], first["out_dir"],
        "a rerun resumes into the same folder"
    );
    assert_eq!(run.folder(), folder);
    assert_eq!(run.files(), files, "the rerun wrote no new file");
    let (images_again, videos_again) = jobs_by_kind(&run);
    assert_eq!((images_again.len(), videos_again.len()), (PROMPTS, PROMPTS));

    let other = Run {
        state: run.state.clone(),
        out: run.out.clone(),
        file: dir.path().join("other prompts.txt"),
    };
    std::fs::write(&other.file, "a glass marble rolling on slate\n").unwrap();
    let output = other.command(&["--chain"]).output().unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let third = report(&output);
    let other_folder = PathBuf::from(third["out_dir"].as_str().unwrap());
    assert_ne!(other_folder, folder, "another file gets its own folder");
    assert_eq!(other_folder.parent(), Some(run.out.as_path()));
    let name = other_folder.file_name().unwrap().to_str().unwrap();
    assert!(name.starts_with("other_prompts-"), "{name}");
    assert_eq!(
        third["statuses"],
        serde_json::json!({"delivered": 2}),
        "{third}"
    );
}

#[test]
fn two_runs_delivering_into_one_folder_at_once_leave_one_whole_manifest_line_per_file() {
    // Two processes (each its own state, so each its own downloader) copy
    // the same files into the same run folder at the same time: their
    // appends to one manifest.jsonl must neither interleave nor repeat.
    const PROMPTS: usize = 60;
    let dir = tempfile::tempdir().unwrap();
    let first = Run::new(dir.path(), PROMPTS);
    let second = Run {
        state: dir.path().join("state-2"),
        out: first.out.clone(),
        file: first.file.clone(),
    };
    let children: Vec<_> = [&first, &second]
        .iter()
        .map(|run| {
            run.command(&[])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success(), "{}", stderr(&output));
    }

    let manifest = first.folder().join(shared::manifest::MANIFEST_NAME);
    let text = std::fs::read_to_string(&manifest).unwrap();
    assert!(text.ends_with('\n'), "the last line is whole");
    let paths: Vec<String> = text
        .lines()
        .map(|line| {
            let line: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("a torn or interleaved line ({e}): {line}"));
            line["path"].as_str().unwrap().to_string()
        })
        .collect();
    let distinct: std::collections::BTreeSet<&String> = paths.iter().collect();
    assert_eq!(
        (paths.len(), distinct.len()),
        (PROMPTS, PROMPTS),
        "one line per delivered file"
    );
    assert_eq!(first.files().iter().filter(|f| is_png(f)).count(), PROMPTS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_run_states_its_spending_cap_and_stops_at_it() {
    let fake = FakeVertex::start(FakeOptions::default()).await;
    let per_image = shared::cost::PriceTable::list_prices()
        .estimate(
            shared::domain::values::JobKind::Image,
            shared::vertex::DEFAULT_IMAGE_MODEL,
            &Default::default(),
        )
        .micros;

    // No --budget: the cap is the run's own jobs once each.
    let dir = tempfile::tempdir().unwrap();
    let run = Run::new(dir.path(), 3);
    let output = tokio::task::block_in_place(|| run.live_command(&fake, &[]).output().unwrap());
    assert!(output.status.success(), "{}", stderr(&output));
    let cap = shared::cost::format_usd(3 * per_image);
    assert!(
        stderr(&output).contains(&format!("may spend at most {cap} more today")),
        "{}",
        stderr(&output)
    );
    assert_eq!(fake.total_calls(), 3);

    // A budget that pays for two of three images: two are made, the third
    // waits, and the run ends saying so instead of waiting forever.
    let dir = tempfile::tempdir().unwrap();
    let run = Run::new(dir.path(), 3);
    let budget = shared::cost::format_usd(2 * per_image + per_image / 2);
    let budget = budget.trim_start_matches('$');
    let output = tokio::task::block_in_place(|| {
        run.live_command(&fake, &["--budget", budget])
            .output()
            .unwrap()
    });
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("1 job was not made: paying for it would pass the spending cap"),
        "{}",
        stderr(&output)
    );
    assert_eq!(report(&output)["over_budget"], 1);
    assert_eq!(fake.total_calls(), 3 + 2);

    // More budget: the third is made; nothing is paid twice.
    let output = tokio::task::block_in_place(|| {
        run.live_command(&fake, &["--budget", "1"])
            .output()
            .unwrap()
    });
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(report(&output)["statuses"]["delivered"], 3);
    assert_eq!(fake.total_calls(), 3 + 3);
}

/// The folder `asmr run` delivers `run`'s prompts into (a dry image run).
fn run_folder_of(run: &Run) -> PathBuf {
    let prompts = std::fs::read(&run.file).unwrap();
    shared::local_run::run_folder(
        &run.out,
        &run.file,
        &prompts,
        shared::domain::values::JobKind::Image,
        false,
    )
}

/// A directory beside the run's with one file, to plant links to.
fn outside(dir: &Path) -> PathBuf {
    let outside = dir.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("victim"), b"precious\n").unwrap();
    outside
}

fn untouched(outside: &Path, case: &str) {
    let names: Vec<_> = std::fs::read_dir(outside)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["victim"], "{case}: something was made outside");
    assert_eq!(
        std::fs::read(outside.join("victim")).unwrap(),
        b"precious\n",
        "{case}: the file outside was written"
    );
}

#[test]
fn links_planted_in_a_run_folder_fail_their_copies_and_nothing_is_written_outside() {
    use std::os::unix::fs::symlink;
    // (case, the link's name in the run folder, whether it points at the
    // directory outside or at the file there)
    for (case, link, at_dir) in [
        ("images is a link", "images", true),
        ("manifest.jsonl is a link", "manifest.jsonl", false),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let run = Run::new(dir.path(), 2);
        let outside = outside(dir.path());
        let folder = run_folder_of(&run);
        std::fs::create_dir_all(&folder).unwrap();
        let target = match at_dir {
            true => outside.clone(),
            false => outside.join("victim"),
        };
        symlink(&target, folder.join(link)).unwrap();
        // The contact sheet's name too: it is replaced, never written
        // through.
        symlink(outside.join("victim"), folder.join("report.html")).unwrap();
        let output = run.command(&[]).output().unwrap();
        let report = report(&output);
        untouched(&outside, case);
        let failures = report["failures"].as_array().unwrap();
        assert_eq!(failures.len(), 2, "{case}: {report}");
        for failure in failures {
            let reason = failure["reason"].as_str().unwrap();
            assert!(
                reason.contains("unsafe_path") && reason.contains("symbolic link"),
                "{case}: {reason}"
            );
        }
        assert_eq!(
            report["statuses"]["delivered"],
            Value::Null,
            "{case}: {report}"
        );
        let sheet = std::fs::symlink_metadata(folder.join("report.html")).unwrap();
        assert!(sheet.is_file(), "{case}: the sheet replaced the link");
    }

    // The run folder itself a link: the run stops before it makes a job.
    let dir = tempfile::tempdir().unwrap();
    let run = Run::new(dir.path(), 2);
    let outside = outside(dir.path());
    std::fs::create_dir_all(&run.out).unwrap();
    symlink(&outside, run_folder_of(&run)).unwrap();
    let output = run.command(&[]).output().unwrap();
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("is a symbolic link"),
        "{}",
        stderr(&output)
    );
    untouched(&outside, "the run folder is a link");
}

#[test]
fn the_state_directory_is_its_owners_alone_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let run = Run::new(dir.path(), 2);
    let command = run.command(&[]);
    let args: Vec<String> = command
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let output = Command::new("sh")
        .arg("-c")
        .arg("umask 022 && exec \"$0\" \"$@\"")
        .arg(command.get_program())
        .args(&args)
        .env_clear()
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    let mut checked = 0;
    let mut paths = vec![run.state.clone()];
    while let Some(path) = paths.pop() {
        let want = match path.is_dir() {
            true => 0o700,
            false => 0o600,
        };
        assert_eq!(mode(&path), want, "{}", path.display());
        checked += 1;
        if path.is_dir() {
            paths.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        }
    }
    for name in ["asmr.db", "run.lock", "objects"] {
        assert!(run.state.join(name).exists(), "{name} was checked");
    }
    assert!(checked > 6, "{checked} paths");
    // Delivered files are for their readers.
    let delivered = run.files();
    assert!(!delivered.is_empty());
    for file in delivered {
        assert_eq!(mode(&file) & 0o044, 0o044, "{}", file.display());
    }
}

/// Credentials that lack the Vertex AI role: the model answers 403. The run
/// says within 5 s that the jobs wait, why and what to do; once the role is
/// granted, the same run delivers them, each paid once.
#[tokio::test(flavor = "multi_thread")]
async fn a_live_run_that_the_model_refuses_says_within_five_seconds_why_its_jobs_wait() {
    use std::io::{BufRead, BufReader};
    const JOBS: usize = 2;
    let fake = FakeVertex::start(FakeOptions::default()).await;
    fake.fail_next(100_000, 403);
    let dir = tempfile::tempdir().unwrap();
    let run = Run::new(dir.path(), JOBS);
    let started = Instant::now();
    let mut child = run
        .live_command(&fake, &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (lines, seen) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        for line in BufReader::new(stderr).lines() {
            let line = line.unwrap();
            let _ = lines.send(line.clone());
            all.push(line);
        }
        all
    });
    let said = loop {
        let line = seen
            .recv_timeout(Duration::from_secs(20))
            .expect("the run said nothing about waiting jobs");
        if line.contains("waiting (misconfigured)") {
            break line;
        }
    };
    let within = started.elapsed();
    eprintln!("said after {within:?}: {said}");
    assert!(within < Duration::from_secs(5), "{within:?}: {said}");
    assert!(said.contains("the model refused this caller"), "{said}");
    assert!(
        said.contains("403") || said.contains("PERMISSION_DENIED"),
        "the error: {said}"
    );
    assert!(fake.total_calls() > 0);

    // The role is granted: the same run goes on and delivers.
    fake.clear_faults();
    let output = tokio::task::block_in_place(|| child.wait_with_output().unwrap());
    let stderr = reader.join().unwrap().join("\n");
    assert!(output.status.success(), "{stderr}");
    let report = report(&Output {
        stderr: stderr.clone().into_bytes(),
        ..output
    });
    assert_eq!(report["statuses"]["delivered"], JOBS, "{report}");
    assert_eq!(report["waiting"], serde_json::json!({}), "{report}");
    for n in 0..JOBS {
        let prompt = format!("slow macro shot of sand number {n} pouring");
        assert_eq!(fake.served_for_prompt(&prompt), 1, "{prompt} paid once");
    }
}

/// Credentials without the Vertex AI role are found before anything is
/// made: the run names the caller, the permission, the role and the command
/// that grants it, exits non-zero, and has created no job and called no
/// model.
#[tokio::test(flavor = "multi_thread")]
async fn a_live_run_without_the_permission_to_call_the_models_stops_before_creating_anything() {
    let fake = FakeVertex::start(FakeOptions::default()).await;
    fake.withhold_permission("aiplatform.endpoints.predict");
    let dir = tempfile::tempdir().unwrap();
    let run = Run::new(dir.path(), 2);
    let output = tokio::task::block_in_place(|| run.live_command(&fake, &[]).output().unwrap());
    let said = stderr(&output);
    eprintln!("{said}");
    assert_eq!(output.status.code(), Some(1), "{said}");
    for words in [
        tests::fake_vertex::FAKE_PRINCIPAL,
        "aiplatform.endpoints.predict",
        "roles/aiplatform.user",
        "gcloud projects add-iam-policy-binding",
        "--member=user:tester@example.com",
        "nothing was created",
    ] {
        assert!(said.contains(words), "{words:?} not in: {said}");
    }
    assert_eq!(fake.permission_checks(), 1);
    assert_eq!(fake.total_calls(), 0, "a model was called");
    let stats = run.asmr(&["stats", "--json"]);
    assert_eq!(stats["jobs"]["total"], 0, "{stats}");

    // Granted: the same command runs, checked once more.
    let fake_granted = FakeVertex::start(FakeOptions::default()).await;
    let output =
        tokio::task::block_in_place(|| run.live_command(&fake_granted, &[]).output().unwrap());
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(fake_granted.permission_checks(), 1);
    assert_eq!(fake_granted.total_calls(), 2);
}
