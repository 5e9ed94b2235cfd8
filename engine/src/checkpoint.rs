//! Atomic checkpoints of view state and source positions.
//!
//! A checkpoint is a directory `ckpt-<batch>` holding one Arrow IPC file per
//! aggregate state and a `meta.json` with the source offsets. It is written
//! under a temporary name, fsynced and renamed; then the `CURRENT` file is
//! replaced (temp file, fsync, rename) to point at it. A crash at any moment
//! leaves either the old or the new checkpoint readable, never a torn one.
//!
//! Most checkpoints are deltas: their state files hold only the groups changed
//! since the previous checkpoint, and `meta.json` names the chain they build on
//! (a full checkpoint, then deltas, oldest first). Loading applies the chain in
//! order, later rows of a group replacing earlier ones. Once the deltas outgrow
//! the full checkpoint, or after [`MAX_DELTAS`] of them (see
//! [`Checkpointer::set_max_deltas`]), the next checkpoint is full again, and the
//! chain it replaces is removed only after `CURRENT` points at it: a crash during
//! that compaction leaves the old chain current.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use datafusion::arrow::ipc::reader::FileReader;
use datafusion::arrow::ipc::writer::FileWriter;
use datafusion::arrow::record_batch::RecordBatch;

use crate::contract::CheckpointMeta;
use crate::error::{EngineError, Result};

const CURRENT: &str = "CURRENT";
const META: &str = "meta.json";

/// Most delta checkpoints one full checkpoint carries before the next is full, by default.
pub const MAX_DELTAS: usize = 32;
/// Delta rows always allowed before a compaction, however small the full state.
const MIN_COMPACTION_ROWS: usize = 65_536;

/// View name → state batches, one per aggregate, in aggregate order.
pub type ViewStates = BTreeMap<String, Vec<RecordBatch>>;

/// The views' state as one checkpoint holds it.
#[derive(Debug)]
pub enum StateFiles {
    /// Every group.
    Full(ViewStates),
    /// The groups changed since the previous checkpoint, which it builds on.
    Changes(ViewStates),
}

/// What writing a checkpoint did.
#[derive(Debug, Clone, PartialEq)]
pub struct Written {
    /// Directory name of the checkpoint (`ckpt-<batch>`).
    pub name: String,
    /// Whether it holds the full state (else only the changed groups; false when
    /// nothing was written, the micro-batch being checkpointed already).
    pub full: bool,
    /// State rows written.
    pub rows: usize,
    /// Bytes written: state files and metadata.
    pub bytes: u64,
}

/// A checkpoint read back: positions plus the state batches of each view.
#[derive(Debug)]
pub struct Checkpoint {
    /// Positions and counts.
    pub meta: CheckpointMeta,
    /// View name → state batches, in aggregate order. Each batch holds the chain's
    /// rows in order (full checkpoint first): where a group appears twice, the later row is its state.
    pub states: ViewStates,
}

/// Reads and writes checkpoints under a state directory.
///
/// ```
/// use std::collections::BTreeMap;
/// use trendflow_engine::checkpoint::{Checkpointer, StateFiles};
/// use trendflow_engine::contract::CheckpointMeta;
///
/// let dir = tempfile::tempdir().unwrap();
/// let mut store = Checkpointer::new(dir.path().join("ckpt")).unwrap();
/// assert!(store.load().unwrap().is_none());
/// let meta = CheckpointMeta { batch_id: 7, ..Default::default() };
/// assert!(store.wants_full(0));
/// store.write(&meta, &StateFiles::Full(BTreeMap::new())).unwrap();
/// assert_eq!(store.load().unwrap().unwrap().meta.batch_id, 7);
/// ```
#[derive(Debug)]
pub struct Checkpointer {
    dir: PathBuf,
    /// The current checkpoint and those it builds on, oldest first.
    chain: Vec<String>,
    max_deltas: usize,
    /// State rows of the chain's full checkpoint, and of its deltas.
    full_rows: usize,
    delta_rows: usize,
}

impl Checkpointer {
    /// Checkpoints kept in `dir` (created when missing).
    pub fn new(dir: PathBuf) -> Result<Self> {
        fs::create_dir_all(&dir).map_err(|e| io_error(&dir, e))?;
        Ok(Self { dir, chain: Vec::new(), max_deltas: MAX_DELTAS, full_rows: 0, delta_rows: 0 })
    }

    /// Makes every checkpoint after `max_deltas` deltas a full one (0: every checkpoint).
    pub fn set_max_deltas(&mut self, max_deltas: usize) {
        self.max_deltas = max_deltas;
    }

    /// Whether the next checkpoint, in which `changed` groups changed, should hold the
    /// full state: when there is none to build on, or when reading the deltas back would
    /// cost more than the full state does.
    pub fn wants_full(&self, changed: usize) -> bool {
        self.chain.is_empty() || self.chain.len() > self.max_deltas || self.delta_rows + changed > self.full_rows.max(MIN_COMPACTION_ROWS)
    }

    /// The directory checkpoints live in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes a checkpoint and makes it current. `Changes` build on the current
    /// checkpoint. A checkpoint of a micro-batch already checkpointed is the current
    /// one (nothing changed since): nothing is written.
    pub fn write(&mut self, meta: &CheckpointMeta, state: &StateFiles) -> Result<Written> {
        let name = format!("ckpt-{:012}", meta.batch_id);
        let (states, full) = match state {
            StateFiles::Full(states) => (states, true),
            StateFiles::Changes(states) => (states, false),
        };
        let known = !self.chain.is_empty();
        if !known {
            // Neither loaded nor written by us: never overwrite what the checkpoint on disk builds on.
            self.chain = self.chain_on_disk()?;
            if !full {
                return Err(EngineError::Checkpoint {
                    path: self.dir.clone(),
                    message: "a checkpoint of changed groups needs a checkpoint to build on; load one or write the full state".into(),
                });
            }
        }
        if known && self.chain.last() == Some(&name) {
            return Ok(Written { name, full: false, rows: 0, bytes: 0 });
        }
        if self.chain.contains(&name) {
            return Err(EngineError::Checkpoint {
                path: self.dir.join(&name),
                message: "the current checkpoint builds on a checkpoint of this micro-batch; resume from it (or use a fresh --state directory)"
                    .into(),
            });
        }
        let compaction = full && !self.chain.is_empty();
        let tmp = self.dir.join(format!("{name}.tmp"));
        let final_dir = self.dir.join(&name);
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(|e| io_error(&tmp, e))?;
        }
        fs::create_dir_all(&tmp).map_err(|e| io_error(&tmp, e))?;
        let mut meta = meta.clone();
        meta.views.clear();
        meta.base = if full { Vec::new() } else { self.chain.clone() };
        let (mut files, mut rows, mut bytes) = (0, 0, 0);
        for (view, batches) in states {
            for (i, batch) in batches.iter().enumerate() {
                bytes += write_ipc(&tmp.join(format!("{view}.{i}.arrow")), batch)?;
                rows += batch.num_rows();
                files += 1;
                if files == 1 {
                    abort_if_asked(compaction);
                }
            }
            meta.views.insert(view.clone(), batches.len());
        }
        let json = serde_json::to_vec_pretty(&meta).expect("checkpoint metadata serializes");
        write_synced(&tmp.join(META), &json)?;
        bytes += json.len() as u64;
        sync_dir(&tmp)?;
        // A leftover of a run that crashed before pointing `CURRENT` at it (the chain
        // does not hold it: checked above).
        if final_dir.exists() {
            fs::remove_dir_all(&final_dir).map_err(|e| io_error(&final_dir, e))?;
        }
        fs::rename(&tmp, &final_dir).map_err(|e| io_error(&final_dir, e))?;
        let pointer = self.dir.join(format!("{CURRENT}.tmp"));
        write_synced(&pointer, name.as_bytes())?;
        fs::rename(&pointer, self.dir.join(CURRENT)).map_err(|e| io_error(&pointer, e))?;
        sync_dir(&self.dir)?;
        if full {
            self.chain = vec![name.clone()];
            (self.full_rows, self.delta_rows) = (rows, 0);
        } else {
            self.chain.push(name.clone());
            self.delta_rows += rows;
        }
        self.remove_stale();
        Ok(Written { name, full, rows, bytes })
    }

    /// The current checkpoint, if any, with the state of its whole chain.
    pub fn load(&mut self) -> Result<Option<Checkpoint>> {
        let Some((meta, chain)) = self.current()? else { return Ok(None) };
        let (mut full_rows, mut delta_rows) = (0, 0);
        let mut states = BTreeMap::new();
        for (view, count) in &meta.views {
            let mut batches = Vec::with_capacity(*count);
            for i in 0..*count {
                let parts = chain.iter().map(|dir| read_ipc(&self.dir.join(dir).join(format!("{view}.{i}.arrow")))).collect::<Result<Vec<_>>>()?;
                full_rows += parts[0].num_rows();
                delta_rows += parts[1..].iter().map(RecordBatch::num_rows).sum::<usize>();
                batches.push(datafusion::arrow::compute::concat_batches(&parts[0].schema(), &parts)?);
            }
            states.insert(view.clone(), batches);
        }
        (self.chain, self.full_rows, self.delta_rows) = (chain, full_rows, delta_rows);
        Ok(Some(Checkpoint { meta, states }))
    }

    /// The metadata of the checkpoint `CURRENT` points at, and its chain (oldest first).
    fn current(&self) -> Result<Option<(CheckpointMeta, Vec<String>)>> {
        let pointer = self.dir.join(CURRENT);
        let name = match fs::read_to_string(&pointer) {
            Ok(name) => name.trim().to_string(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error(&pointer, e)),
        };
        let meta_path = self.dir.join(&name).join(META);
        let bytes = fs::read(&meta_path).map_err(|e| io_error(&meta_path, e))?;
        let meta: CheckpointMeta =
            serde_json::from_slice(&bytes).map_err(|e| EngineError::Checkpoint { path: meta_path.clone(), message: e.to_string() })?;
        let chain = meta.base.iter().cloned().chain([name]).collect();
        Ok(Some((meta, chain)))
    }

    fn chain_on_disk(&self) -> Result<Vec<String>> {
        Ok(self.current()?.map(|(_, chain)| chain).unwrap_or_default())
    }

    /// Removes checkpoints outside the current chain, and leftovers of interrupted writes.
    fn remove_stale(&self) {
        let Ok(entries) = fs::read_dir(&self.dir) else { return };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("ckpt-") && !self.chain.contains(&name) {
                if let Err(e) = fs::remove_dir_all(entry.path()) {
                    tracing::warn!(path = %entry.path().display(), error = %e, "could not remove an old checkpoint");
                }
            }
        }
    }
}

/// Crash-test hook: with `TRENDFLOW_ABORT_AT=checkpoint-write:N` the process aborts
/// during its N-th checkpoint write, right after the first state file, the way a
/// power cut or SIGKILL would stop it; with `checkpoint-compaction:N`, during its N-th
/// compaction (a full checkpoint replacing a chain). The crash tests use it to cut a
/// write short at the worst moment, which random kills rarely hit.
fn abort_if_asked(compaction: bool) {
    static WRITES: AtomicU64 = AtomicU64::new(0);
    static COMPACTIONS: AtomicU64 = AtomicU64::new(0);
    static AT: OnceLock<Option<(String, u64)>> = OnceLock::new();
    let at = AT.get_or_init(|| {
        let (kind, n) = std::env::var("TRENDFLOW_ABORT_AT").ok()?.split_once(':').map(|(k, n)| (k.to_string(), n.to_string()))?;
        Some((kind, n.parse().ok()?))
    });
    let writes = WRITES.fetch_add(1, Ordering::Relaxed) + 1;
    let compactions = if compaction { COMPACTIONS.fetch_add(1, Ordering::Relaxed) + 1 } else { 0 };
    let hit = match at {
        Some((kind, n)) if kind == "checkpoint-write" => writes == *n,
        Some((kind, n)) if kind == "checkpoint-compaction" => compaction && compactions == *n,
        _ => false,
    };
    if hit {
        eprintln!("TRENDFLOW_ABORT_AT: aborting in the middle of checkpoint write {writes} (compaction: {compaction})");
        std::process::abort();
    }
}

/// Writes `batch` as an Arrow IPC file, synced; returns its size in bytes.
fn write_ipc(path: &Path, batch: &RecordBatch) -> Result<u64> {
    let file = File::create(path).map_err(|e| io_error(path, e))?;
    let mut writer = FileWriter::try_new(file, &batch.schema())?;
    writer.write(batch)?;
    writer.finish()?;
    let file = writer.get_ref();
    file.sync_all().map_err(|e| io_error(path, e))?;
    Ok(file.metadata().map_err(|e| io_error(path, e))?.len())
}

fn read_ipc(path: &Path) -> Result<RecordBatch> {
    let file = File::open(path).map_err(|e| io_error(path, e))?;
    let reader = FileReader::try_new(file, None).map_err(|e| EngineError::Checkpoint { path: path.to_path_buf(), message: e.to_string() })?;
    let schema = reader.schema();
    let batches = reader
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| EngineError::Checkpoint { path: path.to_path_buf(), message: e.to_string() })?;
    Ok(datafusion::arrow::compute::concat_batches(&schema, &batches)?)
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = File::create(path).map_err(|e| io_error(path, e))?;
    file.write_all(bytes).map_err(|e| io_error(path, e))?;
    file.sync_all().map_err(|e| io_error(path, e))
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io_error(dir, e))
}

fn io_error(path: &Path, e: std::io::Error) -> EngineError {
    EngineError::Checkpoint { path: path.to_path_buf(), message: e.to_string() }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn states(keys: Vec<i64>) -> ViewStates {
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false)]));
        let batch = RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(keys))]).unwrap();
        BTreeMap::from([("v".to_string(), vec![batch])])
    }

    fn keys(checkpoint: &Checkpoint) -> Vec<i64> {
        let column = checkpoint.states["v"][0].column(0).as_any().downcast_ref::<Int64Array>().unwrap().clone();
        column.values().to_vec()
    }

    fn meta(batch_id: u64) -> CheckpointMeta {
        CheckpointMeta { batch_id, ..Default::default() }
    }

    #[test]
    fn interrupted_write_keeps_previous_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Checkpointer::new(dir.path().to_path_buf()).unwrap();
        store.write(&meta(1), &StateFiles::Full(BTreeMap::new())).unwrap();
        // A crash mid-write leaves a temp directory and a temp pointer behind.
        fs::create_dir_all(dir.path().join("ckpt-000000000002.tmp")).unwrap();
        fs::write(dir.path().join("CURRENT.tmp"), "ckpt-000000000002").unwrap();
        assert_eq!(store.load().unwrap().unwrap().meta.batch_id, 1);
        store.write(&meta(2), &StateFiles::Full(BTreeMap::new())).unwrap();
        assert_eq!(store.load().unwrap().unwrap().meta.batch_id, 2);
        assert!(!dir.path().join("ckpt-000000000001").exists());
    }

    #[test]
    fn deltas_build_on_the_full_checkpoint_and_a_crashed_compaction_keeps_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Checkpointer::new(dir.path().to_path_buf()).unwrap();
        assert!(store.wants_full(0), "nothing to build on yet");
        let full = store.write(&meta(1), &StateFiles::Full(states(vec![1, 2, 3]))).unwrap();
        assert!(full.full && full.rows == 3 && full.bytes > 0);
        assert!(!store.wants_full(2));
        let delta = store.write(&meta(2), &StateFiles::Changes(states(vec![2]))).unwrap();
        assert!(!delta.full && delta.rows == 1 && delta.bytes > 0);
        store.write(&meta(3), &StateFiles::Changes(states(vec![3, 4]))).unwrap();
        // Re-checkpointing a micro-batch already checkpointed writes nothing.
        assert_eq!(store.write(&meta(3), &StateFiles::Changes(states(vec![9]))).unwrap().bytes, 0);

        // A compaction that crashed after its first file: the chain stays current.
        fs::create_dir_all(dir.path().join("ckpt-000000000004.tmp")).unwrap();
        fs::write(dir.path().join("ckpt-000000000004.tmp/v.0.arrow"), b"torn").unwrap();
        let mut reopened = Checkpointer::new(dir.path().to_path_buf()).unwrap();
        let loaded = reopened.load().unwrap().unwrap();
        assert_eq!(loaded.meta.batch_id, 3);
        assert_eq!(loaded.meta.base, vec!["ckpt-000000000001", "ckpt-000000000002"]);
        assert_eq!(keys(&loaded), vec![1, 2, 3, 2, 3, 4], "the chain in order, full checkpoint first");

        let compacted = reopened.write(&meta(4), &StateFiles::Full(states(vec![1, 2, 3, 4]))).unwrap();
        assert!(compacted.full);
        assert_eq!(keys(&reopened.load().unwrap().unwrap()), vec![1, 2, 3, 4]);
        let left: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("ckpt-"))
            .collect();
        assert_eq!(left, vec!["ckpt-000000000004"], "the replaced chain and the torn write are gone");
    }

    #[test]
    fn deltas_that_outgrow_the_full_state_or_pile_up_ask_for_a_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Checkpointer::new(dir.path().to_path_buf()).unwrap();
        store.write(&meta(1), &StateFiles::Full(states(vec![1]))).unwrap();
        assert!(store.wants_full(MIN_COMPACTION_ROWS + 1));
        for batch_id in 2..=(MAX_DELTAS as u64 + 1) {
            assert!(!store.wants_full(1));
            store.write(&meta(batch_id), &StateFiles::Changes(states(vec![1]))).unwrap();
        }
        assert!(store.wants_full(1), "{MAX_DELTAS} deltas are the most one chain carries");
    }
}
