//! Converting parsed columns to a declared schema, one reason per row that does not fit.

use std::sync::Arc;

use arrow::array::{new_null_array, Array, ArrayRef, BooleanArray, Float64Array, RecordBatch, StringArray};
use arrow::compute::{cast, cast_with_options, filter_record_batch, CastOptions};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::error::ArrowError;

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
/// use arrow::array::{RecordBatch, StringArray};
/// use arrow::datatypes::{DataType, Field, Schema};
/// use trendflow_formats::conform;
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
        reject_non_finite(&column, field, &mut reasons)?;
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
    let converted = match cast_with_options(&source, target, &CastOptions { safe: true, ..Default::default() }) {
        Ok(converted) => converted,
        // No conversion exists (e.g. an Avro writer's nested record where a number is
        // declared): every value of the column is rejected, not the whole batch.
        Err(e) => {
            let reason = format!("column `{}`: a {} value cannot be read as {target} ({e})", field.name(), source.data_type());
            for (row, slot) in reasons.iter_mut().enumerate() {
                if slot.is_none() && source.is_valid(row) {
                    *slot = Some(reason.clone());
                }
            }
            return Ok(new_null_array(target, source.len()));
        }
    };
    if converted.null_count() > source.null_count() {
        let shown = cast(&source, &DataType::Utf8).ok();
        let shown = shown.as_ref().and_then(|s| s.as_any().downcast_ref::<StringArray>());
        for (row, reason) in reasons.iter_mut().enumerate() {
            if reason.is_none() && source.is_valid(row) && converted.is_null(row) {
                let value = shown.map_or_else(|| format!("a {} value", source.data_type()), |s| format!("`{}`", s.value(row)));
                *reason = Some(format!("column `{}`: {value} is not a valid {target}", field.name()));
            }
        }
    }
    Ok(converted)
}

/// NaN and infinities parse as floats (from `"NaN"` strings or CSV text) but are not
/// measurements: one would turn every average and sum it reaches into NaN for good.
fn reject_non_finite(column: &ArrayRef, field: &Field, reasons: &mut [Option<String>]) -> Result<(), ArrowError> {
    if !matches!(column.data_type(), DataType::Float16 | DataType::Float32 | DataType::Float64) {
        return Ok(());
    }
    let values = cast(column, &DataType::Float64)?;
    let values = values.as_any().downcast_ref::<Float64Array>().expect("cast to Float64 gives a Float64Array");
    for (row, reason) in reasons.iter_mut().enumerate() {
        if reason.is_none() && values.is_valid(row) && !values.value(row).is_finite() {
            *reason = Some(format!("column `{}`: `{}` is not a finite number", field.name(), values.value(row)));
        }
    }
    Ok(())
}

/// Empty strings mean "no value" in CSV; treat them as null before casting.
pub(crate) fn blank_strings_as_null(source: &ArrayRef) -> Result<ArrayRef, ArrowError> {
    let Some(strings) = source.as_any().downcast_ref::<StringArray>() else { return Ok(source.clone()) };
    if !strings.iter().any(|v| v.is_some_and(|s| s.trim().is_empty())) {
        return Ok(source.clone());
    }
    Ok(Arc::new(strings.iter().map(|v| v.filter(|s| !s.trim().is_empty())).collect::<StringArray>()))
}

/// `schema` with every field nullable: decoders use it so that a missing required
/// value becomes a rejected record, not a failed batch.
pub fn nullable_schema(schema: &SchemaRef) -> SchemaRef {
    Arc::new(Schema::new(schema.fields().iter().map(|f| f.as_ref().clone().with_nullable(true)).collect::<Vec<_>>()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text_batch(columns: Vec<(&str, Vec<Option<&str>>)>) -> RecordBatch {
        let fields: Vec<Field> = columns.iter().map(|(n, _)| Field::new(*n, DataType::Utf8, true)).collect();
        let arrays: Vec<ArrayRef> = columns.into_iter().map(|(_, v)| Arc::new(StringArray::from(v)) as ArrayRef).collect();
        RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).unwrap()
    }

    /// A column of a type with no conversion to the declared one (a nested record for a
    /// number) rejects the rows that have a value there, not the batch.
    #[test]
    fn unconvertible_types_reject_rows() {
        let inner = Arc::new(StringArray::from(vec!["x", "y"])) as ArrayRef;
        let nested =
            arrow::array::StructArray::try_new(vec![Field::new("amount", DataType::Utf8, true)].into(), vec![inner], Some(vec![true, false].into()))
                .unwrap();
        let schema = Schema::new(vec![Field::new("price", nested.data_type().clone(), true)]);
        let input = RecordBatch::try_new(Arc::new(schema), vec![Arc::new(nested)]).unwrap();
        let declared = Arc::new(Schema::new(vec![Field::new("price", DataType::Float64, true)]));
        let out = conform(&input, &declared).unwrap();
        assert_eq!(out.accepted_rows, vec![1]);
        assert!(out.rejected[0].reason.contains("cannot be read as Float64"), "{:?}", out.rejected);
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

    #[test]
    fn rejects_non_finite_numbers() {
        let input = text_batch(vec![("price", vec![Some("NaN"), Some("inf"), Some("-Infinity"), Some("-2.5"), Some("1e3")])]);
        let declared = Arc::new(Schema::new(vec![Field::new("price", DataType::Float64, true)]));
        let out = conform(&input, &declared).unwrap();
        assert_eq!(out.accepted_rows, vec![3, 4], "negative prices are numbers; the views decide what they mean");
        assert!(out.rejected.iter().all(|r| r.reason.contains("is not a finite number")), "{:?}", out.rejected);
    }
}
