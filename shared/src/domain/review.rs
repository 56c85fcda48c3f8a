//! The review loop: an image is tried cheaply, a reviewer approves or
//! rejects it, and an approved image is promoted to a video that opens on
//! it (Veo's image-to-video: the image is the video's first frame).
//!
//! What a job records of it: its verdict ([`Review`]), the lineage between
//! an image and the videos made from it (`parent` on the video, `children`
//! on the image), the first frame a video starts from ([`FirstFrame`]), and
//! whether a request asked for a video as soon as its image is delivered
//! ([`Chain`]). The store applies these transitions like every other one;
//! [`Job::promotion`] only decides what the video job is.

use super::job::{FILTERED, Job, JobKind, JobParams, JobStatus, NewJob};
use super::validate::{VIDEO_DURATIONS, ValidationError};
use super::{Transition, TransitionError};
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// What a reviewer said of an image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Good enough to pay for a video of it.
    Approved,
    /// Not worth a video.
    Rejected,
}

impl Verdict {
    /// The name used in documents, the API and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Approved => "approved",
            Verdict::Rejected => "rejected",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Verdict {
    type Err = ValidationError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim().to_ascii_lowercase().as_str() {
            "approved" | "approve" => Ok(Verdict::Approved),
            "rejected" | "reject" => Ok(Verdict::Rejected),
            _ => Err(ValidationError::new(
                "verdict",
                format!("{text:?} is not a verdict; use approved or rejected"),
            )),
        }
    }
}

/// A reviewer's mark on an image. Reviewing again replaces it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Review {
    /// Approved or rejected.
    pub verdict: Verdict,
    /// Why, in the reviewer's words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When the verdict was given.
    pub at: Timestamp,
}

/// What to make of a job once it is delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Chain {
    /// When this image is delivered, make a video that opens on it.
    Video,
}

/// Error code of a video whose first frame is not in Cloud Storage (any
/// more) when its generator takes it: nothing is sent, nothing is paid.
pub const FIRST_FRAME_MISSING: &str = "first_frame_missing";

/// The MIME types Veo takes as a first frame.
pub const FIRST_FRAME_TYPES: [&str; 2] = ["image/png", "image/jpeg"];

/// The image a video starts from: an object in Cloud Storage that Veo
/// reads as the video's first frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirstFrame {
    /// `gs://bucket/object`.
    pub gcs_uri: String,
    /// `image/png` or `image/jpeg`.
    pub mime_type: String,
}

impl FirstFrame {
    /// The first frame for the image at `uri`, its MIME type read from the
    /// extension (`.png`, `.jpg`, `.jpeg`); `None` for anything else.
    pub fn of_image(uri: &str) -> Option<Self> {
        let extension = uri.rsplit_once('.')?.1.to_ascii_lowercase();
        let mime_type = match extension.as_str() {
            "png" => "image/png",
            "jpg" | "jpeg" => "image/jpeg",
            _ => return None,
        };
        Some(Self {
            gcs_uri: uri.to_string(),
            mime_type: mime_type.to_string(),
        })
    }

    /// The bucket and object name of `gcs_uri`, when it is
    /// `gs://bucket/object` with neither part empty.
    pub fn location(&self) -> Option<(&str, &str)> {
        let (bucket, object) = self.gcs_uri.strip_prefix("gs://")?.split_once('/')?;
        (!bucket.is_empty() && !object.is_empty()).then_some((bucket, object))
    }

    /// Checks the address and the type Veo will be sent.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.location().is_none() {
            return Err(ValidationError::new(
                "first_frame.gcs_uri",
                format!("{:?} is not gs://bucket/object", self.gcs_uri),
            ));
        }
        if !FIRST_FRAME_TYPES.contains(&self.mime_type.as_str()) {
            return Err(ValidationError::new(
                "first_frame.mime_type",
                format!(
                    "{:?} is not accepted; Veo takes {}",
                    self.mime_type,
                    FIRST_FRAME_TYPES.join(" or ")
                ),
            ));
        }
        Ok(())
    }
}

/// Checks the review-loop fields of a new job: a first frame and a parent
/// only on a video, a chain only on an image.
pub(super) fn validate_lineage(new: &NewJob) -> Result<(), ValidationError> {
    if let Some(frame) = &new.first_frame {
        if new.kind != JobKind::Video {
            return Err(ValidationError::new(
                "first_frame",
                "applies to video jobs only",
            ));
        }
        frame.validate()?;
    }
    if new.parent.is_some() && new.kind != JobKind::Video {
        return Err(ValidationError::new(
            "parent",
            "only a video is made from another job",
        ));
    }
    if new.chain.is_some() && new.kind != JobKind::Image {
        return Err(ValidationError::new(
            "chain",
            "applies to image jobs only: a video is made of an image once it is delivered",
        ));
    }
    Ok(())
}

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
    /// The image this video was made from.
    pub fn parent(&self) -> Option<&str> {
        self.parent.as_deref()
    }

    /// The videos made from this image, in the order they were made.
    pub fn children(&self) -> &[String] {
        &self.children
    }

    /// The reviewer's mark on this image, if any (named apart from
    /// [`Job::review`], the transition that gives it).
    pub fn reviewed(&self) -> Option<&Review> {
        self.review.as_ref()
    }

    /// The reviewer's verdict on this image, if any.
    pub fn verdict(&self) -> Option<Verdict> {
        self.verdict
    }

    /// What to make of this job once it is delivered.
    pub fn chain(&self) -> Option<Chain> {
        self.chain
    }

    /// The image this video starts from.
    pub fn first_frame(&self) -> Option<&FirstFrame> {
        self.first_frame.as_ref()
    }

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
        FirstFrame::of_image(uri).ok_or_else(|| PromoteRefusal::NotAFrame {
            id,
            uri: uri.clone(),
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
