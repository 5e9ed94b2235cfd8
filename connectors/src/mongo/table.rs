//! A view's MongoDB collection read back as a DataFusion table ([`MongoTable`]), with
//! simple comparisons pushed into the MongoDB query.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::{Constraint, Constraints, ScalarValue};
use datafusion::datasource::{MemTable, TableType};
use datafusion::logical_expr::{BinaryExpr, Expr, Operator, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};
use mongodb::error::Error as MongoError;
use mongodb::Database;
use trendflow_engine::contract::ViewInfo;

use super::bson::{documents_to_batch, to_bson};

/// A view's collection as a DataFusion table: projection and simple comparisons
/// (`column op literal`) are pushed into the MongoDB query.
#[derive(Debug)]
pub struct MongoTable {
    database: Database,
    collection: String,
    schema: SchemaRef,
    constraints: Constraints,
}

impl MongoTable {
    /// The collection `collection` read with the schema and key of `view`.
    pub fn new(database: Database, collection: String, view: &ViewInfo) -> Self {
        let constraints = Constraints::new_unverified(vec![Constraint::PrimaryKey(view.key.clone())]);
        Self { database, collection, schema: view.schema.clone(), constraints }
    }
}

/// The MongoDB filter for `expr`, when it is a comparison of a column with a literal.
fn mongo_filter(expr: &Expr) -> Option<Document> {
    let Expr::BinaryExpr(BinaryExpr { left, op, right }) = expr else { return None };
    let (column, value, op) = match (left.as_ref(), right.as_ref()) {
        (Expr::Column(c), Expr::Literal(v, _)) => (c, v, *op),
        (Expr::Literal(v, _), Expr::Column(c)) => (c, v, op.swap()?),
        _ => return None,
    };
    let operator = match op {
        Operator::Eq => "$eq",
        Operator::NotEq => "$ne",
        Operator::Lt => "$lt",
        Operator::LtEq => "$lte",
        Operator::Gt => "$gt",
        Operator::GtEq => "$gte",
        _ => return None,
    };
    if matches!(value, ScalarValue::Null) || value.is_null() {
        return None;
    }
    let array = value.to_array().ok()?;
    let value = to_bson(array.as_ref(), 0).ok()?;
    Some(doc! {column.name.clone(): {operator: value}})
}

#[async_trait]
impl TableProvider for MongoTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn constraints(&self) -> Option<&Constraints> {
        Some(&self.constraints)
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> datafusion::error::Result<Vec<TableProviderFilterPushDown>> {
        // Inexact: DataFusion re-applies the filter, so BSON and SQL comparison rules never disagree silently.
        Ok(filters
            .iter()
            .map(|f| if mongo_filter(f).is_some() { TableProviderFilterPushDown::Inexact } else { TableProviderFilterPushDown::Unsupported })
            .collect())
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let filter: Document = filters.iter().filter_map(mongo_filter).flatten().collect();
        let fields: Document = match projection {
            // No column at all (COUNT(*)): fetch only the ids.
            Some(columns) if columns.is_empty() => doc! {"_id": 1},
            Some(columns) => columns.iter().map(|&c| (self.schema.field(c).name().clone(), Bson::Int32(1))).collect(),
            None => Document::new(),
        };
        let external = |e: MongoError| datafusion::error::DataFusionError::External(Box::new(e));
        let collection = self.database.collection::<Document>(&self.collection);
        let mut find = collection.find(filter);
        if !fields.is_empty() {
            find = find.projection(fields);
        }
        let documents: Vec<Document> = find.await.map_err(external)?.try_collect().await.map_err(external)?;
        // Only the projected columns were fetched: build just those, so a non-nullable
        // column left out of the projection is not filled with nulls.
        let schema = match projection {
            Some(columns) => Arc::new(self.schema.project(columns)?),
            None => self.schema.clone(),
        };
        let batch = documents_to_batch(&schema, &documents)?;
        MemTable::try_new(schema, vec![vec![batch]])?.scan(state, None, &[], limit).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::{col, lit};

    #[test]
    fn comparisons_with_literals_are_pushed_down() {
        assert_eq!(mongo_filter(&col("category_id").eq(lit(4i32))), Some(doc! {"category_id": {"$eq": 4}}));
        assert_eq!(mongo_filter(&lit(10.0).lt(col("price"))), Some(doc! {"price": {"$gt": 10.0}}));
        assert_eq!(mongo_filter(&col("a").eq(col("b"))), None);
    }
}
