//! Compiling a `CREATE VIEW` into an incremental plan, and producing a
//! changeset for every micro-batch.
//!
//! The physical plan is split at the lowest aggregates that read a stream.
//! Each such aggregate becomes an [`IncrementalAggregate`]. The rest of the plan
//! (HAVING, joins to reference tables, ORDER BY … LIMIT, windows over aggregates)
//! runs over the groups a micro-batch touched, before and after it, when each of its
//! rows follows from one group; otherwise over every group (see [`Evaluation`]). Either
//! way its output is diffed by the view's key. A view without aggregates is
//! stateless: its plan runs on each micro-batch and every output row is an upsert.

use std::path::PathBuf;
use std::sync::Arc;

use datafusion::arrow::array::UInt32Array;
use datafusion::arrow::compute::take_record_batch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{Expr, LogicalPlan, Volatility};
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::execution_plan::replace_children_if_necessary;
use datafusion::physical_plan::limit::{GlobalLimitExec, LocalLimitExec};
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::union::UnionExec;
use datafusion::physical_plan::windows::{BoundedWindowAggExec, WindowAggExec};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{DataFrame, SessionContext};

use crate::aggregate::{IncrementalAggregate, TouchedGroups};
use crate::catalog::ViewDef;
use crate::contract::{Changeset, StreamDecl, ViewInfo};
use crate::diff::{Differ, IndexedRows};
use crate::error::{EngineError, Result};
pub use crate::evaluation::Evaluation;
use crate::evaluation::{classify, join_name, join_type, keeps_only_side, Classified};
use crate::key::require_view_key;
use crate::keyed::{RowEncoder, RowMap};
use crate::plan_search::find_in_plan;
use crate::slot::{reads_any, run_plan, BatchSlot};
use crate::subquery::inline_reference_subqueries;
use crate::top_n::TopN;

/// A view compiled for incremental maintenance.
#[derive(Debug)]
pub struct IncrementalView {
    info: ViewInfo,
    /// Where the view was declared, for errors while it runs.
    origin: (PathBuf, usize),
    differ: Differ,
    kind: ViewKind,
}

#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // one per view, never moved on a hot path
enum ViewKind {
    /// Runs on each micro-batch; every row is an upsert.
    Stateless { plan: Arc<dyn ExecutionPlan> },
    /// Aggregates keep state; `upkeep` says how the rest of the plan follows them.
    Aggregating { stages: AggregateStages, upkeep: Upkeep },
}

/// How an aggregating view's result follows its groups (see [`Evaluation`]).
#[derive(Debug)]
enum Upkeep {
    /// The rest of the plan runs over the groups a micro-batch touched, before and
    /// after it, and the two are diffed.
    TouchedGroups,
    /// The plan between the aggregates and the top-n sort runs over the touched groups,
    /// whose rows `top` re-ranks; the rest of the view runs over the first n rows and is
    /// diffed against the previous result.
    TopN { top: TopN, current: IndexedRows },
    /// The rest of the plan re-runs over every group (because of `because`) and its
    /// result is diffed against the previous one.
    WholeResult { because: String, current: IndexedRows },
}

/// The incremental aggregates of a view and the plan above them, which reads their
/// finalized groups.
#[derive(Debug)]
struct AggregateStages {
    aggregates: Vec<IncrementalAggregate>,
    output: Arc<dyn ExecutionPlan>,
}

impl IncrementalView {
    /// Plans `def` in `ctx` and splits the plan into incremental stages. `streams` are
    /// every declared stream.
    pub async fn compile(ctx: &SessionContext, def: &ViewDef, streams: &[StreamDecl]) -> Result<Self> {
        let unsupported =
            |construct: String| EngineError::Unsupported { file: def.origin.file.clone(), line: def.origin.line, view: def.name.clone(), construct };
        let sql_error = |message: String| EngineError::Sql { file: def.origin.file.clone(), line: def.origin.line, message };
        let df = ctx.table(def.name.as_str()).await.map_err(|e| sql_error(e.to_string()))?;
        let plan = inline_reference_subqueries(ctx, df.logical_plan(), streams).await.map_err(sql_error)?;
        let df = DataFrame::new(ctx.state(), plan);
        if let Some(construct) = unmaintainable_expression(df.logical_plan()) {
            return Err(unsupported(construct));
        }
        let key = require_view_key(df.logical_plan(), streams);
        let physical = df.create_physical_plan().await.map_err(|e| sql_error(e.to_string()))?;
        let schema = physical.schema();
        let slots: Vec<BatchSlot> = streams.iter().map(|s| s.slot.clone()).collect();
        let finder = StreamFinder { streams: &slots };
        if !finder.reads_stream(&physical) {
            return Err(unsupported("it reads no stream; declare reference-only queries as plain SQL instead".into()));
        }
        let mut aggregates = Vec::new();
        let output = finder.split(physical, &mut aggregates).map_err(unsupported)?;
        let key = key.map_err(unsupported)?;
        let info = ViewInfo { name: def.name.clone(), schema: schema.clone(), key };
        let differ = Differ::new(&info)?;
        let kind = if aggregates.is_empty() {
            finder.check_stream_operators(&output).map_err(unsupported)?;
            ViewKind::Stateless { plan: output }
        } else {
            if finder.reads_stream(&output) {
                return Err(unsupported("it reads a stream both inside and outside an aggregate".into()));
            }
            let finals: Vec<BatchSlot> = aggregates.iter().map(|a| a.finals_slot().clone()).collect();
            let empty = || differ.index(RecordBatch::new_empty(schema.clone()));
            let (output, upkeep) = match classify(&output, &finals) {
                Classified::TouchedGroups => (output, Upkeep::TouchedGroups),
                Classified::TopN { sort } => {
                    let (top, below) = TopN::split(&output, &sort)?;
                    (below, Upkeep::TopN { top, current: empty()? })
                }
                Classified::WholeResult { because } => (output, Upkeep::WholeResult { because, current: empty()? }),
            };
            ViewKind::Aggregating { stages: AggregateStages { aggregates, output }, upkeep }
        };
        Ok(Self { info, origin: (def.origin.file.clone(), def.origin.line), differ, kind })
    }

    /// Name, schema and key.
    pub fn info(&self) -> &ViewInfo {
        &self.info
    }

    /// How a micro-batch re-evaluates the view (`None` for views without aggregates,
    /// which evaluate each micro-batch on its own).
    pub fn evaluation(&self) -> Option<Evaluation> {
        let ViewKind::Aggregating { upkeep, .. } = &self.kind else { return None };
        Some(match upkeep {
            Upkeep::TouchedGroups => Evaluation::TouchedGroups,
            Upkeep::TopN { top, .. } => Evaluation::TopN { n: top.n() },
            Upkeep::WholeResult { because, .. } => Evaluation::WholeResult { because: because.clone() },
        })
    }

    /// Processes the micro-batch now in the stream slots.
    pub async fn apply(&mut self, ctx: &Arc<TaskContext>) -> Result<Changeset> {
        let changes = self.apply_batch(ctx).await;
        changes.map_err(|e| self.error(e))
    }

    /// `error`, saying which view (and where it is declared) it happened in.
    fn error(&self, error: EngineError) -> EngineError {
        let (file, line) = self.origin.clone();
        EngineError::View { file, line, view: self.info.name.clone(), source: Box::new(error) }
    }

    async fn apply_batch(&mut self, ctx: &Arc<TaskContext>) -> Result<Changeset> {
        let (stages, upkeep) = match &mut self.kind {
            ViewKind::Stateless { plan } => {
                let rows = run_plan(plan, ctx).await?;
                let upserts = last_row_per_key(&rows, &self.info.key)?;
                return Ok(Changeset { upserts, deletes: RecordBatch::new_empty(self.info.key_schema()) });
            }
            ViewKind::Aggregating { stages, upkeep } => (stages, upkeep),
        };
        match upkeep {
            Upkeep::TouchedGroups => {
                let Some((before, after)) = stages.apply_touched(ctx).await? else { return Ok(self.info.no_change()) };
                self.differ.diff(&self.differ.index(before)?, &self.differ.index(after)?)
            }
            Upkeep::TopN { top, current } => {
                let Some((before, after)) = stages.apply_touched(ctx).await? else { return Ok(self.info.no_change()) };
                top.remove(&before)?;
                top.insert(&after)?;
                replace_current(&self.differ, current, top.evaluate(ctx).await?)
            }
            Upkeep::WholeResult { current, .. } => {
                if stages.apply(ctx).await?.is_none() {
                    return Ok(self.info.no_change());
                }
                replace_current(&self.differ, current, stages.evaluate_all(ctx).await?)
            }
        }
    }

    fn aggregates(&self) -> &[IncrementalAggregate] {
        match &self.kind {
            ViewKind::Stateless { .. } => &[],
            ViewKind::Aggregating { stages, .. } => &stages.aggregates,
        }
    }

    /// The whole state, for a full checkpoint: one batch per aggregate.
    pub fn state(&self) -> Result<Vec<RecordBatch>> {
        self.aggregates().iter().map(|a| a.state_batch()).collect()
    }

    /// The state of the groups changed since the last checkpoint, for a delta checkpoint:
    /// one batch per aggregate.
    pub fn changed_state(&self) -> Result<Vec<RecordBatch>> {
        self.aggregates().iter().map(|a| a.changed_state()).collect()
    }

    /// Groups changed since the last checkpoint, and groups in all, over every aggregate.
    pub fn group_counts(&self) -> (usize, usize) {
        self.aggregates().iter().fold((0, 0), |(changed, all), a| (changed + a.changed_groups(), all + a.groups()))
    }

    /// Forgets which groups changed: a checkpoint now holds them.
    pub fn mark_checkpointed(&mut self) {
        if let ViewKind::Aggregating { stages, .. } = &mut self.kind {
            stages.aggregates.iter_mut().for_each(IncrementalAggregate::mark_checkpointed);
        }
    }

    /// Schemas of [`Self::state`]'s batches.
    pub fn state_schemas(&self) -> Vec<SchemaRef> {
        self.aggregates().iter().map(|a| a.state_schema().clone()).collect()
    }

    /// The view's whole current result, for views that keep state (those with
    /// aggregates); computed over every group, so meant for start-up, not for each
    /// micro-batch.
    pub async fn current_result(&self, ctx: &Arc<TaskContext>) -> Result<Option<RecordBatch>> {
        let ViewKind::Aggregating { stages, upkeep } = &self.kind else { return Ok(None) };
        match upkeep {
            Upkeep::TouchedGroups => Ok(Some(stages.evaluate_all(ctx).await?)),
            Upkeep::TopN { current, .. } | Upkeep::WholeResult { current, .. } => Ok(Some(current.batch.clone())),
        }
    }

    /// Restores checkpointed state (one batch per aggregate; where a group appears twice
    /// the later row wins) without emitting anything: the pipeline resets the sink to
    /// [`Self::current_result`], see [`crate::contract::Sink::reset`].
    pub async fn restore(&mut self, state: Vec<RecordBatch>, ctx: &Arc<TaskContext>) -> Result<()> {
        let restored = self.restore_state(state, ctx).await;
        restored.map_err(|e| self.error(e))
    }

    async fn restore_state(&mut self, state: Vec<RecordBatch>, ctx: &Arc<TaskContext>) -> Result<()> {
        let ViewKind::Aggregating { stages, upkeep } = &mut self.kind else { return Ok(()) };
        for (aggregate, batch) in stages.aggregates.iter_mut().zip(state) {
            aggregate.restore(batch, ctx).await?;
        }
        match upkeep {
            Upkeep::TouchedGroups => {}
            Upkeep::TopN { top, current } => {
                top.clear();
                top.insert(&stages.evaluate_all(ctx).await?)?;
                *current = self.differ.index(top.evaluate(ctx).await?)?;
            }
            Upkeep::WholeResult { current, .. } => *current = self.differ.index(stages.evaluate_all(ctx).await?)?,
        }
        Ok(())
    }
}

/// Makes `result` the view's current rows and returns how it differs from the previous ones.
fn replace_current(differ: &Differ, current: &mut IndexedRows, result: RecordBatch) -> Result<Changeset> {
    let result = differ.index(result)?;
    let changes = differ.diff(current, &result)?;
    *current = result;
    Ok(changes)
}

impl ViewInfo {
    fn no_change(&self) -> Changeset {
        Changeset { upserts: RecordBatch::new_empty(self.schema.clone()), deletes: RecordBatch::new_empty(self.key_schema()) }
    }
}

impl AggregateStages {
    /// Folds the micro-batch into every aggregate; per aggregate, the groups it touched.
    /// `None` when it touched no group at all.
    async fn apply(&mut self, ctx: &Arc<TaskContext>) -> Result<Option<Vec<Option<TouchedGroups>>>> {
        let mut touched = Vec::with_capacity(self.aggregates.len());
        for aggregate in &mut self.aggregates {
            touched.push(aggregate.apply(ctx).await?);
        }
        Ok(touched.iter().any(Option::is_some).then_some(touched))
    }

    /// Folds the micro-batch into every aggregate and runs the plan above them over the
    /// groups it touched, before and after it. `None` when it touched no group.
    async fn apply_touched(&mut self, ctx: &Arc<TaskContext>) -> Result<Option<(RecordBatch, RecordBatch)>> {
        let Some(touched) = self.apply(ctx).await? else { return Ok(None) };
        let (before, after): (Vec<_>, Vec<_>) = touched.into_iter().map(|t| t.map(|t| (t.before, t.after)).unzip()).unzip();
        Ok(Some((self.evaluate(before, ctx).await?, self.evaluate(after, ctx).await?)))
    }

    /// Runs the plan above the aggregates over every finalized group.
    async fn evaluate_all(&self, ctx: &Arc<TaskContext>) -> Result<RecordBatch> {
        for aggregate in &self.aggregates {
            aggregate.publish_all()?;
        }
        self.run(ctx).await
    }

    /// Runs the plan above the aggregates over just `groups`, one batch (or none) per aggregate.
    async fn evaluate(&self, groups: Vec<Option<RecordBatch>>, ctx: &Arc<TaskContext>) -> Result<RecordBatch> {
        for (aggregate, rows) in self.aggregates.iter().zip(groups) {
            aggregate.publish(rows.unwrap_or_else(|| RecordBatch::new_empty(aggregate.finals_slot().schema().clone())));
        }
        self.run(ctx).await
    }

    async fn run(&self, ctx: &Arc<TaskContext>) -> Result<RecordBatch> {
        let result = run_plan(&self.output, ctx).await;
        for aggregate in &self.aggregates {
            aggregate.finals_slot().clear();
        }
        result
    }
}

/// Keeps, for every key, the last row of `rows` (a micro-batch may update a key twice).
fn last_row_per_key(rows: &RecordBatch, key: &[usize]) -> Result<RecordBatch> {
    let encoder = RowEncoder::new(&rows.schema(), key.to_vec())?;
    let keys = encoder.encode(rows)?;
    let mut last: RowMap<&[u8], u32> = RowMap::with_capacity_and_hasher(keys.len(), Default::default());
    for i in 0..keys.len() {
        last.insert(keys.get(i), i as u32);
    }
    if last.len() == rows.num_rows() {
        return Ok(rows.clone());
    }
    let mut keep: Vec<u32> = last.into_values().collect();
    keep.sort_unstable();
    Ok(take_record_batch(rows, &UInt32Array::from(keep))?)
}

/// Finds stream scans in a plan and splits it at the aggregates over them.
struct StreamFinder<'a> {
    streams: &'a [BatchSlot],
}

impl StreamFinder<'_> {
    fn reads_stream(&self, plan: &Arc<dyn ExecutionPlan>) -> bool {
        reads_any(plan, self.streams)
    }

    /// True when `plan`'s subtree holds an aggregate over a stream.
    fn aggregates_stream(&self, plan: &Arc<dyn ExecutionPlan>) -> bool {
        (plan.is::<AggregateExec>() && self.reads_stream(plan)) || plan.children().into_iter().any(|c| self.aggregates_stream(c))
    }

    /// Replaces every lowest aggregate over a stream by a read of its finalized groups.
    fn split(&self, plan: Arc<dyn ExecutionPlan>, aggregates: &mut Vec<IncrementalAggregate>) -> std::result::Result<Arc<dyn ExecutionPlan>, String> {
        if !self.reads_stream(&plan) {
            return Ok(plan);
        }
        if let Some(aggregate) = plan.downcast_ref::<AggregateExec>() {
            if let Some(stage) = self.incremental_stage(aggregate)? {
                self.check_stream_operators(stage.input())?;
                let incremental = IncrementalAggregate::try_new(stage, plan.schema()).map_err(|e| e.to_string())?;
                let read = incremental.finals_slot().exec(None).map_err(|e| e.to_string())?;
                aggregates.push(incremental);
                return Ok(read);
            }
        }
        let children = plan.children().into_iter().map(|child| self.split(child.clone(), aggregates)).collect::<std::result::Result<Vec<_>, _>>()?;
        replace_children_if_necessary(plan, children).map_err(|e| e.to_string())
    }

    /// The aggregate whose parts define the incremental stages, when `aggregate` is the
    /// lowest aggregate over a stream: itself when `Single`, its `Partial` child when `Final`.
    fn incremental_stage<'p>(&self, aggregate: &'p AggregateExec) -> std::result::Result<Option<&'p AggregateExec>, String> {
        let stage = match aggregate.mode() {
            AggregateMode::Single | AggregateMode::SinglePartitioned => aggregate,
            AggregateMode::Final | AggregateMode::FinalPartitioned => {
                find_partial(aggregate.input()).ok_or("a final aggregate without its partial stage")?
            }
            AggregateMode::Partial | AggregateMode::PartialReduce => return Ok(None),
        };
        if self.aggregates_stream(stage.input()) {
            return Ok(None);
        }
        if stage.group_expr().has_grouping_set() {
            return Err("GROUPING SETS / ROLLUP / CUBE over a stream".into());
        }
        Ok(Some(stage))
    }

    /// Refuses operators over a stream that a micro-batch cannot evaluate on its own.
    fn check_stream_operators(&self, plan: &Arc<dyn ExecutionPlan>) -> std::result::Result<(), String> {
        let streaming_children = plan.children().into_iter().filter(|c| self.reads_stream(c)).count();
        if streaming_children == 0 {
            return Ok(());
        }
        if let Some(construct) = self.reference_rows_without_stream_rows(plan) {
            return Err(construct);
        }
        let refused = if streaming_children > 1 && !plan.is::<UnionExec>() {
            Some("a join between two streams")
        } else if plan.is::<WindowAggExec>() || plan.is::<BoundedWindowAggExec>() {
            Some("a window function (OVER) over a stream; aggregate with GROUP BY first")
        } else if plan.is::<SortExec>() {
            Some("ORDER BY over stream rows (or an ordered aggregate); order an aggregated view instead")
        } else if plan.is::<GlobalLimitExec>() || plan.is::<LocalLimitExec>() || plan.fetch().is_some() {
            Some("LIMIT over stream rows; limit an aggregated view instead")
        } else {
            None
        };
        if let Some(construct) = refused {
            return Err(format!("{construct} ({})", plan.name()));
        }
        plan.children().into_iter().try_for_each(|c| self.check_stream_operators(c))
    }

    /// Why `plan` would output rows that come from reference tables alone, which every
    /// micro-batch would produce (and an aggregate count) again: a join that keeps
    /// reference rows without a matching stream record, or a UNION of a stream and a
    /// reference table.
    fn reference_rows_without_stream_rows(&self, plan: &Arc<dyn ExecutionPlan>) -> Option<String> {
        let children = plan.children();
        let streaming: Vec<usize> = (0..children.len()).filter(|&i| self.reads_stream(children[i])).collect();
        if plan.is::<UnionExec>() && streaming.len() < children.len() {
            return Some(
                "a UNION of a stream and a reference table: every micro-batch would produce the reference rows again; \
                 aggregate the stream, or keep the reference rows in a view of their own"
                    .into(),
            );
        }
        match (join_type(plan), streaming.as_slice()) {
            (Some(join_type), [side]) if !keeps_only_side(join_type, *side) => Some(format!(
                "{} that outputs reference-table rows on their own (without a stream record, or once per \
                 matching micro-batch): every micro-batch would produce them again, and an aggregate count them again; keep the stream on the preserved side \
                 (`products p LEFT JOIN categories c`), or filter the stream with a semi-join (`WHERE p.category_id IN (SELECT id FROM categories)`)",
                join_name(join_type)
            )),
            _ => None,
        }
    }
}

/// Why an expression in `plan` (or in the views it reads) cannot be maintained: a
/// function whose value does not follow from its arguments (`now()`, `random()`…), or
/// a scalar subquery, whose value the engine would have to maintain beside the view.
fn unmaintainable_expression(plan: &LogicalPlan) -> Option<String> {
    find_in_plan(plan, &|node| {
        let mut found = None;
        let _ = node.apply_expressions(|expr| {
            expr.apply(|e| {
                found = match e {
                    Expr::ScalarFunction(call) if call.func.signature().volatility != Volatility::Immutable => Some(format!(
                        "`{}()` reads the clock or is random, so the result would depend on when each micro-batch ran, \
                         not on the records; derive times from `_timestamp` instead (e.g. date_bin(INTERVAL '1 minute', _timestamp))",
                        call.func.name()
                    )),
                    Expr::ScalarSubquery(_) => Some(
                        "a scalar subquery (a `(SELECT …)` used as a value) over a stream, or one that refers to the \
                         outer query, is not maintained as records arrive; join to the table it reads instead (one over \
                         reference tables alone is computed once at start-up)"
                            .into(),
                    ),
                    _ => None,
                };
                Ok(if found.is_some() { TreeNodeRecursion::Stop } else { TreeNodeRecursion::Continue })
            })
        });
        found
    })
}

/// The `Partial` aggregate under a `Final` one, through repartitioning and coalescing.
fn find_partial(plan: &Arc<dyn ExecutionPlan>) -> Option<&AggregateExec> {
    if let Some(aggregate) = plan.downcast_ref::<AggregateExec>() {
        return (*aggregate.mode() == AggregateMode::Partial).then_some(aggregate);
    }
    match plan.children().as_slice() {
        [only] => find_partial(only),
        _ => None,
    }
}
