//! Files: replaying a CSV, NDJSON or Parquet file as a stream ([`FileSource`]), and
//! the dead-letter file its rejected records go to ([`DeadLetterFile`]).

mod dead_letters;
mod source;

pub use dead_letters::{DeadLetter, DeadLetterFile};
pub use source::{FileSource, DEAD_LETTER_BYTES_PARTITION, REPLAY_CLOCK_PARTITION};
