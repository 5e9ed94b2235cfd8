//! Request bodies of the ingest API: split into records (JSON array or NDJSON), then
//! decoded as the products stream. Nothing may panic; the counts must add up.
#![no_main]

use libfuzzer_sys::fuzz_target;
use trendflow_formats::{decode_parsed, parse_records, split_body, RecordFormat, DEFAULT_MAX_RECORD_BYTES};

#[path = "products.rs"]
mod products;

fuzz_target!(|body: &[u8]| {
    let Ok(records) = split_body(body) else { return };
    let slices: Vec<&[u8]> = records.iter().map(|r| r.as_ref()).collect();
    let payload = products::schema();
    let parsed = parse_records(RecordFormat::Json, &payload, &slices, DEFAULT_MAX_RECORD_BYTES);
    let decoded = decode_parsed(parsed, &payload).expect("decoding reports bad records, it does not fail");
    assert_eq!(decoded.rows.len() + decoded.rejected.len(), slices.len());
});
