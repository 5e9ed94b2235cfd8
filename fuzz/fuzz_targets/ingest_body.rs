//! Request bodies of the ingest API: split into records (JSON array or NDJSON), then
//! decoded as the products stream. Nothing may panic; every record must come out
//! accepted or rejected, exactly once.
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
    let decoded = decode_parsed(parsed, &payload, None).expect("decoding reports bad records, it does not fail");
    let mut seen: Vec<usize> = decoded.rows.iter().copied().chain(decoded.rejected.iter().map(|r| r.0)).collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..slices.len()).collect::<Vec<_>>(), "every record accepted or rejected once");
});
