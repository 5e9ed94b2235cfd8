//! How much of an aggregating view a micro-batch makes the engine re-evaluate.
//!
//! When every row the plan above the aggregates outputs follows from one finalized
//! group (projections, filters and HAVING, CASE, casts, joins that keep only the
//! group's side), a micro-batch changes exactly the rows of
//! the groups it touched: the engine evaluates the plan over those groups before and
//! after the micro-batch and diffs the two, at a cost proportional to the change.
//! A top-n (`ORDER BY … LIMIT n` over such rows) keeps every group's row ranked and
//! evaluates the rest over the first n (see [`crate::top_n`]). Anything else that
//! relates groups to each other (window functions, aggregates of aggregates, joins
//! that keep reference rows without a group) needs the whole result and is re-run
//! over every group.

use std::sync::Arc;

use datafusion::common::JoinType;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_plan::aggregates::AggregateExec;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::coop::CooperativeExec;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::joins::{CrossJoinExec, HashJoinExec, NestedLoopJoinExec, SortMergeJoinExec};
use datafusion::physical_plan::limit::{GlobalLimitExec, LocalLimitExec};
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::sorts::sort_preserving_merge::SortPreservingMergeExec;
use datafusion::physical_plan::union::UnionExec;
use datafusion::physical_plan::windows::{BoundedWindowAggExec, WindowAggExec};
use datafusion::physical_plan::ExecutionPlan;

use crate::slot::{reads_any, BatchSlot};
use crate::window::{WINDOW_END, WINDOW_START};

/// How an aggregating view's plan above its aggregates is evaluated after a micro-batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Evaluation {
    /// Over the groups the micro-batch touched only: each output row follows from one group.
    TouchedGroups,
    /// A top-n: the touched groups are re-ranked among all groups' rows, and the view's
    /// rows re-evaluated over the first `n`.
    TopN {
        /// The LIMIT.
        n: usize,
    },
    /// Over the groups of the windows the watermark has closed, once (`EMIT ON WINDOW
    /// CLOSE`): each output row follows from the groups of one window.
    ClosedWindows,
    /// Over every group, because of the named construct, which relates groups to each other.
    WholeResult {
        /// The construct, e.g. `ORDER BY … LIMIT`.
        because: String,
    },
}

/// What [`classify`] found, with what compiling the view needs of it.
pub(crate) enum Classified {
    TouchedGroups,
    /// The top-n sort: a `SortExec` with a limit under only row-wise operators, over
    /// rows that are row-local in the groups.
    TopN {
        sort: Arc<dyn ExecutionPlan>,
    },
    WholeResult {
        because: String,
    },
}

/// Classifies `plan`, whose leaves read the finalized groups from `finals`.
pub(crate) fn classify(plan: &Arc<dyn ExecutionPlan>, finals: &[BatchSlot]) -> Classified {
    let classifier = Classifier { finals, windows_apart: false };
    match classifier.whole_because(plan) {
        None => Classified::TouchedGroups,
        Some(because) => match classifier.top_n_sort(plan) {
            Some(sort) => Classified::TopN { sort },
            None => Classified::WholeResult { because },
        },
    }
}

struct Classifier<'a> {
    finals: &'a [BatchSlot],
    /// Whether window functions partitioned by `window_start` or `window_end` count as
    /// row-local: over groups that are windows closing together, they are.
    windows_apart: bool,
}

/// What in `plan` (above the groups in `finals`, which are event-time windows) relates
/// groups of different windows to each other; `None` when every output row follows from
/// the groups of one window (row-local operators, and window functions `PARTITION BY
/// window_start` or `window_end`), so that closed windows can be evaluated on their own.
pub(crate) fn relates_windows(plan: &Arc<dyn ExecutionPlan>, finals: &[BatchSlot]) -> Option<String> {
    Classifier { finals, windows_apart: true }.whole_because(plan)
}

/// True when every window function of `plan` (a window operator) is partitioned by a
/// window's start or end.
fn partitioned_by_window(plan: &Arc<dyn ExecutionPlan>) -> bool {
    let exprs = if let Some(window) = plan.downcast_ref::<BoundedWindowAggExec>() {
        window.window_expr()
    } else if let Some(window) = plan.downcast_ref::<WindowAggExec>() {
        window.window_expr()
    } else {
        return false;
    };
    let schema = plan.children()[0].schema();
    exprs.iter().all(|e| {
        e.partition_by()
            .iter()
            .any(|p| p.downcast_ref::<Column>().is_some_and(|c| matches!(schema.field(c.index()).name().as_str(), WINDOW_START | WINDOW_END)))
    })
}

impl Classifier<'_> {
    fn reads_finals(&self, plan: &Arc<dyn ExecutionPlan>) -> bool {
        reads_any(plan, self.finals)
    }

    fn top_n_sort(&self, plan: &Arc<dyn ExecutionPlan>) -> Option<Arc<dyn ExecutionPlan>> {
        let children = plan.children();
        let [child] = children.as_slice() else { return None };
        if plan.is::<SortExec>() && plan.fetch().is_some() {
            return (self.reads_finals(child) && self.whole_because(child).is_none()).then(|| plan.clone());
        }
        if passes_rows_through(plan) {
            return self.top_n_sort(child);
        }
        None
    }

    /// The first construct under which an output row depends on more than one group.
    fn whole_because(&self, plan: &Arc<dyn ExecutionPlan>) -> Option<String> {
        let children = plan.children();
        let reading: Vec<usize> = (0..children.len()).filter(|&i| self.reads_finals(children[i])).collect();
        if reading.is_empty() {
            return None;
        }
        let recurse = || reading.iter().find_map(|&i| self.whole_because(children[i]));
        // A limit anywhere (DataFusion pushes LIMIT into joins and scans) ranks rows.
        if plan.fetch().is_some() {
            return Some(describe(plan));
        }
        // A branch that does not read the groups would give the same rows before and
        // after every micro-batch, which the diff would cancel.
        let window_local = self.windows_apart && partitioned_by_window(plan);
        if plan.is::<UnionExec>() && reading.len() == children.len() || passes_rows_through(plan) || window_local {
            return recurse();
        }
        if let Some(join_type) = join_type(plan) {
            return match reading.as_slice() {
                [side] if keeps_only_side(join_type, *side) => recurse(),
                [_] => Some(format!("{} that keeps rows without a group", join_name(join_type))),
                _ => Some("a join between aggregates".into()),
            };
        }
        Some(describe(plan))
    }
}

/// Operators that map each input row to at most one output row on its own.
fn passes_rows_through(plan: &Arc<dyn ExecutionPlan>) -> bool {
    // An ordering without a limit does not change which rows a view holds.
    let row_wise = plan.is::<ProjectionExec>()
        || plan.is::<FilterExec>()
        || plan.is::<RepartitionExec>()
        || plan.is::<CoalescePartitionsExec>()
        || plan.is::<CooperativeExec>()
        || plan.is::<SortExec>()
        || plan.is::<SortPreservingMergeExec>();
    row_wise && plan.fetch().is_none()
}

/// The join type of a join operator; `None` for other operators.
pub(crate) fn join_type(plan: &Arc<dyn ExecutionPlan>) -> Option<JoinType> {
    if let Some(join) = plan.downcast_ref::<HashJoinExec>() {
        Some(*join.join_type())
    } else if let Some(join) = plan.downcast_ref::<NestedLoopJoinExec>() {
        Some(*join.join_type())
    } else if let Some(join) = plan.downcast_ref::<SortMergeJoinExec>() {
        Some(join.join_type())
    } else {
        plan.is::<CrossJoinExec>().then_some(JoinType::Inner)
    }
}

/// True when every row a `join_type` join outputs comes from one row of input `side`
/// (0: left, 1: right), so the join is row-local in that input.
pub(crate) fn keeps_only_side(join_type: JoinType, side: usize) -> bool {
    use JoinType::*;
    match join_type {
        Inner => true,
        Left | LeftSemi | LeftAnti | LeftMark => side == 0,
        Right | RightSemi | RightAnti | RightMark => side == 1,
        Full => false,
    }
}

/// A join type as users write it; the planner may have swapped the join's sides, so
/// LEFT and RIGHT are not told apart.
pub(crate) fn join_name(join_type: JoinType) -> &'static str {
    use JoinType::*;
    match join_type {
        Inner => "an inner join",
        Left | Right | Full => "an outer join",
        LeftSemi | RightSemi | LeftMark | RightMark => "a semi-join (IN / EXISTS)",
        LeftAnti | RightAnti => "an anti-join (NOT IN / NOT EXISTS)",
    }
}

fn describe(plan: &Arc<dyn ExecutionPlan>) -> String {
    if plan.fetch().is_some() || plan.is::<GlobalLimitExec>() || plan.is::<LocalLimitExec>() {
        "ORDER BY … LIMIT (a top-n ranks all groups)".into()
    } else if plan.is::<WindowAggExec>() || plan.is::<BoundedWindowAggExec>() {
        "a window function over the groups".into()
    } else if plan.is::<AggregateExec>() {
        "an aggregate over the groups".into()
    } else {
        format!("{} over the groups", plan.name())
    }
}
