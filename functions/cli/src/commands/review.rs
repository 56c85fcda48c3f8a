//! `asmr approve`, `asmr reject` and `asmr promote`: keep the good images,
//! then pay for videos of those only. The rules (only a finished image is
//! reviewed or promoted; promoting twice makes one video) are the domain's;
//! these commands report what it did, ids on stdout.

use super::Tenancy;
use super::change::Queue;
use crate::args::{PromoteArgs, RejectArgs, ReviewArgs};
use crate::out;
use anyhow::{Result, bail};
use shared::cost::{PriceTable, format_usd, job_cost, model_of};
use shared::domain::job::Job;
use shared::domain::review::{Grounds, PromoteOptions, PromoteRefusal};
use shared::domain::values::Verdict;
use shared::error::Error;
use shared::store::Store;
use shared::time::Timestamp;

pub async fn approve(store: &Store, tenancy: &Tenancy, args: &ReviewArgs) -> Result<()> {
    review(store, tenancy, &args.ids, Verdict::Approved, None).await
}

pub async fn reject(store: &Store, tenancy: &Tenancy, args: &RejectArgs) -> Result<()> {
    let reason = args.reason.clone();
    review(store, tenancy, &args.ids, Verdict::Rejected, reason).await
}

/// Marks each job; a job that cannot be marked is reported and the others
/// are still marked. Fails when any could not be.
async fn review(
    store: &Store,
    tenancy: &Tenancy,
    ids: &[String],
    verdict: Verdict,
    reason: Option<String>,
) -> Result<()> {
    let mut refused = 0;
    for id in ids {
        let reviewed = match tenancy.job(store, id).await {
            Ok(_) => store
                .review_job(id, verdict, reason.clone())
                .await
                .map_err(anyhow::Error::from),
            Err(e) => Err(e),
        };
        match reviewed {
            Ok(job) => {
                out::line(job.id())?;
                out::note(format_args!("{} image job {}", verdict.as_str(), job.id()));
            }
            Err(e) => {
                refused += 1;
                out::note(format_args!("error: {e}"));
            }
        }
    }
    if refused > 0 {
        bail!(
            "{refused} of {} {} not {}",
            ids.len(),
            plural(ids.len(), "job was", "jobs were"),
            verdict.as_str()
        );
    }
    Ok(())
}

pub async fn promote(
    store: &Store,
    queue: &Queue<'_>,
    tenancy: &Tenancy,
    args: &PromoteArgs,
) -> Result<()> {
    let options = PromoteOptions {
        params: args.params.clone(),
        duration: args.duration.as_deref().map(str::parse).transpose()?,
        dry_run: None,
        again: args.again,
        grounds: Grounds::Operator,
    };
    let Images { found, missing } = images(store, tenancy, args).await?;
    if found.is_empty() && missing.is_empty() {
        out::note("no approved image to promote");
        return Ok(());
    }
    for id in &missing {
        out::note(format_args!("error: job {id} not found"));
    }
    let asked = found.len() + missing.len();
    let refused = if args.dry_run {
        preview(&found, &options)?
    } else {
        create(store, queue, &found, &options).await?
    } + missing.len();
    if refused > 0 {
        bail!(
            "{refused} of {asked} {} not promoted; nothing was made of {}",
            plural(asked, "image was", "images were"),
            if refused == 1 { "it" } else { "those" }
        );
    }
    Ok(())
}

/// Makes the video of each image; returns how many were refused. Options
/// Veo would not take are refused for every image alike, so the first such
/// refusal ends the command.
async fn create(
    store: &Store,
    queue: &Queue<'_>,
    images: &[Image],
    options: &PromoteOptions,
) -> Result<usize> {
    let mut refused = 0;
    for Image {
        job: image,
        grounds,
    } in images
    {
        let options = PromoteOptions {
            grounds: *grounds,
            ..options.clone()
        };
        match store.promote(image.id(), &options).await {
            Ok(promoted) => {
                let video = &promoted.video;
                out::line(video.id())?;
                if promoted.created {
                    out::note(format_args!(
                        "video job {} made from image {}",
                        video.id(),
                        image.id()
                    ));
                    queue.dispatch(video).await;
                } else {
                    already_made(image.id(), video.id());
                }
            }
            Err(e @ Error::Invalid(_)) => return Err(e.into()),
            Err(e) => {
                refused += 1;
                out::note(format_args!("error: {e}"));
            }
        }
    }
    Ok(refused)
}

fn already_made(image: &str, video: &str) {
    out::note(format_args!(
        "image {image} has its video already: job {video} (--again makes another)"
    ));
}

/// The images `args` names: those given, or every approved one; and the
/// ids given that name no job.
struct Images {
    found: Vec<Image>,
    missing: Vec<String>,
}

/// An image to promote, and what it must still show when its video is
/// made: one named by the operator is promoted as it is; one found by
/// `--approved` only while it is still approved (a reviewer may reject it
/// between the listing and the promotion).
struct Image {
    job: Job,
    grounds: Grounds,
}

async fn images(store: &Store, tenancy: &Tenancy, args: &PromoteArgs) -> Result<Images> {
    let mut images = Images {
        found: Vec::new(),
        missing: Vec::new(),
    };
    for id in &args.ids {
        match store.get_job(id).await? {
            Some(job) if tenancy.owns(job.tenant()) => images.found.push(Image {
                job,
                grounds: Grounds::Operator,
            }),
            _ => images.missing.push(id.clone()),
        }
    }
    if args.approved {
        images.found.extend(
            store
                .promotable(Some(tenancy.tenant.clone()))
                .await?
                .into_iter()
                .filter(|job| !args.ids.iter().any(|id| id == job.id()))
                .map(|job| Image {
                    job,
                    grounds: Grounds::Approved,
                }),
        );
    }
    Ok(images)
}

/// What a promotion would create and cost, creating nothing; returns how
/// many images would be refused. A video's model is the `model` parameter
/// when given, else the default video model the generator would use. A
/// video made of a dry-run image is a dry run too: its list price is shown,
/// and nothing is paid for it.
fn preview(images: &[Image], options: &PromoteOptions) -> Result<usize> {
    let prices = PriceTable::list_prices();
    let (mut to_pay, mut at_list_price, mut made, mut refused) = (0u64, 0u64, 0, 0);
    for Image { job: image, .. } in images {
        if let (false, Some(video)) = (options.again, image.children().first()) {
            already_made(image.id(), video);
            continue;
        }
        match image.promotion(options) {
            Ok(video) => {
                let priced = Job::new(video.clone(), Timestamp::now());
                let model = model_of(&priced);
                let micros = job_cost(&priced, &prices).micros;
                at_list_price += micros;
                if !video.dry_run {
                    to_pay += micros;
                }
                made += 1;
                out::line(image.id())?;
                out::note(format_args!(
                    "image {} -> a video of {} s on {model}, {} at list price{}",
                    image.id(),
                    video.params.duration_seconds.unwrap_or(8),
                    format_usd(micros),
                    if video.dry_run {
                        " (a dry run, as its image was: placeholders, nothing paid)"
                    } else {
                        ""
                    }
                ));
            }
            Err(PromoteRefusal::Invalid(e)) => bail!("{e}"),
            Err(refusal) => {
                refused += 1;
                out::note(format_args!("error: {refusal}"));
            }
        }
    }
    out::note(format_args!(
        "would make {made} video {}, {} to pay ({} at list prices); nothing was created",
        plural(made, "job", "jobs"),
        format_usd(to_pay),
        format_usd(at_list_price)
    ));
    Ok(refused)
}

fn plural<'a>(n: usize, one: &'a str, many: &'a str) -> &'a str {
    if n == 1 { one } else { many }
}
