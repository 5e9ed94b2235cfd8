//! The contract between the engine and its connectors, in one place: what a source
//! hands the engine ([`Source`], [`Poll`], [`MicroBatch`], [`Offsets`]), what a sink
//! receives ([`Sink`], [`ViewInfo`], [`Changeset`], [`CheckpointMeta`]), and what a
//! stream declares ([`StreamDecl`] with its typed [`StreamOptions`]). Besides this
//! module, connectors use only the catalog (to open its streams' sources), file formats,
//! and the keyed and snapshot tables the embedded store serves.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use datafusion::arrow::array::BooleanArray;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};

use crate::error::Result;
pub use crate::event_time::WatermarkState;
pub use crate::stream_options::{AvroSchemas, Changelog, StreamFormat, StreamOptions};
pub use crate::stream_table::StreamDecl;

/// Per-partition positions of one source: partition → next offset to read.
pub type Offsets = BTreeMap<i32, i64>;

/// Records of one stream for one micro-batch, with the positions after them.
#[derive(Debug, Clone)]
pub struct MicroBatch {
    /// Decoded records, with the stream's full schema (declared + metadata columns).
    pub batch: RecordBatch,
    /// On a changelog stream, the rows of `batch` that delete their key (tombstones,
    /// Debezium deletes: only their key columns hold values); `None` when none do.
    pub deleted: Option<BooleanArray>,
    /// Positions after the last record of `batch`, per partition.
    pub offsets: Offsets,
    /// Records that did not decode and went to the dead-letter destination instead.
    pub rejected: u64,
}

impl MicroBatch {
    /// A micro-batch of `batch`'s rows, of which those `deleted` marks (one flag per row,
    /// or none at all) delete their key.
    pub fn new(batch: RecordBatch, deleted: &[bool], offsets: Offsets, rejected: u64) -> Self {
        let deleted = deleted.contains(&true).then(|| deleted.iter().map(|d| Some(*d)).collect());
        Self { batch, deleted, offsets, rejected }
    }
}

/// The outcome of polling a source.
#[derive(Debug)]
pub enum Poll {
    /// Records are ready.
    Batch(MicroBatch),
    /// Nothing arrived within the allowed delay; more may come.
    Idle,
    /// The source is exhausted (a replayed file reached its end).
    Finished,
}

/// Where a stream's records come from. Implemented by connectors.
///
/// A job polls its sources on a thread of their own, one micro-batch ahead of its
/// views (see [`crate::prefetch`]), and checkpoints only what the views took in: after
/// [`Source::seek`] to a checkpoint's offsets a source gives again what it gave after
/// them, including a micro-batch read ahead of a crash or a stop.
#[async_trait]
pub trait Source: Send {
    /// The stream this source feeds.
    fn stream(&self) -> &str;
    /// Gathers up to `max_rows` records, waiting at most `max_delay` for them.
    async fn poll(&mut self, max_rows: usize, max_delay: Duration) -> Result<Poll>;
    /// Continues after `offsets` (from a checkpoint) instead of the beginning.
    async fn seek(&mut self, offsets: &Offsets) -> Result<()>;
    /// What this source reads (e.g. `file:/data/products.csv`); checkpoints remember it
    /// so that a restart bound to another input is refused rather than mis-positioned.
    fn identity(&self) -> String {
        self.stream().to_string()
    }
    /// Records waiting to be read, when the source can tell (Kafka: end offsets minus
    /// positions, as of its last look at the end offsets).
    fn lag(&self) -> Option<u64> {
        None
    }
    /// Sends `rows`, records this source delivered that the engine turned away (late:
    /// behind the stream's watermark), to the dead-letter destination with `reasons`
    /// (one per row). Returns positions to checkpoint with the micro-batch's (where the
    /// dead letters end), so that a replay neither loses nor repeats them.
    async fn reject(&mut self, rows: &RecordBatch, reasons: &[String]) -> Result<Offsets> {
        let _ = reasons;
        Err(crate::error::EngineError::Source {
            source_name: self.stream().to_string(),
            cause: format!("{} records are late, and this source has no dead-letter destination", rows.num_rows()).into(),
        })
    }
    /// Called after a checkpoint holding `offsets` is durable. Positions live in the
    /// checkpoint, so an error is logged, not fatal.
    async fn commit(&mut self, _offsets: &Offsets) -> Result<()> {
        Ok(())
    }
    /// Every micro-batch of up to `max_rows` records from here until the source is
    /// finished, for a batch run of a bounded source. By default: [`poll_to_end`]; a
    /// source that can read faster at once (a file, on every core) gives the same batches.
    async fn read_to_end(&mut self, max_rows: usize) -> Result<Vec<MicroBatch>> {
        poll_to_end(self, max_rows).await
    }
}

/// Polls `source` until it is finished, keeping every micro-batch.
pub async fn poll_to_end<S: Source + ?Sized>(source: &mut S, max_rows: usize) -> Result<Vec<MicroBatch>> {
    let mut batches = Vec::new();
    loop {
        match source.poll(max_rows, Duration::from_millis(200)).await? {
            Poll::Batch(micro) => batches.push(micro),
            Poll::Idle => continue,
            Poll::Finished => return Ok(batches),
        }
    }
}

/// Where view changes go. Implemented by connectors; must be idempotent, since
/// changes after the last checkpoint are replayed after a crash.
#[async_trait]
pub trait Sink: Send {
    /// Prepares the destination for `views`.
    async fn open(&mut self, views: &[ViewInfo]) -> Result<()>;
    /// Applies one view's changes (absolute values; replaying gives the same result).
    async fn apply(&mut self, view: &ViewInfo, changes: &Changeset) -> Result<()>;
    /// Makes everything applied so far durable; called before each checkpoint.
    async fn flush(&mut self, meta: &CheckpointMeta) -> Result<()>;
    /// Makes `view`'s rows exactly `rows`, removing any others. Called at start-up for
    /// every view that keeps its whole result: changes applied after the last checkpoint
    /// may have reached the sink before a crash, and the replay, cut into other
    /// micro-batches, need not undo them (a category that entered the top 10 and left
    /// it again in the lost run would otherwise stay).
    async fn reset(&mut self, view: &ViewInfo, rows: &RecordBatch) -> Result<()>;
}

/// What a checkpoint records besides the state batches.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CheckpointMeta {
    /// Micro-batches processed when it was taken.
    pub batch_id: u64,
    /// Source name → positions.
    pub sources: BTreeMap<String, Offsets>,
    /// View name → number of state files (`<view>.<i>.arrow`).
    pub views: BTreeMap<String, usize>,
    /// What the state was computed from: `view:<name>` → hash of its SQL,
    /// `source:<stream>` → the bound input. A restart with other inputs is refused.
    #[serde(default)]
    pub inputs: BTreeMap<String, String>,
    /// The checkpoints whose state this one's builds on, oldest (a full one) first;
    /// empty when this one holds the full state.
    #[serde(default)]
    pub base: Vec<String>,
    /// Stream → its watermark's state, to resume it exactly.
    #[serde(default)]
    pub watermarks: BTreeMap<String, WatermarkState>,
}

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
