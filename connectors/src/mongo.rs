//! MongoDB: an idempotent upsert sink for views, and collections as DataFusion tables.
//!
//! Changesets are coalesced by key between checkpoints (the last change of a row
//! wins) and written when the engine flushes before each checkpoint, so a row that
//! changes in every micro-batch costs one statement per checkpoint interval, and
//! MongoDB never holds changes the next checkpoint does not cover. Writes are
//! batched `update` / `delete` commands (up to
//! [`STATEMENTS_PER_COMMAND`] statements per round trip, `ordered: false`):
//! upserts `$set` absolute values under a deterministic `_id` built from the
//! view key, deletes remove rows that left the view. Replaying a changeset
//! gives identical documents. Transient failures (network, no primary, step
//! down) are retried with backoff until [`MongoOptions::retry_for`] runs out;
//! anything else stops the job with the server's message.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::error::ArrowError;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::{Constraint, Constraints, ScalarValue};
use datafusion::datasource::{MemTable, TableType};
use datafusion::logical_expr::{BinaryExpr, Expr, Operator, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, DateTime, Document};
use mongodb::error::{Error as MongoError, ErrorKind};
use mongodb::{Client, Database};
use trendflow_engine::checkpoint::CheckpointMeta;
use trendflow_engine::runtime::Sink;
use trendflow_engine::view::{Changeset, ViewInfo};
use trendflow_engine::EngineError;

use crate::bson_convert::{documents_to_batch, row_document, row_id, to_bson};

/// Statements sent in one `update` or `delete` command.
pub const STATEMENTS_PER_COMMAND: usize = 1_000;
/// Collection holding one freshness document per view.
pub const META_COLLECTION: &str = "_trendflow_meta";

/// Where and how to write.
#[derive(Debug, Clone)]
pub struct MongoOptions {
    /// Connection string, e.g. `mongodb://127.0.0.1:27017`.
    pub uri: String,
    /// Database of the view collections.
    pub database: String,
    /// Write concern `w`: `majority` or a number of nodes.
    pub write_concern: String,
    /// View name → collection name, where it differs.
    pub collections: HashMap<String, String>,
    /// View name → secondary indexes, each a list of columns (ascending).
    pub indexes: HashMap<String, Vec<Vec<String>>>,
    /// How long transient errors are retried before the job stops.
    pub retry_for: Duration,
}

impl Default for MongoOptions {
    fn default() -> Self {
        Self {
            uri: "mongodb://127.0.0.1:27017".into(),
            database: "trendflow".into(),
            write_concern: "majority".into(),
            collections: HashMap::new(),
            indexes: HashMap::new(),
            retry_for: Duration::from_secs(600),
        }
    }
}

impl MongoOptions {
    /// The collection a view is kept in.
    pub fn collection_of(&self, view: &str) -> String {
        self.collections.get(view).cloned().unwrap_or_else(|| view.to_string())
    }
}

/// Connects to MongoDB; fails fast with the URI's host when nothing answers.
pub async fn connect(options: &MongoOptions) -> Result<Database, EngineError> {
    let client = Client::with_uri_str(&options.uri)
        .await
        .map_err(|e| EngineError::Sink(format!("MongoDB URI `{}`: {e}", redact(&options.uri))))?;
    let database = client.database(&options.database);
    database
        .run_command(doc! {"ping": 1})
        .await
        .map_err(|e| EngineError::Sink(format!("MongoDB at `{}` does not answer: {e}", redact(&options.uri))))?;
    Ok(database)
}

/// The URI without its password, for messages and logs.
pub fn redact(uri: &str) -> String {
    match (uri.find("://"), uri.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &uri[scheme + 3..at];
            let user = credentials.split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &uri[..scheme + 3], &uri[at..])
        }
        _ => uri.to_string(),
    }
}

/// Writes view changesets into MongoDB collections.
pub struct MongoSink {
    database: Database,
    options: MongoOptions,
    views: HashMap<String, ViewInfo>,
    /// Per view: changes since the last flush, by `_id` (as text): the document to
    /// `$set`, or `None` to delete.
    pending: HashMap<String, HashMap<String, (Bson, Option<Document>)>>,
    /// False while writes are being retried (the job reports itself not ready).
    healthy: Arc<AtomicBool>,
}

impl MongoSink {
    /// A sink writing into `database`.
    pub fn new(database: Database, options: MongoOptions) -> Self {
        Self { database, options, views: HashMap::new(), pending: HashMap::new(), healthy: Arc::new(AtomicBool::new(true)) }
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

    /// Runs a write command, retrying transient failures with exponential backoff.
    async fn write(&self, command: Document) -> Result<(), EngineError> {
        let started = Instant::now();
        let mut delay = Duration::from_millis(100);
        loop {
            let outcome = self.database.run_command(command.clone()).await;
            let error = match outcome {
                Ok(reply) => match write_errors(&reply) {
                    None => {
                        self.healthy.store(true, Ordering::Relaxed);
                        return Ok(());
                    }
                    Some((message, transient)) if transient => message,
                    Some((message, _)) => return Err(EngineError::Sink(format!("MongoDB rejected a write: {message}"))),
                },
                Err(e) if is_transient(&e) => e.to_string(),
                Err(e) => return Err(EngineError::Sink(format!("MongoDB: {e}"))),
            };
            if started.elapsed() >= self.options.retry_for {
                return Err(EngineError::Sink(format!(
                    "MongoDB still failing after {:?}: {error}; the job stops, its checkpoint is intact",
                    self.options.retry_for
                )));
            }
            self.healthy.store(false, Ordering::Relaxed);
            tracing::warn!(error = %error, retry_in_ms = delay.as_millis() as u64, "MongoDB write failed; retrying");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    /// Writes `_id` → document upserts (`None`: delete), deletes first.
    async fn write_rows(&self, collection: &str, rows: Vec<(Bson, Option<Document>)>) -> Result<(), EngineError> {
        let (deletes, upserts): (Vec<_>, Vec<_>) = rows.into_iter().partition(|(_, document)| document.is_none());
        for chunk in deletes.chunks(STATEMENTS_PER_COMMAND) {
            let deletes: Vec<Bson> = chunk.iter().map(|(id, _)| Bson::Document(doc! {"q": {"_id": id}, "limit": 1})).collect();
            self.write(doc! {"delete": collection, "deletes": deletes, "ordered": false, "writeConcern": self.write_concern()}).await?;
        }
        for chunk in upserts.chunks(STATEMENTS_PER_COMMAND) {
            let updates: Vec<Bson> = chunk
                .iter()
                .filter_map(|(id, document)| Some(Bson::Document(doc! {"q": {"_id": id}, "u": {"$set": document.as_ref()?}, "upsert": true})))
                .collect();
            self.write(doc! {"update": collection, "updates": updates, "ordered": false, "writeConcern": self.write_concern()}).await?;
        }
        Ok(())
    }

    /// `rows` of `view` as `_id` → document pairs.
    fn documents(view: &ViewInfo, rows: &RecordBatch) -> Result<Vec<(Bson, Option<Document>)>, EngineError> {
        Ok((0..rows.num_rows()).map(|row| Ok((row_id(rows, &view.key, row)?, Some(row_document(rows, row)?)))).collect::<Result<_, ArrowError>>()?)
    }

    /// The `_id` of every document in `collection`.
    async fn ids(&self, collection: &str) -> Result<Vec<Bson>, EngineError> {
        let failed = |e: MongoError| EngineError::Sink(format!("MongoDB: reading the ids of `{collection}`: {e}"));
        let cursor = self.database.collection::<Document>(collection).find(doc! {}).projection(doc! {"_id": 1}).await.map_err(failed)?;
        let documents: Vec<Document> = cursor.try_collect().await.map_err(failed)?;
        Ok(documents.into_iter().filter_map(|mut d| d.remove("_id")).collect())
    }
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
        for (view, indexes) in &self.options.indexes {
            let info = self.views.get(view).ok_or_else(|| EngineError::Sink(format!("--mongodb-index names `{view}`, which is not a view")))?;
            let mut specs = Vec::new();
            for columns in indexes {
                if let Some(missing) = columns.iter().find(|c| info.schema.index_of(c).is_err()) {
                    return Err(EngineError::Sink(format!("--mongodb-index: view `{view}` has no column `{missing}`")));
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
        let deletes = (0..changes.deletes.num_rows()).map(|row| Ok((row_id(&changes.deletes, &key_positions, row)?, None)));
        let deletes = deletes.collect::<Result<Vec<_>, ArrowError>>()?;
        let pending = self.pending.entry(view.name.clone()).or_default();
        // Bson has no Hash; its text form is exact for the key types `row_id` produces.
        for (id, document) in deletes.into_iter().chain(Self::documents(view, &changes.upserts)?) {
            pending.insert(id.to_string(), (id, document));
        }
        Ok(())
    }

    async fn reset(&mut self, view: &ViewInfo, rows: &RecordBatch) -> Result<(), EngineError> {
        self.pending.remove(&view.name);
        let collection = self.options.collection_of(&view.name);
        let documents = Self::documents(view, rows)?;
        let keep: HashSet<String> = documents.iter().map(|(id, _)| id.to_string()).collect();
        let stale = self.ids(&collection).await?.into_iter().filter(|id| !keep.contains(&id.to_string())).map(|id| (id, None));
        self.write_rows(&collection, stale.chain(documents).collect()).await
    }

    async fn flush(&mut self, meta: &CheckpointMeta) -> Result<(), EngineError> {
        for (view, rows) in std::mem::take(&mut self.pending) {
            self.write_rows(&self.options.collection_of(&view), rows.into_values().collect()).await?;
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
        if updates.is_empty() {
            return Ok(());
        }
        self.write(doc! {"update": META_COLLECTION, "updates": updates, "ordered": false, "writeConcern": self.write_concern()}).await
    }
}

/// A view's collection as a DataFusion table: projection and simple comparisons
/// (`column op literal`) are pushed into the MongoDB query.
#[derive(Debug)]
pub struct MongoTable {
    database: Database,
    collection: String,
    schema: SchemaRef,
    constraints: Constraints,
}

impl MongoTable {
    /// The collection `collection` read with the schema and key of `view`.
    pub fn new(database: Database, collection: String, view: &ViewInfo) -> Self {
        let constraints = Constraints::new_unverified(vec![Constraint::PrimaryKey(view.key.clone())]);
        Self { database, collection, schema: view.schema.clone(), constraints }
    }
}

/// The MongoDB filter for `expr`, when it is a comparison of a column with a literal.
fn mongo_filter(expr: &Expr) -> Option<Document> {
    let Expr::BinaryExpr(BinaryExpr { left, op, right }) = expr else { return None };
    let (column, value, op) = match (left.as_ref(), right.as_ref()) {
        (Expr::Column(c), Expr::Literal(v, _)) => (c, v, *op),
        (Expr::Literal(v, _), Expr::Column(c)) => (c, v, op.swap()?),
        _ => return None,
    };
    let operator = match op {
        Operator::Eq => "$eq",
        Operator::NotEq => "$ne",
        Operator::Lt => "$lt",
        Operator::LtEq => "$lte",
        Operator::Gt => "$gt",
        Operator::GtEq => "$gte",
        _ => return None,
    };
    if matches!(value, ScalarValue::Null) || value.is_null() {
        return None;
    }
    let array = value.to_array().ok()?;
    let value = to_bson(array.as_ref(), 0).ok()?;
    Some(doc! {column.name.clone(): {operator: value}})
}

#[async_trait]
impl TableProvider for MongoTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn constraints(&self) -> Option<&Constraints> {
        Some(&self.constraints)
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> datafusion::error::Result<Vec<TableProviderFilterPushDown>> {
        // Inexact: DataFusion re-applies the filter, so BSON and SQL comparison rules never disagree silently.
        Ok(filters
            .iter()
            .map(|f| if mongo_filter(f).is_some() { TableProviderFilterPushDown::Inexact } else { TableProviderFilterPushDown::Unsupported })
            .collect())
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let filter: Document = filters.iter().filter_map(mongo_filter).flatten().collect();
        let fields: Document = match projection {
            Some(columns) => columns.iter().map(|&c| (self.schema.field(c).name().clone(), Bson::Int32(1))).collect(),
            None => Document::new(),
        };
        let external = |e: MongoError| datafusion::error::DataFusionError::External(Box::new(e));
        let collection = self.database.collection::<Document>(&self.collection);
        let mut find = collection.find(filter);
        if !fields.is_empty() {
            find = find.projection(fields);
        }
        let documents: Vec<Document> = find.await.map_err(external)?.try_collect().await.map_err(external)?;
        // Only the projected columns were fetched: build just those, so a non-nullable
        // column left out of the projection is not filled with nulls.
        let schema = match projection {
            Some(columns) => Arc::new(self.schema.project(columns)?),
            None => self.schema.clone(),
        };
        let batch = documents_to_batch(&schema, &documents)?;
        MemTable::try_new(schema, vec![vec![batch]])?.scan(state, None, &[], limit).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::{col, lit};

    #[test]
    fn comparisons_with_literals_are_pushed_down() {
        assert_eq!(mongo_filter(&col("category_id").eq(lit(4i32))), Some(doc! {"category_id": {"$eq": 4}}));
        assert_eq!(mongo_filter(&lit(10.0).lt(col("price"))), Some(doc! {"price": {"$gt": 10.0}}));
        assert_eq!(mongo_filter(&col("a").eq(col("b"))), None);
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact("mongodb://ann:secret@db:27017/x"), "mongodb://ann:***@db:27017/x");
        assert_eq!(redact("mongodb://db:27017"), "mongodb://db:27017");
    }
}
