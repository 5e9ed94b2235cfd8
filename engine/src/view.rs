//! Compiling a `CREATE VIEW` into an incremental plan, and producing a
//! changeset for every micro-batch.
//!
//! The physical plan is split at the lowest aggregates that read a stream.
//! Each such aggregate becomes an [`IncrementalAggregate`]. The rest of the plan
//! (HAVING, joins to reference tables, ORDER BY … LIMIT, windows over aggregates)
//! runs over the groups a micro-batch touched, before and after it, when each of its
//! rows follows from one group; otherwise over every group (see [`Evaluation`]). Either
//! way its output is diffed by the view's key. A view without aggregates is
//! stateless: its plan runs on each micro-batch and every output row is an upsert.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{Expr, LogicalPlan, Volatility};
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::execution_plan::replace_children_if_necessary;
use datafusion::physical_plan::limit::{GlobalLimitExec, LocalLimitExec};
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::union::UnionExec;
use datafusion::physical_plan::windows::{BoundedWindowAggExec, WindowAggExec};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{DataFrame, SessionContext};

use crate::aggregate::{IncrementalAggregate, TouchedGroups};
use crate::catalog::ViewDef;
use crate::changelog::ChangelogTables;
use crate::contract::{Changeset, StreamDecl, ViewInfo};
use crate::diff::{Differ, IndexedRows};
use crate::error::{EngineError, Result};
pub use crate::evaluation::Evaluation;
use crate::evaluation::{classify, join_name, join_type, keeps_only_side, relates_windows, Classified};
use crate::key::require_view_key;
use crate::plan_search::find_in_plan;
use crate::retention::Retention;
use crate::slot::{columns_read, reads_any, run_plan, run_with, BatchSlot};
use crate::sql_file::Emit;
use crate::subquery::inline_reference_subqueries;
use crate::top_n::TopN;
use crate::window::{window_end_column, WINDOW_END, WINDOW_START};

/// A view compiled for incremental maintenance.
#[derive(Debug)]
pub struct IncrementalView {
    info: ViewInfo,
    /// Where the view was declared, for errors while it runs.
    origin: (PathBuf, usize),
    differ: Differ,
    kind: ViewKind,
    /// Stream → the columns of it the view reads.
    reads: Vec<(String, Vec<usize>)>,
    /// How the view follows its changelog streams, when it reads any.
    changelog: Option<ChangelogInputs>,
    /// The changelog streams an append-driven view reads above its aggregates only
    /// (`(SELECT category_id, COUNT(*) … GROUP BY category_id) a LEFT JOIN categories c`):
    /// shown whole while it evaluates, which it does over every group when they change.
    lookups: Vec<(String, BatchSlot)>,
    /// When its groups are windows that close, which and how.
    windowing: Option<Windowing>,
    /// How long the rows of closed windows stay, when not for good.
    retention: Option<Retention>,
}

/// What a view reads of a stream: its rows as a changelog's changes (`keyed`), or as
/// records (an append stream's rows, a changelog stream's events under a window).
#[derive(Debug)]
struct Input {
    name: String,
    slot: BatchSlot,
    keyed: bool,
}

/// Every stream input `physical` reads.
fn inputs_read(physical: &Arc<dyn ExecutionPlan>, streams: &[StreamDecl]) -> Vec<Input> {
    let mut inputs = Vec::new();
    for stream in streams {
        let keyed = stream.options.changelog.is_keyed();
        if reads_any(physical, std::slice::from_ref(&stream.slot)) {
            inputs.push(Input { name: stream.name.clone(), slot: stream.slot.clone(), keyed });
        }
        if keyed && reads_any(physical, std::slice::from_ref(&stream.events)) {
            inputs.push(Input { name: stream.name.clone(), slot: stream.events.clone(), keyed: false });
        }
    }
    inputs
}

/// How the groups of a view over a window close: once the watermark of `stream`
/// passes a window's end, its groups are final; they are emitted then (`EMIT ON WINDOW
/// CLOSE`) and leave the state (see [`IncrementalAggregate::close_by`]).
#[derive(Debug)]
struct Windowing {
    stream: String,
    emit: Emit,
    /// Per aggregate: the group column holding the window, and what to add to it for
    /// the window's end (the size when it holds the start).
    columns: Vec<(usize, i64)>,
}

impl Windowing {
    /// How `def`'s groups close, if they are windows whose closing the view can follow.
    fn of(def: &ViewDef, kind: &ViewKind, output: &SchemaRef) -> std::result::Result<Option<Self>, String> {
        let on_close = def.emit == Emit::OnWindowClose;
        let needs = |why: &str| {
            if on_close {
                Err(format!("EMIT ON WINDOW CLOSE {why}"))
            } else {
                Ok(None)
            }
        };
        let [window] = def.windows.as_slice() else {
            return needs("needs one window: GROUP BY window_start (or window_end) of one TUMBLE(…) or HOP(…)");
        };
        let ViewKind::Aggregating { stages, upkeep } = kind else { return needs("needs an aggregate: GROUP BY window_start, …") };
        if output.index_of(WINDOW_START).is_err() && output.index_of(WINDOW_END).is_err() {
            return needs("needs window_start or window_end among the view's columns");
        }
        let mut columns = Vec::new();
        for aggregate in &stages.aggregates {
            let names = aggregate.group_names();
            match window_end_column(names.iter().map(String::as_str), window.size_ms) {
                Some(column) => columns.push(column),
                None => return needs("needs GROUP BY window_start (or window_end) of the window"),
            }
        }
        if !on_close && !matches!(upkeep, Upkeep::TouchedGroups) {
            // Its result is re-evaluated over every group: those of closed windows stay.
            return Ok(None);
        }
        // A result that relates windows to each other needs the closed ones to stay.
        let finals: Vec<BatchSlot> = stages.aggregates.iter().map(|a| a.finals_slot().clone()).collect();
        let apart = match upkeep {
            Upkeep::TouchedGroups => Ok(()),
            Upkeep::TopN { .. } => {
                Err("ORDER BY … LIMIT ranks every window's groups together (rank within windows: ROW_NUMBER() OVER (PARTITION BY window_start …))"
                    .to_string())
            }
            Upkeep::WholeResult { .. } => relates_windows(&stages.output, &finals).map_or(Ok(()), Err),
        };
        if let Err(because) = apart {
            return needs(&format!("needs each row to follow from the groups of one window, and {because} relates windows"));
        }
        Ok(Some(Self { stream: window.stream.clone(), emit: def.emit, columns }))
    }
}

/// The retention `def`'s window declares, for the view `info` whose windows close as
/// `windowing` says; refused when they never close.
fn retention_of(def: &ViewDef, info: &ViewInfo, windowing: Option<&Windowing>) -> std::result::Result<Option<Retention>, String> {
    let Some(window) = def.windows.iter().find(|w| w.retention_ms.is_some()) else { return Ok(None) };
    let retention_ms = window.retention_ms.expect("found by its retention");
    if windowing.is_none() || def.windows.len() > 1 {
        return Err("a window's retention (its last interval) deletes the rows of closed windows, but this view's windows never close: \
                    GROUP BY window_start (or window_end) of one TUMBLE(…) or HOP(…), each row following from one window's groups"
            .into());
    }
    let names = info.schema.fields().iter().map(|f| f.name().as_str());
    let end = window_end_column(names, window.size_ms).ok_or("a window's retention needs window_start or window_end among the view's columns")?;
    Retention::new(info, end, retention_ms).map(Some).map_err(|e| e.to_string())
}

/// The changelog streams a view reads: the one whose changed rows drive it, and the
/// others, whose changes make it recompute.
#[derive(Debug)]
struct ChangelogInputs {
    driver: (String, BatchSlot),
    /// Every changelog stream the view reads, the driver included.
    streams: Vec<(String, BatchSlot)>,
}

impl ChangelogInputs {
    /// Fills the slots of every stream but the driver with their whole tables, as they
    /// are now (`before`: as they were before the micro-batch).
    fn show_tables(&self, tables: &ChangelogTables, before: bool, with_driver: bool) -> Result<()> {
        for (name, slot) in &self.streams {
            if *name == self.driver.0 && !with_driver {
                continue;
            }
            let table = tables.get(name).ok_or_else(|| EngineError::internal("a changelog stream without its table"))?;
            slot.set(vec![if before { tables.whole_before(name)? } else { table.whole()? }]);
        }
        Ok(())
    }
}

#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // one per view, never moved on a hot path
enum ViewKind {
    /// Runs on each micro-batch; every row is an upsert.
    Stateless { plan: Arc<dyn ExecutionPlan> },
    /// Aggregates keep state; `upkeep` says how the rest of the plan follows them.
    Aggregating { stages: AggregateStages, upkeep: Upkeep },
}

/// How an aggregating view's result follows its groups (see [`Evaluation`]).
#[derive(Debug)]
enum Upkeep {
    /// The rest of the plan runs over the groups a micro-batch touched, before and
    /// after it, and the two are diffed.
    TouchedGroups,
    /// The plan between the aggregates and the top-n sort runs over the touched groups,
    /// whose rows `top` re-ranks; the rest of the view runs over the first n rows and is
    /// diffed against the previous result.
    TopN { top: TopN, current: IndexedRows },
    /// The rest of the plan re-runs over every group (because of `because`) and its
    /// result is diffed against the previous one.
    WholeResult { because: String, current: IndexedRows },
}

/// The incremental aggregates of a view and the plan above them, which reads their
/// finalized groups.
#[derive(Debug)]
struct AggregateStages {
    aggregates: Vec<IncrementalAggregate>,
    output: Arc<dyn ExecutionPlan>,
}

impl IncrementalView {
    /// Plans `def` in `ctx` and splits the plan into incremental stages. `streams` are
    /// every declared stream.
    pub async fn compile(ctx: &SessionContext, def: &ViewDef, streams: &[StreamDecl]) -> Result<Self> {
        let unsupported =
            |construct: String| EngineError::Unsupported { file: def.origin.file.clone(), line: def.origin.line, view: def.name.clone(), construct };
        let sql_error = |message: String| EngineError::Sql { file: def.origin.file.clone(), line: def.origin.line, message };
        let df = ctx.table(def.name.as_str()).await.map_err(|e| sql_error(e.to_string()))?;
        let plan = inline_reference_subqueries(ctx, df.logical_plan(), streams).await.map_err(sql_error)?;
        let df = DataFrame::new(ctx.state(), plan);
        if let Some(construct) = unmaintainable_expression(df.logical_plan()) {
            return Err(unsupported(construct));
        }
        let key = require_view_key(df.logical_plan(), streams);
        let physical = df.create_physical_plan().await.map_err(|e| sql_error(e.to_string()))?;
        check_accumulators(&physical).map_err(sql_error)?;
        let read = inputs_read(&physical, streams);
        if read.is_empty() {
            return Err(unsupported("it reads no stream; declare reference-only queries as plain SQL instead".into()));
        }
        let reads = read.iter().filter(|i| i.keyed).map(|i| (i.name.clone(), columns_read(&physical, &i.slot))).collect();
        let key = key.map_err(unsupported)?;
        let info = ViewInfo { name: def.name.clone(), schema: physical.schema(), key };
        let differ = Differ::new(&info)?;
        let (mut kind, changelog, lookups) = compile_kind(physical, &read, &differ).map_err(unsupported)?;
        if let (Some((lookup, _)), Emit::OnWindowClose) = (lookups.first(), def.emit) {
            return Err(unsupported(format!(
                "EMIT ON WINDOW CLOSE emits a window once, final, but the changelog stream `{lookup}` joined above its \
                 aggregate could change it after; emit on update, or read `{lookup}` as a reference table"
            )));
        }
        let windowing = Windowing::of(def, &kind, &info.schema).map_err(unsupported)?;
        if let (Some(windowing), ViewKind::Aggregating { stages, .. }) = (&windowing, &mut kind) {
            for (aggregate, (column, offset)) in stages.aggregates.iter_mut().zip(&windowing.columns) {
                aggregate.close_by(*column, *offset, windowing.emit == Emit::OnWindowClose);
            }
        }
        let retention = retention_of(def, &info, windowing.as_ref()).map_err(unsupported)?;
        Ok(Self { info, origin: (def.origin.file.clone(), def.origin.line), differ, kind, reads, changelog, lookups, windowing, retention })
    }

    /// Stream → the columns of it the view reads (indices into the stream's schema).
    pub fn reads(&self) -> &[(String, Vec<usize>)] {
        &self.reads
    }

    /// Whether a micro-batch that changes the changelog streams `changed` makes the view
    /// recompute from whole tables (which then must be kept as they were before it).
    pub fn recomputes_on(&self, changed: &[&str]) -> bool {
        self.changelog.as_ref().is_some_and(|c| c.streams.iter().any(|(name, _)| *name != c.driver.0 && changed.contains(&name.as_str())))
    }

    /// Name, schema and key.
    pub fn info(&self) -> &ViewInfo {
        &self.info
    }

    /// How a micro-batch re-evaluates the view (`None` for views without aggregates,
    /// which evaluate each micro-batch on its own).
    pub fn evaluation(&self) -> Option<Evaluation> {
        let ViewKind::Aggregating { upkeep, .. } = &self.kind else { return None };
        if self.windowing.as_ref().is_some_and(|w| w.emit == Emit::OnWindowClose) {
            return Some(Evaluation::ClosedWindows);
        }
        Some(match upkeep {
            Upkeep::TouchedGroups => Evaluation::TouchedGroups,
            Upkeep::TopN { top, .. } => Evaluation::TopN { n: top.n() },
            Upkeep::WholeResult { because, .. } => Evaluation::WholeResult { because: because.clone() },
        })
    }

    /// Processes the micro-batch now in the stream slots (append streams) and in
    /// `tables` (changelog streams).
    /// `watermarks` (stream → watermark, milliseconds) say which windows have closed.
    pub async fn apply(&mut self, ctx: &Arc<TaskContext>, tables: &ChangelogTables, watermarks: &BTreeMap<String, i64>) -> Result<Changeset> {
        // Whatever evaluates the plan above the aggregates (closing windows too) reads
        // the lookups' whole tables.
        let changes = async {
            self.show_lookups(tables)?;
            let changes = self.apply_changes(ctx, tables).await?;
            self.close_windows(changes, watermarks, ctx).await
        }
        .await;
        self.lookups.iter().for_each(|(_, slot)| slot.clear());
        changes.map_err(|e| self.error(e))
    }

    /// Fills the slots of the changelog streams read above the aggregates (of an
    /// append-driven view) with their whole tables.
    fn show_lookups(&self, tables: &ChangelogTables) -> Result<()> {
        for (name, slot) in &self.lookups {
            let table = tables.get(name).ok_or_else(|| EngineError::internal("a changelog stream without its table"))?;
            slot.set(vec![table.whole()?]);
        }
        Ok(())
    }

    /// Emits (`EMIT ON WINDOW CLOSE`) and forgets the groups of the windows the
    /// watermark has passed, then deletes the rows whose retention ran out; `changes`
    /// are the micro-batch's other changes.
    async fn close_windows(&mut self, changes: Changeset, watermarks: &BTreeMap<String, i64>, ctx: &Arc<TaskContext>) -> Result<Changeset> {
        let (Some(windowing), ViewKind::Aggregating { stages, .. }) = (&self.windowing, &mut self.kind) else { return Ok(changes) };
        let Some(&watermark) = watermarks.get(&windowing.stream) else { return Ok(changes) };
        let mut closed = Vec::with_capacity(stages.aggregates.len());
        for aggregate in &mut stages.aggregates {
            closed.push(aggregate.close(watermark, ctx).await?);
        }
        let mut changes = changes;
        if closed.iter().any(|c| c.num_rows() > 0) {
            // The closed windows' rows, as the sinks hold them (only needed to emit them, or to delete them later).
            let rows = match (windowing.emit, &self.retention) {
                (Emit::OnUpdate, None) => None,
                _ => Some(last_row_per_key(&stages.evaluate(closed.iter().cloned().map(Some).collect(), ctx).await?, &self.info.key)?),
            };
            if let (Emit::OnWindowClose, Some(rows)) = (windowing.emit, &rows) {
                changes = Changeset { upserts: rows.clone(), deletes: RecordBatch::new_empty(self.info.key_schema()) };
            }
            if let (Some(retention), Some(rows)) = (&mut self.retention, &rows) {
                retention.remember(rows)?;
            }
        }
        match &mut self.retention {
            Some(retention) => retention.expire(changes, watermark, &self.info),
            None => Ok(changes),
        }
    }

    async fn apply_changes(&mut self, ctx: &Arc<TaskContext>, tables: &ChangelogTables) -> Result<Changeset> {
        match &self.changelog {
            None => {
                // A changed lookup table re-evaluates the view over every group.
                let reevaluate = self.lookups.iter().any(|(name, _)| tables.changed(name));
                self.apply_batch(ctx, reevaluate).await
            }
            Some(inputs) => {
                let changed: Vec<&str> = inputs.streams.iter().map(|(n, _)| n.as_str()).filter(|n| tables.changed(n)).collect();
                if changed.is_empty() {
                    return Ok(self.info.no_change());
                }
                if self.recomputes_on(&changed) {
                    self.recompute(ctx, tables).await
                } else {
                    self.apply_delta(ctx, tables).await
                }
            }
        }
    }

    /// Follows the changed rows of the driving changelog stream.
    async fn apply_delta(&mut self, ctx: &Arc<TaskContext>, tables: &ChangelogTables) -> Result<Changeset> {
        let inputs = self.changelog.as_ref().expect("a changelog view");
        let (driver, slot) = &inputs.driver;
        let delta = tables.delta(driver).ok_or_else(|| EngineError::internal("the driving stream did not change"))?;
        inputs.show_tables(tables, false, false)?;
        let (stages, upkeep) = match &mut self.kind {
            ViewKind::Stateless { plan } => {
                let before = run_with(slot, vec![delta.before.clone()], plan, ctx).await?;
                let after = run_with(slot, vec![delta.after.clone()], plan, ctx).await?;
                return diff_rows(&self.differ, &self.info, before, after);
            }
            ViewKind::Aggregating { stages, upkeep } => (stages, upkeep),
        };
        let table = tables.get(driver).ok_or_else(|| EngineError::internal("a changelog stream without its table"))?;
        let mut touched = Vec::with_capacity(stages.aggregates.len());
        for aggregate in &mut stages.aggregates {
            touched.push(aggregate.apply_changes(slot, delta, table, ctx).await?);
        }
        if touched.iter().all(Option::is_none) {
            return Ok(self.info.no_change());
        }
        follow_touched(&self.differ, stages, upkeep, touched, ctx).await
    }

    /// Recomputes the view from the whole tables of its changelog streams, before and
    /// after the micro-batch, and diffs the two results.
    async fn recompute(&mut self, ctx: &Arc<TaskContext>, tables: &ChangelogTables) -> Result<Changeset> {
        let inputs = self.changelog.as_ref().expect("a changelog view");
        inputs.show_tables(tables, true, true)?;
        let before = match &self.kind {
            ViewKind::Stateless { plan } => run_plan(plan, ctx).await?,
            ViewKind::Aggregating { .. } => self.current_result(ctx).await?.expect("an aggregating view has a result"),
        };
        inputs.show_tables(tables, false, true)?;
        let after = match &mut self.kind {
            ViewKind::Stateless { plan } => run_plan(plan, ctx).await?,
            ViewKind::Aggregating { stages, upkeep } => {
                for aggregate in &mut stages.aggregates {
                    aggregate.recompute_all(ctx).await?;
                }
                rebuild(&self.differ, stages, upkeep, ctx).await?;
                self.current_result(ctx).await?.expect("an aggregating view has a result")
            }
        };
        diff_rows(&self.differ, &self.info, before, after)
    }

    /// `error`, saying which view (and where it is declared) it happened in.
    fn error(&self, error: EngineError) -> EngineError {
        let (file, line) = self.origin.clone();
        EngineError::View { file, line, view: self.info.name.clone(), source: Box::new(error) }
    }

    /// Folds the micro-batch now in the stream slots into the view; `reevaluate` makes it
    /// evaluate even when no group changed.
    async fn apply_batch(&mut self, ctx: &Arc<TaskContext>, reevaluate: bool) -> Result<Changeset> {
        let (stages, upkeep) = match &mut self.kind {
            ViewKind::Stateless { plan } => {
                let rows = run_plan(plan, ctx).await?;
                let upserts = last_row_per_key(&rows, &self.info.key)?;
                return Ok(Changeset { upserts, deletes: RecordBatch::new_empty(self.info.key_schema()) });
            }
            ViewKind::Aggregating { stages, upkeep } => (stages, upkeep),
        };
        let touched = match stages.apply(ctx).await? {
            Some(touched) => touched,
            None if reevaluate => Vec::new(),
            None => return Ok(self.info.no_change()),
        };
        if self.windowing.as_ref().is_some_and(|w| w.emit == Emit::OnWindowClose) {
            // Nothing before a window closes.
            return Ok(self.info.no_change());
        }
        follow_touched(&self.differ, stages, upkeep, touched, ctx).await
    }

    fn aggregates(&self) -> &[IncrementalAggregate] {
        match &self.kind {
            ViewKind::Stateless { .. } => &[],
            ViewKind::Aggregating { stages, .. } => &stages.aggregates,
        }
    }

    /// The whole state, for a full checkpoint: one batch per aggregate, then the rows
    /// of closed windows held under a retention.
    pub fn state(&self) -> Result<Vec<RecordBatch>> {
        self.aggregates().iter().map(|a| a.state_batch()).chain(self.retention.iter().map(Retention::state)).collect()
    }

    /// The state of the groups changed since the last checkpoint, for a delta checkpoint:
    /// one batch per aggregate, then none of the rows held under a retention: they change
    /// only when windows close or expire, which makes the next checkpoint a full one.
    pub fn changed_state(&self) -> Result<Vec<RecordBatch>> {
        let unchanged = self.retention.iter().map(|r| Ok(RecordBatch::new_empty(r.state_schema().clone())));
        self.aggregates().iter().map(|a| a.changed_state()).chain(unchanged).collect()
    }

    /// Groups changed since the last checkpoint, and groups in all, over every aggregate.
    pub fn group_counts(&self) -> (usize, usize) {
        self.aggregates().iter().fold((0, 0), |(changed, all), a| (changed + a.changed_groups(), all + a.groups()))
    }

    /// Whether groups were removed since the last checkpoint: the next must be full.
    pub fn removed_groups(&self) -> bool {
        self.aggregates().iter().any(IncrementalAggregate::removed_groups) || self.retention.as_ref().is_some_and(Retention::expired_since_checkpoint)
    }

    /// Forgets which groups changed: a checkpoint now holds them.
    pub fn mark_checkpointed(&mut self) {
        if let ViewKind::Aggregating { stages, .. } = &mut self.kind {
            stages.aggregates.iter_mut().for_each(IncrementalAggregate::mark_checkpointed);
        }
        self.retention.iter_mut().for_each(Retention::mark_checkpointed);
    }

    /// Schemas of [`Self::state`]'s batches.
    pub fn state_schemas(&self) -> Vec<SchemaRef> {
        let aggregates = self.aggregates().iter().map(|a| a.state_schema().clone());
        aggregates.chain(self.retention.iter().map(|r| r.state_schema().clone())).collect()
    }

    /// The view's whole current result, for views that keep state (those with
    /// aggregates); computed over every group, so meant for start-up, not for each
    /// micro-batch.
    pub async fn current_result(&self, ctx: &Arc<TaskContext>) -> Result<Option<RecordBatch>> {
        let ViewKind::Aggregating { stages, upkeep } = &self.kind else { return Ok(None) };
        if self.windowing.is_some() {
            // The rows of closed windows are no longer in the state, but stay in the sinks.
            return Ok(None);
        }
        match upkeep {
            Upkeep::TouchedGroups => Ok(Some(stages.evaluate_all(ctx).await?)),
            Upkeep::TopN { current, .. } | Upkeep::WholeResult { current, .. } => Ok(Some(current.batch.clone())),
        }
    }

    /// Takes the state of an input without records (see [`IncrementalAggregate::start`]),
    /// before the first micro-batch of a job that resumes no checkpoint.
    pub async fn start(&mut self, ctx: &Arc<TaskContext>) -> Result<()> {
        let started = self.start_state(ctx).await;
        started.map_err(|e| self.error(e))
    }

    async fn start_state(&mut self, ctx: &Arc<TaskContext>) -> Result<()> {
        let ViewKind::Aggregating { stages, upkeep } = &mut self.kind else { return Ok(()) };
        for aggregate in &mut stages.aggregates {
            aggregate.start(ctx).await?;
        }
        rebuild(&self.differ, stages, upkeep, ctx).await
    }

    /// Restores checkpointed state (one batch per aggregate; where a group appears twice
    /// the later row wins) without emitting anything: the pipeline resets the sink to
    /// [`Self::current_result`], see [`crate::contract::Sink::reset`].
    pub async fn restore(&mut self, state: Vec<RecordBatch>, ctx: &Arc<TaskContext>) -> Result<()> {
        let restored = self.restore_state(state, ctx).await;
        restored.map_err(|e| self.error(e))
    }

    async fn restore_state(&mut self, state: Vec<RecordBatch>, ctx: &Arc<TaskContext>) -> Result<()> {
        let ViewKind::Aggregating { stages, upkeep } = &mut self.kind else { return Ok(()) };
        let mut state = state.into_iter();
        for (aggregate, batch) in stages.aggregates.iter_mut().zip(state.by_ref()) {
            aggregate.restore(batch, ctx).await?;
        }
        if let (Some(retention), Some(batch)) = (&mut self.retention, state.next()) {
            retention.restore(&batch)?;
        }
        rebuild(&self.differ, stages, upkeep, ctx).await
    }
}

/// Re-derives what `upkeep` keeps (the ranked rows of a top-n, the current result)
/// from every group, after the groups were replaced.
async fn rebuild(differ: &Differ, stages: &AggregateStages, upkeep: &mut Upkeep, ctx: &Arc<TaskContext>) -> Result<()> {
    match upkeep {
        Upkeep::TouchedGroups => {}
        Upkeep::TopN { top, current } => {
            top.clear();
            top.insert(&stages.evaluate_all(ctx).await?)?;
            *current = differ.index(top.evaluate(ctx).await?)?;
        }
        Upkeep::WholeResult { current, .. } => *current = differ.index(stages.evaluate_all(ctx).await?)?,
    }
    Ok(())
}

/// The view's changes after its aggregates touched `touched` groups (per aggregate).
async fn follow_touched(
    differ: &Differ,
    stages: &AggregateStages,
    upkeep: &mut Upkeep,
    touched: Vec<Option<TouchedGroups>>,
    ctx: &Arc<TaskContext>,
) -> Result<Changeset> {
    if let Upkeep::WholeResult { current, .. } = upkeep {
        return replace_current(differ, current, stages.evaluate_all(ctx).await?);
    }
    let (before, after) = stages.evaluate_touched(touched, ctx).await?;
    match upkeep {
        Upkeep::TopN { top, current } => {
            top.remove(&before)?;
            top.insert(&after)?;
            replace_current(differ, current, top.evaluate(ctx).await?)
        }
        _ => differ.diff(&differ.index(before)?, &differ.index(after)?),
    }
}

/// The changes from the rows `before` to the rows `after` (where a key repeats, its
/// last row counts, as upserts would leave it).
fn diff_rows(differ: &Differ, info: &ViewInfo, before: RecordBatch, after: RecordBatch) -> Result<Changeset> {
    let before = differ.index(last_row_per_key(&before, &info.key)?)?;
    differ.diff(&before, &differ.index(last_row_per_key(&after, &info.key)?)?)
}

/// Splits a view's physical plan into its incremental stages. Over append streams only,
/// every stream is treated alike. A view that reads changelog streams is driven by the
/// first of them that it is row-local in (the others are read as whole tables, whose
/// changes make it recompute), unless it also reads append streams: then it is driven by
/// those, and may read the changelog streams above its aggregates only (their groups
/// are kept, so a changed table re-evaluates the rest of the plan over every group).
fn compile_kind(physical: Arc<dyn ExecutionPlan>, read: &[Input], differ: &Differ) -> std::result::Result<CompiledKind, String> {
    let (keyed, append): (Vec<&Input>, Vec<&Input>) = read.iter().partition(|s| s.keyed);
    if keyed.is_empty() {
        let slots: Vec<BatchSlot> = read.iter().map(|s| s.slot.clone()).collect();
        return Ok((stages_of(physical, &slots, differ, None, false)?, None, Vec::new()));
    }
    if let (Some(append), Some(keyed_first)) = (append.first(), keyed.first()) {
        let append_slots: Vec<BatchSlot> = read.iter().filter(|s| !s.keyed).map(|s| s.slot.clone()).collect();
        let lookups: Vec<(String, BatchSlot)> = keyed.iter().map(|s| (s.name.clone(), s.slot.clone())).collect();
        let lookup_slots: Vec<BatchSlot> = lookups.iter().map(|(_, slot)| slot.clone()).collect();
        let because = format!("it reads the changelog stream `{}` above its aggregates", keyed_first.name);
        let kind = stages_of(physical, &append_slots, differ, Some(because), false)?;
        if matches!(kind, ViewKind::Aggregating { .. }) && !kind.aggregates_read(&lookup_slots) {
            return Ok((kind, None, lookups));
        }
        return Err(format!(
            "it reads the append stream `{}` and the changelog stream `{}` below an aggregate (or without one): when `{}` changes, \
             the rows of `{}` it met would have to be met again, but an append stream keeps none; join `{}` above the aggregate \
             (`(SELECT category_id, COUNT(*) AS n FROM products GROUP BY category_id) a LEFT JOIN {} c ON …`), declare `{}` \
             OPTIONS ('changelog' 'upsert') with a PRIMARY KEY if a repeated key is an update, or read `{}` as a reference table \
             (STORED AS CSV / PARQUET / JSON), read once",
            append.name, keyed_first.name, keyed_first.name, append.name, keyed_first.name, keyed_first.name, append.name, keyed_first.name
        ));
    }
    let streams: Vec<(String, BatchSlot)> = keyed.iter().map(|s| (s.name.clone(), s.slot.clone())).collect();
    let mut first_error = None;
    for driver in &streams {
        match stages_of(physical.clone(), std::slice::from_ref(&driver.1), differ, None, true) {
            Ok(kind) => return Ok((kind, Some(ChangelogInputs { driver: driver.clone(), streams }), Vec::new())),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    Err(first_error.expect("a view over changelog streams reads one"))
}

/// A compiled view: its stages, how it follows the changelog streams that drive it, and
/// the changelog streams it reads above its aggregates (see [`IncrementalView`]).
type CompiledKind = (ViewKind, Option<ChangelogInputs>, Vec<(String, BatchSlot)>);

/// The stages of a view whose streams (those it is maintained by) read `slots`;
/// `whole_result` (why) re-evaluates the plan above the aggregates over every group;
/// `changelog`: the streams are a changelog stream's changes, whose retracted rows leave
/// the aggregates.
fn stages_of(
    physical: Arc<dyn ExecutionPlan>,
    slots: &[BatchSlot],
    differ: &Differ,
    whole_result: Option<String>,
    changelog: bool,
) -> std::result::Result<ViewKind, String> {
    let schema = physical.schema();
    let finder = StreamFinder { streams: slots, changelog };
    let mut aggregates = Vec::new();
    let output = finder.split(physical, &mut aggregates)?;
    if aggregates.is_empty() {
        finder.check_stream_operators(&output)?;
        return Ok(ViewKind::Stateless { plan: output });
    }
    if finder.reads_stream(&output) {
        return Err("it reads a stream both inside and outside an aggregate".into());
    }
    let finals: Vec<BatchSlot> = aggregates.iter().map(|a| a.finals_slot().clone()).collect();
    let empty = || differ.index(RecordBatch::new_empty(schema.clone())).map_err(|e| e.to_string());
    let classified = match whole_result {
        Some(because) => Classified::WholeResult { because },
        None => classify(&output, &finals),
    };
    let (output, upkeep) = match classified {
        Classified::TouchedGroups => (output, Upkeep::TouchedGroups),
        Classified::TopN { sort } => {
            let (top, below) = TopN::split(&output, &sort).map_err(|e| e.to_string())?;
            (below, Upkeep::TopN { top, current: empty()? })
        }
        Classified::WholeResult { because } => (output, Upkeep::WholeResult { because, current: empty()? }),
    };
    Ok(ViewKind::Aggregating { stages: AggregateStages { aggregates, output }, upkeep })
}

/// Makes `result` the view's current rows and returns how it differs from the previous ones.
fn replace_current(differ: &Differ, current: &mut IndexedRows, result: RecordBatch) -> Result<Changeset> {
    let result = differ.index(result)?;
    let changes = differ.diff(current, &result)?;
    *current = result;
    Ok(changes)
}

impl ViewKind {
    /// Whether an aggregate's input reads one of `slots`.
    fn aggregates_read(&self, slots: &[BatchSlot]) -> bool {
        match self {
            ViewKind::Stateless { .. } => false,
            ViewKind::Aggregating { stages, .. } => stages.aggregates.iter().any(|a| a.reads(slots)),
        }
    }
}

impl ViewInfo {
    fn no_change(&self) -> Changeset {
        Changeset { upserts: RecordBatch::new_empty(self.schema.clone()), deletes: RecordBatch::new_empty(self.key_schema()) }
    }
}

impl AggregateStages {
    /// Folds the micro-batch into every aggregate; per aggregate, the groups it touched.
    /// `None` when it touched no group at all.
    async fn apply(&mut self, ctx: &Arc<TaskContext>) -> Result<Option<Vec<Option<TouchedGroups>>>> {
        let mut touched = Vec::with_capacity(self.aggregates.len());
        for aggregate in &mut self.aggregates {
            touched.push(aggregate.apply(ctx).await?);
        }
        Ok(touched.iter().any(Option::is_some).then_some(touched))
    }

    /// Runs the plan above the aggregates over the groups they touched, before and after.
    async fn evaluate_touched(&self, touched: Vec<Option<TouchedGroups>>, ctx: &Arc<TaskContext>) -> Result<(RecordBatch, RecordBatch)> {
        let (before, after): (Vec<_>, Vec<_>) = touched.into_iter().map(|t| t.map(|t| (t.before, t.after)).unzip()).unzip();
        Ok((self.evaluate(before, ctx).await?, self.evaluate(after, ctx).await?))
    }

    /// Runs the plan above the aggregates over every finalized group.
    async fn evaluate_all(&self, ctx: &Arc<TaskContext>) -> Result<RecordBatch> {
        for aggregate in &self.aggregates {
            aggregate.publish_all()?;
        }
        self.run(ctx).await
    }

    /// Runs the plan above the aggregates over just `groups`, one batch (or none) per aggregate.
    async fn evaluate(&self, groups: Vec<Option<RecordBatch>>, ctx: &Arc<TaskContext>) -> Result<RecordBatch> {
        for (aggregate, rows) in self.aggregates.iter().zip(groups) {
            aggregate.publish(rows.unwrap_or_else(|| RecordBatch::new_empty(aggregate.finals_slot().schema().clone())));
        }
        self.run(ctx).await
    }

    async fn run(&self, ctx: &Arc<TaskContext>) -> Result<RecordBatch> {
        let result = run_plan(&self.output, ctx).await;
        for aggregate in &self.aggregates {
            aggregate.finals_slot().clear();
        }
        result
    }
}

/// Keeps, for every key, the last row of `rows` (a micro-batch may update a key twice).
fn last_row_per_key(rows: &RecordBatch, key: &[usize]) -> Result<RecordBatch> {
    Ok(crate::keyed::last_rows_per_key(rows, key)?.0)
}

/// Finds stream scans in a plan and splits it at the aggregates over them.
struct StreamFinder<'a> {
    streams: &'a [BatchSlot],
    /// Whether the streams are a changelog stream's changes.
    changelog: bool,
}

impl StreamFinder<'_> {
    fn reads_stream(&self, plan: &Arc<dyn ExecutionPlan>) -> bool {
        reads_any(plan, self.streams)
    }

    /// True when `plan`'s subtree holds an aggregate over a stream.
    fn aggregates_stream(&self, plan: &Arc<dyn ExecutionPlan>) -> bool {
        (plan.is::<AggregateExec>() && self.reads_stream(plan)) || plan.children().into_iter().any(|c| self.aggregates_stream(c))
    }

    /// Replaces every lowest aggregate over a stream by a read of its finalized groups.
    fn split(&self, plan: Arc<dyn ExecutionPlan>, aggregates: &mut Vec<IncrementalAggregate>) -> std::result::Result<Arc<dyn ExecutionPlan>, String> {
        if !self.reads_stream(&plan) {
            return Ok(plan);
        }
        if let Some(aggregate) = plan.downcast_ref::<AggregateExec>() {
            if let Some(stage) = self.incremental_stage(aggregate)? {
                self.check_stream_operators(below_ordering_sort(stage))?;
                let incremental = IncrementalAggregate::try_new(stage, plan.schema(), self.changelog).map_err(|e| e.to_string())?;
                let read = incremental.finals_slot().exec(None).map_err(|e| e.to_string())?;
                aggregates.push(incremental);
                return Ok(read);
            }
        }
        let children = plan.children().into_iter().map(|child| self.split(child.clone(), aggregates)).collect::<std::result::Result<Vec<_>, _>>()?;
        replace_children_if_necessary(plan, children).map_err(|e| e.to_string())
    }

    /// The aggregate whose parts define the incremental stages, when `aggregate` is the
    /// lowest aggregate over a stream: itself when `Single`, its `Partial` child when `Final`.
    fn incremental_stage<'p>(&self, aggregate: &'p AggregateExec) -> std::result::Result<Option<&'p AggregateExec>, String> {
        let stage = match aggregate.mode() {
            AggregateMode::Single | AggregateMode::SinglePartitioned => aggregate,
            AggregateMode::Final | AggregateMode::FinalPartitioned => {
                find_partial(aggregate.input()).ok_or("a final aggregate without its partial stage")?
            }
            AggregateMode::Partial | AggregateMode::PartialReduce => return Ok(None),
        };
        if self.aggregates_stream(stage.input()) {
            return Ok(None);
        }
        if stage.group_expr().has_grouping_set() {
            return Err("GROUPING SETS / ROLLUP / CUBE over a stream".into());
        }
        Ok(Some(stage))
    }

    /// Refuses operators over a stream that a micro-batch cannot evaluate on its own.
    fn check_stream_operators(&self, plan: &Arc<dyn ExecutionPlan>) -> std::result::Result<(), String> {
        let streaming_children = plan.children().into_iter().filter(|c| self.reads_stream(c)).count();
        if streaming_children == 0 {
            return Ok(());
        }
        if let Some(construct) = self.reference_rows_without_stream_rows(plan) {
            return Err(construct);
        }
        let refused = if streaming_children > 1 && !plan.is::<UnionExec>() {
            Some("a join between two streams")
        } else if plan.is::<WindowAggExec>() || plan.is::<BoundedWindowAggExec>() {
            Some("a window function (OVER) over a stream; aggregate with GROUP BY first")
        } else if plan.is::<SortExec>() {
            Some("ORDER BY over stream rows (or an ordered aggregate); order an aggregated view instead")
        } else if plan.is::<GlobalLimitExec>() || plan.is::<LocalLimitExec>() || plan.fetch().is_some() {
            Some("LIMIT over stream rows; limit an aggregated view instead")
        } else {
            None
        };
        if let Some(construct) = refused {
            return Err(format!("{construct} ({})", plan.name()));
        }
        plan.children().into_iter().try_for_each(|c| self.check_stream_operators(c))
    }

    /// Why `plan` would output rows that come from reference tables alone, which every
    /// micro-batch would produce (and an aggregate count) again: a join that keeps
    /// reference rows without a matching stream record, or a UNION of a stream and a
    /// reference table.
    fn reference_rows_without_stream_rows(&self, plan: &Arc<dyn ExecutionPlan>) -> Option<String> {
        let children = plan.children();
        let streaming: Vec<usize> = (0..children.len()).filter(|&i| self.reads_stream(children[i])).collect();
        if plan.is::<UnionExec>() && streaming.len() < children.len() {
            return Some(
                "a UNION of a stream and a reference table: every micro-batch would produce the reference rows again; \
                 aggregate the stream, or keep the reference rows in a view of their own"
                    .into(),
            );
        }
        match (join_type(plan), streaming.as_slice()) {
            (Some(join_type), [side]) if !keeps_only_side(join_type, *side) => Some(format!(
                "{} that outputs reference-table rows on their own (without a stream record, or once per \
                 matching micro-batch): every micro-batch would produce them again, and an aggregate count them again; keep the stream on the preserved side \
                 (`products p LEFT JOIN categories c`), or filter the stream with a semi-join (`WHERE p.category_id IN (SELECT id FROM categories)`)",
                join_name(join_type)
            )),
            _ => None,
        }
    }
}

/// Why an expression in `plan` (or in the views it reads) cannot be maintained: a
/// function whose value does not follow from its arguments (`now()`, `random()`…), an
/// aggregate whose value follows from the micro-batch cuts, or a scalar subquery,
/// whose value the engine would have to maintain beside the view.
fn unmaintainable_expression(plan: &LogicalPlan) -> Option<String> {
    find_in_plan(plan, &|node| {
        let mut found = None;
        let _ = node.apply_expressions(|expr| {
            expr.apply(|e| {
                found = match e {
                    Expr::ScalarFunction(call) if call.func.signature().volatility != Volatility::Immutable => Some(format!(
                        "`{}()` reads the clock or is random, so the result would depend on when each micro-batch ran, \
                         not on the records; derive times from `_timestamp` instead (e.g. date_bin(INTERVAL '1 minute', _timestamp))",
                        call.func.name()
                    )),
                    Expr::AggregateFunction(call) => split_dependent(call),
                    Expr::ScalarSubquery(_) => Some(
                        "a scalar subquery (a `(SELECT …)` used as a value) over a stream, or one that refers to the \
                         outer query, is not maintained as records arrive; join to the table it reads instead (one over \
                         reference tables alone is computed once at start-up)"
                            .into(),
                    ),
                    _ => None,
                };
                Ok(if found.is_some() { TreeNodeRecursion::Stop } else { TreeNodeRecursion::Continue })
            })
        });
        found
    })
}

/// The input of `stage` below the sort that orders it for its ordered aggregates
/// (`array_agg(x ORDER BY y)`): each micro-batch's rows are sorted on their own, and
/// the partial states keep their sort values, so merging them gives the order of all
/// the group's rows.
fn below_ordering_sort(stage: &AggregateExec) -> &Arc<dyn ExecutionPlan> {
    let ordered = stage.aggr_expr().iter().any(|a| !a.order_bys().is_empty());
    match stage.input().downcast_ref::<SortExec>() {
        Some(sort) if ordered && sort.fetch().is_none() => sort.input(),
        _ => stage.input(),
    }
}

/// Why the aggregate `call` would give a result that depends on how the records were
/// cut into micro-batches, so that no streaming run would equal a batch run: a t-digest
/// (its merged summary depends on the order of the merges), or a DISTINCT list in no
/// defined order.
fn split_dependent(call: &datafusion::logical_expr::expr::AggregateFunction) -> Option<String> {
    let name = call.func.name();
    if matches!(name, "approx_median" | "approx_percentile_cont" | "approx_percentile_cont_with_weight") {
        return Some(format!(
            "`{name}` merges t-digest summaries, whose value depends on how the records were cut into micro-batches, \
             so no stream would equal a batch; use the exact `median(x)` or `percentile_cont(p) WITHIN GROUP (ORDER BY x)`"
        ));
    }
    let params = &call.params;
    (matches!(name, "array_agg" | "string_agg") && params.distinct && params.order_by.is_empty()).then(|| {
        format!("`{name}(DISTINCT x …)` without ORDER BY lists its values in an order no run reproduces; write `{name}(DISTINCT x … ORDER BY x)`")
    })
}

/// Builds an accumulator of every aggregate in `plan`, as a run builds them for each
/// group: DataFusion plans some that it cannot build (`approx_distinct` of a DOUBLE),
/// which would otherwise fail at the first record, not at start-up.
fn check_accumulators(plan: &Arc<dyn ExecutionPlan>) -> std::result::Result<(), String> {
    if let Some(aggregate) = plan.downcast_ref::<AggregateExec>() {
        for expr in aggregate.aggr_expr() {
            expr.create_accumulator().map_err(|e| {
                format!("{e}: `{}` cannot be computed for this argument type; cast the argument (e.g. CAST(x AS VARCHAR))", expr.fun().name())
            })?;
        }
    }
    plan.children().into_iter().try_for_each(check_accumulators)
}

/// The `Partial` aggregate under a `Final` one, through repartitioning and coalescing.
fn find_partial(plan: &Arc<dyn ExecutionPlan>) -> Option<&AggregateExec> {
    if let Some(aggregate) = plan.downcast_ref::<AggregateExec>() {
        return (*aggregate.mode() == AggregateMode::Partial).then_some(aggregate);
    }
    match plan.children().as_slice() {
        [only] => find_partial(only),
        _ => None,
    }
}
