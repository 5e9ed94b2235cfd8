//! # trendflow-engine
//!
//! The micro-batch runtime of trendflow. SQL files declare streams
//! (`CREATE EXTERNAL TABLE … STORED AS KAFKA`), reference tables and views
//! (`CREATE VIEW … AS SELECT …`); the engine compiles every view once into an
//! incremental plan built from DataFusion's own operators and keeps it up to
//! date as micro-batches of Arrow records arrive.
//!
//! Sources and sinks live in other crates and meet the engine through the
//! [`contract::Source`] and [`contract::Sink`] traits of [`contract`]; [`fan_out::FanOut`]
//! hands one changeset stream to several sinks, and [`serving::serving_context`] is the
//! catalog that queries see. A batch run computes every view once over whole inputs
//! instead ([`batch::compute_views`]).
//!
//! ```no_run
//! # async fn example() -> trendflow_engine::Result<()> {
//! use std::collections::HashMap;
//! use trendflow_engine::{catalog::Catalog, runtime::Pipeline, session::incremental_session_config};
//!
//! let catalog = Catalog::load(&["sql".into()], incremental_session_config(), &HashMap::new()).await?;
//! let pipeline = Pipeline::compile(catalog, "trendflow-state".into()).await?;
//! for view in pipeline.views() {
//!     println!("{} keyed by {:?}", view.info().name, view.info().key);
//! }
//! # Ok(())
//! # }
//! ```

pub mod aggregate;
pub mod batch;
pub mod catalog;
pub mod changelog;
pub mod checkpoint;
pub mod contract;
mod diff;
pub mod error;
mod evaluation;
pub mod event_time;
mod extremes;
pub mod fan_out;
pub mod file_format;
pub mod key;
pub mod keyed;
mod plan_search;
pub mod prefetch;
pub mod recent;
mod retention;
mod retraction;
pub mod runtime;
pub mod serving;
pub mod session;
pub mod slot;
pub mod snapshot;
pub mod sql_file;
pub mod stream_options;
pub mod stream_table;
mod subquery;
pub mod time_format;
mod top_n;
pub mod view;
pub mod window;

pub use error::{EngineError, Result};
