//! Downloads: one record per finalized output object, tracking its copy to the
//! destination.

use super::destination::Target;
use super::gs_uri::GsUri;
use super::invalid::ValidationError;
use super::job::Retention;
use super::tenant::TenantName;
use super::values::JobError;
use super::{Lease, Transition, TransitionError};
use crate::crc::Crc32c;
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Copies allowed per object before the download fails for good.
pub const DEFAULT_DOWNLOAD_ATTEMPTS: u32 = 3;

/// Where a download stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DownloadStatus {
    /// Waiting for a copier.
    Pending,
    /// A copier holds the lease.
    Downloading,
    /// Copied and verified.
    Completed,
    /// Gave up; `error` says why.
    Failed,
}

impl DownloadStatus {
    /// Every status, in pipeline order.
    pub const ALL: [DownloadStatus; 4] = [
        DownloadStatus::Pending,
        DownloadStatus::Downloading,
        DownloadStatus::Completed,
        DownloadStatus::Failed,
    ];

    /// The name used in documents and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            DownloadStatus::Pending => "pending",
            DownloadStatus::Downloading => "downloading",
            DownloadStatus::Completed => "completed",
            DownloadStatus::Failed => "failed",
        }
    }
}

impl fmt::Display for DownloadStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DownloadStatus {
    type Err = ValidationError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let wanted = text.trim().to_ascii_lowercase();
        DownloadStatus::ALL
            .into_iter()
            .find(|s| s.as_str() == wanted)
            .ok_or_else(|| {
                let all = DownloadStatus::ALL.map(DownloadStatus::as_str).join(", ");
                ValidationError::new(
                    "status",
                    format!("{text:?} is not a download status; use one of {all}"),
                )
            })
    }
}

/// What kind of file an object is, from its path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileType {
    /// Under `images/`.
    Image,
    /// Under `videos/`.
    Video,
    /// Anything else.
    Other,
}

/// What an output object's name says: whose job made it and which job,
/// `images/{job}/...` and `videos/{job}/...` for the default tenant,
/// `tenants/{tenant}/images/{job}/...` for any other (see
/// [`crate::domain::job::Job::output_folder`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputName<'a> {
    /// The tenant of the prefix.
    pub tenant: TenantName,
    /// The job.
    pub job_id: &'a str,
    /// Image or video.
    pub file_type: FileType,
    /// The name below the tenant's prefix, as the tenant's destination
    /// holds it.
    pub relative: &'a str,
}

impl<'a> OutputName<'a> {
    /// Reads `name`; `None` when it is not an output of a job.
    pub fn parse(name: &'a str) -> Option<Self> {
        let (tenant, relative) = match name.strip_prefix("tenants/") {
            Some(rest) => {
                let (tenant, relative) = rest.split_once('/')?;
                let tenant: TenantName = tenant.parse().ok()?;
                // The default tenant's outputs have no prefix: one name each.
                if tenant.is_default() {
                    return None;
                }
                (tenant, relative)
            }
            None => (TenantName::default(), name),
        };
        let mut parts = relative.splitn(3, '/');
        let file_type = match parts.next()? {
            "images" => FileType::Image,
            "videos" => FileType::Video,
            _ => return None,
        };
        let job_id = parts.next()?;
        let rest = parts.next()?;
        (super::job::Job::is_plausible_id(job_id) && !rest.is_empty()).then_some(Self {
            tenant,
            job_id,
            file_type,
            relative,
        })
    }
}

/// A download document (`downloads/{id}`). Each field is described once,
/// on its accessor below.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Download {
    pub(in crate::domain) id: String,
    pub(in crate::domain) job_id: String,
    pub(in crate::domain) source: GsUri,
    #[serde(default)]
    pub(in crate::domain) generation: Option<i64>,
    pub(in crate::domain) destination: Target,
    pub(in crate::domain) file_type: FileType,
    #[serde(default)]
    pub(in crate::domain) priority: i64,
    pub(in crate::domain) status: DownloadStatus,
    #[serde(default)]
    pub(in crate::domain) attempts: u32,
    pub(in crate::domain) max_attempts: u32,
    #[serde(default)]
    pub(in crate::domain) bytes_copied: u64,
    #[serde(default)]
    pub(in crate::domain) size: Option<u64>,
    #[serde(default)]
    pub(in crate::domain) crc32c: Option<Crc32c>,
    #[serde(default)]
    pub(in crate::domain) lease_owner: Option<String>,
    #[serde(default)]
    pub(in crate::domain) lease_expires_at: Option<Timestamp>,
    #[serde(default)]
    pub(in crate::domain) error: Option<JobError>,
    pub(in crate::domain) created_at: Timestamp,
    pub(in crate::domain) updated_at: Timestamp,
    #[serde(default)]
    pub(in crate::domain) started_at: Option<Timestamp>,
    #[serde(default)]
    pub(in crate::domain) completed_at: Option<Timestamp>,
    #[serde(default)]
    pub(in crate::domain) expire_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "TenantName::is_default")]
    pub(in crate::domain) tenant: TenantName,
}

/// Read access: a download's fields change only through its transitions.
impl Download {
    /// Derived from bucket, object and generation: see [`Download::id_for`].
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The job the object belongs to.
    pub fn job_id(&self) -> &str {
        &self.job_id
    }
    /// Whose output it is: its job's tenant.
    pub fn tenant(&self) -> &TenantName {
        &self.tenant
    }

    /// `gs://bucket/object`.
    pub fn source(&self) -> &GsUri {
        &self.source
    }

    /// The object generation that was finalized.
    pub fn generation(&self) -> Option<i64> {
        self.generation
    }

    /// Where the copy goes.
    pub fn destination(&self) -> &Target {
        &self.destination
    }

    /// From the object path.
    pub fn file_type(&self) -> FileType {
        self.file_type
    }

    /// Higher copies first.
    pub fn priority(&self) -> i64 {
        self.priority
    }

    /// Where it stands.
    pub fn status(&self) -> DownloadStatus {
        self.status
    }

    /// Copies started so far.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Copies allowed.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// Bytes at the destination so far (a resumed copy starts here).
    pub fn bytes_copied(&self) -> u64 {
        self.bytes_copied
    }

    /// Object size, from its metadata.
    pub fn size(&self) -> Option<u64> {
        self.size
    }

    /// Object CRC32C (base64, as GCS gives it).
    pub fn crc32c(&self) -> Option<Crc32c> {
        self.crc32c
    }

    /// Who holds the lease while downloading.
    pub fn lease_owner(&self) -> Option<&str> {
        self.lease_owner.as_deref()
    }

    /// When that lease runs out.
    pub fn lease_expires_at(&self) -> Option<Timestamp> {
        self.lease_expires_at
    }

    /// Why it failed, or why the last attempt failed.
    pub fn error(&self) -> Option<&JobError> {
        self.error.as_ref()
    }

    /// Creation time.
    pub fn created_at(&self) -> Timestamp {
        self.created_at
    }

    /// Last change.
    pub fn updated_at(&self) -> Timestamp {
        self.updated_at
    }

    /// When the first copy started.
    pub fn started_at(&self) -> Option<Timestamp> {
        self.started_at
    }

    /// When the copy was verified.
    pub fn completed_at(&self) -> Option<Timestamp> {
        self.completed_at
    }

    /// When the retention rules allow deleting it.
    pub fn expire_at(&self) -> Option<Timestamp> {
        self.expire_at
    }
}

/// What it takes to create a download record.
#[derive(Clone, Debug, PartialEq)]
pub struct NewDownload {
    /// The job the object belongs to.
    pub job_id: String,
    /// Source bucket.
    pub bucket: String,
    /// Source object name.
    pub object: String,
    /// Source object generation.
    pub generation: Option<i64>,
    /// Where the copy goes.
    pub destination: Target,
    /// From the object path.
    pub file_type: FileType,
    /// Higher copies first.
    pub priority: i64,
    /// Object size, when the event carried it.
    pub size: Option<u64>,
    /// Object CRC32C, when the event carried it.
    pub crc32c: Option<Crc32c>,
    /// Whose output it is (from the object's prefix).
    pub tenant: TenantName,
}

impl Download {
    /// The record id of one object generation: a redelivered finalize event
    /// maps to the same record.
    pub fn id_for(bucket: &str, object: &str, generation: Option<i64>) -> String {
        const NAMESPACE: uuid::Uuid =
            uuid::Uuid::from_u128(0x1f0c_55e2_8a7d_4b39_b6a4_2d9e_73c1_0f88);
        let generation = generation.map(|g| g.to_string()).unwrap_or_default();
        // Length-prefixed so that no two (bucket, object) pairs share a key.
        let key = format!("{}:{bucket}{object}#{generation}", bucket.len());
        uuid::Uuid::new_v5(&NAMESPACE, key.as_bytes())
            .simple()
            .to_string()
    }

    /// A new pending download.
    pub fn new(new: NewDownload, now: Timestamp) -> Self {
        Self {
            id: Self::id_for(&new.bucket, &new.object, new.generation),
            job_id: new.job_id,
            source: GsUri {
                bucket: new.bucket,
                name: new.object,
            },
            generation: new.generation,
            destination: new.destination,
            file_type: new.file_type,
            priority: new.priority,
            status: DownloadStatus::Pending,
            attempts: 0,
            max_attempts: DEFAULT_DOWNLOAD_ATTEMPTS,
            bytes_copied: 0,
            size: new.size,
            crc32c: new.crc32c,
            lease_owner: None,
            lease_expires_at: None,
            error: None,
            created_at: now,
            updated_at: now,
            started_at: None,
            completed_at: None,
            expire_at: None,
            tenant: new.tenant,
        }
    }

    fn refuse(&self, action: &'static str) -> TransitionError {
        TransitionError::NotAllowed {
            action,
            status: self.status.as_str(),
            kind: "download",
        }
    }

    fn check_owner(&self, owner: &str) -> Transition {
        if self.status == DownloadStatus::Downloading && self.lease_owner.as_deref() == Some(owner)
        {
            Ok(())
        } else {
            Err(TransitionError::NotLeaseOwner {
                owner: owner.to_string(),
                holder: self.lease_owner.clone(),
            })
        }
    }

    /// pending, or downloading with a lease that ran out → downloading. Counts
    /// an attempt; refuses with [`super::job::ClaimRefusal::Exhausted`] when none is left.
    pub fn claim(&mut self, lease: &Lease, now: Timestamp) -> Result<(), super::job::ClaimRefusal> {
        use super::job::ClaimRefusal;
        match self.status {
            DownloadStatus::Pending => {}
            DownloadStatus::Downloading
                if self.lease_expires_at.is_none_or(|until| until <= now) => {}
            DownloadStatus::Downloading => {
                return Err(ClaimRefusal::Leased {
                    owner: self.lease_owner.clone().unwrap_or_default(),
                    until: self.lease_expires_at.unwrap_or(now),
                });
            }
            other => return Err(ClaimRefusal::NotClaimable(other.as_str())),
        }
        if self.attempts >= self.max_attempts {
            return Err(ClaimRefusal::Exhausted);
        }
        self.status = DownloadStatus::Downloading;
        self.attempts += 1;
        self.lease_owner = Some(lease.owner.clone());
        self.lease_expires_at = Some(now.plus(lease.ttl));
        self.started_at.get_or_insert(now);
        self.updated_at = now;
        Ok(())
    }

    /// Fails a download that has no attempt left.
    pub fn exhaust(&mut self, now: Timestamp) -> Transition {
        if self.status == DownloadStatus::Completed || self.status == DownloadStatus::Failed {
            return Err(self.refuse("fail"));
        }
        let last = self
            .error
            .as_ref()
            .map(|e| format!("; last error: {e}"))
            .unwrap_or_default();
        self.status = DownloadStatus::Failed;
        self.error = Some(JobError::new(
            super::values::ATTEMPTS_EXHAUSTED,
            format!("gave up after {} attempts{last}", self.attempts),
            false,
        ));
        self.lease_owner = None;
        self.lease_expires_at = None;
        self.updated_at = now;
        Ok(())
    }

    /// Records progress of the copy and extends the lease.
    pub fn progress(&mut self, lease: &Lease, bytes_copied: u64, now: Timestamp) -> Transition {
        self.check_owner(&lease.owner)?;
        self.bytes_copied = bytes_copied;
        self.lease_expires_at = Some(now.plus(lease.ttl));
        self.updated_at = now;
        Ok(())
    }

    /// downloading → completed, verified at `bytes` bytes.
    pub fn complete(
        &mut self,
        owner: &str,
        bytes: u64,
        now: Timestamp,
        retention: &Retention,
    ) -> Transition {
        self.check_owner(owner)?;
        self.status = DownloadStatus::Completed;
        self.bytes_copied = bytes;
        self.error = None;
        self.lease_owner = None;
        self.lease_expires_at = None;
        self.completed_at = Some(now);
        self.expire_at = Some(now.plus(retention.completed_downloads));
        self.updated_at = now;
        Ok(())
    }

    /// A copy attempt failed: back to pending when the error is retryable and
    /// attempts remain, else failed.
    pub fn fail(&mut self, owner: &str, error: JobError, now: Timestamp) -> Transition {
        self.check_owner(owner)?;
        self.lease_owner = None;
        self.lease_expires_at = None;
        self.updated_at = now;
        if error.retryable && self.attempts < self.max_attempts {
            self.status = DownloadStatus::Pending;
            self.error = Some(error);
        } else if error.retryable {
            self.error = Some(error);
            self.exhaust(now)?;
        } else {
            self.status = DownloadStatus::Failed;
            self.error = Some(error);
        }
        Ok(())
    }

    /// The holder gives the copy back for a reason that is not the copy's
    /// fault (the deployment's credentials or role): downloading → pending,
    /// with the attempt its claim counted given back.
    pub fn wait(&mut self, owner: &str, error: JobError, now: Timestamp) -> Transition {
        if self.status != DownloadStatus::Downloading {
            return Err(self.refuse("put back to wait"));
        }
        self.check_owner(owner)?;
        self.status = DownloadStatus::Pending;
        self.attempts = self.attempts.saturating_sub(1);
        self.lease_owner = None;
        self.lease_expires_at = None;
        self.error = Some(error);
        self.updated_at = now;
        Ok(())
    }

    /// An operator's retry: failed → pending with fresh attempts. The bytes
    /// already copied are kept so the copy can resume.
    pub fn retry(&mut self, now: Timestamp) -> Transition {
        if self.status != DownloadStatus::Failed {
            return Err(self.refuse("retry"));
        }
        self.status = DownloadStatus::Pending;
        self.attempts = 0;
        self.error = None;
        self.updated_at = now;
        Ok(())
    }
}
