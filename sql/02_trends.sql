-- Continuous views of the trend pipeline. Each is kept up to date as products
-- stream in; its key is its GROUP BY columns.

-- Distribution of price levels; unpriced products (price = 0) are left out.
CREATE VIEW price_levels AS
SELECT
    CASE
        WHEN price < 10  THEN '0-10'
        WHEN price < 25  THEN '10-25'
        WHEN price < 50  THEN '25-50'
        WHEN price < 100 THEN '50-100'
        WHEN price < 250 THEN '100-250'
        WHEN price < 500 THEN '250-500'
        ELSE '500+'
    END              AS price_level,
    COUNT(*)         AS products,
    AVG(price)       AS avg_price,
    MIN(price)       AS min_price,
    MAX(price)       AS max_price
FROM products
WHERE price > 0
GROUP BY 1;

-- Distribution of categories: products per category and their share of all products.
CREATE VIEW category_distribution AS
SELECT
    p.category_id,
    c.category_name,
    COUNT(*)                                             AS products,
    CAST(COUNT(*) AS DOUBLE) / SUM(COUNT(*)) OVER ()     AS share,
    SUM(CASE WHEN p."isBestSeller" THEN 1 ELSE 0 END)    AS best_sellers
FROM products p
LEFT JOIN categories c ON p.category_id = c.id
GROUP BY p.category_id, c.category_name;

-- Average price per category, over priced products.
CREATE VIEW avg_price_by_category AS
SELECT
    p.category_id,
    c.category_name,
    COUNT(*)     AS products,
    AVG(p.price) AS avg_price,
    MIN(p.price) AS min_price,
    MAX(p.price) AS max_price
FROM products p
LEFT JOIN categories c ON p.category_id = c.id
WHERE p.price > 0
GROUP BY p.category_id, c.category_name;

-- The ten categories with the most purchases last month.
CREATE VIEW top_categories_by_demand AS
SELECT
    p.category_id,
    c.category_name,
    SUM(p."boughtInLastMonth") AS bought_last_month,
    COUNT(*)                   AS products
FROM products p
LEFT JOIN categories c ON p.category_id = c.id
GROUP BY p.category_id, c.category_name
ORDER BY bought_last_month DESC, p.category_id
LIMIT 10;

-- Trend over time: product records and their average price per category per day of
-- the records' own time (TUMBLE over the event time declared in 01_sources.sql). A day's
-- rows are updated as its records arrive; once the watermark passes its end, the day is
-- final and leaves the engine's state (its rows stay in the store).
CREATE VIEW category_trend AS
SELECT
    window_start,
    category_id,
    COUNT(*)   AS products,
    AVG(price) AS avg_price
FROM TUMBLE(products, INTERVAL '1 day')
WHERE price > 0
GROUP BY window_start, category_id;

-- Trending now: the ten categories with the most product records in each hour of
-- event time, sliding every 5 minutes (HOP), each window emitted once, final, when it
-- closes.
CREATE VIEW trending_now AS
SELECT window_start, window_end, category_id, products, rank
FROM (
    SELECT
        window_start,
        window_end,
        category_id,
        COUNT(*) AS products,
        ROW_NUMBER() OVER (PARTITION BY window_start ORDER BY COUNT(*) DESC, category_id) AS rank
    FROM HOP(products, INTERVAL '5 minutes', INTERVAL '1 hour')
    GROUP BY window_start, window_end, category_id
)
WHERE rank <= 10
EMIT ON WINDOW CLOSE;
