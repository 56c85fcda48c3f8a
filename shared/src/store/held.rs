//! Held outputs: the bytes of outputs that were generated and paid for but
//! that the output bucket would not take (an outage longer than the push
//! deadline). They are kept in the store, in `held/{key}.{n}` chunks small
//! enough for a Firestore document, and the job waits as
//! `storage_unavailable`; the next claim writes them from here instead of
//! calling the model again. Chunks carry an `expire_at`, so what a crash
//! leaves behind is removed by retention.

use super::backend::{Collection, Write};
use super::{Store, from_stored_as, to_doc};
use crate::crc::Crc32c;
use crate::domain::job::Job;
use crate::domain::tenant::TenantName;
use crate::domain::values::{HeldOutput, JobError};
use crate::error::{Error, Result};
use crate::objects::OutputFile;
use crate::time::Timestamp;
use base64::Engine;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Raw bytes per chunk: 512 KiB is about 700 KB of base64, under
/// Firestore's 1 MiB document limit.
const CHUNK_BYTES: usize = 512 * 1024;
/// Chunks written or read at once.
const IN_FLIGHT: usize = 4;
/// How long an orphaned chunk is kept.
pub const HELD_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// One chunk of a held output (`held/{key}.{n}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct HeldChunk {
    id: String,
    job_id: String,
    /// The job's tenant (absent in chunks held before tenants: `default`).
    #[serde(default)]
    tenant: TenantName,
    /// Base64 of the bytes.
    data: String,
    expire_at: Timestamp,
}

fn chunk_id(key: &str, n: u32) -> String {
    format!("{key}.{n}")
}

impl Store {
    /// Holds the outputs of `job`, claimed by `owner`, that could not be
    /// written: their bytes go to the store (each chunk naming the job and
    /// its tenant), then the job waits (see [`Job::hold`]) listing them,
    /// without using up an attempt.
    pub async fn hold_outputs(
        &self,
        job: &Job,
        owner: &str,
        outputs: &[OutputFile],
        error: JobError,
    ) -> Result<Job> {
        // A fresh key per hold: chunks of an earlier, abandoned hold of the
        // same job can never be mistaken for these.
        let (id, tenant) = (job.id(), job.tenant());
        let nonce = uuid::Uuid::new_v4().simple().to_string();
        let expire_at = Timestamp::now().plus(HELD_RETENTION);
        let mut held = Vec::with_capacity(outputs.len());
        let mut chunks = Vec::new();
        for (n, output) in outputs.iter().enumerate() {
            let key = format!("{id}.{}.{n}", &nonce[..12]);
            let pieces: Vec<&[u8]> = output.data.chunks(CHUNK_BYTES).collect();
            for (c, piece) in pieces.iter().enumerate() {
                let c = u32::try_from(c).unwrap_or(u32::MAX);
                chunks.push(HeldChunk {
                    id: chunk_id(&key, c),
                    job_id: id.to_string(),
                    tenant: tenant.clone(),
                    data: base64::engine::general_purpose::STANDARD.encode(piece),
                    expire_at,
                });
            }
            held.push(HeldOutput {
                key,
                name: output.name.clone(),
                content_type: output.content_type.clone(),
                size: output.data.len() as u64,
                crc32c: Crc32c::of(&output.data),
                chunks: u32::try_from(pieces.len()).unwrap_or(u32::MAX),
            });
        }
        futures::stream::iter(chunks)
            .map(|chunk| async move {
                let doc = to_doc(&chunk)?;
                self.backend
                    .create(Collection::Held, &chunk.id, &doc)
                    .await
                    .map(|_| ())
            })
            .buffer_unordered(IN_FLIGHT)
            .try_collect::<Vec<()>>()
            .await?;
        self.update(id, |job: &mut Job, now| {
            job.hold(owner, held.clone(), error.clone(), now)
        })
        .await
    }

    /// The bytes of a held output, checked against its size and CRC32C.
    pub async fn held_bytes(&self, output: &HeldOutput) -> Result<Bytes> {
        let pieces: Vec<Vec<u8>> = futures::stream::iter(0..output.chunks)
            .map(|n| async move {
                let id = chunk_id(&output.key, n);
                let stored = self
                    .backend
                    .get(Collection::Held, &id)
                    .await?
                    .ok_or_else(|| Error::NotFound {
                        kind: "held output chunk",
                        id: id.clone(),
                    })?;
                let (chunk, _) = from_stored_as::<HeldChunk>(Collection::Held, stored)?;
                base64::engine::general_purpose::STANDARD
                    .decode(chunk.data)
                    .map_err(|e| Error::store(format!("reading held chunk {id}"), e, false))
            })
            .buffered(IN_FLIGHT)
            .try_collect()
            .await?;
        let data = Bytes::from(pieces.concat());
        if data.len() as u64 != output.size || Crc32c::of(&data) != output.crc32c {
            return Err(Error::store(
                format!("reading the held output {}", output.name),
                "its bytes do not match the size and CRC32C recorded when it was held",
                false,
            ));
        }
        Ok(data)
    }

    /// Deletes the chunks of held outputs once they are written.
    pub async fn drop_held(&self, outputs: &[HeldOutput]) -> Result<()> {
        let deletes: Vec<Write> = outputs
            .iter()
            .flat_map(|output| {
                (0..output.chunks).map(|n| Write::Delete {
                    collection: Collection::Held,
                    id: chunk_id(&output.key, n),
                    expected: None,
                })
            })
            .collect();
        // Firestore takes at most 500 writes per commit.
        for batch in deletes.chunks(500) {
            self.backend.commit(batch).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Lease;
    use crate::domain::job::NewJob;
    use crate::domain::values::JobKind;
    use crate::store::embedded::EmbeddedBackend;
    use crate::store::{Claim, Store};
    use std::sync::Arc;

    #[tokio::test]
    async fn held_chunks_name_their_job_and_its_tenant_and_read_back_whole() {
        let store = Store::new(Arc::new(EmbeddedBackend::in_memory().unwrap()));
        let mut new = NewJob::new("hail on a roof", JobKind::Image);
        new.tenant = "acme".parse().unwrap();
        let id = store.create_job(new).await.unwrap().record.id().to_string();
        let lease = Lease::new("w", Duration::from_secs(60));
        let Claim::Claimed(job) = store.claim_job(&id, &lease).await.unwrap() else {
            panic!("claimed");
        };
        let output = OutputFile {
            name: format!("images/{id}/0.png"),
            content_type: "image/png".into(),
            data: Bytes::from(vec![7u8; CHUNK_BYTES + 10]),
        };
        let error = JobError::new("storage_unavailable", "the bucket is down", true);
        let held = store
            .hold_outputs(&job, "w", std::slice::from_ref(&output), error)
            .await
            .unwrap();
        let outputs = held.held();
        assert_eq!((outputs.len(), outputs[0].chunks), (1, 2));
        for n in 0..2 {
            let stored = store
                .backend
                .get(Collection::Held, &chunk_id(&outputs[0].key, n))
                .await
                .unwrap()
                .unwrap();
            let (chunk, _) = from_stored_as::<HeldChunk>(Collection::Held, stored).unwrap();
            assert_eq!(
                (chunk.job_id.as_str(), chunk.tenant.as_str()),
                (id.as_str(), "acme")
            );
        }
        assert_eq!(store.held_bytes(&outputs[0]).await.unwrap(), output.data);
    }
}
