//! Replaying a file into a topic (`trendflow produce`), and encoding Arrow rows
//! as Kafka records in a stream's format (JSON, CSV, or Confluent-framed Avro).

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use datafusion::arrow::array::{Array, BooleanArray, RecordBatch, StringArray};
use datafusion::arrow::compute::{cast, filter_record_batch};
use datafusion::arrow::datatypes::DataType;
use trendflow_engine::contract::{AvroSchemas, Changelog, Poll, Source, StreamDecl, StreamFormat};

use trendflow_formats::{avro_schema_of, AvroEncoder};

use super::{OutRecord, RecordProducer};
use crate::decode::RecordFormat;
use crate::error::{ConnectorError, Result};
use crate::file::FileSource;
use crate::schema_registry::SchemaRegistry;

/// Rows of a batch encoded as records: one buffer and each record's byte range.
#[derive(Debug, Default)]
pub struct EncodedRecords {
    /// All records, back to back.
    pub bytes: Vec<u8>,
    /// Byte range of each record in `bytes`.
    pub ranges: Vec<Range<usize>>,
}

impl EncodedRecords {
    /// Record `i`.
    pub fn get(&self, i: usize) -> &[u8] {
        &self.bytes[self.ranges[i].clone()]
    }
}

/// Encodes every row of `payload` (declared columns only) as one record: a JSON
/// object (null fields left out) or a CSV line.
pub fn encode_rows(format: RecordFormat, payload: &RecordBatch) -> Result<EncodedRecords> {
    let mut out = EncodedRecords::default();
    match format {
        RecordFormat::Json => {
            let mut writer = datafusion::arrow::json::LineDelimitedWriter::new(&mut out.bytes);
            writer.write(payload)?;
            writer.finish()?;
            // JSON escapes newlines inside strings: every '\n' ends a record.
            let mut start = 0;
            for (i, _) in out.bytes.iter().enumerate().filter(|(_, b)| **b == b'\n') {
                out.ranges.push(start..i);
                start = i + 1;
            }
        }
        RecordFormat::Csv => {
            // Row by row: a quoted field may hold a newline.
            for row in 0..payload.num_rows() {
                let start = out.bytes.len();
                let mut writer = datafusion::arrow::csv::WriterBuilder::new().with_header(false).build(&mut out.bytes);
                writer.write(&payload.slice(row, 1))?;
                drop(writer);
                let end = out.bytes.len() - usize::from(out.bytes.last() == Some(&b'\n'));
                out.ranges.push(start..end);
            }
        }
    }
    Ok(out)
}

/// Why a stream of bare Avro has no [`RecordEncoder`].
pub const BARE_AVRO_READ_ONLY: &str =
    "bare Avro ('avro_schema') can be read but not written; to produce Avro, declare 'schema_registry_url' in place of 'avro_schema'";

/// How rows are written to a stream's topic: text records in the declared format, or
/// Confluent-framed Avro whose writer schema (the declared columns) is registered
/// under the subject `<topic>-value`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordEncoder {
    /// JSON objects or CSV lines.
    Text(RecordFormat),
    /// Avro, framed with this registry id.
    Avro { schema_id: u32 },
}

impl RecordEncoder {
    /// The encoder for `stream` on `topic`; for Avro streams, registers the writer
    /// schema with the stream's `schema_registry_url`.
    /// None for a stream of bare Avro, which can be read but not written (see [`BARE_AVRO_READ_ONLY`]).
    pub async fn for_stream(stream: &StreamDecl, topic: &str) -> Result<Option<Self>> {
        let url = match &stream.options.format {
            StreamFormat::Text(format) => return Ok(Some(Self::Text(*format))),
            StreamFormat::Avro(AvroSchemas::Registry { url }) => url,
            StreamFormat::Avro(AvroSchemas::Bare { .. }) => return Ok(None),
        };
        let schema = avro_schema_of(&stream.payload_schema)?;
        let schema_id = SchemaRegistry::new(url)?.register(&format!("{topic}-value"), &schema).await?;
        tracing::info!(stream = stream.name, topic, schema_id, "Avro writer schema registered");
        Ok(Some(Self::Avro { schema_id }))
    }

    /// The text format rows arrive in before encoding (the ingest API's bodies): the
    /// declared one, or JSON for Avro streams.
    pub fn input_format(self) -> RecordFormat {
        match self {
            Self::Text(format) => format,
            Self::Avro { .. } => RecordFormat::Json,
        }
    }

    /// Encodes every row of `payload` (declared columns only) as one record.
    pub fn encode(self, payload: &RecordBatch) -> Result<EncodedRecords> {
        match self {
            Self::Text(format) => encode_rows(format, payload),
            Self::Avro { schema_id } => {
                let (bytes, offsets) = AvroEncoder::confluent(&payload.schema(), schema_id)?.encode(payload)?;
                Ok(EncodedRecords { ranges: offsets.windows(2).map(|w| w[0]..w[1]).collect(), bytes })
            }
        }
    }
}

/// Each row's record key: its `key` columns' value as text when the key is one column,
/// a JSON object of the key columns (nulls left out) when it has several: the key a
/// tombstone of an `upsert` stream must carry (see [`crate::decode::delete_record`]).
/// None when `key` is empty.
pub fn record_keys(payload: &RecordBatch, key: &[usize]) -> Result<Option<StringArray>> {
    match key {
        [] => Ok(None),
        [column] => {
            let keys = cast(payload.column(*column), &DataType::Utf8)?;
            Ok(keys.as_any().downcast_ref::<StringArray>().cloned())
        }
        _ => {
            let key = payload.project(key)?;
            let encoded = encode_rows(RecordFormat::Json, &key)?;
            Ok(Some((0..key.num_rows()).map(|i| std::str::from_utf8(encoded.get(i)).ok()).collect()))
        }
    }
}

/// Sends already-validated rows of `payload` to `topic` encoded by `encoder`, keyed by
/// the primary key. On a changelog stream the rows `deleted` marks are sent as deletes:
/// tombstones (no value) on an `upsert` stream, `"op": "d"` events on a `debezium` one.
pub async fn send_rows(
    producer: &RecordProducer,
    stream: &StreamDecl,
    encoder: RecordEncoder,
    topic: &str,
    payload: &RecordBatch,
    deleted: &[bool],
) -> Result<()> {
    let is_deleted = |i: usize| deleted.get(i).copied().unwrap_or(false);
    let live: BooleanArray = (0..payload.num_rows()).map(|i| Some(!is_deleted(i))).collect();
    let live_rows = filter_record_batch(payload, &live)?;
    // Deletes carry nulls the declared columns may not take; the rows sent whole do not.
    let live_rows = RecordBatch::try_new(stream.payload_schema.clone(), live_rows.columns().to_vec())?;
    let encoded = encoder.encode(&live_rows)?;
    let debezium = stream.options.changelog == Changelog::Debezium;
    let deletes = if debezium { Some(encode_rows(RecordFormat::Json, &payload.project(&stream.primary_key)?)?) } else { None };
    let keys = record_keys(payload, &stream.primary_key)?;
    let mut values: Vec<Vec<u8>> = Vec::with_capacity(payload.num_rows());
    let mut next_live = 0;
    for i in 0..payload.num_rows() {
        let value = match (is_deleted(i), &deletes) {
            (true, None) => Vec::new(),
            (true, Some(keys)) => debezium_event("d", "before", keys.get(i)),
            (false, _) => {
                next_live += 1;
                let row = encoded.get(next_live - 1);
                if debezium {
                    debezium_event("c", "after", row)
                } else {
                    row.to_vec()
                }
            }
        };
        values.push(value);
    }
    let records: Vec<OutRecord<'_>> = (0..payload.num_rows())
        .map(|i| OutRecord {
            key: keys.as_ref().filter(|k| k.is_valid(i)).map(|k| k.value(i).as_bytes()),
            payload: &values[i],
            timestamp: None,
            partition: None,
        })
        .collect();
    producer.send_all(topic, &records, None).await?;
    Ok(())
}

/// A Debezium change event with one row image (`image` is a JSON object).
fn debezium_event(op: &str, side: &str, image: &[u8]) -> Vec<u8> {
    let mut event = format!(r#"{{"op":"{op}","{side}":"#).into_bytes();
    event.extend_from_slice(image);
    event.push(b'}');
    event
}

/// Totals of a replay.
#[derive(Debug, Clone, Default)]
pub struct ReplaySummary {
    /// Records produced.
    pub records: u64,
    /// Records of the file that did not validate (written as dead letters instead).
    pub rejected: u64,
    /// Wall time.
    pub elapsed: Duration,
}

/// Replays `path` (CSV, NDJSON or Parquet) into `topic` as records of `stream`,
/// at most `rate` records per second. Records that do not fit the stream's schema
/// go to `dead_letter_dir` instead; `on_progress` gets the running count.
pub async fn replay_file(
    stream: &StreamDecl,
    path: PathBuf,
    dead_letter_dir: &Path,
    producer: &RecordProducer,
    topic: &str,
    rate: Option<f64>,
    on_progress: &mut (dyn FnMut(u64) + Send),
) -> Result<ReplaySummary> {
    let started = Instant::now();
    let encoder = RecordEncoder::for_stream(stream, topic)
        .await?
        .ok_or_else(|| ConnectorError::Binding { binding: stream.name.clone(), message: BARE_AVRO_READ_ONLY.into() })?;
    let mut source = FileSource::new(stream.clone(), path.clone(), dead_letter_dir)?;
    // Small chunks when throttled, so the pace is smooth.
    let chunk = rate.map_or(20_000, |r| (r / 20.0).clamp(1.0, 20_000.0) as usize);
    let mut summary = ReplaySummary::default();
    let payload_columns = stream.payload_schema.fields().len();
    loop {
        let poll = source.poll(chunk, Duration::ZERO).await.map_err(|e| ConnectorError::Format { path: path.clone(), message: e.to_string() })?;
        let micro = match poll {
            Poll::Batch(micro) => micro,
            Poll::Idle => continue,
            Poll::Finished => break,
        };
        let payload = micro.batch.project(&(0..payload_columns).collect::<Vec<_>>())?;
        let deleted: Vec<bool> = micro.deleted.as_ref().map_or_else(Vec::new, |d| d.iter().map(|v| v == Some(true)).collect());
        send_rows(producer, stream, encoder, topic, &payload, &deleted).await?;
        summary.records += payload.num_rows() as u64;
        summary.rejected += micro.rejected;
        on_progress(summary.records);
        if let Some(rate) = rate {
            let due = Duration::from_secs_f64(summary.records as f64 / rate);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
    }
    summary.elapsed = started.elapsed();
    Ok(summary)
}
