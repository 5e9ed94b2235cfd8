//! The idempotent upsert sink for views ([`MongoSink`]).
//!
//! Changesets are coalesced by key between checkpoints (the last change of a row
//! wins) and written when the engine flushes before each checkpoint, so a row that
//! changes in every micro-batch costs one statement per checkpoint interval. A
//! crash between that flush and the checkpoint leaves MongoDB ahead; the restart
//! resets every aggregating view's collection to the checkpointed result, and
//! replayed upserts rewrite the same values. Writes are
//! batched `update` / `delete` commands (up to
//! [`STATEMENTS_PER_COMMAND`] statements per round trip, `ordered: false`):
//! upserts `$set` absolute values under a deterministic `_id` built from the
//! view key, deletes remove rows that left the view. Replaying a changeset
//! gives identical documents. Transient failures (network, no primary, step
//! down) are retried with backoff until [`MongoOptions::retry_for`] runs out;
//! anything else stops the job with the server's message.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::error::ArrowError;
use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, DateTime, Document};
use mongodb::error::{Error as MongoError, ErrorKind};
use mongodb::Database;
use trendflow_engine::contract::{Changeset, CheckpointMeta, Sink, ViewInfo};
use trendflow_engine::EngineError;

use super::bson::{row_document, row_id};
use super::MongoOptions;

/// Statements sent in one `update` or `delete` command.
pub const STATEMENTS_PER_COMMAND: usize = 1_000;
/// Statements sent in one `update` command to FerretDB 1.x: its SQLite backend keeps a
/// database connection per statement that changes a stored document until the command
/// ends, and hangs for good once all 100 of them are taken.
pub const FERRETDB_1_UPDATES_PER_COMMAND: usize = 50;
/// Collection holding one freshness document per view.
pub const META_COLLECTION: &str = "_trendflow_meta";

/// Writes view changesets into MongoDB collections.
pub struct MongoSink {
    database: Database,
    options: MongoOptions,
    views: HashMap<String, ViewInfo>,
    /// Per view: changes since the last flush, by the bytes of their `_id`.
    pending: HashMap<String, HashMap<Vec<u8>, (Bson, Change)>>,
    /// False while writes are being retried (the job reports itself not ready).
    healthy: Arc<AtomicBool>,
    /// The server is FerretDB 1.x (found at `open`), which stores neither BSON Decimal128
    /// nor NaN and closes the connection on a command holding either: retried as an
    /// outage, such a write would never succeed, so the sink refuses it up front. Its
    /// `update` commands are also kept short ([`FERRETDB_1_UPDATES_PER_COMMAND`]).
    ferretdb_v1: bool,
}

impl MongoSink {
    /// A sink writing into `database`.
    pub fn new(database: Database, options: MongoOptions) -> Self {
        Self { database, options, views: HashMap::new(), pending: HashMap::new(), healthy: Arc::new(AtomicBool::new(true)), ferretdb_v1: false }
    }

    /// A flag that is false while the sink retries failing writes.
    pub fn health(&self) -> Arc<AtomicBool> {
        self.healthy.clone()
    }

    fn write_concern(&self) -> Document {
        match self.options.write_concern.parse::<i32>() {
            Ok(nodes) => doc! {"w": nodes},
            Err(_) => doc! {"w": self.options.write_concern.clone()},
        }
    }

    /// Runs `attempt` until it succeeds, retrying failures it marks transient with
    /// exponential backoff for up to [`MongoOptions::retry_for`].
    async fn retrying<T, Fut>(&self, what: &str, mut attempt: impl FnMut() -> Fut) -> Result<T, EngineError>
    where
        Fut: Future<Output = Result<T, (String, bool)>>,
    {
        let started = Instant::now();
        let mut delay = Duration::from_millis(100);
        loop {
            let error = match attempt().await {
                Ok(value) => {
                    self.healthy.store(true, Ordering::Relaxed);
                    return Ok(value);
                }
                Err((message, false)) => return Err(EngineError::Sink(format!("MongoDB, {what}: {message}").into())),
                Err((message, true)) => message,
            };
            if started.elapsed() >= self.options.retry_for {
                return Err(EngineError::Sink(
                    format!("MongoDB, {what}: still failing after {:?}: {error}; the job stops, its checkpoint is intact", self.options.retry_for)
                        .into(),
                ));
            }
            self.healthy.store(false, Ordering::Relaxed);
            tracing::warn!(error = %error, retry_in_ms = delay.as_millis() as u64, "MongoDB, {what}: failed; retrying");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    /// Runs a write command, retrying transient failures.
    async fn write(&self, command: Document) -> Result<(), EngineError> {
        self.retrying("writing", || async {
            let reply = self.database.run_command(command.clone()).await.map_err(|e| (e.to_string(), is_transient(&e)))?;
            write_errors(&reply).map_or(Ok(()), Err)
        })
        .await
    }

    /// Deletes the documents `deletes`, then upserts `upserts` (`_id`, document).
    async fn write_rows(&self, collection: &str, deletes: Vec<Bson>, upserts: Vec<(Bson, Document)>) -> Result<(), EngineError> {
        for chunk in deletes.chunks(STATEMENTS_PER_COMMAND) {
            let deletes: Vec<Bson> = chunk.iter().map(|id| Bson::Document(doc! {"q": {"_id": id}, "limit": 1})).collect();
            self.write(doc! {"delete": collection, "deletes": deletes, "ordered": false, "writeConcern": self.write_concern()}).await?;
        }
        let updates = upserts.into_iter().map(|(id, document)| Bson::Document(doc! {"q": {"_id": id}, "u": {"$set": document}, "upsert": true}));
        self.update(collection, updates.collect()).await
    }

    /// Sends `update` statements, as many per command as the server takes.
    async fn update(&self, collection: &str, updates: Vec<Bson>) -> Result<(), EngineError> {
        let per_command = if self.ferretdb_v1 { FERRETDB_1_UPDATES_PER_COMMAND } else { STATEMENTS_PER_COMMAND };
        for chunk in updates.chunks(per_command) {
            self.write(doc! {"update": collection, "updates": chunk.to_vec(), "ordered": false, "writeConcern": self.write_concern()}).await?;
        }
        Ok(())
    }

    /// Writes `view`'s pending changes.
    async fn write_pending(&mut self, view: &str) -> Result<(), EngineError> {
        let Some(rows) = self.pending.remove(view) else { return Ok(()) };
        let (mut deletes, mut upserts) = (Vec::new(), Vec::new());
        for (id, change) in rows.into_values() {
            match change {
                Change::Delete => deletes.push(id),
                Change::Upsert(document) => upserts.push((id, document)),
            }
        }
        self.write_rows(&self.options.collection_of(view), deletes, upserts).await
    }

    /// `rows` of `view` as (`_id`, document) pairs.
    fn documents(&self, view: &ViewInfo, rows: &RecordBatch) -> Result<Vec<(Bson, Document)>, EngineError> {
        let documents: Vec<(Bson, Document)> =
            (0..rows.num_rows()).map(|row| Ok((row_id(rows, &view.key, row)?, row_document(rows, row)?))).collect::<Result<_, ArrowError>>()?;
        if self.ferretdb_v1 {
            if let Some((id, field)) = documents.iter().find_map(|(id, d)| d.iter().find(|(_, v)| holds_nan(v)).map(|(f, _)| (id, f))) {
                return Err(EngineError::Sink(
                    format!("view `{}`, row `{id}`: `{field}` holds NaN, which FerretDB 1.x cannot store", view.name).into(),
                ));
            }
        }
        Ok(documents)
    }

    /// Whether the server is FerretDB 1.x (its `buildInfo` names a `ferretdbVersion`).
    async fn is_ferretdb_v1(&self) -> Result<bool, EngineError> {
        let reply = self
            .retrying("asking for the server's version", || async {
                match self.database.run_command(doc! {"buildInfo": 1}).await {
                    Ok(reply) => Ok(Some(reply)),
                    Err(e) if is_transient(&e) => Err((e.to_string(), true)),
                    // A server without `buildInfo` is not FerretDB.
                    Err(_) => Ok(None),
                }
            })
            .await?;
        Ok(reply.is_some_and(|r| r.get_str("ferretdbVersion").is_ok_and(|v| v.starts_with("v1."))))
    }

    /// Every document in `collection`, by the bytes of its `_id` (the `_id` taken out).
    async fn stored(&self, collection: &str) -> Result<HashMap<Vec<u8>, (Bson, Document)>, EngineError> {
        self.retrying(&format!("reading `{collection}`"), || async {
            let failed = |e: MongoError| (e.to_string(), is_transient(&e));
            let cursor = self.database.collection::<Document>(collection).find(doc! {}).await.map_err(failed)?;
            let documents: Vec<Document> = cursor.try_collect().await.map_err(failed)?;
            Ok(documents.into_iter().filter_map(|mut d| d.remove("_id").map(|id| (id_bytes(&id), (id, d)))).collect())
        })
        .await
    }
}

/// Whether `value` is, or holds, a NaN double.
fn holds_nan(value: &Bson) -> bool {
    match value {
        Bson::Double(d) => d.is_nan(),
        Bson::Array(values) => values.iter().any(holds_nan),
        Bson::Document(document) => document.values().any(holds_nan),
        _ => false,
    }
}

/// Whether values of `data_type` map to BSON Decimal128, or hold some.
fn holds_decimal(data_type: &DataType) -> bool {
    match data_type {
        DataType::Decimal128(..) => true,
        DataType::List(field) | DataType::LargeList(field) => holds_decimal(field.data_type()),
        DataType::Struct(fields) => fields.iter().any(|f| holds_decimal(f.data_type())),
        _ => false,
    }
}

/// A row's change waiting for the next flush.
enum Change {
    Upsert(Document),
    Delete,
}

/// The exact bytes of an `_id`, to match rows by (Bson has no `Hash`, and its text
/// form does not escape strings, so two keys could print alike).
fn id_bytes(id: &Bson) -> Vec<u8> {
    let mut bytes = Vec::new();
    doc! {"_id": id}.to_writer(&mut bytes).expect("a BSON document serializes into memory");
    bytes
}

/// The write errors of a command reply, and whether they are worth retrying.
fn write_errors(reply: &Document) -> Option<(String, bool)> {
    if let Ok(errors) = reply.get_array("writeErrors") {
        let first = errors.first().and_then(Bson::as_document);
        let message = first.and_then(|e| e.get_str("errmsg").ok()).unwrap_or("write error").to_string();
        let code = first.and_then(|e| e.get_i32("code").ok()).unwrap_or_default();
        return Some((format!("{message} (code {code}, {} statements failed)", errors.len()), is_transient_code(code)));
    }
    reply.get_document("writeConcernError").ok().map(|e| (format!("write concern: {}", e.get_str("errmsg").unwrap_or("not satisfied")), true))
}

/// Server error codes that a later attempt can outlive (no primary, step-down, shutdown, network).
fn is_transient_code(code: i32) -> bool {
    matches!(code, 6 | 7 | 89 | 91 | 189 | 262 | 9001 | 10107 | 11600 | 11602 | 13435 | 13436)
}

fn is_transient(error: &MongoError) -> bool {
    error.contains_label("RetryableWriteError")
        || match error.kind.as_ref() {
            ErrorKind::Io(_) | ErrorKind::ServerSelection { .. } | ErrorKind::ConnectionPoolCleared { .. } => true,
            ErrorKind::Command(command) => is_transient_code(command.code),
            _ => false,
        }
}

#[async_trait]
impl Sink for MongoSink {
    async fn open(&mut self, views: &[ViewInfo]) -> Result<(), EngineError> {
        self.views = views.iter().map(|v| (v.name.clone(), v.clone())).collect();
        // A view owns its collection (a restart resets it to the view's result).
        let mut owners = HashMap::new();
        for view in views {
            let collection = self.options.collection_of(&view.name);
            if let Some(other) = owners.insert(collection.clone(), &view.name) {
                return Err(EngineError::Sink(
                    format!(
                        "views `{other}` and `{}` would share the MongoDB collection `{collection}`: \
                     give each its own with --mongodb-collection VIEW=COLLECTION",
                        view.name
                    )
                    .into(),
                ));
            }
        }
        self.ferretdb_v1 = self.is_ferretdb_v1().await?;
        if self.ferretdb_v1 {
            if let Some((view, column)) =
                views.iter().find_map(|v| v.schema.fields().iter().find(|f| holds_decimal(f.data_type())).map(|f| (&v.name, f.name())))
            {
                return Err(EngineError::Sink(
                    format!(
                        "view `{view}`: column `{column}` is a DECIMAL, which FerretDB 1.x cannot store \
                     (it has no BSON Decimal128): cast it to DOUBLE in the view, or write to MongoDB"
                    )
                    .into(),
                ));
            }
        }
        for (view, indexes) in &self.options.indexes {
            let info =
                self.views.get(view).ok_or_else(|| EngineError::Sink(format!("--mongodb-index names `{view}`, which is not a view").into()))?;
            let mut specs = Vec::new();
            for columns in indexes {
                if let Some(missing) = columns.iter().find(|c| info.schema.index_of(c).is_err()) {
                    return Err(EngineError::Sink(format!("--mongodb-index: view `{view}` has no column `{missing}`").into()));
                }
                let key: Document = columns.iter().map(|c| (c.clone(), Bson::Int32(1))).collect();
                specs.push(Bson::Document(doc! {"key": key, "name": columns.join("_")}));
            }
            // `_id` is unique by MongoDB's own rule; these are lookups over view columns.
            self.write(doc! {"createIndexes": self.options.collection_of(view), "indexes": specs}).await?;
        }
        Ok(())
    }

    async fn apply(&mut self, view: &ViewInfo, changes: &Changeset) -> Result<(), EngineError> {
        let key_positions: Vec<usize> = (0..view.key.len()).collect();
        let upserts = self.documents(view, &changes.upserts)?;
        let pending = self.pending.entry(view.name.clone()).or_default();
        for row in 0..changes.deletes.num_rows() {
            let id = row_id(&changes.deletes, &key_positions, row)?;
            pending.insert(id_bytes(&id), (id, Change::Delete));
        }
        for (id, document) in upserts {
            pending.insert(id_bytes(&id), (id, Change::Upsert(document)));
        }
        // Views keyed by the stream's primary key change a new row per record: write
        // them out before they fill memory (a restart resets or replays what runs ahead).
        if pending.len() >= MAX_PENDING_ROWS {
            self.write_pending(&view.name).await?;
        }
        Ok(())
    }

    async fn reset(&mut self, view: &ViewInfo, rows: &RecordBatch) -> Result<(), EngineError> {
        self.pending.remove(&view.name);
        let collection = self.options.collection_of(&view.name);
        let mut stored = self.stored(&collection).await?;
        // Rows already stored as they are cost no write: a restart reads the collection once.
        let mut upserts = Vec::new();
        for (id, document) in self.documents(view, rows)? {
            if stored.remove(&id_bytes(&id)).is_none_or(|(_, old)| old != document) {
                upserts.push((id, document));
            }
        }
        let stale = stored.into_values().map(|(id, _)| id).collect();
        self.write_rows(&collection, stale, upserts).await
    }

    async fn flush(&mut self, meta: &CheckpointMeta) -> Result<(), EngineError> {
        let views: Vec<String> = self.pending.keys().cloned().collect();
        for view in views {
            self.write_pending(&view).await?;
        }
        let sources: Document = meta
            .sources
            .iter()
            .map(|(source, offsets)| {
                let positions: Document = offsets.iter().map(|(p, o)| (p.to_string(), Bson::Int64(*o))).collect();
                (source.clone(), Bson::Document(positions))
            })
            .collect();
        let updates: Vec<Bson> = self
            .views
            .keys()
            .map(|view| {
                let document = doc! {
                    "collection": self.options.collection_of(view),
                    "batch_id": meta.batch_id as i64,
                    "sources": sources.clone(),
                    "updated_at": DateTime::now(),
                };
                Bson::Document(doc! {"q": {"_id": view}, "u": {"$set": document}, "upsert": true})
            })
            .collect();
        self.update(META_COLLECTION, updates).await
    }
}

/// Pending rows of one view after which they are written without waiting for the checkpoint.
const MAX_PENDING_ROWS: usize = 50_000;
