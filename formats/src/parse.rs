//! Parsing raw records (JSON objects or CSV lines) and converting them to a
//! stream's payload schema.

use std::sync::Arc;

use arrow::array::{Array, BooleanArray, RecordBatch, TimestampMillisecondArray, UInt32Array};
use arrow::compute::{cast_with_options, concat_batches, filter_record_batch, take_record_batch, CastOptions};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use arrow::{csv, json};

use crate::conform::{blank_strings_as_null, conform, nullable_schema};
use crate::{DELETED_COLUMN, TIMESTAMP_COLUMN};

/// How much of an oversized record its rejection shows.
const SHOWN_BYTES: usize = 1024;

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
    /// The format named `name` (`json` or `csv`, any case).
    ///
    /// ```
    /// use trendflow_formats::RecordFormat;
    /// assert_eq!(RecordFormat::from_name("CSV"), Some(RecordFormat::Csv));
    /// assert_eq!(RecordFormat::from_name("avro"), None);
    /// ```
    pub fn from_name(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "json" => Some(Self::Json),
            "csv" => Some(Self::Csv),
            _ => None,
        }
    }

    /// The format's name in messages.
    pub fn name(self) -> &'static str {
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

/// Parses raw records (one per slice) in bulk; a record that is larger than
/// `max_record_bytes`, is not UTF-8 or does not parse is singled out with a reason
/// instead of failing the others.
///
/// ```
/// use std::sync::Arc;
/// use arrow::datatypes::{DataType, Field, Schema};
/// use trendflow_formats::{parse_records, RecordFormat};
///
/// let payload = Arc::new(Schema::new(vec![Field::new("price", DataType::Float64, true)]));
/// let records: [&[u8]; 3] = [br#"{"price": 1.5}"#, b"{not json", br#"{"price": 2}"#];
/// let parsed = parse_records(RecordFormat::Json, &payload, &records, 1 << 20);
/// assert_eq!(parsed.rows, vec![0, 2]);
/// assert_eq!(parsed.unparsed[0].0, 1);
/// ```
pub fn parse_records(format: RecordFormat, payload: &SchemaRef, records: &[&[u8]], max_record_bytes: usize) -> Parsed {
    parse_with_schema(format, &parse_schema(format, payload), records, max_record_bytes)
}

/// [`parse_records`] into a given parse schema (e.g. a Debezium envelope's).
pub(crate) fn parse_with_schema(format: RecordFormat, schema: &SchemaRef, records: &[&[u8]], max_record_bytes: usize) -> Parsed {
    let mut texts = Vec::with_capacity(records.len());
    let mut unparsed = Vec::new();
    for (index, record) in records.iter().enumerate() {
        if record.len() > max_record_bytes {
            unparsed.push(oversized(index, record, max_record_bytes));
            continue;
        }
        match std::str::from_utf8(record) {
            Ok(text) if text.trim().is_empty() => unparsed.push((index, "empty record".to_string(), String::new())),
            Ok(text) => texts.push((index, text.trim_end_matches(['\r', '\n']))),
            Err(e) => unparsed.push((index, format!("invalid UTF-8 ({e})"), String::from_utf8_lossy(record).into_owned())),
        }
    }
    let (batch, rows) = match parse_texts(format, schema, texts.iter().map(|(_, t)| *t)) {
        // A line holding two objects, or a quoted newline, would shift rows against records.
        Ok(batch) if batch.num_rows() == texts.len() => (batch, texts.iter().map(|(i, _)| *i).collect()),
        _ => {
            let (batch, rows, mut bad) = parse_one_by_one(format, schema, &texts);
            unparsed.append(&mut bad);
            (batch, rows)
        }
    };
    unparsed.sort_by_key(|(i, _, _)| *i);
    Parsed { batch, rows, unparsed }
}

/// The rejection of a record larger than `max_record_bytes`.
pub(crate) fn oversized(index: usize, record: &[u8], max_record_bytes: usize) -> (usize, String, String) {
    let reason = format!("record of {} bytes is larger than max_record_bytes ({max_record_bytes})", record.len());
    (index, reason, shown(record))
}

/// A record as text for people: its start is enough (sources keep the record itself).
pub(crate) fn shown(record: &[u8]) -> String {
    let start = String::from_utf8_lossy(&record[..SHOWN_BYTES.min(record.len())]).into_owned();
    if record.len() > SHOWN_BYTES {
        start + "…"
    } else {
        start
    }
}

/// What the parser produces: JSON gets the nullable declared types (plus `_timestamp`
/// and `_deleted`), CSV text columns in declaration order, converted later by [`conform`].
fn parse_schema(format: RecordFormat, payload: &SchemaRef) -> SchemaRef {
    let mut fields: Vec<Field> = match format {
        RecordFormat::Json => nullable_schema(payload).fields().iter().map(|f| f.as_ref().clone()).collect(),
        RecordFormat::Csv => payload.fields().iter().map(|f| Field::new(f.name(), DataType::Utf8, true)).collect(),
    };
    if format == RecordFormat::Json {
        fields.push(Field::new(TIMESTAMP_COLUMN, DataType::Timestamp(TimeUnit::Millisecond, None), true));
        fields.push(Field::new(DELETED_COLUMN, DataType::Boolean, true));
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

fn parse_one_by_one(format: RecordFormat, schema: &SchemaRef, texts: &[(usize, &str)]) -> (RecordBatch, Vec<usize>, Vec<(usize, String, String)>) {
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
    /// Accepted records, with the declared payload schema ([`changes_schema`] for a
    /// changelog stream, whose deletes carry only their key).
    pub batch: RecordBatch,
    /// Input index of each accepted record.
    pub rows: Vec<usize>,
    /// The `_timestamp` each accepted record carried (None: the source's clock applies).
    pub arrivals: Vec<Option<i64>>,
    /// Whether each accepted record deletes its key (`"_deleted": true`, a tombstone, a
    /// Debezium delete); always false on an append stream.
    pub deleted: Vec<bool>,
    /// Rejected records: input index, reason, record as text; sorted by index.
    pub rejected: Vec<(usize, String, String)>,
}

/// The payload schema of a changelog stream keyed by `key` (indices into `payload`):
/// every other column nullable, since a delete carries only its key.
///
/// ```
/// use std::sync::Arc;
/// use arrow::datatypes::{DataType, Field, Schema};
/// use trendflow_formats::changes_schema;
///
/// let payload = Arc::new(Schema::new(vec![Field::new("id", DataType::Int32, false), Field::new("name", DataType::Utf8, false)]));
/// let changes = changes_schema(&payload, &[0]);
/// assert!(!changes.field(0).is_nullable() && changes.field(1).is_nullable());
/// ```
pub fn changes_schema(payload: &SchemaRef, key: &[usize]) -> SchemaRef {
    let fields: Vec<Field> =
        payload.fields().iter().enumerate().map(|(i, f)| f.as_ref().clone().with_nullable(f.is_nullable() || !key.contains(&i))).collect();
    Arc::new(Schema::new(fields))
}

/// Converts parsed records to `payload`, rejecting those whose values do not
/// convert, whose required fields are missing, or whose `_timestamp` is not a time.
///
/// `key` is `None` for an append stream, where a record marked `"_deleted": true` is
/// rejected (it would be counted as a row); for a changelog stream it names the key
/// columns, the only ones a delete must carry, and the batch has [`changes_schema`].
pub fn decode_parsed(mut parsed: Parsed, payload: &SchemaRef, key: Option<&[usize]>) -> Result<Decoded, ArrowError> {
    let deletes = deleted_flags(&mut parsed)?;
    let Some(key) = key else {
        let marked: std::collections::HashSet<usize> = (0..deletes.len()).filter(|&r| deletes.value(r)).map(|r| parsed.rows[r]).collect();
        let mut decoded = decode_rows(parsed, payload)?;
        let marked: Vec<usize> = decoded.rows.iter().enumerate().filter(|(_, r)| marked.contains(r)).map(|(i, _)| i).collect();
        reject_deletes(&mut decoded, &marked)?;
        return Ok(decoded);
    };
    let is_delete = |parsed_row: usize| deletes.value(parsed_row);
    let (upserts, removals) = split_rows(parsed, &is_delete)?;
    let schema = changes_schema(payload, key);
    let upserts = decode_rows(upserts, payload)?;
    let key_schema = Arc::new(payload.project(key)?);
    let mut removals = decode_rows(removals, &key_schema)?;
    // A delete keeps only its key: the other columns are null.
    let rows = removals.batch.num_rows();
    let columns = (0..payload.fields().len())
        .map(|i| match key.iter().position(|&k| k == i) {
            Some(k) => removals.batch.column(k).clone(),
            None => arrow::array::new_null_array(payload.field(i).data_type(), rows),
        })
        .collect();
    removals.batch = RecordBatch::try_new(schema.clone(), columns)?;
    removals.deleted = vec![true; rows];
    let upserts = Decoded { batch: RecordBatch::try_new(schema.clone(), upserts.batch.columns().to_vec())?, ..upserts };
    merge_in_input_order(vec![upserts, removals], &schema)
}

/// The `_deleted` mark of each parsed row (false where absent).
/// A `_deleted` value that is neither true nor false rejects its record (it would
/// otherwise be taken as an upsert in silence).
fn deleted_flags(parsed: &mut Parsed) -> Result<BooleanArray, ArrowError> {
    let batch = &parsed.batch;
    let Ok(index) = batch.schema().index_of(DELETED_COLUMN) else { return Ok(BooleanArray::from(vec![false; batch.num_rows()])) };
    let given = blank_strings_as_null(batch.column(index))?;
    let flags = cast_with_options(&given, &DataType::Boolean, &CastOptions { safe: true, ..Default::default() })?;
    let flags = flags.as_any().downcast_ref::<BooleanArray>().expect("cast gives booleans").clone();
    let invalid: Vec<usize> = (0..flags.len()).filter(|&r| given.is_valid(r) && flags.is_null(r)).collect();
    if !invalid.is_empty() {
        for &r in &invalid {
            let reason = format!("column `{DELETED_COLUMN}`: must be true or false");
            parsed.unparsed.push((parsed.rows[r], reason, row_as_json(batch, r)));
        }
        let keep: BooleanArray = (0..flags.len()).map(|r| Some(!invalid.contains(&r))).collect();
        parsed.batch = filter_record_batch(&parsed.batch, &keep)?;
        parsed.rows = kept(&parsed.rows, &keep);
        parsed.unparsed.sort_by_key(|(i, _, _)| *i);
        let valid = arrow::compute::filter(&flags, &keep)?;
        return Ok(valid.as_any().downcast_ref::<BooleanArray>().expect("booleans").iter().map(|f| Some(f == Some(true))).collect());
    }
    Ok(flags.iter().map(|f| Some(f == Some(true))).collect())
}

/// Splits parsed rows into those `is_delete` says no to and those it says yes to.
fn split_rows(parsed: Parsed, is_delete: &dyn Fn(usize) -> bool) -> Result<(Parsed, Parsed), ArrowError> {
    let mask: BooleanArray = (0..parsed.batch.num_rows()).map(|r| Some(is_delete(r))).collect();
    let inverse = arrow::compute::not(&mask)?;
    let part = |mask: &BooleanArray, unparsed| -> Result<Parsed, ArrowError> {
        let rows = parsed.rows.iter().enumerate().filter(|(i, _)| mask.value(*i)).map(|(_, r)| *r).collect();
        Ok(Parsed { batch: filter_record_batch(&parsed.batch, mask)?, rows, unparsed })
    };
    Ok((part(&inverse, parsed.unparsed.clone())?, part(&mask, Vec::new())?))
}

/// Moves the accepted rows at `positions` to the rejected ones: deletes on an append stream.
fn reject_deletes(decoded: &mut Decoded, positions: &[usize]) -> Result<(), ArrowError> {
    if positions.is_empty() {
        return Ok(());
    }
    let keep: BooleanArray = (0..decoded.rows.len()).map(|i| Some(!positions.contains(&i))).collect();
    for &i in positions {
        let reason =
            format!("`{DELETED_COLUMN}` marks a delete, but the stream is append-only; declare it OPTIONS ('changelog' 'upsert') with a PRIMARY KEY");
        decoded.rejected.push((decoded.rows[i], reason, row_as_json(&decoded.batch, i)));
    }
    decoded.batch = filter_record_batch(&decoded.batch, &keep)?;
    decoded.rows = kept(&decoded.rows, &keep);
    decoded.arrivals = kept(&decoded.arrivals, &keep);
    decoded.deleted = kept(&decoded.deleted, &keep);
    decoded.rejected.sort_by_key(|(i, _, _)| *i);
    Ok(())
}

fn kept<T: Copy>(values: &[T], keep: &BooleanArray) -> Vec<T> {
    values.iter().enumerate().filter(|(i, _)| keep.value(*i)).map(|(_, v)| *v).collect()
}

/// Converts parsed rows to `payload` (no delete marks looked at).
fn decode_rows(parsed: Parsed, payload: &SchemaRef) -> Result<Decoded, ArrowError> {
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
    let deleted = vec![false; rows.len()];
    Ok(Decoded { batch, rows, arrivals: times, deleted, rejected })
}

/// [`decode_parsed`] over several parts of one input (e.g. one per Avro writer
/// schema), merged back into input order.
pub fn decode_parts(parts: Vec<Parsed>, payload: &SchemaRef, key: Option<&[usize]>) -> Result<Decoded, ArrowError> {
    let mut decoded = parts.into_iter().map(|part| decode_parsed(part, payload, key)).collect::<Result<Vec<_>, _>>()?;
    if decoded.len() == 1 {
        return Ok(decoded.remove(0));
    }
    let schema = key.map_or_else(|| payload.clone(), |key| changes_schema(payload, key));
    merge_in_input_order(decoded, &schema)
}

/// Decoded parts of one input, merged into input order (a stable sort: records that
/// share an input index keep their order).
fn merge_in_input_order(decoded: Vec<Decoded>, schema: &SchemaRef) -> Result<Decoded, ArrowError> {
    let batch = concat_batches(schema, decoded.iter().map(|d| &d.batch))?;
    let mut rows = Vec::with_capacity(batch.num_rows());
    let mut arrivals = Vec::with_capacity(batch.num_rows());
    let mut deleted = Vec::with_capacity(batch.num_rows());
    let mut rejected = Vec::new();
    for part in decoded {
        rows.extend(part.rows);
        arrivals.extend(part.arrivals);
        deleted.extend(part.deleted);
        rejected.extend(part.rejected);
    }
    rejected.sort_by_key(|(i, _, _)| *i);
    let mut order: Vec<u32> = (0..rows.len() as u32).collect();
    order.sort_by_key(|&i| rows[i as usize]);
    let order = UInt32Array::from(order);
    let batch = take_record_batch(&batch, &order)?;
    Ok(Decoded { batch, rows: pick(&order, &rows), arrivals: pick(&order, &arrivals), deleted: pick(&order, &deleted), rejected })
}

fn pick<T: Copy>(order: &UInt32Array, values: &[T]) -> Vec<T> {
    order.values().iter().map(|&i| values[i as usize]).collect()
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

/// Row `row` of `batch` as a JSON object of display strings (for dead letters).
pub fn row_as_json(batch: &RecordBatch, row: usize) -> String {
    let options = FormatOptions::default().with_null("");
    let mut object = serde_json::Map::new();
    for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
        let value = ArrayFormatter::try_new(column.as_ref(), &options).map(|f| f.value(row).to_string()).unwrap_or_default();
        object.insert(field.name().clone(), serde_json::Value::String(value));
    }
    serde_json::Value::Object(object).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload() -> SchemaRef {
        Arc::new(Schema::new(vec![Field::new("asin", DataType::Utf8, false), Field::new("price", DataType::Float64, false)]))
    }

    fn decode(records: &[&str], key: Option<&[usize]>) -> Decoded {
        let slices: Vec<&[u8]> = records.iter().map(|r| r.as_bytes()).collect();
        decode_parsed(parse_records(RecordFormat::Json, &payload(), &slices, 1 << 20), &payload(), key).unwrap()
    }

    #[test]
    fn a_delete_needs_only_its_key_on_a_changelog_stream() {
        let decoded = decode(&[r#"{"asin": "A", "price": 1}"#, r#"{"asin": "A", "_deleted": true}"#, r#"{"_deleted": true}"#], Some(&[0]));
        assert_eq!(decoded.rows, vec![0, 1]);
        assert_eq!(decoded.deleted, vec![false, true]);
        assert!(decoded.rejected[0].1.contains("`asin` is required"), "{:?}", decoded.rejected);
    }

    #[test]
    fn deletes_are_refused_on_an_append_stream_and_bad_marks_everywhere() {
        let decoded = decode(&[r#"{"asin": "A", "price": 1, "_deleted": true}"#, r#"{"asin": "B", "price": 2, "_deleted": false}"#], None);
        assert_eq!(decoded.rows, vec![1]);
        assert!(decoded.rejected[0].1.contains("append-only"), "{:?}", decoded.rejected);
        let decoded = decode(&[r#"{"asin": "A", "price": 1, "_deleted": "maybe"}"#, r#"{"asin": "B", "price": 2}"#], Some(&[0]));
        assert_eq!(decoded.rows, vec![1]);
        assert_eq!(decoded.rejected.len(), 1, "{:?}", decoded.rejected);
    }
}
