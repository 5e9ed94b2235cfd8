//! The job's HTTP status endpoint: `/healthz`, `/readyz`, `/metrics` (Prometheus
//! text format) and `/status` (the same figures as JSON).
//!
//! The job records each micro-batch into a [`JobStatus`]; the endpoint reads it,
//! plus the view sizes and the checkpoint age, when asked.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Serialize;
use trendflow_engine::runtime::StepReport;

use crate::error::{Result, ServerError};

/// Upper bounds (seconds) of the micro-batch latency histogram buckets.
const LATENCY_BUCKETS: [f64; 11] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// The span `records_per_second` averages over.
const THROUGHPUT_WINDOW: Duration = Duration::from_secs(10);

/// Counts of one stream.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StreamCounts {
    /// Records processed.
    pub records: u64,
    /// Records sent to dead letters.
    pub dead_letters: u64,
    /// Records behind the stream's watermark (see `StepReport::late`).
    pub late: u64,
    /// The stream's watermark (ms since the epoch), once a record had an event time.
    pub watermark_ms: Option<i64>,
    /// Records waiting in the source (Kafka consumer lag), when the source can tell.
    pub lag: Option<u64>,
}

/// Changes of one view.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ViewCounts {
    /// Rows the view holds now.
    pub rows: usize,
    /// Rows upserted since the job started.
    pub upserts: u64,
    /// Rows deleted since the job started.
    pub deletes: u64,
    /// When the view last changed (ms since the epoch).
    pub updated_at_ms: Option<u64>,
}

/// Everything `/status` reports.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StatusSnapshot {
    /// Whether the job is processing and every watched part (sinks) is healthy.
    pub ready: bool,
    /// Micro-batches processed by this process.
    pub micro_batches: u64,
    /// Id of the last micro-batch (continues across restarts).
    pub last_batch_id: u64,
    /// Per stream.
    pub streams: BTreeMap<String, StreamCounts>,
    /// Per view.
    pub views: BTreeMap<String, ViewCounts>,
    /// Records per second over the last [`THROUGHPUT_WINDOW`].
    pub records_per_second: f64,
    /// Seconds since the last checkpoint was written (None: none yet).
    pub checkpoint_age_seconds: Option<f64>,
    /// Micro-batch wall time: count and sum of seconds, and per-bucket counts.
    pub latency_count: u64,
    /// Sum of micro-batch wall times, seconds.
    pub latency_sum_seconds: f64,
    /// Cumulative counts per bucket of [`LATENCY_BUCKETS`].
    pub latency_buckets: Vec<u64>,
    /// Seconds spent per stage of the micro-batch loop (poll, prepare, views, sink,
    /// checkpoint), since the job started.
    pub stage_seconds: BTreeMap<String, f64>,
}

/// The job's figures, shared between the micro-batch loop and the endpoint.
///
/// ```
/// use trendflow_engine::runtime::StepReport;
/// use trendflow_server::status::JobStatus;
/// let status = JobStatus::new("state/checkpoints/CURRENT".into(), Box::new(Default::default));
/// status.record(&StepReport { batch_id: 1, rows: 10, ..Default::default() });
/// assert_eq!(status.snapshot().micro_batches, 1);
/// assert!(status.prometheus().contains("trendflow_micro_batches_total 1"));
/// assert!(status.prometheus().contains("trendflow_stage_seconds_total{stage=\"views\"}"));
/// ```
pub struct JobStatus {
    state: Mutex<StatusSnapshot>,
    /// (when, records) of the micro-batches within [`THROUGHPUT_WINDOW`].
    recent: Mutex<VecDeque<(Instant, u64)>>,
    checkpoint_pointer: PathBuf,
    view_sizes: Box<dyn Fn() -> BTreeMap<String, usize> + Send + Sync>,
    /// Flags of parts that can turn unhealthy (a sink retrying writes): all must hold.
    health: Mutex<Vec<Arc<AtomicBool>>>,
}

impl JobStatus {
    /// `checkpoint_pointer` is the file replaced at every checkpoint (its age is the
    /// checkpoint age); `view_sizes` reads the current row count of each view.
    pub fn new(checkpoint_pointer: PathBuf, view_sizes: Box<dyn Fn() -> BTreeMap<String, usize> + Send + Sync>) -> Self {
        let state = StatusSnapshot { latency_buckets: vec![0; LATENCY_BUCKETS.len()], ..Default::default() };
        Self { state: Mutex::new(state), recent: Mutex::default(), checkpoint_pointer, view_sizes, health: Mutex::default() }
    }

    /// Makes readiness depend on `flag` too (e.g. a sink's health).
    pub fn watch(&self, flag: Arc<AtomicBool>) {
        self.health.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(flag);
    }

    /// Running, and every watched part healthy.
    fn is_ready(&self) -> bool {
        let healthy = self.health.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).iter().all(|f| f.load(Ordering::Relaxed));
        self.lock().ready && healthy
    }

    /// Marks the job ready (processing) or not (starting, stopping, retrying a sink).
    pub fn set_ready(&self, ready: bool) {
        self.lock().ready = ready;
    }

    /// Adds one micro-batch's figures.
    pub fn record(&self, report: &StepReport) {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).ok();
        {
            let mut recent = self.recent.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            recent.push_back((Instant::now(), report.rows));
            while recent.front().is_some_and(|(t, _)| t.elapsed() > THROUGHPUT_WINDOW) {
                recent.pop_front();
            }
        }
        let mut state = self.lock();
        state.micro_batches += 1;
        state.last_batch_id = report.batch_id;
        for (stream, (records, rejected)) in &report.streams {
            let counts = state.streams.entry(stream.clone()).or_default();
            counts.records += records;
            counts.dead_letters += rejected;
        }
        for (stream, late) in &report.late {
            state.streams.entry(stream.clone()).or_default().late += late;
        }
        for (stream, watermark) in &report.watermarks {
            state.streams.entry(stream.clone()).or_default().watermark_ms = Some(*watermark);
        }
        for (stream, lag) in &report.lag {
            state.streams.entry(stream.clone()).or_default().lag = Some(*lag);
        }
        for (view, (upserts, deletes)) in &report.changes {
            let counts = state.views.entry(view.clone()).or_default();
            counts.upserts += *upserts as u64;
            counts.deletes += *deletes as u64;
            if upserts + deletes > 0 {
                counts.updated_at_ms = now;
            }
        }
        for (stage, time) in report.stages.named() {
            *state.stage_seconds.entry(stage.to_string()).or_default() += time.as_secs_f64();
        }
        let seconds = report.elapsed.as_secs_f64();
        state.latency_count += 1;
        state.latency_sum_seconds += seconds;
        for (bucket, bound) in state.latency_buckets.iter_mut().zip(LATENCY_BUCKETS) {
            if seconds <= bound {
                *bucket += 1;
            }
        }
    }

    /// The current figures, with view sizes and checkpoint age filled in.
    pub fn snapshot(&self) -> StatusSnapshot {
        let mut snapshot = self.lock().clone();
        snapshot.ready = self.is_ready();
        let recent = self.recent.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let records: u64 = recent.iter().filter(|(t, _)| t.elapsed() <= THROUGHPUT_WINDOW).map(|(_, n)| n).sum();
        snapshot.records_per_second = records as f64 / THROUGHPUT_WINDOW.as_secs_f64();
        drop(recent);
        for (view, rows) in (self.view_sizes)() {
            snapshot.views.entry(view).or_default().rows = rows;
        }
        snapshot.checkpoint_age_seconds = std::fs::metadata(&self.checkpoint_pointer)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .map(|age: Duration| age.as_secs_f64());
        snapshot
    }

    /// The figures in Prometheus text format.
    pub fn prometheus(&self) -> String {
        let s = self.snapshot();
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, samples: Vec<(String, String)>| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        let label = |key: &str, value: &str| format!("{{{key}=\"{}\"}}", value.replace('\\', "\\\\").replace('"', "\\\""));
        metric("trendflow_ready", "gauge", "1 while the job is processing.", vec![(String::new(), u8::from(s.ready).to_string())]);
        metric(
            "trendflow_records_per_second",
            "gauge",
            "Records processed per second over the last 10 s.",
            vec![(String::new(), format!("{:.1}", s.records_per_second))],
        );
        metric("trendflow_micro_batches_total", "counter", "Micro-batches processed.", vec![(String::new(), s.micro_batches.to_string())]);
        let per_stream = |f: fn(&StreamCounts) -> u64| s.streams.iter().map(|(n, c)| (label("stream", n), f(c).to_string())).collect();
        metric("trendflow_records_total", "counter", "Records processed, per stream.", per_stream(|c| c.records));
        metric("trendflow_dead_letters_total", "counter", "Records sent to dead letters, per stream.", per_stream(|c| c.dead_letters));
        metric("trendflow_late_records_total", "counter", "Records behind the stream's watermark, per stream.", per_stream(|c| c.late));
        let watermarks = s.streams.iter().filter_map(|(n, c)| Some((label("stream", n), (c.watermark_ms? as f64 / 1000.0).to_string()))).collect();
        metric("trendflow_watermark_seconds", "gauge", "The stream's watermark, in seconds since the epoch.", watermarks);
        let lags = s.streams.iter().filter_map(|(n, c)| Some((label("stream", n), c.lag?.to_string()))).collect();
        metric("trendflow_consumer_lag_records", "gauge", "Records waiting in the source (Kafka end offsets minus positions).", lags);
        let per_view = |f: fn(&ViewCounts) -> String| s.views.iter().map(|(n, c)| (label("view", n), f(c))).collect();
        metric("trendflow_view_rows", "gauge", "Rows each view holds.", per_view(|c| c.rows.to_string()));
        metric("trendflow_view_upserts_total", "counter", "Rows upserted, per view.", per_view(|c| c.upserts.to_string()));
        metric("trendflow_view_deletes_total", "counter", "Rows deleted, per view.", per_view(|c| c.deletes.to_string()));
        let age = s.checkpoint_age_seconds.map_or_else(|| "NaN".to_string(), |a| format!("{a:.3}"));
        metric("trendflow_checkpoint_age_seconds", "gauge", "Seconds since the last checkpoint.", vec![(String::new(), age)]);
        let mut buckets: Vec<(String, String)> =
            LATENCY_BUCKETS.iter().zip(&s.latency_buckets).map(|(b, n)| (format!("_bucket{{le=\"{b}\"}}"), n.to_string())).collect();
        buckets.push(("_bucket{le=\"+Inf\"}".into(), s.latency_count.to_string()));
        buckets.push(("_sum".into(), format!("{:.6}", s.latency_sum_seconds)));
        buckets.push(("_count".into(), s.latency_count.to_string()));
        metric("trendflow_micro_batch_seconds", "histogram", "Wall time of a micro-batch, sink included.", buckets);
        let stages = s.stage_seconds.iter().map(|(stage, seconds)| (label("stage", stage), format!("{seconds:.6}"))).collect();
        metric(
            "trendflow_stage_seconds_total",
            "counter",
            "Seconds spent per stage of the micro-batch loop: poll (wait, fetch, decode), prepare, views, sink, checkpoint.",
            stages,
        );
        out
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StatusSnapshot> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The endpoint's routes.
pub fn router(status: Arc<JobStatus>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/status", get(status_json))
        .with_state(status)
}

async fn readyz(axum::extract::State(status): axum::extract::State<Arc<JobStatus>>) -> Response {
    if status.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

async fn metrics(axum::extract::State(status): axum::extract::State<Arc<JobStatus>>) -> Response {
    ([("content-type", "text/plain; version=0.0.4")], status.prometheus()).into_response()
}

async fn status_json(axum::extract::State(status): axum::extract::State<Arc<JobStatus>>) -> Response {
    let body = serde_json::to_string(&status.snapshot()).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
    ([("content-type", "application/json")], body).into_response()
}

/// Serves the endpoint on `addr` (port 0: any free port) until the process ends.
/// Returns the bound address.
pub async fn serve_status(addr: &str, status: Arc<JobStatus>) -> Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| ServerError::Bind { addr: addr.to_string(), message: e.to_string() })?;
    let local = listener.local_addr().map_err(|e| ServerError::Bind { addr: addr.to_string(), message: e.to_string() })?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router(status)).await {
            tracing::error!("status endpoint stopped: {e}");
        }
    });
    Ok(local)
}
