//! The payload schema of the shipped `products` stream (sql/01_sources.sql).

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

pub fn schema() -> SchemaRef {
    let field = |name: &str, data_type: DataType| Field::new(name, data_type, name != "asin");
    Arc::new(Schema::new(vec![
        field("asin", DataType::Utf8),
        field("title", DataType::Utf8),
        field("imgUrl", DataType::Utf8),
        field("productURL", DataType::Utf8),
        field("stars", DataType::Float64),
        field("reviews", DataType::Int64),
        field("price", DataType::Float64),
        field("listPrice", DataType::Float64),
        field("category_id", DataType::Int32),
        field("isBestSeller", DataType::Boolean),
        field("boughtInLastMonth", DataType::Int64),
    ]))
}
