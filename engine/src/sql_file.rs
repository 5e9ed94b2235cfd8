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
    /// Its text, without the closing semicolon (nor an `EMIT` clause).
    pub text: String,
    /// The `EMIT ON UPDATE` / `EMIT ON WINDOW CLOSE` clause it ends with, if any: when a
    /// view's rows are emitted. DataFusion's SQL has no such clause, so it is taken off here.
    pub emit: Option<Emit>,
}

/// When a view emits its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Emit {
    /// Every change, as soon as a micro-batch makes it (the default).
    #[default]
    OnUpdate,
    /// A window's row once, final, when the watermark passes the window's end.
    OnWindowClose,
}

impl Emit {
    /// The clause as written.
    pub fn clause(self) -> &'static str {
        match self {
            Self::OnUpdate => "EMIT ON UPDATE",
            Self::OnWindowClose => "EMIT ON WINDOW CLOSE",
        }
    }
}

/// The `EMIT` clause `words` (a statement's last words, upper case) end with, and how
/// many words it has.
fn emit_clause(words: &[String]) -> Option<(Emit, usize)> {
    let ends_with = |clause: &[&str]| words.len() >= clause.len() && words[words.len() - clause.len()..].iter().zip(clause).all(|(w, c)| w == c);
    if ends_with(&["EMIT", "ON", "WINDOW", "CLOSE"]) {
        Some((Emit::OnWindowClose, 4))
    } else if ends_with(&["EMIT", "ON", "UPDATE"]) {
        Some((Emit::OnUpdate, 3))
    } else {
        None
    }
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
    // The current statement's pieces of text; `words` holds the unquoted words among them
    // (upper case, with their piece's index) to find an EMIT clause at its end.
    let mut pieces: Vec<String> = Vec::new();
    let mut words: Vec<(String, usize)> = Vec::new();
    let mut line = None;
    for token in tokens {
        match &token.token {
            Token::SemiColon | Token::EOF => {
                if let Some(line) = line.take() {
                    let upper: Vec<String> = words.iter().map(|(w, _)| w.clone()).collect();
                    let emit = emit_clause(&upper).map(|(emit, n)| {
                        pieces.truncate(words[words.len() - n].1);
                        emit
                    });
                    statements.push(SqlStatementText { file: file.to_path_buf(), line, text: pieces.concat(), emit });
                }
                pieces.clear();
                words.clear();
            }
            Token::Whitespace(Whitespace::SingleLineComment { .. } | Whitespace::MultiLineComment(_)) => {
                // Comments are dropped so that a trailing comment cannot swallow the next line.
                pieces.push(" ".into());
            }
            // Text starts at the statement's first token, so the parser's "Line: N" is
            // line N of the statement, i.e. file line `line + N - 1`.
            Token::Whitespace(_) if line.is_none() => {}
            Token::Whitespace(_) => pieces.push(token.token.to_string()),
            other => {
                if line.is_none() {
                    line = Some(token.span.start.line as usize);
                }
                match other {
                    Token::Word(word) if word.quote_style.is_none() => words.push((word.value.to_ascii_uppercase(), pieces.len())),
                    // Only the statement's last words can be its EMIT clause.
                    _ => words.clear(),
                }
                pieces.push(match other {
                    // The token's text would not double the quotes inside the string again.
                    Token::SingleQuotedString(text) => format!("'{}'", text.replace('\'', "''")),
                    other => other.to_string(),
                });
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

    #[test]
    fn an_emit_clause_at_the_end_is_taken_off_and_quotes_stay_doubled() {
        let sql = "CREATE VIEW q AS SELECT 'it''s';\nCREATE VIEW a AS SELECT 1 AS emit EMIT ON WINDOW CLOSE;\nCREATE VIEW b AS SELECT 'EMIT ON UPDATE' AS x;\nCREATE VIEW c AS SELECT 1 emit on update -- now\n;";
        let statements = split_sql(sql, Path::new("t.sql")).unwrap();
        assert_eq!(statements[0].text.trim(), "CREATE VIEW q AS SELECT 'it''s'");
        assert_eq!(statements[1].emit, Some(Emit::OnWindowClose));
        assert_eq!(statements[1].text.trim(), "CREATE VIEW a AS SELECT 1 AS emit");
        assert_eq!(statements[2].emit, None);
        assert_eq!(statements[3].emit, Some(Emit::OnUpdate));
        assert_eq!(statements[3].text.trim(), "CREATE VIEW c AS SELECT 1");
    }
}
