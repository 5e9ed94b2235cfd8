//! Replaying a file (CSV, NDJSON, Parquet) as a stream.
//!
//! The file is read in chunks of `max_rows` records; each record gets the
//! metadata a Kafka record would have: partition 0, its index as offset, and
//! as arrival time the file's own `_timestamp` column when it has one, or else
//! a replay clock: the time the file was last written plus one millisecond per
//! record (a nominal 1,000 records per second), so that a streaming and a batch run
//! over the same file give the same windows. The start time is part of the
//! source's checkpointed position, so a replay after a crash stamps every
//! record exactly as the first pass did.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Take};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use datafusion::arrow::csv;
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::record_batch::RecordBatch;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use trendflow_engine::file_format::FileFormat;

use trendflow_engine::contract::{poll_to_end, MicroBatch, Offsets, Poll, Source, StreamDecl};
use trendflow_engine::EngineError;
use trendflow_formats::Decoded;

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
    Csv(csv::Reader<Take<File>>),
    Json(std::io::Split<BufReader<Take<File>>>),
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

/// Where the replay clock of the file at `path` starts: when the file was last written
/// (ms since the epoch), so every replay of the same file, `run` or `batch`, today or
/// tomorrow, stamps its records alike; now when the file system keeps no such time.
fn replay_clock_start(path: &Path) -> i64 {
    let written = std::fs::metadata(path).and_then(|m| m.modified()).unwrap_or_else(|_| SystemTime::now());
    written.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or_default()
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

    fn read_chunk(&mut self, max_rows: usize) -> Result<Option<RawChunk>> {
        if self.reader.is_none() {
            self.reader = Some(open(&self.path, self.format, max_rows, None)?);
        }
        let reader = self.reader.as_mut().expect("opened above");
        let chunk = next_chunk(reader, &self.stream, &self.path, max_rows, self.position, 0)?;
        if let Some(chunk) = &chunk {
            self.position += chunk.records as i64;
        }
        Ok(chunk)
    }

    /// Reads the whole file, for a batch run: the byte ranges of a CSV or NDJSON file
    /// ([`super::record_ranges`]) are parsed and decoded on `threads` threads, then
    /// stamped in file order. The micro-batches, their offsets and arrival times, and
    /// the dead letters are those that polling the source to its end gives. Reads from
    /// the start: a source that has been polled or sought is polled on.
    fn read_all(&mut self, max_rows: usize, threads: usize) -> Result<Vec<MicroBatch>> {
        let ranges = super::record_ranges(&self.path, self.format, threads)?;
        let (stream, path, format) = (&self.stream, &self.path, self.format);
        let parts: Vec<Result<Vec<(Decoded, i64, usize)>>> = std::thread::scope(|scope| {
            let threads: Vec<_> = ranges.iter().map(|range| scope.spawn(move || decode_range(stream, path, format, range, max_rows))).collect();
            threads
                .into_iter()
                .map(|t| {
                    t.join().unwrap_or_else(|_| Err(ConnectorError::Format { path: path.clone(), message: "a decoding thread panicked".into() }))
                })
                .collect()
        });
        let mut batches = Vec::new();
        for part in parts {
            let base = self.position;
            for (decoded, first, records) in part? {
                self.position = base + first + records as i64;
                batches.push(self.stamp(decoded, base + first)?);
            }
        }
        self.finished = true;
        Ok(batches)
    }

    /// Converts a raw chunk to the stream schema; writes rejected records as dead letters.
    fn decode(&mut self, chunk: RawChunk) -> Result<MicroBatch> {
        let decoded = convert(&self.stream, chunk.parsed)?;
        self.stamp(decoded, chunk.first)
    }

    /// Gives decoded records whose first is record `first` of the file their metadata
    /// (offsets, arrival times) and writes the rejected ones as dead letters.
    fn stamp(&mut self, decoded: Decoded, first: i64) -> Result<MicroBatch> {
        let path = &self.path;
        let start = *self.replay_start.get_or_insert_with(|| replay_clock_start(path));
        let letters: Vec<DeadLetter> =
            decoded.rejected.into_iter().map(|(row, reason, record)| self.letter(first + row as i64, reason, record)).collect();
        self.dead_letters.write(&letters)?;
        let offsets: Vec<i64> = decoded.rows.iter().map(|&r| first + r as i64).collect();
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

    async fn read_to_end(&mut self, max_rows: usize) -> trendflow_engine::Result<Vec<MicroBatch>> {
        if self.position > 0 || self.skip > 0 || self.finished {
            return poll_to_end(self, max_rows).await;
        }
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        self.read_all(max_rows, threads).map_err(|e| EngineError::Source { source_name: self.stream.name.clone(), cause: Box::new(e) })
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

/// Converts parsed records to the stream's payload schema (no side effects: ranges of a
/// file convert on several threads).
fn convert(stream: &StreamDecl, parsed: Parsed) -> Result<Decoded> {
    Ok(decode_parsed(parsed, &stream.payload_schema, changelog_key(stream))?)
}

/// Opens `path` for reading records, from the start of `bytes` to its end (the whole file
/// without). A range after the start of a CSV file has no header line of its own.
fn open(path: &Path, format: FileFormat, batch_size: usize, bytes: Option<&Range<u64>>) -> Result<Reader> {
    let mut file = File::open(path).map_err(|e| ConnectorError::io(path, e))?;
    let format_error = |e: &dyn std::fmt::Display| ConnectorError::Format { path: path.to_path_buf(), message: e.to_string() };
    let (start, end) = bytes.map_or((0, u64::MAX), |r| (r.start, r.end));
    file.seek(SeekFrom::Start(start)).map_err(|e| ConnectorError::io(path, e))?;
    let range = file.take(end - start);
    Ok(match format {
        FileFormat::Csv => {
            let header = csv_header(path)?;
            let text = Schema::new(header.iter().map(|h| Field::new(h, DataType::Utf8, true)).collect::<Vec<_>>());
            let reader = csv::ReaderBuilder::new(Arc::new(text))
                .with_header(start == 0)
                .with_truncated_rows(true)
                .with_batch_size(batch_size)
                .build(range)
                .map_err(|e| format_error(&e))?;
            Reader::Csv(reader)
        }
        FileFormat::NdJson => Reader::Json(BufReader::new(range).split(b'\n')),
        FileFormat::Parquet => {
            let reader = ParquetRecordBatchReaderBuilder::try_new(range.into_inner())
                .and_then(|b| b.with_batch_size(batch_size).build())
                .map_err(|e| format_error(&e))?;
            Reader::Parquet(reader)
        }
    })
}

/// The next chunk of up to `max_rows` records from `reader`, the first of which is
/// record `start` of the records after byte `byte_start` of the file.
fn next_chunk(reader: &mut Reader, stream: &StreamDecl, path: &Path, max_rows: usize, start: i64, byte_start: u64) -> Result<Option<RawChunk>> {
    let format_error = |e: &dyn std::fmt::Display| ConnectorError::Format { path: path.to_path_buf(), message: e.to_string() };
    let counted_from = if byte_start == 0 { String::new() } else { format!(", counted from byte {byte_start}") };
    Ok(match reader {
        Reader::Csv(reader) => match reader.next() {
            None => None,
            Some(batch) => {
                let batch = batch.map_err(|e| {
                    format_error(&format!("in records {}..{} (CSV lines after the header{counted_from}): {e}", start + 1, start + max_rows as i64))
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
        Reader::Json(lines) => read_json_lines(lines, stream, max_rows, start).map_err(|e| format_error(&e))?,
    })
}

/// Parses and converts the records in `bytes` of `path`: each with its index counted
/// from the start of the range, and how many records its chunk consumed.
fn decode_range(stream: &StreamDecl, path: &Path, format: FileFormat, bytes: &Range<u64>, max_rows: usize) -> Result<Vec<(Decoded, i64, usize)>> {
    let mut reader = open(path, format, max_rows, Some(bytes))?;
    let (mut decoded, mut position) = (Vec::new(), 0);
    while let Some(chunk) = next_chunk(&mut reader, stream, path, max_rows, position, bytes.start)? {
        position += chunk.records as i64;
        decoded.push((convert(stream, chunk.parsed)?, chunk.first, chunk.records));
    }
    Ok(decoded)
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
    lines: &mut std::io::Split<BufReader<Take<File>>>,
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

#[cfg(test)]
mod tests {
    use datafusion::arrow::compute::concat_batches;

    use super::*;

    async fn stream(dir: &Path) -> StreamDecl {
        let sql = "CREATE EXTERNAL TABLE p (asin VARCHAR NOT NULL, title VARCHAR, price DOUBLE) STORED AS KAFKA LOCATION 'p';";
        std::fs::write(dir.join("p.sql"), sql).unwrap();
        trendflow_engine::catalog::Catalog::load_streams(&[dir.to_path_buf()]).await.unwrap().remove(0)
    }

    /// A CSV file of `rows` records over several megabytes, with every quoting case
    /// the split-point scan must follow, and a bad price in every 97th record. Most
    /// records hold newlines all through a quoted title, so a split at a newline
    /// inside one would cut a record in two. Returns the byte offset of each record.
    fn csv_file(path: &Path, rows: usize) -> Vec<u64> {
        let lines = "xxxxxxxxx\n".repeat(15);
        let mut text = String::from("asin,title,price\n");
        let mut starts = Vec::with_capacity(rows);
        for i in 0..rows {
            let title = match i % 50 {
                0 => format!("plain {}", lines.replace('\n', " ")),
                1 => format!("literal 5\" tv {}", lines.replace('\n', " ")),
                k if k % 3 == 0 => format!("\"with, comma {lines}\""),
                k if k % 3 == 1 => format!("\"a 5\"\" tv\n{lines}\""),
                _ => format!("\"{lines}\""),
            };
            let price = if i % 97 == 0 { "abc".to_string() } else { format!("{}.5", i % 1000) };
            starts.push(text.len() as u64);
            text.push_str(&format!("A{i},{title},{price}\n"));
        }
        std::fs::write(path, text).unwrap();
        starts
    }

    /// Every micro-batch of `source`, polled to its end, with the replay clock at 1000.
    async fn polled(mut source: FileSource) -> Vec<MicroBatch> {
        source.seek(&Offsets::from([(REPLAY_CLOCK_PARTITION, 1000)])).await.unwrap();
        let mut batches = Vec::new();
        while let Poll::Batch(micro) = source.poll(4096, Duration::ZERO).await.unwrap() {
            batches.push(micro);
        }
        batches
    }

    #[tokio::test]
    async fn reading_byte_ranges_in_parallel_gives_what_polling_gives() {
        let dir = tempfile::tempdir().unwrap();
        let stream = stream(dir.path()).await;
        let path = dir.path().join("p.csv");
        let starts = csv_file(&path, 60_000);
        let ranges = super::super::record_ranges(&path, FileFormat::Csv, 3).unwrap();
        assert_eq!(ranges.len(), 3, "the file must be read as several ranges: {ranges:?}");
        assert!(ranges[1..].iter().all(|r| starts.binary_search(&r.start).is_ok()), "ranges start at records: {ranges:?}");

        let polled = polled(FileSource::new(stream.clone(), path.clone(), &dir.path().join("polled")).unwrap()).await;
        let mut parallel = FileSource::new(stream.clone(), path.clone(), &dir.path().join("parallel")).unwrap();
        parallel.seek(&Offsets::from([(REPLAY_CLOCK_PARTITION, 1000)])).await.unwrap();
        let read = parallel.read_all(4096, 3).unwrap();

        let whole = |batches: &[MicroBatch]| concat_batches(&stream.schema, batches.iter().map(|m| &m.batch)).unwrap();
        assert_eq!(whole(&read), whole(&polled));
        assert_eq!(whole(&read).num_rows(), 60_000 - 619, "every record but the bad prices");
        assert_eq!(read.iter().map(|m| m.rejected).sum::<u64>(), 619);
        assert_eq!(read.last().unwrap().offsets, polled.last().unwrap().offsets);
        let letters = |sub: &str| std::fs::read_to_string(dir.path().join(sub).join("p.ndjson")).unwrap();
        assert_eq!(letters("parallel"), letters("polled"));
    }
}
