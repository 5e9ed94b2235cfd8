//! Avro records, decoded with arrow-avro into the writer schema's Arrow types
//! ([`crate::decode_parts`] then converts them to the declared ones), and encoded
//! from a declared payload.
//!
//! Two framings are read:
//! - the Confluent wire format: a zero byte, the writer schema's registry id as
//!   4 big-endian bytes, then the Avro binary body. Writer schemas are added by id
//!   ([`AvroDecoder::add_schema`]) as the caller fetches them from the registry;
//! - bare Avro bodies of one writer schema given up front ([`AvroDecoder::bare`]).
//!
//! Every record is decoded on its own boundaries (a Kafka message is one record):
//! a truncated body, bytes after the body, an unknown schema id or a body that
//! does not match its schema rejects that record alone, with a reason.

use std::collections::{BTreeSet, HashMap};

use arrow::array::RecordBatch;
use arrow::datatypes::Schema;
use arrow::error::ArrowError;
use arrow_avro::reader::{Decoder, ReaderBuilder};
use arrow_avro::schema::{AvroSchema, Fingerprint, FingerprintAlgorithm, FingerprintStrategy, SchemaStore};
use arrow_avro::writer::format::AvroSoeFormat;
use arrow_avro::writer::{Encoder, WriterBuilder};

use crate::parse::{oversized, shown};
use crate::Parsed;

/// Length of the Confluent header: magic byte and schema id.
const CONFLUENT_HEADER: usize = 5;

/// How records announce their writer schema.
#[derive(Debug, Clone)]
enum Framing {
    /// Confluent wire format: `0x00`, schema id (u32, big-endian), body.
    Confluent,
    /// Bare bodies of one writer schema. The decoder wants single-object framing,
    /// so each body is fed after this header (`0xC3 0x01` + the schema's Rabin fingerprint).
    Bare { header: [u8; 10] },
}

/// Decodes Avro records into Arrow, one writer schema at a time.
///
/// ```
/// use trendflow_formats::AvroDecoder;
///
/// let mut avro = AvroDecoder::confluent();
/// // A record written with schema 7: {"asin": "B1"}, the string as length 2 (zigzag 4) + bytes.
/// let record: &[u8] = &[0, 0, 0, 0, 7, 4, b'B', b'1'];
/// assert_eq!(avro.missing_schema_ids(&[record]).into_iter().collect::<Vec<_>>(), vec![7]);
/// avro.add_schema(7, r#"{"type": "record", "name": "P", "fields": [{"name": "asin", "type": "string"}]}"#).unwrap();
/// let parts = avro.parse(&[record, &[1, 2]], 1 << 20);
/// assert_eq!(parts[0].rows, vec![0]);
/// assert!(parts[0].unparsed[0].1.contains("not Confluent-framed"));
/// ```
#[derive(Debug, Clone)]
pub struct AvroDecoder {
    framing: Framing,
    store: SchemaStore,
    /// Schema ids whose records are rejected, and why (unknown to the registry, not Avro, unsupported).
    refused: HashMap<u32, String>,
}

impl AvroDecoder {
    /// A decoder of Confluent-framed records; it knows no schema yet.
    pub fn confluent() -> Self {
        Self { framing: Framing::Confluent, store: SchemaStore::new_with_type(FingerprintAlgorithm::Id), refused: HashMap::new() }
    }

    /// A decoder of bare Avro bodies written with `writer_schema` (Avro schema JSON).
    pub fn bare(writer_schema: &str) -> Result<Self, String> {
        let schema = AvroSchema::new(writer_schema.to_string());
        check_schema(&schema)?;
        let mut store = SchemaStore::new();
        let Fingerprint::Rabin(fingerprint) = store.register(schema).map_err(|e| e.to_string())? else {
            unreachable!("a default schema store fingerprints with Rabin")
        };
        let mut header = [0xC3, 0x01, 0, 0, 0, 0, 0, 0, 0, 0];
        header[2..].copy_from_slice(&fingerprint.to_le_bytes());
        Ok(Self { framing: Framing::Bare { header }, store, refused: HashMap::new() })
    }

    /// The schema ids that `records` carry and that are neither known nor refused:
    /// fetch them and [`add`](Self::add_schema) or [`refuse`](Self::refuse_schema) them before [`parse`](Self::parse).
    pub fn missing_schema_ids(&self, records: &[&[u8]]) -> BTreeSet<u32> {
        if !matches!(self.framing, Framing::Confluent) {
            return BTreeSet::new();
        }
        records
            .iter()
            .filter_map(|record| confluent_id(record))
            .filter(|id| !self.refused.contains_key(id) && self.store.lookup(&Fingerprint::Id(*id)).is_none())
            .collect()
    }

    /// Adds the writer schema registered under `id`. A schema the decoder cannot
    /// read is refused instead: its records will be rejected with the returned reason.
    pub fn add_schema(&mut self, id: u32, schema: &str) -> Result<(), String> {
        let schema = AvroSchema::new(schema.to_string());
        let checked = check_schema(&schema).and_then(|()| self.store.set(Fingerprint::Id(id), schema).map(drop).map_err(|e| e.to_string()));
        checked.map_err(|reason| {
            let reason = format!("writer schema {id} cannot be read: {reason}");
            self.refused.insert(id, reason.clone());
            reason
        })
    }

    /// Rejects every record written with schema `id`, for `reason`.
    pub fn refuse_schema(&mut self, id: u32, reason: String) {
        self.refused.insert(id, reason);
    }

    /// Decodes `records`, one per slice. Returns one [`Parsed`] per run of records
    /// with the same writer schema (columns in the writer's types); records that are
    /// larger than `max_record_bytes` or do not decode are in the first one's `unparsed`.
    pub fn parse(&self, records: &[&[u8]], max_record_bytes: usize) -> Vec<Parsed> {
        let mut unparsed = Vec::new();
        let mut framed = Vec::with_capacity(records.len());
        for (index, &record) in records.iter().enumerate() {
            if record.len() > max_record_bytes {
                unparsed.push(oversized(index, record, max_record_bytes));
                continue;
            }
            match self.check_frame(record) {
                Ok(()) => framed.push((index, record)),
                Err(reason) => unparsed.push((index, reason, shown(record))),
            }
        }
        let mut parts = self.decode_singling_out(framed, &mut unparsed);
        unparsed.sort_by_key(|(index, _, _)| *index);
        if parts.is_empty() {
            parts.push(Parsed::all(RecordBatch::new_empty(std::sync::Arc::new(Schema::empty()))));
        }
        parts[0].unparsed = unparsed;
        parts
    }

    /// Why `record` cannot be decoded before trying, if it cannot.
    fn check_frame(&self, record: &[u8]) -> Result<(), String> {
        let Framing::Confluent = self.framing else { return Ok(()) };
        let Some(id) = confluent_id(record) else {
            return Err(match record.first() {
                Some(&first) if first != 0 => format!("not Confluent-framed Avro: the first byte is {first:#04x}, not 0x00"),
                _ => format!("not Confluent-framed Avro: {} bytes, shorter than the 5-byte header", record.len()),
            });
        };
        if let Some(reason) = self.refused.get(&id) {
            return Err(reason.clone());
        }
        match self.store.lookup(&Fingerprint::Id(id)) {
            Some(_) => Ok(()),
            None => Err(format!("writer schema {id} is not known (it was not looked up)")),
        }
    }

    /// Decodes `records`; a record that does not decode goes to `unparsed` and the
    /// others are decoded again without it. Each failed run tells which record failed,
    /// so the records after it are tried next, from their own boundary.
    fn decode_singling_out(&self, mut records: Vec<(usize, &[u8])>, unparsed: &mut Vec<(usize, String, String)>) -> Vec<Parsed> {
        loop {
            let mut good = Vec::with_capacity(records.len());
            let mut rest = &records[..];
            let parts = loop {
                match self.decode_run(rest) {
                    Ok(parts) => break parts,
                    Err((failed, reason)) => {
                        let (index, record) = rest[failed];
                        unparsed.push((index, format!("invalid Avro record: {reason}"), shown(record)));
                        good.extend_from_slice(&rest[..failed]);
                        rest = &rest[failed + 1..];
                    }
                }
            };
            if good.is_empty() {
                // Every record left decoded in this run: in the common case, all at once.
                return parts;
            }
            // Decode the good records of the earlier runs together with the rest.
            good.extend_from_slice(rest);
            records = good;
        }
    }

    /// Decodes `records` (input index, bytes) with a fresh decoder, or tells the position
    /// of the first bad record and why. Fresh, because a failed record leaves a decoder
    /// mid-record.
    fn decode_run(&self, records: &[(usize, &[u8])]) -> Result<Vec<Parsed>, (usize, String)> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let mut decoder = ReaderBuilder::new()
            .with_batch_size(records.len() + 1)
            .with_writer_schema_store(self.store.clone())
            .build_decoder()
            .map_err(|e| (0, e.to_string()))?;
        let mut parts = Vec::new();
        let mut open_rows = Vec::new();
        // Position of the first record whose row is in the decoder's open batch.
        let mut open_start = 0;
        for (position, &(index, record)) in records.iter().enumerate() {
            let fail = |reason: String| (position, reason);
            let (header, body) = self.split(record);
            at_boundary(&mut decoder, header, open_rows.len()).map_err(|reason| (position.saturating_sub(1), reason))?;
            if decoder.batch_is_full() {
                // A new writer schema: the rows of the previous one are flushed first.
                flush(&mut decoder, &mut parts, &mut open_rows).map_err(|e| self.blame(&records[open_start..position], open_start, e))?;
                open_start = position;
            }
            let decoded = decoder.decode(body);
            let complete = rows_of(&decoder) == open_rows.len() + 1;
            match decoded {
                Ok(used) if complete && used == body.len() => open_rows.push(index),
                Ok(_) | Err(_) if complete => return Err(fail("bytes follow the end of the record".into())),
                Ok(_) => return Err(fail("the record ends before its last field".into())),
                Err(e) => return Err(fail(e.to_string())),
            }
        }
        // The last record must have left the decoder at a boundary too.
        let last = records.len() - 1;
        let (header, _) = self.split(records[last].1);
        at_boundary(&mut decoder, header, open_rows.len()).map_err(|reason| (last, reason))?;
        flush(&mut decoder, &mut parts, &mut open_rows).map_err(|e| self.blame(&records[open_start..], open_start, e))?;
        Ok(parts)
    }

    /// A record's header (Confluent's, or the one made for bare bodies) and body.
    fn split<'r>(&'r self, record: &'r [u8]) -> (&'r [u8], &'r [u8]) {
        match &self.framing {
            Framing::Confluent => record.split_at(CONFLUENT_HEADER),
            Framing::Bare { header } => (&header[..], record),
        }
    }

    /// The first of `run` (starting at position `offset`) that does not decode on its
    /// own. Some faults (a string that is not UTF-8) only show when a batch is built,
    /// so a failed flush does not tell which record it was.
    fn blame(&self, run: &[(usize, &[u8])], offset: usize, error: String) -> (usize, String) {
        if run.len() > 1 {
            for (i, record) in run.iter().enumerate() {
                if let Err((_, reason)) = self.decode_run(std::slice::from_ref(record)) {
                    return (offset + i, reason);
                }
            }
        }
        (offset, error)
    }
}

/// The schema id of a Confluent-framed record.
fn confluent_id(record: &[u8]) -> Option<u32> {
    match record {
        [0, a, b, c, d, ..] => Some(u32::from_be_bytes([*a, *b, *c, *d])),
        _ => None,
    }
}

/// Feeds a header, which is always readable at a record boundary. When it is not
/// (consumed in part, or decoded as a row), the previous record ended in bytes that
/// looked like the start of another.
fn at_boundary(decoder: &mut Decoder, header: &[u8], open_rows: usize) -> Result<(), String> {
    let read = decoder.decode(header).ok().filter(|&used| used == header.len());
    // A full batch here means a schema switch, flushed by the caller.
    if read.is_none() || (!decoder.batch_is_full() && rows_of(decoder) != open_rows) {
        return Err("bytes follow the end of the record".into());
    }
    Ok(())
}

/// Rows decoded into the decoder's open batch.
fn rows_of(decoder: &Decoder) -> usize {
    decoder.batch_size() - decoder.capacity()
}

fn flush(decoder: &mut Decoder, parts: &mut Vec<Parsed>, open_rows: &mut Vec<usize>) -> Result<(), String> {
    let Some(batch) = decoder.flush().map_err(|e| e.to_string())? else { return Ok(()) };
    if batch.num_rows() != open_rows.len() {
        return Err(format!("decoded {} rows from {} records", batch.num_rows(), open_rows.len()));
    }
    parts.push(Parsed { batch, rows: std::mem::take(open_rows), unparsed: Vec::new() });
    Ok(())
}

/// Checks that arrow-avro can decode records of `schema` into record batches.
fn check_schema(schema: &AvroSchema) -> Result<(), String> {
    let mut store = SchemaStore::new();
    store.register(schema.clone()).map_err(|e| e.to_string())?;
    ReaderBuilder::new().with_writer_schema_store(store).build_decoder().map(drop).map_err(|e| e.to_string())
}

/// The Avro schema (JSON) that [`AvroEncoder`] writes rows of `payload` with:
/// nullable columns become unions with `null`, defaulting to null (so that readers
/// of other versions can resolve it). Column names must be Avro names, since
/// readers match fields by name.
pub fn avro_schema_of(payload: &Schema) -> Result<String, ArrowError> {
    if let Some(field) = payload.fields().iter().find(|f| !is_avro_name(f.name())) {
        return Err(ArrowError::SchemaError(format!(
            "column `{}` is not an Avro name (letters, digits and _, not starting with a digit); rename it to write Avro",
            field.name()
        )));
    }
    let json = AvroSchema::try_from(payload)?.json_string;
    let mut schema: serde_json::Value = serde_json::from_str(&json).map_err(|e| ArrowError::SchemaError(e.to_string()))?;
    for field in schema["fields"].as_array_mut().into_iter().flatten() {
        if field["type"].get(0).and_then(serde_json::Value::as_str) == Some("null") {
            field["default"] = serde_json::Value::Null;
        }
    }
    Ok(schema.to_string())
}

fn is_avro_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_') && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Encodes rows as Confluent-framed Avro records, one per row.
///
/// ```
/// use std::sync::Arc;
/// use arrow::array::{RecordBatch, StringArray};
/// use arrow::datatypes::{DataType, Field, Schema};
/// use trendflow_formats::{avro_schema_of, AvroDecoder, AvroEncoder};
///
/// let payload = Arc::new(Schema::new(vec![Field::new("asin", DataType::Utf8, false)]));
/// let batch = RecordBatch::try_new(payload.clone(), vec![Arc::new(StringArray::from(vec!["B1", "B2"]))]).unwrap();
/// let (bytes, offsets) = AvroEncoder::confluent(&payload, 7).unwrap().encode(&batch).unwrap();
/// assert_eq!(&bytes[offsets[0]..offsets[0] + 5], &[0, 0, 0, 0, 7]);
///
/// let mut avro = AvroDecoder::confluent();
/// avro.add_schema(7, &avro_schema_of(&payload).unwrap()).unwrap();
/// let records: Vec<&[u8]> = offsets.windows(2).map(|w| &bytes[w[0]..w[1]]).collect();
/// assert_eq!(avro.parse(&records, 1 << 20)[0].rows, vec![0, 1]);
/// ```
#[derive(Debug)]
pub struct AvroEncoder {
    encoder: Encoder,
}

impl AvroEncoder {
    /// An encoder of rows of `payload`, framed with registry id `schema_id` (the id
    /// the registry gave [`avro_schema_of`]`(payload)`).
    pub fn confluent(payload: &Schema, schema_id: u32) -> Result<Self, ArrowError> {
        let encoder =
            WriterBuilder::new(payload.clone()).with_fingerprint_strategy(FingerprintStrategy::Id(schema_id)).build_encoder::<AvroSoeFormat>()?;
        Ok(Self { encoder })
    }

    /// Encodes every row of `batch`: all records back to back, and the offsets where
    /// each starts (one more than rows: the last is the end).
    pub fn encode(&mut self, batch: &RecordBatch) -> Result<(Vec<u8>, Vec<usize>), ArrowError> {
        self.encoder.encode(batch)?;
        let rows = self.encoder.flush();
        Ok((rows.bytes().to_vec(), rows.offsets().to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Array, Float64Array, Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field};
    use arrow_avro::writer::format::AvroBinaryFormat;

    use super::*;
    use crate::decode_parts;

    fn payload() -> Arc<Schema> {
        Arc::new(Schema::new(vec![
            Field::new("asin", DataType::Utf8, false),
            Field::new("price", DataType::Float64, true),
            Field::new("reviews", DataType::Int64, true),
        ]))
    }

    fn rows(asins: &[&str], prices: &[Option<f64>]) -> RecordBatch {
        let reviews: Int64Array = (0..asins.len() as i64).map(Some).collect();
        RecordBatch::try_new(
            payload(),
            vec![Arc::new(StringArray::from(asins.to_vec())), Arc::new(Float64Array::from(prices.to_vec())), Arc::new(reviews)],
        )
        .unwrap()
    }

    fn split(encoded: &(Vec<u8>, Vec<usize>)) -> Vec<Vec<u8>> {
        encoded.1.windows(2).map(|w| encoded.0[w[0]..w[1]].to_vec()).collect()
    }

    /// Records of two writer schemas (the second drops `reviews` and writes `price`
    /// as a string), interleaved with bad ones: each bad record is rejected alone, the
    /// good ones keep their input order and are converted to the declared types.
    #[test]
    fn every_record_is_decoded_or_rejected_on_its_own() {
        let v1 = split(&AvroEncoder::confluent(&payload(), 1).unwrap().encode(&rows(&["A", "B", "C"], &[Some(1.5), None, Some(3.0)])).unwrap());
        let v2_schema = Arc::new(Schema::new(vec![Field::new("asin", DataType::Utf8, false), Field::new("price", DataType::Utf8, true)]));
        let v2_rows = RecordBatch::try_new(
            v2_schema.clone(),
            vec![Arc::new(StringArray::from(vec!["D", "E"])), Arc::new(StringArray::from(vec!["4.5", "cheap"]))],
        )
        .unwrap();
        let v2 = split(&AvroEncoder::confluent(&v2_schema, 2).unwrap().encode(&v2_rows).unwrap());
        let truncated = &v1[0][..v1[0].len() - 3];
        let trailing = [v1[1].as_slice(), &[9, 9]].concat();
        // Bytes after the body that look like the next record's header.
        let overrun = [v1[0].as_slice(), &[0, 0, 0, 0, 1]].concat();
        // A string that is not UTF-8 (arrow-avro finds it only when it builds the batch).
        let mut not_utf8 = v1[0].clone();
        assert_eq!(&not_utf8[5..7], &[2, b'A']);
        not_utf8[6] = 0xFF;
        let records: Vec<&[u8]> = vec![
            &v1[0],
            &v2[0],
            truncated,
            &v1[1],
            &trailing,
            b"{\"asin\": \"J\"}",
            &v2[1],
            &[0, 0, 0, 0, 3, 2, 65],
            &v1[2],
            &overrun,
            &v2[0],
            &not_utf8,
            &v1[2],
            &overrun,
        ];

        let mut avro = AvroDecoder::confluent();
        assert_eq!(avro.missing_schema_ids(&records), BTreeSet::from([1, 2, 3]));
        avro.add_schema(1, &avro_schema_of(&payload()).unwrap()).unwrap();
        avro.add_schema(2, &avro_schema_of(&v2_schema).unwrap()).unwrap();
        avro.refuse_schema(3, "writer schema 3 is not in the registry".into());
        assert!(avro.add_schema(4, r#"{"type": "nonsense"}"#).is_err());
        assert!(avro.missing_schema_ids(&records).is_empty());

        let decoded = decode_parts(avro.parse(&records, 1 << 20), &payload(), None).unwrap();
        assert_eq!(decoded.rows, vec![0, 1, 3, 8, 10, 12]);
        let asins = decoded.batch.column(0).as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(asins.iter().flatten().collect::<Vec<_>>(), vec!["A", "D", "B", "C", "D", "C"]);
        let prices = decoded.batch.column(1).as_any().downcast_ref::<Float64Array>().unwrap();
        assert_eq!(prices.iter().collect::<Vec<_>>(), vec![Some(1.5), Some(4.5), None, Some(3.0), Some(4.5), Some(3.0)]);
        assert_eq!(decoded.batch.column(2).null_count(), 2, "schema 2 has no reviews");
        let reasons: Vec<(usize, &str)> = decoded.rejected.iter().map(|(i, r, _)| (*i, r.as_str())).collect();
        let expected = [
            (2, "ends before"),
            (4, "bytes follow"),
            (5, "first byte is 0x7b"),
            (6, "`cheap` is not a valid"),
            (7, "not in the registry"),
            (9, "bytes follow"),
            (11, "utf"),
            (13, "bytes follow"),
        ];
        assert_eq!(reasons.len(), expected.len(), "{reasons:?}");
        for ((index, reason), (want_index, want)) in reasons.iter().zip(expected) {
            assert!(*index == want_index && reason.to_lowercase().contains(want), "{index}: {reason} should be {want_index}: {want}");
        }
    }

    /// Writer schemas alternate without a bad record: one pass, one part per run of a schema.
    #[test]
    fn alternating_writer_schemas_decode_in_one_pass() {
        let v1 = split(&AvroEncoder::confluent(&payload(), 1).unwrap().encode(&rows(&["A", "B"], &[Some(1.0), Some(2.0)])).unwrap());
        let v2_schema = Arc::new(Schema::new(vec![Field::new("price", DataType::Float64, true), Field::new("asin", DataType::Utf8, false)]));
        let v2_rows =
            RecordBatch::try_new(v2_schema.clone(), vec![Arc::new(Float64Array::from(vec![3.0])), Arc::new(StringArray::from(vec!["C"]))]).unwrap();
        let v2 = split(&AvroEncoder::confluent(&v2_schema, 2).unwrap().encode(&v2_rows).unwrap());
        let mut avro = AvroDecoder::confluent();
        avro.add_schema(1, &avro_schema_of(&payload()).unwrap()).unwrap();
        avro.add_schema(2, &avro_schema_of(&v2_schema).unwrap()).unwrap();
        let framed: Vec<(usize, &[u8])> = [&v1[0], &v2[0], &v1[1]].into_iter().enumerate().map(|(i, r)| (i, r.as_slice())).collect();
        let parts = avro.decode_run(&framed).expect("no record is bad");
        assert_eq!(parts.iter().map(|p| p.rows.clone()).collect::<Vec<_>>(), vec![vec![0], vec![1], vec![2]]);
    }

    #[test]
    fn bare_bodies_of_a_declared_schema_decode() {
        let batch = rows(&["A", "B"], &[Some(2.0), None]);
        let mut encoder = WriterBuilder::new(payload().as_ref().clone()).build_encoder::<AvroBinaryFormat>().unwrap();
        encoder.encode(&batch).unwrap();
        let encoded = encoder.flush();
        let records: Vec<Vec<u8>> = encoded.iter().map(|r| r.to_vec()).chain([vec![2]]).collect();
        let slices: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
        let avro = AvroDecoder::bare(&avro_schema_of(&payload()).unwrap()).unwrap();
        let decoded = decode_parts(avro.parse(&slices, 1 << 20), &payload(), None).unwrap();
        assert_eq!(decoded.batch, batch);
        assert_eq!(decoded.rejected.len(), 1);
        assert!(AvroDecoder::bare("{\"type\": \"record\"").unwrap_err().contains("JSON"));
    }

    #[test]
    fn written_schemas_default_nullable_fields_and_refuse_non_avro_names() {
        let schema: serde_json::Value = serde_json::from_str(&avro_schema_of(&payload()).unwrap()).unwrap();
        let fields = schema["fields"].as_array().unwrap();
        assert_eq!(fields[0]["name"], "asin");
        assert!(fields[0].get("default").is_none(), "a required field has no default");
        assert_eq!((&fields[1]["type"][0], &fields[1]["default"]), (&serde_json::json!("null"), &serde_json::Value::Null));
        let spaced = Schema::new(vec![Field::new("list price", DataType::Float64, true)]);
        assert!(avro_schema_of(&spaced).unwrap_err().to_string().contains("column `list price` is not an Avro name"));
    }

    #[test]
    fn oversized_records_are_rejected_before_decoding() {
        let record = split(&AvroEncoder::confluent(&payload(), 1).unwrap().encode(&rows(&["A"], &[Some(1.0)])).unwrap()).remove(0);
        let mut avro = AvroDecoder::confluent();
        avro.add_schema(1, &avro_schema_of(&payload()).unwrap()).unwrap();
        let parts = avro.parse(&[&record], 4);
        assert!(parts[0].unparsed[0].1.contains("larger than max_record_bytes"));
    }
}
