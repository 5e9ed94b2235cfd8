//! The catalog clients see: views with their current rows and reference tables,
//! in the schemas `views` and `reference` of the catalog `trendflow`.

use std::sync::Arc;

use datafusion::catalog::{MemorySchemaProvider, SchemaProvider, TableProvider};
use datafusion::prelude::{SessionConfig, SessionContext};

use crate::catalog::Catalog;
use crate::contract::ViewInfo;
use crate::session::batch_session_config;

/// Catalog name clients see.
pub const CATALOG: &str = "trendflow";
/// Schema of the views (the default schema: `SELECT * FROM price_levels` works).
pub const VIEWS_SCHEMA: &str = "views";
/// Schema of the reference tables (`SELECT * FROM reference.categories`).
pub const REFERENCE_SCHEMA: &str = "reference";
/// Schema of the streams' recent rows (`SELECT * FROM streams.products`), while a job runs.
pub const STREAMS_SCHEMA: &str = "streams";

/// What a serving session shows of the streams.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Streams {
    /// Their recent rows (in the process that runs the job).
    Recent,
    /// Nothing (the job runs elsewhere).
    Hidden,
}

/// A session for queries over `views` (rows from `view_table`), the reference
/// tables of `catalog` and, with [`Streams::Recent`], the streams' latest rows.
pub async fn serving_context(
    catalog: &Catalog,
    views: &[ViewInfo],
    streams: Streams,
    view_table: impl Fn(&ViewInfo) -> Arc<dyn TableProvider>,
) -> crate::Result<SessionContext> {
    let config: SessionConfig = batch_session_config().with_default_catalog_and_schema(CATALOG, VIEWS_SCHEMA);
    let ctx = SessionContext::new_with_config(config);
    let trendflow = ctx.catalog(CATALOG).expect("the default catalog exists");
    let view_schema = Arc::new(MemorySchemaProvider::new());
    for info in views {
        view_schema.register_table(info.name.clone(), view_table(info))?;
    }
    let references = Arc::new(MemorySchemaProvider::new());
    for reference in catalog.references() {
        let table = catalog.session().table_provider(reference.name.as_str()).await?;
        references.register_table(reference.name.clone(), table)?;
    }
    if streams == Streams::Recent {
        let stream_schema = Arc::new(MemorySchemaProvider::new());
        for stream in catalog.streams() {
            stream_schema.register_table(stream.name.clone(), Arc::new(stream.recent.table()))?;
        }
        trendflow.register_schema(STREAMS_SCHEMA, stream_schema)?;
    }
    trendflow.register_schema(VIEWS_SCHEMA, view_schema)?;
    trendflow.register_schema(REFERENCE_SCHEMA, references)?;
    Ok(ctx)
}
