//! The file formats a table can be bound to (`--source name=file:PATH`), by extension.

/// File formats a table can be bound to, known by extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    /// Comma-separated values with a header line.
    Csv,
    /// One JSON object per line (`.json`, `.ndjson`, `.jsonl`).
    NdJson,
    /// Apache Parquet.
    Parquet,
}

impl FileFormat {
    /// The format a path's extension names; CSV when unknown.
    pub fn from_path(path: &str) -> Self {
        let lower = path.to_ascii_lowercase();
        if lower.ends_with(".parquet") {
            Self::Parquet
        } else if lower.ends_with(".json") || lower.ends_with(".ndjson") || lower.ends_with(".jsonl") {
            Self::NdJson
        } else {
            Self::Csv
        }
    }

    /// The `STORED AS` name DataFusion uses for the format.
    pub fn stored_as(self) -> &'static str {
        match self {
            Self::Csv => "CSV",
            Self::NdJson => "JSON",
            Self::Parquet => "PARQUET",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_format_follows_extension() {
        assert_eq!(FileFormat::from_path("x/products.PARQUET"), FileFormat::Parquet);
        assert_eq!(FileFormat::from_path("p.ndjson"), FileFormat::NdJson);
        assert_eq!(FileFormat::from_path("p.csv"), FileFormat::Csv);
    }
}
