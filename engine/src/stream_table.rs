//! Stream tables: `CREATE EXTERNAL TABLE … STORED AS KAFKA` declares a stream.
//!
//! The engine does not know how records arrive; it only knows a stream's
//! declared schema and serves, while a micro-batch is processed, that batch as
//! the stream's content. Connectors bind each declaration to a real source.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::{Session, TableProvider, TableProviderFactory};
use datafusion::common::Constraint;
use datafusion::datasource::TableType;
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::{CreateExternalTable, Expr};
use datafusion::physical_plan::ExecutionPlan;

use crate::recent::RecentRows;
use crate::slot::BatchSlot;
use crate::stream_options::StreamOptions;

/// The `STORED AS` name that declares a stream.
pub const STREAM_FILE_TYPE: &str = "KAFKA";
/// Metadata column: the record's key, as text.
pub const KEY_COLUMN: &str = "_key";
/// Metadata column: the partition the record came from.
pub const PARTITION_COLUMN: &str = "_partition";
/// Metadata column: the record's offset within its partition.
pub const OFFSET_COLUMN: &str = "_offset";
/// Metadata column: the record's arrival time (Kafka timestamp, or read time for files).
pub use trendflow_formats::TIMESTAMP_COLUMN;

/// The metadata columns every stream has after its declared columns.
pub fn metadata_fields() -> Vec<Field> {
    vec![
        Field::new(KEY_COLUMN, DataType::Utf8, true),
        Field::new(PARTITION_COLUMN, DataType::Int32, false),
        Field::new(OFFSET_COLUMN, DataType::Int64, false),
        Field::new(TIMESTAMP_COLUMN, timestamp_type(), false),
    ]
}

/// The Arrow type of [`TIMESTAMP_COLUMN`]: milliseconds since the epoch, UTC.
pub fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
}

/// What a `CREATE EXTERNAL TABLE … STORED AS KAFKA` statement declared.
#[derive(Debug, Clone)]
pub struct StreamDecl {
    /// Table name.
    pub name: String,
    /// `LOCATION`: the topic.
    pub location: String,
    /// `OPTIONS`, parsed.
    pub options: StreamOptions,
    /// The declared columns only: what a record carries.
    pub payload_schema: SchemaRef,
    /// Declared columns followed by [`metadata_fields`]: what a micro-batch carries.
    pub schema: SchemaRef,
    /// `PRIMARY KEY` columns, as indices into both schemas.
    pub primary_key: Vec<usize>,
    /// Holds the micro-batch being processed.
    pub slot: BatchSlot,
    /// The latest rows, for serving (`OPTIONS ('recent_rows' 'N')`).
    pub recent: RecentRows,
}

/// The streams declared so far, shared between the factory and the catalog.
#[derive(Debug, Default, Clone)]
pub struct StreamRegistry(Arc<Mutex<Vec<StreamDecl>>>);

impl StreamRegistry {
    /// All declared streams, in declaration order.
    pub fn streams(&self) -> Vec<StreamDecl> {
        self.0.lock().expect("stream registry lock poisoned").clone()
    }

    fn add(&self, decl: StreamDecl) {
        let mut streams = self.0.lock().expect("stream registry lock poisoned");
        streams.retain(|s| s.name != decl.name);
        streams.push(decl);
    }
}

/// Creates [`StreamTable`]s for `STORED AS KAFKA`; register it with the session state's
/// table factories under [`STREAM_FILE_TYPE`].
#[derive(Debug, Default)]
pub struct StreamTableFactory {
    registry: StreamRegistry,
}

impl StreamTableFactory {
    /// A factory recording its declarations into `registry`.
    pub fn new(registry: StreamRegistry) -> Self {
        Self { registry }
    }
}

/// The OPTIONS of a stream under the names written in SQL. DataFusion files every
/// key without a dot under `format.` (`'format' 'csv'` arrives as `format.format`),
/// so that prefix is taken off again; keys are lower case.
fn stream_options(cmd: &CreateExternalTable) -> HashMap<String, String> {
    cmd.options
        .iter()
        .map(|(key, value)| {
            let key = key.to_lowercase();
            (key.strip_prefix("format.").map(str::to_string).unwrap_or(key), value.clone())
        })
        .collect()
}

#[async_trait]
impl TableProviderFactory for StreamTableFactory {
    async fn create(&self, _state: &dyn Session, cmd: &CreateExternalTable) -> DfResult<Arc<dyn TableProvider>> {
        let payload_schema: SchemaRef = Arc::new(cmd.schema.as_arrow().clone());
        if payload_schema.fields().is_empty() {
            return datafusion::common::plan_err!(
                "stream `{}` declares no columns: list them, e.g. CREATE EXTERNAL TABLE {} (asin VARCHAR NOT NULL, ...)",
                cmd.name,
                cmd.name
            );
        }
        let primary_key: Vec<usize> = cmd
            .constraints
            .iter()
            .find_map(|c| match c {
                Constraint::PrimaryKey(columns) => Some(columns.clone()),
                Constraint::Unique(_) => None,
            })
            .unwrap_or_default();
        let options = StreamOptions::parse(&stream_options(cmd))
            .map_err(|message| datafusion::error::DataFusionError::Plan(format!("stream `{}`: {message}", cmd.name.table())))?;
        // A changelog stream's deletes carry only their key: its other columns take nulls.
        let rows_schema = if options.changelog.is_keyed() {
            if primary_key.is_empty() {
                return datafusion::common::plan_err!(
                    "stream `{}` is a changelog ('{}') but declares no PRIMARY KEY: its records replace and delete rows by key, \
                     e.g. CREATE EXTERNAL TABLE {} (asin VARCHAR NOT NULL, ..., PRIMARY KEY (asin))",
                    cmd.name.table(),
                    options.changelog.name(),
                    cmd.name.table()
                );
            }
            trendflow_formats::changes_schema(&payload_schema, &primary_key)
        } else {
            payload_schema.clone()
        };
        let mut fields: Vec<Field> = rows_schema.fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.extend(metadata_fields());
        let schema = Arc::new(Schema::new(fields));
        let decl = StreamDecl {
            recent: RecentRows::new(schema.clone(), options.recent_rows),
            name: cmd.name.table().to_string(),
            location: cmd.locations.first().cloned().unwrap_or_default(),
            options,
            payload_schema,
            slot: BatchSlot::new(schema.clone()),
            schema,
            primary_key,
        };
        self.registry.add(decl.clone());
        Ok(Arc::new(StreamTable { decl }))
    }
}

/// A stream as a DataFusion table: its content is the current micro-batch. It gives
/// DataFusion no constraints: an append stream repeats its declared PRIMARY KEY (see
/// [`crate::key`]).
#[derive(Debug)]
pub struct StreamTable {
    decl: StreamDecl,
}

#[async_trait]
impl TableProvider for StreamTable {
    fn schema(&self) -> SchemaRef {
        self.decl.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        Ok(self.decl.slot.exec(projection.cloned())?)
    }
}
