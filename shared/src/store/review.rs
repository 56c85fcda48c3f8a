//! The review loop in the store: verdicts on images, and the promotion of an
//! image to a video, created with the image's link to it in one atomic
//! commit.

use super::Record;
use super::backend::Write;
use super::{Round, Store, log_transition, to_doc, until_done};
use crate::domain::TransitionError;
use crate::domain::job::Job;
use crate::domain::review::{PromoteOptions, PromoteRefusal};
use crate::domain::values::Verdict;
use crate::error::{Error, Result};
use crate::store::backend::Version;
use crate::time::Timestamp;

/// What a promotion did.
#[derive(Clone, Debug, PartialEq)]
pub struct Promoted {
    /// The video job made of the image (the existing one when `created` is
    /// false).
    pub video: Job,
    /// `false` when this promotion had been made already.
    pub created: bool,
    /// The image, listing the video among its children.
    pub image: Job,
}

/// A refused promotion as the store's error: bad options are invalid input,
/// anything else a transition the image does not allow.
fn refused(image_id: &str, refusal: PromoteRefusal) -> Error {
    match refusal {
        PromoteRefusal::Invalid(e) => Error::Invalid(e),
        grounds @ PromoteRefusal::NoGrounds { .. } => Error::Transition {
            kind: Job::KIND,
            id: image_id.to_string(),
            reason: TransitionError::NoGrounds(grounds.to_string()),
        },
        other => Error::Transition {
            kind: Job::KIND,
            id: image_id.to_string(),
            reason: TransitionError::ReviewLoop(other.to_string()),
        },
    }
}

impl Store {
    /// A reviewer's verdict on a completed or delivered image, replacing
    /// any earlier one. A reason longer than a paragraph is refused
    /// ([`crate::domain::validate::MAX_REASON_CHARS`]).
    pub async fn review_job(
        &self,
        id: &str,
        verdict: Verdict,
        reason: Option<String>,
    ) -> Result<Job> {
        let reason = crate::domain::validate::review_reason(reason)?;
        self.update(id, |job: &mut Job, now| {
            job.review(verdict, reason.clone(), now)
        })
        .await
    }

    /// Makes a video of image `image_id` (see [`Job::promotion`]): creates
    /// the video job and lists it among the image's children in one atomic
    /// commit, so neither exists without the other. The options' grounds
    /// are checked on the image as read for that commit, which is
    /// conditioned on the image not having changed since: a verdict given
    /// meanwhile sends the promotion round again. Promoting again without
    /// `again` returns the video made the first time (`created: false`),
    /// however many promotions run at once. A refusal creates nothing.
    pub async fn promote(&self, image_id: &str, options: &PromoteOptions) -> Result<Promoted> {
        until_done(Job::KIND, image_id, || async move {
            let Some((image, version)) = self.load::<Job>(image_id).await? else {
                return Err(Error::NotFound {
                    kind: Job::KIND,
                    id: image_id.to_string(),
                });
            };
            let new = image
                .promotion(options)
                .map_err(|refusal| refused(image_id, refusal))?;
            let video = Job::new(new, Timestamp::now());
            match self.load::<Job>(video.id()).await? {
                Some((existing, _)) => self.link(image, &version, existing).await,
                None => self.create_linked(image, &version, video).await,
            }
        })
        .await
    }

    /// Creates `video` and records it on `image` (read at `version`) in one
    /// commit. Lost when either moved meanwhile: the image changed, or a
    /// concurrent promotion created the video first.
    async fn create_linked(
        &self,
        image: Job,
        version: &Version,
        video: Job,
    ) -> Result<Round<Promoted>> {
        let mut linked = image.clone();
        linked
            .adopt_child(video.id(), Timestamp::now())
            .map_err(|reason| transition(image.id(), reason))?;
        let create = Write::Create {
            collection: Job::COLLECTION,
            id: video.id().to_string(),
            doc: to_doc(&video)?,
        };
        if !self.put(&image, &linked, version, vec![create]).await? {
            return Ok(Round::Lost);
        }
        log_transition(None, &video);
        Ok(Round::Done(Promoted {
            video,
            created: true,
            image: linked,
        }))
    }

    /// A promotion made already: makes sure `image` lists its video (a
    /// video created before the image kept its children, say) and returns
    /// both.
    async fn link(&self, image: Job, version: &Version, video: Job) -> Result<Round<Promoted>> {
        if image.children().iter().any(|c| c == video.id()) {
            return Ok(Round::Done(Promoted {
                video,
                created: false,
                image,
            }));
        }
        let mut linked = image.clone();
        linked
            .adopt_child(video.id(), Timestamp::now())
            .map_err(|reason| transition(image.id(), reason))?;
        Ok(
            match self.put(&image, &linked, version, Vec::new()).await? {
                true => Round::Done(Promoted {
                    video,
                    created: false,
                    image: linked,
                }),
                false => Round::Lost,
            },
        )
    }
}

fn transition(id: &str, reason: TransitionError) -> Error {
    Error::Transition {
        kind: Job::KIND,
        id: id.to_string(),
        reason,
    }
}
