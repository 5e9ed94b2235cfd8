//! Turning raw records into a stream's micro-batches: the record formats of
//! [`trendflow_formats`] (re-exported here), the format and size limit a stream
//! declares, and the metadata columns.

use std::sync::Arc;

use datafusion::arrow::array::{new_null_array, ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::error::ArrowError;
use trendflow_engine::stream_table::StreamDecl;
pub use trendflow_formats::{decode_parsed, parse_records, split_body, Parsed, RecordFormat};

/// The format a stream declares: `OPTIONS ('format' 'json')` (the default) or `('format' 'csv')`.
pub fn record_format(stream: &StreamDecl) -> crate::Result<RecordFormat> {
    let Some(name) = stream.options.get("format") else { return Ok(RecordFormat::Json) };
    RecordFormat::from_name(name).ok_or_else(|| crate::ConnectorError::Binding {
        binding: stream.name.clone(),
        message: format!("unsupported record format `{name}` (OPTIONS ('format' 'json') or ('format' 'csv'))"),
    })
}

/// The largest record a stream accepts: `OPTIONS ('max_record_bytes' 'N')`, 1 MiB by default.
/// Larger records are rejected with a reason by every source and by the ingest API.
pub fn max_record_bytes(stream: &StreamDecl) -> usize {
    stream.options.get("max_record_bytes").and_then(|v| v.parse().ok()).unwrap_or(trendflow_formats::DEFAULT_MAX_RECORD_BYTES)
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
