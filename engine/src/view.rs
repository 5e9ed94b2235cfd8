//! Compiling a `CREATE VIEW` into an incremental plan, and producing a
//! changeset for every micro-batch.
//!
//! The physical plan is split at the lowest aggregates that read a stream.
//! Each such aggregate becomes an [`IncrementalAggregate`]; the rest of the plan
//! (HAVING, ORDER BY … LIMIT, windows over aggregates, joins to reference
//! tables) is re-executed over the finalized groups, and its result is diffed
//! against the previous one by the view's key. A view without aggregates is
//! stateless: its plan runs on each micro-batch and every output row is an upsert.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use datafusion::arrow::compute::take_record_batch;
use datafusion::arrow::array::UInt32Array;
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
use datafusion::prelude::SessionContext;

use crate::aggregate::{run_plan, IncrementalAggregate};
use crate::catalog::ViewDef;
use crate::error::{EngineError, Result};
use crate::keyed::{EncodedRows, RowEncoder};
use crate::slot::{BatchSlot, BatchSlotExec};

/// Rows a view gained or changed (`upserts`, full rows) and lost (`deletes`, key columns only).
#[derive(Debug, Clone)]
pub struct Changeset {
    /// New or changed rows, with the view's schema.
    pub upserts: RecordBatch,
    /// Keys of rows that left the view, with the view's key columns.
    pub deletes: RecordBatch,
}

impl Changeset {
    /// True when nothing changed.
    pub fn is_empty(&self) -> bool {
        self.upserts.num_rows() == 0 && self.deletes.num_rows() == 0
    }
}

/// What sinks need to know about a view.
#[derive(Debug, Clone)]
pub struct ViewInfo {
    /// View name.
    pub name: String,
    /// Output schema.
    pub schema: SchemaRef,
    /// Key columns, as indices into `schema`.
    pub key: Vec<usize>,
}

impl ViewInfo {
    /// Schema of the key columns (the schema of [`Changeset::deletes`]).
    pub fn key_schema(&self) -> SchemaRef {
        Arc::new(self.schema.project(&self.key).expect("view key columns are in its schema"))
    }
}

/// A view compiled for incremental maintenance.
#[derive(Debug)]
pub struct IncrementalView {
    info: ViewInfo,
    kind: ViewKind,
}

#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // one per view, never moved on a hot path
enum ViewKind {
    /// Runs on each micro-batch; every row is an upsert.
    Stateless { plan: Arc<dyn ExecutionPlan> },
    /// Aggregates keep state; the rest of the plan is re-run over their finalized groups.
    Aggregating { aggregates: Vec<IncrementalAggregate>, output: Arc<dyn ExecutionPlan>, current: ResultSnapshot },
}

impl IncrementalView {
    /// Plans `def` in `ctx` and splits the plan into incremental stages. `streams` are the
    /// slots of every declared stream.
    pub async fn compile(ctx: &SessionContext, def: &ViewDef, streams: &[BatchSlot]) -> Result<Self> {
        let unsupported = |construct: String| EngineError::Unsupported {
            file: def.origin.file.clone(),
            line: def.origin.line,
            view: def.name.clone(),
            construct,
        };
        let sql_error = |message: String| EngineError::Sql { file: def.origin.file.clone(), line: def.origin.line, message };
        let df = ctx.table(def.name.as_str()).await.map_err(|e| sql_error(e.to_string()))?;
        if let Some(function) = clock_or_random_function(df.logical_plan()) {
            return Err(unsupported(format!(
                "`{function}()` reads the clock or is random, so the result would depend on when each micro-batch ran, not on the records; \
                 derive times from `_timestamp` instead (e.g. date_bin(INTERVAL '1 minute', _timestamp))"
            )));
        }
        let key = view_key(df.logical_plan().schema());
        let physical = df.create_physical_plan().await.map_err(|e| sql_error(e.to_string()))?;
        let schema = physical.schema();
        let finder = StreamFinder { streams };
        if !finder.reads_stream(&physical) {
            return Err(unsupported("it reads no stream; declare reference-only queries as plain SQL instead".into()));
        }
        let mut aggregates = Vec::new();
        let output = finder.split(physical, &mut aggregates).map_err(unsupported)?;
        let key = key.ok_or_else(|| {
            unsupported(if aggregates.is_empty() {
                "it has no key: select the stream's PRIMARY KEY columns, or aggregate with GROUP BY".into()
            } else {
                "it has no key: select every GROUP BY column".into()
            })
        })?;
        let info = ViewInfo { name: def.name.clone(), schema: schema.clone(), key };
        let kind = if aggregates.is_empty() {
            finder.check_stream_operators(&output).map_err(unsupported)?;
            ViewKind::Stateless { plan: output }
        } else {
            if finder.reads_stream(&output) {
                return Err(unsupported("it reads a stream both inside and outside an aggregate".into()));
            }
            let current = ResultSnapshot::new(&info)?;
            ViewKind::Aggregating { aggregates, output, current }
        };
        Ok(Self { info, kind })
    }

    /// Name, schema and key.
    pub fn info(&self) -> &ViewInfo {
        &self.info
    }

    /// Processes the micro-batch now in the stream slots.
    pub async fn apply(&mut self, ctx: &Arc<TaskContext>) -> Result<Changeset> {
        match &mut self.kind {
            ViewKind::Stateless { plan } => {
                let rows = run_plan(plan, ctx).await?;
                let upserts = last_row_per_key(&rows, &self.info.key)?;
                Ok(Changeset { upserts, deletes: RecordBatch::new_empty(self.info.key_schema()) })
            }
            ViewKind::Aggregating { aggregates, output, current } => {
                let mut touched = false;
                for aggregate in aggregates.iter_mut() {
                    touched |= aggregate.apply(ctx).await?;
                }
                if !touched {
                    return Ok(Changeset {
                        upserts: RecordBatch::new_empty(self.info.schema.clone()),
                        deletes: RecordBatch::new_empty(self.info.key_schema()),
                    });
                }
                let result = evaluate(aggregates, output, ctx).await?;
                current.replace(result, &self.info.name)
            }
        }
    }

    /// The state to checkpoint: one batch per aggregate.
    pub fn state(&self) -> Result<Vec<RecordBatch>> {
        match &self.kind {
            ViewKind::Stateless { .. } => Ok(Vec::new()),
            ViewKind::Aggregating { aggregates, .. } => aggregates.iter().map(|a| a.state_batch()).collect(),
        }
    }

    /// Schemas of [`Self::state`]'s batches.
    pub fn state_schemas(&self) -> Vec<SchemaRef> {
        match &self.kind {
            ViewKind::Stateless { .. } => Vec::new(),
            ViewKind::Aggregating { aggregates, .. } => aggregates.iter().map(|a| a.state_schema().clone()).collect(),
        }
    }

    /// The view's whole current result, for views that keep one (those with aggregates).
    pub fn result(&self) -> Option<&RecordBatch> {
        match &self.kind {
            ViewKind::Stateless { .. } => None,
            ViewKind::Aggregating { current, .. } => Some(&current.batch),
        }
    }

    /// Restores checkpointed state and recomputes the current result (emitting nothing:
    /// the pipeline resets the sink to it, see [`crate::runtime::Sink::reset`]).
    pub async fn restore(&mut self, state: Vec<RecordBatch>, ctx: &Arc<TaskContext>) -> Result<()> {
        let ViewKind::Aggregating { aggregates, output, current } = &mut self.kind else {
            return Ok(());
        };
        for (aggregate, batch) in aggregates.iter_mut().zip(state) {
            aggregate.restore(batch, ctx).await?;
        }
        let result = evaluate(aggregates, output, ctx).await?;
        current.replace(result, &self.info.name)?;
        Ok(())
    }
}

async fn evaluate(
    aggregates: &[IncrementalAggregate],
    output: &Arc<dyn ExecutionPlan>,
    ctx: &Arc<TaskContext>,
) -> Result<RecordBatch> {
    for aggregate in aggregates {
        aggregate.publish()?;
    }
    let result = run_plan(output, ctx).await;
    for aggregate in aggregates {
        aggregate.finals_slot().clear();
    }
    result
}

/// The key of a view: the smallest set of columns that functionally determines all of them
/// (GROUP BY columns after an aggregate, a stream's PRIMARY KEY through projections).
pub fn view_key(schema: &datafusion::common::DFSchema) -> Option<Vec<usize>> {
    let width = schema.fields().len();
    schema
        .functional_dependencies()
        .iter()
        .filter(|dep| {
            let targets: HashSet<usize> = dep.target_indices.iter().copied().collect();
            (0..width).all(|i| targets.contains(&i) || dep.source_indices.contains(&i))
        })
        .map(|dep| {
            let mut key = dep.source_indices.clone();
            key.sort_unstable();
            key
        })
        .min_by_key(|key| key.len())
}

/// Keeps, for every key, the last row of `rows` (a micro-batch may update a key twice).
fn last_row_per_key(rows: &RecordBatch, key: &[usize]) -> Result<RecordBatch> {
    let encoder = RowEncoder::new(&rows.schema(), key.to_vec())?;
    let keys = encoder.encode(rows)?;
    let mut last: HashMap<&[u8], u32> = HashMap::with_capacity(keys.len());
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

/// The current rows of an aggregating view, indexed by key, to diff the next result against.
#[derive(Debug)]
struct ResultSnapshot {
    key: Vec<usize>,
    key_encoder: RowEncoder,
    row_encoder: RowEncoder,
    batch: RecordBatch,
    index: HashMap<Box<[u8]>, usize>,
    /// Encoded full rows of `batch`, to compare values without re-encoding them.
    rows: EncodedRows,
}

impl ResultSnapshot {
    fn new(info: &ViewInfo) -> Result<Self> {
        let width = info.schema.fields().len();
        let row_encoder = RowEncoder::new(&info.schema, (0..width).collect())?;
        let batch = RecordBatch::new_empty(info.schema.clone());
        Ok(Self {
            key: info.key.clone(),
            key_encoder: RowEncoder::new(&info.schema, info.key.clone())?,
            rows: row_encoder.encode(&batch)?,
            row_encoder,
            batch,
            index: HashMap::new(),
        })
    }

    /// Makes `result` current and returns how it differs from the previous result.
    fn replace(&mut self, result: RecordBatch, view: &str) -> Result<Changeset> {
        let keys = self.key_encoder.encode(&result)?;
        let rows = self.row_encoder.encode(&result)?;
        let mut index = HashMap::with_capacity(keys.len());
        let mut upserts = Vec::new();
        for i in 0..keys.len() {
            let key = keys.get(i);
            let unchanged = self.index.get(key).is_some_and(|&j| self.rows.get(j) == rows.get(i));
            if !unchanged {
                upserts.push(i as u32);
            }
            if index.insert(Box::<[u8]>::from(key), i).is_some() {
                return Err(EngineError::DataFusion(datafusion::error::DataFusionError::Execution(format!(
                    "view `{view}` produced two rows for its key columns {:?}",
                    self.key.iter().map(|&k| result.schema().field(k).name().clone()).collect::<Vec<_>>()
                ))));
            }
        }
        let mut gone: Vec<u32> =
            self.index.iter().filter(|(key, _)| !index.contains_key(*key)).map(|(_, &j)| j as u32).collect();
        gone.sort_unstable();
        let deletes = take_record_batch(&self.batch.project(&self.key)?, &UInt32Array::from(gone))?;
        let upserts = take_record_batch(&result, &UInt32Array::from(upserts))?;
        self.batch = result;
        self.index = index;
        self.rows = rows;
        Ok(Changeset { upserts, deletes })
    }
}

/// Finds stream scans in a plan and splits it at the aggregates over them.
struct StreamFinder<'a> {
    streams: &'a [BatchSlot],
}

impl StreamFinder<'_> {
    fn is_stream_scan(&self, plan: &Arc<dyn ExecutionPlan>) -> bool {
        plan.downcast_ref::<BatchSlotExec>().is_some_and(|scan| self.streams.iter().any(|s| scan.reads(s)))
    }

    fn reads_stream(&self, plan: &Arc<dyn ExecutionPlan>) -> bool {
        self.is_stream_scan(plan) || plan.children().into_iter().any(|c| self.reads_stream(c))
    }

    /// True when `plan`'s subtree holds an aggregate over a stream.
    fn aggregates_stream(&self, plan: &Arc<dyn ExecutionPlan>) -> bool {
        (plan.is::<AggregateExec>() && self.reads_stream(plan))
            || plan.children().into_iter().any(|c| self.aggregates_stream(c))
    }

    /// Replaces every lowest aggregate over a stream by a read of its finalized groups.
    fn split(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        aggregates: &mut Vec<IncrementalAggregate>,
    ) -> std::result::Result<Arc<dyn ExecutionPlan>, String> {
        if !self.reads_stream(&plan) {
            return Ok(plan);
        }
        if let Some(aggregate) = plan.downcast_ref::<AggregateExec>() {
            if let Some(stage) = self.incremental_stage(aggregate)? {
                self.check_stream_operators(stage.input())?;
                let incremental =
                    IncrementalAggregate::try_new(stage, plan.schema()).map_err(|e| e.to_string())?;
                let read = incremental.finals_slot().exec(None).map_err(|e| e.to_string())?;
                aggregates.push(incremental);
                return Ok(read);
            }
        }
        let children = plan
            .children()
            .into_iter()
            .map(|child| self.split(child.clone(), aggregates))
            .collect::<std::result::Result<Vec<_>, _>>()?;
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
        let refused = if streaming_children > 1 && !plan.is::<UnionExec>() {
            Some("a join between two streams")
        } else if plan.is::<WindowAggExec>() || plan.is::<BoundedWindowAggExec>() {
            Some("a window function (OVER) over a stream; aggregate with GROUP BY first")
        } else if plan.is::<SortExec>() {
            Some("ORDER BY over stream rows (or an ordered aggregate); order an aggregated view instead")
        } else if plan.is::<GlobalLimitExec>() || plan.is::<LocalLimitExec>() {
            Some("LIMIT over stream rows; limit an aggregated view instead")
        } else {
            None
        };
        if let Some(construct) = refused {
            return Err(format!("{construct} ({})", plan.name()));
        }
        plan.children().into_iter().try_for_each(|c| self.check_stream_operators(c))
    }
}

/// The first function in `plan` (and the views it reads) whose value does not follow
/// from its arguments: `now()`, `current_date()`, `random()`…
fn clock_or_random_function(plan: &LogicalPlan) -> Option<String> {
    let mut found = None;
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            if let Some(view) = scan.source.get_logical_plan() {
                found = clock_or_random_function(&view);
            }
        }
        if found.is_none() {
            node.apply_expressions(|expr| {
                expr.apply(|e| {
                    if let Expr::ScalarFunction(call) = e {
                        if call.func.signature().volatility != Volatility::Immutable {
                            found = Some(call.func.name().to_string());
                        }
                    }
                    Ok(if found.is_some() { TreeNodeRecursion::Stop } else { TreeNodeRecursion::Continue })
                })
            })?;
        }
        Ok(if found.is_some() { TreeNodeRecursion::Stop } else { TreeNodeRecursion::Continue })
    });
    found
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
