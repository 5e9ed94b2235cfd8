//! DataFusion's `to_timestamp` family (`to_timestamp`, `to_timestamp_seconds`,
//! `_millis`, `_micros`, `_nanos`), with chrono formats that are literals read once per
//! call instead of once per row.
//!
//! A stream's event time is often such a call (`to_timestamp_millis(date, '%d/%m/%Y
//! %H:%M')`), evaluated over every record; DataFusion re-reads the format string for
//! each row, which was most of the time event time took. Where the replacement reads
//! the strings, it converts them as DataFusion does (an instant with an offset as it is,
//! a local time in the session's time zone, the first format that reads the string
//! winning); wherever it does not (no format reads a string, a format names a zone with
//! `%Z`, a format is a column, …) DataFusion's own function answers the whole call, with
//! its own errors. One difference: with a session time zone set, DataFusion 55.2's own
//! functions fail (their result lacks the zone their plan promised), where these give
//! the times in that zone.
//!
//! ```
//! use datafusion::prelude::SessionContext;
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> datafusion::error::Result<()> {
//! let ctx = SessionContext::new();
//! trendflow_engine::time_format::register(&ctx);
//! let df = ctx.sql("SELECT to_timestamp_millis(d, '%Y', '%d/%m/%Y %H:%M') AS t FROM (VALUES ('31/12/2023 00:00')) AS v(d)").await?;
//! let rows = df.collect().await?;
//! assert_eq!(datafusion::arrow::util::pretty::pretty_format_batches(&rows)?.to_string().lines().nth(3), Some("| 2023-12-31T00:00:00 |"));
//! # Ok(())
//! # }
//! ```

use std::sync::Arc;

use chrono::format::{parse, Item, Parsed, StrftimeItems};
use chrono::{LocalResult, TimeZone};
use datafusion::arrow::array::timezone::Tz;
use datafusion::arrow::array::{Array, ArrayRef, AsArray, PrimitiveArray};
use datafusion::arrow::datatypes::{
    ArrowTimestampType, DataType, TimeUnit, TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType, TimestampSecondType,
};
use datafusion::common::config::ConfigOptions;
use datafusion::common::ScalarValue;
use datafusion::error::Result;
use datafusion::execution::FunctionRegistry;
use datafusion::logical_expr::{ColumnarValue, Documentation, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature};
use datafusion::prelude::SessionContext;

/// The functions replaced.
const NAMES: [&str; 5] = ["to_timestamp", "to_timestamp_seconds", "to_timestamp_millis", "to_timestamp_micros", "to_timestamp_nanos"];

/// Replaces `ctx`'s `to_timestamp*` functions by ones that read literal formats once per call.
pub fn register(ctx: &SessionContext) {
    for name in NAMES {
        if let Ok(inner) = ctx.udf(name) {
            ctx.register_udf(ScalarUDF::new_from_impl(FormatsReadOnce { inner: inner.as_ref().clone() }));
        }
    }
}

/// A `to_timestamp*` function of DataFusion, `inner`, that reads literal formats once.
#[derive(Debug, PartialEq, Eq, Hash)]
struct FormatsReadOnce {
    inner: ScalarUDF,
}

impl ScalarUDFImpl for FormatsReadOnce {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }

    /// The session's time zone is the result's: DataFusion re-creates the function.
    fn with_updated_config(&self, config: &ConfigOptions) -> Option<ScalarUDF> {
        let inner = self.inner.inner().with_updated_config(config)?;
        Some(ScalarUDF::new_from_impl(Self { inner }))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        match read_with_literal_formats(&args) {
            Some(times) => Ok(ColumnarValue::Array(times)),
            None => self.inner.invoke_with_args(args),
        }
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }
}

/// The call's result where its first argument is an array of strings, its formats are
/// literals, and every string is read by one of them; `None` otherwise.
fn read_with_literal_formats(args: &ScalarFunctionArgs) -> Option<ArrayRef> {
    let [ColumnarValue::Array(strings), formats @ ..] = args.args.as_slice() else { return None };
    let DataType::Timestamp(unit, zone) = args.return_type() else { return None };
    let formats = literal_formats(formats)?;
    let reader = Reader { formats, zone: zone.as_deref().unwrap_or("UTC").parse().ok()?, zone_name: zone.clone() };
    match unit {
        TimeUnit::Second => reader.read::<TimestampSecondType>(strings),
        TimeUnit::Millisecond => reader.read::<TimestampMillisecondType>(strings),
        TimeUnit::Microsecond => reader.read::<TimestampMicrosecondType>(strings),
        TimeUnit::Nanosecond => reader.read::<TimestampNanosecondType>(strings),
    }
}

/// The formats, read, where each is a literal string and at least one is not null.
/// (DataFusion skips null formats; with none left every result is null, which it says.)
/// A format naming a zone (`%Z`) DataFusion handles apart: not read here.
fn literal_formats(formats: &[ColumnarValue]) -> Option<Vec<Vec<Item<'static>>>> {
    let mut read = Vec::with_capacity(formats.len());
    for format in formats {
        let ColumnarValue::Scalar(ScalarValue::Utf8(format) | ScalarValue::LargeUtf8(format) | ScalarValue::Utf8View(format)) = format else {
            return None;
        };
        let Some(format) = format else { continue };
        if format.contains("%Z") {
            return None;
        }
        read.push(StrftimeItems::new(format).parse_to_owned().ok()?);
    }
    (!read.is_empty()).then_some(read)
}

/// Reads strings with formats already read, in a time zone (the session's, which the
/// result's type names; UTC where it names none).
struct Reader {
    formats: Vec<Vec<Item<'static>>>,
    zone: Tz,
    zone_name: Option<Arc<str>>,
}

impl Reader {
    /// Every string of `strings` as a timestamp of `T`'s unit (nulls stay null); `None`
    /// where one is not read by any format.
    fn read<T: ArrowTimestampType>(&self, strings: &ArrayRef) -> Option<ArrayRef> {
        let factor = match T::UNIT {
            TimeUnit::Second => 1_000_000_000,
            TimeUnit::Millisecond => 1_000_000,
            TimeUnit::Microsecond => 1_000,
            TimeUnit::Nanosecond => 1,
        };
        // As DataFusion does: nanoseconds first, then truncated to the unit.
        // Outer `None`: not read; inner: a null string.
        let each = |s: Option<&str>| match s {
            Some(s) => self.nanos(s).map(|n| Some(n / factor)),
            None => Some(None),
        };
        let times: Option<PrimitiveArray<T>> = match strings.data_type() {
            DataType::Utf8 => strings.as_string::<i32>().iter().map(each).collect(),
            DataType::LargeUtf8 => strings.as_string::<i64>().iter().map(each).collect(),
            DataType::Utf8View => strings.as_string_view().iter().map(each).collect(),
            _ => None,
        };
        Some(Arc::new(times?.with_timezone_opt(self.zone_name.clone())) as ArrayRef)
    }

    /// `s` in nanoseconds since the epoch, by the first format that reads it.
    fn nanos(&self, s: &str) -> Option<i64> {
        self.formats.iter().find_map(|items| {
            let mut parsed = Parsed::new();
            parse(&mut parsed, s, items.iter()).ok()?;
            let instant = match parsed.to_datetime() {
                Ok(instant) => instant.with_timezone(&self.zone),
                // No offset in the string: a local time of the session's zone.
                Err(_) => {
                    let local = parsed.to_naive_datetime_with_offset(0).or_else(|_| parsed.to_naive_date().map(Into::into)).ok()?;
                    match self.zone.from_local_datetime(&local) {
                        LocalResult::Single(instant) => instant,
                        _ => return None,
                    }
                }
            };
            instant.timestamp_nanos_opt()
        })
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::util::pretty::pretty_format_batches;

    use super::*;

    /// What a query gives: its rows, or that it failed (the message may differ only
    /// where DataFusion answers the call itself, so it is compared too).
    async fn outcome(ctx: &SessionContext, sql: &str) -> String {
        match ctx.sql(sql).await {
            Ok(df) => match df.collect().await {
                Ok(rows) => pretty_format_batches(&rows).unwrap().to_string(),
                Err(e) => format!("error: {e}"),
            },
            Err(e) => format!("error: {e}"),
        }
    }

    /// Every function, over strings its formats read and strings they do not, gives what
    /// DataFusion's own gives.
    #[tokio::test]
    async fn reads_as_datafusion_does() {
        let strings = [
            "'31/12/2023 00:00'",
            "'01/02/2024 13:45'",
            "'2024-02-29T10:00:00+02:00'",
            "'2024-03-10 02:30:00'",
            "'1969-12-31 23:59:59'",
            "'10/03/2024'",
            "'2262-04-12 00:00:00'",
            "NULL",
        ];
        let formats = [
            "'%d/%m/%Y %H:%M'",
            "'%Y-%m-%dT%H:%M:%S%:z'",
            "'%Y-%m-%d %H:%M:%S', '%d/%m/%Y %H:%M'",
            "'%d/%m/%Y'",
            "NULL, '%d/%m/%Y %H:%M'",
            "'%Y-%m-%d %H:%M:%S %Z'",
            "'%Q'",
        ];
        {
            let theirs = SessionContext::new();
            let ours = SessionContext::new();
            register(&ours);
            for name in NAMES {
                for (format, string_type) in formats.iter().flat_map(|f| ["Utf8", "LargeUtf8", "Utf8View"].map(|t| (f, t))) {
                    // Each string alone (a column of one row), then all of them in one column.
                    let call = format!("{name}(arrow_cast(s, '{string_type}'), {format})");
                    let alone = strings.iter().map(|s| format!("SELECT {call} FROM (VALUES ({s})) AS t(s)"));
                    let values = strings.iter().filter(|s| !s.contains('+') && !s.contains("2262")).map(|s| format!("({s})")).collect::<Vec<_>>();
                    let together = format!("SELECT {call} FROM (VALUES {}) AS t(s)", values.join(", "));
                    for sql in alone.chain([together]) {
                        assert_eq!(outcome(&ours, &sql).await, outcome(&theirs, &sql).await, "{sql}");
                    }
                }
            }
        }
    }

    /// In a session time zone a string without an offset is a local time of that zone.
    /// (DataFusion 55.2's own functions fail there: their result lacks the zone the plan
    /// promised. So these answers are worked out, not compared.)
    #[tokio::test]
    async fn reads_local_times_in_the_session_time_zone() {
        let ctx = SessionContext::new();
        register(&ctx);
        ctx.sql("SET datafusion.execution.time_zone = 'America/New_York'").await.unwrap().collect().await.unwrap();
        let sql = "SELECT to_timestamp_millis(s, '%d/%m/%Y %H:%M', '%Y-%m-%dT%H:%M:%S%:z') AS t \
                   FROM (VALUES ('31/12/2023 00:00'), ('01/07/2024 12:00'), ('2024-02-29T10:00:00+02:00')) AS v(s)";
        let got = outcome(&ctx, sql).await;
        for want in ["2023-12-31T00:00:00-05:00", "2024-07-01T12:00:00-04:00", "2024-02-29T03:00:00-05:00"] {
            assert!(got.contains(want), "{want} in {got}");
        }
    }

    /// The replacement is the function the session calls; it reads literal formats and
    /// leaves the rest to DataFusion.
    #[test]
    fn literal_formats_are_read_once_and_zone_names_are_left_to_datafusion() {
        let utf8 = |s: &str| ColumnarValue::Scalar(ScalarValue::Utf8(Some(s.into())));
        assert_eq!(literal_formats(&[utf8("%d/%m/%Y"), ColumnarValue::Scalar(ScalarValue::Utf8(None))]).map(|f| f.len()), Some(1));
        assert!(literal_formats(&[utf8("%Y-%m-%d %Z")]).is_none());
        assert!(literal_formats(&[ColumnarValue::Scalar(ScalarValue::Utf8(None))]).is_none());
        let ctx = SessionContext::new();
        register(&ctx);
        assert!(ctx.udf("to_timestamp_millis").unwrap().inner().is::<FormatsReadOnce>());
    }
}
