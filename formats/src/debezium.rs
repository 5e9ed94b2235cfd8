//! Debezium's JSON change events: an envelope of `before` and `after` row images and
//! the operation `op`, optionally wrapped in a `payload` (as the JSON converter with
//! schemas writes it). Each event becomes the row it leaves behind: the `after` image
//! of a create (`c`), snapshot read (`r`) or update (`u`), or the `before` image of a
//! delete (`d`), marked `_deleted`. A primary-key change arrives, as Debezium emits it,
//! as a delete of the old key followed by a create of the new one.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch, StringArray, StructArray};
use arrow::compute::filter_record_batch;
use arrow::compute::kernels::zip::zip;
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};
use arrow::error::ArrowError;

use crate::conform::nullable_schema;
use crate::parse::{parse_with_schema, row_as_json, Parsed, RecordFormat};
use crate::DELETED_COLUMN;

/// Parses Debezium JSON change events (one per slice) into rows of `payload`'s columns
/// plus `_deleted`, ready for [`crate::decode_parsed`] with the stream's key. An event
/// without `op`, with an unknown `op`, or without the image its `op` needs is rejected
/// with the reason.
///
/// ```
/// use std::sync::Arc;
/// use arrow::datatypes::{DataType, Field, Schema};
/// use trendflow_formats::{decode_parsed, parse_debezium};
///
/// let payload = Arc::new(Schema::new(vec![Field::new("id", DataType::Int32, false), Field::new("name", DataType::Utf8, true)]));
/// let events: [&[u8]; 3] = [
///     br#"{"op": "c", "before": null, "after": {"id": 1, "name": "Toys"}}"#,
///     br#"{"payload": {"op": "d", "before": {"id": 1, "name": "Toys"}, "after": null}}"#,
///     br#"{"op": "x", "after": {"id": 2}}"#,
/// ];
/// let decoded = decode_parsed(parse_debezium(&payload, &events, 1 << 20), &payload, Some(&[0])).unwrap();
/// assert_eq!(decoded.deleted, vec![false, true]);
/// assert!(decoded.rejected[0].1.contains("unknown Debezium op `x`"));
/// ```
pub fn parse_debezium(payload: &SchemaRef, records: &[&[u8]], max_record_bytes: usize) -> Parsed {
    let image = DataType::Struct(nullable_schema(payload).fields().clone());
    let envelope =
        Fields::from(vec![Field::new("op", DataType::Utf8, true), Field::new("before", image.clone(), true), Field::new("after", image, true)]);
    let mut fields: Vec<Field> = envelope.iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new("payload", DataType::Struct(envelope), true));
    let parsed = parse_with_schema(RecordFormat::Json, &Arc::new(Schema::new(fields)), records, max_record_bytes);
    unwrap_events(parsed, payload).unwrap_or_else(|e| Parsed {
        batch: RecordBatch::new_empty(images_schema(payload)),
        unparsed: (0..records.len()).map(|i| (i, format!("invalid Debezium event: {e}"), String::from_utf8_lossy(records[i]).into_owned())).collect(),
        rows: Vec::new(),
    })
}

/// The schema of the unwrapped rows: the payload's columns (nullable) and `_deleted`.
fn images_schema(payload: &SchemaRef) -> SchemaRef {
    let mut fields: Vec<Field> = nullable_schema(payload).fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new(DELETED_COLUMN, DataType::Boolean, false));
    Arc::new(Schema::new(fields))
}

/// Replaces each envelope by the image its operation leaves; rejects bad envelopes.
fn unwrap_events(parsed: Parsed, payload: &SchemaRef) -> Result<Parsed, ArrowError> {
    let column = |batch: &RecordBatch, name: &str| batch.column(batch.schema().index_of(name).expect("envelope field")).clone();
    let wrapped = column(&parsed.batch, "payload");
    let wrapped = wrapped.as_any().downcast_ref::<StructArray>().expect("payload is a struct");
    // A field of the `payload` wrapper where there is one, else the top-level field.
    let field = |name: &str| -> Result<ArrayRef, ArrowError> {
        let inner = wrapped.column_by_name(name).expect("envelope field");
        let present: BooleanArray = (0..wrapped.len()).map(|i| Some(wrapped.is_valid(i))).collect();
        zip(&present, inner, &column(&parsed.batch, name))
    };
    let (op, before, after) = (field("op")?, field("before")?, field("after")?);
    let op = op.as_any().downcast_ref::<StringArray>().expect("op is text");
    let mut reasons: Vec<Option<String>> = Vec::with_capacity(op.len());
    let mut deleted = Vec::with_capacity(op.len());
    for row in 0..op.len() {
        let (reason, delete) = match op.is_valid(row).then(|| op.value(row)) {
            None => (Some("a Debezium event without `op`".to_string()), false),
            Some("c" | "r" | "u") if after.is_null(row) => (Some(format!("a Debezium `{}` event without its `after` image", op.value(row))), false),
            Some("c" | "r" | "u") => (None, false),
            Some("d") if before.is_null(row) => (Some("a Debezium `d` event without its `before` image".to_string()), true),
            Some("d") => (None, true),
            Some(other) => (Some(format!("unknown Debezium op `{other}` (c, r, u or d)")), false),
        };
        reasons.push(reason);
        deleted.push(delete);
    }
    let deleted = BooleanArray::from(deleted);
    let (before, after) = (as_struct(&before), as_struct(&after));
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(payload.fields().len() + 1);
    for i in 0..payload.fields().len() {
        columns.push(zip(&deleted, before.column(i), after.column(i))?);
    }
    columns.push(Arc::new(deleted));
    let images = RecordBatch::try_new(images_schema(payload), columns)?;
    let keep: BooleanArray = reasons.iter().map(|r| Some(r.is_none())).collect();
    let mut unparsed = parsed.unparsed;
    for (row, reason) in reasons.into_iter().enumerate() {
        if let Some(reason) = reason {
            unparsed.push((parsed.rows[row], reason, row_as_json(&parsed.batch, row)));
        }
    }
    unparsed.sort_by_key(|(i, _, _)| *i);
    let rows = parsed.rows.iter().zip(keep.iter()).filter(|(_, k)| *k == Some(true)).map(|(r, _)| *r).collect();
    Ok(Parsed { batch: filter_record_batch(&images, &keep)?, rows, unparsed })
}

fn as_struct(array: &ArrayRef) -> &StructArray {
    array.as_any().downcast_ref::<StructArray>().expect("an image is a struct")
}
