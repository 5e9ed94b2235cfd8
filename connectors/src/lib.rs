//! # trendflow-connectors
//!
//! Sources and sinks for the trendflow engine, one folder per system:
//!
//! - [`kafka`]: the exactly-once stream source ([`kafka::KafkaSource`]) and its
//!   dead-letter topic, the batched producer ([`kafka::RecordProducer`]), views
//!   written as changelog topics ([`kafka::KafkaSink`]), topic administration, and
//!   replaying files into a topic;
//! - [`mongo`]: the idempotent upsert sink ([`mongo::MongoSink`]), collections as
//!   DataFusion tables ([`mongo::MongoTable`]), Arrow ⇄ BSON;
//! - [`file`](mod@file): replaying files as streams ([`file::FileSource`]) and their dead-letter
//!   files ([`file::DeadLetterFile`]);
//! - [`http`]: the HTTP ingest API ([`http::IngestService`]).
//!
//! Beside them: binding streams and reference tables to their data ([`binding`]),
//! decoding records into a stream's declared schema with per-record rejection
//! ([`decode`]), the schema registry client ([`schema_registry`]), and the embedded
//! result store ([`store::EmbeddedStore`]).

pub mod binding;
pub mod decode;
pub mod error;
pub mod file;
pub mod http;
pub mod kafka;
pub mod mongo;
pub mod schema_registry;
pub mod store;

pub use error::{redact, ConnectorError, Result};
