"""trendflow's benchmark harness (run it through scripts/bench.sh).

Every figure is the median of --repeat runs; every comparison is a ratio of two
commands run alternately in this same invocation. Writes bench/results/latest.md
and latest.json. bench/README.md explains each figure.
"""

import argparse
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"

VIEW_QUERIES = {  # the shipped views as plain SQL over the CSV, for DuckDB (one query per process)
    "price_levels": """SELECT CASE WHEN price < 10 THEN '0-10' WHEN price < 25 THEN '10-25' WHEN price < 50 THEN '25-50'
        WHEN price < 100 THEN '50-100' WHEN price < 250 THEN '100-250' WHEN price < 500 THEN '250-500' ELSE '500+' END AS level,
        COUNT(*), AVG(price), MIN(price), MAX(price) FROM p WHERE price > 0 GROUP BY 1""",
    "category_distribution": """SELECT category_id, COUNT(*) AS n, COUNT(*) / SUM(COUNT(*)) OVER () AS share,
        SUM(CASE WHEN "isBestSeller" THEN 1 ELSE 0 END) FROM p GROUP BY 1""",
    "avg_price_by_category": "SELECT category_id, COUNT(*), AVG(price), MIN(price), MAX(price) FROM p WHERE price > 0 GROUP BY 1",
    "top_categories_by_demand": """SELECT category_id, SUM("boughtInLastMonth") AS d FROM p GROUP BY 1 ORDER BY d DESC LIMIT 10""",
}

PRICE_STATS = 'pl.len().alias("n"), pl.col("price").mean().alias("avg"), pl.col("price").min().alias("min"), pl.col("price").max().alias("max")'
LEVEL = ('pl.when(pl.col("price") < 10).then(pl.lit("0-10")).when(pl.col("price") < 25).then(pl.lit("10-25"))'
         '.when(pl.col("price") < 50).then(pl.lit("25-50")).when(pl.col("price") < 100).then(pl.lit("50-100"))'
         '.when(pl.col("price") < 250).then(pl.lit("100-250")).when(pl.col("price") < 500).then(pl.lit("250-500"))'
         '.otherwise(pl.lit("500+"))')
POLARS_QUERIES = {  # the same four views in Polars' lazy API
    "price_levels": f'p.filter(pl.col("price") > 0).group_by({LEVEL}.alias("level")).agg({PRICE_STATS})',
    "category_distribution": """p.group_by("category_id").agg(n=pl.len(), best=pl.col("isBestSeller").cast(pl.Int64).sum())
        .with_columns(share=pl.col("n") / pl.col("n").sum())""",
    "avg_price_by_category": f'p.filter(pl.col("price") > 0).group_by("category_id").agg({PRICE_STATS})',
    "top_categories_by_demand": """p.group_by("category_id").agg(d=pl.col("boughtInLastMonth").sum()).sort("d", descending=True).head(10)""",
}


def run(cmd, **kwargs):
    """Runs a command to completion; returns (wall seconds, user+sys CPU seconds, peak RSS MB, stdout)."""
    probe = ("import resource, subprocess, sys, time, json; t = time.perf_counter(); "
             "r = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True); "
             "w = time.perf_counter() - t; u = resource.getrusage(resource.RUSAGE_CHILDREN); "
             "print(json.dumps({'rc': r.returncode, 'wall': w, 'cpu': u.ru_utime + u.ru_stime, 'rss': u.ru_maxrss / 1024, "
             "'out': r.stdout, 'err': r.stderr[-2000:]}))")
    result = subprocess.run([sys.executable, "-c", probe, *map(str, cmd)], capture_output=True, text=True, check=True, **kwargs)
    report = json.loads(result.stdout)
    if report["rc"] != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed:\n{report['err']}")
    return report["wall"], report["cpu"], report["rss"], report["out"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, what, seconds=60):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port}")


class Harness:
    def __init__(self, args):
        self.args = args
        self.bin = Path(args.bin_dir)
        self.trendflow = self.bin / "trendflow"
        self.bench = self.bin / "trendflow-bench"
        self.work = Path(tempfile.mkdtemp(prefix="trendflow-bench-"))
        self.figures = {}
        self._lines = None

    def log(self, text):
        print(f"[bench] {text}", file=sys.stderr, flush=True)

    def data(self):
        out = self.work / "data"
        self.log(f"generating {self.args.rows} products (seed 42)")
        run([self.trendflow, "gen", "--rows", self.args.rows, "--seed", "42", "--out", out])
        self.products, self.categories = out / "products.csv", out / "categories.csv"
        self.messages = self.work / "messages.ndjson"
        import duckdb
        duckdb.sql(f"COPY (SELECT * FROM read_csv('{self.products}', header=true)) TO '{self.messages}' (FORMAT JSON)")

    def head(self, count):
        """The first `count` generated products as a CSV file (written once; the source is read once)."""
        if count >= self.args.rows:
            return self.products
        part = self.work / f"products_{count}.csv"
        if not part.exists():
            if self._lines is None:
                self._lines = self.products.read_text().splitlines(keepends=True)
            part.write_text("".join(self._lines[: count + 1]))
        return part

    def engine_throughput(self):
        self.log("figure 1: engine throughput vs arrow-json decoding alone")
        runs = []
        for _ in range(self.args.repeat):
            _, _, _, out = run([self.bench, "engine", "--messages", self.messages, "--categories", self.categories,
                                "--sql", REPO / "sql"])
            runs.append(json.loads(out))
        n = runs[0]["messages"]
        engine = statistics.median(n / r["engine_seconds"] for r in runs)
        decode = statistics.median(n / r["decode_seconds"] for r in runs)
        self.figures["engine"] = {"messages": n, "engine_records_per_s": engine, "decode_only_records_per_s": decode,
                                  "ratio_engine_to_decode": engine / decode}

    def batch(self):
        self.log("figure 4: batch, trendflow (all views, one pass) vs DuckDB and Polars (one view per process)")
        state = self.work / "batch-state"
        times = {"trendflow_all_views": [], **{f"duckdb_{v}": [] for v in VIEW_QUERIES}, **{f"polars_{v}": [] for v in POLARS_QUERIES}}
        rss = {}
        for _ in range(self.args.repeat):
            wall, _, peak, _ = run([self.trendflow, "batch", "--source", f"products=file:{self.products}",
                                    "--source", f"categories=file:{self.categories}", "--state", state, "--sql", REPO / "sql"])
            times["trendflow_all_views"].append(wall)
            rss["trendflow"] = peak
            for view, sql in VIEW_QUERIES.items():
                code = f"import duckdb; duckdb.sql(\"CREATE VIEW p AS SELECT * FROM read_csv('{self.products}', header=true)\"); duckdb.sql('''{sql}''').fetchall()"
                wall, _, peak, _ = run([sys.executable, "-c", code])
                times[f"duckdb_{view}"].append(wall)
                rss["duckdb"] = max(rss.get("duckdb", 0), peak)
            for view, expr in POLARS_QUERIES.items():
                code = f"import polars as pl; p = pl.scan_csv('{self.products}'); ({expr}).collect()"
                wall, _, peak, _ = run([sys.executable, "-c", code])
                times[f"polars_{view}"].append(wall)
                rss["polars"] = max(rss.get("polars", 0), peak)
        medians = {k: statistics.median(v) for k, v in times.items()}
        duck_one = statistics.median(medians[f"duckdb_{v}"] for v in VIEW_QUERIES)
        polars_one = statistics.median(medians[f"polars_{v}"] for v in POLARS_QUERIES)
        self.figures["batch"] = {"seconds": medians, "peak_rss_mb": rss, "duckdb_one_view_s": duck_one, "polars_one_view_s": polars_one,
                                 "ratio_trendflow_all_to_duckdb_one": medians["trendflow_all_views"] / duck_one}

    def memory(self):
        self.log("figure 6: peak RSS of trendflow run at 1/4, 1/2 and all of the records")
        points = {}
        for fraction in (0.25, 0.5, 1.0):
            count = int(self.args.rows * fraction)
            part = self.head(count)
            peaks = []
            for _ in range(self.args.repeat):
                state = self.work / f"mem-state-{count}-{len(peaks)}"
                _, _, peak, _ = run([self.trendflow, "run", "--until-idle", "--flight-addr", "none", "--http-addr", "none",
                                     "--source", f"products=file:{part}", "--source", f"categories=file:{self.categories}",
                                     "--state", state, "--sql", REPO / "sql"])
                peaks.append(peak)
            points[count] = statistics.median(peaks)
        self.figures["memory"] = {"peak_rss_mb_by_records": points}

    def start_broker(self):
        port = free_port()
        directory = self.work / f"tansu-{port}"
        directory.mkdir()
        url = f"tcp://127.0.0.1:{port}"
        process = subprocess.Popen([self.args.tansu, "broker", "--listener-url", url, "--advertised-listener-url", url,
                                    "--storage-engine", "sqlite://tansu.db"], cwd=directory,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(port, "tansu")
        return process, f"127.0.0.1:{port}"

    def start_mongo(self):
        port = free_port()
        process = subprocess.Popen([sys.executable, "-m", "secantus", "--host", "127.0.0.1", "--port", str(port),
                                    "--storage-path", ":memory:", "--log-level", "WARNING"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(port, "SecantusDB")
        return process, f"mongodb://127.0.0.1:{port}"

    def end_to_end(self):
        count = min(self.args.stream_rows, self.args.rows)
        sample = self.head(count)
        self.log(f"figure 2: {count} records through Kafka (tansu) into MongoDB (SecantusDB) vs a consume-only client")
        broker, brokers = self.start_broker()
        mongo, mongo_uri = self.start_mongo()
        try:
            run([self.trendflow, "produce", "--kafka-brokers", brokers, "--partitions", "4", "--file", sample,
                 "--state", self.work / "producer", "--sql", REPO / "sql"])
            consume, engine, cpu = [], [], []
            for i in range(self.args.repeat):
                wall, _, _, _ = run([self.bench, "consume", "--brokers", brokers, "--topic", "products"])
                consume.append(count / wall)
                wall, seconds, _, _ = run([self.trendflow, "run", "--until-idle", "--flight-addr", "none", "--http-addr", "none",
                                           "--kafka-brokers", brokers, "--kafka-group", f"bench-{i}",
                                           "--source", f"categories=file:{self.categories}", "--state", self.work / f"e2e-{i}",
                                           "--mongodb-uri", mongo_uri, "--mongodb-database", f"bench{i}",
                                           "--mongodb-write-concern", "1", "--sql", REPO / "sql"])
                engine.append(count / wall)
                cpu.append(seconds / count * 1e6)
            self.figures["end_to_end"] = {
                "records": count, "trendflow_records_per_s": statistics.median(engine),
                "consume_only_records_per_s": statistics.median(consume),
                "ratio_to_consume_only": statistics.median(engine) / statistics.median(consume),
                "trendflow_cpu_s_per_million": statistics.median(cpu)}
        finally:
            broker.kill()
            mongo.kill()

    def latency(self):
        rate = self.args.latency_rate
        count = min(rate * self.args.latency_seconds, self.args.rows)
        self.log(f"figure 5: latency at {rate} records/s, produce time to visible through Flight SQL")
        import adbc_driver_flightsql.dbapi as flightsql
        broker, brokers = self.start_broker()
        flight_port = free_port()
        sample = self.head(count)
        job = None
        try:
            # Replaying a file without records creates the topic the job reads; the paced replay fills it.
            run([self.trendflow, "produce", "--kafka-brokers", brokers, "--partitions", "4", "--file",
                 self.work / "empty.csv", "--state", self.work / "lp", "--sql", REPO / "sql"])
            job = subprocess.Popen([self.trendflow, "run", "--kafka-brokers", brokers, "--flight-addr", f"127.0.0.1:{flight_port}",
                                    "--http-addr", "none", "--max-delay-ms", "20", "--checkpoint-interval-ms", "1000",
                                    "--source", f"categories=file:{self.categories}", "--state", self.work / "latency-state",
                                    "--sql", REPO / "sql"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_port(flight_port, "trendflow run")
            samples = []
            started = time.perf_counter()
            producer = subprocess.Popen([self.trendflow, "produce", "--kafka-brokers", brokers, "--file", sample, "--rate", str(rate),
                                         "--state", self.work / "lp2", "--sql", REPO / "sql"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            with flightsql.connect(f"grpc://127.0.0.1:{flight_port}", autocommit=True) as conn, conn.cursor() as cur:
                newest, seen = 0, 0
                while seen < count and time.perf_counter() - started < self.args.latency_seconds * 4 + 30:
                    # The newest processed record's Kafka create time (set when the producer sent it),
                    # read after the views it updated are visible.
                    cur.execute("SELECT CAST(MAX(_timestamp) AS BIGINT), COUNT(*) FROM streams.products")
                    now_ms = time.time() * 1000
                    stamp, _ = cur.fetchone()
                    cur.execute("SELECT COALESCE(SUM(products), 0) FROM category_distribution")
                    seen = cur.fetchone()[0]
                    if stamp and stamp > newest:
                        newest = stamp
                        samples.append((now_ms - stamp) / 1000)
                    time.sleep(0.005)
            producer.wait()
            samples = sorted(max(s, 0.0) for s in samples)
            q = lambda p: samples[min(len(samples) - 1, int(p * len(samples)))] if samples else float("nan")
            self.figures["latency"] = {"rate": rate, "records": count, "samples": len(samples),
                                       "p50_ms": q(0.5) * 1000, "p99_ms": q(0.99) * 1000}
        finally:
            if job:
                job.terminate()
                job.wait()
            broker.kill()

    def report(self):
        machine = {"cpus": os.cpu_count(), "platform": platform.platform(),
                   "cpu": next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                                if l.startswith("model name")), "unknown"),
                   "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
                   "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip(),
                   "build": self.bin.name, "rows": self.args.rows, "repeat": self.args.repeat}
        results = Path(self.args.results)
        results.mkdir(parents=True, exist_ok=True)
        (results / "latest.json").write_text(json.dumps({"machine": machine, "figures": self.figures}, indent=2) + "\n")
        f = self.figures
        lines = [f"# trendflow benchmarks ({machine['build']} build, commit {machine['commit']})", "",
                 f"{machine['cpus']} CPUs ({machine['cpu']}), {machine['memory_gb']} GiB, {machine['platform']}; "
                 f"{machine['rows']} generated rows, median of {machine['repeat']} runs.", "",
                 "| # | figure | trendflow | baseline | ratio | target |", "|---|---|---|---|---|---|"]
        e = f["engine"]
        lines.append(f"| 1 | engine throughput, {e['messages']} JSON messages, all views, no sink | {e['engine_records_per_s']:,.0f} rec/s | "
                     f"arrow-json decode only {e['decode_only_records_per_s']:,.0f} rec/s | {e['ratio_engine_to_decode']:.2f} | ≥ 1,000,000 rec/s and ≥ 0.5 |")
        t = f["end_to_end"]
        lines.append(f"| 2 | end to end through Kafka (tansu) into MongoDB (SecantusDB), {t['records']} records | {t['trendflow_records_per_s']:,.0f} rec/s, "
                     f"{t['trendflow_cpu_s_per_million']:.1f} CPU s per million | consume-only rdkafka {t['consume_only_records_per_s']:,.0f} rec/s | "
                     f"{t['ratio_to_consume_only']:.2f} | ≥ 0.95 |")
        lines.append("| 3 | peers through the same broker (quixstreams, bytewax, pathway) | – | not measured by this harness yet; "
                     "../shared/BASELINES.md has 35–45k, 39k and 39k rec/s | – | ≥ every peer |")
        b = f["batch"]
        lines.append(f"| 4 | batch over the CSV: all views in one pass | {b['seconds']['trendflow_all_views']:.2f} s | "
                     f"DuckDB one view {b['duckdb_one_view_s']:.2f} s, Polars one view {b['polars_one_view_s']:.2f} s | "
                     f"{b['ratio_trendflow_all_to_duckdb_one']:.2f} | < 1 (PySpark not measured) |")
        l = f["latency"]
        lines.append(f"| 5 | latency at {l['rate']:,} rec/s, produce → visible over Flight SQL | p50 {l['p50_ms']:.0f} ms, p99 {l['p99_ms']:.0f} ms | – | – | p99 < 300 ms |")
        m = f["memory"]["peak_rss_mb_by_records"]
        lines.append(f"| 6 | peak RSS of `trendflow run`, all views | " + ", ".join(f"{k:,} rec: {v:.0f} MB" for k, v in m.items()) + " | – | – | < 300 MB, flat in records |")
        lines += ["", "Batch detail (median seconds per command, one process each):", ""]
        lines += [f"- {k}: {v:.3f} s" for k, v in b["seconds"].items()]
        lines += [f"- peak RSS MB: {json.dumps(b['peak_rss_mb'])}"]
        (results / "latest.md").write_text("\n".join(lines) + "\n")
        print("\n".join(lines))


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_400_000)
    parser.add_argument("--stream-rows", type=int, default=200_000, help="records for the Kafka figures (as in BASELINES.md)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--bin-dir", default=str(REPO / "target" / "release"))
    parser.add_argument("--tansu", default=os.environ.get("TANSU_BIN", str(Path.home() / ".cargo" / "bin" / "tansu")))
    parser.add_argument("--results", default=str(RESULTS), help="where latest.md and latest.json go")
    parser.add_argument("--latency-rate", type=int, default=20_000)
    parser.add_argument("--latency-seconds", type=int, default=10)
    harness = Harness(parser.parse_args())
    (harness.work / "empty.csv").write_text("asin\n")
    harness.data()
    harness.engine_throughput()
    harness.batch()
    harness.memory()
    harness.end_to_end()
    harness.latency()
    harness.report()


if __name__ == "__main__":
    main()
