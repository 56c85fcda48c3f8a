//! A batch's contact sheet from the store: which jobs, and each as a card
//! whose files are linked relative to the folder the page is written to.

use super::{Card, Review, Sheet, Totals};
use crate::cost::{PriceTable, job_cost, model_of, usd as micros_to_usd};
use crate::domain::destination::Target;
use crate::domain::job::Job;
use crate::domain::paths;
use crate::domain::tenant::TenantName;
use crate::domain::values::Verdict;
use crate::domain::values::{JobKind, JobStatus, SUBMIT_UNKNOWN};
use crate::error::{Error, Result};
use crate::store::{JobFilter, Store};
use crate::time::Timestamp;
use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};

/// The name of the page `asmr run` writes beside the files it delivered.
pub const REPORT_NAME: &str = "report.html";

/// Which jobs a sheet shows.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    /// Only jobs in this status.
    pub status: Option<JobStatus>,
    /// Only jobs of this kind.
    pub kind: Option<JobKind>,
    /// Only jobs created at or after this time.
    pub since: Option<Timestamp>,
    /// Only approved (`true`) or rejected (`false`) images.
    pub approved: Option<bool>,
    /// Only this tenant's jobs (every tenant's when `None`).
    pub tenant: Option<TenantName>,
}

/// Every job `selection` names, oldest first (the order of a batch).
pub async fn select(store: &Store, selection: &Selection) -> Result<Vec<Job>> {
    let filter = JobFilter::default()
        .with_status(selection.status)
        .with_kind(selection.kind)
        .with_approved(selection.approved)
        .with_tenant(selection.tenant.clone());
    store.jobs_since(&filter, selection.since).await
}

/// The images that videos among `jobs` were made from and that are not
/// among them (a sheet of videos only, say): a video's card shows its
/// image as the poster even when the image has no card of its own.
pub async fn parents_outside(store: &Store, jobs: &[Job]) -> Result<Vec<Job>> {
    let mut parents: Vec<Job> = Vec::new();
    for id in jobs.iter().filter_map(Job::parent) {
        let known = jobs.iter().chain(&parents).any(|job| job.id() == id);
        if !known && let Some(parent) = store.get_job(id).await? {
            parents.push(parent);
        }
    }
    Ok(parents)
}

/// The sheet of `jobs` for a page written into `folder`: each delivered
/// file that is on this machine is linked relative to it, and a video made
/// from an image shows that image as its poster, the image found among
/// `jobs` or `parents` (see [`parents_outside`]). Costs are list-price
/// estimates from `prices`.
pub fn sheet(
    title: &str,
    jobs: &[Job],
    parents: &[Job],
    folder: &Path,
    prices: &PriceTable,
) -> Sheet {
    let folder = absolute(folder);
    let files: HashMap<&str, Vec<String>> = jobs
        .iter()
        .chain(parents)
        .map(|job| (job.id(), local_files(job, &folder)))
        .collect();
    let cards = jobs
        .iter()
        .map(|job| {
            let poster = job
                .parent()
                .and_then(|parent| files.get(parent))
                .and_then(|parent_files| parent_files.first().cloned());
            card(
                job,
                files.get(job.id()).cloned().unwrap_or_default(),
                poster,
                prices,
            )
        })
        .collect();
    Sheet {
        title: title.to_string(),
        generated_at: Timestamp::now().to_string(),
        totals: totals(jobs, prices),
        cards,
    }
}

/// Writes the page of `sheet` to `path` (beside it first, then renamed, so
/// a browser never reads half a page); returns its size in bytes.
pub fn write(sheet: &Sheet, path: &Path) -> Result<u64> {
    use crate::beneath::{Access, Open, Root, is_refused};
    use std::io::Write;
    let html = super::render(sheet);
    let io = |e: std::io::Error| match is_refused(&e) {
        true => Error::UnsafePath(e.to_string()),
        false => Error::objects(format!("writing {}", path.display()), e, false),
    };
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
    let name = path.file_name().ok_or_else(|| {
        Error::objects(
            format!("writing {}", path.display()),
            "it names no file",
            false,
        )
    })?;
    // Written beside its name and renamed over it, in a directory held
    // open: a planted `report.html` link is replaced, never written
    // through.
    let root = Root::open(parent.unwrap_or(Path::new(".")), Access::Shared).map_err(io)?;
    let dir = root.dir(Path::new(""), false).map_err(io)?;
    let mut partial = std::ffi::OsString::from(".");
    partial.push(name);
    partial.push(format!(".{}.partial", uuid::Uuid::new_v4().simple()));
    let written = dir.open(&partial, Open::CreateNew).and_then(|mut file| {
        file.write_all(html.as_bytes())?;
        file.sync_all()?;
        dir.rename(&partial, name)
    });
    if written.is_err() {
        let _ = dir.remove(&partial);
    }
    written.map_err(io)?;
    Ok(html.len() as u64)
}

fn card(job: &Job, files: Vec<String>, poster: Option<String>, prices: &PriceTable) -> Card {
    let model = model_of(job);
    Card {
        id: job.id().to_string(),
        kind: job.kind().to_string(),
        status: job.status().to_string(),
        prompt: job.prompt().to_string(),
        negative_prompt: job.params().negative_prompt.clone(),
        attempts: job.attempts(),
        max_attempts: job.max_attempts(),
        error: job.error().map(|e| format!("{}: {}", e.code, e.message)),
        waiting: job.waiting().map(str::to_string),
        cost_usd: cost_micros(job, prices).map(micros_to_usd),
        model,
        files,
        poster,
        review: job.reviewed().map(|review| Review {
            approved: review.verdict == Verdict::Approved,
            reason: review.reason.clone(),
        }),
        parent: job.parent().map(str::to_string),
        children: job.children().to_vec(),
        created_at: job.created_at().to_string(),
        tenant: (!job.tenant().is_default()).then(|| job.tenant().to_string()),
    }
}

fn totals(jobs: &[Job], prices: &PriceTable) -> Totals {
    let mut by_status: BTreeMap<JobStatus, u64> = BTreeMap::new();
    let mut totals = Totals::default();
    let (mut reserved, mut spent) = (0u64, 0u64);
    for job in jobs {
        *by_status.entry(job.status()).or_default() += 1;
        totals.files += job.deliveries().len() as u64;
        match job.verdict() {
            Some(Verdict::Approved) => totals.approved += 1,
            Some(Verdict::Rejected) => totals.rejected += 1,
            None => {}
        }
        match (job.reservation(), cost_micros(job, prices)) {
            (Some(_), Some(micros)) => reserved += micros,
            (None, Some(micros)) => spent += micros,
            _ => {}
        }
    }
    totals.by_status = by_status
        .into_iter()
        .map(|(status, n)| (status.to_string(), n))
        .collect();
    totals.reserved_usd = micros_to_usd(reserved);
    totals.spent_usd = micros_to_usd(spent);
    totals
}

/// What the job costs, as far as it is paid for: its reservation while the
/// call is unsettled, the list price once it was paid; nothing for a dry
/// run or a job that never reached the model.
fn cost_micros(job: &Job, prices: &PriceTable) -> Option<u64> {
    match job.reservation() {
        Some(reservation) => Some(reservation.micros),
        None if was_paid(job) => Some(job_cost(job, prices).micros),
        None => None,
    }
}

/// Whether the job's paid call went out: a live job that produced outputs,
/// or whose request's outcome is unknown (booked as spent).
fn was_paid(job: &Job) -> bool {
    !job.dry_run()
        && (!job.outputs().is_empty() || job.error().is_some_and(|e| e.code == SUBMIT_UNKNOWN))
}

/// The job's delivered files that are on this machine, relative to
/// `folder`.
fn local_files(job: &Job, folder: &Path) -> Vec<String> {
    job.deliveries()
        .iter()
        .filter_map(|d| match &d.destination {
            Target::File(path) => relative_to(folder, &absolute(path)),
            Target::Object(_) => None,
        })
        .collect()
}

/// [`paths::absolute`], or `path` as it is where the working folder is
/// gone.
fn absolute(path: &Path) -> PathBuf {
    paths::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// `target` relative to `folder` (both absolute), `/`-separated, with `..`
/// where it is outside it.
fn relative_to(folder: &Path, target: &Path) -> Option<String> {
    let folder: Vec<Component> = folder.components().collect();
    let target: Vec<Component> = target.components().collect();
    let common = folder
        .iter()
        .zip(&target)
        .take_while(|(a, b)| a == b)
        .count();
    if common == 0 {
        return None;
    }
    let ups = std::iter::repeat_n("..".to_string(), folder.len() - common);
    let downs = target[common..]
        .iter()
        .map(|c| c.as_os_str().to_str().map(str::to_string));
    let segments: Option<Vec<String>> = ups.map(Some).chain(downs).collect();
    segments.filter(|s| !s.is_empty()).map(|s| s.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_card_costs_what_was_paid_and_a_dry_run_or_an_unsent_job_nothing() {
        use crate::domain::job::NewJob;
        let prices = PriceTable::list_prices();
        let job = |dry_run: bool, status: JobStatus, outputs: &[&str]| {
            let mut new = NewJob::new("rain on a tin roof", JobKind::Image);
            new.dry_run = dry_run;
            let mut job = Job::new(new, Timestamp::now());
            job.force_state(status, outputs.iter().map(|o| o.parse().unwrap()).collect());
            job
        };
        let out = ["gs://out/images/j/0.png"];
        let paid = job(false, JobStatus::Delivered, &out);
        let model = model_of(&paid);
        let list = prices
            .estimate(JobKind::Image, &model, paid.params())
            .micros;
        assert!(list > 0);
        assert_eq!(cost_micros(&paid, &prices), Some(list));
        let dry = job(true, JobStatus::Delivered, &out);
        assert_eq!(cost_micros(&dry, &prices), None);
        let unsent = job(false, JobStatus::Failed, &[]);
        assert_eq!(cost_micros(&unsent, &prices), None);
        let totals = totals(&[paid, dry, unsent], &prices);
        assert_eq!(
            (totals.spent_usd, totals.reserved_usd),
            (micros_to_usd(list), 0.0)
        );
    }

    #[test]
    fn a_card_names_its_tenant_unless_it_is_the_default_one() {
        use crate::domain::job::NewJob;
        let prices = PriceTable::list_prices();
        let mut new = NewJob::new("crinkling foil", JobKind::Image);
        let mine = Job::new(new.clone(), Timestamp::now());
        new.tenant = "acme".parse().unwrap();
        let theirs = Job::new(new, Timestamp::now());
        assert_eq!(card(&mine, Vec::new(), None, &prices).tenant, None);
        assert_eq!(
            card(&theirs, Vec::new(), None, &prices).tenant.as_deref(),
            Some("acme")
        );
    }

    #[test]
    fn files_are_linked_relative_to_the_folder_of_the_page() {
        let at = |p: &str| PathBuf::from(p);
        assert_eq!(
            relative_to(&at("/out/run-1"), &at("/out/run-1/images/j/0.png")).as_deref(),
            Some("images/j/0.png")
        );
        assert_eq!(
            relative_to(&at("/out/reports"), &at("/out/run-1/images/j/0.png")).as_deref(),
            Some("../run-1/images/j/0.png")
        );
        assert_eq!(relative_to(&at("/out"), &at("/out")), None);
    }
}
