//! The values of a MIN or MAX argument per group, with their multiplicities: what lets
//! a retracted extreme give way to the next one (see [`crate::retraction`]).

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{new_null_array, Array, ArrayRef, RecordBatch, UInt32Array};
use datafusion::arrow::compute::{cast, take};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::physical_plan::PhysicalExpr;

use crate::error::{EngineError, Result};
use crate::keyed::{EncodedRows, RowKey, RowMap};

/// A value in Arrow's row format, which orders as the values do. Encodings of up to 16
/// bytes (every fixed-width type) are kept inline, so the ordered map compares integers
/// instead of chasing pointers.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ValueKey {
    /// The encoding, zero-padded on the right into a big-endian integer, and its length.
    Short {
        bytes: u128,
        len: u8,
    },
    Long(Box<[u8]>),
}

impl ValueKey {
    fn new(encoded: &[u8]) -> Self {
        if encoded.len() > 16 {
            return Self::Long(encoded.into());
        }
        let mut bytes = [0u8; 16];
        bytes[..encoded.len()].copy_from_slice(encoded);
        Self::Short { bytes: u128::from_be_bytes(bytes), len: encoded.len() as u8 }
    }

    fn with_bytes<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        match self {
            Self::Short { bytes, len } => f(&bytes.to_be_bytes()[..*len as usize]),
            Self::Long(bytes) => f(bytes),
        }
    }
}

impl Ord for ValueKey {
    /// Byte-wise, as the row format is meant to be compared. Between two short keys
    /// the padded integers decide and then the length: zero padding keeps a prefix first.
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (Self::Short { bytes: a, len: m }, Self::Short { bytes: b, len: n }) => (a, m).cmp(&(b, n)),
            _ => self.with_bytes(|a| other.with_bytes(|b| a.cmp(b))),
        }
    }
}

impl PartialOrd for ValueKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Values with their multiplicities, in value order.
type Multiset = BTreeMap<ValueKey, u64>;

/// The non-null values of one expression (a MIN or MAX argument) per group.
#[derive(Debug)]
pub(crate) struct GroupValues {
    argument: Arc<dyn PhysicalExpr>,
    converter: RowConverter,
    /// Group key → values.
    groups: RowMap<RowKey, Multiset>,
}

impl GroupValues {
    /// No values yet of `argument` over rows of `schema`.
    pub(crate) fn new(argument: Arc<dyn PhysicalExpr>, schema: &SchemaRef) -> Result<Self> {
        let converter = RowConverter::new(vec![SortField::new(argument.data_type(schema)?)])?;
        Ok(Self { argument, converter, groups: RowMap::default() })
    }

    /// Forgets every value.
    pub(crate) fn clear(&mut self) {
        self.groups.clear();
    }

    /// Adds (`add`) or removes the values of `rows` (the aggregate's input rows) whose
    /// group keys are `keys`.
    pub(crate) fn update(&mut self, rows: &RecordBatch, keys: &EncodedRows, add: bool) -> Result<()> {
        let values = self.argument.evaluate(rows)?.into_array(rows.num_rows())?;
        let encoded = self.converter.convert_columns(std::slice::from_ref(&values))?;
        for row in 0..rows.num_rows() {
            if values.is_null(row) {
                continue;
            }
            let (key, value) = (keys.get(row), ValueKey::new(encoded.row(row).data()));
            if add {
                let group = match self.groups.get_mut(key) {
                    Some(group) => group,
                    None => self.groups.entry(key.into()).or_default(),
                };
                *group.entry(value).or_insert(0) += 1;
                continue;
            }
            let group = self.groups.get_mut(key).ok_or_else(|| EngineError::internal("a retracted value of a group never seen"))?;
            let count = group.get_mut(&value).ok_or_else(|| EngineError::internal("a retracted value never added"))?;
            *count -= 1;
            if *count == 0 {
                group.remove(&value);
                if group.is_empty() {
                    self.groups.remove(key);
                }
            }
        }
        Ok(())
    }

    /// The least (or greatest, `max`) value of each group in `keys`, null for a group
    /// without values, as an array of `data_type`.
    pub(crate) fn extremes(&self, keys: &EncodedRows, max: bool, data_type: &DataType) -> Result<ArrayRef> {
        let mut found: Vec<Vec<u8>> = Vec::new();
        let indices: UInt32Array = (0..keys.len())
            .map(|i| {
                let group = self.groups.get(keys.get(i))?;
                let (value, _) = if max { group.last_key_value() } else { group.first_key_value() }?;
                found.push(value.with_bytes(<[u8]>::to_vec));
                Some(found.len() as u32 - 1)
            })
            .collect();
        if found.is_empty() {
            return Ok(new_null_array(data_type, keys.len()));
        }
        let parser = self.converter.parser();
        let values = self.converter.convert_rows(found.iter().map(|bytes| parser.parse(bytes)))?.remove(0);
        Ok(cast(&take(&values, &indices, None)?, data_type)?)
    }
}

#[cfg(test)]
mod tests {
    use super::ValueKey;

    #[test]
    fn value_keys_order_as_their_bytes() {
        let samples: Vec<Vec<u8>> =
            vec![vec![], vec![0], vec![0, 0], vec![0, 1], vec![1], vec![1, 0, 0], vec![255; 16], vec![255; 17], vec![0; 20], vec![1; 17], vec![2]];
        for a in &samples {
            for b in &samples {
                assert_eq!(ValueKey::new(a).cmp(&ValueKey::new(b)), a.cmp(b), "{a:?} vs {b:?}");
            }
        }
    }
}
