//! A shared slot of record batches and the leaf plan node that reads it.
//!
//! Plans are built once at start-up and re-executed for every micro-batch.
//! Their leaves read whatever the slot holds at execution time, so the runtime
//! swaps data in and out without re-planning.

use std::fmt;
use std::sync::{Arc, RwLock};

use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::Result as DfResult;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{reset_plan_states, Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{collect, DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties};

/// Batches shared between the runtime (writer) and plan leaves (readers).
///
/// ```
/// use std::sync::Arc;
/// use datafusion::arrow::array::Int64Array;
/// use datafusion::arrow::datatypes::{DataType, Field, Schema};
/// use datafusion::arrow::record_batch::RecordBatch;
/// use trendflow_engine::slot::BatchSlot;
///
/// let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
/// let slot = BatchSlot::new(schema.clone());
/// let batch = RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![1, 2]))]).unwrap();
/// slot.set(vec![batch]);
/// assert_eq!(slot.num_rows(), 2);
/// ```
#[derive(Debug, Clone)]
pub struct BatchSlot {
    schema: SchemaRef,
    batches: Arc<RwLock<Vec<RecordBatch>>>,
}

impl BatchSlot {
    /// An empty slot whose batches all have `schema`.
    pub fn new(schema: SchemaRef) -> Self {
        Self { schema, batches: Arc::default() }
    }

    /// The schema of every batch in the slot.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Replaces the slot's content.
    pub fn set(&self, batches: Vec<RecordBatch>) {
        *self.batches.write().expect("batch slot lock poisoned") = batches;
    }

    /// Empties the slot.
    pub fn clear(&self) {
        self.set(Vec::new());
    }

    /// A cheap copy of the current batches (batches share their buffers).
    pub fn get(&self) -> Vec<RecordBatch> {
        self.batches.read().expect("batch slot lock poisoned").clone()
    }

    /// Rows currently in the slot.
    pub fn num_rows(&self) -> usize {
        self.batches.read().expect("batch slot lock poisoned").iter().map(|b| b.num_rows()).sum()
    }

    /// True when both handles share the same batches.
    pub fn same_as(&self, other: &BatchSlot) -> bool {
        Arc::ptr_eq(&self.batches, &other.batches)
    }

    /// A leaf plan node that yields the slot's content, projected to `projection`.
    pub fn exec(&self, projection: Option<Vec<usize>>) -> DfResult<Arc<BatchSlotExec>> {
        BatchSlotExec::try_new(self.clone(), projection).map(Arc::new)
    }
}

/// Leaf [`ExecutionPlan`] yielding what its [`BatchSlot`] holds when executed.
#[derive(Debug)]
pub struct BatchSlotExec {
    slot: BatchSlot,
    projection: Option<Vec<usize>>,
    properties: Arc<PlanProperties>,
}

impl BatchSlotExec {
    fn try_new(slot: BatchSlot, projection: Option<Vec<usize>>) -> DfResult<Self> {
        let schema = match &projection {
            Some(p) => Arc::new(slot.schema.project(p)?),
            None => slot.schema.clone(),
        };
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Ok(Self { slot, projection, properties: Arc::new(properties) })
    }
}

/// True when `plan` reads one of `slots` anywhere in its subtree.
pub fn reads_any(plan: &Arc<dyn ExecutionPlan>, slots: &[BatchSlot]) -> bool {
    plan.downcast_ref::<BatchSlotExec>().is_some_and(|scan| slots.iter().any(|s| scan.reads(s)))
        || plan.children().into_iter().any(|c| reads_any(c, slots))
}

/// The columns of `slot`'s schema that the scans of it in `plan` read, in order.
pub fn columns_read(plan: &Arc<dyn ExecutionPlan>, slot: &BatchSlot) -> Vec<usize> {
    let mut columns = Vec::new();
    collect_columns_read(plan, slot, &mut columns);
    columns.sort_unstable();
    columns.dedup();
    columns
}

fn collect_columns_read(plan: &Arc<dyn ExecutionPlan>, slot: &BatchSlot, columns: &mut Vec<usize>) {
    if let Some(scan) = plan.downcast_ref::<BatchSlotExec>().filter(|scan| scan.reads(slot)) {
        match &scan.projection {
            Some(projection) => columns.extend(projection),
            None => columns.extend(0..slot.schema.fields().len()),
        }
    }
    plan.children().into_iter().for_each(|c| collect_columns_read(c, slot, columns));
}

/// Executes a plan built once (whose leaves read slots) and concatenates its output.
pub(crate) async fn run_plan(plan: &Arc<dyn ExecutionPlan>, ctx: &Arc<TaskContext>) -> crate::Result<RecordBatch> {
    let schema = plan.schema();
    let batches = collect(reset_plan_states(plan.clone())?, ctx.clone()).await?;
    Ok(concat_batches(&schema, &batches)?)
}

/// Runs `plan` once with `slot` holding `batches`, then empties the slot again.
pub(crate) async fn run_with(
    slot: &BatchSlot,
    batches: Vec<RecordBatch>,
    plan: &Arc<dyn ExecutionPlan>,
    ctx: &Arc<TaskContext>,
) -> crate::Result<RecordBatch> {
    slot.set(batches);
    let result = run_plan(plan, ctx).await;
    slot.clear();
    result
}

impl BatchSlotExec {
    /// True when this node reads `slot`.
    pub fn reads(&self, slot: &BatchSlot) -> bool {
        self.slot.same_as(slot)
    }
}

impl DisplayAs for BatchSlotExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BatchSlotExec: projection={:?}", self.projection)
    }
}

impl ExecutionPlan for BatchSlotExec {
    fn name(&self) -> &str {
        "BatchSlotExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(&self, _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(self: Arc<Self>, _children: Vec<Arc<dyn ExecutionPlan>>) -> DfResult<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn execute(&self, _partition: usize, _context: Arc<TaskContext>) -> DfResult<SendableRecordBatchStream> {
        let batches = self.slot.get();
        let projected: Vec<DfResult<RecordBatch>> = match &self.projection {
            None => batches.into_iter().map(Ok).collect(),
            Some(p) => batches.iter().map(|b| b.project(p).map_err(Into::into)).collect(),
        };
        let schema = self.properties.eq_properties.schema().clone();
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, futures::stream::iter(projected))))
    }
}
