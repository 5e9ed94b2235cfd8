//! Loading the SQL files of a pipeline: sources, reference tables and views.
//!
//! Statements go through DataFusion's own parser and DDL handling: streams are
//! created by [`StreamTableFactory`], reference tables by DataFusion's listing
//! tables (then snapshotted into memory), views by `CREATE VIEW`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::catalog::TableProvider;
use datafusion::datasource::MemTable;
use datafusion::execution::SessionStateBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::parser::{CreateExternalTable, Statement};
use datafusion::sql::sqlparser::ast::Statement as SqlStatement;
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer, Whitespace};

use crate::contract::{StreamDecl, ViewInfo};
use crate::error::{EngineError, Result};
use crate::stream_table::{StreamRegistry, StreamTableFactory, STREAM_FILE_TYPE};

/// One statement of a SQL file, with where it starts.
#[derive(Debug, Clone)]
pub struct SqlStatementText {
    /// The file it came from.
    pub file: PathBuf,
    /// 1-based line of its first token.
    pub line: usize,
    /// Its text, without the closing semicolon.
    pub text: String,
}

/// A continuous view declared by `CREATE VIEW name AS SELECT …`.
#[derive(Debug, Clone)]
pub struct ViewDef {
    /// View name.
    pub name: String,
    /// Where it was declared.
    pub origin: SqlStatementText,
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
    streams: Vec<StreamDecl>,
    references: Vec<ReferenceDef>,
    views: Vec<ViewDef>,
}

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

/// A session that understands `STORED AS KAFKA`, recording streams into `registry`.
pub fn new_session(config: SessionConfig, registry: StreamRegistry) -> SessionContext {
    let state = SessionStateBuilder::new()
        .with_default_features()
        .with_config(config)
        .with_table_factory(STREAM_FILE_TYPE.to_string(), Arc::new(StreamTableFactory::new(registry)))
        .build();
    SessionContext::new_with_state(state)
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
        let mut catalog = Catalog { ctx, streams: Vec::new(), references: Vec::new(), views: Vec::new() };
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
        let mut catalog = Catalog { ctx, streams: Vec::new(), references: Vec::new(), views: Vec::new() };
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
            let key = crate::key::view_key(df.logical_plan(), &self.streams).ok_or_else(|| EngineError::Unsupported {
                file: view.origin.file.clone(),
                line: view.origin.line,
                view: view.name.clone(),
                construct: "it has no key: select every GROUP BY column, or the stream's PRIMARY KEY".into(),
            })?;
            infos.push(ViewInfo { name: view.name.clone(), schema: Arc::new(df.schema().as_arrow().clone()), key });
        }
        Ok(infos)
    }

    /// Declared views, in declaration order.
    pub fn views(&self) -> &[ViewDef] {
        &self.views
    }

    /// Replaces stream tables by other tables (whole files, for a batch run) and
    /// re-plans every view over them.
    pub async fn replace_streams(&self, tables: Vec<(String, Arc<dyn TableProvider>)>) -> Result<()> {
        for (name, table) in tables {
            self.ctx.deregister_table(name.as_str())?;
            self.ctx.register_table(name.as_str(), table)?;
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
                self.run(Statement::Statement(inner)).await.map_err(sql_error)?;
                self.views.push(ViewDef { name, origin: stmt });
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
    async fn snapshot_reference(&self, name: &str) -> datafusion::error::Result<usize> {
        let df = self.ctx.table(name).await?;
        let schema = Arc::new(df.schema().as_arrow().clone());
        let batches = df.collect().await?;
        let rows = batches.iter().map(|b| b.num_rows()).sum();
        let table = MemTable::try_new(schema, vec![batches])?;
        self.ctx.deregister_table(name)?;
        self.ctx.register_table(name, Arc::new(table))?;
        Ok(rows)
    }
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

/// File formats a table can be bound to, known by extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    /// Comma-separated values with a header line.
    Csv,
    /// One JSON object per line (`.json`, `.ndjson`, `.jsonl`).
    NdJson,
    /// Apache Parquet.
    Parquet,
}

impl FileFormat {
    /// The format a path's extension names; CSV when unknown.
    pub fn from_path(path: &str) -> Self {
        let lower = path.to_ascii_lowercase();
        if lower.ends_with(".parquet") {
            Self::Parquet
        } else if lower.ends_with(".json") || lower.ends_with(".ndjson") || lower.ends_with(".jsonl") {
            Self::NdJson
        } else {
            Self::Csv
        }
    }

    /// The `STORED AS` name DataFusion uses for the format.
    pub fn stored_as(self) -> &'static str {
        match self {
            Self::Csv => "CSV",
            Self::NdJson => "JSON",
            Self::Parquet => "PARQUET",
        }
    }
}

/// Rewrites the parser's statement-relative `Line: N, Column: C` as file positions.
fn file_positions(message: &str, first_line: usize) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find("Line: ") {
        out.push_str(&rest[..at]);
        let digits: String = rest[at + 6..].chars().take_while(char::is_ascii_digit).collect();
        match digits.parse::<usize>() {
            Ok(n) => out.push_str(&format!("file line {}", first_line + n - 1)),
            Err(_) => out.push_str("Line: "),
        }
        rest = &rest[at + 6 + digits.len()..];
    }
    out.push_str(rest);
    out
}

fn first_words(sql: &str) -> String {
    sql.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

/// The `.sql` files named by `paths`; directories contribute their `*.sql` files in name order.
pub fn sql_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for path in paths {
        let io_error = |e: std::io::Error| EngineError::Sql {
            file: path.clone(),
            line: 0,
            message: format!("cannot read the SQL ({e}); run from the repository root or pass --sql PATH"),
        };
        if path.is_dir() {
            let mut in_dir: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(io_error)?
                .filter_map(|entry| entry.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|ext| ext == "sql"))
                .collect();
            in_dir.sort();
            files.extend(in_dir);
        } else {
            std::fs::metadata(path).map_err(io_error)?;
            files.push(path.clone());
        }
    }
    if files.is_empty() {
        let shown = paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ");
        return Err(EngineError::Sql { file: shown.into(), line: 0, message: "no .sql files found".into() });
    }
    Ok(files)
}

/// Splits a SQL file into statements, remembering the line each starts on.
///
/// Uses DataFusion's tokenizer, so semicolons inside strings and comments do not split.
pub fn split_statements(file: &Path) -> Result<Vec<SqlStatementText>> {
    let sql = std::fs::read_to_string(file).map_err(|e| EngineError::Sql { file: file.to_path_buf(), line: 0, message: e.to_string() })?;
    split_sql(&sql, file)
}

fn split_sql(sql: &str, file: &Path) -> Result<Vec<SqlStatementText>> {
    let tokens = Tokenizer::new(&GenericDialect {}, sql).tokenize_with_location().map_err(|e| EngineError::Sql {
        file: file.to_path_buf(),
        line: e.location.line as usize,
        message: e.message.clone(),
    })?;
    let mut statements = Vec::new();
    let mut text = String::new();
    let mut line = None;
    for token in tokens {
        match &token.token {
            Token::SemiColon | Token::EOF => {
                if let Some(line) = line.take() {
                    statements.push(SqlStatementText { file: file.to_path_buf(), line, text: std::mem::take(&mut text) });
                }
                text.clear();
            }
            Token::Whitespace(Whitespace::SingleLineComment { .. } | Whitespace::MultiLineComment(_)) => {
                // Comments are dropped so that a trailing comment cannot swallow the next line.
                text.push(' ');
            }
            // Text starts at the statement's first token, so the parser's "Line: N" is
            // line N of the statement, i.e. file line `line + N - 1`.
            Token::Whitespace(_) if line.is_none() => {}
            other => {
                if line.is_none() {
                    line = Some(token.span.start.line as usize);
                }
                text.push_str(&other.to_string());
            }
        }
    }
    Ok(statements)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_on_semicolons_outside_strings_and_comments() {
        let sql = "-- header; comment\nCREATE VIEW a AS SELECT ';' AS x;\n\n/* ; */ CREATE VIEW b AS\n SELECT 1;";
        let statements = split_sql(sql, Path::new("t.sql")).unwrap();
        assert_eq!(statements.len(), 2);
        assert_eq!(statements[0].line, 2);
        assert!(statements[0].text.contains("';'"));
        assert_eq!(statements[1].line, 4);
        assert!(statements[1].text.trim().starts_with("CREATE VIEW b"));
    }

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

    #[test]
    fn file_format_follows_extension() {
        assert_eq!(FileFormat::from_path("x/products.PARQUET"), FileFormat::Parquet);
        assert_eq!(FileFormat::from_path("p.ndjson"), FileFormat::NdJson);
        assert_eq!(FileFormat::from_path("p.csv"), FileFormat::Csv);
    }
}
