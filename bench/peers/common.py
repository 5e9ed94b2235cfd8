"""What every peer job shares: its arguments, the consumer settings, the price
bands of the `price_levels` view, and the checked JSON report it prints."""

import argparse
import json
import sys

# The fetch settings trendflow's source and `trendflow-bench consume` use, given to every
# peer's consumer too, so all contenders fetch from the broker alike.
TUNED_FETCH = {"fetch.max.bytes": "67108864", "max.partition.fetch.bytes": "16777216", "fetch.wait.max.ms": "10"}

# The CASE of sql/02_trends.sql's price_levels: (exclusive upper bound, label); the rest is '500+'.
BANDS = [(10, "0-10"), (25, "10-25"), (50, "25-50"), (100, "50-100"), (250, "100-250"), (500, "250-500")]
TOP_BAND = "500+"

# Empty totals: (products, priced products, their price sum) of a category; (products, price sum) of a level.
NO_CATEGORY, NO_LEVEL = (0, 0, 0.0), (0, 0.0)


def price_level(price):
    return next((label for bound, label in BANDS if price < bound), TOP_BAND)


def arguments(description, *flags):
    """The shared arguments, plus the job's own on/off `flags`: (name, help) pairs."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--brokers", required=True)
    parser.add_argument("--topic", default="products")
    parser.add_argument("--group", required=True, help="a fresh consumer group, so the whole topic is read")
    parser.add_argument("--expected", type=int, required=True, help="messages on the topic; the job stops after them")
    for name, text in flags:
        parser.add_argument(name, action="store_true", help=text)
    return parser.parse_args()


def add_to_category(totals, price):
    """(products, priced products, their price sum) of a category plus one record."""
    n, priced, total = totals
    return n + 1, priced + (price > 0), total + max(price, 0.0)


def add_to_level(totals, price):
    """(products, price sum) of a price level plus one priced record."""
    n, total = totals
    return n + 1, total + price


def report(peer, expected, categories, levels):
    """Prints the peer's result as one JSON line; exits non-zero unless it saw every message once.

    categories: {category_id: (products, priced products, price sum)}; levels: {level: (products, price sum)}.
    """
    records = sum(n for n, _, _ in categories.values())
    priced = sum(p for _, p, _ in categories.values())
    result = {"peer": peer, "records": records, "categories": len(categories),
              "avg_price": sum(t for _, _, t in categories.values()) / max(priced, 1),
              "levels": {level: {"products": n, "avg_price": total / n} for level, (n, total) in sorted(levels.items())}}
    print(json.dumps(result), flush=True)
    # Both views must have seen the same records: a job that consumed nothing, or
    # part of the topic, fails here instead of reporting a flattering rate.
    if records != expected or sum(n for n, _ in levels.values()) != priced:
        sys.exit(f"{peer}: processed {records} records ({priced} priced, {sum(n for n, _ in levels.values())} "
                 f"in price levels), expected {expected}")
