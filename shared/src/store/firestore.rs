//! The Firestore adapter, over the `firestore` crate's gRPC client.
//!
//! Compare-and-set is a single write with an update-time precondition: no
//! transaction, so no locks. Two claimers racing for one job cost one failed
//! write for the loser, not the seconds a contended transaction costs.
//! Collection names carry a configurable prefix so deployments and test runs
//! can share a database. Timestamp fields are stored as Firestore timestamps
//! (TTL policies need that); everything else maps 1:1 from JSON.

use super::backend::{Backend, Collection, Cond, Dir, Doc, Query, Scalar, Stored, Version, Write};
use crate::error::{Error, Result};
use crate::time::Timestamp;
use async_trait::async_trait;
use firestore::errors::FirestoreError;
use firestore::gcloud_sdk::google::firestore::v1::{
    ArrayValue, CommitRequest, Document, MapValue, Precondition, Value as FsValue,
    Write as FsWrite, precondition::ConditionType, value::ValueType, write::Operation,
};
use firestore::{
    FirestoreDb, FirestoreDbOptions, FirestoreQueryCursor, FirestoreQueryDirection,
    FirestoreQueryFilter, FirestoreQueryFilterCompare, FirestoreQueryFilterComposite,
    FirestoreQueryFilterCompositeOperator, FirestoreQueryOrder, FirestoreValue,
    FirestoreWritePrecondition,
};
use serde_json::{Number, Value};
use std::collections::HashMap;

/// Where the Firestore documents live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FirestoreConfig {
    /// Google Cloud project id.
    pub project: String,
    /// Database id, `(default)` unless set.
    pub database: String,
    /// Prepended to every collection name (`test42_jobs`), so that several
    /// deployments or test runs can share one database.
    pub prefix: String,
}

impl FirestoreConfig {
    /// One line naming the project, database and prefix.
    pub fn describe(&self) -> String {
        let prefix = if self.prefix.is_empty() {
            String::new()
        } else {
            format!(", collections prefixed {:?}", self.prefix)
        };
        format!(
            "firestore (project {}, database {}{prefix})",
            self.project, self.database
        )
    }
}

/// Jobs and downloads in Firestore.
pub struct FirestoreBackend {
    db: FirestoreDb,
    config: FirestoreConfig,
}

impl FirestoreBackend {
    /// Connects with Application Default Credentials, or to the emulator when
    /// `FIRESTORE_EMULATOR_HOST` is set (the client library's convention).
    pub async fn connect(config: FirestoreConfig) -> Result<Self> {
        if config.project.trim().is_empty() {
            return Err(Error::store(
                "connecting to Firestore",
                "no project is set (GOOGLE_CLOUD_PROJECT)",
                false,
            ));
        }
        let options = FirestoreDbOptions::new(config.project.clone())
            .with_database_id(config.database.clone())
            .with_request_timeout(std::time::Duration::from_secs(30));
        let db = FirestoreDb::with_options(options)
            .await
            .map_err(|e| fs_error("connecting to Firestore", e))?;
        Ok(Self { db, config })
    }

    fn collection(&self, collection: Collection) -> String {
        format!("{}{}", self.config.prefix, collection.name())
    }

    fn doc_path(&self, collection: Collection, id: &str) -> String {
        format!(
            "{}/{}/{}",
            self.db.get_documents_path(),
            self.collection(collection),
            id
        )
    }
}

/// One readable sentence from a client error. The crate's own text of a
/// transport failure is a `Debug` dump of nested errors; the operator needs
/// the innermost message ("Connection refused").
fn fs_error(context: &str, e: FirestoreError) -> Error {
    let innermost = |dump: &str| {
        dump.rsplit_once("message: \"")
            .and_then(|(_, rest)| rest.split_once('"'))
            .map(|(message, _)| message.to_string())
    };
    let (message, retryable) = match &e {
        FirestoreError::DatabaseError(e) => (
            format!("{}: {}", e.public.code, e.details),
            e.retry_possible,
        ),
        FirestoreError::SystemError(s) => (
            match innermost(&s.public.code) {
                Some(cause) => format!("cannot reach Firestore ({cause})"),
                None => s.message.clone(),
            },
            true,
        ),
        FirestoreError::NetworkError(n) => (
            match innermost(&n.public.code) {
                Some(cause) => format!("cannot reach Firestore ({cause})"),
                None => n.message.clone(),
            },
            true,
        ),
        other => (other.to_string(), false),
    };
    Error::store(context, message.replace('\n', " "), retryable)
}

/// Whether a conditional write lost: the document changed, vanished or exists.
fn is_conflict(e: &FirestoreError) -> bool {
    match e {
        FirestoreError::DataConflictError(_) | FirestoreError::DataNotFoundError(_) => true,
        FirestoreError::DatabaseError(e) => {
            matches!(
                e.public.code.as_str(),
                "FailedPrecondition" | "Aborted" | "NotFound"
            )
        }
        _ => false,
    }
}

// ---- values ----

fn fs_timestamp(at: &Timestamp) -> prost_types::Timestamp {
    let (seconds, nanos) = at.unix_parts();
    prost_types::Timestamp {
        seconds,
        nanos: i32::try_from(nanos).unwrap_or(0),
    }
}

fn to_fs(value: &Value) -> FsValue {
    let value_type = match value {
        Value::Null => ValueType::NullValue(0),
        Value::Bool(b) => ValueType::BooleanValue(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => ValueType::IntegerValue(i),
            None => ValueType::DoubleValue(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => ValueType::StringValue(s.clone()),
        Value::Array(items) => ValueType::ArrayValue(ArrayValue {
            values: items.iter().map(to_fs).collect(),
        }),
        Value::Object(map) => ValueType::MapValue(MapValue {
            fields: map.iter().map(|(k, v)| (k.clone(), to_fs(v))).collect(),
        }),
    };
    FsValue {
        value_type: Some(value_type),
    }
}

fn from_fs(value: &FsValue) -> Value {
    match &value.value_type {
        None | Some(ValueType::NullValue(_)) => Value::Null,
        Some(ValueType::BooleanValue(b)) => Value::Bool(*b),
        Some(ValueType::IntegerValue(i)) => Value::Number((*i).into()),
        Some(ValueType::DoubleValue(d)) => Number::from_f64(*d).map_or(Value::Null, Value::Number),
        Some(ValueType::TimestampValue(t)) => u32::try_from(t.nanos)
            .ok()
            .and_then(|nanos| Timestamp::from_unix_parts(t.seconds, nanos))
            .map_or(Value::Null, |t| Value::String(t.to_string())),
        Some(ValueType::StringValue(s)) => Value::String(s.clone()),
        Some(ValueType::ArrayValue(a)) => Value::Array(a.values.iter().map(from_fs).collect()),
        Some(ValueType::MapValue(m)) => Value::Object(
            m.fields
                .iter()
                .map(|(k, v)| (k.clone(), from_fs(v)))
                .collect(),
        ),
        // Never written by asmr.
        Some(_) => Value::Null,
    }
}

fn to_fields(collection: Collection, doc: &Doc) -> HashMap<String, FsValue> {
    let times = collection.timestamp_fields();
    doc.iter()
        .map(|(key, value)| {
            let converted = match value {
                Value::String(text) if times.contains(&key.as_str()) => Timestamp::parse(text)
                    .map(|t| FsValue {
                        value_type: Some(ValueType::TimestampValue(fs_timestamp(&t))),
                    })
                    .unwrap_or_else(|| to_fs(value)),
                _ => to_fs(value),
            };
            (key.clone(), converted)
        })
        .collect()
}

fn scalar(value: &Scalar) -> FirestoreValue {
    let value_type = match value {
        Scalar::Str(s) => ValueType::StringValue(s.clone()),
        Scalar::Int(i) => ValueType::IntegerValue(*i),
        Scalar::Time(t) => ValueType::TimestampValue(fs_timestamp(t)),
    };
    FirestoreValue::from(FsValue {
        value_type: Some(value_type),
    })
}

fn version_of(doc: &Document) -> Version {
    let t = doc.update_time.unwrap_or_default();
    Version(format!("{}.{:09}", t.seconds, t.nanos))
}

fn version_timestamp(version: &Version) -> Option<prost_types::Timestamp> {
    let (seconds, nanos) = version.0.split_once('.')?;
    Some(prost_types::Timestamp {
        seconds: seconds.parse().ok()?,
        nanos: nanos.parse().ok()?,
    })
}

fn precondition(version: &Version) -> Option<FirestoreWritePrecondition> {
    let (seconds, nanos) = version.0.split_once('.')?;
    let at = firestore::jiff::Timestamp::new(seconds.parse().ok()?, nanos.parse().ok()?).ok()?;
    Some(FirestoreWritePrecondition::UpdateTime(at))
}

fn stored(doc: &Document) -> Stored {
    let id = doc.name.rsplit('/').next().unwrap_or_default().to_string();
    Stored {
        id,
        doc: doc
            .fields
            .iter()
            .map(|(k, v)| (k.clone(), from_fs(v)))
            .collect(),
        version: version_of(doc),
    }
}

fn filter(conds: &[Cond]) -> Option<FirestoreQueryFilter> {
    let mut filters: Vec<FirestoreQueryFilter> = conds
        .iter()
        .map(|cond| {
            let compare = match cond {
                Cond::Eq(field, value) => {
                    FirestoreQueryFilterCompare::Equal(field.to_string(), scalar(value))
                }
                Cond::Lt(field, value) => {
                    FirestoreQueryFilterCompare::LessThan(field.to_string(), scalar(value))
                }
                Cond::Ge(field, value) => FirestoreQueryFilterCompare::GreaterThanOrEqual(
                    field.to_string(),
                    scalar(value),
                ),
                Cond::In(field, values) => FirestoreQueryFilterCompare::In(
                    field.to_string(),
                    FirestoreValue::from(FsValue {
                        value_type: Some(ValueType::ArrayValue(ArrayValue {
                            values: values.iter().map(|v| scalar(v).value).collect(),
                        })),
                    }),
                ),
            };
            FirestoreQueryFilter::Compare(Some(compare))
        })
        .collect();
    match filters.len() {
        0 => None,
        1 => filters.pop(),
        _ => Some(FirestoreQueryFilter::Composite(
            FirestoreQueryFilterComposite {
                for_all_filters: filters,
                operator: FirestoreQueryFilterCompositeOperator::And,
            },
        )),
    }
}

#[async_trait]
impl Backend for FirestoreBackend {
    fn describe(&self) -> String {
        self.config.describe()
    }

    async fn get(&self, collection: Collection, id: &str) -> Result<Option<Stored>> {
        let doc = self
            .db
            .fluent()
            .select()
            .by_id_in(self.collection(collection))
            .one(id)
            .await
            .map_err(|e| fs_error("reading a document", e))?;
        Ok(doc.as_ref().map(stored))
    }

    async fn create(&self, collection: Collection, id: &str, doc: &Doc) -> Result<Option<Version>> {
        let document = Document {
            fields: to_fields(collection, doc),
            ..Document::default()
        };
        let created = self
            .db
            .fluent()
            .insert()
            .into(self.collection(collection))
            .document_id(id)
            .document(document)
            .execute()
            .await;
        match created {
            Ok(created) => Ok(Some(version_of(&created))),
            Err(FirestoreError::DataConflictError(_)) => Ok(None),
            Err(e) => Err(fs_error("creating a document", e)),
        }
    }

    async fn replace(
        &self,
        collection: Collection,
        id: &str,
        expected: &Version,
        doc: &Doc,
    ) -> Result<bool> {
        let Some(precondition) = precondition(expected) else {
            return Ok(false);
        };
        // No update mask: the document is replaced whole.
        let document = Document {
            name: self.doc_path(collection, id),
            fields: to_fields(collection, doc),
            ..Document::default()
        };
        let updated = self
            .db
            .fluent()
            .update()
            .in_col(self.collection(collection))
            .precondition(precondition)
            .document(document)
            .execute()
            .await;
        match updated {
            Ok(_) => Ok(true),
            Err(e) if is_conflict(&e) => Ok(false),
            Err(e) => Err(fs_error("updating a document", e)),
        }
    }

    /// One `Commit` without a transaction: Firestore applies its writes
    /// atomically, each with its own precondition, and takes no locks.
    async fn commit(&self, writes: &[Write]) -> Result<bool> {
        let mut fs_writes = Vec::with_capacity(writes.len());
        for write in writes {
            let (collection, id, doc, condition) = match write {
                Write::Create {
                    collection,
                    id,
                    doc,
                } => (
                    collection,
                    id,
                    Some(doc),
                    Some(ConditionType::Exists(false)),
                ),
                Write::Replace {
                    collection,
                    id,
                    expected,
                    doc,
                } => {
                    let Some(at) = version_timestamp(expected) else {
                        return Ok(false);
                    };
                    (
                        collection,
                        id,
                        Some(doc),
                        Some(ConditionType::UpdateTime(at)),
                    )
                }
                Write::Delete {
                    collection,
                    id,
                    expected,
                } => {
                    let condition = match expected {
                        Some(expected) => match version_timestamp(expected) {
                            Some(at) => Some(ConditionType::UpdateTime(at)),
                            None => return Ok(false),
                        },
                        None => None,
                    };
                    (collection, id, None, condition)
                }
            };
            let name = self.doc_path(*collection, id);
            fs_writes.push(FsWrite {
                operation: Some(match doc {
                    Some(doc) => Operation::Update(Document {
                        name,
                        fields: to_fields(*collection, doc),
                        ..Document::default()
                    }),
                    None => Operation::Delete(name),
                }),
                current_document: condition.map(|condition| Precondition {
                    condition_type: Some(condition),
                }),
                ..FsWrite::default()
            });
        }
        let request = CommitRequest {
            database: self.db.get_database_path().clone(),
            writes: fs_writes,
            ..CommitRequest::default()
        };
        let committed = self
            .db
            .client()
            .get()
            .commit(firestore::gcloud_sdk::tonic::Request::new(request))
            .await;
        match committed {
            Ok(_) => Ok(true),
            Err(status) => {
                let e = FirestoreError::from(status);
                if is_conflict(&e) {
                    Ok(false)
                } else {
                    Err(fs_error("committing writes", e))
                }
            }
        }
    }

    async fn delete(&self, collection: Collection, id: &str, expected: &Version) -> Result<bool> {
        let Some(precondition) = precondition(expected) else {
            return Ok(false);
        };
        let deleted = self
            .db
            .fluent()
            .delete()
            .from(self.collection(collection))
            .precondition(precondition)
            .document_id(id)
            .execute()
            .await;
        match deleted {
            Ok(()) => Ok(true),
            Err(e) if is_conflict(&e) => Ok(false),
            Err(e) => Err(fs_error("deleting a document", e)),
        }
    }

    async fn query(&self, collection: Collection, query: &Query) -> Result<Vec<Stored>> {
        let order: Vec<FirestoreQueryOrder> = query
            .order
            .iter()
            .map(|(field, dir)| FirestoreQueryOrder {
                field_name: field.to_string(),
                direction: match dir {
                    Dir::Asc => FirestoreQueryDirection::Ascending,
                    Dir::Desc => FirestoreQueryDirection::Descending,
                },
            })
            .collect();
        let conds = filter(&query.conds);
        let mut select = self
            .db
            .fluent()
            .select()
            .from(self.collection(collection).as_str())
            .filter(|_| conds.clone())
            .order(|_| order.clone())
            .limit(query.limit);
        if let Some(values) = &query.after {
            select = select.start_at(FirestoreQueryCursor::AfterValue(
                values.iter().map(scalar).collect(),
            ));
        }
        let docs = select
            .query()
            .await
            .map_err(|e| fs_error("querying documents", e))?;
        Ok(docs.iter().map(stored).collect())
    }

    async fn count(&self, collection: Collection, conds: &[Cond]) -> Result<u64> {
        let conds = filter(conds);
        let docs = self
            .db
            .fluent()
            .select()
            .from(self.collection(collection).as_str())
            .filter(|_| conds.clone())
            .aggregate(|a| a.fields([a.field("count").count()]))
            .query()
            .await
            .map_err(|e| fs_error("counting documents", e))?;
        let count = docs
            .first()
            .and_then(|doc| doc.fields.get("count"))
            .and_then(|value| match value.value_type {
                Some(ValueType::IntegerValue(n)) => u64::try_from(n).ok(),
                _ => None,
            })
            .unwrap_or(0);
        Ok(count)
    }
}
