"""Fifty Flight SQL clients (ADBC, one connection each) query the views while the job
is still consuming: no query fails, every client sees the views only grow, and the job
keeps going. Its throughput with and without the clients is reported, not asserted."""

import threading
import time
import urllib.request

import adbc_driver_flightsql.dbapi as flight_sql

from conftest import Job, report

CLIENTS = 50
ROWS = 1_000_000
QUERIES = [
    "SELECT SUM(products) AS n FROM category_distribution",
    "SELECT price_level, products, avg_price FROM price_levels ORDER BY price_level",
    "SELECT category_name, avg_price FROM avg_price_by_category ORDER BY avg_price DESC LIMIT 10",
    "SELECT * FROM top_categories_by_demand",
]


def records_so_far(job) -> float:
    with urllib.request.urlopen(job.status_url + "/metrics", timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith('trendflow_records_total{stream="products"}'):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def throughput(job, seconds: float) -> float:
    start, began = records_so_far(job), time.monotonic()
    time.sleep(seconds)
    return (records_so_far(job) - start) / (time.monotonic() - began)


def client(uri: str, stop: threading.Event, results: list, index: int) -> None:
    done, failures, totals = 0, [], []
    try:
        with flight_sql.connect(uri) as conn:
            while not stop.is_set():
                sql = QUERIES[(index + done) % len(QUERIES)]
                try:
                    with conn.cursor() as cur:
                        cur.execute(sql)
                        table = cur.fetch_arrow_table()
                    if sql == QUERIES[0]:
                        totals.append(table.column("n")[0].as_py() or 0)
                    done += 1
                except Exception as e:  # every failure is counted and shown
                    failures.append(f"{sql}: {e}")
    except Exception as e:
        failures.append(f"connect: {e}")
    results[index] = (done, failures, totals)


def test_fifty_clients_while_the_job_runs():
    job = Job(rows=ROWS, max_rows=500)
    try:
        # Wait until the job is processing, then measure it alone.
        deadline = time.monotonic() + 120
        while records_so_far(job) == 0:
            assert time.monotonic() < deadline, "the job did not start processing"
            time.sleep(0.2)
        alone = throughput(job, 3)
        stop, results = threading.Event(), [None] * CLIENTS
        threads = [threading.Thread(target=client, args=(job.uri, stop, results, i)) for i in range(CLIENTS)]
        for thread in threads:
            thread.start()
        loaded = throughput(job, 8)
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    finally:
        job.stop()
    assert all(results), f"{results.count(None)} clients still running a minute after the stop"
    failures = [f for done, fails, _ in results for f in fails]
    queries = sum(done for done, _, _ in results)
    report("fifty_flight_sql_clients_while_the_job_runs", {
        "clients": CLIENTS, "queries": queries, "failed_queries": len(failures),
        "job_records_per_second_alone": round(alone), "job_records_per_second_with_clients": round(loaded),
        "throughput_ratio": round(loaded / alone, 2) if alone else None,
    })
    assert not failures, failures[:5]
    assert all(done > 0 for done, _, _ in results), "a client got no query through"
    assert all(totals == sorted(totals) for _, _, totals in results), "a view went backwards for a client"
    assert loaded > 0, "the job stalled under the clients"
