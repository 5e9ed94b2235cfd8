//! Record formats of trendflow: raw records (JSON objects, CSV lines, Avro) parsed in
//! bulk and converted to a declared Arrow schema, with one reason for each record
//! that does not fit instead of a failed batch; and request bodies split into
//! records.
//!
//! It depends on arrow alone, so that the code hostile input reaches first is
//! small enough to fuzz (`fuzz/`).
//!
//! ```
//! use std::sync::Arc;
//! use arrow::datatypes::{DataType, Field, Schema};
//! use trendflow_formats::{decode_parsed, parse_records, split_body, RecordFormat};
//!
//! let payload = Arc::new(Schema::new(vec![
//!     Field::new("asin", DataType::Utf8, false),
//!     Field::new("price", DataType::Float64, true),
//! ]));
//! let body = b"{\"asin\": \"B1\", \"price\": 9.5}\n{\"asin\": \"B2\", \"price\": \"cheap\"}\n";
//! let records = split_body(body).unwrap();
//! let slices: Vec<&[u8]> = records.iter().map(|r| r.as_ref()).collect();
//! let decoded = decode_parsed(parse_records(RecordFormat::Json, &payload, &slices, 1 << 20), &payload, None).unwrap();
//! assert_eq!(decoded.rows, vec![0]);
//! assert_eq!(decoded.rejected[0].0, 1);
//! ```

mod avro;
mod body;
mod conform;
mod debezium;
mod parse;

pub use avro::{avro_schema_of, AvroDecoder, AvroEncoder};
pub use body::split_body;
pub use conform::{conform, nullable_schema, Conformed, Rejected};
pub use debezium::parse_debezium;
pub use parse::{changes_schema, decode_parsed, decode_parts, parse_records, row_as_json, Decoded, Parsed, RecordFormat};

/// The field a record may carry its own event time in, and the stream column
/// that holds each record's arrival time.
pub const TIMESTAMP_COLUMN: &str = "_timestamp";

/// The field by which a JSON record of a changelog stream deletes its key
/// (`{"asin": "B01", "_deleted": true}`).
pub const DELETED_COLUMN: &str = "_deleted";

/// Records larger than this are rejected unless a stream sets `max_record_bytes`.
pub const DEFAULT_MAX_RECORD_BYTES: usize = 1 << 20;
