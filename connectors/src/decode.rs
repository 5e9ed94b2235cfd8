//! Turning raw records into a stream's micro-batches: the record formats of
//! [`trendflow_formats`] (re-exported here), the format and size limit a stream
//! declares, Avro writer schemas from a schema registry, and the metadata columns.

use std::sync::Arc;

use datafusion::arrow::array::{new_null_array, ArrayRef, AsArray, Int32Array, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::error::ArrowError;
use trendflow_engine::contract::Changelog;
use trendflow_engine::contract::{AvroSchemas, StreamDecl, StreamFormat};
use trendflow_formats::DELETED_COLUMN;
pub use trendflow_formats::{decode_parsed, decode_parts, parse_debezium, parse_records, split_body, AvroDecoder, Decoded, Parsed, RecordFormat};

use crate::schema_registry::{SchemaLookup, SchemaRegistry};

/// Decodes a stream's raw records in the format it declares.
///
/// Avro streams declare where writer schemas come from:
/// `OPTIONS ('format' 'avro', 'schema_registry_url' 'http://registry:8081')` for
/// Confluent-framed records, or `('format' 'avro', 'avro_schema' '{"type": "record", …}')`
/// for bare Avro bodies of one schema.
///
/// ```
/// # async fn demo(stream: trendflow_engine::contract::StreamDecl) -> trendflow_connectors::Result<()> {
/// use trendflow_connectors::decode::RecordDecoder;
///
/// let mut decoder = RecordDecoder::for_stream(&stream)?;
/// // One record, and its Kafka key (what a tombstone, an empty record, would delete).
/// let decoded = decoder.decode(&stream, &[br#"{"asin": "B1"}"#.as_slice()], &[Some(b"B1".as_slice())], 1 << 20).await?;
/// println!("{} accepted, {} rejected", decoded.rows.len(), decoded.rejected.len());
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub enum RecordDecoder {
    /// JSON objects or CSV lines.
    Text(RecordFormat),
    /// Avro (boxed: the registry client is large).
    Avro(Box<AvroRecords>),
}

/// An Avro decoder, and the registry its writer schemas come from (none: one declared schema).
#[derive(Debug)]
pub struct AvroRecords {
    avro: AvroDecoder,
    registry: Option<SchemaRegistry>,
}

impl AvroRecords {
    /// Fetches the writer schemas `records` carry that the decoder has not seen,
    /// then decodes them.
    async fn parse(&mut self, stream: &StreamDecl, records: &[&[u8]], max_record_bytes: usize) -> crate::Result<Vec<Parsed>> {
        if let Some(registry) = &self.registry {
            for id in self.avro.missing_schema_ids(records) {
                match registry.schema(id).await? {
                    SchemaLookup::Avro(schema) => {
                        // A schema that cannot be read is refused: its records are rejected with the reason.
                        if let Err(reason) = self.avro.add_schema(id, &schema) {
                            tracing::warn!(stream = stream.name, "{reason}");
                        }
                    }
                    SchemaLookup::Refused(reason) => self.avro.refuse_schema(id, reason),
                }
            }
        }
        Ok(self.avro.parse(records, max_record_bytes))
    }
}

impl RecordDecoder {
    /// The decoder for the format `stream` declares.
    pub fn for_stream(stream: &StreamDecl) -> crate::Result<Self> {
        let avro = match &stream.options.format {
            StreamFormat::Text(format) => return Ok(Self::Text(*format)),
            StreamFormat::Avro(AvroSchemas::Registry { url }) => {
                AvroRecords { avro: AvroDecoder::confluent(), registry: Some(SchemaRegistry::new(url)?) }
            }
            StreamFormat::Avro(AvroSchemas::Bare { schema }) => {
                let avro = AvroDecoder::bare(schema).map_err(|e| crate::ConnectorError::Binding {
                    binding: stream.name.clone(),
                    message: format!("OPTIONS ('avro_schema' …): {e}"),
                })?;
                AvroRecords { avro, registry: None }
            }
        };
        Ok(Self::Avro(Box::new(avro)))
    }

    /// Decodes `records` (one per slice) into `stream`'s payload schema, rejecting
    /// those larger than `max_record_bytes`: accepted rows in input order, and a
    /// reason for each rejected record. Avro writer schemas not
    /// seen before are fetched from the registry first; an unreachable registry is an
    /// error (nothing is rejected for it).
    ///
    /// On a changelog stream an empty record is a tombstone: it deletes the row whose
    /// key is its transport key (`keys`, e.g. the Kafka key; see [`delete_record`]).
    /// Debezium writes one after each delete event, so on a `debezium` stream it deletes
    /// a row already deleted.
    pub async fn decode(
        &mut self,
        stream: &StreamDecl,
        records: &[&[u8]],
        keys: &[Option<&[u8]>],
        max_record_bytes: usize,
    ) -> crate::Result<Decoded> {
        let tombstones = |i: &usize| stream.options.changelog.is_keyed() && records[*i].is_empty();
        let (deletes, values): (Vec<usize>, Vec<usize>) = (0..records.len()).partition(tombstones);
        let subset: Vec<&[u8]> = values.iter().map(|&i| records[i]).collect();
        let parsed = match self {
            Self::Text(_) => vec![parse_text(stream, &subset, max_record_bytes)],
            Self::Avro(avro) => avro.parse(stream, &subset, max_record_bytes).await?,
        };
        let mut parts: Vec<Parsed> = parsed.into_iter().map(|p| renumbered(p, &values)).collect();
        if !deletes.is_empty() {
            parts.push(tombstone_rows(stream, &deletes, keys, max_record_bytes));
        }
        Ok(decode_parts(parts, &stream.payload_schema, changelog_key(stream))?)
    }
}

/// The key columns by which a changelog stream's records change it (`None`: append).
pub fn changelog_key(stream: &StreamDecl) -> Option<&[usize]> {
    stream.options.changelog.is_keyed().then_some(stream.primary_key.as_slice())
}

/// Parses JSON or CSV records of `stream` structurally: Debezium events are unwrapped
/// into the rows they leave.
pub fn parse_text(stream: &StreamDecl, records: &[&[u8]], max_record_bytes: usize) -> Parsed {
    match (&stream.options.changelog, &stream.options.format) {
        (Changelog::Debezium, _) => parse_debezium(&stream.payload_schema, records, max_record_bytes),
        (_, StreamFormat::Text(format)) => parse_records(*format, &stream.payload_schema, records, max_record_bytes),
        // The ingest API takes JSON for an Avro stream and encodes it.
        (_, StreamFormat::Avro(_)) => parse_records(RecordFormat::Json, &stream.payload_schema, records, max_record_bytes),
    }
}

/// `parsed` with its row numbers mapped from positions in a subset back to input indices.
fn renumbered(mut parsed: Parsed, indices: &[usize]) -> Parsed {
    parsed.rows.iter_mut().for_each(|r| *r = indices[*r]);
    parsed.unparsed.iter_mut().for_each(|(r, _, _)| *r = indices[*r]);
    parsed
}

/// The deletes that the tombstones at `positions` stand for, keyed by their transport keys.
fn tombstone_rows(stream: &StreamDecl, positions: &[usize], keys: &[Option<&[u8]>], max_record_bytes: usize) -> Parsed {
    let mut objects = Vec::with_capacity(positions.len());
    let mut unparsed = Vec::new();
    let mut kept = Vec::with_capacity(positions.len());
    for &i in positions {
        match keys.get(i).copied().flatten().map(|key| delete_record(stream, key)) {
            Some(Ok(object)) => {
                objects.push(object);
                kept.push(i);
            }
            Some(Err(reason)) => unparsed.push((i, format!("a tombstone (a record without a value) whose key {reason}"), String::new())),
            None => unparsed.push((i, "a tombstone (a record without a value) needs a key to say which row it deletes".to_string(), String::new())),
        }
    }
    let slices: Vec<&[u8]> = objects.iter().map(|o| o.as_bytes()).collect();
    let mut parsed = renumbered(parse_records(RecordFormat::Json, &stream.payload_schema, &slices, max_record_bytes), &kept);
    parsed.unparsed.append(&mut unparsed);
    parsed.unparsed.sort_by_key(|(i, _, _)| *i);
    parsed
}

/// The JSON delete record (`{…key columns…, "_deleted": true}`) of the row of `stream`
/// whose key is `key`, as a tombstone's Kafka key or the ingest API's DELETE path gives
/// it: the key column's value as text when the key is one column, a JSON object of the
/// key columns when it has several. On a `debezium` stream the key may also be the JSON
/// object Debezium writes as the Kafka key (`{"id": 1}`, or
/// `{"schema": …, "payload": {"id": 1}}` from the JSON converter with schemas).
/// The error completes "whose key …"; the key's values are checked against the
/// declared types when the record is decoded.
///
/// ```
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// # let dir = tempfile::tempdir()?;
/// # std::fs::write(dir.path().join("s.sql"), "CREATE EXTERNAL TABLE t (a VARCHAR NOT NULL, b INT NOT NULL, PRIMARY KEY (a, b)) \
/// #     STORED AS KAFKA LOCATION 't' OPTIONS ('changelog' 'upsert');")?;
/// # let stream = trendflow_engine::catalog::Catalog::load_streams(&[dir.path().to_path_buf()]).await?.remove(0);
/// use trendflow_connectors::decode::delete_record;
/// let record: serde_json::Value = serde_json::from_str(&delete_record(&stream, br#"{"b": 2, "a": "x"}"#)?)?;
/// assert_eq!(record, serde_json::json!({"a": "x", "b": 2, "_deleted": true}));
/// assert!(delete_record(&stream, b"x").unwrap_err().contains("JSON object"));
/// # Ok(()) }
/// ```
pub fn delete_record(stream: &StreamDecl, key: &[u8]) -> Result<String, String> {
    let text = std::str::from_utf8(key).map_err(|_| "is not UTF-8 text".to_string())?;
    let json_object = || match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Object(object)) => Some(unwrapped_debezium_key(object, stream)),
        _ => None,
    };
    let debezium = stream.options.changelog == Changelog::Debezium;
    let mut object = match (stream.primary_key.as_slice(), debezium.then(json_object).flatten()) {
        (_, Some(object)) => object,
        ([column], None) => {
            serde_json::Map::from_iter([(stream.payload_schema.field(*column).name().clone(), serde_json::Value::String(text.to_string()))])
        }
        (columns, None) => match json_object() {
            Some(object) => object,
            None => {
                let names: Vec<&str> = columns.iter().map(|&c| stream.payload_schema.field(c).name().as_str()).collect();
                return Err(format!("is not a JSON object of the key columns ({}): `{text}`", names.join(", ")));
            }
        },
    };
    object.insert(DELETED_COLUMN.to_string(), serde_json::Value::Bool(true));
    Ok(serde_json::Value::Object(object).to_string())
}

/// A Debezium key's fields: the `payload` of `{"schema": …, "payload": {…}}` (the JSON
/// converter with schemas), unless the stream has columns named so.
fn unwrapped_debezium_key(mut object: serde_json::Map<String, serde_json::Value>, stream: &StreamDecl) -> serde_json::Map<String, serde_json::Value> {
    let declared = |name: &str| stream.payload_schema.field_with_name(name).is_ok();
    if stream.options.changelog == Changelog::Debezium && object.contains_key("schema") && !declared("payload") && !declared("schema") {
        if let Some(serde_json::Value::Object(payload)) = object.remove("payload") {
            return payload;
        }
    }
    object
}

/// Where accepted records came from, to fill the metadata columns.
#[derive(Debug)]
pub struct RecordOrigin {
    /// Partition of each record.
    pub partitions: Vec<i32>,
    /// Offset of each record.
    pub offsets: Vec<i64>,
    /// Arrival time of each record, ms since the epoch.
    pub timestamps: Vec<i64>,
    /// Record keys, if the transport has them; otherwise derived from the primary key.
    pub keys: Option<StringArray>,
}

/// Appends the metadata columns (`_key`, `_partition`, `_offset`, `_timestamp`) to a
/// payload batch, giving a batch with the stream's full schema.
pub fn with_metadata(stream: &StreamDecl, payload: &RecordBatch, origin: RecordOrigin) -> Result<RecordBatch, ArrowError> {
    let rows = payload.num_rows();
    let key: ArrayRef = match (origin.keys, stream.primary_key.first()) {
        (Some(keys), _) => Arc::new(keys),
        (None, Some(&pk)) if stream.primary_key.len() == 1 => cast(payload.column(pk), &DataType::Utf8)?,
        _ => new_null_array(&DataType::Utf8, rows),
    };
    let mut columns = payload.columns().to_vec();
    columns.push(key);
    columns.push(Arc::new(Int32Array::from(origin.partitions)));
    columns.push(Arc::new(Int64Array::from(origin.offsets)));
    columns.push(Arc::new(TimestampMillisecondArray::from(origin.timestamps).with_timezone("UTC")));
    RecordBatch::try_new(stream.schema.clone(), columns)
}

/// Records the engine turned away (late ones), as dead letters are written: where each
/// came from, and its declared columns as a JSON object.
#[derive(Debug)]
pub struct TurnedAway {
    /// Partition of each record.
    pub partitions: Vec<i32>,
    /// Offset of each record.
    pub offsets: Vec<i64>,
    /// Arrival time of each record, ms since the epoch.
    pub timestamps: Vec<i64>,
    /// Key of each record, as text.
    pub keys: Vec<Option<String>>,
    /// Each record's declared columns, as a JSON object.
    pub records: Vec<String>,
}

impl TurnedAway {
    /// Reads `rows` (with `stream`'s full schema) back into what a dead letter holds.
    pub fn of(stream: &StreamDecl, rows: &RecordBatch) -> crate::Result<Self> {
        let column = |name: &str| rows.column_by_name(name).ok_or_else(|| ArrowError::SchemaError(format!("no column `{name}`")));
        let partitions =
            column(trendflow_engine::stream_table::PARTITION_COLUMN)?.as_primitive::<datafusion::arrow::datatypes::Int32Type>().values().to_vec();
        let offsets =
            column(trendflow_engine::stream_table::OFFSET_COLUMN)?.as_primitive::<datafusion::arrow::datatypes::Int64Type>().values().to_vec();
        let timestamps = cast(column(trendflow_formats::TIMESTAMP_COLUMN)?, &DataType::Int64)?
            .as_primitive::<datafusion::arrow::datatypes::Int64Type>()
            .values()
            .to_vec();
        let keys = cast(column(trendflow_engine::stream_table::KEY_COLUMN)?, &DataType::Utf8)?
            .as_string::<i32>()
            .iter()
            .map(|k| k.map(String::from))
            .collect();
        let payload = rows.project(&(0..stream.payload_schema.fields().len()).collect::<Vec<_>>())?;
        let encoded = crate::kafka::encode_rows(RecordFormat::Json, &payload)?;
        let records = (0..payload.num_rows()).map(|i| String::from_utf8_lossy(encoded.get(i)).into_owned()).collect();
        Ok(Self { partitions, offsets, timestamps, keys, records })
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{Array, Int32Array};

    use super::*;

    async fn stream(columns: &str, changelog: &str) -> StreamDecl {
        let dir = tempfile::tempdir().unwrap();
        let sql = format!("CREATE EXTERNAL TABLE t ({columns}) STORED AS KAFKA LOCATION 't' OPTIONS ('changelog' '{changelog}');");
        std::fs::write(dir.path().join("s.sql"), sql).unwrap();
        trendflow_engine::catalog::Catalog::load_streams(&[dir.path().to_path_buf()]).await.unwrap().remove(0)
    }

    async fn decode(stream: &StreamDecl, records: &[&[u8]], keys: &[Option<&[u8]>]) -> Decoded {
        RecordDecoder::for_stream(stream).unwrap().decode(stream, records, keys, 1 << 20).await.unwrap()
    }

    fn texts(decoded: &Decoded, column: &str) -> Vec<Option<String>> {
        let column = cast(decoded.batch.column_by_name(column).unwrap(), &DataType::Utf8).unwrap();
        let column = column.as_any().downcast_ref::<StringArray>().unwrap();
        column.iter().map(|v| v.map(str::to_string)).collect()
    }

    fn reasons(decoded: &Decoded) -> Vec<(usize, &str)> {
        decoded.rejected.iter().map(|(i, reason, _)| (*i, reason.as_str())).collect()
    }

    #[tokio::test]
    async fn a_tombstone_deletes_the_single_column_key_its_kafka_key_holds() {
        let products = stream("asin VARCHAR NOT NULL, price DOUBLE, PRIMARY KEY (asin)", "upsert").await;
        let records: [&[u8]; 4] = [br#"{"asin": "A", "price": 1.5}"#, b"", b"", b""];
        let keys: [Option<&[u8]>; 4] = [Some(b"A"), Some(b"B 2/\"x\""), None, Some(b"A")];
        let decoded = decode(&products, &records, &keys).await;
        assert_eq!(decoded.rows, vec![0, 1, 3], "{:?}", decoded.rejected);
        assert_eq!(decoded.deleted, vec![false, true, true]);
        assert_eq!(texts(&decoded, "asin"), vec![Some("A".into()), Some("B 2/\"x\"".into()), Some("A".into())], "the key text as it is");
        assert_eq!(texts(&decoded, "price"), vec![Some("1.5".into()), None, None], "a delete carries only its key");
        assert_eq!(reasons(&decoded), vec![(2, "a tombstone (a record without a value) needs a key to say which row it deletes")]);

        let categories = stream("id INT NOT NULL, name VARCHAR, PRIMARY KEY (id)", "upsert").await;
        let decoded = decode(&categories, &[b"", b""], &[Some(b"7"), Some(b"seven")]).await;
        let ids = decoded.batch.column(0).as_any().downcast_ref::<Int32Array>().unwrap();
        assert_eq!((decoded.rows.clone(), ids.value(0), decoded.deleted.clone()), (vec![0], 7, vec![true]), "an INT key as text");
        assert_eq!(decoded.rejected.len(), 1);
        assert!(decoded.rejected[0].0 == 1 && decoded.rejected[0].1.contains("seven"), "{:?}", decoded.rejected);
    }

    #[tokio::test]
    async fn a_tombstone_of_a_composite_key_carries_a_json_object_of_its_columns() {
        let stock = stream("sku VARCHAR NOT NULL, site INT NOT NULL, qty BIGINT, PRIMARY KEY (sku, site)", "upsert").await;
        let keys: [Option<&[u8]>; 5] = [
            Some(br#"{"site": 2, "sku": "A1"}"#),
            Some(b"A1"),
            Some(br#"{"sku": "A1"}"#),
            Some(br#"["A1", 2]"#),
            Some(br#"{"sku": "B", "site": "3"}"#),
        ];
        let decoded = decode(&stock, &[b"".as_slice(); 5], &keys).await;
        assert_eq!(decoded.rows, vec![0, 4], "{:?}", decoded.rejected);
        assert_eq!(
            (texts(&decoded, "sku"), texts(&decoded, "site")),
            (vec![Some("A1".into()), Some("B".into())], vec![Some("2".into()), Some("3".into())])
        );
        assert_eq!(decoded.deleted, vec![true, true]);
        let rejected = reasons(&decoded);
        assert_eq!(rejected.iter().map(|(i, _)| *i).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(rejected[0].1, "a tombstone (a record without a value) whose key is not a JSON object of the key columns (sku, site): `A1`");
        assert!(rejected[1].1.contains("`site` is required"), "{rejected:?}");
        assert!(rejected[2].1.contains("not a JSON object"), "{rejected:?}");
    }

    #[tokio::test]
    async fn a_tombstone_whose_key_is_not_utf8_is_rejected() {
        let products = stream("asin VARCHAR NOT NULL, price DOUBLE, PRIMARY KEY (asin)", "upsert").await;
        let decoded = decode(&products, &[b"", br#"{"asin": "A"}"#], &[Some(b"B\xff\xfe"), Some(b"\xff")]).await;
        assert_eq!((decoded.rows.clone(), decoded.deleted.clone()), (vec![1], vec![false]), "the value says which row, not the key");
        assert_eq!(reasons(&decoded), vec![(0, "a tombstone (a record without a value) whose key is not UTF-8 text")]);
        let stock = stream("sku VARCHAR NOT NULL, site INT NOT NULL, PRIMARY KEY (sku, site)", "upsert").await;
        let decoded = decode(&stock, &[b""], &[Some(b"{\"sku\": \"\xc3\x28\", \"site\": 1}")]).await;
        assert_eq!(reasons(&decoded), vec![(0, "a tombstone (a record without a value) whose key is not UTF-8 text")]);
    }

    /// Debezium writes a tombstone after each delete event, keyed by the JSON of the key
    /// (wrapped in `payload` by the JSON converter with schemas); trendflow's own are keyed
    /// as an upsert stream's are.
    #[tokio::test]
    async fn a_debezium_tombstone_deletes_by_the_key_debezium_writes() {
        let categories = stream("id INT NOT NULL, name VARCHAR, PRIMARY KEY (id)", "debezium").await;
        let keys: [Option<&[u8]>; 4] = [
            Some(br#"{"id": 3}"#),
            Some(br#"{"schema": {"type": "struct", "fields": [{"field": "id", "type": "int32"}]}, "payload": {"id": 4}}"#),
            Some(b"5"),
            Some(br#"{"other": 1}"#),
        ];
        let decoded = decode(&categories, &[b"".as_slice(); 4], &keys).await;
        assert_eq!((texts(&decoded, "id"), decoded.deleted.clone()), (vec![Some("3".into()), Some("4".into()), Some("5".into())], vec![true; 3]));
        assert_eq!(decoded.rejected.len(), 1);
        assert!(decoded.rejected[0].0 == 3 && decoded.rejected[0].1.contains("`id` is required"), "{:?}", decoded.rejected);
    }

    /// On an append stream an empty record is no tombstone: there is no row to delete.
    #[tokio::test]
    async fn an_empty_record_of_an_append_stream_is_rejected() {
        let events = stream("asin VARCHAR NOT NULL", "append").await;
        let decoded = decode(&events, &[b""], &[Some(b"A")]).await;
        assert_eq!(reasons(&decoded), vec![(0, "empty record")]);
    }
}
