//! Turning raw records into a stream's micro-batches: the record formats of
//! [`trendflow_formats`] (re-exported here), the format and size limit a stream
//! declares, Avro writer schemas from a schema registry, and the metadata columns.

use std::sync::Arc;

use datafusion::arrow::array::{new_null_array, ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::error::ArrowError;
use trendflow_engine::contract::Changelog;
use trendflow_engine::contract::{AvroSchemas, StreamDecl, StreamFormat};
use trendflow_formats::DELETED_COLUMN;
pub use trendflow_formats::{decode_parsed, decode_parts, parse_debezium, parse_records, split_body, AvroDecoder, Decoded, Parsed, RecordFormat};

use crate::schema_registry::{SchemaLookup, SchemaRegistry};

/// Decodes a stream's raw records in the format it declares.
///
/// Avro streams declare where writer schemas come from:
/// `OPTIONS ('format' 'avro', 'schema_registry_url' 'http://registry:8081')` for
/// Confluent-framed records, or `('format' 'avro', 'avro_schema' '{"type": "record", …}')`
/// for bare Avro bodies of one schema.
///
/// ```
/// # async fn demo(stream: trendflow_engine::contract::StreamDecl) -> trendflow_connectors::Result<()> {
/// use trendflow_connectors::decode::RecordDecoder;
///
/// let mut decoder = RecordDecoder::for_stream(&stream)?;
/// let decoded = decoder.decode(&stream, &[br#"{"asin": "B1"}"#.as_slice()], 1 << 20).await?;
/// println!("{} accepted, {} rejected", decoded.rows.len(), decoded.rejected.len());
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub enum RecordDecoder {
    /// JSON objects or CSV lines.
    Text(RecordFormat),
    /// Avro (boxed: the registry client is large).
    Avro(Box<AvroRecords>),
}

/// An Avro decoder, and the registry its writer schemas come from (none: one declared schema).
#[derive(Debug)]
pub struct AvroRecords {
    avro: AvroDecoder,
    registry: Option<SchemaRegistry>,
}

impl AvroRecords {
    /// Fetches the writer schemas `records` carry that the decoder has not seen,
    /// then decodes them.
    async fn parse(&mut self, stream: &StreamDecl, records: &[&[u8]], max_record_bytes: usize) -> crate::Result<Vec<Parsed>> {
        if let Some(registry) = &self.registry {
            for id in self.avro.missing_schema_ids(records) {
                match registry.schema(id).await? {
                    SchemaLookup::Avro(schema) => {
                        // A schema that cannot be read is refused: its records are rejected with the reason.
                        if let Err(reason) = self.avro.add_schema(id, &schema) {
                            tracing::warn!(stream = stream.name, "{reason}");
                        }
                    }
                    SchemaLookup::Refused(reason) => self.avro.refuse_schema(id, reason),
                }
            }
        }
        Ok(self.avro.parse(records, max_record_bytes))
    }
}

impl RecordDecoder {
    /// The decoder for the format `stream` declares.
    pub fn for_stream(stream: &StreamDecl) -> crate::Result<Self> {
        let avro = match &stream.options.format {
            StreamFormat::Text(format) => return Ok(Self::Text(*format)),
            StreamFormat::Avro(AvroSchemas::Registry { url }) => {
                AvroRecords { avro: AvroDecoder::confluent(), registry: Some(SchemaRegistry::new(url)?) }
            }
            StreamFormat::Avro(AvroSchemas::Bare { schema }) => {
                let avro = AvroDecoder::bare(schema).map_err(|e| crate::ConnectorError::Binding {
                    binding: stream.name.clone(),
                    message: format!("OPTIONS ('avro_schema' …): {e}"),
                })?;
                AvroRecords { avro, registry: None }
            }
        };
        Ok(Self::Avro(Box::new(avro)))
    }

    /// Decodes `records` (one per slice) into `stream`'s payload schema, rejecting
    /// those larger than `max_record_bytes`: accepted rows in input order, and a
    /// reason for each rejected record. Avro writer schemas not
    /// seen before are fetched from the registry first; an unreachable registry is an
    /// error (nothing is rejected for it).
    ///
    /// On an `upsert` stream an empty record is a tombstone: it deletes the row whose
    /// key is its transport key (`keys`, e.g. the Kafka key: the key column's value as
    /// text, or a JSON object of the key columns when the key has several).
    pub async fn decode(
        &mut self,
        stream: &StreamDecl,
        records: &[&[u8]],
        keys: &[Option<&[u8]>],
        max_record_bytes: usize,
    ) -> crate::Result<Decoded> {
        let tombstones = |i: &usize| stream.options.changelog == Changelog::Upsert && records[*i].is_empty();
        let (deletes, values): (Vec<usize>, Vec<usize>) = (0..records.len()).partition(tombstones);
        let subset: Vec<&[u8]> = values.iter().map(|&i| records[i]).collect();
        let parsed = match self {
            Self::Text(_) => vec![parse_text(stream, &subset, max_record_bytes)],
            Self::Avro(avro) => avro.parse(stream, &subset, max_record_bytes).await?,
        };
        let mut parts: Vec<Parsed> = parsed.into_iter().map(|p| renumbered(p, &values)).collect();
        if !deletes.is_empty() {
            parts.push(tombstone_rows(stream, &deletes, keys, max_record_bytes));
        }
        Ok(decode_parts(parts, &stream.payload_schema, changelog_key(stream))?)
    }
}

/// The key columns by which a changelog stream's records change it (`None`: append).
pub fn changelog_key(stream: &StreamDecl) -> Option<&[usize]> {
    stream.options.changelog.is_keyed().then_some(stream.primary_key.as_slice())
}

/// Parses JSON or CSV records of `stream` structurally: Debezium events are unwrapped
/// into the rows they leave.
pub fn parse_text(stream: &StreamDecl, records: &[&[u8]], max_record_bytes: usize) -> Parsed {
    match (&stream.options.changelog, &stream.options.format) {
        (Changelog::Debezium, _) => parse_debezium(&stream.payload_schema, records, max_record_bytes),
        (_, StreamFormat::Text(format)) => parse_records(*format, &stream.payload_schema, records, max_record_bytes),
        // The ingest API takes JSON for an Avro stream and encodes it.
        (_, StreamFormat::Avro(_)) => parse_records(RecordFormat::Json, &stream.payload_schema, records, max_record_bytes),
    }
}

/// `parsed` with its row numbers mapped from positions in a subset back to input indices.
fn renumbered(mut parsed: Parsed, indices: &[usize]) -> Parsed {
    parsed.rows.iter_mut().for_each(|r| *r = indices[*r]);
    parsed.unparsed.iter_mut().for_each(|(r, _, _)| *r = indices[*r]);
    parsed
}

/// The deletes that the tombstones at `positions` stand for, keyed by their transport keys.
fn tombstone_rows(stream: &StreamDecl, positions: &[usize], keys: &[Option<&[u8]>], max_record_bytes: usize) -> Parsed {
    let mut objects = Vec::with_capacity(positions.len());
    let mut unparsed = Vec::new();
    let mut kept = Vec::with_capacity(positions.len());
    for &i in positions {
        match keys.get(i).copied().flatten().map(|key| key_object(stream, key)) {
            Some(Ok(object)) => {
                objects.push(object);
                kept.push(i);
            }
            Some(Err(reason)) => unparsed.push((i, reason, String::new())),
            None => unparsed.push((i, "a tombstone (a record without a value) needs a key to say which row it deletes".to_string(), String::new())),
        }
    }
    let slices: Vec<&[u8]> = objects.iter().map(|o| o.as_bytes()).collect();
    let mut parsed = renumbered(parse_records(RecordFormat::Json, &stream.payload_schema, &slices, max_record_bytes), &kept);
    parsed.unparsed.append(&mut unparsed);
    parsed.unparsed.sort_by_key(|(i, _, _)| *i);
    parsed
}

/// A tombstone's key as a JSON delete record: `{"<key column>": "<key>", "_deleted": true}`,
/// or the key's own JSON object of several key columns.
fn key_object(stream: &StreamDecl, key: &[u8]) -> Result<String, String> {
    let text = std::str::from_utf8(key).map_err(|_| "a tombstone whose key is not UTF-8 text".to_string())?;
    let mut object = match stream.primary_key.as_slice() {
        [column] => serde_json::Map::from_iter([(stream.payload_schema.field(*column).name().clone(), serde_json::Value::String(text.to_string()))]),
        _ => match serde_json::from_str::<serde_json::Value>(text) {
            Ok(serde_json::Value::Object(object)) => object,
            _ => return Err(format!("a tombstone of a stream keyed by several columns needs a JSON object of them as its key, not `{text}`")),
        },
    };
    object.insert(DELETED_COLUMN.to_string(), serde_json::Value::Bool(true));
    Ok(serde_json::Value::Object(object).to_string())
}

/// Where accepted records came from, to fill the metadata columns.
#[derive(Debug)]
pub struct RecordOrigin {
    /// Partition of each record.
    pub partitions: Vec<i32>,
    /// Offset of each record.
    pub offsets: Vec<i64>,
    /// Arrival time of each record, ms since the epoch.
    pub timestamps: Vec<i64>,
    /// Record keys, if the transport has them; otherwise derived from the primary key.
    pub keys: Option<StringArray>,
}

/// Appends the metadata columns (`_key`, `_partition`, `_offset`, `_timestamp`) to a
/// payload batch, giving a batch with the stream's full schema.
pub fn with_metadata(stream: &StreamDecl, payload: &RecordBatch, origin: RecordOrigin) -> Result<RecordBatch, ArrowError> {
    let rows = payload.num_rows();
    let key: ArrayRef = match (origin.keys, stream.primary_key.first()) {
        (Some(keys), _) => Arc::new(keys),
        (None, Some(&pk)) if stream.primary_key.len() == 1 => cast(payload.column(pk), &DataType::Utf8)?,
        _ => new_null_array(&DataType::Utf8, rows),
    };
    let mut columns = payload.columns().to_vec();
    columns.push(key);
    columns.push(Arc::new(Int32Array::from(origin.partitions)));
    columns.push(Arc::new(Int64Array::from(origin.offsets)));
    columns.push(Arc::new(TimestampMillisecondArray::from(origin.timestamps).with_timezone("UTC")));
    RecordBatch::try_new(stream.schema.clone(), columns)
}
