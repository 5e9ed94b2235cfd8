//! MongoDB: the idempotent upsert sink for views ([`MongoSink`]), a view's collection
//! as a DataFusion table ([`MongoTable`]), the connection settings they share
//! ([`MongoOptions`], [`connect`]), and the Arrow ⇄ BSON conversion of view rows ([`bson`]).

pub mod bson;
mod sink;
mod table;

use std::collections::HashMap;
use std::time::Duration;

use mongodb::bson::doc;
use mongodb::{Client, Database};
use trendflow_engine::EngineError;

pub use sink::{MongoSink, FERRETDB_1_UPDATES_PER_COMMAND, META_COLLECTION, STATEMENTS_PER_COMMAND};
pub use table::MongoTable;

use crate::error::redact;

/// Where and how to write.
#[derive(Debug, Clone)]
pub struct MongoOptions {
    /// Connection string, e.g. `mongodb://127.0.0.1:27017`.
    pub uri: String,
    /// Database of the view collections.
    pub database: String,
    /// Write concern `w`: `majority` or a number of nodes.
    pub write_concern: String,
    /// View name → collection name, where it differs.
    pub collections: HashMap<String, String>,
    /// View name → secondary indexes, each a list of columns (ascending).
    pub indexes: HashMap<String, Vec<Vec<String>>>,
    /// How long transient errors are retried before the job stops.
    pub retry_for: Duration,
}

impl Default for MongoOptions {
    fn default() -> Self {
        Self {
            uri: "mongodb://127.0.0.1:27017".into(),
            database: "trendflow".into(),
            write_concern: "majority".into(),
            collections: HashMap::new(),
            indexes: HashMap::new(),
            retry_for: Duration::from_secs(600),
        }
    }
}

impl MongoOptions {
    /// The collection a view is kept in.
    pub fn collection_of(&self, view: &str) -> String {
        self.collections.get(view).cloned().unwrap_or_else(|| view.to_string())
    }
}

/// Connects to MongoDB; fails fast with the URI's host when nothing answers.
pub async fn connect(options: &MongoOptions) -> Result<Database, EngineError> {
    let client = Client::with_uri_str(&options.uri).await.map_err(|cause| mongo_error(format!("MongoDB URI `{}`", redact(&options.uri)), cause))?;
    let database = client.database(&options.database);
    database
        .run_command(doc! {"ping": 1})
        .await
        .map_err(|cause| mongo_error(format!("MongoDB at `{}` does not answer", redact(&options.uri)), cause))?;
    Ok(database)
}

/// A sink error keeping the MongoDB driver's error as its cause.
fn mongo_error(context: String, cause: mongodb::error::Error) -> EngineError {
    EngineError::Sink(Box::new(crate::ConnectorError::Mongo { context, cause }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact("mongodb://ann:secret@db:27017/x"), "mongodb://ann:***@db:27017/x");
        assert_eq!(redact("mongodb://db:27017"), "mongodb://db:27017");
    }
}
