//! How long the rows of closed windows stay in a view ([`Retention`]). A windowed view's
//! groups leave the engine's state when their window closes, but their rows stay in the
//! sinks; with a retention (`TUMBLE(products, INTERVAL '1 day', INTERVAL '90 days')`)
//! the view deletes them once the watermark is that long past the window's end, so the
//! stored history is bounded too. The keys of the rows still held (with their window's
//! end) are the only state this needs: one small row per stored row of a closed window.

use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::compute::{cast, concat_batches};
use datafusion::arrow::datatypes::{SchemaRef, TimestampMillisecondType};

use crate::contract::{Changeset, ViewInfo};
use crate::error::Result;
use crate::keyed::{filter_by_keys, project_columns, KeyedTable};
use crate::stream_table::timestamp_type;
use crate::window::{closed_rows, retained_rows};

/// The rows of closed windows a view still holds, and when each expires.
#[derive(Debug)]
pub struct Retention {
    retention_ms: i64,
    /// The view's columns kept per row: its key columns, then the column telling the
    /// window's end when it is not one of them.
    kept: Vec<usize>,
    /// Where the window's end is among the kept columns, and what to add to that column.
    end: (usize, i64),
    /// Kept columns of the rows of closed windows, by view key.
    rows: KeyedTable,
    /// Whether rows expired since the last checkpoint (a delta cannot say so).
    expired: bool,
    /// The watermark at which the first of `rows` expires (`None`: no row is held).
    next_expiry: Option<i64>,
}

impl Retention {
    /// The retention of `info`'s rows: `end` is the output column holding their window's
    /// end or start, and what to add to it for the end (see [`crate::window`]).
    pub fn new(info: &ViewInfo, end: (usize, i64), retention_ms: i64) -> Result<Self> {
        let mut kept = info.key.clone();
        if !kept.contains(&end.0) {
            kept.push(end.0);
        }
        let end_in_kept = kept.iter().position(|&c| c == end.0).expect("the end column is kept");
        let schema = std::sync::Arc::new(info.schema.project(&kept)?);
        let key = (0..info.key.len()).collect();
        Ok(Self { retention_ms, kept, end: (end_in_kept, end.1), rows: KeyedTable::new(schema, key)?, expired: false, next_expiry: None })
    }

    /// Remembers `rows` (full view rows, of windows that just closed) until they expire.
    pub fn remember(&mut self, rows: &RecordBatch) -> Result<()> {
        let kept = project_columns(rows, &self.kept)?;
        self.next_expiry = [self.next_expiry, self.first_expiry(&kept)?].into_iter().flatten().min();
        Ok(self.rows.upsert(&kept)?)
    }

    /// When the first row of `rows` (kept columns) expires.
    fn first_expiry(&self, rows: &RecordBatch) -> Result<Option<i64>> {
        let ends = cast(rows.column(self.end.0), &timestamp_type())?;
        let first = datafusion::arrow::compute::min(ends.as_primitive::<TimestampMillisecondType>());
        Ok(first.map(|end| end.saturating_add(self.end.1).saturating_add(self.retention_ms)))
    }

    /// Deletes from `changes` every row whose window ended `retention` before
    /// `watermark`, forgetting it: its key joins the deletes and leaves the upserts (a
    /// window may close and expire in one micro-batch).
    pub fn expire(&mut self, mut changes: Changeset, watermark: i64, info: &ViewInfo) -> Result<Changeset> {
        if self.next_expiry.is_none_or(|first| watermark < first) {
            return Ok(changes);
        }
        let held = self.rows.to_batch()?;
        let expired = closed_rows(&held, self.end.0, self.end.1.saturating_add(self.retention_ms), Some(watermark))?;
        let key_columns: Vec<usize> = (0..info.key.len()).collect();
        let keys = project_columns(&expired, &key_columns)?;
        self.rows.remove(&keys)?;
        self.next_expiry = self.first_expiry(&retained_rows(&held, self.end.0, self.end.1, self.retention_ms, Some(watermark))?)?;
        self.expired = true;
        changes.upserts = filter_by_keys(&changes.upserts, &info.key, &keys, false)?;
        let deletes = filter_by_keys(&changes.deletes, &key_columns, &keys, false)?;
        changes.deletes = concat_batches(&info.key_schema(), &[deletes, keys])?;
        Ok(changes)
    }

    /// The rows remembered, for a checkpoint.
    pub fn state(&self) -> Result<RecordBatch> {
        Ok(self.rows.to_batch()?)
    }

    /// Schema of [`Self::state`].
    pub fn state_schema(&self) -> &SchemaRef {
        self.rows.schema()
    }

    /// Replaces the rows remembered by `state` (from a checkpoint).
    pub fn restore(&mut self, state: &RecordBatch) -> Result<()> {
        self.rows.clear();
        self.rows.upsert(state)?;
        self.next_expiry = self.first_expiry(state)?;
        Ok(())
    }

    /// Whether rows expired since the last checkpoint: the next must be full.
    pub fn expired_since_checkpoint(&self) -> bool {
        self.expired
    }

    /// Forgets what expired: a checkpoint now holds the rest.
    pub fn mark_checkpointed(&mut self) {
        self.expired = false;
    }
}
