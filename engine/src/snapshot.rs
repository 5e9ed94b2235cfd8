//! Tables whose rows are taken fresh at every scan: served views and stream windows.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::Constraints;
use datafusion::datasource::{MemTable, TableType};
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;

type Rows = dyn Fn() -> DfResult<Vec<RecordBatch>> + Send + Sync;

/// A table that asks `rows` for its content each time a query scans it.
///
/// ```
/// use std::sync::Arc;
/// use datafusion::arrow::datatypes::Schema;
/// use datafusion::datasource::TableType;
/// use trendflow_engine::snapshot::SnapshotTable;
///
/// let table = SnapshotTable::new(Arc::new(Schema::empty()), TableType::View, None, || Ok(vec![]));
/// ```
pub struct SnapshotTable {
    schema: SchemaRef,
    table_type: TableType,
    constraints: Option<Constraints>,
    rows: Box<Rows>,
}

impl SnapshotTable {
    /// A table of `schema` whose rows come from `rows` at scan time.
    pub fn new(
        schema: SchemaRef,
        table_type: TableType,
        constraints: Option<Constraints>,
        rows: impl Fn() -> DfResult<Vec<RecordBatch>> + Send + Sync + 'static,
    ) -> Self {
        Self { schema, table_type, constraints, rows: Box::new(rows) }
    }
}

impl fmt::Debug for SnapshotTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnapshotTable").field("schema", &self.schema).field("table_type", &self.table_type).finish()
    }
}

#[async_trait]
impl TableProvider for SnapshotTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn constraints(&self) -> Option<&Constraints> {
        self.constraints.as_ref()
    }

    fn table_type(&self) -> TableType {
        self.table_type
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        MemTable::try_new(self.schema.clone(), vec![(self.rows)()?])?.scan(state, projection, filters, limit).await
    }
}
