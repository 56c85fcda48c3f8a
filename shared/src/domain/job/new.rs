//! Making a job: the new job's checks, the job it becomes, and the ids
//! that make creating it idempotent.

use super::{Job, NewJob};
use crate::domain::invalid::ValidationError;
use crate::domain::tenant::TenantName;
use crate::domain::validate::{validate_params, validate_prompt};
use crate::domain::values::{DEFAULT_MAX_ATTEMPTS, JobKind, JobParams, JobStatus};
use crate::time::Timestamp;

impl NewJob {
    /// A job with default parameters, priority 0, dry run, three attempts.
    pub fn new(prompt: impl Into<String>, kind: JobKind) -> Self {
        Self {
            prompt: prompt.into(),
            kind,
            params: JobParams::default(),
            priority: 0,
            request_id: None,
            key_scope: None,
            request_digest: None,
            dry_run: true,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            parent: None,
            chain: None,
            first_frame: None,
            tenant: TenantName::default(),
            webhook: None,
        }
    }

    /// Checks the prompt, the parameters and the review-loop fields.
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_prompt(&self.prompt)?;
        validate_params(self.kind, &self.params)?;
        validate_lineage(self)?;
        if self.max_attempts == 0 {
            return Err(ValidationError::new("max_attempts", "must be at least 1"));
        }
        if let Some(request_id) = &self.request_id
            && (request_id.trim().is_empty() || request_id.len() > 500)
        {
            return Err(ValidationError::new(
                "request_id",
                "must be between 1 and 500 bytes and not blank",
            ));
        }
        Ok(())
    }
}

/// Checks the review-loop fields of a new job: a first frame and a parent
/// only on a video, a chain only on an image.
fn validate_lineage(new: &NewJob) -> Result<(), ValidationError> {
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

impl Job {
    /// A new pending job. The id comes from the request id when there is one.
    pub fn new(new: NewJob, now: Timestamp) -> Self {
        let id = Self::id_of(&new).unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
        Self {
            id,
            prompt: new.prompt,
            kind: new.kind,
            params: new.params,
            priority: new.priority,
            status: JobStatus::Pending,
            attempts: 0,
            max_attempts: new.max_attempts,
            lease_owner: None,
            lease_expires_at: None,
            operation_name: None,
            submitted_at: None,
            outputs: Vec::new(),
            deliveries: Vec::new(),
            error: None,
            request_id: new.request_id,
            request_digest: new.request_digest,
            dry_run: new.dry_run,
            created_at: now,
            updated_at: now,
            completed_at: None,
            expire_at: None,
            waiting: None,
            reservation: None,
            calling: None,
            held: Vec::new(),
            parent: new.parent,
            children: Vec::new(),
            review: None,
            verdict: None,
            chain: new.chain,
            first_frame: new.first_frame,
            model: None,
            tenant: new.tenant,
            webhook: new.webhook,
            started_at: None,
        }
    }

    /// Whether `id` could be a job id at all: ids are hex (request-derived
    /// ones too), so this is the one shape check wherever an id comes in
    /// (a URL, a job message, an object name). No stray path, separator or
    /// control character, and no id Firestore reserves (`__name__`), gets
    /// past it.
    pub fn is_plausible_id(id: &str) -> bool {
        !id.is_empty()
            && id.len() <= 200
            && !id.starts_with("__")
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    }

    /// The job id a request id maps to. Deterministic, so that creating by
    /// request id is a create-if-absent on one document.
    pub fn id_for_request(request_id: &str) -> String {
        Self::id_for_scoped_request(None, request_id)
    }

    /// The job id of request id `request_id` in the namespace of `scope`
    /// (see [`NewJob::key_scope`]); `None` is the namespace every request
    /// id lived in before callers had their own, so older jobs keep their
    /// ids.
    pub fn id_for_scoped_request(scope: Option<&str>, request_id: &str) -> String {
        const NAMESPACE: uuid::Uuid =
            uuid::Uuid::from_u128(0x6a5e_7c1d_2b4f_4e0a_9d3c_8f1e_0b2a_7c55);
        let name = match scope {
            None => request_id.to_string(),
            // An account name holds no newline, so no scope and key can
            // spell another pair's name.
            Some(scope) => format!("{scope}\n{request_id}"),
        };
        uuid::Uuid::new_v5(&NAMESPACE, name.as_bytes())
            .simple()
            .to_string()
    }

    /// The id `new` will have, when it has a request id.
    pub fn id_of(new: &NewJob) -> Option<String> {
        let request_id = new.request_id.as_deref()?;
        let scope = Self::request_scope(&new.tenant, new.key_scope.as_deref());
        Some(Self::id_for_scoped_request(scope.as_deref(), request_id))
    }

    /// The namespace of the request ids of `tenant`'s caller `key_scope`
    /// (see [`NewJob::key_scope`]): request ids live in one namespace per
    /// tenant and caller; the default tenant's are those of before tenants,
    /// so older jobs keep their ids.
    pub fn request_scope(tenant: &TenantName, key_scope: Option<&str>) -> Option<String> {
        match (tenant.is_default(), key_scope) {
            (true, scope) => scope.map(str::to_string),
            // A tenant name holds no colon and an account name does not
            // start with `tenant:`, so no pair spells another's scope.
            (false, None) => Some(format!("tenant:{tenant}")),
            (false, Some(scope)) => Some(format!("tenant:{tenant}:{scope}")),
        }
    }
}
