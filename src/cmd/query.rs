//! `trendflow query`: runs ad-hoc SQL over the current views and reference tables.

use std::io::Write;

use anyhow::Result;
use clap::ValueEnum;
use datafusion::arrow::csv::WriterBuilder;
use datafusion::arrow::json::LineDelimitedWriter;
use datafusion::arrow::util::pretty::pretty_format_batches;

use super::args::{MongoArgs, PipelineArgs};
use super::common::stored_views_context;

/// The flags of `trendflow query` (its help text is the doc comment of `Command::Query`).
#[derive(clap::Args)]
pub struct QueryArgs {
    /// The SQL to run.
    sql_text: String,
    #[command(flatten)]
    pipeline: PipelineArgs,
    /// With --mongodb-uri, views are read from MongoDB instead of the state directory.
    #[command(flatten)]
    mongo: MongoArgs,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Csv,
    Json,
}

pub async fn query(args: QueryArgs) -> Result<()> {
    let ctx = stored_views_context(&args.pipeline, &args.mongo).await?;
    let batches = ctx.sql(&args.sql_text).await?.collect().await?;
    let mut out = std::io::stdout().lock();
    match args.format {
        Format::Table => writeln!(out, "{}", pretty_format_batches(&batches)?)?,
        Format::Csv => {
            let mut writer = WriterBuilder::new().with_header(true).build(&mut out);
            batches.iter().try_for_each(|b| writer.write(b))?;
        }
        Format::Json => {
            let mut writer = LineDelimitedWriter::new(&mut out);
            batches.iter().try_for_each(|b| writer.write(b))?;
            writer.finish()?;
        }
    }
    Ok(())
}
