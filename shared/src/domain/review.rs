//! The review loop: an image is tried cheaply, a reviewer approves or
//! rejects it, and an approved image is promoted to a video that opens on
//! it (Veo's image-to-video: the image is the video's first frame).
//!
//! What a job records of it: its verdict ([`Review`](super::values::Review)), the lineage between
//! an image and the videos made from it (`parent` on the video, `children`
//! on the image), the first frame a video starts from ([`FirstFrame`](super::values::FirstFrame)), and
//! whether a request asked for a video as soon as its image is delivered
//! ([`Chain`](super::values::Chain)). The store applies these transitions like every other one;
//! [`Job::promotion`] only decides what the video job is.

use super::invalid::ValidationError;
use super::job::{Job, NewJob};
use super::validate::VIDEO_DURATIONS;
use super::values::{Chain, FILTERED, FirstFrame, JobKind, JobParams, JobStatus, Review, Verdict};
use super::{Transition, TransitionError};
use crate::time::Timestamp;

/// What a promotion needs of the stored image besides being a finished
/// image: the grounds it acts on. They are checked on the job as it is read
/// inside the commit that creates the video, never on what a message says
/// of it, so a forged or stale job event cannot buy a video of an image
/// nobody approved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Grounds {
    /// An operator named the image: nothing more is needed.
    #[default]
    Operator,
    /// The image's stored verdict is `approved`.
    Approved,
    /// Approved, or created with `"chain": "video"` and delivered.
    ApprovedOrChained,
}

impl Grounds {
    /// Whether `image` gives these grounds; why not, otherwise.
    fn hold_for(self, image: &Job) -> Result<(), String> {
        let approved = image.verdict == Some(Verdict::Approved);
        let chained = image.chain == Some(Chain::Video) && image.status == JobStatus::Delivered;
        let verdict = image.verdict.map_or("not reviewed", Verdict::as_str);
        match self {
            Grounds::Operator => Ok(()),
            Grounds::Approved if approved => Ok(()),
            Grounds::Approved => Err(format!("it is {verdict}, not approved")),
            Grounds::ApprovedOrChained if approved || chained => Ok(()),
            Grounds::ApprovedOrChained => Err(format!(
                "it is {verdict}, and {}",
                match image.chain {
                    Some(Chain::Video) => format!("{}, not yet delivered", image.status),
                    None => "was not created with \"chain\": \"video\"".to_string(),
                }
            )),
        }
    }
}

/// How to make a video of an approved image.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PromoteOptions {
    /// Video parameters as `key=value`, as `--param` takes them.
    pub params: Vec<String>,
    /// Video length in seconds: 4, 6 or 8 (Veo's default when unset).
    pub duration: Option<u32>,
    /// Placeholders instead of a paid call; unset: as the image was made.
    pub dry_run: Option<bool>,
    /// Make another video even if one was made of this image already.
    pub again: bool,
    /// What the stored image must show for the video to be made.
    pub grounds: Grounds,
}

/// Why an image cannot be promoted to a video. Each text names the job and
/// says what would be accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PromoteRefusal {
    /// The job is not an image.
    #[error("job {id} is a {kind}; only an image is made into a video")]
    NotAnImage {
        /// The job.
        id: String,
        /// What it is.
        kind: JobKind,
    },
    /// The safety filters withheld the image.
    #[error("job {id} was stopped by the safety filters; it has no image to make a video of")]
    Filtered {
        /// The job.
        id: String,
    },
    /// The image is not finished (or never will be).
    #[error("job {id} is {status}; only a completed or delivered image is made into a video")]
    NotFinished {
        /// The job.
        id: String,
        /// Where it stands.
        status: JobStatus,
    },
    /// Finished, but nothing came out.
    #[error("job {id} has no image: every output was withheld")]
    NoOutputs {
        /// The job.
        id: String,
    },
    /// The image's first output is not a type Veo takes.
    #[error("job {id}'s image {uri} is not a PNG or JPEG, which Veo needs for a first frame")]
    NotAFrame {
        /// The job.
        id: String,
        /// Its first output.
        uri: String,
    },
    /// The stored image does not give the grounds the promotion needs
    /// (not approved, say, whatever an event claimed).
    #[error("job {id} is not made into a video: {why}")]
    NoGrounds {
        /// The job.
        id: String,
        /// What the stored job shows instead.
        why: String,
    },
    /// The options asked for a video Veo would not make.
    #[error("{0}")]
    Invalid(#[from] ValidationError),
}

/// The review loop's transitions and reads.
impl Job {
    /// Whether an image is done well enough to be judged: completed or
    /// delivered. The reason it is not, otherwise, for the reviewer.
    fn reviewable(&self) -> Result<(), String> {
        if self.kind != JobKind::Image {
            return Err(format!(
                "job {} is a {}; only images are approved or rejected",
                self.id, self.kind
            ));
        }
        if !matches!(self.status, JobStatus::Completed | JobStatus::Delivered) {
            return Err(format!(
                "job {} is {}; only a completed or delivered image can be reviewed",
                self.id, self.status
            ));
        }
        Ok(())
    }

    /// A reviewer's verdict on a completed or delivered image; a second
    /// review replaces the first. The status does not change.
    pub fn review(
        &mut self,
        verdict: Verdict,
        reason: Option<String>,
        now: Timestamp,
    ) -> Transition {
        self.reviewable().map_err(TransitionError::ReviewLoop)?;
        // Checked where it comes in (`validate::review_reason`); blank
        // means none, here too.
        let reason = reason
            .map(|r| r.trim().to_string())
            .filter(|r| !r.is_empty());
        self.review = Some(Review {
            verdict,
            reason,
            at: now,
        });
        self.verdict = Some(verdict);
        self.updated_at = now;
        Ok(())
    }

    /// Records a video made from this image. The same child twice is one
    /// entry, so a repeated promotion leaves the list as it was.
    pub fn adopt_child(&mut self, child_id: &str, now: Timestamp) -> Transition {
        if self.kind != JobKind::Image {
            return Err(TransitionError::ReviewLoop(format!(
                "job {} is a {}; only an image has videos made from it",
                self.id, self.kind
            )));
        }
        if !self.children.iter().any(|c| c == child_id) {
            self.children.push(child_id.to_string());
            self.updated_at = now;
        }
        Ok(())
    }

    /// The video job to make of this image: its prompt (and negative
    /// prompt), its first output as the first frame, its priority, and the
    /// options' parameters. Its request id makes the promotion idempotent:
    /// `promote:{image}` for the first video, `promote:{image}:{n}` for the
    /// n-th one asked for with `again`.
    pub fn promotion(&self, options: &PromoteOptions) -> Result<NewJob, PromoteRefusal> {
        let first_frame = self.promotable_frame()?;
        options
            .grounds
            .hold_for(self)
            .map_err(|why| PromoteRefusal::NoGrounds {
                id: self.id.clone(),
                why,
            })?;
        let mut new = NewJob::new(self.prompt.clone(), JobKind::Video);
        new.params = video_params(&self.params, options)?;
        new.priority = self.priority;
        new.dry_run = options.dry_run.unwrap_or(self.dry_run);
        new.parent = Some(self.id.clone());
        new.tenant = self.tenant.clone();
        new.first_frame = Some(first_frame);
        new.request_id = Some(self.promotion_key(options.again));
        new.validate()?;
        Ok(new)
    }

    /// The first frame of a video of this image, or why there is none.
    fn promotable_frame(&self) -> Result<FirstFrame, PromoteRefusal> {
        let id = self.id.clone();
        if self.kind != JobKind::Image {
            return Err(PromoteRefusal::NotAnImage {
                id,
                kind: self.kind,
            });
        }
        match self.status {
            JobStatus::Completed | JobStatus::Delivered => {}
            JobStatus::Failed if self.error.as_ref().is_some_and(|e| e.code == FILTERED) => {
                return Err(PromoteRefusal::Filtered { id });
            }
            status => return Err(PromoteRefusal::NotFinished { id, status }),
        }
        let Some(uri) = self.outputs.first() else {
            return Err(PromoteRefusal::NoOutputs { id });
        };
        FirstFrame::of_image(&uri.to_string()).ok_or_else(|| PromoteRefusal::NotAFrame {
            id,
            uri: uri.to_string(),
        })
    }

    /// The request id of the next video of this image.
    fn promotion_key(&self, again: bool) -> String {
        let n = self.children.len() + 1;
        if again && n > 1 {
            format!("promote:{}:{n}", self.id)
        } else {
            format!("promote:{}", self.id)
        }
    }
}

/// A video's parameters: the image's negative prompt, then the options'
/// `key=value` pairs, then the duration.
fn video_params(image: &JobParams, options: &PromoteOptions) -> Result<JobParams, ValidationError> {
    let mut params = JobParams {
        negative_prompt: image.negative_prompt.clone(),
        ..JobParams::default()
    };
    for pair in &options.params {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(ValidationError::new(
                "params",
                format!("{pair:?} is not key=value"),
            ));
        };
        params.set(key.trim(), value.trim())?;
    }
    if let Some(duration) = options.duration {
        if !VIDEO_DURATIONS.contains(&duration) {
            return Err(ValidationError::new(
                "duration",
                format!("{duration} seconds is not a Veo length; use 4, 6 or 8"),
            ));
        }
        params.duration_seconds = Some(duration);
    }
    Ok(params)
}
