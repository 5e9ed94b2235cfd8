//! Views that end in `ORDER BY … LIMIT n` over row-local rows of their groups (a
//! top-n), kept incrementally: every group's row stays ranked by the sort key, so a
//! micro-batch re-ranks only the groups it touched, and the rest of the view runs over
//! the first n rows only.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::ArrayRef;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::PhysicalSortExpr;
use datafusion::physical_plan::execution_plan::replace_children_if_necessary;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::ExecutionPlan;

use crate::error::{EngineError, Result};
use crate::slot::{run_with, BatchSlot};

/// A ranked row: its encoded sort key, then the encoded row (which breaks ties).
type Ranked = (Box<[u8]>, Box<[u8]>);

/// Every group's row ranked by a view's ORDER BY, and the plan above its LIMIT.
#[derive(Debug)]
pub(crate) struct TopN {
    n: usize,
    order: Vec<PhysicalSortExpr>,
    schema: SchemaRef,
    sort_encoder: RowConverter,
    row_encoder: RowConverter,
    /// (sort key, row) → how many groups have exactly that row, in rank order.
    ranked: BTreeMap<Ranked, usize>,
    /// What `above` reads in place of the sort: the first `n` ranked rows.
    top: BatchSlot,
    /// The view's plan with its top-n sort replaced by a read of `top`.
    above: Arc<dyn ExecutionPlan>,
}

impl TopN {
    /// Splits `plan` at `sort` (a `SortExec` with a fetch, somewhere in `plan`). Returns
    /// the ranking and the plan below the sort, whose rows it ranks.
    pub(crate) fn split(plan: &Arc<dyn ExecutionPlan>, sort: &Arc<dyn ExecutionPlan>) -> Result<(Self, Arc<dyn ExecutionPlan>)> {
        let exec = sort.downcast_ref::<SortExec>().ok_or_else(|| EngineError::internal("a top-n split at something other than a sort"))?;
        let n = exec.fetch().ok_or_else(|| EngineError::internal("a top-n split at a sort without a limit"))?;
        let below = exec.input().clone();
        let schema = below.schema();
        let order: Vec<PhysicalSortExpr> = exec.expr().iter().cloned().collect();
        let sort_fields = order.iter().map(|e| Ok(SortField::new_with_options(e.expr.data_type(&schema)?, e.options))).collect::<Result<Vec<_>>>()?;
        let row_fields = schema.fields().iter().map(|f| SortField::new(f.data_type().clone())).collect();
        let top = BatchSlot::new(schema.clone());
        let above = replace(plan, sort, &(top.exec(None)? as Arc<dyn ExecutionPlan>))?;
        let ranking = Self {
            n,
            order,
            schema,
            sort_encoder: RowConverter::new(sort_fields)?,
            row_encoder: RowConverter::new(row_fields)?,
            ranked: BTreeMap::new(),
            top,
            above,
        };
        Ok((ranking, below))
    }

    /// The LIMIT.
    pub(crate) fn n(&self) -> usize {
        self.n
    }

    /// Ranks `rows` (rows below the sort, of groups that are new or changed).
    pub(crate) fn insert(&mut self, rows: &RecordBatch) -> Result<()> {
        for entry in self.entries(rows)? {
            *self.ranked.entry(entry).or_default() += 1;
        }
        Ok(())
    }

    /// Unranks `rows` (earlier rows of groups that changed).
    pub(crate) fn remove(&mut self, rows: &RecordBatch) -> Result<()> {
        for entry in self.entries(rows)? {
            let count = self.ranked.get_mut(&entry).ok_or_else(|| EngineError::internal("a top-n row left that was never ranked"))?;
            *count -= 1;
            if *count == 0 {
                self.ranked.remove(&entry);
            }
        }
        Ok(())
    }

    /// Forgets every ranked row.
    pub(crate) fn clear(&mut self) {
        self.ranked.clear();
    }

    /// The view's rows: the plan above the sort over the first `n` ranked rows.
    pub(crate) async fn evaluate(&self, ctx: &Arc<TaskContext>) -> Result<RecordBatch> {
        let parser = self.row_encoder.parser();
        let first = self.ranked.iter().flat_map(|((_, row), &count)| std::iter::repeat_n(row, count)).take(self.n);
        let columns = self.row_encoder.convert_rows(first.map(|row| parser.parse(row)))?;
        run_with(&self.top, vec![RecordBatch::try_new(self.schema.clone(), columns)?], &self.above, ctx).await
    }

    fn entries(&self, rows: &RecordBatch) -> Result<Vec<Ranked>> {
        let keys: Vec<ArrayRef> =
            self.order.iter().map(|e| e.expr.evaluate(rows)?.into_array(rows.num_rows())).collect::<datafusion::error::Result<_>>()?;
        let keys = self.sort_encoder.convert_columns(&keys)?;
        let values = self.row_encoder.convert_columns(rows.columns())?;
        Ok((0..rows.num_rows()).map(|i| (keys.row(i).data().into(), values.row(i).data().into())).collect())
    }
}

/// `plan` with the node `target` replaced by `with`.
fn replace(plan: &Arc<dyn ExecutionPlan>, target: &Arc<dyn ExecutionPlan>, with: &Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    if Arc::ptr_eq(plan, target) {
        return Ok(with.clone());
    }
    let children = plan.children().into_iter().map(|c| replace(c, target, with)).collect::<Result<Vec<_>>>()?;
    Ok(replace_children_if_necessary(plan.clone(), children)?)
}
