"""pathway peer: reads the whole JSON topic once (static mode) and computes the
per-category and price-level aggregates of trendflow's views as pathway tables."""

import pathway as pw

from common import BANDS, TOP_BAND, TUNED_FETCH, arguments, report


class Product(pw.Schema):
    category_id: int
    price: float


def collect(table, by, *columns):
    """The table's final rows as {by: (columns...)}, kept current through its updates."""
    rows = {}

    def on_change(key, row, time, is_addition):
        value = tuple(row[c] for c in columns)
        if is_addition:
            rows[row[by]] = value
        elif rows.get(row[by]) == value:  # a retraction may arrive after its replacement
            del rows[row[by]]

    pw.io.subscribe(table, on_change)
    return rows


args = arguments(__doc__)
settings = {"bootstrap.servers": args.brokers, "group.id": args.group, "auto.offset.reset": "earliest", **TUNED_FETCH}
# Static mode reads what the topic holds when the job starts, then ends the run.
products = pw.io.kafka.read(settings, args.topic, schema=Product, format="json", mode="static")

# The price_levels CASE as one native expression (no Python call per row).
level = TOP_BAND
for bound, label in reversed(BANDS):
    level = pw.if_else(pw.this.price < bound, label, level)
priced = pw.if_else(pw.this.price > 0, 1, 0)

categories = products.groupby(pw.this.category_id).reduce(
    pw.this.category_id, n=pw.reducers.count(), priced=pw.reducers.sum(priced),
    total=pw.reducers.sum(pw.this.price * priced))
levels = (products.filter(pw.this.price > 0).with_columns(level=level)
          .groupby(pw.this.level).reduce(pw.this.level, n=pw.reducers.count(), total=pw.reducers.sum(pw.this.price)))
category_rows = collect(categories, "category_id", "n", "priced", "total")
level_rows = collect(levels, "level", "n", "total")
pw.run(monitoring_level=pw.MonitoringLevel.NONE)
report("pathway", args.expected, category_rows, level_rows)
