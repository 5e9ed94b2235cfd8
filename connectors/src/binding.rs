//! Run-time bindings of declared tables to concrete inputs:
//! `--source products=file:data/products.csv`.
//!
//! A binding of a stream opens a [`Source`]; a binding of a reference table
//! re-points its location. Bindings used by a run are saved in the state
//! directory, so `trendflow query` and `trendflow batch` see the same tables.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use datafusion::arrow::record_batch::RecordBatch;
use trendflow_engine::batch::BatchStream;
use trendflow_engine::catalog::Catalog;
use trendflow_engine::contract::{Source, StreamDecl};

use crate::error::{ConnectorError, Result};
use crate::file::FileSource;
use crate::kafka::{KafkaAddress, KafkaSource, KafkaSourceOptions};

/// How unbound streams and Kafka bindings are opened.
#[derive(Debug, Clone)]
pub struct SourceSettings {
    /// Where file sources write dead letters.
    pub dead_letter_dir: PathBuf,
    /// Brokers for streams without a binding: they read their `LOCATION` topic.
    pub kafka_brokers: Option<String>,
    /// Consumer group Kafka sources commit progress to.
    pub kafka_group: String,
    /// Stop at the end of the input as it is when reading starts.
    pub bounded: bool,
}

impl SourceSettings {
    async fn kafka_source(&self, stream: &StreamDecl, brokers: &str, topic: &str) -> Result<KafkaSource> {
        let mut options = KafkaSourceOptions::new(stream, brokers, topic, &self.kafka_group);
        options.bounded = self.bounded;
        KafkaSource::open(stream.clone(), options).await
    }
}

const SAVED: &str = "sources.json";

/// Table name → input address, e.g. `products` → `file:/data/products.csv` or
/// `kafka://127.0.0.1:9092/products`.
///
/// ```
/// use trendflow_connectors::binding::Bindings;
/// let bindings = Bindings::parse(&["products=file:data/p.csv".to_string()]).unwrap();
/// assert_eq!(bindings.file("products").unwrap().to_str(), Some("data/p.csv"));
/// assert!(Bindings::parse(&["products".to_string()]).is_err());
/// ```
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Bindings(BTreeMap<String, String>);

/// Joins the pieces of comma-split `NAME=URI` arguments back into whole bindings.
fn rejoin_split_bindings(args: &[String]) -> Vec<String> {
    let starts_binding = |piece: &str| {
        piece.split_once('=').is_some_and(|(name, _)| !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.'))
    };
    let mut whole: Vec<String> = Vec::new();
    for piece in args {
        match whole.last_mut() {
            Some(last) if !starts_binding(piece) => {
                last.push(',');
                last.push_str(piece);
            }
            _ => whole.push(piece.clone()),
        }
    }
    whole
}

impl Bindings {
    /// Parses `NAME=URI` arguments; URIs are `file:PATH` or `kafka://BROKERS/TOPIC`.
    /// The command line splits `--source` values at commas (`TRENDFLOW_SOURCES` lists
    /// several), so a piece that does not start with `NAME=` continues the one before:
    /// `products=kafka://h1:9092,h2:9092/products` is one binding with two brokers.
    pub fn parse(args: &[String]) -> Result<Self> {
        let mut bindings = BTreeMap::new();
        for arg in &rejoin_split_bindings(args) {
            let error = |message: &str| ConnectorError::Binding { binding: arg.clone(), message: message.to_string() };
            let (name, uri) = arg.split_once('=').ok_or_else(|| error("expected NAME=URI, e.g. products=file:data/products.csv"))?;
            if name.is_empty() {
                return Err(error("the table name is empty"));
            }
            if uri.starts_with("kafka://") {
                KafkaAddress::parse(uri)?;
            } else {
                let Some(path) = uri.strip_prefix("file:") else {
                    return Err(error("unsupported address: expected file:PATH or kafka://HOST:PORT/TOPIC"));
                };
                if path.is_empty() {
                    return Err(error("the file path is empty"));
                }
            }
            bindings.insert(name.to_string(), uri.to_string());
        }
        Ok(Self(bindings))
    }

    /// Binds `name` to the file at `path`.
    pub fn bind_file(&mut self, name: &str, path: &Path) {
        self.0.insert(name.to_string(), format!("file:{}", path.display()));
    }

    /// True when nothing is bound.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The file bound to `name`, if any.
    pub fn file(&self, name: &str) -> Option<PathBuf> {
        self.0.get(name).and_then(|uri| uri.strip_prefix("file:")).map(PathBuf::from)
    }

    /// Every bound file with absolute paths, so a saved binding works from any directory.
    pub fn absolute(&self) -> Self {
        Self(
            self.0
                .iter()
                .map(|(name, uri)| match uri.strip_prefix("file:") {
                    Some(path) => (name.clone(), format!("file:{}", std::path::absolute(path).unwrap_or_else(|_| path.into()).display())),
                    None => (name.clone(), uri.clone()),
                })
                .collect(),
        )
    }

    /// Every bound file by table name (what [`Catalog::load`] takes to re-bind reference tables).
    pub fn files(&self) -> HashMap<String, String> {
        self.0.keys().filter_map(|name| self.file(name).map(|p| (name.clone(), p.to_string_lossy().into_owned()))).collect()
    }

    /// Saves the bindings into a state directory.
    pub fn save(&self, state_dir: &Path) -> Result<()> {
        let path = state_dir.join(SAVED);
        std::fs::create_dir_all(state_dir).map_err(|e| ConnectorError::io(state_dir, e))?;
        let json = serde_json::to_vec_pretty(self).expect("bindings serialize");
        std::fs::write(&path, json).map_err(|e| ConnectorError::io(&path, e))
    }

    /// The bindings saved in a state directory (empty when none were saved).
    pub fn load(state_dir: &Path) -> Result<Self> {
        let path = state_dir.join(SAVED);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| ConnectorError::Format { path, message: e.to_string() }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(ConnectorError::io(&path, e)),
        }
    }

    /// Opens a source for every stream of `catalog`: its binding, else its topic on
    /// `settings.kafka_brokers`. Every stream must be one or the other.
    pub async fn open_sources(&self, catalog: &Catalog, settings: &SourceSettings) -> Result<Vec<Box<dyn Source>>> {
        let mut sources = Vec::new();
        for stream in catalog.streams() {
            let bound = |e: ConnectorError| ConnectorError::Binding { binding: stream.name.clone(), message: e.to_string() };
            let source: Box<dyn Source> = match (self.0.get(&stream.name), &settings.kafka_brokers) {
                (Some(uri), _) if uri.starts_with("kafka://") => {
                    let address = KafkaAddress::parse(uri)?;
                    Box::new(settings.kafka_source(stream, &address.brokers, &address.topic).await.map_err(bound)?)
                }
                (Some(uri), _) => {
                    let path = PathBuf::from(uri.strip_prefix("file:").unwrap_or(uri));
                    Box::new(FileSource::new(stream.clone(), path, &settings.dead_letter_dir).map_err(bound)?)
                }
                (None, Some(brokers)) => Box::new(settings.kafka_source(stream, brokers, &stream.location).await.map_err(bound)?),
                (None, None) => {
                    return Err(ConnectorError::Binding {
                        binding: stream.name.clone(),
                        message: format!(
                            "stream `{}` (STORED AS KAFKA, topic `{}`) has no input: pass --kafka-brokers HOST:PORT, \
                             or bind it with --source {}=file:PATH or kafka://HOST:PORT/TOPIC",
                            stream.name, stream.location, stream.name
                        ),
                    })
                }
            };
            sources.push(source);
        }
        Ok(sources)
    }

    /// Reads every stream's input completely, for a batch run (a topic is read up to
    /// the end offsets it has when reading starts, a file on every core:
    /// [`Source::read_to_end`]), as a streaming
    /// run would read it: late records go to the dead-letter destination of an append
    /// stream. Returns the streams and how many records were rejected (undecodable or late).
    pub async fn read_streams(&self, catalog: &Catalog, settings: &SourceSettings) -> Result<(Vec<BatchStream>, u64)> {
        let mut streams = Vec::new();
        let mut rejected = 0;
        let bounded = SourceSettings { bounded: true, ..settings.clone() };
        for (stream, mut source) in catalog.streams().iter().zip(self.open_sources(catalog, &bounded).await?) {
            let failed = |e: &dyn std::fmt::Display| ConnectorError::Binding { binding: stream.name.clone(), message: e.to_string() };
            let started = std::time::Instant::now();
            let micro_batches = source.read_to_end(BATCH_ROWS).await.map_err(|e| failed(&e))?;
            rejected += micro_batches.iter().map(|micro| micro.rejected).sum::<u64>();
            let batches: Vec<_> = micro_batches.into_iter().map(|micro| (micro.batch, micro.deleted)).collect();
            let (records, decoded) = (batches.iter().map(|(b, _)| b.num_rows()).sum::<usize>(), started.elapsed());
            let read = BatchStream::new(stream, batches).map_err(|e| failed(&e))?;
            tracing::info!(
                "read stream {}: {records} records in {:.2} s, then its table ({} rows) in {:.2} s",
                stream.name,
                decoded.as_secs_f64(),
                read.table.iter().map(RecordBatch::num_rows).sum::<usize>(),
                (started.elapsed() - decoded).as_secs_f64()
            );
            if !stream.options.changelog.is_keyed() && read.late.rows.num_rows() > 0 {
                source.reject(&read.late.rows, &read.late.reasons).await.map_err(|e| failed(&e))?;
                rejected += read.late.rows.num_rows() as u64;
            }
            streams.push(read);
        }
        Ok((streams, rejected))
    }
}

/// Records per micro-batch a batch run reads (the cut does not change its results).
const BATCH_ROWS: usize = 65_536;

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(args: &[&str]) -> Vec<(String, String)> {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        Bindings::parse(&args).unwrap().0.into_iter().collect()
    }

    #[test]
    fn a_kafka_binding_keeps_its_broker_list_through_comma_splitting() {
        // As clap hands over `--source products=kafka://h1:1,h2:2/products,categories=file:c.csv`.
        let got = parsed(&["products=kafka://h1:1", "h2:2/products", "categories=file:c.csv"]);
        assert_eq!(
            got,
            vec![("categories".to_string(), "file:c.csv".to_string()), ("products".to_string(), "kafka://h1:1,h2:2/products".to_string()),]
        );
    }

    #[test]
    fn a_piece_without_a_name_before_any_binding_is_an_error() {
        let args = vec!["h2:2/products".to_string()];
        assert!(Bindings::parse(&args).unwrap_err().to_string().contains("expected NAME=URI"));
    }
}
