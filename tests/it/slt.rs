//! SQL semantics as sqllogictest files (`tests/slt/*.slt`), each run four ways that must
//! all give the rows the file writes down: streamed in the micro-batches the file states,
//! streamed one record per micro-batch, streamed across a crash and two restarts, and in
//! batch over the whole input.
//!
//! A file is a script of a pipeline:
//! - `statement ok` + `CREATE EXTERNAL TABLE …`: a stream (`STORED AS KAFKA`) or a
//!   reference table (any other `STORED AS`; its `LOCATION` is ignored, its rows are the
//!   file's `INSERT`s into it, all loaded at start-up).
//! - `statement ok` + `CREATE VIEW …` (or any other statement): a view, compiled for streaming at once, so that
//!   `statement error <regex>` states a refusal (the message names construct, file, line).
//! - `statement ok` + `INSERT INTO stream VALUES …`: one micro-batch of that stream (on a
//!   changelog stream, upserts by its key).
//! - `statement ok` + `DELETE FROM stream WHERE key IN (…)` (or `(a, b) IN ((…), …)`): one
//!   micro-batch of deletes of a changelog stream (tombstones: the key columns only).
//! - `query <types> [rowsort]` + any query over the views: the views' results after every
//!   micro-batch so far (floats printed with at most 9 decimals, `NULL`, `(empty)`).
//!
//! Labels `streamed` and `batch` (and the mode's own name, see [`Mode::label`]) let a record
//! apply to some runs only (`onlyif batch`); a refusal holds in every mode.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use datafusion::arrow::array::{Array, Float32Array, Float64Array, RecordBatch};
use datafusion::arrow::compute::{cast, concat_batches};
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use sqllogictest::{DBOutput, DefaultColumnType};
use trendflow_connectors::decode::{changelog_key, with_metadata, RecordOrigin};
use trendflow_connectors::store::EmbeddedStore;
use trendflow_engine::batch::{compute_views, BatchStream};
use trendflow_engine::catalog::Catalog;
use trendflow_engine::contract::{CheckpointMeta, MicroBatch, Offsets, Poll, Sink, Source, StreamDecl};
use trendflow_engine::error::EngineError;
use trendflow_engine::runtime::{Pipeline, RunOptions};
use trendflow_engine::session::{batch_session_config, incremental_session_config};
use trendflow_engine::stream_table::STREAM_FILE_TYPE;

use crate::support::*;

/// How a file's micro-batches reach the views.
#[derive(Debug, Clone, Copy)]
enum Mode {
    /// Streamed in the micro-batches the file states.
    AsGiven,
    /// Streamed one record per micro-batch.
    OneRecordPerBatch,
    /// Streamed as given: the first half, checkpointed; the rest in a run that dies before
    /// its checkpoint (its changes in the sink); then a restart that replays them.
    Restart,
    /// Every view over the whole input at once, as `trendflow batch` computes it.
    Batch,
}

impl Mode {
    const ALL: [Mode; 4] = [Mode::AsGiven, Mode::OneRecordPerBatch, Mode::Restart, Mode::Batch];

    fn label(self) -> &'static str {
        match self {
            Mode::AsGiven => "as_given",
            Mode::OneRecordPerBatch => "one_record_per_batch",
            Mode::Restart => "restart",
            Mode::Batch => "batch",
        }
    }
}

/// An error of the script or of the engine, shown to the `statement error` regex with its causes.
#[derive(Debug)]
struct SltError(String);

impl std::fmt::Display for SltError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SltError {}

fn error_text(error: &dyn std::error::Error) -> SltError {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        text.push_str(&format!(": {inner}"));
        cause = inner.source();
    }
    SltError(text)
}

/// Errors that reach the script keep their causes in the text.
macro_rules! slt_error_from {
    ($($error:ty),*) => {$(
        impl From<$error> for SltError {
            fn from(error: $error) -> Self {
                error_text(&error)
            }
        }
    )*};
}

slt_error_from!(
    EngineError,
    trendflow_connectors::ConnectorError,
    datafusion::error::DataFusionError,
    datafusion::arrow::error::ArrowError,
    datafusion::parquet::errors::ParquetError,
    std::io::Error
);

type SltResult<T> = std::result::Result<T, SltError>;

/// The pipeline a file has declared so far, and its input.
struct Script {
    mode: Mode,
    root: tempfile::TempDir,
    /// `CREATE EXTERNAL TABLE` and `CREATE VIEW` statements, in order.
    ddl: Vec<String>,
    /// Names of the declared streams.
    streams: Vec<String>,
    /// Names of the declared changelog streams (`upsert`, `debezium`).
    changelogs: Vec<String>,
    /// Names of the declared reference tables.
    references: Vec<String>,
    /// Stream micro-batches (declared columns only) and whether they are deletes, in order.
    inserts: Vec<(String, RecordBatch, bool)>,
    /// Parses `INSERT`s: one empty table per declared table, with its declared columns.
    scratch: SessionContext,
    runs: usize,
}

impl Script {
    fn new(mode: Mode) -> Self {
        Self {
            mode,
            root: tempfile::tempdir().unwrap(),
            ddl: Vec::new(),
            streams: Vec::new(),
            changelogs: Vec::new(),
            references: Vec::new(),
            inserts: Vec::new(),
            scratch: SessionContext::new_with_config(batch_session_config()),
            runs: 0,
        }
    }

    async fn execute(&mut self, sql: &str) -> SltResult<DBOutput<DefaultColumnType>> {
        let words: Vec<String> = sql.split_whitespace().take(3).map(str::to_ascii_uppercase).collect();
        match words.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
            ["CREATE", "EXTERNAL", "TABLE"] => self.declare_table(sql).await?,
            ["INSERT", "INTO", table] => self.insert(&table.to_ascii_lowercase(), sql).await?,
            ["DELETE", "FROM", table] => self.delete(&table.to_ascii_lowercase(), sql).await?,
            ["SELECT", ..] | ["WITH", ..] => return self.query(sql).await,
            // Views, and anything else, for the engine to accept or refuse.
            _ => self.declare(sql).await?,
        }
        Ok(DBOutput::StatementComplete(0))
    }

    async fn declare_table(&mut self, sql: &str) -> SltResult<()> {
        let statement = self.scratch.state().sql_to_statement(sql, &datafusion::config::Dialect::Generic)?;
        let datafusion::sql::parser::Statement::CreateExternalTable(table) = statement else {
            return Err(SltError(format!("not a CREATE EXTERNAL TABLE: {sql}")));
        };
        let name = table.name.to_string();
        let columns: Vec<String> = table.columns.iter().map(ToString::to_string).collect();
        self.scratch.sql(&format!("CREATE TABLE {name} ({})", columns.join(", "))).await?.collect().await?;
        let is_stream = table.file_type.eq_ignore_ascii_case(STREAM_FILE_TYPE);
        let kinds = if is_stream { &mut self.streams } else { &mut self.references };
        kinds.push(name.clone());
        if table.options.iter().any(|(k, v)| k.eq_ignore_ascii_case("changelog") && !v.to_string().to_ascii_lowercase().contains("append")) {
            self.changelogs.push(name.clone());
        }
        // The engine accepts the declaration, or the statement fails with its reason.
        self.ddl.push(sql.to_string());
        let dir = self.fresh_dir()?;
        if let Err(error) = self.catalog(&dir, incremental_session_config()).await {
            self.ddl.pop();
            self.streams.retain(|s| *s != name);
            self.references.retain(|s| *s != name);
            self.changelogs.retain(|s| *s != name);
            self.scratch.deregister_table(name.as_str())?;
            return Err(error);
        }
        Ok(())
    }

    /// Keeps a statement (a view) only if the streaming engine accepts it with the tables declared so far.
    async fn declare(&mut self, sql: &str) -> SltResult<()> {
        self.ddl.push(sql.to_string());
        let dir = self.fresh_dir()?;
        let compiled = match self.catalog(&dir, incremental_session_config()).await {
            Ok(catalog) => Pipeline::compile(catalog, dir.join("state")).await.map(drop).map_err(SltError::from),
            Err(error) => Err(error),
        };
        if compiled.is_err() {
            self.ddl.pop();
        }
        compiled
    }

    async fn insert(&mut self, table: &str, sql: &str) -> SltResult<()> {
        let is_stream = self.streams.iter().any(|s| s == table);
        if !is_stream && !self.references.iter().any(|r| r == table) {
            return Err(SltError(format!("INSERT INTO `{table}`: no such table is declared")));
        }
        if is_stream {
            // Each INSERT is a micro-batch of its own: start from an empty table.
            self.clear_scratch(table).await?;
        }
        self.scratch.sql(sql).await?.collect().await?;
        if is_stream {
            let rows = self.table_rows(table).await?;
            self.inserts.push((table.to_string(), rows, false));
        }
        Ok(())
    }

    /// `DELETE FROM stream WHERE cols IN (rows)`: a micro-batch of tombstones of those keys.
    async fn delete(&mut self, table: &str, sql: &str) -> SltResult<()> {
        if !self.streams.iter().any(|s| s == table) {
            return Err(SltError(format!("DELETE FROM `{table}`: no such stream is declared")));
        }
        if !self.changelogs.iter().any(|s| s == table) {
            return Err(SltError(format!("DELETE FROM `{table}`: the stream is append-only")));
        }
        let shape = || SltError(format!("expected DELETE FROM {table} WHERE key IN (…): {sql}"));
        let upper = sql.to_ascii_uppercase();
        let condition = upper.find(" WHERE ").ok_or_else(shape)? + " WHERE ".len();
        let list = condition + upper[condition..].find(" IN ").ok_or_else(shape)?;
        let columns: Vec<&str> = sql[condition..list].trim().trim_matches(['(', ')']).split(',').map(str::trim).collect();
        let rows = sql[list + " IN ".len()..].trim().strip_prefix('(').and_then(|r| r.strip_suffix(')')).ok_or_else(shape)?.trim();
        let rows =
            if rows.starts_with('(') { rows.to_string() } else { rows.split(',').map(|v| format!("({})", v.trim())).collect::<Vec<_>>().join(", ") };
        let keys = self.scratch.sql(&format!("SELECT * FROM (VALUES {rows}) AS deleted({})", columns.join(", "))).await?;
        let keys = concat_batches(&Arc::new(keys.schema().as_arrow().clone()), &keys.collect().await?)?;
        // The tombstones: the key columns, nulls in the others.
        let schema = self.scratch.table_provider(table).await?.schema();
        let columns = schema
            .fields()
            .iter()
            .map(|f| match keys.schema().index_of(f.name()) {
                Ok(i) => Ok(cast(keys.column(i), f.data_type())?),
                Err(_) => Ok(datafusion::arrow::array::new_null_array(f.data_type(), keys.num_rows())),
            })
            .collect::<SltResult<Vec<_>>>()?;
        let nullable = Arc::new(datafusion::arrow::datatypes::Schema::new(
            schema.fields().iter().map(|f| f.as_ref().clone().with_nullable(true)).collect::<Vec<_>>(),
        ));
        self.inserts.push((table.to_string(), RecordBatch::try_new(nullable, columns)?, true));
        Ok(())
    }

    async fn clear_scratch(&self, table: &str) -> SltResult<()> {
        let provider = self.scratch.table_provider(table).await?;
        let empty = MemTable::try_new(provider.schema(), vec![vec![]])?;
        self.scratch.deregister_table(table)?;
        self.scratch.register_table(table, Arc::new(empty))?;
        Ok(())
    }

    async fn table_rows(&self, table: &str) -> SltResult<RecordBatch> {
        let df = self.scratch.table(table).await?;
        let schema = Arc::new(df.schema().as_arrow().clone());
        Ok(concat_batches(&schema, &df.collect().await?)?)
    }

    /// A new directory holding the SQL so far and the reference tables' rows.
    fn fresh_dir(&mut self) -> SltResult<PathBuf> {
        self.runs += 1;
        let dir = self.root.path().join(format!("run-{}", self.runs));
        std::fs::create_dir_all(dir.join("sql"))?;
        let text: String = self.ddl.iter().map(|s| format!("{s};\n")).collect();
        std::fs::write(dir.join("sql/pipeline.sql"), text)?;
        Ok(dir)
    }

    async fn catalog(&self, dir: &Path, config: datafusion::prelude::SessionConfig) -> SltResult<Catalog> {
        let mut bindings = std::collections::HashMap::new();
        for table in &self.references {
            let path = dir.join(format!("{table}.parquet"));
            write_parquet(&path, &self.table_rows(table).await?)?;
            bindings.insert(table.clone(), path.to_string_lossy().into_owned());
        }
        Ok(Catalog::load(&[dir.join("sql")], config, &bindings).await?)
    }

    async fn query(&mut self, sql: &str) -> SltResult<DBOutput<DefaultColumnType>> {
        let views = match self.mode {
            Mode::Batch => self.batch_results().await?,
            mode => self.streamed_results(mode).await?,
        };
        // With information_schema, a script can check the views' column names too.
        let ctx = SessionContext::new_with_config(datafusion::prelude::SessionConfig::new().with_information_schema(true));
        for (name, rows) in views {
            ctx.register_table(name.as_str(), Arc::new(MemTable::try_new(rows.schema(), vec![vec![rows]])?))?;
        }
        let df = ctx.sql(sql).await?;
        let schema = Arc::new(df.schema().as_arrow().clone());
        let result = concat_batches(&schema, &df.collect().await?)?;
        Ok(DBOutput::Rows { types: schema.fields().iter().map(|f| column_type(f.data_type())).collect(), rows: text_rows(&result)? })
    }

    async fn batch_results(&mut self) -> SltResult<BTreeMap<String, RecordBatch>> {
        let dir = self.fresh_dir()?;
        let catalog = self.catalog(&dir, batch_session_config()).await?;
        let mut tables = Vec::new();
        for stream in catalog.streams() {
            let batches = self.micro_batches(stream, Mode::AsGiven)?;
            tables.push(BatchStream::new(stream, batches.into_iter().map(|m| (m.batch, m.deleted)))?);
        }
        Ok(last_row_per_key(compute_views(&catalog, tables).await?))
    }

    async fn streamed_results(&mut self, mode: Mode) -> SltResult<BTreeMap<String, RecordBatch>> {
        let dir = self.fresh_dir()?;
        let mut store = EmbeddedStore::new(dir.join("store"));
        let (_stop, shutdown) = tokio::sync::watch::channel(false);
        let runs: Vec<(Stop, RunOptions)> = match mode {
            Mode::Restart => vec![
                (Stop::Half, drain_options()),
                // Dies before its first checkpoint: the changes it made stay in the sink.
                (Stop::CrashAtEnd, RunOptions { checkpoint_interval: Duration::from_secs(3600), ..drain_options() }),
                (Stop::End, drain_options()),
            ],
            _ => vec![(Stop::End, drain_options())],
        };
        let mut infos = Vec::new();
        for (stop, options) in runs {
            let catalog = self.catalog(&dir, incremental_session_config()).await?;
            let mut sources: Vec<Box<dyn Source>> = Vec::new();
            for stream in catalog.streams() {
                sources.push(ScriptedSource::boxed(stream, self.micro_batches(stream, mode)?, stop));
            }
            let mut pipeline = Pipeline::compile(catalog, dir.join("state")).await?;
            infos = pipeline.view_infos();
            let outcome = pipeline.run(sources, &mut store, &options, shutdown.clone(), &mut |_| {}).await;
            match (stop, outcome) {
                // The changes it applied stay in the sink, as a database would keep them.
                (Stop::CrashAtEnd, Err(e)) if e.to_string().contains(CRASH) => store.flush(&CheckpointMeta::default()).await?,
                (Stop::Half | Stop::End, Ok(_)) => {}
                (Stop::CrashAtEnd, Ok(_)) => return Err(SltError("the run meant to crash finished".into())),
                (_, Err(error)) => return Err(error.into()),
            }
        }
        let mut views = BTreeMap::new();
        for view in infos {
            let rows = store.rows(&view.name).transpose()?.unwrap_or_else(|| RecordBatch::new_empty(view.schema.clone()));
            views.insert(view.name, rows);
        }
        Ok(views)
    }

    /// The stream's records as micro-batches with metadata (`_offset` counts the stream's
    /// records; `_timestamp` is one second per record after a fixed instant).
    fn micro_batches(&self, stream: &StreamDecl, mode: Mode) -> SltResult<Vec<MicroBatch>> {
        let mut next_offset = 0i64;
        let mut batches = Vec::new();
        let payload_schema = match changelog_key(stream) {
            Some(key) => trendflow_formats::changes_schema(&stream.payload_schema, key),
            None => stream.payload_schema.clone(),
        };
        for (_, payload, deletes) in self.inserts.iter().filter(|(name, _, _)| *name == stream.name) {
            let columns = payload.columns().iter().zip(payload_schema.fields()).map(|(c, f)| cast(c, f.data_type()));
            let payload = RecordBatch::try_new(payload_schema.clone(), columns.collect::<Result<_, _>>()?)?;
            let slices: Vec<RecordBatch> = match mode {
                Mode::OneRecordPerBatch => (0..payload.num_rows()).map(|i| payload.slice(i, 1)).collect(),
                _ => vec![payload],
            };
            for slice in slices {
                let offsets: Vec<i64> = (next_offset..next_offset + slice.num_rows() as i64).collect();
                next_offset += slice.num_rows() as i64;
                let origin = RecordOrigin {
                    partitions: vec![0; slice.num_rows()],
                    timestamps: offsets.iter().map(|o| 1_700_000_000_000 + o * 1000).collect(),
                    offsets,
                    keys: None,
                };
                let deleted = vec![*deletes; slice.num_rows()];
                batches.push(MicroBatch::new(with_metadata(stream, &slice, origin)?, &deleted, Offsets::new(), 0));
            }
        }
        Ok(batches)
    }
}

fn write_parquet(path: &Path, rows: &RecordBatch) -> SltResult<()> {
    let file = std::fs::File::create(path)?;
    let mut writer = datafusion::parquet::arrow::ArrowWriter::try_new(file, rows.schema(), None)?;
    writer.write(rows)?;
    writer.close()?;
    Ok(())
}

fn column_type(data_type: &DataType) -> DefaultColumnType {
    match data_type {
        t if t.is_integer() => DefaultColumnType::Integer,
        t if t.is_floating() || matches!(t, DataType::Decimal128(..)) => DefaultColumnType::FloatingPoint,
        _ => DefaultColumnType::Text,
    }
}

/// Cells as text: floats with at most 9 decimals (sums depend on the order of addition),
/// `NULL`, and `(empty)` for the empty string.
fn text_rows(batch: &RecordBatch) -> SltResult<Vec<Vec<String>>> {
    let options = FormatOptions::default().with_null("NULL");
    let formatters: Vec<ArrayFormatter<'_>> =
        batch.columns().iter().map(|c| ArrayFormatter::try_new(c.as_ref(), &options)).collect::<Result<_, _>>()?;
    let float = |column: &dyn Array, row: usize| -> Option<f64> {
        if column.is_null(row) {
            return None;
        }
        let any = column.as_any();
        any.downcast_ref::<Float64Array>().map(|a| a.value(row)).or_else(|| any.downcast_ref::<Float32Array>().map(|a| f64::from(a.value(row))))
    };
    Ok((0..batch.num_rows())
        .map(|row| {
            batch
                .columns()
                .iter()
                .zip(&formatters)
                .map(|(column, formatter)| match float(column.as_ref(), row) {
                    Some(value) => format_float(value),
                    None => match formatter.value(row).to_string() {
                        text if text.is_empty() => "(empty)".to_string(),
                        text => text,
                    },
                })
                .collect()
        })
        .collect())
}

fn format_float(value: f64) -> String {
    let text = format!("{value:.9}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text == "-0" {
        "0".to_string()
    } else {
        text.to_string()
    }
}

/// The error of the run [`Mode::Restart`] crashes on purpose.
const CRASH: &str = "crash before the checkpoint";

/// Where a [`ScriptedSource`] stops.
#[derive(Debug, Clone, Copy)]
enum Stop {
    /// After the first half (rounded up) of its micro-batches, finished.
    Half,
    /// After its last micro-batch, with an error, as a crash would.
    CrashAtEnd,
    /// After its last micro-batch, finished.
    End,
}

/// Serves a script's micro-batches of one stream; its position is the number served.
struct ScriptedSource {
    stream: String,
    batches: Vec<MicroBatch>,
    position: usize,
    stop: Stop,
}

impl ScriptedSource {
    fn boxed(stream: &StreamDecl, batches: Vec<MicroBatch>, stop: Stop) -> Box<dyn Source> {
        Box::new(Self { stream: stream.name.clone(), batches, position: 0, stop })
    }

    fn end(&self) -> usize {
        match self.stop {
            Stop::Half => self.batches.len().div_ceil(2),
            Stop::CrashAtEnd | Stop::End => self.batches.len(),
        }
    }
}

#[async_trait]
impl Source for ScriptedSource {
    fn stream(&self) -> &str {
        &self.stream
    }

    async fn poll(&mut self, _max_rows: usize, _max_delay: Duration) -> trendflow_engine::Result<Poll> {
        if self.position >= self.end() {
            return match self.stop {
                Stop::CrashAtEnd => Err(EngineError::Source { source_name: self.stream.clone(), cause: CRASH.into() }),
                Stop::Half | Stop::End => Ok(Poll::Finished),
            };
        }
        self.position += 1;
        Ok(Poll::Batch(MicroBatch { offsets: Offsets::from([(0, self.position as i64)]), ..self.batches[self.position - 1].clone() }))
    }

    async fn seek(&mut self, offsets: &Offsets) -> trendflow_engine::Result<()> {
        self.position = offsets.get(&0).copied().unwrap_or(0) as usize;
        Ok(())
    }
}

/// A file's run in one mode.
struct SltDb(Script);

#[async_trait]
impl sqllogictest::AsyncDB for SltDb {
    type Error = SltError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> SltResult<DBOutput<DefaultColumnType>> {
        self.0.execute(sql).await
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "trendflow"
    }

    async fn sleep(duration: Duration) {
        tokio::time::sleep(duration).await;
    }
}

fn slt_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("tests/slt"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "slt"))
        .collect();
    files.sort();
    files
}

async fn run_file(file: PathBuf, mode: Mode) -> Result<(), String> {
    let mut runner = sqllogictest::Runner::new(move || async move { Ok(SltDb(Script::new(mode))) });
    runner.with_column_validator(sqllogictest::strict_column_validator);
    runner.add_label(mode.label());
    runner.add_label(if matches!(mode, Mode::Batch) { "batch" } else { "streamed" });
    runner.run_file_async(&file).await.map_err(|e| format!("{} ({}):\n{}", file.display(), mode.label(), e.display(false)))
}

/// Rewrites the expected rows of `file` from its batch run (plain DataFusion over the
/// whole input): how a new case is written. Review what it wrote before committing it.
async fn complete_file(file: &Path) {
    let mut runner = sqllogictest::Runner::new(|| async { Ok(SltDb(Script::new(Mode::Batch))) });
    runner.add_label("batch");
    let validator = sqllogictest::default_validator;
    let result = runner.update_test_file(file, " ", validator, sqllogictest::default_normalizer, sqllogictest::default_column_validator).await;
    result.unwrap_or_else(|e| panic!("completing {}: {e}", file.display()));
}

/// Every `.slt` file, in every mode; all failures are reported together. With
/// `TRENDFLOW_SLT_COMPLETE=1`, first writes each file's expected rows from its batch run
/// (`=NAME`: only the files whose name contains NAME).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_slt_file_streamed_and_in_batch() {
    let files = slt_files();
    if let Ok(only) = std::env::var("TRENDFLOW_SLT_COMPLETE") {
        for file in files.iter().filter(|f| only == "1" || f.to_string_lossy().contains(&only)) {
            complete_file(file).await;
        }
    }
    let runs: Vec<_> = files.iter().flat_map(|f| Mode::ALL.map(|mode| tokio::spawn(run_file(f.clone(), mode)))).collect();
    let mut failures = Vec::new();
    for run in runs {
        if let Err(failure) = run.await.unwrap() {
            failures.push(failure);
        }
    }
    assert!(failures.is_empty(), "{} of {} runs failed:\n\n{}", failures.len(), files.len() * 4, failures.join("\n\n"));
    assert!(files.len() >= 30, "the suite has {} files, fewer than the 30 it should", files.len());
}
