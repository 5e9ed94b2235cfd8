//! `trendflow batch`: computes every view once over whole inputs (a backfill) and
//! stores the results where `query` and `serve` read them.

use std::path::Path;

use anyhow::{bail, Context, Result};
use datafusion::arrow::record_batch::RecordBatch;
use trendflow_connectors::store::EmbeddedStore;
use trendflow_engine::batch::{compute_views, ViewResult};
use trendflow_engine::session::batch_session_config;

use trendflow_engine::contract::{Changeset, CheckpointMeta, Sink, ViewInfo};

use super::args::PipelineArgs;
use super::common::{load_catalog, print_views, resolve_bindings};

/// The flags of `trendflow batch` (its help text is the doc comment of `Command::Batch`).
#[derive(clap::Args)]
pub struct BatchArgs {
    #[command(flatten)]
    pipeline: PipelineArgs,
}

pub async fn batch(args: BatchArgs) -> Result<()> {
    let BatchArgs { pipeline } = args;
    let bindings = resolve_bindings(&pipeline)?;
    if bindings.is_empty() && pipeline.kafka_brokers.is_none() {
        bail!("batch needs inputs: pass --source NAME=file:PATH for every stream, or --kafka-brokers to read the topics");
    }
    let catalog = load_catalog(&pipeline, &bindings, batch_session_config()).await?;
    let (streams, rejected) = bindings.read_streams(&catalog, &pipeline.source_settings(true)).await?;
    bindings.save(&pipeline.state)?;
    let store_dir = pipeline.state.join("store");
    clear_stale_state(&store_dir, &pipeline.state.join("checkpoints"))?;
    let started = std::time::Instant::now();
    let views = compute_views(&catalog, streams).await?;
    tracing::info!("computed {} views in {:.2} s", views.len(), started.elapsed().as_secs_f64());
    let store = store_results(EmbeddedStore::new(store_dir), &views).await?;
    let infos: Vec<ViewInfo> = views.into_iter().map(|view| view.info).collect();
    println!("batch: computed {} views, {rejected} records rejected", infos.len());
    print_views(&infos, |name| Ok(store.rows(name).transpose()?))
}

/// The batch result replaces the store; a later `run` must not resume a stale checkpoint on top of it.
fn clear_stale_state(store_dir: &Path, checkpoints: &Path) -> Result<()> {
    for stale in [store_dir, checkpoints] {
        if stale.exists() {
            std::fs::remove_dir_all(stale).with_context(|| format!("clearing {}", stale.display()))?;
        }
    }
    Ok(())
}

/// Writes every view's rows into `store` (as upserts, so a key keeps its last row).
async fn store_results(mut store: EmbeddedStore, views: &[ViewResult]) -> Result<EmbeddedStore> {
    let infos: Vec<ViewInfo> = views.iter().map(|view| view.info.clone()).collect();
    store.open(&infos).await?;
    for view in views {
        let deletes = RecordBatch::new_empty(view.info.key_schema());
        store.apply(&view.info, &Changeset { upserts: view.rows.clone(), deletes }).await?;
    }
    store.flush(&CheckpointMeta::default()).await?;
    Ok(store)
}
