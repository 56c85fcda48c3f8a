//! The Cloud Storage adapter, for production and for fake-gcs-server.
//!
//! Two clients, because no emulator serves the whole of Cloud Storage's API:
//!
//! - the data plane (writing and reading bytes) goes through the
//!   `google-cloud-storage` crate, which brings resumable uploads, checksum
//!   validation of full reads and resuming of interrupted reads;
//! - the control plane (bucket creation, object metadata, listing,
//!   deletion) goes through the JSON API with plain `reqwest`, because the
//!   crate's `StorageControl` client speaks gRPC, which fake-gcs-server does
//!   not. Production accepts the same JSON calls.
//!
//! With an emulator endpoint both clients send no credentials; otherwise both
//! use Application Default Credentials. The endpoint comes from the
//! binary's config (`STORAGE_EMULATOR_HOST`); this module reads no
//! environment variables.
//!
//! The adapter and its `ObjectStore` impl are here; the JSON API requests
//! and the decoding of their answers are in `json`, the errors in `errors`.

mod errors;
mod json;

use self::errors::{backwards, not_found, past_the_end, status_error, storage_error};
use self::json::{encode, from_json, parse};

use crate::domain::gs_uri::GsUri;

use super::{ByteStream, ObjectMeta, ObjectStore, ReadRange};
use crate::crc::Crc32c;
use crate::error::{Error, Result};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use google_cloud_gax::retry_policy::RetryPolicyExt as _;
use google_cloud_storage::client::Storage;
use google_cloud_storage::model::Object;
use google_cloud_storage::read_object::ReadObjectResponse;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Production Cloud Storage.
const PRODUCTION_ENDPOINT: &str = "https://storage.googleapis.com";
/// Project named when creating a bucket in an emulator, which ignores it.
const EMULATOR_PROJECT: &str = "asmr-local";
/// Objects per page of a listing (the JSON API's maximum).
const LIST_PAGE_SIZE: u32 = 1000;
/// Deadline of one control-plane call.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(60);
/// Content type of an object stored without one.
const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

/// Where Cloud Storage is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcsConfig {
    /// An emulator such as fake-gcs-server (`http://127.0.0.1:80`), from
    /// `STORAGE_EMULATOR_HOST`; `None` for production with Application
    /// Default Credentials.
    pub emulator_endpoint: Option<String>,
}

/// How the JSON API calls authenticate.
enum Auth {
    /// No credentials: the emulator.
    Anonymous,
    /// Application Default Credentials; the provider caches tokens.
    Adc(Arc<dyn gcp_auth::TokenProvider>),
}

/// How long one write keeps retrying transient failures.
const WRITE_RETRY_TIME: std::time::Duration = std::time::Duration::from_secs(10);

/// Objects in Cloud Storage (or fake-gcs-server).
pub struct GcsObjectStore {
    storage: Storage,
    http: reqwest::Client,
    /// Base URL of the JSON API, without a trailing slash.
    endpoint: String,
    emulated: bool,
    auth: Auth,
    page_size: u32,
}

impl GcsObjectStore {
    /// Builds both clients. Without an emulator endpoint this looks up
    /// Application Default Credentials and fails if there are none.
    pub async fn new(config: GcsConfig) -> Result<Self> {
        const CONTEXT: &str = "connecting to Cloud Storage";
        let emulator = config
            .emulator_endpoint
            .map(|e| e.trim().trim_end_matches('/').to_string())
            .filter(|e| !e.is_empty());
        let (storage, endpoint, auth) = match emulator {
            Some(endpoint) => {
                let storage = Storage::builder()
                    .with_endpoint(endpoint.clone())
                    .with_credentials(
                        google_cloud_auth::credentials::anonymous::Builder::new().build(),
                    )
                    .build()
                    .await
                    .map_err(|e| Error::objects(CONTEXT, e, false))?;
                (storage, endpoint, Auth::Anonymous)
            }
            None => {
                let storage = Storage::builder()
                    .build()
                    .await
                    .map_err(|e| Error::objects(CONTEXT, e, false))?;
                let provider = gcp_auth::provider().await.map_err(|e| {
                    Error::objects(
                        CONTEXT,
                        format!("no Application Default Credentials were found ({e})"),
                        false,
                    )
                })?;
                (
                    storage,
                    PRODUCTION_ENDPOINT.to_string(),
                    Auth::Adc(provider),
                )
            }
        };
        let http = reqwest::Client::builder()
            .timeout(CONTROL_TIMEOUT)
            .build()
            .map_err(|e| Error::objects(CONTEXT, e, false))?;
        let emulated = matches!(auth, Auth::Anonymous);
        Ok(Self {
            storage,
            http,
            endpoint,
            emulated,
            auth,
            page_size: LIST_PAGE_SIZE,
        })
    }

    /// Lists `page_size` objects per JSON API call instead of 1000, so tests
    /// can exercise page tokens with a handful of objects.
    pub fn with_list_page_size(mut self, page_size: u32) -> Self {
        self.page_size = page_size.clamp(1, LIST_PAGE_SIZE);
        self
    }

    /// The project a new bucket belongs to.
    async fn project(&self) -> Result<String> {
        match &self.auth {
            Auth::Anonymous => Ok(EMULATOR_PROJECT.to_string()),
            Auth::Adc(provider) => {
                provider
                    .project_id()
                    .await
                    .map(|p| p.to_string())
                    .map_err(|e| {
                        Error::objects(
                            "creating a bucket",
                            format!("the credentials name no project ({e})"),
                            false,
                        )
                    })
            }
        }
    }

    /// Answers an empty range: the object must exist and the range must
    /// start inside it or at its end.
    async fn empty_read(&self, bucket: &str, name: &str, start: u64) -> Result<ByteStream> {
        let uri = gs(bucket, name);
        match self.metadata(bucket, name).await? {
            None => Err(not_found(&uri)),
            Some(meta) if start > meta.size => Err(past_the_end(&uri, start, meta.size)),
            Some(_) => Ok(futures::stream::empty().boxed()),
        }
    }
}

#[async_trait]
impl ObjectStore for GcsObjectStore {
    fn describe(&self) -> String {
        if self.emulated {
            format!("Cloud Storage emulator at {}", self.endpoint)
        } else {
            format!("Cloud Storage at {}", self.endpoint)
        }
    }

    async fn ensure_bucket(&self, bucket: &str) -> Result<()> {
        let context = format!("creating bucket gs://{bucket}");
        let project = self.project().await?;
        let url = format!(
            "{}/storage/v1/b?project={}",
            self.endpoint,
            encode(&project)
        );
        let body = serde_json::json!({ "name": bucket });
        let (status, body) = self.call(Method::POST, &url, Some(body), &context).await?;
        // 409: it exists already (ours, or, in production, somebody else's:
        // the first write will say which).
        if status.is_success() || status == StatusCode::CONFLICT {
            return Ok(());
        }
        Err(status_error(&context, status, &body))
    }

    async fn write(
        &self,
        bucket: &str,
        name: &str,
        data: Bytes,
        content_type: &str,
        metadata: &BTreeMap<String, String>,
    ) -> Result<ObjectMeta> {
        let uri = gs(bucket, name);
        let context = format!("writing {uri}");
        let crc = Crc32c::of(&data);
        let size = data.len() as u64;
        let upload = self
            .storage
            .write_object(format!("projects/_/buckets/{bucket}"), name, data)
            .set_content_type(content_type)
            .set_metadata(metadata.clone())
            // The service rejects the upload if the bytes arrive damaged.
            .with_known_crc32c(crc.0)
            // Rewriting the same bytes twice is harmless, so let the client
            // retry transient failures, but briefly: the client's own default
            // keeps trying for five minutes, and a caller holding a push must
            // know well inside its deadline (a generator then holds its
            // paid outputs elsewhere).
            .with_idempotency(true)
            .with_retry_policy(
                google_cloud_storage::retry_policy::RetryableErrors
                    .with_time_limit(WRITE_RETRY_TIME),
            )
            .send_buffered();
        // The upload's state machine is a 32 KB future: keep it off the stack.
        let object = Box::pin(upload)
            .await
            .map_err(|e| match e.http_status_code() {
                Some(404) => Error::NotFound {
                    kind: "bucket",
                    id: format!("gs://{bucket}"),
                },
                _ => storage_error(&context, &e),
            })?;
        let mut meta = match from_model(bucket, &object) {
            Some(meta) => meta,
            // The response lacked a checksum or generation: ask again.
            None => self.metadata(bucket, name).await?.ok_or_else(|| {
                Error::objects(
                    &context,
                    "the object vanished right after it was written",
                    true,
                )
            })?,
        };
        if meta.crc32c != crc || meta.size != size {
            return Err(Error::objects(
                &context,
                format!(
                    "Cloud Storage stored {} bytes with CRC32C {:08x}, but {size} bytes with CRC32C {crc:08x} were sent",
                    meta.size, meta.crc32c
                ),
                true,
            ));
        }
        // fake-gcs-server takes the content type from the header of the
        // uploaded bytes (which this client sends as
        // `application/octet-stream`), not from the object resource as Cloud
        // Storage does; set it again afterwards.
        if self.emulated && !content_type.is_empty() && meta.content_type != content_type {
            let url = format!(
                "{}?ifGenerationMatch={}",
                self.object_url(bucket, name),
                meta.generation
            );
            let body = serde_json::json!({ "contentType": content_type });
            let (status, body) = self.call(Method::PATCH, &url, Some(body), &context).await?;
            if !status.is_success() {
                return Err(status_error(&context, status, &body));
            }
            meta.content_type = content_type.to_string();
        }
        Ok(meta)
    }

    async fn read(&self, bucket: &str, name: &str, range: ReadRange) -> Result<ByteStream> {
        let uri = gs(bucket, name);
        let context = format!("reading {uri}");
        let wanted = match range.end {
            None if range.start == 0 => google_cloud_storage::model_ext::ReadRange::all(),
            None => google_cloud_storage::model_ext::ReadRange::offset(range.start),
            Some(end) if end < range.start => return Err(backwards(&uri, range)),
            // The crate reads a segment of length zero as "to the end".
            Some(end) if end == range.start => {
                return self.empty_read(bucket, name, range.start).await;
            }
            Some(end) => {
                google_cloud_storage::model_ext::ReadRange::segment(range.start, end - range.start)
            }
        };
        let mut read = self
            .storage
            .read_object(format!("projects/_/buckets/{bucket}"), name)
            .set_read_range(wanted);
        if let Some(generation) = range.generation {
            read = read.set_generation(generation);
        }
        let response = read
            // The caller checks the CRC32C (see the trait).
            .compute_crc32c(false)
            .send()
            .await;
        let response = match response {
            Ok(response) => response,
            Err(e) => {
                return match e.http_status_code() {
                    Some(404) => Err(not_found(&uri)),
                    // The range starts at or past the end of the object.
                    Some(416) => self.empty_read(bucket, name, range.start).await,
                    _ => Err(storage_error(&context, &e)),
                };
            }
        };
        Ok(into_stream(response, context))
    }

    async fn metadata(&self, bucket: &str, name: &str) -> Result<Option<ObjectMeta>> {
        let context = format!("reading the metadata of {}", gs(bucket, name));
        let Some(json) = self.object_json(bucket, name, &context).await? else {
            return Ok(None);
        };
        from_json(bucket, &json)
            .map(Some)
            .map_err(|why| Error::objects(&context, why, false))
    }

    async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let context = format!("listing gs://{bucket}/{prefix}*");
        let mut objects = Vec::new();
        let mut page_token: Option<String> = None;
        loop {
            let mut url = format!(
                "{}/storage/v1/b/{}/o?prefix={}&maxResults={}",
                self.endpoint,
                encode(bucket),
                encode(prefix),
                self.page_size
            );
            if let Some(token) = &page_token {
                url.push_str("&pageToken=");
                url.push_str(&encode(token));
            }
            let (status, body) = self.call(Method::GET, &url, None, &context).await?;
            if status == StatusCode::NOT_FOUND {
                return Err(Error::NotFound {
                    kind: "bucket",
                    id: format!("gs://{bucket}"),
                });
            }
            if !status.is_success() {
                return Err(status_error(&context, status, &body));
            }
            let page: Value = parse(&context, &body)?;
            if let Some(items) = page.get("items").and_then(Value::as_array) {
                for item in items {
                    objects.push(
                        from_json(bucket, item)
                            .map_err(|why| Error::objects(&context, why, false))?,
                    );
                }
            }
            match page.get("nextPageToken").and_then(Value::as_str) {
                Some(token) if !token.is_empty() && page_token.as_deref() != Some(token) => {
                    page_token = Some(token.to_string());
                }
                _ => break,
            }
        }
        // Cloud Storage lists in name order already; the port promises it.
        objects.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(objects)
    }

    /// A server-side `rewriteTo`: `rewrite` in `json`.
    async fn copy(
        &self,
        from: &GsUri,
        to: &GsUri,
        metadata: &BTreeMap<String, String>,
    ) -> Result<ObjectMeta> {
        self.rewrite(from, to, metadata).await
    }

    /// The JSON API's `compose`: `compose_sources` in `json`.
    async fn compose(
        &self,
        bucket: &str,
        sources: &[&str],
        destination: &str,
        content_type: &str,
        if_generation_match: i64,
    ) -> Result<Option<ObjectMeta>> {
        self.compose_sources(
            bucket,
            sources,
            destination,
            content_type,
            if_generation_match,
        )
        .await
    }

    async fn delete(&self, bucket: &str, name: &str) -> Result<bool> {
        let context = format!("deleting {}", gs(bucket, name));
        let url = self.object_url(bucket, name);
        let (status, body) = self.call(Method::DELETE, &url, None, &context).await?;
        match status {
            StatusCode::NOT_FOUND => Ok(false),
            // 204 from Cloud Storage, 200 from fake-gcs-server.
            s if s.is_success() => Ok(true),
            s => Err(status_error(&context, s, &body)),
        }
    }
}

/// The bytes of a read, chunk by chunk as the client receives them. The
/// stream ends after the first error.
fn into_stream(response: ReadObjectResponse, context: String) -> ByteStream {
    futures::stream::unfold(Some(response), move |state| {
        let context = context.clone();
        async move {
            let mut response = state?;
            match response.next().await? {
                Ok(chunk) => Some((Ok(chunk), Some(response))),
                Err(e) => Some((Err(storage_error(&context, &e)), None)),
            }
        }
    })
    .boxed()
}

/// Metadata from a write response; `None` if it lacks the checksum or the
/// generation.
fn from_model(bucket: &str, object: &Object) -> Option<ObjectMeta> {
    let crc32c = object.checksums.as_ref()?.crc32c?;
    if object.generation <= 0 {
        return None;
    }
    Some(ObjectMeta {
        bucket: bucket.to_string(),
        name: object.name.clone(),
        size: u64::try_from(object.size).ok()?,
        crc32c: Crc32c(crc32c),
        generation: object.generation,
        content_type: if object.content_type.is_empty() {
            DEFAULT_CONTENT_TYPE.to_string()
        } else {
            object.content_type.clone()
        },
        metadata: object
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    })
}

fn gs(bucket: &str, name: &str) -> String {
    format!("gs://{bucket}/{name}")
}
