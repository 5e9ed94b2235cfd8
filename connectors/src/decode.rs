//! Turning raw records into a stream's micro-batches: the record formats of
//! [`trendflow_formats`] (re-exported here), the format and size limit a stream
//! declares, Avro writer schemas from a schema registry, and the metadata columns.

use std::sync::Arc;

use datafusion::arrow::array::{new_null_array, ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::error::ArrowError;
use trendflow_engine::contract::{AvroSchemas, StreamDecl, StreamFormat};
pub use trendflow_formats::{decode_parsed, decode_parts, parse_records, split_body, AvroDecoder, Decoded, Parsed, RecordFormat};

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
    pub async fn decode(&mut self, stream: &StreamDecl, records: &[&[u8]], max_record_bytes: usize) -> crate::Result<Decoded> {
        let parts = match self {
            Self::Text(format) => vec![parse_records(*format, &stream.payload_schema, records, max_record_bytes)],
            Self::Avro(avro) => avro.parse(stream, records, max_record_bytes).await?,
        };
        Ok(decode_parts(parts, &stream.payload_schema)?)
    }
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
