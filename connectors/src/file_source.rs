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
use datafusion::arrow::array::{BooleanArray, RecordBatch};
use datafusion::arrow::compute::{concat_batches, filter_record_batch};
use datafusion::arrow::csv;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::json;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use trendflow_engine::catalog::FileFormat;
use trendflow_engine::checkpoint::Offsets;
use trendflow_engine::runtime::{MicroBatch, Poll, Source};
use trendflow_engine::stream_table::{StreamDecl, TIMESTAMP_COLUMN};
use trendflow_engine::EngineError;

use crate::dead_letter::{row_as_json, DeadLetter, DeadLetterFile};
use crate::decode::{conform, input_timestamps, nullable_schema, with_metadata, Arrival, RecordOrigin, Rejected};
use crate::error::{ConnectorError, Result};

/// A chunk of raw records before conversion to the stream's schema.
struct RawChunk {
    /// Records that parsed structurally (text columns for CSV, typed for JSON/Parquet).
    batch: RecordBatch,
    /// Record index (in the file) of each row of `batch`.
    indices: Vec<i64>,
    /// Records that did not parse at all: (record index, reason, raw text).
    unparsed: Vec<(i64, String, String)>,
    /// Records consumed from the file, parsed or not.
    records: usize,
}

#[allow(clippy::large_enum_variant)] // one per source
enum Reader {
    Csv(csv::Reader<File>),
    Json { lines: std::io::Split<BufReader<File>>, schema: SchemaRef },
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
            FileFormat::NdJson => {
                let mut fields: Vec<Field> = nullable_schema(&self.stream.payload_schema).fields().iter().map(|f| f.as_ref().clone()).collect();
                fields.push(Field::new(TIMESTAMP_COLUMN, DataType::Timestamp(TimeUnit::Millisecond, None), true));
                Reader::Json { lines: BufReader::new(file).split(b'\n'), schema: Arc::new(Schema::new(fields)) }
            }
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
                    Some(RawChunk { indices: (start..start + batch.num_rows() as i64).collect(), records: batch.num_rows(), batch, unparsed: vec![] })
                }
            },
            Reader::Parquet(reader) => match reader.next() {
                None => None,
                Some(batch) => {
                    let batch = batch.map_err(|e| format_error(&e))?;
                    Some(RawChunk { indices: (start..start + batch.num_rows() as i64).collect(), records: batch.num_rows(), batch, unparsed: vec![] })
                }
            },
            Reader::Json { lines, schema } => read_json_lines(lines, schema, max_rows, start).map_err(|e| format_error(&e))?,
        };
        if let Some(chunk) = &chunk {
            self.position += chunk.records as i64;
        }
        Ok(chunk)
    }

    /// Converts a raw chunk to the stream schema; writes rejected records as dead letters.
    fn decode(&mut self, chunk: RawChunk) -> Result<MicroBatch> {
        let mut conformed = conform(&chunk.batch, &self.stream.payload_schema)?;
        let mut letters: Vec<DeadLetter> = chunk
            .unparsed
            .into_iter()
            .map(|(offset, reason, record)| self.letter(offset, reason, record))
            .collect();
        let start = *self.replay_start.get_or_insert_with(|| {
            SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or_default()
        });
        let arrivals = input_timestamps(&chunk.batch, &conformed.accepted_rows)?;
        if arrivals.contains(&Arrival::Invalid) {
            let keep: BooleanArray = arrivals.iter().map(|a| Some(*a != Arrival::Invalid)).collect();
            conformed.batch = filter_record_batch(&conformed.batch, &keep)?;
            for (&row, _) in conformed.accepted_rows.iter().zip(&arrivals).filter(|(_, a)| **a == Arrival::Invalid) {
                let reason = format!("column `{TIMESTAMP_COLUMN}` is not a timestamp");
                conformed.rejected.push(Rejected { row, reason });
            }
        }
        let (accepted_rows, timestamps): (Vec<usize>, Vec<i64>) = conformed
            .accepted_rows
            .iter()
            .zip(&arrivals)
            .filter_map(|(&row, arrival)| match arrival {
                Arrival::Given(t) => Some((row, *t)),
                Arrival::Missing => Some((row, start + chunk.indices[row])),
                Arrival::Invalid => None,
            })
            .unzip();
        conformed.accepted_rows = accepted_rows;
        conformed.rejected.sort_by_key(|r| r.row);
        for rejected in &conformed.rejected {
            let record = row_as_json(&chunk.batch, rejected.row);
            letters.push(self.letter(chunk.indices[rejected.row], rejected.reason.clone(), record));
        }
        self.dead_letters.write(&letters)?;
        let offsets: Vec<i64> = conformed.accepted_rows.iter().map(|&r| chunk.indices[r]).collect();
        let origin = RecordOrigin { partition: 0, offsets, timestamps, keys: None };
        let batch = with_metadata(&self.stream, &conformed.batch, origin)?;
        let dead_letter_bytes = self.dead_letters.len()? as i64;
        let positions = Offsets::from([(0, self.position), (REPLAY_CLOCK_PARTITION, start), (DEAD_LETTER_BYTES_PARTITION, dead_letter_bytes)]);
        Ok(MicroBatch { batch, offsets: positions, rejected: letters.len() as u64 })
    }

    fn letter(&self, offset: i64, reason: String, record: String) -> DeadLetter {
        DeadLetter { stream: self.stream.name.clone(), partition: 0, offset, reason, record }
    }

    /// Drops the records before the seek position from the chunk that straddles it.
    fn skip_records(&mut self, chunk: RawChunk) -> RawChunk {
        let skip = std::mem::take(&mut self.skip);
        let first = chunk.indices.partition_point(|&i| i < skip);
        RawChunk {
            batch: chunk.batch.slice(first, chunk.batch.num_rows() - first),
            indices: chunk.indices[first..].to_vec(),
            unparsed: chunk.unparsed.into_iter().filter(|(i, _, _)| *i >= skip).collect(),
            records: chunk.records,
        }
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

    async fn poll(&mut self, max_rows: usize, _max_delay: Duration) -> trendflow_engine::Result<Poll> {
        let name = self.stream.name.clone();
        let source_error = |e: ConnectorError| EngineError::Source { source_name: name.clone(), message: e.to_string() };
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
        self.dead_letters.truncate(dead_letter_bytes as u64).map_err(|e| EngineError::Source {
            source_name: self.stream.name.clone(),
            message: e.to_string(),
        })
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

/// Reads up to `max_rows` JSON lines; a line that is not UTF-8 or does not decode is
/// reported, not fatal.
fn read_json_lines(
    lines: &mut std::io::Split<BufReader<File>>,
    schema: &SchemaRef,
    max_rows: usize,
    start: i64,
) -> std::result::Result<Option<RawChunk>, std::io::Error> {
    let mut texts = Vec::with_capacity(max_rows);
    let mut unparsed = Vec::new();
    let mut records = 0usize;
    for line in lines.by_ref() {
        let line = line?;
        let index = start + records as i64;
        records += 1;
        match String::from_utf8(line) {
            Ok(text) => texts.push((index, text.trim_end_matches('\r').to_string())),
            Err(e) => {
                let shown = String::from_utf8_lossy(e.as_bytes()).into_owned();
                unparsed.push((index, format!("invalid UTF-8 ({})", e.utf8_error()), shown));
            }
        }
        if records >= max_rows {
            break;
        }
    }
    if records == 0 {
        return Ok(None);
    }
    texts.retain(|(_, t)| !t.trim().is_empty());
    let (batch, indices, mut not_json) = match decode_json(schema, texts.iter().map(|(_, t)| t.as_str())) {
        // A line holding two objects would shift rows against record indices.
        Ok(batch) if batch.num_rows() == texts.len() => (batch, texts.iter().map(|(i, _)| *i).collect(), vec![]),
        _ => decode_json_one_by_one(schema, &texts),
    };
    unparsed.append(&mut not_json);
    unparsed.sort_by_key(|(i, _, _)| *i);
    Ok(Some(RawChunk { batch, indices, unparsed, records }))
}

fn decode_json<'a>(schema: &SchemaRef, lines: impl Iterator<Item = &'a str>) -> std::result::Result<RecordBatch, String> {
    const BATCH: usize = 8192;
    let mut decoder = json::ReaderBuilder::new(schema.clone()).with_batch_size(BATCH).build_decoder().map_err(|e| e.to_string())?;
    let mut batches = Vec::new();
    for line in lines {
        let mut bytes = line.as_bytes();
        while !bytes.is_empty() {
            let read = decoder.decode(bytes).map_err(|e| e.to_string())?;
            bytes = &bytes[read..];
            if !bytes.is_empty() {
                // The decoder stops when a batch is full: drain it and continue.
                batches.extend(decoder.flush().map_err(|e| e.to_string())?);
            }
        }
        decoder.decode(b"\n").map_err(|e| e.to_string())?;
    }
    batches.extend(decoder.flush().map_err(|e| e.to_string())?);
    if batches.is_empty() {
        return Ok(RecordBatch::new_empty(schema.clone()));
    }
    concat_batches(schema, &batches).map_err(|e| e.to_string())
}

fn decode_json_one_by_one(schema: &SchemaRef, texts: &[(i64, String)]) -> (RecordBatch, Vec<i64>, Vec<(i64, String, String)>) {
    let mut batches = Vec::new();
    let mut indices = Vec::new();
    let mut unparsed = Vec::new();
    for (index, text) in texts {
        match decode_json(schema, std::iter::once(text.as_str())) {
            Ok(batch) if batch.num_rows() == 1 => {
                batches.push(batch);
                indices.push(*index);
            }
            Ok(_) => unparsed.push((*index, "not a single JSON object".to_string(), text.clone())),
            Err(reason) => unparsed.push((*index, format!("invalid JSON record: {reason}"), text.clone())),
        }
    }
    let batch = concat_batches(schema, &batches).unwrap_or_else(|_| RecordBatch::new_empty(schema.clone()));
    (batch, indices, unparsed)
}
