//! The most recent rows of each stream, kept for serving (`streams.<name>` over Flight SQL).

use std::collections::VecDeque;
use std::sync::{Arc, RwLock};

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::datasource::TableType;

use crate::snapshot::SnapshotTable;

/// Rows a stream keeps for serving unless `OPTIONS ('recent_rows' 'N')` says otherwise.
pub const DEFAULT_RECENT_ROWS: usize = 10_000;

/// A bounded window of a stream's latest rows; cheap to clone and share.
///
/// ```
/// use std::sync::Arc;
/// use datafusion::arrow::array::Int64Array;
/// use datafusion::arrow::datatypes::{DataType, Field, Schema};
/// use datafusion::arrow::record_batch::RecordBatch;
/// use trendflow_engine::recent::RecentRows;
///
/// let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
/// let recent = RecentRows::new(schema.clone(), 3);
/// for chunk in [vec![1, 2], vec![3, 4, 5]] {
///     recent.push(RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(chunk))]).unwrap());
/// }
/// assert_eq!(recent.snapshot().iter().map(|b| b.num_rows()).sum::<usize>(), 3);
/// ```
#[derive(Debug, Clone)]
pub struct RecentRows {
    schema: SchemaRef,
    capacity: usize,
    batches: Arc<RwLock<VecDeque<RecordBatch>>>,
}

impl RecentRows {
    /// Keeps at most `capacity` rows of `schema`.
    pub fn new(schema: SchemaRef, capacity: usize) -> Self {
        Self { schema, capacity, batches: Arc::default() }
    }

    /// Appends `batch`, dropping the oldest rows beyond the capacity.
    pub fn push(&self, batch: RecordBatch) {
        if self.capacity == 0 || batch.num_rows() == 0 {
            return;
        }
        let batch = if batch.num_rows() > self.capacity { batch.slice(batch.num_rows() - self.capacity, self.capacity) } else { batch };
        let mut batches = self.batches.write().expect("recent rows lock poisoned");
        batches.push_back(batch);
        let mut excess = batches.iter().map(RecordBatch::num_rows).sum::<usize>().saturating_sub(self.capacity);
        while excess > 0 {
            let front = batches.pop_front().expect("rows beyond capacity are in some batch");
            if front.num_rows() > excess {
                batches.push_front(front.slice(excess, front.num_rows() - excess));
                excess = 0;
            } else {
                excess -= front.num_rows();
            }
        }
    }

    /// The rows held now, oldest first.
    pub fn snapshot(&self) -> Vec<RecordBatch> {
        self.batches.read().expect("recent rows lock poisoned").iter().cloned().collect()
    }

    /// A table reading the window as it is when queried.
    pub fn table(&self) -> SnapshotTable {
        let recent = self.clone();
        SnapshotTable::new(self.schema.clone(), TableType::Temporary, None, move || Ok(recent.snapshot()))
    }
}
