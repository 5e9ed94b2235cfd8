"""quixstreams peer: reads the whole JSON topic once and computes the per-category
and price-level aggregates of trendflow's views (see common.Totals)."""

import tempfile

from quixstreams import Application

from common import TUNED_FETCH, Totals, arguments, report

args = arguments(__doc__)
totals = Totals()
# quixstreams makes a state directory even with no store: keep it out of the working directory.
with tempfile.TemporaryDirectory() as state_dir:
    app = Application(
        broker_address=args.brokers, consumer_group=args.group, auto_offset_reset="earliest",
        consumer_extra_config=TUNED_FETCH, state_dir=state_dir, loglevel="WARNING",
    )
    frame = app.dataframe(app.topic(args.topic, value_deserializer="json"))
    # Records are keyed by asin and quixstreams' state is per message key, so
    # per-category totals in its state store would need group_by(), which produces
    # every record back through the broker (the shared bottleneck). In-process
    # totals are its fastest way to the same numbers, as the other peers keep theirs.
    # Keeping no quixstreams state also steers clear of a tansu 0.6.0 quirk: its topic
    # configs lack retention.ms, and quixstreams 3.28.1 reads that key unguarded when it
    # registers any state store (KeyError), even with use_changelog_topics=False.
    frame.update(totals.add)
    # Stops after `expected` records; the 30 s idle timeout only ends a run that
    # stalls, which report() then fails.
    app.run(count=args.expected, timeout=30, collect=False)
report("quixstreams", args.expected, totals.categories, totals.levels)
