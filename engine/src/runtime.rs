//! The micro-batch loop: poll sources (one micro-batch ahead, on their own thread),
//! update views, hand changesets to the sink, checkpoint, commit source positions.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::execution::TaskContext;
use tokio::sync::watch;

use crate::catalog::Catalog;
use crate::changelog::{ChangelogTable, ChangelogTables};
use crate::checkpoint::{Checkpointer, StateFiles, Written};
use crate::contract::{CheckpointMeta, MicroBatch, Offsets, Sink, Source, StreamDecl, ViewInfo};
use crate::error::{EngineError, Result};
use crate::event_time::Watermark;
use crate::prefetch::{Polled, Prefetcher};
use crate::sql_file::Emit;
use crate::view::IncrementalView;

/// Knobs of the micro-batch loop.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Most records a source contributes to one micro-batch.
    pub max_rows: usize,
    /// Longest a source waits for `max_rows` before the batch is cut.
    pub max_delay: Duration,
    /// Least time between checkpoints (zero: after every micro-batch).
    pub checkpoint_interval: Duration,
    /// Most delta checkpoints (changed groups only) between two full ones.
    pub checkpoint_max_deltas: usize,
    /// Stop when every source is finished, instead of waiting for a shutdown signal.
    pub until_idle: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            max_rows: 50_000,
            max_delay: Duration::from_millis(200),
            checkpoint_interval: Duration::from_secs(5),
            checkpoint_max_deltas: crate::checkpoint::MAX_DELTAS,
            until_idle: false,
        }
    }
}

/// What one micro-batch did.
#[derive(Debug, Clone, Default)]
pub struct StepReport {
    /// Sequence number of the micro-batch (1-based, continues across restarts).
    pub batch_id: u64,
    /// Records processed.
    pub rows: u64,
    /// Records sent to the dead-letter destination.
    pub rejected: u64,
    /// Stream name → (records processed, records rejected).
    pub streams: BTreeMap<String, (u64, u64)>,
    /// View name → (rows upserted, rows deleted).
    pub changes: BTreeMap<String, (usize, usize)>,
    /// Stream name → records behind its watermark (or without an event time):
    /// dead-lettered on an append stream; on a changelog stream they change its table but
    /// count in no window.
    pub late: BTreeMap<String, u64>,
    /// Stream name → its watermark after this micro-batch (milliseconds since the epoch).
    pub watermarks: BTreeMap<String, i64>,
    /// The late records of append streams, for their sources' dead-letter destinations.
    pub dead_letters: Vec<LateRecords>,
    /// Stream name → records waiting in the source after this micro-batch (sources that can tell).
    pub lag: BTreeMap<String, u64>,
    /// Wall time spent on the micro-batch, sink included.
    pub elapsed: Duration,
    /// Where the time of the micro-batch went, stage by stage.
    pub stages: StageTimes,
}

/// A micro-batch the views were shown but have not taken in yet (see [`Pipeline::step`]).
struct Prepared {
    report: StepReport,
    started: Instant,
}

/// Time spent per stage of the micro-batch loop.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StageTimes {
    /// Waiting for the sources' next micro-batch. They fetch and decode it on their own
    /// thread while the views take in the one before (see [`crate::prefetch`]), so this
    /// is the part of that work the views did not hide.
    pub poll: Duration,
    /// Watermarks, lateness, and the changelog tables' new rows.
    pub prepare: Duration,
    /// Updating the views (state, the plan above the aggregates, diffs).
    pub views: Duration,
    /// Handing the changes to the sinks.
    pub sink: Duration,
    /// The checkpoint that followed the micro-batch: sink flush, state, positions (in a
    /// run's summary: every checkpoint, those after passes without records and the last included).
    pub checkpoint: Duration,
}

impl StageTimes {
    /// Every stage with its name, in loop order.
    pub fn named(&self) -> [(&'static str, Duration); 5] {
        [("poll", self.poll), ("prepare", self.prepare), ("views", self.views), ("sink", self.sink), ("checkpoint", self.checkpoint)]
    }

    /// Adds `other`'s times to these.
    pub fn add(&mut self, other: &StageTimes) {
        self.poll += other.poll;
        self.prepare += other.prepare;
        self.views += other.views;
        self.sink += other.sink;
        self.checkpoint += other.checkpoint;
    }
}

/// Late records of one stream, to be dead-lettered.
#[derive(Debug, Clone)]
pub struct LateRecords {
    /// The stream.
    pub stream: String,
    /// The records, with the stream's schema.
    pub rows: RecordBatch,
    /// Why each is late.
    pub reasons: Vec<String>,
}

/// Totals of one `run`.
#[derive(Debug, Clone, Default)]
pub struct RunSummary {
    /// Micro-batches processed by this run.
    pub batches: u64,
    /// Records processed by this run.
    pub rows: u64,
    /// Records rejected by this run.
    pub rejected: u64,
    /// Late records of this run (see [`StepReport::late`]).
    pub late: u64,
    /// Whether the run started from a checkpoint.
    pub resumed: bool,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Time per stage, over the run's micro-batches.
    pub stages: StageTimes,
}

/// A compiled pipeline: its views, their state, and the positions they reflect.
#[derive(Debug)]
pub struct Pipeline {
    catalog: Catalog,
    views: Vec<IncrementalView>,
    /// The current rows of the changelog streams.
    tables: ChangelogTables,
    /// Stream → its watermark.
    watermarks: BTreeMap<String, Watermark>,
    task: Arc<TaskContext>,
    checkpointer: Checkpointer,
    batch_id: u64,
    offsets: BTreeMap<String, Offsets>,
    /// `view:<name>` / `source:<stream>` → what they were built from (see [`CheckpointMeta::inputs`]).
    inputs: BTreeMap<String, String>,
    resumed: bool,
}

impl Pipeline {
    /// Compiles every view of `catalog`; checkpoints go to `state_dir/checkpoints`.
    pub async fn compile(catalog: Catalog, state_dir: PathBuf) -> Result<Self> {
        let mut views = Vec::new();
        let mut inputs = BTreeMap::new();
        for def in catalog.views() {
            views.push(IncrementalView::compile(catalog.session(), def, catalog.streams()).await?);
            let text = if def.emit == Emit::OnWindowClose { format!("{} {}", def.origin.text, def.emit.clause()) } else { def.origin.text.clone() };
            inputs.insert(format!("view:{}", def.name), format!("{:016x}", fnv1a(text.as_bytes())));
        }
        let task = catalog.session().task_ctx();
        let checkpointer = Checkpointer::new(state_dir.join("checkpoints"))?;
        for view in &mut views {
            view.start(&task).await?;
        }
        let tables = changelog_tables(catalog.streams(), &views)?;
        let watermarks = catalog.streams().iter().map(|s| (s.name.clone(), Watermark::new(s.event_time.clone()))).collect();
        Ok(Self { catalog, views, tables, watermarks, task, checkpointer, batch_id: 0, offsets: BTreeMap::new(), inputs, resumed: false })
    }

    /// The catalog the pipeline was compiled from.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The compiled views.
    pub fn views(&self) -> &[IncrementalView] {
        &self.views
    }

    /// Name, schema and key of every view.
    pub fn view_infos(&self) -> Vec<ViewInfo> {
        self.views.iter().map(|v| v.info().clone()).collect()
    }

    /// Micro-batches processed so far, across restarts.
    pub fn batch_id(&self) -> u64 {
        self.batch_id
    }

    /// Source positions the views reflect.
    pub fn offsets(&self) -> &BTreeMap<String, Offsets> {
        &self.offsets
    }

    /// Loads the latest checkpoint, if any. Returns whether one was found.
    pub async fn restore(&mut self) -> Result<bool> {
        let Some(checkpoint) = self.checkpointer.load()? else { return Ok(false) };
        let path = self.checkpointer.dir().to_path_buf();
        for (input, now) in &self.inputs {
            match checkpoint.meta.inputs.get(input) {
                Some(then) if then != now => {
                    return Err(EngineError::Checkpoint {
                        path,
                        message: format!(
                            "{} changed since the checkpoint was written ({then} then, {now} now); \
                             bind the same input, or start from a fresh --state directory to recompute",
                            input.replacen(':', " `", 1) + "`"
                        ),
                    })
                }
                _ => {}
            }
        }
        let mut states = checkpoint.states;
        for table in self.tables.tables_mut() {
            let name = table_state_name(table.name());
            // A checkpoint may hold more columns than the views read now (one was
            // dropped), never fewer.
            let restored = match states.remove(&name).unwrap_or_default().as_slice() {
                [] => continue,
                [rows] => project_to(rows, table.state_schema()),
                _ => None,
            };
            let Some(rows) = restored else {
                return Err(EngineError::Checkpoint {
                    path,
                    message: format!(
                        "the views read columns of changelog stream `{}` that the checkpoint does not hold; \
                         start from a fresh --state directory to recompute",
                        table.name()
                    ),
                });
            };
            table.restore(&rows)?;
        }
        // Views over the changelog tables (a top-n re-ranked, say) read them while they restore.
        self.tables.show_all()?;
        for view in &mut self.views {
            let name = &view.info().name;
            let expected = view.state_schemas();
            let state = states.remove(name).unwrap_or_default();
            let matches = state.len() == expected.len() && state.iter().zip(&expected).all(|(b, s)| b.schema().fields() == s.fields());
            if !matches {
                return Err(EngineError::Checkpoint {
                    path,
                    message: format!(
                        "view `{name}` changed since the checkpoint was written; \
                         start from a fresh --state directory to recompute it"
                    ),
                });
            }
            view.restore(state, &self.task).await?;
        }
        self.tables.hide_all();
        for (name, state) in checkpoint.meta.watermarks {
            if let Some(watermark) = self.watermarks.get_mut(&name) {
                watermark.restore(state);
            }
        }
        self.batch_id = checkpoint.meta.batch_id;
        self.offsets = checkpoint.meta.sources;
        self.resumed = true;
        Ok(true)
    }

    /// Processes one micro-batch made of `batches` (stream name → records) and
    /// applies the resulting changes to `sink`.
    pub async fn step(&mut self, batches: Vec<(String, MicroBatch)>, sink: &mut dyn Sink) -> Result<StepReport> {
        let prepared = self.prepare(&batches)?;
        self.take_in(batches, prepared, sink).await
    }

    /// The first part of [`Self::step`]: places the records in time (which finds the late
    /// ones, in the report's dead letters) and shows them to the views.
    fn prepare(&mut self, batches: &[(String, MicroBatch)]) -> Result<Prepared> {
        let prepared = self.show(batches);
        if prepared.is_err() {
            self.hide_streams();
        }
        prepared
    }

    fn show(&mut self, batches: &[(String, MicroBatch)]) -> Result<Prepared> {
        let started = Instant::now();
        let mut report = StepReport { batch_id: self.batch_id + 1, ..Default::default() };
        // Disjoint borrows: the streams are read while the watermarks and tables change.
        let Self { catalog, views, tables, watermarks, .. } = self;
        let streams = catalog.streams();
        let mut changed = Vec::new();
        for (name, micro) in batches {
            let stream = find_stream(streams, name)?;
            report.rows += micro.batch.num_rows() as u64;
            report.rejected += micro.rejected;
            let counts = report.streams.entry(name.clone()).or_default();
            counts.0 += micro.batch.num_rows() as u64;
            counts.1 += micro.rejected;
            let batch = conform(stream, &micro.batch)?;
            let keyed = stream.options.changelog.is_keyed();
            let watermark = watermarks.get_mut(name).ok_or_else(|| EngineError::internal("a stream without its watermark"))?;
            // Non-negative positions are partitions (connectors keep other state below 0).
            watermark.expect_partitions(micro.offsets.keys().copied().filter(|p| *p >= 0));
            let timed = watermark.split(keyed, &batch, micro.deleted.as_ref())?;
            *report.late.entry(name.clone()).or_default() += timed.reasons.len() as u64;
            if !keyed && !timed.reasons.is_empty() {
                report.dead_letters.push(LateRecords { stream: name.clone(), rows: timed.late, reasons: timed.reasons });
            }
            stream.recent.push(timed.rows.clone());
            if keyed {
                stream.events.set(vec![timed.events]);
                changed.push((name.as_str(), MicroBatch { batch: timed.rows, ..micro.clone() }));
            } else {
                stream.slot.set(vec![timed.rows]);
            }
        }
        report.watermarks = watermarks.iter().filter_map(|(name, w)| Some((name.clone(), w.current()?))).collect();
        // A micro-batch without rows changes no table.
        changed.retain(|(_, m)| m.batch.num_rows() > 0);
        let names: Vec<&str> = changed.iter().map(|(n, _)| *n).collect();
        let keep_before = views.iter().any(|v| v.recomputes_on(&names));
        tables.apply(changed.iter().map(|(n, m)| (*n, m)), keep_before)?;
        report.stages.prepare = started.elapsed();
        Ok(Prepared { report, started })
    }

    /// The rest of [`Self::step`]: the views take in the records [`Self::prepare`] showed them.
    async fn take_in(&mut self, batches: Vec<(String, MicroBatch)>, prepared: Prepared, sink: &mut dyn Sink) -> Result<StepReport> {
        let Prepared { mut report, started } = prepared;
        let result = update_views(&mut self.views, &self.tables, &self.task, sink, &mut report).await;
        self.hide_streams();
        result?;
        for (name, micro) in batches {
            self.offsets.entry(name).or_default().extend(micro.offsets);
        }
        self.batch_id += 1;
        report.elapsed = started.elapsed();
        Ok(report)
    }

    /// Empties the stream slots: outside a micro-batch the views see no records.
    fn hide_streams(&self) {
        for stream in self.catalog.streams() {
            stream.slot.clear();
            stream.events.clear();
        }
    }

    /// Flushes the sink, then writes a checkpoint of state and positions: of the groups
    /// changed since the previous checkpoint, or of all of them when the checkpointer
    /// compacts (see [`Checkpointer::wants_full`]).
    pub async fn checkpoint(&mut self, sink: &mut dyn Sink) -> Result<(CheckpointMeta, Written)> {
        let meta = CheckpointMeta {
            batch_id: self.batch_id,
            sources: self.offsets.clone(),
            views: BTreeMap::new(),
            inputs: self.inputs.clone(),
            base: Vec::new(),
            watermarks: self.watermarks.iter().map(|(name, w)| (name.clone(), w.state().clone())).collect(),
        };
        sink.flush(&meta).await?;
        let changed = self.views.iter().map(|v| v.group_counts().0).sum::<usize>()
            + self.tables.tables().iter().map(|t| t.changes_since_checkpoint()).sum::<usize>();
        let full = self.checkpointer.wants_full(changed)
            || self.views.iter().any(IncrementalView::removed_groups)
            || self.tables.tables().iter().any(ChangelogTable::needs_full_checkpoint);
        let mut states = BTreeMap::new();
        for view in &self.views {
            states.insert(view.info().name.clone(), if full { view.state()? } else { view.changed_state()? });
        }
        for table in self.tables.tables() {
            states.insert(table_state_name(table.name()), vec![if full { table.state()? } else { table.changed_state()? }]);
        }
        let written = self.checkpointer.write(&meta, &if full { StateFiles::Full(states) } else { StateFiles::Changes(states) })?;
        self.views.iter_mut().for_each(IncrementalView::mark_checkpointed);
        self.tables.tables_mut().iter_mut().for_each(ChangelogTable::mark_checkpointed);
        tracing::debug!(checkpoint = %written.name, full = written.full, rows = written.rows, bytes = written.bytes, "checkpoint written");
        Ok((meta, written))
    }

    /// Runs the micro-batch loop until the sources finish (with `until_idle`) or
    /// `shutdown` turns true. Restores the last checkpoint first and seeks the sources.
    pub async fn run(
        &mut self,
        mut sources: Vec<Box<dyn Source>>,
        sink: &mut dyn Sink,
        options: &RunOptions,
        mut shutdown: watch::Receiver<bool>,
        on_step: &mut (dyn FnMut(&StepReport) + Send),
    ) -> Result<RunSummary> {
        let started = Instant::now();
        self.check_bindings(&sources)?;
        self.checkpointer.set_max_deltas(options.checkpoint_max_deltas);
        for source in &sources {
            self.inputs.insert(format!("source:{}", source.stream()), source.identity());
        }
        sink.open(&self.view_infos()).await?;
        self.restore().await?;
        self.tables.show_all()?;
        for view in &self.views {
            if let Some(rows) = view.current_result(&self.task).await? {
                sink.reset(view.info(), &rows).await?;
            }
        }
        self.tables.hide_all();
        for source in &mut sources {
            if let Some(offsets) = self.offsets.get(source.stream()) {
                source.seek(offsets).await?;
            }
        }
        let mut summary = RunSummary { resumed: self.resumed, ..Default::default() };
        let mut last_checkpoint = Instant::now();
        let mut dirty = false;
        let mut sources = Prefetcher::start(sources, options.max_rows, options.max_delay)?;
        sources.poll()?;
        loop {
            if *shutdown.borrow() {
                break;
            }
            let (Polled { batches, finished, lag }, waited) = sources.next().await?;
            let mut stepped = None;
            if batches.is_empty() {
                sources.poll()?;
            } else {
                let mut prepared = self.prepare(&batches)?;
                // The late records' dead letters go first, then the next poll's (a
                // source may dead-letter records that do not decode): in record order.
                let rejecting = Instant::now();
                let late = std::mem::take(&mut prepared.report.dead_letters);
                let positions = match reject_late(&sources, late).await.and_then(|p| sources.poll().map(|()| p)) {
                    Ok(positions) => positions,
                    Err(e) => {
                        self.hide_streams();
                        return Err(e);
                    }
                };
                prepared.report.stages.prepare += rejecting.elapsed();
                let mut report = self.take_in(batches, prepared, sink).await?;
                // After the micro-batch's own: where its dead letters end now.
                for (stream, positions) in positions {
                    self.offsets.entry(stream).or_default().extend(positions);
                }
                report.stages.poll = waited;
                report.lag = lag;
                summary.batches += 1;
                summary.rows += report.rows;
                summary.rejected += report.rejected;
                summary.late += report.late.values().sum::<u64>();
                dirty = true;
                stepped = Some(report);
            }
            if dirty && last_checkpoint.elapsed() >= options.checkpoint_interval {
                let checkpointing = Instant::now();
                self.checkpoint_and_commit(&sources, sink).await?;
                last_checkpoint = Instant::now();
                dirty = false;
                // A checkpoint after a pass without records is the job's time too.
                match stepped.as_mut() {
                    Some(report) => report.stages.checkpoint = checkpointing.elapsed(),
                    None => summary.stages.checkpoint += checkpointing.elapsed(),
                }
            }
            if let Some(report) = stepped {
                summary.stages.add(&report.stages);
                on_step(&report);
            }
            if finished == sources.sources() {
                if options.until_idle {
                    break;
                }
                // Drained: keep serving until told to stop, like a stream that went quiet.
                let pause = options.max_delay.max(Duration::from_millis(50));
                tokio::select! {
                    // A dropped sender can no longer ask for a stop: just wait out the pause.
                    changed = shutdown.changed() => if changed.is_err() { tokio::time::sleep(pause).await },
                    _ = tokio::time::sleep(pause) => {}
                }
            }
        }
        if dirty || !self.resumed && summary.batches == 0 {
            let checkpointing = Instant::now();
            self.checkpoint_and_commit(&sources, sink).await?;
            summary.stages.checkpoint += checkpointing.elapsed();
        }
        // The last commit done, the sources dropped (a Kafka consumer leaves its group).
        sources.stop().await;
        summary.elapsed = started.elapsed();
        Ok(summary)
    }

    async fn checkpoint_and_commit(&mut self, sources: &Prefetcher, sink: &mut dyn Sink) -> Result<()> {
        let (meta, _) = self.checkpoint(sink).await?;
        sources.commit(meta.sources)
    }

    fn check_bindings(&self, sources: &[Box<dyn Source>]) -> Result<()> {
        for stream in self.catalog.streams() {
            if !sources.iter().any(|s| s.stream() == stream.name) {
                return Err(EngineError::Binding {
                    binding: stream.name.clone(),
                    message: format!("stream `{}` has no source; bind one with --source {}=file:PATH", stream.name, stream.name),
                });
            }
        }
        for (i, source) in sources.iter().enumerate() {
            find_stream(self.catalog.streams(), source.stream())?;
            if sources[..i].iter().any(|s| s.stream() == source.stream()) {
                return Err(EngineError::Binding {
                    binding: source.stream().to_string(),
                    message: "the stream is bound twice; bind each stream to one source".into(),
                });
            }
        }
        Ok(())
    }
}

/// Hands late records to their sources' dead-letter destinations. Returns, per stream,
/// the positions where those end, to checkpoint with the micro-batch.
async fn reject_late(sources: &Prefetcher, late: Vec<LateRecords>) -> Result<Vec<(String, Offsets)>> {
    let mut positions = Vec::with_capacity(late.len());
    for records in late {
        positions.push((records.stream.clone(), sources.reject(records.stream, records.rows, records.reasons).await?));
    }
    Ok(positions)
}

/// Applies the micro-batch now in the stream slots to every view and hands the changes to `sink`.
async fn update_views(
    views: &mut [IncrementalView],
    tables: &ChangelogTables,
    task: &Arc<TaskContext>,
    sink: &mut dyn Sink,
    report: &mut StepReport,
) -> Result<()> {
    for view in views {
        let updating = Instant::now();
        let changes = view.apply(task, tables, &report.watermarks).await?;
        report.stages.views += updating.elapsed();
        report.changes.insert(view.info().name.clone(), (changes.upserts.num_rows(), changes.deletes.num_rows()));
        if !changes.is_empty() {
            let sinking = Instant::now();
            sink.apply(view.info(), &changes).await?;
            report.stages.sink += sinking.elapsed();
        }
    }
    Ok(())
}

fn find_stream<'a>(streams: &'a [StreamDecl], name: &str) -> Result<&'a StreamDecl> {
    streams.iter().find(|s| s.name == name).ok_or_else(|| EngineError::Binding {
        binding: name.to_string(),
        message: format!("no stream `{name}` is declared (declared: {})", streams.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")),
    })
}

/// Checks a source's batch against the stream's schema, so a connector bug
/// surfaces as an error naming the stream rather than a plan failure.
fn conform(stream: &StreamDecl, batch: &RecordBatch) -> Result<RecordBatch> {
    if batch.schema().fields() == stream.schema.fields() {
        return Ok(batch.clone());
    }
    let converted = RecordBatch::try_new(stream.schema.clone(), batch.columns().to_vec());
    converted.map_err(|e| EngineError::Source {
        source_name: stream.name.clone(),
        cause: format!("micro-batch does not match the declared schema: {e}").into(),
    })
}

/// The changelog tables of `streams`, each keeping the columns some view reads.
fn changelog_tables(streams: &[StreamDecl], views: &[IncrementalView]) -> Result<ChangelogTables> {
    let mut tables = Vec::new();
    for stream in streams.iter().filter(|s| s.options.changelog.is_keyed()) {
        let read: Vec<usize> = views.iter().flat_map(|v| v.reads()).filter(|(name, _)| *name == stream.name).flat_map(|(_, c)| c.clone()).collect();
        tables.push(ChangelogTable::for_stream(stream, &read)?);
    }
    Ok(ChangelogTables::new(tables))
}

/// Under which name a checkpoint holds a changelog table (view names are SQL
/// identifiers, which hold no `:` unless quoted).
fn table_state_name(stream: &str) -> String {
    format!("stream:{stream}")
}

/// FNV-1a: a hash that, unlike std's, is stable across Rust releases (checkpoints outlive binaries).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// The columns of `rows` that `schema` names, when `rows` has each of them with its type.
fn project_to(rows: &RecordBatch, schema: &SchemaRef) -> Option<RecordBatch> {
    let held = rows.schema();
    let columns = schema
        .fields()
        .iter()
        .map(|field| {
            let (i, found) = held.column_with_name(field.name())?;
            (found.data_type() == field.data_type()).then(|| rows.column(i).clone())
        })
        .collect::<Option<Vec<_>>>()?;
    RecordBatch::try_new(schema.clone(), columns).ok()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Int32Array, Int64Array};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    #[test]
    fn a_checkpoint_restores_into_fewer_columns_never_more() {
        let held = Arc::new(Schema::new(vec![Field::new("id", DataType::Int32, true), Field::new("_offset", DataType::Int64, true)]));
        let rows = RecordBatch::try_new(held, vec![Arc::new(Int32Array::from(vec![1, 2])), Arc::new(Int64Array::from(vec![7, 8]))]).unwrap();
        let fewer = Arc::new(Schema::new(vec![Field::new("id", DataType::Int32, true)]));
        assert_eq!(project_to(&rows, &fewer).unwrap().column(0).as_ref(), rows.column(0).as_ref());
        let more = Arc::new(Schema::new(vec![Field::new("id", DataType::Int32, true), Field::new("price", DataType::Float64, true)]));
        assert!(project_to(&rows, &more).is_none());
        let retyped = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, true)]));
        assert!(project_to(&rows, &retyped).is_none());
    }
}
