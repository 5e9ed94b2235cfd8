-- Sources of the Amazon Products 2023 trend pipeline.
--
-- `products` is a changelog stream: records arrive on the Kafka topic `products`,
-- one JSON object per message, keyed by ASIN. A product sent again replaces its
-- earlier record (a price change), and a tombstone (the ASIN as key, no value; or
-- {"asin": "...", "_deleted": true}) withdraws it: every view is over the current
-- products. Re-bind it at run time without editing this file, e.g.
--   trendflow run --source products=file:data/amazon_products.csv
-- Every stream also has the metadata columns _key, _partition, _offset, _timestamp.
--
-- Event time: a record happened at its `date` ("31/12/2023 00:00", as the seed
-- pipeline's API client writes it), or when it arrived if it has none. Records may
-- come up to 10 minutes out of order; a record further behind the watermark is late:
-- it still changes the product, but counts in no time window (see /metrics).
CREATE EXTERNAL TABLE products (
    asin                VARCHAR NOT NULL,
    title               VARCHAR,
    "imgUrl"            VARCHAR,
    "productURL"        VARCHAR,
    stars               DOUBLE,
    reviews             BIGINT,
    price               DOUBLE,
    "listPrice"         DOUBLE,
    category_id         INT,
    "isBestSeller"      BOOLEAN,
    "boughtInLastMonth" BIGINT,
    date                VARCHAR,
    PRIMARY KEY (asin)
)
STORED AS KAFKA
LOCATION 'products'
OPTIONS ('format' 'json', 'changelog' 'upsert',
         'event_time' 'COALESCE(to_timestamp_millis(date, ''%d/%m/%Y %H:%M''), _timestamp)',
         'watermark_delay' '10 minutes');

-- `categories` is a changelog stream too, on its own topic, one JSON object per
-- category ({"id": 1, "category_name": "Beading & Jewelry Making"}): a renamed or late
-- category updates every view row that names it. Bind it to a file to replay one:
--   trendflow run --source categories=file:data/amazon_categories.csv
CREATE EXTERNAL TABLE categories (
    id            INT NOT NULL,
    category_name VARCHAR,
    PRIMARY KEY (id)
)
STORED AS KAFKA
LOCATION 'categories'
OPTIONS ('format' 'json', 'changelog' 'upsert');
