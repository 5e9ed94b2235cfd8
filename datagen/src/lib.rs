//! # trendflow-datagen
//!
//! Writes `products.csv` and `categories.csv` in the exact format of the
//! Amazon Products 2023 dataset (same columns and order, `True`/`False`,
//! zeros for missing values), with distributions fitted to the full dataset's
//! published statistics: price quartiles 11.99 / 19.95 / 35.99 with 2 % unpriced,
//! 79 % of products without reviews, 0.6 % best sellers, 248 category ids
//! between 1 and 270 with the real gaps, skewed category sizes. Names are
//! synthetic. Output depends only on the row count and the seed.
//!
//! ```
//! let dir = tempfile::tempdir().unwrap();
//! let summary = trendflow_datagen::generate(&trendflow_datagen::GenOptions {
//!     rows: 1_000, seed: 7, out: dir.path().to_path_buf(),
//! }).unwrap();
//! assert_eq!(summary.rows, 1_000);
//! assert!(dir.path().join("products.csv").exists());
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
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenOptions {
    /// Number of products.
    pub rows: u64,
    /// Seed: the same seed and row count give byte-identical files.
    pub seed: u64,
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
    writeln!(w, "asin,title,imgUrl,productURL,stars,reviews,price,listPrice,category_id,isBestSeller,boughtInLastMonth")?;
    let mut rng = SplitMix64::new(options.seed);
    let ids = category_ids();
    let weights = category_weights(ids.len(), &mut rng);
    for row in 0..options.rows {
        let product = Product::draw(row, options.seed, &mut rng, &ids, &weights);
        product.write_csv(w)?;
    }
    Ok(())
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

    fn write_csv(&self, w: &mut impl Write) -> std::io::Result<()> {
        let title = if self.title.contains(',') { format!("\"{}\"", self.title) } else { self.title.clone() };
        writeln!(
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
            generate(&GenOptions { rows: 20_000, seed, out: out.clone() }).unwrap();
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
}
