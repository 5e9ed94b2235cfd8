"""quixstreams peer: reads the whole JSON topic once and computes the per-category
and price-level aggregates of trendflow's views in quixstreams state stores, with
changelog topics on (its default), so its state is durable and recoverable as
trendflow's checkpointed state is."""

import tempfile

from quixstreams import Application, State

from common import NO_CATEGORY, NO_LEVEL, TUNED_FETCH, add_to_category, add_to_level, arguments, price_level, report

args = arguments(__doc__, ("--setup", "only create the job's internal topics (two repartition, two changelog) and exit: "
                                     "bench/run.py does this untimed before each timed run, as a deployed app has them"))
seen = {"records": 0, "priced": 0}  # records read from the input topic, and the priced ones among them
categories, levels = {}, {}  # the newest totals each group emitted: {key: totals}


def adder(add, empty):
    """A stateful step: the group's totals (its state, keyed by the message key group_by
    set) plus this record, stored back and emitted. JSON state turns tuples into lists."""
    def step(price, state: State):
        totals = add(tuple(state.get("totals", empty)), price)
        state.set("totals", totals)
        return totals
    return step


def collect(into):
    """Keeps the newest totals per group, and stops the run once every record read from
    the input has reached both aggregates (the counts of run(count=...) do not fit: see below)."""
    def keep(totals, key, timestamp, headers):
        into[key] = totals
        if (seen["records"] == args.expected and sum(t[0] for t in categories.values()) == args.expected
                and sum(t[0] for t in levels.values()) == seen["priced"]):
            app.stop()
    return keep


def count(price):
    seen["records"] += 1
    seen["priced"] += price > 0


# quixstreams makes its state directory (RocksDB) in the working directory by default:
# a fresh temporary one per run; the changelog topics are what makes the state recoverable.
with tempfile.TemporaryDirectory() as state_dir:
    app = Application(
        broker_address=args.brokers, consumer_group=args.group, auto_offset_reset="earliest",
        consumer_extra_config=TUNED_FETCH, state_dir=state_dir, loglevel="WARNING",
    )
    products = app.dataframe(app.topic(args.topic, value_deserializer="json"))
    # Only the two columns the aggregates read travel on through the broker.
    prices = products.apply(lambda record: {"category_id": record["category_id"], "price": record["price"] or 0.0})
    prices = prices.update(lambda row: count(row["price"]))
    # Records are keyed by asin and quixstreams' state is per message key: group_by()
    # re-keys each record by its category (and each priced one by its level) through a
    # repartition topic on the broker; the totals live in the state store of that key.
    (prices.group_by("category_id")
        .apply(lambda row: row["price"]).apply(adder(add_to_category, NO_CATEGORY), stateful=True)
        .update(collect(categories), metadata=True))
    priced = prices[prices["price"] > 0]
    (priced.group_by(lambda row: price_level(row["price"]), name="price_level")
        .apply(lambda row: row["price"]).apply(adder(add_to_level, NO_LEVEL), stateful=True)
        .update(collect(levels), metadata=True))
    # Building the dataframes above made the internal topics (quixstreams creates them one
    # by one, polling each creation every second: ~5 s in all).
    if not args.setup:
        # run(count=N) counts the outputs of the dataframes that read the repartition topics
        # (N category updates plus one level update per priced record, unknown in advance:
        # count=N stopped a 20,000-record run after 10,225 categorised records), so the job
        # stops itself in collect(); the 30 s idle timeout only ends a run that stalls,
        # which report() then fails.
        app.run(timeout=30, collect=False)
if not args.setup:
    report("quixstreams", args.expected, categories, levels)
