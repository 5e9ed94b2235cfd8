"""trendflow dashboard: the trend views of a running job, read through Flight SQL.

    streamlit run dashboard/app.py

Settings come from the environment (TRENDFLOW_FLIGHT_URI, TRENDFLOW_FLIGHT_TOKEN,
TRENDFLOW_STATUS_URL) and can be changed in the sidebar.
"""

import json
import os
import time
import urllib.request

import adbc_driver_flightsql
import adbc_driver_flightsql.dbapi as flightsql
import altair as alt
import streamlit as st

st.set_page_config(page_title="trendflow", layout="wide")


def settings():
    """Connection settings: environment defaults, overridable in the sidebar."""
    side = st.sidebar
    side.header("Connection")
    uri = side.text_input("Flight SQL URI", os.environ.get("TRENDFLOW_FLIGHT_URI", "grpc://127.0.0.1:50051"))
    token = side.text_input("Bearer token", os.environ.get("TRENDFLOW_FLIGHT_TOKEN", ""), type="password")
    status_url = side.text_input("Status endpoint", os.environ.get("TRENDFLOW_STATUS_URL", "http://127.0.0.1:8080"))
    refresh = side.slider("Refresh every (s)", 0, 60, int(os.environ.get("TRENDFLOW_REFRESH_S", "5")),
                          help="0 turns live refresh off")
    top_n = side.slider("Categories shown", 5, 50, 15)
    return uri, token, status_url, refresh, top_n


def query(uri, token, sql, parameters=None):
    """Runs one query over Flight SQL (ADBC) and returns a DataFrame."""
    kwargs = {}
    if token:
        kwargs["db_kwargs"] = {adbc_driver_flightsql.DatabaseOptions.AUTHORIZATION_HEADER.value: f"Bearer {token}"}
    if uri.startswith("grpc+tls://") and os.environ.get("TRENDFLOW_TLS_SKIP_VERIFY") == "1":
        kwargs.setdefault("db_kwargs", {})[adbc_driver_flightsql.DatabaseOptions.TLS_SKIP_VERIFY.value] = "true"
    with flightsql.connect(uri, autocommit=True, **kwargs) as conn, conn.cursor() as cur:
        cur.execute(sql, parameters=parameters)
        return cur.fetch_df()


def job_status(status_url):
    """The job's /status JSON, or None when the endpoint does not answer."""
    try:
        with urllib.request.urlopen(status_url.rstrip("/") + "/status", timeout=3) as response:
            return json.load(response)
    except OSError:
        return None


VIEWS = {
    "price_levels": "SELECT price_level, products, avg_price, min_price, max_price FROM price_levels ORDER BY min_price",
    "category_distribution": "SELECT category_id, category_name, products, share, best_sellers FROM category_distribution "
                             "ORDER BY products DESC, category_id",
    "avg_price_by_category": "SELECT category_id, category_name, products, avg_price, min_price, max_price "
                             "FROM avg_price_by_category ORDER BY category_id",
    "category_trend": "SELECT window_start, category_id, products, avg_price FROM category_trend "
                      "ORDER BY window_start, category_id",
    "top_categories_by_demand": "SELECT category_id, category_name, bought_last_month FROM top_categories_by_demand "
                                "ORDER BY bought_last_month DESC, category_id",
    # The latest closed hour of event time (windows slide every 5 minutes).
    "trending_now": "SELECT t.window_start, t.window_end, t.rank, t.category_id, c.category_name, t.products "
                    "FROM trending_now t LEFT JOIN streams.categories c ON t.category_id = c.id "
                    "WHERE t.window_end = (SELECT MAX(window_end) FROM trending_now) ORDER BY t.rank",
}


def last_updated(status, view):
    updated = ((status or {}).get("views", {}).get(view) or {}).get("updated_at_ms")
    return time.strftime("%H:%M:%S", time.localtime(updated / 1000)) if updated else "unknown"


def render(uri, token, status_url, top_n):
    try:
        data = {name: query(uri, token, sql) for name, sql in VIEWS.items()}
    except Exception as error:  # the driver raises many types; the user needs the message
        st.error(f"Cannot read the views from the Flight SQL server at {uri}: {error}")
        st.info("Is `trendflow run` (or `trendflow serve`) running there? Check the sidebar settings.")
        return
    status = job_status(status_url)
    if status:
        batch_seconds = status["latency_sum_seconds"] / max(status["latency_count"], 1)
        streams = status["streams"].values()
        lags = [s["lag"] for s in streams if s.get("lag") is not None]
        cols = st.columns(6)
        cols[0].metric("Records processed", f"{sum(s['records'] for s in streams):,}")
        cols[1].metric("Throughput", f"{status['records_per_second']:,.0f} rec/s", help="over the last 10 s")
        cols[2].metric("Consumer lag", f"{sum(lags):,}" if lags else "n/a", help="records waiting in Kafka")
        cols[3].metric("Dead letters", f"{sum(s['dead_letters'] for s in streams):,}")
        cols[4].metric("Mean micro-batch", f"{batch_seconds * 1000:.0f} ms")
        age = status.get("checkpoint_age_seconds")
        cols[5].metric("Checkpoint age", f"{age:.0f} s" if age is not None else "none yet")
    else:
        st.warning(f"The job's status endpoint at {status_url} does not answer; showing the views only.")

    left, right = st.columns(2)
    with left:
        st.subheader("Price levels")
        st.caption(f"updated {last_updated(status, 'price_levels')}")
        st.bar_chart(data["price_levels"], x="price_level", y="products", sort=False)
        st.dataframe(data["price_levels"], hide_index=True, key="price_levels")
    with right:
        st.subheader(f"Category distribution (top {top_n})")
        st.caption(f"updated {last_updated(status, 'category_distribution')}")
        top = data["category_distribution"].head(top_n)
        st.bar_chart(top, x="category_name", y="share", horizontal=True, sort=False)
        st.dataframe(top, hide_index=True, key="category_distribution")

    st.subheader("Average price per category")
    st.caption(f"updated {last_updated(status, 'avg_price_by_category')} · click a column to sort")
    st.dataframe(data["avg_price_by_category"], hide_index=True, key="avg_price_by_category")

    left, right = st.columns(2)
    with left:
        st.subheader("Products per day, top categories")
        st.caption(f"updated {last_updated(status, 'category_trend')} · days of the records' own time")
        trend = data["category_trend"]
        leaders = data["category_distribution"].head(5)["category_id"]
        shown = trend[trend["category_id"].isin(leaders)]
        if shown.empty:
            st.info("No trend data yet.")
        else:
            # Points as well as lines: a stream younger than a day has one window per category.
            chart = alt.Chart(shown).mark_line(point=True).encode(
                x=alt.X("window_start:T", title="day"), y=alt.Y("products:Q"), color=alt.Color("category_id:N", title="category"))
            st.altair_chart(chart, use_container_width=True)
        st.dataframe(trend, hide_index=True, key="category_trend")
    with right:
        st.subheader("Trending now")
        trending = data["trending_now"]
        if trending.empty:
            st.info("No hour of event time has closed yet.")
        else:
            st.caption(f"the hour up to {trending['window_end'].iloc[0]} (closed windows, sliding every 5 minutes)")
            st.bar_chart(trending, x="category_name", y="products", horizontal=True, sort=False)
            st.dataframe(trending, hide_index=True, key="trending_now")

    left, right = st.columns(2)
    with left:
        st.subheader("Top categories by demand")
        st.caption(f"updated {last_updated(status, 'top_categories_by_demand')}")
        st.bar_chart(data["top_categories_by_demand"], x="category_name", y="bought_last_month", horizontal=True, sort=False)
        st.dataframe(data["top_categories_by_demand"], hide_index=True, key="top_categories_by_demand")

    st.subheader("Product lookup")
    needle = st.text_input("ASIN or category id", key="lookup")
    if needle:
        sql = ("SELECT asin, title, price, stars, reviews, category_id, _timestamp FROM streams.products "
               "WHERE asin = $1 OR CAST(category_id AS VARCHAR) = $1 ORDER BY _offset DESC LIMIT 200")
        try:
            st.dataframe(query(uri, token, sql, parameters=(needle.strip(),)), hide_index=True, key="lookup_rows")
        except Exception as error:
            st.error(f"Lookup failed (the recent rows are served by a running job only): {error}")


def main():
    st.title("trendflow · Amazon product trends")
    uri, token, status_url, refresh, top_n = settings()
    if refresh > 0:
        st.fragment(run_every=refresh)(render)(uri, token, status_url, top_n)
    else:
        render(uri, token, status_url, top_n)


main()
