"""The Streamlit dashboard, run by Streamlit's own testing API against a running job:
every chart's data (shown beside it as a table) equals the view it charts."""

from streamlit.testing.v1 import AppTest

from conftest import GENERATED_CATEGORIES, REPO, ROWS, comparable, free_port

APP = str(REPO / "dashboard" / "app.py")


def dashboard(monkeypatch, uri, status_url):
    monkeypatch.setenv("TRENDFLOW_FLIGHT_URI", uri)
    monkeypatch.setenv("TRENDFLOW_STATUS_URL", status_url)
    monkeypatch.setenv("TRENDFLOW_REFRESH_S", "0")
    return AppTest.from_file(APP, default_timeout=60).run()


def rows(frame):
    """A DataFrame's rows as tuples of comparable values."""
    return [tuple(comparable(v) for v in row) for row in frame.itertuples(index=False)]


def test_every_chart_shows_its_view(job, monkeypatch):
    at = dashboard(monkeypatch, job.uri, job.status_url)
    assert not at.exception and not at.error, (at.exception, at.error)
    frames = [d.value for d in at.dataframe]
    expected = [
        job.query("SELECT price_level, products, avg_price, min_price, max_price FROM price_levels ORDER BY min_price"),
        job.query("SELECT category_id, category_name, products, share, best_sellers FROM category_distribution "
                  "ORDER BY products DESC, category_id LIMIT 15"),
        job.query("SELECT category_id, category_name, products, avg_price, min_price, max_price FROM avg_price_by_category "
                  "ORDER BY category_id"),
        job.query("SELECT window_start, category_id, products, avg_price FROM category_trend ORDER BY window_start, category_id"),
        # The dashboard names the categories from the live categories stream; compared without them.
        job.query("SELECT window_start, window_end, rank, category_id, products FROM trending_now "
                  "WHERE window_end = (SELECT MAX(window_end) FROM trending_now) ORDER BY rank"),
        job.query("SELECT category_id, category_name, bought_last_month FROM top_categories_by_demand "
                  "ORDER BY bought_last_month DESC, category_id"),
    ]
    assert len(frames) == len(expected)
    assert len(expected[4]) == 10, "an hour of event time has closed, with ten categories ranked"
    assert frames[4]["category_name"].notna().all(), "every trending category is named"
    frames[4] = frames[4].drop(columns=["category_name"])
    for frame, want in zip(frames, expected):
        assert list(frame.columns) == list(want[0].keys())
        assert rows(frame) == [tuple(comparable(v) for v in r.values()) for r in want]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Records processed"] == f"{ROWS + GENERATED_CATEGORIES:,}" and metrics["Dead letters"] == "0"
    assert metrics["Consumer lag"] == "n/a", "a file source has no consumer lag"
    assert metrics["Throughput"].endswith("rec/s")


def test_product_lookup_reads_the_stream(job, monkeypatch):
    at = dashboard(monkeypatch, job.uri, job.status_url)
    at.text_input(key="lookup").input("26").run()
    found = at.dataframe[-1].value
    assert len(found) > 0 and set(found["category_id"]) == {26}


def test_unreachable_server_gives_a_message_not_a_traceback(monkeypatch):
    port = free_port()
    at = dashboard(monkeypatch, f"grpc://127.0.0.1:{port}", f"http://127.0.0.1:{port}")
    assert not at.exception
    assert any("Cannot read the views" in e.value for e in at.error)
