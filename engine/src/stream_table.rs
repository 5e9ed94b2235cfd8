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
use datafusion::common::{Constraint, DFSchema};
use datafusion::datasource::TableType;
use datafusion::error::Result as DfResult;
use datafusion::execution::SessionState;
use datafusion::logical_expr::{CreateExternalTable, Expr, ExprSchemable};
use datafusion::physical_plan::ExecutionPlan;

use crate::event_time::{can_be_event_time, EventTime};
use crate::recent::RecentRows;
use crate::slot::BatchSlot;
use crate::stream_options::StreamOptions;
use crate::window::WindowSpec;

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
    /// Holds the micro-batch being processed (on a changelog stream: its rows as changes
    /// to the stream's table).
    pub slot: BatchSlot,
    /// Holds the micro-batch's on-time records as events, what windows (`TUMBLE`, `HOP`)
    /// read: on an append stream the same slot as `slot`; on a changelog stream its
    /// inserts and updates (deletes carry no event).
    pub events: BatchSlot,
    /// When its records happened (see [`crate::event_time`]).
    pub event_time: EventTime,
    /// The latest rows, for serving (`OPTIONS ('recent_rows' 'N')`).
    pub recent: RecentRows,
}

/// The streams declared so far, shared between the factory, the window functions and
/// the catalog.
#[derive(Debug, Default, Clone)]
pub struct StreamRegistry {
    streams: Arc<Mutex<Vec<StreamDecl>>>,
    /// Stream → the table its events are read from instead of its `events` slot (a batch
    /// run's whole input).
    events: Arc<Mutex<HashMap<String, Arc<dyn TableProvider>>>>,
    /// The windows (`TUMBLE`, `HOP`) planned since the last [`Self::take_windows`].
    windows: Arc<Mutex<Vec<WindowSpec>>>,
}

impl StreamRegistry {
    /// All declared streams, in declaration order.
    pub fn streams(&self) -> Vec<StreamDecl> {
        self.streams.lock().expect("stream registry lock poisoned").clone()
    }

    /// The stream declared as `name`.
    pub fn stream(&self, name: &str) -> Option<StreamDecl> {
        self.streams.lock().expect("stream registry lock poisoned").iter().find(|s| s.name == name).cloned()
    }

    /// Makes windows over `stream` read its events from `table` (a batch run).
    pub fn replace_events(&self, stream: &str, table: Arc<dyn TableProvider>) {
        self.events.lock().expect("stream registry lock poisoned").insert(stream.to_string(), table);
    }

    /// The table that replaces `stream`'s events, if any.
    pub fn replaced_events(&self, stream: &str) -> Option<Arc<dyn TableProvider>> {
        self.events.lock().expect("stream registry lock poisoned").get(stream).cloned()
    }

    /// Records a window a query plans.
    pub(crate) fn add_window(&self, window: WindowSpec) {
        self.windows.lock().expect("stream registry lock poisoned").push(window);
    }

    /// The windows planned since the last call.
    pub(crate) fn take_windows(&self) -> Vec<WindowSpec> {
        std::mem::take(&mut *self.windows.lock().expect("stream registry lock poisoned"))
    }

    fn add(&self, decl: StreamDecl) {
        let mut streams = self.streams.lock().expect("stream registry lock poisoned");
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
    async fn create(&self, state: &dyn Session, cmd: &CreateExternalTable) -> DfResult<Arc<dyn TableProvider>> {
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
        let event_time = event_time(state, cmd.name.table(), &schema, &options)?;
        let slot = BatchSlot::new(schema.clone());
        let events = if options.changelog.is_keyed() { BatchSlot::new(schema.clone()) } else { slot.clone() };
        let decl = StreamDecl {
            recent: RecentRows::new(schema.clone(), options.recent_rows),
            name: cmd.name.table().to_string(),
            location: cmd.locations.first().cloned().unwrap_or_default(),
            options,
            payload_schema,
            slot,
            events,
            event_time,
            schema,
            primary_key,
        };
        self.registry.add(decl.clone());
        Ok(Arc::new(StreamTable { decl }))
    }
}

/// Compiles a stream's declared event time (`_timestamp` unless it declares one).
fn event_time(state: &dyn Session, stream: &str, schema: &SchemaRef, options: &StreamOptions) -> DfResult<EventTime> {
    let declared = &options.event_time;
    let quoted = |column: &str| format!("\"{}\"", column.replace('"', "\"\""));
    let text = declared.expression.clone().unwrap_or_else(|| TIMESTAMP_COLUMN.to_string());
    let is_column = schema.column_with_name(&text).is_some();
    let sql = match (&declared.format, is_column) {
        (Some(format), true) => format!("to_timestamp_millis({}, '{}')", quoted(&text), format.replace('\'', "''")),
        (Some(_), false) => {
            return datafusion::common::plan_err!("stream `{stream}`: 'event_time_format' reads a column, and `{text}` is not one of its columns")
        }
        (None, true) => quoted(&text),
        (None, false) => text.clone(),
    };
    let event_time_error = |e: &dyn std::fmt::Display| {
        datafusion::error::DataFusionError::Plan(format!(
            "stream `{stream}`: event_time `{text}`: {e}; name a TIMESTAMP column, a VARCHAR column with 'event_time_format', or an SQL expression over the columns"
        ))
    };
    let df_schema = DFSchema::try_from(schema.as_ref().clone())?;
    let session = state.as_any().downcast_ref::<SessionState>().ok_or_else(|| event_time_error(&"not a DataFusion session"))?;
    let expr = session.create_logical_expr(&sql, &df_schema).map_err(|e| event_time_error(&e))?;
    let data_type = expr.get_type(&df_schema).map_err(|e| event_time_error(&e))?;
    if !can_be_event_time(&data_type) {
        return Err(event_time_error(&format!("it is {data_type}, not a time")));
    }
    EventTime::new(text.clone(), expr, &df_schema, declared.watermark_delay, declared.idle_timeout, state).map_err(|e| event_time_error(&e))
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
