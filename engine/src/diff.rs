//! Changesets as the difference between two sets of a view's rows, matched by the view key.

use datafusion::arrow::array::UInt32Array;
use datafusion::arrow::compute::take_record_batch;
use datafusion::arrow::record_batch::RecordBatch;

use crate::contract::{Changeset, ViewInfo};
use crate::error::{EngineError, Result};
use crate::keyed::{project_columns, take_rows, EncodedRows, RowEncoder, RowKey, RowMap};

/// Rows of a view indexed by key, with their encoded values, ready to be diffed.
#[derive(Debug)]
pub(crate) struct IndexedRows {
    pub(crate) batch: RecordBatch,
    index: RowMap<RowKey, usize>,
    /// Encoded full rows of `batch`, to compare values without re-encoding them.
    rows: EncodedRows,
}

/// Diffs sets of rows of one view.
#[derive(Debug)]
pub(crate) struct Differ {
    view: String,
    key: Vec<usize>,
    key_encoder: RowEncoder,
    row_encoder: RowEncoder,
}

impl Differ {
    pub(crate) fn new(info: &ViewInfo) -> Result<Self> {
        let width = info.schema.fields().len();
        Ok(Self {
            view: info.name.clone(),
            key: info.key.clone(),
            key_encoder: RowEncoder::new(&info.schema, info.key.clone())?,
            row_encoder: RowEncoder::new(&info.schema, (0..width).collect())?,
        })
    }

    /// Indexes `batch` by key; two rows with one key are an error naming the view.
    pub(crate) fn index(&self, batch: RecordBatch) -> Result<IndexedRows> {
        let keys = self.key_encoder.encode(&batch)?;
        let mut index = RowMap::with_capacity_and_hasher(keys.len(), Default::default());
        for i in 0..keys.len() {
            if index.insert(RowKey::from(keys.get(i)), i).is_some() {
                return Err(EngineError::DataFusion(datafusion::error::DataFusionError::Execution(format!(
                    "view `{}` produced two rows for its key columns {:?}",
                    self.view,
                    self.key.iter().map(|&k| batch.schema().field(k).name().clone()).collect::<Vec<_>>()
                ))));
            }
        }
        let rows = self.row_encoder.encode(&batch)?;
        Ok(IndexedRows { batch, index, rows })
    }

    /// What turns `before` into `after`: the rows of `after` that are new or changed,
    /// and the keys of `before` that `after` lacks.
    pub(crate) fn diff(&self, before: &IndexedRows, after: &IndexedRows) -> Result<Changeset> {
        let mut upserts: Vec<u32> = after
            .index
            .iter()
            .filter(|(key, &i)| before.index.get(*key).is_none_or(|&j| before.rows.get(j) != after.rows.get(i)))
            .map(|(_, &i)| i as u32)
            .collect();
        upserts.sort_unstable();
        let mut gone: Vec<u32> = before.index.iter().filter(|(key, _)| !after.index.contains_key(*key)).map(|(_, &j)| j as u32).collect();
        gone.sort_unstable();
        Ok(Changeset {
            upserts: take_record_batch(&after.batch, &UInt32Array::from(upserts))?,
            deletes: take_rows(&project_columns(&before.batch, &self.key)?, &UInt32Array::from(gone))?,
        })
    }
}
