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

use super::{ByteStream, GsUri, ObjectMeta, ObjectStore, ReadRange};
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
/// The OAuth scope of the JSON API calls.
const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
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

    fn object_url(&self, bucket: &str, name: &str) -> String {
        format!(
            "{}/storage/v1/b/{}/o/{}",
            self.endpoint,
            encode(bucket),
            encode(name)
        )
    }

    /// Sends one JSON API request and returns its status and body. Fails
    /// only when no answer arrived; the caller decides what each status
    /// means.
    async fn call(
        &self,
        method: Method,
        url: &str,
        body: Option<Value>,
        context: &str,
    ) -> Result<(StatusCode, Bytes)> {
        let mut request = self.http.request(method, url);
        if let Some(body) = body {
            request = request.json(&body);
        }
        if let Auth::Adc(provider) = &self.auth {
            let token = provider.token(&[SCOPE]).await.map_err(|e| {
                Error::objects(
                    context,
                    format!("could not get an access token ({e})"),
                    true,
                )
            })?;
            request = request.bearer_auth(token.as_str());
        }
        let response = request
            .send()
            .await
            .map_err(|e| transport_error(context, &e))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| transport_error(context, &e))?;
        Ok((status, body))
    }

    /// The object resource as the JSON API gives it; `None` if there is no
    /// such object.
    async fn object_json(&self, bucket: &str, name: &str, context: &str) -> Result<Option<Value>> {
        let url = self.object_url(bucket, name);
        let (status, body) = self.call(Method::GET, &url, None, context).await?;
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(status_error(context, status, &body));
        }
        parse(context, &body).map(Some)
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
        let response = self
            .storage
            .read_object(format!("projects/_/buckets/{bucket}"), name)
            .set_read_range(wanted)
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

    /// A server-side `rewriteTo`, repeated with its `rewriteToken` until
    /// done: the bytes never pass through this process. Without a request
    /// body the copy keeps the source's content type and custom metadata.
    /// A request body replaces them, so extra `metadata` costs one read of
    /// the source first: the body then carries the source's content
    /// headers and its metadata merged with `metadata`, and the rewrite is
    /// conditioned on the generation read. (`copyTo` would do too, but in
    /// production a single `copyTo` call fails for large objects across
    /// locations or storage classes; rewrite handles both, and
    /// fake-gcs-server serves it.)
    async fn copy(
        &self,
        from: &GsUri,
        to: &GsUri,
        metadata: &BTreeMap<String, String>,
    ) -> Result<ObjectMeta> {
        let context = format!("copying {from} to {to}");
        let mut base = format!(
            "{}/rewriteTo/b/{}/o/{}?",
            self.object_url(&from.bucket, &from.name),
            encode(&to.bucket),
            encode(&to.name)
        );
        let mut request = serde_json::json!({});
        if !metadata.is_empty() {
            let Some(source) = self.object_json(&from.bucket, &from.name, &context).await? else {
                return Err(not_found(&from.to_string()));
            };
            let generation = integer(source.get("generation")).ok_or_else(|| {
                Error::objects(&context, "the source has no valid generation", false)
            })?;
            base.push_str(&format!("ifSourceGenerationMatch={generation}&"));
            request = rewrite_body(&source, metadata);
        }
        let mut token: Option<String> = None;
        loop {
            let url = match &token {
                Some(token) => format!("{base}rewriteToken={}", encode(token)),
                None => base.trim_end_matches(['?', '&']).to_string(),
            };
            let (status, body) = self
                .call(Method::POST, &url, Some(request.clone()), &context)
                .await?;
            if status == StatusCode::NOT_FOUND {
                // The same 404 answers a missing source and a missing
                // destination bucket (fake-gcs-server's bodies do not even
                // differ): ask which.
                return Err(match self.metadata(&from.bucket, &from.name).await? {
                    Some(_) => Error::NotFound {
                        kind: "bucket",
                        id: format!("gs://{}", to.bucket),
                    },
                    None => not_found(&from.to_string()),
                });
            }
            if !status.is_success() {
                return Err(status_error(&context, status, &body));
            }
            let step = rewrite_step(&to.bucket, &parse(&context, &body)?)
                .map_err(|why| Error::objects(&context, why, false))?;
            match step {
                Rewrite::Done(Some(meta)) => return Ok(meta),
                Rewrite::Done(None) => {
                    return self.metadata(&to.bucket, &to.name).await?.ok_or_else(|| {
                        Error::objects(&context, "the copy is not there after the rewrite", true)
                    });
                }
                Rewrite::Continue(next) => token = Some(next),
            }
        }
    }

    /// The JSON API's `compose` with `ifGenerationMatch`; 412 is the
    /// precondition failing.
    async fn compose(
        &self,
        bucket: &str,
        sources: &[&str],
        destination: &str,
        content_type: &str,
        if_generation_match: i64,
    ) -> Result<Option<ObjectMeta>> {
        let context = format!("composing {}", gs(bucket, destination));
        let url = format!(
            "{}/compose?ifGenerationMatch={if_generation_match}",
            self.object_url(bucket, destination)
        );
        let body = serde_json::json!({
            "sourceObjects": sources.iter().map(|name| serde_json::json!({ "name": name })).collect::<Vec<_>>(),
            "destination": { "contentType": content_type },
        });
        let (status, body) = self.call(Method::POST, &url, Some(body), &context).await?;
        match status {
            StatusCode::PRECONDITION_FAILED => Ok(None),
            StatusCode::NOT_FOUND => Err(not_found(&format!(
                "gs://{bucket}/{{{}}}",
                sources.join(",")
            ))),
            // An answer without the checksum or generation: ask again.
            s if s.is_success() => match from_json(bucket, &parse(&context, &body)?) {
                Ok(meta) => Ok(Some(meta)),
                Err(_) => self.metadata(bucket, destination).await,
            },
            s => Err(status_error(&context, s, &body)),
        }
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

/// The fields of an object resource a rewrite with a request body would
/// otherwise drop.
const CONTENT_FIELDS: [&str; 5] = [
    "contentType",
    "contentEncoding",
    "contentDisposition",
    "contentLanguage",
    "cacheControl",
];

/// The request body of a rewrite that keeps `source`'s content headers and
/// sets `metadata` over its custom metadata.
fn rewrite_body(source: &Value, metadata: &BTreeMap<String, String>) -> Value {
    let mut body = serde_json::Map::new();
    for field in CONTENT_FIELDS {
        if let Some(value) = source.get(field).filter(|v| v.is_string()) {
            body.insert(field.to_string(), value.clone());
        }
    }
    let mut merged = source
        .get("metadata")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    for (key, value) in metadata {
        merged.insert(key.clone(), Value::String(value.clone()));
    }
    body.insert("metadata".to_string(), Value::Object(merged));
    Value::Object(body)
}

/// What one `rewriteTo` answer says.
#[derive(Debug, PartialEq)]
enum Rewrite {
    /// Finished; the destination's metadata when the answer carried it.
    Done(Option<ObjectMeta>),
    /// Unfinished: call again with this token.
    Continue(String),
}

/// Reads a `storage#rewriteResponse`.
fn rewrite_step(bucket: &str, json: &Value) -> std::result::Result<Rewrite, String> {
    match json.get("done").and_then(Value::as_bool) {
        Some(true) => json
            .get("resource")
            .map(|resource| from_json(bucket, resource))
            .transpose()
            .map(Rewrite::Done),
        Some(false) => json
            .get("rewriteToken")
            .and_then(Value::as_str)
            .filter(|token| !token.is_empty())
            .map(|token| Rewrite::Continue(token.to_string()))
            .ok_or_else(|| "an unfinished rewrite came without a rewriteToken".to_string()),
        None => Err("the rewrite answer does not say whether it is done".to_string()),
    }
}

/// Metadata from a JSON API object resource. Numbers come as strings in
/// production and sometimes as numbers elsewhere; both are accepted.
fn from_json(bucket: &str, json: &Value) -> std::result::Result<ObjectMeta, String> {
    let name = json
        .get("name")
        .and_then(Value::as_str)
        .ok_or("the object resource has no name")?
        .to_string();
    let size = integer(json.get("size"))
        .and_then(|s| u64::try_from(s).ok())
        .ok_or_else(|| format!("object {name} has no valid size"))?;
    let generation = integer(json.get("generation"))
        .ok_or_else(|| format!("object {name} has no valid generation"))?;
    let crc32c = json
        .get("crc32c")
        .and_then(Value::as_str)
        .and_then(|text| text.parse::<Crc32c>().ok())
        .ok_or_else(|| format!("object {name} has no valid CRC32C"))?;
    let content_type = json
        .get("contentType")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .unwrap_or(DEFAULT_CONTENT_TYPE)
        .to_string();
    let metadata = json
        .get("metadata")
        .and_then(Value::as_object)
        .map(|map| {
            map.iter()
                .map(|(k, v)| {
                    let v = v.as_str().map_or_else(|| v.to_string(), str::to_string);
                    (k.clone(), v)
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(ObjectMeta {
        bucket: bucket.to_string(),
        name,
        size,
        crc32c,
        generation,
        content_type,
        metadata,
    })
}

fn integer(value: Option<&Value>) -> Option<i64> {
    match value? {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_i64(),
        _ => None,
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters, so an
/// object name is one path segment or one query value whatever it contains.
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(char::from(byte));
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

fn gs(bucket: &str, name: &str) -> String {
    format!("gs://{bucket}/{name}")
}

fn not_found(uri: &str) -> Error {
    Error::NotFound {
        kind: "object",
        id: uri.to_string(),
    }
}

fn past_the_end(uri: &str, start: u64, size: u64) -> Error {
    Error::objects(
        format!("reading {uri}"),
        format!("the range starts at byte {start}, past the end of the {size}-byte object"),
        false,
    )
}

fn backwards(uri: &str, range: ReadRange) -> Error {
    Error::objects(
        format!("reading {uri}"),
        format!(
            "the range ends (byte {}) before it starts (byte {})",
            range.end.unwrap_or_default(),
            range.start
        ),
        false,
    )
}

fn parse(context: &str, body: &[u8]) -> Result<Value> {
    serde_json::from_slice(body).map_err(|e| {
        Error::objects(
            context,
            format!("Cloud Storage answered with JSON that does not parse ({e})"),
            false,
        )
    })
}

/// An error answer of the JSON API, with the service's own message.
fn status_error(context: &str, status: StatusCode, body: &[u8]) -> Error {
    let said = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| {
            v.pointer("/error/message")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| {
            String::from_utf8_lossy(body)
                .trim()
                .chars()
                .take(200)
                .collect()
        });
    let message = if said.is_empty() {
        format!("Cloud Storage answered {status}")
    } else {
        format!("Cloud Storage answered {status}: {said}")
    };
    if denied_status(status.as_u16()) {
        return Error::objects_denied(context, format!("{message}; {FIX_STORAGE_ACCESS}"));
    }
    Error::objects(
        context,
        message,
        crate::gax::retryable_status(status.as_u16()),
    )
}

/// How to fix a refused bucket, said with the error.
const FIX_STORAGE_ACCESS: &str = "check the credentials of this stage (`gcloud auth application-default login` on a workstation, the service account on Cloud Run) and its role on the bucket (roles/storage.objectUser)";

/// Whether an HTTP status means the credentials or the role are wrong.
fn denied_status(status: u16) -> bool {
    status == 401 || status == 403
}

/// A JSON API request that got no (complete) answer: retryable.
fn transport_error(context: &str, e: &reqwest::Error) -> Error {
    let mut message = format!("no answer from Cloud Storage ({e}");
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        message.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    message.push(')');
    Error::objects(context, message, !e.is_builder())
}

/// An error of the `google-cloud-storage` client.
fn storage_error(context: &str, e: &google_cloud_storage::Error) -> Error {
    let denied = e.http_status_code().is_some_and(denied_status)
        || e.status().is_some_and(|status| {
            matches!(status.code.name(), "PERMISSION_DENIED" | "UNAUTHENTICATED")
        })
        || (e.is_authentication() && !crate::gax::transient(e));
    if denied {
        return Error::objects_denied(context, format!("{e}; {FIX_STORAGE_ACCESS}"));
    }
    Error::objects(context, e, crate::gax::transient(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_encoded_as_one_segment() {
        assert_eq!(encode("images/j/0.png"), "images%2Fj%2F0.png");
        assert_eq!(encode("a b+?#%é"), "a%20b%2B%3F%23%25%C3%A9");
        assert_eq!(encode("plain-name_1.~"), "plain-name_1.~");
    }

    #[test]
    fn an_object_resource_parses_with_strings_or_numbers() {
        let json = serde_json::json!({
            "name": "images/j/0.png", "size": "5", "generation": 17,
            "crc32c": "mnG7TA==", "contentType": "image/png",
            "metadata": { "asmr-job-id": "j" }
        });
        let meta = from_json("out", &json).unwrap();
        assert_eq!(meta.size, 5);
        assert_eq!(meta.generation, 17);
        assert_eq!(meta.crc32c, Crc32c::of(b"hello"));
        assert_eq!(meta.content_type, "image/png");
        assert_eq!(meta.metadata["asmr-job-id"], "j");
        assert_eq!(meta.uri().to_string(), "gs://out/images/j/0.png");

        let no_crc = serde_json::json!({ "name": "x", "size": "1", "generation": "1" });
        assert!(from_json("out", &no_crc).unwrap_err().contains("CRC32C"));
    }

    #[test]
    fn a_rewrite_continues_with_its_token_until_done() {
        let unfinished = serde_json::json!({
            "kind": "storage#rewriteResponse", "totalBytesRewritten": "1048576",
            "objectSize": "10485760", "done": false, "rewriteToken": "t-1"
        });
        assert_eq!(
            rewrite_step("out", &unfinished),
            Ok(Rewrite::Continue("t-1".into()))
        );
        let finished = serde_json::json!({
            "done": true, "rewriteToken": "",
            "resource": {
                "name": "a/b.png", "size": "5", "generation": "7",
                "crc32c": "mnG7TA==", "contentType": "image/png"
            }
        });
        let Ok(Rewrite::Done(Some(meta))) = rewrite_step("out", &finished) else {
            panic!("{:?}", rewrite_step("out", &finished));
        };
        assert_eq!(
            (meta.bucket.as_str(), meta.name.as_str()),
            ("out", "a/b.png")
        );
        assert_eq!((meta.size, meta.generation), (5, 7));
        assert_eq!(
            rewrite_step("out", &serde_json::json!({ "done": true })),
            Ok(Rewrite::Done(None))
        );
        for bad in [
            serde_json::json!({ "done": false }),
            serde_json::json!({ "done": false, "rewriteToken": "" }),
            serde_json::json!({ "rewriteToken": "t" }),
            serde_json::json!({ "done": true, "resource": { "name": "x" } }),
        ] {
            assert!(rewrite_step("out", &bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_rewrite_body_keeps_the_content_headers_and_merges_the_metadata() {
        let source = serde_json::json!({
            "name": "a.png", "contentType": "image/png", "cacheControl": "no-store",
            "size": "5", "metadata": { "asmr-job-id": "old", "keep": "me" }
        });
        let extra = BTreeMap::from([
            ("asmr-job-id".to_string(), "j".to_string()),
            ("asmr-model".to_string(), "m".to_string()),
        ]);
        assert_eq!(
            rewrite_body(&source, &extra),
            serde_json::json!({
                "contentType": "image/png", "cacheControl": "no-store",
                "metadata": { "asmr-job-id": "j", "asmr-model": "m", "keep": "me" }
            })
        );
    }

    #[test]
    fn error_answers_are_one_sentence_and_classified() {
        let body = br#"{"error":{"code":503,"message":"backend error"}}"#;
        let e = status_error("listing gs://b/x*", StatusCode::SERVICE_UNAVAILABLE, body);
        assert!(e.is_retryable());
        assert_eq!(
            e.to_string(),
            "listing gs://b/x*: Cloud Storage answered 503 Service Unavailable: backend error"
        );
        let e = status_error("deleting gs://b/x", StatusCode::FORBIDDEN, b"");
        assert!(!e.is_retryable());
        assert!(status_error("c", StatusCode::TOO_MANY_REQUESTS, b"").is_retryable());
    }
}
