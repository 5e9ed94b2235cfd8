//! Files: replaying a CSV, NDJSON or Parquet file as a stream ([`FileSource`]), and
//! the dead-letter file its rejected records go to ([`DeadLetterFile`]), and the byte
//! ranges of whole records a batch run reads in parallel ([`record_ranges`]).

mod dead_letters;
mod ranges;
mod source;

pub use dead_letters::{DeadLetter, DeadLetterFile};
pub use ranges::record_ranges;
pub use source::{FileSource, DEAD_LETTER_BYTES_PARTITION, REPLAY_CLOCK_PARTITION};
