"""The Apache Arrow Flight SQL JDBC driver (what DBeaver connects with) against a running `trendflow run`.

tests/jdbc/JdbcProbe.java is compiled here with javac and run with the driver jar
that scripts/setup.sh's ensure_jdbc_driver fetched from Maven Central (pinned in
tests/jdbc/pom.xml). It prints what the driver returns as JSON lines; the checks
are here, against ADBC and `trendflow query` on the same job.
"""

import datetime
import json
import os
import shutil
import subprocess
from pathlib import Path

import adbc_driver_flightsql.dbapi as flightsql_dbapi
import pytest
from conftest import REPO, Job, comparable

# ADBC, the reference the JDBC answers are compared with, warns on every connection.
pytestmark = pytest.mark.filterwarnings("ignore:Cannot disable autocommit")

VIEWS = {
    "avg_price_by_category": ["category_id", "category_name"],
    "category_distribution": ["category_id", "category_name"],
    "category_trend": ["window_start", "category_id"],
    "price_levels": ["price_level"],
    "top_categories_by_demand": ["category_id", "category_name"],
    "trending_now": ["window_start", "window_end", "category_id"],
}
# java.sql.Types codes of the views' Arrow types.
VARCHAR, INTEGER, BIGINT, DOUBLE, TIMESTAMP_WITH_TIMEZONE = 12, 4, -5, 8, 2014


def driver_classpath() -> str:
    """The driver jars: TRENDFLOW_JDBC_CLASSPATH (set by ensure_jdbc_driver), else its default cache."""
    classpath = os.environ.get("TRENDFLOW_JDBC_CLASSPATH")
    if not classpath:
        jars = sorted((Path.home() / ".cache" / "trendflow" / "jdbc").glob("*.jar"))
        classpath = ":".join(map(str, jars))
    if not classpath or not all(Path(p).exists() for p in classpath.split(":")):
        pytest.fail("the Flight SQL JDBC driver is missing: run `. scripts/setup.sh; ensure_jdbc_driver` "
                    "(scripts/test.sh does) or set TRENDFLOW_JDBC_CLASSPATH to its jar")
    return classpath


class Probe:
    """Runs JdbcProbe with the driver on the class path."""

    def __init__(self, java: str, classes: Path, classpath: str):
        self.java, self.classpath = java, f"{classes}:{classpath}"

    def run(self, url: str, action: str, *args: str, user=None, password=None, expect_exit=0) -> list[dict]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRENDFLOW_JDBC_")}
        env.update({k: v for k, v in (("TRENDFLOW_JDBC_USER", user), ("TRENDFLOW_JDBC_PASSWORD", password)) if v})
        # Arrow's off-heap memory reads java.nio internals, which Java 17 closes unless opened.
        command = [self.java, "--add-opens=java.base/java.nio=ALL-UNNAMED", "-cp", self.classpath, "JdbcProbe",
                   url, action, *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=180, env=env)
        assert done.returncode == expect_exit, f"JdbcProbe {action} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
        return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


@pytest.fixture(scope="session")
def probe(tmp_path_factory) -> Probe:
    java, javac = shutil.which("java"), shutil.which("javac")
    if not (java and javac):
        pytest.fail("the JDBC test needs a JDK 17+ (java and javac on PATH): apt-get install openjdk-17-jdk-headless")
    classpath = driver_classpath()
    classes = tmp_path_factory.mktemp("jdbc-probe")
    subprocess.run([javac, "-d", str(classes), str(REPO / "tests" / "jdbc" / "JdbcProbe.java")], check=True)
    return Probe(java, classes, classpath)


def jdbc_url(job, **options) -> str:
    """The URL a DBeaver user types: the job's host and port, plain gRPC unless told otherwise."""
    host_port = job.uri.split("://", 1)[1]
    options = {"useEncryption": "false", **options}
    return f"jdbc:arrow-flight-sql://{host_port}?" + "&".join(f"{k}={v}" for k, v in options.items())


def by_call(lines: list[dict]) -> dict[str, dict]:
    return {line["call"]: line for line in lines}


def records(answer: dict) -> list[dict]:
    return [dict(zip(answer["columns"], row)) for row in answer["rows"]]


def as_instant(value):
    """A timestamp as an aware UTC datetime, from JDBC's ISO text or ADBC's datetime."""
    if isinstance(value, str):
        value = datetime.datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.timezone.utc)
    return value.astimezone(datetime.timezone.utc)


def normalized(rows, timestamp_columns=()):
    """Rows as sorted tuples of comparable values (timestamps as UTC instants)."""
    return sorted(tuple(as_instant(v) if i in timestamp_columns and v is not None else comparable(v)
                        for i, v in enumerate(row)) for row in rows)


def adbc(job, sql: str):
    with flightsql_dbapi.connect(job.uri) as conn, conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetch_arrow_table()


@pytest.fixture(scope="module")
def browsed(job, probe) -> dict[str, dict]:
    """The metadata calls DBeaver makes when it connects and opens the tree, by call."""
    return by_call(probe.run(jdbc_url(job), "browse"))


def test_browsing_like_dbeaver(job, browsed):
    calls = browsed
    assert records(calls["getCatalogs"]) == [{"TABLE_CAT": "trendflow"}]
    schemas = {(r["TABLE_CATALOG"], r["TABLE_SCHEM"]) for r in records(calls["getSchemas"])}
    assert {("trendflow", "views"), ("trendflow", "streams")} <= schemas
    assert [r["TABLE_SCHEM"] for r in records(calls["getSchemas(trendflow,v%)"])] == ["views"]
    assert "VIEW" in {r["TABLE_TYPE"] for r in records(calls["getTableTypes"])}

    tables = {(r["TABLE_SCHEM"], r["TABLE_NAME"]): r["TABLE_TYPE"] for r in records(calls["getTables"])}
    assert {("views", v) for v in VIEWS} | {("streams", "products"), ("streams", "categories")} <= set(tables)
    assert sorted(r["TABLE_NAME"] for r in records(calls["getTables(views,VIEW)"])) == sorted(VIEWS)

    columns = records(calls["getColumns(views)"])
    for view in VIEWS:
        names = [c["COLUMN_NAME"] for c in sorted((c for c in columns if c["TABLE_NAME"] == view),
                                                   key=lambda c: c["ORDINAL_POSITION"])]
        assert names == adbc(job, f"SELECT * FROM {view} LIMIT 0").column_names, view
    price_levels = [(c["COLUMN_NAME"], c["DATA_TYPE"]) for c in columns if c["TABLE_NAME"] == "price_levels"]
    assert price_levels == [("price_level", VARCHAR), ("products", BIGINT), ("avg_price", DOUBLE),
                            ("min_price", DOUBLE), ("max_price", DOUBLE)]
    trend = {c["COLUMN_NAME"]: c["DATA_TYPE"] for c in columns if c["TABLE_NAME"] == "category_trend"}
    assert trend["window_start"] == TIMESTAMP_WITH_TIMEZONE and trend["category_id"] == INTEGER
    assert [c["COLUMN_NAME"] for c in records(calls["getColumns(price_levels,%price)"])] == \
        ["avg_price", "min_price", "max_price"]

    for view, key in VIEWS.items():
        keys = sorted(records(calls[f"getPrimaryKeys({view})"]), key=lambda k: k["KEY_SEQ"])
        assert [k["COLUMN_NAME"] for k in keys] == key, view
        assert {k["TABLE_NAME"] for k in keys} == {view} and [k["KEY_SEQ"] for k in keys] == list(range(1, len(key) + 1))
        # No foreign keys. (The driver drops a stream without rows, so an empty answer has no columns either.)
        for call in (f"getImportedKeys({view})", f"getExportedKeys({view})"):
            assert calls[call]["rows"] == [], call
    assert calls["getCrossReference"]["rows"] == []
    # The driver answers getTypeInfo itself (no call reaches the server) with JDBC's columns.
    assert {"TYPE_NAME", "DATA_TYPE", "PRECISION"} <= set(calls["getTypeInfo"]["columns"])


def test_every_database_metadata_property_answers(browsed):
    """DBeaver reads these on connect and to build its dialect; the driver throws on any the server leaves out."""
    calls = browsed
    sweep = calls["sweep"]
    assert sweep["errors"] == {}
    values = sweep["values"]
    assert values["getDatabaseProductName"] == "trendflow"
    assert values["getDriverName"] == "Arrow Flight SQL JDBC Driver Core" and values["getDriverVersion"] == "18.3.0"
    assert values["isReadOnly"] is True and values["supportsTransactions"] is False
    assert values["getIdentifierQuoteString"] == '"' and values["getSearchStringEscape"] == "\\"
    assert values["getDefaultTransactionIsolation"] == 0 and values["supportsTransactionIsolationLevel(NONE)"] is True
    assert values["supportsFullOuterJoins"] is True and values["supportsUnionAll"] is True
    assert values["supportsResultSetType(FORWARD_ONLY)"] is True
    assert values["supportsConvert(INTEGER,BIGINT)"] is True and values["supportsConvert(VARCHAR,TIMESTAMP)"] is True
    assert values["supportsConvert(TIMESTAMP,INTEGER)"] is False
    assert {"ABS", "ROUND"} <= set(values["getNumericFunctions"].split(", "))
    assert {"UPPER", "SUBSTR"} <= set(values["getStringFunctions"].split(", "))
    assert {"DATE_BIN", "NOW"} <= set(values["getTimeDateFunctions"].split(", "))
    assert values["getCatalogs"] == "rows:1" and values["getMaxColumnsInSelect"] == 0
    connection = calls["connection"]
    assert connection["errors"] == {}
    assert connection["values"]["isValid(5)"] is True and connection["values"]["setAutoCommit(true)"] is True


def test_every_view_equals_adbc_and_trendflow_query(job, probe):
    statements = [f"SELECT * FROM {view}" for view in VIEWS]
    answers = probe.run(jdbc_url(job), "query", *statements)
    assert [a["sql"] for a in answers] == statements
    for answer in answers:
        table = adbc(job, answer["sql"])
        assert answer["columns"] == table.column_names, answer["sql"]
        stamps = {i for i, t in enumerate(answer["types"]) if t.startswith("TIMESTAMP")}
        assert len(answer["rows"]) == table.num_rows == len(job.query(answer["sql"])) > 0, answer["sql"]
        want = normalized((tuple(r.values()) for r in table.to_pylist()), stamps)
        assert normalized(answer["rows"], stamps) == want, answer["sql"]
    price_levels = answers[list(VIEWS).index("price_levels")]
    assert price_levels["types"] == ["VARCHAR", "BIGINT", "DOUBLE", "DOUBLE", "DOUBLE"]
    expected = {r["price_level"]: r["products"] for r in job.query("SELECT price_level, products FROM price_levels")}
    assert {row[0]: row[1] for row in price_levels["rows"]} == expected


def test_prepared_statement_binds_a_parameter(job, probe):
    sql = "SELECT category_id, category_name, products FROM category_distribution WHERE category_id = ?"
    answers = probe.run(jdbc_url(job), "prepared", sql, "int:4", "int:7")
    assert [a["param"] for a in answers] == ["int:4", "int:7"]
    assert answers[0]["parameter_types"] == ["INTEGER"]
    for answer, category in zip(answers, (4, 7)):
        expected = job.query(f"SELECT category_id, category_name, products FROM category_distribution WHERE category_id = {category}")
        assert answer["rows"] == [[r["category_id"], r["category_name"], r["products"]] for r in expected]
        assert len(answer["rows"]) == 1
    products = {r["price_level"]: r["products"] for r in job.query("SELECT price_level, products FROM price_levels")}
    levels = sorted(products)[:2]
    sql = "SELECT products FROM price_levels WHERE price_level = ?"
    answers = probe.run(jdbc_url(job), "prepared", sql, *(f"str:{level}" for level in levels), "str:no such level")
    assert answers[0]["parameter_types"] == ["VARCHAR"]
    for answer, level in zip(answers, levels):
        assert answer["rows"] == [[products[level]]], level
    assert answers[2]["rows"] == []


@pytest.mark.parametrize("sql", [
    "CREATE TABLE t (a INT)",
    "INSERT INTO price_levels VALUES ('x', 1, 1.0, 1.0, 1.0)",
    "DROP VIEW price_levels",
    "CREATE EXTERNAL TABLE secrets (line VARCHAR) STORED AS CSV LOCATION '/etc/passwd'",
])
def test_ddl_and_dml_are_refused_with_a_readable_message(job, probe, sql):
    [answer] = probe.run(jdbc_url(job), "refused", sql)
    error = answer["error"]
    assert error is not None, f"{sql} was not refused"
    assert "trendflow's Flight SQL service is read-only" in error, error
    assert "\tat " not in error and len(error) < 400, error


def test_basic_auth_with_user_and_password(auth_job, probe):
    [answer] = probe.run(jdbc_url(auth_job), "query", "SELECT 1 AS one", user="alice", password="s3cret")
    assert answer["rows"] == [[1]]
    calls = by_call(probe.run(jdbc_url(auth_job), "browse", user="alice", password="s3cret"))
    assert records(calls["getCatalogs"]) == [{"TABLE_CAT": "trendflow"}] and calls["sweep"]["errors"] == {}
    [refused] = probe.run(jdbc_url(auth_job), "query", "SELECT 1", user="alice", password="wrong", expect_exit=2)
    assert "invalid credentials" in refused["error"] or "UNAUTHENTICATED" in refused["error"].upper()
    [anonymous] = probe.run(jdbc_url(auth_job), "query", "SELECT 1", expect_exit=2)
    assert "bearer token" in anonymous["error"] or "UNAUTHENTICATED" in anonymous["error"].upper()


def test_tls_verified_with_the_test_certificate(tls_job, probe, tmp_path):
    cert = tmp_path / "cert.pem"
    cert.write_text(tls_job.cert)
    url = jdbc_url(tls_job, useEncryption="true", tlsRootCerts=cert)
    [answer] = probe.run(url, "query", "SELECT category_id FROM category_distribution ORDER BY category_id LIMIT 3")
    assert answer["rows"] == [[r["category_id"]] for r in tls_job.query(
        "SELECT category_id FROM category_distribution ORDER BY category_id LIMIT 3")]
    # The system trust store does not hold the self-signed certificate (the TLS handshake fails);
    # plain gRPC gets no answer from a TLS port.
    [untrusted] = probe.run(jdbc_url(tls_job, useEncryption="true"), "query", "SELECT 1", expect_exit=2)
    assert "SslHandler" in untrusted["error"], untrusted
    [plain] = probe.run(jdbc_url(tls_job), "query", "SELECT 1", expect_exit=2)
    assert "http2 exception" in plain["error"], plain
    # What many DBeaver users set instead: encrypted, but any certificate accepted.
    unverified = jdbc_url(tls_job, useEncryption="true", disableCertificateVerification="true")
    assert probe.run(unverified, "query", "SELECT 1 AS one")[0]["rows"] == [[1]]


@pytest.fixture(scope="module")
def one_slot_job():
    job = Job("--max-queries", "1")
    job.wait_drained()
    yield job
    job.stop()


def test_cancel_frees_the_query_slot(one_slot_job, probe):
    """With one query slot, the next query runs at once only if cancelling stopped the first on the server."""
    endless = ("SELECT a.category_id FROM category_distribution a, category_distribution b, "
               "category_distribution c, category_distribution d")
    [answer] = probe.run(jdbc_url(one_slot_job), "cancel", endless, "SELECT COUNT(*) FROM category_distribution")
    assert answer["first"] is not None
    assert answer["follow_up_error"] is None and answer["follow_up_rows"] == [248], answer
    assert answer["follow_up_ms"] < 5000, answer


def test_catalog_named_in_the_url(job, probe):
    """`?catalog=` makes the driver set a session option at connect; only trendflow's catalog is there."""
    answer, closing = probe.run(jdbc_url(job, catalog="trendflow"), "query", "SELECT COUNT(*) AS n FROM price_levels",
                                expect_exit=3)
    assert answer["rows"] == [[len(job.query("SELECT price_level FROM price_levels"))]]
    # Driver 18.3.0 closes its client twice when a catalog is set, so the second CloseSession finds the
    # channel shut (fixed upstream in arrow-java GH-863, first released in 19.0.0).
    assert closing == {"close_error": "Channel shutdown invoked"}
    [refused] = probe.run(jdbc_url(job, catalog="elsewhere"), "query", "SELECT 1", expect_exit=2)
    assert "Cannot set session option for catalog" in refused["error"], refused
