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
import shutil
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
PEERS = REPO / "bench" / "peers"
PEERS_VENV = Path.home() / ".cache" / "trendflow" / "bench-peers-venv"  # as scripts/bench.sh makes it
STREAM_PEERS = ("quixstreams", "bytewax", "pathway")  # figure 3: bench/peers/<peer>_job.py
# Peers whose job takes a flag to make its internal topics and exit, run untimed before each
# timed run (a deployed app has them): quixstreams' group_by repartition and changelog topics,
# named after the consumer group, which it creates one by one polling each every second (~5 s).
PEER_SETUP = {"quixstreams": "--setup"}
SKIPPED = {"skipped": "in --smoke"}  # what a peer's figure holds when the smoke run leaves it out

VIEW_QUERIES = {  # the shipped views as plain SQL over the CSV, for DuckDB and PySpark (one query per process)
    "price_levels": """SELECT CASE WHEN price < 10 THEN '0-10' WHEN price < 25 THEN '10-25' WHEN price < 50 THEN '25-50'
        WHEN price < 100 THEN '50-100' WHEN price < 250 THEN '100-250' WHEN price < 500 THEN '250-500' ELSE '500+' END AS level,
        COUNT(*), AVG(price), MIN(price), MAX(price) FROM p WHERE price > 0 GROUP BY 1""",
    "category_distribution": """SELECT category_id, COUNT(*) AS n, COUNT(*) / SUM(COUNT(*)) OVER () AS share,
        SUM(CASE WHEN "isBestSeller" THEN 1 ELSE 0 END) FROM p GROUP BY 1""",
    "avg_price_by_category": "SELECT category_id, COUNT(*), AVG(price), MIN(price), MAX(price) FROM p WHERE price > 0 GROUP BY 1",
    "top_categories_by_demand": """SELECT category_id, SUM("boughtInLastMonth") AS d FROM p GROUP BY 1 ORDER BY d DESC LIMIT 10""",
}

# The targets of bench/README.md, which report() marks met or not.
TARGETS = {"engine_records_per_s": 1_000_000, "engine_ratio_to_decode": 0.5,
           "end_to_end_ratio_to_consume_only": 0.9,  # figure 2: trendflow into MongoDB / consume-only rdkafka
           "peers_throughput_to_fastest": 3.0, "peers_cpu_to_quixstreams": 0.1,  # figure 3
           "batch_ratio_to_duckdb_one_view": 1.0, "batch_pyspark_slowdown": 10.0, "latency_p99_ms": 300, "latency_p999_ms": 600, "memory_peak_rss_mb": 300,
           "groups_ratio_to_shipped": 0.5,  # figure 7: records/s with a per-ASIN view / shipped views alone
           "groups_superlinearity": 1.25,  # figure 7: (time for all records / time for a quarter) / 4
           "checkpoint_delta_to_full": 0.02,  # figure 8: a delta checkpoint's bytes and seconds / a full one's
           "changelog_ratio_to_append": 0.5, "changelog_peak_rss_mb": 400,  # figure 9: upserts and deletes / figure 1
           "event_time_ratio_to_engine": 0.8, "event_time_peak_rss_mb": 300}  # figure 10: windowed views over 30 days / figure 1

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


def check_peer(peer, out, count):
    """A peer job checks its own totals and exits non-zero when they are off; this also
    catches one that printed no result: its last stdout line must count every record."""
    lines = out.strip().splitlines()
    records = json.loads(lines[-1]).get("records") if lines else None
    if records != count:
        raise RuntimeError(f"{peer} reported {records} records, expected {count}:\n{out[-2000:]}")


def stage_seconds(port):
    """{stage: seconds} from a running job's /metrics (`trendflow_stage_seconds_total`)."""
    import urllib.request
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    found = re.findall(r'^trendflow_stage_seconds_total\{stage="(\w+)"\} (\S+)$', text, re.M)
    return {stage: float(seconds) for stage, seconds in found}


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
        # Arrival-time data (no `date`), as every figure has been measured with.
        run([self.trendflow, "gen", "--days", "0", "--rows", self.args.rows, "--seed", "42", "--out", out])
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

    def bench_runs(self, subcommand):
        """--repeat runs of a trendflow-bench subcommand over the messages, each one's JSON."""
        return [json.loads(run([self.bench, subcommand, "--messages", self.messages, "--categories", self.categories,
                                "--sql", REPO / "sql"])[3]) for _ in range(self.args.repeat)]

    def engine_throughput(self):
        self.log("figure 1: engine throughput, in two stages and in one, vs arrow-json decoding alone")
        runs = self.bench_runs("engine")
        n = runs[0]["messages"]
        engine = statistics.median(n / r["engine_seconds"] for r in runs)
        one_stage = statistics.median(n / r["one_stage_seconds"] for r in runs)
        decode = statistics.median(n / r["decode_seconds"] for r in runs)
        avro = statistics.median(r["avro_decoded"] / r["avro_decode_seconds"] for r in runs)
        self.figures["engine"] = {"messages": n, "engine_records_per_s": engine, "one_stage_records_per_s": one_stage,
                                  "decode_only_records_per_s": decode,
                                  "ratio_engine_to_decode": engine / decode, "avro_decode_only_records_per_s": avro,
                                  "ratio_avro_to_json_decode": avro / decode}

    def groups(self):
        self.log("figure 7 and 8: group scaling (the shipped views, then with a per-ASIN view) and checkpoint cost")
        runs = self.bench_runs("groups")
        n = runs[0]["shipped"]["records"]
        rate = lambda name: statistics.median(n / r[name]["seconds_by_records"][str(n)] for r in runs)
        seconds = {int(k): statistics.median(r["with_per_asin"]["seconds_by_records"][k] for r in runs)
                   for k in runs[0]["with_per_asin"]["seconds_by_records"]}
        quarter = min(seconds)
        checkpoint = {kind: {m: statistics.median(r["checkpoint"][kind][m] for r in runs) for m in ("rows", "bytes", "seconds")}
                      for kind in ("full", "delta")}
        full, delta = checkpoint["full"], checkpoint["delta"]
        self.figures["groups"] = {"records": n, "batch": 5000, "shipped_records_per_s": rate("shipped"),
                                  "with_per_asin_records_per_s": rate("with_per_asin"),
                                  "ratio_with_per_asin_to_shipped": rate("with_per_asin") / rate("shipped"),
                                  "with_per_asin_seconds_by_records": seconds,
                                  "superlinearity": (seconds[n] / seconds[quarter]) / (n / quarter)}
        self.figures["checkpoint"] = {"groups": runs[0]["checkpoint"]["groups"], "records_in_delta": runs[0]["checkpoint"]["delta"]["records"],
                                      "full": full, "delta": delta, "ratio_bytes": delta["bytes"] / full["bytes"],
                                      "ratio_seconds": delta["seconds"] / full["seconds"]}

    def changelog(self):
        self.log("figure 9: changing data: every product inserted, then as many price changes and deletes, against figure 1")
        runs = self.bench_runs("changelog")
        records = runs[0]["inserts"] + runs[0]["changes"]
        rate = statistics.median(records / (r["insert_seconds"] + r["change_seconds"]) for r in runs)
        changes = statistics.median(r["changes"] / r["change_seconds"] for r in runs)
        self.figures["changelog"] = {"inserts": runs[0]["inserts"], "changes": runs[0]["changes"], "deletes": runs[0]["deletes"],
                                     "records_per_s": rate, "change_records_per_s": changes,
                                     "ratio_to_append": rate / self.figures["engine"]["engine_records_per_s"],
                                     "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
                                     # The benchmark holds every record and change in memory; the engine's own is the rest.
                                     "input_rss_mb": max(r["input_rss_mb"] for r in runs),
                                     "engine_rss_mb": max(r["peak_rss_mb"] - r["input_rss_mb"] for r in runs)}

    def one_view_commands(self):
        """{tool: {view: command}}: figure 4's baselines, each running one view's query in its own process."""
        duckdb = "import duckdb; duckdb.sql(\"CREATE VIEW p AS SELECT * FROM read_csv('{csv}', header=true)\"); duckdb.sql('''{sql}''').fetchall()"
        tools = {"duckdb": {view: [sys.executable, "-c", duckdb.format(csv=self.products, sql=sql)] for view, sql in VIEW_QUERIES.items()},
                 "polars": {view: [sys.executable, "-c", f"import polars as pl; p = pl.scan_csv('{self.products}'); ({expr}).collect()"]
                            for view, expr in POLARS_QUERIES.items()}}
        if not self.args.smoke:
            tools["pyspark"] = {view: [self.args.peers_python, PEERS / "pyspark_batch.py", "--csv", self.products, "--sql", sql]
                                for view, sql in VIEW_QUERIES.items()}
        return tools

    def batch(self):
        tools = self.one_view_commands()
        self.log(f"figure 4: batch, trendflow (all views, one pass) vs {', '.join(tools)} (one view per process)")
        state = self.work / "batch-state"
        times = {"trendflow_all_views": [], **{f"{tool}_{view}": [] for tool, views in tools.items() for view in views}}
        rss = {}
        for _ in range(self.args.repeat):
            wall, _, peak, _ = run([self.trendflow, "batch", "--source", f"products=file:{self.products}",
                                    "--source", f"categories=file:{self.categories}", "--state", state, "--sql", REPO / "sql"])
            times["trendflow_all_views"].append(wall)
            rss["trendflow"] = peak
            for tool, views in tools.items():
                for view, command in views.items():
                    wall, _, peak, _ = run(command)
                    times[f"{tool}_{view}"].append(wall)
                    rss[tool] = max(rss.get(tool, 0), peak)
        medians = {k: statistics.median(v) for k, v in times.items()}
        one_view = {tool: statistics.median(medians[f"{tool}_{view}"] for view in views) for tool, views in tools.items()}
        trendflow = medians["trendflow_all_views"]
        pyspark = SKIPPED if self.args.smoke else {"one_view_s": one_view["pyspark"],
                                                   "speedup_trendflow_all_to_pyspark_one": one_view["pyspark"] / trendflow}
        self.figures["batch"] = {"seconds": medians, "peak_rss_mb": rss, "duckdb_one_view_s": one_view["duckdb"],
                                 "polars_one_view_s": one_view["polars"],
                                 "ratio_trendflow_all_to_duckdb_one": trendflow / one_view["duckdb"], "pyspark": pyspark}

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
        """A fresh one-node Apache Kafka (KRaft) on free ports, with scripts/kafka/server.properties;
        JIT and heap as a production broker would run (unlike the tests' quick-start JVMs)."""
        port, controller = free_port(), free_port()
        directory = self.work / f"kafka-{port}"
        directory.mkdir()
        config = directory / "server.properties"
        config.write_text((REPO / "scripts" / "kafka" / "server.properties").read_text() + "\n".join([
            "", "node.id=1", f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}", f"controller.quorum.voters=1@127.0.0.1:{controller}",
            f"log.dirs={directory / 'data'}", "offsets.topic.replication.factor=1", "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1", "default.replication.factor=1", "min.insync.replicas=1", ""]))
        java = [str(Path(os.environ["JAVA_HOME"]) / "bin" / "java") if "JAVA_HOME" in os.environ else "java",
                f"-Dlog4j2.configurationFile={REPO / 'scripts' / 'kafka' / 'log4j2.properties'}", "-cp", f"{self.args.kafka_libs}/*"]
        subprocess.run(java + ["kafka.tools.StorageTool", "format", "--cluster-id", "dHJlbmRmbG93LWJlbmNoLQ", "--config", config],
                       check=True, capture_output=True)
        log = open(directory / "broker.log", "w")
        process = subprocess.Popen(java[:1] + ["-Xms1g", "-Xmx1g"] + java[1:] + ["kafka.Kafka", config], stdout=log, stderr=log)
        wait_port(port, "Apache Kafka")
        return process, f"127.0.0.1:{port}"

    def start_mongo(self):
        port = free_port()
        process = subprocess.Popen([sys.executable, "-m", "secantus", "--host", "127.0.0.1", "--port", str(port),
                                    "--storage-path", ":memory:", "--log-level", "WARNING"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(port, "SecantusDB")
        return process, f"mongodb://127.0.0.1:{port}"

    def end_to_end(self):
        """Figures 2 and 3: every client reads the same pre-filled topic once per repetition, in turn."""
        count = min(self.args.stream_rows, self.args.rows)
        sample = self.head(count)
        peers = () if self.args.smoke else STREAM_PEERS
        self.log(f"figure 2{' and 3' if peers else ''}: {count} records through Apache Kafka: trendflow into MongoDB "
                 f"(SecantusDB), a consume-only client{''.join(f', {p}' for p in peers)}")
        broker, brokers = self.start_broker()
        mongo, mongo_uri = self.start_mongo()
        try:
            run([self.trendflow, "produce", "--kafka-brokers", brokers, "--partitions", "4", "--file", sample,
                 "--state", self.work / "producer", "--sql", REPO / "sql"])
            job = lambda name, i: [self.trendflow, "run", "--until-idle", "--flight-addr", "none", "--http-addr", "none",
                                   "--kafka-brokers", brokers, "--kafka-group", f"{name}-{i}", "--sql", REPO / "sql",
                                   "--source", f"categories=file:{self.categories}", "--state", self.work / f"{name}-{i}"]
            commands = {
                "consume_only": lambda i: [self.bench, "consume", "--brokers", brokers, "--topic", "products"],
                "trendflow": lambda i: job("trendflow", i) + ["--mongodb-uri", mongo_uri, "--mongodb-database", f"bench{i}",
                                                              "--mongodb-write-concern", "1"],
                # Like the peers, which keep their results in memory: no external sink (figure 3).
                **({"trendflow_no_sink": lambda i: job("trendflow_no_sink", i)} if peers else {}),
                **{peer: lambda i, peer=peer: [self.args.peers_python, PEERS / f"{peer}_job.py", "--brokers", brokers,
                                               "--group", f"{peer}-{i}", "--expected", count] for peer in peers},
            }
            samples = {name: [] for name in commands}
            for i in range(self.args.repeat):
                for name, command in commands.items():
                    if name in PEER_SETUP:
                        run(command(i) + [PEER_SETUP[name]])  # untimed: see PEER_SETUP
                    wall, seconds, peak, out = run(command(i))
                    if name in peers:
                        check_peer(name, out, count)
                    samples[name].append((count / wall, seconds / count * 1e6, peak))
        finally:
            broker.kill()
            mongo.kill()
        rate, cpu, rss = ({name: statistics.median(s[k] for s in runs) for name, runs in samples.items()} for k in range(3))
        self.figures["end_to_end"] = {
            "records": count, "trendflow_records_per_s": rate["trendflow"], "consume_only_records_per_s": rate["consume_only"],
            "ratio_to_consume_only": rate["trendflow"] / rate["consume_only"], "trendflow_cpu_s_per_million": cpu["trendflow"]}
        self.figures["peers"] = SKIPPED if self.args.smoke else {
            "records": count, "trendflow_records_per_s": rate["trendflow_no_sink"], "trendflow_cpu_s_per_million": cpu["trendflow_no_sink"],
            **{peer: {"records_per_s": rate[peer], "cpu_s_per_million": cpu[peer], "peak_rss_mb": rss[peer],
                      "ratio_trendflow_to_peer_records_per_s": rate["trendflow_no_sink"] / rate[peer]} for peer in peers},
            "ratio_trendflow_to_quixstreams_cpu": cpu["trendflow_no_sink"] / cpu["quixstreams"]}

    def latency(self):
        rate = self.args.latency_rate
        count = min(rate * self.args.latency_seconds, self.args.rows)
        self.log(f"figure 5: latency at {rate} records/s, produce time to visible through Flight SQL")
        import adbc_driver_flightsql.dbapi as flightsql
        broker, brokers = self.start_broker()
        flight_port, http_port = free_port(), free_port()
        sample = self.head(count)
        job = None
        try:
            # Replaying a file without records creates the topic the job reads; the paced replay fills it.
            run([self.trendflow, "produce", "--kafka-brokers", brokers, "--partitions", "4", "--file",
                 self.work / "empty.csv", "--state", self.work / "lp", "--sql", REPO / "sql"])
            job = subprocess.Popen([self.trendflow, "run", "--kafka-brokers", brokers, "--flight-addr", f"127.0.0.1:{flight_port}",
                                    "--http-addr", f"127.0.0.1:{http_port}", "--max-delay-ms", "20", "--checkpoint-interval-ms", "1000",
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
                                       "p50_ms": q(0.5) * 1000, "p99_ms": q(0.99) * 1000, "p999_ms": q(0.999) * 1000,
                                       "stage_seconds": stage_seconds(http_port)}
        finally:
            if job:
                job.terminate()
                job.wait()
            broker.kill()

    def event_time(self):
        self.log("figure 10: event time over 30 days: the shipped views with their TUMBLE and HOP windows at 1/4, 1/2 and "
                 "all of the records, against the same views without the windows")
        out = self.work / "data-30-days"
        run([self.trendflow, "gen", "--days", "30", "--rows", self.args.rows, "--seed", "42", "--out", out])
        lines = (out / "products.csv").read_text().splitlines(keepends=True)
        sql = {"windows": self.append_sql(windows=True), "no_windows": self.append_sql(windows=False)}
        points = {}
        for fraction in (0.25, 0.5, 1.0):
            count = int(self.args.rows * fraction)
            part = self.work / f"products_30_days_{count}.csv"
            part.write_text("".join(lines[: count + 1]))
            for kind in ("windows", "no_windows") if fraction == 1.0 else ("windows",):
                runs = []
                for i in range(self.args.repeat):
                    state = self.work / f"event-time-{kind}-{count}-{i}"
                    _, _, peak, out_text = run([self.trendflow, "run", "--until-idle", "--max-rows", "50000", "--flight-addr", "none",
                                                "--http-addr", "none", "--source", f"products=file:{part}",
                                                "--state", state, "--sql", sql[kind]])
                    rate = float(re.search(r"\(([\d.]+) records/s\)", out_text).group(1))
                    checkpoint = sum(f.stat().st_size for f in (state / "checkpoints").rglob("*") if f.is_file())
                    runs.append({"records_per_s": rate, "peak_rss_mb": peak, "checkpoint_bytes": checkpoint})
                points[(kind, count)] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        n = self.args.rows
        windows = {count: points[("windows", count)] for kind, count in points if kind == "windows"}
        rate = windows[n]["records_per_s"]
        self.figures["event_time"] = {"records": n, "windows_by_records": windows, "no_windows": points[("no_windows", n)],
                                      "ratio_to_no_windows": rate / points[("no_windows", n)]["records_per_s"],
                                      "ratio_to_engine": rate / self.figures["engine"]["engine_records_per_s"],
                                      "rss_all_to_quarter": windows[n]["peak_rss_mb"] / windows[min(windows)]["peak_rss_mb"]}

    def append_sql(self, windows):
        """The shipped SQL with `products` declared append-only and `categories` a CSV table (as figure 1 measures
        it: an append stream cannot join a changelog stream), without the windowed views unless `windows`;
        returns the directory."""
        directory = self.work / ("sql-windows" if windows else "sql-no-windows")
        directory.mkdir(exist_ok=True)
        sources = (REPO / "sql" / "01_sources.sql").read_text()
        start = sources.index("CREATE EXTERNAL TABLE categories")
        assert sources[:start].count("'changelog' 'upsert',\n") == 1, "01_sources.sql no longer declares products as below"
        categories = (f"CREATE EXTERNAL TABLE categories (id INT NOT NULL, category_name VARCHAR) STORED AS CSV "
                      f"LOCATION '{self.categories}' OPTIONS ('format.has_header' 'true');\n")
        (directory / "01_sources.sql").write_text(sources[:start].replace("'changelog' 'upsert',\n", "", 1) + categories)
        trends = (REPO / "sql" / "02_trends.sql").read_text()
        assert "-- Trend over time" in trends, "02_trends.sql no longer starts its windowed views as below"
        (directory / "02_trends.sql").write_text(trends if windows else trends[: trends.index("-- Trend over time")])
        return directory

    def targets(self):
        """{target: met?} for every figure the run produced (bench/README.md gives the targets)."""
        f, t = self.figures, TARGETS
        e, b, l, m = f["engine"], f["batch"], f["latency"], f["memory"]["peak_rss_mb_by_records"]
        met = {"engine_records_per_s": e["engine_records_per_s"] >= t["engine_records_per_s"],
               "engine_ratio_to_decode": e["ratio_engine_to_decode"] >= t["engine_ratio_to_decode"],
               "end_to_end_ratio_to_consume_only": f["end_to_end"]["ratio_to_consume_only"] >= t["end_to_end_ratio_to_consume_only"],
               "batch_ratio_to_duckdb_one_view": b["ratio_trendflow_all_to_duckdb_one"] < t["batch_ratio_to_duckdb_one_view"],
               "latency_p99_ms": l["p99_ms"] < t["latency_p99_ms"],
               "latency_p999_ms": l["p999_ms"] < t["latency_p999_ms"],
               "memory_peak_rss_mb": max(m.values()) < t["memory_peak_rss_mb"],
               "groups_ratio_to_shipped": f["groups"]["ratio_with_per_asin_to_shipped"] >= t["groups_ratio_to_shipped"],
               "groups_superlinearity": f["groups"]["superlinearity"] <= t["groups_superlinearity"],
               "checkpoint_delta_to_full": max(f["checkpoint"]["ratio_bytes"], f["checkpoint"]["ratio_seconds"]) <= t["checkpoint_delta_to_full"],
               "changelog_ratio_to_append": f["changelog"]["ratio_to_append"] >= t["changelog_ratio_to_append"],
               "changelog_peak_rss_mb": f["changelog"]["engine_rss_mb"] < t["changelog_peak_rss_mb"],
               "event_time_ratio_to_engine": f["event_time"]["ratio_to_engine"] >= t["event_time_ratio_to_engine"],
               "event_time_peak_rss_mb": max(p["peak_rss_mb"] for p in f["event_time"]["windows_by_records"].values())
               < t["event_time_peak_rss_mb"]}
        if b["pyspark"] != SKIPPED:
            met["batch_pyspark_slowdown"] = b["pyspark"]["speedup_trendflow_all_to_pyspark_one"] >= t["batch_pyspark_slowdown"]
        p = f["peers"]
        if p != SKIPPED:
            met["peers_throughput_to_fastest"] = (min(p[peer]["ratio_trendflow_to_peer_records_per_s"] for peer in STREAM_PEERS)
                                                  >= t["peers_throughput_to_fastest"])
            met["peers_cpu_to_quixstreams"] = p["ratio_trendflow_to_quixstreams_cpu"] <= t["peers_cpu_to_quixstreams"]
        return met

    def report(self):
        machine = {"cpus": os.cpu_count(), "platform": platform.platform(),
                   "cpu": next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                                if l.startswith("model name")), "unknown"),
                   "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
                   "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip(),
                   "build": self.bin.name, "rows": self.args.rows, "repeat": self.args.repeat, "smoke": self.args.smoke}
        met = self.targets()
        results = Path(self.args.results)
        results.mkdir(parents=True, exist_ok=True)
        (results / "latest.json").write_text(json.dumps({"machine": machine, "figures": self.figures, "targets": TARGETS,
                                                         "targets_met": met}, indent=2) + "\n")
        f, t = self.figures, TARGETS
        said = lambda target: "met" if met[target] else "not met"
        lines = [f"# trendflow benchmarks ({machine['build']} build, commit {machine['commit']})", "",
                 f"{machine['cpus']} CPUs ({machine['cpu']}), {machine['memory_gb']} GiB, {machine['platform']}; "
                 f"{machine['rows']} generated rows, median of {machine['repeat']} runs.", "",
                 "| # | figure | trendflow | baseline | ratio | target |", "|---|---|---|---|---|---|"]
        e = f["engine"]
        lines.append(f"| 1 | engine throughput, {e['messages']} JSON messages, all views, no sink, decoding the next micro-batch while "
                     f"the views take in the current one | {e['engine_records_per_s']:,.0f} rec/s "
                     f"(in one stage: {e['one_stage_records_per_s']:,.0f} rec/s) | "
                     f"arrow-json decode only {e['decode_only_records_per_s']:,.0f} rec/s | {e['ratio_engine_to_decode']:.2f} | "
                     f"≥ {t['engine_records_per_s']:,} rec/s: {said('engine_records_per_s')}; "
                     f"≥ {t['engine_ratio_to_decode']}: {said('engine_ratio_to_decode')} |")
        lines.append(f"| 1b | the same records as Confluent-framed Avro, decoded alone (arrow-avro, record by record) | "
                     f"{e['avro_decode_only_records_per_s']:,.0f} rec/s | arrow-json decode only | {e['ratio_avro_to_json_decode']:.2f} | – |")
        n = f["end_to_end"]
        lines.append(f"| 2 | end to end through Apache Kafka into MongoDB (SecantusDB), {n['records']} records | {n['trendflow_records_per_s']:,.0f} rec/s, "
                     f"{n['trendflow_cpu_s_per_million']:.1f} CPU s per million | consume-only rdkafka {n['consume_only_records_per_s']:,.0f} rec/s "
                     f"(the ceiling) | {n['ratio_to_consume_only']:.2f} | ≥ {t['end_to_end_ratio_to_consume_only']:.2f}: "
                     f"{said('end_to_end_ratio_to_consume_only')} |")
        p = f["peers"]
        throughput_target = f"≥ {t['peers_throughput_to_fastest']:g} × the fastest peer's records/s"
        cpu_target = f"CPU per record ≤ {t['peers_cpu_to_quixstreams']:.2f} × quixstreams'"
        if p == SKIPPED:
            lines.append(f"| 3 | peers through the same broker and topic ({', '.join(STREAM_PEERS)}) | – | skipped in --smoke | – | "
                         f"{throughput_target}; {cpu_target} |")
        else:
            fastest = max(STREAM_PEERS, key=lambda peer: p[peer]["records_per_s"])
            lines.append(f"| 3 | peers through the same broker and topic, same views, {p['records']} records | "
                         f"{p['trendflow_records_per_s']:,.0f} rec/s, {p['trendflow_cpu_s_per_million']:.1f} CPU s per million "
                         "(no external sink, like the peers) | " + "; ".join(f"{peer} {p[peer]['records_per_s']:,.0f} rec/s, {p[peer]['cpu_s_per_million']:.1f} CPU s per million"
                                     for peer in STREAM_PEERS)
                         + f" | throughput {p[fastest]['ratio_trendflow_to_peer_records_per_s']:.2f} × the fastest peer ({fastest}), "
                         f"CPU {p['ratio_trendflow_to_quixstreams_cpu']:.2f} × quixstreams | {throughput_target}: {said('peers_throughput_to_fastest')}; "
                         f"{cpu_target}: {said('peers_cpu_to_quixstreams')} |")
        b = f["batch"]
        spark = b["pyspark"]
        spark_baseline, spark_ratio, spark_target = (
            ("PySpark skipped in --smoke", "–", f"PySpark ≥ {t['batch_pyspark_slowdown']:g}× slower: skipped") if spark == SKIPPED else
            (f"PySpark local[2] one view {spark['one_view_s']:.2f} s", f"PySpark {spark['speedup_trendflow_all_to_pyspark_one']:.1f}× slower",
             f"PySpark ≥ {t['batch_pyspark_slowdown']:g}× slower: {said('batch_pyspark_slowdown')}"))
        lines.append(f"| 4 | batch over the CSV: all views in one pass | {b['seconds']['trendflow_all_views']:.2f} s | "
                     f"DuckDB one view {b['duckdb_one_view_s']:.2f} s, Polars one view {b['polars_one_view_s']:.2f} s, {spark_baseline} | "
                     f"{b['ratio_trendflow_all_to_duckdb_one']:.2f} of DuckDB; {spark_ratio} | "
                     f"< {t['batch_ratio_to_duckdb_one_view']:g} of DuckDB: {said('batch_ratio_to_duckdb_one_view')}; {spark_target} |")
        l = f["latency"]
        stages = ", ".join(f"{stage} {seconds:.2f} s" for stage, seconds in l["stage_seconds"].items())
        lines.append(f"| 5 | latency at {l['rate']:,} rec/s, produce → visible over Flight SQL | p50 {l['p50_ms']:.0f} ms, p99 {l['p99_ms']:.0f} ms, "
                     f"p99.9 {l['p999_ms']:.0f} ms; the job's time by stage: {stages} | – | – | "
                     f"p99 < {t['latency_p99_ms']} ms: {said('latency_p99_ms')}; p99.9 < {t['latency_p999_ms']} ms: {said('latency_p999_ms')} |")
        m = f["memory"]["peak_rss_mb_by_records"]
        lines.append(f"| 6 | peak RSS of `trendflow run`, all views | " + ", ".join(f"{k:,} rec: {v:.0f} MB" for k, v in m.items())
                     + f" | – | all records / a quarter: {max(m.items())[1] / min(m.items())[1]:.2f} | "
                     f"< {t['memory_peak_rss_mb']} MB: {said('memory_peak_rss_mb')}; flat in records (the ratio) |")
        g, c = f["groups"], f["checkpoint"]
        lines.append(f"| 7 | group scaling, {g['records']:,} records in micro-batches of {g['batch']:,}, a checkpoint every 20: "
                     f"the shipped views plus a per-ASIN view | {g['with_per_asin_records_per_s']:,.0f} rec/s; "
                     + ", ".join(f"{k:,} rec: {v:.2f} s" for k, v in g["with_per_asin_seconds_by_records"].items())
                     + f" | the shipped views alone {g['shipped_records_per_s']:,.0f} rec/s | {g['ratio_with_per_asin_to_shipped']:.2f}; "
                     f"time superlinearity {g['superlinearity']:.2f} | ≥ {t['groups_ratio_to_shipped']}: {said('groups_ratio_to_shipped')}; "
                     f"superlinearity ≤ {t['groups_superlinearity']}: {said('groups_superlinearity')} |")
        lines.append(f"| 8 | checkpoint cost with {c['groups']:,} groups, after a micro-batch of {c['records_in_delta']:,} records | "
                     f"delta: {c['delta']['rows']:,.0f} rows, {c['delta']['bytes'] / 1e6:.2f} MB, {c['delta']['seconds'] * 1000:.1f} ms | "
                     f"full: {c['full']['rows']:,.0f} rows, {c['full']['bytes'] / 1e6:.1f} MB, {c['full']['seconds'] * 1000:.0f} ms | "
                     f"bytes {c['ratio_bytes']:.4f}, time {c['ratio_seconds']:.3f} | ≤ {t['checkpoint_delta_to_full']} in both: "
                     f"{said('checkpoint_delta_to_full')} |")
        cl = f["changelog"]
        lines.append(f"| 9 | changing data: {cl['inserts']:,} products inserted, then {cl['changes']:,} changes of random products "
                     f"({cl['deletes']:,} deletes), the shipped upsert pipeline, no sink | {cl['records_per_s']:,.0f} rec/s "
                     f"(the changes alone {cl['change_records_per_s']:,.0f} rec/s), peak RSS {cl['engine_rss_mb']:.0f} MB "
                     f"(the process's {cl['peak_rss_mb']:.0f} MB less the {cl['input_rss_mb']:.0f} MB of records the benchmark holds) | "
                     f"figure 1 (append-only) {e['engine_records_per_s']:,.0f} rec/s | {cl['ratio_to_append']:.2f} | "
                     f"≥ {t['changelog_ratio_to_append']}: {said('changelog_ratio_to_append')}; "
                     f"RSS < {t['changelog_peak_rss_mb']} MB: {said('changelog_peak_rss_mb')} |")
        et = f["event_time"]
        w = et["windows_by_records"]
        lines.append(f"| 10 | event time: {et['records']:,} products over 30 days, products append-only, the shipped views with "
                     f"`category_trend` (TUMBLE 1 day) and `trending_now` (HOP 5 min / 1 h, emit on close), `run` in micro-batches of 50,000 | "
                     f"{w[et['records']]['records_per_s']:,.0f} rec/s; peak RSS " + " / ".join(f"{v['peak_rss_mb']:.0f}" for v in w.values())
                     + " MB and checkpoint " + " / ".join(f"{v['checkpoint_bytes'] / 1e3:.0f}" for v in w.values())
                     + f" KB at {' / '.join(f'{k:,}' for k in w)} rec | the same views without windows "
                     f"{et['no_windows']['records_per_s']:,.0f} rec/s; figure 1 {e['engine_records_per_s']:,.0f} rec/s | "
                     f"{et['ratio_to_no_windows']:.2f} of no windows, {et['ratio_to_engine']:.2f} of figure 1; RSS all / a quarter "
                     f"{et['rss_all_to_quarter']:.2f} | ≥ {t['event_time_ratio_to_engine']} × figure 1: {said('event_time_ratio_to_engine')}; "
                     f"RSS < {t['event_time_peak_rss_mb']} MB and flat: {said('event_time_peak_rss_mb')} |")
        lines += ["", "Batch detail (median seconds per command, one process each):", ""]
        lines += [f"- {k}: {v:.3f} s" for k, v in b["seconds"].items()]
        lines += [f"- peak RSS MB: {json.dumps(b['peak_rss_mb'])}"]
        if p != SKIPPED:
            lines += ["", "Peer detail (figure 3, median per process; its CPU and RSS are the peer's own, not the broker's):", ""]
            lines += [f"- {peer}: {p[peer]['records_per_s']:,.0f} rec/s, {p[peer]['cpu_s_per_million']:.1f} CPU s per million, "
                      f"peak RSS {p[peer]['peak_rss_mb']:.0f} MB" for peer in STREAM_PEERS]
            lines += ["", "quixstreams keeps its totals in state stores with changelog topics (group_by re-keys every record "
                      "through a repartition topic per aggregate); its internal topics are made untimed before each run. "
                      "bytewax and pathway keep theirs in memory. Every side's own process only: the broker's CPU is not counted."]
        (results / "latest.md").write_text("\n".join(lines) + "\n")
        print("\n".join(lines))


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_400_000)
    parser.add_argument("--stream-rows", type=int, default=200_000, help="records for the Kafka figures (as in BASELINES.md)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--bin-dir", default=str(REPO / "target" / "release"))
    parser.add_argument("--kafka-libs", default=os.environ.get("TRENDFLOW_KAFKA_LIBS"), required="TRENDFLOW_KAFKA_LIBS" not in os.environ,
                        help="Apache Kafka's jars (scripts/setup.sh's ensure_kafka installs them)")
    parser.add_argument("--results", default=str(RESULTS), help="where latest.md and latest.json go")
    parser.add_argument("--latency-rate", type=int, default=20_000)
    parser.add_argument("--latency-seconds", type=int, default=10)
    parser.add_argument("--peers-python", default=os.environ.get("TRENDFLOW_PEERS_PYTHON", str(PEERS_VENV / "bin" / "python")),
                        help="interpreter with bench/requirements-peers.txt (figure 3 and PySpark)")
    parser.add_argument("--smoke", action="store_true", help="leave out the peers of figures 3 and 4 (too heavy for CI)")
    args = parser.parse_args()
    if not args.smoke and not Path(args.peers_python).exists():
        parser.error(f"no peers interpreter at {args.peers_python}: scripts/bench.sh installs bench/requirements-peers.txt there")
    harness = Harness(args)
    (harness.work / "empty.csv").write_text("asin\n")
    harness.data()
    harness.engine_throughput()
    harness.changelog()
    harness.batch()
    harness.memory()
    harness.groups()
    harness.event_time()
    harness.end_to_end()
    harness.latency()
    harness.report()
    # The generated data, messages and state directories take a few GB.
    shutil.rmtree(harness.work, ignore_errors=True)


if __name__ == "__main__":
    main()
