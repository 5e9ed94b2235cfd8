//! Atomic checkpoints of view state and source positions.
//!
//! A checkpoint is a directory `ckpt-<batch>` holding one Arrow IPC file per
//! aggregate state and a `meta.json` with the source offsets. It is written
//! under a temporary name, fsynced and renamed; then the `CURRENT` file is
//! replaced (temp file, fsync, rename) to point at it. A crash at any moment
//! leaves either the old or the new checkpoint readable, never a torn one.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use datafusion::arrow::ipc::reader::FileReader;
use datafusion::arrow::ipc::writer::FileWriter;
use datafusion::arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};

use crate::error::{EngineError, Result};

/// Per-partition positions of one source: partition → next offset to read.
pub type Offsets = BTreeMap<i32, i64>;

const CURRENT: &str = "CURRENT";
const META: &str = "meta.json";

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
}

/// A checkpoint read back: positions plus the state batches of each view.
#[derive(Debug)]
pub struct Checkpoint {
    /// Positions and counts.
    pub meta: CheckpointMeta,
    /// View name → state batches, in aggregate order.
    pub states: BTreeMap<String, Vec<RecordBatch>>,
}

/// Reads and writes checkpoints under a state directory.
///
/// ```
/// use std::collections::BTreeMap;
/// use trendflow_engine::checkpoint::{CheckpointMeta, Checkpointer};
///
/// let dir = tempfile::tempdir().unwrap();
/// let store = Checkpointer::new(dir.path().join("ckpt")).unwrap();
/// assert!(store.load().unwrap().is_none());
/// let meta = CheckpointMeta { batch_id: 7, ..Default::default() };
/// store.write(&meta, &BTreeMap::new()).unwrap();
/// assert_eq!(store.load().unwrap().unwrap().meta.batch_id, 7);
/// ```
#[derive(Debug, Clone)]
pub struct Checkpointer {
    dir: PathBuf,
}

impl Checkpointer {
    /// Checkpoints kept in `dir` (created when missing).
    pub fn new(dir: PathBuf) -> Result<Self> {
        fs::create_dir_all(&dir).map_err(|e| io_error(&dir, e))?;
        Ok(Self { dir })
    }

    /// The directory checkpoints live in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes a checkpoint and makes it current.
    pub fn write(&self, meta: &CheckpointMeta, states: &BTreeMap<String, Vec<RecordBatch>>) -> Result<()> {
        let name = format!("ckpt-{:012}", meta.batch_id);
        let tmp = self.dir.join(format!("{name}.tmp"));
        let final_dir = self.dir.join(&name);
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(|e| io_error(&tmp, e))?;
        }
        fs::create_dir_all(&tmp).map_err(|e| io_error(&tmp, e))?;
        let mut meta = meta.clone();
        meta.views.clear();
        let mut files = 0;
        for (view, batches) in states {
            for (i, batch) in batches.iter().enumerate() {
                write_ipc(&tmp.join(format!("{view}.{i}.arrow")), batch)?;
                files += 1;
                if files == 1 {
                    abort_if_asked();
                }
            }
            meta.views.insert(view.clone(), batches.len());
        }
        let json = serde_json::to_vec_pretty(&meta).expect("checkpoint metadata serializes");
        write_synced(&tmp.join(META), &json)?;
        sync_dir(&tmp)?;
        if final_dir.exists() {
            fs::remove_dir_all(&final_dir).map_err(|e| io_error(&final_dir, e))?;
        }
        fs::rename(&tmp, &final_dir).map_err(|e| io_error(&final_dir, e))?;
        let pointer = self.dir.join(format!("{CURRENT}.tmp"));
        write_synced(&pointer, name.as_bytes())?;
        fs::rename(&pointer, self.dir.join(CURRENT)).map_err(|e| io_error(&pointer, e))?;
        sync_dir(&self.dir)?;
        self.remove_stale(&name);
        Ok(())
    }

    /// The current checkpoint, if any.
    pub fn load(&self) -> Result<Option<Checkpoint>> {
        let pointer = self.dir.join(CURRENT);
        let name = match fs::read_to_string(&pointer) {
            Ok(name) => name,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error(&pointer, e)),
        };
        let dir = self.dir.join(name.trim());
        let meta_path = dir.join(META);
        let bytes = fs::read(&meta_path).map_err(|e| io_error(&meta_path, e))?;
        let meta: CheckpointMeta = serde_json::from_slice(&bytes)
            .map_err(|e| EngineError::Checkpoint { path: meta_path.clone(), message: e.to_string() })?;
        let mut states = BTreeMap::new();
        for (view, count) in &meta.views {
            let batches = (0..*count).map(|i| read_ipc(&dir.join(format!("{view}.{i}.arrow")))).collect::<Result<_>>()?;
            states.insert(view.clone(), batches);
        }
        Ok(Some(Checkpoint { meta, states }))
    }

    /// Removes checkpoints other than `keep`, and leftovers of interrupted writes.
    fn remove_stale(&self, keep: &str) {
        let Ok(entries) = fs::read_dir(&self.dir) else { return };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("ckpt-") && name != keep {
                if let Err(e) = fs::remove_dir_all(entry.path()) {
                    tracing::warn!(path = %entry.path().display(), error = %e, "could not remove an old checkpoint");
                }
            }
        }
    }
}

/// Crash-test hook: with `TRENDFLOW_ABORT_AT=checkpoint-write:N` the process aborts
/// during its N-th checkpoint write, right after the first state file, the way a
/// power cut or SIGKILL would stop it. The crash tests use it to cut a write short
/// at the worst moment, which random kills rarely hit.
fn abort_if_asked() {
    static WRITES: AtomicU64 = AtomicU64::new(0);
    static AT: OnceLock<Option<u64>> = OnceLock::new();
    let at = AT.get_or_init(|| std::env::var("TRENDFLOW_ABORT_AT").ok()?.strip_prefix("checkpoint-write:")?.parse().ok());
    if let Some(at) = at {
        if WRITES.fetch_add(1, Ordering::Relaxed) + 1 == *at {
            eprintln!("TRENDFLOW_ABORT_AT: aborting in the middle of checkpoint write {at}");
            std::process::abort();
        }
    }
}

fn write_ipc(path: &Path, batch: &RecordBatch) -> Result<()> {
    let file = File::create(path).map_err(|e| io_error(path, e))?;
    let mut writer = FileWriter::try_new(file, &batch.schema())?;
    writer.write(batch)?;
    writer.finish()?;
    writer.get_ref().sync_all().map_err(|e| io_error(path, e))
}

fn read_ipc(path: &Path) -> Result<RecordBatch> {
    let file = File::open(path).map_err(|e| io_error(path, e))?;
    let reader = FileReader::try_new(file, None)
        .map_err(|e| EngineError::Checkpoint { path: path.to_path_buf(), message: e.to_string() })?;
    let schema = reader.schema();
    let batches = reader.collect::<std::result::Result<Vec<_>, _>>()
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
    use super::*;

    #[test]
    fn interrupted_write_keeps_previous_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let store = Checkpointer::new(dir.path().to_path_buf()).unwrap();
        let meta = CheckpointMeta { batch_id: 1, ..Default::default() };
        store.write(&meta, &BTreeMap::new()).unwrap();
        // A crash mid-write leaves a temp directory and a temp pointer behind.
        fs::create_dir_all(dir.path().join("ckpt-000000000002.tmp")).unwrap();
        fs::write(dir.path().join("CURRENT.tmp"), "ckpt-000000000002").unwrap();
        assert_eq!(store.load().unwrap().unwrap().meta.batch_id, 1);
        let meta = CheckpointMeta { batch_id: 2, ..Default::default() };
        store.write(&meta, &BTreeMap::new()).unwrap();
        assert_eq!(store.load().unwrap().unwrap().meta.batch_id, 2);
        assert!(!dir.path().join("ckpt-000000000001").exists());
    }
}
