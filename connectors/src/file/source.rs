//! Replaying a file (CSV, NDJSON, Parquet) as a stream.
//!
//! The file is read in chunks of `max_rows` records; each record gets the
//! metadata a Kafka record would have: partition 0, its index as offset, and
//! as arrival time the file's own `_timestamp` column when it has one, or else
//! a replay clock: the time the replay started plus one millisecond per record
//! (a nominal 1,000 records per second). The start time is part of the
//! source's checkpointed position, so a replay after a crash stamps every
//! record exactly as the first pass did.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use datafusion::arrow::csv;
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::record_batch::RecordBatch;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use trendflow_engine::file_format::FileFormat;

use trendflow_engine::contract::{MicroBatch, Offsets, Poll, Source, StreamDecl};
use trendflow_engine::EngineError;

use super::dead_letters::{DeadLetter, DeadLetterFile};
use crate::decode::{changelog_key, decode_parsed, parse_text, with_metadata, Parsed, RecordOrigin, TurnedAway};
use crate::error::{ConnectorError, Result};

/// A chunk of records read from the file, parsed but not yet converted.
struct RawChunk {
    /// Parsed records; `rows` count from `first`.
    parsed: Parsed,
    /// Record index (in the file) of the chunk's first record.
    first: i64,
    /// Records consumed from the file, parsed or not.
    records: usize,
}

#[allow(clippy::large_enum_variant)] // one per source
enum Reader {
    Csv(csv::Reader<File>),
    Json(std::io::Split<BufReader<File>>),
    Parquet(ParquetRecordBatchReader),
}

/// A file replayed as the records of one stream.
pub struct FileSource {
    stream: StreamDecl,
    path: PathBuf,
    format: FileFormat,
    reader: Option<Reader>,
    /// Records read from the file so far (= offset of the next record).
    position: i64,
    /// Records to skip before emitting (after a seek).
    skip: i64,
    dead_letters: DeadLetterFile,
    finished: bool,
    /// Start of the replay clock, ms since the epoch (set on the first poll or by a seek).
    replay_start: Option<i64>,
}

/// The pseudo-partition under which a file source checkpoints its replay clock.
pub const REPLAY_CLOCK_PARTITION: i32 = -1;
/// The pseudo-partition under which a file source checkpoints the length of its
/// dead-letter file, so that a replay does not write the same letters twice.
pub const DEAD_LETTER_BYTES_PARTITION: i32 = -2;

impl FileSource {
    /// Replays `path` (format from its extension) into `stream`; rejected records go
    /// to `dead_letter_dir/<stream>.ndjson`.
    pub fn new(stream: StreamDecl, path: PathBuf, dead_letter_dir: &Path) -> Result<Self> {
        std::fs::metadata(&path).map_err(|e| ConnectorError::io(&path, e))?;
        let format = FileFormat::from_path(&path.to_string_lossy());
        let dead_letters = DeadLetterFile::new(dead_letter_dir, &stream.name);
        Ok(Self { stream, path, format, reader: None, position: 0, skip: 0, dead_letters, finished: false, replay_start: None })
    }

    fn open(&self, batch_size: usize) -> Result<Reader> {
        let file = File::open(&self.path).map_err(|e| ConnectorError::io(&self.path, e))?;
        let format_error = |e: &dyn std::fmt::Display| ConnectorError::Format { path: self.path.clone(), message: e.to_string() };
        Ok(match self.format {
            FileFormat::Csv => {
                let header = csv_header(&self.path)?;
                let text = Schema::new(header.iter().map(|h| Field::new(h, DataType::Utf8, true)).collect::<Vec<_>>());
                let reader = csv::ReaderBuilder::new(Arc::new(text))
                    .with_header(true)
                    .with_truncated_rows(true)
                    .with_batch_size(batch_size)
                    .build(file)
                    .map_err(|e| format_error(&e))?;
                Reader::Csv(reader)
            }
            FileFormat::NdJson => Reader::Json(BufReader::new(file).split(b'\n')),
            FileFormat::Parquet => {
                let reader = ParquetRecordBatchReaderBuilder::try_new(file)
                    .and_then(|b| b.with_batch_size(batch_size).build())
                    .map_err(|e| format_error(&e))?;
                Reader::Parquet(reader)
            }
        })
    }

    fn read_chunk(&mut self, max_rows: usize) -> Result<Option<RawChunk>> {
        if self.reader.is_none() {
            self.reader = Some(self.open(max_rows)?);
        }
        let start = self.position;
        let path = self.path.clone();
        let format_error = |e: &dyn std::fmt::Display| ConnectorError::Format { path: path.clone(), message: e.to_string() };
        let chunk = match self.reader.as_mut().expect("opened above") {
            Reader::Csv(reader) => match reader.next() {
                None => None,
                Some(batch) => {
                    let batch = batch.map_err(|e| {
                        format_error(&format!("in records {}..{} (CSV lines after the header): {e}", start + 1, start + max_rows as i64))
                    })?;
                    Some(RawChunk { first: start, records: batch.num_rows(), parsed: Parsed::all(batch) })
                }
            },
            Reader::Parquet(reader) => match reader.next() {
                None => None,
                Some(batch) => {
                    let batch = batch.map_err(|e| format_error(&e))?;
                    Some(RawChunk { first: start, records: batch.num_rows(), parsed: Parsed::all(batch) })
                }
            },
            Reader::Json(lines) => read_json_lines(lines, &self.stream, max_rows, start).map_err(|e| format_error(&e))?,
        };
        if let Some(chunk) = &chunk {
            self.position += chunk.records as i64;
        }
        Ok(chunk)
    }

    /// Converts a raw chunk to the stream schema; writes rejected records as dead letters.
    fn decode(&mut self, chunk: RawChunk) -> Result<MicroBatch> {
        let decoded = decode_parsed(chunk.parsed, &self.stream.payload_schema, changelog_key(&self.stream))?;
        let start =
            *self.replay_start.get_or_insert_with(|| SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or_default());
        let letters: Vec<DeadLetter> =
            decoded.rejected.into_iter().map(|(row, reason, record)| self.letter(chunk.first + row as i64, reason, record)).collect();
        self.dead_letters.write(&letters)?;
        let offsets: Vec<i64> = decoded.rows.iter().map(|&r| chunk.first + r as i64).collect();
        let timestamps = decoded.arrivals.iter().zip(&offsets).map(|(given, offset)| given.unwrap_or(start + offset)).collect();
        let origin = RecordOrigin { partitions: vec![0; offsets.len()], offsets, timestamps, keys: None };
        let batch = with_metadata(&self.stream, &decoded.batch, origin)?;
        let dead_letter_bytes = self.dead_letters.len()? as i64;
        let positions = Offsets::from([(0, self.position), (REPLAY_CLOCK_PARTITION, start), (DEAD_LETTER_BYTES_PARTITION, dead_letter_bytes)]);
        Ok(MicroBatch::new(batch, &decoded.deleted, positions, letters.len() as u64))
    }

    fn letter(&self, offset: i64, reason: String, record: String) -> DeadLetter {
        DeadLetter { stream: self.stream.name.clone(), partition: 0, offset, reason, record }
    }

    /// Drops the records before the seek position from the chunk that straddles it.
    fn skip_records(&mut self, chunk: RawChunk) -> RawChunk {
        let skip = (std::mem::take(&mut self.skip) - chunk.first).max(0) as usize;
        let parsed = chunk.parsed;
        let first = parsed.rows.partition_point(|&r| r < skip);
        let parsed = Parsed {
            batch: parsed.batch.slice(first, parsed.batch.num_rows() - first),
            rows: parsed.rows[first..].to_vec(),
            unparsed: parsed.unparsed.into_iter().filter(|(r, _, _)| *r >= skip).collect(),
        };
        RawChunk { parsed, ..chunk }
    }
}

#[async_trait]
impl Source for FileSource {
    fn stream(&self) -> &str {
        &self.stream.name
    }

    fn identity(&self) -> String {
        format!("file:{}", std::path::absolute(&self.path).unwrap_or_else(|_| self.path.clone()).display())
    }

    async fn reject(&mut self, rows: &RecordBatch, reasons: &[String]) -> trendflow_engine::Result<Offsets> {
        let source_error = |e: ConnectorError| EngineError::Source { source_name: self.stream.name.clone(), cause: Box::new(e) };
        let away = TurnedAway::of(&self.stream, rows).map_err(source_error)?;
        let letters: Vec<DeadLetter> = (0..away.records.len())
            .map(|i| DeadLetter {
                stream: self.stream.name.clone(),
                partition: away.partitions[i],
                offset: away.offsets[i],
                reason: reasons[i].clone(),
                record: away.records[i].clone(),
            })
            .collect();
        self.dead_letters.write(&letters).map_err(source_error)?;
        let bytes = self.dead_letters.len().map_err(source_error)? as i64;
        Ok(Offsets::from([(DEAD_LETTER_BYTES_PARTITION, bytes)]))
    }

    async fn poll(&mut self, max_rows: usize, _max_delay: Duration) -> trendflow_engine::Result<Poll> {
        let name = self.stream.name.clone();
        let source_error = |e: ConnectorError| EngineError::Source { source_name: name.clone(), cause: Box::new(e) };
        loop {
            if self.finished {
                return Ok(Poll::Finished);
            }
            let Some(mut chunk) = self.read_chunk(max_rows.max(1)).map_err(source_error)? else {
                self.finished = true;
                return Ok(Poll::Finished);
            };
            if self.skip > 0 {
                if self.position <= self.skip {
                    continue;
                }
                chunk = self.skip_records(chunk);
            }
            return self.decode(chunk).map(Poll::Batch).map_err(source_error);
        }
    }

    async fn seek(&mut self, offsets: &Offsets) -> trendflow_engine::Result<()> {
        self.skip = offsets.get(&0).copied().unwrap_or(0);
        self.replay_start = offsets.get(&REPLAY_CLOCK_PARTITION).copied();
        let Some(&dead_letter_bytes) = offsets.get(&DEAD_LETTER_BYTES_PARTITION) else { return Ok(()) };
        self.dead_letters
            .truncate(dead_letter_bytes as u64)
            .map_err(|e| EngineError::Source { source_name: self.stream.name.clone(), cause: Box::new(e) })
    }
}

fn csv_header(path: &Path) -> Result<Vec<String>> {
    let file = File::open(path).map_err(|e| ConnectorError::io(path, e))?;
    let mut line = String::new();
    BufReader::new(file).read_line(&mut line).map_err(|e| ConnectorError::io(path, e))?;
    let header: Vec<String> = line.trim_end_matches(['\r', '\n']).split(',').map(|h| h.trim_matches('"').to_string()).collect();
    if header.iter().all(|h| h.is_empty()) {
        return Err(ConnectorError::Format { path: path.to_path_buf(), message: "empty file: expected a CSV header line".into() });
    }
    Ok(header)
}

/// Reads up to `max_rows` JSON lines; a line that is too long, not UTF-8 or does not
/// decode is reported, not fatal.
fn read_json_lines(
    lines: &mut std::io::Split<BufReader<File>>,
    stream: &StreamDecl,
    max_rows: usize,
    start: i64,
) -> std::result::Result<Option<RawChunk>, std::io::Error> {
    let mut texts = Vec::with_capacity(max_rows);
    for line in lines.by_ref() {
        texts.push(line?);
        if texts.len() >= max_rows {
            break;
        }
    }
    if texts.is_empty() {
        return Ok(None);
    }
    let records: Vec<&[u8]> = texts.iter().map(Vec::as_slice).collect();
    let mut parsed = parse_text(stream, &records, stream.options.max_record_bytes);
    // Blank lines separate records in NDJSON; they are not records that failed.
    parsed.unparsed.retain(|(row, _, _)| !texts[*row].trim_ascii().is_empty());
    Ok(Some(RawChunk { parsed, first: start, records: texts.len() }))
}
