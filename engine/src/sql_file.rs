//! Reading a pipeline's SQL: which `.sql` files a path names, and each file split into
//! statements that remember the line they start on (for errors that say where).

use std::path::{Path, PathBuf};

use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer, Whitespace};

use crate::error::{EngineError, Result};

/// One statement of a SQL file, with where it starts.
#[derive(Debug, Clone)]
pub struct SqlStatementText {
    /// The file it came from.
    pub file: PathBuf,
    /// 1-based line of its first token.
    pub line: usize,
    /// Its text, without the closing semicolon.
    pub text: String,
}

/// Rewrites the parser's statement-relative `Line: N, Column: C` as file positions.
pub(crate) fn file_positions(message: &str, first_line: usize) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find("Line: ") {
        out.push_str(&rest[..at]);
        let digits: String = rest[at + 6..].chars().take_while(char::is_ascii_digit).collect();
        match digits.parse::<usize>() {
            Ok(n) => out.push_str(&format!("file line {}", first_line + n - 1)),
            Err(_) => out.push_str("Line: "),
        }
        rest = &rest[at + 6 + digits.len()..];
    }
    out.push_str(rest);
    out
}

/// The `.sql` files named by `paths`; directories contribute their `*.sql` files in name order.
pub fn sql_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for path in paths {
        let io_error = |e: std::io::Error| EngineError::Sql {
            file: path.clone(),
            line: 0,
            message: format!("cannot read the SQL ({e}); run from the repository root or pass --sql PATH"),
        };
        if path.is_dir() {
            let mut in_dir: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(io_error)?
                .filter_map(|entry| entry.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|ext| ext == "sql"))
                .collect();
            in_dir.sort();
            files.extend(in_dir);
        } else {
            std::fs::metadata(path).map_err(io_error)?;
            files.push(path.clone());
        }
    }
    if files.is_empty() {
        let shown = paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ");
        return Err(EngineError::Sql { file: shown.into(), line: 0, message: "no .sql files found".into() });
    }
    Ok(files)
}

/// Splits a SQL file into statements, remembering the line each starts on.
///
/// Uses DataFusion's tokenizer, so semicolons inside strings and comments do not split.
pub fn split_statements(file: &Path) -> Result<Vec<SqlStatementText>> {
    let sql = std::fs::read_to_string(file).map_err(|e| EngineError::Sql { file: file.to_path_buf(), line: 0, message: e.to_string() })?;
    split_sql(&sql, file)
}

fn split_sql(sql: &str, file: &Path) -> Result<Vec<SqlStatementText>> {
    let tokens = Tokenizer::new(&GenericDialect {}, sql).tokenize_with_location().map_err(|e| EngineError::Sql {
        file: file.to_path_buf(),
        line: e.location.line as usize,
        message: e.message.clone(),
    })?;
    let mut statements = Vec::new();
    let mut text = String::new();
    let mut line = None;
    for token in tokens {
        match &token.token {
            Token::SemiColon | Token::EOF => {
                if let Some(line) = line.take() {
                    statements.push(SqlStatementText { file: file.to_path_buf(), line, text: std::mem::take(&mut text) });
                }
                text.clear();
            }
            Token::Whitespace(Whitespace::SingleLineComment { .. } | Whitespace::MultiLineComment(_)) => {
                // Comments are dropped so that a trailing comment cannot swallow the next line.
                text.push(' ');
            }
            // Text starts at the statement's first token, so the parser's "Line: N" is
            // line N of the statement, i.e. file line `line + N - 1`.
            Token::Whitespace(_) if line.is_none() => {}
            other => {
                if line.is_none() {
                    line = Some(token.span.start.line as usize);
                }
                text.push_str(&other.to_string());
            }
        }
    }
    Ok(statements)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_on_semicolons_outside_strings_and_comments() {
        let sql = "-- header; comment\nCREATE VIEW a AS SELECT ';' AS x;\n\n/* ; */ CREATE VIEW b AS\n SELECT 1;";
        let statements = split_sql(sql, Path::new("t.sql")).unwrap();
        assert_eq!(statements.len(), 2);
        assert_eq!(statements[0].line, 2);
        assert!(statements[0].text.contains("';'"));
        assert_eq!(statements[1].line, 4);
        assert!(statements[1].text.trim().starts_with("CREATE VIEW b"));
    }
}
