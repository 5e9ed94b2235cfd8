//! `trendflow-bench`: the in-process measurements of `scripts/bench.sh`.
//!
//! - `engine`: Kafka-shaped JSON messages (one NDJSON line each, held in memory)
//!   decoded and pushed through every shipped view with no sink (products declared an
//!   append stream and categories a reference table: the append-only figure), as
//!   `trendflow run` does it (the next micro-batch decoded while the views take in the
//!   current one) and in one stage (decode, then views, in turn), against
//!   arrow-json decoding of the same messages alone (the physical limit the engine
//!   sits on), and against decoding the same records as Confluent-framed Avro.
//!   Prints one JSON object with the timings.
//! - `groups`: group scaling and checkpoint cost. The shipped views alone, then with a
//!   per-ASIN view (one group per product), over the same messages in micro-batches of
//!   5,000 with a checkpoint every 20; then the bytes and time of a full checkpoint of
//!   every group against a delta checkpoint after one more micro-batch.
//! - `changelog`: the shipped pipeline on changing data: every product inserted, then as
//!   many updates (price changes of random ASINs, 1 % deletes), with the categories fed
//!   first, run as `trendflow run` goes; records/s of each phase and the peak RSS, with
//!   every product live.
//! - `consume`: a consume-only rdkafka client reading a whole topic with the same
//!   fetch settings as trendflow's source, and no fetch back-off (see `consume`):
//!   the broker-bound baseline.

// The figures are the standard output, read by bench/run.py.
#![allow(clippy::print_stdout)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{Offset, TopicPartitionList};
use trendflow_connectors::decode::{changelog_key, decode_parsed, parse_records, with_metadata, AvroDecoder, RecordFormat, RecordOrigin};
use trendflow_connectors::kafka::{client_config, partition_count, RecordEncoder};
use trendflow_engine::catalog::Catalog;
use trendflow_engine::contract::{MicroBatch, Offsets, Poll, Source, StreamDecl};
use trendflow_engine::fan_out::FanOut;
use trendflow_engine::runtime::{Pipeline, RunOptions, RunSummary, StepReport};
use trendflow_engine::session::incremental_session_config;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Engine throughput against decoding alone, over NDJSON messages.
    Engine {
        #[command(flatten)]
        input: Input,
        /// Messages per micro-batch.
        #[arg(long, default_value_t = 50_000)]
        batch: usize,
    },
    /// Group scaling and checkpoint cost, over NDJSON messages.
    Groups {
        #[command(flatten)]
        input: Input,
        /// Messages per micro-batch.
        #[arg(long, default_value_t = 5_000)]
        batch: usize,
        /// Micro-batches between checkpoints.
        #[arg(long, default_value_t = 20)]
        checkpoint_every: usize,
    },
    /// The shipped pipeline over inserts then updates and deletes of the same products.
    Changelog {
        #[command(flatten)]
        input: Input,
        /// Messages per micro-batch.
        #[arg(long, default_value_t = 50_000)]
        batch: usize,
    },
    /// Reads a whole topic and discards it.
    Consume {
        #[arg(long)]
        brokers: String,
        #[arg(long)]
        topic: String,
    },
}

/// The messages and the shipped pipeline they go through.
#[derive(clap::Args)]
struct Input {
    /// One JSON message per line.
    #[arg(long)]
    messages: PathBuf,
    /// The shipped pipeline's SQL.
    #[arg(long, default_value = "sql")]
    sql: PathBuf,
    /// File for the `categories` reference table.
    #[arg(long)]
    categories: PathBuf,
}

impl Input {
    fn read(&self) -> Result<Vec<u8>> {
        std::fs::read(&self.messages).with_context(|| format!("reading {}", self.messages.display()))
    }

    fn bindings(&self) -> HashMap<String, String> {
        HashMap::from([("categories".to_string(), self.categories.display().to_string())])
    }

    /// The shipped pipeline with `products` an append stream and `categories` a reference
    /// table read from `--categories` (the append-only figures), in `dir`.
    fn append_only(&self, dir: &std::path::Path) -> Result<PathBuf> {
        for entry in std::fs::read_dir(&self.sql)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "sql") {
                std::fs::copy(&path, dir.join(path.file_name().expect("a file name")))?;
            }
        }
        let sources = dir.join("01_sources.sql");
        let text = std::fs::read_to_string(&sources)?;
        let start = text.find("CREATE EXTERNAL TABLE categories").context("the shipped SQL declares categories")?;
        let upsert = "'changelog' 'upsert',";
        anyhow::ensure!(text[..start].matches(upsert).count() == 1, "the shipped products OPTIONS changed: update the benchmark");
        let products = text[..start].replacen(upsert, "", 1);
        let categories = "CREATE EXTERNAL TABLE categories (id INT NOT NULL, category_name VARCHAR) STORED AS CSV \
                          LOCATION 'categories.csv' OPTIONS ('format.has_header' 'true');\n";
        std::fs::write(&sources, products + categories)?;
        Ok(dir.to_path_buf())
    }
}

fn main() -> Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    match Cli::parse().command {
        Command::Engine { input, batch } => runtime.block_on(engine(&input, batch)),
        Command::Groups { input, batch, checkpoint_every } => runtime.block_on(groups(&input, batch, checkpoint_every)),
        Command::Changelog { input, batch } => runtime.block_on(changelog(&input, batch)),
        Command::Consume { brokers, topic } => runtime.block_on(consume(&brokers, &topic)),
    }
}

async fn engine(input: &Input, batch: usize) -> Result<()> {
    let text = input.read()?;
    let records = lines(&text);
    let sql = tempfile::tempdir()?;
    let sql = input.append_only(sql.path())?;
    let bindings = input.bindings();
    let catalog = || Catalog::load(std::slice::from_ref(&sql), incremental_session_config(), &bindings);
    let stream = catalog().await?.streams()[0].clone();

    let started = Instant::now();
    let mut decoded_rows = 0;
    for chunk in records.chunks(batch) {
        decoded_rows += parse_records(RecordFormat::Json, &stream.payload_schema, chunk, stream.options.max_record_bytes).batch.num_rows();
    }
    let decode_seconds = started.elapsed().as_secs_f64();

    // One stage: each micro-batch decoded, then taken in by the views, in turn.
    let state = tempfile::tempdir()?;
    let mut pipeline = Pipeline::compile(catalog().await?, state.path().to_path_buf()).await?;
    let mut sink = FanOut::new(vec![]);
    let started = Instant::now();
    let mut offset = 0i64;
    for chunk in records.chunks(batch) {
        let micro = micro_batch(&stream, chunk, &mut offset)?;
        pipeline.step(vec![(stream.name.clone(), micro)], &mut sink).await?;
    }
    let one_stage_seconds = started.elapsed().as_secs_f64();

    // Two stages, as `trendflow run` goes: the next micro-batch decoded while the views
    // take in the current one (and one checkpoint, at the end).
    let state = tempfile::tempdir()?;
    let mut pipeline = Pipeline::compile(catalog().await?, state.path().to_path_buf()).await?;
    let source = MessageSource::new(stream.clone(), records.iter().map(|r| r.to_vec()).collect());
    let started = Instant::now();
    // To the last micro-batch taken in, as the loop above: without the final checkpoint.
    let mut engine_seconds = 0.0;
    let summary = run_to_end(&mut pipeline, vec![Box::new(source)], batch, &mut |_| engine_seconds = started.elapsed().as_secs_f64()).await?;
    anyhow::ensure!(summary.rows == records.len() as u64, "the run took in {} of {} messages", summary.rows, records.len());

    let (avro_decoded, avro_decode_seconds) = avro_decoding(&records, &stream, batch)?;
    let out = serde_json::json!({
        "messages": records.len(), "decoded": decoded_rows, "decode_seconds": decode_seconds, "engine_seconds": engine_seconds,
        "one_stage_seconds": one_stage_seconds, "avro_decoded": avro_decoded, "avro_decode_seconds": avro_decode_seconds,
    });
    println!("{out}");
    Ok(())
}

/// Messages held in memory as a source: micro-batches decoded as they are polled, as
/// the Kafka source decodes them; before them, optionally, one micro-batch as it is.
struct MessageSource {
    stream: StreamDecl,
    first: Option<MicroBatch>,
    messages: Vec<Vec<u8>>,
    /// The next message to serve.
    next: usize,
    offset: i64,
}

impl MessageSource {
    fn new(stream: StreamDecl, messages: Vec<Vec<u8>>) -> Self {
        Self { stream, first: None, messages, next: 0, offset: 0 }
    }

    /// A source that serves just `batch`.
    fn once(stream: StreamDecl, batch: MicroBatch) -> Self {
        Self { first: Some(batch), ..Self::new(stream, Vec::new()) }
    }
}

#[async_trait::async_trait]
impl Source for MessageSource {
    fn stream(&self) -> &str {
        &self.stream.name
    }

    async fn poll(&mut self, max_rows: usize, _max_delay: Duration) -> trendflow_engine::Result<Poll> {
        if let Some(first) = self.first.take() {
            return Ok(Poll::Batch(first));
        }
        let end = (self.next + max_rows).min(self.messages.len());
        if self.next == end {
            return Ok(Poll::Finished);
        }
        let chunk: Vec<&[u8]> = self.messages[self.next..end].iter().map(Vec::as_slice).collect();
        let micro = micro_batch(&self.stream, &chunk, &mut self.offset)
            .map_err(|e| trendflow_engine::error::EngineError::Source { source_name: self.stream.name.clone(), cause: e.into() })?;
        self.next = end;
        Ok(Poll::Batch(micro))
    }

    async fn seek(&mut self, _offsets: &Offsets) -> trendflow_engine::Result<()> {
        Ok(())
    }
}

/// Runs `pipeline` over `sources` as `trendflow run` does (one checkpoint, at the end),
/// in micro-batches of `batch`; `on_step` sees each micro-batch's report.
async fn run_to_end(
    pipeline: &mut Pipeline,
    sources: Vec<Box<dyn Source>>,
    batch: usize,
    on_step: &mut (dyn FnMut(&StepReport) + Send),
) -> Result<RunSummary> {
    let options = RunOptions { max_rows: batch, checkpoint_interval: Duration::MAX, until_idle: true, ..RunOptions::default() };
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    Ok(pipeline.run(sources, &mut FanOut::new(vec![]), &options, shutdown, on_step).await?)
}

/// The messages of an NDJSON file: its non-empty lines.
fn lines(text: &[u8]) -> Vec<&[u8]> {
    text.split(|b| *b == b'\n').filter(|l| !l.is_empty()).collect()
}

/// Decodes `chunk` into a micro-batch the way the Kafka source does, with offsets from `offset` on.
fn micro_batch(stream: &StreamDecl, chunk: &[&[u8]], offset: &mut i64) -> Result<MicroBatch> {
    let decoded = decode_parsed(
        parse_records(RecordFormat::Json, &stream.payload_schema, chunk, stream.options.max_record_bytes),
        &stream.payload_schema,
        changelog_key(stream),
    )?;
    let rows = decoded.batch.num_rows();
    let origin = RecordOrigin {
        partitions: vec![0; rows],
        offsets: (*offset..*offset + rows as i64).collect(),
        timestamps: decoded.arrivals.iter().enumerate().map(|(i, t)| t.unwrap_or(*offset + i as i64)).collect(),
        keys: None,
    };
    *offset += rows as i64;
    Ok(MicroBatch::new(with_metadata(stream, &decoded.batch, origin)?, &decoded.deleted, Default::default(), 0))
}

/// The view whose groups grow with the data: one per product.
const PER_ASIN_VIEW: &str =
    "CREATE VIEW per_asin AS SELECT asin, COUNT(*) AS n, AVG(price) AS avg_price, MAX(price) AS max_price FROM products GROUP BY asin;\n";

async fn groups(input: &Input, batch: usize, checkpoint_every: usize) -> Result<()> {
    let text = input.read()?;
    let records = lines(&text);
    let bindings = input.bindings();
    let shipped = tempfile::tempdir()?;
    let shipped = input.append_only(shipped.path())?;
    let with_per_asin = tempfile::tempdir()?;
    input.append_only(with_per_asin.path())?;
    std::fs::write(with_per_asin.path().join("99_per_asin.sql"), PER_ASIN_VIEW)?;
    let pipeline = |sql: PathBuf| {
        let bindings = &bindings;
        async move {
            let catalog = Catalog::load(&[sql], incremental_session_config(), bindings).await?;
            let state = tempfile::tempdir()?;
            let pipeline = Pipeline::compile(catalog, state.path().to_path_buf()).await?;
            anyhow::Ok((pipeline, state))
        }
    };
    let mut runs = serde_json::Map::new();
    for (name, sql) in [("shipped", shipped.clone()), ("with_per_asin", with_per_asin.path().to_path_buf())] {
        let (mut pipeline, _state) = pipeline(sql).await?;
        runs.insert(name.into(), timed_run(&mut pipeline, &records, batch, checkpoint_every).await?);
    }
    // Checkpoint cost: every group in a full checkpoint (the first has nothing to build
    // on), then a delta after one more micro-batch.
    let (mut pipeline, _state) = pipeline(with_per_asin.path().to_path_buf()).await?;
    let stream = pipeline.catalog().streams()[0].clone();
    let (head, last) = records.split_at(records.len().saturating_sub(batch));
    let mut sink = FanOut::new(vec![]);
    let mut offset = 0;
    for chunk in head.chunks(batch) {
        pipeline.step(vec![(stream.name.clone(), micro_batch(&stream, chunk, &mut offset)?)], &mut sink).await?;
    }
    let groups: usize = pipeline.views().iter().map(|v| v.group_counts().1).sum();
    let started = Instant::now();
    let (_, full) = pipeline.checkpoint(&mut sink).await?;
    let full_seconds = started.elapsed().as_secs_f64();
    pipeline.step(vec![(stream.name.clone(), micro_batch(&stream, last, &mut offset)?)], &mut sink).await?;
    let started = Instant::now();
    let (_, delta) = pipeline.checkpoint(&mut sink).await?;
    let delta_seconds = started.elapsed().as_secs_f64();
    let checkpoint = serde_json::json!({
        "groups": groups, "full": {"rows": full.rows, "bytes": full.bytes, "seconds": full_seconds, "was_full": full.full},
        "delta": {"records": last.len(), "rows": delta.rows, "bytes": delta.bytes, "seconds": delta_seconds, "was_full": delta.full},
    });
    runs.insert("checkpoint".into(), checkpoint);
    println!("{}", serde_json::Value::Object(runs));
    Ok(())
}

/// Streams `records` through `pipeline` in micro-batches of `batch`, checkpointing every
/// `checkpoint_every`; seconds to a quarter, half and all of the records.
async fn timed_run(pipeline: &mut Pipeline, records: &[&[u8]], batch: usize, checkpoint_every: usize) -> Result<serde_json::Value> {
    let stream = pipeline.catalog().streams()[0].clone();
    let mut sink = FanOut::new(vec![]);
    let marks = [records.len() / 4, records.len() / 2, records.len()];
    let mut seconds = serde_json::Map::new();
    let (mut offset, mut done) = (0i64, 0usize);
    let started = Instant::now();
    for (i, chunk) in records.chunks(batch).enumerate() {
        let micro = micro_batch(&stream, chunk, &mut offset)?;
        pipeline.step(vec![(stream.name.clone(), micro)], &mut sink).await?;
        if (i + 1) % checkpoint_every == 0 {
            pipeline.checkpoint(&mut sink).await?;
        }
        let before = done;
        done += chunk.len();
        for mark in marks.iter().filter(|&&m| before < m && m <= done) {
            seconds.insert(mark.to_string(), started.elapsed().as_secs_f64().into());
        }
    }
    Ok(serde_json::json!({"records": records.len(), "seconds_by_records": seconds}))
}

/// Inserts every product, then as many changes of random products (a new price, or
/// for 1 % a delete), through the shipped (upsert) pipeline after the categories.
async fn changelog(input: &Input, batch: usize) -> Result<()> {
    let text = input.read()?;
    let inserts = lines(&text);
    let changes = random_changes(&inserts)?;
    let deletes = changes.iter().filter(|c| c.ends_with(b"\"_deleted\": true}")).count();
    let (insert_count, change_count) = (inserts.len(), changes.len());
    let catalog = Catalog::load(std::slice::from_ref(&input.sql), incremental_session_config(), &HashMap::new()).await?;
    let products = catalog.streams().iter().find(|s| s.name == "products").context("a products stream")?.clone();
    let categories = catalog.streams().iter().find(|s| s.name == "categories").context("a categories stream")?.clone();
    let category_rows = category_batch(&categories, &input.categories)?;
    let messages: Vec<Vec<u8>> = inserts.iter().map(|r| r.to_vec()).chain(changes).collect();
    let sources: Vec<Box<dyn Source>> =
        vec![Box::new(MessageSource::once(categories, category_rows)), Box::new(MessageSource::new(products, messages))];
    // What the benchmark itself holds (the records and their changes), not the engine.
    let input_rss_mb = rss_mb("VmRSS:")?;
    let state = tempfile::tempdir()?;
    let mut pipeline = Pipeline::compile(catalog, state.path().to_path_buf()).await?;
    // The products taken in so far, when the last insert and the last change were, and
    // the peak RSS then (not the final checkpoint's, which the figure leaves out).
    let (mut taken, mut inserted_after, mut changed_after, mut peak_rss) = (0usize, None, 0.0, Ok(0.0));
    let started = Instant::now();
    let mut on_step = |report: &StepReport| {
        taken += report.streams.get("products").map_or(0, |(rows, _)| *rows as usize);
        changed_after = started.elapsed().as_secs_f64();
        if taken >= insert_count && inserted_after.is_none() {
            inserted_after = Some(changed_after);
        }
        peak_rss = peak_rss_mb();
    };
    run_to_end(&mut pipeline, sources, batch, &mut on_step).await?;
    let insert_seconds = inserted_after.context("the run took in every insert")?;
    let out = serde_json::json!({
        "inserts": insert_count, "changes": change_count, "deletes": deletes, "insert_seconds": insert_seconds,
        "change_seconds": changed_after - insert_seconds, "peak_rss_mb": peak_rss?, "input_rss_mb": input_rss_mb,
    });
    println!("{out}");
    Ok(())
}

/// For each product, a change of a random product (xorshift, fixed seed): its record
/// with the price scaled by 0.5–1.5, or for one in a hundred a delete of its ASIN.
fn random_changes(records: &[&[u8]]) -> Result<Vec<Vec<u8>>> {
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut changes = Vec::with_capacity(records.len());
    for _ in 0..records.len() {
        let pick = next() as usize % records.len();
        let mut product: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(records[pick])?;
        let asin = product.get("asin").cloned().context("a product without asin")?;
        if next() % 100 == 0 {
            changes.push(format!(r#"{{"asin": {asin}, "_deleted": true}}"#).into_bytes());
            continue;
        }
        let price = product.get("price").and_then(serde_json::Value::as_f64).unwrap_or(0.0);
        let scale = 0.5 + (next() % 1000) as f64 / 1000.0;
        product.insert("price".into(), serde_json::json!((price * scale * 100.0).round() / 100.0));
        changes.push(serde_json::to_vec(&product)?);
    }
    Ok(changes)
}

/// The categories file as one micro-batch of the `categories` stream.
fn category_batch(stream: &StreamDecl, path: &std::path::Path) -> Result<MicroBatch> {
    let file = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let reader = datafusion::arrow::csv::ReaderBuilder::new(stream.payload_schema.clone()).with_header(true).build(file)?;
    let rows: Vec<_> = reader.collect::<Result<_, _>>()?;
    let rows = datafusion::arrow::compute::concat_batches(&stream.payload_schema, &rows)?;
    let n = rows.num_rows();
    let origin = RecordOrigin { partitions: vec![0; n], offsets: (0..n as i64).collect(), timestamps: vec![0; n], keys: None };
    Ok(MicroBatch::new(with_metadata(stream, &rows, origin)?, &[], Default::default(), 0))
}

/// The process's peak resident set, from Linux's /proc.
fn peak_rss_mb() -> Result<f64> {
    rss_mb("VmHWM:")
}

/// A resident-set figure of this process (`VmRSS:` now, `VmHWM:` its peak), from /proc.
fn rss_mb(field: &str) -> Result<f64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kb: f64 =
        status.lines().find_map(|l| l.strip_prefix(field)).with_context(|| format!("no {field}"))?.trim().trim_end_matches("kB").trim().parse()?;
    Ok(kb / 1024.0)
}

/// The records re-encoded as Confluent-framed Avro (untimed), then decoded into Arrow
/// the way the Kafka source does: rows decoded, and seconds.
fn avro_decoding(records: &[&[u8]], stream: &StreamDecl, batch: usize) -> Result<(usize, f64)> {
    let payload = &stream.payload_schema;
    let mut avro_records = Vec::with_capacity(records.len());
    for chunk in records.chunks(batch) {
        let decoded = decode_parsed(parse_records(RecordFormat::Json, payload, chunk, stream.options.max_record_bytes), payload, None)?;
        let encoded = RecordEncoder::Avro { schema_id: 1 }.encode(&decoded.batch)?;
        avro_records.extend((0..encoded.ranges.len()).map(|i| encoded.get(i).to_vec()));
    }
    let mut avro = AvroDecoder::confluent();
    avro.add_schema(1, &trendflow_formats::avro_schema_of(payload)?).map_err(anyhow::Error::msg)?;
    let slices: Vec<&[u8]> = avro_records.iter().map(Vec::as_slice).collect();
    let started = Instant::now();
    let mut rows = 0;
    for chunk in slices.chunks(batch) {
        rows += avro.parse(chunk, stream.options.max_record_bytes).iter().map(|part| part.rows.len()).sum::<usize>();
    }
    Ok((rows, started.elapsed().as_secs_f64()))
}

async fn consume(brokers: &str, topic: &str) -> Result<()> {
    let consumer: StreamConsumer = client_config(brokers)
        .set("group.id", "trendflow-bench")
        .set("enable.auto.commit", "false")
        .set("fetch.max.bytes", "67108864")
        .set("max.partition.fetch.bytes", "16777216")
        .set("receive.message.max.bytes", "100000000")
        .set("fetch.wait.max.ms", "10")
        // librdkafka postpones a partition's next fetch by fetch.queue.backoff.ms (1 s by
        // default) whenever its local queue is over queued.min.messages (100,000) or
        // queued.max.messages.kbytes (64 MB), which one 64 MB fetch of 200,000 records
        // is: whether this client drained the queue before that check made its runs
        // take 0.3 s or 1.3 s at random. 10 ms keeps the baseline at the broker's limit.
        .set("fetch.queue.backoff.ms", "10")
        .create()?;
    let started = Instant::now();
    let partitions = partition_count(&consumer, brokers, topic)?.context("no such topic")?;
    let mut assignment = TopicPartitionList::new();
    let mut remaining = 0;
    for p in 0..partitions {
        assignment.add_partition_offset(topic, p, Offset::Beginning)?;
        remaining += consumer.fetch_watermarks(topic, p, Duration::from_secs(10))?.1;
    }
    consumer.assign(&assignment)?;
    let total = remaining;
    while remaining > 0 {
        let message = consumer.recv().await?;
        std::hint::black_box(rdkafka::Message::payload(&message));
        remaining -= 1;
    }
    println!("{}", serde_json::json!({"messages": total, "seconds": started.elapsed().as_secs_f64()}));
    Ok(())
}
