//! Integration tests of trendflow, in one test binary (each binary costs a full link).

mod avro;
mod broker;
mod changelog;
mod changelog_kafka;
mod cli;
mod errors;
mod event_time;
mod incremental;
mod kafka;
mod kafka_sink;
mod mongo;
mod reliability;
mod restart;
mod semantics;
mod slt;
mod streaming_equals_batch;
mod support;
