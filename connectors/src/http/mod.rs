//! HTTP: the ingest API ([`IngestService`]), which validates posted records against
//! their stream and produces the valid ones to Kafka.

mod ingest;

pub use ingest::{IngestOptions, IngestService};
