//! Tables of Arrow rows addressed by a key: aggregate state, finalized
//! aggregates, and the current result of each view.
//!
//! Rows live in immutable chunks; an upsert appends a chunk and re-points the
//! index, so an update costs O(rows changed), not O(table). Dead rows are
//! dropped by compaction once they outnumber the live ones.

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, BooleanArray, RecordBatch, RecordBatchOptions, UInt32Array};
use datafusion::arrow::compute::{filter_record_batch, interleave_record_batch, take_record_batch};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::row::{RowConverter, Rows, SortField};

use crate::window::end_times;

/// A map keyed by encoded rows, with a fast seeded hasher (keys come from the data).
pub(crate) type RowMap<K, V> = HashMap<K, V, ahash::RandomState>;

/// An encoded key (see [`RowEncoder`]), owned: inline when it is short, as most keys are
/// (an ASIN takes 19 bytes, an integer 5), so a table of a million keys makes no million
/// allocations. It hashes, compares and borrows as its bytes.
#[derive(Clone)]
pub(crate) struct RowKey(KeyBytes);

#[derive(Clone)]
enum KeyBytes {
    Inline { len: InlineLen, bytes: [u8; INLINE_KEY] },
    Heap(Box<[u8]>),
}

/// The longest key kept inline: what fits beside its one-byte length in 24 bytes (three
/// words, the size a `RowKey` keeps). 23 holds a window group's key (`window_start`,
/// `window_end` and an integer: 9 + 9 + 5 bytes), which a `u8` length would have pushed
/// onto the heap.
const INLINE_KEY: usize = 23;

/// The length of an inline key. An enum, not a `u8`: its 232 unused values are where
/// the compiler keeps the `Inline`/`Heap` tag, so a key takes 24 bytes, not 32.
#[derive(Clone, Copy)]
#[repr(u8)]
#[rustfmt::skip]
enum InlineLen { L0, L1, L2, L3, L4, L5, L6, L7, L8, L9, L10, L11, L12, L13, L14, L15, L16, L17, L18, L19, L20, L21, L22, L23 }

impl InlineLen {
    /// `len`, at most [`INLINE_KEY`].
    fn new(len: usize) -> Self {
        use InlineLen::*;
        const LENS: [InlineLen; INLINE_KEY + 1] =
            [L0, L1, L2, L3, L4, L5, L6, L7, L8, L9, L10, L11, L12, L13, L14, L15, L16, L17, L18, L19, L20, L21, L22, L23];
        LENS[len]
    }
}

impl RowKey {
    /// The key's bytes.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            KeyBytes::Inline { len, bytes } => &bytes[..*len as usize],
            KeyBytes::Heap(bytes) => bytes,
        }
    }
}

impl From<&[u8]> for RowKey {
    fn from(key: &[u8]) -> Self {
        if key.len() > INLINE_KEY {
            return Self(KeyBytes::Heap(key.into()));
        }
        let mut bytes = [0u8; INLINE_KEY];
        bytes[..key.len()].copy_from_slice(key);
        Self(KeyBytes::Inline { len: InlineLen::new(key.len()), bytes })
    }
}

impl Borrow<[u8]> for RowKey {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl Hash for RowKey {
    /// As the bytes hash, which lookups by `&[u8]` (through `Borrow`) require.
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state)
    }
}

impl PartialEq for RowKey {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for RowKey {}

impl std::fmt::Debug for RowKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RowKey({:?})", self.as_bytes())
    }
}

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
    index: RowMap<RowKey, Place>,
    dead_rows: usize,
    /// When rows expire, for a table whose keys are windows (see [`Self::expire_by`]).
    expiry: Option<Expiry>,
}

/// The keys of a table filed by when their rows expire: a time column of the key plus an
/// offset (a window's end), so that expiring costs what expires, not a scan of the table.
/// A key removed before it expires stays filed; expiring it then finds nothing.
#[derive(Debug)]
struct Expiry {
    column: usize,
    offset_ms: i64,
    due: BTreeMap<i64, Vec<RowKey>>,
}

/// Where a live row is: chunk, then row within it (in arrival order when sorted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Place {
    chunk: u32,
    row: u32,
}

impl Place {
    /// The place of `row` in chunk `chunk`; an error past 2^32 chunks (compaction
    /// renumbers them) or 2^32 rows in one chunk, which no micro-batch comes near.
    fn new(chunk: usize, row: usize) -> Result<Self, ArrowError> {
        let narrow =
            |n: usize, what: &str| u32::try_from(n).map_err(|_| ArrowError::ComputeError(format!("a keyed table's {what} {n} is past 2^32")));
        Ok(Self { chunk: narrow(chunk, "chunk number")?, row: narrow(row, "row number")? })
    }

    fn at(self) -> (usize, usize) {
        (self.chunk as usize, self.row as usize)
    }
}

/// Rows per chunk that compaction builds: big enough that chunks stay few, small enough
/// that compacting copies little at a time.
const COMPACTED_CHUNK_ROWS: usize = 64 * 1024;

impl KeyedTable {
    /// An empty table keyed by `key_columns` of `schema`.
    pub fn new(schema: SchemaRef, key_columns: Vec<usize>) -> Result<Self, ArrowError> {
        let key_schema = Arc::new(schema.project(&key_columns)?);
        let key_encoder = RowEncoder::new(&key_schema, (0..key_columns.len()).collect())?;
        let encoder = RowEncoder::new(&schema, key_columns)?;
        Ok(Self { schema, encoder, key_encoder, chunks: Vec::new(), index: RowMap::default(), dead_rows: 0, expiry: None })
    }

    /// Makes the rows expire (see [`Self::expire`]) once a time is at or past their key
    /// column `column` (a timestamp) plus `offset_ms`; rows without a time never do.
    /// Set it on an empty table.
    pub fn expire_by(&mut self, column: usize, offset_ms: i64) {
        debug_assert!(self.is_empty() && self.encoder.columns().contains(&column));
        self.expiry = Some(Expiry { column, offset_ms, due: BTreeMap::new() });
    }

    /// Removes the rows that have expired by `time` (see [`Self::expire_by`]; none when
    /// the table does not expire) and returns them, in arrival order.
    pub fn expire(&mut self, time: i64) -> Result<RecordBatch, ArrowError> {
        let Some(expiry) = &mut self.expiry else { return Ok(RecordBatch::new_empty(self.schema.clone())) };
        let later = expiry.due.split_off(&time.saturating_add(1));
        let due = std::mem::replace(&mut expiry.due, later);
        let mut places: Vec<Place> = due.into_values().flatten().filter_map(|key| self.index.remove(&key)).collect();
        self.dead_rows += places.len();
        places.sort_unstable();
        let rows = self.gather(&places)?;
        self.compact_if_sparse()?;
        Ok(rows)
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
        if let Some(expiry) = &mut self.expiry {
            expiry.due.clear();
        }
    }

    /// Inserts or replaces the rows of `batch`; within `batch`, the last row of a key wins.
    pub fn upsert(&mut self, batch: &RecordBatch) -> Result<(), ArrowError> {
        self.write(batch, None)?;
        self.compact_if_sparse()
    }

    /// Removes the rows whose keys appear in `keys`, a batch of just the key columns in
    /// key order. Returns how many rows were removed.
    pub fn remove(&mut self, keys: &RecordBatch) -> Result<usize, ArrowError> {
        let removed = self.erase(keys, None)?;
        self.compact_if_sparse()?;
        Ok(removed)
    }

    /// Removes the rows whose keys appear in `removed` (just the key columns, in key
    /// order), then upserts `upserted`, and returns the rows this replaced or removed, as
    /// they were, each once, in arrival order: what [`Self::lookup`] of both keys before a
    /// [`Self::remove`] and an [`Self::upsert`] gives, with one probe per key instead of two.
    pub fn replace(&mut self, upserted: &RecordBatch, removed: &RecordBatch) -> Result<RecordBatch, ArrowError> {
        let mut previous = Vec::new();
        self.erase(removed, Some(&mut previous))?;
        self.write(upserted, Some(&mut previous))?;
        previous.sort_unstable();
        previous.dedup();
        let rows = self.gather(&previous)?;
        self.compact_if_sparse()?;
        Ok(rows)
    }

    /// Appends `batch` as a chunk and points its keys at it; the places of rows it
    /// replaces go to `previous`.
    fn write(&mut self, batch: &RecordBatch, mut previous: Option<&mut Vec<Place>>) -> Result<(), ArrowError> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let keys = self.encoder.encode(batch)?;
        let due = match &self.expiry {
            Some(expiry) => end_times(batch, expiry.column, expiry.offset_ms)?,
            None => Vec::new(),
        };
        let chunk = self.chunks.len();
        self.chunks.push(batch.clone());
        for row in 0..keys.len() {
            // Re-pointing an existing key allocates nothing.
            match self.index.get_mut(keys.get(row)) {
                Some(place) => {
                    // A key twice in `batch` replaces its own new row, not a stored one.
                    if let Some(previous) = previous.as_deref_mut().filter(|_| place.chunk as usize != chunk) {
                        previous.push(*place);
                    }
                    *place = Place::new(chunk, row)?;
                    self.dead_rows += 1;
                }
                None => {
                    self.index.insert(keys.get(row).into(), Place::new(chunk, row)?);
                    if let (Some(expiry), Some(Some(time))) = (&mut self.expiry, due.get(row)) {
                        expiry.due.entry(*time).or_default().push(keys.get(row).into());
                    }
                }
            }
        }
        Ok(())
    }

    /// Forgets the keys in `keys` (key columns only); the places of their rows go to
    /// `previous`. Returns how many there were.
    fn erase(&mut self, keys: &RecordBatch, mut previous: Option<&mut Vec<Place>>) -> Result<usize, ArrowError> {
        if keys.num_rows() == 0 {
            return Ok(0);
        }
        let encoded = self.key_encoder.encode(keys)?;
        let mut removed = 0;
        for row in 0..encoded.len() {
            if let Some(place) = self.index.remove(encoded.get(row)) {
                previous.as_deref_mut().into_iter().for_each(|p| p.push(place));
                removed += 1;
            }
        }
        self.dead_rows += removed;
        Ok(removed)
    }

    /// The stored rows for `keys`, a batch of just the key columns in key order; each
    /// stored row once, however often its key appears (keys not present are skipped).
    pub fn lookup(&self, keys: &RecordBatch) -> Result<RecordBatch, ArrowError> {
        let encoded = self.key_encoder.encode(keys)?;
        let mut found: Vec<Place> = (0..encoded.len()).filter_map(|row| self.index.get(encoded.get(row)).copied()).collect();
        found.sort_unstable();
        found.dedup();
        self.gather(&found)
    }

    /// Every live row, as one batch.
    pub fn to_batch(&self) -> Result<RecordBatch, ArrowError> {
        let mut live: Vec<Place> = self.index.values().copied().collect();
        // Chunk order is arrival order: keeps output stable between runs.
        live.sort_unstable();
        self.gather(&live)
    }

    fn gather(&self, rows: &[Place]) -> Result<RecordBatch, ArrowError> {
        if rows.is_empty() {
            return Ok(RecordBatch::new_empty(self.schema.clone()));
        }
        let chunks: Vec<&RecordBatch> = self.chunks.iter().collect();
        let rows: Vec<(usize, usize)> = rows.iter().map(|p| p.at()).collect();
        interleave_record_batch(&chunks, &rows)
    }

    fn compact_if_sparse(&mut self) -> Result<(), ArrowError> {
        if self.dead_rows < 1024 || self.dead_rows < self.index.len() {
            return Ok(());
        }
        self.compact()
    }

    /// Copies the live rows into new chunks, in arrival order, a few chunks at a time so
    /// that the old ones are freed as it goes; keys are neither re-encoded nor re-hashed,
    /// only re-pointed.
    fn compact(&mut self) -> Result<(), ArrowError> {
        let Self { index, chunks, .. } = self;
        let mut by_chunk: Vec<Vec<&mut Place>> = chunks.iter().map(|_| Vec::new()).collect();
        for place in index.values_mut() {
            by_chunk[place.chunk as usize].push(place);
        }
        let old = std::mem::take(chunks);
        let mut pending: Vec<(RecordBatch, Vec<&mut Place>)> = Vec::new();
        let mut pending_rows = 0;
        for (chunk, mut places) in old.into_iter().zip(by_chunk) {
            if places.is_empty() {
                continue;
            }
            places.sort_unstable_by_key(|p| p.row);
            pending_rows += places.len();
            pending.push((chunk, places));
            if pending_rows >= COMPACTED_CHUNK_ROWS {
                chunks.push(merge_live_rows(std::mem::take(&mut pending), chunks.len())?);
                pending_rows = 0;
            }
        }
        if !pending.is_empty() {
            chunks.push(merge_live_rows(pending, chunks.len())?);
        }
        self.dead_rows = 0;
        Ok(())
    }
}

/// The live rows (`places`, sorted by row, none empty) of consecutive chunks as one new
/// chunk, numbered `id`, to which the places are re-pointed. An error leaves the table
/// inconsistent; it can only come from Arrow's offset overflow (over 2 GiB of text in one
/// chunk), and it stops the job, which resumes from its checkpoint.
fn merge_live_rows(pending: Vec<(RecordBatch, Vec<&mut Place>)>, id: usize) -> Result<RecordBatch, ArrowError> {
    let whole_chunk = pending.len() == 1 && pending[0].1.len() == pending[0].0.num_rows();
    let merged = if whole_chunk {
        // Nothing in it died: kept as it is.
        pending[0].0.clone()
    } else {
        let chunks: Vec<&RecordBatch> = pending.iter().map(|(chunk, _)| chunk).collect();
        let rows: Vec<(usize, usize)> =
            pending.iter().enumerate().flat_map(|(c, (_, places))| places.iter().map(move |p| (c, p.row as usize))).collect();
        interleave_record_batch(&chunks, &rows)?
    };
    for (row, place) in pending.into_iter().flat_map(|(_, places)| places).enumerate() {
        *place = Place::new(id, row)?;
    }
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use datafusion::arrow::array::{Array, Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    #[test]
    fn short_keys_are_inline_and_equal_their_bytes() {
        assert_eq!(std::mem::size_of::<RowKey>(), 24);
        for len in [0, 1, 22, 23, 24, 40] {
            let bytes: Vec<u8> = (0..len as u8).collect();
            let key = RowKey::from(bytes.as_slice());
            assert_eq!(key.as_bytes(), bytes.as_slice());
            assert_eq!(matches!(key.0, KeyBytes::Inline { .. }), len <= INLINE_KEY);
            let mut map: RowMap<RowKey, usize> = RowMap::default();
            map.insert(key, len);
            assert_eq!(map.get(bytes.as_slice()), Some(&len));
        }
    }

    /// Rows expire once the time passes their key's time plus the offset, each once,
    /// whether their keys were rewritten, removed or written again in between.
    #[test]
    fn rows_expire_by_their_keys_time() {
        use datafusion::arrow::array::TimestampMillisecondArray;
        let schema = Arc::new(Schema::new(vec![
            Field::new("start", DataType::Timestamp(datafusion::arrow::datatypes::TimeUnit::Millisecond, None), true),
            Field::new("k", DataType::Utf8, false),
            Field::new("v", DataType::Int64, false),
        ]));
        let batch = |starts: Vec<Option<i64>>, keys: Vec<&str>, values: Vec<i64>| {
            RecordBatch::try_new(
                schema.clone(),
                vec![Arc::new(TimestampMillisecondArray::from(starts)), Arc::new(StringArray::from(keys)), Arc::new(Int64Array::from(values))],
            )
            .unwrap()
        };
        let values = |rows: &RecordBatch| rows.column(2).as_any().downcast_ref::<Int64Array>().unwrap().values().to_vec();
        let mut table = KeyedTable::new(schema.clone(), vec![0, 1]).unwrap();
        table.expire_by(0, 10);
        table.upsert(&batch(vec![Some(0), Some(0), Some(20), None], vec!["a", "b", "a", "a"], vec![1, 2, 3, 4])).unwrap();
        table.upsert(&batch(vec![Some(0)], vec!["a"], vec![5])).unwrap();
        table.remove(&batch(vec![Some(0)], vec!["b"], vec![0]).project(&[0, 1]).unwrap()).unwrap();
        table.upsert(&batch(vec![Some(0)], vec!["b"], vec![6])).unwrap();
        assert_eq!(values(&table.expire(9).unwrap()), Vec::<i64>::new());
        // Both windows from 0 end at 10; the one from 20 at 30; a row without a time never.
        assert_eq!(values(&table.expire(10).unwrap()), vec![5, 6]);
        assert_eq!(values(&table.expire(29).unwrap()), Vec::<i64>::new());
        assert_eq!(values(&table.expire(i64::MAX).unwrap()), vec![3]);
        assert_eq!(values(&table.to_batch().unwrap()), vec![4]);
        table.clear();
        table.upsert(&batch(vec![Some(0)], vec!["c"], vec![7])).unwrap();
        assert_eq!(values(&table.expire(10).unwrap()), vec![7]);
    }

    /// Upserts and removes against a model, through many compactions: the live rows, in
    /// the order of their last writes.
    #[test]
    fn compaction_keeps_the_live_rows_in_write_order() {
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Utf8, false), Field::new("v", DataType::Int64, false)]));
        let mut table = KeyedTable::new(schema.clone(), vec![0]).unwrap();
        // Key → (value, sequence number of its last write).
        let mut model: BTreeMap<String, (i64, u64)> = BTreeMap::new();
        let (mut rng, mut seq) = (0x9e37_79b9_7f4a_7c15u64, 0u64);
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        for step in 0..400 {
            let size = 1 + next(300) as usize;
            // Long keys now and then, to exercise both key forms.
            let keys: Vec<String> = (0..size).map(|_| format!("{:0>w$}", next(2_000), w = if next(10) == 0 { 30 } else { 6 })).collect();
            if step % 7 == 3 {
                let batch = RecordBatch::try_new(Arc::new(schema.project(&[0]).unwrap()), vec![Arc::new(StringArray::from(keys.clone()))]).unwrap();
                let removed = table.remove(&batch).unwrap();
                let expected = keys.iter().collect::<std::collections::BTreeSet<_>>().iter().filter(|k| model.remove(**k).is_some()).count();
                assert_eq!(removed, expected);
                continue;
            }
            let values: Vec<i64> = keys.iter().map(|_| next(1_000_000) as i64).collect();
            for (k, v) in keys.iter().zip(&values) {
                seq += 1;
                model.insert(k.clone(), (*v, seq));
            }
            let key_batch = RecordBatch::try_new(Arc::new(schema.project(&[0]).unwrap()), vec![Arc::new(StringArray::from(keys.clone()))]).unwrap();
            let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(StringArray::from(keys)), Arc::new(Int64Array::from(values))]).unwrap();
            if step % 2 == 0 {
                table.upsert(&batch).unwrap();
                continue;
            }
            // What replace returns is what a lookup before it finds.
            let stored = table.lookup(&key_batch).unwrap();
            let replaced = table.replace(&batch, &RecordBatch::new_empty(key_batch.schema())).unwrap();
            assert_eq!(replaced, stored);
        }
        let mut expected: Vec<(&String, &(i64, u64))> = model.iter().collect();
        expected.sort_by_key(|(_, (_, seq))| *seq);
        let all = table.to_batch().unwrap();
        let keys = all.column(0).as_any().downcast_ref::<StringArray>().unwrap();
        let values = all.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
        let got: Vec<(String, i64)> = (0..all.num_rows()).map(|i| (keys.value(i).to_string(), values.value(i))).collect();
        let want: Vec<(String, i64)> = expected.iter().map(|(k, (v, _))| ((*k).clone(), *v)).collect();
        assert_eq!(got, want);
        assert!(table.chunks.len() < 60, "compaction merged chunks: {}", table.chunks.len());
        let probe =
            RecordBatch::try_new(Arc::new(schema.project(&[0]).unwrap()), vec![Arc::new(StringArray::from(vec![want[0].0.clone()]))]).unwrap();
        assert_eq!(table.lookup(&probe).unwrap().column(1).as_any().downcast_ref::<Int64Array>().unwrap().value(0), want[0].1);
    }
}
