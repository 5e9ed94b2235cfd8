//! Dead letters: records that did not decode, kept with the reason instead of dropped.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{ConnectorError, Result};

/// One rejected record.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DeadLetter {
    /// Stream the record was meant for.
    pub stream: String,
    /// Partition it came from.
    pub partition: i32,
    /// Its offset (record index within a file).
    pub offset: i64,
    /// Why it was rejected.
    pub reason: String,
    /// The record as received (text), or as JSON of its fields.
    pub record: String,
}

/// Appends dead letters to `<dir>/<stream>.ndjson`, one JSON object per line.
#[derive(Debug)]
pub struct DeadLetterFile {
    path: PathBuf,
    writer: Option<BufWriter<File>>,
}

impl DeadLetterFile {
    /// Dead letters of `stream`, kept under `dir` (the file is created on the first letter).
    pub fn new(dir: &Path, stream: &str) -> Self {
        Self { path: dir.join(format!("{stream}.ndjson")), writer: None }
    }

    /// Bytes in the file (0 when it does not exist yet): the position a checkpoint records.
    #[allow(clippy::len_without_is_empty)] // a file position, not a collection
    pub fn len(&self) -> Result<u64> {
        match std::fs::metadata(&self.path) {
            Ok(meta) => Ok(meta.len()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(ConnectorError::io(&self.path, e)),
        }
    }

    /// Cuts the file back to `len` bytes: letters written after a checkpoint are
    /// written again when their records are replayed, so they must go first.
    pub fn truncate(&mut self, len: u64) -> Result<()> {
        self.writer = None;
        match OpenOptions::new().write(true).open(&self.path) {
            Ok(file) => file.set_len(len).and_then(|()| file.sync_all()).map_err(|e| ConnectorError::io(&self.path, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ConnectorError::io(&self.path, e)),
        }
    }

    /// Appends `letters` and flushes them to the file.
    pub fn write(&mut self, letters: &[DeadLetter]) -> Result<()> {
        if letters.is_empty() {
            return Ok(());
        }
        if self.writer.is_none() {
            if let Some(dir) = self.path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| ConnectorError::io(dir, e))?;
            }
            let file = OpenOptions::new().create(true).append(true).open(&self.path).map_err(|e| ConnectorError::io(&self.path, e))?;
            self.writer = Some(BufWriter::new(file));
        }
        let writer = self.writer.as_mut().expect("writer opened above");
        for letter in letters {
            serde_json::to_writer(&mut *writer, letter).map_err(|e| ConnectorError::io(&self.path, e))?;
            writer.write_all(b"\n").map_err(|e| ConnectorError::io(&self.path, e))?;
        }
        writer.flush().map_err(|e| ConnectorError::io(&self.path, e))
    }
}
