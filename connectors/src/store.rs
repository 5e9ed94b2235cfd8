//! The embedded result store: each view's current rows, kept in memory and
//! persisted as one Arrow IPC file per view under the state directory.
//!
//! It is the default sink when no external database is configured, and what
//! `trendflow query` reads.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::path::{Path, PathBuf};

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::datasource::MemTable;
use trendflow_engine::catalog::Catalog;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::ipc::reader::FileReader;
use datafusion::arrow::ipc::writer::FileWriter;
use trendflow_engine::checkpoint::CheckpointMeta;
use trendflow_engine::keyed::KeyedTable;
use trendflow_engine::runtime::Sink;
use trendflow_engine::view::{Changeset, ViewInfo};
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
    tables: BTreeMap<String, KeyedTable>,
    dirty: BTreeSet<String>,
}

impl EmbeddedStore {
    /// A store persisting into `dir`.
    pub fn new(dir: PathBuf) -> Self {
        Self { dir, tables: BTreeMap::new(), dirty: BTreeSet::new() }
    }

    /// Where the view files live.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The current rows of `view`, if the store holds it.
    pub fn rows(&self, view: &str) -> Option<Result<RecordBatch>> {
        self.tables.get(view).map(|t| t.to_batch().map_err(Into::into))
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

    /// Makes `trendflow query` see stored results: every view of `catalog` is replaced,
    /// in its session, by a table of the rows persisted in `dir` (empty if none yet).
    pub async fn register_stored_views(dir: &Path, catalog: &Catalog) -> trendflow_engine::Result<()> {
        let ctx = catalog.session();
        for view in catalog.views() {
            let schema = Arc::new(ctx.table(view.name.as_str()).await?.schema().as_arrow().clone());
            let rows = Self::read_view(dir, &view.name).map_err(sink_error)?;
            let batches = rows.into_iter().map(|b| RecordBatch::try_new(schema.clone(), b.columns().to_vec())).collect::<std::result::Result<Vec<_>, _>>()?;
            ctx.deregister_table(view.name.as_str())?;
            ctx.register_table(view.name.as_str(), Arc::new(MemTable::try_new(schema, vec![batches])?))?;
        }
        Ok(())
    }

    fn write_view(&self, view: &str) -> Result<()> {
        let batch = self.tables[view].to_batch()?;
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
    EngineError::Sink(format!("embedded store: {e}"))
}

#[async_trait]
impl Sink for EmbeddedStore {
    async fn open(&mut self, views: &[ViewInfo]) -> trendflow_engine::Result<()> {
        fs::create_dir_all(&self.dir).map_err(|e| sink_error(ConnectorError::io(&self.dir, e)))?;
        for view in views {
            let mut table = KeyedTable::new(view.schema.clone(), view.key.clone())?;
            if let Some(rows) = Self::read_view(&self.dir, &view.name).map_err(sink_error)? {
                if rows.schema().fields() == view.schema.fields() {
                    table.upsert(&rows)?;
                } else {
                    tracing::warn!(view = %view.name, "stored rows have another schema; the view is rebuilt");
                }
            }
            self.tables.insert(view.name.clone(), table);
        }
        Ok(())
    }

    async fn apply(&mut self, view: &ViewInfo, changes: &Changeset) -> trendflow_engine::Result<()> {
        let table = self.tables.get_mut(&view.name).ok_or_else(|| EngineError::Sink(format!("view `{}` was not opened", view.name)))?;
        table.remove(&changes.deletes)?;
        table.upsert(&changes.upserts)?;
        self.dirty.insert(view.name.clone());
        Ok(())
    }

    async fn flush(&mut self, _meta: &CheckpointMeta) -> trendflow_engine::Result<()> {
        for view in std::mem::take(&mut self.dirty) {
            self.write_view(&view).map_err(sink_error)?;
        }
        Ok(())
    }
}
