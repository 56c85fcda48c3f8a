//! `asmr approve`, `asmr reject` and `asmr promote`: keep the good images,
//! then pay for videos of those only. The rules (only a finished image is
//! reviewed or promoted; promoting twice makes one video) are the domain's;
//! these commands report what it did, ids on stdout.

use super::change::Queue;
use crate::args::{PromoteArgs, RejectArgs, ReviewArgs};
use crate::out;
use anyhow::{Result, bail};
use shared::cost::{PriceTable, format_usd};
use shared::domain::job::{Job, JobKind};
use shared::domain::review::{PromoteOptions, Verdict};
use shared::store::{MAX_PAGE, Store};
use shared::vertex::DEFAULT_VIDEO_MODEL;

pub async fn approve(store: &Store, args: &ReviewArgs) -> Result<()> {
    review(store, &args.ids, Verdict::Approved, None).await
}

pub async fn reject(store: &Store, args: &RejectArgs) -> Result<()> {
    review(store, &args.ids, Verdict::Rejected, args.reason.clone()).await
}

/// Marks each job; a job that cannot be marked is reported and the others
/// are still marked. Fails when any could not be.
async fn review(
    store: &Store,
    ids: &[String],
    verdict: Verdict,
    reason: Option<String>,
) -> Result<()> {
    let mut refused = 0;
    for id in ids {
        match store.review_job(id, verdict, reason.clone()).await {
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
            "{refused} of {} jobs were not {}",
            ids.len(),
            verdict.as_str()
        );
    }
    Ok(())
}

pub async fn promote(store: &Store, queue: &Queue<'_>, args: &PromoteArgs) -> Result<()> {
    let options = PromoteOptions {
        params: args.params.clone(),
        duration: args.duration.as_deref().map(str::parse).transpose()?,
        dry_run: None,
        again: args.again,
    };
    let images = images(store, args).await?;
    if images.is_empty() {
        out::note("no approved image to promote");
        return Ok(());
    }
    if args.dry_run {
        return preview(&images, &options);
    }
    let mut refused = 0;
    for image in &images {
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
                    out::note(format_args!(
                        "image {} has its video already: job {} (--again makes another)",
                        image.id(),
                        video.id()
                    ));
                }
            }
            Err(e) => {
                refused += 1;
                out::note(format_args!("error: {e}"));
            }
        }
    }
    if refused > 0 {
        bail!("{refused} of {} images were not promoted", images.len());
    }
    Ok(())
}

/// The images `args` names: those given, or every approved one.
async fn images(store: &Store, args: &PromoteArgs) -> Result<Vec<Job>> {
    let mut images = Vec::new();
    for id in &args.ids {
        images.push(store.job(id).await?);
    }
    if args.approved {
        let mut after: Option<String> = None;
        loop {
            let page = store.promotable(MAX_PAGE, after.as_deref()).await?;
            images.extend(page.items);
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
    }
    Ok(images)
}

/// What a promotion would create and cost, creating nothing. A video's model
/// is the `model` parameter when given, else the default video model the
/// generator would use.
fn preview(images: &[Job], options: &PromoteOptions) -> Result<()> {
    let prices = PriceTable::list_prices();
    let (mut total, mut made, mut refused) = (0u64, 0, 0);
    for image in images {
        if let (false, Some(video)) = (options.again, image.children().first()) {
            out::note(format_args!(
                "image {} has its video already: job {video} (--again makes another)",
                image.id()
            ));
            continue;
        }
        match image.promotion(options) {
            Ok(video) => {
                let model = video.params.model.as_deref().unwrap_or(DEFAULT_VIDEO_MODEL);
                let micros = if video.dry_run {
                    0
                } else {
                    prices.estimate(JobKind::Video, model, &video.params).micros
                };
                total += micros;
                made += 1;
                out::line(image.id())?;
                out::note(format_args!(
                    "image {} -> a {}s video on {model}, about {}{}",
                    image.id(),
                    video.params.duration_seconds.unwrap_or(8),
                    format_usd(micros),
                    if video.dry_run {
                        " (dry run: placeholders)"
                    } else {
                        ""
                    }
                ));
            }
            Err(refusal) => {
                refused += 1;
                out::note(format_args!("error: {refusal}"));
            }
        }
    }
    out::note(format_args!(
        "would make {made} video jobs, about {} in all; nothing was created",
        format_usd(total)
    ));
    if refused > 0 {
        bail!("{refused} of {} images cannot be promoted", images.len());
    }
    Ok(())
}
