//! Tables of Arrow rows addressed by a key: aggregate state, finalized
//! aggregates, and the current result of each view.
//!
//! Rows live in immutable chunks; an upsert appends a chunk and re-points the
//! index, so an update costs O(rows changed), not O(table). Dead rows are
//! dropped by compaction once they outnumber the live ones.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, BooleanArray, RecordBatch, RecordBatchOptions, UInt32Array};
use datafusion::arrow::compute::{filter_record_batch, interleave_record_batch, take_record_batch};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::row::{RowConverter, Rows, SortField};

/// A map keyed by encoded rows, with a fast seeded hasher (keys come from the data).
pub(crate) type RowMap<K, V> = HashMap<K, V, ahash::RandomState>;

/// Encodes chosen columns of a batch as comparable byte strings.
///
/// With no columns every row gets the same (empty) key, which is what a
/// global aggregate (`SELECT COUNT(*) FROM t`) needs.
#[derive(Debug)]
pub struct RowEncoder {
    columns: Vec<usize>,
    converter: Option<RowConverter>,
}

/// Byte-string keys of the rows of one batch.
#[derive(Debug)]
pub enum EncodedRows {
    /// Rows encoded by Arrow's row format.
    Rows(Rows),
    /// `n` rows, all with the empty key.
    Empty(usize),
}

impl EncodedRows {
    /// Number of rows.
    pub fn len(&self) -> usize {
        match self {
            Self::Rows(rows) => rows.num_rows(),
            Self::Empty(n) => *n,
        }
    }

    /// True when there are no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The key bytes of row `i`.
    pub fn get(&self, i: usize) -> &[u8] {
        match self {
            Self::Rows(rows) => rows.row(i).data(),
            Self::Empty(_) => &[],
        }
    }
}

impl RowEncoder {
    /// An encoder for `columns` of batches with `schema`.
    pub fn new(schema: &SchemaRef, columns: Vec<usize>) -> Result<Self, ArrowError> {
        let converter = if columns.is_empty() {
            None
        } else {
            let fields = columns.iter().map(|&c| SortField::new(schema.field(c).data_type().clone())).collect();
            Some(RowConverter::new(fields)?)
        };
        Ok(Self { columns, converter })
    }

    /// The encoded columns, as indices into the batch schema.
    pub fn columns(&self) -> &[usize] {
        &self.columns
    }

    /// Encodes the chosen columns of every row of `batch`.
    pub fn encode(&self, batch: &RecordBatch) -> Result<EncodedRows, ArrowError> {
        match &self.converter {
            None => Ok(EncodedRows::Empty(batch.num_rows())),
            Some(converter) => {
                let columns: Vec<ArrayRef> = self.columns.iter().map(|&c| batch.column(c).clone()).collect();
                converter.convert_columns(&columns).map(EncodedRows::Rows)
            }
        }
    }
}

/// The chosen columns of `batch`, keeping its row count when none are chosen (the
/// empty key of a global aggregate still has one per row).
pub fn project_columns(batch: &RecordBatch, columns: &[usize]) -> Result<RecordBatch, ArrowError> {
    let schema = Arc::new(batch.schema().project(columns)?);
    let options = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
    RecordBatch::try_new_with_options(schema, columns.iter().map(|&c| batch.column(c).clone()).collect(), &options)
}

/// The rows of `rows` whose `key` columns are (`member`), or are not (`!member`), a row of
/// `keys`, whose first `key.len()` columns are those key columns.
pub fn filter_by_keys(rows: &RecordBatch, key: &[usize], keys: &RecordBatch, member: bool) -> Result<RecordBatch, ArrowError> {
    let wanted = RowEncoder::new(&keys.schema(), (0..key.len()).collect())?.encode(keys)?;
    let wanted: HashSet<&[u8], ahash::RandomState> = (0..wanted.len()).map(|i| wanted.get(i)).collect();
    let encoded = RowEncoder::new(&rows.schema(), key.to_vec())?.encode(rows)?;
    let keep: BooleanArray = (0..encoded.len()).map(|i| Some(wanted.contains(encoded.get(i)) == member)).collect();
    filter_record_batch(rows, &keep)
}

/// The rows of `batch` at `indices`, also when it has no columns (arrow's
/// `take_record_batch` cannot tell how many rows a column-less batch has then).
pub fn take_rows(batch: &RecordBatch, indices: &UInt32Array) -> Result<RecordBatch, ArrowError> {
    if batch.num_columns() > 0 {
        return take_record_batch(batch, indices);
    }
    RecordBatch::try_new_with_options(batch.schema(), vec![], &RecordBatchOptions::new().with_row_count(Some(indices.len())))
}

/// Positions of the last row of each key (`key` columns) in `batch`, in row order:
/// what upserting `batch` leaves, when a micro-batch changes a key twice.
pub fn last_row_per_key(batch: &RecordBatch, key: &[usize]) -> Result<UInt32Array, ArrowError> {
    let keys = RowEncoder::new(&batch.schema(), key.to_vec())?.encode(batch)?;
    let mut last: RowMap<&[u8], u32> = RowMap::with_capacity_and_hasher(keys.len(), Default::default());
    for i in 0..keys.len() {
        last.insert(keys.get(i), i as u32);
    }
    let mut rows: Vec<u32> = last.into_values().collect();
    rows.sort_unstable();
    Ok(UInt32Array::from(rows))
}

/// The last row of each key of `batch`, in row order, and the positions taken, unless
/// they are every row: then `batch` itself, without a copy (a micro-batch rarely
/// changes a key twice).
pub fn last_rows_per_key(batch: &RecordBatch, key: &[usize]) -> Result<(RecordBatch, Option<UInt32Array>), ArrowError> {
    let last = last_row_per_key(batch, key)?;
    if last.len() == batch.num_rows() {
        return Ok((batch.clone(), None));
    }
    Ok((take_rows(batch, &last)?, Some(last)))
}

/// A table of rows, at most one per key, where later upserts win.
///
/// ```
/// use std::sync::Arc;
/// use datafusion::arrow::array::{Int64Array, StringArray, RecordBatch};
/// use datafusion::arrow::datatypes::{DataType, Field, Schema};
/// use trendflow_engine::keyed::KeyedTable;
///
/// let schema = Arc::new(Schema::new(vec![
///     Field::new("k", DataType::Utf8, false),
///     Field::new("v", DataType::Int64, false),
/// ]));
/// let batch = |k: Vec<&str>, v: Vec<i64>| RecordBatch::try_new(schema.clone(), vec![
///     Arc::new(StringArray::from(k)), Arc::new(Int64Array::from(v))]).unwrap();
/// let mut table = KeyedTable::new(schema.clone(), vec![0]).unwrap();
/// table.upsert(&batch(vec!["a", "b"], vec![1, 2])).unwrap();
/// table.upsert(&batch(vec!["a"], vec![3])).unwrap();
/// assert_eq!(table.len(), 2);
/// let a = table.lookup(&batch(vec!["a", "a"], vec![0, 0]).project(&[0]).unwrap()).unwrap();
/// assert_eq!(a.num_rows(), 1);
/// ```
#[derive(Debug)]
pub struct KeyedTable {
    schema: SchemaRef,
    encoder: RowEncoder,
    /// Encodes batches holding only the key columns, in key order.
    key_encoder: RowEncoder,
    chunks: Vec<RecordBatch>,
    index: RowMap<Box<[u8]>, (usize, usize)>,
    dead_rows: usize,
}

impl KeyedTable {
    /// An empty table keyed by `key_columns` of `schema`.
    pub fn new(schema: SchemaRef, key_columns: Vec<usize>) -> Result<Self, ArrowError> {
        let key_schema = Arc::new(schema.project(&key_columns)?);
        let key_encoder = RowEncoder::new(&key_schema, (0..key_columns.len()).collect())?;
        let encoder = RowEncoder::new(&schema, key_columns)?;
        Ok(Self { schema, encoder, key_encoder, chunks: Vec::new(), index: RowMap::default(), dead_rows: 0 })
    }

    /// Schema of the rows.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Indices of the key columns.
    pub fn key_columns(&self) -> &[usize] {
        self.encoder.columns()
    }

    /// Number of live rows (= distinct keys).
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// True when the table holds no rows.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Removes every row.
    pub fn clear(&mut self) {
        self.chunks.clear();
        self.index.clear();
        self.dead_rows = 0;
    }

    /// Inserts or replaces the rows of `batch`; within `batch`, the last row of a key wins.
    pub fn upsert(&mut self, batch: &RecordBatch) -> Result<(), ArrowError> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let keys = self.encoder.encode(batch)?;
        let chunk = self.chunks.len();
        self.chunks.push(batch.clone());
        for row in 0..keys.len() {
            // Re-pointing an existing key allocates nothing.
            match self.index.get_mut(keys.get(row)) {
                Some(place) => {
                    *place = (chunk, row);
                    self.dead_rows += 1;
                }
                None => {
                    self.index.insert(keys.get(row).into(), (chunk, row));
                }
            }
        }
        self.compact_if_sparse()
    }

    /// Removes the rows whose keys appear in `keys`, a batch of just the key columns in
    /// key order. Returns how many rows were removed.
    pub fn remove(&mut self, keys: &RecordBatch) -> Result<usize, ArrowError> {
        let encoded = self.key_encoder.encode(keys)?;
        let mut removed = 0;
        for row in 0..encoded.len() {
            if self.index.remove(encoded.get(row)).is_some() {
                removed += 1;
            }
        }
        self.dead_rows += removed;
        self.compact_if_sparse()?;
        Ok(removed)
    }

    /// The stored rows for `keys`, a batch of just the key columns in key order; each
    /// stored row once, however often its key appears (keys not present are skipped).
    pub fn lookup(&self, keys: &RecordBatch) -> Result<RecordBatch, ArrowError> {
        let encoded = self.key_encoder.encode(keys)?;
        let mut found: Vec<(usize, usize)> = (0..encoded.len()).filter_map(|row| self.index.get(encoded.get(row)).copied()).collect();
        found.sort_unstable();
        found.dedup();
        self.gather(&found)
    }

    /// Every live row, as one batch.
    pub fn to_batch(&self) -> Result<RecordBatch, ArrowError> {
        let mut live: Vec<(usize, usize)> = self.index.values().copied().collect();
        // Chunk order is arrival order: keeps output stable between runs.
        live.sort_unstable();
        self.gather(&live)
    }

    fn gather(&self, rows: &[(usize, usize)]) -> Result<RecordBatch, ArrowError> {
        if rows.is_empty() {
            return Ok(RecordBatch::new_empty(self.schema.clone()));
        }
        let chunks: Vec<&RecordBatch> = self.chunks.iter().collect();
        interleave_record_batch(&chunks, rows)
    }

    fn compact_if_sparse(&mut self) -> Result<(), ArrowError> {
        if self.dead_rows < 1024 || self.dead_rows < self.index.len() {
            return Ok(());
        }
        let live = self.to_batch()?;
        self.clear();
        self.upsert(&live)
    }
}
