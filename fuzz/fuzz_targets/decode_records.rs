//! Kafka messages and file lines: the first byte picks the format (JSON, CSV, or
//! Confluent-framed Avro with writer schema 1 known), the rest is split into records
//! at newlines. Every record must come out accepted or rejected with a
//! reason, exactly once, and accepted rows must have the declared schema.
#![no_main]

use libfuzzer_sys::fuzz_target;
use trendflow_formats::{avro_schema_of, decode_parts, parse_records, AvroDecoder, RecordFormat};

#[path = "products.rs"]
mod products;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else { return };
    let payload = products::schema();
    let records: Vec<&[u8]> = rest.split(|b| *b == b'\n').collect();
    // A small limit so that the size check is reached too.
    let parts = match selector % 3 {
        0 => vec![parse_records(RecordFormat::Json, &payload, &records, 4096)],
        1 => vec![parse_records(RecordFormat::Csv, &payload, &records, 4096)],
        _ => {
            let mut avro = AvroDecoder::confluent();
            avro.add_schema(1, &avro_schema_of(&payload).unwrap()).unwrap();
            for id in avro.missing_schema_ids(&records) {
                avro.refuse_schema(id, format!("writer schema {id} is unknown"));
            }
            avro.parse(&records, 4096)
        }
    };
    let decoded = decode_parts(parts, &payload, None).expect("decoding reports bad records, it does not fail");
    assert_eq!(decoded.batch.schema(), payload);
    assert_eq!(decoded.rows.len(), decoded.batch.num_rows());
    let mut seen: Vec<usize> = decoded.rows.iter().copied().chain(decoded.rejected.iter().map(|r| r.0)).collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..records.len()).collect::<Vec<_>>(), "every record accepted or rejected once");
});
