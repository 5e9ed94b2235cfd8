//! Event time and watermarks.
//!
//! A stream's event time is an SQL expression over its columns (`OPTIONS ('event_time'
//! …)`, by default `_timestamp`, the arrival time). Its watermark is the least, over
//! the partitions that delivered records, of the largest event time seen minus the
//! declared delay; partitions silent for longer than the idle timeout stop holding it
//! back, and so do partitions the source reads that have not delivered a record yet.
//! The watermark moves record by record, in arrival order, so the same records
//! give the same watermark before each of them whatever the micro-batch cuts. A record
//! whose event time is behind the watermark before it is *late*; one without an event
//! time (a null, a string the format does not read) cannot be placed in time. Neither
//! moves the watermark.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{Array, AsArray, BooleanArray, Int32Array};
use datafusion::arrow::compute::{cast, filter_record_batch};
use datafusion::arrow::datatypes::{DataType, TimestampMillisecondType};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::Session;
use datafusion::common::DFSchema;
use datafusion::logical_expr::simplify::SimplifyContext;
use datafusion::logical_expr::Expr;
use datafusion::optimizer::simplify_expressions::ExprSimplifier;
use datafusion::physical_expr::PhysicalExpr;
use serde::{Deserialize, Serialize};

use crate::error::{EngineError, Result};
use crate::stream_table::{timestamp_type, PARTITION_COLUMN};

/// A stream's event time: the expression, as declared and compiled against the stream's schema.
#[derive(Debug, Clone)]
pub struct EventTime {
    /// The expression as the user wrote it (or implied it), for messages.
    pub text: String,
    /// The expression, over the stream's columns, cast to milliseconds since the epoch (UTC).
    pub expr: Expr,
    physical: Arc<dyn PhysicalExpr>,
    /// Allowed lateness: the watermark trails the largest event time by this much.
    pub delay: Duration,
    /// A partition that delivered nothing for this long stops holding the watermark back.
    pub idle_timeout: Duration,
    partition: usize,
}

impl EventTime {
    /// Compiles `expr` (written as `text`) against `schema`, a stream's full schema, in
    /// `session` (which coerces its types, e.g. of a COALESCE over two time types).
    pub fn new(text: String, expr: Expr, schema: &DFSchema, delay: Duration, idle_timeout: Duration, session: &dyn Session) -> Result<Self> {
        let expr = Expr::Cast(datafusion::logical_expr::Cast::new(Box::new(expr), timestamp_type()));
        // Physical planning expects simplified expressions (COALESCE rewritten to CASE…).
        let simplifier = ExprSimplifier::new(SimplifyContext::builder().with_schema(Arc::new(schema.clone())).build());
        let simplified = simplifier.simplify(simplifier.coerce(expr.clone(), schema)?)?;
        let physical = session.create_physical_expr(simplified, schema)?;
        let partition = schema.index_of_column_by_name(None, PARTITION_COLUMN).ok_or_else(|| EngineError::internal("a stream without _partition"))?;
        Ok(Self { text, expr, physical, delay, idle_timeout, partition })
    }

    /// The event time of every row of `batch` (milliseconds), `None` where it has none:
    /// a null, or a value the expression fails on (a string its format does not read).
    pub fn times(&self, batch: &RecordBatch) -> Vec<Option<i64>> {
        let mut times = Vec::with_capacity(batch.num_rows());
        self.times_into(batch, &mut times);
        times
    }

    /// Appends the event times of `batch`'s rows to `times`. Parsing fails for a whole
    /// batch on one bad string: the halves of a failing batch are tried apart, so a few
    /// bad strings cost a few evaluations per halving, not one per row; a failing slice
    /// of a few rows is tried row by row.
    fn times_into(&self, batch: &RecordBatch, times: &mut Vec<Option<i64>>) {
        const ROW_BY_ROW: usize = 16;
        match self.evaluate(batch) {
            Ok(evaluated) => times.extend(evaluated),
            Err(_) if batch.num_rows() <= ROW_BY_ROW => {
                times.extend((0..batch.num_rows()).map(|row| self.evaluate(&batch.slice(row, 1)).ok().and_then(|t| t[0])))
            }
            Err(_) => {
                let half = batch.num_rows() / 2;
                self.times_into(&batch.slice(0, half), times);
                self.times_into(&batch.slice(half, batch.num_rows() - half), times);
            }
        }
    }

    fn evaluate(&self, batch: &RecordBatch) -> Result<Vec<Option<i64>>> {
        let values = self.physical.evaluate(batch)?.into_array(batch.num_rows())?;
        let values = cast(&values, &timestamp_type())?;
        Ok(values.as_primitive::<TimestampMillisecondType>().iter().collect())
    }
}

/// What a watermark remembers across restarts: the largest event time per partition and
/// the watermark itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatermarkState {
    /// Partition → largest event time seen (milliseconds).
    pub partitions: BTreeMap<i32, i64>,
    /// The watermark (milliseconds); `None` before the first record.
    pub watermark: Option<i64>,
}

/// The rows of one micro-batch, split by their event times.
#[derive(Debug)]
pub struct Timed {
    /// One flag per row: whether it is on time (placed in time, not behind the watermark).
    pub on_time: BooleanArray,
    /// Rows that are not, with the reason.
    pub late: Vec<(usize, String)>,
}

impl Timed {
    /// The on-time rows of `batch`.
    pub fn on_time_rows(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        if self.late.is_empty() {
            return Ok(batch.clone());
        }
        Ok(filter_record_batch(batch, &self.on_time)?)
    }
}

/// A stream's watermark, moved record by record.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use std::time::Duration;
/// use datafusion::arrow::array::{Int32Array, RecordBatch, TimestampMillisecondArray};
/// use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
/// use datafusion::common::DFSchema;
/// use datafusion::prelude::{col, SessionContext};
/// use trendflow_engine::event_time::{EventTime, Watermark};
///
/// let schema = Arc::new(Schema::new(vec![
///     Field::new("_partition", DataType::Int32, false),
///     Field::new("t", DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())), true),
/// ]));
/// let df_schema = DFSchema::try_from(schema.as_ref().clone())?;
/// let session = SessionContext::new().state();
/// let time = EventTime::new("t".into(), col("t"), &df_schema, Duration::from_millis(10), Duration::from_secs(60), &session)?;
/// let batch = RecordBatch::try_new(schema, vec![
///     Arc::new(Int32Array::from(vec![0, 0, 0])),
///     Arc::new(TimestampMillisecondArray::from(vec![100, 95, 80]).with_timezone("UTC")),
/// ])?;
/// let mut watermark = Watermark::new(time);
/// let timed = watermark.observe(&batch)?;
/// assert_eq!(watermark.current(), Some(90)); // 100 - 10
/// assert_eq!(timed.late.len(), 1); // 80 is behind 90; 95 was not
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Watermark {
    time: EventTime,
    state: WatermarkState,
    /// When each partition last delivered a record (this process's clock; not checkpointed).
    last_seen: BTreeMap<i32, Instant>,
    /// Partitions the source reads that have delivered no record yet, and since when
    /// they are known: they hold the watermark back until they deliver or prove idle.
    pending: BTreeMap<i32, Instant>,
}

impl Watermark {
    /// A watermark before any record.
    pub fn new(time: EventTime) -> Self {
        Self { time, state: WatermarkState::default(), last_seen: BTreeMap::new(), pending: BTreeMap::new() }
    }

    /// The watermark (milliseconds), `None` before the first record.
    pub fn current(&self) -> Option<i64> {
        self.state.watermark
    }

    /// What a checkpoint keeps.
    pub fn state(&self) -> &WatermarkState {
        &self.state
    }

    /// Continues from a checkpoint.
    pub fn restore(&mut self, state: WatermarkState) {
        self.state = state;
        self.last_seen.clear();
        self.pending.clear();
    }

    /// Makes the partitions a source reads (say, every partition of a topic) hold the
    /// watermark back until each delivers a record or stays silent for the idle timeout:
    /// otherwise the first partition read would move it past another's backlog.
    pub fn expect_partitions(&mut self, partitions: impl IntoIterator<Item = i32>) {
        let now = Instant::now();
        for partition in partitions {
            if !self.state.partitions.contains_key(&partition) {
                self.pending.entry(partition).or_insert(now);
            }
        }
    }

    /// Moves the watermark over the rows of `batch`, in order, and says which are late.
    pub fn observe(&mut self, batch: &RecordBatch) -> Result<Timed> {
        let times = self.time.times(batch);
        let partitions = batch
            .column(self.time.partition)
            .as_any()
            .downcast_ref::<Int32Array>()
            .ok_or_else(|| EngineError::internal("_partition is not Int32"))?;
        let now = Instant::now();
        let delay = i64::try_from(self.time.delay.as_millis()).unwrap_or(i64::MAX);
        let mut late = Vec::new();
        let mut flags = Vec::with_capacity(times.len());
        for (row, time) in times.into_iter().enumerate() {
            let verdict = match (time, self.state.watermark) {
                (None, _) => Err(format!("no event time: `{}` is null or cannot be read as a time", self.time.text)),
                (Some(t), Some(w)) if t < w => Err(format!("late: event time {} is behind the watermark {}", format_ms(t), format_ms(w))),
                (Some(t), _) => Ok(t),
            };
            match verdict {
                Ok(t) => {
                    let partition = partitions.value(row);
                    self.pending.remove(&partition);
                    let max = self.state.partitions.entry(partition).or_insert(t);
                    *max = (*max).max(t);
                    self.last_seen.insert(partition, now);
                    self.advance(delay, now);
                    flags.push(true);
                }
                Err(reason) => {
                    late.push((row, reason));
                    flags.push(false);
                }
            }
        }
        Ok(Timed { on_time: BooleanArray::from(flags), late })
    }

    fn advance(&mut self, delay: i64, now: Instant) {
        if self.pending.values().any(|known| now.duration_since(*known) <= self.time.idle_timeout) {
            return;
        }
        let active = self.state.partitions.iter().filter(|(p, _)| {
            // A partition not seen by this process since it started is active until it proves idle.
            self.last_seen.get(p).is_none_or(|seen| now.duration_since(*seen) <= self.time.idle_timeout)
        });
        let Some(least) = active.map(|(_, max)| *max).min() else { return };
        let candidate = least.saturating_sub(delay);
        if self.state.watermark.is_none_or(|w| candidate > w) {
            self.state.watermark = Some(candidate);
        }
    }
}

/// A time in milliseconds as an RFC 3339 UTC string, for messages.
pub fn format_ms(ms: i64) -> String {
    datafusion::arrow::temporal_conversions::timestamp_ms_to_datetime(ms)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_else(|| ms.to_string())
}

/// Checks that `data_type` can be an event time: a timestamp, a date, or a string (read
/// as RFC 3339 unless a format is given).
pub fn can_be_event_time(data_type: &DataType) -> bool {
    matches!(data_type, DataType::Timestamp(..) | DataType::Date32 | DataType::Date64 | DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
}

/// One micro-batch of a stream, split by event time.
#[derive(Debug)]
pub struct TimedBatch {
    /// What the stream's views read as its rows: on an append stream its on-time
    /// records; on a changelog stream every change (a late change still changes the table).
    pub rows: RecordBatch,
    /// What windows read: the on-time records (on a changelog stream, of its inserts and updates).
    pub events: RecordBatch,
    /// Records that are not on time, with their reasons.
    pub late: RecordBatch,
    /// Why each row of `late` is.
    pub reasons: Vec<String>,
}

impl Watermark {
    /// Moves the watermark over `batch`, a micro-batch of `stream` whose rows `deleted`
    /// marks delete their key (deletes carry no event time and are no events).
    pub fn split(&mut self, keyed: bool, batch: &RecordBatch, deleted: Option<&BooleanArray>) -> Result<TimedBatch> {
        let candidates = match deleted {
            Some(deleted) if keyed => filter_record_batch(batch, &datafusion::arrow::compute::not(deleted)?)?,
            _ => batch.clone(),
        };
        let timed = self.observe(&candidates)?;
        let events = timed.on_time_rows(&candidates)?;
        let late = if timed.late.is_empty() {
            RecordBatch::new_empty(batch.schema())
        } else {
            filter_record_batch(&candidates, &datafusion::arrow::compute::not(&timed.on_time)?)?
        };
        let reasons = timed.late.into_iter().map(|(_, reason)| reason).collect();
        let rows = if keyed { batch.clone() } else { events.clone() };
        Ok(TimedBatch { rows, events, late, reasons })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Int32Array, TimestampMillisecondArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    use datafusion::prelude::{col, SessionContext};

    use super::*;

    fn watermark(idle: Duration) -> (Watermark, Arc<Schema>) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("_partition", DataType::Int32, false),
            Field::new("t", DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())), true),
        ]));
        let df_schema = DFSchema::try_from(schema.as_ref().clone()).unwrap();
        let time = EventTime::new("t".into(), col("t"), &df_schema, Duration::ZERO, idle, &SessionContext::new().state()).unwrap();
        (Watermark::new(time), schema)
    }

    fn rows(schema: &Arc<Schema>, partitions: Vec<i32>, times: Vec<Option<i64>>) -> RecordBatch {
        let times = TimestampMillisecondArray::from(times).with_timezone("UTC");
        RecordBatch::try_new(schema.clone(), vec![Arc::new(Int32Array::from(partitions)), Arc::new(times)]).unwrap()
    }

    #[test]
    fn a_partition_that_has_not_delivered_holds_the_watermark_back() {
        let (mut watermark, schema) = watermark(Duration::from_secs(60));
        watermark.expect_partitions([0, 1]);
        watermark.observe(&rows(&schema, vec![0, 0], vec![Some(500), Some(900)])).unwrap();
        assert_eq!(watermark.current(), None, "partition 1 may still hold older records");
        let timed = watermark.observe(&rows(&schema, vec![1, 0], vec![Some(100), Some(50)])).unwrap();
        assert_eq!(watermark.current(), Some(100), "the least of the partitions' largest times");
        assert_eq!(timed.late.len(), 1, "50 is behind 100");
        assert!(timed.late[0].1.starts_with("late: event time 1970-01-01T00:00:00.050Z"), "{:?}", timed.late);
    }

    #[test]
    fn an_idle_partition_stops_holding_it_back_and_a_null_time_is_refused() {
        let (mut watermark, schema) = watermark(Duration::ZERO);
        watermark.expect_partitions([0, 1]);
        let timed = watermark.observe(&rows(&schema, vec![0, 0], vec![Some(500), None])).unwrap();
        assert_eq!(watermark.current(), Some(500), "partition 1 is idle at once with a zero timeout");
        assert!(timed.late[0].1.starts_with("no event time"), "{:?}", timed.late);
    }
}
