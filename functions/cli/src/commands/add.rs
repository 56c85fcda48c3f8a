//! `asmr add`: one job from `--prompt`, or one job per line of `--file`.
//!
//! Jobs go through intake's write path ([`shared::intake::submit_job`]): on
//! the firestore backend each new job is published to its kind's Pub/Sub
//! topic, as the intake service does, so the generators take it; on the
//! embedded store there is no bus and `asmr run` or a drain picks it up.

use super::{IN_FLIGHT, read_input};
use crate::args::AddArgs;
use crate::out;
use anyhow::{Context, Result, bail};
use futures::stream::{self, StreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use shared::bus::{Bus, Topics};
use shared::domain::job::{Job, NewJob};
use shared::domain::tenant::TenantName;
use shared::domain::validate::validate_params;
use shared::domain::values::{JobKind, JobParams};
use shared::error::Error;
use shared::intake::{Dispatch, SubmittedJob, submit_job};
use shared::requests::prompt_lines;
use shared::store::Store;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

/// Files with at least this many prompts get a progress bar (on a terminal).
const PROGRESS_FROM: usize = 50;

pub async fn run(
    store: &Store,
    bus: &dyn Bus,
    topics: Topics,
    tenant: &TenantName,
    args: AddArgs,
) -> Result<()> {
    let template = Template::from_args(&args, tenant)?;
    let intake = Intake { store, bus, topics };
    match (args.prompt, args.file) {
        (Some(prompt), None) => add_one(&intake, template.job(prompt, args.request_id)).await,
        (None, Some(file)) => add_file(&intake, &template, &file).await,
        // clap's `source` group makes this unreachable; say so rather than panic.
        _ => bail!("give exactly one of --prompt and --file"),
    }
}

/// Where new jobs go: the store, and the bus that announces them (one that
/// reaches no worker on the embedded store).
struct Intake<'a> {
    store: &'a Store,
    bus: &'a dyn Bus,
    topics: Topics,
}

impl Intake<'_> {
    async fn submit(&self, job: NewJob) -> shared::error::Result<SubmittedJob> {
        submit_job(self.store, self.bus, &self.topics, job).await
    }
}

/// Why a created job was not queued, if it was not.
fn not_queued(submitted: &SubmittedJob) -> Option<String> {
    match &submitted.dispatch {
        Dispatch::Failed(e) => Some(format!(
            "job {} was added but not queued: {e}",
            submitted.job.id()
        )),
        _ => None,
    }
}

/// What every job of one `asmr add` shares.
struct Template {
    tenant: TenantName,
    kind: JobKind,
    params: JobParams,
    priority: i64,
    dry_run: bool,
}

impl Template {
    /// Checks the kind and parameters once, before any prompt is read.
    fn from_args(args: &AddArgs, tenant: &TenantName) -> Result<Self> {
        let kind: JobKind = args.kind.parse().map_err(Error::from)?;
        let params = parse_params(&args.params)?;
        validate_params(kind, &params).map_err(Error::from)?;
        Ok(Self {
            tenant: tenant.clone(),
            kind,
            params,
            priority: args.priority,
            dry_run: args.dry_run.dry_run,
        })
    }

    fn job(&self, prompt: String, request_id: Option<String>) -> NewJob {
        let mut job = NewJob::new(prompt, self.kind);
        job.params = self.params.clone();
        job.priority = self.priority;
        job.request_id = request_id;
        job.dry_run = self.dry_run;
        job.tenant = self.tenant.clone();
        job
    }
}

/// `--param key=value`s, applied in order.
fn parse_params(pairs: &[String]) -> Result<JobParams> {
    let mut params = JobParams::default();
    for pair in pairs {
        let Some((key, value)) = pair.split_once('=') else {
            bail!(
                "--param {pair:?} is not KEY=VALUE (known keys: {})",
                JobParams::KEYS.join(", ")
            );
        };
        params.set(key.trim(), value).map_err(Error::from)?;
    }
    Ok(params)
}

fn dry_run_note(job: &Job) -> &'static str {
    if job.dry_run() { " (dry run)" } else { "" }
}

async fn add_one(intake: &Intake<'_>, new: NewJob) -> Result<()> {
    let submitted = intake.submit(new.clone()).await?;
    let job = &submitted.job;
    out::line(job.id())?;
    if submitted.created {
        out::note(format_args!(
            "added {} job {}{}",
            job.kind(),
            job.id(),
            dry_run_note(job)
        ));
    } else {
        out::note(format_args!(
            "job {} already existed for request id {:?}; nothing was added",
            job.id(),
            new.request_id.as_deref().unwrap_or_default()
        ));
        if job.prompt() != new.prompt || job.kind() != new.kind {
            out::note(format_args!(
                "warning: the existing job is a {} job with a different prompt; it was left as it is",
                job.kind()
            ));
        }
    }
    match (&submitted.dispatch, not_queued(&submitted)) {
        (_, Some(why)) => bail!(
            "{why}; it stays pending, and the janitor publishes it again once it counts as lost{}",
            match new.request_id {
                Some(_) => " (or run this command again now)",
                None => "",
            }
        ),
        (Dispatch::Published(_), None) => out::note(format_args!(
            "queued on {}",
            intake.topics.for_kind(job.kind())
        )),
        _ => {}
    }
    Ok(())
}

/// What happened to the lines of a file.
#[derive(Default)]
struct Tally {
    added: usize,
    invalid: usize,
    /// The first store error and its line; it ends the command.
    first_failure: Option<(usize, String)>,
}

impl Tally {
    /// Reports one line's outcome: its id on stdout, or why on stderr.
    fn record(
        &mut self,
        line: usize,
        outcome: shared::error::Result<SubmittedJob>,
    ) -> std::io::Result<()> {
        match outcome {
            Ok(submitted) => {
                self.added += 1;
                if let Some(why) = not_queued(&submitted) {
                    self.failed(line, why);
                }
                out::line(submitted.job.id())
            }
            Err(Error::Invalid(reason)) => {
                self.invalid += 1;
                out::note(format_args!("line {line}: {reason}"));
                Ok(())
            }
            Err(err) => {
                self.failed(line, err.to_string());
                Ok(())
            }
        }
    }

    /// The creates (or publishes) in flight when the store (or bus) failed
    /// usually fail the same way: say it once, in the final error.
    fn failed(&mut self, line: usize, message: String) {
        match &self.first_failure {
            None => self.first_failure = Some((line, message)),
            Some((_, first)) if *first == message => {}
            Some(_) => out::note(format_args!("line {line}: {message}")),
        }
    }
}

async fn add_file(intake: &Intake<'_>, template: &Template, path: &Path) -> Result<()> {
    let bytes = read_input(path).with_context(|| format!("reading {}", path.display()))?;

    let mut tally = Tally::default();
    let mut jobs = Vec::new();
    for (line, prompt) in prompt_lines(&bytes) {
        let job = prompt.and_then(|prompt| {
            let job = template.job(prompt, None);
            job.validate().map(|()| job)
        });
        match job {
            Ok(job) => jobs.push((line, job)),
            Err(reason) => tally.record(line, Err(reason.into()))?,
        }
    }

    let bar = if jobs.len() >= PROGRESS_FROM {
        ProgressBar::new(jobs.len() as u64)
    } else {
        ProgressBar::hidden()
    };
    if let Ok(style) = ProgressStyle::with_template("adding jobs {bar:40} {pos}/{len} ({eta} left)")
    {
        bar.set_style(style);
    }

    // Creates run concurrently and finish in any order; ids are written in
    // line order through `done`. After a store error no new create starts:
    // if the store is down, one error per remaining line helps nobody.
    let stop = AtomicBool::new(false);
    let mut results = stream::iter(
        jobs.iter()
            .enumerate()
            .take_while(|_| !stop.load(Ordering::Relaxed)),
    )
    .map(|(index, (line, job))| async move { (index, *line, intake.submit(job.clone()).await) })
    .buffer_unordered(IN_FLIGHT);
    let mut done = BTreeMap::new();
    let mut next = 0;
    while let Some((index, line, outcome)) = results.next().await {
        bar.inc(1);
        let failed = match &outcome {
            Ok(submitted) => matches!(submitted.dispatch, Dispatch::Failed(_)),
            Err(err) => !matches!(err, Error::Invalid(_)),
        };
        if failed {
            stop.store(true, Ordering::Relaxed);
        }
        done.insert(index, (line, outcome));
        while let Some((line, outcome)) = done.remove(&next) {
            bar.suspend(|| tally.record(line, outcome))?;
            next += 1;
        }
    }
    bar.finish_and_clear();

    out::note(format_args!(
        "added {}, skipped {}",
        out::count(tally.added, "job", "jobs"),
        out::count(tally.invalid, "invalid line", "invalid lines"),
    ));
    if let Some((line, error)) = tally.first_failure {
        let not_added = jobs.len().saturating_sub(tally.added);
        bail!(
            "line {line}: {error}; stopped there, and {not_added} of {} were not added (the ids on stdout were)",
            out::count(jobs.len(), "valid line", "valid lines"),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::store::backend::{Backend, Collection, Cond, Doc, Query, Stored, Version};
    use shared::store::embedded::EmbeddedBackend;
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;

    fn check(file: &str, expected: &[(usize, Result<&str, &str>)]) {
        let lines: Vec<_> = prompt_lines(file.as_bytes())
            .into_iter()
            .map(|(n, p)| (n, p.map_err(|e| e.to_string())))
            .collect();
        let expected: Vec<_> = expected
            .iter()
            .map(|(n, p)| (*n, p.map(str::to_string).map_err(str::to_string)))
            .collect();
        assert_eq!(lines, expected, "prompt_lines({file:?})");
    }

    #[test]
    fn prompt_files_skip_blank_and_comment_lines() {
        check("", &[]);
        check("\n\n  \n", &[]);
        check("rain\n", &[(1, Ok("rain"))]);
        check(
            "# heading\nrain\n\n   # indented comment\n  wind  \n",
            &[(2, Ok("rain")), (5, Ok("wind"))],
        );
        check("rain # not a comment", &[(1, Ok("rain # not a comment"))]);
    }

    #[test]
    fn prompt_files_may_have_crlf_a_bom_and_no_final_newline() {
        check("\u{feff}rain\r\nwind", &[(1, Ok("rain")), (2, Ok("wind"))]);
        check("\u{feff}# comment\r\n", &[]);
    }

    #[test]
    fn a_line_that_is_not_utf8_is_reported_with_its_number() {
        let lines = prompt_lines(b"rain\n\xff\xfe fire\n");
        assert_eq!(lines[0], (1, Ok("rain".to_string())));
        assert_eq!(lines[1].0, 2);
        assert_eq!(
            lines[1].1.as_ref().map_err(ToString::to_string),
            Err("prompt: is not valid UTF-8".to_string())
        );
    }

    /// The embedded store, but every create after the first `ok` fails.
    struct FailingAfter {
        inner: EmbeddedBackend,
        ok: AtomicUsize,
        tried: AtomicUsize,
    }

    #[async_trait::async_trait]
    impl Backend for FailingAfter {
        fn describe(&self) -> String {
            "failing".into()
        }
        async fn get(&self, c: Collection, id: &str) -> shared::error::Result<Option<Stored>> {
            self.inner.get(c, id).await
        }
        async fn create(
            &self,
            c: Collection,
            id: &str,
            doc: &Doc,
        ) -> shared::error::Result<Option<Version>> {
            self.tried.fetch_add(1, Ordering::SeqCst);
            if self
                .ok
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_err()
            {
                return Err(Error::store("writing a job", "the store is down", true));
            }
            self.inner.create(c, id, doc).await
        }
        async fn replace(
            &self,
            c: Collection,
            id: &str,
            v: &Version,
            doc: &Doc,
        ) -> shared::error::Result<bool> {
            self.inner.replace(c, id, v, doc).await
        }
        async fn commit(
            &self,
            writes: &[shared::store::backend::Write],
        ) -> shared::error::Result<bool> {
            self.inner.commit(writes).await
        }
        async fn delete(
            &self,
            c: Collection,
            id: &str,
            v: &Version,
        ) -> shared::error::Result<bool> {
            self.inner.delete(c, id, v).await
        }
        async fn query(&self, c: Collection, q: &Query) -> shared::error::Result<Vec<Stored>> {
            self.inner.query(c, q).await
        }
        async fn count(&self, c: Collection, conds: &[Cond]) -> shared::error::Result<u64> {
            self.inner.count(c, conds).await
        }
    }

    #[tokio::test]
    async fn a_store_error_stops_a_file_and_says_how_much_was_not_added() {
        let backend = Arc::new(FailingAfter {
            inner: EmbeddedBackend::in_memory().unwrap(),
            ok: AtomicUsize::new(10),
            tried: AtomicUsize::new(0),
        });
        let store = Store::new(backend.clone());
        let intake = Intake {
            store: &store,
            bus: &shared::bus::store_queue::StoreQueue::default(),
            topics: Topics::default(),
        };
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("prompts.txt");
        let prompts: String = (0..200).map(|i| format!("prompt {i}\n")).collect();
        std::fs::write(&file, prompts).unwrap();
        let template = Template {
            tenant: TenantName::default(),
            kind: JobKind::Image,
            params: JobParams::default(),
            priority: 0,
            dry_run: true,
        };

        let err = add_file(&intake, &template, &file)
            .await
            .unwrap_err()
            .to_string();

        assert_eq!(
            err,
            "line 11: writing a job: the store is down; stopped there, and 190 of 200 valid lines were not added (the ids on stdout were)"
        );
        let tried = backend.tried.load(Ordering::SeqCst);
        assert!(
            tried <= 11 + IN_FLIGHT,
            "no new create starts after the error: {tried} tried"
        );
        assert_eq!(store.job_counts().await.unwrap().total(), 10);
    }

    #[test]
    fn params_are_key_value_pairs_checked_by_shared() {
        let params = parse_params(&["aspect_ratio=16:9".into(), "seed= 7".into()]).unwrap();
        assert_eq!(params.aspect_ratio.as_deref(), Some("16:9"));
        assert_eq!(params.seed, Some(7));
        let err = parse_params(&["seed".into()]).unwrap_err().to_string();
        assert!(err.contains("is not KEY=VALUE"), "{err}");
        let err = parse_params(&["colour=red".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown parameter \"colour\""), "{err}");
    }
}
