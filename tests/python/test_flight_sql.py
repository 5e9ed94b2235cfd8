"""Flight SQL clients nobody here wrote, against a running `trendflow run`.

ADBC (what pandas/polars/DuckDB use), raw pyarrow.flight for the metadata
commands ADBC does not call, and flightsql-dbapi / SQLAlchemy (what Superset uses).
"""

import math
import threading
import warnings

import adbc_driver_flightsql
import adbc_driver_flightsql.dbapi as flightsql_dbapi
import pyarrow as pa
import pyarrow.flight as flight
import pytest
from conftest import comparable
from flightsql import flightsql_pb2
from google.protobuf import any_pb2

warnings.filterwarnings("ignore", message="Cannot disable autocommit")

VIEWS = {
    "avg_price_by_category": ["category_id", "category_name"],
    "category_distribution": ["category_id", "category_name"],
    "category_trend": ["window_start", "category_id"],
    "price_levels": ["price_level"],
    "top_categories_by_demand": ["category_id", "category_name"],
    "trending_now": ["window_start", "window_end", "category_id"],
}


def connect(job, **kwargs):
    return flightsql_dbapi.connect(job.uri, **kwargs)


def normalized(rows):
    """Rows as sorted tuples of comparable values."""
    return sorted(tuple(comparable(v) for v in row) for row in rows)


def test_get_objects_lists_catalog_schemas_tables_and_columns(job):
    with connect(job) as conn:
        objects = conn.adbc_get_objects(depth="all").read_all().to_pylist()
    catalogs = {c["catalog_name"]: c for c in objects}
    assert "trendflow" in catalogs
    schemas = {s["db_schema_name"]: s for s in catalogs["trendflow"]["catalog_db_schemas"]}
    assert {"views", "streams"} <= set(schemas)
    tables = {t["table_name"]: t for t in schemas["views"]["db_schema_tables"]}
    assert set(VIEWS) <= set(tables)
    columns = [c["column_name"] for c in tables["price_levels"]["table_columns"]]
    assert columns == ["price_level", "products", "avg_price", "min_price", "max_price"]
    # The shipped pipeline has no reference table: categories is a changelog stream.
    assert {t["table_name"] for t in schemas["streams"]["db_schema_tables"]} == {"products", "categories"}


def test_every_view_as_arrow_and_pandas_equals_trendflow_query(job):
    with connect(job) as conn, conn.cursor() as cur:
        for view in VIEWS:
            cur.execute(f"SELECT * FROM {view}")
            table = cur.fetch_arrow_table()
            expected = job.query(f"SELECT * FROM {view}")
            assert table.num_rows == len(expected) > 0, view
            got = normalized(tuple(r.values()) for r in table.to_pylist())
            want = normalized(tuple(r[name] for name in table.column_names) for r in expected)
            if view in ("category_trend", "trending_now"):  # timestamps render differently on the two sides
                got = [tuple(str(v) if i == 0 else v for i, v in enumerate(r)) for r in got]
                want = [tuple(str(v) if i == 0 else v for i, v in enumerate(r)) for r in want]
                assert len(got) == len(want)
            else:
                assert got == want, view
            cur.execute(f"SELECT * FROM {view}")
            frame = cur.fetch_df()
            assert list(frame.columns) == table.column_names and len(frame) == table.num_rows


def test_prepared_statement_binds_a_parameter(job):
    with connect(job) as conn, conn.cursor() as cur:
        cur.execute("SELECT category_id, products FROM category_distribution WHERE category_id = ?", parameters=(4,))
        rows = cur.fetchall()
        expected = job.query("SELECT category_id, products FROM category_distribution WHERE category_id = 4")
        assert rows == [(r["category_id"], r["products"]) for r in expected] and len(rows) == 1
        cur.adbc_prepare("SELECT products FROM price_levels WHERE price_level = $1")
        cur.execute("SELECT products FROM price_levels WHERE price_level = $1", parameters=("10-25",))
        assert cur.fetchall()[0][0] == job.query("SELECT products FROM price_levels WHERE price_level = '10-25'")[0]["products"]


@pytest.mark.parametrize("sql", [
    "CREATE TABLE t (a INT)",
    "INSERT INTO price_levels VALUES ('x', 1, 1.0, 1.0, 1.0)",
    "DROP VIEW price_levels",
    "CREATE EXTERNAL TABLE secrets (line VARCHAR) STORED AS CSV LOCATION '/etc/passwd'",
    "COPY price_levels TO '/tmp/out.csv'",
])
def test_ddl_and_dml_are_refused(job, sql):
    with connect(job) as conn, conn.cursor() as cur:
        with pytest.raises(Exception) as error:
            cur.execute(sql)
        assert "read-only" in str(error.value)


def test_auth_accepts_valid_credentials_only(auth_job):
    with connect(auth_job, db_kwargs={"username": "alice", "password": "s3cret"}) as conn, conn.cursor() as cur:
        cur.execute("SELECT 1 AS one")
        assert cur.fetchall() == [(1,)]
    with pytest.raises(Exception) as error:
        with connect(auth_job, db_kwargs={"username": "alice", "password": "wrong"}) as conn, conn.cursor() as cur:
            cur.execute("SELECT 1")
    assert "UNAUTHENTICATED" in str(error.value).upper() or "credentials" in str(error.value)
    client = flight.FlightClient(auth_job.uri)
    with pytest.raises(flight.FlightUnauthenticatedError):
        client.get_flight_info(flight.FlightDescriptor.for_command(command(flightsql_pb2.CommandGetCatalogs())))


def test_token_file_auth(token_job):
    header = {"adbc.flight.sql.authorization_header": "Bearer dashboard-7f3a"}
    with connect(token_job, db_kwargs=header) as conn, conn.cursor() as cur:
        cur.execute("SELECT 1 AS one")
        assert cur.fetchall() == [(1,)]
    with pytest.raises(Exception) as error:
        bad = {"adbc.flight.sql.authorization_header": "Bearer guessed"}
        with connect(token_job, db_kwargs=bad) as conn, conn.cursor() as cur:
            cur.execute("SELECT 1")
    assert "UNAUTHENTICATED" in str(error.value).upper() or "invalid token" in str(error.value)


def test_tls(tls_job):
    assert tls_job.uri.startswith("grpc+tls://")
    trusted = {"adbc.flight.sql.client_option.tls_root_certs": tls_job.cert}
    with connect(tls_job, db_kwargs=trusted) as conn, conn.cursor() as cur:
        cur.execute("SELECT 1 AS one")
        assert cur.fetchall() == [(1,)]
    with pytest.raises(Exception):
        with connect(tls_job) as conn, conn.cursor() as cur:  # the self-signed certificate is not trusted
            cur.execute("SELECT 1")


def test_streams_serve_their_recent_rows(job):
    with connect(job) as conn, conn.cursor() as cur:
        cur.execute("SELECT COUNT(*), MIN(_offset), MAX(_offset) FROM streams.products")
        count, first, last = cur.fetchall()[0]
    # The default window keeps the latest 10,000 of the 20,000 generated records.
    assert (count, first, last) == (10_000, 10_000, 19_999)


def command(message) -> bytes:
    packed = any_pb2.Any()
    packed.Pack(message, type_url_prefix="type.googleapis.com/")
    return packed.SerializeToString()


def fetch(job, message) -> pa.Table:
    client = flight.FlightClient(job.uri)
    info = client.get_flight_info(flight.FlightDescriptor.for_command(command(message)))
    return client.do_get(info.endpoints[0].ticket).read_all()


def test_raw_metadata_commands(job):
    info = fetch(job, flightsql_pb2.CommandGetSqlInfo()).to_pylist()
    values = {row["info_name"]: row["value"] for row in info}
    assert values[flightsql_pb2.FLIGHT_SQL_SERVER_NAME] == "trendflow"
    assert values[flightsql_pb2.FLIGHT_SQL_SERVER_READ_ONLY] is True
    assert values[flightsql_pb2.SQL_IDENTIFIER_QUOTE_CHAR] == '"'
    types = fetch(job, flightsql_pb2.CommandGetXdbcTypeInfo()).to_pylist()
    assert {"VARCHAR", "BIGINT", "DOUBLE", "BOOLEAN", "TIMESTAMP"} <= {t["type_name"] for t in types}
    for view, key in VIEWS.items():
        keys = fetch(job, flightsql_pb2.CommandGetPrimaryKeys(db_schema="views", table=view)).to_pylist()
        assert [k["column_name"] for k in sorted(keys, key=lambda k: k["key_sequence"])] == key, view
    table_types = fetch(job, flightsql_pb2.CommandGetTableTypes()).column("table_type").to_pylist()
    assert "VIEW" in table_types
    tables = fetch(job, flightsql_pb2.CommandGetTables(table_name_filter_pattern="price%", include_schema=True))
    assert tables.column("table_name").to_pylist() == ["price_levels"]
    schema = pa.ipc.read_schema(pa.py_buffer(tables.column("table_schema")[0].as_py()))
    assert schema.names[0] == "price_level"


def test_sqlalchemy_dialect_lists_tables_and_queries(job):
    import sqlalchemy
    host_port = job.uri.removeprefix("grpc://")
    engine = sqlalchemy.create_engine(f"datafusion://{host_port}?insecure=true")
    inspector = sqlalchemy.inspect(engine)
    assert set(VIEWS) <= set(inspector.get_table_names(schema="views"))
    with engine.connect() as conn:
        rows = conn.execute(sqlalchemy.text("SELECT price_level, products FROM price_levels")).fetchall()
    expected = job.query("SELECT price_level, products FROM price_levels")
    assert sorted(map(tuple, rows)) == sorted((r["price_level"], r["products"]) for r in expected)


def test_runaway_query_fails_alone_while_others_succeed(limited_job):
    runaway = ("SELECT a.category_id, b.category_id, c.category_name FROM category_distribution a, "
               "category_distribution b, category_distribution c ORDER BY c.category_name, a.share, b.share")
    outcome = {}

    def run_runaway():
        try:
            with connect(limited_job) as conn, conn.cursor() as cur:
                cur.execute(runaway)
                cur.fetch_arrow_table()
                outcome["runaway"] = "finished"
        except Exception as error:  # noqa: BLE001 - the error text is the assertion
            outcome["runaway"] = str(error)

    thread = threading.Thread(target=run_runaway)
    thread.start()
    with connect(limited_job) as conn, conn.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM category_distribution")
        assert cur.fetchall() == [(248,)]
    thread.join(timeout=120)
    assert "memory" in outcome.get("runaway", "").lower(), outcome
    with connect(limited_job) as conn, conn.cursor() as cur:
        cur.execute("SELECT SUM(products) FROM price_levels")
        assert cur.fetchall()[0][0] > 0
