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
use datafusion::arrow::compute::{cast, cast_with_options, filter_record_batch, CastOptions};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::error::ArrowError;
use trendflow_engine::stream_table::{StreamDecl, TIMESTAMP_COLUMN};

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
pub struct RecordOrigin<'a> {
    /// Partition of every record.
    pub partition: i32,
    /// Offset of each record.
    pub offsets: Vec<i64>,
    /// Arrival time of each record, ms since the epoch.
    pub timestamps: Vec<i64>,
    /// Record keys, if the transport has them; otherwise derived from the primary key.
    pub keys: Option<&'a StringArray>,
}

/// Appends the metadata columns (`_key`, `_partition`, `_offset`, `_timestamp`) to a
/// payload batch, giving a batch with the stream's full schema.
pub fn with_metadata(stream: &StreamDecl, payload: &RecordBatch, origin: RecordOrigin<'_>) -> Result<RecordBatch, ArrowError> {
    let rows = payload.num_rows();
    let key: ArrayRef = match (origin.keys, stream.primary_key.first()) {
        (Some(keys), _) => Arc::new(keys.clone()),
        (None, Some(&pk)) if stream.primary_key.len() == 1 => cast(payload.column(pk), &DataType::Utf8)?,
        _ => new_null_array(&DataType::Utf8, rows),
    };
    let mut columns = payload.columns().to_vec();
    columns.push(key);
    columns.push(Arc::new(Int32Array::from(vec![origin.partition; rows])));
    columns.push(Arc::new(Int64Array::from(origin.offsets)));
    columns.push(Arc::new(TimestampMillisecondArray::from(origin.timestamps).with_timezone("UTC")));
    RecordBatch::try_new(stream.schema.clone(), columns)
}

/// The arrival time a record carries in a `_timestamp` field of its own.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Arrival {
    /// A valid timestamp, ms since the epoch.
    Given(i64),
    /// No `_timestamp` value: the source's clock applies.
    Missing,
    /// A `_timestamp` value that is not a timestamp: the record is rejected.
    Invalid,
}

/// The [`Arrival`] of each of `rows` of `input`.
pub fn input_timestamps(input: &RecordBatch, rows: &[usize]) -> Result<Vec<Arrival>, ArrowError> {
    let Ok(index) = input.schema().index_of(TIMESTAMP_COLUMN) else { return Ok(vec![Arrival::Missing; rows.len()]) };
    let given = blank_strings_as_null(input.column(index))?;
    let target = DataType::Timestamp(datafusion::arrow::datatypes::TimeUnit::Millisecond, None);
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
