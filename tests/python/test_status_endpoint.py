"""The job's HTTP status endpoint, read the way Prometheus and a dashboard read it."""

import json
import re
import urllib.request

from conftest import ROWS


def get(job, path):
    with urllib.request.urlopen(job.status_url + path, timeout=10) as response:
        return response.status, response.headers.get("content-type", ""), response.read().decode()


def test_health_and_readiness(job):
    assert get(job, "/healthz")[0] == 200
    assert get(job, "/readyz")[:1] == (200,)


def test_metrics_count_every_record_and_view_row(job):
    status, content_type, text = get(job, "/metrics")
    assert status == 200 and content_type.startswith("text/plain")
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    assert samples['trendflow_records_total{stream="products"}'] == ROWS
    assert samples['trendflow_dead_letters_total{stream="products"}'] == 0
    assert samples["trendflow_ready"] == 1
    assert samples["trendflow_records_per_second"] >= 0
    assert samples["trendflow_micro_batch_seconds_count"] == samples["trendflow_micro_batches_total"] >= ROWS / 4000
    assert samples['trendflow_micro_batch_seconds_bucket{le="+Inf"}'] == samples["trendflow_micro_batch_seconds_count"]
    assert 0 <= samples["trendflow_checkpoint_age_seconds"] < 600
    stages = {stage: samples[f'trendflow_stage_seconds_total{{stage="{stage}"}}'] for stage in ["poll", "prepare", "views", "sink", "checkpoint"]}
    assert stages["views"] > 0 and stages["poll"] > 0 and stages["checkpoint"] > 0, stages
    # The stages of a micro-batch lie within its wall time (poll and checkpoint lie outside it).
    assert stages["prepare"] + stages["views"] + stages["sink"] <= samples["trendflow_micro_batch_seconds_sum"] + 1e-3, stages
    categories = job.query("SELECT COUNT(*) AS n FROM category_distribution")[0]["n"]
    assert samples['trendflow_view_rows{view="category_distribution"}'] == categories
    assert all(re.fullmatch(r"[a-z_]+(\{.*\})? \S+", line) for line in text.splitlines() if not line.startswith("#"))


def test_status_json_matches_the_views(job):
    status, content_type, body = get(job, "/status")
    assert status == 200 and content_type == "application/json"
    report = json.loads(body)
    assert report["ready"] is True
    assert report["streams"]["products"]["records"] == ROWS
    for view in ["price_levels", "category_distribution", "avg_price_by_category", "top_categories_by_demand", "category_trend", "trending_now"]:
        rows = job.query(f"SELECT COUNT(*) AS n FROM {view}")[0]["n"]
        assert report["views"][view]["rows"] == rows, view
        assert report["views"][view]["updated_at_ms"] > 0
