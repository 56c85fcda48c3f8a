//! GCS object events, typed once at the edge.
//!
//! Google delivers "an object changed" in two wire formats: a Pub/Sub
//! notification (a push envelope whose attributes name the object and whose
//! data may carry the object resource JSON) and an Eventarc CloudEvent in
//! binary mode (`ce-*` headers, the object data as the body). The downloader
//! must not care which one a deployment uses, so both become one
//! [`ObjectEvent`] here, told apart by their headers ([`decode`]). Whatever
//! cannot be read is [`Poison`]: retrying the same bytes cannot fix it.

use crate::crc::Crc32c;
use crate::domain::gs_uri::GsUri;
use crate::push::{self, Poison, PushedMessage};
use crate::redact::json_error;
use axum::http::HeaderMap;
use axum::http::header::CONTENT_TYPE;
use serde::Deserialize;
use serde_json::Value;
use std::str::FromStr;

/// What happened to the object.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ObjectEventKind {
    /// A new object (or a new generation of one) was written.
    Finalized,
    /// The live generation was deleted (or overwritten, without versioning).
    Deleted,
    /// The live generation became noncurrent (versioned buckets).
    Archived,
    /// The object's metadata changed.
    MetadataUpdated,
    /// A type this code does not know, kept as sent (`eventType` or
    /// `ce-type`), so that callers can log it and ignore it.
    Other(String),
}

impl ObjectEventKind {
    /// From a Pub/Sub notification's `eventType` attribute.
    fn from_notification(event_type: &str) -> Self {
        match event_type {
            "OBJECT_FINALIZE" => Self::Finalized,
            "OBJECT_DELETE" => Self::Deleted,
            "OBJECT_ARCHIVE" => Self::Archived,
            "OBJECT_METADATA_UPDATE" => Self::MetadataUpdated,
            other => Self::Other(other.to_string()),
        }
    }

    /// From a CloudEvent's `ce-type`.
    fn from_cloud_event(ce_type: &str) -> Self {
        match ce_type {
            "google.cloud.storage.object.v1.finalized" => Self::Finalized,
            "google.cloud.storage.object.v1.deleted" => Self::Deleted,
            "google.cloud.storage.object.v1.archived" => Self::Archived,
            "google.cloud.storage.object.v1.metadataUpdated" => Self::MetadataUpdated,
            other => Self::Other(other.to_string()),
        }
    }
}

/// One GCS object event, whichever way it was delivered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectEvent {
    /// What happened.
    pub kind: ObjectEventKind,
    /// Bucket name.
    pub bucket: String,
    /// Object name.
    pub name: String,
    /// The generation the event is about, when the delivery says.
    pub generation: Option<i64>,
    /// The Pub/Sub message id or the CloudEvent `ce-id`: the same on every
    /// redelivery of this event.
    pub event_id: String,
}

impl ObjectEvent {
    /// `gs://bucket/name`.
    pub fn uri(&self) -> GsUri {
        GsUri {
            bucket: self.bucket.clone(),
            name: self.name.clone(),
        }
    }
}

/// Whether a request is a binary-mode CloudEvent (it has a `ce-type`
/// header) rather than a Pub/Sub push envelope.
pub fn is_cloud_event(headers: &HeaderMap) -> bool {
    headers.contains_key("ce-type")
}

/// Decodes a request carrying a GCS object event: a binary-mode CloudEvent
/// when it has a `ce-type` header, a Pub/Sub push envelope otherwise.
pub fn decode(headers: &HeaderMap, body: &[u8]) -> Result<ObjectEvent, Poison> {
    if is_cloud_event(headers) {
        return from_cloud_event(headers, body);
    }
    // Without this, a structured CloudEvent would be reported as a bad push
    // envelope, which sends whoever reads the log the wrong way.
    let structured = headers
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/cloudevents"));
    if structured {
        return Err(Poison(
            "a structured-mode CloudEvent: only binary mode (ce-* headers) is read, which is what Eventarc sends".into(),
        ));
    }
    from_push(&push::decode(body)?)
}

/// Reads a GCS Pub/Sub notification out of a push delivery.
///
/// The attributes name the object (`bucketId`, `objectId`,
/// `objectGeneration`) and win over the data; with `payloadFormat`
/// `JSON_API_V1` the data is the object resource, which gives the size,
/// CRC32C and content type.
pub fn from_push(delivery: &PushedMessage) -> Result<ObjectEvent, Poison> {
    let id = &delivery.message_id;
    let poison = |what: String| Poison(format!("GCS notification {id}: {what}"));
    let attribute = |key: &str| {
        delivery
            .attributes
            .get(key)
            .map(String::as_str)
            .filter(|value| !value.is_empty())
    };
    let required = |key: &str| {
        attribute(key).ok_or_else(|| {
            poison(format!(
                "no {key} attribute; is the subscription fed by a GCS notification config?"
            ))
        })
    };
    let event_type = required("eventType")?;
    let bucket = required("bucketId")?;
    let name = required("objectId")?;
    let generation = attribute("objectGeneration")
        .map(|text| {
            parse_number::<i64>(text)
                .ok_or_else(|| poison(format!("objectGeneration {text:?} is not a number")))
        })
        .transpose()?;
    let data = match attribute("payloadFormat") {
        Some("NONE") => ObjectFields::default(),
        None | Some("JSON_API_V1") if delivery.data.is_empty() => ObjectFields::default(),
        None | Some("JSON_API_V1") => serde_json::from_slice::<ObjectData>(&delivery.data)
            .map_err(|e| {
                poison(format!(
                    "the data is not object resource JSON: {}",
                    json_error(&e)
                ))
            })?
            .fields()
            .map_err(|what| poison(format!("in the data, {what}")))?,
        Some(other) => {
            return Err(poison(format!(
                "payloadFormat {other:?} is neither JSON_API_V1 nor NONE"
            )));
        }
    };
    Ok(ObjectEvent {
        kind: ObjectEventKind::from_notification(event_type),
        bucket: bucket.to_string(),
        name: name.to_string(),
        generation: generation.or(data.generation),
        event_id: id.clone(),
    })
}

/// Reads a binary-mode CloudEvent of Cloud Storage (Eventarc).
///
/// The body is the object data; the bucket comes from it or from
/// `ce-source` (`//storage.googleapis.com/projects/_/buckets/BUCKET`), the
/// name from it or from `ce-subject` (`objects/NAME`).
pub fn from_cloud_event(headers: &HeaderMap, body: &[u8]) -> Result<ObjectEvent, Poison> {
    let ce_type = ce_header(headers, "ce-type")?
        .ok_or_else(|| Poison("not a CloudEvent: no ce-type header, or an empty one".into()))?;
    let id = ce_header(headers, "ce-id")?
        .ok_or_else(|| Poison(format!("CloudEvent {ce_type}: no ce-id header")))?;
    let poison = |what: String| Poison(format!("CloudEvent {id}: {what}"));
    let data = serde_json::from_slice::<ObjectData>(body)
        .map_err(|e| {
            poison(format!(
                "the body is not object data JSON: {}",
                json_error(&e)
            ))
        })?
        .fields()
        .map_err(|what| poison(format!("in the body, {what}")))?;
    let bucket = match data.bucket {
        Some(bucket) => bucket,
        None => {
            let source = ce_header(headers, "ce-source")?;
            source
                .as_deref()
                .and_then(bucket_of_source)
                .ok_or_else(|| {
                    poison(format!(
                        "no bucket: none in the body, and {}",
                        not_like(
                            "ce-source",
                            source.as_deref(),
                            "//storage.googleapis.com/projects/_/buckets/BUCKET"
                        )
                    ))
                })?
                .to_string()
        }
    };
    let name = match data.name {
        Some(name) => name,
        None => {
            let subject = ce_header(headers, "ce-subject")?;
            subject
                .as_deref()
                .and_then(|subject| subject.strip_prefix("objects/"))
                .filter(|name| !name.is_empty())
                .ok_or_else(|| {
                    poison(format!(
                        "no object name: none in the body, and {}",
                        not_like("ce-subject", subject.as_deref(), "objects/NAME")
                    ))
                })?
                .to_string()
        }
    };
    Ok(ObjectEvent {
        kind: ObjectEventKind::from_cloud_event(&ce_type),
        bucket,
        name,
        generation: data.generation,
        event_id: id.clone(),
    })
}

/// Says why a header did not give what was looked for in it.
fn not_like(name: &str, value: Option<&str>, shape: &str) -> String {
    match value {
        None => format!("no {name} header"),
        Some(value) => format!("{name} {value:?} is not {shape}"),
    }
}

/// The fields of the object resource (JSON API) or StorageObjectData
/// (CloudEvents) that matter here; both spell them alike. `generation` and
/// `size` are int64 and so JSON strings, but older fake-gcs-server releases
/// send `generation` as a number: both are read.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ObjectData {
    #[serde(default)]
    bucket: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    generation: Option<Value>,
    #[serde(default)]
    size: Option<Value>,
    #[serde(default)]
    crc32c: Option<String>,
}

/// [`ObjectData`], checked and typed.
#[derive(Default)]
struct ObjectFields {
    bucket: Option<String>,
    name: Option<String>,
    generation: Option<i64>,
}

impl ObjectData {
    /// Types the fields the downloader reads (it reads the object's size
    /// and CRC32C from the bucket itself); every field that is present must
    /// be valid, even one nothing reads, since a bad one means the sender is
    /// not what this code thinks it is.
    fn fields(self) -> Result<ObjectFields, String> {
        let non_empty = |text: Option<String>| text.filter(|text| !text.is_empty());
        json_number::<u64>("size", self.size)?;
        if let Some(crc32c) = self.crc32c.as_deref() {
            crc32c.parse::<Crc32c>()?;
        }
        Ok(ObjectFields {
            bucket: non_empty(self.bucket),
            name: non_empty(self.name),
            generation: json_number("generation", self.generation)?,
        })
    }
}

/// A whole number sent as a JSON string (int64 in the JSON mapping) or a
/// JSON number; `null` or absent is `None`.
fn json_number<T: FromStr>(field: &str, value: Option<Value>) -> Result<Option<T>, String> {
    let Some(value) = value.filter(|value| !value.is_null()) else {
        return Ok(None);
    };
    let parsed = match &value {
        Value::String(text) => parse_number(text),
        Value::Number(number) => parse_number(&number.to_string()),
        _ => None,
    };
    parsed
        .map(Some)
        .ok_or_else(|| format!("{field} {value} is not a whole number"))
}

/// Parses a whole number written in decimal digits (an optional leading
/// `-`), as Google writes int64s; `None` for anything else.
fn parse_number<T: FromStr>(text: &str) -> Option<T> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// The bucket of `//storage.googleapis.com/projects/{_|P}/buckets/BUCKET`.
fn bucket_of_source(source: &str) -> Option<&str> {
    let rest = source.strip_prefix("//storage.googleapis.com/projects/")?;
    let (_, bucket) = rest.split_once("/buckets/")?;
    Some(bucket).filter(|bucket| !bucket.is_empty() && !bucket.contains('/'))
}

/// A `ce-*` header, percent-decoded as the CloudEvents HTTP binding
/// requires (senders encode spaces, `"`, `%` and non-ASCII, which object
/// names may hold). Empty counts as absent.
fn ce_header(headers: &HeaderMap, name: &str) -> Result<Option<String>, Poison> {
    let Some(value) = headers.get(name) else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .map_err(|_| Poison(format!("the {name} header is not visible ASCII")))?;
    let decoded = percent_decode(text).ok_or_else(|| {
        Poison(format!(
            "the {name} header {text:?} is not percent-encoded UTF-8"
        ))
    })?;
    Ok(Some(decoded).filter(|value| !value.is_empty()))
}

/// Decodes `%XX` escapes; `None` on a broken escape or non-UTF-8 result.
fn percent_decode(text: &str) -> Option<String> {
    let mut bytes = text.bytes();
    let mut out = Vec::with_capacity(text.len());
    while let Some(byte) = bytes.next() {
        if byte == b'%' {
            let high = char::from(bytes.next()?).to_digit(16)?;
            let low = char::from(bytes.next()?).to_digit(16)?;
            out.push(u8::try_from(high * 16 + low).ok()?);
        } else {
            out.push(byte);
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderName, HeaderValue};
    use base64::Engine;
    use std::collections::BTreeMap;

    const JOB: &str = "5f0c2b7e9d1a4c3e8b6f0a1d2c3e4f50";

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!("{}/tests/fixtures/gcs/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(name, value)| {
                (
                    HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    HeaderValue::from_str(value).unwrap(),
                )
            })
            .collect()
    }

    fn fixture_headers(name: &str) -> HeaderMap {
        let map: BTreeMap<String, String> = serde_json::from_slice(&fixture(name)).unwrap();
        let pairs: Vec<(&str, &str)> = map.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        headers(&pairs)
    }

    fn push_fixture(name: &str) -> ObjectEvent {
        decode(&HeaderMap::new(), &fixture(name)).unwrap()
    }

    fn cloud_event_fixture() -> (HeaderMap, Vec<u8>) {
        (
            fixture_headers("cloudevent-finalized.headers.json"),
            fixture("cloudevent-finalized.body.json"),
        )
    }

    /// A push envelope with these attributes and, when given, this data.
    fn envelope(attributes: Value, data: Option<&str>) -> String {
        let mut message = serde_json::json!({"messageId": "77", "attributes": attributes});
        if let Some(data) = data {
            message["data"] = base64::engine::general_purpose::STANDARD
                .encode(data)
                .into();
        }
        serde_json::json!({ "message": message }).to_string()
    }

    fn finalize_attributes() -> Value {
        serde_json::json!({
            "eventType": "OBJECT_FINALIZE",
            "payloadFormat": "JSON_API_V1",
            "bucketId": "b",
            "objectId": "videos/j/x/sample_0.mp4",
            "objectGeneration": "17",
        })
    }

    #[test]
    fn a_real_finalize_notification_with_a_json_payload_decodes_every_field() {
        let event = push_fixture("pubsub-finalize.json");
        let name = format!("videos/{JOB}/20261128045143512907/sample_0.mp4");
        assert_eq!(
            event,
            ObjectEvent {
                kind: ObjectEventKind::Finalized,
                bucket: "asmr-prod-outputs".into(),
                name: name.clone(),
                generation: Some(1_795_841_531_763_521),
                event_id: "12043795820587903".into(),
            }
        );
        assert_eq!(
            event.uri().to_string(),
            format!("gs://asmr-prod-outputs/{name}")
        );
    }

    #[test]
    fn a_real_delete_notification_decodes_as_deleted_with_the_last_object_data() {
        let event = push_fixture("pubsub-delete.json");
        assert_eq!(
            event,
            ObjectEvent {
                kind: ObjectEventKind::Deleted,
                bucket: "asmr-prod-outputs".into(),
                name: format!("videos/{JOB}/20261128045143512907/sample_0.mp4"),
                generation: Some(1_795_841_531_763_521),
                event_id: "12150038711925448".into(),
            }
        );
    }

    #[test]
    fn a_notification_without_payload_takes_everything_from_its_attributes() {
        let event = push_fixture("pubsub-payload-none.json");
        assert_eq!(
            event,
            ObjectEvent {
                kind: ObjectEventKind::Finalized,
                bucket: "asmr-prod-outputs".into(),
                name: format!("images/{JOB}/0.png"),
                generation: Some(1_795_841_499_120_733),
                event_id: "12043795820587551".into(),
            }
        );
    }

    #[test]
    fn the_envelope_fake_gcs_server_sends_through_the_pubsub_emulator_decodes() {
        let event = push_fixture("fake-gcs-server-finalize.json");
        assert_eq!(
            event,
            ObjectEvent {
                kind: ObjectEventKind::Finalized,
                bucket: "asmr-test-outputs".into(),
                name: format!("veo/{JOB}/sample_0.mp4"),
                generation: Some(1_795_842_948_970_295),
                event_id: "1".into(),
            }
        );
    }

    #[test]
    fn fake_gcs_server_delete_events_say_size_zero_and_carry_no_crc32c() {
        let event = push_fixture("fake-gcs-server-delete.json");
        assert_eq!(event.kind, ObjectEventKind::Deleted);
        assert_eq!(event.name, format!("veo/{JOB}/sample_0.mp4"));
        assert_eq!(event.generation, Some(1_795_842_948_970_295));
        assert_eq!(event.event_id, "2");
    }

    #[test]
    fn an_eventarc_finalized_cloud_event_decodes_every_field() {
        let (headers, body) = cloud_event_fixture();
        assert!(is_cloud_event(&headers));
        let event = from_cloud_event(&headers, &body).unwrap();
        let name = format!("videos/{JOB}/20261128045143512907/sample_1.mp4");
        assert_eq!(
            event,
            ObjectEvent {
                kind: ObjectEventKind::Finalized,
                bucket: "asmr-prod-outputs".into(),
                name: name.clone(),
                generation: Some(1_795_841_533_118_092),
                event_id: "12043795820587911".into(),
            }
        );
        assert_eq!(
            event.uri().to_string(),
            format!("gs://asmr-prod-outputs/{name}")
        );
    }

    #[test]
    fn decode_tells_a_cloud_event_from_a_push_envelope_by_its_headers() {
        let (ce_headers, ce_body) = cloud_event_fixture();
        assert_eq!(
            decode(&ce_headers, &ce_body),
            from_cloud_event(&ce_headers, &ce_body)
        );
        let push_body = fixture("pubsub-finalize.json");
        let plain = headers(&[("content-type", "application/json")]);
        assert!(!is_cloud_event(&plain));
        assert_eq!(
            decode(&plain, &push_body),
            from_push(&push::decode(&push_body).unwrap())
        );
        // The same body read the other way is poison, not a wrong event.
        assert!(decode(&plain, &ce_body).is_err());
    }

    #[test]
    fn is_cloud_event_needs_a_ce_type_header_in_any_case() {
        assert!(is_cloud_event(&headers(&[("Ce-Type", "x")])));
        assert!(!is_cloud_event(&headers(&[("ce-id", "1")])));
        assert!(!is_cloud_event(&HeaderMap::new()));
    }

    #[test]
    fn a_cloud_event_body_without_bucket_or_name_falls_back_to_source_and_decoded_subject() {
        let headers = headers(&[
            ("ce-type", "google.cloud.storage.object.v1.deleted"),
            ("ce-id", "9"),
            (
                "ce-source",
                "//storage.googleapis.com/projects/_/buckets/out",
            ),
            ("ce-subject", "objects/images/j/a%20b%25%C3%A9.png"),
        ]);
        let event = from_cloud_event(&headers, br#"{"generation": "5"}"#).unwrap();
        assert_eq!(event.kind, ObjectEventKind::Deleted);
        assert_eq!(event.bucket, "out");
        assert_eq!(event.name, "images/j/a b%\u{e9}.png");
        assert_eq!(event.generation, Some(5));
    }

    #[test]
    fn attributes_win_over_the_payload_for_bucket_name_and_generation() {
        let data = r#"{"bucket": "other", "name": "other.png", "generation": "99", "size": "3", "crc32c": "AAAAAQ==", "contentType": "image/png"}"#;
        let body = envelope(finalize_attributes(), Some(data));
        let event = decode(&HeaderMap::new(), body.as_bytes()).unwrap();
        assert_eq!(event.bucket, "b");
        assert_eq!(event.name, "videos/j/x/sample_0.mp4");
        assert_eq!(event.generation, Some(17));
    }

    #[test]
    fn the_generation_comes_from_the_payload_when_the_attribute_is_missing() {
        // Older fake-gcs-server releases send the generation as a JSON number.
        let body = envelope(without("objectGeneration"), Some(r#"{"generation": 42}"#));
        let event = decode(&HeaderMap::new(), body.as_bytes()).unwrap();
        assert_eq!(event.generation, Some(42));
    }

    #[test]
    fn unknown_event_types_are_kept_with_their_raw_name() {
        let mut attributes = finalize_attributes();
        attributes["eventType"] = "OBJECT_RESTORE".into();
        let body = envelope(attributes, None);
        let event = decode(&HeaderMap::new(), body.as_bytes()).unwrap();
        assert_eq!(event.kind, ObjectEventKind::Other("OBJECT_RESTORE".into()));

        let ce_type = "google.cloud.storage.object.v1.restored";
        let headers = headers(&[("ce-type", ce_type), ("ce-id", "1")]);
        let event = decode(&headers, br#"{"bucket": "b", "name": "n"}"#).unwrap();
        assert_eq!(event.kind, ObjectEventKind::Other(ce_type.into()));
    }

    #[test]
    fn every_documented_event_type_maps_to_its_kind() {
        let cases = [
            ("OBJECT_FINALIZE", "finalized", ObjectEventKind::Finalized),
            ("OBJECT_DELETE", "deleted", ObjectEventKind::Deleted),
            ("OBJECT_ARCHIVE", "archived", ObjectEventKind::Archived),
            (
                "OBJECT_METADATA_UPDATE",
                "metadataUpdated",
                ObjectEventKind::MetadataUpdated,
            ),
        ];
        for (event_type, ce_suffix, kind) in cases {
            let mut attributes = finalize_attributes();
            attributes["eventType"] = event_type.into();
            let body = envelope(attributes, None);
            assert_eq!(
                decode(&HeaderMap::new(), body.as_bytes()).unwrap().kind,
                kind
            );
            let ce_type = format!("google.cloud.storage.object.v1.{ce_suffix}");
            let headers = headers(&[("ce-type", &ce_type), ("ce-id", "1")]);
            let event = decode(&headers, br#"{"bucket": "b", "name": "n"}"#).unwrap();
            assert_eq!(event.kind, kind, "{ce_type}");
        }
    }

    /// Decodes `body` with `headers` and checks that it is poison whose
    /// message contains `expected`.
    fn check(headers: &HeaderMap, body: &str, expected: &str) {
        match decode(headers, body.as_bytes()) {
            Err(Poison(message)) => assert!(
                message.contains(expected),
                "{body}: {message:?} should contain {expected:?}"
            ),
            Ok(event) => panic!("{body} should be poison, got {event:?}"),
        }
    }

    fn without(key: &str) -> Value {
        let mut attributes = finalize_attributes();
        if let Some(map) = attributes.as_object_mut() {
            map.remove(key);
        }
        attributes
    }

    fn with(key: &str, value: &str) -> Value {
        let mut attributes = finalize_attributes();
        attributes[key] = value.into();
        attributes
    }

    #[test]
    fn poison_push_deliveries_say_what_is_wrong() {
        let none = HeaderMap::new();
        let data = Some(r#"{"size": "1"}"#);
        check(&none, "", "not a Pub/Sub push envelope");
        check(&none, "{}", "not a Pub/Sub push envelope");
        check(
            &none,
            r#"{"message": {"messageId": "1", "data": "%%%", "attributes": {}}}"#,
            "message.data is not base64",
        );
        check(
            &none,
            &envelope(serde_json::json!({}), None),
            "GCS notification 77: no eventType attribute",
        );
        check(
            &none,
            &envelope(without("eventType"), data),
            "no eventType attribute",
        );
        check(
            &none,
            &envelope(without("bucketId"), data),
            "no bucketId attribute",
        );
        check(
            &none,
            &envelope(without("objectId"), data),
            "no objectId attribute",
        );
        check(
            &none,
            &envelope(with("objectId", ""), data),
            "no objectId attribute",
        );
        check(
            &none,
            &envelope(with("objectGeneration", "12x"), data),
            r#"objectGeneration "12x" is not a number"#,
        );
        check(
            &none,
            &envelope(with("payloadFormat", "XML"), data),
            r#"payloadFormat "XML" is neither JSON_API_V1 nor NONE"#,
        );
        check(
            &none,
            &envelope(finalize_attributes(), Some("not json")),
            "the data is not object resource JSON",
        );
        check(
            &none,
            &envelope(finalize_attributes(), Some("[1, 2]")),
            "the data is not object resource JSON",
        );
        check(
            &none,
            &envelope(finalize_attributes(), Some(r#"{"generation": "12x"}"#)),
            r#"in the data, generation "12x" is not a whole number"#,
        );
        check(
            &none,
            &envelope(finalize_attributes(), Some(r#"{"size": "-1"}"#)),
            r#"size "-1" is not a whole number"#,
        );
        check(
            &none,
            &envelope(finalize_attributes(), Some(r#"{"size": true}"#)),
            "size true is not a whole number",
        );
        check(
            &none,
            &envelope(finalize_attributes(), Some(r#"{"crc32c": "%%"}"#)),
            r#"crc32c "%%" is not base64"#,
        );
        check(
            &none,
            &envelope(finalize_attributes(), Some(r#"{"crc32c": "AAAAAAA="}"#)),
            r#"crc32c "AAAAAAA=" is 5 bytes, not 4"#,
        );
        check(
            &headers(&[("content-type", "application/cloudevents+json")]),
            "{}",
            "structured-mode CloudEvent",
        );
    }

    #[test]
    fn poison_cloud_events_say_what_is_wrong() {
        let finalized = "google.cloud.storage.object.v1.finalized";
        let source = "//storage.googleapis.com/projects/_/buckets/out";
        let full = [
            ("ce-type", finalized),
            ("ce-id", "5"),
            ("ce-source", source),
            ("ce-subject", "objects/a.png"),
        ];
        let object = r#"{"bucket": "b", "name": "n"}"#;
        check(&headers(&[("ce-type", "")]), object, "no ce-type header");
        check(
            &headers(&[("ce-type", finalized)]),
            object,
            "CloudEvent google.cloud.storage.object.v1.finalized: no ce-id header",
        );
        check(
            &headers(&full),
            "",
            "CloudEvent 5: the body is not object data JSON",
        );
        check(
            &headers(&full),
            "<html>",
            "the body is not object data JSON",
        );
        check(
            &headers(&full[..3]),
            r#"{"bucket": "b"}"#,
            "CloudEvent 5: no object name: none in the body, and no ce-subject header",
        );
        check(
            &headers(&[
                ("ce-type", finalized),
                ("ce-id", "5"),
                ("ce-subject", "buckets/x"),
            ]),
            r#"{"bucket": "b"}"#,
            r#"ce-subject "buckets/x" is not objects/NAME"#,
        );
        check(
            &headers(&[
                ("ce-type", finalized),
                ("ce-id", "5"),
                ("ce-source", "//pubsub.googleapis.com/projects/p/topics/t"),
            ]),
            r#"{"name": "n"}"#,
            r#"no bucket: none in the body, and ce-source "//pubsub.googleapis.com/projects/p/topics/t" is not //storage.googleapis.com/projects/_/buckets/BUCKET"#,
        );
        check(
            &headers(&[("ce-type", finalized), ("ce-id", "5")]),
            r#"{"name": "n"}"#,
            "no bucket: none in the body, and no ce-source header",
        );
        check(
            &headers(&[
                ("ce-type", finalized),
                ("ce-id", "5"),
                ("ce-subject", "objects/a%2"),
            ]),
            r#"{"bucket": "b"}"#,
            r#"the ce-subject header "objects/a%2" is not percent-encoded UTF-8"#,
        );
        check(
            &headers(&full),
            r#"{"bucket": "b", "name": "n", "generation": 1.5}"#,
            "in the body, generation 1.5 is not a whole number",
        );
        check(
            &headers(&full),
            r#"{"bucket": "b", "name": "n", "generation": "abc"}"#,
            r#"generation "abc" is not a whole number"#,
        );
    }
}
