//! Kafka messages and file lines: the first byte picks the format, the rest is split
//! into records at newlines. Every record must come out accepted or rejected with a
//! reason, exactly once, and accepted rows must have the declared schema.
#![no_main]

use libfuzzer_sys::fuzz_target;
use trendflow_formats::{decode_parsed, parse_records, RecordFormat};

#[path = "products.rs"]
mod products;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else { return };
    let format = if selector % 2 == 0 { RecordFormat::Json } else { RecordFormat::Csv };
    let payload = products::schema();
    let records: Vec<&[u8]> = rest.split(|b| *b == b'\n').collect();
    // A small limit so that the size check is reached too.
    let parsed = parse_records(format, &payload, &records, 4096);
    let decoded = decode_parsed(parsed, &payload).expect("decoding reports bad records, it does not fail");
    assert_eq!(decoded.batch.schema(), payload);
    assert_eq!(decoded.rows.len(), decoded.batch.num_rows());
    let mut seen: Vec<usize> = decoded.rows.iter().copied().chain(decoded.rejected.iter().map(|r| r.0)).collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..records.len()).collect::<Vec<_>>(), "every record accepted or rejected once");
});
