//! Event-time windows as table functions: `TUMBLE(stream, size)` and
//! `HOP(stream, slide, size)` read a stream's events with two more columns,
//! `window_start` and `window_end`, one row per window a record falls in (one for
//! `TUMBLE`, `size / slide` for `HOP`). Windows are aligned to the Unix epoch and
//! include their start, not their end.
//!
//! ```sql
//! SELECT window_start, window_end, category_id, COUNT(*) AS products
//! FROM HOP(products, INTERVAL '5 minutes', INTERVAL '1 hour')
//! GROUP BY window_start, window_end, category_id
//! ```
//!
//! Both are built from DataFusion's own operators (arithmetic, `make_array`, `unnest`),
//! so a window is a row-local step a micro-batch evaluates on its own. A view that
//! groups by `window_start` or `window_end` knows when each group is final: once the
//! stream's watermark passes the window's end (see [`crate::event_time`]).
//!
//! An optional last interval is the windows' retention: `TUMBLE(products, INTERVAL
//! '1 day', INTERVAL '90 days')` keeps a day's rows in the view (and so in every sink)
//! until the watermark is 90 days past the day's end, then deletes them; without it,
//! closed windows' rows stay for good.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{AsArray, BooleanArray, RecordBatch};
use datafusion::arrow::compute::{cast, filter_record_batch};
use datafusion::arrow::datatypes::{DataType, SchemaRef, TimestampMillisecondType};
use datafusion::arrow::error::ArrowError;
use datafusion::catalog::{Session, TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::{plan_err, Column, ScalarValue};
use datafusion::datasource::{provider_as_source, TableType, ViewTable};
use datafusion::error::Result as DfResult;
use datafusion::functions_nested::expr_fn::make_array;
use datafusion::logical_expr::{cast as cast_expr, col, lit, Expr, LogicalPlanBuilder};
use datafusion::physical_plan::ExecutionPlan;

use crate::stream_table::{timestamp_type, StreamRegistry};

/// The column holding a window's first instant.
pub const WINDOW_START: &str = "window_start";
/// The column holding the instant after a window's last.
pub const WINDOW_END: &str = "window_end";
/// Most windows one record may fall in (`size / slide` of a `HOP`).
const MAX_WINDOWS_PER_RECORD: i64 = 1_000;

/// A window a query planned over a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowSpec {
    /// The stream whose events it reads.
    pub stream: String,
    /// Length of a window (milliseconds).
    pub size_ms: i64,
    /// Distance between window starts (milliseconds; `size_ms` for `TUMBLE`).
    pub slide_ms: i64,
    /// How long after a window closes its rows stay in the view (milliseconds of the
    /// watermark; `None`: for good). Then they leave it, and every sink deletes them.
    pub retention_ms: Option<i64>,
}

/// Which table function.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Tumble,
    Hop,
}

/// `TUMBLE` or `HOP`, over the streams of a registry.
#[derive(Debug)]
pub struct WindowFunction {
    kind: Kind,
    streams: StreamRegistry,
}

impl WindowFunction {
    /// `TUMBLE(stream, size)`.
    pub fn tumble(streams: StreamRegistry) -> Self {
        Self { kind: Kind::Tumble, streams }
    }

    /// `HOP(stream, slide, size)`.
    pub fn hop(streams: StreamRegistry) -> Self {
        Self { kind: Kind::Hop, streams }
    }

    fn usage(&self) -> &'static str {
        match self.kind {
            Kind::Tumble => "TUMBLE(stream, INTERVAL '1 hour'[, INTERVAL '30 days'])  (size, then how long closed windows' rows are kept)",
            Kind::Hop => "HOP(stream, INTERVAL '5 minutes', INTERVAL '1 hour'[, INTERVAL '30 days'])  (slide, size, then how long closed windows' rows are kept)",
        }
    }

    fn spec(&self, args: &[Expr]) -> DfResult<WindowSpec> {
        let usage = self.usage();
        let (stream, intervals, retention) = match (self.kind, args) {
            (Kind::Tumble, [stream, size, retention @ ..]) if retention.len() <= 1 => (stream, vec![size], retention.first()),
            (Kind::Hop, [stream, slide, size, retention @ ..]) if retention.len() <= 1 => (stream, vec![slide, size], retention.first()),
            _ => return plan_err!("write {usage}"),
        };
        let stream = match stream {
            Expr::Column(column) => column.name.clone(),
            Expr::Literal(ScalarValue::Utf8(Some(name)), _) => name.clone(),
            other => return plan_err!("{usage}: the first argument names a stream, not `{other}`"),
        };
        let in_usage = |m: String| datafusion::error::DataFusionError::Plan(format!("{usage}: {m}"));
        let intervals = intervals.into_iter().map(|e| interval_ms(e).map_err(in_usage)).collect::<DfResult<Vec<_>>>()?;
        let retention_ms = retention.map(|e| interval_ms(e).map_err(in_usage)).transpose()?;
        let (slide_ms, size_ms) = match intervals.as_slice() {
            [size] => (*size, *size),
            [slide, size] => (*slide, *size),
            _ => unreachable!("one or two intervals"),
        };
        if size_ms % slide_ms != 0 || size_ms / slide_ms > MAX_WINDOWS_PER_RECORD {
            return plan_err!("{usage}: the size must be a multiple of the slide, at most {MAX_WINDOWS_PER_RECORD} times it");
        }
        Ok(WindowSpec { stream, size_ms, slide_ms, retention_ms })
    }
}

impl TableFunctionImpl for WindowFunction {
    fn call_with_args(&self, args: TableFunctionArgs<'_, '_>) -> DfResult<Arc<dyn TableProvider>> {
        let spec = self.spec(args.exprs())?;
        let Some(stream) = self.streams.stream(&spec.stream) else {
            let declared: Vec<String> = self.streams.streams().into_iter().map(|s| s.name).collect();
            return plan_err!("{}: `{}` is not a stream (streams: {})", self.usage(), spec.stream, declared.join(", "));
        };
        let events = Arc::new(EventsTable { stream: stream.name.clone(), schema: stream.schema.clone(), streams: self.streams.clone() });
        let scan = LogicalPlanBuilder::scan(stream.name.as_str(), provider_as_source(events), None)?;
        let columns: Vec<Expr> = stream.schema.fields().iter().map(|f| Expr::Column(Column::new_unqualified(f.name()))).collect();
        // On epoch milliseconds (BIGINT), not timestamps: interval arithmetic on a
        // timestamp with a time zone goes through chrono-tz row by row, and was most of
        // a HOP view's time.
        const EVENT_MS: &str = "__event_ms";
        const STARTS: &str = "__window_starts";
        let plan = scan.project(columns.iter().cloned().chain([cast_expr(stream.event_time.expr.clone(), DataType::Int64).alias(EVENT_MS)]))?;
        let (t, slide) = (col(EVENT_MS), lit(spec.slide_ms));
        let first = t.clone() - ((t % slide.clone()) + slide.clone()) % slide;
        let starts: Vec<Expr> = (0..spec.size_ms / spec.slide_ms).map(|i| first.clone() - lit(i * spec.slide_ms)).collect();
        let plan = match starts.as_slice() {
            [start] => plan.project(columns.iter().cloned().chain([start.clone().alias(STARTS)]))?,
            _ => plan.project(columns.iter().cloned().chain([make_array(starts.clone()).alias(STARTS)]))?.unnest_column(STARTS)?,
        };
        let windows = [
            cast_expr(col(STARTS), timestamp_type()).alias(WINDOW_START),
            cast_expr(col(STARTS) + lit(spec.size_ms), timestamp_type()).alias(WINDOW_END),
        ];
        let plan = plan.project(columns.into_iter().chain(windows))?.build()?;
        self.streams.add_window(spec);
        Ok(Arc::new(ViewTable::new(plan, None)))
    }
}

/// `SESSION(…)`, refused with the reason: a session's end moves with every record that
/// extends it, so no group is known to be final when the watermark passes a fixed end.
#[derive(Debug)]
pub struct SessionRefused;

impl TableFunctionImpl for SessionRefused {
    fn call_with_args(&self, _args: TableFunctionArgs<'_, '_>) -> DfResult<Arc<dyn TableProvider>> {
        plan_err!(
            "SESSION windows are not supported: a session's end moves with every record that extends it, \
             so its groups could not close at a fixed time; use TUMBLE(stream, size) or HOP(stream, slide, size)"
        )
    }
}

/// The events of a stream: its `events` slot, or what replaced it (a batch run's input).
#[derive(Debug)]
struct EventsTable {
    stream: String,
    schema: SchemaRef,
    streams: StreamRegistry,
}

#[async_trait]
impl TableProvider for EventsTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if let Some(table) = self.streams.replaced_events(&self.stream) {
            return table.scan(state, projection, filters, limit).await;
        }
        let Some(stream) = self.streams.stream(&self.stream) else { return plan_err!("stream `{}` is gone", self.stream) };
        Ok(stream.events.exec(projection.cloned())?)
    }
}

/// Where the end of a window of `size_ms` is found among the columns `names`:
/// `window_end` itself (add 0), or `window_start` (add the size).
pub(crate) fn window_end_column<'a>(names: impl IntoIterator<Item = &'a str>, size_ms: i64) -> Option<(usize, i64)> {
    let names: Vec<&str> = names.into_iter().collect();
    match (names.iter().position(|n| *n == WINDOW_END), names.iter().position(|n| *n == WINDOW_START)) {
        (Some(end), _) => Some((end, 0)),
        (None, Some(start)) => Some((start, size_ms)),
        (None, None) => None,
    }
}

/// The rows of `rows` whose window ended by `watermark` (none without one): column
/// `column` plus `offset_ms` (see [`window_end_column`]) is at or before it.
pub(crate) fn closed_rows(rows: &RecordBatch, column: usize, offset_ms: i64, watermark: Option<i64>) -> Result<RecordBatch, ArrowError> {
    filter_record_batch(rows, &ended_by(rows, column, offset_ms, watermark)?)
}

/// The rows of `rows` whose window had not ended `retention_ms` before `watermark`
/// (all of them without one): the rows a view with that retention still holds.
pub(crate) fn retained_rows(
    rows: &RecordBatch,
    column: usize,
    offset_ms: i64,
    retention_ms: i64,
    watermark: Option<i64>,
) -> Result<RecordBatch, ArrowError> {
    let expired = ended_by(rows, column, offset_ms.saturating_add(retention_ms), watermark)?;
    filter_record_batch(rows, &datafusion::arrow::compute::not(&expired)?)
}

/// Per row of `rows`: whether column `column` plus `offset_ms` is at or before `watermark`.
fn ended_by(rows: &RecordBatch, column: usize, offset_ms: i64, watermark: Option<i64>) -> Result<BooleanArray, ArrowError> {
    let ends = end_times(rows, column, offset_ms)?;
    Ok(ends.into_iter().map(|end| Some(matches!((end, watermark), (Some(end), Some(w)) if end <= w))).collect())
}

/// Per row of `rows`: column `column` (a time) plus `offset_ms`, in milliseconds; the
/// end of a row's window when the column holds its start and the offset its size.
pub(crate) fn end_times(rows: &RecordBatch, column: usize, offset_ms: i64) -> Result<Vec<Option<i64>>, ArrowError> {
    let times = cast(rows.column(column), &timestamp_type())?;
    Ok(times.as_primitive::<TimestampMillisecondType>().iter().map(|t| t.map(|t| t.saturating_add(offset_ms))).collect())
}

/// The length of an interval literal, in milliseconds (months have no fixed length).
fn interval_ms(expr: &Expr) -> Result<i64, String> {
    let ms = match expr {
        Expr::Literal(ScalarValue::IntervalMonthDayNano(Some(i)), _) if i.months == 0 => i64::from(i.days) * 86_400_000 + i.nanoseconds / 1_000_000,
        Expr::Literal(ScalarValue::IntervalDayTime(Some(i)), _) => i64::from(i.days) * 86_400_000 + i64::from(i.milliseconds),
        Expr::Literal(ScalarValue::IntervalMonthDayNano(Some(_)), _) => return Err("months and years have no fixed length; give days".into()),
        other => return Err(format!("`{other}` is not an interval such as INTERVAL '1 hour'")),
    };
    if ms <= 0 {
        return Err(format!("`{expr}` is not a positive interval"));
    }
    Ok(ms)
}
