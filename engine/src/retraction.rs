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
//! - A floating-point sum that loses most of its magnitude in one subtraction would be
//!   left mostly rounding error (`1e20 + 1 - 1e20`); such groups are recomputed from their
//!   rows instead. Otherwise the error stays within a relative 2⁻²⁰ × machine epsilon per
//!   step, well inside the tolerance the tests compare floats with.
//!
//! Any other aggregate in the same `AggregateExec` makes it recompute instead (see
//! [`crate::aggregate::IncrementalAggregate::apply_changes`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    new_null_array, Array, ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, RecordBatchOptions, UInt32Array,
};
use datafusion::arrow::compute::kernels::cmp::eq;
use datafusion::arrow::compute::kernels::numeric::sub_wrapping;
use datafusion::arrow::compute::kernels::zip::zip;
use datafusion::arrow::compute::{cast, filter_record_batch, is_null, nullif, take};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::execution::TaskContext;
use datafusion::functions_aggregate::count::count_udaf;
use datafusion::physical_expr::aggregate::AggregateExprBuilder;
use datafusion::physical_expr::expressions::lit;
use datafusion::physical_plan::aggregates::AggregateExec;
use datafusion::physical_plan::udaf::AggregateFunctionExpr;
use datafusion::physical_plan::{ExecutionPlan, PhysicalExpr};

use crate::error::{EngineError, Result};
use crate::keyed::{RowEncoder, RowMap};
use crate::slot::{run_with, BatchSlot};

/// A float sum whose magnitude shrinks by more than this factor in one subtraction is
/// recomputed from its group's rows.
const CANCELLATION: f64 = (1u64 << 20) as f64;

/// Aggregate expressions with their FILTER clauses, as an `AggregateExec` takes them.
pub(crate) type Aggregates = (Vec<Arc<AggregateFunctionExpr>>, Vec<Option<Arc<dyn PhysicalExpr>>>);

/// The aggregates of `aggregate` extended by the hidden counts retraction needs, with
/// their filters, or `None` when some aggregate cannot retract (see the module docs).
pub(crate) fn with_hidden_counts(aggregate: &AggregateExec) -> Result<Option<Aggregates>> {
    if !aggregate.group_expr().is_single() {
        return Ok(None);
    }
    let filters = aggregate.filter_expr();
    for (expr, filter) in aggregate.aggr_expr().iter().zip(filters) {
        if kind(expr, filter.is_some()).is_none() {
            return Ok(None);
        }
    }
    let schema = aggregate.input_schema();
    let count = |args: Vec<Arc<dyn PhysicalExpr>>, name: String| -> Result<Arc<AggregateFunctionExpr>> {
        Ok(Arc::new(AggregateExprBuilder::new(count_udaf(), args).schema(schema.clone()).alias(name).build()?))
    };
    let mut exprs = aggregate.aggr_expr().to_vec();
    let mut hidden_filters = filters.to_vec();
    exprs.push(count(vec![lit(1i64)], "__trendflow_rows".into())?);
    hidden_filters.push(None);
    for (i, (expr, filter)) in aggregate.aggr_expr().iter().zip(filters).enumerate() {
        if kind(expr, filter.is_some()) == Some(Kind::Sum) {
            exprs.push(count(expr.expressions(), format!("__trendflow_values_{i}"))?);
            hidden_filters.push(filter.clone());
        }
    }
    Ok(Some((exprs, hidden_filters)))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Count,
    Sum,
    Avg,
    Min,
    Max,
}

/// How `expr` retracts, if it can: MIN and MAX only without a FILTER clause (their value
/// sets hold every row's value).
fn kind(expr: &AggregateFunctionExpr, filtered: bool) -> Option<Kind> {
    if expr.is_distinct() {
        return None;
    }
    let states = expr.state_fields().ok()?;
    let numeric = |f: &Field| f.data_type().is_numeric();
    match (expr.fun().name(), states.as_slice()) {
        ("count", [count]) if count.data_type() == &DataType::Int64 => Some(Kind::Count),
        ("sum", [sum]) if numeric(sum) => Some(Kind::Sum),
        ("avg", [count, sum]) if count.data_type() == &DataType::UInt64 && numeric(sum) => Some(Kind::Avg),
        ("min", [_]) if !filtered && expr.expressions().len() == 1 => Some(Kind::Min),
        ("max", [_]) if !filtered && expr.expressions().len() == 1 => Some(Kind::Max),
        _ => None,
    }
}

/// What a state column does when rows leave its group.
#[derive(Debug, Clone, Copy)]
enum StateColumn {
    /// A count or a sum: the retracted rows' partial state is subtracted. It is null
    /// where the count in state column `null_when_zero` became 0.
    Additive { null_when_zero: Option<usize> },
    /// MIN (`max` false) or MAX: the extreme of value set `set`.
    Extreme { set: usize, max: bool },
}

/// Row-encoded values with their multiplicities, in value order.
type Multiset = BTreeMap<Box<[u8]>, u64>;

/// The values of one MIN/MAX argument per group, with their multiplicities.
#[derive(Debug)]
struct GroupValues {
    argument: Arc<dyn PhysicalExpr>,
    converter: RowConverter,
    /// Group key → value (row-encoded, so ordered as the values are) → multiplicity.
    groups: RowMap<Box<[u8]>, Multiset>,
}

impl GroupValues {
    /// Adds (`add`) or removes the values of `rows` (the aggregate's input rows)
    /// whose group keys are `keys`.
    fn update(&mut self, rows: &RecordBatch, keys: &crate::keyed::EncodedRows, add: bool) -> Result<()> {
        let values = self.argument.evaluate(rows)?.into_array(rows.num_rows())?;
        let encoded = self.converter.convert_columns(std::slice::from_ref(&values))?;
        for row in 0..rows.num_rows() {
            if values.is_null(row) {
                continue;
            }
            let key = keys.get(row);
            let value = encoded.row(row);
            if add {
                let group = match self.groups.get_mut(key) {
                    Some(group) => group,
                    None => self.groups.entry(key.into()).or_default(),
                };
                *group.entry(value.data().into()).or_insert(0) += 1;
                continue;
            }
            let group = self.groups.get_mut(key).ok_or_else(|| EngineError::internal("a retracted value of a group never seen"))?;
            let count = group.get_mut(value.data()).ok_or_else(|| EngineError::internal("a retracted value never added"))?;
            *count -= 1;
            if *count == 0 {
                group.remove(value.data());
                if group.is_empty() {
                    self.groups.remove(key);
                }
            }
        }
        Ok(())
    }

    /// The least (or greatest, `max`) value of each group in `keys`, null for a group
    /// without values, as an array of `data_type`.
    fn extremes(&self, keys: &crate::keyed::EncodedRows, max: bool, data_type: &DataType) -> Result<ArrayRef> {
        let parser = self.converter.parser();
        let mut found = Vec::new();
        let indices: UInt32Array = (0..keys.len())
            .map(|i| {
                let group = self.groups.get(keys.get(i))?;
                let (value, _) = if max { group.last_key_value() } else { group.first_key_value() }?;
                found.push(parser.parse(value));
                Some(found.len() as u32 - 1)
            })
            .collect();
        if found.is_empty() {
            return Ok(new_null_array(data_type, keys.len()));
        }
        let values = self.converter.convert_rows(found)?.remove(0);
        Ok(cast(&take(&values, &indices, None)?, data_type)?)
    }
}

/// Retraction for one incrementally maintained aggregate whose state has the hidden
/// counts of [`with_hidden_counts`].
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
    /// Retraction for `aggregate` whose state has the aggregates `exprs` (from
    /// [`with_hidden_counts`]); `partial` builds the `Partial` aggregate over a given input.
    pub(crate) fn try_new(
        aggregate: &AggregateExec,
        exprs: &[Arc<AggregateFunctionExpr>],
        partial: impl FnOnce(Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>>,
    ) -> Result<Self> {
        let group_columns = aggregate.group_expr().expr().len();
        let original = aggregate.aggr_expr().len();
        let rows = BatchSlot::new(aggregate.input().schema());
        let read_rows: Arc<dyn ExecutionPlan> = rows.exec(None)?;
        let partial = partial(read_rows)?;
        let state = partial.schema();
        let mut columns = Vec::new();
        let mut values: Vec<GroupValues> = Vec::new();
        let mut hidden_values =
            group_columns + exprs[..original].iter().map(|e| e.state_fields().map(|f| f.len())).sum::<std::result::Result<usize, _>>()? + 1;
        for (expr, filter) in exprs[..original].iter().zip(aggregate.filter_expr()) {
            let at = group_columns + columns.len();
            match kind(expr, filter.is_some()).ok_or_else(|| EngineError::internal("an aggregate that cannot retract"))? {
                Kind::Count => columns.push(StateColumn::Additive { null_when_zero: None }),
                Kind::Sum => {
                    columns.push(StateColumn::Additive { null_when_zero: Some(hidden_values) });
                    hidden_values += 1;
                }
                Kind::Avg => {
                    columns.push(StateColumn::Additive { null_when_zero: Some(at) });
                    columns.push(StateColumn::Additive { null_when_zero: Some(at) });
                }
                extreme @ (Kind::Min | Kind::Max) => {
                    let argument = expr.expressions().remove(0);
                    let set = match values.iter().position(|v| v.argument.as_ref() == argument.as_ref()) {
                        Some(set) => set,
                        None => {
                            let data_type = argument.data_type(&aggregate.input().schema())?;
                            values.push(GroupValues {
                                argument,
                                converter: RowConverter::new(vec![SortField::new(data_type)])?,
                                groups: RowMap::default(),
                            });
                            values.len() - 1
                        }
                    };
                    columns.push(StateColumn::Extreme { set, max: extreme == Kind::Max });
                }
            }
        }
        let row_count = group_columns + columns.len();
        while group_columns + columns.len() < state.fields().len() {
            columns.push(StateColumn::Additive { null_when_zero: None });
        }
        let group_exprs = aggregate.group_expr().expr().iter().map(|(e, _)| e.clone()).collect();
        Ok(Self { group_columns, input: aggregate.input().clone(), group_exprs, partial, rows, columns, row_count, values, built: false })
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
        self.values.iter_mut().for_each(|v| v.groups.clear());
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
        let encoder = RowEncoder::new(&merged.schema(), (0..g).collect())?;
        let keys = encoder.encode(merged)?;
        let stored = RowEncoder::new(&retracted.schema(), (0..g).collect())?.encode(retracted)?;
        let position: RowMap<&[u8], u32> = (0..stored.len()).map(|i| (stored.get(i), i as u32)).collect();
        let aligned: UInt32Array = (0..keys.len()).map(|i| position.get(keys.get(i)).copied()).collect();
        let mut columns: Vec<ArrayRef> = merged.columns().to_vec();
        let mut cancelled = vec![false; merged.num_rows()];
        for (j, column) in self.columns.iter().enumerate().map(|(j, c)| (g + j, c)) {
            if let StateColumn::Additive { .. } = column {
                let less = take(retracted.column(j), &aligned, None)?;
                let difference = sub_wrapping(merged.column(j), &less)?;
                flag_cancelled(merged.column(j), &less, &difference, &mut cancelled)?;
                columns[j] = zip(&is_null(&less)?, merged.column(j), &difference)?;
            }
        }
        let zero = |column: usize| -> Result<BooleanArray> {
            let counts = cast(&columns[column], &DataType::Int64)?;
            Ok(eq(&counts, &Int64Array::new_scalar(0))?)
        };
        let mut nulled = columns.clone();
        for (j, column) in self.columns.iter().enumerate().map(|(j, c)| (g + j, c)) {
            match *column {
                StateColumn::Additive { null_when_zero: Some(count) } => nulled[j] = nullif(&columns[j], &zero(count)?)?,
                StateColumn::Additive { null_when_zero: None } => {}
                StateColumn::Extreme { set, max } => nulled[j] = self.values[set].extremes(&keys, max, merged.schema().field(j).data_type())?,
            }
        }
        let empty = zero(self.row_count)?;
        let state = RecordBatch::try_new(merged.schema(), nulled)?;
        // A global aggregate keeps its one row without rows: the state of no rows.
        let gone: Vec<bool> = empty.iter().map(|empty| g > 0 && empty.unwrap_or(false)).collect();
        let recompute: Vec<bool> = empty.iter().zip(&cancelled).map(|(empty, cancelled)| *cancelled && !empty.unwrap_or(false)).collect();
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

/// Marks in `cancelled` the rows where the float `difference = merged - less` kept less
/// than 1/[`CANCELLATION`] of the magnitude it came from.
fn flag_cancelled(merged: &ArrayRef, less: &ArrayRef, difference: &ArrayRef, cancelled: &mut [bool]) -> Result<()> {
    if !matches!(merged.data_type(), DataType::Float16 | DataType::Float32 | DataType::Float64) {
        return Ok(());
    }
    let as_f64 = |a: &ArrayRef| -> Result<Float64Array> {
        Ok(cast(a, &DataType::Float64)?.as_any().downcast_ref::<Float64Array>().cloned().expect("cast to Float64"))
    };
    let (merged, less, difference) = (as_f64(merged)?, as_f64(less)?, as_f64(difference)?);
    for (row, flag) in cancelled.iter_mut().enumerate() {
        if less.is_valid(row) && difference.is_valid(row) {
            let magnitude = merged.value(row).abs() + less.value(row).abs();
            *flag |= difference.value(row).abs() * CANCELLATION < magnitude;
        }
    }
    Ok(())
}
