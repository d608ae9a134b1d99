//! Uniform cell access over the two physical sources: Arrow arrays (Parquet) and
//! parsed text records (CSV/TSV, libsvm). Each column is downcast once per chunk, so
//! the per-cell dispatch is a well-predicted match.

use crate::hash::{hash_bytes, hash_i64};
use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{DataType, Float32Type, Float64Type, Int32Type, Int64Type, UInt32Type, UInt64Type};

/// A categorical value, before it is mapped to a table row.
#[derive(Debug, Clone, Copy)]
pub enum Key<'a> {
    Bytes(&'a [u8]),
    Int(i64),
    /// Already hashed (dictionary values hashed once per chunk).
    Hashed(u64, &'a [u8]),
}

impl<'a> Key<'a> {
    /// The stable hash of [`crate::hash`].
    #[inline]
    pub fn hash(&self) -> u64 {
        match *self {
            Key::Bytes(b) => hash_bytes(b),
            Key::Int(v) => hash_i64(v),
            Key::Hashed(h, _) => h,
        }
    }

    /// The key as text (for vocabulary lookups and messages).
    pub fn text(&self) -> std::borrow::Cow<'a, str> {
        match *self {
            Key::Bytes(b) | Key::Hashed(_, b) => String::from_utf8_lossy(b),
            Key::Int(v) => v.to_string().into(),
        }
    }
}

/// One source column of a chunk.
pub enum Col<'a> {
    Text {
        records: &'a [csv::ByteRecord],
        idx: usize,
        sep: u8,
    },
    F64(&'a arrow::array::Float64Array),
    F32(&'a arrow::array::Float32Array),
    I64(&'a arrow::array::Int64Array),
    I32(&'a arrow::array::Int32Array),
    U64(&'a arrow::array::UInt64Array),
    U32(&'a arrow::array::UInt32Array),
    Bool(&'a arrow::array::BooleanArray),
    Utf8(&'a arrow::array::StringArray),
    LargeUtf8(&'a arrow::array::LargeStringArray),
    Utf8View(&'a arrow::array::StringViewArray),
    /// Dictionary of strings: keys normalised, values pre-hashed.
    Dict {
        array: &'a dyn Array,
        keys: Vec<usize>,
        values: Vec<(u64, Vec<u8>)>,
    },
    /// List of strings or integers (multi-valued categorical).
    List {
        array: &'a arrow::array::ListArray,
        inner: Box<Col<'a>>,
    },
}

impl<'a> Col<'a> {
    /// Wraps an Arrow array, or says which type it has if unsupported.
    pub fn from_arrow(a: &'a ArrayRef) -> Result<Col<'a>, String> {
        Ok(match a.data_type() {
            DataType::Float64 => Col::F64(a.as_primitive::<Float64Type>()),
            DataType::Float32 => Col::F32(a.as_primitive::<Float32Type>()),
            DataType::Int64 => Col::I64(a.as_primitive::<Int64Type>()),
            DataType::Int32 => Col::I32(a.as_primitive::<Int32Type>()),
            DataType::UInt64 => Col::U64(a.as_primitive::<UInt64Type>()),
            DataType::UInt32 => Col::U32(a.as_primitive::<UInt32Type>()),
            DataType::Boolean => Col::Bool(a.as_boolean()),
            DataType::Utf8 => Col::Utf8(a.as_string::<i32>()),
            DataType::LargeUtf8 => Col::LargeUtf8(a.as_string::<i64>()),
            DataType::Utf8View => Col::Utf8View(a.as_string_view()),
            DataType::Dictionary(_, v) if **v == DataType::Utf8 => {
                let d = a.as_any_dictionary();
                let vals = d.values().as_string::<i32>();
                let values = (0..vals.len())
                    .map(|i| {
                        let b = vals.value(i).as_bytes();
                        (hash_bytes(b), b.to_vec())
                    })
                    .collect();
                let keys = if vals.is_empty() { vec![0; a.len()] } else { d.normalized_keys() };
                Col::Dict { array: a.as_ref(), keys, values }
            }
            DataType::List(_) => {
                let l = a.as_list::<i32>();
                let child: &'a ArrayRef = l.values();
                let inner = Col::from_arrow(child)?;
                if matches!(inner, Col::List { .. }) {
                    return Err("list<list<..>>".into());
                }
                Col::List { array: l, inner: Box::new(inner) }
            }
            other => return Err(format!("{other}")),
        })
    }

    /// The column's first `rows` cells as an Arrow array, to carry them unchanged beside
    /// the encoded rows ([`crate::Encoder::with_passthrough`]): an Arrow column as it is
    /// (a reference-counted copy), text cells as strings (an empty cell, which every
    /// reader takes as missing, as null).
    pub fn to_arrow(&self, rows: usize) -> ArrayRef {
        use std::sync::Arc;
        match self {
            Col::Text { records, idx, .. } => Arc::new(arrow::array::StringArray::from_iter(
                records[..rows].iter().map(|r| r.get(*idx).filter(|c| !c.is_empty()).map(String::from_utf8_lossy)),
            )),
            Col::F64(a) => Arc::new((*a).clone()),
            Col::F32(a) => Arc::new((*a).clone()),
            Col::I64(a) => Arc::new((*a).clone()),
            Col::I32(a) => Arc::new((*a).clone()),
            Col::U64(a) => Arc::new((*a).clone()),
            Col::U32(a) => Arc::new((*a).clone()),
            Col::Bool(a) => Arc::new((*a).clone()),
            Col::Utf8(a) => Arc::new((*a).clone()),
            Col::LargeUtf8(a) => Arc::new((*a).clone()),
            Col::Utf8View(a) => Arc::new((*a).clone()),
            Col::Dict { array, .. } => arrow::array::make_array(array.to_data()),
            Col::List { array, .. } => Arc::new((*array).clone()),
        }
    }

    /// The Arrow type name or "text".
    pub fn type_name(&self) -> &'static str {
        match self {
            Col::Text { .. } => "text",
            Col::F64(_) => "double",
            Col::F32(_) => "float",
            Col::I64(_) => "int64",
            Col::I32(_) => "int32",
            Col::U64(_) => "uint64",
            Col::U32(_) => "uint32",
            Col::Bool(_) => "boolean",
            Col::Utf8(_) | Col::LargeUtf8(_) | Col::Utf8View(_) => "string",
            Col::Dict { .. } => "dictionary<string>",
            Col::List { .. } => "list",
        }
    }

    fn is_null(&self, r: usize) -> bool {
        match self {
            Col::Text { records, idx, .. } => records[r].get(*idx).is_none_or(|c| c.is_empty()),
            Col::F64(a) => a.is_null(r),
            Col::F32(a) => a.is_null(r),
            Col::I64(a) => a.is_null(r),
            Col::I32(a) => a.is_null(r),
            Col::U64(a) => a.is_null(r),
            Col::U32(a) => a.is_null(r),
            Col::Bool(a) => a.is_null(r),
            Col::Utf8(a) => a.is_null(r),
            Col::LargeUtf8(a) => a.is_null(r),
            Col::Utf8View(a) => a.is_null(r),
            Col::Dict { array, .. } => array.is_null(r),
            Col::List { array, .. } => array.is_null(r),
        }
    }

    /// A numeric cell; `Ok(None)` for null or empty. Strings must parse as numbers.
    #[inline]
    pub fn num(&self, r: usize) -> Result<Option<f64>, String> {
        if self.is_null(r) {
            return Ok(None);
        }
        Ok(Some(match self {
            Col::Text { records, idx, .. } => {
                let cell = records[r].get(*idx).unwrap_or_default();
                return parse_f64(cell).map(Some);
            }
            Col::F64(a) => a.value(r),
            Col::F32(a) => a.value(r) as f64,
            Col::I64(a) => a.value(r) as f64,
            Col::I32(a) => a.value(r) as f64,
            Col::U64(a) => a.value(r) as f64,
            Col::U32(a) => a.value(r) as f64,
            Col::Bool(a) => a.value(r) as u8 as f64,
            Col::Utf8(a) => return parse_f64(a.value(r).as_bytes()).map(Some),
            Col::LargeUtf8(a) => return parse_f64(a.value(r).as_bytes()).map(Some),
            Col::Utf8View(a) => return parse_f64(a.value(r).as_bytes()).map(Some),
            Col::Dict { .. } | Col::List { .. } => {
                return Err(format!("expected a number, found a {} column", self.type_name()))
            }
        }))
    }

    /// Whether the column can hold numbers (checked once per file, before any row).
    pub fn is_numeric_type(&self) -> bool {
        !matches!(self, Col::Dict { .. } | Col::List { .. })
    }

    /// Whether the column can hold categorical keys.
    pub fn is_key_type(&self) -> bool {
        !matches!(self, Col::F64(_) | Col::F32(_) | Col::List { .. })
    }

    /// A single categorical key; null and empty cells are the empty key.
    #[inline]
    pub fn key(&self, r: usize) -> Result<Key<'_>, String> {
        if self.is_null(r) {
            return Ok(Key::Bytes(b""));
        }
        Ok(match self {
            Col::Text { records, idx, .. } => Key::Bytes(records[r].get(*idx).unwrap_or_default()),
            Col::I64(a) => Key::Int(a.value(r)),
            Col::I32(a) => Key::Int(a.value(r) as i64),
            Col::U32(a) => Key::Int(a.value(r) as i64),
            Col::U64(a) => {
                let v = a.value(r);
                return i64::try_from(v).map(Key::Int).map_err(|_| format!("id {v} exceeds the int64 range"));
            }
            Col::Bool(a) => Key::Int(a.value(r) as i64),
            Col::Utf8(a) => Key::Bytes(a.value(r).as_bytes()),
            Col::LargeUtf8(a) => Key::Bytes(a.value(r).as_bytes()),
            Col::Utf8View(a) => Key::Bytes(a.value(r).as_bytes()),
            Col::Dict { keys, values, .. } => {
                let (h, b) = &values[keys[r]];
                Key::Hashed(*h, b)
            }
            Col::F64(_) | Col::F32(_) => {
                return Err("expected a categorical (string or integer) value, found a floating-point column".into())
            }
            Col::List { .. } => return Err("expected a single value, found a list column".into()),
        })
    }

    /// All keys of a multi-valued cell: a list element by element, or a text cell
    /// split on the separator. A scalar column gives its one value. Null or empty: none.
    pub fn keys(&self, r: usize, mut f: impl FnMut(Key<'_>)) -> Result<(), String> {
        if self.is_null(r) {
            return Ok(());
        }
        match self {
            Col::Text { records, idx, sep } => {
                let cell = records[r].get(*idx).unwrap_or_default();
                for part in cell.split(|b| b == sep) {
                    f(Key::Bytes(part));
                }
                Ok(())
            }
            Col::List { array, inner } => {
                let offs = array.value_offsets();
                for i in offs[r] as usize..offs[r + 1] as usize {
                    if !inner.is_null(i) {
                        f(inner.key(i)?);
                    }
                }
                Ok(())
            }
            _ => {
                f(self.key(r)?);
                Ok(())
            }
        }
    }

    /// A text cell for enum columns (segment, device); integers are written out.
    pub fn text(&self, r: usize) -> Result<Option<std::borrow::Cow<'_, str>>, String> {
        if self.is_null(r) {
            return Ok(None);
        }
        if matches!(self, Col::F64(_) | Col::F32(_)) {
            return Err("expected a string or integer, found a floating-point column".into());
        }
        self.key(r).map(|k| Some(k.text()))
    }
}

/// Parses a decimal number from a text cell (surrounding spaces allowed).
#[inline]
pub fn parse_f64(cell: &[u8]) -> Result<f64, String> {
    let s = std::str::from_utf8(cell).map_err(|_| "not valid UTF-8".to_string())?;
    s.trim().parse::<f64>().map_err(|_| format!("expected a number, found {s:?}"))
}
