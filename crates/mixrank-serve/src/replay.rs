//! Scoring requests rebuilt from logged rows (a split's Parquet files), for the
//! end-to-end tests and the load generator: rows are grouped into requests (by the
//! config's request id, or in fixed-size runs), and within a request every feature
//! column (and the `[columns] segment` column, the row's surface) whose value is the
//! same on all its rows goes to the context.
//!
//! Cells keep their Arrow type (Int64 → integer, Utf8 → string, …), so a replayed
//! row is encoded exactly like the training row it came from.

use crate::error::{Result, ServeError};
use crate::request::{Features, ScoreRequest, Value};
use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float32Type, Float64Type, Int32Type, Int64Type, UInt32Type, UInt64Type};
use mixrank_data::ExperimentConfig;
use std::path::{Path, PathBuf};

/// How rows become requests.
#[derive(Debug, Clone, Copy)]
pub enum Grouping {
    /// Consecutive rows with the same request id (the config's `columns.request_id`).
    RequestId,
    /// Runs of exactly this many rows (the last may be shorter).
    Fixed(usize),
}

/// The files of `split`, in the order `mixrank eval` reads them.
pub fn split_files(cfg: &ExperimentConfig, split: &str) -> Result<Vec<PathBuf>> {
    let s = cfg.split(split).map_err(|e| ServeError::Internal(e.to_string()))?;
    mixrank_data::reader::split_files(s).map_err(|e| ServeError::Internal(e.to_string()))
}

/// Reads `file` and builds requests from at most `max_rows` rows, in file order.
pub fn requests_from_parquet(
    file: &Path,
    cfg: &ExperimentConfig,
    grouping: Grouping,
    max_rows: usize,
) -> Result<Vec<ScoreRequest>> {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let bad = |m: String| ServeError::Internal(format!("{}: {m}", file.display()));
    let f = std::fs::File::open(file).map_err(|e| bad(e.to_string()))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(f)
        .map_err(|e| bad(e.to_string()))?
        .build()
        .map_err(|e| bad(e.to_string()))?;
    let mut rows: Vec<(Option<String>, Features)> = Vec::new();
    // The feature columns, and the segment column (a request names its surface for a
    // per-surface calibration layer or per-surface towers even when it is not a feature).
    let mut cols: Vec<String> = cfg
        .categorical
        .iter()
        .map(|c| c.column.clone())
        .chain(cfg.dense.iter().map(|d| d.column.clone()))
        .chain(cfg.columns.segment.as_ref().map(|s| s.column.clone()))
        .collect();
    cols.sort();
    cols.dedup();
    for batch in reader {
        let batch = batch.map_err(|e| bad(e.to_string()))?;
        append_rows(&batch, &cols, cfg.columns.request_id.as_deref(), max_rows, &mut rows).map_err(bad)?;
        if rows.len() >= max_rows {
            break;
        }
    }
    Ok(group(rows, grouping))
}

fn append_rows(
    batch: &RecordBatch,
    cols: &[String],
    request_col: Option<&str>,
    max_rows: usize,
    out: &mut Vec<(Option<String>, Features)>,
) -> std::result::Result<(), String> {
    let arrays: Vec<(&String, &ArrayRef)> = cols
        .iter()
        .map(|c| batch.column_by_name(c).map(|a| (c, a)).ok_or_else(|| format!("missing column `{c}`")))
        .collect::<std::result::Result<_, _>>()?;
    let req = request_col.and_then(|c| batch.column_by_name(c));
    for r in 0..batch.num_rows() {
        if out.len() >= max_rows {
            break;
        }
        let mut f = Features::new();
        for (name, a) in &arrays {
            f.insert((*name).clone(), cell(a, r)?);
        }
        let id = match req {
            Some(a) => Some(match cell(a, r)? {
                Value::Str(s) => s,
                Value::Int(i) => i.to_string(),
                other => format!("{other:?}"),
            }),
            None => None,
        };
        out.push((id, f));
    }
    Ok(())
}

/// One Arrow cell as a request value.
pub fn cell(a: &ArrayRef, r: usize) -> std::result::Result<Value, String> {
    if a.is_null(r) {
        return Ok(Value::Null);
    }
    Ok(match a.data_type() {
        DataType::Int64 => Value::Int(a.as_primitive::<Int64Type>().value(r)),
        DataType::Int32 => Value::Int(a.as_primitive::<Int32Type>().value(r) as i64),
        DataType::UInt32 => Value::Int(a.as_primitive::<UInt32Type>().value(r) as i64),
        DataType::UInt64 => {
            let v = a.as_primitive::<UInt64Type>().value(r);
            Value::Int(i64::try_from(v).map_err(|_| format!("{v} exceeds int64"))?)
        }
        DataType::Float64 => Value::Float(a.as_primitive::<Float64Type>().value(r)),
        DataType::Float32 => Value::Float(a.as_primitive::<Float32Type>().value(r) as f64),
        DataType::Boolean => Value::Int(a.as_boolean().value(r) as i64),
        DataType::Utf8 => Value::Str(a.as_string::<i32>().value(r).to_string()),
        DataType::LargeUtf8 => Value::Str(a.as_string::<i64>().value(r).to_string()),
        DataType::Utf8View => Value::Str(a.as_string_view().value(r).to_string()),
        DataType::Dictionary(_, _) => {
            let d = a.as_any_dictionary();
            let key = d.normalized_keys()[r];
            return cell(d.values(), key);
        }
        DataType::List(_) => {
            let l = a.as_list::<i32>();
            let inner = l.value(r);
            let vals = (0..inner.len()).map(|i| cell(&inner, i)).collect::<std::result::Result<Vec<_>, _>>()?;
            if vals.iter().all(|v| matches!(v, Value::Int(_))) && !vals.is_empty() {
                Value::IntList(vals.into_iter().map(|v| if let Value::Int(i) = v { i } else { 0 }).collect())
            } else {
                Value::StrList(
                    vals.into_iter()
                        .filter_map(|v| match v {
                            Value::Str(s) => Some(s),
                            Value::Null => None,
                            other => Some(format!("{other:?}")),
                        })
                        .collect(),
                )
            }
        }
        other => return Err(format!("unsupported column type {other}")),
    })
}

fn group(rows: Vec<(Option<String>, Features)>, grouping: Grouping) -> Vec<ScoreRequest> {
    let mut groups: Vec<(String, Vec<Features>)> = Vec::new();
    for (i, (id, f)) in rows.into_iter().enumerate() {
        let start_new = match (grouping, groups.last()) {
            (_, None) => true,
            (Grouping::RequestId, Some((last, _))) => id.as_deref() != Some(last.as_str()),
            (Grouping::Fixed(n), Some((_, c))) => c.len() >= n.max(1),
        };
        if start_new {
            let name = match grouping {
                Grouping::RequestId => id.unwrap_or_else(|| i.to_string()),
                Grouping::Fixed(_) => format!("rows-{i}"),
            };
            groups.push((name, Vec::new()));
        }
        if let Some(g) = groups.last_mut() {
            g.1.push(f);
        }
    }
    groups
        .into_iter()
        .map(|(request_id, mut candidates)| {
            let mut context = Features::new();
            if let Some(first) = candidates.first() {
                for (k, v) in first {
                    if candidates.len() > 1 && candidates.iter().all(|c| c.get(k) == Some(v)) {
                        context.insert(k.clone(), v.clone());
                    }
                }
            }
            for c in &mut candidates {
                c.retain(|k, _| !context.contains_key(k));
            }
            ScoreRequest { request_id, context, candidates, ..Default::default() }
        })
        .collect()
}
