//! The Flight SQL service: metadata calls BI clients browse with, statements and
//! prepared statements, all read-only, streamed, and bounded per query.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::sql::metadata::{SqlInfoData, SqlInfoDataBuilder, XdbcTypeInfo, XdbcTypeInfoData, XdbcTypeInfoDataBuilder};
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest, ActionCreatePreparedStatementResult, CommandGetCatalogs,
    CommandGetCrossReference, CommandGetDbSchemas, CommandGetExportedKeys, CommandGetImportedKeys, CommandGetPrimaryKeys, CommandGetSqlInfo,
    CommandGetTableTypes, CommandGetTables, CommandGetXdbcTypeInfo, CommandPreparedStatementQuery, CommandPreparedStatementUpdate,
    CommandStatementQuery, CommandStatementUpdate, DoPutPreparedStatementResult, Nullable, ProstMessageExt, Searchable, SqlInfo, SqlNullOrdering,
    SqlOuterJoinsSupportLevel, SqlSupportedCaseSensitivity, SqlSupportedGroupBy, SqlSupportedResultSetType, SqlSupportedSubqueries,
    SqlSupportedTransaction, SqlSupportedUnions, SqlSupportsConvert, SqlTransactionIsolationLevel, SupportedSqlGrammar, TicketStatementQuery,
    XdbcDataType,
};
use arrow_flight::utils::batches_to_flight_data;
use arrow_flight::{FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest, HandshakeResponse, IpcMessage, SchemaAsIpc, Ticket};
use datafusion::arrow::array::{Array, ArrayRef, AsArray, Int32Array, MapArray, RecordBatch, StringArray, StructArray, UnionArray};
use datafusion::arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, UnionFields};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::ipc::writer::IpcWriteOptions;
use datafusion::common::{Constraint, ScalarValue};
use datafusion::error::DataFusionError;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::SessionStateBuilder;
use datafusion::prelude::{DataFrame, SQLOptions, SessionContext};
use futures::{Stream, StreamExt, TryStreamExt};
use prost::Message;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::Authenticator;
use crate::session;

/// Bounds on each query, so one client cannot take the server down.
#[derive(Debug, Clone)]
pub struct QueryLimits {
    /// Memory one query may hold (DataFusion memory pool); `None`: unbounded.
    pub memory_bytes: Option<usize>,
    /// Longest a query may take to deliver its last batch, counted from the start of execution.
    pub timeout: Duration,
    /// Queries executing at once; more wait in line, first come first served.
    pub max_concurrent: usize,
    /// Longest a query waits in line for a slot before it is refused with `RESOURCE_EXHAUSTED`.
    pub queue_timeout: Duration,
}

impl Default for QueryLimits {
    fn default() -> Self {
        Self { memory_bytes: Some(512 << 20), timeout: Duration::from_secs(60), max_concurrent: 16, queue_timeout: Duration::from_secs(10) }
    }
}

/// Flight SQL over a DataFusion session holding trendflow's tables.
///
/// Tables are found through the session's catalogs; a table's `PRIMARY KEY`
/// constraint is reported by `GetPrimaryKeys`.
pub struct TrendflowFlightSql {
    ctx: SessionContext,
    auth: Authenticator,
    limits: QueryLimits,
    slots: Arc<Semaphore>,
    prepared: Mutex<HashMap<String, Prepared>>,
    sql_info: SqlInfoData,
    xdbc_info: XdbcTypeInfoData,
}

struct Prepared {
    sql: String,
    params: Option<Vec<ScalarValue>>,
}

type FlightStream = Pin<Box<dyn Stream<Item = Result<arrow_flight::FlightData, Status>> + Send>>;

impl TrendflowFlightSql {
    /// Serves the tables of `ctx`.
    pub fn new(ctx: SessionContext, auth: Authenticator, limits: QueryLimits) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(limits.max_concurrent.max(1))),
            sql_info: sql_info(&ctx),
            ctx,
            auth,
            limits,
            prepared: Mutex::default(),
            xdbc_info: xdbc_info(),
        }
    }

    /// A session sharing the catalog but with this query's memory limit.
    fn query_context(&self) -> Result<SessionContext, Status> {
        let Some(limit) = self.limits.memory_bytes else { return Ok(self.ctx.clone()) };
        let runtime = RuntimeEnvBuilder::from_runtime_env(&self.ctx.runtime_env()).with_memory_limit(limit, 1.0).build_arc().map_err(df_status)?;
        let state = SessionStateBuilder::new_from_existing(self.ctx.state()).with_runtime_env(runtime).build();
        Ok(SessionContext::new_with_state(state))
    }

    async fn plan(&self, sql: &str) -> Result<DataFrame, Status> {
        let sql = number_placeholders(sql);
        let sql = sql.as_str();
        let options = SQLOptions::new().with_allow_ddl(false).with_allow_dml(false).with_allow_statements(false);
        self.query_context()?.sql_with_options(sql, options).await.map_err(|e| match e {
            DataFusionError::Plan(message)
                if ["DDL not supported", "DML not supported", "Statement not supported"].iter().any(|p| message.starts_with(p)) =>
            {
                Status::permission_denied(format!("trendflow's Flight SQL service is read-only ({message})"))
            }
            other => df_status(other),
        })
    }

    /// Streams a planned query under the concurrency and time limits.
    async fn execute(&self, df: DataFrame) -> Result<Response<FlightStream>, Status> {
        // A burst of clients queues (the semaphore is fair) rather than failing at once.
        let waited = tokio::time::timeout(self.limits.queue_timeout, self.slots.clone().acquire_owned()).await;
        let Ok(Ok(permit)) = waited else {
            let (most, wait) = (self.limits.max_concurrent, self.limits.queue_timeout);
            return Err(Status::resource_exhausted(format!(
                "{most} queries are running, the most allowed, and none ended within {wait:?}; retry later"
            )));
        };
        let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
        let deadline = tokio::time::Instant::now() + self.limits.timeout;
        let timeout = self.limits.timeout;
        let stream = df.execute_stream().await.map_err(df_status)?;
        let batches = futures::stream::unfold(Some((stream, permit)), move |state| async move {
            let (mut stream, permit): (_, OwnedSemaphorePermit) = state?;
            match tokio::time::timeout_at(deadline, stream.next()).await {
                Ok(Some(Ok(batch))) => Some((Ok(batch), Some((stream, permit)))),
                Ok(Some(Err(e))) => Some((Err(FlightError::Tonic(Box::new(df_status(e)))), None)),
                Ok(None) => None,
                Err(_) => Some((Err(FlightError::Tonic(Box::new(Status::deadline_exceeded(format!("query exceeded the {timeout:?} limit"))))), None)),
            }
        });
        let flight = FlightDataEncoderBuilder::new().with_schema(schema).build(batches).map_err(Status::from);
        Ok(Response::new(Box::pin(flight)))
    }

    fn single_batch(batch: RecordBatch) -> Result<Response<FlightStream>, Status> {
        let data = batches_to_flight_data(&batch.schema(), vec![batch]).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(Box::pin(futures::stream::iter(data.into_iter().map(Ok)))))
    }

    fn info(&self, schema: &Schema, ticket: Vec<u8>, descriptor: FlightDescriptor) -> Result<Response<FlightInfo>, Status> {
        let endpoint = FlightEndpoint::new().with_ticket(Ticket::new(ticket));
        let info = FlightInfo::new()
            .try_with_schema(schema)
            .map_err(|e| Status::internal(e.to_string()))?
            .with_endpoint(endpoint)
            .with_descriptor(descriptor);
        Ok(Response::new(info))
    }

    /// Every table as (catalog, schema, table, provider).
    async fn tables(&self) -> Result<Vec<(String, String, String, Arc<dyn datafusion::catalog::TableProvider>)>, Status> {
        let mut tables = Vec::new();
        for catalog_name in self.ctx.catalog_names() {
            let Some(catalog) = self.ctx.catalog(&catalog_name) else { continue };
            for schema_name in catalog.schema_names() {
                let Some(schema) = catalog.schema(&schema_name) else { continue };
                for table_name in schema.table_names() {
                    if let Some(table) = schema.table(&table_name).await.map_err(df_status)? {
                        tables.push((catalog_name.clone(), schema_name.clone(), table_name, table));
                    }
                }
            }
        }
        Ok(tables)
    }

    /// The properties a GetSqlInfo asks for (all when it names none).
    fn sql_info_batch(&self, query: CommandGetSqlInfo) -> Result<RecordBatch, Status> {
        let batch = query.into_builder(&self.sql_info).build().map_err(|e| Status::internal(e.to_string()))?;
        with_spec_map_names(batch).map_err(|e| Status::internal(e.to_string()))
    }

    /// The session options every query runs with: the context's default catalog and schema.
    fn session_options(&self) -> HashMap<String, session::SessionOptionValue> {
        let state = self.ctx.state();
        let defaults = &state.config_options().catalog;
        session::current_options(&defaults.default_catalog, &defaults.default_schema)
    }

    fn prepared_sql(&self, handle: &[u8]) -> Result<(String, Option<Vec<ScalarValue>>), Status> {
        let handle = String::from_utf8_lossy(handle).into_owned();
        let prepared = self.prepared.lock().expect("prepared statements lock poisoned");
        let entry = prepared.get(&handle).ok_or_else(|| Status::not_found(format!("no prepared statement `{handle}`")))?;
        Ok((entry.sql.clone(), entry.params.clone()))
    }
}

fn df_status(e: DataFusionError) -> Status {
    match e {
        DataFusionError::ResourcesExhausted(m) => Status::resource_exhausted(format!("query exceeded its memory limit: {m}")),
        DataFusionError::Plan(m) | DataFusionError::SQL(_, Some(m)) => Status::invalid_argument(m),
        DataFusionError::SchemaError(..) | DataFusionError::SQL(..) => Status::invalid_argument(e.to_string()),
        DataFusionError::Diagnostic(_, inner) => df_status(*inner),
        DataFusionError::Context(context, inner) => {
            let status = df_status(*inner);
            Status::new(status.code(), format!("{context}: {}", status.message()))
        }
        other => Status::internal(other.to_string()),
    }
}

/// Rewrites JDBC/ODBC-style `?` parameters as DataFusion's positional `$1, $2, …`.
/// Works on tokens, so a `?` inside a string literal stays as it is.
///
/// ```
/// use trendflow_server::service::number_placeholders;
/// assert_eq!(number_placeholders("SELECT '?' WHERE a = ? AND b = ?"), "SELECT '?' WHERE a = $1 AND b = $2");
/// ```
pub fn number_placeholders(sql: &str) -> String {
    use datafusion::sql::sqlparser::dialect::GenericDialect;
    use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
    if !sql.contains('?') {
        return sql.to_string();
    }
    let Ok(tokens) = Tokenizer::new(&GenericDialect {}, sql).tokenize() else { return sql.to_string() };
    let mut next = 0;
    tokens
        .into_iter()
        .map(|token| match token {
            Token::Placeholder(p) if p == "?" => {
                next += 1;
                format!("${next}")
            }
            other => other.to_string(),
        })
        .collect()
}

fn schema_bytes(schema: &Schema) -> Result<prost::bytes::Bytes, Status> {
    let IpcMessage(bytes) = SchemaAsIpc::new(schema, &IpcWriteOptions::default())
        .try_into()
        .map_err(|e: datafusion::arrow::error::ArrowError| Status::internal(e.to_string()))?;
    Ok(bytes)
}

/// The schema of a query's `$1, $2, …` parameters, in position order.
fn parameter_schema(df: &DataFrame) -> Result<Schema, Status> {
    let types = df.logical_plan().get_parameter_types().map_err(df_status)?;
    let mut fields: Vec<(usize, Field)> = types
        .into_iter()
        .map(|(name, data_type)| {
            let position = name.trim_start_matches('$').parse::<usize>().unwrap_or(usize::MAX);
            (position, Field::new(name, data_type.unwrap_or(DataType::Null), true))
        })
        .collect();
    fields.sort_by_key(|(position, _)| *position);
    Ok(Schema::new(fields.into_iter().map(|(_, f)| f).collect::<Vec<_>>()))
}

/// What the server is and supports, as GetSqlInfo reports it.
///
/// JDBC's `DatabaseMetaData` answers from these values (the Arrow Flight SQL JDBC
/// driver throws on a property the server leaves out), so every property it
/// reads is here. Enumerated capabilities are bitmasks of `1 << variant`, as the
/// Java Flight SQL server and driver encode them.
fn sql_info(ctx: &SessionContext) -> SqlInfoData {
    let mut builder = SqlInfoDataBuilder::new();
    server_info(&mut builder);
    dialect_info(&mut builder);
    capability_info(&mut builder);
    limit_info(&mut builder);
    transaction_info(&mut builder);
    function_info(&mut builder, ctx);
    builder.build().expect("static SQL info builds")
}

fn server_info(builder: &mut SqlInfoDataBuilder) {
    builder.append(SqlInfo::FlightSqlServerName, "trendflow");
    builder.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
    builder.append(SqlInfo::FlightSqlServerArrowVersion, "59");
    builder.append(SqlInfo::FlightSqlServerReadOnly, true);
    builder.append(SqlInfo::FlightSqlServerSql, true);
    builder.append(SqlInfo::FlightSqlServerSubstrait, false);
    builder.append(SqlInfo::FlightSqlServerTransaction, SqlSupportedTransaction::None as i32);
    // No CancelQuery action: a client cancels by dropping its DoGet stream, which stops the query.
    builder.append(SqlInfo::FlightSqlServerCancel, false);
    builder.append(SqlInfo::FlightSqlServerStatementTimeout, 0i32);
    builder.append(SqlInfo::SqlDdlCatalog, false);
    builder.append(SqlInfo::SqlDdlSchema, false);
    builder.append(SqlInfo::SqlDdlTable, false);
    builder.append(SqlInfo::SqlAllTablesAreSelectable, true);
}

/// Names and quoting, as DataFusion's SQL parser treats them.
fn dialect_info(builder: &mut SqlInfoDataBuilder) {
    builder.append(SqlInfo::SqlIdentifierQuoteChar, "\"");
    // Unquoted identifiers fold to lower case; quoted ones keep their case (no value says "sensitive").
    builder.append(SqlInfo::SqlIdentifierCase, SqlSupportedCaseSensitivity::SqlCaseSensitivityLowercase as i32);
    builder.append(SqlInfo::SqlQuotedIdentifierCase, SqlSupportedCaseSensitivity::SqlCaseSensitivityUnknown as i32);
    builder.append(SqlInfo::SqlNullOrdering, SqlNullOrdering::SqlNullsSortedHigh as i32);
    builder.append(SqlInfo::SqlSearchStringEscape, "\\");
    builder.append(SqlInfo::SqlExtraNameCharacters, "");
    builder.append(SqlInfo::SqlSchemaTerm, "schema");
    builder.append(SqlInfo::SqlCatalogTerm, "catalog");
    builder.append(SqlInfo::SqlProcedureTerm, "procedure");
    builder.append(SqlInfo::SqlCatalogAtStart, true);
}

/// The SQL a query may use; the statements DataFusion plans, without DDL or DML.
fn capability_info(builder: &mut SqlInfoDataBuilder) {
    use SqlSupportedSubqueries::*;
    for info in [
        SqlInfo::SqlSupportsColumnAliasing,
        SqlInfo::SqlNullPlusNullIsNull,
        SqlInfo::SqlSupportsTableCorrelationNames,
        SqlInfo::SqlSupportsDifferentTableCorrelationNames,
        SqlInfo::SqlSupportsExpressionsInOrderBy,
        SqlInfo::SqlSupportsOrderByUnrelated,
        SqlInfo::SqlSupportsLikeEscapeClause,
        SqlInfo::SqlSupportsNonNullableColumns,
        SqlInfo::SqlCorrelatedSubqueriesSupported,
    ] {
        builder.append(info, true);
    }
    for info in [
        SqlInfo::SqlSupportsIntegrityEnhancementFacility,
        SqlInfo::SqlSelectForUpdateSupported,
        SqlInfo::SqlStoredProceduresSupported,
        SqlInfo::SqlBatchUpdatesSupported,
        SqlInfo::SqlSavepointsSupported,
        SqlInfo::SqlNamedParametersSupported,
        SqlInfo::SqlLocatorsUpdateCopy,
        SqlInfo::SqlStoredFunctionsUsingCallSyntaxSupported,
    ] {
        builder.append(info, false);
    }
    let group_by = [SqlSupportedGroupBy::SqlGroupByUnrelated, SqlSupportedGroupBy::SqlGroupByBeyondSelect];
    builder.append(SqlInfo::SqlSupportedGroupBy, bitmask(group_by.map(|v| v as i32)));
    let grammar = [SupportedSqlGrammar::SqlMinimumGrammar, SupportedSqlGrammar::SqlCoreGrammar];
    builder.append(SqlInfo::SqlSupportedGrammar, bitmask(grammar.map(|v| v as i32)));
    // ANSI92 entry (0) and intermediate (1) levels; arrow-flight does not export that enum.
    builder.append(SqlInfo::SqlAnsi92SupportedLevel, bitmask([0, 1]));
    let joins = [SqlOuterJoinsSupportLevel::SqlLimitedOuterJoins, SqlOuterJoinsSupportLevel::SqlFullOuterJoins];
    builder.append(SqlInfo::SqlOuterJoinsSupportLevel, bitmask(joins.map(|v| v as i32)));
    let subqueries = [SqlSubqueriesInComparisons, SqlSubqueriesInExists, SqlSubqueriesInIns];
    builder.append(SqlInfo::SqlSupportedSubqueries, bitmask(subqueries.map(|v| v as i32)));
    let unions = [SqlSupportedUnions::SqlUnion, SqlSupportedUnions::SqlUnionAll];
    builder.append(SqlInfo::SqlSupportedUnions, bitmask(unions.map(|v| v as i32)));
    // Schemas and catalogs appear in no procedure call, index or privilege definition; no positioned commands.
    builder.append(SqlInfo::SqlSchemasSupportedActions, 0i32);
    builder.append(SqlInfo::SqlCatalogsSupportedActions, 0i32);
    builder.append(SqlInfo::SqlSupportedPositionedCommands, 0i32);
    let forward_only = SqlSupportedResultSetType::SqlResultSetTypeForwardOnly as i32;
    builder.append(SqlInfo::SqlSupportedResultSetTypes, bitmask([forward_only]));
    builder.append(SqlInfo::SqlSupportsConvert, supported_casts());
}

/// Size limits: none that the server enforces (0 means "no limit or unknown" in JDBC).
fn limit_info(builder: &mut SqlInfoDataBuilder) {
    for info in [
        SqlInfo::SqlMaxBinaryLiteralLength,
        SqlInfo::SqlMaxCharLiteralLength,
        SqlInfo::SqlMaxColumnNameLength,
        SqlInfo::SqlMaxColumnsInGroupBy,
        SqlInfo::SqlMaxColumnsInIndex,
        SqlInfo::SqlMaxColumnsInOrderBy,
        SqlInfo::SqlMaxColumnsInSelect,
        SqlInfo::SqlMaxColumnsInTable,
        SqlInfo::SqlMaxConnections,
        SqlInfo::SqlMaxCursorNameLength,
        SqlInfo::SqlMaxIndexLength,
        SqlInfo::SqlDbSchemaNameLength,
        SqlInfo::SqlMaxProcedureNameLength,
        SqlInfo::SqlMaxCatalogNameLength,
        SqlInfo::SqlMaxRowSize,
        SqlInfo::SqlMaxStatementLength,
        SqlInfo::SqlMaxStatements,
        SqlInfo::SqlMaxTableNameLength,
        SqlInfo::SqlMaxTablesInSelect,
        SqlInfo::SqlMaxUsernameLength,
    ] {
        builder.append(info, 0i64);
    }
    builder.append(SqlInfo::SqlMaxRowSizeIncludesBlobs, false);
}

/// No transactions: every query reads the views as they are when it runs.
fn transaction_info(builder: &mut SqlInfoDataBuilder) {
    let none = SqlTransactionIsolationLevel::SqlTransactionNone as i32;
    builder.append(SqlInfo::SqlTransactionsSupported, false);
    builder.append(SqlInfo::SqlDefaultTransactionIsolation, i64::from(none));
    builder.append(SqlInfo::SqlSupportedTransactionsIsolationLevels, bitmask([none]));
    builder.append(SqlInfo::SqlDataDefinitionCausesTransactionCommit, false);
    builder.append(SqlInfo::SqlDataDefinitionsInTransactionsIgnored, false);
}

/// The session's scalar functions by documented section, for SQL editors' completion lists.
fn function_info(builder: &mut SqlInfoDataBuilder, ctx: &SessionContext) {
    let sections = [
        (SqlInfo::SqlNumericFunctions, &["Math Functions"][..]),
        (SqlInfo::SqlStringFunctions, &["String Functions", "Binary String Functions", "Regular Expression Functions"][..]),
        (SqlInfo::SqlDatetimeFunctions, &["Time and Date Functions"][..]),
        (SqlInfo::SqlSystemFunctions, &["Conditional Functions", "Other Functions"][..]),
    ];
    let state = ctx.state();
    for (info, labels) in sections {
        let mut names: Vec<String> = state
            .scalar_functions()
            .iter()
            .filter(|(_, udf)| udf.documentation().is_some_and(|doc| labels.contains(&doc.doc_section.label)))
            .map(|(name, _)| name.to_uppercase())
            .collect();
        names.sort();
        names.dedup();
        builder.append(info, names);
    }
}

/// GetSqlInfo's answer with the map member's entries named `key` and `value`.
///
/// The spec, and the Java driver, which finds them by name, call them that;
/// arrow-flight's builder calls them `keys` and `values`, and the driver then
/// reads `SQL_SUPPORTS_CONVERT` as a map from null to null.
fn with_spec_map_names(batch: RecordBatch) -> Result<RecordBatch, ArrowError> {
    let (fields, type_ids, offsets, children) = batch.column(1).as_union().clone().into_parts();
    let children = children
        .into_iter()
        .map(|child| match child.as_map_opt() {
            Some(map) => renamed_entries(map.clone()).map(|map| Arc::new(map) as ArrayRef),
            None => Ok(child),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let fields = fields
        .iter()
        .zip(&children)
        .map(|((id, field), child)| (id, Arc::new(field.as_ref().clone().with_data_type(child.data_type().clone()))))
        .collect::<UnionFields>();
    let value = UnionArray::try_new(fields, type_ids, offsets, children)?;
    let schema = batch.schema();
    let value_field = schema.field(1).clone().with_data_type(value.data_type().clone());
    let schema = Schema::new(vec![schema.field(0).clone(), value_field]);
    RecordBatch::try_new(Arc::new(schema), vec![batch.column(0).clone(), Arc::new(value)])
}

fn renamed_entries(map: MapArray) -> Result<MapArray, ArrowError> {
    let (field, offsets, entries, nulls, ordered) = map.into_parts();
    let (names, columns, entry_nulls) = entries.into_parts();
    let names: Fields = names.iter().zip(["key", "value"]).map(|(f, name)| f.as_ref().clone().with_name(name)).collect();
    let field = field.as_ref().clone().with_data_type(DataType::Struct(names.clone()));
    MapArray::try_new(Arc::new(field), offsets, StructArray::try_new(names, columns, entry_nulls)?, nulls, ordered)
}

fn bitmask(variants: impl IntoIterator<Item = i32>) -> i32 {
    variants.into_iter().fold(0, |mask, variant| mask | (1 << variant))
}

/// The conversions `CAST` performs between the JDBC types of trendflow's columns.
fn supported_casts() -> HashMap<i32, Vec<i32>> {
    use SqlSupportsConvert::*;
    let numbers = [
        SqlConvertBigint,
        SqlConvertInteger,
        SqlConvertSmallint,
        SqlConvertTinyint,
        SqlConvertDecimal,
        SqlConvertNumeric,
        SqlConvertFloat,
        SqlConvertReal,
    ];
    let text = [SqlConvertVarchar, SqlConvertChar, SqlConvertLongvarchar];
    let times = [SqlConvertDate, SqlConvertTimestamp];
    let to = |targets: &[&[SqlSupportsConvert]]| targets.concat().into_iter().map(|t| t as i32).collect::<Vec<_>>();
    let mut casts = HashMap::new();
    for from in numbers {
        casts.insert(from as i32, to(&[&numbers, &text, &[SqlConvertBit]]));
    }
    for from in text {
        casts.insert(from as i32, to(&[&numbers, &text, &times, &[SqlConvertBit]]));
    }
    for from in times {
        casts.insert(from as i32, to(&[&text, &times]));
    }
    casts.insert(SqlConvertBit as i32, to(&[&numbers, &text, &[SqlConvertBit]]));
    casts
}

fn xdbc_info() -> XdbcTypeInfoData {
    let mut builder = XdbcTypeInfoDataBuilder::new();
    let types = [
        ("VARCHAR", XdbcDataType::XdbcVarchar, Some("'"), true),
        ("BIGINT", XdbcDataType::XdbcBigint, None, false),
        ("INTEGER", XdbcDataType::XdbcInteger, None, false),
        ("DOUBLE", XdbcDataType::XdbcDouble, None, false),
        ("BOOLEAN", XdbcDataType::XdbcBit, None, false),
        ("TIMESTAMP", XdbcDataType::XdbcTimestamp, Some("'"), false),
        ("DATE", XdbcDataType::XdbcDate, Some("'"), false),
    ];
    for (name, data_type, quote, case_sensitive) in types {
        builder.append(XdbcTypeInfo {
            type_name: name.into(),
            data_type,
            column_size: None,
            literal_prefix: quote.map(Into::into),
            literal_suffix: quote.map(Into::into),
            create_params: None,
            nullable: Nullable::NullabilityNullable,
            case_sensitive,
            searchable: Searchable::Full,
            unsigned_attribute: None,
            fixed_prec_scale: false,
            auto_increment: None,
            local_type_name: Some(name.into()),
            minimum_scale: None,
            maximum_scale: None,
            sql_data_type: data_type,
            datetime_subcode: None,
            num_prec_radix: None,
            interval_precision: None,
        });
    }
    builder.build().expect("static type info builds")
}

#[tonic::async_trait]
impl FlightSqlService for TrendflowFlightSql {
    type FlightService = TrendflowFlightSql;

    async fn do_handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>>, Status> {
        let token = self.auth.handshake(request.metadata()).await?;
        let reply = HandshakeResponse { protocol_version: 0, payload: token.clone().into() };
        let mut response: Response<Pin<Box<dyn Stream<Item = _> + Send>>> = Response::new(Box::pin(futures::stream::iter(vec![Ok(reply)])));
        if !token.is_empty() {
            let value = MetadataValue::try_from(format!("Bearer {token}")).map_err(|e| Status::internal(e.to_string()))?;
            response.metadata_mut().insert("authorization", value);
        }
        Ok(response)
    }

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.auth.check(request.metadata())?;
        let df = self.plan(&query.query).await?;
        let ticket = TicketStatementQuery { statement_handle: query.query.clone().into() };
        self.info(df.schema().as_arrow(), ticket.as_any().encode_to_vec(), request.into_inner())
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.auth.check(request.metadata())?;
        let sql = String::from_utf8(ticket.statement_handle.to_vec()).map_err(|_| Status::invalid_argument("ticket is not UTF-8 SQL"))?;
        let df = self.plan(&sql).await?;
        self.execute(df).await
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<arrow_flight::Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        self.auth.check(request.metadata())?;
        let df = self.plan(&query.query).await?;
        let parameters = parameter_schema(&df)?;
        let handle: String = {
            use rand::Rng;
            rand::rng().sample_iter(rand::distr::Alphanumeric).take(24).map(char::from).collect()
        };
        self.prepared.lock().expect("prepared statements lock poisoned").insert(handle.clone(), Prepared { sql: query.query, params: None });
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: handle.into(),
            dataset_schema: schema_bytes(df.schema().as_arrow())?,
            parameter_schema: schema_bytes(&parameters)?,
        })
    }

    async fn do_put_prepared_statement_query(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        self.auth.check(request.metadata())?;
        // The stream, not its inner `Streaming`: that would drop the peeked schema message.
        let flight_data = request.into_inner().map_err(FlightError::from);
        let batches: Vec<RecordBatch> =
            arrow_flight::decode::FlightRecordBatchStream::new_from_flight_data(flight_data).try_collect().await.map_err(Status::from)?;
        let params = match batches.iter().find(|b| b.num_rows() > 0) {
            None => None,
            Some(batch) => {
                Some(batch.columns().iter().map(|column| ScalarValue::try_from_array(column, 0)).collect::<Result<Vec<_>, _>>().map_err(df_status)?)
            }
        };
        let handle = String::from_utf8_lossy(&query.prepared_statement_handle).into_owned();
        let mut prepared = self.prepared.lock().expect("prepared statements lock poisoned");
        let entry = prepared.get_mut(&handle).ok_or_else(|| Status::not_found(format!("no prepared statement `{handle}`")))?;
        entry.params = params;
        Ok(DoPutPreparedStatementResult { prepared_statement_handle: Some(query.prepared_statement_handle) })
    }

    async fn get_flight_info_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.auth.check(request.metadata())?;
        let (sql, _) = self.prepared_sql(&query.prepared_statement_handle)?;
        let df = self.plan(&sql).await?;
        self.info(df.schema().as_arrow(), query.as_any().encode_to_vec(), request.into_inner())
    }

    async fn do_get_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.auth.check(request.metadata())?;
        let (sql, params) = self.prepared_sql(&query.prepared_statement_handle)?;
        let mut df = self.plan(&sql).await?;
        if let Some(params) = params {
            df = df.with_param_values(params).map_err(df_status)?;
        }
        self.execute(df).await
    }

    async fn do_action_close_prepared_statement(
        &self,
        query: ActionClosePreparedStatementRequest,
        request: Request<arrow_flight::Action>,
    ) -> Result<(), Status> {
        self.auth.check(request.metadata())?;
        let handle = String::from_utf8_lossy(&query.prepared_statement_handle).into_owned();
        self.prepared.lock().expect("prepared statements lock poisoned").remove(&handle);
        Ok(())
    }

    async fn do_put_statement_update(&self, _ticket: CommandStatementUpdate, request: Request<PeekableFlightDataStream>) -> Result<i64, Status> {
        self.auth.check(request.metadata())?;
        Err(Status::permission_denied("trendflow's Flight SQL service is read-only"))
    }

    async fn do_put_prepared_statement_update(
        &self,
        _query: CommandPreparedStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        self.auth.check(request.metadata())?;
        Err(Status::permission_denied("trendflow's Flight SQL service is read-only"))
    }

    async fn get_flight_info_catalogs(&self, query: CommandGetCatalogs, request: Request<FlightDescriptor>) -> Result<Response<FlightInfo>, Status> {
        self.auth.check(request.metadata())?;
        let schema = query.into_builder().schema();
        self.info(&schema, query.as_any().encode_to_vec(), request.into_inner())
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.auth.check(request.metadata())?;
        let mut builder = query.into_builder();
        for name in self.ctx.catalog_names() {
            builder.append(name);
        }
        Self::single_batch(builder.build().map_err(|e| Status::internal(e.to_string()))?)
    }

    async fn get_flight_info_schemas(&self, query: CommandGetDbSchemas, request: Request<FlightDescriptor>) -> Result<Response<FlightInfo>, Status> {
        self.auth.check(request.metadata())?;
        let schema = query.clone().into_builder().schema();
        self.info(&schema, query.as_any().encode_to_vec(), request.into_inner())
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.auth.check(request.metadata())?;
        let mut builder = query.into_builder();
        for catalog_name in self.ctx.catalog_names() {
            let Some(catalog) = self.ctx.catalog(&catalog_name) else { continue };
            for schema_name in catalog.schema_names() {
                builder.append(&catalog_name, schema_name);
            }
        }
        Self::single_batch(builder.build().map_err(|e| Status::internal(e.to_string()))?)
    }

    async fn get_flight_info_tables(&self, query: CommandGetTables, request: Request<FlightDescriptor>) -> Result<Response<FlightInfo>, Status> {
        self.auth.check(request.metadata())?;
        let schema = query.clone().into_builder().schema();
        self.info(&schema, query.as_any().encode_to_vec(), request.into_inner())
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.auth.check(request.metadata())?;
        let mut builder = query.into_builder();
        for (catalog, schema, table, provider) in self.tables().await? {
            builder
                .append(catalog, schema, table, table_type(provider.as_ref()), provider.schema().as_ref())
                .map_err(|e| Status::internal(e.to_string()))?;
        }
        Self::single_batch(builder.build().map_err(|e| Status::internal(e.to_string()))?)
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.auth.check(request.metadata())?;
        self.info(&table_types_batch().schema(), query.as_any().encode_to_vec(), request.into_inner())
    }

    async fn do_get_table_types(
        &self,
        _query: CommandGetTableTypes,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.auth.check(request.metadata())?;
        Self::single_batch(table_types_batch())
    }

    async fn get_flight_info_sql_info(&self, query: CommandGetSqlInfo, request: Request<FlightDescriptor>) -> Result<Response<FlightInfo>, Status> {
        self.auth.check(request.metadata())?;
        let schema = self.sql_info_batch(query.clone())?.schema();
        self.info(&schema, query.as_any().encode_to_vec(), request.into_inner())
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.auth.check(request.metadata())?;
        Self::single_batch(self.sql_info_batch(query)?)
    }

    async fn get_flight_info_xdbc_type_info(
        &self,
        query: CommandGetXdbcTypeInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.auth.check(request.metadata())?;
        let schema = query.into_builder(&self.xdbc_info).schema();
        self.info(&schema, query.as_any().encode_to_vec(), request.into_inner())
    }

    async fn do_get_xdbc_type_info(
        &self,
        query: CommandGetXdbcTypeInfo,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.auth.check(request.metadata())?;
        Self::single_batch(query.into_builder(&self.xdbc_info).build().map_err(|e| Status::internal(e.to_string()))?)
    }

    async fn get_flight_info_primary_keys(
        &self,
        query: CommandGetPrimaryKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.auth.check(request.metadata())?;
        self.info(&primary_keys_schema(), query.as_any().encode_to_vec(), request.into_inner())
    }

    async fn do_get_primary_keys(
        &self,
        query: CommandGetPrimaryKeys,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.auth.check(request.metadata())?;
        let mut rows: Vec<[String; 5]> = Vec::new();
        let mut sequence = Vec::new();
        for (catalog, schema, table, provider) in self.tables().await? {
            let matches =
                table == query.table && query.catalog.as_ref().is_none_or(|c| *c == catalog) && query.db_schema.as_ref().is_none_or(|s| *s == schema);
            if !matches {
                continue;
            }
            let table_schema = provider.schema();
            for constraint in provider.constraints().iter().flat_map(|c| c.iter()) {
                let Constraint::PrimaryKey(columns) = constraint else { continue };
                for (position, &column) in columns.iter().enumerate() {
                    let name = table_schema.field(column).name().clone();
                    rows.push([catalog.clone(), schema.clone(), table.clone(), name, format!("{table}_pkey")]);
                    sequence.push(position as i32 + 1);
                }
            }
        }
        let column = |i: usize| Arc::new(StringArray::from(rows.iter().map(|r| r[i].clone()).collect::<Vec<_>>())) as ArrayRef;
        let batch = RecordBatch::try_new(
            Arc::new(primary_keys_schema()),
            vec![column(0), column(1), column(2), column(3), column(4), Arc::new(Int32Array::from(sequence)) as ArrayRef],
        )
        .map_err(|e| Status::internal(e.to_string()))?;
        Self::single_batch(batch)
    }

    async fn get_flight_info_imported_keys(
        &self,
        query: CommandGetImportedKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.auth.check(request.metadata())?;
        self.info(&foreign_keys_schema(), query.as_any().encode_to_vec(), request.into_inner())
    }

    async fn do_get_imported_keys(
        &self,
        _query: CommandGetImportedKeys,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.auth.check(request.metadata())?;
        Self::single_batch(RecordBatch::new_empty(Arc::new(foreign_keys_schema())))
    }

    async fn get_flight_info_exported_keys(
        &self,
        query: CommandGetExportedKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.auth.check(request.metadata())?;
        self.info(&foreign_keys_schema(), query.as_any().encode_to_vec(), request.into_inner())
    }

    async fn do_get_exported_keys(
        &self,
        _query: CommandGetExportedKeys,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.auth.check(request.metadata())?;
        Self::single_batch(RecordBatch::new_empty(Arc::new(foreign_keys_schema())))
    }

    async fn get_flight_info_cross_reference(
        &self,
        query: CommandGetCrossReference,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.auth.check(request.metadata())?;
        self.info(&foreign_keys_schema(), query.as_any().encode_to_vec(), request.into_inner())
    }

    async fn do_get_cross_reference(
        &self,
        _query: CommandGetCrossReference,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.auth.check(request.metadata())?;
        Self::single_batch(RecordBatch::new_empty(Arc::new(foreign_keys_schema())))
    }

    /// Flight's session actions, which the JDBC driver sends for `?catalog=`; see [`crate::session`].
    async fn do_action_fallback(&self, request: Request<arrow_flight::Action>) -> Result<Response<<Self as FlightService>::DoActionStream>, Status> {
        self.auth.check(request.metadata())?;
        let action = request.into_inner();
        let body = match action.r#type.as_str() {
            session::SET_SESSION_OPTIONS => session::set_options(&action.body, &self.session_options())
                .map_err(|e| Status::invalid_argument(format!("SetSessionOptions: {e}")))?,
            session::GET_SESSION_OPTIONS => session::get_options(self.session_options()),
            session::CLOSE_SESSION => session::close(),
            other => return Err(Status::unimplemented(format!("no action `{other}` in trendflow's Flight SQL service"))),
        };
        let result = arrow_flight::Result { body: body.into() };
        Ok(Response::new(Box::pin(futures::stream::iter([Ok(result)]))))
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}

fn table_type(provider: &dyn datafusion::catalog::TableProvider) -> &'static str {
    match provider.table_type() {
        datafusion::datasource::TableType::View => "VIEW",
        datafusion::datasource::TableType::Temporary => "LOCAL TEMPORARY",
        datafusion::datasource::TableType::Base => "TABLE",
    }
}

fn table_types_batch() -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![Field::new("table_type", DataType::Utf8, false)]));
    let types: ArrayRef = Arc::new(StringArray::from(vec!["LOCAL TEMPORARY", "TABLE", "VIEW"]));
    RecordBatch::try_new(schema, vec![types]).expect("static batch")
}

fn primary_keys_schema() -> Schema {
    Schema::new(vec![
        Field::new("catalog_name", DataType::Utf8, true),
        Field::new("db_schema_name", DataType::Utf8, true),
        Field::new("table_name", DataType::Utf8, false),
        Field::new("column_name", DataType::Utf8, false),
        Field::new("key_name", DataType::Utf8, true),
        Field::new("key_sequence", DataType::Int32, false),
    ])
}

/// The columns of GetImportedKeys, GetExportedKeys and GetCrossReference (one layout in the spec).
///
/// Always empty: views are derived, and DataFusion tables declare no foreign
/// keys. Answering (rather than `UNIMPLEMENTED`) lets JDBC tools such as
/// DBeaver open a table's properties, where they ask for its keys.
fn foreign_keys_schema() -> Schema {
    let text = |name: &str, nullable: bool| Field::new(name, DataType::Utf8, nullable);
    Schema::new(vec![
        text("pk_catalog_name", true),
        text("pk_db_schema_name", true),
        text("pk_table_name", false),
        text("pk_column_name", false),
        text("fk_catalog_name", true),
        text("fk_db_schema_name", true),
        text("fk_table_name", false),
        text("fk_column_name", false),
        Field::new("key_sequence", DataType::Int32, false),
        text("fk_key_name", true),
        text("pk_key_name", true),
        Field::new("update_rule", DataType::UInt8, false),
        Field::new("delete_rule", DataType::UInt8, false),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::AuthConfig;
    use arrow_flight::decode::FlightRecordBatchStream;
    use datafusion::common::Constraints;
    use datafusion::datasource::MemTable;
    use datafusion::prelude::SessionConfig;

    /// A server over one table with a primary key, like a view of trendflow's.
    fn service() -> TrendflowFlightSql {
        let config = SessionConfig::new().with_default_catalog_and_schema("trendflow", "views");
        let ctx = SessionContext::new_with_config(config);
        let fields = vec![Field::new("price_level", DataType::Utf8, false), Field::new("products", DataType::Int64, false)];
        let key = Constraints::new_unverified(vec![Constraint::PrimaryKey(vec![0])]);
        let table = MemTable::try_new(Arc::new(Schema::new(fields)), vec![vec![]]).unwrap().with_constraints(key);
        ctx.register_table("price_levels", Arc::new(table)).unwrap();
        let auth = Authenticator::new(AuthConfig::None, Duration::from_secs(60));
        TrendflowFlightSql::new(ctx, auth, QueryLimits::default())
    }

    async fn batches(response: Response<FlightStream>) -> Vec<RecordBatch> {
        let data = response.into_inner().map_err(FlightError::from);
        FlightRecordBatchStream::new_from_flight_data(data).try_collect().await.unwrap()
    }

    fn ticket() -> Request<Ticket> {
        Request::new(Ticket::new(Vec::new()))
    }

    #[tokio::test]
    async fn foreign_key_calls_answer_no_rows_in_the_spec_layout() {
        let server = service();
        let imported = CommandGetImportedKeys { catalog: None, db_schema: None, table: "price_levels".into() };
        let exported = CommandGetExportedKeys { catalog: None, db_schema: None, table: "price_levels".into() };
        let cross = CommandGetCrossReference { pk_table: "price_levels".into(), fk_table: "price_levels".into(), ..Default::default() };
        let answers = [
            batches(server.do_get_imported_keys(imported, ticket()).await.unwrap()).await,
            batches(server.do_get_exported_keys(exported, ticket()).await.unwrap()).await,
            batches(server.do_get_cross_reference(cross, ticket()).await.unwrap()).await,
        ];
        for answer in answers {
            assert_eq!(answer.iter().map(RecordBatch::num_rows).sum::<usize>(), 0);
            let schema = answer[0].schema();
            assert_eq!(schema.fields().len(), 13);
            assert_eq!(schema.field_with_name("key_sequence").unwrap().data_type(), &DataType::Int32);
            assert_eq!(schema.field_with_name("delete_rule").unwrap().data_type(), &DataType::UInt8);
        }
    }

    #[tokio::test]
    async fn primary_keys_number_their_columns_as_int32() {
        let query = CommandGetPrimaryKeys { catalog: None, db_schema: Some("views".into()), table: "price_levels".into() };
        let answer = batches(service().do_get_primary_keys(query, ticket()).await.unwrap()).await;
        let batch = &answer[0];
        // The JDBC driver reads key_sequence as a 32-bit signed integer, as the spec lays it out.
        let sequence = batch.column_by_name("key_sequence").unwrap().as_primitive::<datafusion::arrow::datatypes::Int32Type>();
        assert_eq!(sequence.values().to_vec(), vec![1]);
        assert_eq!(batch.column_by_name("column_name").unwrap().as_string::<i32>().value(0), "price_level");
    }

    /// The dense-union member of each property (0 string, 1 bool, 2 int64, 3 int32 bitmask,
    /// 4 string list, 5 map), which the JDBC driver casts to a fixed Java type.
    fn sql_info_kinds(server: &TrendflowFlightSql) -> HashMap<u32, i8> {
        let batch = server.sql_info_batch(CommandGetSqlInfo::default()).unwrap();
        let names = batch.column(0).as_primitive::<datafusion::arrow::datatypes::UInt32Type>();
        let values = batch.column(1).as_union();
        (0..batch.num_rows()).map(|i| (names.value(i), values.type_id(i))).collect()
    }

    #[test]
    fn sql_info_has_every_property_the_jdbc_driver_reads_with_its_type() {
        use SqlInfo::*;
        let kinds = sql_info_kinds(&service());
        let expected: [(i8, &[SqlInfo]); 6] = [
            (
                0,
                &[
                    FlightSqlServerName,
                    FlightSqlServerVersion,
                    SqlIdentifierQuoteChar,
                    SqlSearchStringEscape,
                    SqlExtraNameCharacters,
                    SqlSchemaTerm,
                    SqlProcedureTerm,
                    SqlCatalogTerm,
                ],
            ),
            (
                1,
                &[
                    FlightSqlServerReadOnly,
                    SqlSupportsColumnAliasing,
                    SqlNullPlusNullIsNull,
                    SqlSupportsTableCorrelationNames,
                    SqlSupportsDifferentTableCorrelationNames,
                    SqlSupportsExpressionsInOrderBy,
                    SqlSupportsOrderByUnrelated,
                    SqlSupportsLikeEscapeClause,
                    SqlSupportsNonNullableColumns,
                    SqlSupportsIntegrityEnhancementFacility,
                    SqlCatalogAtStart,
                    SqlSelectForUpdateSupported,
                    SqlStoredProceduresSupported,
                    SqlCorrelatedSubqueriesSupported,
                    SqlMaxRowSizeIncludesBlobs,
                    SqlTransactionsSupported,
                    SqlDataDefinitionCausesTransactionCommit,
                    SqlDataDefinitionsInTransactionsIgnored,
                    SqlBatchUpdatesSupported,
                    SqlSavepointsSupported,
                    SqlNamedParametersSupported,
                    SqlLocatorsUpdateCopy,
                    SqlStoredFunctionsUsingCallSyntaxSupported,
                ],
            ),
            (
                2,
                &[
                    SqlMaxBinaryLiteralLength,
                    SqlMaxCharLiteralLength,
                    SqlMaxColumnNameLength,
                    SqlMaxColumnsInGroupBy,
                    SqlMaxColumnsInIndex,
                    SqlMaxColumnsInOrderBy,
                    SqlMaxColumnsInSelect,
                    SqlMaxColumnsInTable,
                    SqlMaxConnections,
                    SqlMaxCursorNameLength,
                    SqlMaxIndexLength,
                    SqlDbSchemaNameLength,
                    SqlMaxProcedureNameLength,
                    SqlMaxCatalogNameLength,
                    SqlMaxRowSize,
                    SqlMaxStatementLength,
                    SqlMaxStatements,
                    SqlMaxTableNameLength,
                    SqlMaxTablesInSelect,
                    SqlMaxUsernameLength,
                    SqlDefaultTransactionIsolation,
                ],
            ),
            (
                3,
                &[
                    SqlSupportedGroupBy,
                    SqlSupportedGrammar,
                    SqlAnsi92SupportedLevel,
                    SqlOuterJoinsSupportLevel,
                    SqlSchemasSupportedActions,
                    SqlCatalogsSupportedActions,
                    SqlSupportedPositionedCommands,
                    SqlSupportedResultSetTypes,
                    SqlSupportedSubqueries,
                    SqlSupportedUnions,
                    SqlSupportedTransactionsIsolationLevels,
                ],
            ),
            (4, &[SqlNumericFunctions, SqlStringFunctions, SqlSystemFunctions, SqlDatetimeFunctions]),
            (5, &[SqlSupportsConvert]),
        ];
        for (kind, infos) in expected {
            for info in infos {
                assert_eq!(kinds.get(&(*info as u32)), Some(&kind), "{info:?}");
            }
        }
    }

    #[test]
    fn function_lists_come_from_the_session() {
        let info = vec![SqlInfo::SqlNumericFunctions as u32, SqlInfo::SqlDatetimeFunctions as u32];
        let batch = service().sql_info_batch(CommandGetSqlInfo { info }).unwrap();
        let values = batch.column(1).as_union();
        let lists: Vec<Vec<String>> = (0..batch.num_rows())
            .map(|i| {
                let list = values.value(i);
                let strings = list.as_list::<i32>().value(0);
                strings.as_string::<i32>().iter().flatten().map(str::to_string).collect()
            })
            .collect();
        let all: Vec<&String> = lists.iter().flatten().collect();
        for name in ["ABS", "ROUND", "DATE_BIN", "NOW"] {
            assert!(all.iter().any(|n| *n == name), "{name} missing from {all:?}");
        }
        assert!(!all.iter().any(|n| *n == "UPPER"), "string functions are listed apart");
    }

    #[test]
    fn the_cast_map_names_its_entries_key_and_value() {
        let info = vec![SqlInfo::SqlSupportsConvert as u32];
        let batch = service().sql_info_batch(CommandGetSqlInfo { info }).unwrap();
        let map = batch.column(1).as_union().value(0);
        let entries = map.as_map().entries();
        assert_eq!(entries.fields().iter().map(|f| f.name().as_str()).collect::<Vec<_>>(), ["key", "value"]);
        let from_integer = map.as_map().value(0);
        let keys = from_integer.column(0).as_primitive::<datafusion::arrow::datatypes::Int32Type>();
        let integer = keys.values().iter().position(|k| *k == SqlSupportsConvert::SqlConvertInteger as i32).unwrap();
        let targets = from_integer.column(1).as_list::<i32>().value(integer);
        let targets = targets.as_primitive::<datafusion::arrow::datatypes::Int32Type>();
        assert!(targets.values().contains(&(SqlSupportsConvert::SqlConvertBigint as i32)));
        assert_eq!(batch.schema().field(1).data_type(), batch.column(1).data_type(), "FlightInfo and data agree");
    }

    #[tokio::test]
    async fn session_options_accept_the_default_catalog_only() {
        use session::{OptionValue, SessionOptionValue, SetSessionOptionsRequest, SetSessionOptionsResult};
        let server = service();
        let set = |catalog: &str| {
            let value = SessionOptionValue { option_value: Some(OptionValue::String(catalog.into())) };
            let request = SetSessionOptionsRequest { session_options: HashMap::from([("catalog".into(), value)]) };
            Request::new(arrow_flight::Action::new(session::SET_SESSION_OPTIONS, request.encode_to_vec()))
        };
        for (catalog, refused) in [("trendflow", false), ("elsewhere", true)] {
            let answer = server.do_action_fallback(set(catalog)).await.unwrap().into_inner();
            let results: Vec<arrow_flight::Result> = answer.try_collect().await.unwrap();
            let result = SetSessionOptionsResult::decode(results[0].body.clone()).unwrap();
            assert_eq!(result.errors.contains_key("catalog"), refused, "{catalog}");
        }
        let unknown = Request::new(arrow_flight::Action::new("Explode", Vec::new()));
        let error = server.do_action_fallback(unknown).await.err().unwrap();
        assert_eq!(error.code(), tonic::Code::Unimplemented);
    }

    #[test]
    fn bitmasks_set_one_bit_per_variant() {
        assert_eq!(bitmask([0, 1]), 3);
        assert_eq!(bitmask([SqlOuterJoinsSupportLevel::SqlLimitedOuterJoins as i32, SqlOuterJoinsSupportLevel::SqlFullOuterJoins as i32]), 6);
        assert_eq!(bitmask([]), 0);
    }
}
