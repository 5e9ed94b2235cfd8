//! Arrow ⇄ BSON for view rows.
//!
//! | Arrow | BSON |
//! |---|---|
//! | Int8/16/32, UInt8/16 | Int32 |
//! | Int64, UInt32, UInt64 (≤ i64::MAX) | Int64 |
//! | Float32/64 | Double |
//! | Decimal128 (≤ 34 digits) | Decimal128 |
//! | Boolean | Boolean |
//! | Utf8, LargeUtf8, Utf8View | String |
//! | Timestamp (any unit, any zone), Date32, Date64 | Date (UTC milliseconds) |
//! | Binary | Binary |
//! | List, LargeList | Array |
//! | Struct | embedded document |
//! | null | Null |

use std::sync::Arc;

use datafusion::arrow::array::{
    new_null_array, Array, ArrayRef, AsArray, BooleanBuilder, Float64Builder, Int64Builder, RecordBatch, RecordBatchOptions, StringBuilder,
    TimestampMillisecondBuilder,
};
use datafusion::arrow::datatypes::{
    DataType, Date32Type, Date64Type, Decimal128Type, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Int8Type, SchemaRef, TimeUnit,
    TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType, TimestampSecondType, UInt16Type, UInt32Type, UInt64Type, UInt8Type,
};
use datafusion::arrow::error::ArrowError;
use mongodb::bson::{spec::BinarySubtype, Binary, Bson, DateTime, Decimal128, Document};

/// The BSON value of row `row` of `array`.
pub fn to_bson(array: &dyn Array, row: usize) -> Result<Bson, ArrowError> {
    if array.is_null(row) {
        return Ok(Bson::Null);
    }
    Ok(match array.data_type() {
        DataType::Int8 => Bson::Int32(array.as_primitive::<Int8Type>().value(row).into()),
        DataType::Int16 => Bson::Int32(array.as_primitive::<Int16Type>().value(row).into()),
        DataType::Int32 => Bson::Int32(array.as_primitive::<Int32Type>().value(row)),
        DataType::UInt8 => Bson::Int32(array.as_primitive::<UInt8Type>().value(row).into()),
        DataType::UInt16 => Bson::Int32(array.as_primitive::<UInt16Type>().value(row).into()),
        DataType::Int64 => Bson::Int64(array.as_primitive::<Int64Type>().value(row)),
        DataType::UInt32 => Bson::Int64(array.as_primitive::<UInt32Type>().value(row).into()),
        DataType::UInt64 => {
            let v = array.as_primitive::<UInt64Type>().value(row);
            i64::try_from(v).map(Bson::Int64).unwrap_or(Bson::Double(v as f64))
        }
        DataType::Float32 => Bson::Double(array.as_primitive::<Float32Type>().value(row).into()),
        DataType::Float64 => Bson::Double(array.as_primitive::<Float64Type>().value(row)),
        DataType::Decimal128(_, scale) => decimal(array.as_primitive::<Decimal128Type>().value(row), *scale)?,
        DataType::Boolean => Bson::Boolean(array.as_boolean().value(row)),
        DataType::Utf8 => Bson::String(array.as_string::<i32>().value(row).to_string()),
        DataType::LargeUtf8 => Bson::String(array.as_string::<i64>().value(row).to_string()),
        DataType::Utf8View => Bson::String(array.as_string_view().value(row).to_string()),
        DataType::Binary => Bson::Binary(Binary { subtype: BinarySubtype::Generic, bytes: array.as_binary::<i32>().value(row).to_vec() }),
        DataType::Timestamp(unit, _) => Bson::DateTime(DateTime::from_millis(timestamp_millis(array, *unit, row))),
        DataType::Date32 => Bson::DateTime(DateTime::from_millis(i64::from(array.as_primitive::<Date32Type>().value(row)) * 86_400_000)),
        DataType::Date64 => Bson::DateTime(DateTime::from_millis(array.as_primitive::<Date64Type>().value(row))),
        DataType::List(_) => list(array.as_list::<i32>().value(row).as_ref())?,
        DataType::LargeList(_) => list(array.as_list::<i64>().value(row).as_ref())?,
        DataType::Struct(fields) => {
            let columns = array.as_struct();
            let mut document = Document::new();
            for (field, column) in fields.iter().zip(columns.columns()) {
                document.insert(field.name(), to_bson(column.as_ref(), row)?);
            }
            Bson::Document(document)
        }
        other => return Err(ArrowError::NotYetImplemented(format!("no BSON mapping for Arrow type {other}"))),
    })
}

fn list(values: &dyn Array) -> Result<Bson, ArrowError> {
    (0..values.len()).map(|i| to_bson(values, i)).collect::<Result<Vec<_>, _>>().map(Bson::Array)
}

fn timestamp_millis(array: &dyn Array, unit: TimeUnit, row: usize) -> i64 {
    match unit {
        TimeUnit::Second => array.as_primitive::<TimestampSecondType>().value(row) * 1000,
        TimeUnit::Millisecond => array.as_primitive::<TimestampMillisecondType>().value(row),
        TimeUnit::Microsecond => array.as_primitive::<TimestampMicrosecondType>().value(row).div_euclid(1000),
        TimeUnit::Nanosecond => array.as_primitive::<TimestampNanosecondType>().value(row).div_euclid(1_000_000),
    }
}

/// IEEE 754-2008 decimal128 (BID encoding, as BSON stores it) of `value × 10^-scale`.
fn decimal(value: i128, scale: i8) -> Result<Bson, ArrowError> {
    let coefficient = value.unsigned_abs();
    if coefficient >= 10u128.pow(34) {
        return Err(ArrowError::ComputeError(format!("decimal {value}e-{scale} has more than the 34 digits BSON Decimal128 holds")));
    }
    let exponent = (6176 - i32::from(scale)) as u128;
    let sign = u128::from(value < 0) << 127;
    let bits = sign | (exponent << 113) | coefficient;
    Ok(Bson::Decimal128(Decimal128::from_bytes(bits.to_le_bytes())))
}

/// Reverses [`decimal`]: the coefficient of `d` at `scale`.
fn decimal_value(d: &Decimal128, scale: i8) -> Option<i128> {
    let bits = u128::from_le_bytes(d.bytes());
    if (bits >> 125) & 0b11 == 0b11 {
        return None; // the large-coefficient form or a special value: never written by us
    }
    let negative = bits >> 127 == 1;
    let exponent = ((bits >> 113) & 0x3FFF) as i32 - 6176;
    let mut coefficient = (bits & ((1u128 << 113) - 1)) as i128;
    let shift = exponent + i32::from(scale);
    if shift >= 0 {
        coefficient *= 10i128.checked_pow(shift as u32)?;
    } else {
        coefficient /= 10i128.checked_pow((-shift) as u32)?;
    }
    Some(if negative { -coefficient } else { coefficient })
}

/// The document of row `row` of `batch`.
pub fn row_document(batch: &RecordBatch, row: usize) -> Result<Document, ArrowError> {
    let mut document = Document::new();
    for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
        document.insert(field.name(), to_bson(column.as_ref(), row)?);
    }
    Ok(document)
}

/// The `_id` of row `row`: the key value for one key column, a sub-document for several.
pub fn row_id(batch: &RecordBatch, key: &[usize], row: usize) -> Result<Bson, ArrowError> {
    if let [only] = key {
        return to_bson(batch.column(*only).as_ref(), row);
    }
    let mut id = Document::new();
    for &k in key {
        id.insert(batch.schema().field(k).name(), to_bson(batch.column(k).as_ref(), row)?);
    }
    Ok(Bson::Document(id))
}

/// Builds a batch with `schema` from documents (missing fields are null). Supports the
/// scalar types of the mapping table; other columns are an error naming the column.
pub fn documents_to_batch(schema: &SchemaRef, documents: &[Document]) -> Result<RecordBatch, ArrowError> {
    let columns = schema.fields().iter().map(|field| column(field.name(), field.data_type(), documents)).collect::<Result<Vec<_>, _>>()?;
    // A schema without fields (e.g. for COUNT(*)) still has one row per document.
    let options = RecordBatchOptions::new().with_row_count(Some(documents.len()));
    RecordBatch::try_new_with_options(schema.clone(), columns, &options)
}

fn column(name: &str, data_type: &DataType, documents: &[Document]) -> Result<ArrayRef, ArrowError> {
    let values = documents.iter().map(|d| d.get(name).filter(|v| !matches!(v, Bson::Null)));
    let mismatch = |v: &Bson| ArrowError::CastError(format!("field `{name}`: BSON {:?} is not a {data_type}", v.element_type()));
    let number = |v: &Bson| match v {
        Bson::Int32(i) => Some(f64::from(*i)),
        Bson::Int64(i) => Some(*i as f64),
        Bson::Double(d) => Some(*d),
        _ => None,
    };
    let integer = |v: &Bson| match v {
        Bson::Int32(i) => Some(i64::from(*i)),
        Bson::Int64(i) => Some(*i),
        _ => None,
    };
    let array: ArrayRef = match data_type {
        DataType::Int64
        | DataType::Int32
        | DataType::Int16
        | DataType::Int8
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32
        | DataType::UInt64 => {
            let mut builder = Int64Builder::new();
            for v in values {
                builder.append_option(v.map(|v| integer(v).ok_or_else(|| mismatch(v))).transpose()?);
            }
            datafusion::arrow::compute::cast(&builder.finish(), data_type)?
        }
        DataType::Float64 | DataType::Float32 => {
            let mut builder = Float64Builder::new();
            for v in values {
                builder.append_option(v.map(|v| number(v).ok_or_else(|| mismatch(v))).transpose()?);
            }
            datafusion::arrow::compute::cast(&builder.finish(), data_type)?
        }
        DataType::Decimal128(precision, scale) => {
            let decoded = values
                .map(|v| {
                    v.map(|v| match v {
                        Bson::Decimal128(d) => decimal_value(d, *scale).ok_or_else(|| mismatch(v)),
                        _ => Err(mismatch(v)),
                    })
                    .transpose()
                })
                .collect::<Result<Vec<_>, _>>()?;
            Arc::new(datafusion::arrow::array::Decimal128Array::from(decoded).with_precision_and_scale(*precision, *scale)?)
        }
        DataType::Boolean => {
            let mut builder = BooleanBuilder::new();
            for v in values {
                builder.append_option(v.map(|v| v.as_bool().ok_or_else(|| mismatch(v))).transpose()?);
            }
            Arc::new(builder.finish())
        }
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
            let mut builder = StringBuilder::new();
            for v in values {
                builder.append_option(v.map(|v| v.as_str().ok_or_else(|| mismatch(v))).transpose()?);
            }
            datafusion::arrow::compute::cast(&builder.finish(), data_type)?
        }
        DataType::Timestamp(_, tz) => {
            let mut builder = TimestampMillisecondBuilder::new().with_timezone_opt(tz.clone());
            for v in values {
                builder.append_option(v.map(|v| v.as_datetime().map(|d| d.timestamp_millis()).ok_or_else(|| mismatch(v))).transpose()?);
            }
            datafusion::arrow::compute::cast(&builder.finish(), data_type)?
        }
        DataType::Date32 | DataType::Date64 => {
            let mut builder = TimestampMillisecondBuilder::new();
            for v in values {
                builder.append_option(v.map(|v| v.as_datetime().map(|d| d.timestamp_millis()).ok_or_else(|| mismatch(v))).transpose()?);
            }
            datafusion::arrow::compute::cast(&builder.finish(), data_type)?
        }
        DataType::Null => new_null_array(data_type, documents.len()),
        other => return Err(ArrowError::NotYetImplemented(format!("reading BSON into Arrow {other} (field `{name}`)"))),
    };
    Ok(array)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Decimal128Array, Int32Array, ListArray, StructArray};
    use datafusion::arrow::datatypes::{Field, Int32Type as I32};

    #[test]
    fn decimals_round_trip_through_bid_encoding() {
        for (value, scale) in [(12345i128, 2i8), (-7, 0), (0, 5), (9_999_999_999_999_999_999_999_999_999_999i128, 3)] {
            let Bson::Decimal128(d) = decimal(value, scale).unwrap() else { panic!() };
            assert_eq!(decimal_value(&d, scale), Some(value));
        }
        // 123.45 = 12345 × 10^-2; exponent 0 is biased to 6176, i.e. high word 0x3040… per the spec.
        let Bson::Decimal128(d) = decimal(12345, 2).unwrap() else { panic!() };
        let bits = u128::from_le_bytes(d.bytes());
        assert_eq!(((bits >> 64) as u64, bits as u64), (0x303C_0000_0000_0000, 12345));
    }

    #[test]
    fn nested_values_map_to_arrays_and_documents() {
        let list = ListArray::from_iter_primitive::<I32, _, _>(vec![Some(vec![Some(1), None])]);
        assert_eq!(to_bson(&list, 0).unwrap(), Bson::Array(vec![Bson::Int32(1), Bson::Null]));
        let inner: ArrayRef = Arc::new(Int32Array::from(vec![7]));
        let record = StructArray::from(vec![(Arc::new(Field::new("n", DataType::Int32, false)), inner)]);
        assert_eq!(to_bson(&record, 0).unwrap(), Bson::Document(mongodb::bson::doc! {"n": 7}));
        let decimals = Decimal128Array::from(vec![Some(150)]).with_precision_and_scale(10, 2).unwrap();
        assert!(matches!(to_bson(&decimals, 0).unwrap(), Bson::Decimal128(_)));
    }
}
