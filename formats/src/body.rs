//! Splitting a request body into records.

use std::borrow::Cow;

/// Splits a body into records: the elements of a JSON array (re-serialized), or the
/// non-blank lines of NDJSON (borrowed). The error says why a body that starts like
/// an array is not one.
///
/// ```
/// use trendflow_formats::split_body;
/// let array = split_body(br#" [{"a":1}, {"a":2}] "#).unwrap();
/// assert_eq!(array[1].as_ref(), br#"{"a":2}"#);
/// let lines = split_body(b"{\"a\":1}\n\n{\"a\":2}\r\n").unwrap();
/// assert_eq!(lines.len(), 2);
/// assert!(split_body(b"[{\"a\":1}").unwrap_err().contains("not a JSON array"));
/// ```
pub fn split_body(body: &[u8]) -> Result<Vec<Cow<'_, [u8]>>, String> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first == Some(&b'[') {
        let values: Vec<serde_json::Value> = serde_json::from_slice(body).map_err(|e| format!("the body is not a JSON array of records: {e}"))?;
        return Ok(values.iter().map(|v| Cow::Owned(serde_json::to_vec(v).expect("a JSON value serializes"))).collect());
    }
    Ok(body.split(|b| *b == b'\n').filter(|line| !line.trim_ascii().is_empty()).map(Cow::Borrowed).collect())
}
