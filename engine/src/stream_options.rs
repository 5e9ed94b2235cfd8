//! The OPTIONS of a stream, parsed once when the stream is declared: connectors read
//! these typed fields and never an option string.

use std::collections::HashMap;
use std::time::Duration;

use trendflow_formats::RecordFormat;

use crate::recent::DEFAULT_RECENT_ROWS;

/// Every option name a stream may declare.
const NAMES: [&str; 11] = [
    "format",
    "schema_registry_url",
    "avro_schema",
    "dead_letter_topic",
    "max_record_bytes",
    "recent_rows",
    "changelog",
    "event_time",
    "event_time_format",
    "watermark_delay",
    "idle_timeout",
];

/// How long a partition may deliver nothing before it stops holding the watermark back.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// When a stream's records happened: `OPTIONS ('event_time' 'date', 'event_time_format'
/// '%d/%m/%Y %H:%M', 'watermark_delay' '10 minutes', 'idle_timeout' '30 seconds')`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventTimeOptions {
    /// A column or an SQL expression over the stream's columns (`None`: `_timestamp`).
    pub expression: Option<String>,
    /// A chrono format (`%d/%m/%Y %H:%M`) the column's strings are read with.
    pub format: Option<String>,
    /// Allowed lateness: how far the watermark trails the largest event time.
    pub watermark_delay: Duration,
    /// See [`DEFAULT_IDLE_TIMEOUT`].
    pub idle_timeout: Duration,
}

impl Default for EventTimeOptions {
    fn default() -> Self {
        Self { expression: None, format: None, watermark_delay: Duration::ZERO, idle_timeout: DEFAULT_IDLE_TIMEOUT }
    }
}

impl EventTimeOptions {
    fn parse(options: &HashMap<String, String>) -> Result<Self, String> {
        let expression = options.get("event_time").cloned();
        let format = options.get("event_time_format").cloned();
        if format.is_some() && expression.is_none() {
            return Err("'event_time_format' reads the 'event_time' column: declare it too, e.g. ('event_time' 'date')".into());
        }
        let duration =
            |name: &str, default: Duration| options.get(name).map_or(Ok(default), |text| parse_duration(text).map_err(|e| format!("{name}: {e}")));
        Ok(Self {
            expression,
            format,
            watermark_delay: duration("watermark_delay", Duration::ZERO)?,
            idle_timeout: duration("idle_timeout", DEFAULT_IDLE_TIMEOUT)?,
        })
    }
}

/// Reads `'10 minutes'`, `'30 s'`, `'1 hour'`, `'500 ms'`, `'2 days'` (or `'0'`).
///
/// ```
/// use std::time::Duration;
/// use trendflow_engine::stream_options::parse_duration;
/// assert_eq!(parse_duration("10 minutes"), Ok(Duration::from_secs(600)));
/// assert!(parse_duration("ten minutes").is_err());
/// ```
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| format!("`{text}` is not a duration (e.g. '10 minutes', '30 seconds')"))?;
    let millis = match unit.trim().to_ascii_lowercase().as_str() {
        "" if number == 0 => 0,
        "ms" | "millisecond" | "milliseconds" => 1,
        "s" | "sec" | "second" | "seconds" => 1_000,
        "m" | "min" | "mins" | "minute" | "minutes" => 60_000,
        "h" | "hour" | "hours" => 3_600_000,
        "d" | "day" | "days" => 86_400_000,
        other => return Err(format!("unknown unit `{other}` in `{text}` (ms, seconds, minutes, hours, days)")),
    };
    Ok(Duration::from_millis(number.saturating_mul(millis)))
}

/// How a stream's records change it: `OPTIONS ('changelog' 'append' | 'upsert' | 'debezium')`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Changelog {
    /// Every record is a new row (the default).
    #[default]
    Append,
    /// A record replaces the row with the same PRIMARY KEY; a tombstone (a Kafka record
    /// with a key and an empty value, or a JSON record `{…key…, "_deleted": true}`)
    /// deletes it.
    Upsert,
    /// Debezium JSON change events (`before`, `after`, `op`), keyed by the PRIMARY KEY.
    Debezium,
}

impl Changelog {
    /// True for `upsert` and `debezium`: the stream is a table that changes by key.
    pub fn is_keyed(self) -> bool {
        self != Self::Append
    }

    /// The name as written in OPTIONS.
    pub fn name(self) -> &'static str {
        match self {
            Self::Append => "append",
            Self::Upsert => "upsert",
            Self::Debezium => "debezium",
        }
    }

    fn parse(name: &str) -> Result<Self, String> {
        match name.to_ascii_lowercase().as_str() {
            "append" => Ok(Self::Append),
            "upsert" => Ok(Self::Upsert),
            "debezium" => Ok(Self::Debezium),
            _ => Err(format!("unknown changelog `{name}` (append, upsert or debezium)")),
        }
    }
}

/// How a stream's records are encoded: `OPTIONS ('format' 'json' | 'csv' | 'avro')`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamFormat {
    /// JSON objects or CSV lines (JSON by default).
    Text(RecordFormat),
    /// Avro, with the writer schemas from `schemas`.
    Avro(AvroSchemas),
}

/// Where an Avro stream's writer schemas come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AvroSchemas {
    /// Confluent-framed records; schemas by id from the registry at `url`
    /// (`'schema_registry_url' 'http://…'`).
    Registry {
        /// The registry's base URL (may hold credentials: never show it).
        url: String,
    },
    /// Bare Avro bodies of one schema (`'avro_schema' '{"type": "record", …}'`).
    Bare {
        /// The schema's JSON text.
        schema: String,
    },
}

/// A stream's declared OPTIONS.
///
/// ```
/// use std::collections::HashMap;
/// use trendflow_engine::stream_options::{StreamFormat, StreamOptions};
///
/// let declared = HashMap::from([("format".to_string(), "csv".to_string()), ("max_record_bytes".to_string(), "4096".to_string())]);
/// let options = StreamOptions::parse(&declared).unwrap();
/// assert_eq!(options.format, StreamFormat::Text(trendflow_formats::RecordFormat::Csv));
/// assert_eq!(options.max_record_bytes, 4096);
/// assert!(StreamOptions::parse(&HashMap::from([("fromat".to_string(), "csv".to_string())])).is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamOptions {
    /// The record encoding.
    pub format: StreamFormat,
    /// Larger records are rejected with a reason by every source and by the ingest API
    /// (`'max_record_bytes'`, 1 MiB by default).
    pub max_record_bytes: usize,
    /// Where a Kafka source puts records it cannot decode (`'dead_letter_topic'`;
    /// `None`: the connector's default, `<topic>.dlq`).
    pub dead_letter_topic: Option<String>,
    /// How many of the latest rows are kept for serving (`'recent_rows'`).
    pub recent_rows: usize,
    /// How records change the stream (`'changelog'`).
    pub changelog: Changelog,
    /// When its records happened, and how late they may come.
    pub event_time: EventTimeOptions,
}

impl Default for StreamOptions {
    fn default() -> Self {
        Self {
            format: StreamFormat::Text(RecordFormat::Json),
            max_record_bytes: trendflow_formats::DEFAULT_MAX_RECORD_BYTES,
            dead_letter_topic: None,
            recent_rows: DEFAULT_RECENT_ROWS,
            changelog: Changelog::Append,
            event_time: EventTimeOptions::default(),
        }
    }
}

impl StreamOptions {
    /// Parses OPTIONS (keys lower case, as written in SQL). Refuses unknown names (a
    /// typo would otherwise be ignored in silence) and values that cannot be right.
    pub fn parse(options: &HashMap<String, String>) -> Result<Self, String> {
        let mut names: Vec<&String> = options.keys().collect();
        names.sort();
        if let Some(unknown) = names.into_iter().find(|name| !NAMES.contains(&name.as_str())) {
            return Err(format!("unknown option `{unknown}` (options: {})", NAMES.join(", ")));
        }
        let defaults = Self::default();
        let format = parse_format(options)?;
        let changelog = options.get("changelog").map_or(Ok(Changelog::Append), |c| Changelog::parse(c))?;
        if changelog == Changelog::Debezium && format != StreamFormat::Text(RecordFormat::Json) {
            return Err("('changelog' 'debezium') reads Debezium's JSON events: it needs ('format' 'json')".into());
        }
        Ok(Self {
            format,
            changelog,
            event_time: EventTimeOptions::parse(options)?,
            max_record_bytes: match options.get("max_record_bytes") {
                None => defaults.max_record_bytes,
                Some(bytes) => {
                    bytes.parse().ok().filter(|&b| b > 0).ok_or(format!("max_record_bytes `{bytes}` is not a positive number of bytes"))?
                }
            },
            dead_letter_topic: options.get("dead_letter_topic").cloned(),
            recent_rows: match options.get("recent_rows") {
                None => defaults.recent_rows,
                Some(n) => n.parse().map_err(|_| format!("OPTIONS recent_rows `{n}` is not a number of rows"))?,
            },
        })
    }
}

fn parse_format(options: &HashMap<String, String>) -> Result<StreamFormat, String> {
    let name = options.get("format").map_or("json".to_string(), |f| f.to_lowercase());
    let registry = options.get("schema_registry_url");
    let bare = options.get("avro_schema");
    if name != "avro" {
        if registry.is_some() || bare.is_some() {
            return Err(format!("'schema_registry_url' and 'avro_schema' are for ('format' 'avro'), not `{name}`"));
        }
        return RecordFormat::from_name(&name).map(StreamFormat::Text).ok_or(format!("unknown format `{name}` (json, csv or avro)"));
    }
    let schemas = match (registry, bare) {
        (Some(url), None) if url.starts_with("http://") => AvroSchemas::Registry { url: url.clone() },
        // The URL itself is not shown: it may hold a password.
        (Some(url), None) if url.starts_with("https://") => return Err("schema_registry_url: https is not supported, only http://".into()),
        (Some(_), None) => return Err("schema_registry_url: the URL must start with http://".into()),
        (None, Some(schema)) => {
            trendflow_formats::AvroDecoder::bare(schema).map_err(|e| format!("avro_schema: {e}"))?;
            AvroSchemas::Bare { schema: schema.clone() }
        }
        (None, None) => {
            return Err(
                "an Avro stream needs its writer schemas: 'schema_registry_url' (Confluent-framed records) or 'avro_schema' (bare ones)".into()
            )
        }
        (Some(_), Some(_)) => return Err("set 'schema_registry_url' (Confluent-framed records) or 'avro_schema' (bare ones), not both".into()),
    };
    Ok(StreamFormat::Avro(schemas))
}
