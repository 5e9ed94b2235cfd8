//! Turning raw records into Arrow with a stream's declared schema.
//!
//! Decoding is vectorized and per-record at the same time: text columns are
//! cast to the declared types in bulk, and a record whose value does not
//! convert, or that lacks a required column, is singled out with a reason
//! instead of failing the batch. Extra input columns are ignored; missing
//! nullable columns are null.

use std::sync::Arc;

use datafusion::arrow::array::{
    new_null_array, Array, ArrayRef, BooleanArray, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMillisecondArray,
};
use datafusion::arrow::compute::{cast, cast_with_options, concat_batches, filter_record_batch, CastOptions};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::{csv, json};
use trendflow_engine::stream_table::{StreamDecl, TIMESTAMP_COLUMN};

use crate::dead_letter::row_as_json;

/// A record that could not be decoded, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    /// Row index within the input batch.
    pub row: usize,
    /// What was wrong, naming the column.
    pub reason: String,
}

/// Input rows converted to a declared schema, minus the rejected ones.
#[derive(Debug)]
pub struct Conformed {
    /// Accepted rows, with the declared payload schema.
    pub batch: RecordBatch,
    /// Input row index of each accepted row.
    pub accepted_rows: Vec<usize>,
    /// Rejected rows with reasons.
    pub rejected: Vec<Rejected>,
}

/// Converts `input` (columns matched by name) to `payload`, rejecting rows whose
/// values do not convert or whose required columns are missing.
///
/// ```
/// use std::sync::Arc;
/// use datafusion::arrow::array::{RecordBatch, StringArray};
/// use datafusion::arrow::datatypes::{DataType, Field, Schema};
/// use trendflow_connectors::decode::conform;
///
/// let text = Arc::new(Schema::new(vec![Field::new("price", DataType::Utf8, true)]));
/// let input = RecordBatch::try_new(text, vec![Arc::new(StringArray::from(vec!["1.5", "abc"]))]).unwrap();
/// let declared = Arc::new(Schema::new(vec![Field::new("price", DataType::Float64, true)]));
/// let out = conform(&input, &declared).unwrap();
/// assert_eq!(out.batch.num_rows(), 1);
/// assert_eq!(out.rejected[0].row, 1);
/// ```
pub fn conform(input: &RecordBatch, payload: &SchemaRef) -> Result<Conformed, ArrowError> {
    let rows = input.num_rows();
    let mut reasons: Vec<Option<String>> = vec![None; rows];
    let mut columns = Vec::with_capacity(payload.fields().len());
    for field in payload.fields() {
        let column = match input.schema().index_of(field.name()) {
            Ok(i) => convert_column(input.column(i), field, &mut reasons)?,
            Err(_) => new_null_array(field.data_type(), rows),
        };
        if !field.is_nullable() && column.null_count() > 0 {
            for (row, reason) in reasons.iter_mut().enumerate() {
                if reason.is_none() && column.is_null(row) {
                    *reason = Some(format!("column `{}` is required but missing", field.name()));
                }
            }
        }
        columns.push(column);
    }
    let nullable = nullable_schema(payload);
    let batch = RecordBatch::try_new(nullable, columns)?;
    let keep: BooleanArray = reasons.iter().map(|r| Some(r.is_none())).collect();
    let accepted_rows = (0..rows).filter(|&r| reasons[r].is_none()).collect();
    let rejected = reasons.into_iter().enumerate().filter_map(|(row, r)| r.map(|reason| Rejected { row, reason })).collect();
    let kept = filter_record_batch(&batch, &keep)?;
    let batch = RecordBatch::try_new(payload.clone(), kept.columns().to_vec())?;
    Ok(Conformed { batch, accepted_rows, rejected })
}

/// Casts one column, recording a reason for each value that does not convert.
fn convert_column(source: &ArrayRef, field: &Field, reasons: &mut [Option<String>]) -> Result<ArrayRef, ArrowError> {
    let target = field.data_type();
    if source.data_type() == target {
        return Ok(source.clone());
    }
    let source = blank_strings_as_null(source)?;
    let converted = cast_with_options(&source, target, &CastOptions { safe: true, ..Default::default() })?;
    if converted.null_count() > source.null_count() {
        let shown = cast(&source, &DataType::Utf8)?;
        let shown = shown.as_any().downcast_ref::<StringArray>().expect("cast to Utf8 gives a StringArray");
        for (row, reason) in reasons.iter_mut().enumerate() {
            if reason.is_none() && source.is_valid(row) && converted.is_null(row) {
                *reason = Some(format!("column `{}`: `{}` is not a valid {target}", field.name(), shown.value(row)));
            }
        }
    }
    Ok(converted)
}

/// Empty strings mean "no value" in CSV; treat them as null before casting.
fn blank_strings_as_null(source: &ArrayRef) -> Result<ArrayRef, ArrowError> {
    let Some(strings) = source.as_any().downcast_ref::<StringArray>() else { return Ok(source.clone()) };
    if !strings.iter().any(|v| v.is_some_and(|s| s.trim().is_empty())) {
        return Ok(source.clone());
    }
    Ok(Arc::new(strings.iter().map(|v| v.filter(|s| !s.trim().is_empty())).collect::<StringArray>()))
}

/// `schema` with every field nullable: decoders use it so that a missing required
/// value becomes a rejected record, not a failed batch.
pub fn nullable_schema(schema: &SchemaRef) -> SchemaRef {
    Arc::new(Schema::new(
        schema.fields().iter().map(|f| f.as_ref().clone().with_nullable(true)).collect::<Vec<_>>(),
    ))
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

/// The arrival time a record carries in a `_timestamp` field of its own.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Arrival {
    /// A valid timestamp, ms since the epoch.
    Given(i64),
    /// No `_timestamp` value: the source's clock applies.
    Missing,
    /// A `_timestamp` value that is not a timestamp: the record is rejected.
    Invalid,
}

/// The [`Arrival`] of each of `rows` of `input`.
fn input_timestamps(input: &RecordBatch, rows: &[usize]) -> Result<Vec<Arrival>, ArrowError> {
    let Ok(index) = input.schema().index_of(TIMESTAMP_COLUMN) else { return Ok(vec![Arrival::Missing; rows.len()]) };
    let given = blank_strings_as_null(input.column(index))?;
    let target = DataType::Timestamp(TimeUnit::Millisecond, None);
    let column = cast_with_options(&given, &target, &CastOptions { safe: true, ..Default::default() })?;
    let column = column.as_any().downcast_ref::<TimestampMillisecondArray>().expect("cast gives ms timestamps");
    Ok(rows
        .iter()
        .map(|&r| match (given.is_valid(r), column.is_valid(r)) {
            (_, true) => Arrival::Given(column.value(r)),
            (false, false) => Arrival::Missing,
            (true, false) => Arrival::Invalid,
        })
        .collect())
}

/// How a stream's records are encoded: `OPTIONS ('format' 'json')` (the default)
/// or `OPTIONS ('format' 'csv')` (one CSV line per record, declared column order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordFormat {
    /// One JSON object per record.
    Json,
    /// One CSV line per record, no header, columns in declaration order.
    Csv,
}

impl RecordFormat {
    /// The format a stream declares.
    pub fn of(stream: &StreamDecl) -> crate::Result<Self> {
        match stream.options.get("format").map(|f| f.to_ascii_lowercase()).as_deref() {
            None | Some("json") => Ok(Self::Json),
            Some("csv") => Ok(Self::Csv),
            Some(other) => Err(crate::ConnectorError::Binding {
                binding: stream.name.clone(),
                message: format!("unsupported record format `{other}` (OPTIONS ('format' 'json') or ('format' 'csv'))"),
            }),
        }
    }

    /// The format's name in messages.
    fn name(self) -> &'static str {
        match self {
            Self::Json => "JSON",
            Self::Csv => "CSV",
        }
    }
}

/// Records parsed structurally (JSON objects or CSV fields), before conversion to
/// the declared types.
#[derive(Debug)]
pub struct Parsed {
    /// One row per parsed record: typed columns for JSON, text for CSV, plus any
    /// `_timestamp` the records carry.
    pub batch: RecordBatch,
    /// Input index of each row of `batch`.
    pub rows: Vec<usize>,
    /// Records that did not parse: input index, reason, record as text.
    pub unparsed: Vec<(usize, String, String)>,
}

impl Parsed {
    /// Every row of `batch` parsed, rows numbered from 0 (e.g. a chunk of a CSV file).
    pub fn all(batch: RecordBatch) -> Self {
        Self { rows: (0..batch.num_rows()).collect(), batch, unparsed: vec![] }
    }
}

/// Parses raw records (one per slice) in bulk; a record that is not UTF-8 or does
/// not parse is singled out with a reason instead of failing the others.
///
/// ```
/// use std::sync::Arc;
/// use datafusion::arrow::datatypes::{DataType, Field, Schema};
/// use trendflow_connectors::decode::{parse_records, RecordFormat};
///
/// let payload = Arc::new(Schema::new(vec![Field::new("price", DataType::Float64, true)]));
/// let records: [&[u8]; 3] = [br#"{"price": 1.5}"#, b"{not json", br#"{"price": 2}"#];
/// let parsed = parse_records(RecordFormat::Json, &payload, &records);
/// assert_eq!(parsed.rows, vec![0, 2]);
/// assert_eq!(parsed.unparsed[0].0, 1);
/// ```
pub fn parse_records(format: RecordFormat, payload: &SchemaRef, records: &[&[u8]]) -> Parsed {
    let schema = parse_schema(format, payload);
    let mut texts = Vec::with_capacity(records.len());
    let mut unparsed = Vec::new();
    for (index, record) in records.iter().enumerate() {
        match std::str::from_utf8(record) {
            Ok(text) if text.trim().is_empty() => unparsed.push((index, "empty record".to_string(), String::new())),
            Ok(text) => texts.push((index, text.trim_end_matches(['\r', '\n']))),
            Err(e) => unparsed.push((index, format!("invalid UTF-8 ({e})"), String::from_utf8_lossy(record).into_owned())),
        }
    }
    let (batch, rows) = match parse_texts(format, &schema, texts.iter().map(|(_, t)| *t)) {
        // A line holding two objects, or a quoted newline, would shift rows against records.
        Ok(batch) if batch.num_rows() == texts.len() => (batch, texts.iter().map(|(i, _)| *i).collect()),
        _ => {
            let (batch, rows, mut bad) = parse_one_by_one(format, &schema, &texts);
            unparsed.append(&mut bad);
            (batch, rows)
        }
    };
    unparsed.sort_by_key(|(i, _, _)| *i);
    Parsed { batch, rows, unparsed }
}

/// What the parser produces: JSON gets the nullable declared types (plus `_timestamp`),
/// CSV text columns in declaration order, converted later by [`conform`].
fn parse_schema(format: RecordFormat, payload: &SchemaRef) -> SchemaRef {
    let mut fields: Vec<Field> = match format {
        RecordFormat::Json => nullable_schema(payload).fields().iter().map(|f| f.as_ref().clone()).collect(),
        RecordFormat::Csv => payload.fields().iter().map(|f| Field::new(f.name(), DataType::Utf8, true)).collect(),
    };
    if format == RecordFormat::Json {
        fields.push(Field::new(TIMESTAMP_COLUMN, DataType::Timestamp(TimeUnit::Millisecond, None), true));
    }
    Arc::new(Schema::new(fields))
}

fn parse_texts<'a>(format: RecordFormat, schema: &SchemaRef, texts: impl Iterator<Item = &'a str>) -> Result<RecordBatch, String> {
    match format {
        RecordFormat::Json => parse_json(schema, texts),
        RecordFormat::Csv => parse_csv(schema, texts),
    }
}

fn parse_json<'a>(schema: &SchemaRef, texts: impl Iterator<Item = &'a str>) -> Result<RecordBatch, String> {
    const BATCH: usize = 8192;
    let mut decoder = json::ReaderBuilder::new(schema.clone()).with_batch_size(BATCH).build_decoder().map_err(|e| e.to_string())?;
    let mut batches = Vec::new();
    for text in texts {
        let mut bytes = text.as_bytes();
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
    concat_batches(schema, &batches).map_err(|e| e.to_string())
}

fn parse_csv<'a>(schema: &SchemaRef, texts: impl Iterator<Item = &'a str>) -> Result<RecordBatch, String> {
    let mut joined = String::new();
    for text in texts {
        joined.push_str(text);
        joined.push('\n');
    }
    let reader = csv::ReaderBuilder::new(schema.clone())
        .with_header(false)
        .with_truncated_rows(true)
        .with_batch_size(65_536)
        .build(joined.as_bytes())
        .map_err(|e| e.to_string())?;
    let batches = reader.collect::<Result<Vec<_>, _>>().map_err(|e| e.to_string())?;
    concat_batches(schema, &batches).map_err(|e| e.to_string())
}

fn parse_one_by_one(
    format: RecordFormat,
    schema: &SchemaRef,
    texts: &[(usize, &str)],
) -> (RecordBatch, Vec<usize>, Vec<(usize, String, String)>) {
    let mut batches = Vec::new();
    let mut rows = Vec::new();
    let mut unparsed = Vec::new();
    for &(index, text) in texts {
        match parse_texts(format, schema, std::iter::once(text)) {
            Ok(batch) if batch.num_rows() == 1 => {
                batches.push(batch);
                rows.push(index);
            }
            Ok(_) => unparsed.push((index, "not a single record".to_string(), text.to_string())),
            Err(reason) => unparsed.push((index, format!("invalid {} record: {reason}", format.name()), text.to_string())),
        }
    }
    let batch = concat_batches(schema, &batches).unwrap_or_else(|_| RecordBatch::new_empty(schema.clone()));
    (batch, rows, unparsed)
}

/// Parsed records converted to a stream's payload schema.
#[derive(Debug)]
pub struct Decoded {
    /// Accepted records, with the declared payload schema.
    pub batch: RecordBatch,
    /// Input index of each accepted record.
    pub rows: Vec<usize>,
    /// The `_timestamp` each accepted record carried (None: the source's clock applies).
    pub arrivals: Vec<Option<i64>>,
    /// Rejected records: input index, reason, record as text; sorted by index.
    pub rejected: Vec<(usize, String, String)>,
}

/// Converts parsed records to `payload`, rejecting those whose values do not
/// convert, whose required fields are missing, or whose `_timestamp` is not a time.
pub fn decode_parsed(parsed: Parsed, payload: &SchemaRef) -> Result<Decoded, ArrowError> {
    let conformed = conform(&parsed.batch, payload)?;
    let arrivals = input_timestamps(&parsed.batch, &conformed.accepted_rows)?;
    let mut rejected = parsed.unparsed;
    for r in &conformed.rejected {
        rejected.push((parsed.rows[r.row], r.reason.clone(), row_as_json(&parsed.batch, r.row)));
    }
    let keep: BooleanArray = arrivals.iter().map(|a| Some(*a != Arrival::Invalid)).collect();
    let batch = if keep.false_count() > 0 { filter_record_batch(&conformed.batch, &keep)? } else { conformed.batch };
    let mut rows = Vec::with_capacity(batch.num_rows());
    let mut times = Vec::with_capacity(batch.num_rows());
    for (&row, arrival) in conformed.accepted_rows.iter().zip(&arrivals) {
        match arrival {
            Arrival::Given(t) => times.push(Some(*t)),
            Arrival::Missing => times.push(None),
            Arrival::Invalid => {
                let reason = format!("column `{TIMESTAMP_COLUMN}` is not a timestamp");
                rejected.push((parsed.rows[row], reason, row_as_json(&parsed.batch, row)));
                continue;
            }
        }
        rows.push(parsed.rows[row]);
    }
    rejected.sort_by_key(|(i, _, _)| *i);
    Ok(Decoded { batch, rows, arrivals: times, rejected })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text_batch(columns: Vec<(&str, Vec<Option<&str>>)>) -> RecordBatch {
        let fields: Vec<Field> = columns.iter().map(|(n, _)| Field::new(*n, DataType::Utf8, true)).collect();
        let arrays: Vec<ArrayRef> = columns.into_iter().map(|(_, v)| Arc::new(StringArray::from(v)) as ArrayRef).collect();
        RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).unwrap()
    }

    #[test]
    fn rejects_bad_values_and_missing_required_columns() {
        let input = text_batch(vec![
            ("asin", vec![Some("A1"), None, Some("A3"), Some("A4")]),
            ("price", vec![Some("9.5"), Some("1"), Some("cheap"), Some("")]),
            ("isBestSeller", vec![Some("True"), Some("False"), Some("False"), Some("false")]),
            ("extra", vec![Some("x"), Some("y"), Some("z"), Some("w")]),
        ]);
        let declared = Arc::new(Schema::new(vec![
            Field::new("asin", DataType::Utf8, false),
            Field::new("price", DataType::Float64, true),
            Field::new("isBestSeller", DataType::Boolean, true),
            Field::new("missing", DataType::Int64, true),
        ]));
        let out = conform(&input, &declared).unwrap();
        assert_eq!(out.batch.num_rows(), 2);
        assert_eq!(out.accepted_rows, vec![0, 3]);
        assert_eq!(out.rejected.len(), 2);
        assert!(out.rejected[0].reason.contains("`asin` is required"), "{:?}", out.rejected);
        assert!(out.rejected[1].reason.contains("`cheap` is not a valid Float64"), "{:?}", out.rejected);
        let best = out.batch.column(2).as_any().downcast_ref::<BooleanArray>().unwrap();
        assert!(best.value(0));
        assert!(out.batch.column(1).is_null(1), "blank price is null, not an error");
        assert_eq!(out.batch.column(3).null_count(), 2);
    }
}
