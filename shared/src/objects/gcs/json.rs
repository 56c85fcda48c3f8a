//! The JSON API control plane of the Cloud Storage adapter: sending one
//! request, copying by `rewriteTo`, composing, and reading what comes back
//! (object resources into metadata, rewrite answers, the body of a rewrite
//! that adds metadata).

use super::errors::{not_found, status_error, transport_error};
use super::{Auth, DEFAULT_CONTENT_TYPE, GcsObjectStore, gs};
use crate::crc::Crc32c;
use crate::domain::gs_uri::GsUri;
use crate::error::{Error, Result};
use crate::objects::{ObjectMeta, ObjectStore};
use bytes::Bytes;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::collections::BTreeMap;

/// The OAuth scope of the JSON API calls.
const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";

impl GcsObjectStore {
    pub(super) fn object_url(&self, bucket: &str, name: &str) -> String {
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
    pub(super) async fn call(
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
    pub(super) async fn object_json(
        &self,
        bucket: &str,
        name: &str,
        context: &str,
    ) -> Result<Option<Value>> {
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
    pub(super) async fn rewrite(
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
    pub(super) async fn compose_sources(
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
pub(super) fn from_json(bucket: &str, json: &Value) -> std::result::Result<ObjectMeta, String> {
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
pub(super) fn encode(text: &str) -> String {
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

pub(super) fn parse(context: &str, body: &[u8]) -> Result<Value> {
    serde_json::from_slice(body).map_err(|e| {
        Error::objects(
            context,
            format!("Cloud Storage answered with JSON that does not parse ({e})"),
            false,
        )
    })
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
}
