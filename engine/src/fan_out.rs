//! One changeset stream, several sinks (the embedded store that serves the job's
//! Flight SQL clients, and MongoDB).

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;

use crate::contract::{Changeset, CheckpointMeta, Sink, ViewInfo};
use crate::EngineError;

/// Applies every call to each sink in turn; the first failure stops the chain, and
/// since every sink is idempotent, the replay after a restart repairs any partial write.
pub struct FanOut<'a> {
    sinks: Vec<&'a mut (dyn Sink + 'a)>,
}

impl<'a> FanOut<'a> {
    /// Fans out to `sinks`, in order.
    pub fn new(sinks: Vec<&'a mut (dyn Sink + 'a)>) -> Self {
        Self { sinks }
    }
}

#[async_trait]
impl Sink for FanOut<'_> {
    async fn open(&mut self, views: &[ViewInfo]) -> Result<(), EngineError> {
        for sink in &mut self.sinks {
            sink.open(views).await?;
        }
        Ok(())
    }

    async fn apply(&mut self, view: &ViewInfo, changes: &Changeset) -> Result<(), EngineError> {
        for sink in &mut self.sinks {
            sink.apply(view, changes).await?;
        }
        Ok(())
    }

    async fn flush(&mut self, meta: &CheckpointMeta) -> Result<(), EngineError> {
        for sink in &mut self.sinks {
            sink.flush(meta).await?;
        }
        Ok(())
    }

    async fn reset(&mut self, view: &ViewInfo, rows: &RecordBatch) -> Result<(), EngineError> {
        for sink in &mut self.sinks {
            sink.reset(view, rows).await?;
        }
        Ok(())
    }
}
