//! Restarts: a job that dies mid-stream resumes from its checkpoint and ends with
//! exactly the batch result, also when the sink got ahead of the checkpoint.

use trendflow_connectors::store::EmbeddedStore;
use trendflow_engine::catalog::Catalog;
use trendflow_engine::contract::{Poll, Sink, Source};
use trendflow_engine::runtime::Pipeline;
use trendflow_engine::session::incremental_session_config;

use crate::support::*;

struct Fixture {
    tmp: tempfile::TempDir,
    bindings: trendflow_connectors::binding::Bindings,
}

impl Fixture {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        trendflow_datagen::generate(&trendflow_datagen::GenOptions { rows: 20_000, seed: 3, days: 0, out: tmp.path().into() }).unwrap();
        let timed = with_timestamps(&tmp.path().join("products.csv"), tmp.path(), 30);
        let bindings = bindings(&timed, &tmp.path().join("categories.csv"));
        Self { tmp, bindings }
    }

    async fn data(&self) -> datafusion::arrow::array::RecordBatch {
        let catalog = Catalog::load(&[shipped_sql()], incremental_session_config(), &self.bindings.files()).await.unwrap();
        decode_all(&catalog, &self.bindings, &self.tmp.path().join("dl")).await
    }

    fn state(&self) -> std::path::PathBuf {
        self.tmp.path().join("state")
    }
}

#[tokio::test]
async fn crashed_job_resumes_from_checkpoint_with_exact_results() {
    let fx = Fixture::new();
    let data = fx.data().await;
    for crash_after in [3, 7, 12] {
        let source = SplitSource::new("products", data.clone(), 21, 1_500).failing_after(crash_after);
        let error = run_streaming(&shipped_sql(), &fx.bindings, source, &fx.state()).await.unwrap_err();
        assert!(error.to_string().contains("injected crash"), "{error}");
    }
    let resumed = run_streaming(&shipped_sql(), &fx.bindings, SplitSource::new("products", data, 21, 1_500), &fx.state()).await.unwrap();
    let expected = run_batch(&shipped_sql(), &fx.bindings, &fx.tmp.path().join("dl-b")).await;
    assert_same_views(&resumed, &expected);
}

#[tokio::test]
async fn replay_after_sink_got_ahead_of_checkpoint_converges() {
    let fx = Fixture::new();
    let data = fx.data().await;
    {
        let catalog = Catalog::load(&[shipped_sql()], incremental_session_config(), &fx.bindings.files()).await.unwrap();
        let mut pipeline = Pipeline::compile(catalog, fx.state()).await.unwrap();
        let mut store = EmbeddedStore::new(fx.state().join("store"));
        store.open(&pipeline.view_infos()).await.unwrap();
        let mut source = SplitSource::new("products", data.clone(), 5, 2_000);
        for step in 0..6 {
            let Poll::Batch(micro) = source.poll(0, Default::default()).await.unwrap() else { panic!("data left") };
            pipeline.step(vec![("products".into(), micro)], &mut store).await.unwrap();
            if step == 2 {
                pipeline.checkpoint(&mut store).await.unwrap();
            }
        }
        // The sink made steps 4-6 durable, the checkpoint did not: a crash now means replay.
        store.flush(&Default::default()).await.unwrap();
    }
    let resumed = run_streaming(&shipped_sql(), &fx.bindings, SplitSource::new("products", data, 5, 2_000), &fx.state()).await.unwrap();
    let expected = run_batch(&shipped_sql(), &fx.bindings, &fx.tmp.path().join("dl-b")).await;
    assert_same_views(&resumed, &expected);
}
