"""PySpark local[2] peer of figure 4: one view's query over the products CSV, in its
own process like the DuckDB and Polars ones (so Spark's start-up is part of it)."""

import argparse
import json

from pyspark.sql import SparkSession

# The stream's columns (sql/01_sources.sql): a given schema spares Spark a second
# pass over the file to infer one.
SCHEMA = ("asin STRING, title STRING, imgUrl STRING, productURL STRING, stars DOUBLE, reviews BIGINT, price DOUBLE, "
          "listPrice DOUBLE, category_id INT, isBestSeller BOOLEAN, boughtInLastMonth BIGINT")

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--csv", required=True)
parser.add_argument("--sql", required=True, help="the view's query over a table `p` (run.py's VIEW_QUERIES)")
args = parser.parse_args()

spark = (SparkSession.builder.master("local[2]").appName("trendflow-bench")
         # The queries quote identifiers with double quotes, as DuckDB and trendflow do.
         .config("spark.sql.ansi.doubleQuotedIdentifiers", "true")
         .config("spark.ui.enabled", "false")
         .getOrCreate())
spark.read.csv(args.csv, header=True, schema=SCHEMA, escape='"').createOrReplaceTempView("p")
rows = spark.sql(args.sql).collect()
gateway = spark.sparkContext._gateway
spark.stop()
# Reap the JVM so the harness's getrusage() probe counts its CPU and peak RSS.
gateway.proc.stdin.close()
gateway.proc.wait()
print(json.dumps({"rows": len(rows)}))
