//! One aggregate over a stream, maintained incrementally with DataFusion's own
//! operators: `Partial` over each micro-batch, `PartialReduce` to merge the new
//! partial states into the stored ones, `Final` for the groups the batch touched.

use std::collections::HashSet;
use std::sync::Arc;

use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::udaf::AggregateFunctionExpr;
use datafusion::physical_plan::ExecutionPlan;

use crate::changelog::{ChangelogTable, TableDelta};
use crate::error::{EngineError, Result};
use crate::keyed::{filter_by_keys, project_columns, KeyedTable, RowEncoder};
use crate::retraction::{self, Retraction, Subtracted};
use crate::slot::{run_plan, run_with, BatchSlot};

/// The expression that merges the partial states of `expr`. The planner may reverse an
/// ordered aggregate to reuse the sort another one needs (`array_agg(x ORDER BY y)` as a
/// reversed `array_agg(x ORDER BY y DESC)`), and a reversed `array_agg` states its values
/// in the order asked for, so only the unreversed one merges them in order; so does
/// `string_agg`, built on it. (First and last values reverse into each other, and a
/// reversed `nth_value` counts from the other end: both state in their own order, kept.)
fn merging_expr(expr: &Arc<AggregateFunctionExpr>) -> Arc<AggregateFunctionExpr> {
    let states_as_asked = matches!(expr.fun().name(), "array_agg" | "string_agg");
    match expr.reverse_expr() {
        Some(unreversed) if expr.is_reversed() && states_as_asked => Arc::new(unreversed),
        _ => expr.clone(),
    }
}

/// State and plans of one incrementally maintained `AggregateExec`.
#[derive(Debug)]
pub struct IncrementalAggregate {
    group_columns: usize,
    partial: Arc<dyn ExecutionPlan>,
    reduce: Arc<dyn ExecutionPlan>,
    reduce_input: BatchSlot,
    finalize: Arc<dyn ExecutionPlan>,
    finalize_input: BatchSlot,
    /// Group key → partial aggregate state (schema of `Partial`'s output).
    state: KeyedTable,
    /// Group key → partial state, for the groups changed since the last checkpoint.
    changed: KeyedTable,
    /// Group key → final aggregate values (schema of the original aggregate).
    finals: KeyedTable,
    /// What the rest of the view's plan reads in place of the original aggregate.
    finals_slot: BatchSlot,
    /// Whether groups were removed since the last checkpoint (a delta cannot say so).
    removed_groups: bool,
    /// How rows retracted by a changelog stream leave the state, when every aggregate
    /// allows it (else the touched groups are recomputed).
    retraction: Option<Retraction>,
    /// Whether groups are finalized only when their window closes (see [`Self::close_by`]).
    finals_on_close: bool,
}

impl IncrementalAggregate {
    /// Splits `aggregate` (mode `Single`, or the `Partial` half of a two-stage pair) into the
    /// incremental stages. `output_schema` is the schema the view's plan expects from it.
    /// With `retracting` (its input is a changelog stream's changes) the state also keeps
    /// what lets retracted rows leave it, where every aggregate allows that.
    pub fn try_new(aggregate: &AggregateExec, output_schema: SchemaRef, retracting: bool) -> Result<Self> {
        let group_by = aggregate.group_expr();
        let input_schema = aggregate.input_schema();
        let layout = if retracting { retraction::layout(aggregate)? } else { None };
        let (exprs, filters) = match &layout {
            Some(layout) => layout.aggregates.clone(),
            None => (aggregate.aggr_expr().to_vec(), aggregate.filter_expr().to_vec()),
        };
        let partial_over = |input: Arc<dyn ExecutionPlan>| -> Result<Arc<dyn ExecutionPlan>> {
            Ok(Arc::new(AggregateExec::try_new(
                AggregateMode::Partial,
                group_by.clone(),
                exprs.clone(),
                filters.clone(),
                input,
                input_schema.clone(),
            )?))
        };
        let partial = partial_over(aggregate.input().clone())?;
        let retraction = match layout {
            Some(layout) => Some(Retraction::try_new(aggregate, layout, partial_over)?),
            None => None,
        };
        let state_schema = partial.schema();
        let merging: Vec<_> = exprs.iter().map(merging_expr).collect();
        let stage = |mode, input: &BatchSlot| -> Result<Arc<dyn ExecutionPlan>> {
            Ok(Arc::new(AggregateExec::try_new(
                mode,
                group_by.as_final(),
                merging.clone(),
                filters.clone(),
                input.exec(None)?,
                input_schema.clone(),
            )?))
        };
        let reduce_input = BatchSlot::new(state_schema.clone());
        let finalize_input = BatchSlot::new(state_schema.clone());
        let reduce = stage(AggregateMode::PartialReduce, &reduce_input)?;
        let finalize = stage(AggregateMode::Final, &finalize_input)?;
        let group_columns = group_by.expr().len();
        let keys: Vec<usize> = (0..group_columns).collect();
        Ok(Self {
            group_columns,
            partial,
            reduce,
            reduce_input,
            finalize,
            finalize_input,
            state: KeyedTable::new(state_schema.clone(), keys.clone())?,
            changed: KeyedTable::new(state_schema, keys.clone())?,
            finals: KeyedTable::new(output_schema.clone(), keys)?,
            finals_slot: BatchSlot::new(output_schema),
            removed_groups: false,
            retraction,
            finals_on_close: false,
        })
    }

    /// Makes the groups windows that close (see [`Self::close`]) once the watermark is at
    /// or past group column `column` plus `offset_ms` (the window's end). With
    /// `finals_on_close` (a view that emits on window close) a group is finalized only
    /// then, once, not after each micro-batch that touches it: [`Self::apply`] returns
    /// no final rows for it. Windowed aggregates read append streams (a changelog
    /// stream's events), so only [`Self::apply`] updates them.
    pub fn close_by(&mut self, column: usize, offset_ms: i64, finals_on_close: bool) {
        for table in [&mut self.state, &mut self.changed, &mut self.finals] {
            table.expire_by(column, offset_ms);
        }
        self.finals_on_close = finals_on_close;
    }

    /// Whether the aggregate's input reads one of `slots`.
    pub fn reads(&self, slots: &[BatchSlot]) -> bool {
        crate::slot::reads_any(&self.partial, slots)
    }

    /// The slot the view's remaining plan reads the finalized groups from.
    pub fn finals_slot(&self) -> &BatchSlot {
        &self.finals_slot
    }

    /// Folds the current micro-batch (already in the stream slots) into the state.
    /// Returns the groups it touched, or `None` when it touched none.
    pub async fn apply(&mut self, ctx: &Arc<TaskContext>) -> Result<Option<TouchedGroups>> {
        let partial = run_plan(&self.partial, ctx).await?;
        if partial.num_rows() == 0 {
            return Ok(None);
        }
        let keys = project_columns(&partial, &(0..self.group_columns).collect::<Vec<_>>())?;
        let stored = self.state.lookup(&keys)?;
        let merged = self.reduce(vec![stored, partial], ctx).await?;
        self.state.upsert(&merged)?;
        self.changed.upsert(&merged)?;
        if self.finals_on_close {
            let none = RecordBatch::new_empty(self.finals.schema().clone());
            return Ok(Some(TouchedGroups { before: none.clone(), after: none }));
        }
        let before = self.finals.lookup(&keys)?;
        let after = self.finalize_groups(merged, ctx).await?;
        Ok(Some(TouchedGroups { before, after }))
    }

    /// Takes the groups an input without records has: the one group of a global
    /// aggregate (`SELECT COUNT(*) FROM products` is 0 before the first product, as in
    /// a batch run over nothing); none when it groups by columns. The stream slots are
    /// empty outside a micro-batch.
    pub async fn start(&mut self, ctx: &Arc<TaskContext>) -> Result<()> {
        if self.group_columns > 0 {
            return Ok(());
        }
        let empty = run_plan(&self.partial, ctx).await?;
        let state = self.reduce(vec![empty], ctx).await?;
        self.state.upsert(&state)?;
        self.changed.upsert(&state)?;
        self.finalize_groups(state, ctx).await?;
        Ok(())
    }

    /// Follows one micro-batch of a changelog stream, whose scans read `slot`: its rows
    /// `delta.before` (replaced or deleted) leave their groups, `delta.after` join theirs;
    /// groups left without rows are removed. Where every aggregate can retract rows (see
    /// [`crate::retraction`]) they leave the state directly. Otherwise groups that only
    /// gained rows merge them into their state, as over an append stream, and groups that
    /// lost rows are recomputed from `table`, the stream's current rows, which keeps every
    /// aggregate exact (COUNT(DISTINCT), median, … included). Returns the groups touched,
    /// or `None`.
    pub async fn apply_changes(
        &mut self,
        slot: &BatchSlot,
        delta: &TableDelta,
        table: &ChangelogTable,
        ctx: &Arc<TaskContext>,
    ) -> Result<Option<TouchedGroups>> {
        if self.retraction.is_some() {
            return self.retract_changes(slot, delta, table, ctx).await;
        }
        let width = self.group_columns;
        let group_columns: Vec<usize> = (0..width).collect();
        let retracted = run_with(slot, vec![delta.before.clone()], &self.partial, ctx).await?;
        let added = run_with(slot, vec![delta.after.clone()], &self.partial, ctx).await?;
        if retracted.num_rows() == 0 && added.num_rows() == 0 {
            return Ok(None);
        }
        let retracted = project_columns(&retracted, &group_columns)?;
        let before = self.finals.lookup(&self.touched_keys(&retracted, &added)?)?;
        let mut fresh = Vec::with_capacity(2);
        let growing = without_rows_of(&added, &retracted, width)?;
        if growing.num_rows() > 0 {
            let stored = self.state.lookup(&project_columns(&growing, &group_columns)?)?;
            fresh.push(self.reduce(vec![stored, growing], ctx).await?);
        }
        if retracted.num_rows() > 0 {
            let recomputed = self.recompute_groups(slot, table, &retracted, ctx).await?;
            self.forget(&without_rows_of(&retracted, &project_columns(&recomputed, &group_columns)?, width)?)?;
            fresh.push(recomputed);
        }
        self.store_and_finalize(before, fresh, ctx).await
    }

    /// [`Self::apply_changes`] by retraction: the partial states of the retracted rows are
    /// taken out of their groups' (stored, with the added rows merged in).
    async fn retract_changes(
        &mut self,
        slot: &BatchSlot,
        delta: &TableDelta,
        table: &ChangelogTable,
        ctx: &Arc<TaskContext>,
    ) -> Result<Option<TouchedGroups>> {
        let retraction = self.retraction.as_ref().expect("a retracting aggregate");
        let rows_before = retraction.input_rows(slot, &delta.before, ctx).await?;
        let rows_after = retraction.input_rows(slot, &delta.after, ctx).await?;
        let retracted = retraction.partial(&rows_before, ctx).await?;
        let added = retraction.partial(&rows_after, ctx).await?;
        if retracted.num_rows() == 0 && added.num_rows() == 0 {
            return Ok(None);
        }
        // After a restore or a recompute the value sets are rebuilt from every row.
        let every_row = if retraction.needs_rebuild() { Some(retraction.input_rows(slot, &table.whole()?, ctx).await?) } else { None };
        let touched = self.touched_keys(&retracted, &added)?;
        let before = self.finals.lookup(&touched)?;
        let stored = self.state.lookup(&touched)?;
        let merged = self.reduce(vec![stored, added], ctx).await?;
        let retraction = self.retraction.as_mut().expect("a retracting aggregate");
        match every_row {
            Some(rows) => retraction.rebuild(&rows)?,
            None => retraction.update(&rows_before, &rows_after)?,
        }
        let Subtracted { live, gone, recompute } = retraction.subtract(&merged, &retracted)?;
        let mut fresh = vec![live];
        if recompute.num_rows() > 0 {
            fresh.push(self.recompute_groups(slot, table, &recompute, ctx).await?);
        }
        self.forget(&gone)?;
        self.store_and_finalize(before, fresh, ctx).await
    }

    /// The key columns of the groups with partial states in `retracted` or `added`.
    fn touched_keys(&self, retracted: &RecordBatch, added: &RecordBatch) -> Result<RecordBatch> {
        let group_columns: Vec<usize> = (0..self.group_columns).collect();
        let schema = Arc::new(self.state.schema().project(&group_columns)?);
        Ok(concat_batches(&schema, &[project_columns(retracted, &group_columns)?, project_columns(added, &group_columns)?])?)
    }

    /// The state of `groups` (key columns) recomputed from `table`'s current rows; groups
    /// without rows have none.
    async fn recompute_groups(&self, slot: &BatchSlot, table: &ChangelogTable, groups: &RecordBatch, ctx: &Arc<TaskContext>) -> Result<RecordBatch> {
        let all = run_with(slot, vec![table.whole()?], &self.partial, ctx).await?;
        self.reduce(vec![rows_of_groups(&all, groups, self.group_columns)?], ctx).await
    }

    /// Stores the new states `fresh` of touched groups whose final rows were `before`,
    /// and returns those groups.
    async fn store_and_finalize(&mut self, before: RecordBatch, fresh: Vec<RecordBatch>, ctx: &Arc<TaskContext>) -> Result<Option<TouchedGroups>> {
        let fresh = concat_batches(self.state.schema(), &fresh)?;
        self.state.upsert(&fresh)?;
        self.changed.upsert(&fresh)?;
        let after = self.finalize_groups(fresh, ctx).await?;
        Ok(Some(TouchedGroups { before, after }))
    }

    /// Removes the groups `keys` (key columns) from the state; the next checkpoint is a
    /// full one.
    fn forget(&mut self, keys: &RecordBatch) -> Result<()> {
        if keys.num_rows() == 0 {
            return Ok(());
        }
        self.state.remove(keys)?;
        self.finals.remove(keys)?;
        self.changed.remove(keys)?;
        self.removed_groups = true;
        Ok(())
    }

    /// Recomputes every group from the stream content now in the slots (a changelog
    /// stream's current rows), e.g. after a table the aggregate's input joins changed.
    pub async fn recompute_all(&mut self, ctx: &Arc<TaskContext>) -> Result<()> {
        let all = run_plan(&self.partial, ctx).await?;
        let state = self.reduce(vec![all], ctx).await?;
        if let Some(retraction) = &mut self.retraction {
            retraction.invalidate();
        }
        self.removed_groups |= !self.state.is_empty();
        self.state.clear();
        self.finals.clear();
        self.changed.clear();
        self.state.upsert(&state)?;
        self.changed.upsert(&state)?;
        self.finalize_groups(state, ctx).await?;
        Ok(())
    }

    /// Closes the windows that have ended by `watermark` (see [`Self::close_by`]): their
    /// groups leave the state (the next checkpoint is a full one), and their final rows
    /// are returned.
    pub async fn close(&mut self, watermark: i64, ctx: &Arc<TaskContext>) -> Result<RecordBatch> {
        let state = self.state.expire(watermark)?;
        let finals = self.finals.expire(watermark)?;
        if state.num_rows() == 0 {
            return Ok(finals);
        }
        self.changed.expire(watermark)?;
        self.removed_groups = true;
        if let Some(retraction) = &mut self.retraction {
            retraction.invalidate();
        }
        if !self.finals_on_close {
            return Ok(finals);
        }
        let finals = run_with(&self.finalize_input, vec![state], &self.finalize, ctx).await?;
        self.without_hidden_columns(finals)
    }

    /// Names of the group columns, in order.
    pub fn group_names(&self) -> Vec<String> {
        self.finals.schema().fields().iter().take(self.group_columns).map(|f| f.name().clone()).collect()
    }

    /// Whether groups were removed since the last checkpoint, which a delta checkpoint
    /// (changed groups only) cannot express: the next checkpoint must be full.
    pub fn removed_groups(&self) -> bool {
        self.removed_groups
    }

    /// Replaces the state by `state` (from a checkpoint; where a key appears twice the
    /// later row wins) and finalizes every group.
    pub async fn restore(&mut self, state: RecordBatch, ctx: &Arc<TaskContext>) -> Result<()> {
        if let Some(retraction) = &mut self.retraction {
            retraction.invalidate();
        }
        self.state.clear();
        self.finals.clear();
        self.changed.clear();
        self.state.upsert(&state)?;
        if !self.finals_on_close {
            let state = self.state.to_batch()?;
            self.finalize_groups(state, ctx).await?;
        }
        Ok(())
    }

    /// The whole state, one row per group, for a full checkpoint.
    pub fn state_batch(&self) -> Result<RecordBatch> {
        Ok(self.state.to_batch()?)
    }

    /// The state of the groups changed since the last checkpoint, for a delta checkpoint.
    pub fn changed_state(&self) -> Result<RecordBatch> {
        Ok(self.changed.to_batch()?)
    }

    /// Number of groups changed since the last checkpoint.
    pub fn changed_groups(&self) -> usize {
        self.changed.len()
    }

    /// Number of groups.
    pub fn groups(&self) -> usize {
        self.state.len()
    }

    /// Forgets which groups changed: a checkpoint now holds them.
    pub fn mark_checkpointed(&mut self) {
        self.changed.clear();
        self.removed_groups = false;
    }

    /// Schema of the state rows.
    pub fn state_schema(&self) -> &SchemaRef {
        self.state.schema()
    }

    /// Makes every finalized group visible to the view's remaining plan.
    pub fn publish_all(&self) -> Result<()> {
        self.finals_slot.set(vec![self.finals.to_batch()?]);
        Ok(())
    }

    /// Makes just `groups` (finalized rows) visible to the view's remaining plan.
    pub fn publish(&self, groups: RecordBatch) {
        self.finals_slot.set(vec![groups]);
    }

    /// Merges partial states until every group has one row. `PartialReduce` promises
    /// that only on a best-effort basis, so the state store checks it.
    async fn reduce(&self, inputs: Vec<RecordBatch>, ctx: &Arc<TaskContext>) -> Result<RecordBatch> {
        let mut inputs = inputs;
        for _ in 0..3 {
            let merged = run_with(&self.reduce_input, inputs, &self.reduce, ctx).await?;
            if self.distinct_groups(&merged)? == merged.num_rows() {
                return Ok(merged);
            }
            inputs = vec![merged];
        }
        Err(EngineError::internal("PartialReduce kept emitting several rows for one group"))
    }

    fn distinct_groups(&self, batch: &RecordBatch) -> Result<usize> {
        let encoder = RowEncoder::new(&batch.schema(), (0..self.group_columns).collect())?;
        let keys = encoder.encode(batch)?;
        Ok((0..keys.len()).map(|i| keys.get(i)).collect::<HashSet<_, ahash::RandomState>>().len())
    }

    /// Finalizes the groups of `state` into `finals` and returns their final rows.
    async fn finalize_groups(&mut self, state: RecordBatch, ctx: &Arc<TaskContext>) -> Result<RecordBatch> {
        let finals = run_with(&self.finalize_input, vec![state], &self.finalize, ctx).await?;
        let finals = self.without_hidden_columns(finals)?;
        self.finals.upsert(&finals)?;
        Ok(finals)
    }

    /// `finals` as the view's plan reads them: it was typed against the original
    /// aggregate's schema, which has no hidden counts.
    fn without_hidden_columns(&self, finals: RecordBatch) -> Result<RecordBatch> {
        let width = self.finals.schema().fields().len();
        Ok(RecordBatch::try_new(self.finals.schema().clone(), finals.columns()[..width].to_vec())?)
    }
}

/// The rows of `rows` whose first `width` columns are a row of `groups` (key columns only).
fn rows_of_groups(rows: &RecordBatch, groups: &RecordBatch, width: usize) -> Result<RecordBatch> {
    Ok(filter_by_keys(rows, &(0..width).collect::<Vec<_>>(), groups, true)?)
}

/// The rows of `rows` whose first `width` columns are not a row of `groups`.
fn without_rows_of(rows: &RecordBatch, groups: &RecordBatch, width: usize) -> Result<RecordBatch> {
    Ok(filter_by_keys(rows, &(0..width).collect::<Vec<_>>(), groups, false)?)
}

/// The finalized rows of the groups one micro-batch touched, before it (groups that
/// existed) and after it.
#[derive(Debug)]
pub struct TouchedGroups {
    /// Final rows before the micro-batch.
    pub before: RecordBatch,
    /// Final rows after it.
    pub after: RecordBatch,
}
