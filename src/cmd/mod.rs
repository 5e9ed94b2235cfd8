//! The commands of the binary, one module each: its flags (a clap `Args` struct) and
//! its entry function.

mod args;
pub mod batch;
mod common;
pub mod gen;
pub mod ingest;
pub mod produce;
pub mod query;
pub mod run;
pub mod serve;
