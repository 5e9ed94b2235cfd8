//! The current rows of a changelog stream (`upsert`, `debezium`): a table keyed by the
//! stream's PRIMARY KEY that each micro-batch changes, and what each micro-batch
//! changed in it (the rows it replaced or deleted, and the rows it left).
//!
//! Only the columns some view reads are kept (plus the key); the others read as null,
//! or as their type's zero where they cannot be null (the metadata columns), which no
//! plan looks at.

use std::sync::Arc;

use datafusion::arrow::array::{new_null_array, Array, ArrayRef, BooleanArray, RecordBatch};
use datafusion::arrow::compute::{filter_record_batch, not};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::ScalarValue;

use crate::contract::{MicroBatch, StreamDecl};
use crate::error::Result;
use crate::keyed::{last_rows_per_key, project_columns, EncodedRows, KeyedTable, RowEncoder, RowMap};
use crate::slot::BatchSlot;

/// The flag column of a changelog table's checkpointed changes: true for a deleted key.
const DELETED: &str = "_deleted";

/// What one micro-batch did to a changelog table, as full-schema rows of the stream.
#[derive(Debug, Clone)]
pub struct TableDelta {
    /// The rows the micro-batch replaced or deleted, as they were.
    pub before: RecordBatch,
    /// The rows it left for the keys it touched (none for a deleted key).
    pub after: RecordBatch,
}

/// The current rows of one changelog stream.
///
/// ```
/// use std::sync::Arc;
/// use datafusion::arrow::array::{BooleanArray, Int32Array, RecordBatch, StringArray};
/// use datafusion::arrow::datatypes::{DataType, Field, Schema};
/// use trendflow_engine::changelog::ChangelogTable;
///
/// let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int32, false), Field::new("name", DataType::Utf8, true)]));
/// let mut table = ChangelogTable::new("categories", schema.clone(), vec![0], &[0, 1]).unwrap();
/// let rows = |ids: Vec<i32>, names: Vec<Option<&str>>| RecordBatch::try_new(schema.clone(),
///     vec![Arc::new(Int32Array::from(ids)), Arc::new(StringArray::from(names))]).unwrap();
/// table.apply(&rows(vec![1, 2], vec![Some("Toys"), Some("Books")]), None).unwrap();
/// // Category 1 renamed, category 2 deleted, in one micro-batch.
/// let delta = table.apply(&rows(vec![1, 2], vec![Some("Games"), None]), Some(&BooleanArray::from(vec![false, true]))).unwrap();
/// assert_eq!((delta.before.num_rows(), delta.after.num_rows()), (2, 1));
/// assert_eq!(table.len(), 1);
/// ```
#[derive(Debug)]
pub struct ChangelogTable {
    name: String,
    /// The stream's full schema (what its scans read).
    schema: SchemaRef,
    /// The kept columns, as indices into `schema`.
    kept: Vec<usize>,
    /// Primary-key columns, as indices into `schema`.
    key: Vec<usize>,
    /// Key → current row (kept columns).
    current: KeyedTable,
    /// The keys changed since the last checkpoint.
    changed: ChangedKeys,
    /// Schema of the `changed` entries.
    changed_schema: SchemaRef,
    /// Kept columns (nullable) + [`DELETED`]: the rows of a checkpoint.
    flagged: SchemaRef,
    /// The slot the stream's scans read.
    slot: BatchSlot,
    /// The whole current table as full-schema rows, built when first asked for after a change.
    whole: std::sync::Mutex<Option<RecordBatch>>,
}

impl ChangelogTable {
    /// An empty table of stream `name` (full schema `schema`, primary key `key`) keeping
    /// the columns in `read` (and the key).
    pub fn new(name: &str, schema: SchemaRef, key: Vec<usize>, read: &[usize]) -> Result<Self> {
        Self::with_slot(name, BatchSlot::new(schema.clone()), key, read)
    }

    /// The table of `stream`, keeping the columns in `read`.
    pub fn for_stream(stream: &StreamDecl, read: &[usize]) -> Result<Self> {
        Self::with_slot(&stream.name, stream.slot.clone(), stream.primary_key.clone(), read)
    }

    fn with_slot(name: &str, slot: BatchSlot, key: Vec<usize>, read: &[usize]) -> Result<Self> {
        let schema = slot.schema().clone();
        let kept: Vec<usize> = (0..schema.fields().len()).filter(|i| read.contains(i) || key.contains(i)).collect();
        let stored = Arc::new(schema.project(&kept)?);
        let stored_key: Vec<usize> = key.iter().map(|k| kept.iter().position(|c| c == k).expect("key columns are kept")).collect();
        let with_flag = |fields: Vec<Field>| {
            let mut fields: Vec<Field> = fields.into_iter().map(|f| f.with_nullable(true)).collect();
            fields.push(Field::new(DELETED, DataType::Boolean, false));
            Arc::new(Schema::new(fields))
        };
        let flagged = with_flag(stored.fields().iter().map(|f| f.as_ref().clone()).collect());
        let changed_schema = with_flag(stored_key.iter().map(|&k| stored.field(k).clone()).collect());
        Ok(Self {
            name: name.to_string(),
            current: KeyedTable::new(stored, stored_key.clone())?,
            changed: ChangedKeys::since(0),
            changed_schema,
            flagged,
            schema,
            kept,
            key,
            slot,
            whole: Default::default(),
        })
    }

    /// The stream's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Number of current rows.
    pub fn len(&self) -> usize {
        self.current.len()
    }

    /// True when the table has no rows.
    pub fn is_empty(&self) -> bool {
        self.current.is_empty()
    }

    /// Applies a micro-batch of the stream: rows in arrival order, `deleted` marking the
    /// deletes. Within the batch the last change of a key wins.
    pub fn apply(&mut self, batch: &RecordBatch, deleted: Option<&BooleanArray>) -> Result<TableDelta> {
        // Most micro-batches change each key once and delete nothing: no copies then.
        let (changes, taken) = last_rows_per_key(batch, &self.key)?;
        let deleted = match (deleted, taken) {
            (Some(deleted), None) => deleted.clone(),
            (Some(deleted), Some(last)) => {
                datafusion::arrow::compute::take(deleted, &last, None)?.as_any().downcast_ref::<BooleanArray>().cloned().expect("booleans")
            }
            (None, _) => BooleanArray::from(vec![false; changes.num_rows()]),
        };
        let keys = project_columns(&changes, &self.key)?;
        let after = if deleted.true_count() == 0 { changes.clone() } else { filter_record_batch(&changes, &not(&deleted)?)? };
        let removed = filter_record_batch(&keys, &deleted)?;
        let replaced = self.current.replace(&project_columns(&after, &self.kept)?, &removed)?;
        let before = self.expand(&replaced)?;
        let logged = with_flags(&self.changed_schema, keys.columns(), deleted.clone())?;
        self.changed.log(logged, self.current.len())?;
        *self.whole.get_mut().expect("whole-table lock poisoned") = None;
        Ok(TableDelta { before, after })
    }

    /// Every current row as full-schema rows of the stream (columns not kept are null, or
    /// zero where they cannot be null).
    pub fn whole(&self) -> Result<RecordBatch> {
        let mut whole = self.whole.lock().expect("whole-table lock poisoned");
        if let Some(batch) = whole.as_ref() {
            return Ok(batch.clone());
        }
        let batch = self.expand(&self.current.to_batch()?)?;
        *whole = Some(batch.clone());
        Ok(batch)
    }

    /// The whole table, for a full checkpoint (kept columns and a false [`DELETED`]).
    pub fn state(&self) -> Result<RecordBatch> {
        let rows = self.current.to_batch()?;
        with_flags(&self.flagged, rows.columns(), BooleanArray::from(vec![false; rows.num_rows()]))
    }

    /// The keys changed since the last checkpoint, for a delta checkpoint: their current
    /// rows, and the deleted keys (other columns null) flagged [`DELETED`]. An error when
    /// [`Self::needs_full_checkpoint`].
    pub fn changed_state(&self) -> Result<RecordBatch> {
        let ChangedKeys::Logged { batches, .. } = &self.changed else {
            return Err(crate::error::EngineError::internal(&format!("a delta checkpoint of `{}` after changes to over half its keys", self.name)));
        };
        let changed = last_change_per_key(&self.changed_schema, batches)?;
        let width = changed.num_columns() - 1;
        let keys = project_columns(&changed, &(0..width).collect::<Vec<_>>())?;
        let deleted = changed.column(width).as_any().downcast_ref::<BooleanArray>().expect("the flag is boolean");
        let live = self.current.lookup(&filter_record_batch(&keys, &not(deleted)?)?)?;
        let gone = filter_record_batch(&keys, deleted)?;
        let stored_key = self.current.key_columns();
        let gone_rows: Vec<ArrayRef> = (0..self.current.schema().fields().len())
            .map(|i| match stored_key.iter().position(|&k| k == i) {
                Some(p) => gone.column(p).clone(),
                None => new_null_array(self.current.schema().field(i).data_type(), gone.num_rows()),
            })
            .collect();
        let live = with_flags(&self.flagged, live.columns(), BooleanArray::from(vec![false; live.num_rows()]))?;
        let gone = with_flags(&self.flagged, &gone_rows, BooleanArray::from(vec![true; gone.num_rows()]))?;
        Ok(datafusion::arrow::compute::concat_batches(&self.flagged, &[live, gone])?)
    }

    /// Number of key changes since the last checkpoint (a key changed in two
    /// micro-batches counts twice): what a delta checkpoint would hold, at most.
    pub fn changes_since_checkpoint(&self) -> usize {
        match &self.changed {
            ChangedKeys::Logged { rows, .. } => *rows,
            ChangedKeys::TooMany => self.len(),
        }
    }

    /// Whether the next checkpoint must hold the whole table: over half its keys changed
    /// since the last one, and the log of them was dropped.
    pub fn needs_full_checkpoint(&self) -> bool {
        matches!(self.changed, ChangedKeys::TooMany)
    }

    /// Forgets which keys changed: a checkpoint now holds them.
    pub fn mark_checkpointed(&mut self) {
        self.changed = ChangedKeys::since(self.len());
    }

    /// Schema of [`Self::state`].
    pub fn state_schema(&self) -> &SchemaRef {
        &self.flagged
    }

    /// Replaces the table by checkpointed rows (base then deltas: a later row of a key wins).
    pub fn restore(&mut self, state: &RecordBatch) -> Result<()> {
        let mut replay = KeyedTable::new(self.flagged.clone(), self.current.key_columns().to_vec())?;
        replay.upsert(state)?;
        let rows = replay.to_batch()?;
        let flag = rows.num_columns() - 1;
        let live = not(rows.column(flag).as_any().downcast_ref::<BooleanArray>().expect("the flag is boolean"))?;
        let live = filter_record_batch(&rows, &live)?;
        self.current.clear();
        let columns = live.columns()[..flag].to_vec();
        self.current.upsert(&RecordBatch::try_new(self.current.schema().clone(), columns)?)?;
        self.changed = ChangedKeys::since(self.len());
        *self.whole.get_mut().expect("whole-table lock poisoned") = None;
        Ok(())
    }

    /// Full-schema rows from kept-column rows.
    fn expand(&self, stored: &RecordBatch) -> Result<RecordBatch> {
        let rows = stored.num_rows();
        let columns = (0..self.schema.fields().len())
            .map(|i| match self.kept.iter().position(|&k| k == i) {
                Some(j) => Ok(stored.column(j).clone()),
                None => unread_column(self.schema.field(i), rows),
            })
            .collect::<Result<Vec<ArrayRef>>>()?;
        Ok(RecordBatch::try_new(self.schema.clone(), columns)?)
    }
}

/// `rows` values of a column no view reads: nulls, or zeros where it cannot be null.
fn unread_column(field: &Field, rows: usize) -> Result<ArrayRef> {
    if field.is_nullable() {
        return Ok(new_null_array(field.data_type(), rows));
    }
    Ok(ScalarValue::new_default(field.data_type())?.to_array_of_size(rows)?)
}

/// The keys a changelog table's micro-batches changed since its last checkpoint.
#[derive(Debug)]
enum ChangedKeys {
    /// Key columns + [`DELETED`] of each micro-batch, and how many rows: a log rather than
    /// an index (a checkpoint takes each key's last entry, and its row from the table).
    /// `rows_at_checkpoint` is the table's size when the log began.
    Logged { batches: Vec<RecordBatch>, rows: usize, rows_at_checkpoint: usize },
    /// Changes to more keys than half the table holds (or than half
    /// [`MIN_LOGGED_CHANGES`], for a small table): a delta would
    /// weigh nearly what the whole table does, so the log is dropped and the next
    /// checkpoint is full. Keeps the log bounded however far apart checkpoints are.
    TooMany,
}

/// The changes a table logs whatever its size, so that a small table is not
/// checkpointed in full after every few changes.
const MIN_LOGGED_CHANGES: usize = 4096;

impl ChangedKeys {
    /// An empty log of a table that now holds `table_rows` rows.
    fn since(table_rows: usize) -> Self {
        Self::Logged { batches: Vec::new(), rows: 0, rows_at_checkpoint: table_rows }
    }

    /// Logs the changed keys `batch` of a table now holding `table_rows` rows. A log
    /// longer than the table is collapsed to each key's last entry (a busy small table
    /// changes the same keys over and over), and dropped when over half the table's
    /// keys remain: so collapsing costs O(1) per entry, amortized.
    fn log(&mut self, batch: RecordBatch, table_rows: usize) -> Result<()> {
        let Self::Logged { batches, rows, rows_at_checkpoint } = self else { return Ok(()) };
        *rows += batch.num_rows();
        batches.push(batch);
        let bound = table_rows.max(MIN_LOGGED_CHANGES);
        if *rows <= bound {
            return Ok(());
        }
        // Each key the table gained is a distinct changed key: when those alone are too
        // many (a table loaded since its last checkpoint, then changed), the log is
        // dropped without the collapse's copy of it, which is the size of the table.
        let gained = table_rows.saturating_sub(*rows_at_checkpoint);
        if gained * 2 > bound {
            *self = Self::TooMany;
            return Ok(());
        }
        let distinct = last_change_per_key(&batches[0].schema(), batches)?;
        *self = if distinct.num_rows() * 2 > bound {
            Self::TooMany
        } else {
            Self::Logged { rows: distinct.num_rows(), batches: vec![distinct], rows_at_checkpoint: *rows_at_checkpoint }
        };
        Ok(())
    }
}

/// The last entry of each key in a log of changed keys (key columns + [`DELETED`], of
/// `schema`).
fn last_change_per_key(schema: &SchemaRef, log: &[RecordBatch]) -> Result<RecordBatch> {
    let log = datafusion::arrow::compute::concat_batches(schema, log)?;
    let key: Vec<usize> = (0..schema.fields().len() - 1).collect();
    Ok(last_rows_per_key(&log, &key)?.0)
}

/// `columns` with the flag column [`DELETED`] `deleted`, as rows of `schema`.
fn with_flags(schema: &SchemaRef, columns: &[ArrayRef], deleted: BooleanArray) -> Result<RecordBatch> {
    let mut columns = columns.to_vec();
    columns.push(Arc::new(deleted));
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

/// The changelog tables of a pipeline, and what the micro-batch being processed did
/// to them.
#[derive(Debug, Default)]
pub struct ChangelogTables {
    tables: Vec<ChangelogTable>,
    /// Stream → what the current micro-batch changed.
    deltas: std::collections::BTreeMap<String, TableDelta>,
    /// Stream → its whole table before the current micro-batch (kept only when a view
    /// recomputes from it, see [`Self::apply`]).
    before: std::collections::BTreeMap<String, RecordBatch>,
}

impl ChangelogTables {
    /// Tables for `tables`.
    pub fn new(tables: Vec<ChangelogTable>) -> Self {
        Self { tables, ..Default::default() }
    }

    /// The table of stream `name`, if it is a changelog stream.
    pub fn get(&self, name: &str) -> Option<&ChangelogTable> {
        self.tables.iter().find(|t| t.name == name)
    }

    /// Every table.
    pub fn tables(&self) -> &[ChangelogTable] {
        &self.tables
    }

    /// Every table, to restore or checkpoint.
    pub fn tables_mut(&mut self) -> &mut [ChangelogTable] {
        &mut self.tables
    }

    /// Applies a micro-batch to the changelog tables among `batches`. With
    /// `keep_before`, the whole tables of the streams it changes are kept as they were.
    pub fn apply<'a>(&mut self, batches: impl Iterator<Item = (&'a str, &'a MicroBatch)>, keep_before: bool) -> Result<()> {
        self.deltas.clear();
        self.before.clear();
        for (name, micro) in batches {
            let Some(table) = self.tables.iter_mut().find(|t| t.name == name) else { continue };
            if keep_before {
                self.before.insert(name.to_string(), table.whole()?);
            }
            self.deltas.insert(name.to_string(), table.apply(&micro.batch, micro.deleted.as_ref())?);
        }
        Ok(())
    }

    /// Makes every table the content of its stream's slot (outside micro-batches: for
    /// evaluating views at start-up).
    pub fn show_all(&self) -> Result<()> {
        for table in &self.tables {
            table.slot.set(vec![table.whole()?]);
        }
        Ok(())
    }

    /// Empties the slots [`Self::show_all`] filled.
    pub fn hide_all(&self) {
        self.tables.iter().for_each(|t| t.slot.clear());
    }

    /// What the current micro-batch did to stream `name`.
    pub fn delta(&self, name: &str) -> Option<&TableDelta> {
        self.deltas.get(name)
    }

    /// Whether the current micro-batch changed stream `name`.
    pub fn changed(&self, name: &str) -> bool {
        self.deltas.contains_key(name)
    }

    /// The whole table of `name` before the current micro-batch (its current rows when
    /// the micro-batch did not change it).
    pub fn whole_before(&self, name: &str) -> Result<RecordBatch> {
        match self.before.get(name) {
            Some(batch) => Ok(batch.clone()),
            None => self.get(name).map_or_else(|| Err(crate::error::EngineError::internal("no such changelog table")), |t| t.whole()),
        }
    }
}

/// What a batch run computes a changelog stream's views over: the stream's rows after
/// `batches` (in source order, with their delete marks), the last change of each key
/// winning and deleted keys gone. Rows come in the order of their keys' last changes,
/// as [`ChangelogTable::whole`] gives them after the same changes.
pub fn final_table<'a>(
    stream: &StreamDecl,
    batches: impl IntoIterator<Item = (&'a RecordBatch, Option<&'a BooleanArray>)>,
) -> Result<Vec<RecordBatch>> {
    let batches: Vec<(&RecordBatch, Option<&BooleanArray>)> = batches.into_iter().collect();
    // One pass over the keys, then a filter per batch (no copy of a batch that keeps
    // every row): no per-batch table maintenance (deltas, replaced rows), which a batch
    // run never reads.
    let encoder = RowEncoder::new(&stream.schema, stream.primary_key.clone())?;
    let keys = batches.iter().map(|(batch, _)| encoder.encode(batch)).collect::<std::result::Result<Vec<_>, _>>()?;
    let mut last: RowMap<&[u8], (usize, usize)> = RowMap::with_capacity_and_hasher(keys.iter().map(EncodedRows::len).sum(), Default::default());
    for (b, keys) in keys.iter().enumerate() {
        for row in 0..keys.len() {
            last.insert(keys.get(row), (b, row));
        }
    }
    let mut live: Vec<Vec<bool>> = batches.iter().map(|(batch, _)| vec![false; batch.num_rows()]).collect();
    for (b, row) in last.into_values() {
        live[b][row] = !batches[b].1.is_some_and(|deleted| deleted.value(row));
    }
    batches.iter().zip(live).map(|((batch, _), live)| Ok(filter_record_batch(batch, &BooleanArray::from(live))?)).collect()
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{Int32Array, Int64Array, StringArray};

    use super::*;

    fn table() -> (ChangelogTable, SchemaRef) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int32, false),
            Field::new("name", DataType::Utf8, true),
            Field::new("_offset", DataType::Int64, false),
        ]));
        (ChangelogTable::new("t", schema.clone(), vec![0], &[1]).unwrap(), schema)
    }

    fn rows(schema: &SchemaRef, ids: std::ops::Range<i32>) -> RecordBatch {
        let names: Vec<String> = ids.clone().map(|i| format!("n{i}")).collect();
        let offsets: Vec<i64> = ids.clone().map(i64::from).collect();
        RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(Int32Array::from_iter_values(ids)), Arc::new(StringArray::from(names)), Arc::new(Int64Array::from(offsets))],
        )
        .unwrap()
    }

    #[test]
    fn an_unread_column_that_cannot_be_null_reads_as_zero() {
        let (mut table, schema) = table();
        table.apply(&rows(&schema, 0..3), None).unwrap();
        let whole = table.whole().unwrap();
        assert_eq!(whole.schema(), schema);
        assert_eq!(whole.column(2).as_any().downcast_ref::<Int64Array>().unwrap().values().to_vec(), vec![0, 0, 0]);
        assert_eq!(table.state().unwrap().num_columns(), 3, "id, name and the delete flag: not the unread offset");
    }

    #[test]
    fn a_small_busy_table_keeps_its_log_collapsed() {
        let (mut table, schema) = table();
        for _ in 0..=MIN_LOGGED_CHANGES / 10 {
            table.apply(&rows(&schema, 0..10), None).unwrap();
        }
        assert!(!table.needs_full_checkpoint());
        assert!(table.changes_since_checkpoint() < MIN_LOGGED_CHANGES);
        assert_eq!(table.changed_state().unwrap().num_rows(), 10);
    }

    #[test]
    fn changes_to_most_keys_drop_the_log_for_a_full_checkpoint() {
        let (mut table, schema) = table();
        table.apply(&rows(&schema, 0..5000), None).unwrap();
        assert!(!table.needs_full_checkpoint());
        assert_eq!(table.changed_state().unwrap().num_rows(), 5000);
        table.apply(&rows(&schema, 0..5000), None).unwrap();
        assert!(table.needs_full_checkpoint());
        assert!(table.changed_state().is_err());
        assert_eq!(table.changes_since_checkpoint(), 5000);
        table.mark_checkpointed();
        assert!(!table.needs_full_checkpoint());
        assert_eq!(table.changed_state().unwrap().num_rows(), 0);
    }

    #[test]
    fn a_log_past_the_table_size_is_collapsed_or_dropped_by_its_distinct_keys() {
        let (mut table, schema) = table();
        table.apply(&rows(&schema, 0..5000), None).unwrap();
        table.mark_checkpointed();
        for _ in 0..6 {
            table.apply(&rows(&schema, 0..1000), None).unwrap();
        }
        assert!(!table.needs_full_checkpoint());
        assert_eq!(table.changes_since_checkpoint(), 1000, "6,000 entries over 1,000 keys, collapsed");
        table.apply(&rows(&schema, 0..5000), None).unwrap();
        assert!(table.needs_full_checkpoint(), "every key changed, though the table did not grow");
    }
}
