//! Searching a logical plan the way the engine's checks need: every node, the nodes of
//! its subqueries, and the nodes of the views it reads (a view is a `TableScan` whose
//! source holds the view's own plan).

use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::logical_expr::LogicalPlan;

/// The first `Some` that `find` gives for a node of `plan`, of its subqueries, or of a
/// view it reads (a view's nodes come before the scan of it).
pub(crate) fn find_in_plan<T>(plan: &LogicalPlan, find: &dyn Fn(&LogicalPlan) -> Option<T>) -> Option<T> {
    let mut found = None;
    let _ = plan.apply_with_subqueries(|node| {
        found = match node {
            LogicalPlan::TableScan(scan) => scan.source.get_logical_plan().and_then(|view| find_in_plan(&view, find)),
            _ => None,
        }
        .or_else(|| find(node));
        Ok(if found.is_some() { TreeNodeRecursion::Stop } else { TreeNodeRecursion::Continue })
    });
    found
}

/// Whether a node of `plan`, of its subqueries, or of a view it reads, is `wanted`.
pub(crate) fn contains(plan: &LogicalPlan, wanted: &dyn Fn(&LogicalPlan) -> bool) -> bool {
    find_in_plan(plan, &|node| wanted(node).then_some(())).is_some()
}
