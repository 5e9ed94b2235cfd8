-- Sources of the Amazon Products 2023 trend pipeline.
--
-- `products` is a stream: records arrive on the Kafka topic `products`, one JSON
-- object per message. Re-bind it at run time without editing this file, e.g.
--   trendflow run --source products=file:data/amazon_products.csv
-- Every stream also has the metadata columns _key, _partition, _offset, _timestamp.
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
    PRIMARY KEY (asin)
)
STORED AS KAFKA
LOCATION 'products'
OPTIONS ('format' 'json');

-- `categories` is a reference table, read once at start-up. Relative locations
-- resolve against this file's directory.
CREATE EXTERNAL TABLE categories (
    id            INT NOT NULL,
    category_name VARCHAR
)
STORED AS CSV
LOCATION '../data/amazon_categories.csv'
OPTIONS ('format.has_header' 'true');
