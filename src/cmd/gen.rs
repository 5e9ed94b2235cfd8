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
    /// Seed; the same seed gives the same files.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Output directory.
    #[arg(long, default_value = "data/generated")]
    out: PathBuf,
}

pub fn gen(args: GenArgs) -> Result<()> {
    let summary = trendflow_datagen::generate(&GenOptions { rows: args.rows, seed: args.seed, out: args.out })?;
    println!("wrote {} products to {} and categories to {}", summary.rows, summary.products.display(), summary.categories.display());
    Ok(())
}
