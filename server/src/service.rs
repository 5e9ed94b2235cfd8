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
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest, ActionCreatePreparedStatementResult,
    CommandGetCatalogs, CommandGetDbSchemas, CommandGetPrimaryKeys, CommandGetSqlInfo, CommandGetTableTypes,
    CommandGetTables, CommandGetXdbcTypeInfo, CommandPreparedStatementQuery, CommandPreparedStatementUpdate,
    CommandStatementQuery, CommandStatementUpdate, DoPutPreparedStatementResult, Nullable, ProstMessageExt, Searchable,
    SqlInfo, SqlSupportedTransaction, TicketStatementQuery, XdbcDataType,
};
use arrow_flight::utils::batches_to_flight_data;
use arrow_flight::{
    FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest, HandshakeResponse, IpcMessage, SchemaAsIpc, Ticket,
};
use datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray, UInt32Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::ipc::writer::IpcWriteOptions;
use datafusion::common::{Constraint, ScalarValue};
use datafusion::error::DataFusionError;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::SessionStateBuilder;
use datafusion::prelude::{DataFrame, SessionContext, SQLOptions};
use futures::{Stream, StreamExt, TryStreamExt};
use prost::Message;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::Authenticator;

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
            ctx,
            auth,
            limits,
            prepared: Mutex::default(),
            sql_info: sql_info(),
            xdbc_info: xdbc_info(),
        }
    }

    /// A session sharing the catalog but with this query's memory limit.
    fn query_context(&self) -> Result<SessionContext, Status> {
        let Some(limit) = self.limits.memory_bytes else { return Ok(self.ctx.clone()) };
        let runtime = RuntimeEnvBuilder::from_runtime_env(&self.ctx.runtime_env())
            .with_memory_limit(limit, 1.0)
            .build_arc()
            .map_err(df_status)?;
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
            return Err(Status::resource_exhausted(format!("{most} queries are running, the most allowed, and none ended within {wait:?}; retry later")));
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
                Err(_) => Some((
                    Err(FlightError::Tonic(Box::new(Status::deadline_exceeded(format!("query exceeded the {timeout:?} limit"))))),
                    None,
                )),
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
    let IpcMessage(bytes) =
        SchemaAsIpc::new(schema, &IpcWriteOptions::default()).try_into().map_err(|e: datafusion::arrow::error::ArrowError| Status::internal(e.to_string()))?;
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

fn sql_info() -> SqlInfoData {
    let mut builder = SqlInfoDataBuilder::new();
    builder.append(SqlInfo::FlightSqlServerName, "trendflow");
    builder.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
    builder.append(SqlInfo::FlightSqlServerArrowVersion, "59");
    builder.append(SqlInfo::FlightSqlServerReadOnly, true);
    builder.append(SqlInfo::FlightSqlServerSql, true);
    builder.append(SqlInfo::FlightSqlServerSubstrait, false);
    builder.append(SqlInfo::FlightSqlServerTransaction, SqlSupportedTransaction::None as i32);
    builder.append(SqlInfo::FlightSqlServerCancel, false);
    builder.append(SqlInfo::FlightSqlServerStatementTimeout, 0i32);
    builder.append(SqlInfo::SqlDdlCatalog, false);
    builder.append(SqlInfo::SqlDdlSchema, false);
    builder.append(SqlInfo::SqlDdlTable, false);
    builder.append(SqlInfo::SqlIdentifierQuoteChar, "\"");
    builder.append(SqlInfo::SqlIdentifierCase, 1i32); // case insensitive (folded to lower case unless quoted)
    builder.append(SqlInfo::SqlQuotedIdentifierCase, 2i32); // case sensitive
    builder.append(SqlInfo::SqlAllTablesAreSelectable, true);
    builder.append(SqlInfo::SqlSearchStringEscape, "\\");
    builder.build().expect("static SQL info builds")
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
        let mut response: Response<Pin<Box<dyn Stream<Item = _> + Send>>> =
            Response::new(Box::pin(futures::stream::iter(vec![Ok(reply)])));
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
        let batches: Vec<RecordBatch> = arrow_flight::decode::FlightRecordBatchStream::new_from_flight_data(flight_data)
            .try_collect()
            .await
            .map_err(Status::from)?;
        let params = match batches.iter().find(|b| b.num_rows() > 0) {
            None => None,
            Some(batch) => Some(
                batch
                    .columns()
                    .iter()
                    .map(|column| ScalarValue::try_from_array(column, 0))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(df_status)?,
            ),
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

    async fn do_put_statement_update(
        &self,
        _ticket: CommandStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
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

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
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

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
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

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
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

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.auth.check(request.metadata())?;
        let schema = query.clone().into_builder(&self.sql_info).schema();
        self.info(&schema, query.as_any().encode_to_vec(), request.into_inner())
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.auth.check(request.metadata())?;
        Self::single_batch(query.into_builder(&self.sql_info).build().map_err(|e| Status::internal(e.to_string()))?)
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
            let matches = table == query.table
                && query.catalog.as_ref().is_none_or(|c| *c == catalog)
                && query.db_schema.as_ref().is_none_or(|s| *s == schema);
            if !matches {
                continue;
            }
            let table_schema = provider.schema();
            for constraint in provider.constraints().iter().flat_map(|c| c.iter()) {
                let Constraint::PrimaryKey(columns) = constraint else { continue };
                for (position, &column) in columns.iter().enumerate() {
                    let name = table_schema.field(column).name().clone();
                    rows.push([catalog.clone(), schema.clone(), table.clone(), name, format!("{table}_pkey")]);
                    sequence.push(position as u32 + 1);
                }
            }
        }
        let column = |i: usize| Arc::new(StringArray::from(rows.iter().map(|r| r[i].clone()).collect::<Vec<_>>())) as ArrayRef;
        let batch = RecordBatch::try_new(
            Arc::new(primary_keys_schema()),
            vec![column(0), column(1), column(2), column(3), column(4), Arc::new(UInt32Array::from(sequence)) as ArrayRef],
        )
        .map_err(|e| Status::internal(e.to_string()))?;
        Self::single_batch(batch)
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
        Field::new("key_sequence", DataType::UInt32, false),
    ])
}

