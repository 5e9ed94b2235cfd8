//! # trendflow-datagen
//!
//! Writes `products.csv` and `categories.csv` in the exact format of the
//! Amazon Products 2023 dataset (same columns and order, `True`/`False`,
//! zeros for missing values), with distributions fitted to the full dataset's
//! published statistics: price quartiles 11.99 / 19.95 / 35.99 with 2 % unpriced,
//! 79 % of products without reviews, 0.6 % best sellers, 248 category ids
//! between 1 and 270 with the real gaps, skewed category sizes. Names are
//! synthetic. Output depends only on the row count, the seed and the span of days.
//!
//! ## Event times
//!
//! With `days > 0` every product row gets a last column `date`, its event time in
//! UTC as `%d/%m/%Y %H:%M` (e.g. `30/12/2023 20:15`, never quoted: it holds no
//! comma). The times lie in the `days` days that end at 2023-12-31 00:00 UTC
//! (both ends included), and the rows are written roughly in time order, so that
//! the file replays as a stream:
//!
//! - **Density.** A daily curve, a cosine warped to be quietest at 04:00 and
//!   busiest at 20:00 (0.4× to 1.6× of its mean level, smooth), times a weekly
//!   one: Saturdays and Sundays are 25 % busier than weekdays. Row `i` of `n` gets
//!   the "ideal" time at quantile `(i + 0.5) / n` of this density over the span,
//!   so ideal times never decrease.
//! - **Disorder.** Each row's time is its ideal time minus a jitter, rounded to
//!   the minute: 0–4 minutes for most rows, and 20–90 minutes for about 0.2 % of
//!   the rows, late stragglers that arrive behind a 10-minute watermark delay.
//!   Times are never moved before the span's start.
//!
//! The event times come from a random stream of their own, so the other columns
//! are the same for any `days`. `days = 0` writes no `date` column: the files of
//! the format without event times, byte for byte as before the column existed.
//!
//! ```
//! let dir = tempfile::tempdir().unwrap();
//! let summary = trendflow_datagen::generate(&trendflow_datagen::GenOptions {
//!     rows: 1_000, seed: 7, days: 30, out: dir.path().to_path_buf(),
//! }).unwrap();
//! assert_eq!(summary.rows, 1_000);
//! let products = std::fs::read_to_string(dir.path().join("products.csv")).unwrap();
//! assert!(products.lines().next().unwrap().ends_with(",boughtInLastMonth,date"));
//! // Rows run in time order towards the span's end, 31/12/2023 00:00.
//! assert!(products.lines().last().unwrap().contains(",30/12/2023 2"));
//! ```

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// Errors of the generator.
#[derive(Debug, thiserror::Error)]
pub enum GenError {
    /// The output could not be written.
    #[error("{}: {error}", path.display())]
    Io { path: PathBuf, error: std::io::Error },
    /// The span of event times is longer than [`MAX_DAYS`].
    #[error("days: at most {MAX_DAYS} days of event time, got {0}")]
    TooManyDays(u32),
}

/// The longest span of event times, in days (100 years).
pub const MAX_DAYS: u32 = 36_525;

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenOptions {
    /// Number of products.
    pub rows: u64,
    /// Seed: the same seed, row count and days give byte-identical files.
    pub seed: u64,
    /// Span of the event times in days, ending at 2023-12-31 00:00 UTC: each row
    /// gets a last column `date` (see the crate documentation). 0 writes no `date`
    /// column (the format without event times).
    pub days: u32,
    /// Output directory (created when missing).
    pub out: PathBuf,
}

/// What was written.
#[derive(Debug, Clone)]
pub struct GenSummary {
    /// Products written.
    pub rows: u64,
    /// Path of `products.csv`.
    pub products: PathBuf,
    /// Path of `categories.csv`.
    pub categories: PathBuf,
}

/// Category ids absent from the real dataset (ids run from 1 to 270).
const MISSING_CATEGORY_IDS: [u32; 22] = [37, 59, 61, 62, 67, 85, 86, 92, 93, 111, 115, 117, 119, 202, 246, 247, 257, 258, 266, 267, 268, 269];

/// The 248 category ids of the dataset.
pub fn category_ids() -> Vec<u32> {
    (1..=270).filter(|id| !MISSING_CATEGORY_IDS.contains(id)).collect()
}

const DEPARTMENTS: [&str; 16] = [
    "Home",
    "Kitchen",
    "Sports",
    "Outdoor",
    "Toys",
    "Baby",
    "Beauty",
    "Health",
    "Office",
    "Garden",
    "Automotive",
    "Electronics",
    "Pet",
    "Tools",
    "Travel",
    "Fashion",
];
const KINDS: [&str; 16] = [
    "Accessories",
    "Supplies",
    "Storage",
    "Lighting",
    "Decor",
    "Equipment",
    "Essentials",
    "Gear",
    "Care",
    "Furniture",
    "Parts",
    "Clothing",
    "Games",
    "Audio",
    "Bags",
    "Tech",
];
const BRANDS: [&str; 12] =
    ["Acme", "Northwind", "Contoso", "Fabrikam", "Globex", "Initech", "Umbrella", "Stark", "Wayne", "Tyrell", "Cyberdyne", "Soylent"];
const ADJECTIVES: [&str; 12] = [
    "Portable",
    "Durable",
    "Premium",
    "Compact",
    "Wireless",
    "Adjustable",
    "Waterproof",
    "Foldable",
    "Lightweight",
    "Heavy Duty",
    "Smart",
    "Classic",
];
const NOUNS: [&str; 12] =
    ["Organizer", "Speaker", "Backpack", "Lamp", "Bottle", "Charger", "Blender", "Jacket", "Sneaker", "Tent", "Headphones", "Suitcase"];
const COLORS: [&str; 8] = ["Black", "White", "Navy Blue", "Red", "Grey", "Green", "Pink", "Beige"];
const BOUGHT_LEVELS: [(u32, u32); 12] =
    [(50, 300), (100, 250), (200, 140), (300, 80), (400, 50), (500, 40), (600, 20), (700, 15), (800, 12), (900, 10), (1000, 30), (2000, 8)];

/// Writes `products.csv` and `categories.csv` into `options.out`.
pub fn generate(options: &GenOptions) -> Result<GenSummary, GenError> {
    if options.days > MAX_DAYS {
        return Err(GenError::TooManyDays(options.days));
    }
    std::fs::create_dir_all(&options.out).map_err(|error| GenError::Io { path: options.out.clone(), error })?;
    let categories = options.out.join("categories.csv");
    let products = options.out.join("products.csv");
    write_file(&categories, |w| write_categories(w, options.seed))?;
    write_file(&products, |w| write_products(w, options))?;
    Ok(GenSummary { rows: options.rows, products, categories })
}

fn write_file(path: &Path, body: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>) -> Result<(), GenError> {
    let io = |error| GenError::Io { path: path.to_path_buf(), error };
    let mut writer = BufWriter::with_capacity(1 << 20, File::create(path).map_err(io)?);
    body(&mut writer).map_err(io)?;
    writer.flush().map_err(io)
}

fn write_categories(w: &mut impl Write, seed: u64) -> std::io::Result<()> {
    writeln!(w, "id,category_name")?;
    let mut rng = SplitMix64::new(seed ^ 0xC47E_6021);
    for id in category_ids() {
        let department = DEPARTMENTS[rng.below(DEPARTMENTS.len() as u64) as usize];
        let kind = KINDS[rng.below(KINDS.len() as u64) as usize];
        // Real names contain '&' and ','; keep one quoted field per few rows.
        if id % 5 == 0 {
            writeln!(w, "{id},\"{department}, {kind} & More {id}\"")?;
        } else {
            writeln!(w, "{id},{department} & {kind} {id}")?;
        }
    }
    Ok(())
}

fn write_products(w: &mut impl Write, options: &GenOptions) -> std::io::Result<()> {
    write!(w, "asin,title,imgUrl,productURL,stars,reviews,price,listPrice,category_id,isBestSeller,boughtInLastMonth")?;
    writeln!(w, "{}", if options.days > 0 { ",date" } else { "" })?;
    let mut rng = SplitMix64::new(options.seed);
    let ids = category_ids();
    let weights = category_weights(ids.len(), &mut rng);
    let mut times = (options.days > 0).then(|| EventTimes::new(options.days, options.rows, options.seed));
    for row in 0..options.rows {
        let product = Product::draw(row, options.seed, &mut rng, &ids, &weights);
        product.write_csv(w)?;
        if let Some(times) = times.as_mut() {
            write!(w, ",{}", format_minute(times.next_minute()))?;
        }
        writeln!(w)?;
    }
    Ok(())
}

/// Minutes since the Unix epoch of the end of the event-time span, 2023-12-31 00:00 UTC.
const SPAN_END_MINUTE: i64 = 19_722 * MINUTES_PER_DAY;
const MINUTES_PER_DAY: i64 = 1_440;
/// Share of the rows that are late stragglers.
const STRAGGLER_SHARE: f64 = 0.002;
/// How far most rows lie behind their ideal time, in minutes.
const JITTER_MINUTES: (f64, f64) = (0.0, 4.0);
/// How far a straggler lies behind its ideal time, in minutes.
const STRAGGLER_MINUTES: (f64, f64) = (20.0, 90.0);

/// The event times of the rows in order: the density's quantiles, found by walking
/// its per-minute weights once, minus a jitter (see the crate documentation).
struct EventTimes {
    rng: SplitMix64,
    rows: u64,
    row: u64,
    /// Minutes in the span.
    minutes: i64,
    start: i64,
    daily: Vec<f64>,
    total: f64,
    /// The minute (from `start`) the walk is at, and the weight of the minutes before it.
    minute: i64,
    before: f64,
}

impl EventTimes {
    fn new(days: u32, rows: u64, seed: u64) -> Self {
        let minutes = i64::from(days) * MINUTES_PER_DAY;
        let start = SPAN_END_MINUTE - minutes;
        let daily: Vec<f64> = (0..MINUTES_PER_DAY).map(|m| daily_weight((m as f64 + 0.5) / 60.0)).collect();
        let mut times = Self { rng: SplitMix64::new(seed ^ 0xDA_7E0F_E7E7), rows, row: 0, minutes, start, daily, total: 0.0, minute: 0, before: 0.0 };
        // Summed in the same order as the walk adds them, so the walk ends on the last minute.
        times.total = (0..minutes).map(|m| times.weight(m)).sum();
        times
    }

    /// The density of minute `m` of the span (starts are at midnight: `m % 1440` is the minute of the day).
    fn weight(&self, m: i64) -> f64 {
        let weekday = (self.start + m).div_euclid(MINUTES_PER_DAY).rem_euclid(7); // 0 = Thursday, 1970-01-01
        let weekend = if weekday == 2 || weekday == 3 { 1.25 } else { 1.0 };
        self.daily[m.rem_euclid(MINUTES_PER_DAY) as usize] * weekend
    }

    /// The next row's event time, in minutes since the Unix epoch.
    fn next_minute(&mut self) -> i64 {
        let target = (self.row as f64 + 0.5) / self.rows as f64 * self.total;
        self.row += 1;
        while self.minute < self.minutes - 1 && self.before + self.weight(self.minute) <= target {
            self.before += self.weight(self.minute);
            self.minute += 1;
        }
        let within = ((target - self.before) / self.weight(self.minute)).clamp(0.0, 1.0);
        let ideal = self.minute as f64 + within;
        let (low, high) = if self.rng.unit() < STRAGGLER_SHARE { STRAGGLER_MINUTES } else { JITTER_MINUTES };
        let behind = low + (high - low) * self.rng.unit();
        self.start + ((ideal - behind).round() as i64).clamp(0, self.minutes)
    }
}

/// The daily shape at `hour` (0..24): 1 − 0.6·cos(φ), φ rising from 0 at 04:00 to π
/// at 20:00 over 16 hours and back to 2π at 04:00 over 8: 0.4 at 04:00, 1.6 at 20:00,
/// with a continuous slope at both turns.
fn daily_weight(hour: f64) -> f64 {
    let since_quiet = (hour - 4.0).rem_euclid(24.0);
    let phase =
        if since_quiet <= 16.0 { std::f64::consts::PI * since_quiet / 16.0 } else { std::f64::consts::PI * (1.0 + (since_quiet - 16.0) / 8.0) };
    1.0 - 0.6 * phase.cos()
}

/// `%d/%m/%Y %H:%M` of a minute since the Unix epoch (UTC).
fn format_minute(minute: i64) -> String {
    let (day, of_day) = (minute.div_euclid(MINUTES_PER_DAY), minute.rem_euclid(MINUTES_PER_DAY));
    let (y, m, d) = civil_from_days(day);
    format!("{d:02}/{m:02}/{y:04} {:02}:{:02}", of_day / 60, of_day % 60)
}

/// The proleptic Gregorian date of a day since 1970-01-01 (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Zipf-like category sizes (a few huge categories, a long tail), in shuffled order.
fn category_weights(n: usize, rng: &mut SplitMix64) -> Vec<f64> {
    let mut ranks: Vec<usize> = (1..=n).collect();
    for i in (1..n).rev() {
        ranks.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let weights: Vec<f64> = ranks.iter().map(|&r| 1.0 / (r as f64).powf(0.5)).collect();
    let total: f64 = weights.iter().sum();
    let mut cumulative = 0.0;
    weights
        .iter()
        .map(|w| {
            cumulative += w / total;
            cumulative
        })
        .collect()
}

struct Product {
    asin: String,
    title: String,
    image: String,
    stars: f64,
    reviews: u64,
    price: f64,
    list_price: f64,
    category_id: u32,
    best_seller: bool,
    bought: u32,
}

impl Product {
    fn draw(row: u64, seed: u64, rng: &mut SplitMix64, ids: &[u32], cumulative: &[f64]) -> Self {
        let asin = asin(row, seed);
        let u = rng.unit();
        let category_id = ids[cumulative.partition_point(|&c| c < u).min(ids.len() - 1)];
        let price = if rng.unit() < 0.02 { 0.0 } else { lognormal(rng, 19.95f64.ln(), 0.815).clamp(0.01, 19_731.81) };
        let price = (price * 100.0).round() / 100.0;
        let list_price = if price > 0.0 && rng.unit() < 0.24 { ((price * (1.1 + 0.5 * rng.unit())) * 100.0).round() / 100.0 } else { 0.0 };
        let reviews = if rng.unit() < 0.793 { 0 } else { lognormal(rng, 4.5, 1.9).min(346_563.0) as u64 + 1 };
        let stars = if rng.unit() < 0.09 { 0.0 } else { ((4.4 + 0.35 * rng.normal()).clamp(1.0, 5.0) * 10.0).round() / 10.0 };
        let best_seller = rng.unit() < 0.006;
        let bought = if rng.unit() < 0.62 { 0 } else { weighted_level(rng) };
        let title = title(rng, row);
        let image = format!("https://m.media-amazon.com/images/I/{}._AC_UL320_.jpg", image_id(rng));
        Self { asin, title, image, stars, reviews, price, list_price, category_id, best_seller, bought }
    }

    /// Writes the row's columns, without the line end.
    fn write_csv(&self, w: &mut impl Write) -> std::io::Result<()> {
        let title = if self.title.contains(',') { format!("\"{}\"", self.title) } else { self.title.clone() };
        write!(
            w,
            "{},{},{},https://www.amazon.com/dp/{},{:?},{},{:?},{:?},{},{},{}",
            self.asin,
            title,
            self.image,
            self.asin,
            self.stars,
            self.reviews,
            self.price,
            self.list_price,
            self.category_id,
            if self.best_seller { "True" } else { "False" },
            self.bought
        )
    }
}

fn asin(row: u64, seed: u64) -> String {
    // A bijection of the row number keeps ASINs unique without a set.
    let mixed = (row.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ seed.rotate_left(17)) % 36u64.pow(9);
    let mut digits = [b'0'; 9];
    let mut n = mixed;
    for d in digits.iter_mut().rev() {
        *d = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"[(n % 36) as usize];
        n /= 36;
    }
    format!("B{}", std::str::from_utf8(&digits).expect("ASCII digits"))
}

fn title(rng: &mut SplitMix64, row: u64) -> String {
    let pick = |rng: &mut SplitMix64, words: &[&'static str]| words[rng.below(words.len() as u64) as usize];
    let (brand, adjective, noun, color) = (pick(rng, &BRANDS), pick(rng, &ADJECTIVES), pick(rng, &NOUNS), pick(rng, &COLORS));
    let size = 5 + rng.below(60);
    match row % 3 {
        0 => format!("{brand} {adjective} {noun} for Men and Women, {color}, {size}-Inch, Model {row}"),
        1 => format!("{brand} {noun} {adjective} Design with Storage Pocket {color} Pack of {} Model {row}", 1 + size % 6),
        _ => format!("{adjective} {noun} by {brand} - {color} - Gift Set {size} Pieces Model {row}"),
    }
}

fn image_id(rng: &mut SplitMix64) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+-";
    (0..11).map(|_| ALPHABET[rng.below(ALPHABET.len() as u64) as usize] as char).collect()
}

fn weighted_level(rng: &mut SplitMix64) -> u32 {
    let total: u32 = BOUGHT_LEVELS.iter().map(|(_, w)| w).sum();
    let mut pick = rng.below(total as u64) as u32;
    for (level, weight) in BOUGHT_LEVELS {
        if pick < weight {
            return level;
        }
        pick -= weight;
    }
    BOUGHT_LEVELS[0].0
}

fn lognormal(rng: &mut SplitMix64, mu: f64, sigma: f64) -> f64 {
    (mu + sigma * rng.normal()).exp()
}

/// SplitMix64: tiny, fast, and stable across platforms and crate versions.
struct SplitMix64(u64);

impl SplitMix64 {
    fn new(seed: u64) -> Self {
        Self(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Standard normal (Box-Muller).
    fn normal(&mut self) -> f64 {
        let u1 = self.unit().max(f64::MIN_POSITIVE);
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn has_the_real_category_id_set() {
        let ids = category_ids();
        assert_eq!(ids.len(), 248);
        assert_eq!((ids[0], ids[247]), (1, 270));
    }

    #[test]
    fn is_deterministic_and_fits_the_reference_quartiles() {
        let dir = tempfile::tempdir().unwrap();
        let run = |seed| {
            let out = dir.path().join(format!("s{seed}"));
            generate(&GenOptions { rows: 20_000, seed, days: 0, out: out.clone() }).unwrap();
            std::fs::read_to_string(out.join("products.csv")).unwrap()
        };
        let (a, b) = (run(1), run(1));
        assert_eq!(a, b);
        assert_ne!(a, run(2));
        let mut prices: Vec<f64> = a.lines().skip(1).map(|l| l.rsplit(',').nth(4).unwrap().parse().unwrap()).collect();
        let unpriced = prices.iter().filter(|p| **p == 0.0).count() as f64 / prices.len() as f64;
        assert!((0.01..0.03).contains(&unpriced), "unpriced share {unpriced}");
        prices.retain(|p| *p > 0.0);
        prices.sort_by(f64::total_cmp);
        let q = |f: f64| prices[(f * prices.len() as f64) as usize];
        assert!((10.5..13.5).contains(&q(0.25)), "p25 {}", q(0.25));
        assert!((18.0..22.0).contains(&q(0.5)), "p50 {}", q(0.5));
        assert!((32.0..40.0).contains(&q(0.75)), "p75 {}", q(0.75));
    }

    const OLD_HEADER: &str = "asin,title,imgUrl,productURL,stars,reviews,price,listPrice,category_id,isBestSeller,boughtInLastMonth";

    fn products(rows: u64, seed: u64, days: u32) -> String {
        let dir = tempfile::tempdir().unwrap();
        generate(&GenOptions { rows, seed, days, out: dir.path().to_path_buf() }).unwrap();
        std::fs::read_to_string(dir.path().join("products.csv")).unwrap()
    }

    /// `%d/%m/%Y %H:%M` back to (day since the epoch, minute of the day), checking each field.
    fn parse_date(date: &str) -> (i64, i64) {
        let (day_month_year, hour_minute) = date.split_once(' ').unwrap_or_else(|| panic!("no time in {date:?}"));
        let dmy: Vec<&str> = day_month_year.split('/').collect();
        let hm: Vec<&str> = hour_minute.split(':').collect();
        assert_eq!((dmy.len(), hm.len()), (3, 2), "{date:?}");
        assert_eq!([dmy[0].len(), dmy[1].len(), dmy[2].len(), hm[0].len(), hm[1].len()], [2, 2, 4, 2, 2], "{date:?}");
        let num = |s: &str| s.parse::<i64>().unwrap_or_else(|_| panic!("{s:?} in {date:?}"));
        let (d, m, y, hour, minute) = (num(dmy[0]), num(dmy[1]), num(dmy[2]), num(hm[0]), num(hm[1]));
        assert!(hour < 24 && minute < 60, "{date:?}");
        // The day number by the inverse algorithm; the generator's calendar must give the fields back.
        let (yy, mm) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
        let era = yy.div_euclid(400);
        let yoe = yy.rem_euclid(400);
        let day = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + (153 * mm + 2) / 5 + d - 1 - 719_468;
        assert_eq!(civil_from_days(day), (y, m as u32, d as u32), "no such day {date:?}");
        (day, hour * 60 + minute)
    }

    fn minutes(file: &str) -> Vec<i64> {
        file.lines()
            .skip(1)
            .map(|line| {
                let (day, of_day) = parse_date(line.rsplit(',').next().unwrap());
                day * MINUTES_PER_DAY + of_day
            })
            .collect()
    }

    #[test]
    fn the_calendar_matches_known_days() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_722), (2023, 12, 31));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(format_minute(SPAN_END_MINUTE), "31/12/2023 00:00");
        assert_eq!(format_minute(SPAN_END_MINUTE - 1), "30/12/2023 23:59");
        // 2023-12-30 was a Saturday: the weekend weight applies from its midnight.
        let times = EventTimes::new(2, 1, 0);
        assert_eq!((times.weight(0), times.weight(MINUTES_PER_DAY)), (times.daily[0], times.daily[0] * 1.25));
    }

    #[test]
    fn dates_parse_and_lie_in_the_span() {
        let file = products(20_000, 11, 30);
        assert_eq!(file.lines().next().unwrap(), format!("{OLD_HEADER},date"));
        let times = minutes(&file);
        assert_eq!(times.len(), 20_000);
        let (start, end) = (SPAN_END_MINUTE - 30 * MINUTES_PER_DAY, SPAN_END_MINUTE);
        assert!(times.iter().all(|t| (start..=end).contains(t)));
        // The span is used from end to end.
        assert!(times.iter().min().unwrap() - start < 60 && end - times.iter().max().unwrap() < 10);
        assert_eq!(file.lines().nth(1).unwrap().rsplit(',').next().unwrap().len(), "31/12/2023 00:00".len());
    }

    #[test]
    fn rows_are_nearly_in_time_order_with_a_few_stragglers() {
        let times = minutes(&products(20_000, 12, 30));
        let mut running_max = times[0];
        let mut late = 0;
        for &t in &times {
            if t < running_max - 10 {
                late += 1;
            }
            running_max = running_max.max(t);
        }
        let share = late as f64 / times.len() as f64;
        assert!((0.0005..=0.005).contains(&share), "{late} rows more than 10 minutes late: {share}");
        // Everything else is at most a few minutes out of order.
        let mut running_max = times[0];
        let behind: Vec<i64> = times
            .iter()
            .map(|&t| {
                running_max = running_max.max(t);
                running_max - t
            })
            .collect();
        assert!(behind.iter().filter(|&&b| b > 5).count() == late, "only stragglers are more than 5 minutes behind");
    }

    #[test]
    fn evenings_are_busier_than_nights_and_weekends_than_weekdays() {
        let times = minutes(&products(20_000, 13, 28));
        let hour = |t: i64| t.rem_euclid(MINUTES_PER_DAY) / 60;
        let evening = times.iter().filter(|&&t| (18..22).contains(&hour(t))).count();
        let night = times.iter().filter(|&&t| (2..6).contains(&hour(t))).count();
        assert!(evening > 2 * night, "18:00-22:00 {evening} rows, 02:00-06:00 {night} rows");
        // 4 weeks: 8 weekend days against 20 weekdays, 1.25 times as dense.
        let weekend = times.iter().filter(|&&t| matches!(t.div_euclid(MINUTES_PER_DAY).rem_euclid(7), 2 | 3)).count() as f64;
        let per_day_ratio = (weekend / 8.0) / ((times.len() as f64 - weekend) / 20.0);
        assert!((1.15..1.35).contains(&per_day_ratio), "weekend/weekday rows per day {per_day_ratio}");
    }

    #[test]
    fn no_days_is_the_old_format_and_days_only_add_the_last_column() {
        let old = products(5_000, 14, 0);
        assert_eq!(old.lines().next().unwrap(), OLD_HEADER);
        assert!(old.lines().all(|l| !l.contains("/2023 ")));
        let dated = products(5_000, 14, 30);
        assert_eq!(dated, products(5_000, 14, 30), "byte-identical per seed, rows and days");
        assert_ne!(dated, products(5_000, 14, 31));
        for (a, b) in old.lines().zip(dated.lines()).skip(1) {
            assert_eq!(Some(a), b.rsplit_once(',').map(|(rest, _)| rest));
        }
        assert_eq!(old.lines().count(), dated.lines().count());
    }

    #[test]
    fn refuses_an_absurd_span() {
        let dir = tempfile::tempdir().unwrap();
        let options = GenOptions { rows: 1, seed: 0, days: MAX_DAYS + 1, out: dir.path().to_path_buf() };
        assert!(matches!(generate(&options), Err(GenError::TooManyDays(_))));
    }
}
