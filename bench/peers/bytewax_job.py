"""bytewax peer: reads the whole JSON topic once and folds the per-category and
price-level aggregates of trendflow's views with bytewax's keyed operators."""

import json

import bytewax.operators as op
from bytewax.connectors.kafka import KafkaSource
from bytewax.dataflow import Dataflow
from bytewax.run import cli_main
from bytewax.testing import TestingSink

from common import NO_CATEGORY, NO_LEVEL, TUNED_FETCH, add_to_category, add_to_level, arguments, price_level, report

args = arguments(__doc__)
flow = Dataflow("trendflow_peer")
# tail=False ends each partition's input at its end: the run stops after the pre-filled
# topic, and report() checks it saw all of it. bytewax assigns partitions itself and
# commits no offsets, so it takes no consumer group (--group is unused).
source = KafkaSource([args.brokers], [args.topic], tail=False, add_config=TUNED_FETCH)
records = op.map("decode", op.input("kafka", flow, source), lambda message: json.loads(message.value))
prices = op.map("price", records, lambda record: (record["category_id"], record["price"] or 0.0))

by_category = op.key_on("by_category", prices, lambda pair: str(pair[0]))
categories = op.fold_final("categories", op.map_value("category_price", by_category, lambda pair: pair[1]),
                           lambda: NO_CATEGORY, add_to_category)
priced = op.filter("priced", op.map("drop_category", prices, lambda pair: pair[1]), lambda price: price > 0)
levels = op.fold_final("levels", op.key_on("by_level", priced, price_level), lambda: NO_LEVEL, add_to_level)

category_rows, level_rows = [], []  # TestingSink appends each final (key, totals) to a list
op.output("category_rows", categories, TestingSink(category_rows))
op.output("level_rows", levels, TestingSink(level_rows))
cli_main(flow, workers_per_process=1)  # what `python -m bytewax.run` does by default
report("bytewax", args.expected, dict(category_rows), dict(level_rows))
