//! # trendflow-connectors
//!
//! Sources and sinks for the trendflow engine: replaying files as streams
//! ([`file_source::FileSource`]), decoding records into a stream's declared
//! schema with per-record rejection ([`decode`]), dead letters
//! ([`dead_letter`]), and the embedded result store ([`store::EmbeddedStore`]).

pub mod binding;
pub mod bson_convert;
pub mod dead_letter;
pub mod decode;
pub mod error;
pub mod fan_out;
pub mod file_source;
pub mod ingest;
pub mod kafka;
pub mod mongo;
pub mod schema_registry;
pub mod serving;
pub mod store;

pub use error::{redact, ConnectorError, Result};
