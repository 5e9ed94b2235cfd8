//! The first of a job's two stages: the sources poll and decode the next micro-batch on
//! a thread of their own while the views take in the current one, so that a job uses
//! two cores where decoding and view updates each take one.
//!
//! The job asks for each poll ([`Prefetcher::poll`]) once it has placed the current
//! micro-batch in time and sent its late records to the dead-letter destinations, and
//! before its views take it in: the sources read at most one micro-batch ahead, and a
//! source's dead letters stay in record order (its next poll may dead-letter records
//! that do not decode). Nothing else changes: micro-batches reach the views in the order
//! the sources gave them, positions are checkpointed only for micro-batches the views
//! took in (one read ahead is read again after a crash), and the sources serve
//! requests in the order the job makes them.
//!
//! The thread runs its own single-threaded Tokio runtime: on the job's runtime a task
//! woken by the job's own task may wait in that worker's queue until the job's task
//! yields, which a micro-batch's view updates seldom do.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use datafusion::arrow::record_batch::RecordBatch;
use tokio::sync::{mpsc, oneshot};

use crate::contract::{MicroBatch, Offsets, Poll, Source};
use crate::error::{EngineError, Result};

/// What one poll of every source gave.
#[derive(Debug)]
pub struct Polled {
    /// Stream name → its micro-batch, for the sources that had records.
    pub batches: Vec<(String, MicroBatch)>,
    /// How many sources are finished.
    pub finished: usize,
    /// Stream name → records waiting in the source after the poll (sources that can tell).
    pub lag: BTreeMap<String, u64>,
}

/// Work for the sources, done in the order asked.
enum Request {
    Poll,
    Reject { stream: String, rows: RecordBatch, reasons: Vec<String>, reply: oneshot::Sender<Result<Offsets>> },
    Commit { offsets: BTreeMap<String, Offsets> },
}

/// The sources, polled on their own thread.
pub struct Prefetcher {
    polled: mpsc::UnboundedReceiver<Result<Polled>>,
    requests: Option<mpsc::UnboundedSender<Request>>,
    /// Closes when the thread ends.
    ended: Option<oneshot::Receiver<()>>,
    sources: usize,
}

impl Prefetcher {
    /// Starts a thread for `sources` (already positioned), which polls them for
    /// micro-batches of up to `max_rows` records, cut after `max_delay`, when asked.
    pub fn start(sources: Vec<Box<dyn Source>>, max_rows: usize, max_delay: Duration) -> Result<Self> {
        let count = sources.len();
        let cannot_start = |e: std::io::Error| EngineError::Source { source_name: "every source".into(), cause: Box::new(e) };
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(cannot_start)?;
        let (polled_tx, polled) = mpsc::unbounded_channel();
        let (requests_tx, requests) = mpsc::unbounded_channel();
        let (ending, ended) = oneshot::channel::<()>();
        let driver = Driver { sources, max_rows, max_delay };
        std::thread::Builder::new()
            .name("trendflow-sources".into())
            .spawn(move || {
                runtime.block_on(driver.run(requests, polled_tx));
                // The sources are dropped before the job hears that the thread ended.
                drop(runtime);
                drop(ending);
            })
            .map_err(cannot_start)?;
        Ok(Self { polled, requests: Some(requests_tx), ended: Some(ended), sources: count })
    }

    /// Lets the sources finish what was asked of them (a poll takes at most their
    /// `max_delay`), then drops them. Dropping a `Prefetcher` does the same without
    /// waiting: the thread ends on its own.
    pub async fn stop(mut self) {
        self.requests = None;
        if let Some(ended) = self.ended.take() {
            // Closed either way: the thread ended (or panicked, said on stderr).
            let _ = ended.await;
        }
    }

    /// Number of sources.
    pub fn sources(&self) -> usize {
        self.sources
    }

    /// Asks for the next poll, whose micro-batches [`Self::next`] gives.
    pub fn poll(&self) -> Result<()> {
        self.ask(Request::Poll)
    }

    /// The micro-batches of the poll asked for first and not taken yet, and how long
    /// the caller waited for them.
    pub async fn next(&mut self) -> Result<(Polled, Duration)> {
        let waiting = Instant::now();
        let polled = self.polled.recv().await.ok_or_else(stopped)??;
        Ok((polled, waiting.elapsed()))
    }

    /// Sends `rows` of `stream` to its source's dead-letter destination (see [`Source::reject`]).
    pub async fn reject(&self, stream: String, rows: RecordBatch, reasons: Vec<String>) -> Result<Offsets> {
        let (reply, answer) = oneshot::channel();
        self.ask(Request::Reject { stream, rows, reasons, reply })?;
        answer.await.map_err(|_| stopped())?
    }

    /// Tells every source that a checkpoint holding `offsets` (stream → positions) is
    /// durable, after what was asked before; without waiting (positions live in the
    /// checkpoint: a source that cannot commit says so in the log, and loses nothing).
    pub fn commit(&self, offsets: BTreeMap<String, Offsets>) -> Result<()> {
        self.ask(Request::Commit { offsets })
    }

    fn ask(&self, request: Request) -> Result<()> {
        self.requests.as_ref().ok_or_else(stopped)?.send(request).map_err(|_| stopped())
    }
}

/// The thread stopped: it panicked (the panic message is on stderr).
fn stopped() -> EngineError {
    EngineError::internal("the thread polling the sources stopped")
}

/// The sources, on their thread.
struct Driver {
    sources: Vec<Box<dyn Source>>,
    max_rows: usize,
    max_delay: Duration,
}

impl Driver {
    /// Serves requests until the job drops its [`Prefetcher`].
    async fn run(mut self, mut requests: mpsc::UnboundedReceiver<Request>, polled: mpsc::UnboundedSender<Result<Polled>>) {
        while let Some(request) = requests.recv().await {
            self.serve(request, &polled).await;
        }
    }

    async fn poll(&mut self) -> Result<Polled> {
        let mut batches = Vec::new();
        let mut finished = 0;
        for source in &mut self.sources {
            match source.poll(self.max_rows, self.max_delay).await? {
                Poll::Batch(micro) => batches.push((source.stream().to_string(), micro)),
                Poll::Idle => {}
                Poll::Finished => finished += 1,
            }
        }
        let lag = self.sources.iter().filter_map(|s| Some((s.stream().to_string(), s.lag()?))).collect();
        Ok(Polled { batches, finished, lag })
    }

    /// Does `request`; a poll's micro-batches go to `polled`. (Where the job stopped
    /// listening, there is nothing to tell.)
    async fn serve(&mut self, request: Request, polled: &mpsc::UnboundedSender<Result<Polled>>) {
        match request {
            Request::Poll => drop(polled.send(self.poll().await)),
            Request::Reject { stream, rows, reasons, reply } => {
                let rejected = match self.sources.iter_mut().find(|s| s.stream() == stream) {
                    Some(source) => source.reject(&rows, &reasons).await,
                    None => Err(EngineError::internal("late records without their source")),
                };
                let _ = reply.send(rejected);
            }
            Request::Commit { offsets } => {
                for source in &mut self.sources {
                    if let Some(offsets) = offsets.get(source.stream()) {
                        if let Err(e) = source.commit(offsets).await {
                            tracing::warn!(stream = source.stream(), "cannot commit positions after a checkpoint: {e}");
                        }
                    }
                }
            }
        }
    }
}
