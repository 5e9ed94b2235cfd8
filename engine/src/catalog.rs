//! Loading the SQL files of a pipeline: sources, reference tables and views.
//!
//! Statements go through DataFusion's own parser and DDL handling: streams are
//! created by [`StreamTableFactory`], reference tables by DataFusion's listing
//! tables (then snapshotted into memory), views by `CREATE VIEW`.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::display::array_value_to_string;
use datafusion::catalog::TableProvider;
use datafusion::common::{Constraint, Constraints};
use datafusion::datasource::MemTable;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::parser::{CreateExternalTable, Statement};
use datafusion::sql::sqlparser::ast::Statement as SqlStatement;

use crate::contract::{StreamDecl, ViewInfo};
use crate::error::{EngineError, Result};
use crate::file_format::FileFormat;
use crate::keyed::RowEncoder;
use crate::session::{batch_session_config, new_session};
use crate::sql_file::{file_positions, split_statements, sql_files, Emit, SqlStatementText};
use crate::stream_table::{StreamRegistry, STREAM_FILE_TYPE};
use crate::window::WindowSpec;

/// A continuous view declared by `CREATE VIEW name AS SELECT …`.
#[derive(Debug, Clone)]
pub struct ViewDef {
    /// View name.
    pub name: String,
    /// Where it was declared.
    pub origin: SqlStatementText,
    /// When it emits its rows (`EMIT ON UPDATE`, the default, or `EMIT ON WINDOW CLOSE`).
    pub emit: Emit,
    /// The windows (`TUMBLE`, `HOP`) its query reads.
    pub windows: Vec<WindowSpec>,
}

/// A reference table declared by `CREATE EXTERNAL TABLE … STORED AS CSV|PARQUET|JSON`.
#[derive(Debug, Clone)]
pub struct ReferenceDef {
    /// Table name.
    pub name: String,
    /// The location it was loaded from (after re-binding).
    pub location: String,
    /// Rows loaded.
    pub rows: usize,
}

/// Everything the SQL files declared, planned in one DataFusion session.
pub struct Catalog {
    ctx: SessionContext,
    registry: StreamRegistry,
    streams: Vec<StreamDecl>,
    references: Vec<ReferenceDef>,
    views: Vec<ViewDef>,
}

/// The session has no `Debug`; what was declared is what a reader needs.
impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let streams: Vec<&str> = self.streams.iter().map(|s| s.name.as_str()).collect();
        f.debug_struct("Catalog").field("streams", &streams).field("references", &self.references).field("views", &self.views).finish_non_exhaustive()
    }
}

/// Whether a statement's text declares a stream (`… STORED AS KAFKA …`).
fn is_stream_declaration(text: &str) -> bool {
    let words: Vec<String> = text.split_whitespace().map(str::to_ascii_uppercase).collect();
    words.windows(3).any(|w| w[0] == "STORED" && w[1] == "AS" && w[2] == STREAM_FILE_TYPE)
}

impl Catalog {
    /// Loads SQL files (a directory means every `*.sql` in it, in name order).
    ///
    /// `bindings` maps table names to files: a reference table named there is loaded
    /// from that file instead of its `LOCATION` (`--source categories=file:other.csv`);
    /// streams named there are left to the connectors. Any other name is an error.
    pub async fn load(paths: &[PathBuf], config: SessionConfig, bindings: &HashMap<String, String>) -> Result<Self> {
        let registry = StreamRegistry::default();
        let ctx = new_session(config, registry.clone());
        let mut statements = Vec::new();
        for file in sql_files(paths)? {
            statements.extend(split_statements(&file)?);
        }
        check_binding_names(&ctx, &statements, bindings)?;
        let mut catalog = Catalog { ctx, registry: registry.clone(), streams: Vec::new(), references: Vec::new(), views: Vec::new() };
        for statement in statements {
            catalog.execute(statement, bindings).await?;
        }
        catalog.streams = registry.streams();
        Ok(catalog)
    }

    /// Only the streams the SQL files declare, without loading reference tables or
    /// planning views: what producers (ingest, replay) need to validate records.
    pub async fn load_streams(paths: &[PathBuf]) -> Result<Vec<StreamDecl>> {
        let registry = StreamRegistry::default();
        let ctx = new_session(batch_session_config(), registry.clone());
        let mut catalog = Catalog { ctx, registry: registry.clone(), streams: Vec::new(), references: Vec::new(), views: Vec::new() };
        for file in sql_files(paths)? {
            for statement in split_statements(&file)? {
                if is_stream_declaration(&statement.text) {
                    catalog.execute(statement, &HashMap::new()).await?;
                }
            }
        }
        Ok(registry.streams())
    }

    /// The session every table and view is registered in.
    pub fn session(&self) -> &SessionContext {
        &self.ctx
    }

    /// Declared streams, in declaration order.
    pub fn streams(&self) -> &[StreamDecl] {
        &self.streams
    }

    /// Declared reference tables.
    pub fn references(&self) -> &[ReferenceDef] {
        &self.references
    }

    /// Name, schema and key of every view, from its logical plan (without compiling it).
    pub async fn view_infos(&self) -> Result<Vec<ViewInfo>> {
        let mut infos = Vec::new();
        for view in &self.views {
            let df = self.ctx.table(view.name.as_str()).await?;
            let key = crate::key::require_view_key(df.logical_plan(), &self.streams).map_err(|construct| EngineError::Unsupported {
                file: view.origin.file.clone(),
                line: view.origin.line,
                view: view.name.clone(),
                construct,
            })?;
            infos.push(ViewInfo { name: view.name.clone(), schema: Arc::new(df.schema().as_arrow().clone()), key });
        }
        Ok(infos)
    }

    /// Declared views, in declaration order.
    pub fn views(&self) -> &[ViewDef] {
        &self.views
    }

    /// Replaces stream tables by other tables (whole files, for a batch run), and what
    /// windows read of them by `events` (stream name → its on-time records; a stream left
    /// out keeps its events slot, empty outside a micro-batch), and re-plans every view.
    pub async fn replace_streams(&self, tables: Vec<(String, Arc<dyn TableProvider>)>, events: Vec<(String, Arc<dyn TableProvider>)>) -> Result<()> {
        for (name, table) in tables {
            self.ctx.deregister_table(name.as_str())?;
            self.ctx.register_table(name.as_str(), table)?;
        }
        for (name, table) in events {
            self.registry.replace_events(&name, table);
        }
        for view in &self.views {
            let origin = &view.origin;
            let sql_error = |message: String| EngineError::Sql { file: origin.file.clone(), line: origin.line, message };
            let parsed =
                self.ctx.state().sql_to_statement(&origin.text, &datafusion::config::Dialect::Generic).map_err(|e| sql_error(e.to_string()))?;
            let Statement::Statement(mut inner) = parsed else { unreachable!("views were parsed at load") };
            if let SqlStatement::CreateView(create) = inner.as_mut() {
                create.or_replace = true;
            }
            self.run(Statement::Statement(inner)).await.map_err(sql_error)?;
        }
        Ok(())
    }

    async fn execute(&mut self, stmt: SqlStatementText, overrides: &HashMap<String, String>) -> Result<()> {
        let sql_error = |message: String| EngineError::Sql { file: stmt.file.clone(), line: stmt.line, message: file_positions(&message, stmt.line) };
        let state = self.ctx.state();
        let parsed = state.sql_to_statement(&stmt.text, &datafusion::config::Dialect::Generic).map_err(|e| sql_error(e.to_string()))?;
        let is_view = matches!(&parsed, Statement::Statement(inner) if matches!(inner.as_ref(), SqlStatement::CreateView(_)));
        if stmt.emit.is_some() && !is_view {
            return Err(sql_error("an EMIT clause ends a CREATE VIEW (… GROUP BY … EMIT ON WINDOW CLOSE), not another statement".into()));
        }
        match parsed {
            Statement::CreateExternalTable(cmd) if cmd.file_type.eq_ignore_ascii_case(STREAM_FILE_TYPE) => {
                self.run(Statement::CreateExternalTable(cmd)).await.map_err(sql_error)
            }
            Statement::CreateExternalTable(mut cmd) => {
                let name = cmd.name.to_string();
                rebind_reference(&mut cmd, overrides.get(&name), &stmt.file);
                let location = cmd.locations.join(", ");
                if let Some(missing) = cmd.locations.iter().find(|l| !l.contains("://") && !Path::new(l.as_str()).exists()) {
                    return Err(sql_error(format!(
                        "reference table `{name}`: {missing} does not exist; bind another file with --source {name}=file:PATH"
                    )));
                }
                self.run(Statement::CreateExternalTable(cmd)).await.map_err(&sql_error)?;
                let rows = self
                    .snapshot_reference(&name)
                    .await
                    .map_err(|e| sql_error(format!("cannot load reference table `{name}` from {location}: {e}")))?;
                self.references.push(ReferenceDef { name, location, rows });
                Ok(())
            }
            Statement::Statement(inner) if matches!(inner.as_ref(), SqlStatement::CreateView(_)) => {
                let SqlStatement::CreateView(view) = inner.as_ref() else { unreachable!() };
                let name = view.name.to_string();
                self.registry.take_windows();
                self.run(Statement::Statement(inner)).await.map_err(sql_error)?;
                let (emit, windows) = (stmt.emit.unwrap_or_default(), self.registry.take_windows());
                self.views.push(ViewDef { name, origin: stmt, emit, windows });
                Ok(())
            }
            other => Err(sql_error(format!(
                "unsupported statement `{}`: a pipeline file holds only CREATE EXTERNAL TABLE and CREATE VIEW",
                first_words(&other.to_string())
            ))),
        }
    }

    async fn run(&self, statement: Statement) -> std::result::Result<(), String> {
        let state = self.ctx.state();
        let plan = state.statement_to_plan(statement).await.map_err(|e| e.to_string())?;
        self.ctx.execute_logical_plan(plan).await.map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Replaces a file-backed table by an in-memory copy: reference tables are read once.
    /// A declared PRIMARY KEY is checked against the rows, and kept as the copy's
    /// constraint: a join on it meets each row at most once, which keeps a view's key.
    async fn snapshot_reference(&self, name: &str) -> std::result::Result<usize, String> {
        let df = self.ctx.table(name).await.map_err(|e| e.to_string())?;
        let constraints = self.ctx.table_provider(name).await.map_err(|e| e.to_string())?.constraints().cloned().unwrap_or_default();
        let schema = Arc::new(df.schema().as_arrow().clone());
        let batches = df.collect().await.map_err(|e| e.to_string())?;
        let rows = batches.iter().map(|b| b.num_rows()).sum();
        // Only the checked key is kept: DataFusion would trust any constraint it is given.
        let key = primary_key(&constraints);
        if let Some(columns) = &key {
            check_unique(&schema, &batches, columns)?;
        }
        let checked = Constraints::new_unverified(key.map(Constraint::PrimaryKey).into_iter().collect());
        let table = MemTable::try_new(schema, vec![batches]).map_err(|e| e.to_string())?.with_constraints(checked);
        self.ctx.deregister_table(name).map_err(|e| e.to_string())?;
        self.ctx.register_table(name, Arc::new(table)).map_err(|e| e.to_string())?;
        Ok(rows)
    }
}

/// The PRIMARY KEY columns among `constraints`.
pub(crate) fn primary_key(constraints: &Constraints) -> Option<Vec<usize>> {
    constraints.iter().find_map(|c| match c {
        Constraint::PrimaryKey(columns) => Some(columns.clone()),
        Constraint::Unique(_) => None,
    })
}

/// Refuses rows of a reference table whose PRIMARY KEY `columns` are null or repeat,
/// naming the first such key.
fn check_unique(schema: &SchemaRef, batches: &[RecordBatch], columns: &[usize]) -> std::result::Result<(), String> {
    let names: Vec<&str> = columns.iter().map(|&c| schema.field(c).name().as_str()).collect();
    let key_text = |batch: &RecordBatch, row: usize| {
        let values = columns.iter().map(|&c| array_value_to_string(batch.column(c), row).unwrap_or_default());
        values.collect::<Vec<_>>().join(", ")
    };
    let encoder = RowEncoder::new(schema, columns.to_vec()).map_err(|e| e.to_string())?;
    let mut seen = HashSet::new();
    for batch in batches {
        let keys = encoder.encode(batch).map_err(|e| e.to_string())?;
        for row in 0..batch.num_rows() {
            if columns.iter().any(|&c| batch.column(c).is_null(row)) {
                return Err(format!("its PRIMARY KEY ({}) is null in a row", names.join(", ")));
            }
            if !seen.insert(keys.get(row).to_vec()) {
                return Err(format!(
                    "its PRIMARY KEY ({}) repeats ({}): a reference table's key must be unique; drop the PRIMARY KEY or the duplicates",
                    names.join(", "),
                    key_text(batch, row)
                ));
            }
        }
    }
    Ok(())
}

/// Names of the tables (streams and reference tables) that `paths` declare, read
/// without loading anything. Statements that do not parse are skipped here; loading
/// reports them.
pub fn declared_tables(paths: &[PathBuf]) -> Result<Vec<String>> {
    let mut statements = Vec::new();
    for file in sql_files(paths)? {
        statements.extend(split_statements(&file)?);
    }
    Ok(declared_in(&SessionContext::new(), &statements))
}

fn declared_in(ctx: &SessionContext, statements: &[SqlStatementText]) -> Vec<String> {
    let state = ctx.state();
    statements
        .iter()
        .filter_map(|stmt| match state.sql_to_statement(&stmt.text, &datafusion::config::Dialect::Generic) {
            Ok(Statement::CreateExternalTable(cmd)) => Some(cmd.name.to_string()),
            _ => None,
        })
        .collect()
}

/// Refuses bindings of tables no statement declares, before anything is loaded (so a
/// typo is reported as such, not as a side effect of the table it failed to re-bind).
fn check_binding_names(ctx: &SessionContext, statements: &[SqlStatementText], bindings: &HashMap<String, String>) -> Result<()> {
    let declared = declared_in(ctx, statements);
    match bindings.keys().find(|name| !declared.contains(name)) {
        None => Ok(()),
        Some(name) => Err(EngineError::Binding {
            binding: name.clone(),
            message: format!("no table `{name}` is declared in the SQL files (declared: {})", declared.join(", ")),
        }),
    }
}

/// Points a reference table at `override_location` (format from its extension), or
/// resolves a relative `LOCATION` against the SQL file's directory.
fn rebind_reference(cmd: &mut CreateExternalTable, override_location: Option<&String>, sql_file: &Path) {
    match override_location {
        Some(location) => {
            let format = FileFormat::from_path(location);
            cmd.locations = vec![location.clone()];
            cmd.file_type = format.stored_as().to_string();
            cmd.options.retain(|(k, _)| !k.starts_with("format."));
            if format == FileFormat::Csv {
                cmd.options.push(("format.has_header".into(), datafusion::sql::sqlparser::ast::Value::Boolean(true)));
            }
        }
        None => {
            let base = sql_file.parent().unwrap_or(Path::new("."));
            for location in &mut cmd.locations {
                if !location.contains("://") && Path::new(location.as_str()).is_relative() {
                    *location = base.join(location.as_str()).to_string_lossy().into_owned();
                }
            }
        }
    }
}

fn first_words(sql: &str) -> String {
    sql.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// DataFusion files undotted OPTIONS keys under `format.`; streams see them as
    /// written, and wrong names or values are refused with the file and line.
    #[tokio::test]
    async fn stream_options_keep_their_sql_names() {
        let dir = tempfile::tempdir().unwrap();
        let sql = "CREATE EXTERNAL TABLE s (a INT) STORED AS KAFKA LOCATION 't' \
                   OPTIONS ('format' 'csv', 'recent_rows' '5', 'Dead_Letter_Topic' 'T.bad', 'format.max_record_bytes' '9');";
        std::fs::write(dir.path().join("s.sql"), sql).unwrap();
        let streams = Catalog::load_streams(&[dir.path().to_path_buf()]).await.unwrap();
        let options = &streams[0].options;
        assert_eq!(options.format, crate::stream_options::StreamFormat::Text(trendflow_formats::RecordFormat::Csv));
        assert_eq!((options.recent_rows, options.dead_letter_topic.as_deref(), options.max_record_bytes), (5, Some("T.bad"), 9));
        for (wrong, message) in [
            (("'5'", "'many'"), "recent_rows `many` is not a number"),
            (("'csv'", "'xml'"), "unknown format `xml`"),
            (("'9'", "'0'"), "max_record_bytes `0` is not a positive number"),
            (("'Dead_Letter_Topic'", "'dead_letters'"), "stream `s`: unknown option `dead_letters` (options: format,"),
            (("'csv'", "'avro'"), "an Avro stream needs its writer schemas"),
            (("'Dead_Letter_Topic' 'T.bad'", "'avro_schema' '{}'"), "are for ('format' 'avro'), not `csv`"),
            (("'csv', 'recent_rows' '5', 'Dead_Letter_Topic' 'T.bad'", "'avro', 'avro_schema' '{\"type\": \"rec'"), "avro_schema: "),
            (("'csv', 'recent_rows' '5', 'Dead_Letter_Topic' 'T.bad'", "'avro', 'schema_registry_url' 'https://k:pw@r'"), "https is not supported"),
        ] {
            std::fs::write(dir.path().join("s.sql"), sql.replace(wrong.0, wrong.1)).unwrap();
            let error = Catalog::load_streams(&[dir.path().to_path_buf()]).await.unwrap_err().to_string();
            assert!(error.contains(message) && error.contains("s.sql:1"), "{error}");
        }
    }
}
