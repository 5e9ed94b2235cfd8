//! The key of a view: the output columns that identify its rows, by which sinks
//! upsert and delete them.
//!
//! After an aggregate the key is its GROUP BY columns (after `SELECT DISTINCT`, every
//! column), which are unique by construction. Without an aggregate it is the stream's
//! declared PRIMARY KEY, by which each micro-batch's rows are upserted; it survives a
//! join that meets each row once (on the whole key of a changelog stream, e.g.
//! `products p LEFT JOIN categories c ON p.category_id = c.id`, or on the whole GROUP BY
//! of an aggregate), and a UNION ALL whose inputs share it and differ in a literal
//! column, which joins the key. A declared key is not
//! taken as a uniqueness guarantee on an append stream, which repeats it, so streams do
//! not give it to DataFusion as a constraint, whose functional dependencies would
//! otherwise "key" `GROUP BY asin, category_id` by `asin` and merge its groups.

use std::collections::HashSet;

use datafusion::common::JoinType;
use datafusion::common::{Column, DFSchema, Dependency};
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{BinaryExpr, Distinct, Expr, Join, LogicalPlan, Operator};

use crate::catalog::primary_key;
use crate::contract::StreamDecl;
use crate::plan_search::contains;

/// The key of the view planned as `plan`, or why it has none, saying how to give it one.
pub fn require_view_key(plan: &LogicalPlan, streams: &[StreamDecl]) -> Result<Vec<usize>, String> {
    view_key(plan, streams).ok_or_else(|| {
        if !contains(plan, &|node| matches!(node, LogicalPlan::Aggregate(_) | LogicalPlan::Distinct(_))) {
            "it has no key: select the stream's PRIMARY KEY columns (declared with the stream, and selected \
             straight from it; a join keeps them only on the whole PRIMARY KEY of the other side, a \
             changelog stream or a reference table declared with one), or aggregate with GROUP BY"
                .into()
        } else if contains(plan, &|node| matches!(node, LogicalPlan::Aggregate(a) if a.group_expr.iter().any(|e| matches!(e, Expr::GroupingSet(_)))))
        {
            "GROUPING SETS / ROLLUP / CUBE over a stream: its rows have no key (a rolled-up row holds NULL where \
             it sums over a column); group each level in a view of its own"
                .into()
        } else if contains(plan, &|node| matches!(node, LogicalPlan::Union(_))) {
            "it has no key: the inputs of a UNION ALL need the same key columns (every GROUP BY column, in \
             the same place) and a literal column that tells them apart \
             (`SELECT 'count' AS what, category_id, … UNION ALL SELECT 'avg' AS what, category_id, …`)"
                .into()
        } else if contains(plan, &|node| matches!(node, LogicalPlan::Join(_))) {
            "it has no key: select every GROUP BY column; a join above the GROUP BY can repeat a group's row \
             (a reference table's join column need not be unique), so join below it and group by the joined \
             columns too (`FROM products p LEFT JOIN categories c ON … GROUP BY p.category_id, c.category_name`), \
             or LEFT / INNER JOIN two aggregates on the whole GROUP BY of the right one and select the left \
             one's GROUP BY columns"
                .into()
        } else {
            "it has no key: select every GROUP BY column".into()
        }
    })
}

/// The key of the view planned as `plan`, as indices into its output; `None` when its
/// rows have none (a GROUP BY column left out of the SELECT, no PRIMARY KEY selected).
pub fn view_key(plan: &LogicalPlan, streams: &[StreamDecl]) -> Option<Vec<usize>> {
    trace(plan, &grouping_columns, streams)
        .or_else(|| trace(plan, &|node| primary_key_columns(node, streams), streams))
        .or_else(|| dependency_key(plan.schema()))
}

/// Where the key columns that `source` finds at some node under `plan` appear in
/// `plan`'s output, if all of them do, through operators that keep rows whole.
fn trace(plan: &LogicalPlan, source: &dyn Fn(&LogicalPlan) -> Option<Vec<usize>>, streams: &[StreamDecl]) -> Option<Vec<usize>> {
    if let Some(key) = source(plan) {
        return Some(key);
    }
    match plan {
        LogicalPlan::Projection(projection) => {
            let input = projection.input.schema();
            let inner = trace(&projection.input, source, streams)?;
            let key = inner.into_iter().map(|j| {
                let column = Column::from(input.qualified_field(j));
                projection.expr.iter().position(|e| {
                    let e = if let Expr::Alias(alias) = e { alias.expr.as_ref() } else { e };
                    e.try_as_col() == Some(&column)
                })
            });
            sorted(key.collect::<Option<_>>()?)
        }
        LogicalPlan::TableScan(scan) => {
            let inner = trace(scan.source.get_logical_plan()?.as_ref(), source, streams)?;
            through_scan_projection(inner, scan.projection.as_deref())
        }
        // A join that matches each left row with at most one right row keeps the left
        // key, in place (the left columns come first).
        LogicalPlan::Join(join) if matches!(join.join_type, JoinType::Inner | JoinType::Left) && matches_at_most_once(join, streams) => {
            trace(&join.left, source, streams)
        }
        LogicalPlan::Union(union) => union_key(&union.inputs, source, streams),
        // Each keeps its input's columns in place (a window appends its own after them).
        LogicalPlan::Filter(_) | LogicalPlan::Sort(_) | LogicalPlan::Limit(_) | LogicalPlan::Window(_) | LogicalPlan::SubqueryAlias(_) => {
            trace(plan.inputs()[0], source, streams)
        }
        _ => None,
    }
}

/// The key of a UNION ALL whose inputs differ in a literal column (`SELECT 'count' AS
/// what, category_id, … UNION ALL SELECT 'avg' AS what, category_id, …`), which keeps
/// their rows apart: that column and every input's key, where each input is constant
/// in the key columns it does not key by (a `'total'` row of a global aggregate beside
/// per-category rows, with `CAST(NULL AS INT)` for its category).
fn union_key(
    inputs: &[std::sync::Arc<LogicalPlan>],
    source: &dyn Fn(&LogicalPlan) -> Option<Vec<usize>>,
    streams: &[StreamDecl],
) -> Option<Vec<usize>> {
    let keys = inputs.iter().map(|input| trace(input, source, streams)).collect::<Option<Vec<_>>>()?;
    let schema = inputs.first()?.schema();
    // Compared as the union outputs them: `1` and `1.0` are one value there.
    let output_literal = |input: &LogicalPlan, column: usize| literal_column(input, column)?.cast_to(schema.field(column).data_type()).ok();
    let apart = (0..schema.fields().len()).find(|&column| {
        let literals: Option<Vec<_>> = inputs.iter().map(|input| output_literal(input, column)).collect();
        literals.is_some_and(|values| values.iter().collect::<HashSet<_>>().len() == values.len())
    })?;
    let combined: HashSet<usize> = keys.iter().flatten().copied().chain([apart]).collect();
    let constant_elsewhere =
        inputs.iter().zip(&keys).all(|(input, key)| combined.iter().filter(|c| !key.contains(c)).all(|&c| literal_column(input, c).is_some()));
    constant_elsewhere.then(|| sorted(combined.into_iter().collect())).flatten()
}

/// The literal `plan` outputs in `column` for every row, when it is a projection of one
/// (possibly cast, as `CAST(NULL AS INT)`).
fn literal_column(plan: &LogicalPlan, column: usize) -> Option<datafusion::common::ScalarValue> {
    match plan {
        LogicalPlan::Projection(projection) => cast_literal(&projection.expr.get(column)?.clone().unalias()),
        LogicalPlan::SubqueryAlias(alias) => literal_column(&alias.input, column),
        _ => None,
    }
}

/// The value of a literal, through the casts around it.
fn cast_literal(expr: &Expr) -> Option<datafusion::common::ScalarValue> {
    match expr {
        Expr::Literal(value, _) => Some(value.clone()),
        Expr::Cast(cast) => cast_literal(&cast.expr)?.cast_to(cast.field.data_type()).ok(),
        _ => None,
    }
}

/// True when `join` meets each left row with at most one right row: its equality
/// conditions cover a key of the right side that is unique: the PRIMARY KEY of a
/// changelog stream (unlike an append stream's) or of a reference table, or the GROUP
/// BY columns of an aggregate (`… JOIN (SELECT category_id, AVG(price) … GROUP BY category_id) b ON
/// a.category_id = b.category_id`).
fn matches_at_most_once(join: &Join, streams: &[StreamDecl]) -> bool {
    let keyed: Vec<StreamDecl> = streams.iter().filter(|s| s.options.changelog.is_keyed()).cloned().collect();
    let unique = trace(&join.right, &|node| primary_key_columns(node, &keyed), &keyed)
        .or_else(|| trace(&join.right, &grouping_columns, streams))
        .or_else(|| trace(&join.right, &reference_key_columns, streams));
    let Some(key) = unique else { return false };
    let right = join.right.schema();
    // Before optimization, `ON a = b` is the join's filter, not yet its equi-join pairs.
    let filter_pairs = join.filter.iter().flat_map(split_conjunction).filter_map(|e| match e {
        Expr::BinaryExpr(BinaryExpr { left, op: Operator::Eq, right }) => Some((left.as_ref(), right.as_ref())),
        _ => None,
    });
    let pairs = join.on.iter().map(|(l, r)| (l, r)).chain(filter_pairs);
    let right_column = |e: &Expr| e.try_as_col().and_then(|c| right.index_of_column(c).ok());
    let reads_right = |e: &Expr| e.column_refs().iter().any(|c| right.index_of_column(c).is_ok());
    // A right key column counts when it equals something of the left (or a constant),
    // not another right column (`ON b.k = b.m` meets every such group).
    let matched: Vec<usize> = pairs
        .flat_map(|(l, r)| [(right_column(l), r), (right_column(r), l)])
        .filter_map(|(column, other)| column.filter(|_| !reads_right(other)))
        .collect();
    key.iter().all(|k| matched.contains(k))
}

/// The GROUP BY columns of an aggregate; every column of a `SELECT DISTINCT`; the `ON`
/// columns of a `SELECT DISTINCT ON (…)`.
fn grouping_columns(plan: &LogicalPlan) -> Option<Vec<usize>> {
    match plan {
        // With GROUPING SETS, one expression stands for several columns and the grouping id.
        LogicalPlan::Aggregate(aggregate) => Some((0..aggregate.group_expr_len().ok()?).collect()),
        LogicalPlan::Distinct(Distinct::All(input)) => Some((0..input.schema().fields().len()).collect()),
        LogicalPlan::Distinct(Distinct::On(on)) => {
            let position = |key: &Expr| on.select_expr.iter().position(|e| e.clone().unalias() == *key);
            sorted(on.on_expr.iter().map(position).collect::<Option<_>>()?)
        }
        _ => None,
    }
}

/// The declared PRIMARY KEY columns of a scanned stream.
fn primary_key_columns(plan: &LogicalPlan, streams: &[StreamDecl]) -> Option<Vec<usize>> {
    let LogicalPlan::TableScan(scan) = plan else { return None };
    let stream = streams.iter().find(|s| s.name == scan.table_name.table())?;
    if stream.primary_key.is_empty() {
        return None;
    }
    through_scan_projection(stream.primary_key.clone(), scan.projection.as_deref())
}

/// The PRIMARY KEY columns of a scanned reference table, which the catalog checked are
/// unique when it loaded the table (streams give DataFusion no constraint).
fn reference_key_columns(plan: &LogicalPlan) -> Option<Vec<usize>> {
    let LogicalPlan::TableScan(scan) = plan else { return None };
    through_scan_projection(primary_key(scan.source.constraints()?)?, scan.projection.as_deref())
}

fn through_scan_projection(key: Vec<usize>, projection: Option<&[usize]>) -> Option<Vec<usize>> {
    match projection {
        None => sorted(key),
        Some(projection) => sorted(key.iter().map(|k| projection.iter().position(|p| p == k)).collect::<Option<_>>()?),
    }
}

fn sorted(mut key: Vec<usize>) -> Option<Vec<usize>> {
    key.sort_unstable();
    Some(key)
}

/// The smallest set of columns DataFusion's functional dependencies say determines all
/// of them and is unique (`Multi` dependencies, e.g. across a join, may repeat).
fn dependency_key(schema: &DFSchema) -> Option<Vec<usize>> {
    let width = schema.fields().len();
    schema
        .functional_dependencies()
        .iter()
        .filter(|dep| dep.mode == Dependency::Single)
        .filter(|dep| {
            let targets: HashSet<usize> = dep.target_indices.iter().copied().collect();
            (0..width).all(|i| targets.contains(&i) || dep.source_indices.contains(&i))
        })
        .filter_map(|dep| sorted(dep.source_indices.clone()))
        .min_by_key(|key| key.len())
}
