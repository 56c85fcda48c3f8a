//! The embedded adapter: one SQLite database file under the state directory
//! (default `.asmr/asmr.db`), for the local run and for tests.
//!
//! Documents are stored as JSON text with an integer version that every write
//! checks and bumps. Queries filter and sort with `json_extract`, backed by
//! expression indexes. All tasks of a process share one connection behind a
//! mutex (calls run on the blocking pool); other processes on the same
//! directory (say `asmr stats` while `asmr run` works) are serialised by
//! SQLite's own locking.

use super::backend::{Backend, Collection, Cond, Dir, Doc, Query, Scalar, Stored, Version, Write};
use crate::error::{Error, Result};
use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, ToSql, params_from_iter, types::Value as SqlValue};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The database file inside the state directory.
pub const DATABASE_FILE: &str = "asmr.db";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY NOT NULL,
    version INTEGER NOT NULL,
    doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_claim ON jobs (
    json_extract(doc, '$.status'), json_extract(doc, '$.kind'),
    json_extract(doc, '$.priority'), json_extract(doc, '$.created_at'));
CREATE INDEX IF NOT EXISTS jobs_created ON jobs (json_extract(doc, '$.created_at'));
CREATE INDEX IF NOT EXISTS jobs_expire ON jobs (json_extract(doc, '$.expire_at'));
CREATE INDEX IF NOT EXISTS jobs_completed ON jobs (json_extract(doc, '$.completed_at'));
CREATE INDEX IF NOT EXISTS jobs_model ON jobs (json_extract(doc, '$.model'));
CREATE INDEX IF NOT EXISTS jobs_status_updated ON jobs (
    json_extract(doc, '$.status'), json_extract(doc, '$.updated_at'));
CREATE TABLE IF NOT EXISTS downloads (
    id TEXT PRIMARY KEY NOT NULL,
    version INTEGER NOT NULL,
    doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS downloads_claim ON downloads (
    json_extract(doc, '$.status'), json_extract(doc, '$.priority'),
    json_extract(doc, '$.created_at'));
CREATE INDEX IF NOT EXISTS downloads_expire ON downloads (json_extract(doc, '$.expire_at'));
CREATE INDEX IF NOT EXISTS downloads_completed ON downloads (json_extract(doc, '$.completed_at'));
CREATE INDEX IF NOT EXISTS downloads_status_updated ON downloads (
    json_extract(doc, '$.status'), json_extract(doc, '$.updated_at'));
CREATE TABLE IF NOT EXISTS rejected (
    id TEXT PRIMARY KEY NOT NULL,
    version INTEGER NOT NULL,
    doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS rejected_received ON rejected (json_extract(doc, '$.received_at'));
CREATE TABLE IF NOT EXISTS budgets (
    id TEXT PRIMARY KEY NOT NULL,
    version INTEGER NOT NULL,
    doc TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    id TEXT PRIMARY KEY NOT NULL,
    version INTEGER NOT NULL,
    doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_created ON outbox (json_extract(doc, '$.created_at'));
CREATE TABLE IF NOT EXISTS held (
    id TEXT PRIMARY KEY NOT NULL,
    version INTEGER NOT NULL,
    doc TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS tenants (
    id TEXT PRIMARY KEY NOT NULL,
    version INTEGER NOT NULL,
    doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS budgets_budget ON budgets (json_extract(doc, '$.budget'));
CREATE TABLE IF NOT EXISTS charges (
    id TEXT PRIMARY KEY NOT NULL,
    version INTEGER NOT NULL,
    doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS charges_day ON charges (json_extract(doc, '$.day'));
CREATE TABLE IF NOT EXISTS limits (
    id TEXT PRIMARY KEY NOT NULL,
    version INTEGER NOT NULL,
    doc TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS webhooks (
    id TEXT PRIMARY KEY NOT NULL,
    version INTEGER NOT NULL,
    doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_tenant ON jobs (
    json_extract(doc, '$.tenant'), json_extract(doc, '$.created_at'));
";

/// The SQLite-backed store of a local run.
#[derive(Clone)]
pub struct EmbeddedBackend {
    conn: Arc<Mutex<Connection>>,
    /// What [`Backend::describe`] says.
    location: String,
}

fn sql_error(context: &str, e: rusqlite::Error) -> Error {
    let busy = matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    );
    Error::store(context, e, busy)
}

impl EmbeddedBackend {
    /// Opens (creating if needed) the store in `state_dir`.
    pub fn open(state_dir: &Path) -> Result<Self> {
        let private = |e: std::io::Error| {
            Error::store(
                format!("creating the state directory {}", state_dir.display()),
                e,
                false,
            )
        };
        // The state holds every prompt and where every file went: the
        // owner's alone, whatever the umask.
        crate::beneath::private_dir(state_dir).map_err(private)?;
        let path: PathBuf = state_dir.join(DATABASE_FILE);
        crate::beneath::private_file()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(private)?;
        crate::beneath::private_file_mode(&path).map_err(private)?;
        let conn = Connection::open(&path)
            .map_err(|e| sql_error(&format!("opening {}", path.display()), e))?;
        let backend = Self::init(conn, describe(state_dir))?;
        // SQLite makes its WAL and shared-memory files with the database's
        // mode; older ones are tightened here.
        for suffix in ["-wal", "-shm"] {
            let mut side = path.clone().into_os_string();
            side.push(suffix);
            crate::beneath::private_file_mode(Path::new(&side)).map_err(private)?;
        }
        Ok(backend)
    }

    /// A store that lives only as long as the process (unit tests).
    pub fn in_memory() -> Result<Self> {
        let conn =
            Connection::open_in_memory().map_err(|e| sql_error("opening an in-memory store", e))?;
        Self::init(conn, "embedded (in memory)".into())
    }

    fn init(conn: Connection, location: String) -> Result<Self> {
        let setup = |conn: &Connection| -> rusqlite::Result<()> {
            conn.busy_timeout(std::time::Duration::from_secs(10))?;
            // WAL lets readers in other processes work while a run writes;
            // FULL makes every committed claim survive a power cut, so a
            // paid call is never repeated because its record was lost.
            conn.pragma_update(None, "journal_mode", "WAL")?;
            conn.pragma_update(None, "synchronous", "FULL")?;
            conn.execute_batch(SCHEMA)
        };
        setup(&conn).map_err(|e| sql_error(&format!("preparing the store: {location}"), e))?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            location,
        })
    }

    /// Runs `f` with the connection on the blocking pool.
    async fn with_conn<T: Send + 'static>(
        &self,
        context: &'static str,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let conn = conn
                .lock()
                .map_err(|_| Error::store(context, "the store connection was poisoned", false))?;
            f(&conn).map_err(|e| sql_error(context, e))
        })
        .await
        .map_err(|e| Error::store(context, e, false))?
    }
}

/// How the store in `state_dir` describes itself.
pub fn describe(state_dir: &Path) -> String {
    format!(
        "embedded (state in {})",
        state_dir.join(DATABASE_FILE).display()
    )
}

fn table(collection: Collection) -> &'static str {
    collection.name()
}

fn field_expr(field: &str) -> String {
    debug_assert!(field.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
    if field == "id" {
        "id".into()
    } else {
        format!("json_extract(doc, '$.{field}')")
    }
}

fn sql_value(value: &Scalar) -> SqlValue {
    match value {
        Scalar::Str(s) => SqlValue::Text(s.clone()),
        Scalar::Int(i) => SqlValue::Integer(*i),
        Scalar::Time(t) => SqlValue::Text(t.to_string()),
    }
}

/// `WHERE` clause (possibly empty) and its parameters.
fn where_clause(
    conds: &[Cond],
    order: &[(&'static str, Dir)],
    after: Option<&[Scalar]>,
) -> (String, Vec<SqlValue>) {
    let mut parts = Vec::new();
    let mut params = Vec::new();
    for cond in conds {
        match cond {
            Cond::Eq(field, value) => {
                parts.push(format!("{} = ?", field_expr(field)));
                params.push(sql_value(value));
            }
            Cond::Lt(field, value) => {
                parts.push(format!("{} < ?", field_expr(field)));
                params.push(sql_value(value));
            }
            Cond::Ge(field, value) => {
                parts.push(format!("{} >= ?", field_expr(field)));
                params.push(sql_value(value));
            }
            Cond::In(field, values) if values.is_empty() => parts.push("0".into()),
            Cond::In(field, values) => {
                let marks = vec!["?"; values.len()].join(", ");
                parts.push(format!("{} IN ({marks})", field_expr(field)));
                params.extend(values.iter().map(sql_value));
            }
        }
    }
    if let Some(after) = after {
        // (a, b, c) after (x, y, z) in the given directions, spelled out.
        let mut alternatives = Vec::new();
        for (i, ((field, dir), value)) in order.iter().zip(after).enumerate() {
            let mut terms = Vec::new();
            for ((prev, _), prev_value) in order.iter().zip(after).take(i) {
                terms.push(format!("{} = ?", field_expr(prev)));
                params.push(sql_value(prev_value));
            }
            let op = if *dir == Dir::Asc { ">" } else { "<" };
            terms.push(format!("{} {op} ?", field_expr(field)));
            params.push(sql_value(value));
            alternatives.push(format!("({})", terms.join(" AND ")));
        }
        parts.push(format!("({})", alternatives.join(" OR ")));
    }
    let clause = if parts.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", parts.join(" AND "))
    };
    (clause, params)
}

fn decode(id: String, version: i64, text: String) -> rusqlite::Result<Stored> {
    let doc: Doc = serde_json::from_str(&text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(2, rusqlite::types::Type::Text, Box::new(e))
    })?;
    Ok(Stored {
        id,
        doc,
        version: Version(version.to_string()),
    })
}

fn encode(doc: &Doc) -> Result<String> {
    serde_json::to_string(doc).map_err(|e| Error::store("encoding a document", e, false))
}

fn parse_version(version: &Version) -> i64 {
    // A version this adapter did not hand out can never match.
    version.0.parse().unwrap_or(-1)
}

#[async_trait]
impl Backend for EmbeddedBackend {
    fn describe(&self) -> String {
        self.location.clone()
    }

    async fn get(&self, collection: Collection, id: &str) -> Result<Option<Stored>> {
        let sql = format!(
            "SELECT id, version, doc FROM {} WHERE id = ?",
            table(collection)
        );
        let id = id.to_string();
        self.with_conn("reading a document", move |conn| {
            conn.query_row(&sql, [&id], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?))
            })
            .optional()?
            .map(|(id, version, text)| decode(id, version, text))
            .transpose()
        })
        .await
    }

    async fn create(&self, collection: Collection, id: &str, doc: &Doc) -> Result<Option<Version>> {
        let sql = format!(
            "INSERT INTO {} (id, version, doc) VALUES (?, 1, ?) ON CONFLICT (id) DO NOTHING",
            table(collection)
        );
        let (id, text) = (id.to_string(), encode(doc)?);
        self.with_conn("creating a document", move |conn| {
            Ok((conn.execute(&sql, [&id, &text])? == 1).then(|| Version("1".into())))
        })
        .await
    }

    async fn replace(
        &self,
        collection: Collection,
        id: &str,
        expected: &Version,
        doc: &Doc,
    ) -> Result<bool> {
        let sql = format!(
            "UPDATE {} SET doc = ?, version = version + 1 WHERE id = ? AND version = ?",
            table(collection)
        );
        let (id, text, version) = (id.to_string(), encode(doc)?, parse_version(expected));
        self.with_conn("updating a document", move |conn| {
            Ok(conn.execute(&sql, (&text, &id, version))? == 1)
        })
        .await
    }

    async fn commit(&self, writes: &[Write]) -> Result<bool> {
        // (sql, id, body, expected version for a replace; whether the
        // statement must change exactly one row)
        let mut statements: Vec<(String, String, Option<String>, Option<i64>, bool)> = Vec::new();
        for write in writes {
            statements.push(match write {
                Write::Create {
                    collection,
                    id,
                    doc,
                } => (
                    format!(
                        "INSERT INTO {} (id, version, doc) VALUES (?1, 1, ?2) \
                         ON CONFLICT (id) DO NOTHING",
                        table(*collection)
                    ),
                    id.clone(),
                    Some(encode(doc)?),
                    None,
                    true,
                ),
                Write::Replace {
                    collection,
                    id,
                    expected,
                    doc,
                } => (
                    format!(
                        "UPDATE {} SET doc = ?2, version = version + 1 \
                         WHERE id = ?1 AND version = ?3",
                        table(*collection)
                    ),
                    id.clone(),
                    Some(encode(doc)?),
                    Some(parse_version(expected)),
                    true,
                ),
                Write::Delete {
                    collection,
                    id,
                    expected: Some(expected),
                } => (
                    format!(
                        "DELETE FROM {} WHERE id = ?1 AND version = ?2",
                        table(*collection)
                    ),
                    id.clone(),
                    None,
                    Some(parse_version(expected)),
                    true,
                ),
                Write::Delete {
                    collection,
                    id,
                    expected: None,
                } => (
                    format!("DELETE FROM {} WHERE id = ?1", table(*collection)),
                    id.clone(),
                    None,
                    None,
                    false,
                ),
            });
        }
        self.with_conn("committing writes", move |conn| {
            let tx = conn.unchecked_transaction()?;
            for (sql, id, doc, version, exactly_one) in &statements {
                let changed = match (doc, version) {
                    (Some(doc), Some(version)) => tx.execute(sql, (id, doc, version))?,
                    (Some(doc), None) => tx.execute(sql, (id, doc))?,
                    (None, Some(version)) => tx.execute(sql, (id, version))?,
                    (None, None) => tx.execute(sql, [id])?,
                };
                if *exactly_one && changed != 1 {
                    // Dropping the transaction rolls back what was written.
                    return Ok(false);
                }
            }
            tx.commit()?;
            Ok(true)
        })
        .await
    }

    async fn delete(&self, collection: Collection, id: &str, expected: &Version) -> Result<bool> {
        let sql = format!(
            "DELETE FROM {} WHERE id = ? AND version = ?",
            table(collection)
        );
        let (id, version) = (id.to_string(), parse_version(expected));
        self.with_conn("deleting a document", move |conn| {
            Ok(conn.execute(&sql, (&id, version))? == 1)
        })
        .await
    }

    async fn query(&self, collection: Collection, query: &Query) -> Result<Vec<Stored>> {
        let (clause, mut params) = where_clause(&query.conds, &query.order, query.after.as_deref());
        let order = query
            .order
            .iter()
            .map(|(field, dir)| {
                format!(
                    "{} {}",
                    field_expr(field),
                    if *dir == Dir::Asc { "ASC" } else { "DESC" }
                )
            })
            .collect::<Vec<_>>();
        let order = if order.is_empty() {
            String::new()
        } else {
            format!(" ORDER BY {}", order.join(", "))
        };
        let sql = format!(
            "SELECT id, version, doc FROM {}{clause}{order} LIMIT ?",
            table(collection)
        );
        params.push(SqlValue::Integer(i64::from(query.limit)));
        self.with_conn("querying documents", move |conn| {
            let mut statement = conn.prepare_cached(&sql)?;
            let rows = statement.query_map(
                params_from_iter(params.iter().map(|p| p as &dyn ToSql)),
                |row| decode(row.get(0)?, row.get(1)?, row.get(2)?),
            )?;
            rows.collect()
        })
        .await
    }

    async fn count(&self, collection: Collection, conds: &[Cond]) -> Result<u64> {
        let (clause, params) = where_clause(conds, &[], None);
        let sql = format!("SELECT COUNT(*) FROM {}{clause}", table(collection));
        self.with_conn("counting documents", move |conn| {
            let count: i64 = conn.query_row(
                &sql,
                params_from_iter(params.iter().map(|p| p as &dyn ToSql)),
                |row| row.get(0),
            )?;
            Ok(u64::try_from(count).unwrap_or(0))
        })
        .await
    }
}
