//! Batch runs: every view computed once with plain DataFusion over whole inputs,
//! with the same SQL as the streaming run (`trendflow batch`, a backfill; and the
//! answer a streaming run must reach over the same records).
//!
//! The engine does not read inputs: the connectors read each stream's micro-batches
//! (`Bindings::read_streams`), [`BatchStream::new`] applies what a streaming run
//! would (the watermark's lateness rule, a changelog's final table), and
//! [`compute_views`] runs the views over the results.

use std::sync::Arc;

use datafusion::arrow::array::BooleanArray;
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::TableProvider;
use datafusion::datasource::MemTable;
use datafusion::execution::SessionStateBuilder;
use datafusion::prelude::{DataFrame, SessionContext};

use crate::catalog::{Catalog, ViewDef};
use crate::changelog::final_table;
use crate::contract::{StreamDecl, ViewInfo};
use crate::error::EngineError;
use crate::event_time::Watermark;
use crate::runtime::LateRecords;
use crate::session::incremental_session_config;
use crate::sql_file::Emit;
use crate::subquery::inline_reference_subqueries;
use crate::view::IncrementalView;
use crate::window::{closed_rows, retained_rows, window_end_column, WindowSpec};
use crate::Result;

/// A stream's whole input as a batch run reads it.
#[derive(Debug, Clone)]
pub struct BatchStream {
    /// The stream's name.
    pub name: String,
    /// Its full schema (declared and metadata columns), that of every batch below.
    pub schema: SchemaRef,
    /// What its views read: the on-time records of an append stream, the final table of
    /// a changelog stream. Batches as read, not concatenated: a copy of every record
    /// would cost more than the views over them.
    pub table: Vec<RecordBatch>,
    /// What windows read: the on-time records (of a changelog stream: inserts and updates).
    pub events: Vec<RecordBatch>,
    /// The watermark after the last record (`None`: no record had an event time).
    pub watermark: Option<i64>,
    /// The records a streaming run would dead-letter as late (append streams), or only
    /// count (changelog streams, whose table they still change).
    pub late: LateRecords,
}

impl BatchStream {
    /// Reads `micro_batches` of `stream` (records in source order, with their delete
    /// marks) as a streaming run would: record by record, through the watermark.
    pub fn new(stream: &StreamDecl, micro_batches: impl IntoIterator<Item = (RecordBatch, Option<BooleanArray>)>) -> Result<Self> {
        let keyed = stream.options.changelog.is_keyed();
        let mut watermark = Watermark::new(stream.event_time.clone());
        let (mut rows, mut events, mut late, mut reasons) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (batch, deleted) in micro_batches {
            let timed = watermark.split(keyed, &batch, deleted.as_ref())?;
            rows.push((timed.rows, deleted));
            events.push(timed.events);
            late.push(timed.late);
            reasons.extend(timed.reasons);
        }
        let table = if keyed { final_table(stream, rows.iter().map(|(b, d)| (b, d.as_ref())))? } else { rows.into_iter().map(|(b, _)| b).collect() };
        Ok(Self {
            name: stream.name.clone(),
            schema: stream.schema.clone(),
            table,
            events,
            watermark: watermark.current(),
            late: LateRecords { stream: stream.name.clone(), rows: concat_batches(&stream.schema, &late)?, reasons },
        })
    }

    /// A stream whose records are all on time, without deletes: `rows` as they are.
    pub fn of_rows(stream: &StreamDecl, rows: RecordBatch) -> Result<Self> {
        Self::new(stream, [(rows, None)])
    }
}

/// A view's rows as a batch run computes them.
#[derive(Debug, Clone)]
pub struct ViewResult {
    /// The view's name, schema and key.
    pub info: ViewInfo,
    /// Every row the view's query returns, in one batch. A key can occur more than once
    /// (a view over a stream keyed by its `PRIMARY KEY` sees every record); applied as
    /// upserts, the last row of a key stays, as in a streaming run.
    pub rows: RecordBatch,
}

/// Computes every view of `catalog`, in declaration order, over `streams` (every
/// declared stream's whole input). A view that emits on window close gives the windows
/// the last watermark closed, as a streaming run over the same records has emitted.
///
/// Load the catalog with [`batch_session_config`](crate::session::batch_session_config):
/// the incremental configuration plans every query on one partition, which a batch run
/// has no need for. `catalog` keeps the given tables as its streams.
///
/// ```
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::collections::HashMap;
/// use datafusion::arrow::json::ReaderBuilder;
/// use trendflow_engine::batch::{compute_views, BatchStream};
/// use trendflow_engine::catalog::Catalog;
/// use trendflow_engine::session::batch_session_config;
///
/// let dir = tempfile::tempdir()?;
/// std::fs::write(
///     dir.path().join("clicks.sql"),
///     "CREATE EXTERNAL TABLE clicks (user_id VARCHAR NOT NULL) STORED AS KAFKA LOCATION 'clicks';
///      CREATE VIEW clicks_per_user AS SELECT user_id, COUNT(*) AS clicks FROM clicks GROUP BY user_id;",
/// )?;
/// let catalog = Catalog::load(&[dir.path().into()], batch_session_config(), &HashMap::new()).await?;
///
/// // The whole input of `clicks`: its declared column and the metadata columns of a stream.
/// let stream = &catalog.streams()[0];
/// let records = r#"{"user_id": "ann", "_partition": 0, "_offset": 0, "_timestamp": 0}
///                  {"user_id": "bob", "_partition": 0, "_offset": 1, "_timestamp": 0}
///                  {"user_id": "ann", "_partition": 0, "_offset": 2, "_timestamp": 0}"#;
/// let mut reader = ReaderBuilder::new(stream.schema.clone()).build(records.as_bytes())?;
/// let clicks = BatchStream::of_rows(stream, reader.next().unwrap()?)?;
///
/// let views = compute_views(&catalog, vec![clicks]).await?;
/// assert_eq!(views[0].info.name, "clicks_per_user");
/// assert_eq!(views[0].rows.num_rows(), 2);
/// # Ok(())
/// # }
/// ```
pub async fn compute_views(catalog: &Catalog, streams: Vec<BatchStream>) -> Result<Vec<ViewResult>> {
    refuse_unmaintainable(catalog).await?;
    // One partition, in record order: a view whose rows repeat a key (over a stream
    // keyed by its PRIMARY KEY) keeps the last, as a streaming run does.
    let table = |stream: &BatchStream, rows: &[RecordBatch]| -> Result<Arc<dyn TableProvider>> {
        Ok(Arc::new(MemTable::try_new(stream.schema.clone(), vec![rows.to_vec()])?))
    };
    let tables = streams.iter().map(|s| Ok((s.name.clone(), table(s, &s.table)?))).collect::<Result<Vec<_>>>()?;
    let events = streams.iter().map(|s| Ok((s.name.clone(), table(s, &s.events)?))).collect::<Result<Vec<_>>>()?;
    catalog.replace_streams(tables, events).await?;
    let mut results = Vec::new();
    let ctx = catalog.session();
    // `view_infos` lists the views in declaration order, as `views` does.
    for (info, def) in catalog.view_infos().await?.into_iter().zip(catalog.views()) {
        let plan = ctx.table(info.name.as_str()).await?.into_unoptimized_plan();
        let sql_error = |message: String| EngineError::Sql { file: def.origin.file.clone(), line: def.origin.line, message };
        // As the streaming run plans it: DataFusion 55 drops every row of
        // `WHERE x = COALESCE((SELECT … no row …), 1)` when it plans the subquery itself.
        let plan = inline_reference_subqueries(ctx, &plan, catalog.streams()).await.map_err(sql_error)?;
        let batches = DataFrame::new(ctx.state(), plan).collect().await?;
        let mut rows = concat_batches(&info.schema, &batches)?;
        if def.emit == Emit::OnWindowClose {
            rows = closed_windows(def, &rows, &streams).map_err(sql_error)?;
        }
        rows = retained_windows(def, &rows, &streams).map_err(sql_error)?;
        results.push(ViewResult { info, rows });
    }
    Ok(results)
}

/// Refuses, as a streaming run would and with its message, every view of `catalog` that
/// cannot be maintained incrementally: a batch run is the answer a streaming run must
/// reach, so both accept the same views. Each view is compiled in a session of the
/// incremental configuration over the catalog's own tables (a batch session plans other
/// operators).
async fn refuse_unmaintainable(catalog: &Catalog) -> Result<()> {
    // The catalog list is shared: a config that creates the default catalog would
    // replace the one holding the views.
    let config = incremental_session_config().with_create_default_catalog_and_schema(false);
    let state = SessionStateBuilder::new_from_existing(catalog.session().state()).with_config(config).build();
    let streaming = SessionContext::new_with_state(state);
    for def in catalog.views() {
        IncrementalView::compile(&streaming, def, catalog.streams()).await?;
    }
    Ok(())
}

/// The rows of `rows` (of `def`, which emits on window close) whose windows the last
/// watermark of their stream closed.
fn closed_windows(def: &ViewDef, rows: &RecordBatch, streams: &[BatchStream]) -> std::result::Result<RecordBatch, String> {
    let [window] = def.windows.as_slice() else { return Err("EMIT ON WINDOW CLOSE needs one TUMBLE(…) or HOP(…)".into()) };
    let (column, offset, watermark) =
        window_end(window, rows, streams).ok_or("a view that emits on window close outputs window_start or window_end")?;
    closed_rows(rows, column, offset, watermark).map_err(|e| e.to_string())
}

/// The rows of `rows` (of `def`) that the retention of its window keeps at the last
/// watermark of its stream: all of them when the window has none.
fn retained_windows(def: &ViewDef, rows: &RecordBatch, streams: &[BatchStream]) -> std::result::Result<RecordBatch, String> {
    let Some((window, retention_ms)) = def.windows.iter().find_map(|w| w.retention_ms.map(|r| (w, r))) else { return Ok(rows.clone()) };
    let (column, offset, watermark) =
        window_end(window, rows, streams).ok_or("a window's retention needs window_start or window_end among the view's columns")?;
    retained_rows(rows, column, offset, retention_ms, watermark).map_err(|e| e.to_string())
}

/// Where `window`'s end is among the columns of `rows` (see [`window_end_column`]), and
/// the last watermark of its stream.
fn window_end(window: &WindowSpec, rows: &RecordBatch, streams: &[BatchStream]) -> Option<(usize, i64, Option<i64>)> {
    let watermark = streams.iter().find(|s| s.name == window.stream).and_then(|s| s.watermark);
    let schema = rows.schema();
    let (column, offset) = window_end_column(schema.fields().iter().map(|f| f.name().as_str()), window.size_ms)?;
    Some((column, offset, watermark))
}
