//! Splitting a text file into byte ranges that hold whole records, so that a batch run
//! parses and decodes them on every core.
//!
//! An NDJSON record never holds a raw newline, so any newline ends one. A CSV record
//! may (inside a quoted field): the split points are found by one sequential scan that
//! follows the quoting rules of the CSV reader (`csv_core`: a quote opens a quoted field
//! only at the start of a field, `""` inside one is an escaped quote, and a quote
//! elsewhere is a literal character). The scan only looks at quotes and newlines
//! (`memchr2`), so it costs a small part of parsing.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::Path;

use trendflow_engine::file_format::FileFormat;

use crate::error::{ConnectorError, Result};

/// Blocks the CSV scan reads at a time.
const BLOCK: usize = 1 << 20;
/// Files smaller than this are read as one range: threads would cost more than they save.
const SMALL_FILE: u64 = 4 << 20;

/// Byte ranges of `path` that cover it and start at record boundaries, at most
/// `parts` of them. Formats without byte-addressable records (Parquet) and small files
/// give one range.
///
/// ```
/// use trendflow_connectors::file::record_ranges;
/// use trendflow_engine::file_format::FileFormat;
///
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("p.csv");
/// let text = "asin,title\nA1,\"two\nlines\"\nA2,plain\n";
/// std::fs::write(&path, text).unwrap();
/// // A small file is one range.
/// assert_eq!(record_ranges(&path, FileFormat::Csv, 2).unwrap(), [0..text.len() as u64]);
/// ```
pub fn record_ranges(path: &Path, format: FileFormat, parts: usize) -> Result<Vec<Range<u64>>> {
    let len = std::fs::metadata(path).map_err(|e| ConnectorError::io(path, e))?.len();
    if parts < 2 || len < SMALL_FILE || format == FileFormat::Parquet {
        return Ok(std::iter::once(0..len).collect());
    }
    let targets: Vec<u64> = (1..parts as u64).map(|k| k * len / parts as u64).collect();
    let mut file = File::open(path).map_err(|e| ConnectorError::io(path, e))?;
    let mut starts = vec![0];
    let boundaries = match format {
        FileFormat::Csv => csv_boundaries(&mut file, &targets),
        _ => targets.iter().map(|&t| line_boundary(&mut file, t)).collect::<std::io::Result<Vec<_>>>(),
    }
    .map_err(|e| ConnectorError::io(path, e))?;
    starts.extend(boundaries.into_iter().flatten());
    starts.dedup();
    starts.retain(|&s| s < len || s == 0);
    let ends = starts.iter().skip(1).copied().chain([len]);
    Ok(starts.iter().copied().zip(ends).map(|(start, end)| start..end).collect())
}

/// The byte after the first newline at or after `target` (None: none before the end).
fn line_boundary(file: &mut File, target: u64) -> std::io::Result<Option<u64>> {
    file.seek(SeekFrom::Start(target))?;
    let mut block = vec![0; 64 * 1024];
    let mut at = target;
    loop {
        let n = file.read(&mut block)?;
        if n == 0 {
            return Ok(None);
        }
        if let Some(i) = memchr::memchr(b'\n', &block[..n]) {
            return Ok(Some(at + i as u64 + 1));
        }
        at += n as u64;
    }
}

/// Where the CSV scan is between two blocks.
#[derive(Debug, Default)]
struct CsvScan {
    in_quotes: bool,
    /// A quote inside a quoted field ended the last block: the next byte says whether
    /// it was escaped (`""`) or closed the field.
    pending_quote: bool,
    /// The byte before the current one (a quote after a delimiter or a record's end opens a field).
    previous: u8,
}

/// For each target, the start of the first record at or after it (the byte after a
/// newline outside quotes), in one pass from the start of the file.
fn csv_boundaries(file: &mut File, targets: &[u64]) -> std::io::Result<Vec<Option<u64>>> {
    file.seek(SeekFrom::Start(0))?;
    let mut found = Vec::with_capacity(targets.len());
    let mut scan = CsvScan { previous: b'\n', ..Default::default() };
    let mut block = vec![0; BLOCK];
    let mut offset = 0u64;
    while found.len() < targets.len() {
        let n = file.read(&mut block)?;
        if n == 0 {
            break;
        }
        scan.block(&block[..n], offset, targets, &mut found);
        offset += n as u64;
    }
    found.resize(targets.len(), None);
    Ok(found)
}

impl CsvScan {
    /// Scans `bytes` (at `offset` in the file), pushing a boundary for each target passed.
    fn block(&mut self, bytes: &[u8], offset: u64, targets: &[u64], found: &mut Vec<Option<u64>>) {
        let mut i = 0;
        if std::mem::take(&mut self.pending_quote) && !bytes.is_empty() {
            if bytes[0] == b'"' {
                i = 1; // an escaped quote: still inside the field
            } else {
                self.in_quotes = false;
            }
        }
        while let Some(hit) = memchr::memchr2(b'"', b'\n', &bytes[i..]) {
            let at = i + hit;
            let previous = if at == 0 { self.previous } else { bytes[at - 1] };
            i = at + 1;
            match (bytes[at], self.in_quotes) {
                (b'"', true) => match bytes.get(at + 1) {
                    Some(b'"') => i = at + 2,
                    Some(_) => self.in_quotes = false,
                    None => self.pending_quote = true,
                },
                (b'"', false) => self.in_quotes = matches!(previous, b',' | b'\n' | b'\r'),
                (_, false) => {
                    let boundary = offset + at as u64 + 1;
                    while found.len() < targets.len() && boundary >= targets[found.len()] {
                        found.push(Some(boundary));
                    }
                    if found.len() == targets.len() {
                        return;
                    }
                }
                (_, true) => {}
            }
        }
        if let Some(&last) = bytes.last() {
            self.previous = last;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boundaries(text: &str, block: usize, targets: &[u64]) -> Vec<Option<u64>> {
        let mut scan = CsvScan { previous: b'\n', ..Default::default() };
        let mut found = Vec::new();
        for (k, chunk) in text.as_bytes().chunks(block).enumerate() {
            scan.block(chunk, (k * block) as u64, targets, &mut found);
        }
        found.resize(targets.len(), None);
        found
    }

    #[test]
    fn newlines_inside_quoted_fields_are_not_boundaries_whatever_the_block_size() {
        // Record starts: 0, 4 ("a""\nb" spans a newline and holds an escaped quote), 14, 22.
        let text = "h,t\n1,\"a\"\"\nb\"\n2,5\" tv\n3,\"x\"\n";
        for block in 1..text.len() + 1 {
            assert_eq!(boundaries(text, block, &[1, 5, 17]), vec![Some(4), Some(14), Some(22)], "block size {block}");
        }
    }

    #[test]
    fn a_literal_quote_in_an_unquoted_field_opens_nothing() {
        // `5" tv` is unquoted: its quote is a character, so the newline after it ends the record.
        assert_eq!(boundaries("2,5\" tv\n3,x\n", 3, &[1]), vec![Some(8)]);
    }
}
