//! Batch runs: every view computed once with plain DataFusion over whole inputs,
//! with the same SQL as the streaming run (`trendflow batch`, a backfill; and the
//! answer a streaming run must reach over the same records).
//!
//! The engine does not read inputs: the connectors read each stream's whole
//! input into a table (`Bindings::read_streams`), and [`compute_views`] runs the
//! views over those tables.

use std::sync::Arc;

use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::TableProvider;
use datafusion::prelude::DataFrame;

use crate::catalog::Catalog;
use crate::contract::ViewInfo;
use crate::error::EngineError;
use crate::subquery::inline_reference_subqueries;
use crate::Result;

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

/// Computes every view of `catalog`, in declaration order, over `streams`: each declared
/// stream (by name) with its whole input as a table.
///
/// Load the catalog with [`batch_session_config`](crate::session::batch_session_config):
/// the incremental configuration plans every query on one partition, which a batch run
/// has no need for. `catalog` keeps the given tables as its streams.
///
/// ```
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::{collections::HashMap, sync::Arc};
/// use datafusion::arrow::json::ReaderBuilder;
/// use datafusion::datasource::MemTable;
/// use trendflow_engine::batch::compute_views;
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
/// let schema = catalog.streams()[0].schema.clone();
/// let records = r#"{"user_id": "ann", "_partition": 0, "_offset": 0, "_timestamp": 0}
///                  {"user_id": "bob", "_partition": 0, "_offset": 1, "_timestamp": 0}
///                  {"user_id": "ann", "_partition": 0, "_offset": 2, "_timestamp": 0}"#;
/// let batches = ReaderBuilder::new(schema.clone()).build(records.as_bytes())?.collect::<Result<Vec<_>, _>>()?;
/// let clicks = Arc::new(MemTable::try_new(schema, vec![batches])?);
///
/// let views = compute_views(&catalog, vec![("clicks".to_string(), clicks)]).await?;
/// assert_eq!(views[0].info.name, "clicks_per_user");
/// assert_eq!(views[0].rows.num_rows(), 2);
/// # Ok(())
/// # }
/// ```
pub async fn compute_views(catalog: &Catalog, streams: Vec<(String, Arc<dyn TableProvider>)>) -> Result<Vec<ViewResult>> {
    catalog.replace_streams(streams).await?;
    let mut results = Vec::new();
    let ctx = catalog.session();
    // `view_infos` lists the views in declaration order, as `views` does.
    for (info, def) in catalog.view_infos().await?.into_iter().zip(catalog.views()) {
        let plan = ctx.table(info.name.as_str()).await?.into_unoptimized_plan();
        // As the streaming run plans it: DataFusion 55 drops every row of
        // `WHERE x = COALESCE((SELECT … no row …), 1)` when it plans the subquery itself.
        let plan = inline_reference_subqueries(ctx, &plan, catalog.streams()).await.map_err(|message| EngineError::Sql {
            file: def.origin.file.clone(),
            line: def.origin.line,
            message,
        })?;
        let batches = DataFrame::new(ctx.state(), plan).collect().await?;
        let rows = concat_batches(&info.schema, &batches)?;
        results.push(ViewResult { info, rows });
    }
    Ok(results)
}
