//! For every shipped view, streaming the data in random micro-batch splits gives
//! the batch result over the same data, on the real sample and on generated data.

use crate::support::*;

async fn check(products: &std::path::Path, categories: &std::path::Path, seeds: &[u64], max_split: usize) {
    let tmp = tempfile::tempdir().unwrap();
    let timed = with_timestamps(products, tmp.path(), 20);
    let bindings = bindings(&timed, categories);
    let expected = run_batch(&shipped_sql(), &bindings, &tmp.path().join("dl-batch")).await;
    assert!(expected.values().all(|b| b.num_rows() > 0), "every shipped view has rows in batch");
    for &seed in seeds {
        let state = tmp.path().join(format!("state-{seed}"));
        let catalog =
            trendflow_engine::catalog::Catalog::load(&[shipped_sql()], trendflow_engine::session::incremental_session_config(), &bindings.files())
                .await
                .unwrap();
        let data = decode_all(&catalog, &bindings, &state.join("dl")).await;
        let source = SplitSource::new("products", data, seed, max_split);
        let streamed = run_streaming(&shipped_sql(), &bindings, source, &state).await.unwrap();
        assert_same_views(&streamed, &expected);
    }
}

#[tokio::test]
async fn shipped_views_on_real_sample_stream_like_batch() {
    let products = shared_data("amazon_products_sample.csv");
    let categories = shared_data("amazon_categories.csv");
    check(&products, &categories, &[1, 2, 3], 700).await;
}

#[tokio::test]
async fn shipped_views_on_generated_data_stream_like_batch() {
    let tmp = tempfile::tempdir().unwrap();
    trendflow_datagen::generate(&trendflow_datagen::GenOptions { rows: 30_000, seed: 5, days: 0, out: tmp.path().into() }).unwrap();
    check(&tmp.path().join("products.csv"), &tmp.path().join("categories.csv"), &[11, 12], 4_000).await;
}
