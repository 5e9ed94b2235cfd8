//! The embedded result store: each view's current rows, kept in memory and
//! persisted as one Arrow IPC file per view under the state directory.
//!
//! It is the default sink when no external database is configured, and what
//! `trendflow query` reads.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::path::{Path, PathBuf};

use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::ipc::reader::FileReader;
use datafusion::arrow::ipc::writer::FileWriter;
use datafusion::catalog::TableProvider;
use datafusion::common::{Constraint, Constraints};
use datafusion::datasource::TableType;
use datafusion::error::DataFusionError;
use trendflow_engine::contract::{Changeset, CheckpointMeta, Sink, ViewInfo};
use trendflow_engine::keyed::KeyedTable;
use trendflow_engine::snapshot::SnapshotTable;
use trendflow_engine::EngineError;

use crate::error::{ConnectorError, Result};

/// Current rows of every view, keyed by the view key.
///
/// ```
/// # async fn example() -> trendflow_engine::Result<()> {
/// use trendflow_connectors::store::EmbeddedStore;
/// let store = EmbeddedStore::new("trendflow-state/store".into());
/// let rows = EmbeddedStore::read_view(store.dir(), "price_levels").unwrap();
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct EmbeddedStore {
    dir: PathBuf,
    tables: SharedTables,
    dirty: BTreeSet<String>,
}

/// View name → rows; shared with the tables that serve the views while the job runs.
type SharedTables = Arc<RwLock<BTreeMap<String, KeyedTable>>>;

impl EmbeddedStore {
    /// A store persisting into `dir`.
    pub fn new(dir: PathBuf) -> Self {
        Self { dir, tables: SharedTables::default(), dirty: BTreeSet::new() }
    }

    /// Where the view files live.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The current rows of `view`, if the store holds it.
    pub fn rows(&self, view: &str) -> Option<Result<RecordBatch>> {
        self.tables.read().expect("store lock poisoned").get(view).map(|t| t.to_batch().map_err(Into::into))
    }

    /// A function reading the number of rows of every view, usable while the store
    /// is being written (for the status endpoint).
    pub fn view_sizes(&self) -> impl Fn() -> BTreeMap<String, usize> + Send + Sync + 'static {
        let tables = self.tables.clone();
        move || tables.read().expect("store lock poisoned").iter().map(|(name, table)| (name.clone(), table.len())).collect()
    }

    /// A table serving `view`'s current rows as this store updates them.
    pub fn live_table(&self, view: &ViewInfo) -> Arc<dyn TableProvider> {
        Arc::new(view_table(view, ViewRows::Live(self.tables.clone())))
    }

    /// A table serving `view`'s rows as last persisted in a store directory, re-read on
    /// every query (for serving a job that runs in another process).
    pub fn persisted_table(dir: &Path, view: &ViewInfo) -> Arc<dyn TableProvider> {
        Arc::new(view_table(view, ViewRows::Persisted(dir.to_path_buf())))
    }

    /// Reads a view's persisted rows from a store directory (`None` if never written).
    pub fn read_view(dir: &Path, view: &str) -> Result<Option<RecordBatch>> {
        let path = view_file(dir, view);
        if !path.exists() {
            return Ok(None);
        }
        let file = File::open(&path).map_err(|e| ConnectorError::io(&path, e))?;
        let reader = FileReader::try_new(file, None).map_err(|e| ConnectorError::Format { path: path.clone(), message: e.to_string() })?;
        let schema = reader.schema();
        let batches = reader.collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(Some(datafusion::arrow::compute::concat_batches(&schema, &batches)?))
    }

    fn write_view(&self, view: &str) -> Result<()> {
        let batch = self.tables.read().expect("store lock poisoned")[view].to_batch()?;
        let path = view_file(&self.dir, view);
        let tmp = path.with_extension("arrow.tmp");
        let file = File::create(&tmp).map_err(|e| ConnectorError::io(&tmp, e))?;
        let mut writer = FileWriter::try_new(file, &batch.schema())?;
        writer.write(&batch)?;
        writer.finish()?;
        writer.get_ref().sync_all().map_err(|e| ConnectorError::io(&tmp, e))?;
        fs::rename(&tmp, &path).map_err(|e| ConnectorError::io(&path, e))
    }
}

fn view_file(dir: &Path, view: &str) -> PathBuf {
    dir.join(format!("{view}.arrow"))
}

fn sink_error(e: ConnectorError) -> EngineError {
    EngineError::Sink(Box::new(ConnectorError::Store(Box::new(e))))
}

#[async_trait]
impl Sink for EmbeddedStore {
    async fn open(&mut self, views: &[ViewInfo]) -> trendflow_engine::Result<()> {
        fs::create_dir_all(&self.dir).map_err(|e| sink_error(ConnectorError::io(&self.dir, e)))?;
        for view in views {
            let mut table = KeyedTable::new(view.schema.clone(), view.key.clone())?;
            if let Some(rows) = Self::read_view(&self.dir, &view.name).map_err(sink_error)? {
                let rows = RecordBatch::try_new(view.schema.clone(), rows.columns().to_vec()).map_err(|e| {
                    EngineError::Sink(
                        format!(
                            "embedded store: {} holds rows of another shape than view `{}` now has ({e}); \
                         start from a fresh --state directory",
                            self.dir.display(),
                            view.name
                        )
                        .into(),
                    )
                })?;
                table.upsert(&rows)?;
            }
            self.tables.write().expect("store lock poisoned").insert(view.name.clone(), table);
        }
        Ok(())
    }

    async fn apply(&mut self, view: &ViewInfo, changes: &Changeset) -> trendflow_engine::Result<()> {
        let mut tables = self.tables.write().expect("store lock poisoned");
        let table = tables.get_mut(&view.name).ok_or_else(|| EngineError::Sink(format!("view `{}` was not opened", view.name).into()))?;
        table.remove(&changes.deletes)?;
        table.upsert(&changes.upserts)?;
        drop(tables);
        self.dirty.insert(view.name.clone());
        Ok(())
    }

    async fn flush(&mut self, _meta: &CheckpointMeta) -> trendflow_engine::Result<()> {
        for view in std::mem::take(&mut self.dirty) {
            self.write_view(&view).map_err(sink_error)?;
        }
        // The renames must be durable before the checkpoint that relies on them.
        File::open(&self.dir).and_then(|d| d.sync_all()).map_err(|e| sink_error(ConnectorError::io(&self.dir, e)))
    }

    async fn reset(&mut self, view: &ViewInfo, rows: &RecordBatch) -> trendflow_engine::Result<()> {
        let mut table = KeyedTable::new(view.schema.clone(), view.key.clone())?;
        table.upsert(rows)?;
        self.tables.write().expect("store lock poisoned").insert(view.name.clone(), table);
        self.dirty.insert(view.name.clone());
        Ok(())
    }
}

/// Where a served view's rows come from.
enum ViewRows {
    /// The running job's store.
    Live(SharedTables),
    /// Files persisted by a job in another process.
    Persisted(PathBuf),
}

/// A view's current rows as a DataFusion table, keyed by the view key.
fn view_table(view: &ViewInfo, source: ViewRows) -> SnapshotTable {
    let constraints = Constraints::new_unverified(vec![Constraint::PrimaryKey(view.key.clone())]);
    let (name, schema) = (view.name.clone(), view.schema.clone());
    let rows = move || {
        let rows = match &source {
            ViewRows::Live(tables) => tables.read().expect("store lock poisoned").get(&name).map(|t| t.to_batch()).transpose()?,
            ViewRows::Persisted(dir) => EmbeddedStore::read_view(dir, &name).map_err(|e| DataFusionError::External(Box::new(e)))?,
        };
        rows.into_iter()
            .map(|b| {
                RecordBatch::try_new(schema.clone(), b.columns().to_vec())
                    .map_err(|e| DataFusionError::Execution(format!("stored rows of view `{name}` do not match its schema: {e}")))
            })
            .collect()
    };
    SnapshotTable::new(view.schema.clone(), TableType::View, Some(constraints), rows)
}
