//! Scalar subqueries over reference tables, computed once when a view compiles.
//!
//! Reference tables are read once at start-up, so an uncorrelated `(SELECT …)` that
//! reads only them has one value for the whole run: the view is planned with that
//! value in its place, and a batch run, which computes the subquery itself, gets the
//! same. A scalar subquery over a stream changes with every record and stays refused.

use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::ScalarValue;
use datafusion::logical_expr::expr_rewriter::NamePreserver;
use datafusion::logical_expr::{lit, Expr, LogicalPlan, Subquery};
use datafusion::prelude::SessionContext;

use crate::contract::StreamDecl;
use crate::plan_search::contains;

/// `plan` with every uncorrelated scalar subquery that reads no stream replaced by its value.
pub(crate) async fn inline_reference_subqueries(ctx: &SessionContext, plan: &LogicalPlan, streams: &[StreamDecl]) -> Result<LogicalPlan, String> {
    let constant = constant_subqueries(plan, streams);
    if constant.is_empty() {
        return Ok(plan.clone());
    }
    let mut values = Vec::with_capacity(constant.len());
    for subquery in constant {
        let value = evaluate(ctx, &subquery).await?;
        values.push((subquery, value));
    }
    let replace = |expr: Expr| {
        Ok(match &expr {
            Expr::ScalarSubquery(subquery) => match values.iter().find(|(s, _)| s == subquery) {
                Some((_, value)) => Transformed::yes(lit(value.clone())),
                None => Transformed::no(expr),
            },
            _ => Transformed::no(expr),
        })
    };
    // Each expression keeps its name (an unaliased `price - (SELECT MIN(id) …)` stays a
    // column of that name, not `price - Int32(1)`), so the schema the catalog reports holds.
    let inlined = plan.clone().transform_up(|node| {
        let names = NamePreserver::new(&node);
        node.map_expressions(|expr| {
            let name = names.save(&expr);
            Ok(expr.transform_up(replace)?.update_data(|e| name.restore(e)))
        })
    });
    inlined.map(|t| t.data).map_err(|e| e.to_string())
}

/// The scalar subqueries in `plan`'s own expressions that refer to no outer column and read no stream.
fn constant_subqueries(plan: &LogicalPlan, streams: &[StreamDecl]) -> Vec<Subquery> {
    let is_stream = |node: &LogicalPlan| matches!(node, LogicalPlan::TableScan(scan) if streams.iter().any(|s| s.name == scan.table_name.table()));
    let mut found = Vec::new();
    let _ = plan.apply(|node| {
        node.apply_expressions(|expr| {
            expr.apply(|e| {
                if let Expr::ScalarSubquery(subquery) = e {
                    if subquery.outer_ref_columns.is_empty() && !contains(&subquery.subquery, &is_stream) && !found.contains(subquery) {
                        found.push(subquery.clone());
                    }
                }
                Ok(TreeNodeRecursion::Continue)
            })
        })
    });
    found
}

/// The value of a scalar subquery: its one row's one column, NULL when it returns no row.
async fn evaluate(ctx: &SessionContext, subquery: &Subquery) -> Result<ScalarValue, String> {
    let batches = async { ctx.execute_logical_plan(subquery.subquery.as_ref().clone()).await?.collect().await };
    let batches = batches.await.map_err(|e| format!("cannot compute a scalar subquery over reference tables: {e}"))?;
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    match batches.iter().find(|b| b.num_rows() > 0) {
        _ if rows > 1 => Err(format!("a scalar subquery over reference tables returned {rows} rows; it must return at most one")),
        Some(batch) => ScalarValue::try_from_array(batch.column(0), 0).map_err(|e| e.to_string()),
        None => ScalarValue::try_from(subquery.subquery.schema().field(0).data_type()).map_err(|e| e.to_string()),
    }
}
