//! The DataFusion sessions of the engine: their configuration for batch runs and for
//! incremental maintenance, and a session that understands `STORED AS KAFKA`.

use std::sync::Arc;

use datafusion::execution::SessionStateBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};

use crate::stream_table::{StreamRegistry, StreamTableFactory, STREAM_FILE_TYPE};
use crate::window::{SessionRefused, WindowFunction};

/// The session configuration of batch runs and queries.
///
/// `VARCHAR` maps to plain `Utf8` rather than `Utf8View`: results leave the
/// engine for sinks and BI clients, many of which do not read string views yet.
pub fn batch_session_config() -> SessionConfig {
    let mut config = SessionConfig::new().with_information_schema(true);
    config.options_mut().sql_parser.map_string_types_to_utf8view = false;
    config
}

/// The session configuration the incremental engine relies on: [`batch_session_config`]
/// with the changes below.
///
/// One partition keeps every aggregate a single `AggregateExec` the engine can
/// split into its Partial / PartialReduce / Final stages; dynamic filters are
/// off because plans are re-executed and such filters carry state between runs;
/// `Partial` never skips aggregation, so it emits one row per group and a group's
/// stored state is merged exactly once.
pub fn incremental_session_config() -> SessionConfig {
    let mut config = batch_session_config().with_target_partitions(1);
    config.options_mut().execution.skip_partial_aggregation_probe_rows_threshold = usize::MAX;
    let optimizer = &mut config.options_mut().optimizer;
    optimizer.enable_dynamic_filter_pushdown = false;
    optimizer.enable_topk_dynamic_filter_pushdown = false;
    optimizer.enable_join_dynamic_filter_pushdown = false;
    optimizer.enable_aggregate_dynamic_filter_pushdown = false;
    config
}

/// A session that understands `STORED AS KAFKA`, recording streams into `registry`, and
/// the window functions `TUMBLE` and `HOP` over them; its `to_timestamp*` functions read
/// literal formats once per call (see [`crate::time_format`]).
pub fn new_session(config: SessionConfig, registry: StreamRegistry) -> SessionContext {
    let state = SessionStateBuilder::new()
        .with_default_features()
        .with_config(config)
        .with_table_factory(STREAM_FILE_TYPE.to_string(), Arc::new(StreamTableFactory::new(registry.clone())))
        .build();
    let ctx = SessionContext::new_with_state(state);
    crate::time_format::register(&ctx);
    // Table function names are matched as written: register both spellings people use.
    for name in ["tumble", "TUMBLE"] {
        ctx.register_udtf(name, Arc::new(WindowFunction::tumble(registry.clone())));
    }
    for name in ["hop", "HOP"] {
        ctx.register_udtf(name, Arc::new(WindowFunction::hop(registry.clone())));
    }
    for name in ["session", "SESSION"] {
        ctx.register_udtf(name, Arc::new(SessionRefused));
    }
    ctx
}
