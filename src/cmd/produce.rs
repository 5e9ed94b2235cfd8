//! `trendflow produce`: replays a file into a Kafka topic as records of a stream.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use trendflow_connectors::kafka::{self, RecordProducer, ReplaySummary};
use trendflow_engine::catalog::Catalog;
use trendflow_engine::contract::StreamDecl;

use super::args::PipelineArgs;
use super::common::progress_bar;

/// The flags of `trendflow produce` (its help text is the doc comment of `Command::Produce`).
#[derive(clap::Args)]
pub struct ProduceArgs {
    #[command(flatten)]
    pipeline: PipelineArgs,
    /// The file to replay.
    #[arg(long)]
    file: PathBuf,
    /// Topic to write (default: the stream's LOCATION).
    #[arg(long)]
    topic: Option<String>,
    /// Stream whose schema the records follow (default: the one declared on --topic,
    /// or the only stream).
    #[arg(long)]
    stream: Option<String>,
    /// Records per second (default: as fast as the brokers take them).
    #[arg(long)]
    rate: Option<f64>,
    /// Partitions of the topic when it has to be created.
    #[arg(long, env = "TRENDFLOW_KAFKA_PARTITIONS", default_value_t = 4)]
    partitions: i32,
}

pub async fn produce(args: ProduceArgs) -> Result<()> {
    let brokers = args.pipeline.brokers("produce")?;
    if args.rate.is_some_and(|r| r.is_nan() || r <= 0.0) {
        bail!("--rate must be a positive number of records per second");
    }
    let streams = Catalog::load_streams(&args.pipeline.sql).await?;
    let stream = pick_stream(&streams, args.stream.as_deref(), args.topic.as_deref(), &args.file)?;
    let topic = args.topic.clone().unwrap_or_else(|| stream.location.clone());
    kafka::ensure_topic(brokers, &topic, args.partitions).await?;
    let producer = RecordProducer::new(brokers)?;
    let progress = progress_bar();
    let dead_letters = args.pipeline.state.join("dead_letters");
    let mut on_progress = |n: u64| progress.set_position(n);
    let summary = kafka::replay_file(stream, args.file.clone(), &dead_letters, &producer, &topic, args.rate, &mut on_progress).await?;
    progress.finish_and_clear();
    print_summary(&summary, &args.file, &topic, &dead_letters);
    Ok(())
}

/// The stream records are for: named, else declared on `topic`, else the only one, else
/// the only one whose PRIMARY KEY columns the file's first line (a CSV header, a JSON
/// object) names.
fn pick_stream<'a>(streams: &'a [StreamDecl], name: Option<&str>, topic: Option<&str>, file: &Path) -> Result<&'a StreamDecl> {
    let names = || streams.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ");
    if let Some(name) = name {
        return streams.iter().find(|s| s.name == name).with_context(|| format!("no stream `{name}` is declared (streams: {})", names()));
    }
    if let Some(found) = topic.and_then(|t| streams.iter().find(|s| s.location == t)) {
        return Ok(found);
    }
    if let [only] = streams {
        return Ok(only);
    }
    let first_line = std::fs::File::open(file).ok().and_then(|f| std::io::BufRead::lines(std::io::BufReader::new(f)).next()).and_then(|l| l.ok());
    let names_key = |s: &&StreamDecl| {
        let line = first_line.as_deref().unwrap_or_default();
        !s.primary_key.is_empty() && s.primary_key.iter().all(|&k| mentions(line, s.payload_schema.field(k).name()))
    };
    match streams.iter().filter(names_key).collect::<Vec<_>>().as_slice() {
        [only] => Ok(only),
        _ => bail!("several streams are declared ({}): pick one with --stream", names()),
    }
}

/// True when a CSV header or JSON object line names `column` as a field.
fn mentions(line: &str, column: &str) -> bool {
    line.split(|c: char| c == ',' || c == '"' || c == ':' || c == '{' || c == '}' || c.is_whitespace()).any(|field| field == column)
}

fn print_summary(summary: &ReplaySummary, file: &Path, topic: &str, dead_letters: &Path) {
    let secs = summary.elapsed.as_secs_f64().max(1e-9);
    println!(
        "produced {} records from {} to topic `{topic}` in {secs:.2} s ({:.0} records/s), {} rejected{}",
        summary.records,
        file.display(),
        summary.records as f64 / secs,
        summary.rejected,
        if summary.rejected > 0 { format!(" (see {})", dead_letters.display()) } else { String::new() }
    );
}
