//! `trendflow gen`: writes generated products and categories files.

use std::path::PathBuf;

use anyhow::Result;
use trendflow_datagen::GenOptions;

/// The flags of `trendflow gen` (its help text is the doc comment of `Command::Gen`).
#[derive(clap::Args)]
pub struct GenArgs {
    /// Number of products.
    #[arg(long, default_value_t = 1_426_337)]
    rows: u64,
    /// Seed; the same seed (with the same rows and days) gives the same files.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Days of event time: each product gets a last column `date` (`%d/%m/%Y %H:%M`, UTC)
    /// in the N days that end at 2023-12-31 00:00, rows roughly in time order; busiest
    /// at 20:00, quietest at 04:00, weekends 25% busier; each row 0-4 minutes behind its
    /// place in that order, and about 0.2% of rows late stragglers 20-90 minutes behind
    /// (late behind a 10-minute watermark delay). 0 writes no `date` column (the old format).
    #[arg(long, default_value_t = 30)]
    days: u32,
    /// Output directory.
    #[arg(long, default_value = "data/generated")]
    out: PathBuf,
}

pub fn gen(args: GenArgs) -> Result<()> {
    let summary = trendflow_datagen::generate(&GenOptions { rows: args.rows, seed: args.seed, days: args.days, out: args.out })?;
    println!("wrote {} products to {} and categories to {}", summary.rows, summary.products.display(), summary.categories.display());
    Ok(())
}
