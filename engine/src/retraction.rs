//! Retracting rows from an aggregate's state without recomputing its groups.
//!
//! A changelog micro-batch replaces or deletes rows, and their old contribution must
//! leave every group they were in. Recomputing those groups from the table's current
//! rows is exact for every aggregate but costs the whole table per micro-batch (random
//! updates touch nearly every group). For the aggregates that allow it, the rows leave
//! the state directly:
//!
//! - `COUNT`, `SUM` and `AVG` (not `DISTINCT`) subtract the retracted rows' partial state
//!   from the group's, column by column.
//! - `MIN` and `MAX` keep each group's values with their multiplicities, so a retracted
//!   extreme gives way to the next one. These value sets are derived state: rebuilt from
//!   the table's rows after a restore rather than checkpointed.
//! - Hidden counts ride along in the state: `COUNT(*)` says when a group lost its last
//!   row (it goes, as in a batch run), and `COUNT(x)` per `SUM(x)` says when a sum lost its
//!   last non-null value (it is null again).
//! - A floating-point sum keeps a bound on its accumulated rounding error (a hidden
//!   column raised by each subtraction by a rounding unit of its operands' magnitude).
//!   Once the bound exceeds 2⁻³² of the sum (`1e20 + 1.5 - 1e20` leaves rounding error,
//!   not 1.5), or the sum is not finite (an infinity does not subtract back out), the
//!   group is recomputed from its rows, which resets the bound. Sums of decimals
//!   recompute (their subtraction would widen the type).
//!
//! Any other aggregate in the same `AggregateExec` makes it recompute instead (see
//! [`crate::aggregate::IncrementalAggregate::apply_changes`]).

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, RecordBatchOptions, UInt32Array};
use datafusion::arrow::compute::kernels::cmp::eq;
use datafusion::arrow::compute::kernels::numeric::sub_wrapping;
use datafusion::arrow::compute::kernels::zip::zip;
use datafusion::arrow::compute::{cast, filter_record_batch, is_null, nullif, take};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::execution::TaskContext;
use datafusion::functions_aggregate::count::count_udaf;
use datafusion::functions_aggregate::sum::sum_udaf;
use datafusion::logical_expr::AggregateUDF;
use datafusion::physical_expr::aggregate::AggregateExprBuilder;
use datafusion::physical_expr::expressions::lit;
use datafusion::physical_plan::aggregates::AggregateExec;
use datafusion::physical_plan::udaf::AggregateFunctionExpr;
use datafusion::physical_plan::{ExecutionPlan, PhysicalExpr};

use crate::error::{EngineError, Result};
use crate::extremes::GroupValues;
use crate::keyed::{RowEncoder, RowMap};
use crate::slot::{run_with, BatchSlot};

/// A float sum is recomputed from its group's rows once the bound on its accumulated
/// rounding error exceeds this fraction of its value (2⁻³², about 2.3e-10).
const RELATIVE_ERROR: f64 = 1.0 / (1u64 << 32) as f64;

/// Aggregate expressions with their FILTER clauses, as an `AggregateExec` takes them.
pub(crate) type Aggregates = (Vec<Arc<AggregateFunctionExpr>>, Vec<Option<Arc<dyn PhysicalExpr>>>);

/// How an aggregate's state retracts: its aggregates extended by hidden ones, and what
/// each state column does.
#[derive(Debug)]
pub(crate) struct Layout {
    /// The aggregates, the original ones first, and their FILTER clauses.
    pub aggregates: Aggregates,
    /// What each state column after the group columns does.
    columns: Vec<StateColumn>,
    /// State column of the hidden `COUNT(*)`.
    row_count: usize,
    /// The distinct arguments of MIN and MAX (one value set each).
    extremes: Vec<Arc<dyn PhysicalExpr>>,
}

/// The layout retraction needs for `aggregate`, or `None` when some aggregate cannot
/// retract (see the module docs). Hidden aggregates come after the original ones:
/// `COUNT(*)`; per `SUM(x)`, `COUNT(x)` with the same FILTER; per float sum (of SUM or
/// AVG), a `SUM(0.0)` whose state column holds the bound on the sum's rounding error.
pub(crate) fn layout(aggregate: &AggregateExec) -> Result<Option<Layout>> {
    if !aggregate.group_expr().is_single() {
        return Ok(None);
    }
    let (originals, filters) = (aggregate.aggr_expr(), aggregate.filter_expr());
    let Some(kinds) = originals.iter().zip(filters).map(|(e, f)| kind(e, f.is_some())).collect::<Option<Vec<Kind>>>() else {
        return Ok(None);
    };
    let group_columns = aggregate.group_expr().expr().len();
    let original_states = originals.iter().map(|e| e.state_fields().map(|f| f.len())).sum::<std::result::Result<usize, _>>()?;
    let mut hidden = HiddenAggregates {
        schema: aggregate.input_schema(),
        aggregates: (originals.to_vec(), filters.to_vec()),
        // A placeholder for each original state column: the loop below sets every one.
        columns: vec![StateColumn::ErrorBound; original_states],
        group_columns,
    };
    let row_count = hidden.count(vec![lit(1i64)], None, "__trendflow_rows".into())?;
    let mut extremes: Vec<Arc<dyn PhysicalExpr>> = Vec::new();
    let mut at = 0;
    for (i, ((expr, filter), kind)) in originals.iter().zip(filters).zip(kinds).enumerate() {
        let states = expr.state_fields()?;
        let column = match kind {
            Kind::Count => StateColumn::Additive { null_when_zero: None, error_bound: None },
            Kind::Sum => StateColumn::Additive {
                null_when_zero: Some(hidden.count(expr.expressions(), filter.clone(), format!("__trendflow_values_{i}"))?),
                error_bound: hidden.error_bound(&states[0], i)?,
            },
            Kind::Avg => {
                // The count, then the sum, both null when the count is 0.
                let count = group_columns + at;
                hidden.columns[at] = StateColumn::Additive { null_when_zero: Some(count), error_bound: None };
                at += 1;
                StateColumn::Additive { null_when_zero: Some(count), error_bound: hidden.error_bound(&states[1], i)? }
            }
            Kind::Min | Kind::Max => {
                let argument = expr.expressions().remove(0);
                let set = extremes.iter().position(|a| a.as_ref() == argument.as_ref()).unwrap_or_else(|| {
                    extremes.push(argument);
                    extremes.len() - 1
                });
                StateColumn::Extreme { set, max: kind == Kind::Max }
            }
        };
        hidden.columns[at] = column;
        at += 1;
    }
    let HiddenAggregates { aggregates, columns, .. } = hidden;
    Ok(Some(Layout { aggregates, columns, row_count, extremes }))
}

/// Builds the hidden aggregates of a [`Layout`].
struct HiddenAggregates {
    schema: SchemaRef,
    aggregates: Aggregates,
    columns: Vec<StateColumn>,
    group_columns: usize,
}

impl HiddenAggregates {
    /// Adds the hidden count `COUNT(args)` (one state column); returns its state column.
    fn count(&mut self, args: Vec<Arc<dyn PhysicalExpr>>, filter: Option<Arc<dyn PhysicalExpr>>, name: String) -> Result<usize> {
        self.add(count_udaf(), args, filter, name, StateColumn::Additive { null_when_zero: None, error_bound: None })
    }

    /// Adds the hidden aggregate `fun(args)` (one state column, doing `column`); returns
    /// its state column.
    fn add(
        &mut self,
        fun: Arc<AggregateUDF>,
        args: Vec<Arc<dyn PhysicalExpr>>,
        filter: Option<Arc<dyn PhysicalExpr>>,
        name: String,
        column: StateColumn,
    ) -> Result<usize> {
        let expr = AggregateExprBuilder::new(fun, args).schema(self.schema.clone()).alias(name).build()?;
        self.aggregates.0.push(Arc::new(expr));
        self.aggregates.1.push(filter);
        self.columns.push(column);
        Ok(self.group_columns + self.columns.len() - 1)
    }

    /// For a float sum (state field `sum` of aggregate `i`), the column of its error bound.
    fn error_bound(&mut self, sum: &Field, i: usize) -> Result<Option<usize>> {
        if !sum.data_type().is_floating() {
            return Ok(None);
        }
        self.add(sum_udaf(), vec![lit(0.0f64)], None, format!("__trendflow_error_{i}"), StateColumn::ErrorBound).map(Some)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Count,
    Sum,
    Avg,
    Min,
    Max,
}

/// How `expr` retracts, if it can: sums of integers and floats (a decimal sum's
/// subtraction widens its type, so those recompute), MIN and MAX only without a FILTER
/// clause (their value sets hold every row's value).
fn kind(expr: &AggregateFunctionExpr, filtered: bool) -> Option<Kind> {
    if expr.is_distinct() {
        return None;
    }
    let states = expr.state_fields().ok()?;
    let summable = |f: &Field| f.data_type().is_integer() || f.data_type().is_floating();
    match (expr.fun().name(), states.as_slice()) {
        ("count", [count]) if count.data_type() == &DataType::Int64 => Some(Kind::Count),
        ("sum", [sum]) if summable(sum) => Some(Kind::Sum),
        ("avg", [count, sum]) if count.data_type() == &DataType::UInt64 && summable(sum) => Some(Kind::Avg),
        ("min", [_]) if !filtered && expr.expressions().len() == 1 => Some(Kind::Min),
        ("max", [_]) if !filtered && expr.expressions().len() == 1 => Some(Kind::Max),
        _ => None,
    }
}

/// What a state column does when rows leave its group.
#[derive(Debug, Clone, Copy)]
enum StateColumn {
    /// A count or a sum: the retracted rows' partial state is subtracted. It is null
    /// where the count in state column `null_when_zero` became 0. A float sum has its
    /// rounding-error bound in state column `error_bound`.
    Additive { null_when_zero: Option<usize>, error_bound: Option<usize> },
    /// MIN (`max` false) or MAX: the extreme of value set `set`.
    Extreme { set: usize, max: bool },
    /// The bound on a float sum's accumulated rounding error (a hidden `SUM(0.0)`, so 0
    /// after a recompute): the sum's subtraction raises it.
    ErrorBound,
}

/// Retraction for one incrementally maintained aggregate whose state is laid out by
/// [`layout`].
#[derive(Debug)]
pub(crate) struct Retraction {
    group_columns: usize,
    /// The aggregate's input, reading the stream slot.
    input: Arc<dyn ExecutionPlan>,
    group_exprs: Vec<Arc<dyn PhysicalExpr>>,
    /// The `Partial` aggregate over input rows put in `rows`.
    partial: Arc<dyn ExecutionPlan>,
    rows: BatchSlot,
    /// What each state column after the group columns does.
    columns: Vec<StateColumn>,
    /// State column of the hidden `COUNT(*)`.
    row_count: usize,
    values: Vec<GroupValues>,
    /// Whether `values` hold every group's values (false after a restore or a recompute,
    /// until the next micro-batch rebuilds them from the table).
    built: bool,
}

impl Retraction {
    /// Retraction for `aggregate` whose state is laid out as `layout` says; `partial`
    /// builds the `Partial` aggregate over a given input.
    pub(crate) fn try_new(
        aggregate: &AggregateExec,
        layout: Layout,
        partial: impl FnOnce(Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>>,
    ) -> Result<Self> {
        let input_schema = aggregate.input().schema();
        let rows = BatchSlot::new(input_schema.clone());
        let read_rows: Arc<dyn ExecutionPlan> = rows.exec(None)?;
        let values = layout.extremes.into_iter().map(|argument| GroupValues::new(argument, &input_schema)).collect::<Result<Vec<_>>>()?;
        Ok(Self {
            group_columns: aggregate.group_expr().expr().len(),
            input: aggregate.input().clone(),
            group_exprs: aggregate.group_expr().expr().iter().map(|(e, _)| e.clone()).collect(),
            partial: partial(read_rows)?,
            rows,
            columns: layout.columns,
            row_count: layout.row_count,
            values,
            built: false,
        })
    }

    /// The aggregate's input rows for the stream rows `batch` (put in `slot`).
    pub(crate) async fn input_rows(&self, slot: &BatchSlot, batch: &RecordBatch, ctx: &Arc<TaskContext>) -> Result<RecordBatch> {
        run_with(slot, vec![batch.clone()], &self.input, ctx).await
    }

    /// The partial state of input rows `rows`, one row per group (before any merge).
    pub(crate) async fn partial(&self, rows: &RecordBatch, ctx: &Arc<TaskContext>) -> Result<RecordBatch> {
        run_with(&self.rows, vec![rows.clone()], &self.partial, ctx).await
    }

    /// Forgets the value sets: they are rebuilt from the table on the next micro-batch.
    pub(crate) fn invalidate(&mut self) {
        self.built = false;
        self.values.iter_mut().for_each(GroupValues::clear);
    }

    /// Whether the value sets must be rebuilt from the whole table (see [`Self::rebuild`]).
    pub(crate) fn needs_rebuild(&self) -> bool {
        !self.built && !self.values.is_empty()
    }

    /// Rebuilds the value sets from `rows`, every input row of the aggregate now.
    pub(crate) fn rebuild(&mut self, rows: &RecordBatch) -> Result<()> {
        self.invalidate();
        let keys = self.group_keys(rows)?;
        for values in &mut self.values {
            values.update(rows, &keys, true)?;
        }
        self.built = true;
        Ok(())
    }

    /// Follows one micro-batch in the value sets: input rows `retracted` leave, `added` come.
    pub(crate) fn update(&mut self, retracted: &RecordBatch, added: &RecordBatch) -> Result<()> {
        if self.values.is_empty() {
            return Ok(());
        }
        let (gone, new) = (self.group_keys(retracted)?, self.group_keys(added)?);
        for values in &mut self.values {
            values.update(retracted, &gone, false)?;
            values.update(added, &new, true)?;
        }
        Ok(())
    }

    /// The state `merged` (stored state with the added rows merged in, one row per touched
    /// group) less the partial state `retracted`. Returns the new state of the groups
    /// that still have rows, the keys of those left without any (not for a global
    /// aggregate: its one row stays), and the keys of groups whose float sums must be
    /// recomputed.
    pub(crate) fn subtract(&self, merged: &RecordBatch, retracted: &RecordBatch) -> Result<Subtracted> {
        let g = self.group_columns;
        let keys = RowEncoder::new(&merged.schema(), (0..g).collect())?.encode(merged)?;
        let aligned = align(&keys, retracted, g)?;
        let mut columns: Vec<ArrayRef> = merged.columns().to_vec();
        for (j, column) in self.columns.iter().enumerate().map(|(j, c)| (g + j, c)) {
            if let StateColumn::Additive { error_bound, .. } = *column {
                let less = take(retracted.column(j), &aligned, None)?;
                if let Some(bound) = error_bound {
                    columns[bound] = raised_error_bound(merged.column(j), &less, merged.column(bound))?;
                }
                columns[j] = zip(&is_null(&less)?, merged.column(j), &sub_wrapping(merged.column(j), &less)?)?;
            }
        }
        let zero = |column: usize| -> Result<BooleanArray> {
            let counts = cast(&columns[column], &DataType::Int64)?;
            Ok(eq(&counts, &Int64Array::new_scalar(0))?)
        };
        let mut nulled = columns.clone();
        for (j, column) in self.columns.iter().enumerate().map(|(j, c)| (g + j, c)) {
            match *column {
                StateColumn::Additive { null_when_zero: Some(count), .. } => nulled[j] = nullif(&columns[j], &zero(count)?)?,
                StateColumn::Extreme { set, max } => nulled[j] = self.values[set].extremes(&keys, max, merged.schema().field(j).data_type())?,
                StateColumn::Additive { null_when_zero: None, .. } | StateColumn::ErrorBound => {}
            }
        }
        let mut inexact = vec![false; merged.num_rows()];
        for (j, column) in self.columns.iter().enumerate().map(|(j, c)| (g + j, c)) {
            if let StateColumn::Additive { error_bound: Some(bound), .. } = *column {
                flag_inexact(&nulled[j], &nulled[bound], &mut inexact)?;
            }
        }
        let empty = zero(self.row_count)?;
        let state = RecordBatch::try_new(merged.schema(), nulled)?;
        // A global aggregate keeps its one row without rows: the state of no rows.
        let gone: Vec<bool> = empty.iter().map(|empty| g > 0 && empty.unwrap_or(false)).collect();
        let recompute: Vec<bool> = empty.iter().zip(&inexact).map(|(empty, inexact)| *inexact && !empty.unwrap_or(false)).collect();
        let live: BooleanArray = gone.iter().zip(&recompute).map(|(gone, recompute)| Some(!gone && !recompute)).collect();
        let keys_where = |mask: Vec<bool>| -> Result<RecordBatch> { key_columns(&filter_record_batch(&state, &BooleanArray::from(mask))?, g) };
        Ok(Subtracted { live: filter_record_batch(&state, &live)?, gone: keys_where(gone)?, recompute: keys_where(recompute)? })
    }

    /// The group keys of input rows `rows`, encoded as the state's group columns are.
    fn group_keys(&self, rows: &RecordBatch) -> Result<crate::keyed::EncodedRows> {
        let columns =
            self.group_exprs.iter().map(|e| e.evaluate(rows)?.into_array(rows.num_rows())).collect::<datafusion::error::Result<Vec<_>>>()?;
        let fields: Vec<Field> = columns.iter().enumerate().map(|(i, c)| Field::new(format!("g{i}"), c.data_type().clone(), true)).collect();
        let schema: SchemaRef = Arc::new(Schema::new(fields));
        let options = RecordBatchOptions::new().with_row_count(Some(rows.num_rows()));
        let keys = RecordBatch::try_new_with_options(schema.clone(), columns, &options)?;
        Ok(RowEncoder::new(&schema, (0..self.group_columns).collect())?.encode(&keys)?)
    }
}

/// What [`Retraction::subtract`] leaves.
#[derive(Debug)]
pub(crate) struct Subtracted {
    /// New state of the groups that keep rows (and whose sums need no recompute).
    pub live: RecordBatch,
    /// Key columns of the groups left without rows.
    pub gone: RecordBatch,
    /// Key columns of the groups whose float sums lost too much to cancellation.
    pub recompute: RecordBatch,
}

/// The first `width` columns of `batch`, keeping its row count.
fn key_columns(batch: &RecordBatch, width: usize) -> Result<RecordBatch> {
    Ok(crate::keyed::project_columns(batch, &(0..width).collect::<Vec<_>>())?)
}

/// For each row of `keys` (encoded groups), the row of `retracted` (partial states, one
/// per group, first `width` columns the group) of the same group, or null.
fn align(keys: &crate::keyed::EncodedRows, retracted: &RecordBatch, width: usize) -> Result<UInt32Array> {
    let groups = RowEncoder::new(&retracted.schema(), (0..width).collect())?.encode(retracted)?;
    let mut position: RowMap<&[u8], u32> = RowMap::with_capacity_and_hasher(groups.len(), Default::default());
    for i in 0..groups.len() {
        if position.insert(groups.get(i), i as u32).is_some() {
            return Err(EngineError::internal("a partial aggregate emitted two rows for one group"));
        }
    }
    Ok((0..keys.len()).map(|i| position.get(keys.get(i)).copied()).collect())
}

/// Floats as `f64`s.
fn as_f64(array: &ArrayRef) -> Result<Float64Array> {
    Ok(cast(array, &DataType::Float64)?.as_any().downcast_ref::<Float64Array>().cloned().expect("cast to Float64"))
}

/// The error bound `bound` of float sums `merged` raised by subtracting `less` (where
/// not null): each subtraction may err by a rounding unit of its operands' magnitude.
fn raised_error_bound(merged: &ArrayRef, less: &ArrayRef, bound: &ArrayRef) -> Result<ArrayRef> {
    let (merged, less, bound) = (as_f64(merged)?, as_f64(less)?, as_f64(bound)?);
    let raised: Float64Array = (0..merged.len())
        .map(|row| {
            let bound = if bound.is_valid(row) { bound.value(row) } else { 0.0 };
            let magnitude = |a: &Float64Array| if a.is_valid(row) { a.value(row).abs() } else { 0.0 };
            Some(if less.is_valid(row) { bound + f64::EPSILON * (magnitude(&merged) + magnitude(&less)) } else { bound })
        })
        .collect();
    Ok(Arc::new(raised))
}

/// Marks in `inexact` the rows whose float sum `sums` (where not null) is not finite (an
/// infinity or NaN does not subtract back out) or may be off by more than
/// [`RELATIVE_ERROR`] of itself, given its error bound `bounds`.
fn flag_inexact(sums: &ArrayRef, bounds: &ArrayRef, inexact: &mut [bool]) -> Result<()> {
    let (sums, bounds) = (as_f64(sums)?, as_f64(bounds)?);
    for (row, flag) in inexact.iter_mut().enumerate() {
        if sums.is_valid(row) {
            let (sum, bound) = (sums.value(row), if bounds.is_valid(row) { bounds.value(row) } else { 0.0 });
            *flag |= !sum.is_finite() || bound > sum.abs() * RELATIVE_ERROR;
        }
    }
    Ok(())
}
